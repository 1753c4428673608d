"""The shared response cache at the request stage (--response-cache; docs/caching.md).

request.py calls this in one marked block, once the environ's scheme and host are final (after
forwarded headers): `before()` answers a hit itself, without the app, or returns a `Fill`
(workers/cachefill.py) that runs the app, capturing its body, and once the response is complete
stores it (`store_response()`); for an unsafe method the Fill drops the target's entries instead
(RFC 9111 4.4). The rules are cachepolicy.py's; the store is master/respcache.py's, shared by
every worker of the host.

Request fields are read from the environ (the values the app sees), not from the raw header
list: a request carrying none of the fields the rules look at (the common case) skips the rules.
Two per-worker memos keep the request path short, and neither can make an answer wrong:

- `known`: this worker's copy of entries it has already read (bounded in bytes). Before answering
  from a copy it checks in shared memory that the entry is still its key's live one
  (ResponseCache.current, two loads), so a hit costs no copy and no CRC.
- `urls` (with Varnish's "hit-for-pass"): a URL as the request gave it maps to its store key, so
  the key is made once; or, when its last response could not be stored, to a time until which it
  is not looked up, nor captured (PASS_TTL). Only plain requests set a pass: without
  Authorization and without any field the rules read (a conditional request's 304 or a Range's
  206 says nothing of the URL's other responses). A request with a Cookie sets a pass for the
  URL's requests with a Cookie only (`cookie_passes`): a signed-in client's page is often private
  while the same URL is public to everyone else, and without it every such request (most of a
  browser's) took the whole miss path, about 8 µs. At worst a pass costs hits of a URL for
  PASS_TTL after its responses became storable.
- `path_passes`: hit-for-pass for a whole request path, for URLs that are new each time (a
  search's query string): after PATH_PASS_AFTER unstorable URLs with a query under a path (with
  a Cookie or not), its GETs skip the cache for PASS_TTL, unless the store's path filter says an
  entry is stored under it. Otherwise each such URL took the whole miss path (+50% on hello). At
  worst a URL that became storable under such a path is stored PASS_TTL later. `passed_paths`
  (and `pass_prefixes`, their request lines' starts) are for the HTTP/1.1 connection loop, which
  sends their GETs past this stage as a pass mark's (workers/conn.py); FastHits.expire() drops a
  path every MARK_SWEEP seconds once its pass lapsed or an entry was stored under it.

The HTTP/1.1 connection loop answers the commonest hit before this stage, from the same `urls`
memo (workers/cachefast.py): `hot` tells it which request targets the memo has pointed at a copy.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Iterator, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, cast
from zlib import crc32

from greenfork.master.respcache import Entry, ResponseCache
from greenfork.metrics.recorder import Recorder
from greenfork.workers import cachepolicy as cp
from greenfork.workers.cachefill import INVALIDATE, STORE, Fill
from greenfork.workers.transport import ClientGone

if TYPE_CHECKING:
    from greenfork.workers.http1 import Request
    from greenfork.workers.request import Exchange
    from greenfork.workers.worker import WorkerServer

log = logging.getLogger("greenfork.worker")

PASS_TTL: Final = 1.0  # seconds a URL with an unstorable response skips the cache in this worker
URLS_MAX: Final = 4096  # URLs remembered (their keys, or a pass): the memo is emptied when full
PATH_PASS_AFTER: Final = 8  # unstorable URLs with a query under a path before the path is passed
PREFIX_PATHS: Final = 8  # paths passed whole that the connection loop tells from a read's first bytes
KNOWN_BYTES: Final = 8 << 20  # this worker's copies of entries: at most this many body bytes...
KNOWN_SHARE: Final = 8  # ...and at most 1/8 of the shared cache's size
CLIENT_GONE: Final = 499  # request.py's status for a client that left before its response

# The environ keys of every request field cachepolicy.request_rule() and answer() look at.
RULE_KEYS: Final = frozenset({
    "CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING", "HTTP_AUTHORIZATION", "HTTP_IF_MATCH",
    "HTTP_IF_UNMODIFIED_SINCE", "HTTP_RANGE", "HTTP_IF_RANGE", "HTTP_CACHE_CONTROL", "HTTP_PRAGMA",
    "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE"})
_GET: Final = cp.RequestRule(True, True, "")
_HEAD: Final = cp.RequestRule(True, False, "head")
_LOOKUP: Final = frozenset({"GET", "HEAD"})  # the methods a stored response may answer
_SAFE: Final = cp.SAFE_METHODS  # (a module name: one load, not two)


class Tally(Protocol):
    """A count in place: `tally[0] += 1.0` (CacheStage.bypass)."""

    def __getitem__(self, index: int, /) -> float: ...
    def __setitem__(self, index: int, value: float, /) -> None: ...


class Hit(enum.Enum):
    """before()'s answer when the request was answered from the cache (or refused, 504)."""

    HIT = 1


HIT: Final = Hit.HIT


def env_key(name: str) -> str:
    """The environ key of a lowercase field name (wsgi.build_environ's naming)."""
    if name == "content-type" or name == "content-length":
        return name.upper().replace("-", "_")
    if "_" in name:
        return ""  # never in the environ: build_environ drops such fields
    return "HTTP_" + name.upper().replace("-", "_")


class EnvFields(Mapping[str, str]):
    """The request's fields as cachepolicy reads them ({lowercase name: value}), taken from the
    environ: after forwarded headers, repeated fields joined as the app sees them."""

    __slots__ = ("env",)

    def __init__(self, env: Mapping[str, Any]) -> None:
        self.env = env

    def __getitem__(self, name: str) -> str:
        value = self.env.get(env_key(name))
        if type(value) is not str:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        for k, v in self.env.items():
            if type(v) is str and (k.startswith("HTTP_") or k in ("CONTENT_TYPE", "CONTENT_LENGTH")):
                yield k.removeprefix("HTTP_").lower().replace("_", "-")

    def __len__(self) -> int:
        return sum(1 for _ in self)


def primary_key(scheme: str, host: str, path: bytes, query: bytes) -> bytes | None:
    """cachepolicy.primary_key() from the environ's str host, in fewer steps (the same bytes)."""
    try:
        h = host.encode("latin-1").lower()
    except UnicodeEncodeError:
        return None
    # (find, not `in`: see wsgi.build_environ)
    if not h or h.find(b"\0") >= 0 or path.find(b"\0") >= 0 or query.find(b"\0") >= 0:
        return None
    if scheme == "https":
        if h.endswith(b":443"):
            h = h[:-4]
    elif h.endswith(b":80"):
        h = h[:-3]
    return b"%s\0%s\0%s\0%s" % (scheme.encode("ascii", "replace"), h, path, query)


class Known:
    """This worker's copy of an entry, where the store has it, and its head for the current Age."""

    __slots__ = ("age", "entry", "expires", "headers", "key", "off", "tag", "way", "wire")

    def __init__(self, key: bytes, entry: Entry, way: int, tag: int, off: int) -> None:
        self.key = key  # the store key it was found under
        self.entry = entry
        self.way, self.tag, self.off = way, tag, off
        self.expires = entry.stored_at + entry.lifetime - entry.initial_age  # fresh while now < expires
        self.age = -1
        self.headers: list[tuple[str, str]] = []
        # the fast path's pre-serialized head (workers/cachefast.py): None until first asked for
        self.wire: tuple[bytes, int, int] | None = None

    def head(self, now: float) -> list[tuple[str, str]]:
        """The stored fields and Age (RFC 9111 5.1), made once per second of age; each answer
        gets its own copy of the list (a protocol may rework what it is handed)."""
        e = self.entry
        age = int(e.initial_age + max(0.0, now - e.stored_at))
        if age != self.age:
            self.headers = [*e.headers, ("Age", str(age))]
            self.age = age
        return self.headers.copy()

    def drop(self) -> None:
        """Out of the worker's copies: the body goes now, and a URL memo still pointing here
        finds it expired."""
        self.expires = 0.0
        self.entry = _GONE
        self.headers = []
        self.wire = None


_GONE: Final = Entry("", (), b"", 0.0, 0.0)


Url = tuple[str, str, bytes, str]  # scheme, host, request target, SCRIPT_NAME


class CacheStage:
    """One per worker, over the shared store the master mapped before forking."""

    def __init__(self, server: WorkerServer, store: ResponseCache) -> None:
        self.server = server
        self.store = store
        self.count = server.metrics.response_cache  # hit / miss / bypass, one per request
        # The commonest count, `bypass` (a pass, a passed path, an unsafe method), is added in place,
        # `bypass[0] += 1.0`: the recorder's call costs twice the add, and more in the server than
        # in a loop (instruction-cache misses: docs/caching.md). With metrics, in a one-slot view of
        # the metrics segment (the recorder's own adds keep the view's code warm); without, in a
        # list nobody reads, whose add the interpreter specializes: cheaper than a test, and it
        # touches no code a request would not touch anyway.
        self.bypass: Tally = [0.0]
        if isinstance(server.metrics, Recorder):
            at = server.metrics.response_cache_field("bypass")
            # (a "d" view takes and gives floats; typeshed types every memoryview's items as int)
            self.bypass = cast(Tally, server.metrics.mv[at:at + 1])
        # the store's path filter, read here as may_hold_path() does (without its call)
        self.path_bits, self.path_mask = store.path_filter()
        # ... and as the HTTP/1.1 connection loop reads it for a method the cache never answers
        # (workers/conn.py): with --response-cache-path, one that says every path may hold
        # entries, so that before() sees those requests (and leaves out of scope ones uncounted)
        self.loop_bits = self.path_bits
        # ... at the last such path's slot (a client's POSTs go to one path again and again; the
        # crc32 is cold code): the bit is read each time, as any worker may store under the path
        self.unsafe_path = b""
        self.unsafe_slot = 0
        self.script_name = server.script_name
        self.limit = store.max_entry
        self.known: dict[bytes, Known] = {}  # store key -> this worker's copy
        self.known_bytes = 0
        self.known_max = min(KNOWN_BYTES, store.stats().size // KNOWN_SHARE)
        # a URL as the request gave it -> the copy of its entry (for plain requests: the shortest
        # path to a hit), or its store key (skips making the key again), or, as a float, until
        # when it skips the cache (hit-for-pass)
        self.urls: dict[Url, Known | bytes | float] = {}
        # a URL -> until when its requests with a Cookie skip the cache (their last response could
        # not be stored); requests without one go by `urls`
        self.cookie_passes: dict[Url, float] = {}
        # a request path -> until when its GETs skip the cache (hit-for-pass for the whole path:
        # see above); and how many of its URLs with a query were unstorable since
        self.path_passes: dict[bytes, float] = {}
        self.path_fails: dict[bytes, int] = {}
        self.passed_paths: set[bytes] = set()  # (for the connection loop: see above)
        # ... and how the request lines of GETs under the first PREFIX_PATHS of them start, for the
        # loop to recognise in a read before it parses it (made anew by passed_paths_changed())
        self.pass_prefixes: tuple[bytes, ...] = ()
        # --response-cache-path: the request paths it consults the cache for (None: every path),
        # as the path itself and as the start of longer ones
        paths = server.settings.response_cache_path
        self.scope: tuple[frozenset[bytes], tuple[bytes, ...]] | None = None
        if paths and "/" not in paths:
            self.scope = (frozenset(p.encode("ascii") for p in paths),
                          tuple(p.encode("ascii") + b"/" for p in paths))
            self.loop_bits = memoryview(b"\1" * (self.path_mask + 1))
        # the request targets of every URL the memo has pointed at a copy (Known) since it was last
        # emptied: a target not in it has no Known in the memo, so the HTTP/1.1 fast path
        # (workers/cachefast.py) leaves the request to this stage after one set lookup
        self.hot: set[bytes] = set()
        # The HTTP/1.1 fast path's pass marks (workers/cachefast.py): the request the memo sent past
        # the cache last, and until when (for FastHits.learn_pass); and the request the fast path
        # knows goes past it (parsed from a read seen before), which skips before(). A Request is
        # never served twice, so the mark needs no clearing (the connection loop sets it just
        # before it hands that request to the request stage, which reads it first).
        self.passed_req: Request | None = None
        self.passed_until = 0.0
        self.skip: Request | None = None

    # ------------------------------------------------------------------ before the app
    def before(self, ex: Exchange, req: Request, env: dict[str, Any],
               started: float) -> Literal[Hit.HIT] | Fill | None:
        """HIT when the request was answered here; a Fill to run the app through; None: not ours."""
        scope = self.scope
        if scope is not None and req.path not in scope[0] and not req.path.startswith(scope[1]):
            return None  # outside --response-cache-path: not the cache's, not even counted
        method = req.method
        if method not in _LOOKUP:  # (first: none of the URL's memo is for them)
            self.bypass[0] += 1.0
            # an unsafe method invalidates the path's entries, if the path filter says any may be
            # (the filter first: for most paths it says none may be, whatever the method)
            if not self.path_bits[crc32(req.path) & self.path_mask] or method in _SAFE:
                return None
            return self._unsafe(req, env)
        if self.path_passes:  # (most sites have none: one test)
            until = self.path_passes.get(req.path, 0.0)
            if until and method == "GET" and not req.upgrade and until > time.time() \
                    and not self.path_bits[crc32(req.path) & self.path_mask]:  # (nothing stored since)
                self.bypass[0] += 1.0
                return None
        host: str = env.get("HTTP_HOST") or ""
        now = time.time()
        url = (env["wsgi.url_scheme"], host, req.target, env["SCRIPT_NAME"])
        memo = self.urls.get(url)
        # First, the URL that skips the cache a while (hit-for-pass): what most requests for pages
        # that are never stored take, so it must cost the uncached little (docs/caching.md)
        # (a request with a Cookie also by its own hit-for-pass: cookie_passes)
        until = memo if type(memo) is float else 0.0
        if until <= now and type(memo) is not Known and "HTTP_COOKIE" in env:
            until = self.cookie_passes.get(url, 0.0)
        if until > now and method == "GET" and not req.upgrade:
            self.bypass[0] += 1.0
            self.passed_req = req
            self.passed_until = until
            return None
        if not host or req.upgrade:  # no key all workers agree on; a WebSocket or h2c upgrade
            self.count("bypass")
            return None
        key: bytes | None = None
        if type(memo) is Known:
            if now < memo.expires and self.store.current(memo.way, memo.tag, memo.off) \
                    and env.keys().isdisjoint(RULE_KEYS):
                self.count("hit")  # the common hit: a plain request for a URL seen before
                body = memo.entry.body if method == "GET" else b""
                self._send(ex, req, env, memo.entry.status, memo.head(now), body, started)
                return HIT
            key = memo.key
        elif type(memo) is float:
            if memo > now:
                self.count("bypass")
                return None
        elif type(memo) is bytes:
            key = memo
        plain = env.keys().isdisjoint(RULE_KEYS)  # no field any rule looks at: the common case
        if key is None:
            if plain and not self.path_bits[crc32(req.path) & self.path_mask]:
                # no worker stored anything under this path (the store's path filter): a miss
                # without making the key or looking it up; the key is made if the response is
                # stored (Fill.key)
                self.count("miss")
                return Fill(self, STORE, None, env, now, url, req) if method == "GET" else None
            key = self._key(url, req)
            if key is None:
                self.count("bypass")
                return None
            self._remember(url, key)
        if plain:
            fields = None
            rule = _GET if method == "GET" else _HEAD
        else:
            fields = EnvFields(env)
            rule = cp.request_rule(method, fields)
            if not (rule.lookup or rule.store):
                self.count("bypass")
                return None
        if rule.lookup:
            known = self._find(key, env, now)
            if known is not None and (fields is None or cp.usable(known.entry, rule, now)):
                self.count("hit")
                if fields is None:
                    if known.key == key and self.known.get(key) is known:
                        # found under the URL's own key (no Vary), and a copy counted in the
                        # worker's budget: the URL memo may point at it
                        self._remember(url, known)
                    body = known.entry.body if method == "GET" else b""
                    self._send(ex, req, env, known.entry.status, known.head(now), body, started)
                else:
                    a = cp.answer(known.entry, method, fields, now)
                    self._send(ex, req, env, a.status, a.headers, a.body, started)
                return HIT
            self.count("miss")
            if rule.only_if_cached:
                a = cp.ONLY_IF_CACHED_MISS
                self._send(ex, req, env, a.status, list(a.headers), a.body, started)
                return HIT
        else:
            self.count("bypass")
        if not rule.store:
            return None
        # hit-for-pass is learnt from plain requests only: a conditional one (a 304), a Range (a
        # 206) or a client's own directive says nothing about the URL's other responses
        return Fill(self, STORE, key, env, now, url if fields is None else None, req)

    def _remember(self, url: Url, what: Known | bytes | float) -> None:
        urls = self.urls
        if len(urls) >= URLS_MAX and url not in urls:
            urls.clear()
            self.hot.clear()
        urls[url] = what
        if type(what) is Known:
            self.hot.add(url[2])

    def _unsafe(self, req: Request, env: dict[str, Any]) -> Fill | None:
        """POST, PUT, DELETE ...: a Fill that drops the target's entries if the response says it
        succeeded; None when nothing is stored under the target anyway."""
        host = env.get("HTTP_HOST")
        if not host:
            return None
        key = self._key((env["wsgi.url_scheme"], host, req.target, env["SCRIPT_NAME"]), req)
        if key is None or not self.store.holds(key):
            return None
        return Fill(self, INVALIDATE, key, env, 0.0, None, req)

    def _key(self, url: Url, req: Request) -> bytes | None:
        scheme, host, _, script_name = url
        key = primary_key(scheme, host, req.path, req.query)
        if script_name != self.script_name and key is not None:
            # a prefix a trusted proxy set (X-Forwarded-Prefix): the app's links and routes depend
            # on it. A field of its own after the query (which holds no NUL), so /app + /x and
            # "" + /app/x stay apart; a variant's field after it starts "vary", never "prefix=".
            prefix = script_name.encode("latin-1", "replace")
            if b"\0" in prefix:
                return None
            key += b"\0prefix=" + prefix
        return key

    def _find(self, key: bytes, env: dict[str, Any], now: float) -> Known | None:
        """cachepolicy.find() through this worker's copies."""
        known = self._lookup(key, now)
        if known is None or not known.entry.stub:
            return known
        stub = known.entry
        values = cp.vary_values([n for n, _ in stub.vary], EnvFields(env))
        return self._lookup(cp.variant_key(key, values, stub.etag or ""), now)

    def _lookup(self, key: bytes, now: float) -> Known | None:
        memo = self.known
        known = memo.get(key)
        if known is not None:
            if now < known.expires and self.store.current(known.way, known.tag, known.off):
                return known
            del memo[key]
            self.known_bytes -= len(known.entry.body)
            known.drop()
        found = self.store.locate(key, now)
        if found is None:
            return None
        known = Known(key, *found)
        size = len(known.entry.body)
        if size <= self.known_max // 8:
            while memo and self.known_bytes + size > self.known_max:
                oldest = memo.pop(next(iter(memo)))  # the oldest copy goes
                self.known_bytes -= len(oldest.entry.body)
                oldest.drop()
            memo[key] = known
            self.known_bytes += size
        return known

    def _send(self, ex: Exchange, req: Request, env: dict[str, Any], status: str,
              headers: list[tuple[str, str]], body: bytes, started: float) -> None:
        err = ""
        try:
            ex.headed = True
            ex.send_head(status, headers)
            if body:
                ex.send_data(body)
            ex.end()
        except ClientGone as e:
            ex.abort()
            ex.status = ex.status or CLIENT_GONE
            err = e.reason
        server = self.server
        if server.timed:
            if server.access_log is not None:
                server.access_log.log(env, ex.status, headers, ex.body_bytes(), time.monotonic() - started)
            server.metrics.request(ex, req, err, started)

    # ------------------------------------------------------------------ after the app
    def passed(self, url: Url | None, env: dict[str, Any], now: float, req: Request) -> None:
        """The response to url could not be stored: skip the cache for it a while, and for its
        path after PATH_PASS_AFTER such URLs with a query (see above)."""
        if url is None or "HTTP_AUTHORIZATION" in env:
            return
        if req.query:  # the URL may be new each time (a Cookie or not: browsers send one)
            path = req.path
            fails = self.path_fails
            n = fails.get(path, 0) + 1
            if n >= PATH_PASS_AFTER:
                del fails[path]
                pp = self.path_passes
                if len(pp) >= URLS_MAX and path not in pp:
                    pp.clear()
                    self.passed_paths.clear()
                pp[path] = now + PASS_TTL
                if not self.store.may_hold_path(path):
                    self.passed_paths.add(path)
                self.passed_paths_changed()
            else:
                if len(fails) >= URLS_MAX and path not in fails:
                    fails.clear()
                fails[path] = n
        if "HTTP_COOKIE" in env:
            passes = self.cookie_passes
            if len(passes) >= URLS_MAX and url not in passes:
                passes.clear()
            passes[url] = now + PASS_TTL
            return
        self._remember(url, now + PASS_TTL)

    def passed_paths_changed(self) -> None:
        """Make pass_prefixes anew from passed_paths: `GET /path?` and `GET /path ` (origin-form,
        as a read at a request boundary starts; any other form is found after parsing)."""
        self.pass_prefixes = tuple(b"GET " + path + end for path in islice(self.passed_paths, PREFIX_PATHS)
                                   for end in (b"?", b" "))

    def store_response(self, fill: Fill, status: str, headers: list[tuple[str, str]], body: bytes) -> bool:
        env = fill.env
        if fill.key is None:  # a path with nothing stored under it: the key was not made (before())
            if fill.url is None or (key := self._key(fill.url, fill.req)) is None:
                return False
            fill.key = key
        fields = EnvFields(env)
        response_time = time.time()
        ok = cp.response_rule(fill.code, cp.response_fields(headers), authorized="HTTP_AUTHORIZATION" in env,
                              request_time=fill.request_time, response_time=response_time)
        if not ok.store:
            return False
        epoch = ""
        if ok.vary:
            epoch = cp.stub_epoch(self.store.lookup(fill.key, response_time), ok.vary) or \
                f"{time.time_ns():x}.{os.getpid()}"
        for k, e in cp.make_entries(fill.key, fields, status, headers, body, ok, response_time, epoch):
            if not self.store.store(k, e):
                break  # another worker holds the lock, or it did not fit: a later miss fills it
        return True


def attach(server: WorkerServer) -> CacheStage | None:
    """The worker's cache stage, or None when --response-cache is off."""
    store = server.info.cache
    return CacheStage(server, store) if store is not None else None

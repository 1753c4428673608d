"""The response cache's fast path for HTTP/1.1 hits (--response-cache; docs/caching.md).

A hit through the request stage (workers/cachestage.py) costs little, but before it the stage
builds the environ, wsgi.input and start_response, and after it writes the access log line: most
of a small request's CPU. Here, in the connection loop (workers/conn.py), before any of that, the
commonest hit is answered from the worker's URL memo with a pre-serialized head: a GET or HEAD for
a URL whose memo points at a fresh entry (one without Vary: the memo only points at entries found
under the URL's own key), from a request with none of the fields the cache rules read. Anything
else returns False and takes the ordinary path, unchanged.

The answer is the one the request stage would give, byte for byte: its memo hit (CacheStage.before)
under the same tests, the head as response_head() writes it (response.fixed_head, head_end), the
connection's persistence by h1proto's rules (H1Server.whole). Counted the same: the cache's `hit`
and http_server_request_duration_seconds with the same labels.

What runs before the cache in the request stage runs here too, or the request goes there: the
gate (workers/gate.py) is applied, since it is on by default (forwarded headers from 127.0.0.1):
a request carrying an honoured forwarded header goes to the request stage (which applies it and
may change the key's scheme and host), --require-header's secret must be there once with its value
and --allowed-hosts must allow the Host, or the request goes to the request stage, which refuses
it. Off for the whole worker (attach): --access-logfile (its line is made from a whole environ),
--mount, pre_request/post_request hooks; for a connection (scheme) whose extra environ keys (TLS,
a PROXY header, a hand-off) touch the key or the rules' fields. Off, the connection loop tests
one local name per request.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Final, final

from greenfork.workers.cachestage import RULE_KEYS, CacheStage, Known
from greenfork.workers.h1proto import DRAIN
from greenfork.workers.request import http_date
from greenfork.workers.response import fixed_head, head_end
from greenfork.workers.timers import NONE

if TYPE_CHECKING:
    from greenfork.workers.conn import Connection
    from greenfork.workers.gate import Gate
    from greenfork.workers.hosts import AllowedHosts
    from greenfork.workers.http1 import Request
    from greenfork.workers.worker import WorkerServer

log = logging.getLogger("greenfork.worker")

# The header names (lowercase) whose environ keys are cachestage.RULE_KEYS: a request with any of
# them goes through the rules (the ordinary path). A name with "_" never reaches the environ.
RULE_FIELDS: Final = frozenset({
    b"content-length", b"transfer-encoding", b"authorization", b"if-match", b"if-unmodified-since",
    b"range", b"if-range", b"cache-control", b"pragma", b"if-none-match", b"if-modified-since"})
NO_WIRE: Final = (b"", 0, 0)  # an entry whose head the fast path does not make (fixed_head: None)
# The replay memo (see FastHits.replay): reads of at most this many bytes, this many of them per
# worker (emptied when full): a client sending distinct heads on purpose costs under 2 MiB.
REPLAY_READ_MAX: Final = 4096
REPLAYS_MAX: Final = 256
MARK_SWEEP: Final = 0.5  # seconds between drops of lapsed pass marks: a mark outlives its pass by less


@final
class Replay:
    """A read that held one plain request the fast path answered: the same bytes again are the
    same request, with the same answer while its entry stays fresh and current."""

    __slots__ = ("age", "body", "code", "head", "memo", "post", "pre", "req", "scheme", "second", "tail")
    past = False
    marks = 0  # (what a Pass sends past the cache: a replay sends nothing there)
    live = True  # (a replay checks its entry itself, however old the memo's pointer to it)

    def __init__(self, memo: Known, req: Request, scheme: str, wire: tuple[bytes, int, int],
                 end: bytes) -> None:
        self.memo = memo
        self.req = req  # for the metrics' labels (method, version); never handed to anyone
        self.scheme = scheme
        head, self.code, length = wire
        self.body = memo.entry.body if req.method == "GET" and length else b""
        # the head is pre + Age + post + Date + tail; end is what head_end() writes, Date empty
        date_at = end.index(b"Date: ") + 6
        self.pre = head + b"Age: "
        self.post = b"\r\n" + end[:date_at]
        self.tail = end[date_at:]
        self.second = -1  # the head below is for this second of the clock and this Age
        self.age = -1
        self.head = b""


@final
class Pass:
    """A read that held plain requests (one, or pipelined ones) the URL memo sent past the cache
    (hit-for-pass): the same bytes again go past it too, without before() building the URL to learn
    so; the connection may have closed after them (a mark only skips before()). No clock is
    read per request: FastHits.expire() drops the marks whose pass has lapsed, every
    MARK_SWEEP seconds."""

    __slots__ = ("live", "marks", "scheme", "until")
    past = True  # (the connection loop tells the two kinds apart by this)

    def __init__(self, until: float, scheme: str, requests: int = 1) -> None:
        self.until = until
        self.scheme = scheme
        # how many requests the read held (pipelined, all of them past the cache): the loop takes
        # a read with marks as that many requests to send past before() (never 0 for a Pass)
        self.marks = requests
        # False once dropped from the memo: a connection that kept it to skip the memo's lookup
        # (the same bytes as its last read) lets it go then
        self.live = True


# what a connection's loop knows of its last read before it has one (never live: looked up)
NO_READ: Final = Pass(0.0, "", 0)
NO_READ.live = False
# What a connection's loop takes from FastHits (FastHits.parts): the targets the fast path may
# answer, the replay memo, its reads' lengths, the cache stage (for pass marks) and the paths it
# passes whole (CacheStage.passed_paths). The objects are changed in place, never replaced, so a
# connection takes them once, in one unpacking.
Parts = tuple[AbstractSet[bytes], dict[bytes, Replay | Pass], AbstractSet[int], Any, AbstractSet[bytes]]
# ... for a connection without a fast path (never written: its loop only looks them up with one)
NO_PARTS: Final[Parts] = (frozenset(), {}, frozenset(), None, frozenset())


class FastHits:
    """One per worker, over its cache stage's memos."""

    __slots__ = ("answered", "count", "fields", "hosts", "hot", "lengths", "metrics", "parts", "replays",
                 "script_name", "secret_name", "secret_value", "server", "stage", "store", "timed", "timer",
                 "urls")

    def __init__(self, server: WorkerServer, stage: CacheStage, gate: Gate | None = None) -> None:
        # header names (lowercase) that send a request to the request stage: the rules' fields and
        # the forwarded headers the gate would apply
        fields = set(RULE_FIELDS)
        self.hosts: AllowedHosts | None = None
        self.secret_name = b""  # --require-header's field (lowercase), b"" when not set
        self.secret_value = b""
        if gate is not None:
            if gate.forwarding is not None:
                fields.update(n.encode("latin-1") for n in gate.forwarding.honoured)
            self.hosts = gate.hosts
            if gate.secret_key is not None:  # (an environ key: HTTP_X_PROXY_SECRET)
                self.secret_name = gate.secret_key[5:].lower().replace("_", "-").encode("latin-1")
                self.secret_value = gate.secret_value
        self.fields = frozenset(fields)
        self.server = server
        self.stage = stage
        self.store = stage.store
        self.urls = stage.urls
        self.hot = stage.hot
        self.count = stage.count
        self.script_name = stage.script_name
        self.metrics = server.metrics
        self.timed = server.timed
        # the replay memo: a read's bytes -> what answered them (the connection loop looks it up)
        self.replays: dict[bytes, Replay | Pass] = {}
        # the lengths of the reads in `replays` (or more): a read of another length is not looked
        # up, which spares hashing it (a 1 KB browser head's hash costs about 0.5 µs)
        self.lengths: set[int] = set()
        self.parts: Parts = (self.hot, self.replays, self.lengths, stage, stage.passed_paths)
        self.answered: Known | None = None  # the entry of the request answer() answered last
        self.timer: Any = None  # expires pass marks (start())

    def scheme(self, base: dict[str, Any], extra: dict[str, Any]) -> str | None:
        """The key's scheme for a connection's requests, or None: the connection adds environ
        keys the key or the rules depend on (its requests take the ordinary path)."""
        for k in extra:
            if k.startswith("HTTP_") or k in RULE_KEYS or k == "SCRIPT_NAME":
                return None
        scheme = extra.get("wsgi.url_scheme", base["wsgi.url_scheme"])
        return scheme if type(scheme) is str else None

    def answer(self, conn: Connection, req: Request, scheme: str) -> str | None:
        """Answer req from the cache and return what the connection does next (after_response():
        KEEP, CLOSE, LINGER); None: not a fast hit, nothing was done."""
        if req.target not in self.hot:  # (most requests the cache does not answer end here)
            return None
        method = req.method
        if (method != "GET" and method != "HEAD") or req.upgrade or req.expect_continue:
            return None
        host = req.host
        if host is None:
            for name, value in req.headers:
                if name == b"Host" or name.lower() == b"host":
                    host = value
                    break
        if not host:
            return None  # (the request stage: no key every worker agrees on)
        memo = self.urls.get((scheme, host.decode("latin-1"), req.target, self.script_name))
        if type(memo) is not Known:
            return None
        now = time.time()
        if now >= memo.expires or not self.store.current(memo.way, memo.tag, memo.off):
            return None
        fields = self.fields
        for name, _ in req.headers:
            if name.lower() in fields:
                return None
        if self.secret_name and not self._secret_ok(req):
            return None  # the request stage refuses it (403)
        hosts = self.hosts
        if hosts is not None and not hosts.allows(host.decode("latin-1")):
            return None  # the request stage refuses it (400)
        wire = memo.wire
        if wire is None:
            e = memo.entry
            wire = fixed_head(e.status, e.headers) or NO_WIRE
            if wire[2] != len(e.body):  # (stored_headers() makes it the body's: never)
                wire = NO_WIRE
            memo.wire = wire
        head, code, length = wire
        if not code:
            return None
        # ---- from here on the request is answered (CacheStage.before's memo hit) ----
        started = time.monotonic() if self.timed else 0.0
        self.count("hit")
        e = memo.entry
        server = self.server
        p = conn.p
        keep = p.whole(code, length, server.keep_wish)
        age = int(e.initial_age + max(0.0, now - e.stored_at))
        out = conn.out
        out.append(b"%bAge: %d\r\n%b" % (head, age, head_end(keep, req.version, http_date(),
                                                                 server.server_header)))
        if method == "GET" and length:
            out.append(e.body)
        conn.status = code
        conn.served += 1
        if self.timed:
            self.metrics.request(conn, req, "", started)
        self.answered = memo
        action = p.after_response()
        if action == DRAIN:  # (never: a request with a body has a field in RULE_FIELDS)
            p.abort()
            action = p.after_response()
        return action

    # ------------------------------------------------------------------ the replay memo
    # What answer() costs a hit is mostly the parse before it (llhttp and its callbacks, the
    # Request, the protocol's moves) and its own tests, all of them functions of the request's bytes
    # and of settings fixed for the worker's life. So a read that held exactly one request, read at a
    # request boundary on an idle connection, and answered by answer() with the connection kept,
    # is remembered by its bytes: the same bytes on a connection of the same scheme are answered
    # again without being parsed, as long as the entry is fresh and current in the store (what
    # answer() tests, the only parts that change). The protocol object is idle before and after: a
    # bodiless request answered whole with keep-alive moves it REQUEST, HEAD, END_KEEP, NEXT, back
    # to IDLE, so skipping those moves leaves it where they would. A replay that would close the
    # connection (the worker stopping: keep_wish) takes the ordinary path, which says so.

    def learn(self, data: bytes, req: Request, scheme: str) -> None:
        """After answer() kept the connection, for the read `data` that held just `req`."""
        memo, self.answered = self.answered, None
        if memo is None or memo.wire is None or len(data) > REPLAY_READ_MAX:
            return
        end = head_end(True, req.version, b"", self.server.server_header)
        self._keep(data, Replay(memo, req, scheme, memo.wire, end))

    def learn_pass(self, data: bytes, requests: int, until: float, scheme: str) -> None:
        """After the URL memo sent every request in `data` (all `requests` of it, the earliest
        pass ending at `until`) past the cache."""
        if len(data) <= REPLAY_READ_MAX:
            self._keep(data, Pass(until, scheme, requests))

    def expire(self) -> None:
        """Drop the pass marks whose pass has lapsed, and the paths passed whole whose pass lapsed
        or under which an entry was stored since (from a loop timer: see start())."""
        now = time.time()
        replays = self.replays
        for data, r in list(replays.items()):
            if type(r) is Pass and r.until <= now:
                r.live = False
                del replays[data]
        self.lengths.intersection_update({len(data) for data in replays})
        stage = self.stage
        if stage.passed_paths:
            until, stored = stage.path_passes.get, self.store.may_hold_path
            stage.passed_paths.difference_update(
                [path for path in stage.passed_paths if until(path, 0.0) <= now or stored(path)])
            stage.passed_paths_changed()

    def start(self, loop: Any) -> None:
        """Expire pass marks every MARK_SWEEP seconds, from a raw loop timer (it runs in the hub and
        keeps no loop alive)."""
        timer = loop.timer(MARK_SWEEP, MARK_SWEEP, ref=False)
        timer.start(self._safe_expire)
        self.timer = timer

    def _safe_expire(self) -> None:
        try:
            self.expire()
        except Exception:  # never let the timer stop
            log.exception("expiring the response cache's pass marks failed")

    def _keep(self, data: bytes, what: Replay | Pass) -> None:
        replays = self.replays
        if len(replays) >= REPLAYS_MAX:
            for r in replays.values():
                if type(r) is Pass:
                    r.live = False
            replays.clear()
            self.lengths.clear()
        replays[data] = what
        self.lengths.add(len(data))

    def replay(self, conn: Connection, r: Replay | Pass, scheme: str) -> bool:
        """Answer a read whose bytes are a remembered request (see above); False: nothing was done,
        the read goes to the parser. (The connection loop hands it Replays only: not r.past.)"""
        if TYPE_CHECKING:
            assert type(r) is Replay
        memo = r.memo
        now = time.time()
        if now >= memo.expires or not self.store.current(memo.way, memo.tag, memo.off) or r.scheme != scheme:
            return False
        if not self.server.keep_wish:
            return False
        started = time.monotonic() if self.timed else 0.0
        self.count("hit")
        e = memo.entry
        age = int(e.initial_age + max(0.0, now - e.stored_at))
        second = int(now)
        if second != r.second or age != r.age:
            r.head = b"%b%d%b%b%b" % (r.pre, age, r.post, http_date(), r.tail)
            r.second, r.age = second, age
        out = conn.out
        out.append(r.head)
        if r.body:
            out.append(r.body)
        conn.status = r.code
        conn.served += 1
        conn.t.enter(NONE)
        if self.timed:
            self.metrics.request(conn, r.req, "", started)
        return True

    def _secret_ok(self, req: Request) -> bool:
        """--require-header as the gate checks it: the field once, with its value (repeated, the
        environ holds the values joined, which never equal it; the gate refuses)."""
        name = self.secret_name
        given = None
        for n, value in req.headers:
            if n.lower() == name:
                if given is not None:
                    return False
                given = value
        return given is not None and hmac.compare_digest(given, self.secret_value)


def attach(server: WorkerServer) -> FastHits | None:
    """The worker's fast path, once its app, mounts and hooks are in place; None when the cache is
    off or something must run before it (see above)."""
    stage = server.stage
    cache = stage.cache
    if cache is None or server.access_log is not None or stage.mounts is not None or stage.hooks is not None:
        return None
    return FastHits(server, cache, stage.gate)

"""RFC 9111 for greenfork's shared response cache: pure functions over raw header values.

No WSGI, no sockets, no clock: every time is handed in (wall-clock seconds, as in Date). Request
fields come as the parser's bytes pairs, response fields as the app's str pairs; both are folded
by request_fields()/response_fields() into {lowercase name: value}, repeated lines joined with
", " (RFC 9110 5.3). The store (greenfork.master.respcache) holds Entry values; this module says
what may go in, under which key, and what a hit answers. docs/caching.md explains each rule.

Flow at the request stage:

    fields = request_fields(req.headers)
    rule = request_rule(method, fields)
    key = primary_key(scheme, host, path, query)          # None (no Host): bypass
    if rule.lookup and key:
        entry = find(cache.lookup, key, fields, now)
        if entry and usable(entry, rule, now): send answer(entry, method, fields, now); done
        if rule.only_if_cached: send ONLY_IF_CACHED_MISS; done
    request_time = now; call the app; once its response is complete (every byte, no error):
    if rule.store and key:                                # GET only: HEAD has rule.store False
        ok = response_rule(status, response_fields(headers), authorized="authorization" in fields,
                           request_time=request_time, response_time=time.time())
        if ok.store: for k, e in make_entries(key, fields, status_line, headers, body, ok, ...):
                         cache.store(k, e)
    elif key and invalidates(method, status): cache.remove(key)
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, NamedTuple

from greenfork.master.respcache import Entry

Fields = Mapping[str, str]  # lowercase field name -> value (repeated lines joined with ", ")

# Heuristically cacheable statuses (RFC 9110 15.1) that a page cache is worth having for: a page,
# a permanent redirect, a "not found" that bots hammer. Explicit freshness is required for all.
CACHEABLE_STATUS: Final = frozenset({200, 301, 404})
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 9.2.1
DELTA_MAX: Final = 2 ** 31  # RFC 9111 1.2.2: larger delta-seconds are taken as 2^31
INVALID: Final = -1  # a directive present with an unusable argument

# Request fields whose evaluation belongs to the app (RFC 9111 4.3.2: If-Match and
# If-Unmodified-Since are not applicable to a cache; whole responses only, as HTTP.sys).
_APP_CONDITIONS: Final = ("if-match", "if-unmodified-since", "range", "if-range")
_HOP_BY_HOP: Final = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                                "transfer-encoding", "upgrade"})
# Dropped when storing: hop-by-hop fields, Age (recomputed per hit, RFC 9111 5.1), Date (the
# response path stamps its own), Content-Length (re-added from the stored body).
_NOT_STORED: Final = _HOP_BY_HOP | {"age", "date", "content-length"}
# What a 304 carries (RFC 9110 15.4.5); Last-Modified too when there is no ETag.
_304_FIELDS: Final = frozenset({"cache-control", "content-location", "etag", "expires", "vary"})
# Vary'd fields whose values are case-insensitive tokens (RFC 9110 12.5.3-12.5.5)
_CASELESS: Final = frozenset({"accept-encoding", "accept-charset", "accept-language"})

_TCHAR = r"!#$%&'*+.^_`|~0-9A-Za-z-"
_DIRECTIVE = re.compile(r'[ \t]*([%s]+)[ \t]*(?:=[ \t]*(?:"((?:[^"\\]|\\.)*)"|([%s]*)))?[ \t]*(?:,|\Z)'
                        % (_TCHAR, _TCHAR), re.ASCII | re.DOTALL)
_GARBAGE = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*"?)*,?', re.DOTALL)  # up to the next comma outside quotes
_UNQUOTE = re.compile(r"\\(.)", re.DOTALL)
_TOKEN = re.compile(r"[%s]+\Z" % _TCHAR, re.ASCII)
_DIGITS = re.compile(r"[0-9]+\Z", re.ASCII)
_ETAG = re.compile(r'(?:W/)?"([^"]*)"')


# -- fields ---------------------------------------------------------------------------------------

def request_fields(pairs: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        n = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        out[n] = out[n] + ", " + v if n in out else v
    return out


def response_fields(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        n = name.lower()
        out[n] = out[n] + ", " + value if n in out else value
    return out


# -- Cache-Control (RFC 9111 5.2) ----------------------------------------------------------------

class CacheControl(NamedTuple):
    directives: dict[str, str | None]  # lowercase name -> argument (unquoted) of its first occurrence
    conflicting: frozenset[str]  # names repeated with different arguments

    def has(self, name: str) -> bool:
        return name in self.directives

    def seconds(self, name: str) -> int | None:
        """A delta-seconds argument (RFC 9111 1.2.2): None when absent, INVALID when present
        without digits or repeated with different values (RFC 9111 4.2.1)."""
        if name not in self.directives:
            return None
        arg = self.directives[name]
        if arg is None or name in self.conflicting or not _DIGITS.match(arg):
            return INVALID
        return min(int(arg), DELTA_MAX)


def parse_cache_control(value: str | None) -> CacheControl:
    """Directives are case-insensitive tokens; arguments are tokens or quoted strings (both forms
    accepted, RFC 9111 5.2); a member that is neither is skipped up to the next comma."""
    directives: dict[str, str | None] = {}
    conflicting: set[str] = set()
    if not value:
        return CacheControl(directives, frozenset())
    pos, end = 0, len(value)
    while pos < end:
        m = _DIRECTIVE.match(value, pos)
        if m is None:
            g = _GARBAGE.match(value, pos)
            pos = max(g.end() if g else end, pos + 1)
            continue
        pos = m.end()
        name = m.group(1).lower()
        quoted, token = m.group(2), m.group(3)
        arg = _UNQUOTE.sub(r"\1", quoted) if quoted is not None else token
        if name in directives:
            if directives[name] != arg:
                conflicting.add(name)
        else:
            directives[name] = arg
    return CacheControl(directives, frozenset(conflicting))


# -- dates (RFC 9110 5.6.7) -----------------------------------------------------------------------

_MONTHS: Final = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_IMF = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{2}) ([A-Z][a-z]{2}) ([0-9]{4}) "
                  r"([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT\Z", re.ASCII)
_RFC850 = re.compile(r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
                     r"([0-9]{2})-([A-Z][a-z]{2})-([0-9]{2}) "
                     r"([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT\Z", re.ASCII)
_ASCTIME = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) ([0-9 ][0-9]) "
                      r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([0-9]{4})\Z", re.ASCII)


def parse_http_date(value: str | None, now: float = 0.0) -> float | None:
    """Seconds since the epoch, or None when value is not an HTTP-date in one of the three forms
    (RFC 9110 5.6.7). A two-digit year more than 50 years after `now` is in the past century."""
    if not value:
        return None
    value = value.strip(" \t")
    if m := _IMF.match(value):
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _RFC850.match(value):
        day, mon, yy, hh, mm, ss = m.groups()
        this_year = 1970 + int(now // 31556952)
        year = str(2000 + int(yy))
        while int(year) > this_year + 50:
            year = str(int(year) - 100)
    elif m := _ASCTIME.match(value):
        mon, day, hh, mm, ss, year = m.groups()
    else:
        return None
    month = _MONTHS.get(mon)
    d, h, mi, s = int(day), int(hh), int(mm), int(ss)
    if month is None or not (1 <= d <= 31 and h <= 23 and mi <= 59 and s <= 60):
        return None
    return float(calendar.timegm((int(year), month, d, h, mi, s, 0, 0, 0)))


# -- may the cache answer this request? ----------------------------------------------------------

class RequestRule(NamedTuple):
    lookup: bool  # may be answered from the cache
    store: bool  # its response may be stored (if the response allows it too)
    reason: str  # why not, when lookup or store is False ("" otherwise)
    max_age: int | None = None  # request max-age (RFC 9111 5.2.1.1)
    min_fresh: int | None = None  # request min-fresh (RFC 9111 5.2.1.3)
    only_if_cached: bool = False  # a miss is a 504 (RFC 9111 5.2.1.7)


def request_rule(method: str, fields: Fields) -> RequestRule:
    if method not in ("GET", "HEAD"):
        return RequestRule(False, False, "method")
    if fields.get("content-length", "0").strip() != "0" or "transfer-encoding" in fields:
        # no generally defined semantics for content in GET (RFC 9110 9.3.1): the app decides
        return RequestRule(False, False, "request-content")
    store = method == "GET"  # a HEAD response has no body to serve a GET with
    reason = "" if store else "head"
    lookup = True
    if "authorization" in fields:
        # HTTP.sys neither answers nor stores a request that carries authentication, and the issue
        # asks the same: stricter than RFC 9111 3.5, which would let a `public` response to it be
        # stored for others. An app that marks a per-user page `public` by mistake (a shared
        # template, a middleware) then leaks nothing; public pages get stored from anonymous
        # requests anyway. The app sees every authenticated request.
        return RequestRule(False, False, "authorization")
    for name in _APP_CONDITIONS:
        if name in fields:
            lookup, reason = False, name
    cc = parse_cache_control(fields.get("cache-control"))
    pragma = "cache-control" not in fields and "no-cache" in fields.get("pragma", "").lower()
    if cc.has("no-cache") or pragma:
        # RFC 9111 5.2.1.4 (and Pragma, 5.4): not from the cache without validation; the app's
        # fresh response may replace the stored one
        lookup, reason = False, "no-cache"
    if cc.has("no-store"):  # RFC 9111 5.2.1.5: may be answered from the cache, never stored
        store, reason = False, "no-store"
    max_age, min_fresh = cc.seconds("max-age"), cc.seconds("min-fresh")
    if max_age == INVALID or min_fresh == INVALID:
        lookup, reason = False, "invalid-cache-control"
    return RequestRule(lookup, store, reason, max_age, min_fresh, cc.has("only-if-cached"))


def usable(entry: Entry, rule: RequestRule, now: float) -> bool:
    """The client's own limits on a fresh entry: max-age (RFC 9111 5.2.1.1; max-age=0, a
    browser's reload, always reaches the app) and min-fresh (5.2.1.3)."""
    age = entry.age(now)
    if rule.max_age is not None and age > rule.max_age:
        return False
    return rule.min_fresh is None or entry.lifetime - age >= rule.min_fresh


# -- may the response be stored, and for how long? -----------------------------------------------

class Storable(NamedTuple):
    store: bool
    reason: str  # why not ("" when it may be stored)
    lifetime: float = 0.0  # freshness lifetime, RFC 9111 4.2.1
    initial_age: float = 0.0  # corrected_initial_age, RFC 9111 4.2.3
    vary: tuple[str, ...] = ()  # lowercase names of the Vary'd request fields


def freshness_lifetime(cc: CacheControl, fields: Fields, now: float) -> float | None:
    """RFC 9111 4.2.1 for a shared cache: s-maxage, else max-age, else Expires minus Date; None
    without explicit freshness. Invalid or conflicting values, and an invalid Expires (such as
    "0"), mean already stale: 0."""
    for name in ("s-maxage", "max-age"):
        seconds = cc.seconds(name)
        if seconds is not None:
            return 0.0 if seconds == INVALID else float(seconds)
    if "expires" not in fields:
        return None
    expires = parse_http_date(fields["expires"], now)
    if expires is None:
        return 0.0
    date = parse_http_date(fields.get("date"), now)
    return max(0.0, expires - (date if date is not None else now))


def initial_age(fields: Fields, request_time: float, response_time: float) -> float:
    """corrected_initial_age (RFC 9111 4.2.3) from the app's Age (first member; ignored when
    invalid, 5.1) and Date (the response time when absent or invalid)."""
    age_value = 0.0
    first = fields.get("age", "").split(",")[0].strip(" \t")
    if _DIGITS.match(first):
        age_value = float(min(int(first), DELTA_MAX))
    date = parse_http_date(fields.get("date"), response_time)
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    corrected_age_value = age_value + max(0.0, response_time - request_time)
    return max(apparent_age, corrected_age_value)


def vary_names(value: str | None) -> tuple[str, ...] | None:
    """The Vary'd field names, lowercase, sorted; None for "*" or a malformed member (RFC 9111 4.1:
    such a response never matches, so it is not stored)."""
    if not value:
        return ()
    names = set()
    for member in value.split(","):
        name = member.strip(" \t").lower()
        if not name:
            continue
        if name == "*" or not _TOKEN.match(name):
            return None
        names.add(name)
    return tuple(sorted(names))


def response_rule(status: int, fields: Fields, *, authorized: bool, request_time: float,
                  response_time: float) -> Storable:
    """Whether a complete response to a GET may be stored (RFC 9111 3 for a shared cache, with
    HTTP.sys's stricter rule that the response says `public` or `s-maxage`)."""
    if status not in CACHEABLE_STATUS:
        return Storable(False, "status")
    if "set-cookie" in fields:
        return Storable(False, "set-cookie")  # one user's cookie must never reach another
    cc = parse_cache_control(fields.get("cache-control"))
    if cc.has("no-store") and not cc.has("must-understand"):
        # RFC 9111 5.2.2.5; must-understand overrides it for statuses the cache understands (5.2.2.3)
        return Storable(False, "no-store")
    if cc.has("private"):  # RFC 9111 5.2.2.7, qualified or not
        return Storable(False, "private")
    if cc.has("no-cache") or "no-cache" in fields.get("pragma", "").lower():
        # RFC 9111 5.2.2.4: only usable after validation, which this cache never does
        return Storable(False, "no-cache")
    vary = vary_names(fields.get("vary"))
    if vary is None:
        return Storable(False, "vary")
    if not (cc.has("public") or cc.has("s-maxage")):
        # HTTP.sys caches only `public`; RFC 9111 3 would also take max-age or Expires alone,
        # which apps send on per-user pages meant for the browser's own cache. This also settles
        # RFC 9111 3.5 for a request with Authorization: public and s-maxage are two of the three
        # directives that allow storing it (must-revalidate alone is not taken)
        return Storable(False, "authorization" if authorized else "not-public")
    lifetime = freshness_lifetime(cc, fields, response_time)
    if lifetime is None:
        return Storable(False, "no-freshness")  # no heuristic freshness (RFC 9111 4.2.2)
    age = initial_age(fields, request_time, response_time)
    if lifetime <= age:
        return Storable(False, "stale")
    return Storable(True, "", lifetime, age, vary)


# -- keys (RFC 9111 2 and 4.1) --------------------------------------------------------------------

def primary_key(scheme: str, host: bytes | None, path: bytes, query: bytes) -> bytes | None:
    """The target URI (RFC 9111 2): scheme, host (lowercase, default port dropped), path and query
    exactly as received. The method is not part of it: HEAD is answered from a stored GET. None
    without a Host (no key that every worker would agree on)."""
    # (find, not `in`: see wsgi.build_environ)
    if not host or host.find(b"\0") >= 0 or path.find(b"\0") >= 0 or query.find(b"\0") >= 0:
        return None
    host = host.lower()
    default = b":443" if scheme == "https" else b":80"
    if host.endswith(default):
        host = host[:-len(default)]
    return b"%s\0%s\0%s\0%s" % (scheme.encode("ascii", "replace"), host, path, query)


def vary_values(names: Sequence[str], fields: Fields) -> tuple[tuple[str, str | None], ...]:
    """Each Vary'd field's value normalised (RFC 9111 4.1): lines combined, whitespace around commas
    dropped, case folded where the field is case-insensitive; None when the request lacks it."""
    out = []
    for name in names:
        value = fields.get(name)
        if value is not None:
            value = ",".join(p for p in (m.strip(" \t") for m in value.split(",")) if p)
            if name in _CASELESS:
                value = value.lower()
        out.append((name, value))
    return tuple(out)


def variant_key(primary: bytes, vary: Sequence[tuple[str, str | None]], epoch: str = "") -> bytes:
    """A variant's key: the primary key, the stub's epoch (see make_entries) and the normalised
    values of the Vary'd fields."""
    parts = [primary, b"\0vary" + epoch.encode("latin-1")]
    for name, value in vary:
        parts.append(b"\0%s%s" % (name.encode("latin-1"),
                                  b"\1" if value is None else b"=" + value.encode("latin-1")))
    return b"".join(parts)


def stored_headers(headers: Sequence[tuple[str, str]], body_length: int) -> tuple[tuple[str, str], ...]:
    connection = {n.strip(" \t").lower() for name, v in headers if name.lower() == "connection"
                  for n in v.split(",")}
    kept = [(n, v) for n, v in headers if n.lower() not in _NOT_STORED and n.lower() not in connection]
    kept.append(("Content-Length", str(body_length)))
    return tuple(kept)


def make_entries(primary: bytes, request: Fields, status: str, headers: Sequence[tuple[str, str]],
                 body: bytes, ok: Storable, response_time: float,
                 epoch: str = "") -> list[tuple[bytes, Entry]]:
    """The (key, entry) pairs to store: the entry under the primary key, or, when the response
    varies, the entry under its variant key and a stub naming the Vary'd fields under the primary.

    `epoch` (stored in the stub's etag field) is part of every variant's key. A store passes the
    epoch of the stub already there (stub_epoch()) so that variants accumulate, or a new one when
    there is none: then an invalidation, which removes the stub, also orphans every variant
    (RFC 9111 4.4), and a later response that makes a new stub never reaches the old ones."""
    fields = response_fields(headers)
    entry = Entry(status, stored_headers(headers, len(body)), body, response_time, ok.lifetime,
                  ok.initial_age, fields.get("etag"), fields.get("last-modified"))
    if not ok.vary:
        return [(primary, entry)]
    values = vary_values(ok.vary, request)
    stub = Entry("", (), b"", response_time, ok.lifetime, ok.initial_age, epoch or None,
                 vary=tuple((n, None) for n in ok.vary), stub=True)
    return [(variant_key(primary, values, epoch), entry._replace(vary=values)), (primary, stub)]


def stub_epoch(stored: Entry | None, vary: Sequence[str]) -> str | None:
    """The epoch to store a new variant with: the stored stub's, if it names the same fields;
    None when a new epoch is needed (no stub, a whole response, or other Vary'd fields)."""
    if stored is None or not stored.stub or tuple(n for n, _ in stored.vary) != tuple(vary):
        return None
    return stored.etag or ""


def find(lookup: Callable[[bytes, float], Entry | None], primary: bytes, request: Fields,
         now: float) -> Entry | None:
    """The stored response selected for this request (RFC 9111 4.1): the primary key's entry, or
    through its stub, the variant whose Vary'd field values match the request's."""
    entry = lookup(primary, now)
    if entry is None or not entry.stub:
        return entry
    return lookup(variant_key(primary, vary_values([n for n, _ in entry.vary], request), entry.etag or ""),
                  now)


# -- answering from an entry ----------------------------------------------------------------------

class Answer(NamedTuple):
    status: str
    headers: list[tuple[str, str]]
    body: bytes


ONLY_IF_CACHED_MISS: Final = Answer("504 Gateway Timeout", [("Content-Type", "text/plain"),
                                                            ("Content-Length", "28")],
                                    b"504 not in the server cache\n")  # RFC 9111 5.2.1.7


def _etag_matches(stored: str, inm: str) -> bool:
    """Weak comparison (RFC 9110 8.8.3.2): opaque-tags equal, W/ ignored. An app's malformed
    (unquoted) ETag matches only the exact same text, so a bad tag never yields a wrong 304."""
    stored = stored.strip(" \t")
    m = _ETAG.fullmatch(stored)
    if m is None:
        return stored in (t.strip(" \t") for t in inm.split(","))
    return m.group(1) in _ETAG.findall(inm)


def not_modified(entry: Entry, request: Fields, now: float) -> bool:
    """RFC 9110 13.2.2 order for a cache (RFC 9111 4.3.2): If-None-Match by weak comparison
    (8.8.3.2) when present; otherwise If-Modified-Since against Last-Modified, or the time the
    entry was stored when it has none. An invalid If-Modified-Since is ignored (13.1.3)."""
    inm = request.get("if-none-match")
    if inm is not None:
        if inm.strip(" \t") == "*":
            return True
        return entry.etag is not None and _etag_matches(entry.etag, inm)
    ims = parse_http_date(request.get("if-modified-since"), now)
    if ims is None:
        return False
    modified = parse_http_date(entry.last_modified, now) if entry.last_modified else None
    return (modified if modified is not None else entry.stored_at) <= ims


def answer(entry: Entry, method: str, request: Fields, now: float) -> Answer:
    """What a hit sends: the stored response with Age (RFC 9111 5.1), without a body for HEAD,
    or a 304 with the fields RFC 9110 15.4.5 lists when the client's copy is current."""
    age = ("Age", str(int(entry.age(now))))
    if not_modified(entry, request, now):
        keep = _304_FIELDS if entry.etag else _304_FIELDS | {"last-modified"}
        return Answer("304 Not Modified", [h for h in entry.headers if h[0].lower() in keep] + [age], b"")
    return Answer(entry.status, [*entry.headers, age], b"" if method == "HEAD" else entry.body)


def invalidates(method: str, status: int) -> bool:
    """RFC 9111 4.4: a non-error response to an unsafe method invalidates the target URI."""
    return method not in SAFE_METHODS and 200 <= status < 400

"""The response cache's fast path for HTTP/1.1 hits (workers/cachefast.py; docs/caching.md).

Two halves. In process: FastHits.answer() over a real store, the real protocol (H1Server) and the
request stage's own memo entries, against what the ordinary path hands the protocol for the same
hit (Known.head(), H1Server.head/send_data/end): the same bytes, the same moves, for every request
shape the fast path takes, and no effect at all for those it must leave alone. In real servers: a
server without an access log (the fast path) against one with (the ordinary path: an access log
turns the fast path off), byte for byte on raw sockets, pipelined, HEAD, HTTP/1.0, Connection:
close; an entry going stale; HUP; metrics; the gate; --max-requests.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenfork.master.respcache import Entry, ResponseCache
from greenfork.workers.cachefast import RULE_FIELDS, FastHits
from greenfork.workers.cachestage import PATH_PASS_AFTER, PREFIX_PATHS, CacheStage, Known, primary_key
from greenfork.workers.h1proto import KEEP, NEED_DATA, SEND_RESPONSE, H1Server
from greenfork.workers.http1 import DEFAULT_LIMITS, Request
from greenfork.workers.request import http_date
from tests import tlscerts
from tests.metricsutil import Key, scrape, total
from tests.procs import Launcher, wait_for

pytestmark = pytest.mark.timeout(120)

BODY = b"<p>cached page</p>\n" * 50
HEADERS = (("Content-Type", "text/html"), ("Cache-Control", "public, max-age=60"), ("ETag", '"v1"'),
           ("Content-Length", str(len(BODY))))


# ------------------------------------------------------------------ in process
class Conn:
    """What FastHits.answer() uses of a Connection: its protocol, output list and counts."""

    def __init__(self) -> None:
        self.p = H1Server(DEFAULT_LIMITS)
        self.out: list[bytes] = []
        self.status = 0
        self.served = 0
        self.version = ""
        self.t = SimpleNamespace(enter=lambda phase: None)  # the transport's timer phase


class Worker:
    """What the cache stage and the fast path read of the WorkerServer."""

    def __init__(self, keep_wish: bool = True, server_header: bool = True) -> None:
        self.counts: list[str] = []
        self.requests: list[tuple[str, int, str]] = []
        self.metrics = SimpleNamespace(response_cache=self.counts.append, request=self._request)
        self.script_name = ""
        self.settings = SimpleNamespace(response_cache_path=())
        self.timed = True
        self.keep_wish = keep_wish
        self.server_header = server_header

    def _request(self, conn: Any, req: Request, err: str, started: float, route: str = "") -> None:
        self.requests.append((req.method, conn.status, err))


@pytest.fixture
def store() -> Iterator[ResponseCache]:
    c = ResponseCache.create(256 * 1024, 16 * 1024)
    c.generation = 1
    try:
        yield c
    finally:
        c.close()


def fast_for(store: ResponseCache, worker: Worker, status: str = "200 OK",
             headers: tuple[tuple[str, str], ...] = HEADERS, body: bytes = BODY, age: float = 5.25,
             lifetime: float = 60.0, host: str = "site.example") -> tuple[FastHits, Known]:
    """A fast path whose URL memo knows /page on host, as the request stage leaves it after a hit."""
    stage = CacheStage(worker, store)  # type: ignore[arg-type]
    now = time.time()
    key = primary_key("http", host, b"/page", b"")
    assert key is not None
    assert store.store(key, Entry(status, headers, body, now - age, lifetime))
    found = store.locate(key, now - age)  # (found while it was fresh)
    assert found is not None
    known = Known(key, *found)
    stage._remember(("http", host, b"/page", ""), known)
    # (the memo is keyed by the target as received: an absolute-form one has its own)
    stage._remember(("http", host, b"http://%s/page" % host.encode(), ""), known)
    return FastHits(worker, stage), known  # type: ignore[arg-type]


def requests_of(p: H1Server, data: bytes) -> Iterator[Request]:
    p.receive_data(data)
    while True:
        ev = p.next_event()
        if ev is NEED_DATA:
            return
        if type(ev) is Request:
            yield ev


def ordinary(p: H1Server, req: Request, known: Known, worker: Worker) -> tuple[bytes, str]:
    """What the request stage's memo hit hands the protocol (CacheStage._send), and the next move."""
    e = known.entry
    out = p.head(e.status, known.head(time.time()), date=http_date(), server=worker.server_header,
                 keep_alive=worker.keep_wish)
    out += p.send_data(e.body)
    out += p.end()
    return out, p.after_response()


SHAPES = {
    "GET": b"GET /page HTTP/1.1\r\nHost: site.example\r\n\r\n",
    "HEAD": b"HEAD /page HTTP/1.1\r\nHost: site.example\r\n\r\n",
    "Connection: close": b"GET /page HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n",
    "HTTP/1.0": b"GET /page HTTP/1.0\r\nHost: site.example\r\n\r\n",
    "HTTP/1.0 keep-alive": b"GET /page HTTP/1.0\r\nHost: site.example\r\nConnection: keep-alive\r\n\r\n",
    "HEAD HTTP/1.0": b"HEAD /page HTTP/1.0\r\nhost: site.example\r\n\r\n",
    "absolute-form": b"GET http://site.example/page HTTP/1.1\r\nHost: other.example\r\n\r\n",
    "other fields": b"GET /page HTTP/1.1\r\nUser-Agent: t\r\nHOST: site.example\r\nAccept: */*\r\n"
                    b"Cookie: a=b\r\nX_Cache_Control: no-cache\r\n\r\n",
    "pipelined": b"GET /page HTTP/1.1\r\nHost: site.example\r\n\r\n" * 3
                 + b"HEAD /page HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n",
}


@pytest.mark.parametrize("keep_wish", [True, False], ids=["keep-alive", "draining"])
@pytest.mark.parametrize("server_header", [True, False], ids=["server", "no-server"])
@pytest.mark.parametrize("status", ["200 OK", "301 Moved Permanently", "404 Not Found"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_same_bytes_and_moves_as_the_ordinary_path(store: ResponseCache, shape: str, status: str,
                                                      server_header: bool, keep_wish: bool) -> None:
    worker = Worker(keep_wish, server_header)
    fast, known = fast_for(store, worker, status)
    conn = Conn()
    slow = H1Server(DEFAULT_LIMITS)
    theirs = requests_of(slow, SHAPES[shape])
    answered = 0
    for req in requests_of(conn.p, SHAPES[shape]):
        action = fast.answer(conn, req, "http")  # type: ignore[arg-type]
        assert action is not None
        want, want_action = ordinary(slow, next(theirs), known, worker)
        assert b"".join(conn.out) == want
        assert b"\r\nAge: 5\r\n" in want
        assert action == want_action
        assert (conn.p.state, conn.p.status, conn.p.body_bytes) == (slow.state, slow.status, slow.body_bytes)
        conn.out.clear()
        answered += 1
        if action != KEEP:
            break
    # all of them, unless the server wants to close (draining: after the first)
    assert answered == (SHAPES[shape].count(b"\r\n\r\n") if keep_wish else 1) and conn.served == answered
    assert worker.counts == ["hit"] * answered
    methods = [m.decode() for m in re.findall(rb"^(GET|HEAD) ", SHAPES[shape], re.M)]
    assert worker.requests == [(m, int(status[:3]), "") for m in methods[:answered]]


LEFT_ALONE = {
    "If-None-Match": b"GET /page HTTP/1.1\r\nHost: site.example\r\nIf-None-Match: \"v1\"\r\n\r\n",
    "If-Modified-Since": b"GET /page HTTP/1.1\r\nHost: site.example\r\n"
                         b"If-Modified-Since: Sun, 29 Nov 2026 10:00:00 GMT\r\n\r\n",
    "Cache-Control": b"GET /page HTTP/1.1\r\nHost: site.example\r\nCache-Control: max-age=0\r\n\r\n",
    "Pragma": b"GET /page HTTP/1.1\r\nHost: site.example\r\nPragma: no-cache\r\n\r\n",
    "Authorization": b"GET /page HTTP/1.1\r\nHost: site.example\r\nAuthorization: Basic eDp5\r\n\r\n",
    "Range": b"GET /page HTTP/1.1\r\nHost: site.example\r\nrange: bytes=0-1\r\n\r\n",
    "If-Match": b"GET /page HTTP/1.1\r\nHost: site.example\r\nIf-Match: *\r\n\r\n",
    "Content-Length: 0": b"GET /page HTTP/1.1\r\nHost: site.example\r\nContent-Length: 0\r\n\r\n",
    "a chunked body": b"GET /page HTTP/1.1\r\nHost: site.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"0\r\n\r\n",
    "POST": b"POST /page HTTP/1.1\r\nHost: site.example\r\nContent-Length: 0\r\n\r\n",
    "OPTIONS": b"OPTIONS /page HTTP/1.1\r\nHost: site.example\r\n\r\n",
    "Upgrade": b"GET /page HTTP/1.1\r\nHost: site.example\r\nConnection: Upgrade\r\n"
               b"Upgrade: websocket\r\n\r\n",
    "Expect": b"GET /page HTTP/1.1\r\nHost: site.example\r\nExpect: 100-continue\r\n\r\n",
    "no Host": b"GET /page HTTP/1.0\r\n\r\n",
    "empty Host": b"GET /page HTTP/1.1\r\nHost:\r\n\r\n",
    "another host": b"GET /page HTTP/1.1\r\nHost: Site.example\r\n\r\n",
    "another target": b"GET /page? HTTP/1.1\r\nHost: site.example\r\n\r\n",
}


@pytest.mark.parametrize("shape", list(LEFT_ALONE))
def test_requests_the_rules_read_are_left_to_the_ordinary_path(store: ResponseCache, shape: str) -> None:
    worker = Worker()
    fast, _ = fast_for(store, worker)
    conn = Conn()
    req = next(requests_of(conn.p, LEFT_ALONE[shape]))
    assert fast.answer(conn, req, "http") is None  # type: ignore[arg-type]
    assert conn.out == [] and conn.p.state == SEND_RESPONSE and conn.served == 0
    assert worker.counts == [] and worker.requests == []


def test_a_url_the_memo_has_not_pointed_at_a_copy_is_left_alone(store: ResponseCache) -> None:
    """The stage's hot targets: a target never memoised with a copy is not looked up further; one
    whose memo now holds a key or a pass (hit-for-pass) is looked up, and left alone."""
    worker = Worker()
    fast, known = fast_for(store, worker)
    stage = fast.stage
    assert stage.hot == {b"/page", b"http://site.example/page"}
    stage._remember(("http", "site.example", b"/page", ""), time.time() + 60.0)  # a pass now
    conn = Conn()
    req = next(requests_of(conn.p, SHAPES["GET"]))
    assert fast.answer(conn, req, "http") is None  # type: ignore[arg-type]
    stage._remember(("http", "site.example", b"/page", ""), known.key)
    assert fast.answer(conn, req, "http") is None  # type: ignore[arg-type]
    stage._remember(("http", "site.example", b"/page", ""), known)
    assert fast.answer(conn, req, "http") == KEEP  # type: ignore[arg-type]
    assert worker.counts == ["hit"]


def test_another_scheme_is_another_url(store: ResponseCache) -> None:
    worker = Worker()
    fast, _ = fast_for(store, worker)
    conn = Conn()
    req = next(requests_of(conn.p, SHAPES["GET"]))
    assert fast.answer(conn, req, "https") is None  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["stale", "replaced", "removed", "cleared", "dropped"])
def test_an_entry_no_longer_current_is_left_to_the_ordinary_path(store: ResponseCache, how: str) -> None:
    worker = Worker()
    fast, known = fast_for(store, worker, age=70.0 if how == "stale" else 1.0)
    key = known.key
    if how == "replaced":
        store.store(key, Entry("200 OK", HEADERS, BODY, time.time(), 60.0))
    elif how == "removed":
        store.remove(key)
    elif how == "cleared":
        store.clear()
    elif how == "dropped":
        known.drop()
    conn = Conn()
    req = next(requests_of(conn.p, SHAPES["GET"]))
    assert fast.answer(conn, req, "http") is None  # type: ignore[arg-type]
    assert conn.out == [] and worker.counts == []


@pytest.mark.parametrize("server_header", [True, False], ids=["server", "no-server"])
@pytest.mark.parametrize("shape", ["GET", "HEAD", "HTTP/1.0 keep-alive", "absolute-form", "other fields"])
def test_a_replay_writes_what_answer_wrote(store: ResponseCache, shape: str, server_header: bool) -> None:
    """learn() after answer(), then replay(): the same bytes out (the clock and Age alike), the same
    counts, and the protocol object left idle, as the parsed answer leaves it."""
    worker = Worker(server_header=server_header)
    fast, _ = fast_for(store, worker)
    conn = Conn()
    req = next(requests_of(conn.p, SHAPES[shape]))
    assert fast.answer(conn, req, "http") == KEEP  # type: ignore[arg-type]
    fast.learn(SHAPES[shape], req, "http")
    r = fast.replays[SHAPES[shape]]
    again = Conn()
    assert fast.replay(again, r, "http")  # type: ignore[arg-type]
    assert b"".join(again.out) == b"".join(conn.out)  # (within the same second: Date and Age alike)
    assert (again.status, again.served) == (conn.status, 1)
    assert worker.counts == ["hit", "hit"] and worker.requests[0] == worker.requests[1]
    assert again.p.between_requests and again.p.next_event() is NEED_DATA
    again.p.receive_data(SHAPES[shape])  # and it parses the next request as it would have
    assert type(again.p.next_event()) is Request


@pytest.mark.parametrize("how", ["stale", "replaced", "dropped", "scheme", "draining", "closing"])
def test_a_replay_that_would_differ_is_left_to_the_parser(store: ResponseCache, how: str) -> None:
    worker = Worker()
    fast, known = fast_for(store, worker, lifetime=60.0)
    conn = Conn()
    data = SHAPES["Connection: close" if how == "closing" else "GET"]
    req = next(requests_of(conn.p, data))
    action = fast.answer(conn, req, "http")  # type: ignore[arg-type]
    if how == "closing":  # never remembered: the connection loop learns only what kept it
        assert action != KEEP
        return
    fast.learn(data, req, "http")
    r = fast.replays[data]
    if how == "stale":
        known.expires = time.time() - 1
    elif how == "replaced":
        store.store(known.key, Entry("200 OK", HEADERS, BODY, time.time(), 60.0))
    elif how == "dropped":
        known.drop()
    elif how == "draining":
        worker.keep_wish = False  # the ordinary path answers, with Connection: close
    again = Conn()
    assert not fast.replay(again, r, "https" if how == "scheme" else "http")  # type: ignore[arg-type]
    assert again.out == [] and worker.counts == ["hit"] and again.served == 0


def test_lapsed_pass_marks_are_dropped(store: ResponseCache) -> None:
    worker = Worker()
    fast, _ = fast_for(store, worker)
    fast.learn_pass(b"lapsed", 1, time.time() - 0.1, "http")
    fast.learn_pass(b"current", 2, time.time() + 5, "http")
    conn = Conn()
    req = next(requests_of(conn.p, SHAPES["GET"]))
    fast.answer(conn, req, "http")  # type: ignore[arg-type]
    fast.learn(SHAPES["GET"], req, "http")
    fast.expire()
    assert sorted(fast.replays) == sorted([b"current", SHAPES["GET"]])  # (replays are the entry's)
    assert fast.lengths == {len(b"current"), len(SHAPES["GET"])}  # (the lengths looked up)


def test_paths_passed_whole_are_dropped_once_lapsed_or_stored_under(store: ResponseCache) -> None:
    """The paths the connection loop sends past the cache (CacheStage.passed_paths): a path enters
    with its pass, unless an entry is stored under it already; expire() drops it once its pass has
    lapsed, or once an entry was stored under it (by any worker: the store's path filter)."""
    worker = Worker()
    fast, _ = fast_for(store, worker)
    stage = fast.stage
    now = time.time()

    def put(path: bytes) -> None:
        key = primary_key("http", "h", path, b"q=stored")
        assert key is not None and store.store(key, Entry("200 OK", HEADERS, BODY, now, 60))

    put(b"/stored-before")

    def fail(path: bytes) -> None:
        """PATH_PASS_AFTER URLs with a query under path, none storable (as Fill.after() reports)."""
        for i in range(PATH_PASS_AFTER):
            target = path + b"?q=%d" % i
            req = next(requests_of(H1Server(DEFAULT_LIMITS), b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target))
            stage.passed(("http", "h", target, ""), {}, now, req)

    for path in (b"/kept", b"/lapsed", b"/stored-after", b"/stored-before"):
        fail(path)
    assert set(stage.path_passes) == {b"/kept", b"/lapsed", b"/stored-after", b"/stored-before"}
    assert stage.passed_paths == {b"/kept", b"/lapsed", b"/stored-after"}  # (never one stored under)
    assert fast.parts[4] is stage.passed_paths  # (what a connection takes: the same set)
    # the request lines' starts the loop recognises before parsing follow the set
    assert sorted(stage.pass_prefixes) == sorted(b"GET %s%s" % (p, end) for p in stage.passed_paths
                                                 for end in (b"?", b" "))
    stage.path_passes[b"/lapsed"] = now - 0.1
    put(b"/stored-after")
    fast.expire()
    assert stage.passed_paths == {b"/kept"}
    assert sorted(stage.pass_prefixes) == [b"GET /kept ", b"GET /kept?"]
    for i in range(2 * PREFIX_PATHS):  # ... for a few paths only: a read is tested against each
        fail(b"/many-%d" % i)
    assert len(stage.passed_paths) == 2 * PREFIX_PATHS + 1
    assert len(stage.pass_prefixes) == 2 * PREFIX_PATHS
    stage.path_passes.update(dict.fromkeys(stage.path_passes, now - 0.1))
    fast.expire()
    assert stage.passed_paths == set() and stage.pass_prefixes == ()


def test_a_head_the_protocol_would_rework_is_left_to_the_ordinary_path(store: ResponseCache) -> None:
    """fixed_head() takes only what response_head() writes unchanged: a stored field the
    connection acts on (never stored by cachepolicy, but not the fast path's to assume)."""
    worker = Worker()
    headers = (*HEADERS[:-1], ("Connection", "close"), HEADERS[-1])
    fast, known = fast_for(store, worker, headers=headers)
    conn = Conn()
    req = next(requests_of(conn.p, SHAPES["GET"]))
    assert fast.answer(conn, req, "http") is None  # type: ignore[arg-type]
    assert known.wire is not None and known.wire[1] == 0  # remembered: not made again


def test_the_connection_extra_keys_that_touch_the_key_turn_it_off(store: ResponseCache) -> None:
    fast, _ = fast_for(store, Worker())
    base = {"wsgi.url_scheme": "http"}
    assert fast.scheme(base, {}) == "http"
    assert fast.scheme(base, {"SSL_PROTOCOL": "TLSv1.3", "REMOTE_ADDR": "10.0.0.1"}) == "http"
    assert fast.scheme(base, {"wsgi.url_scheme": "https"}) == "https"
    assert fast.scheme(base, {"HTTP_HOST": "x"}) is None
    assert fast.scheme(base, {"SCRIPT_NAME": "/app"}) is None
    assert fast.scheme(base, {"HTTP_AUTHORIZATION": "x"}) is None


# ------------------------------------------------------------------ real servers
CC = "cc=public%2C%20max-age%3D600"


class Srv:
    """A 1-worker server of tests/apps/fastprobe.py (cacheapp's app, and /fastcount: how many
    requests the fast path answered in the worker)."""

    def __init__(self, launcher: Launcher, tmp: Path, *args: str, access: bool = False,
                 probe_fields: tuple[str, ...] = ()) -> None:
        self.probe_fields = probe_fields  # what /fastcount needs past the gate
        self.probes = 0
        self.calls_path = tmp / f"calls-{len(launcher.started)}.log"
        self.access_path = tmp / f"access-{len(launcher.started)}.log"
        extra = ["--access-logfile", str(self.access_path)] if access else []
        self.g = launcher.start(["fastprobe:app", "-b", "http://127.0.0.1:0", "--metrics-bind",
                                 "http://127.0.0.1:0", "--response-cache", "1MiB", *extra, *args],
                                workers=1, env={"CACHEAPP_LOG": str(self.calls_path)})
        self.port = self.g.port()
        self.metrics = str(self.g.info["metrics"])

    def calls(self) -> int:
        """The app's calls for cacheable URLs (cacheapp's log)."""
        return len(self.calls_path.read_text().splitlines()) if self.calls_path.exists() else 0

    def raw(self, data: bytes) -> bytes:
        """Send data on a new connection and read until the server closes it."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(data)
            got = []
            while chunk := s.recv(65536):
                got.append(chunk)
        return b"".join(got)

    def get(self, target: str, *fields: str) -> bytes:
        head = "".join(f"{f}\r\n" for f in fields)
        return self.raw(f"GET {target} HTTP/1.1\r\nHost: h.example\r\n{head}Connection: close\r\n\r\n"
                        .encode())

    def counts(self) -> tuple[int, int]:
        """Requests the fast path has answered so far: parsed (answer()), and replayed."""
        return self.probe()[:2]

    def probe(self) -> tuple[int, int, int, int]:
        """/fastcount: answer()'s and replay()'s answers, the request stage's before() calls
        (this one's own included: a new URL each time, never a pass mark, and a new path without
        a query, never passed whole) and the store keys it made."""
        self.probes += 1
        answer = self.get(f"/fastcount/{self.probes}", *self.probe_fields)
        parsed, replayed, befores, keys = answer.rpartition(b"\r\n\r\n")[2].split()
        return int(parsed), int(replayed), int(befores), int(keys)

    def fast(self) -> int:
        """Requests the fast path has answered so far, both ways."""
        return sum(self.counts())

    def warm(self, target: str, *fields: str) -> None:
        """A store, then a hit through the request stage (which points the URL memo at the entry)."""
        self.get(target, *fields)
        self.get(target, *fields)


def masked(data: bytes) -> bytes:
    data = re.sub(rb"\r\nAge: \d+\r\n", b"\r\nAge: -\r\n", data)
    return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: -\r\n", data)


def batch(target: str) -> bytes:
    t = target.encode()
    return (b"GET %s HTTP/1.1\r\nHost: h.example\r\n\r\n" % t
            + b"HEAD %s HTTP/1.1\r\nHost: h.example\r\nAccept: */*\r\n\r\n" % t
            + b"GET %s HTTP/1.1\r\nHost: h.example\r\nIf-None-Match: \"nope\"\r\n\r\n" % t
            + b"GET %s HTTP/1.1\r\nHost: h.example:80\r\n\r\n" % t
            + b"GET %s HTTP/1.1\r\nHost: h.example\r\nConnection: close\r\n\r\n" % t)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Srv, Srv]]:
    """(fast, ordinary): the same server, without and with an access log (which turns the fast
    path off)."""
    tmp = tmp_path_factory.mktemp("fastpath")
    ln = Launcher(tmp)
    try:
        yield Srv(ln, tmp), Srv(ln, tmp, access=True)
    finally:
        ln.cleanup()


def duration_count(samples: dict[Any, float], method: str, status: str) -> float:
    return total(samples, "http_server_request_duration_seconds_count", http_request_method=method,
                 http_response_status_code=status, url_scheme="http", network_protocol_version="1.1")


@pytest.mark.parametrize(("query", "fast_hits"), [
    ("", 3), ("&size=4096", 3), ("&st=404", 3), ("&st=301&etag=%22e%22", 3),
    # over the worker's copies' share (1/8 of 1/8 of 1 MiB): no URL memo, the request stage answers
    ("&size=70000&stream=1", 0)])
def test_a_server_answers_hits_as_the_ordinary_path_does(pair: tuple[Srv, Srv], query: str,
                                                         fast_hits: int) -> None:
    """Pipelined on one connection: GET, HEAD, a conditional GET that does not match (through the
    request stage: a field the rules read), Host with the default port, and Connection: close."""
    fast, slow = pair
    target = f"/r?{CC}{query}"
    for srv in pair:
        srv.warm(target)
    calls = fast.calls(), slow.calls()
    counted = fast.fast(), slow.fast()
    before = scrape(fast.metrics), scrape(slow.metrics)
    answers = [srv.raw(batch(target)) for srv in pair]
    after = scrape(fast.metrics), scrape(slow.metrics)
    assert (fast.calls(), slow.calls()) == calls  # every answer came from the cache
    # the fast path: GET, HEAD and the last GET; "h.example:80" is a URL the memo has not seen yet
    assert (fast.fast() - counted[0], slow.fast() - counted[1]) == (fast_hits, 0)
    assert answers[0].count(b"HTTP/1.1 ") == 5 and answers[0].count(b"\r\nAge: ") == 5
    assert answers[0].endswith(BODY_END) or query.startswith("&size")
    assert b"Connection: close\r\n" in answers[0]
    assert masked(answers[0]) == masked(answers[1])
    for i in (0, 1):  # counted alike: cache hits and http.server.request.duration with the same labels
        assert total(after[i], "greenfork_response_cache_requests_total", result="hit") - \
            total(before[i], "greenfork_response_cache_requests_total", result="hit") == 5
    status = "200" if "st=" not in query else query.split("st=")[1][:3]
    for method, n in (("GET", 4), ("HEAD", 1)):
        got = [duration_count(after[i], method, status) - duration_count(before[i], method, status)
               for i in (0, 1)]
        assert got == [n, n]


BODY_END = b"ae=-\n"  # cacheapp's body: the query and the Accept-Encoding it saw


def test_http10_and_one_byte_at_a_time(pair: tuple[Srv, Srv]) -> None:
    target = f"/r?{CC}&size=100"
    for srv in pair:
        srv.warm(target)
    counted = pair[0].fast()
    req = (f"GET {target} HTTP/1.0\r\nHost: h.example\r\nConnection: keep-alive\r\n\r\n"
           f"HEAD {target} HTTP/1.0\r\nHost: h.example\r\n\r\n").encode()
    answers = []
    for srv in pair:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            for i in range(len(req)):
                s.sendall(req[i:i + 1])
            got = []
            while chunk := s.recv(65536):
                got.append(chunk)
        answers.append(b"".join(got))
    assert pair[0].fast() == counted + 2
    assert answers[0].count(b"HTTP/1.1 200") == 2 and b"Connection: keep-alive\r\n" in answers[0]
    assert masked(answers[0]) == masked(answers[1])


def test_an_entry_going_stale_reaches_the_app_again(pair: tuple[Srv, Srv]) -> None:
    fast, _ = pair
    target = "/r?cc=public%2C%20max-age%3D1&n=stale"
    fast.warm(target)
    calls, counted = fast.calls(), fast.fast()
    answer = fast.get(target)
    assert b"\r\nAge: " in answer and fast.calls() == calls and fast.fast() == counted + 1

    def refreshed() -> bool:
        answer = fast.get(target)
        return b"\r\nAge: " not in answer and fast.calls() == calls + 1

    wait_for(refreshed, 5, "the entry to go stale and the app to answer")


class Client:
    """One keep-alive connection that reads one response at a time (by its Content-Length)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.s.close()

    def send_read(self, data: bytes) -> None:
        """Send data and wait until the server has read it (its socket's receive queue is empty):
        the server then has it as one read, or as the end of one."""
        self.s.sendall(data)
        mine = self.s.getsockname()[1]

        def read_by_server() -> bool:
            out = subprocess.run(["ss", "-Htn", "state", "established",
                                  f"( sport = :{self.port} and dport = :{mine} )"],
                                 capture_output=True, text=True, timeout=10).stdout.split()
            return bool(out) and out[0] == "0"

        wait_for(read_by_server, 10, "the server to read what was sent")

    def ask(self, data: bytes, head_only: bool = False) -> bytes:
        self.send_read(data)
        return self.response(head_only)

    def response(self, head_only: bool = False) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        length = 0 if head_only else int(re.search(rb"\r\nContent-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return head + b"\r\n\r\n" + body

    def _more(self) -> None:
        chunk = self.s.recv(65536)
        assert chunk, f"the server closed the connection; had {self.buf!r}"
        self.buf += chunk


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_a_read_seen_before_is_answered_again_unparsed(pair: tuple[Srv, Srv], version: str) -> None:
    """The replay memo: the same bytes in one read, on a kept connection, answered as the parsed
    request was (byte for byte but Date and Age), counted alike, the app never called."""
    fast, _ = pair
    target = f"/r?{CC}&n=replay{version}"
    fast.warm(target)
    calls, (parsed, replayed) = fast.calls(), fast.counts()
    keep = "Connection: keep-alive\r\n" if version == "1.0" else ""
    get = f"GET {target} HTTP/{version}\r\nHost: h.example\r\n{keep}\r\n".encode()
    head = f"HEAD {target} HTTP/{version}\r\nHost: h.example\r\n{keep}\r\n".encode()
    c = Client(fast.port)
    try:
        # (a connection's first read may be taken by the HTTP/2 preface check: not this one)
        c.ask(b"GET /fastcount HTTP/1.1\r\nHost: h.example\r\n\r\n")
        before = scrape(fast.metrics)
        gets = [c.ask(get) for _ in range(3)]
        heads = [c.ask(head, head_only=True) for _ in range(3)]
        assert c.buf == b""
    finally:
        c.close()
    after = scrape(fast.metrics)
    assert fast.calls() == calls
    # the first of each parsed (and remembered), the others replayed
    assert fast.counts() == (parsed + 2, replayed + 4)
    assert {masked(a) for a in gets} == {masked(gets[0])} and gets[0].endswith(BODY_END)
    assert {masked(a) for a in heads} == {masked(heads[0])}
    assert masked(heads[0]) == masked(gets[0]).partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    for answer in gets + heads:
        assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nAge: " in answer
        assert (b"\r\nConnection: keep-alive\r\n" in answer) == (version == "1.0")
    assert total(after, "greenfork_response_cache_requests_total", result="hit") - \
        total(before, "greenfork_response_cache_requests_total", result="hit") == 6
    for method in ("GET", "HEAD"):
        labels = dict(http_request_method=method, http_response_status_code="200", url_scheme="http",
                      network_protocol_version=version)
        assert total(after, "http_server_request_duration_seconds_count", **labels) - \
            total(before, "http_server_request_duration_seconds_count", **labels) == 3


def test_a_new_connections_first_read_is_replayed_too(pair: tuple[Srv, Srv]) -> None:
    """A new connection's first read (taken by the HTTP/2 preface check, then handed to the loop
    as its first read) is looked up like any: the same bytes on new connections are replayed, and
    the connection goes on to its next request."""
    fast, _ = pair
    target = f"/r?{CC}&n=first-read"
    fast.warm(target)
    calls, (parsed, replayed) = fast.calls(), fast.counts()
    get = f"GET {target} HTTP/1.1\r\nHost: h.example\r\n\r\n".encode()
    answers = []
    for _ in range(3):
        c = Client(fast.port)
        try:
            answers.append(c.ask(get))  # the connection's first bytes
            answers.append(c.ask(get))
            assert c.buf == b""
        finally:
            c.close()
    assert fast.calls() == calls
    # the first connection's first read answered parsed (and learnt), every other one replayed
    assert fast.counts() == (parsed + 1, replayed + 5)
    assert {masked(a) for a in answers} == {masked(answers[0])} and answers[0].endswith(BODY_END)


def test_a_head_in_pieces_is_never_replayed_from_a_piece(pair: tuple[Srv, Srv]) -> None:
    """A request that came in two reads is not remembered under its first: that read alone must
    wait for the rest (answering it would parse the rest as a request of its own, a 400)."""
    fast, _ = pair
    target = f"/r?{CC}&n=pieces"
    fast.warm(target)
    whole = f"GET {target} HTTP/1.1\r\nHost: h.example\r\n\r\n".encode()
    first, rest = whole[:20], whole[20:]
    c = Client(fast.port)
    try:
        for _ in range(3):  # each in two reads
            c.send_read(first)
            answer = c.ask(rest)
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(BODY_END)
        assert c.ask(whole).endswith(BODY_END) and c.ask(whole).endswith(BODY_END)  # learnt, replayed
        c.send_read(first)
        answer = c.ask(rest)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(BODY_END) and c.buf == b""
    finally:
        c.close()


def test_pipelined_reads_are_never_remembered(pair: tuple[Srv, Srv]) -> None:
    """A read with two requests is parsed, each time: replaying it whole would answer one."""
    fast, _ = pair
    target = f"/r?{CC}&n=pipelined"
    fast.warm(target)
    one = f"GET {target} HTTP/1.1\r\nHost: h.example\r\n\r\n".encode()
    _, replayed = fast.counts()
    c = Client(fast.port)
    try:
        for _ in range(3):
            c.send_read(one * 2)
            assert c.response().endswith(BODY_END) and c.response().endswith(BODY_END)
    finally:
        c.close()
    assert fast.counts()[1] == replayed


def test_a_replay_never_outlives_its_entry(pair: tuple[Srv, Srv]) -> None:
    """The same bytes reach the app again once the entry is dropped (an unsafe request to the
    URL) or stale."""
    fast, _ = pair
    target = "/r?cc=public%2C%20max-age%3D1&n=replay-stale"
    fast.warm(target)
    get = f"GET {target} HTTP/1.1\r\nHost: h.example\r\n\r\n".encode()
    c = Client(fast.port)
    try:
        assert b"\r\nAge: " in c.ask(get) and b"\r\nAge: " in c.ask(get)  # learnt, replayed
        calls = fast.calls()
        changed = c.ask(f"POST {target} HTTP/1.1\r\nHost: h.example\r\nContent-Length: 0\r\n\r\n".encode())
        assert changed.startswith(b"HTTP/1.1 200 ") and fast.calls() == calls + 1
        answer = c.ask(get)
        assert b"\r\nAge: " not in answer and fast.calls() == calls + 2  # stored again
        assert b"\r\nAge: " in c.ask(get)  # a hit, parsed
        assert b"\r\nAge: " in c.ask(get)  # and replayed
        calls = fast.calls()
        wait_for(lambda: b"\r\nAge: " not in c.ask(get), 5, "the entry to go stale")
        assert fast.calls() == calls + 1
    finally:
        c.close()


def test_a_read_the_memo_sent_past_the_cache_goes_past_it_again(pair: tuple[Srv, Srv]) -> None:
    """Pass marks: the same bytes of a request whose URL is not stored (hit-for-pass) skip the
    cache's lookup (no before()), run the app every time, and leave nothing behind for the
    connection's next request."""
    fast, _ = pair
    target = "/r?n=passmark"  # no Cache-Control: never stored
    neighbour = f"/r?{CC}&n=passmark-neighbour"
    fast.warm(neighbour)
    get = f"GET {target} HTTP/1.1\r\nHost: h.example\r\n\r\n".encode()
    c = Client(fast.port)
    try:
        c.ask(b"GET /fastcount HTTP/1.1\r\nHost: h.example\r\n\r\n")  # (the first read)
        calls, befores = fast.calls(), fast.probe()[2]
        before = scrape(fast.metrics)
        answers = [c.ask(get) for _ in range(10)]
        hit = c.ask(f"GET {neighbour} HTTP/1.1\r\nHost: h.example\r\n\r\n".encode())
        after = scrape(fast.metrics)
    finally:
        c.close()
    assert fast.calls() == calls + 10  # the app answered each of them
    assert all(a.startswith(b"HTTP/1.1 200 ") and b"\r\nAge: " not in a for a in answers)
    assert {masked(a) for a in answers} == {masked(answers[0])}
    assert b"\r\nAge: " in hit and hit.endswith(BODY_END)  # the mark was taken by its own request
    # the first request a miss, the second a pass by the URL memo (learnt), the others by the mark:
    # before() twice (+ twice more if the 1 s pass lapsed meanwhile), and once for /fastcount
    assert fast.probe()[2] - befores - 1 <= 4

    def count(result: str) -> float:
        return total(after, "greenfork_response_cache_requests_total", result=result) - \
            total(before, "greenfork_response_cache_requests_total", result=result)

    assert count("miss") + count("bypass") == 10 and count("hit") == 1

    # and the marks lapse with their pass (dropped every half second): the same bytes reach
    # before() again
    c = Client(fast.port)
    try:
        c.ask(b"GET /fastcount HTTP/1.1\r\nHost: h.example\r\n\r\n")
        c.ask(get)
        c.ask(get)  # (a mark, learnt now if the old one had lapsed)

        def looked_up_again() -> bool:
            start = fast.probe()[2]  # (counted before the app answers: this probe's call included)
            c.ask(get)
            return fast.probe()[2] - start == 2  # the next probe's call, and the get's

        wait_for(looked_up_again, 10, "a pass mark to lapse")
    finally:
        c.close()


def test_pipelined_reads_the_memo_sent_past_the_cache_are_marked_too(pair: tuple[Srv, Srv]) -> None:
    """A read of three requests for a URL that is never stored, sent again and again: once the URL
    memo has sent all three past the cache, the same bytes skip before() for each of them, and the
    app still answers every one."""
    fast, _ = pair
    one = b"GET /r?n=pipelined-pass HTTP/1.1\r\nHost: h.example\r\n\r\n"
    c = Client(fast.port)
    try:
        c.ask(b"GET /fastcount HTTP/1.1\r\nHost: h.example\r\n\r\n")  # (the first read)
        calls, befores = fast.calls(), fast.probe()[2]
        before = scrape(fast.metrics)
        for _ in range(10):
            c.send_read(one * 3)
            answers = [c.response() for _ in range(3)]
            assert all(a.startswith(b"HTTP/1.1 200 ") and b"\r\nAge: " not in a for a in answers)
        assert c.buf == b""
        after = scrape(fast.metrics)
    finally:
        c.close()
    assert fast.calls() == calls + 30
    # each of them counted once, by the cache's lookup or with its marked read
    got = {result: total(after, "greenfork_response_cache_requests_total", result=result)
           - total(before, "greenfork_response_cache_requests_total", result=result)
           for result in ("hit", "miss", "bypass")}
    assert got["hit"] == 0 and got["miss"] >= 1 and got["miss"] + got["bypass"] == 30
    # the first read: a miss, then two passes by the URL memo; the second: three passes (learnt);
    # the other eight none (up to six more if the 1 s pass lapsed meanwhile); once for /fastcount.
    # Unmarked, it was 30.
    assert fast.probe()[2] - befores - 1 <= 12


def test_a_request_on_a_new_connection_each_time_is_marked_too(pair: tuple[Srv, Srv]) -> None:
    """A client with a new connection per request (Connection: close) sends the same bytes each
    time: its first read is looked up as a kept connection's is (after the HTTP/2 preface check),
    so a pass mark is learnt, and taken, although the connection closes after the request."""
    fast, _ = pair
    get = b"GET /r?n=close-pass HTTP/1.1\r\nHost: h.example\r\nConnection: close\r\n\r\n"
    calls, befores = fast.calls(), fast.probe()[2]
    answers = [fast.raw(get) for _ in range(10)]
    assert all(a.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close\r\n" in a for a in answers)
    assert fast.calls() == calls + 10
    # a miss, a pass by the URL memo (learnt), then marks (twice more if the pass lapsed); and
    # once for /fastcount. Unmarked, it was 10.
    assert fast.probe()[2] - befores - 1 <= 4


def test_a_path_nothing_is_stored_under_makes_no_key(pair: tuple[Srv, Srv]) -> None:
    """The store's path filter: requests for a path no worker stored anything under (a new URL, a
    POST) go without making the store key or looking it up; once an entry is stored under the path,
    a POST finds and drops it as before (RFC 9111 4.4), and the next GET runs the app. The
    connection loop reads the path filter for a method the cache never answers: such a POST never
    reaches the request stage's before(), and is counted as `bypass` all the same. The worker keeps
    the path filter's slot of the last such path (the POSTs here go to one path), never its bit:
    the last POST, to that path again, must see the bit the GET's store set."""
    fast, _ = pair

    def bypassed() -> float:
        return total(scrape(fast.metrics), "greenfork_response_cache_requests_total", result="bypass")

    _, _, befores, keys = fast.probe()
    bypass = bypassed()
    for i in range(3):
        assert fast.raw(f"POST /nokey?n={i} HTTP/1.1\r\nHost: h.example\r\nContent-Length: 0\r\n"
                        f"Connection: close\r\n\r\n".encode()).startswith(b"HTTP/1.1 200 ")
        assert fast.get(f"/nokey-{i}?n=new").startswith(b"HTTP/1.1 200 ")  # each URL new, never stored
    assert bypassed() == bypass + 3  # the POSTs
    _, _, befores_now, keys_now = fast.probe()
    assert keys_now == keys  # none made
    assert befores_now == befores + 3 + 1  # the GETs' and the probe's own: none for the POSTs
    target = f"/nokey?{CC}"  # (the path the POSTs went to)
    calls = fast.calls()
    assert b"\r\nAge: " not in fast.get(target) and fast.calls() == calls + 1  # a miss, stored
    assert b"\r\nAge: " in fast.get(target) and fast.calls() == calls + 1  # a hit
    _, _, befores, keys = fast.probe()
    post = f"POST {target} HTTP/1.1\r\nHost: h.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert fast.raw(post.encode()).startswith(b"HTTP/1.1 200 ")
    _, _, befores_now, keys_now = fast.probe()
    assert keys_now == keys + 1  # its key, to find the entry
    assert befores_now == befores + 1 + 1  # the POST (the path filter says maybe) and the probe
    assert b"\r\nAge: " not in fast.get(target) and fast.calls() == calls + 3  # dropped: the app again


def test_a_path_whose_urls_with_a_query_are_never_stored_is_passed_whole(pair: tuple[Srv, Srv]) -> None:
    """Hit-for-pass for a path (a search's, an API's: a new query string each time): once eight URLs
    with a query under it could not be stored, its GETs skip the cache (`bypass`, not a `miss` each)
    for a second; a storable URL under it is stored once that lapses; and a path with an entry
    stored under it is never passed whole."""
    fast, _ = pair

    def delta(before: dict[Key, float], after: dict[Key, float], result: str) -> float:
        return total(after, "greenfork_response_cache_requests_total", result=result) - \
            total(before, "greenfork_response_cache_requests_total", result=result)

    befores = fast.probe()[2]  # (itself a miss: before the scrape)
    before = scrape(fast.metrics)
    answers = [fast.get(f"/search?q={i}", "Cookie: session=1") for i in range(20)]  # (as browsers do)
    after = scrape(fast.metrics)
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
    assert (delta(before, after, "miss"), delta(before, after, "bypass")) == (8, 12)
    # the connection loop sends the passed path's GETs past the request stage's before() (as a
    # pass mark's): it ran for the eight misses, and once for /fastcount
    assert fast.probe()[2] - befores == 8 + 1
    target = f"/search?{CC}&n=storable"
    calls = fast.calls()
    assert b"\r\nAge: " not in fast.get(target) and fast.calls() == calls + 1
    wait_for(lambda: b"\r\nAge: " in fast.get(target), 10,
             "the path's pass to lapse, and the URL to be stored and hit")
    before = scrape(fast.metrics)
    answers = [fast.get(f"/search?q=again-{i}") for i in range(20)]
    after = scrape(fast.metrics)
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
    assert (delta(before, after, "miss"), delta(before, after, "bypass")) == (20, 0)


def test_a_passed_paths_gets_are_found_before_and_after_parsing(pair: tuple[Srv, Srv]) -> None:
    """The connection loop tells a GET under a path passed whole from the first bytes of a read
    (`GET /find?`, `GET /find `): on a new connection's first read, on a kept connection's next one,
    and first in a pipelined read, whose other requests it finds once parsed. A path that only
    starts like it (/findx) is not passed. All go past before() and count as `bypass`; the app
    answers each."""
    fast, _ = pair

    def delta(before: dict[Key, float], after: dict[Key, float], result: str) -> float:
        return total(after, "greenfork_response_cache_requests_total", result=result) - \
            total(before, "greenfork_response_cache_requests_total", result=result)

    befores = fast.probe()[2]
    calls = fast.calls()
    before = scrape(fast.metrics)
    with socket.create_connection(("127.0.0.1", fast.port), timeout=10) as s:
        f = s.makefile("rb")

        def kept(target: str) -> bytes:
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: h.example\r\n\r\n".encode())
            assert f.readline().startswith(b"HTTP/1.1 200 ")
            length = 0
            while (line := f.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            return f.read(length)

        for i in range(PATH_PASS_AFTER):  # (each unstorable: the path is passed whole after these)
            kept(f"/find?q={i}")
        answers = [fast.get("/find?q=first")]  # a new connection's first read
        assert kept("/find?q=kept") == b"q=kept ae=-\n"  # a kept connection's next read
    pipelined = b"".join(b"GET %s HTTP/1.1\r\nHost: h.example\r\n\r\n" % t.encode()
                         for t in ("/find?q=p1", "/find", "/findx?q=1", "/find?q=p2"))
    last = b"GET /find?q=p3 HTTP/1.1\r\nHost: h.example\r\nConnection: close\r\n\r\n"
    answers.append(fast.raw(pipelined + last))
    after = scrape(fast.metrics)
    assert answers[0].startswith(b"HTTP/1.1 200 ") and answers[0].endswith(b"\r\n\r\nq=first ae=-\n")
    assert answers[1].count(b"HTTP/1.1 200 ") == 5
    bodies = [part.partition(b"\n")[0] for part in answers[1].split(b"\r\n\r\n")[1:]]
    assert bodies == [b"q=p1 ae=-", b" ae=-", b"q=1 ae=-", b"q=p2 ae=-", b"q=p3 ae=-"]  # the app's, each
    assert fast.calls() == calls + 8 + 1 + 1 + 5
    assert (delta(before, after, "miss"), delta(before, after, "bypass")) == (8 + 1, 1 + 1 + 4)
    assert fast.probe()[2] - befores == 8 + 1 + 1  # the misses, /findx, and this probe


def test_hup_empties_the_cache_for_the_fast_path(launcher: Launcher, tmp_path: Path) -> None:
    srv = Srv(launcher, tmp_path)
    target = f"/r?{CC}&n=hup"
    srv.warm(target)
    calls = srv.calls()
    assert b"\r\nAge: " in srv.get(target) and srv.calls() == calls and srv.fast() == 1
    old = set(srv.g.workers())
    srv.g.signal(signal.SIGHUP)
    wait_for(lambda: "Reload complete" in srv.g.log(), 30, "the reload")
    wait_for(lambda: not old & set(srv.g.workers()), 30, "the old workers to exit")
    answer = srv.get(target)
    assert b"\r\nAge: " not in answer and srv.calls() == calls + 1


def test_the_gate_is_applied(launcher: Launcher, tmp_path: Path) -> None:
    """--require-header and --allowed-hosts are checked on the fast path, forwarded headers send
    the request to the request stage: a cached page is no way around the gate."""
    srv = Srv(launcher, tmp_path, "--require-header", "X-Proxy-Secret=s3", "--allowed-hosts", "h.example",
              "--forwarded-allow-ips", "127.0.0.1", "--forwarded-headers", "x-forwarded-proto",
              probe_fields=("X-Proxy-Secret: s3",))
    target = f"/r?{CC}&n=gate"
    srv.warm(target, "X-Proxy-Secret: s3")
    assert srv.calls() == 1
    assert b"\r\nAge: " in srv.get(target, "X-Proxy-Secret: s3") and srv.fast() == 1
    refused = [srv.get(target), srv.get(target, "X-Proxy-Secret: s4"),
               srv.get(target, "X-Proxy-Secret: s3", "X-Proxy-Secret: s3"),
               srv.get(target, "x-proxy-secret: s3")]  # (a field name in any case)
    assert [r[:12] for r in refused] == [b"HTTP/1.1 403"] * 3 + [b"HTTP/1.1 200"]
    other = srv.raw(f"GET {target} HTTP/1.1\r\nHost: other.example\r\nX-Proxy-Secret: s3\r\n"
                    "Connection: close\r\n\r\n".encode())
    assert other.startswith(b"HTTP/1.1 400 ") and b"\r\nAge: " not in other
    # from a trusted proxy: the request stage applies it, and https is another URL (the app's)
    proxied = srv.get(target, "X-Proxy-Secret: s3", "X-Forwarded-Proto: https")
    assert proxied.startswith(b"HTTP/1.1 200 ") and b"\r\nAge: " not in proxied
    assert srv.calls() == 2 and srv.fast() == 2


def test_hits_do_not_count_towards_max_requests(launcher: Launcher, tmp_path: Path) -> None:
    srv = Srv(launcher, tmp_path, "--max-requests", "3")
    target = f"/r?{CC}&n=maxreq"
    srv.warm(target)  # one app call
    worker = srv.g.workers()
    answer = srv.raw(f"GET {target} HTTP/1.1\r\nHost: h.example\r\n\r\n".encode() * 20
                     + f"GET {target} HTTP/1.1\r\nHost: h.example\r\nConnection: close\r\n\r\n".encode())
    assert answer.count(b"\r\nAge: ") == 21 and srv.calls() == 1 and srv.fast() == 21
    assert "--max-requests" not in srv.g.log() and srv.g.workers() == worker


def test_access_log_on_logs_every_hit(pair: tuple[Srv, Srv]) -> None:
    """With --access-logfile the fast path is off: every hit has its line."""
    _, slow = pair
    target = f"/r?{CC}&n=logged"
    slow.warm(target)
    slow.raw(batch(target))
    lines = [line for line in slow.access_path.read_text().splitlines() if "n=logged" in line]
    assert len(lines) == 2 + 5 and slow.fast() == 0


def test_whole_follows_the_protocols_table() -> None:
    """H1Server.whole() is head() and end() in one: only where a head may go, never while a
    "100 Continue" is owed (head() would turn keep-alive off for it: the caller takes head())."""
    from greenfork.workers.h1proto import LocalProtocolError

    p = H1Server(DEFAULT_LIMITS)
    with pytest.raises(LocalProtocolError):
        p.whole(200, 5, True)  # no request yet
    next(requests_of(p, b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"))
    with pytest.raises(LocalProtocolError):
        p.whole(200, 5, True)
    p = H1Server(DEFAULT_LIMITS)
    next(requests_of(p, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert p.whole(200, 5, True) is True and p.body_bytes == 5 and p.status == 200
    with pytest.raises(LocalProtocolError):
        p.whole(200, 5, True)  # one response per request
    assert p.after_response() == KEEP


def test_a_tls_listener_is_its_own_scheme(launcher: Launcher, tmp_path: Path,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """On a TLS connection (mod_ssl's environ keys added) the fast path answers under https; the
    cleartext listener's same URL is another entry."""
    certs = tlscerts.certs(tmp_path_factory)
    srv = Srv(launcher, tmp_path, "-b", "https://127.0.0.1:0", "--certfile", str(certs.server.cert),
              "--keyfile", str(certs.server.key))
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    target = f"/r?{CC}&where=1"
    request = f"GET {target} HTTP/1.1\r\nHost: h.example\r\nConnection: close\r\n\r\n".encode()

    def tls_get() -> bytes:
        with socket.create_connection(("127.0.0.1", srv.g.port(1)), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(request)
            got = []
            while chunk := s.recv(65536):
                got.append(chunk)
        return b"".join(got)

    first, second, third = tls_get(), tls_get(), tls_get()
    assert b" url=https://h.example HTTP/1.1" in first and b"\r\nAge: " not in first
    assert masked(second) == masked(third) and b"\r\nAge: " in third and srv.fast() == 1
    plain = srv.raw(request)
    assert b" url=http://h.example HTTP/1.1" in plain and b"\r\nAge: " not in plain
    assert srv.calls() == 2


@pytest.mark.parametrize("setup", ["pre_request hook", "mount"])
def test_hooks_and_mounts_turn_it_off(launcher: Launcher, tmp_path: Path, setup: str) -> None:
    """With pre_request/post_request hooks or --mount every hit goes through the request stage
    (the hooks do not run for hits there either), and is still a hit."""
    if setup == "mount":
        args: tuple[str, ...] = ("--mount", "/api=fastprobe:app")
        target = f"/api/r?{CC}&n=mounted"
    else:
        conf = tmp_path / "hooks.conf.py"
        calls = tmp_path / "pre_request.log"
        conf.write_text(f"def pre_request(worker, req):\n"
                        f"    open({str(calls)!r}, 'a').write(req.path + '\\n')\n")
        args = ("-c", str(conf))
        target = f"/r?{CC}&n=hooked"
    srv = Srv(launcher, tmp_path, *args)
    srv.warm(target)
    answers = [srv.get(target) for _ in range(3)]
    assert all(b"\r\nAge: " in a for a in answers) and srv.calls() == 1
    assert srv.fast() == 0
    if setup != "mount":
        assert calls.read_text().splitlines() == ["/r", "/fastcount/1"]  # the app's calls only


FIELD_POOL = [b"Accept: */*", b"Connection: close", b"Connection: keep-alive", b"Cookie: a=1",
              b"Cache-Control: no-cache", b"Pragma: no-cache", b"If-None-Match: \"v1\"", b"Range: bytes=0-1",
              b"Authorization: Basic eDp5", b"Accept-Encoding: gzip", b"X-Forwarded-For: 10.0.0.1",
              b"User-Agent: x", b"cache-control: max-age=5", b"If-Modified-Since: x"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS"]),
       version=st.sampled_from([b"1.1", b"1.0"]),
       host=st.sampled_from([b"site.example", b"SITE.example", b"other.example"]),
       fields=st.lists(st.sampled_from(FIELD_POOL), max_size=4, unique=True),
       keep_wish=st.booleans())
def test_fuzzed_heads_are_answered_alike_or_left_alone(store: ResponseCache, method: bytes,
                                                       version: bytes, host: bytes, fields: list[bytes],
                                                       keep_wish: bool) -> None:
    """Any mix of fields: the fast path answers exactly the plain GETs and HEADs of the memo's URL,
    as the request stage would; anything else is left untouched."""
    store.clear()
    worker = Worker(keep_wish)
    fast, known = fast_for(store, worker)
    head = b"%s /page HTTP/%s\r\nHost: %s\r\n%s\r\n" % (method, version, host,
                                                      b"".join(f + b"\r\n" for f in fields))
    if method == b"POST":
        head = head[:-2] + b"Content-Length: 0\r\n\r\n"
    conn = Conn()
    slow = H1Server(DEFAULT_LIMITS)
    req = next(requests_of(conn.p, head))
    action = fast.answer(conn, req, "http")  # type: ignore[arg-type]
    rule_field = any(f.split(b":")[0].lower() in RULE_FIELDS for f in fields)
    takes = method in (b"GET", b"HEAD") and host == b"site.example" and not rule_field
    assert (action is not None) is takes
    if action is None:
        assert conn.out == [] and conn.p.state == SEND_RESPONSE
        return
    want, want_action = ordinary(slow, next(requests_of(slow, head)), known, worker)
    assert b"".join(conn.out) == want and action == want_action

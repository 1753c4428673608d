"""The shared response cache in real greenfork processes (--response-cache; docs/caching.md).

The proof of a hit is the app's call log (tests/apps/cacheapp.py appends a line per call): a
cached response is served again without a new line. Metrics come from a real /metrics.
"""

from __future__ import annotations

import http.client
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

import pytest

from tests import tlscerts
from tests.apps.cacheapp import check_versioned
from tests.h2raw import Raw, request_headers
from tests.metricsutil import get, scrape, total
from tests.procs import Greenfork, Launcher, children, wait_for
from tests.test_lifecycle import read_pid, stop_pid

pytestmark = pytest.mark.timeout(120)

ACCESS_FORMAT = "%(p)s %(s)s %(m)s %(U)s?%(q)s"


class Server:
    def __init__(self, g: Greenfork, calls: Path, access: Path) -> None:
        self.g = g
        self.url = g.url()
        self.metrics = str(g.info["metrics"])
        self.calls_path = calls
        self.access_path = access

    def calls(self, target: str, method: str = "GET") -> int:
        """How many times the app was called for `target` (path?query)."""
        if not self.calls_path.exists():
            return 0
        want = f" {method} {target}"
        return sum(1 for line in self.calls_path.read_text().splitlines() if line.endswith(want)
                   and line.split(" ", 1)[1] == want[1:])

    def get(self, target: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        return get(self.url, target, headers=headers, method=method)

    def served_by(self, target: str) -> list[tuple[int, int]]:
        """(pid, status) of every access log line for target."""
        out = []
        for line in self.access_path.read_text().splitlines() if self.access_path.exists() else []:
            pid, status, method, rest = line.split(" ", 3)
            if method == "GET" and rest == target:
                out.append((int(pid.strip("<>")), int(status)))
        return out


def start(launcher: Launcher, tmp: Path, *args: str, workers: int = 2) -> Server:
    calls, access = tmp / "calls.log", tmp / "access.log"
    g = launcher.start(["cacheapp:app", "-b", "http://127.0.0.1:0", "--metrics-bind", "http://127.0.0.1:0",
                        "--access-logfile", str(access), "--access-logformat", ACCESS_FORMAT, *args],
                       workers=workers, env={"CACHEAPP_LOG": str(calls)})
    return Server(g, calls, access)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("cache")
    ln = Launcher(tmp)
    try:
        yield start(ln, tmp, "--response-cache", "4MiB", "--response-cache-max-entry", "64KiB")
    finally:
        ln.cleanup()


_n = 0


def unique(query: str) -> str:
    """A URL of its own for each case (the cache is shared by the module's tests)."""
    global _n
    _n += 1
    return f"/r?n={_n}&{query}" if query else f"/r?n={_n}"


def q(value: str) -> str:
    return quote(value, safe="")


FUTURE = formatdate(time.time() + 3600, usegmt=True)
PAST = formatdate(time.time() - 3600, usegmt=True)

# (query string, request headers of both requests): the second request must not reach the app
CACHED = {
    "public max-age": (f"cc={q('public, max-age=60')}", {}),
    "s-maxage alone": (f"cc={q('s-maxage=60')}", {}),
    "public with Expires": (f"cc=public&exp={q(FUTURE)}", {}),
    "301": (f"cc={q('public, max-age=60')}&st=301", {}),
    "404": (f"cc={q('public, max-age=60')}&st=404", {}),
    "quoted and upper-case directives": ("cc=" + q('PUBLIC, Max-Age="60"'), {}),
    "Vary with the same field value": (f"cc={q('public, max-age=60')}&vary=Accept-Encoding",
                                       {"Accept-Encoding": "gzip"}),
    "a streamed (iterator) body": (f"cc={q('public, max-age=60')}&stream=1&size=5000", {}),
    "64 KiB, the max entry": (f"cc={q('public, max-age=60')}&size={64 * 1024}", {}),
    "a request with no-store (RFC 9111 5.2.1.5: may be answered from the cache)":
        (f"cc={q('public, max-age=60')}", {"Cache-Control": "no-store"}),
}
# the second request reaches the app too
NOT_CACHED = {
    "no Cache-Control": ("", {}),
    "max-age without public": (f"cc={q('max-age=60')}", {}),
    "Expires without public": (f"exp={q(FUTURE)}", {}),
    "public without freshness": ("cc=public", {}),
    "Set-Cookie": (f"cc={q('public, max-age=60')}&cookie=1", {}),
    "private": (f"cc={q('public, private, max-age=60')}", {}),
    "no-store": (f"cc={q('public, no-store, max-age=60')}", {}),
    "no-cache": (f"cc={q('public, no-cache, max-age=60')}", {}),
    "Pragma no-cache": (f"cc={q('public, max-age=60')}&pragma=no-cache", {}),
    "Vary *": (f"cc={q('public, max-age=60')}&vary=*", {}),
    "status 200 only, 301, 404: not 302": (f"cc={q('public, max-age=60')}&st=302", {}),
    "not 500": (f"cc={q('public, max-age=60')}&st=500", {}),
    "stale when stored (max-age=0)": (f"cc={q('public, max-age=0')}", {}),
    "Expires in the past": (f"cc=public&exp={q(PAST)}", {}),
    "over the max entry": (f"cc={q('public, max-age=60')}&size={64 * 1024 + 1}", {}),
    "a request with Authorization": (f"cc={q('public, max-age=60')}", {"Authorization": "Bearer x"}),
    "a request with Cache-Control no-cache": (f"cc={q('public, max-age=60')}", {"Cache-Control": "no-cache"}),
    "a request with max-age=0 (a reload)": (f"cc={q('public, max-age=60')}", {"Cache-Control": "max-age=0"}),
    "a request with Range": (f"cc={q('public, max-age=60')}", {"Range": "bytes=0-1"}),
    "a request with If-Match": (f"cc={q('public, max-age=60')}", {"If-Match": '"x"'}),
}


@pytest.mark.parametrize("case", list(CACHED))
def test_cacheable_responses_are_answered_without_the_app(server: Server, case: str) -> None:
    query, headers = CACHED[case]
    target = unique(query)
    first_headers = {} if "no-store" in case else headers
    stores = total(scrape(server.metrics), "greenfork_response_cache_stores_total")
    s1, h1, b1 = server.get(target, first_headers)
    # the store follows the last byte out (a streamed body is whole only then): the second
    # request, on another worker maybe, may arrive first
    wait_for(lambda: total(scrape(server.metrics), "greenfork_response_cache_stores_total") > stores,
             what=f"the store of {case}")
    s2, h2, b2 = server.get(target, headers)
    assert server.calls(target) == 1, case
    assert s2 == s1
    assert b2 == b1
    assert "age" in h2 and "age" not in h1
    for name in ("content-type", "cache-control", "content-length"):
        assert h2.get(name) == h1.get(name)


@pytest.mark.parametrize("case", list(NOT_CACHED))
def test_uncacheable_responses_reach_the_app_every_time(server: Server, case: str) -> None:
    query, headers = NOT_CACHED[case]
    target = unique(query)
    s1, _, b1 = server.get(target, headers)
    s2, h2, b2 = server.get(target, headers)
    assert server.calls(target) == 2, case
    assert "age" not in h2
    assert (s1, b1) == (s2, b2)


def test_a_no_store_request_is_answered_but_its_response_not_stored(server: Server) -> None:
    target = unique(f"cc={q('public, max-age=60')}")
    server.get(target, {"Cache-Control": "no-store"})
    _, headers, _ = server.get(target)
    assert server.calls(target) == 2 and "age" not in headers  # the first response was not stored


def test_a_public_response_to_an_authorized_request_is_not_stored(server: Server) -> None:
    """As HTTP.sys: a request with Authorization is neither answered from the cache nor stored, even
    when the app says `public` (a per-user page marked public by mistake leaks to nobody); the next
    anonymous request stores the page for everyone."""
    target = unique(f"cc={q('public, max-age=60')}")
    server.get(target, {"Authorization": "Bearer x"})
    status, headers, _ = server.get(target)
    assert status == 200 and "age" not in headers
    status, headers, _ = server.get(target)
    assert status == 200 and "age" in headers
    assert server.calls(target) == 2


def test_no_cache_request_refreshes_the_entry(server: Server) -> None:
    target = unique(f"cc={q('public, max-age=60')}")
    server.get(target)
    server.get(target, {"Cache-Control": "no-cache"})
    assert server.calls(target) == 2
    _, headers, _ = server.get(target)
    assert server.calls(target) == 2 and "age" in headers


def test_head_is_answered_from_a_stored_get(server: Server) -> None:
    target = unique(f"cc={q('public, max-age=60')}&size=3000")
    server.get(target)
    status, headers, body = server.get(target, method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == "3000" and "age" in headers
    assert server.calls(target) == 1 and server.calls(target, "HEAD") == 0


def test_head_alone_is_not_stored(server: Server) -> None:
    target = unique(f"cc={q('public, max-age=60')}")
    server.get(target, method="HEAD")
    server.get(target)
    assert server.calls(target, "HEAD") == 1 and server.calls(target) == 1


def test_vary_keeps_one_entry_per_field_value(server: Server) -> None:
    target = unique(f"cc={q('public, max-age=60')}&vary=Accept-Encoding")
    _, _, gzip1 = server.get(target, {"Accept-Encoding": "gzip"})
    _, _, none1 = server.get(target)
    _, h, gzip2 = server.get(target, {"Accept-Encoding": "GZIP"})  # case-insensitive field
    _, h2, none2 = server.get(target)
    assert server.calls(target) == 2
    assert b"ae=gzip" in gzip1 and gzip2 == gzip1 and "age" in h
    assert b"ae=identity" in none1 and none2 == none1 and "age" in h2  # (http.client's default)


def test_conditional_requests_get_304_from_the_cache(server: Server) -> None:
    lm = formatdate(time.time() - 600, usegmt=True)
    target = unique(f"cc={q('public, max-age=60')}&etag={q(chr(34) + 'v7' + chr(34))}&lm={q(lm)}")
    server.get(target)
    status, headers, body = server.get(target, {"If-None-Match": 'W/"v7"'})
    assert (status, body) == (304, b"")
    assert headers["etag"] == '"v7"' and "age" in headers and "content-length" not in headers
    status, _, _ = server.get(target, {"If-None-Match": '"other"'})
    assert status == 200
    status, _, _ = server.get(target, {"If-Modified-Since": formatdate(time.time(), usegmt=True)})
    assert status == 304
    status, _, _ = server.get(target, {"If-Modified-Since": formatdate(time.time() - 3600, usegmt=True)})
    assert status == 200
    assert server.calls(target) == 1


def test_age_grows_while_the_entry_is_served(server: Server) -> None:
    target = unique(f"cc={q('public, max-age=60')}")
    server.get(target)
    first = int(server.get(target)[1]["age"])
    time.sleep(1.2)
    assert int(server.get(target)[1]["age"]) >= first + 1
    assert server.calls(target) == 1


def test_an_entry_expires(server: Server) -> None:
    target = unique(f"cc={q('public, max-age=1')}")
    server.get(target)
    server.get(target)
    assert server.calls(target) == 1
    wait_for(lambda: server.get(target) and server.calls(target) == 2, 5, "the entry to go stale")


def test_only_if_cached_miss_is_504_without_the_app(server: Server) -> None:
    target = unique(f"cc={q('public, max-age=60')}")
    status, _, body = server.get(target, {"Cache-Control": "only-if-cached"})
    assert status == 504 and b"not in the server cache" in body
    assert server.calls(target) == 0


def test_an_unsafe_method_drops_the_entry(server: Server) -> None:
    target = unique(f"cc={q('public, max-age=60')}&vary=Accept-Encoding")
    server.get(target, {"Accept-Encoding": "gzip"})
    server.get(target)
    server.get(target, {"Accept-Encoding": "gzip"})
    assert server.calls(target) == 2
    assert server.get(target, method="POST")[0] == 200
    server.get(target, {"Accept-Encoding": "gzip"})
    server.get(target)  # the other variant went too (RFC 9111 4.4)
    assert server.calls(target) == 4


def test_hits_follow_a_replacement_and_a_removal(server: Server) -> None:
    """Workers answer repeated hits from their own copies: a new version stored by any worker,
    or a removal, must be seen by the next request all the same."""
    target = "/v?size=3000&case=follow"

    def version(headers: dict[str, str] | None = None) -> tuple[str, bool]:
        _, h, body = server.get(target, headers)
        assert h["etag"] == f'"{check_versioned(body)}"'
        return h["etag"], "age" in h

    v1, cached = version()
    assert not cached
    for _ in range(6):  # hits on both workers, from their copies after the first
        assert version() == (v1, True)
    v2, cached = version({"Cache-Control": "no-cache"})  # the app answers; its response replaces v1
    assert v2 != v1 and not cached
    for _ in range(6):
        assert version() == (v2, True)
    assert server.get(target, method="POST")[0] == 200  # drops the entry (RFC 9111 4.4)
    v3, cached = version()
    assert v3 not in (v1, v2) and not cached
    assert server.calls(target) == 3


def test_a_failed_response_is_not_stored(server: Server) -> None:
    target = unique(f"cc={q('public, max-age=60')}&boom=1&size=100")
    for _ in range(2):
        with pytest.raises(http.client.IncompleteRead):
            server.get(target)
    assert server.calls(target) == 2


def test_a_short_body_is_not_stored(server: Server) -> None:
    target = unique(f"cc={q('public, max-age=60')}&cl=50")
    host, port = server.url.split("://")[1].rsplit(":", 1)
    for _ in range(2):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):  # the server closes: the body fell short of its length
                data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b"Age:" not in data
    assert server.calls(target) == 2


def test_hits_from_a_second_worker(server: Server) -> None:
    target = unique(f"cc={q('public, max-age=60')}")
    _, _, body = server.get(target)
    stored_by = [line.split()[0] for line in server.calls_path.read_text().splitlines()
                 if line.endswith(target)]
    workers = set(server.g.workers())
    assert len(workers) == 2

    def other_worker_hit() -> bool:
        # fresh connections land on whichever worker accepts first: ask until the other one has
        _, headers, again = server.get(target)
        assert again == body and "age" in headers
        return any(pid != int(stored_by[0]) and status == 200 for pid, status in server.served_by(target))

    wait_for(other_worker_hit, 20, "a hit served by the worker that did not store it")
    assert server.calls(target) == 1


def test_a_private_answer_to_a_cookie_passes_only_requests_with_a_cookie(server: Server) -> None:
    """Hit-for-pass for requests with a Cookie: once the URL's answer to one could not be stored,
    the next ones with a Cookie skip the cache (bypass, not a lookup and a miss each), while the
    same URL without a Cookie is still looked up, stored and hit. One keep-alive connection: one
    worker, and its requests far inside the pass's second."""
    target = unique(f"cc={q('public, max-age=60')}&privcookie=1")
    before = scrape(server.metrics)
    host, port = server.url.split("://")[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    got = []
    try:
        for cookie in (True, True, True, True, False, False, True):
            conn.request("GET", target, headers={"Cookie": "session=abc"} if cookie else {})
            r = conn.getresponse()
            got.append((r.status, r.getheader("Cache-Control"), r.getheader("Age") is not None, r.read()))
    finally:
        conn.close()
    after = scrape(server.metrics)

    def delta(result: str) -> float:
        return total(after, "greenfork_response_cache_requests_total", result=result) - \
            total(before, "greenfork_response_cache_requests_total", result=result)

    assert [g[:3] for g in got] == [(200, "private", False)] * 4 + [
        (200, "public, max-age=60", False), (200, "public, max-age=60", True),  # stored, then a hit
        (200, "public, max-age=60", True)]  # a public entry serves a request with a Cookie too
    assert server.calls(target) == 5  # four private answers, one stored
    assert delta("miss") == 2  # the first with a Cookie, the first without
    assert delta("bypass") == 3  # the other three with a Cookie
    assert delta("hit") == 2


def test_metrics_count_the_cache(server: Server) -> None:
    before = scrape(server.metrics)
    target = unique(f"cc={q('public, max-age=60')}&size=1000")
    server.get(target)
    server.get(target)
    server.get(target)
    server.get(unique(""), method="POST")
    after = scrape(server.metrics)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("greenfork_response_cache_requests_total", result="miss") == 1
    assert delta("greenfork_response_cache_requests_total", result="hit") == 2
    assert delta("greenfork_response_cache_requests_total", result="bypass") == 1
    assert delta("greenfork_response_cache_stores_total") == 1
    assert total(after, "greenfork_response_cache_capacity_bytes") == 4 * 1024 * 1024
    assert total(after, "greenfork_response_cache_entries") >= 1
    assert 1000 < total(after, "greenfork_response_cache_bytes") <= 4 * 1024 * 1024
    assert "greenfork_response_cache_evictions_total" in {n for n, _ in after}


# ------------------------------------------------------------------ HTTP/2
def h2_get(c: Raw, sid: int, target: str, port: int, extra: tuple[tuple[str, str], ...] = (),
           method: str = "GET") -> tuple[dict[str, str], bytes]:
    """One request on a stream of an h2c connection, with the :authority HTTP/1.1's Host has."""
    c.request(sid, target, method=method, extra=extra, authority=f"127.0.0.1:{port}")
    return c.response(sid)


def test_http2_streams_share_entries_with_http1(server: Server) -> None:
    """A response stored from HTTP/1.1 is a hit on an HTTP/2 stream, and the other way round
    (the key is the URL, not the protocol); conditional requests get their 304 on HTTP/2 too."""
    cc = q("public, max-age=60")
    by_h1, by_h2 = unique(f"cc={cc}&where=1&etag=%22v1%22"), unique(f"cc={cc}&where=1&etag=%22v2%22")
    port = server.g.port()
    status, _, body1 = server.get(by_h1)
    assert status == 200 and body1.endswith(b" HTTP/1.1\n")
    with Raw.connect(port) as c:
        head, body = h2_get(c, 1, by_h1, port)
        assert head[":status"] == "200" and body == body1 and "age" in head
        assert head["etag"] == '"v1"' and "connection" not in head
        head, body = h2_get(c, 3, by_h1, port, (("if-none-match", '"v1"'),))
        assert head[":status"] == "304" and body == b"" and head["etag"] == '"v1"'
        head, body = h2_get(c, 5, by_h1, port, method="HEAD")
        assert head[":status"] == "200" and body == b"" and head["content-length"] == str(len(body1))
        head, body2 = h2_get(c, 7, by_h2, port)  # a miss on HTTP/2: stored from the stream
        assert head[":status"] == "200" and "age" not in head and body2.endswith(b" HTTP/2\n")
        head, again = h2_get(c, 9, by_h2, port)
        assert head[":status"] == "200" and again == body2 and "age" in head
    status, headers, body = server.get(by_h2)
    assert status == 200 and body == body2 and "age" in headers
    assert server.calls(by_h1) == 1 and server.calls(by_h2) == 1
    assert server.calls(by_h1, "HEAD") == 0


# ------------------------------------------------------------- servers of their own
def test_forwarded_scheme_host_and_prefix_are_part_of_the_key(launcher: Launcher, tmp_path: Path) -> None:
    """Behind a trusted proxy the key is the URL the app sees (wsgi.url_scheme, HTTP_HOST and
    SCRIPT_NAME after forwarded headers): a page the app renders with https:// links is never
    served to a plain-http request, nor one host's page to another host."""
    srv = start(launcher, tmp_path, "--response-cache", "1MiB", "--forwarded-allow-ips", "127.0.0.1",
                "--forwarded-headers", "x-forwarded-proto,x-forwarded-host,x-forwarded-prefix", workers=1)
    port = srv.g.port()
    target = f"/r?cc={q('public, max-age=60')}&where=1"
    cases = {  # request headers: the URL the app must have built the answer from
        (): f"http://127.0.0.1:{port}",
        (("X-Forwarded-Proto", "https"),): f"https://127.0.0.1:{port}",
        (("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "a.example")): "https://a.example",
        (("X-Forwarded-Host", "b.example"),): "http://b.example",
        (("X-Forwarded-Host", "B.example:80"),): "http://b.example",  # the same origin: the same entry
        (("X-Forwarded-Prefix", "/app"),): f"http://127.0.0.1:{port}/app",
    }
    first: dict[str, bytes] = {}
    for headers, url in cases.items():
        status, got, body = srv.get(target, dict(headers))
        assert status == 200 and f" url={url} ".encode() in body.lower(), body
        first.setdefault(url, body)
        assert body == first[url]
    assert srv.calls(target) == 5  # one per URL: B.example:80 was a hit of b.example's entry
    for headers, url in cases.items():  # each one's own entry, from the cache
        status, got, body = srv.get(target, dict(headers))
        assert status == 200 and "age" in got and body == first[url], (headers, body)
    with Raw.connect(port) as c:  # an HTTP/2 stream through the same proxy finds the same entries
        head, body = h2_get(c, 1, target, port, (("x-forwarded-proto", "https"),))
        assert "age" in head and body == first[f"https://127.0.0.1:{port}"]
        head, body = h2_get(c, 3, target, port,
                            (("x-forwarded-host", "a.example"), ("x-forwarded-proto", "https")))
        assert "age" in head and body == first["https://a.example"]
    assert srv.calls(target) == 5
    # the prefix is a field of the key of its own: /app + /r is not the unprefixed /app/r
    status, got, body = srv.get("/app" + target)
    assert status == 200 and "age" not in got and f" url=http://127.0.0.1:{port} ".encode() in body
    assert srv.calls("/app" + target) == 1


def test_mounted_apps_are_cached_under_their_prefix(launcher: Launcher, tmp_path: Path) -> None:
    """--mount sets SCRIPT_NAME before the cache: a mounted app's page is stored and hit like the
    main app's, as an entry of its own, and an unsafe request through the mount drops it."""
    srv = start(launcher, tmp_path, "--response-cache", "1MiB", "--mount", "/api=cacheapp:app", workers=1)
    port = srv.g.port()
    target = f"/r?cc={q('public, max-age=60')}&where=1"
    _, headers, mounted = srv.get("/api" + target)
    assert "age" not in headers and f" url=http://127.0.0.1:{port}/api ".encode() in mounted
    _, headers, again = srv.get("/api" + target)
    assert "age" in headers and again == mounted
    _, headers, main = srv.get(target)
    assert "age" not in headers and f" url=http://127.0.0.1:{port} ".encode() in main
    _, headers, again = srv.get(target)
    assert "age" in headers and again == main
    assert srv.calls(target) == 2  # (both apps log PATH_INFO /r): one call each
    assert srv.get("/api" + target, method="POST")[0] == 200  # RFC 9111 4.4, through the mount
    _, headers, _ = srv.get("/api" + target)
    assert "age" not in headers and srv.calls(target) == 3
    _, headers, _ = srv.get(target)
    assert "age" in headers  # the main app's entry stays


def test_the_scheme_is_the_listeners_never_the_clients(launcher: Launcher, tmp_path: Path,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """A TLS listener's pages are stored under https (HTTP/1.1 and HTTP/2 by ALPN share them); an
    h2c client that claims `:scheme https` on the cleartext listener is keyed as http, so it can
    neither read nor overwrite them."""
    certs = tlscerts.certs(tmp_path_factory)
    srv = start(launcher, tmp_path, "--response-cache", "1MiB", "-b", "https://127.0.0.1:0",
                "--certfile", str(certs.server.cert), "--keyfile", str(certs.server.key), workers=1)
    tls_port, plain_port = srv.g.port(1), srv.g.port(0)
    target = f"/r?cc={q('public, max-age=60')}&where=1"
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    conn = http.client.HTTPSConnection("127.0.0.1", tls_port, timeout=10, context=ctx)
    try:
        conn.request("GET", target, headers={"Host": "site.example"})
        resp = conn.getresponse()
        stored = resp.read()
        assert resp.status == 200 and b" url=https://site.example HTTP/1.1" in stored
    finally:
        conn.close()
    h2ctx = ssl.create_default_context(cafile=str(certs.ca))
    h2ctx.check_hostname = False  # (Raw's handshake names no server; the CA still checks the chain)
    h2ctx.set_alpn_protocols(["h2"])
    with Raw.connect(tls_port, tls=h2ctx) as c:  # HTTP/2 over TLS: the same entry
        c.request(1, target, authority="site.example")
        head, body = c.response(1)
        assert "age" in head and body == stored
    with Raw.connect(plain_port) as c:  # h2c, claiming https: a miss, stored as http
        for sid in (1, 3):
            c.send(*c.header_frames(sid, request_headers(target, authority="site.example", scheme="https")))
            head, body = c.response(sid)
            assert body != stored and b" url=http://site.example HTTP/2" in body
            assert ("age" in head) is (sid == 3)
    assert srv.calls(target) == 2


def test_the_gate_answers_before_the_cache(launcher: Launcher, tmp_path: Path) -> None:
    """A cached page is no way around --require-header or --allowed-hosts: the gate's 403 and 400
    come first, and a refused request is not looked up, stored or counted as a hit."""
    srv = start(launcher, tmp_path, "--response-cache", "1MiB", "--require-header", "X-Proxy-Secret=s3",
                "--allowed-hosts", "site.example", workers=1)
    target = f"/r?cc={q('public, max-age=60')}"
    ok = {"X-Proxy-Secret": "s3", "Host": "site.example"}
    assert srv.get(target, ok)[0] == 200
    status, headers, _ = srv.get(target, ok)
    assert status == 200 and "age" in headers
    before = scrape(srv.metrics)
    status, headers, body = srv.get(target, {"Host": "site.example"})
    assert status == 403 and "age" not in headers and b"public" not in body
    status, headers, _ = srv.get(target, {"X-Proxy-Secret": "s3", "Host": "other.example"})
    assert status == 400 and "age" not in headers
    after = scrape(srv.metrics)
    for result in ("hit", "miss", "bypass"):
        assert total(after, "greenfork_response_cache_requests_total", result=result) == \
            total(before, "greenfork_response_cache_requests_total", result=result)
    assert srv.calls(target) == 1


def test_forwarded_headers_from_an_untrusted_peer_do_not_split_the_key(launcher: Launcher,
                                                                         tmp_path: Path) -> None:
    """From a peer not in --forwarded-allow-ips the headers are not applied: the app sees the
    connection's scheme and host, and so does the key (one entry, whatever the client claims)."""
    srv = start(launcher, tmp_path, "--response-cache", "1MiB", "--forwarded-allow-ips", "",
                "--forwarded-headers", "x-forwarded-proto,x-forwarded-host", workers=1)
    port = srv.g.port()
    target = f"/r?cc={q('public, max-age=60')}&where=1"
    _, _, body = srv.get(target, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"})
    assert f" url=http://127.0.0.1:{port} ".encode() in body
    status, headers, again = srv.get(target)
    assert status == 200 and again == body and "age" in headers
    assert srv.calls(target) == 1


def test_concurrent_writers_and_readers_of_one_key(launcher: Launcher, tmp_path: Path) -> None:
    """Writers (requests with no-cache: each reaches the app, whose new version replaces the
    entry) and readers (hits) of one 48 KiB key, from two workers, with a cache small enough
    to wrap around: every body must be whole and one version, and match its ETag."""
    srv = start(launcher, tmp_path, "--response-cache", "1MiB", "--response-cache-max-entry", "64KiB")
    target = "/v?size=49152"
    host, port = srv.url.split("://")[1].rsplit(":", 1)
    deadline = time.monotonic() + 4
    seen: dict[str, set[str]] = {"reader": set(), "writer": set()}
    failures: list[str] = []
    hits = [0]

    def client(kind: str) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            while time.monotonic() < deadline and not failures:
                headers = {"Cache-Control": "no-cache"} if kind == "writer" else {}
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                try:
                    assert resp.status == 200, resp.status
                    version = check_versioned(body)
                    assert resp.getheader("ETag") == f'"{version}"', (resp.getheader("ETag"), version)
                except AssertionError as e:
                    failures.append(f"{kind}: {e}")
                    break
                seen[kind].add(version)
                if resp.getheader("Age") is not None:
                    hits[0] += 1
                if kind == "writer":  # other keys between the writes make the log wrap around
                    conn.request("GET", f"/v?size=40000&k={len(seen[kind]) % 40}", headers=headers)
                    conn.getresponse().read()
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in ["writer"] * 3 + ["reader"] * 6]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures, failures[:5]
    assert hits[0] > 100  # readers were answered from the cache...
    assert len(seen["reader"]) > 3  # ...with the versions the writers kept storing
    s = scrape(srv.metrics)
    assert total(s, "greenfork_response_cache_evictions_total") > 0
    assert total(s, "greenfork_response_cache_stores_total") > 10


def test_eviction_under_a_small_size(launcher: Launcher, tmp_path: Path) -> None:
    srv = start(launcher, tmp_path, "--response-cache", "256KiB", "--response-cache-max-entry", "16KiB",
                workers=1)
    targets = [f"/r?k={i}&cc={q('public, max-age=600')}&size=15000" for i in range(30)]
    for t in targets:
        srv.get(t)
        srv.get(t)
        assert srv.calls(t) == 1  # stored, and a hit right after
    s = scrape(srv.metrics)
    assert total(s, "greenfork_response_cache_evictions_total") > 0
    assert total(s, "greenfork_response_cache_bytes") <= total(s, "greenfork_response_cache_capacity_bytes")
    assert total(s, "greenfork_response_cache_entries") < 30
    srv.get(targets[0])  # the oldest was evicted: the app is called again
    assert srv.calls(targets[0]) == 2
    srv.get(targets[-1])  # the newest is still there
    assert srv.calls(targets[-1]) == 1


def test_hup_empties_it_and_drops_the_old_generation(launcher: Launcher, tmp_path: Path) -> None:
    srv = start(launcher, tmp_path, "--response-cache", "1MiB")
    target = f"/r?cc={q('public, max-age=600')}"
    srv.get(target)
    assert "age" in srv.get(target)[1]
    old = set(srv.g.workers())
    srv.g.signal(signal.SIGHUP)
    wait_for(lambda: "Reload complete" in srv.g.log(), 30, "the reload")
    wait_for(lambda: not old & set(srv.g.workers()), 30, "the old workers to exit")
    wait_for(lambda: "dropped 1 entries of older generations" in srv.g.log(), 10, "the purge")
    assert total(scrape(srv.metrics), "greenfork_response_cache_entries") == 0
    _, headers, _ = srv.get(target)  # the new generation's code answers: the app is called again
    assert "age" not in headers and srv.calls(target) == 2
    assert "age" in srv.get(target)[1] and srv.calls(target) == 2


def test_a_binary_upgrade_starts_with_a_cache_of_its_own(launcher: Launcher, tmp_path: Path) -> None:
    pidfile = tmp_path / "gf.pid"
    srv = start(launcher, tmp_path, "--response-cache", "1MiB", "--pidfile", str(pidfile))
    target = f"/r?cc={q('public, max-age=600')}"
    srv.get(target)
    assert "age" in srv.get(target)[1]
    srv.g.signal(signal.SIGUSR2)
    new = wait_for(lambda: (p := read_pid(pidfile)) != srv.g.pid and p, 20, "the new master's pidfile")
    try:
        wait_for(lambda: len(children(new)) == 2 and "greenfork-respcache" in
                 Path(f"/proc/{children(new)[0]}/maps").read_text(), 20, "the new master's workers")
        srv.g.signal(signal.SIGTERM)  # the old master and its cache go
        assert srv.g.wait(20) == 0
        srv.url = srv.g.reload_info()["addresses"][0]
        _, headers, _ = srv.get(target)  # the new master's cache is empty: the app answers
        assert "age" not in headers and srv.calls(target) == 2
        assert "age" in srv.get(target)[1] and srv.calls(target) == 2
    finally:
        stop_pid(new)


def test_only_paths_under_response_cache_path_are_cached(launcher: Launcher, tmp_path: Path) -> None:
    """--response-cache-path: whole path segments under a prefix (a trailing slash or none), the
    prefix itself included; every other path goes to the app however cacheable its answers, and
    is not the cache's to count (as nginx leaves $upstream_cache_status empty outside proxy_cache)."""
    srv = start(launcher, tmp_path, "--response-cache", "1MiB", "--response-cache-path", "/static",
                "--response-cache-path", "/assets/", workers=1)
    cc = f"cc={q('public, max-age=60')}"
    before = scrape(srv.metrics)
    for path, cached in (("/static/a", True), ("/static", True), ("/assets/x/y", True),
                         ("/staticx", False), ("/r", False), ("/", False), ("/assets", True)):
        target = f"{path}?{cc}"
        ages = ["age" in srv.get(target)[1] for _ in range(2)]
        assert ages == [False, cached], path
        assert srv.calls(target) == (1 if cached else 2), path
    after = scrape(srv.metrics)

    def delta(result: str) -> float:
        return total(after, "greenfork_response_cache_requests_total", result=result) - \
            total(before, "greenfork_response_cache_requests_total", result=result)

    assert (delta("miss"), delta("hit"), delta("bypass")) == (4, 4, 0)  # the four paths in scope
    # a method the cache never answers: counted in scope only (the connection loop leaves the
    # scope to the request stage), and nothing stored under the path, nothing stored under the
    # path's neighbour in scope dropped
    for path in ("/r", "/static/new", "/static"):
        assert srv.get(path, method="POST")[0] == 200
    assert ["age" in srv.get(f"/static?{cc}")[1] for _ in range(2)] == [True, True]
    after = scrape(srv.metrics)
    assert (delta("miss"), delta("hit"), delta("bypass")) == (4, 6, 2)


def test_a_cache_path_that_is_no_path_is_a_usage_error(launcher: Launcher) -> None:
    g = launcher.spawn(["cacheapp:app", "--response-cache", "1MiB", "--response-cache-path", "static"],
                       addresses_file=False)
    assert g.wait(20) == 2
    assert "'static' is not a path prefix" in g.log()


def test_the_settings_shown_in_the_docs_are_valid(tmp_path: Path) -> None:
    """docs/caching.md's greenfork.toml, as a user would copy it."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "caching.md").read_text()
    block = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    assert "response_cache_path" in block
    (tmp_path / "greenfork.toml").write_text(block)
    out = subprocess.run([sys.executable, "-m", "greenfork.master", "cacheapp:app", "-c",
                          str(tmp_path / "greenfork.toml"), "--check-config"], capture_output=True,
                         text=True, timeout=30, cwd=Path(__file__).resolve().parent / "apps")
    assert out.returncode == 0, out.stderr
    assert "response_cache_path = ('/static', '/catalogue')" in out.stdout, out.stdout


def test_sizes_that_do_not_fit_are_a_usage_error(launcher: Launcher) -> None:
    g = launcher.spawn(["cacheapp:app", "-b", "http://127.0.0.1:0", "--response-cache", "256KiB",
                        "--response-cache-max-entry", "128KiB"], addresses_file=False)
    assert g.wait(20) == 2
    assert "response cache max entry 131072 must be between 1 and" in g.log()
    g = launcher.spawn(["cacheapp:app", "--response-cache", "1KiB"], addresses_file=False)
    assert g.wait(20) == 2
    assert "must be 0 (off) or at least 64KiB" in g.log()


def test_workers_do_not_own_the_cache_memory(launcher: Launcher, tmp_path: Path) -> None:
    """The segment is mapped by the master (shared): filling it does not grow a worker's USS."""
    srv = start(launcher, tmp_path, "--response-cache", "16MiB", workers=1)
    (worker,) = srv.g.workers()
    assert "greenfork-respcache" in Path(f"/proc/{worker}/maps").read_text()

    def uss() -> int:
        lines = Path(f"/proc/{worker}/smaps_rollup").read_text().splitlines()
        private = [x for x in lines if x.startswith(("Private_Clean:", "Private_Dirty:"))]
        return sum(int(x.split()[1]) * 1024 for x in private)

    for i in range(20):  # warm up: the code paths, the allocator's arenas
        srv.get(f"/r?w={i}&cc={q('public, max-age=600')}&size=30000")
    before = uss()
    for i in range(300):
        target = f"/r?k={i}&cc={q('public, max-age=600')}&size=30000"
        srv.get(target)
        srv.get(target)  # a hit: the worker keeps copies of some (bounded: 2 MiB for 16 MiB)
    held = total(scrape(srv.metrics), "greenfork_response_cache_bytes")
    assert held > 8_000_000
    assert uss() - before < 4 * 1024 * 1024, (uss() - before, held)

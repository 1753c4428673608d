"""HTTP/2 through the rest of the front door, in real processes: the PROXY step before TLS and
before the h2c preface, the gate (--require-header, forwarded headers, --allowed-hosts on
:authority), the shared response cache and --max-queued-requests answering on a stream, and
gunicorn's pre_request/post_request hooks. Each answer is checked on its own stream, with the
connection's other streams carrying on (HTTP/1.1 would close instead)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, RstStreamFrame, SettingsFrame

from tests import tlscerts
from tests.conftest import curl
from tests.h2raw import PREFACE, Raw
from tests.metricsutil import get, scrape, total
from tests.procs import APPS, Greenfork, Launcher, wait_for
from tests.proxytools import TlsOverSocket, connect, v1, v2
from tests.test_behind_proxies import CLIENT, HAProxy, Proxy, example, free_port
from tests.tlscerts import Certs

pytestmark = pytest.mark.timeout(120)

SECRET = ("x-edge-secret", "s3cret")  # --require-header: every request of the front server sends it
HOST = "shop.example"


class TlsSock:
    """TlsOverSocket as the socket Raw reads and writes (its first flight may follow a PROXY
    header in one write)."""

    def __init__(self, tls: TlsOverSocket) -> None:
        self.tls = tls

    def sendall(self, data: bytes) -> None:
        self.tls.sendall(data)

    def recv(self, n: int) -> bytes:
        return self.tls.recv(n)

    def settimeout(self, t: float | None) -> None:
        self.tls.sock.settimeout(t)

    def setsockopt(self, *args: Any) -> None:
        self.tls.sock.setsockopt(*args)

    def close(self) -> None:
        self.tls.sock.close()


def over(sock: Any, prefix: bytes = b"", settings: dict[int, int] | None = None) -> Raw:
    """A Raw client on an open connection: the client preface (after `prefix`, in one write)."""
    raw = Raw(sock)
    raw.send_raw(prefix + PREFACE + SettingsFrame(0, settings=settings or {}).serialize())
    return raw


def env_of(raw: Raw, sid: int, *, authority: str = HOST, extra: list[tuple[str, str]] | None = None,
           path: str = "/env") -> dict[str, Any]:
    raw.request(sid, path, authority=authority, extra=[SECRET] if extra is None else extra)
    head, body = raw.response(sid)
    assert head[":status"] == "200", (head, body)
    env: dict[str, Any] = json.loads(body)
    return env


# ------------------------------------------------- PROXY step, gate: one server behind a "proxy"
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return tlscerts.certs(tmp_path_factory)


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Greenfork]:
    """0: TLS after a PROXY v2 header; 1: cleartext after a PROXY v1 header; 2: cleartext, no
    PROXY. Forwarded headers are trusted from 10.0.0.0/8 only (a client a PROXY header names),
    not from the loopback peer itself."""
    tmp = tmp_path_factory.mktemp("h2front")
    ln = Launcher(tmp)
    try:
        yield ln.start(["proxyapp:app", "-b", "https://127.0.0.1:0?proxy-protocol=v2",
                        "-b", "http://127.0.0.1:0?proxy-protocol=v1", "-b", "http://127.0.0.1:0",
                        "--certfile", str(certs.server.cert), "--keyfile", str(certs.server.key),
                        "--forwarded-allow-ips", "10.0.0.0/8", "--allowed-hosts", f"{HOST},*.{HOST}",
                        "--require-header", "X-Edge-Secret=s3cret", "--metrics-bind", "http://127.0.0.1:0"])
    finally:
        ln.cleanup()


@pytest.mark.parametrize("together", [True, False], ids=["header+ClientHello in one write", "apart"])
def test_h2_over_tls_behind_a_proxy_v2_header(front: Greenfork, certs: Certs, together: bool) -> None:
    """PROXY v2, then our TLS handshake with ALPN h2, then HTTP/2: every stream of the
    connection has the client the header named and the handshake's TLS keys."""
    header = v2(("203.0.113.7", 51000), ("192.0.2.1", 443))
    ctx = tlscerts.client_context(certs, alpn=["h2", "http/1.1"])
    with connect(front.url(0)) as s:
        if not together:
            s.sendall(header)
        tls = TlsOverSocket(s, ctx, prefix=header if together else b"")
        assert tls.obj.selected_alpn_protocol() == "h2"
        raw = over(TlsSock(tls))
        envs = [env_of(raw, 1), env_of(raw, 3)]
    for env in envs:
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.7", "51000")
        assert env["SERVER_PROTOCOL"] == "HTTP/2" and env["wsgi.url_scheme"] == "https"
        assert env["HTTPS"] == "on" and env["SSL_PROTOCOL"] == tls.obj.version()
        assert env["greenfork.proxy_protocol"]["version"] == 2
        assert env["HTTP_HOST"] == HOST
        assert env["greenfork.peer_addr"] == "127.0.0.1"
        assert "HTTP_X_EDGE_SECRET" not in env  # --require-header's secret never reaches the app
    assert envs[0]["pid"] == envs[1]["pid"]


@pytest.mark.parametrize("bytewise", [False, True], ids=["one write", "byte by byte"])
def test_h2c_preface_after_a_proxy_v1_header(front: Greenfork, bytewise: bool) -> None:
    """The h2c preface is recognised in the bytes that came with the PROXY header."""
    data = v1(("198.51.100.4", 4242), ("192.0.2.9", 80)) + PREFACE + SettingsFrame(0).serialize()
    with connect(front.url(1)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw = Raw(s)
        if bytewise:
            for b in data:
                raw.send_raw(bytes([b]))
                time.sleep(0.001)
        else:
            raw.send_raw(data)
        env = env_of(raw, 1)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("198.51.100.4", "4242")
    assert env["SERVER_PROTOCOL"] == "HTTP/2" and env["wsgi.url_scheme"] == "http"
    assert env["greenfork.proxy_protocol"]["version"] == 1


def test_forwarded_headers_trust_the_client_the_proxy_header_named(front: Greenfork) -> None:
    xff = [SECRET, ("x-forwarded-for", "198.51.100.7"), ("x-forwarded-proto", "https")]
    with connect(front.url(1)) as s:  # 10.1.2.3 is in --forwarded-allow-ips
        raw = over(s, v1(("10.1.2.3", 1111), ("192.0.2.1", 80)))
        env = env_of(raw, 1, extra=xff)
    assert env["REMOTE_ADDR"] == "198.51.100.7" and env["wsgi.url_scheme"] == "https"
    assert env["SERVER_PROTOCOL"] == "HTTP/2"
    with connect(front.url(2)) as s:  # the loopback peer itself is not: unapplied
        env = env_of(over(s), 1, extra=xff)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http"
    assert env["HTTP_X_FORWARDED_FOR"] == "198.51.100.7"


def test_allowed_hosts_check_the_authority_stream_by_stream(front: Greenfork) -> None:
    """:authority is the Host --allowed-hosts checks (a Host field when there is no :authority);
    a refusal is a 400 on its stream, and the connection's other streams are served."""
    before = scrape(str(front.info["metrics"]))
    with connect(front.url(2)) as s:
        raw = over(s)
        raw.request(1, "/env", authority="evil.example", extra=[SECRET])
        raw.request(3, "/env", authority=f"www.{HOST}:8443", extra=[SECRET])
        raw.request(5, "/env", authority=HOST.upper() + ".", extra=[SECRET])
        head, body = raw.response(1)
        assert head[":status"] == "400" and b"does not serve that host" in body
        for sid in (3, 5):
            head, body = raw.response(sid)
            assert head[":status"] == "200", (head, body)
        assert json.loads(raw.response(3)[1])["HTTP_HOST"] == f"www.{HOST}:8443"
        # no :authority: the Host field is checked instead (RFC 9113 8.3.1)
        for sid, host, status in ((7, "evil.example", "400"), (9, HOST, "200")):
            raw.send(raw.headers_frame(sid, [(":method", "GET"), (":scheme", "http"), (":path", "/env"),
                                             ("host", host), SECRET]))
            assert raw.response(sid)[0][":status"] == status
        assert env_of(raw, 11)["SERVER_PROTOCOL"] == "HTTP/2"  # still the same connection
        assert not raw.resets and not raw.closed
    after = scrape(str(front.info["metrics"]))
    name = "http_server_request_duration_seconds_count"
    refused = {k: v for k, v in after.items() if k[0] == name and ("error_type", "host_not_allowed") in k[1]}
    assert refused, sorted(k for k in after if k[0] == name)
    assert total(after, name, error_type="host_not_allowed", network_protocol_version="2") \
        - total(before, name, error_type="host_not_allowed", network_protocol_version="2") == 2


def test_the_required_header_is_checked_on_each_stream(front: Greenfork) -> None:
    with connect(front.url(2)) as s:
        raw = over(s)
        raw.request(1, "/env", authority=HOST)  # no secret
        raw.request(3, "/env", authority=HOST, extra=[("x-edge-secret", "guess")])
        for sid in (1, 3):
            head, body = raw.response(sid)
            assert head[":status"] == "403" and b"s3cret" not in body
        assert "HTTP_X_EDGE_SECRET" not in env_of(raw, 5)  # the right one: served, and removed


def test_a_refusal_before_the_body_ends_the_stream_and_stops_the_upload(front: Greenfork) -> None:
    """The gate answers a POST whose body is still coming: the 403, then RST_STREAM NO_ERROR so
    the client stops sending it (RFC 9113 8.1); the connection carries on."""
    with connect(front.url(2)) as s:
        raw = over(s)
        raw.send(raw.headers_frame(1, [(":method", "POST"), (":scheme", "http"), (":authority", HOST),
                                       (":path", "/env")], end_stream=False),
                 DataFrame(1, b"x" * 1000))
        head, _ = raw.response(1)
        assert head[":status"] == "403"
        assert raw.rst(1).error_code == ErrorCodes.NO_ERROR
        assert env_of(raw, 3)["SERVER_PROTOCOL"] == "HTTP/2"


# ------------------------------------------------- the response cache and the queue limit
@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Greenfork, Path]]:
    """cacheapp (tests/apps/cacheapp.py logs each call) with the cache and a queue limit of 2."""
    tmp = tmp_path_factory.mktemp("h2cache")
    calls = tmp / "calls.log"
    ln = Launcher(tmp)
    try:
        yield ln.start(["cacheapp:app", "-b", "http://127.0.0.1:0", "--response-cache", "4MiB",
                        "--max-queued-requests", "2", "--access-logfile", str(tmp / "access.log"),
                        "--access-logformat", "%(H)s %(s)s %(U)s?%(q)s"],
                       env={"CACHEAPP_LOG": str(calls)}), calls
    finally:
        ln.cleanup()


_n = 0


def url(query: str) -> str:
    global _n
    _n += 1
    return f"/r?n={_n}&{query}"


def calls(log: Path, target: str) -> int:
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if line.split(" ", 1)[1] == f"GET {target}")


PUBLIC = "cc=public%2C%20max-age%3D60"


def test_a_cache_hit_is_answered_on_an_http2_stream(cached: tuple[Greenfork, Path]) -> None:
    g, log = cached
    authority = f"127.0.0.1:{g.port()}"
    a, b = url(PUBLIC + "&size=5000"), url(PUBLIC + "&etag=v1")
    with connect(g.url()) as s:
        raw = over(s)
        raw.request(1, a, authority=authority)
        head1, body1 = raw.response(1)
        assert head1[":status"] == "200" and "age" not in head1 and len(body1) == 5000
        raw.request(3, a, authority=authority)  # the same connection: a hit
        head3, body3 = raw.response(3)
    with connect(g.url()) as s:  # another connection: a hit; HEAD from the stored GET
        raw = over(s)
        raw.request(1, a, authority=authority)
        head5, body5 = raw.response(1)
        raw.request(3, a, method="HEAD", authority=authority)
        head_h, body_h = raw.response(3)
        assert not raw.resets
    for head, body in ((head3, body3), (head5, body5)):
        assert head[":status"] == "200" and "age" in head and body == body1
        assert head["content-length"] == "5000" and "connection" not in head
    assert head_h[":status"] == "200" and body_h == b"" and head_h["content-length"] == "5000"
    assert calls(log, a) == 1
    # filled by HTTP/1.1, hit over HTTP/2 (and a 304 from the cache: a head without DATA)
    status, headers, body = get(g.url(), b)
    assert status == 200 and calls(log, b) == 1
    with connect(g.url()) as s:
        raw = over(s)
        raw.request(1, b, authority=authority)
        head, got = raw.response(1)
        assert head[":status"] == "200" and "age" in head and got == body
        raw.request(3, b, authority=authority, extra=[("if-none-match", headers["etag"])])
        head, got = raw.response(3)
        assert head[":status"] == "304" and got == b"" and 3 not in raw.bodies
    assert calls(log, b) == 1
    # filled by HTTP/2, hit over HTTP/1.1
    c = url(PUBLIC)
    with connect(g.url()) as s:
        raw = over(s)
        raw.request(1, c, authority=authority)
        assert raw.response(1)[0][":status"] == "200"
    status, headers, _ = get(g.url(), c)
    assert status == 200 and "age" in headers and calls(log, c) == 1


def test_a_response_cut_by_a_client_reset_is_not_stored(cached: tuple[Greenfork, Path]) -> None:
    """The client resets the stream while a cacheable response waits on its window: nothing is
    stored, and the next request runs the app (and is stored, whole)."""
    g, log = cached
    authority = f"127.0.0.1:{g.port()}"
    target = url(PUBLIC + "&stream=1&size=30000")
    with connect(g.url()) as s:
        raw = over(s, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1000})
        raw.auto_window = False  # the server can send 1000 bytes, then waits
        raw.request(1, target, authority=authority)
        raw.until(lambda f: isinstance(f, DataFrame) and f.stream_id == 1)
        raw.send(RstStreamFrame(1, error_code=ErrorCodes.CANCEL))
        raw.ping()
        assert len(raw.bodies[1]) <= 1000 and 1 not in raw.ended
    wait_for(lambda: calls(log, target) == 1, 5, "the first call")
    for expect_calls in (2, 2):  # the app again, then a hit
        with connect(g.url()) as s:
            raw = over(s)
            raw.request(1, target, authority=authority)
            head, body = raw.response(1)
        assert head[":status"] == "200" and len(body) == 30000
        assert calls(log, target) == expect_calls
    assert "age" in head


def test_past_the_queue_limit_a_stream_gets_503_and_the_connection_carries_on(
        cached: tuple[Greenfork, Path]) -> None:
    """--max-queued-requests 2: of four slow streams two run and two get 503 at once (no
    `connection` field: HTTP/2 forbids it, the stream ends alone); a cache hit is answered while
    the worker is full; once there is room, the same connection is served again."""
    g, log = cached
    authority = f"127.0.0.1:{g.port()}"
    hit = url(PUBLIC)
    get(g.url(), hit)  # stored
    slow = [url(f"slow=2&x={i}") for i in range(4)]
    with connect(g.url()) as s:
        raw = over(s)
        for i, target in enumerate(slow):
            raw.request(1 + 2 * i, target, authority=authority)
        wait_for(lambda: sum(calls(log, t) for t in slow) == 2, 10, "two slow requests in the app")
        raw.request(9, hit, authority=authority)
        head, _ = raw.response(9)
        assert head[":status"] == "200" and "age" in head
        running = [sid for sid in (1, 3, 5, 7) if sid not in raw.ended]
        assert len(running) == 2, f"the hit waited for the slow streams: {raw.ended}"
        statuses = {}
        for i in range(4):
            head, body = raw.response(1 + 2 * i)
            statuses[1 + 2 * i] = head[":status"]
            if head[":status"] == "503":
                assert head["retry-after"] == "1" and "connection" not in head
                assert body == b"503 request queue full\n"
        assert sorted(statuses.values()) == ["200", "200", "503", "503"], statuses
        assert not raw.resets and not raw.closed
        raw.request(11, url("a=1"), authority=authority)  # room again, on the same connection
        assert raw.response(11)[0][":status"] == "200"
    assert sum(calls(log, t) for t in slow) == 2
    access = (g.log_path.parent / "access.log").read_text().splitlines()
    assert sum(1 for line in access if line.startswith("HTTP/2 503 /r")) == 2


# ------------------------------------------------- gunicorn's pre_request and post_request
HOOKS = """\
import json, os

def _record(**fields):
    with open(os.environ["HOOK_EVENTS"], "a") as f:
        f.write(json.dumps(fields) + "\\n")

def pre_request(worker, req):
    req.mark = "set in pre_request"
    _record(hook="pre_request", method=req.method, path=req.path, query=req.query,
            version=list(req.version), scheme=req.scheme, headers=dict(req.headers))

def post_request(worker, req, environ, resp):
    _record(hook="post_request", path=req.path, mark=req.mark, status=resp.status,
            code=resp.status_code, sent=resp.sent, protocol=environ["SERVER_PROTOCOL"])
"""


def test_pre_and_post_request_hooks_run_for_each_stream(launcher: Launcher, tmp_path: Path) -> None:
    (tmp_path / "gunicorn.conf.py").write_text(HOOKS)
    events = tmp_path / "events.jsonl"
    g = launcher.spawn(["testapp:app", "--pythonpath", str(APPS), "-b", "127.0.0.1:0", "-w", "1"],
                       cwd=tmp_path, env={"HOOK_EVENTS": str(events)})
    wait_for(lambda: g.addr_file.exists() and "Booted" in g.log(), 30, "greenfork to boot")
    g.reload_info()

    def recorded() -> list[dict[str, Any]]:
        return [json.loads(x) for x in events.read_text().splitlines()] if events.exists() else []

    with connect(g.url()) as s:
        raw = over(s)
        raw.request(1, "/sleep?s=0.3", extra=[("x-probe", "one")])
        raw.request(3, "/?q=2", extra=[("x-probe", "two")])
        assert raw.response(1)[0][":status"] == "200" and raw.response(3)[0][":status"] == "200"
    wait_for(lambda: len(recorded()) == 4, 10, "two pre_request and two post_request events")
    got = recorded()
    pre = {e["path"]: e for e in got if e["hook"] == "pre_request"}
    post = {e["path"]: e for e in got if e["hook"] == "post_request"}
    assert set(pre) == set(post) == {"/sleep", "/"}
    assert pre["/"]["version"] == [2, 0] and pre["/"]["method"] == "GET" and pre["/"]["query"] == "q=2"
    assert pre["/"]["scheme"] == "http" and pre["/"]["headers"]["X-PROBE"] == "two"
    assert pre["/sleep"]["headers"]["X-PROBE"] == "one"
    assert pre["/"]["headers"]["HOST"] == "127.0.0.1"  # :authority, as gunicorn's HTTP/2 gives it
    for e in post.values():
        assert e["mark"] == "set in pre_request" and e["protocol"] == "HTTP/2"
        assert e["code"] == 200 and e["status"].startswith("200") and e["sent"] > 0
    # the short stream ended while the slow one still ran: its post_request did not wait for it
    order = [e["path"] for e in got if e["hook"] == "post_request"]
    assert order == ["/", "/sleep"], order


# ------------------------------------------------- --mount: each stream routed on its own
def test_mounts_route_each_stream_by_path_and_authority(launcher: Launcher) -> None:
    g = launcher.start(["shareapps:main", "-b", "127.0.0.1:0", "--mount", "/api=shareapps:api",
                        "--mount", "admin.example.com=shareapps:admin"])
    with connect(g.url()) as s:
        raw = over(s)
        raw.request(1, "/api/sleep?0.3")  # a slow stream of one app does not hold the others up
        raw.request(3, "/api/x?y=1")
        raw.request(5, "/x", authority="admin.example.com")
        raw.request(7, "/apiary")
        got = {}
        for sid in (3, 5, 7, 1):
            head, body = raw.response(sid)
            assert head[":status"] == "200", (head, body)
            got[sid] = json.loads(body)
            if sid != 1:
                assert 1 not in raw.ended, "a stream waited for the slow one"
    assert (got[1]["app"], got[1]["SCRIPT_NAME"], got[1]["PATH_INFO"]) == ("api", "/api", "/sleep")
    assert (got[3]["app"], got[3]["SCRIPT_NAME"], got[3]["PATH_INFO"], got[3]["QUERY_STRING"]) == \
        ("api", "/api", "/x", "y=1")
    assert (got[5]["app"], got[5]["HTTP_HOST"], got[5]["PATH_INFO"]) == ("admin", "admin.example.com", "/x")
    assert (got[7]["app"], got[7]["SCRIPT_NAME"], got[7]["PATH_INFO"]) == ("main", "", "/apiary")


# ------------------------------------------------- behind a real HAProxy
def curl_h2(url: str, *args: str) -> tuple[str, dict[str, Any]]:
    """curl from CLIENT (127.0.0.2): the HTTP version it spoke and the /env it got."""
    r = subprocess.run([curl(), "-sS", "--max-time", "20", "--interface", CLIENT, "-w", "\n%{http_version}",
                        *args, url], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    body, version = r.stdout.rsplit("\n", 1)
    return version, json.loads(body)


def test_h2_through_haproxy_passing_tls_through(launcher: Launcher, proxies: list[Proxy], certs: Certs,
                                               tmp_path: Path) -> None:
    """The documented passthrough (examples/haproxy/greenfork-passthrough.cfg): HAProxy sends
    PROXY v2 and then the client's own TLS bytes; greenfork's handshake picks h2 by ALPN."""
    g = launcher.start(["proxyapp:app", "-b", "https://127.0.0.1:0?proxy-protocol=v2",
                        "--certfile", str(certs.server.cert), "--keyfile", str(certs.server.key)])
    port = free_port()
    config = example("haproxy/greenfork-passthrough.cfg", {
        "bind :443": f"bind 127.0.0.1:{port}", "127.0.0.1:8443": f"127.0.0.1:{g.port()}"})
    HAProxy(proxies, tmp_path, config, port)
    version, env = curl_h2(f"https://127.0.0.1:{port}/env", "--http2", "--cacert", str(certs.ca))
    assert version == "2" and env["SERVER_PROTOCOL"] == "HTTP/2"
    assert env["REMOTE_ADDR"] == CLIENT and env["greenfork.peer_addr"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "https" and env["SSL_PROTOCOL"] == "TLSv1.3"
    assert env["greenfork.proxy_protocol"]["version"] == 2
    # many streams on the connections HAProxy carries: all answered, all from the right client
    h2load = shutil.which("h2load")
    if h2load is None:
        pytest.fail("h2load is required (scripts/test installs nghttp2-client)")
    r = subprocess.run([h2load, "-n", "200", "-c", "2", "-m", "10",
                        f"https://127.0.0.1:{port}/check?addr=127.0.0.1&scheme=https&via=proxy_protocol"],
                       capture_output=True, text=True, timeout=60)
    assert "200 succeeded, 0 failed, 0 errored" in r.stdout and "status codes: 200 2xx" in r.stdout, r.stdout


def test_h2c_from_haproxy_ending_tls_with_proxy_v2(launcher: Launcher, proxies: list[Proxy], certs: Certs,
                                                   tmp_path: Path) -> None:
    """HAProxy ends TLS (ALPN h2) and speaks HTTP/2 with prior knowledge to a cleartext listener,
    PROXY v2 first (`proto h2 send-proxy-v2`): the deployment gunicorn's h2c is meant for."""
    g = launcher.start(["proxyapp:app", "-b", "http://127.0.0.1:0?proxy-protocol=v2"])
    port = free_port()
    pem = tmp_path / "site.pem"
    pem.write_text(certs.server.cert.read_text() + certs.server.key.read_text())
    config = f"""
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend tls
    bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1
    default_backend greenfork
backend greenfork
    server app1 127.0.0.1:{g.port()} send-proxy-v2 proto h2
"""
    HAProxy(proxies, tmp_path, config, port)
    for how in ("--http2", "--http1.1"):  # whatever the client speaks, HAProxy speaks h2 to us
        version, env = curl_h2(f"https://127.0.0.1:{port}/env", how, "--cacert", str(certs.ca))
        assert version == ("2" if how == "--http2" else "1.1")
        assert env["SERVER_PROTOCOL"] == "HTTP/2" and env["REMOTE_ADDR"] == CLIENT
        assert env["greenfork.proxy_protocol"]["version"] == 2 and env["wsgi.url_scheme"] == "http"


# ------------------------------------------------- a unix: listener
def test_h2c_on_a_unix_socket_listener_behind_a_proxy_v1_header(launcher: Launcher, sock_dir: Path) -> None:
    """unix: listeners take h2c with prior knowledge too (curl --unix-socket), and after a PROXY
    header (a local proxy's); SERVER_NAME and SERVER_PORT come from :authority, as from Host."""
    plain, proxied = sock_dir / "h2.sock", sock_dir / "pp.sock"
    g = launcher.start(["proxyapp:app", "-b", f"unix:{plain}", "-b", f"unix:{proxied}?proxy-protocol=v1"])
    r = subprocess.run([curl(), "-sS", "--max-time", "20", "--unix-socket", str(plain),
                        "--http2-prior-knowledge", "-w", "\n%{http_version}", "http://app.example:8080/env"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    body, version = r.stdout.rsplit("\n", 1)
    env = json.loads(body)
    assert version == "2" and env["SERVER_PROTOCOL"] == "HTTP/2"
    assert (env["SERVER_NAME"], env["SERVER_PORT"], env["REMOTE_ADDR"]) == ("app.example", "8080", "")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(proxied))
        raw = over(s, v1(("203.0.113.5", 3333), ("192.0.2.1", 443)))
        env = env_of(raw, 1, authority="site.example:8443", extra=[])
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.5", "3333")
    # on a unix socket SERVER_NAME and SERVER_PORT come from the Host (:authority), as for HTTP/1.1
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("site.example", "8443")
    assert env["SERVER_PROTOCOL"] == "HTTP/2"
    assert g.addresses == [f"unix:{plain}", f"unix:{proxied}"]


# ------------------------------------------------- client certificates
def test_client_certificate_keys_on_every_stream(launcher: Launcher, certs: Certs) -> None:
    """--cert-reqs optional: the handshake's client certificate is every stream's (mod_ssl's
    keys, REMOTE_USER from --client-cert-user); a connection without one has none on its streams."""
    g = launcher.start(["testapp:app", "-b", "https://127.0.0.1:0", "--certfile", str(certs.server.cert),
                        "--keyfile", str(certs.server.key), "--ca-certs", str(certs.ca),
                        "--cert-reqs", "optional", "--client-cert-user", "cn"])
    with Raw.connect(g.port(), tls=tlscerts.client_context(certs, cert=certs.client, alpn=["h2"])) as raw:
        for sid in (1, 3):
            raw.request(sid, "/tlsenv")
        envs = [json.loads(raw.response(sid)[1]) for sid in (1, 3)]
    for env in envs:
        assert env["SSL_CLIENT_VERIFY"] == "SUCCESS" and env["HTTPS"] == "on"
        assert env["SSL_CLIENT_S_DN_CN"] == 'Jürgen "jj" Müller' == env["REMOTE_USER"]
        assert env["SSL_CLIENT_CERT"].startswith("-----BEGIN CERTIFICATE-----")
    with Raw.connect(g.port(), tls=tlscerts.client_context(certs, alpn=["h2"])) as raw:
        raw.request(1, "/tlsenv")
        env = json.loads(raw.response(1)[1])
    assert env["SSL_CLIENT_VERIFY"] == "NONE" and "REMOTE_USER" not in env and "SSL_CLIENT_S_DN" not in env

"""WebSocket through the front door: the gate (--require-header, --allowed-hosts) answers an
upgrade before the app; forwarded headers and PROXY headers (in front of TLS too) reach a
WebSocket app as they reach any request; and wss:// through real proxies, nginx with the
WebSocket configuration docs/websocket.md shows (examples/nginx/greenfork-websocket.conf) and
HAProxy with docs/deployment.md's (examples/haproxy/greenfork.cfg), where a HUP's 1001 close
frames pass through to the clients. The app is tests/apps/ws_geventwebsocket.py; its /env
route sends what it sees of its client, then echoes."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from tests import tlscerts
from tests.procs import Greenfork, Launcher, http_get, wait_for
from tests.proxytools import connect as connect_from
from tests.proxytools import v1, v2
from tests.test_behind_proxies import (
    CLIENT,
    EXAMPLES,
    HAProxy,
    Proxy,
    example,
    free_port,
    nginx_conf,
    site_pem,
    start_nginx,
)
from tests.test_websocket import GWS, Server, expect_close, start
from tests.tlscerts import Certs
from tests.wsclients import TlsClient

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return tlscerts.certs(tmp_path_factory)


Client = ClientConnection | TlsClient


def wss(port: int, path: str, certs: Certs, *, source: str | None = None, preface: bytes = b"",
        host: str = "127.0.0.1", **kw: Any) -> TlsClient:
    """A wss:// connection to 127.0.0.1:port (from `source`), `preface` (a PROXY header) first."""
    sock = connect_from(f"http://127.0.0.1:{port}", source=source)
    if preface:
        sock.sendall(preface)
    return TlsClient(f"wss://{host}:{port}{path}", tlscerts.client_context(certs), sock, **kw)


def first_env(ws: Client) -> dict[str, Any]:
    """The /env route's first message: the environ's string values as the app saw them."""
    env: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return env


def echo(ws: Client, n: int = 3) -> None:
    for i in range(n):
        ws.send(f"message {i}")
        assert ws.recv(timeout=10) == f"message {i}"


# ---------------------------------------------------------------- the gate
def test_the_gate_answers_an_upgrade_before_the_app(launcher: Launcher) -> None:
    s = start(launcher, GWS, "--allowed-hosts", "app.test", "--require-header", "X-Proxy-Secret=s3cr3t")
    secret = {"X-Proxy-Secret": "s3cr3t"}
    refused = [({"Host": "app.test"}, 403), ({"Host": "app.test", "X-Proxy-Secret": "wrong"}, 403),
               ({"Host": "other.test", **secret}, 400), ({"Host": "app.test.evil", **secret}, 400)]
    for headers, status in refused:
        c = s.raw("/env", headers=headers)
        try:
            assert c.status == status, (headers, c.head)
            assert "upgrade" not in c.head.lower()  # an ordinary refusal, not a WebSocket's
            c.body()  # returns at EOF: the connection closes after the refusal
        finally:
            c.close()
    assert s.stats()["opened"] == 0  # the app never took any of them over
    sock = connect_from(f"http://127.0.0.1:{s.port}")  # (the URL's name is the Host header)
    with connect(f"ws://app.test:{s.port}/env", sock=sock, additional_headers=secret, ping_interval=None,
                 open_timeout=10) as ws:
        env = first_env(ws)
        assert env["HTTP_HOST"] == f"app.test:{s.port}"
        assert "HTTP_X_PROXY_SECRET" not in env  # the gate removes the secret, for WebSockets too
        echo(ws)
    assert s.wait_closed(1)["closed"] == {"1000": 1}


# ---------------------------------------------------------------- the cache and the queue limit
def test_the_response_cache_and_the_queue_limit_leave_websockets_alone(launcher: Launcher) -> None:
    s = start(launcher, GWS, "--response-cache", "1MiB", "--max-queued-requests", "2")
    # a cached plain answer for /echo?cache never answers a WebSocket upgrade for the same URL
    for _ in range(2):
        status, headers, body = http_get(s.g.url(), "/echo?cache")
        assert status == 200 and body == b"plain http\n"
    assert "age" in headers, headers  # the second one came from the cache
    with contextlib.ExitStack() as stack:
        # more WebSockets than --max-queued-requests: open sessions are not requests in flight
        sockets = [stack.enter_context(s.connect("/echo?cache")) for _ in range(5)]
        for i, ws in enumerate(sockets):
            ws.send(f"ws {i}")
            assert ws.recv(timeout=10) == f"ws {i}"
        status, _, body = http_get(s.g.url(), "/plain")  # the worker still has room for requests
        assert status == 200 and body == b"plain http\n"
    assert s.wait_closed(5)["closed"] == {"1000": 5}


# ---------------------------------------------------------------- forwarded headers
def test_forwarded_headers_reach_the_websocket_and_its_clients_stay_apart(launcher: Launcher) -> None:
    s = start(launcher, GWS)  # the default --forwarded-allow-ips trusts loopback
    forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}

    def open_ws(path: str) -> ClientConnection:
        return connect(s.url(path), additional_headers=forwarded, ping_interval=None, open_timeout=10)

    with open_ws("/env") as ws:
        env = first_env(ws)
        assert env["REMOTE_ADDR"] == "203.0.113.7" and env["REMOTE_PORT"] == ""
        assert env["wsgi.url_scheme"] == "https" and env["greenfork.peer_addr"] == "127.0.0.1"
        assert env["client_address"] == ["203.0.113.7", 0]
        echo(ws)
    # Two connections from one forwarded client (two browser tabs) have the same client_address;
    # each is in gevent-websocket's server.clients all the same, so a broadcast reaches both, and
    # one leaving does not take the other out.
    with open_ws("/chat") as a:
        with open_ws("/chat") as b:
            a.send("from a")
            assert b.recv(timeout=10) == "from a" and a.recv(timeout=10) == "from a"
        with open_ws("/chat") as c:
            c.send("from c")
            assert a.recv(timeout=10) == "from c" and c.recv(timeout=10) == "from c"


# ---------------------------------------------------------------- PROXY headers, TLS after them
@pytest.mark.parametrize("version", [1, 2])
def test_a_proxy_header_then_wss(launcher: Launcher, certs: Certs, version: int) -> None:
    s = start(launcher, GWS, "-b", f"https://127.0.0.1:0?proxy-protocol=v{version}", certs=certs)
    # (start's own -b is a plain listener; the PROXY one is the second address)
    port = s.g.port(1)
    client = ("198.51.100.9", 40000 + version)
    header = v1(client, ("127.0.0.1", port)) if version == 1 else v2(client, ("127.0.0.1", port))
    with wss(port, "/env", certs, preface=header) as ws:
        env = first_env(ws)
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (client[0], str(client[1]))
        assert env["wsgi.url_scheme"] == "https" and env["HTTPS"] == "on"
        assert env["proxy_protocol_version"] == str(version) and env["greenfork.peer_addr"] == "127.0.0.1"
        assert env["client_address"] == [client[0], client[1]]
        echo(ws)
        ws.send("x" * 200_000)  # a message larger than a TLS record, compressed
        assert ws.recv(timeout=10) == "x" * 200_000
    # A WebSocket request without the header is not served: the PROXY step comes first
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        raw.sendall(b"GET /env HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        assert b"101" not in raw.recv(1024)
    except ConnectionResetError:
        pass
    finally:
        raw.close()


@pytest.mark.parametrize("app", ["ws_flask_sock:app", "ws_flask_sock:app_ping"], ids=["plain", "pinging"])
def test_flask_sock_over_the_raw_socket_after_a_proxy_header_and_tls(launcher: Launcher, certs: Certs,
                                                                     app: str) -> None:
    # simple-websocket's own handshake and frames through the raw socket, which sits on the
    # TLS stream after the PROXY step (its pinging variant polls the socket's fileno())
    s = start(launcher, app, "-b", "https://127.0.0.1:0?proxy-protocol=v2", certs=certs)
    port = s.g.port(1)
    with wss(port, "/echo", certs, preface=v2(("198.51.100.10", 41000), ("127.0.0.1", port))) as ws:
        echo(ws)
        ws.send("bye")
        assert expect_close(ws, 1000) == "bye"
    assert s.wait_closed(1)["closed"] == {"1000": 1}


# ---------------------------------------------------------------- mounts and delegation
def test_websockets_under_a_mount_and_through_delegation(launcher: Launcher, certs: Certs,
                                                          sock_dir: Path) -> None:
    handoff = sock_dir / "ws.sock"
    target = launcher.start([GWS, "-b", f"handoff:{handoff}"])
    front = launcher.start(["ws_flask_sock:app", "-b", "http://127.0.0.1:0", "-b", "https://127.0.0.1:0",
                            "--certfile", str(certs.server.cert), "--keyfile", str(certs.server.key),
                            "--mount", f"/m={GWS}", "--delegate", f"/env=unix:{handoff}"])
    plain, tls = front.port(0), front.port(1)
    # a mounted gevent-websocket app beside the front's own flask-sock app
    with connect(f"ws://127.0.0.1:{plain}/m/env", ping_interval=None, open_timeout=10) as ws:
        env = first_env(ws)
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/m", "/env")
        assert int(env["pid"]) in front.workers()
        echo(ws)
    with connect(f"ws://127.0.0.1:{plain}/echo", ping_interval=None, open_timeout=10) as ws:
        echo(ws)  # (flask-sock's route, the front's main app)
    # delegated: the connection itself moves to the target (plain), or the TLS front relays it
    for secure in (False, True):
        with (wss(tls, "/env", certs) if secure else
              connect(f"ws://127.0.0.1:{plain}/env", ping_interval=None, open_timeout=10)) as ws:
            env = first_env(ws)
            assert int(env["pid"]) in target.workers() and env["REMOTE_ADDR"] == "127.0.0.1"
            assert env["wsgi.url_scheme"] == ("https" if secure else "http")
            echo(ws)
            ws.send("y" * 300_000)
            assert ws.recv(timeout=10) == "y" * 300_000


# ---------------------------------------------------------------- real proxies
def client_ws(port: int, path: str, certs: Certs) -> TlsClient:
    """A wss:// connection through the proxy's TLS port, from CLIENT's address."""
    return wss(port, path, certs, source=CLIENT)


def hup_closes_through_the_proxy(g: Greenfork, port: int, certs: Certs,
                                 closes: Callable[[], dict[str, int]]) -> None:
    """A HUP: each client hears 1001 through the proxy, the workers count two 1001 closes, and
    a new connection reaches the new generation."""
    with client_ws(port, "/whoami", certs) as a, client_ws(port, "/whoami", certs) as b:
        before = {json.loads(a.recv(timeout=10))["pid"], json.loads(b.recv(timeout=10))["pid"]}
        generation = g.reload_info()["generation"]
        g.signal(signal.SIGHUP)
        assert expect_close(a, 1001) == "server going away"
        assert expect_close(b, 1001) == "server going away"
    wait_for(lambda: g.reload_info()["generation"] == generation + 1, 15, "the reload")
    wait_for(lambda: closes().get("1001") == 2, 15, "two 1001 closes counted")
    with client_ws(port, "/whoami", certs) as c:
        assert json.loads(c.recv(timeout=10))["pid"] not in before


WS_NGINX = "nginx/greenfork-websocket.conf"
# the line docs/websocket.md says to add to deployment.md's HAProxy file
TUNNEL_LINE = "    timeout tunnel 1h  # a WebSocket (after its 101) may be silent this long\n"


def test_websocket_md_shows_the_tested_nginx_file() -> None:
    docs = (ROOT / "docs" / "websocket.md").read_text()
    text = (EXAMPLES / WS_NGINX).read_text()
    assert f"File: [`examples/{WS_NGINX}`](../examples/{WS_NGINX})" in docs
    blocks = re.findall(r"```[a-z]*\n(.*?)```", docs, re.DOTALL)
    assert text in blocks, "copy the example into the docs again"
    assert TUNNEL_LINE in blocks


@pytest.mark.slow
def test_wss_through_nginx(launcher: Launcher, proxies: list[Proxy], certs: Certs, tmp_path: Path,
                           sock_dir: Path) -> None:
    sock = sock_dir / "gf.sock"
    sock_dir.chmod(0o755)  # nginx's workers run as www-data and must reach the socket
    g = launcher.start([GWS, "-b", f"unix:{sock}", "--unix-socket-mode", "666",
                        "--metrics-bind", "http://127.0.0.1:0"], workers=2)
    s = Server(g, None)
    port = free_port()
    site = example(WS_NGINX, {
        "unix:/run/greenfork.sock": f"unix:{sock}", "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "/etc/ssl/certs/www.example.com.pem": str(certs.server.cert),
        "/etc/ssl/private/www.example.com.key": str(certs.server.key)})
    start_nginx(proxies, tmp_path, nginx_conf(tmp_path, http=site), port)
    with client_ws(port, "/env", certs) as ws:
        env = first_env(ws)
        assert env["REMOTE_ADDR"] == CLIENT and env["wsgi.url_scheme"] == "https"
        assert env["HTTP_X_FORWARDED_PROTO"] == "https" and env["greenfork.original_scheme"] == "http"
        echo(ws)
        ws.send(b"\x00" * 300_000)
        assert ws.recv(timeout=10) == b"\x00" * 300_000
    # the same location serves plain requests (no Upgrade: the app answers over HTTP)
    ctx = tlscerts.client_context(certs, alpn=["http/1.1"])
    with connect_from(f"http://127.0.0.1:{port}") as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as t:
        for _ in range(2):  # on one kept-alive connection
            t.sendall(b"GET /plain HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
            data = b""
            while not data.endswith(b"\r\n0\r\n\r\n"):  # nginx re-chunks the body
                chunk = t.recv(65536)
                assert chunk, data
                data += chunk
            assert data.startswith(b"HTTP/1.1 200") and b"\r\nplain http\n\r\n" in data, data
    hup_closes_through_the_proxy(g, port, certs, lambda: s.stats()["closed"])


@pytest.mark.slow
def test_wss_through_haproxy_with_send_proxy_v2(launcher: Launcher, proxies: list[Proxy], certs: Certs,
                                                tmp_path: Path) -> None:
    g = launcher.start([GWS, "-b", "http://127.0.0.1:0?proxy-protocol=v2", "--mount", "/sio=ws_socketio:app",
                        "--metrics-bind", "http://127.0.0.1:0?proxy-protocol=v2"], workers=2)
    metrics_port = int(g.info["metrics"].rsplit(":", 1)[1])
    port = free_port()
    config = example("haproxy/greenfork.cfg", {
        "bind :443 ssl crt /etc/haproxy/site.pem":
            f"bind 127.0.0.1:{port} ssl crt {site_pem(certs, tmp_path)}",
        "127.0.0.1:8000": f"127.0.0.1:{g.port()}", "port 9110": f"port {metrics_port}",
        "    timeout server 60s\n": "    timeout server 60s\n" + TUNNEL_LINE})
    hap = HAProxy(proxies, tmp_path, config, port)
    wait_for(lambda: hap.server_state() == "UP", 15, "HAProxy's health check to pass")
    with client_ws(port, "/env", certs) as ws:
        env = first_env(ws)
        assert env["REMOTE_ADDR"] == CLIENT and env["wsgi.url_scheme"] == "https"
        assert env["proxy_protocol_version"] == "2" and env["SSL_TLS_SNI"] == "localhost"
        echo(ws)
    # Flask-SocketIO (mounted at /sio) checks a browser's Origin against wsgi.url_scheme and
    # Host: the scheme comes from the PROXY header's ssl TLV (HAProxy adds no X-Forwarded-Proto)
    socketio_through(port, certs, f"https://localhost:{port}")
    with pytest.raises(InvalidStatus):  # the same page served over http:// would be refused
        socketio_through(port, certs, f"http://localhost:{port}")
    hup_closes_through_the_proxy(g, port, certs, lambda: closes_behind_proxy_protocol(metrics_port))


def socketio_through(port: int, certs: Certs, origin: str) -> None:
    """Engine.IO 4 / Socket.IO 5 over the WebSocket transport, as a browser at `origin` speaks
    it: open, connect to the namespace, an event and its echo."""
    with wss(port, "/sio/socket.io/?EIO=4&transport=websocket", certs, host="localhost",
             origin=Origin(origin)) as ws:
        opened = ws.recv(timeout=10)
        assert isinstance(opened, str) and opened.startswith("0{") and "sid" in opened
        ws.send("40")
        connected = ws.recv(timeout=10)
        assert isinstance(connected, str) and connected.startswith("40{")
        ws.send('42["echo",{"n":1}]')
        assert ws.recv(timeout=10) == '42["echo",{"n":1}]'


def closes_behind_proxy_protocol(port: int) -> dict[str, int]:
    """greenfork_websocket_closes_total by code, from /metrics on a listener that wants a PROXY
    header (a LOCAL one, as HAProxy's health check sends)."""
    with connect_from(f"http://127.0.0.1:{port}") as sock:
        sock.sendall(v2(None, None, local=True)
                     + b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    closed: dict[str, int] = {}
    for m in re.finditer(rb'^greenfork_websocket_closes_total\{code="([^"]+)"\} (\S+)$', data, re.M):
        if float(m.group(2)):
            closed[m.group(1).decode()] = int(float(m.group(2)))
    return closed

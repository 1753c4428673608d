"""The PROXY step and the request gate with the other protocols of a connection: HTTP/2 after a
PROXY header (cleartext prior knowledge, its preface read after the header, whole and one byte
at a time; over TLS, ALPN h2 after the header), with curl's --haproxy-protocol and a raw HTTP/2
client; the gate (forwarded headers, --allowed-hosts, --require-header) on every HTTP/2 stream;
WebSocket upgrades after a PROXY header (plain and TLS) and with forwarded headers, with the
`websockets` client, and upgrades the gate refuses before any hand-off, counted; a PROXY
front that delegates connections (issue 17) hands the client it read to the target."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hyperframe.frame import SettingsFrame
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from greenfork.workers import handoff
from tests import tlscerts
from tests.conftest import curl
from tests.h2raw import PREFACE, Raw
from tests.metricsutil import scrape, total
from tests.procs import APPS, Greenfork, Launcher, wait_for
from tests.proxytools import connect, read_response, request, tlv, v1, v2
from tests.wsclients import TlsClient

pytestmark = pytest.mark.timeout(120)
SECRET = {"X-Proxy-Secret": "s3cret"}
REQ = "http_server_request_duration_seconds_count"


class Server:
    def __init__(self, g: Greenfork, certs: tlscerts.Certs) -> None:
        self.g = g
        self.certs = certs
        self.pp, self.pptls, self.plain = g.addresses  # PROXY any; https + PROXY v1; neither
        self.metrics = g.info["metrics"]

    def refusals(self) -> tuple[float, float]:
        """Requests answered 403 and 400 by the gate so far."""
        s = scrape(self.metrics)
        return (total(s, REQ, error_type="required_header_missing"),
                total(s, REQ, error_type="host_not_allowed"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    certs = tlscerts.certs(tmp_path_factory)
    ln = Launcher(tmp_path_factory.mktemp("proxy-upgrades"))
    try:
        g = ln.start(["proxyapp:app", "-b", "http://127.0.0.1:0?proxy-protocol=any",
                      "-b", "https://127.0.0.1:0?proxy-protocol=v1", "-b", "http://127.0.0.1:0",
                      "--certfile", str(certs.server.cert), "--keyfile", str(certs.server.key),
                      "--forwarded-allow-ips", "127.0.0.1,10.0.0.0/8",
                      "--allowed-hosts", "app.test,127.0.0.1", "--metrics-bind", "http://127.0.0.1:0"],
                     env={"GREENFORK_REQUIRE_HEADER": "X-Proxy-Secret=s3cret"})
        yield Server(g, certs)
    finally:
        ln.cleanup()


# ------------------------------------------------------------------ HTTP/2
def h2_env(raw: Raw, sid: int, authority: str = "app.test",
           headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    fields = SECRET if headers is None else headers
    raw.request(sid, "/env", authority=authority,
                extra=[(k.lower(), v) for k, v in fields.items() if v])
    head, body = raw.response(sid)
    status = int(head[":status"])
    return status, (json.loads(body) if status == 200 else {"body": body.decode()})


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "one byte at a time"])
def test_h2c_prior_knowledge_after_a_v2_header(server: Server, bytewise: bool) -> None:
    """The preface is looked for in the bytes after the header; each stream goes through the
    gate with the client the header named (10.1.2.3, trusted for forwarded headers)."""
    s = connect(server.pp)
    head = (v2(("10.1.2.3", 1111), ("192.0.2.1", 80), tlvs=tlv(0x01, b"h2"), crc=True)
            + PREFACE + SettingsFrame(0).serialize())
    if bytewise:
        for b in head:
            s.sendall(bytes([b]))
            time.sleep(0.001)
    else:
        s.sendall(head)
    before = server.refusals()
    with Raw(s) as raw:
        status, env = h2_env(raw, 1)
        assert status == 200 and env["SERVER_PROTOCOL"] == "HTTP/2"
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("10.1.2.3", "1111")
        assert env["greenfork.peer_addr"] == "127.0.0.1" and env["SERVER_NAME"] == "192.0.2.1"
        assert env["greenfork.proxy_protocol"]["alpn"] == "h2" and "HTTP_X_PROXY_SECRET" not in env
        # forwarded headers from the client the header named (trusted), on another stream
        status, env = h2_env(raw, 3, headers={**SECRET, "X-Forwarded-For": "198.51.100.7",
                                               "X-Forwarded-Proto": "https"})
        assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("198.51.100.7", "https")
        assert env["greenfork.peer_addr"] == "127.0.0.1"  # the proxy's, kept from the PROXY step
        # the gate's refusals are ordinary answers on their streams: the connection goes on
        assert h2_env(raw, 5, headers={"X-Proxy-Secret": ""})[0] == 403
        assert h2_env(raw, 7, headers={"X-Proxy-Secret": "s3creT"})[0] == 403
        assert h2_env(raw, 9, authority="evil.test")[0] == 400
        status, env = h2_env(raw, 11)
        assert status == 200 and env["REMOTE_ADDR"] == "10.1.2.3"
    wait_for(lambda: server.refusals() == (before[0] + 2, before[1] + 1), 10, "the refusals counted")


def test_h2c_after_a_header_naming_an_untrusted_client(server: Server) -> None:
    s = connect(server.pp)
    s.sendall(v1(("203.0.113.9", 2222), ("192.0.2.1", 80)) + PREFACE + SettingsFrame(0).serialize())
    with Raw(s) as raw:
        status, env = h2_env(raw, 1, headers={**SECRET, "X-Forwarded-For": "198.51.100.7"})
    assert status == 200 and env["REMOTE_ADDR"] == "203.0.113.9"  # 203.0.113.9 vouches for nothing
    assert env["HTTP_X_FORWARDED_FOR"] == "198.51.100.7" and env["greenfork.proxy_protocol"]["version"] == 1


def curl_env(*args: str) -> tuple[str, dict[str, Any]]:
    """curl's HTTP version and the /env it got."""
    r = subprocess.run([curl(), "-sS", "-w", "\n%{http_version}", "-H", "X-Proxy-Secret: s3cret", *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    body, version = r.stdout.rsplit("\n", 1)
    return version, json.loads(body)


def test_curl_haproxy_protocol_with_http2(server: Server) -> None:
    """curl --haproxy-protocol sends a v1 header naming its own end of the connection, then
    HTTP/2: with prior knowledge in cleartext, and by ALPN over TLS (greenfork's own
    handshake after the header)."""
    version, env = curl_env("--haproxy-protocol", "--http2-prior-knowledge", f"{server.pp}/env")
    assert version == "2" and env["SERVER_PROTOCOL"] == "HTTP/2" and env["wsgi.url_scheme"] == "http"
    pp = env["greenfork.proxy_protocol"]
    assert pp["version"] == 1 and pp["command"] == "PROXY" and env["REMOTE_ADDR"] == "127.0.0.1"
    # a header that names the connection's own end: REMOTE_PORT is curl's port, as the peer's
    assert env["REMOTE_PORT"] == env["greenfork.peer_port"]
    version, env = curl_env("--haproxy-protocol", "--http2", "--cacert", str(server.certs.ca),
                            f"{server.pptls}/env")
    assert version == "2" and env["SERVER_PROTOCOL"] == "HTTP/2"
    assert env["wsgi.url_scheme"] == "https" and env["SSL_PROTOCOL"] == "TLSv1.3"
    assert env["greenfork.proxy_protocol"]["version"] == 1
    # HTTP/1.1 on the same listener, for comparison
    version, env = curl_env("--haproxy-protocol", "--http1.1", "--cacert", str(server.certs.ca),
                            f"{server.pptls}/env")
    assert version == "1.1" and env["greenfork.proxy_protocol"]["version"] == 1


def test_h2_over_tls_after_a_v1_header_raw(server: Server) -> None:
    """The raw client: a v1 header, then a TLS handshake that picks h2 by ALPN; the client the
    header names is every stream's."""
    ctx = tlscerts.client_context(server.certs, alpn=["h2"])
    s = connect(server.pptls)
    s.sendall(v1(("203.0.113.20", 4433), ("192.0.2.1", 443)))
    tls = ctx.wrap_socket(s, server_hostname=None)
    assert tls.selected_alpn_protocol() == "h2"
    tls.sendall(PREFACE + SettingsFrame(0).serialize())
    with Raw(tls) as raw:
        for sid in (1, 3):
            status, env = h2_env(raw, sid)
            assert status == 200 and env["REMOTE_ADDR"] == "203.0.113.20"
            assert env["SERVER_PROTOCOL"] == "HTTP/2" and env["wsgi.url_scheme"] == "https"


# ------------------------------------------------------------------ WebSocket
def ws_open(server: Server, url: str, header: bytes | None, *, tls: bool = False, host: str = "app.test",
            headers: dict[str, str] | None = None) -> ClientConnection | TlsClient:
    """A `websockets` client on a socket we opened (and on which a PROXY header went first);
    over TLS one whose TLS runs on one thread (tests/wsclients.py says why)."""
    s = connect(url)
    if header is not None:
        s.sendall(header)
    fields = SECRET if headers is None else headers
    if tls:
        return TlsClient(f"wss://{host}/ws-env", tlscerts.client_context(server.certs), s,
                         server_hostname="127.0.0.1", proxy=None, additional_headers=fields)
    return ws_connect(f"ws://{host}/ws-env", sock=s, proxy=None, open_timeout=10, ping_interval=None,
                      additional_headers=fields)


def ws_env(ws: ClientConnection | TlsClient) -> dict[str, Any]:
    with ws:
        env: dict[str, Any] = json.loads(ws.recv(timeout=10))
        # the app is still there: the connection echoes nothing, but it closes cleanly
    assert ws.close_code == 1000
    return env


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_websocket_after_a_proxy_header(server: Server, tls: bool) -> None:
    url = server.pptls if tls else server.pp
    env = ws_env(ws_open(server, url, v1(("203.0.113.30", 5555), ("192.0.2.1", 443)), tls=tls))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.30", "5555")
    assert env["greenfork.peer_addr"] == "127.0.0.1" and env["greenfork.proxy_protocol"]["version"] == 1
    assert env["wsgi.url_scheme"] == ("https" if tls else "http") and env["HTTP_UPGRADE"] == "websocket"
    assert "HTTP_X_PROXY_SECRET" not in env  # removed before the app, upgrade or not


def test_websocket_with_forwarded_headers(server: Server) -> None:
    xf = {**SECRET, "X-Forwarded-For": "198.51.100.40", "X-Forwarded-Proto": "https"}
    env = ws_env(ws_open(server, server.plain, None, headers=xf))
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("198.51.100.40", "https")
    assert env["greenfork.peer_addr"] == "127.0.0.1"
    # after a PROXY header, from the trusted client it names
    env = ws_env(ws_open(server, server.pp, v2(("10.9.9.9", 1), ("192.0.2.1", 80)), headers=xf))
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("198.51.100.40", "https")


def test_the_gate_refuses_upgrades_before_the_hand_off(server: Server) -> None:
    before = server.refusals()
    header = v1(("203.0.113.31", 1), ("192.0.2.1", 80))
    for url, pp in ((server.plain, None), (server.pp, header)):
        with pytest.raises(InvalidStatus) as e:
            ws_open(server, url, pp, headers={})
        assert e.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as e:
            ws_open(server, url, pp, host="evil.test")
        assert e.value.response.status_code == 400
        assert b"this server does not serve that host" in e.value.response.body
    wait_for(lambda: server.refusals() == (before[0] + 2, before[1] + 2), 10, "the refusals counted")
    assert "Traceback" not in server.g.log()


# ------------------------------------------------------------------ delegation (issue 17)
def test_a_proxy_front_hands_its_client_to_a_delegation_target(
        launcher: Launcher, sock_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The front reads the PROXY header; the target's handoff: listener takes none (refused
    when the settings are read) and sees the client the header named."""
    sock = sock_dir / "one.sock"
    bad = subprocess.run([sys.executable, "-m", "greenfork.master", "shareapps:one", "-b",
                          f"handoff:{sock}?proxy-protocol=v1", "--check-config"], cwd=APPS,
                         env=launcher.env(), capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "a handoff: listener takes no PROXY header (the front reads it)" in bad.stderr + bad.stdout
    launcher.start(["shareapps:one", "-b", f"handoff:{sock}"])
    certs = tlscerts.certs(tmp_path_factory)
    front = launcher.start(["shareapps:main", "-b", "http://127.0.0.1:0?proxy-protocol=v2",
                            "-b", "https://127.0.0.1:0?proxy-protocol=v1", "--delegate", f"/one=unix:{sock}",
                            "--certfile", str(certs.server.cert), "--keyfile", str(certs.server.key)])
    plain, tls = front.addresses
    with connect(plain) as s:
        s.sendall(v2(("203.0.113.50", 5050), ("192.0.2.1", 80)) + request("/one/x"))
        status, _, body = read_response(s)
        assert status == 200, body
        seen = json.loads(body)
        assert seen["app"] == "one" and (seen["REMOTE_ADDR"], seen["REMOTE_PORT"]) == ("203.0.113.50", "5050")
        s.sendall(request("/one/y"))  # keep-alive stays with the target, and so does the client
        assert json.loads(read_response(s)[2])["REMOTE_ADDR"] == "203.0.113.50"
    # PROXY, then TLS ended by the front, which relays to the target: the client and https
    raw = connect(tls)
    raw.sendall(v1(("203.0.113.51", 5151), ("192.0.2.1", 443)))
    with tlscerts.client_context(certs).wrap_socket(raw, server_hostname=None) as s:
        s.sendall(request("/one/z"))
        seen = json.loads(read_response(s)[2])
    assert seen["app"] == "one" and seen["REMOTE_ADDR"] == "203.0.113.51"
    assert seen["wsgi.url_scheme"] == "https" and seen["SSL_PROTOCOL"] == "TLSv1.3"


def test_a_hand_off_leaves_the_fronts_own_keys_behind() -> None:
    """What a PROXY header adds to a front's connection: the client and its TLS keys go along,
    the proxy's address and greenfork.proxy_protocol (a dict) stay (the target refuses
    greenfork.* keys from a front)."""
    extra = {"greenfork.proxy_protocol": {"version": 2}, "greenfork.peer_addr": "127.0.0.1",
             "greenfork.peer_port": "40000", "SERVER_NAME": "192.0.2.1", "SERVER_PORT": "443",
             "wsgi.url_scheme": "https", "HTTPS": "on", "SSL_PROTOCOL": "TLSv1.3"}
    msg = handoff.encode(handoff.Handoff(b"GET / HTTP/1.1\r\n\r\n", ("203.0.113.5", "5"),
                                         handoff.portable(extra), "/one"))
    got = handoff.Decoder().feed(msg)
    assert got is not None and got.peer == ("203.0.113.5", "5")
    assert got.extra == {k: v for k, v in extra.items() if not k.startswith("greenfork.")}

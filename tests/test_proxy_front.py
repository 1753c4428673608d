"""The PROXY step of real connections (workers/front.py), with raw clients sending headers:
v1 and v2 whole and byte by byte, TLVs in the environ, LOCAL, per-listener modes, a unix-socket
listener, PROXY in front of TLS, forwarded headers after it, the metrics listener's option,
and every refusal closed without a byte and counted by error_type."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import tlscerts
from tests.metricsutil import get, scrape, total
from tests.procs import Greenfork, Launcher, kill_tree, wait_for
from tests.proxytools import (
    TlsOverSocket,
    connect,
    env_of,
    read_all,
    read_response,
    request,
    ssl_tlv,
    tlv,
    v1,
    v2,
)

pytestmark = pytest.mark.timeout(120)
CONN = "greenfork_connection_duration_seconds_count"


class Server:
    """One greenfork with every kind of listener this file needs."""

    def __init__(self, g: Greenfork) -> None:
        self.g = g
        urls = g.addresses
        self.any, self.v2, self.plain, self.unix, self.tls, self.any6 = urls
        self.metrics = g.info["metrics"]

    def local(self, s: socket.socket) -> tuple[str, str]:
        host, port = s.getsockname()[:2]
        return str(host), str(port)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import shutil
    import tempfile

    certs = tlscerts.certs(tmp_path_factory)
    sock_dir = Path(tempfile.mkdtemp(prefix="gf-pf-", dir="/tmp"))
    ln = Launcher(tmp_path_factory.mktemp("proxy-front"))
    try:
        g = ln.start(["proxyapp:app", "-b", "http://127.0.0.1:0?proxy-protocol=any",
                      "-b", "http://127.0.0.1:0?proxy-protocol=v2", "-b", "http://127.0.0.1:0",
                      "-b", f"unix:{sock_dir}/pp.sock?proxy-protocol=v1",
                      "-b", "https://127.0.0.1:0?proxy-protocol=v1", "-b", "http://[::1]:0?proxy-protocol=any",
                      "--certfile", str(certs.server.cert), "--keyfile", str(certs.server.key),
                      "--metrics-bind", "http://127.0.0.1:0?proxy-protocol=v2",
                      "--proxy-protocol-timeout", "0.5",
                      "--forwarded-allow-ips", "127.0.0.1,::1,unix,10.0.0.0/8", "--log-level", "debug"])
        yield Server(g)
    finally:
        ln.cleanup()
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_v1_sets_the_client_of_every_request_on_the_connection(server: Server) -> None:
    assert f"{server.any} requires a PROXY protocol header (any) from 127.0.0.1,::1,unix" in server.g.log()
    assert f"{server.plain} requires" not in server.g.log()
    with connect(server.any) as s:
        me = server.local(s)
        env = env_of(s, v1(("203.0.113.7", 51000), ("192.0.2.1", 443)) + request())
        again = env_of(s, request())  # keep-alive: the header is the connection's, once
    for e in (env, again):
        assert (e["REMOTE_ADDR"], e["REMOTE_PORT"]) == ("203.0.113.7", "51000")
        assert (e["SERVER_NAME"], e["SERVER_PORT"]) == ("192.0.2.1", "443")
        assert (e["greenfork.peer_addr"], e["greenfork.peer_port"]) == me
        assert e["greenfork.proxy_protocol"]["version"] == 1 and e["wsgi.url_scheme"] == "http"
    assert env["pid"] == again["pid"]


def test_header_and_request_one_byte_at_a_time(server: Server) -> None:
    data = v2(("198.51.100.4", 4242), ("192.0.2.9", 80), tlvs=tlv(0x01, b"http/1.1"), crc=True) + request()
    with connect(server.any) as s:
        for b in data:
            s.sendall(bytes([b]))
            time.sleep(0.001)
        status, _, body = read_response(s)
    assert status == 200 and b'"REMOTE_ADDR": "198.51.100.4"' in body


def test_v2_tlvs_reach_the_environ(server: Server) -> None:
    tlvs = (tlv(0x01, b"h2") + tlv(0x02, b"shop.example") + tlv(0x05, b"req-42")
            + ssl_tlv(0x01 | 0x02, 0, (0x21, b"TLSv1.3"), (0x22, b"client.example"),
                      (0x23, b"TLS_AES_256_GCM_SHA384"), (0x24, b"RSA-SHA256"), (0x25, b"RSA2048")))
    with connect(server.v2) as s:
        env = env_of(s, v2(("2001:db8::7", 5000), ("2001:db8::1", 443), tlvs=tlvs, crc=True) + request())
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::7", "5000")
    assert env["SERVER_NAME"] == "2001:db8::1"
    assert env["wsgi.url_scheme"] == "https" and env["HTTPS"] == "on"
    assert env["SSL_PROTOCOL"] == "TLSv1.3" and env["SSL_CIPHER"] == "TLS_AES_256_GCM_SHA384"
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS" and env["SSL_CLIENT_S_DN_CN"] == "client.example"
    assert (env["SSL_SERVER_A_SIG"], env["SSL_SERVER_A_KEY"], env["SSL_TLS_SNI"]) == \
        ("RSA-SHA256", "RSA2048", "shop.example")
    pp = env["greenfork.proxy_protocol"]
    assert (pp["version"], pp["command"], pp["alpn"], pp["authority"], pp["unique_id"]) == \
        (2, "PROXY", "h2", "shop.example", "req-42")


def test_local_keeps_the_real_endpoints(server: Server) -> None:
    with connect(server.v2) as s:
        me = server.local(s)
        env = env_of(s, v2(None, None, local=True) + request())
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == me
    assert "greenfork.peer_addr" not in env and env["greenfork.proxy_protocol"]["command"] == "LOCAL"


def test_an_ipv6_peer(server: Server) -> None:
    with connect(server.any6) as s:
        env = env_of(s, v1(("2001:db8::5", 1), ("2001:db8::1", 2)) + request())
    assert env["REMOTE_ADDR"] == "2001:db8::5" and env["greenfork.peer_addr"] == "::1"


def test_a_listener_without_the_option_takes_no_header(server: Server) -> None:
    with connect(server.plain) as s:
        me = server.local(s)
        env = env_of(s, request())
    assert env["REMOTE_ADDR"] == me[0] and env["greenfork.proxy_protocol"] is None
    with connect(server.plain) as s:  # there a header is a request line with an unknown method
        s.sendall(v1(("203.0.113.7", 1), ("192.0.2.1", 2)) + request())
        assert read_response(s)[0] == 501


def test_a_unix_socket_listener(server: Server) -> None:
    with connect(server.unix) as s:
        env = env_of(s, v1(("203.0.113.8", 6000), ("192.0.2.1", 80)) + request(host="site.example:8080"))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.8", "6000")
    assert env["greenfork.peer_addr"] == ""  # the proxy's side of a unix socket has no address
    # on a unix socket SERVER_NAME and SERVER_PORT come from Host, as without a header
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("site.example", "8080")


@pytest.mark.parametrize("together", [True, False], ids=["header+hello in one write", "apart"])
def test_proxy_header_before_tls(server: Server, tmp_path_factory: pytest.TempPathFactory,
                                 together: bool) -> None:
    """The header comes before the handshake; the ClientHello bytes read with it are the
    handshake's first bytes. The environ's TLS keys are the handshake's own."""
    certs = tlscerts.certs(tmp_path_factory)
    header = v1(("203.0.113.9", 7000), ("192.0.2.1", 443))
    with connect(server.tls) as s:
        if not together:
            s.sendall(header)
            time.sleep(0.05)
        tls = TlsOverSocket(s, tlscerts.client_context(certs), prefix=header if together else b"")
        env = env_of(tls, request())
        again = env_of(tls, request())
    for e in (env, again):
        assert (e["REMOTE_ADDR"], e["REMOTE_PORT"]) == ("203.0.113.9", "7000")
        assert e["wsgi.url_scheme"] == "https" and e["SSL_PROTOCOL"] == tls.obj.version()
        assert e["greenfork.proxy_protocol"]["version"] == 1


def test_forwarded_headers_trust_the_client_the_header_named(server: Server) -> None:
    xff = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    with connect(server.any) as s:  # 10.1.2.3 is in --forwarded-allow-ips: its headers apply
        me = server.local(s)
        env = env_of(s, v1(("10.1.2.3", 1111), ("192.0.2.1", 80)) + request(headers=xff))
    assert env["REMOTE_ADDR"] == "198.51.100.7" and env["wsgi.url_scheme"] == "https"
    assert env["greenfork.peer_addr"] == me[0]  # the connection's own peer, kept from the header step
    with connect(server.any) as s:  # 203.0.113.9 is not: they reach the app unapplied
        env = env_of(s, v1(("203.0.113.9", 2222), ("192.0.2.1", 80)) + request(headers=xff))
    assert env["REMOTE_ADDR"] == "203.0.113.9" and env["wsgi.url_scheme"] == "http"
    assert env["HTTP_X_FORWARDED_FOR"] == "198.51.100.7"


def test_the_metrics_listener_takes_its_own_option(server: Server) -> None:
    with connect(server.metrics) as s:  # HAProxy's check-send-proxy: a LOCAL header, then the check
        s.sendall(v2(None, None, local=True) + b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[:1] == (200,)
    with connect(server.metrics) as s:
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_all(s) == b""


def refused(url: str, data: bytes, end: bool = False) -> tuple[bytes, float]:
    """What the server sent before closing, and how long it took (end: we close our side
    after data)."""
    with connect(url) as s:
        started = time.monotonic()
        s.sendall(data)
        if end:
            s.shutdown(socket.SHUT_WR)
        return read_all(s), time.monotonic() - started


def test_refusals_close_without_a_byte_and_are_counted(server: Server, launcher: Launcher) -> None:
    # the shared server's metrics listener wants PROXY headers: a second server to count
    g = launcher.start(["proxyapp:app", "-b", "http://127.0.0.1:0", "--proxy-protocol", "any",
                        "--proxy-protocol-timeout", "0.5", "--metrics-bind", "http://127.0.0.1:0"])
    url, metrics = g.url(), g.info["metrics"]
    bad = [
        request(),  # no header at all: refused on its first byte
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51000\r\n",  # a field missing
        b"PROXY TCP4 203.0.113.007 192.0.2.1 1 2\r\n",  # leading zeros
        v2(("192.0.2.1", 1), ("192.0.2.2", 2), crc=True)[:-1] + b"\x00" + request(),  # CRC32C mismatch
        b"",  # connected and closed without a byte (a TCP check, a port scan)
    ]
    for data in bad:
        out, took = refused(url, data, end=not data)
        assert out == b"" and took < 0.4, data  # at once, not at the timeout
    out, took = refused(url, b"PROXY TCP4 203.0.113.7 ")  # incomplete: the timeout closes it
    assert out == b"" and 0.4 < took < 5, took
    wait_for(lambda: total(scrape(metrics), CONN, error_type="proxy_protocol_invalid") == len(bad), 10,
             "the refusals to be counted")
    s = scrape(metrics)
    assert total(s, CONN, error_type="proxy_protocol_timeout") == 1
    # a listener-level mode narrows what is accepted
    out, _ = refused(server.v2, v1(("203.0.113.7", 1), ("192.0.2.1", 2)) + request())
    assert out == b""
    # a good header still works after all that
    with connect(url) as sock:
        env = env_of(sock, v1(("203.0.113.7", 1), ("192.0.2.1", 2)) + request())
    assert env["REMOTE_ADDR"] == "203.0.113.7"


def test_an_untrusted_peer_is_closed_unread(launcher: Launcher, sock_dir: Path) -> None:
    g = launcher.start(["proxyapp:app", "-b", "http://127.0.0.1:0?proxy-protocol=v1",
                        "-b", f"unix:{sock_dir}/u.sock?proxy-protocol=v1", "--proxy-allow-from", "10.0.0.0/8",
                        "--metrics-bind", "http://127.0.0.1:0"])
    for url in g.addresses:
        out, _ = refused(url, v1(("203.0.113.7", 1), ("192.0.2.1", 2)) + request())
        assert out == b""
    wait_for(lambda: total(scrape(g.info["metrics"]), CONN, error_type="proxy_protocol_untrusted") == 2, 10,
             "both refusals to be counted")
    assert "not in --proxy-allow-from" not in g.log()  # debug lines only: info level is quiet


def test_proxy_allow_from_covers_the_metrics_listener(launcher: Launcher) -> None:
    g = launcher.start(["proxyapp:app", "-b", "http://127.0.0.1:0", "--proxy-allow-from", "10.0.0.0/8",
                        "--metrics-bind", "http://127.0.0.1:0?proxy-protocol=v2"])
    out, _ = refused(g.info["metrics"], v2(None, None, local=True) + b"GET /readyz HTTP/1.1\r\n\r\n")
    assert out == b""
    assert get(g.url(), "/")[0] == 200  # the app listener takes no header


def test_hup_applies_a_new_global_mode(launcher: Launcher, tmp_path: Path) -> None:
    conf = tmp_path / "greenfork.toml"
    conf.write_text('proxy_protocol = "v1"\n')
    g = launcher.start(["proxyapp:app", "-c", str(conf), "-b", "http://127.0.0.1:0",
                        "-b", "http://127.0.0.1:0?proxy-protocol=v2"])
    plain, v2only = g.addresses
    with connect(plain) as s:
        assert env_of(s, v1(("203.0.113.1", 1), ("192.0.2.1", 2)) + request())["REMOTE_ADDR"] == "203.0.113.1"
    conf.write_text('proxy_protocol = "off"\n')
    g.signal(signal.SIGHUP)
    wait_for(lambda: g.reload_info()["generation"] == 2, 15, "the reload")
    wait_for(lambda: len(g.workers()) == 1, 15, "the old generation to retire")
    with connect(plain) as s:
        assert env_of(s, request())["REMOTE_ADDR"] == "127.0.0.1"
    with connect(v2only) as s:  # the listener's own option is unchanged by the global one
        assert env_of(s, v2(("203.0.113.2", 1), ("192.0.2.1", 2)) + request())["REMOTE_ADDR"] == "203.0.113.2"


def test_readyz_stays_up_while_a_reload_boots_new_workers(launcher: Launcher, tmp_path: Path) -> None:
    """A load balancer's health check must not take the server out during a HUP: the current
    workers serve until the new ones are ready (found by HAProxy's checks in a reload test)."""
    delay = tmp_path / "delay"
    g = launcher.start(["proxyapp:app", "-b", "http://127.0.0.1:0", "--metrics-bind", "http://127.0.0.1:0"],
                       env={"PROXYAPP_BOOT_DELAY": str(delay)})
    metrics = g.info["metrics"]
    assert get(metrics, "/readyz")[0] == 200
    delay.write_text("3")
    g.signal(signal.SIGHUP)
    wait_for(lambda: len(g.workers()) == 2, 10, "the new worker to start booting")
    assert get(metrics, "/readyz")[0] == 200 and get(g.url(), "/")[0] == 200
    wait_for(lambda: g.reload_info()["generation"] == 2, 15, "the reload")


def test_inherited_sockets_take_the_option_or_the_global_mode(launcher: Launcher) -> None:
    """fd://N takes ?proxy-protocol= like any form; a socket systemd passes (no bind text)
    follows --proxy-protocol."""
    import shutil
    import subprocess
    import sys

    from tests.procs import APPS

    inherited = socket.create_server(("127.0.0.1", 0))
    try:
        inherited.set_inheritable(True)
        fd = inherited.fileno()
        g = launcher.start(["proxyapp:app", "-b", f"fd://{fd}?proxy-protocol=v1"], pass_fds=(fd,))
        with connect(g.url()) as s:
            env = env_of(s, v1(("203.0.113.3", 3), ("192.0.2.1", 4)) + request())
        assert env["REMOTE_ADDR"] == "203.0.113.3"
    finally:
        inherited.close()
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.fail("systemd-socket-activate is required (scripts/test installs Debian's systemd)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([tool, "-l", f"127.0.0.1:{port}", sys.executable, "-m", "greenfork.master",
                             "proxyapp:app", "--proxy-protocol", "v2"], cwd=APPS, env=launcher.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: f":{port}" in subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout,
                 10, "the activation socket")
        with connect(f"http://127.0.0.1:{port}", timeout=20) as s:
            env = env_of(s, v2(("203.0.113.4", 5), ("192.0.2.1", 6)) + request())
        assert env["REMOTE_ADDR"] == "203.0.113.4"
    finally:
        kill_tree(proc)

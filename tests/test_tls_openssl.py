"""`openssl s_client` against a small loopback server that uses master/tls.py's context and
answers with master/tlsinfo.py's environ: what a real TLS client negotiates and sees."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from greenfork.master import tls, tlsinfo
from greenfork.master.settings import SniCertificate, defaults
from tests import tlscerts
from tests.tlscerts import Certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return tlscerts.certs(tmp_path_factory)


class TinyServer:
    """Accepts on 127.0.0.1, handshakes with the context, writes the environ lines, closes."""

    def __init__(self, cfg: tls.TlsConfig) -> None:
        assert cfg.default is not None
        self.ctx = cfg.default
        self.user = cfg.client_cert_user
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as s:
                    env = tlsinfo.environ(s, self.user)
                    env.pop("SSL_CLIENT_CERT", None)
                    s.sendall("".join(f"{k}={v}\n" for k, v in sorted(env.items())).encode())
                    # close_notify: OpenSSL 3 clients treat a bare TCP close as truncation (an error)
                    s.settimeout(2)
                    s.unwrap()
            except (ssl.SSLError, OSError) as e:
                self.errors.append(str(e))
            finally:
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


Serve = Callable[..., TinyServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    servers: list[TinyServer] = []

    def start(certs: Certs, alpn: tuple[str, ...] = tls.ALPN_HTTP1, **kw: object) -> TinyServer:
        base: dict[str, object] = {"bind": ("https://127.0.0.1:0",), "certfile": str(certs.server.cert),
                                   "keyfile": str(certs.server.key)}
        base.update(kw)
        srv = TinyServer(tls.load(defaults(**base), alpn))
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


def s_client(srv: TinyServer, certs: Certs, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.fail("the openssl command is required")
    return subprocess.run([exe, "s_client", "-connect", f"127.0.0.1:{srv.port}", "-CAfile", str(certs.ca),
                           "-verify_return_error", "-ign_eof", *args],
                          input="", capture_output=True, text=True, timeout=30)


def test_servername_picks_the_sni_certificate(serve: Serve, certs: Certs) -> None:
    srv = serve(certs, sni=(SniCertificate("*.example.com", str(certs.sni.cert), str(certs.sni.key)),))
    r = s_client(srv, certs, "-servername", "shop.example.com", "-verify_hostname", "shop.example.com")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "subject=CN = *.example.com" in r.stdout or "subject=CN=*.example.com" in r.stdout
    assert "Verification: OK" in r.stdout
    assert "SSL_SERVER_NAME=shop.example.com\n" in r.stdout
    r = s_client(srv, certs, "-noservername", "-verify_ip", "127.0.0.1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "subject=CN = localhost" in r.stdout or "subject=CN=localhost" in r.stdout
    assert "SSL_SERVER_NAME" not in r.stdout


@pytest.mark.parametrize(("server_alpn", "offer", "chosen"), [
    (tls.ALPN_HTTP1, "h2,http/1.1", "http/1.1"),
    (("h2", "http/1.1"), "h2,http/1.1", "h2"),
    (("h2", "http/1.1"), "http/1.1", "http/1.1"),
])
def test_alpn(serve: Serve, certs: Certs, server_alpn: tuple[str, ...], offer: str, chosen: str) -> None:
    srv = serve(certs, alpn=server_alpn)
    r = s_client(srv, certs, "-alpn", offer)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ALPN protocol: {chosen}" in r.stdout


def test_tls11_is_refused(serve: Serve, certs: Certs) -> None:
    srv = serve(certs)
    # SECLEVEL=0 lets this openssl offer TLS 1.1 at all, so the refusal is the server's
    r = s_client(srv, certs, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert r.returncode != 0
    assert "SSL_PROTOCOL" not in r.stdout
    wait_for_error(lambda: srv.errors)
    assert any("UNSUPPORTED_PROTOCOL" in e or "unsupported protocol" in e for e in srv.errors), srv.errors


def test_tls12_and_13(serve: Serve, certs: Certs) -> None:
    srv = serve(certs, certfile=str(certs.ecdsa.cert), keyfile=str(certs.ecdsa.key))
    r = s_client(srv, certs, "-tls1_2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SSL_PROTOCOL=TLSv1.2\n" in r.stdout
    assert "SSL_CIPHER=ECDHE-ECDSA-AES128-GCM-SHA256\n" in r.stdout
    r = s_client(srv, certs, "-tls1_3")
    assert "SSL_PROTOCOL=TLSv1.3\n" in r.stdout


def test_client_certificate_required(serve: Serve, certs: Certs) -> None:
    srv = serve(certs, cert_reqs="required", ca_certs=str(certs.ca), client_cert_user="cn")
    r = s_client(srv, certs, "-cert", str(certs.client.cert), "-key", str(certs.client.key))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SSL_CLIENT_VERIFY=SUCCESS\n" in r.stdout
    assert 'REMOTE_USER=Jürgen "jj" Müller\n' in r.stdout
    assert "SSL_CLIENT_S_DN=emailAddress=jj@example.com,CN=Jürgen" in r.stdout
    # without a certificate the server ends the handshake: the client never gets a byte of data
    r = s_client(srv, certs)
    assert "SSL_PROTOCOL" not in r.stdout
    wait_for_error(lambda: srv.errors)
    assert any("PEER_DID_NOT_RETURN_A_CERTIFICATE" in e for e in srv.errors), srv.errors
    # a certificate from another CA is refused too
    srv.errors.clear()
    r = s_client(srv, certs, "-cert", str(certs.foreign_client.cert), "-key", str(certs.foreign_client.key))
    assert "SSL_PROTOCOL" not in r.stdout
    wait_for_error(lambda: srv.errors)
    assert any("CERTIFICATE_VERIFY_FAILED" in e for e in srv.errors), srv.errors


def test_client_certificate_optional(serve: Serve, certs: Certs) -> None:
    srv = serve(certs, cert_reqs="optional", ca_certs=str(certs.ca))
    r = s_client(srv, certs)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SSL_CLIENT_VERIFY=NONE\n" in r.stdout
    r = s_client(srv, certs, "-cert", str(certs.client.cert), "-key", str(certs.client.key))
    assert "SSL_CLIENT_VERIFY=SUCCESS\n" in r.stdout


def test_session_resumption_with_s_client(serve: Serve, certs: Certs, tmp_path: Path) -> None:
    srv = serve(certs)
    sess = tmp_path / "session.pem"
    r = s_client(srv, certs, "-sess_out", str(sess))
    assert r.returncode == 0 and "SSL_SESSION_RESUMED=Initial\n" in r.stdout, r.stdout + r.stderr
    r = s_client(srv, certs, "-sess_in", str(sess))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Reused, TLSv1.3" in r.stdout
    assert "SSL_SESSION_RESUMED=Resumed\n" in r.stdout


def wait_for_error(cond: Callable[[], object], timeout: float = 5.0) -> None:
    from tests.procs import wait_for

    wait_for(cond, timeout, "the server to record the handshake error")

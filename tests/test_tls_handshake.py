"""master/tls.py's contexts in real TLS handshakes: in memory (client and server SSLObjects over
MemoryBIOs) and, for session resumption across forked workers, over loopback sockets."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenfork.master import tls
from greenfork.master.settings import SniCertificate, defaults
from tests import tlscerts
from tests.tlscerts import Certs, HandshakeFailed, client_context, der, handshake


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return tlscerts.certs(tmp_path_factory)


def load(certs: Certs, alpn: tuple[str, ...] = tls.ALPN_HTTP1, **kw: object) -> tls.TlsConfig:
    base: dict[str, object] = {"bind": ("https://127.0.0.1:0",), "certfile": str(certs.server.cert),
                               "keyfile": str(certs.server.key)}
    base.update(kw)
    return tls.load(defaults(**base), alpn)


def server_ctx(cfg: tls.TlsConfig) -> ssl.SSLContext:
    assert cfg.default is not None
    return cfg.default


@pytest.fixture(scope="module")
def sni_config(certs: Certs) -> tls.TlsConfig:
    return load(certs, sni=(SniCertificate("*.example.com", str(certs.sni.cert), str(certs.sni.key)),
                            SniCertificate("api.example.org", str(certs.sni.cert), str(certs.sni.key)),
                            SniCertificate("www.example.com", str(certs.exact.cert), str(certs.exact.key))))


# ------------------------------------------------------------------ SNI


@pytest.mark.parametrize(("name", "served"), [
    (None, "server"),
    ("a.example.com", "sni"),  # the one-label wildcard
    ("A.Example.COM", "sni"),
    ("api.example.org", "sni"),  # an exact entry
    ("www.example.com", "exact"),  # exact beats the wildcard
    ("a.b.example.com", "server"),  # a wildcard matches one label only
    ("example.com", "server"),  # ... and not the bare domain
    ("unknown.test", "server"),
    ("localhost", "server"),
])
def test_sni_picks_the_certificate(certs: Certs, sni_config: tls.TlsConfig, name: str | None,
                                   served: str) -> None:
    srv, cli = handshake(server_ctx(sni_config), client_context(certs), server_hostname=name)
    assert cli.getpeercert(binary_form=True) == der(getattr(certs, served))
    # the name the client asked for is recorded for SSL_SERVER_NAME, as it sent it
    assert getattr(srv, tls.SNI_ATTR) == name


def test_sni_lookup_rules(sni_config: tls.TlsConfig) -> None:
    exact, wildcard, default = (sni_config.exact["www.example.com"], sni_config.wildcard[".example.com"],
                                sni_config.default)
    assert sni_config.context_for_name("www.example.com.") is exact  # a trailing dot is the same name
    assert sni_config.context_for_name("WWW.EXAMPLE.COM") is exact
    assert sni_config.context_for_name("x.example.com") is wildcard
    assert sni_config.context_for_name(".example.com") is default  # an empty first label is no match
    assert sni_config.context_for_name("") is default
    assert sni_config.context_for_name(None) is default


def test_sni_contexts_keep_client_verification(certs: Certs) -> None:
    cfg = load(certs, cert_reqs="required", ca_certs=str(certs.ca),
               sni=(SniCertificate("*.example.com", str(certs.sni.cert), str(certs.sni.key)),))
    with pytest.raises(HandshakeFailed) as info:
        handshake(server_ctx(cfg), client_context(certs), server_hostname="a.example.com")
    assert info.value.side == "server"
    srv, cli = handshake(server_ctx(cfg), client_context(certs, cert=certs.client), "a.example.com")
    assert cli.getpeercert(binary_form=True) == der(certs.sni)
    assert srv.getpeercert(binary_form=True) == der(certs.client)


# ------------------------------------------------------------------ ALPN


@pytest.mark.parametrize(("server", "client", "chosen"), [
    (("http/1.1",), ["h2", "http/1.1"], "http/1.1"),
    (("h2", "http/1.1"), ["h2", "http/1.1"], "h2"),
    (("h2", "http/1.1"), ["http/1.1", "h2"], "h2"),  # the server's preference
    (("h2", "http/1.1"), ["http/1.1"], "http/1.1"),
    (("http/1.1",), ["h2"], None),  # no overlap: no ALPN, the server then speaks HTTP/1.1
    (("http/1.1",), None, None),
])
def test_alpn(certs: Certs, server: tuple[str, ...], client: list[str] | None, chosen: str | None) -> None:
    cfg = load(certs, alpn=server, sni=(SniCertificate("*.example.com", str(certs.sni.cert),
                                                       str(certs.sni.key)),))
    for name in (None, "a.example.com"):  # the SNI context offers the same list
        srv, cli = handshake(server_ctx(cfg), client_context(certs, alpn=client), server_hostname=name)
        assert srv.selected_alpn_protocol() == chosen
        assert cli.selected_alpn_protocol() == chosen


# ------------------------------------------------------------------ client certificates


@pytest.mark.parametrize(("mode", "client", "outcome"), [
    ("none", None, "no cert"),
    ("none", "client", "no cert"),  # not asked for, so not sent
    ("optional", None, "no cert"),
    ("optional", "client", "verified"),
    ("optional", "foreign_client", "refused"),  # sent but from another CA: the handshake fails
    ("required", None, "refused"),
    ("required", "client", "verified"),
    ("required", "foreign_client", "refused"),
])
def test_client_certificates(certs: Certs, mode: str, client: str | None, outcome: str) -> None:
    cfg = load(certs, cert_reqs=mode, ca_certs=str(certs.ca) if mode != "none" else None)
    cctx = client_context(certs, cert=getattr(certs, client) if client else None)
    if outcome == "refused":
        with pytest.raises(HandshakeFailed) as info:
            handshake(server_ctx(cfg), cctx)
        assert info.value.side == "server"
        return
    srv, _cli = handshake(server_ctx(cfg), cctx)
    if outcome == "verified":
        assert srv.getpeercert(binary_form=True) == der(certs.client)
    else:
        assert srv.getpeercert() is None


def test_client_certificates_over_tls12(certs: Certs) -> None:
    cfg = load(certs, cert_reqs="required", ca_certs=str(certs.ca))
    srv, _ = handshake(server_ctx(cfg), client_context(certs, cert=certs.client,
                                                       max_version=ssl.TLSVersion.TLSv1_2))
    assert (srv.version(), srv.getpeercert(binary_form=True)) == ("TLSv1.2", der(certs.client))
    with pytest.raises(HandshakeFailed):
        handshake(server_ctx(cfg), client_context(certs, max_version=ssl.TLSVersion.TLSv1_2))


# ------------------------------------------------------------------ versions and ciphers


def test_tls11_is_refused_by_the_server(certs: Certs) -> None:
    with pytest.raises(HandshakeFailed) as info:
        handshake(server_ctx(load(certs)), client_context(certs, max_version=ssl.TLSVersion.TLSv1_1))
    assert info.value.side == "server"
    assert "UNSUPPORTED_PROTOCOL" in str(info.value.error) or "VERSION" in str(info.value.error).upper()


def test_min_version_13_refuses_12(certs: Certs) -> None:
    cfg = load(certs, tls_min_version="1.3")
    with pytest.raises(HandshakeFailed):
        handshake(server_ctx(cfg), client_context(certs, max_version=ssl.TLSVersion.TLSv1_2))
    srv, _ = handshake(server_ctx(cfg), client_context(certs))
    assert srv.version() == "TLSv1.3"


def test_tls12_and_13_both_work_by_default(certs: Certs) -> None:
    assert handshake(server_ctx(load(certs)), client_context(certs))[0].version() == "TLSv1.3"
    srv, _ = handshake(server_ctx(load(certs)), client_context(certs, max_version=ssl.TLSVersion.TLSv1_2))
    assert (srv.version(), srv.cipher()[0]) == ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")  # type: ignore[index]


def test_server_cipher_preference(certs: Certs) -> None:
    cctx = client_context(certs, max_version=ssl.TLSVersion.TLSv1_2,
                          ciphers="ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384")
    srv, _ = handshake(server_ctx(load(certs)), cctx)
    assert srv.cipher()[0] == "ECDHE-RSA-AES256-GCM-SHA384"  # type: ignore[index]
    cfg = load(certs, ciphers="ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384")
    assert handshake(server_ctx(cfg), cctx)[0].cipher()[0] == "ECDHE-RSA-CHACHA20-POLY1305"  # type: ignore[index]


def test_a_cipher_string_the_client_does_not_share_fails_the_handshake(certs: Certs) -> None:
    cfg = load(certs, ciphers="ECDHE-RSA-AES256-GCM-SHA384")
    with pytest.raises(HandshakeFailed):
        handshake(server_ctx(cfg), client_context(certs, max_version=ssl.TLSVersion.TLSv1_2,
                                                  ciphers="ECDHE-RSA-AES128-GCM-SHA256"))


def test_ecdsa_certificate(certs: Certs) -> None:
    cfg = load(certs, certfile=str(certs.ecdsa.cert), keyfile=str(certs.ecdsa.key))
    srv, cli = handshake(server_ctx(cfg), client_context(certs, max_version=ssl.TLSVersion.TLSv1_2))
    assert srv.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"  # type: ignore[index]
    assert cli.getpeercert(binary_form=True) == der(certs.ecdsa)


def test_hostname_verification_passes_for_the_certificate_names(certs: Certs) -> None:
    cctx = ssl.create_default_context(cafile=str(certs.ca))  # check_hostname on, as real clients
    for name in ("localhost", "127.0.0.1", "::1"):
        handshake(server_ctx(load(certs)), cctx, server_hostname=name)
    with pytest.raises(HandshakeFailed) as info:
        handshake(server_ctx(load(certs)), cctx, server_hostname="other.test")
    assert info.value.side == "client"


def test_encrypted_key_serves(certs: Certs) -> None:
    cfg = load(certs, certfile=str(certs.encrypted.cert), keyfile=str(certs.encrypted.key),
               keyfile_password_file=str(certs.password_file))
    assert handshake(server_ctx(cfg), client_context(certs))[1].getpeercert(True) == der(certs.encrypted)


# ------------------------------------------------------------------ resumption across forked workers


def _serve_one(ctx: ssl.SSLContext, listener: socket.socket) -> int:
    """Fork a 'worker' that serves one TLS connection and tells the client whether it resumed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            listener.settimeout(10)
            conn, _ = listener.accept()
            conn.settimeout(10)
            with ctx.wrap_socket(conn, server_side=True) as s:
                s.sendall(b"R" if s.session_reused else b"N")
                s.recv(1)  # until the client closes
            code = 0
        finally:
            os._exit(code)
    return pid


@pytest.fixture
def children() -> Iterator[list[int]]:
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _wait_exit(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    raise AssertionError(f"worker {pid} did not exit")


def _connect(cctx: ssl.SSLContext, port: int, session: ssl.SSLSession | None = None
             ) -> tuple[bytes, ssl.SSLSession | None, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            cctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
        said = s.recv(1)  # also reads the TLS 1.3 tickets sent before it
        return said, s.session, bool(s.session_reused)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
@pytest.mark.parametrize("same_config", [True, False])
def test_a_session_resumes_on_another_forked_worker(certs: Certs, children: list[int],
                                                    version: ssl.TLSVersion, same_config: bool) -> None:
    first = load(certs)
    # the second worker inherits the same context, or (the control) one loaded separately, as a
    # worker of another generation would after a HUP
    second = first if same_config else load(certs)
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    try:
        ports = [lst.getsockname()[1] for lst in listeners]
        children.append(_serve_one(server_ctx(first), listeners[0]))
        children.append(_serve_one(server_ctx(second), listeners[1]))
        cctx = client_context(certs, max_version=version)
        said, session, reused = _connect(cctx, ports[0])
        assert (said, reused) == (b"N", False)
        assert session is not None and session.has_ticket
        said, _, reused = _connect(cctx, ports[1], session)
        assert (said, reused) == ((b"R", True) if same_config else (b"N", False))
        assert [_wait_exit(pid) for pid in children] == [0, 0]
    finally:
        for lst in listeners:
            lst.close()


def test_key_file_mode_600_root_owned_is_read_by_the_master(certs: Certs, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(certs.server.key.read_bytes())
    os.chmod(key, 0o600)
    cfg = load(certs, keyfile=str(key))
    assert cfg.warnings == ()
    assert handshake(server_ctx(cfg), client_context(certs))[1].getpeercert(True) == der(certs.server)

"""TLS served by real greenfork processes to real clients (issue 12 §3): curl, openssl
s_client, Python's ssl, wrk, nginx proxying with verification on; client certificates and
REMOTE_USER; a certificate swap by HUP under load; a 0600 root key with --user nobody; and
what goes wrong (plain HTTP on the port, a stalled handshake, TLS 1.1) closed and counted."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests import tlscerts
from tests.metricsutil import scrape, total
from tests.procs import APPS, Greenfork, Launcher, wait_for
from tests.tlscerts import Certs

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return tlscerts.certs(tmp_path_factory)


def tls_args(c: Certs, *extra: str) -> list[str]:
    return ["testapp:app", "-b", "https://127.0.0.1:0", "--certfile", str(c.server.cert),
            "--keyfile", str(c.server.key), *extra]


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True,
                          timeout=30)


def s_client(port: int, *args: str, request: bytes = b"Q\n") -> str:
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args], input=request,
                       capture_output=True, timeout=30)
    return (r.stdout + r.stderr).decode(errors="replace")


def tls_env(g: Greenfork, c: Certs, *curl_args: str) -> dict[str, str]:
    r = curl("--cacert", str(c.ca), *curl_args, g.url() + "/tlsenv")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_curl_over_tls_and_the_published_https_url(launcher: Launcher, certs: Certs) -> None:
    g = launcher.start(tls_args(certs))
    assert g.url().startswith("https://127.0.0.1:")
    env = tls_env(g, certs)
    assert env["wsgi.url_scheme"] == "https" and env["HTTPS"] == "on"
    assert env["SSL_PROTOCOL"] == "TLSv1.3" and env["SSL_CIPHER"]
    assert "SSL_CLIENT_VERIFY" not in env or env["SSL_CLIENT_VERIFY"] == "NONE"
    assert f"Now listening on: {g.url()}" in g.log()


def test_tls_1_1_is_refused_and_1_2_works(launcher: Launcher, certs: Certs) -> None:
    g = launcher.start(tls_args(certs))
    old = curl("--cacert", str(certs.ca), "--tlsv1.1", "--tls-max", "1.1", g.url() + "/")
    assert old.returncode == 35, old  # SSL connect error
    assert tls_env(g, certs, "--tlsv1.2", "--tls-max", "1.2")["SSL_PROTOCOL"] == "TLSv1.2"
    out = s_client(g.port(), "-tls1_1", "-CAfile", str(certs.ca))
    assert "Cipher is (NONE)" in out or "no protocols available" in out or "alert" in out


def test_s_client_sni_and_alpn(launcher: Launcher, certs: Certs) -> None:
    g = launcher.start(tls_args(certs, "--sni", f"*.example.com={certs.sni.cert},{certs.sni.key}"))
    default = s_client(g.port(), "-CAfile", str(certs.ca), "-alpn", "http/1.1")
    assert "ALPN protocol: http/1.1" in default
    sni = s_client(g.port(), "-CAfile", str(certs.ca), "-servername", "shop.example.com")
    subjects = re.findall(r"subject=(.*)", sni)
    assert subjects and "example.com" in subjects[0], sni
    r = curl("--cacert", str(certs.ca), "--resolve", f"shop.example.com:{g.port()}:127.0.0.1",
             f"https://shop.example.com:{g.port()}/tlsenv")
    assert r.returncode == 0 and json.loads(r.stdout)["SSL_SERVER_NAME"] == "shop.example.com", r


def test_python_ssl_client_with_keep_alive(launcher: Launcher, certs: Certs) -> None:
    g = launcher.start(tls_args(certs))
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    conn = http.client.HTTPSConnection("127.0.0.1", g.port(), context=ctx, timeout=10)
    for i in range(20):  # one connection: the decrypted stream keeps its framing request after request
        conn.request("POST", "/echo", body=b"x" * (i * 997))
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"x" * (i * 997)
    conn.close()


def test_big_and_file_bodies_over_tls(launcher: Launcher, certs: Certs) -> None:
    g = launcher.start(tls_args(certs))
    size = (APPS / "data.bin").stat().st_size
    for path, n in (("/big", 4 << 20), ("/file", size)):  # bytes, and wsgi.file_wrapper (no sendfile)
        r = subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", str(certs.ca), "-o", "-",
                            g.url() + path], capture_output=True, timeout=30)
        assert r.returncode == 0 and len(r.stdout) == n, (path, r.stderr)


def test_client_certificates_and_remote_user(launcher: Launcher, certs: Certs) -> None:
    g = launcher.start(tls_args(certs, "--cert-reqs", "required", "--ca-certs", str(certs.ca),
                                "--client-cert-user", "cn"))
    refused = curl("--cacert", str(certs.ca), g.url() + "/")
    assert refused.returncode != 0  # no certificate: no handshake
    foreign = curl("--cacert", str(certs.ca), "--cert", str(certs.foreign_client.cert), "--key",
                   str(certs.foreign_client.key), g.url() + "/")
    assert foreign.returncode != 0
    env = tls_env(g, certs, "--cert", str(certs.client.cert), "--key", str(certs.client.key))
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert env["REMOTE_USER"] == env["SSL_CLIENT_S_DN_CN"] and env["REMOTE_USER"]
    assert env["SSL_CLIENT_CERT"].startswith("-----BEGIN CERTIFICATE-----")
    assert "CN=" in env["SSL_CLIENT_S_DN"] and "CN=" in env["SSL_CLIENT_I_DN"]


def test_optional_client_certificate(launcher: Launcher, certs: Certs) -> None:
    g = launcher.start(tls_args(certs, "--cert-reqs", "optional", "--ca-certs", str(certs.ca)))
    assert tls_env(g, certs)["SSL_CLIENT_VERIFY"] == "NONE"
    env = tls_env(g, certs, "--cert", str(certs.client.cert), "--key", str(certs.client.key))
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS"


def test_plain_http_on_a_tls_port_and_a_stalled_handshake(launcher: Launcher, certs: Certs) -> None:
    g = launcher.start(tls_args(certs, "--tls-handshake-timeout", "1", "--metrics-bind", "http://127.0.0.1:0",
                                "--log-level", "debug"))
    r = curl(f"http://127.0.0.1:{g.port()}/")
    assert "plain HTTP sent to an HTTPS port" in r.stdout
    stall = socket.create_connection(("127.0.0.1", g.port()), timeout=10)
    stall.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
    started = time.monotonic()
    assert tls_env(g, certs)["HTTPS"] == "on"  # others are served meanwhile
    assert stall.recv(100) == b""  # closed by the handshake timeout
    assert time.monotonic() - started < 8
    stall.close()
    url = re.search(r"Metrics listening on: (\S+)", g.log()).group(1)  # type: ignore[union-attr]
    handshakes = "greenfork_tls_handshake_duration_seconds_count"
    samples = wait_for(lambda: (s := scrape(url)) and total(s, handshakes, error_type="tls_handshake_timeout")
                       and s, 10, "the timed-out handshake in the metrics")
    assert total(samples, handshakes, error_type="tls_not_supported") == 1
    assert total(samples, handshakes) >= 3
    expiry = total(samples, "greenfork_tls_certificate_expiry_timestamp_seconds")
    assert expiry > time.time()


def test_wrk_over_tls(launcher: Launcher, certs: Certs) -> None:
    g = launcher.start(tls_args(certs), workers=2)
    r = subprocess.run(["wrk", "-t1", "-c16", "-d2s", g.url() + "/"], capture_output=True, text=True,
                       timeout=30)
    assert "Socket errors" not in r.stdout and "Non-2xx" not in r.stdout, r.stdout
    assert int(re.search(r"(\d+) requests in", r.stdout).group(1)) > 100  # type: ignore[union-attr]


def test_a_certificate_swap_by_hup_under_load(launcher: Launcher, certs: Certs, tmp_path: Path) -> None:
    """The files change, HUP: new handshakes get the new certificate, nothing fails meanwhile."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(certs.server.cert, cert)
    shutil.copy(certs.server.key, key)
    g = launcher.start(["testapp:app", "-b", "https://127.0.0.1:0", "--certfile", str(cert), "--keyfile",
                        str(key)], workers=2)
    serial_before = _serial(g.port(), certs)
    wrk = subprocess.Popen(["wrk", "-t1", "-c16", "-d6s", g.url() + "/"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        shutil.copy(certs.ecdsa.cert, cert)
        shutil.copy(certs.ecdsa.key, key)
        gen = g.info["generation"]
        g.signal(signal.SIGHUP)
        wait_for(lambda: g.reload_info()["generation"] > gen, 20, "the reload")
        out, _ = wrk.communicate(timeout=30)
    finally:
        if wrk.poll() is None:
            wrk.kill()
    assert "Socket errors" not in out and "Non-2xx" not in out, out
    assert _serial(g.port(), certs) != serial_before


def test_a_bad_certificate_on_hup_keeps_the_old_one(launcher: Launcher, certs: Certs, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(certs.server.cert, cert)
    shutil.copy(certs.server.key, key)
    g = launcher.start(["testapp:app", "-b", "https://127.0.0.1:0", "--certfile", str(cert), "--keyfile",
                        str(key)])
    serial = _serial(g.port(), certs)
    shutil.copy(certs.ecdsa.key, key)  # no longer matches the certificate
    g.signal(signal.SIGHUP)
    wait_for(lambda: "Reload failed" in g.log(), 20, "the failed reload")
    assert str(key) in g.log().split("Reload failed", 1)[1].splitlines()[0]
    assert _serial(g.port(), certs) == serial and tls_env(g, certs)["HTTPS"] == "on"


def _serial(port: int, c: Certs) -> int:
    ctx = ssl.create_default_context(cafile=str(c.ca))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        der = s.getpeercert(binary_form=True)
    from cryptography import x509

    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.skipif(os.getuid() != 0, reason="a root-owned key and --user need root")
def test_a_0600_root_key_with_workers_as_nobody(launcher: Launcher, certs: Certs, sock_dir: Path,
                                                world_python: str) -> None:
    key = sock_dir / "key.pem"
    shutil.copy(certs.server.key, key)
    os.chown(key, 0, 0)
    key.chmod(0o600)
    os.chmod(sock_dir, 0o755)
    site = sock_dir / "site"
    site.mkdir(mode=0o755)
    shutil.copy(APPS / "testapp.py", site / "testapp.py")
    g = launcher.start(["testapp:app", "-b", "https://127.0.0.1:0", "--certfile", str(certs.server.cert),
                        "--keyfile", str(key), "--user", "nobody"], python=world_python, cwd=site)
    nobody = pwd.getpwnam("nobody")
    assert all(os.stat(f"/proc/{w}").st_uid == nobody.pw_uid for w in g.workers())
    assert tls_env(g, certs)["HTTPS"] == "on"


def test_nginx_proxies_over_tls_with_verification(launcher: Launcher, certs: Certs, tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    g = launcher.start(tls_args(certs))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fcgi; uwsgi_temp_path {tmp_path}/uwsgi; scgi_temp_path {tmp_path}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass https://127.0.0.1:{g.port()};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {certs.ca};
            proxy_ssl_name localhost;  # nginx checks DNS names, not IP addresses
            proxy_ssl_server_name on;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""")
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "stderr.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def through() -> dict[str, str] | None:
            r = curl(f"http://127.0.0.1:{port}/tlsenv")
            return json.loads(r.stdout) if r.returncode == 0 and r.stdout.startswith("{") else None

        env = wait_for(through, 15, "nginx to answer through TLS")
        assert env["HTTPS"] == "on" and env["SSL_SERVER_NAME"] == "localhost"
        results: list[int] = []

        def many() -> None:
            for _ in range(50):
                results.append(curl(f"http://127.0.0.1:{port}/").returncode)

        threads = [threading.Thread(target=many) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [0] * 200
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

"""examples/nginx/greenfork.conf with a real nginx in front of greenfork on a unix socket."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests import tlscerts
from tests.procs import Launcher, http_get, wait_for

pytestmark = pytest.mark.timeout(90)
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nginx" / "greenfork.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def nginx_front(launcher: Launcher, sock_dir: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                tmp_path_factory: pytest.TempPathFactory):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is required (scripts/test installs Debian's nginx-light)")
    sock = sock_dir / "gf.sock"
    sock_dir.chmod(0o755)  # nginx's workers run as www-data and must reach the socket
    g = launcher.start(["testapp:app", "-b", f"unix:{sock}", "--unix-socket-mode", "666"], workers=2)
    port = free_port()
    # The example's upstream and server blocks, verbatim but for the socket and port.
    site = EXAMPLE.read_text().replace("unix:/run/greenfork.sock", f"unix:{sock}")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    certs = tlscerts.certs(tmp_path_factory)  # the example's TLS server too (tested in test_behind_proxies)
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{free_port()} ssl;")
    site = site.replace("/etc/ssl/certs/www.example.com.pem", str(certs.server.cert))
    site = site.replace("/etc/ssl/private/www.example.com.key", str(certs.server.key))
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fcgi; uwsgi_temp_path {tmp_path}/uwsgi; scgi_temp_path {tmp_path}/scgi;
{site}
}}
""")
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "stderr.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: _answers(port), 10, "nginx to listen")
        yield g, port
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _answers(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}", "/pid", timeout=2)[0] == 200
    except OSError:
        return False


def test_requests_through_nginx(nginx_front) -> None:  # type: ignore[no-untyped-def]
    _g, port = nginx_front
    status, _headers, body = http_get(f"http://127.0.0.1:{port}", "/env", headers={"Host": "example.test"})
    assert status == 200 and b'"HTTP_HOST": "example.test"' in body
    assert http_get(f"http://127.0.0.1:{port}", "/stream")[2] == b"".join(b"chunk%d\n" % i for i in range(5))


def test_hup_under_load_through_nginx_gives_no_502(nginx_front, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    g, port = nginx_front
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.fail("wrk is required (scripts/test installs it)")
    result: dict[str, str] = {}

    def load() -> None:
        out = subprocess.run([wrk, "-t1", "-c16", "-d6s", "--timeout", "3s", f"http://127.0.0.1:{port}/pid"],
                             capture_output=True, text=True, timeout=60)
        result["out"] = out.stdout

    t = threading.Thread(target=load)
    t.start()
    for generation in (2, 3, 4):
        g.signal(signal.SIGHUP)
        wait_for(lambda gen=generation: g.reload_info()["generation"] == gen, 10, "the reload")
        wait_for(lambda: len(g.workers()) == 2, 10, "the old generation to retire")
    t.join(60)
    out = result["out"]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    assert requests > 100, out
    assert "Non-2xx" not in out and "Socket errors" not in out, out

"""greenfork behind real proxies, with the configurations docs/deployment.md shows (the files in
examples/ and the greenfork commands beside them, changed only in ports, paths, certificates
and workers): HAProxy with send-proxy-v2 and its TLVs, send-proxy to a unix socket, TLS passed
through to an https:// listener, HTTP/2 to greenfork (proto h2), health checks on /readyz with
check-send-proxy; nginx with X-Forwarded-*, with RFC 7239 Forwarded and with the stream module's
proxy_protocol; Apache httpd with mod_proxy_http; --require-header with each proxy's line.
Through each: the application sees the real client address and scheme, over HTTP/1.1, in a
WebSocket and over HTTP/2 where the proxy passes it on, and wrk sees no error while the server
reloads three times."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests import tlscerts
from tests.conftest import curl
from tests.procs import Greenfork, Launcher, wait_for
from tests.proxytools import connect, env_of, read_all, request, v2
from tests.wsclients import TlsClient

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CLIENT = "127.0.0.2"  # the address our own test client connects from, to tell it from the proxy's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def example(name: str, replacements: dict[str, str]) -> str:
    """An example file with each replacement made; every one must apply (so a changed example
    cannot silently stop being what the test runs)."""
    text = (EXAMPLES / name).read_text()
    for old, new in replacements.items():
        assert old in text, f"{name} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


class Proxy:
    """A proxy process in its own session, stopped by its pid (and its process group, which
    it created: apache's children) at the end."""

    def __init__(self, name: str, cmd: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n"
                                 f"{self.log.read_text(errors='replace')}")
        return True

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def tool(name: str, package: str) -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not Path(path).exists():
        pytest.fail(f"{name} is required (scripts/test installs Debian's {package})")
    return path


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def start(proxies: list[Proxy], name: str, cmd: list[str], log: Path, port: int) -> Proxy:
    p = Proxy(name, cmd, log)
    proxies.append(p)
    wait_for(lambda: p.alive() and listening(port), 15, f"{name} to listen")
    return p


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tlscerts.Certs:
    return tlscerts.certs(tmp_path_factory)


def client_env(port: int, certs: tlscerts.Certs, sni: str | None = None,
               path: str = "/env") -> dict[str, Any]:
    """One HTTPS request through the proxy, from CLIENT."""
    ctx = tlscerts.client_context(certs, alpn=["http/1.1"])
    with connect(f"https://127.0.0.1:{port}", source=CLIENT) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as s:
        return env_of(s, request(path, host=sni or "127.0.0.1"))


def client_ws_env(port: int, certs: tlscerts.Certs, sni: str | None = None) -> dict[str, Any]:
    """A WebSocket (wss://, the `websockets` client) through the proxy, from CLIENT: the environ
    the application saw on the upgrade (proxyapp's /ws-env)."""
    raw = connect(f"https://127.0.0.1:{port}", source=CLIENT)
    with TlsClient(f"wss://{sni or '127.0.0.1'}/ws-env", tlscerts.client_context(certs), raw,
                   server_hostname=sni or "127.0.0.1", proxy=None) as ws:
        env: dict[str, Any] = json.loads(ws.recv(timeout=10))
    assert ws.close_code == 1000
    assert env["HTTP_UPGRADE"].lower() == "websocket"
    return env


def curl_h2_env(port: int, certs: tlscerts.Certs) -> dict[str, Any]:
    """curl --http2 through the proxy, from CLIENT: the environ (it must have been HTTP/2)."""
    r = subprocess.run([curl(), "-sS", "--http2", "--interface", CLIENT, "--cacert", str(certs.ca),
                        "-w", "\n%{http_version}", f"https://127.0.0.1:{port}/env"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    body, version = r.stdout.rsplit("\n", 1)
    assert version == "2", r.stdout
    env: dict[str, Any] = json.loads(body)
    return env


def load_with_hups(g: Greenfork, url: str, workers: int = 2) -> str:
    """wrk through the proxy for 6 s while greenfork reloads three times: no socket error and
    no non-2xx answer (the /check path answers 500 when the app sees the wrong client)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.fail("wrk is required (scripts/test installs it)")
    result: dict[str, str] = {}

    def load() -> None:
        out = subprocess.run([wrk, "-t1", "-c16", "-d6s", "--timeout", "3s", url], capture_output=True,
                             text=True, timeout=60)
        result["out"] = out.stdout + out.stderr

    t = threading.Thread(target=load)
    t.start()
    time.sleep(0.5)
    generation = g.reload_info()["generation"]
    for _ in range(3):
        generation += 1
        g.signal(signal.SIGHUP)
        wait_for(lambda gen=generation: g.reload_info()["generation"] == gen, 15, "the reload")
        wait_for(lambda: len(g.workers()) == workers, 15, "the old generation to retire")
    t.join(60)
    out = result["out"]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    assert requests > 100, out
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    return out


# ------------------------------------------------------------------ the docs show these files
DOCUMENTED = ["haproxy/greenfork.cfg", "haproxy/greenfork-passthrough.cfg", "nginx/greenfork.conf",
              "nginx/greenfork-stream.conf", "apache/greenfork.conf"]


@pytest.mark.parametrize("name", DOCUMENTED)
def test_deployment_md_shows_the_tested_files(name: str) -> None:
    docs = (ROOT / "docs" / "deployment.md").read_text()
    text = (EXAMPLES / name).read_text()
    assert f"File: [`examples/{name}`](../examples/{name})" in docs
    blocks = re.findall(r"```[a-z]*\n(.*?)```", docs, re.DOTALL)
    assert text in blocks, f"docs/deployment.md does not show examples/{name} as it is; copy it again"


def documented_command(name: str, replacements: dict[str, str]) -> list[str]:
    """The greenfork command line deployment.md shows beside examples/{name} (the indented
    block between the file's link and its code block), as arguments: `myapp:app` is the test
    app, `-w 4` two workers, and each replacement (addresses, certificates) must apply."""
    docs = (ROOT / "docs" / "deployment.md").read_text()
    at = docs.index(f"File: [`examples/{name}`]")
    section = docs[at:docs.index("```", at)]
    found = re.search(r"^    greenfork (.*?)(?<!\\)$", section, re.MULTILINE | re.DOTALL)
    assert found, f"deployment.md shows no greenfork command beside examples/{name}"
    text = found.group(1).replace("\\\n", " ")
    for old, new in {"myapp:app": "proxyapp:app", "-w 4": "-w 2", **replacements}.items():
        assert old in text, f"deployment.md's command for {name} no longer contains {old!r}: {text}"
        text = text.replace(old, new)
    return shlex.split(text)


# --require-header, with the line that makes each proxy send it, as docs/proxies.md shows them
SECRET_ENV = {"GREENFORK_REQUIRE_HEADER": "X-Proxy-Secret=9d1c...e4"}
SECRET_LINES = {"nginx": "proxy_set_header X-Proxy-Secret 9d1c...e4;",
                "haproxy": "http-request set-header X-Proxy-Secret 9d1c...e4",
                "apache": 'RequestHeader set X-Proxy-Secret "9d1c...e4"'}


def test_proxies_md_shows_the_proxy_lines_the_tests_use() -> None:
    docs = (ROOT / "docs" / "proxies.md").read_text()
    assert f"    {NGINX_FORWARDED}\n" in docs
    assert "GREENFORK_REQUIRE_HEADER='X-Proxy-Secret=9d1c...e4' greenfork myapp:app" in docs
    for line in SECRET_LINES.values():
        assert f"`{line}`" in docs, line


def only_through_the_proxy(g: Greenfork, header: bytes = b"") -> None:
    """Straight to greenfork (after a PROXY header if it wants one), without the proxy's
    secret: 403, before the application."""
    with connect(g.url()) as s:
        s.sendall(header + request(close=True))
        assert read_all(s).startswith(b"HTTP/1.1 403 Forbidden\r\n")


# ------------------------------------------------------------------ HAProxy
class HAProxy:
    def __init__(self, proxies: list[Proxy], tmp: Path, config: str, port: int) -> None:
        self.stats = tmp / "stats.sock"
        path = tmp / "haproxy.cfg"
        # the runtime API, to read the server's health: not part of the example
        path.write_text(config + f"\nglobal\n    stats socket {self.stats} mode 600\n")
        haproxy = tool("haproxy", "haproxy")
        check = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        self.proxy = start(proxies, "haproxy", [haproxy, "-db", "-f", str(path)], tmp / "haproxy.log", port)

    def server_state(self) -> str:
        """The backend server's operational state: UP, DOWN (the runtime API's show stat); ""
        while HAProxy has not opened its runtime socket yet (its frontend may listen first)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            try:
                s.connect(str(self.stats))
            except (FileNotFoundError, ConnectionRefusedError):
                return ""
            s.sendall(b"show stat\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        header, *rows = out.decode().splitlines()
        names = header.lstrip("# ").split(",")
        for row in rows:
            fields = dict(zip(names, row.split(","), strict=False))
            if fields.get("svname") == "app1":
                return fields["status"]
        raise AssertionError(out.decode())


def site_files(certs: tlscerts.Certs) -> dict[str, str]:
    """The certificate and key of the documented greenfork commands, for the test's own."""
    return {"/etc/ssl/site.pem": str(certs.server.cert), "/etc/ssl/site.key": str(certs.server.key)}


def site_pem(certs: tlscerts.Certs, tmp: Path) -> Path:
    pem = tmp / "site.pem"  # HAProxy wants the certificate and its key in one file
    pem.write_bytes(certs.server.cert.read_bytes() + certs.server.key.read_bytes())
    return pem


def test_haproxy_send_proxy_v2_with_tlvs_and_health_checks(launcher: Launcher, proxies: list[Proxy],
                                                          certs: tlscerts.Certs, tmp_path: Path) -> None:
    g = launcher.start([*documented_command("haproxy/greenfork.cfg", {"8000": "0", "9110": "0"}),
                        "--shutdown-delay", "20"], env=SECRET_ENV)
    only_through_the_proxy(g, v2(("203.0.113.1", 1), ("192.0.2.1", 2)))
    metrics_port = int(g.info["metrics"].rsplit(":", 1)[1])
    port = free_port()
    config = example("haproxy/greenfork.cfg", {
        "bind :443 ssl crt /etc/haproxy/site.pem":
            f"bind 127.0.0.1:{port} ssl crt {site_pem(certs, tmp_path)}",
        "127.0.0.1:8000": f"127.0.0.1:{g.port()}", "port 9110": f"port {metrics_port}",
        "backend greenfork\n": f"backend greenfork\n    {SECRET_LINES['haproxy']}\n"})
    hap = HAProxy(proxies, tmp_path, config, port)
    wait_for(lambda: hap.server_state() == "UP", 15, "HAProxy's health check (check-send-proxy) to pass")
    env = client_env(port, certs, sni="www.example.test")
    assert env["REMOTE_ADDR"] == CLIENT and env["greenfork.peer_addr"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "https" and env["HTTPS"] == "on" and env["SSL_PROTOCOL"] == "TLSv1.3"
    assert env["SSL_CLIENT_VERIFY"] == "NONE" and env["SSL_TLS_SNI"] == "www.example.test"
    pp = env["greenfork.proxy_protocol"]
    assert pp["version"] == 2 and pp["authority"] == "www.example.test" and pp["alpn"] == "http/1.1"
    assert pp["unique_id"] and pp["unique_id"].startswith("7F000002:")  # unique-id-format: %ci:%cp...
    ws = client_ws_env(port, certs, sni="www.example.test")  # HAProxy passes WebSocket upgrades on
    assert ws["REMOTE_ADDR"] == CLIENT and ws["wsgi.url_scheme"] == "https"
    assert ws["greenfork.proxy_protocol"]["version"] == 2
    load_with_hups(g, f"https://127.0.0.1:{port}/check?addr=127.0.0.1&scheme=https&via=proxy_protocol")
    # readiness: on TERM, /readyz answers 503 for --shutdown-delay, and HAProxy takes the
    # server out (two failed checks two seconds apart) while it still serves
    g.signal(signal.SIGTERM)
    wait_for(lambda: hap.server_state() == "DOWN", 15, "HAProxy to see /readyz fail")
    assert "Layer7 wrong status" in hap.proxy.log.read_text()


def test_haproxy_speaks_http2_to_greenfork(launcher: Launcher, proxies: list[Proxy], certs: tlscerts.Certs,
                                          tmp_path: Path) -> None:
    """The example with `proto h2` on its server line (its checks stay HTTP/1.1: check-proto h1):
    each connection to greenfork is a PROXY v2 header, then HTTP/2 with prior knowledge;
    through HUPs (each a GOAWAY to HAProxy) no request fails."""
    g = launcher.start(["proxyapp:app", "-b", "http://127.0.0.1:0?proxy-protocol=v2",
                        "--metrics-bind", "http://127.0.0.1:0?proxy-protocol=v2"], workers=2)
    metrics_port = int(g.info["metrics"].rsplit(":", 1)[1])
    port = free_port()
    config = example("haproxy/greenfork.cfg", {
        "bind :443 ssl crt /etc/haproxy/site.pem":
            f"bind 127.0.0.1:{port} ssl crt {site_pem(certs, tmp_path)}",
        "127.0.0.1:8000 send-proxy-v2": f"127.0.0.1:{g.port()} proto h2 send-proxy-v2",
        "port 9110 check-send-proxy": f"port {metrics_port} check-send-proxy check-proto h1"})
    hap = HAProxy(proxies, tmp_path, config, port)
    wait_for(lambda: hap.server_state() == "UP", 15, "HAProxy's health check to pass")
    env = client_env(port, certs, sni="www.example.test")
    assert env["SERVER_PROTOCOL"] == "HTTP/2" and env["REMOTE_ADDR"] == CLIENT
    assert env["wsgi.url_scheme"] == "https"
    assert env["greenfork.proxy_protocol"]["authority"] == "www.example.test"
    load_with_hups(g, f"https://127.0.0.1:{port}/check?addr=127.0.0.1&scheme=https&via=proxy_protocol")


def test_haproxy_send_proxy_v1_to_a_unix_socket(launcher: Launcher, proxies: list[Proxy],
                                                 certs: tlscerts.Certs, tmp_path: Path,
                                                 sock_dir: Path) -> None:
    sock = sock_dir / "gf.sock"
    g = launcher.start(["proxyapp:app", "-b", f"unix:{sock}?proxy-protocol=v1",
                        "--metrics-bind", "http://127.0.0.1:0?proxy-protocol=v1"], workers=2)
    metrics_port = int(g.info["metrics"].rsplit(":", 1)[1])
    port = free_port()
    config = example("haproxy/greenfork.cfg", {
        "bind :443 ssl crt /etc/haproxy/site.pem":
            f"bind 127.0.0.1:{port} ssl crt {site_pem(certs, tmp_path)}",
        "127.0.0.1:8000 send-proxy-v2 proxy-v2-options ssl,cert-cn,ssl-cipher,authority,unique-id,crc32c":
            f"{sock} send-proxy", "port 9110": f"port {metrics_port}"})
    hap = HAProxy(proxies, tmp_path, config, port)
    wait_for(lambda: hap.server_state() == "UP", 15, "HAProxy's health check (a v1 header) to pass")
    env = client_env(port, certs)
    assert env["REMOTE_ADDR"] == CLIENT and env["greenfork.peer_addr"] == ""  # a unix socket's peer
    # v1 carries addresses only: the scheme is the connection's (use v2's ssl option for https)
    assert env["wsgi.url_scheme"] == "http" and env["greenfork.proxy_protocol"]["version"] == 1
    load_with_hups(g, f"https://127.0.0.1:{port}/check?addr=127.0.0.1&via=proxy_protocol")


def test_haproxy_passes_tls_through_to_an_https_listener(launcher: Launcher, proxies: list[Proxy],
                                                        certs: tlscerts.Certs, tmp_path: Path) -> None:
    g = launcher.start(documented_command("haproxy/greenfork-passthrough.cfg", {
        "8443": "0", **site_files(certs)}))
    port = free_port()
    config = example("haproxy/greenfork-passthrough.cfg", {
        "bind :443": f"bind 127.0.0.1:{port}", "127.0.0.1:8443": f"127.0.0.1:{g.port()}"})
    HAProxy(proxies, tmp_path, config, port)
    env = client_env(port, certs)
    assert env["REMOTE_ADDR"] == CLIENT and env["wsgi.url_scheme"] == "https"
    assert env["SSL_PROTOCOL"] == "TLSv1.3"  # greenfork's own handshake, behind the header
    h2 = curl_h2_env(port, certs)  # ALPN h2 with greenfork itself, after the PROXY header
    assert h2["SERVER_PROTOCOL"] == "HTTP/2" and h2["REMOTE_ADDR"] == CLIENT
    assert h2["wsgi.url_scheme"] == "https" and h2["greenfork.proxy_protocol"]["version"] == 2
    ws = client_ws_env(port, certs)
    assert ws["REMOTE_ADDR"] == CLIENT and ws["wsgi.url_scheme"] == "https"
    load_with_hups(g, f"https://127.0.0.1:{port}/check?addr=127.0.0.1&scheme=https&via=proxy_protocol")


# ------------------------------------------------------------------ nginx
def nginx_conf(tmp: Path, main: str = "", http: str = "") -> Path:
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
daemon off;
user www-data;  # as Debian's own nginx.conf: the user the documented socket's group serves
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
{main}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
{http}
}}
""")
    return conf


def start_nginx(proxies: list[Proxy], tmp: Path, conf: Path, port: int) -> Proxy:
    nginx = tool("nginx", "nginx-light")
    check = subprocess.run([nginx, "-t", "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "stderr.log")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    return start(proxies, "nginx", [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "stderr.log")],
                 tmp / "nginx.log", port)


def test_nginx_x_forwarded_headers(launcher: Launcher, proxies: list[Proxy], certs: tlscerts.Certs,
                                   tmp_path: Path, sock_dir: Path) -> None:
    sock = sock_dir / "gf.sock"
    sock_dir.chmod(0o755)  # nginx's workers run as www-data and must reach the socket
    # as documented: the socket's group is nginx's (www-data), mode 660
    g = launcher.start(documented_command("nginx/greenfork.conf", {"/run/greenfork.sock": str(sock)}),
                       env=SECRET_ENV)
    assert (sock.stat().st_mode & 0o777, sock.group()) == (0o660, "www-data")
    only_through_the_proxy(g)
    port, plain = free_port(), free_port()
    site = example("nginx/greenfork.conf", {
        "unix:/run/greenfork.sock": f"unix:{sock}", "listen 80;": f"listen 127.0.0.1:{plain};",
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "/etc/ssl/certs/www.example.com.pem": str(certs.server.cert),
        "/etc/ssl/private/www.example.com.key": str(certs.server.key),
        "proxy_pass http://greenfork;": f"proxy_pass http://greenfork;\n        {SECRET_LINES['nginx']}"})
    start_nginx(proxies, tmp_path, nginx_conf(tmp_path, http=site), port)
    env = client_env(port, certs)
    assert env["REMOTE_ADDR"] == CLIENT and env["REMOTE_PORT"] == ""  # X-Forwarded-For has no port
    assert env["wsgi.url_scheme"] == "https" and env["HTTPS"] == "on"
    assert env["greenfork.peer_addr"] == "" and env["greenfork.original_scheme"] == "http"
    assert env["HTTP_X_FORWARDED_FOR"] == CLIENT and env["HTTP_X_FORWARDED_PROTO"] == "https"
    assert "HTTP_X_PROXY_SECRET" not in env  # checked, and kept from the application
    ws = client_ws_env(port, certs)  # the example's Upgrade and Connection headers
    assert ws["REMOTE_ADDR"] == CLIENT and ws["wsgi.url_scheme"] == "https"
    assert ws["HTTP_X_FORWARDED_FOR"] == CLIENT and ws["HTTP_CONNECTION"].lower() == "upgrade"
    load_with_hups(g, f"https://127.0.0.1:{port}/check?addr=127.0.0.1&scheme=https&via=forwarded")


def test_nginx_keeps_a_quiet_websocket_open(launcher: Launcher, proxies: list[Proxy], certs: tlscerts.Certs,
                                            tmp_path: Path, sock_dir: Path) -> None:
    """nginx closes an upgraded connection after proxy_read_timeout without data from greenfork;
    greenfork's pings keep a quiet WebSocket open (as deployment.md says), scaled down here: a
    3 s timeout, a ping after 1 s of silence, 5 s idle."""
    sock = sock_dir / "gf.sock"
    sock_dir.chmod(0o755)
    launcher.start([*documented_command("nginx/greenfork.conf", {"/run/greenfork.sock": str(sock)}),
                    "--websocket-ping-interval", "1"])
    port = free_port()
    site = example("nginx/greenfork.conf", {
        "unix:/run/greenfork.sock": f"unix:{sock}", "listen 80;": "",
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "/etc/ssl/certs/www.example.com.pem": str(certs.server.cert),
        "/etc/ssl/private/www.example.com.key": str(certs.server.key),
        "proxy_read_timeout 60s;": "proxy_read_timeout 3s;"})
    start_nginx(proxies, tmp_path, nginx_conf(tmp_path, http=site), port)
    raw = connect(f"https://127.0.0.1:{port}", source=CLIENT)
    with TlsClient("wss://127.0.0.1/ws-env", tlscerts.client_context(certs), raw,
                   server_hostname="127.0.0.1", proxy=None) as ws:
        assert json.loads(ws.recv(timeout=10))["REMOTE_ADDR"] == CLIENT
        time.sleep(5)  # the silence is the test: longer than nginx's proxy_read_timeout
        ws.ping(5)  # (TimeoutError without a pong: the WebSocket was closed while quiet)
    assert ws.close_code == 1000


# the line docs/proxies.md shows (test_proxies_md_shows_the_proxy_lines_the_tests_use checks it)
NGINX_FORWARDED = """proxy_set_header Forwarded 'for="$remote_addr:$remote_port";proto=$scheme;host=$host';"""


def test_nginx_sends_rfc_7239_forwarded(launcher: Launcher, proxies: list[Proxy], certs: tlscerts.Certs,
                                        tmp_path: Path) -> None:
    """RFC 7239 instead of X-Forwarded-*, as nginx's own guide sets it up: greenfork applies it
    when --forwarded-headers names it; the client's port (quoted, after the address) comes along."""
    g = launcher.start(["proxyapp:app", "-b", "http://127.0.0.1:0", "--forwarded-headers", "forwarded"])
    port = free_port()
    site = f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {certs.server.cert};
        ssl_certificate_key {certs.server.key};
        location / {{
            proxy_pass http://127.0.0.1:{g.port()};
            proxy_set_header Host $host;
            {NGINX_FORWARDED}
        }}
    }}
"""
    start_nginx(proxies, tmp_path, nginx_conf(tmp_path, http=site), port)
    raw = connect(f"https://127.0.0.1:{port}", source=CLIENT)
    with tlscerts.client_context(certs).wrap_socket(raw, server_hostname=None) as s:
        env = env_of(s, request(host="shop.example"))
        client_port = str(s.getsockname()[1])
    assert env["HTTP_FORWARDED"] == f'for="{CLIENT}:{client_port}";proto=https;host=shop.example'
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (CLIENT, client_port)
    assert env["wsgi.url_scheme"] == "https" and env["greenfork.peer_addr"] == "127.0.0.1"


def test_nginx_stream_proxy_protocol_in_front_of_tls(launcher: Launcher, proxies: list[Proxy],
                                                     certs: tlscerts.Certs, tmp_path: Path) -> None:
    if not Path("/usr/lib/nginx/modules/ngx_stream_module.so").exists():
        pytest.fail("nginx's stream module is required (scripts/test installs Debian's libnginx-mod-stream)")
    g = launcher.start(documented_command("nginx/greenfork-stream.conf", {
        "8443": "0", **site_files(certs)}))
    port = free_port()
    stream = example("nginx/greenfork-stream.conf", {"listen 443;": f"listen 127.0.0.1:{port};",
                                                     "127.0.0.1:8443": f"127.0.0.1:{g.port()}"})
    start_nginx(proxies, tmp_path, nginx_conf(tmp_path, main=stream), port)
    env = client_env(port, certs)
    assert env["REMOTE_ADDR"] == CLIENT and env["greenfork.peer_addr"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "https" and env["greenfork.proxy_protocol"]["version"] == 1
    h2 = curl_h2_env(port, certs)
    assert h2["SERVER_PROTOCOL"] == "HTTP/2" and h2["REMOTE_ADDR"] == CLIENT
    ws = client_ws_env(port, certs)
    assert ws["REMOTE_ADDR"] == CLIENT and ws["wsgi.url_scheme"] == "https"
    load_with_hups(g, f"https://127.0.0.1:{port}/check?addr=127.0.0.1&scheme=https&via=proxy_protocol")


# ------------------------------------------------------------------ Apache httpd
APACHE_MODULES = ("mpm_event", "authz_core", "proxy", "proxy_http", "headers", "ssl",
                  "socache_shmcb")


def test_apache_mod_proxy_http(launcher: Launcher, proxies: list[Proxy], certs: tlscerts.Certs,
                               tmp_path: Path) -> None:
    apache = tool("apache2", "apache2")
    g = launcher.start(documented_command("apache/greenfork.conf", {"8000": "0"}), env=SECRET_ENV)
    only_through_the_proxy(g)
    port = free_port()
    site = example("apache/greenfork.conf", {
        "<VirtualHost *:443>": f"<VirtualHost 127.0.0.1:{port}>",
        "/etc/ssl/certs/www.example.com.pem": str(certs.server.cert),
        "/etc/ssl/private/www.example.com.key": str(certs.server.key),
        "127.0.0.1:8000": f"127.0.0.1:{g.port()}",
        "ProxyPreserveHost On": f"ProxyPreserveHost On\n    {SECRET_LINES['apache']}"})
    modules = "\n".join(f"LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so" for m in APACHE_MODULES)
    conf = tmp_path / "httpd.conf"
    conf.write_text(f"""
ServerRoot {tmp_path}
{modules}
Listen 127.0.0.1:{port}
PidFile {tmp_path}/httpd.pid
DefaultRuntimeDir {tmp_path}
Mutex file:{tmp_path} default
ErrorLog {tmp_path}/error.log
LogLevel warn
User www-data
Group www-data
ServerName localhost
SSLSessionCache shmcb:{tmp_path}/ssl_cache(512000)
{site}
""")
    check = subprocess.run([apache, "-t", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    start(proxies, "apache", [apache, "-f", str(conf), "-DFOREGROUND"], tmp_path / "apache.log", port)
    env = client_env(port, certs, sni="www.example.test")
    assert env["REMOTE_ADDR"] == CLIENT and env["greenfork.peer_addr"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "https" and env["HTTP_HOST"] == "www.example.test"
    assert env["HTTP_X_FORWARDED_HOST"] == "www.example.test" and env["HTTP_X_FORWARDED_SERVER"]
    ws = client_ws_env(port, certs, sni="www.example.test")  # ProxyPass ... upgrade=websocket
    assert ws["REMOTE_ADDR"] == CLIENT and ws["wsgi.url_scheme"] == "https"
    load_with_hups(g, f"https://127.0.0.1:{port}/check?addr=127.0.0.1&scheme=https&via=forwarded")

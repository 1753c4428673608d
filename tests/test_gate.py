"""The request stage's front-door checks (workers/gate.py): forwarded headers, allowed hosts
and --require-header, sans-IO on environ dicts and through real servers; and the settings
behind them (PORT, FORWARDED_ALLOW_IPS, the validators)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from greenfork.master import config
from greenfork.master.settings import DEFAULT_FORWARDED_HEADERS, SettingError, defaults
from greenfork.workers import forwarded, gate
from greenfork.workers.gate import HOST_NOT_ALLOWED, REQUIRED_HEADER, Gate, build
from tests.metricsutil import scrape, total
from tests.procs import APPS, Launcher, http_get, kill_tree, wait_for
from tests.proxytools import connect, env_of, request, v1

pytestmark = pytest.mark.timeout(90)
REQ = "http_server_request_duration_seconds_count"


def env_for(headers: list[tuple[bytes, bytes]], remote: str = "127.0.0.1",
            host: str | None = "app.test") -> dict[str, Any]:
    """An environ as build_environ makes it (the parts the checks read)."""
    env: dict[str, Any] = {"REQUEST_METHOD": "GET", "RAW_URI": "/", "REMOTE_ADDR": remote, "REMOTE_PORT": "5",
                           "wsgi.url_scheme": "http", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
                           "SCRIPT_NAME": ""}
    if host is not None:
        env["HTTP_HOST"] = host
    for name, value in headers:
        env["HTTP_" + name.decode().upper().replace("-", "_")] = value.decode()
    return env


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    return []


def settings(**kw: Any) -> Any:
    return config.build([config.Layer("test", kw)])


# ------------------------------------------------------------------ sans-IO
def test_nothing_configured_means_no_gate() -> None:
    assert build(settings(forwarded_allow_ips="")) is None
    assert build(settings(forwarded_headers="none")) is None
    assert build(settings(forwarded_allow_ips="", allowed_hosts="*")) is None


def test_the_defaults_apply_x_forwarded_for_and_proto_from_loopback() -> None:
    g = build(defaults())
    assert g is not None and g.hosts is None and g.secret_key is None
    headers = [(b"X-Forwarded-For", b"203.0.113.7"), (b"X-Forwarded-Proto", b"https"),
               (b"X-Forwarded-Host", b"evil.example")]
    env = env_for(headers)
    assert g.check(env, headers, app) == (app, "")
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("203.0.113.7", "https")
    assert env["HTTP_HOST"] == "app.test"  # X-Forwarded-Host is not honoured by default
    assert env["greenfork.peer_addr"] == "127.0.0.1"
    # from a peer outside the list nothing applies; a unix-socket peer ("") is in the default list
    env = env_for(headers, remote="192.0.2.1")
    g.check(env, headers, app)
    assert env["REMOTE_ADDR"] == "192.0.2.1" and env["HTTP_X_FORWARDED_FOR"] == "203.0.113.7"
    env = env_for(headers, remote="")
    g.check(env, headers, app)
    assert env["REMOTE_ADDR"] == "203.0.113.7"


def test_a_request_without_forwarded_headers_skips_the_walk() -> None:
    class Counting(forwarded.Forwarding):
        calls = 0

        def apply(self, env: dict[str, Any], headers: Any) -> tuple[str, ...]:
            Counting.calls += 1
            return super().apply(env, headers)

    from greenfork.master.trust import TrustList

    g = Gate(Counting(TrustList("127.0.0.1")))
    env = env_for([(b"User-Agent", b"x")])
    g.check(env, [(b"User-Agent", b"x")], app)
    assert Counting.calls == 0 and "greenfork.peer_addr" not in env
    g.check(env_for([(b"X-Forwarded-Proto", b"https")]), [(b"X-Forwarded-Proto", b"https")], app)
    assert Counting.calls == 1


def test_allowed_hosts_after_forwarding() -> None:
    g = build(settings(allowed_hosts="example.com,*.example.com", forwarded_headers="x-forwarded-host"))
    assert g is not None
    for host, ok in (("example.com", True), ("a.example.com:8443", True), ("EXAMPLE.com.", True),
                     ("evil.example", False), ("", False), (None, False)):
        env = env_for([], host=host)
        assert g.check(env, [], app) == ((app, "") if ok else (gate.REFUSE_HOST, HOST_NOT_ALLOWED)), host
    # the Host that counts is the forwarded one, from a trusted peer
    headers = [(b"X-Forwarded-Host", b"www.example.com")]
    assert g.check(env_for(headers, host="10.0.0.5:8000"), headers, app) == (app, "")
    assert g.check(env_for(headers, remote="192.0.2.1", host="10.0.0.5"), headers, app)[1] == HOST_NOT_ALLOWED


def test_require_header_is_checked_first_and_removed() -> None:
    g = build(settings(require_header="X-Proxy-Secret=s3cr3t-Token", forwarded_allow_ips=""))
    assert g is not None and g.forwarding is None
    env = env_for([(b"X-Proxy-Secret", b"s3cr3t-Token")])
    assert g.check(env, [], app) == (app, "") and "HTTP_X_PROXY_SECRET" not in env
    for value in (None, b"s3cr3t-token", b"s3cr3t-Token ", b"s3cr3t-Token,s3cr3t-Token", b""):
        headers = [] if value is None else [(b"X-Proxy-Secret", value)]
        env = env_for(headers)
        assert g.check(env, headers, app) == (gate.REFUSE_SECRET, REQUIRED_HEADER), value
        assert "HTTP_X_PROXY_SECRET" not in env  # never shown to anything downstream


def test_refusals_are_small_wsgi_answers() -> None:
    seen: list[Any] = []
    body = gate.REFUSE_HOST({}, lambda status, headers: seen.append((status, headers)))
    assert seen[0][0] == "400 Bad Request" and b"host" in body[0]
    assert ("Content-Length", str(len(body[0]))) in seen[0][1]
    gate.REFUSE_SECRET({}, lambda status, headers: seen.append((status, headers)))
    assert seen[1][0] == "403 Forbidden"


# ------------------------------------------------------------------ settings
def test_the_settings_default_matches_the_module() -> None:
    assert DEFAULT_FORWARDED_HEADERS == forwarded.DEFAULT_HONOURED


@pytest.mark.parametrize(("name", "value", "message"), [
    ("proxy_protocol", "v3", "is not a PROXY protocol mode"),
    ("proxy_allow_from", "10.0.0.1/8", "has host bits set; did you mean 10.0.0.0/8?"),
    ("proxy_allow_from", "proxy.internal", "is a host name"),
    ("forwarded_allow_ips", "10.0.0.0/33", "bad prefix length"),
    ("forwarded_headers", "x-real-ip", "is not a forwarded header greenfork applies"),
    ("allowed_hosts", "https://example.com", "not a URL or path"),
    ("require_header", "X-Secret", "expected NAME=VALUE"),
    ("require_header", "X_Secret=a", "use '-'"),
    ("require_header", "Host=a", "frames or routes the request"),
    ("require_header", "X-Secret= a", "visible ASCII"),
    ("require_header", "X-Bad Name=a", "is not a header name"),
])
def test_bad_values_name_the_setting(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingError, match=message) as info:
        settings(**{name: value})
    assert f"for {name} (from test)" in str(info.value)


def test_values_are_canonical() -> None:
    s = settings(proxy_protocol="auto", proxy_allow_from="10.0.0.0/8, [::1]",
                 forwarded_headers="Forwarded,x-forwarded-for", allowed_hosts="Example.com,*.example.com",
                 require_header="X-Proxy-Secret=abc")
    assert s.proxy_protocol == "any" and s.proxy_allow_from == "10.0.0.0/8,::1"
    assert s.forwarded_headers == ("x-forwarded-for", "forwarded")
    assert s.allowed_hosts == ("Example.com", "*.example.com") and s.require_header == "X-Proxy-Secret=abc"
    assert settings(proxy_protocol=True).proxy_protocol == "any"  # gunicorn's boolean, from TOML
    assert settings(forwarded_allow_ips="").forwarded_allow_ips == ""


def test_check_config_does_not_print_the_secret(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "greenfork.master", "--check-config"], capture_output=True,
                         text=True, timeout=30, cwd=tmp_path,
                         env={**os.environ, "GREENFORK_REQUIRE_HEADER": "X-Proxy-Secret=hunter2"})
    assert out.returncode == 0, out.stderr
    assert "X-Proxy-Secret=(hidden)" in out.stdout and "hunter2" not in out.stdout + out.stderr


def resolve(cli: dict[str, Any], environ: dict[str, str], cwd: Path) -> Any:
    return config.resolve(cli, environ, config=None, profile=None, cwd=str(cwd))[0]


def test_port_means_every_interface_when_no_bind_is_given(tmp_path: Path) -> None:
    s = resolve({}, {"PORT": "5000"}, tmp_path)
    assert s.bind == ("http://0.0.0.0:5000",) and s.source_of("bind") == "env PORT"
    assert config.bind_is_implicit(s)
    s = resolve({}, {"PORT": "5000", "GREENFORK_BIND": "127.0.0.1:1"}, tmp_path)
    assert s.bind == ("127.0.0.1:1",) and not config.bind_is_implicit(s)
    assert resolve({"bind": ["unix:/x.sock"]}, {"PORT": "5000"}, tmp_path).bind == ("unix:/x.sock",)
    (tmp_path / "greenfork.toml").write_text('bind = ["127.0.0.1:2"]\n')
    assert resolve({}, {"PORT": "5000"}, tmp_path).bind == ("127.0.0.1:2",)
    with pytest.raises(SettingError, match=r"invalid value 'http://0.0.0.0:web' for bind \(from env PORT\)"):
        resolve({}, {"PORT": "web"}, tmp_path / "none")


def test_forwarded_allow_ips_from_gunicorns_variable(tmp_path: Path) -> None:
    s = resolve({}, {"FORWARDED_ALLOW_IPS": "10.0.0.0/8"}, tmp_path)
    assert s.forwarded_allow_ips == "10.0.0.0/8,unix"  # gunicorn's list: unix peers trusted too
    assert s.source_of("forwarded_allow_ips") == "env FORWARDED_ALLOW_IPS"
    assert resolve({"forwarded_allow_ips": "*"}, {"FORWARDED_ALLOW_IPS": "10.0.0.0/8"}, tmp_path) \
        .forwarded_allow_ips == "*"


# ------------------------------------------------------------------ real servers
def get_env(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    status, _, body = http_get(url, "/env", headers=headers)
    return status, (json.loads(body) if status == 200 else {"body": body.decode()})


def test_forwarded_headers_by_default_and_off(launcher: Launcher) -> None:
    g = launcher.start(["proxyapp:app", "-b", "http://127.0.0.1:0"])
    xf = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    _, env = get_env(g.url(), xf)
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"], env["greenfork.peer_addr"]) == \
        ("203.0.113.7", "https", "127.0.0.1")
    g2 = launcher.start(["proxyapp:app", "-b", "http://127.0.0.1:0", "--forwarded-allow-ips", ""])
    _, env = get_env(g2.url(), xf)
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("127.0.0.1", "http")
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.7"


def test_allowed_hosts_and_required_header_answer_before_the_app(launcher: Launcher) -> None:
    g = launcher.start(["proxyapp:app", "-b", "http://127.0.0.1:0", "--allowed-hosts", "app.test,*.app.test",
                        "--metrics-bind", "http://127.0.0.1:0"],
                       env={"GREENFORK_REQUIRE_HEADER": "X-From-Proxy=7c1f0e"})
    ok = {"Host": "a.app.test", "X-From-Proxy": "7c1f0e"}
    status, env = get_env(g.url(), ok)
    assert status == 200 and "HTTP_X_FROM_PROXY" not in env
    assert get_env(g.url(), {"Host": "evil.test", "X-From-Proxy": "7c1f0e"})[0] == 400
    assert get_env(g.url(), {"Host": "app.test"})[0] == 403
    assert get_env(g.url(), {"Host": "app.test", "X-From-Proxy": "7c1f0f"})[0] == 403
    # X-Forwarded-Host is not honoured by default: the client's own Host is the one checked
    assert get_env(g.url(), {**ok, "X-Forwarded-Host": "evil.test"})[0] == 200
    metrics = g.info["metrics"]
    wait_for(lambda: total(scrape(metrics), REQ, error_type=REQUIRED_HEADER) == 2, 10, "the 403s counted")
    s = scrape(metrics)
    assert total(s, REQ, error_type=HOST_NOT_ALLOWED, http_response_status_code="400") == 1
    assert total(s, REQ, http_response_status_code="200") == 2


def test_port_from_the_environment(launcher: Launcher) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    g = launcher.start(["proxyapp:app"], env={"PORT": str(port)})
    assert g.addresses == [f"http://[::]:{port}"]
    assert f"No --bind given: listening on http://0.0.0.0:{port}, from the PORT environment variable" \
        in g.log()
    assert http_get(f"http://127.0.0.1:{port}", "/")[0] == 200


def test_systemd_sockets_win_over_port(launcher: Launcher, tmp_path: Path) -> None:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.fail("systemd-socket-activate is required (scripts/test installs Debian's systemd)")
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    activated, env_port = ports
    log = tmp_path / "activate.log"
    with open(log, "wb") as out:
        # the tool passes on only the variables named with -E
        proc = subprocess.Popen([tool, "-l", f"127.0.0.1:{activated}", "-E", f"PORT={env_port}",
                                 sys.executable, "-m", "greenfork.master", "proxyapp:app"], cwd=APPS,
                                env=launcher.env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: f":{activated}" in subprocess.run(["ss", "-ltn"], capture_output=True,
                                                            text=True).stdout, 10, "the activation socket")
        assert http_get(f"http://127.0.0.1:{activated}", "/", timeout=20)[0] == 200
        text = log.read_text()
        assert "PORT is set, but systemd passed listening sockets: serving on those only" in text
        assert f":{env_port}" not in subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
    finally:
        kill_tree(proc)


def test_flask_builds_its_urls_from_the_honoured_headers(launcher: Launcher) -> None:
    """What the issue is about: behind a proxy, an application builds its URLs and sees its
    client from what greenfork applied; --forwarded-headers chooses which headers count."""
    xf = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example",
          "X-Forwarded-Port": "8443", "X-Forwarded-Prefix": "/shop"}
    every = launcher.start(["proxyflask:app", "-b", "http://127.0.0.1:0", "--forwarded-headers",
                            "x-forwarded-for,x-forwarded-proto,x-forwarded-host,x-forwarded-port,x-forwarded-prefix"])
    status, _, body = http_get(every.url(), "/where", headers=xf)
    seen = json.loads(body)
    assert status == 200 and seen["url"] == "https://shop.example:8443/shop/where"
    assert (seen["remote"], seen["script_root"]) == ("203.0.113.9", "/shop")
    default = launcher.start(["proxyflask:app", "-b", "http://127.0.0.1:0"])
    seen = json.loads(http_get(default.url(), "/where", headers=xf)[2])
    # by default only the client and the scheme: the Host, port and prefix are the request's
    assert seen["url"] == f"https://127.0.0.1:{default.port()}/where" and seen["remote"] == "203.0.113.9"
    # RFC 7239 alone (with the prefix): hop 0 is vouched for by the peer, 127.0.0.1, trusted,
    # so hop 1 applies; its client, 2001:db8::17, is not trusted: the walk stops there
    rfc = launcher.start(["proxyflask:app", "-b", "http://127.0.0.1:0", "--forwarded-headers",
                          "forwarded,x-forwarded-prefix"])
    fwd = {"Forwarded": 'for="[2001:db8::17]:4711";proto=https;host=shop.example, for=127.0.0.1',
           "X-Forwarded-Prefix": "/shop", "X-Forwarded-For": "198.51.100.1"}
    seen = json.loads(http_get(rfc.url(), "/where", headers=fwd)[2])
    assert seen["url"] == "https://shop.example/shop/where" and seen["remote"] == "2001:db8::17"


def test_the_access_log_names_the_client(launcher: Launcher, tmp_path: Path) -> None:
    """The access log's %(h)s is the client a PROXY header or a trusted X-Forwarded-For named,
    not the proxy, which %({greenfork.peer_addr}e)s adds."""
    log = tmp_path / "access.log"
    g = launcher.start(["proxyapp:app", "-b", "http://127.0.0.1:0", "-b", "http://127.0.0.1:0?proxy-protocol=v1",
                        "--access-logfile", str(log)])
    fmt = log.with_name("fmt.log")  # the proxy as well, as docs/proxies.md suggests
    g2 = launcher.start(["proxyapp:app", "-b", "http://127.0.0.1:0", "--access-logfile", str(fmt),
                         "--access-logformat", '%(h)s via %({greenfork.peer_addr}e)s "%(r)s" %(s)s'])
    plain, pp = g.addresses
    assert get_env(plain, {"X-Forwarded-For": "198.51.100.8"})[0] == 200
    with connect(pp) as s:
        env = env_of(s, v1(("203.0.113.7", 1234), ("192.0.2.1", 80)) + request())
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    wait_for(lambda: len(log.read_text().splitlines()) == 2, 10, "two access log lines")
    lines = log.read_text().splitlines()
    assert lines[0].startswith("198.51.100.8 - - [") and lines[1].startswith("203.0.113.7 - - ["), lines
    assert get_env(g2.url(), {"X-Forwarded-For": "198.51.100.8"})[0] == 200
    wait_for(lambda: fmt.read_text() == '198.51.100.8 via 127.0.0.1 "GET /env HTTP/1.1" 200\n', 10,
             "the access log line with the proxy's address")

"""Mounts (issue 17): several applications on one listener, with real processes and curl.

Delegation between servers is test_delegation.py; the matcher's units are test_mounts.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import curl
from tests.metricsutil import find, scrape
from tests.procs import Greenfork, Launcher, raw, wait_for

pytestmark = pytest.mark.timeout(90)

MOUNTS = ["--mount", "/api=shareapps:api", "--mount", "admin.example.com=shareapps:admin",
          "--mount", "*.example.com/v1=shareapps:v1", "--mount", "/shop/cart=shareapps:shop",
          "--mount", "/flask=shareflask:app"]


def get(g: Greenfork, path: str, host: str | None = None, *extra: str) -> tuple[int, Any]:
    """curl, with --resolve when a host name is asked for (as a browser would connect)."""
    port = g.port()
    url = f"http://{host or '127.0.0.1'}:{port}{path}"
    args = [curl(), "-s", "-o", "-", "-w", "\n%{http_code}", "--path-as-is", *extra, url]
    if host:
        args[1:1] = ["--resolve", f"{host}:{port}:127.0.0.1"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=20)
    body, _, code = out.stdout.rpartition("\n")
    try:
        return int(code), json.loads(body)
    except ValueError:
        return int(code), body


def test_two_apps_on_one_port_by_path_and_by_host(launcher: Launcher) -> None:
    g = launcher.start(["shareapps:main", "-b", "127.0.0.1:0", *MOUNTS], workers=2)
    code, r = get(g, "/api/users/7?x=1")
    assert code == 200 and (r["app"], r["SCRIPT_NAME"], r["PATH_INFO"], r["QUERY_STRING"]) == (
        "api", "/api", "/users/7", "x=1")
    code, r = get(g, "/somewhere")
    assert (r["app"], r["SCRIPT_NAME"], r["PATH_INFO"]) == ("main", "", "/somewhere")
    code, r = get(g, "/x/y", "admin.example.com")
    assert (r["app"], r["SCRIPT_NAME"], r["PATH_INFO"]) == ("admin", "", "/x/y")
    code, r = get(g, "/v1/things", "shop.eu.example.com")
    assert (r["app"], r["SCRIPT_NAME"], r["PATH_INFO"]) == ("v1", "/v1", "/things")
    code, r = get(g, "/v1/things", "example.com")  # *.example.com needs a label before it
    assert r["app"] == "main"
    code, r = get(g, "/other", "shop.example.com")  # a wildcard with a path matches that path only
    assert r["app"] == "main"
    code, r = get(g, "/api/x", "admin.example.com")  # a path prefix wins over a host-only one
    assert r["app"] == "api"
    code, r = get(g, "/shop/cart/1")
    assert (r["app"], r["SCRIPT_NAME"], r["PATH_INFO"]) == ("shop", "/shop/cart", "/1")
    assert get(g, "/shop/x")[1]["app"] == "main"


@pytest.mark.parametrize(("path", "app", "script_name", "path_info"), [
    ("/api", "api", "/api", ""),
    ("/api/", "api", "/api", "/"),
    ("/api//x", "api", "/api", "//x"),
    ("/apix", "main", "", "/apix"),
    ("/ap", "main", "", "/ap"),
    ("/API/x", "main", "", "/API/x"),
    ("/api%2Fx", "api", "/api", "/x"),  # matched on the decoded path, which is what PATH_INFO is
    ("/%61pi/x", "api", "/api", "/x"),
    ("/x/api", "main", "", "/x/api"),
    ("/shop/cart", "shop", "/shop/cart", ""),
    ("/shop/cartx", "main", "", "/shop/cartx"),
])
def test_prefix_edge_cases(launcher: Launcher, path: str, app: str, script_name: str, path_info: str) -> None:
    g = launcher.start(["shareapps:main", "-b", "127.0.0.1:0", *MOUNTS])
    code, r = get(g, path)
    assert code == 200 and (r["app"], r["SCRIPT_NAME"], r["PATH_INFO"]) == (app, script_name, path_info)


def test_hosts_as_clients_send_them(launcher: Launcher) -> None:
    g = launcher.start(["shareapps:main", "-b", "127.0.0.1:0", *MOUNTS, "--keep-alive", "0"])

    def app_for(head: bytes) -> str:
        out = raw(g.url(), head)
        assert out.startswith(b"HTTP/1.1 200") or out.startswith(b"HTTP/1.0 200"), out
        return str(json.loads(out.split(b"\r\n\r\n", 1)[1])["app"])

    assert app_for(b"GET /x HTTP/1.1\r\nHost: ADMIN.Example.COM.:80\r\n\r\n") == "admin"
    # an absolute-form target's host wins over Host (RFC 9112 3.2.2)
    assert app_for(b"GET http://admin.example.com/x HTTP/1.1\r\nHost: other\r\n\r\n") == "admin"
    assert app_for(b"GET /x HTTP/1.0\r\n\r\n") == "main"  # no Host at all
    assert app_for(b"GET /v1/a HTTP/1.1\r\nHost: a.example.com\r\n\r\n") == "v1"
    # the server answers OPTIONS * itself, mounts or not
    assert raw(g.url(), b"OPTIONS * HTTP/1.1\r\nHost: admin.example.com\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_keep_alive_requests_each_find_their_app(launcher: Launcher) -> None:
    g = launcher.start(["shareapps:main", "-b", "127.0.0.1:0", *MOUNTS])
    port = g.port()
    out = subprocess.run([curl(), "-s", "-w", "\n%{num_connects}\n", f"http://127.0.0.1:{port}/api/a",
                          f"http://127.0.0.1:{port}/b", f"http://127.0.0.1:{port}/api/c"],
                         capture_output=True, text=True, timeout=20).stdout.splitlines()
    assert [json.loads(x)["app"] for x in out[0::2]] == ["api", "main", "api"]
    assert out[1::2] == ["1", "0", "0"]  # one connection served all three


def test_flask_mounted_under_a_prefix_builds_its_urls(launcher: Launcher) -> None:
    g = launcher.start(["shareapps:main", "-b", "127.0.0.1:0", *MOUNTS])
    code, r = get(g, "/flask/")
    assert code == 200
    assert r["self"] == "/flask/" and r["item"] == "/flask/items/3" and r["script_name"] == "/flask"
    assert r["abs"] == f"http://127.0.0.1:{g.port()}/flask/items/3" and r["path"] == "/"
    code, r = get(g, "/flask/items/9")
    assert r == {"n": 9, "self": "/flask/items/9", "script_name": "/flask"}
    assert get(g, "/flask/nope")[0] == 404  # Flask's own 404, inside its mount
    # and under a base SCRIPT_NAME (as behind a proxy that strips a path), the two add up
    g2 = launcher.start(["shareapps:main", "-b", "127.0.0.1:0", *MOUNTS], env={"SCRIPT_NAME": "/base"})
    code, r = get(g2, "/base/flask/items/2")
    assert r == {"n": 2, "self": "/base/flask/items/2", "script_name": "/base/flask"}


def test_without_an_app_what_no_mount_matches_is_404(launcher: Launcher) -> None:
    g = launcher.start(["-b", "127.0.0.1:0", "--mount", "/api=shareapps:api"])
    assert get(g, "/api/x")[1]["app"] == "api"
    code, body = get(g, "/")
    assert code == 404 and body.strip() == "404 Not Found"
    # with --preload too: the master loads no main app (not the demo)
    g = launcher.start(["-b", "127.0.0.1:0", "--mount", "/api=shareapps:api", "--preload"])
    assert get(g, "/nothing")[0] == 404 and get(g, "/api")[1]["app"] == "api"


def test_prefixes_are_published_as_http_sys_does(launcher: Launcher, sock_dir: Path) -> None:
    sock = sock_dir / "s.sock"
    g = launcher.start(["shareapps:main", "-b", "127.0.0.1:0", "-b", f"unix:{sock}", "--mount",
                        "/api=shareapps:api", "--mount", "admin.example.com=shareapps:admin",
                        "--metrics-bind", "http://127.0.0.1:0"])
    base = g.url()
    want = [base, f"unix:{sock}", f"{base}/api/", f"http://admin.example.com:{g.port()}/",
            f"http://unix:{sock}:/api/"]
    assert g.addresses == want  # the addresses file
    for url in want:  # the log
        assert f"Now listening on: {url}\n" in g.log()
    assert get(g, "/api/x")[1]["greenfork.server_addresses"] == want  # the environ
    samples = scrape(g.reload_info()["metrics"])
    infos = {labels["url"]: labels for labels, _ in find(samples, "greenfork_listener_info")}
    assert sorted(infos) == sorted(want)
    assert infos[f"{base}/api/"]["server_port"] == str(g.port())
    assert infos[f"http://unix:{sock}:/api/"]["network_transport"] == "unix"
    # the mount is the request histogram's http_route; the main app's requests have none
    get(g, "/x")
    get(g, "/x", "admin.example.com")
    wait_for(lambda: len(_routes(g)) >= 3, 5, "three request series")
    assert _routes(g) == {"/api": 1.0, "admin.example.com": 1.0, None: 1.0}


def _routes(g: Greenfork) -> dict[str | None, float]:
    out: dict[str | None, float] = {}
    for labels, v in find(scrape(g.info["metrics"]), "http_server_request_duration_seconds_count"):
        out[labels.get("http_route")] = out.get(labels.get("http_route"), 0.0) + v
    return out


@pytest.mark.parametrize("preload", [False, True])
def test_a_mount_that_cannot_load_is_a_boot_failure_naming_it(launcher: Launcher, preload: bool) -> None:
    g = launcher.spawn(["shareapps:main", "-b", "127.0.0.1:0", "--mount", "/api=shareapps:api",
                        "--mount", "/bad=shareapps:broken()", "--mount", "/gone=no_such_module:app",
                        *(["--preload"] if preload else [])], addresses_file=False)
    assert g.wait(30) == 4
    log = g.log()
    assert "Failed to load the application shareapps:broken() of the mount /bad" in log
    assert log.count("RuntimeError: this factory always fails") == 1  # the traceback, once
    if not preload:
        assert "Worker 0 failed to boot (exit code 4); stopping" in log


def test_after_a_good_start_a_bad_mount_fails_the_reload_not_the_server(launcher: Launcher,
                                                                         tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "mod.py").write_text("def app(e, sr):\n    sr('200 OK', [])\n    return [b'one']\n")
    g = launcher.start(["shareapps:main", "-b", "127.0.0.1:0", "--mount", "/m=mod:app",
                        "--chdir", str(site)], cwd=Path(__file__).parent / "apps")
    assert get(g, "/m")[1] == "one"
    (site / "mod.py").write_text("raise ImportError('broken on purpose')\n")
    g.signal(signal.SIGHUP)
    wait_for(lambda: "Reload failed" in g.log(), 20, "the reload to fail")
    assert "of the mount /m" in g.log()
    assert get(g, "/m")[1] == "one"  # the old generation serves on


def test_preloaded_mounts_are_imported_once_by_the_master(launcher: Launcher) -> None:
    g = launcher.start(["shareapps:main", "-b", "127.0.0.1:0", "--mount", "/api=shareapps:api", "--preload"],
                       workers=2)
    assert get(g, "/api/x")[1]["imported_by"] == g.pid
    g2 = launcher.start(["shareapps:main", "-b", "127.0.0.1:0", "--mount", "/api=shareapps:api"])
    r = get(g2, "/api/x")[1]
    assert r["imported_by"] == r["pid"] != g2.pid


def test_max_requests_counts_every_mount(launcher: Launcher) -> None:
    g = launcher.start(["shareapps:main", "-b", "127.0.0.1:0", "--mount", "/api=shareapps:api",
                        "--max-requests", "4"])
    first = get(g, "/api/1")[1]["pid"]
    for i in range(3):
        get(g, f"/api/{i}")
    wait_for(lambda: "served 4 requests (--max-requests)" in g.log(), 10, "the recycle request")
    wait_for(lambda: get(g, "/api/x")[1]["pid"] != first, 15, "a new worker")

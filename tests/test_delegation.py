"""Delegation (issue 17): a front greenfork hands whole connections to other greenfork servers
over their handoff: sockets. Real processes, real clients (curl, raw sockets, wrk), real signals.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import curl
from tests.metricsutil import find, scrape
from tests.procs import APPS, Greenfork, Launcher, alive, children, pid_in, raw, wait_for

pytestmark = pytest.mark.timeout(120)


def receiver(launcher: Launcher, app: str, sock: Path, *extra: str, **kw: Any) -> Greenfork:
    g = launcher.start([f"shareapps:{app}", "-b", f"handoff:{sock}", *extra], **kw)
    assert g.addresses == [f"handoff:{sock}"]
    assert f"Now listening on: handoff:{sock}" in g.log()
    return g


def front(launcher: Launcher, *delegates: str, app: str | None = "shareapps:main", **kw: Any) -> Greenfork:
    args = [app] if app else []
    for d in delegates:
        args += ["--delegate", d]
    args += ["-b", "127.0.0.1:0", "--metrics-bind", "http://127.0.0.1:0", *kw.pop("extra", [])]
    return launcher.start(args, **kw)


def get(url: str, path: str, host: str | None = None, *extra: str) -> tuple[int, Any, dict[str, str]]:
    port = int(url.rsplit(":", 1)[1])
    target = f"{url.split('://')[0]}://{host or url.split('://')[1].rsplit(':', 1)[0]}:{port}{path}"
    args = [curl(), "-sk", "-D", "-", "-o", "-", *extra, target]
    if host:
        args[1:1] = ["--resolve", f"{host}:{port}:127.0.0.1"]
    out = subprocess.run(args, capture_output=True, timeout=30).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 1"):  # an interim 100 Continue
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = body
    return int(lines[0].split()[1]), parsed, headers


def delegated(g: Greenfork) -> dict[tuple[str, str], float]:
    return {(labels["target"], labels["result"]): v
            for labels, v in find(scrape(g.info["metrics"]), "greenfork_delegated_connections_total")}


@pytest.fixture
def pair(launcher: Launcher, sock_dir: Path) -> tuple[Greenfork, Greenfork, Greenfork]:
    one = receiver(launcher, "one", sock_dir / "one.sock")
    two = receiver(launcher, "two", sock_dir / "two.sock")
    f = front(launcher, f"/one=unix:{sock_dir}/one.sock", f"two.example.com=unix:{sock_dir}/two.sock",
              f"/three=unix:{sock_dir}/three.sock", extra=["--delegate-wait", "0.3"])
    return f, one, two


Trio = tuple[Greenfork, Greenfork, Greenfork]


def test_the_front_hands_connections_by_path_and_by_host(pair: Trio) -> None:
    f, one, two = pair
    url = f.url()
    code, r, _ = get(url, "/one/x?q=1")
    assert code == 200 and r["app"] == "one" and r["ppid"] == one.pid
    # served as if accepted there: the request as sent, the client's own address
    assert (r["SCRIPT_NAME"], r["PATH_INFO"], r["QUERY_STRING"]) == ("", "/one/x", "q=1")
    assert r["REMOTE_ADDR"] == "127.0.0.1" and r["HTTP_HOST"] == url.split("://")[1]
    assert (r["SERVER_NAME"], r["SERVER_PORT"]) == ("127.0.0.1", str(f.port()))
    assert r["wsgi.url_scheme"] == "http"
    code, r, _ = get(url, "/anything", "two.example.com")
    assert code == 200 and r["app"] == "two" and r["ppid"] == two.pid
    code, r, _ = get(url, "/onex")  # whole segments only
    assert r["app"] == "main" and r["ppid"] == f.pid
    assert "Delegating " + url + "/one/ to unix:" in f.log()
    counts = delegated(f)
    assert counts[("/one", "success")] == 1 and counts[("two.example.com", "success")] == 1
    assert counts[("/three", "success")] == 0  # every target shown from zero


def test_bodies_pipelines_and_keep_alive_go_along(pair: Trio, tmp_path: Path) -> None:
    f, _one, _two = pair
    body = tmp_path / "body"
    body.write_bytes(os.urandom(3 << 20))
    code, r, _ = get(f.url(), "/one/body", None, "--data-binary", f"@{body}", "-H", "Expect:")
    assert code == 200 and r == {"app": "one", "got": 3 << 20, "sum": sum(body.read_bytes()) % 65521}
    code, r, _ = get(f.url(), "/one/body", None, "--data-binary", f"@{body}", "-H", "Expect: 100-continue")
    assert code == 200 and r["got"] == 3 << 20
    # pipelined in one write: the front reads past the first head; the target answers all
    host = f.url().split("://")[1]
    reqs = b"".join(b"GET /one/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, host.encode()) for i in range(3))
    out = raw(f.url(), reqs + b"GET /one/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    paths = [json.loads(b)["PATH_INFO"] for b in re.findall(rb"\r\n\r\n(\{.*?\})(?=HTTP/|$)", out, re.S)]
    assert paths == ["/one/0", "/one/1", "/one/2", "/one/last"]
    # a connection stays with the server that got it: its later requests too, whatever their prefix
    urls = [f.url() + "/one/a", f.url() + "/elsewhere"]
    out = subprocess.run([curl(), "-s", "-w", "\n%{num_connects}\n", *urls], capture_output=True, text=True,
                         timeout=20).stdout.splitlines()
    assert [json.loads(x)["app"] for x in out[0::2]] == ["one", "one"] and out[1::2] == ["1", "0"]


def test_a_target_that_is_down_gets_503_with_retry_after(pair: Trio, sock_dir: Path) -> None:
    f, _one, _two = pair
    started = time.monotonic()
    code, body, headers = get(f.url(), "/three/x")
    assert code == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert 0.25 <= time.monotonic() - started < 5  # it tried for --delegate-wait first
    assert b"not available" in body
    # a stale socket file nobody listens on is down too (connection refused)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_dir / "three.sock"))
    stale.close()
    assert get(f.url(), "/three/y")[0] == 503
    assert delegated(f)[("/three", "unavailable")] == 2
    assert "Delegation to unix:" in f.log() and f.log().count("failed: ") == 1  # logged once per outage
    samples = scrape(f.info["metrics"])
    conns = find(samples, "greenfork_connection_duration_seconds_count")
    assert sum(v for labels, v in conns if labels.get("error_type") == "delegation_failed") == 2
    reqs = find(samples, "http_server_request_duration_seconds_count")  # and the requests' 503s
    assert sum(v for labels, v in reqs if labels.get("error_type") == "delegation_failed"
               and labels["http_response_status_code"] == "503"
               and labels["http_request_method"] == "GET") == 2


def test_a_target_coming_up_is_used_without_a_restart(launcher: Launcher, sock_dir: Path) -> None:
    f = front(launcher, f"/late=unix:{sock_dir}/late.sock", extra=["--delegate-wait", "0.2"])
    assert get(f.url(), "/late")[0] == 503
    receiver(launcher, "one", sock_dir / "late.sock")
    assert get(f.url(), "/late")[1]["app"] == "one"
    wait_for(lambda: "works again" in f.log(), 5, "the recovery to be logged")


def test_a_full_hand_off_queue_is_503_busy_and_nothing_queued_is_lost(launcher: Launcher,
                                                                       sock_dir: Path) -> None:
    slow = receiver(launcher, "one", sock_dir / "q.sock", "--backlog", "1")
    f = front(launcher, f"/q=unix:{sock_dir}/q.sock", extra=["--delegate-wait", "0.5"])
    workers = slow.workers()
    for w in workers:
        os.kill(w, signal.SIGSTOP)  # accepts nothing: hand-offs wait in its listen queue
    procs = []
    try:
        for i in range(6):
            cmd = [curl(), "-s", "-o", "-", "-w", "\n%{http_code}", f.url() + f"/q/{i}"]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
            time.sleep(0.1)
        wait_for(lambda: delegated(f).get(("/q", "busy"), 0) >= 1, 10, "a busy hand-off")
    finally:
        for w in workers:
            os.kill(w, signal.SIGCONT)
    codes = sorted(p.communicate(timeout=30)[0].rsplit("\n", 1)[1] for p in procs)
    # those that found room were served once the target went on; the rest got 503, none a reset
    assert set(codes) == {"200", "503"}, codes
    counts = delegated(f)
    assert codes.count("503") == counts[("/q", "busy")] and codes.count("200") == counts[("/q", "success")]


def test_a_target_without_a_main_app_and_a_front_without_one(launcher: Launcher, sock_dir: Path) -> None:
    receiver(launcher, "one", sock_dir / "o.sock")
    f = front(launcher, f"/o=unix:{sock_dir}/o.sock", app=None)
    assert get(f.url(), "/o/x")[1]["app"] == "one"
    assert get(f.url(), "/x")[0] == 404  # the front has no app of its own


def test_malformed_and_slow_first_requests_are_answered_by_the_front(pair: Trio, launcher: Launcher,
                                                                    sock_dir: Path) -> None:
    f, _one, _two = pair
    assert raw(f.url(), b"GET /one/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(f.url(), b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 501")  # as any greenfork answers it
    assert delegated(f)[("/one", "success")] == 0
    slow = front(launcher, f"/one=unix:{sock_dir}/one.sock", extra=["--request-headers-timeout", "0.5"])
    with socket.create_connection(("127.0.0.1", slow.port()), timeout=10) as s:
        s.sendall(b"GET /one/x HTTP/1.1\r\nHo")
        assert s.recv(100).startswith(b"HTTP/1.1 408")


def test_a_handoff_socket_refuses_what_is_not_a_handoff(launcher: Launcher, sock_dir: Path) -> None:
    g = receiver(launcher, "one", sock_dir / "h.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock_dir / "h.sock"))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # HTTP is not a hand-off
        assert s.recv(100) == b""
    with socket.socket(socket.AF_UNIX) as s:  # a message without a socket attached
        s.settimeout(10)
        s.connect(str(sock_dir / "h.sock"))
        from greenfork.workers.handoff import Handoff, encode

        s.sendall(encode(Handoff(b"GET / HTTP/1.1\r\n\r\n")))
        assert s.recv(100) == b""
    wait_for(lambda: g.log().count("Refused a hand-off") == 2, 5, "both refusals logged")
    assert "bad magic" in g.log() and "0 descriptors instead of one" in g.log()


def test_tls_fronts_terminate_and_relay(launcher: Launcher, sock_dir: Path,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests import tlscerts

    certs = tlscerts.certs(tmp_path_factory)
    receiver(launcher, "one", sock_dir / "t.sock")
    f = launcher.start(["shareapps:main", "-b", "https://127.0.0.1:0", "--certfile", str(certs.server.cert),
                        "--keyfile", str(certs.server.key), "--delegate", f"/one=unix:{sock_dir}/t.sock"])
    url = f.url()
    code, r, _ = get(url, "/one/x")
    assert code == 200 and r["app"] == "one"
    assert r["wsgi.url_scheme"] == "https" and r["HTTPS"] == "on" and r["SSL_PROTOCOL"].startswith("TLSv1.")
    assert (r["SERVER_NAME"], r["SERVER_PORT"]) == ("127.0.0.1", str(f.port()))
    assert r["REMOTE_ADDR"] == "127.0.0.1"
    out = subprocess.run([curl(), "-sk", "-o", "/dev/null", "-o", "/dev/null", "-w",
                          "%{num_connects} %{size_download} %{http_code}\n", url + "/one/big",
                          url + "/one/a"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    assert out[0] == "1 1048576 200" and out[1].startswith("0 ") and out[1].endswith(" 200")  # one connection
    body = os.urandom(1 << 20)
    p = subprocess.run([curl(), "-sk", "--data-binary", "@-", "-H", "Expect:", url + "/one/body"], input=body,
                       capture_output=True, timeout=30)
    assert json.loads(p.stdout) == {"app": "one", "got": 1 << 20, "sum": sum(body) % 65521}
    assert get(url, "/here")[1]["app"] == "main"  # not delegated: served by the front over TLS


def test_a_receiver_running_as_another_user(launcher: Launcher, sock_dir: Path, world_python: str) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to run workers as other users")
    os.chmod(sock_dir, 0o755)
    site = sock_dir / "site"
    site.mkdir(mode=0o755)
    shutil.copy(APPS / "shareapps.py", site / "shareapps.py")
    nobody, daemon = pwd.getpwnam("nobody"), pwd.getpwnam("daemon")
    # the front's workers run as daemon; the receiver's as nobody, its socket in daemon's group
    r = receiver(launcher, "two", sock_dir / "n.sock", "--user", "nobody", "--handoff-socket-group", "daemon",
                 python=world_python, cwd=site)
    st = (sock_dir / "n.sock").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (nobody.pw_uid, grp.getgrnam("daemon").gr_gid, 0o660)
    closed = receiver(launcher, "one", sock_dir / "closed.sock", "--user", "nobody", python=world_python,
                      cwd=site)  # no group: only nobody (and root) may connect
    f = launcher.start(["shareapps:main", "-b", "127.0.0.1:0", "--user", "daemon", "--delegate",
                        f"/n=unix:{sock_dir}/n.sock", "--delegate", f"/closed=unix:{sock_dir}/closed.sock",
                        "--delegate-wait", "0.2"], python=world_python, cwd=site)
    code, body, _ = get(f.url(), "/n/x")
    assert code == 200 and body["uid"] == nobody.pw_uid and body["ppid"] == r.pid
    assert get(f.url(), "/here")[1]["uid"] == daemon.pw_uid
    assert get(f.url(), "/closed/x")[0] == 503
    assert "Permission denied" in f.log() and closed.proc.poll() is None
    bad = launcher.spawn(["shareapps:one", "-b", f"handoff:{sock_dir}/x.sock", "--handoff-socket-group",
                          "no-such-group-here"], addresses_file=False)
    assert bad.wait(20) == 2 and "no such group 'no-such-group-here'" in bad.log()
    assert not (sock_dir / "x.sock").exists()


def test_a_stopping_target_loses_nothing(launcher: Launcher, sock_dir: Path) -> None:
    """Hand-offs queued while the target drains (TERM) are never reset: the front keeps the
    client's socket until the target says it took it, so it answers 503 when it did not."""
    t = receiver(launcher, "one", sock_dir / "s.sock")
    f = front(launcher, f"/s=unix:{sock_dir}/s.sock", extra=["--delegate-wait", "0.2"])
    busy = subprocess.Popen([curl(), "-s", f.url() + "/s/sleep?1.5"], stdout=subprocess.PIPE)
    wait_for(lambda: delegated(f)[("/s", "success")] == 1, 10, "the slow request to be handed over")
    t.signal(signal.SIGTERM)  # the worker drains: its in-flight request finishes, it accepts no more
    wait_for(lambda: "Shutting down gracefully" in t.log(), 5, "the drain")
    late = subprocess.Popen([curl(), "-s", "-o", "/dev/null", "-w", "%{http_code}", f.url() + "/s/x"],
                            stdout=subprocess.PIPE, text=True)
    assert json.loads(busy.communicate(timeout=20)[0])["app"] == "one"
    assert late.communicate(timeout=20)[0] == "503"  # not 000: never a reset
    assert t.wait(20) == 0


def test_receivers_hup_and_usr2_under_load_lose_nothing(launcher: Launcher, sock_dir: Path, tmp_path: Path,
                                                        world_python: str) -> None:
    """wrk through the front at both receivers (one running as nobody), keep-alive and one
    connection per request, while each receiver is reloaded and upgraded: no error at all."""
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.fail("wrk is required (scripts/test installs it)")
    os.chmod(sock_dir, 0o755)
    site = sock_dir / "site"
    site.mkdir(mode=0o755)
    shutil.copy(APPS / "shareapps.py", site / "shareapps.py")
    user = ["--user", "nobody"] if os.getuid() == 0 else []
    pid1, pid2 = tmp_path / "one.pid", tmp_path / "two.pid"
    one = receiver(launcher, "one", sock_dir / "one.sock", "-w", "2", "-p", str(pid1), cwd=site,
                   python=world_python)
    two = receiver(launcher, "two", sock_dir / "two.sock", "-w", "2", "-p", str(pid2), *user, cwd=site,
                   python=world_python)
    f = front(launcher, f"/one=unix:{sock_dir}/one.sock", f"/two=unix:{sock_dir}/two.sock", workers=2)
    script = Path(__file__).parent / "wrk_count.lua"
    runs = []
    seconds = 20
    for path, extra in (("/one/", []), ("/two/", []), ("/one/c", ["-H", "Connection: close"]),
                        ("/two/c", ["-H", "Connection: close"])):
        out = tmp_path / f"wrk{len(runs)}.txt"
        with open(out, "wb") as fh:
            cmd = [wrk, "-t", "1", "-c", "16", "-d", f"{seconds}s", "-s", str(script), *extra, f.url() + path]
            runs.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT), out))
    news: list[int] = []
    try:
        time.sleep(1.5)  # a paced schedule under load, each step awaited by its condition
        for g in (one, two):
            g.signal(signal.SIGHUP)
            wait_for(lambda g=g: g.reload_info()["generation"] == 2, 20, "the reload")
            time.sleep(1.0)
        for g, pidfile in ((one, pid1), (two, pid2)):
            g.signal(signal.SIGUSR2)
            new = wait_for(lambda p=pidfile, g=g: (n := pid_in(p)) != g.pid and n, 30, "the new master")
            news.append(new)
            time.sleep(1.0)  # both masters serve
            g.signal(signal.SIGTERM)
            assert g.wait(30) == 0
            time.sleep(0.5)
        os.kill(news[0], signal.SIGHUP)  # and a reload of an upgraded master
        wait_for(lambda: one.reload_info()["pid"] == news[0] and one.info["generation"] == 4, 20,
                 "the upgraded master's reload")
        assert all(alive(p) for p in news)
        results = []
        for proc, out in runs:
            proc.wait(seconds + 30)
            text = out.read_text()
            m = re.search(r"^GF (.*)$", text, re.M)
            assert m, text
            results.append({k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())})
    finally:
        for proc, _ in runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        for pid in news:  # (in its old master's process group too, which the launcher kills)
            for p in (*children(pid), pid):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    print("wrk:", results)
    for counts in results:
        assert counts["requests"] > 200, results
        assert all(counts[k] == 0 for k in ("non2xx", "connect", "read", "write", "status", "timeout")), \
            results
    counts = delegated(f)
    assert counts[("/one", "unavailable")] == counts[("/two", "unavailable")] == 0, counts
    assert counts[("/one", "busy")] == counts[("/two", "busy")] == 0, counts
    assert sum(counts[(t, "success")] for t in ("/one", "/two")) > 400, counts


def test_a_handoff_with_the_wrong_kind_of_descriptor_is_refused_and_closed(launcher: Launcher,
                                                                           sock_dir: Path) -> None:
    import array

    from greenfork.workers.handoff import Handoff, encode

    g = receiver(launcher, "one", sock_dir / "k.sock")
    worker = g.workers()[0]
    before = len(os.listdir(f"/proc/{worker}/fd"))
    msg = encode(Handoff(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    r, w = os.pipe()
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        for fds in ([r], [dgram.fileno()], [r, w]):  # not a socket, not a stream, two of them
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(sock_dir / "k.sock"))
                s.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                assert s.recv(1) == b""  # no ACK: refused
    finally:
        os.close(r)
        os.close(w)
        dgram.close()
    wait_for(lambda: g.log().count("Refused a hand-off") == 3, 5, "three refusals")
    assert "not a stream socket" in g.log() and "2 descriptors instead of one" in g.log()
    wait_for(lambda: len(os.listdir(f"/proc/{worker}/fd")) <= before, 5, "every received descriptor closed")

"""Real greenfork processes, real signals, real clients (curl, http.client, raw sockets)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import curl
from tests.procs import APPS, Launcher, alive, cmdline, http_get, raw, wait_for

pytestmark = pytest.mark.timeout(60)


def test_addresses_published_everywhere(launcher: Launcher, sock_dir: Path) -> None:
    sock = sock_dir / "x.sock"
    g = launcher.start(["-b", "http://127.0.0.1:0", "-b", f"unix:{sock}"], workers=2)
    info = g.info
    assert info["pid"] == g.pid and info["generation"] == 1
    tcp, unix = info["addresses"]
    assert tcp.startswith("http://127.0.0.1:") and int(tcp.rsplit(":", 1)[1]) > 0
    assert unix == f"unix:{sock}"
    assert f"Now listening on: {tcp}" in g.log() and f"Now listening on: {unix}" in g.log()
    # the same list in every request's environ, over TCP and over the unix socket, with curl
    out = subprocess.run([curl(), "-sf", f"{tcp}/"], capture_output=True, timeout=10, check=True)
    assert tcp.encode() in out.stdout and unix.encode() in out.stdout
    out = subprocess.run([curl(), "-sf", "--unix-socket", str(sock), "http://localhost/info.json"],
                         capture_output=True, timeout=10, check=True)
    assert json.loads(out.stdout)["addresses"] == info["addresses"]
    # ps: one master and two workers, by title
    assert cmdline(g.pid) == "greenfork: master [demo] gen 1"
    titles = sorted(cmdline(p) for p in g.workers())
    assert titles == ["greenfork: worker 0 [demo] gen 1", "greenfork: worker 1 [demo] gen 1"]


def test_sigkill_worker_is_replaced_and_requests_keep_succeeding(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0"], workers=2)
    before = set(g.workers())
    victim = before.pop()
    errors: list[tuple[float, BaseException]] = []
    served = [0]
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status, _, _ = http_get(g.url(), "/pid")
                assert status == 200
                served[0] += 1
            except BaseException as e:  # collected and asserted below
                errors.append((time.monotonic(), e))

    t = threading.Thread(target=load)
    t.start()
    try:
        wait_for(lambda: served[0] > 5, 10, "requests before the kill")
        killed_at = time.monotonic()
        g.signal(signal.SIGCONT)  # harmless; proves the master survives stray signals
        import os

        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(g.workers()) == 2 and victim not in g.workers(), 5, "a replacement worker")
        replaced_at = time.monotonic()
        assert replaced_at - killed_at < 2.0
        count = served[0]
        wait_for(lambda: served[0] > count + 5, 10, "requests after the kill")
    finally:
        stop.set()
        t.join(15)
    # The one request the victim had accepted dies with it (no server can save it);
    # every other request, and all of them once the replacement is up, succeed.
    assert len(errors) <= 1, errors[:3]
    assert all(when < replaced_at for when, _ in errors), errors
    assert "died: killed by SIGKILL" in g.log()


def test_second_server_on_same_port_fails_naming_the_address(launcher: Launcher) -> None:
    g = launcher.start(["-b", "127.0.0.1:0"])
    second = launcher.spawn(["-b", f"127.0.0.1:{g.port()}", "-w", "2"], addresses_file=False)
    assert second.wait(20) == 2
    out = second.log()
    assert f"Failed to bind to address http://127.0.0.1:{g.port()}: address already in use" in out
    assert "Worker 0" not in out and len(out.strip().splitlines()) == 1  # no worker was forked


def test_term_lets_inflight_request_finish_then_exits_clean(launcher: Launcher, sock_dir: Path) -> None:
    sock = sock_dir / "t.sock"
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "-b", f"unix:{sock}"], workers=2)
    workers = g.workers()
    result: dict[str, object] = {}

    mark = sock_dir / "inside"

    def slow() -> None:
        result["response"] = http_get(g.url(), f"/sleep?s=2&mark={mark}", timeout=15)

    t = threading.Thread(target=slow)
    t.start()
    wait_for(mark.exists, 10, "the request to reach the app")
    g.signal(signal.SIGTERM)
    t.join(15)
    status, headers, body = result["response"]  # type: ignore[misc]
    assert (status, body) == (200, b"slept\n")
    assert headers.get("connection") == "close"
    assert g.wait(20) == 0
    assert not sock.exists()
    assert not g.addr_file.exists()
    assert not any(alive(p) for p in workers)


def test_term_closes_idle_keepalive_connections_at_once(launcher: Launcher) -> None:
    g = launcher.start(["-b", "127.0.0.1:0", "--graceful-timeout", "20"])
    host, port = "127.0.0.1", g.port()
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        g.signal(signal.SIGTERM)
        rest = b""
        while chunk := s.recv(65536):  # EOF when the worker closes the idle connection
            rest += chunk
        assert time.monotonic() - started < 5
    assert g.wait(10) == 0


def test_int_is_a_quick_stop(launcher: Launcher, sock_dir: Path) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0"])
    mark = sock_dir / "inside"
    request = f"GET /sleep?s=30&mark={mark} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    t = threading.Thread(target=lambda: raw(g.url(), request), daemon=True)
    t.start()
    wait_for(mark.exists, 10, "the request to reach the app")
    started = time.monotonic()
    g.signal(signal.SIGINT)
    assert g.wait(10) == 0
    assert time.monotonic() - started < 5


def test_app_that_cannot_be_imported_exits_4_without_a_fork_loop(launcher: Launcher) -> None:
    g = launcher.spawn(["no_such_module:app", "-b", "127.0.0.1:0", "-w", "2"])
    assert g.wait(20) == 4
    log = g.log()
    assert "no module named 'no_such_module'" in log
    assert log.count("Failed to load the application") <= 2  # one per worker, no retry loop


def test_app_without_the_attribute_exits_4(launcher: Launcher) -> None:
    g = launcher.spawn(["testapp:missing", "-b", "127.0.0.1:0"])
    assert g.wait(20) == 4
    assert "has no attribute 'missing'" in g.log()


@pytest.mark.parametrize(("args", "env", "needle"), [
    (["-w", "abc"], {}, "invalid value 'abc' for workers (from command line --workers): expected an integer"),
    ([], {"GREENFORK_WORKERS": "0"}, "invalid value '0' for workers (from env GREENFORK_WORKERS)"),
    (["-b", "ftp://x:1"], {}, "unknown scheme 'ftp'"),
    (["bad spec:"], {}, "invalid app"),
])
def test_config_errors_exit_2_with_one_line(launcher: Launcher, args: list[str], env: dict[str, str],
                                            needle: str) -> None:
    g = launcher.spawn(args, env=env, addresses_file=False)
    assert g.wait(20) == 2
    out = g.log().strip()
    assert needle in out
    assert len(out.splitlines()) == 1, out


def test_config_file_profile_and_precedence(launcher: Launcher, tmp_path: Path) -> None:
    cfg = tmp_path / "greenfork.toml"
    cfg.write_text('workers = 3\nbind = ["http://127.0.0.1:0"]\n'
                   '[profiles.small]\nworkers = 1\nkeep_alive = 5\n')
    out = subprocess.run([sys.executable, "-m", "greenfork.master", "-c", str(cfg), "--profile", "small",
                          "--check-config"], capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin", "GREENFORK_KEEP_ALIVE": "7"})
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" = ", 1) for line in out.stdout.splitlines())
    assert lines["workers"].startswith("1  (greenfork.toml [profiles.small])")
    assert lines["keep_alive"].startswith("7.0  (env GREENFORK_KEEP_ALIVE)")
    g = launcher.start(["-c", str(cfg), "-w", "2"])
    assert len(g.workers()) == 2  # the command line wins over the file


def test_worker_exits_when_its_master_dies(launcher: Launcher) -> None:
    g = launcher.start(["-b", "127.0.0.1:0"], workers=2)
    workers = g.workers()
    g.proc.send_signal(signal.SIGKILL)
    g.proc.wait(10)
    wait_for(lambda: not any(alive(p) for p in workers), 10, "orphaned workers to exit")


def test_master_never_imports_gevent(launcher: Launcher) -> None:
    code = ("import sys, greenfork.master, greenfork.master.cli, greenfork.master.loop, "
            "greenfork.master.server, greenfork.master.arbiter, greenfork.metrics\n"
            "assert 'gevent' not in sys.modules, 'gevent imported by the master'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    g = launcher.start(["-b", "127.0.0.1:0"])
    maps = Path(f"/proc/{g.pid}/maps").read_text()
    assert "gevent" not in maps and "greenlet" not in maps
    worker_maps = Path(f"/proc/{g.workers()[0]}/maps").read_text()
    assert "gevent" in worker_maps  # the check above can fail: workers do load it


def test_hup_starts_a_new_generation_and_keeps_serving(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0"], workers=2)
    old = set(g.workers())
    g.signal(signal.SIGHUP)
    wait_for(lambda: g.reload_info()["generation"] == 2, 10, "generation 2 in the addresses file")
    wait_for(lambda: len(g.workers()) == 2 and not (set(g.workers()) & old), 15, "old workers to retire")
    status, _, body = http_get(g.url(), "/env")
    assert status == 200 and json.loads(body)["greenfork.generation"] == 2


def test_ttin_ttou_change_the_worker_count(launcher: Launcher) -> None:
    g = launcher.start(["-b", "127.0.0.1:0"], workers=1)
    g.signal(signal.SIGTTIN)
    wait_for(lambda: len(g.workers()) == 2, 10, "two workers")
    g.signal(signal.SIGTTOU)
    wait_for(lambda: len(g.workers()) == 1, 10, "one worker")
    g.signal(signal.SIGTTOU)  # never below one
    assert http_get(g.url())[0] == 200
    assert "TTOU ignored" in wait_for(lambda: "TTOU ignored" in g.log() and g.log(), 5)
    assert len(g.workers()) == 1


def test_localhost_binds_both_loopbacks(launcher: Launcher) -> None:
    g = launcher.start(["-b", "http://localhost:0"])
    urls = g.addresses
    assert urls[0].startswith("http://127.0.0.1:")
    if len(urls) == 2:  # no IPv6 on this host otherwise
        assert urls[1] == "http://[::1]:" + urls[0].rsplit(":", 1)[1]
    for url in urls:
        assert http_get(url)[0] == 200


def test_inherited_fd_and_systemd_socket_activation(launcher: Launcher) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    try:
        # fd://N: the socket is passed as-is
        fd = lsock.fileno()
        g = launcher.start([f"--bind=fd://{fd}"], pass_fds=(fd,))
        assert g.addresses == [f"http://127.0.0.1:{port}"]
        assert http_get(g.url())[0] == 200
        g.signal(signal.SIGTERM)
        assert g.wait(10) == 0
        # systemd: fd 3, LISTEN_PID of the greenfork process itself; no -b given
        shim = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_FDS'] = '1'; "
                "os.environ['LISTEN_PID'] = str(os.getpid()); "
                "os.execv(sys.executable, [sys.executable, '-m', 'greenfork.master', *sys.argv[2:]])")
        log = launcher.tmp / "systemd.log"
        addr = launcher.tmp / "systemd.json"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-c", shim, str(fd), "--addresses-file", str(addr)],
                                    cwd=APPS, pass_fds=(fd,), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=launcher.env())
        try:
            wait_for(lambda: addr.exists() and "Booted" in log.read_text(), 20, "socket-activated boot")
            assert json.loads(addr.read_text())["addresses"] == [f"http://127.0.0.1:{port}"]
            assert http_get(f"http://127.0.0.1:{port}")[0] == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                import os

                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
    finally:
        lsock.close()


def test_unix_socket_stale_file_is_replaced_and_live_one_refused(launcher: Launcher, sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a dead server's leftover
    g = launcher.start(["-b", f"unix:{path}", "--unix-socket-mode", "600"])
    assert (path.stat().st_mode & 0o777) == 0o600
    second = launcher.spawn(["-b", f"unix:{path}"], addresses_file=False)
    assert second.wait(20) == 2
    assert "address already in use" in second.log()
    assert http_get(g.url())[0] == 200  # the refused start did not disturb the live socket


def test_chdir_puts_the_app_directory_first(launcher: Launcher, tmp_path: Path) -> None:
    app_dir = tmp_path / "site"
    app_dir.mkdir()
    (app_dir / "chdir_app.py").write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        "    body = os.getcwd().encode()\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])\n"
        "    return [body]\n")
    g = launcher.start(["chdir_app:app", "--chdir", str(app_dir), "-b", "127.0.0.1:0"], cwd=tmp_path)
    status, _, body = http_get(g.url())
    assert (status, body) == (200, str(app_dir).encode())

"""Real-process lifecycle tests: reload transactions, binary upgrade, hung and recycled
workers, --reload, --preload, USR1, crashes. Real signals, loopback, deadlines."""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.procs import Greenfork, Launcher, alive, children, cmdline, http_get, raw, wait_for

pytestmark = pytest.mark.timeout(90)


def generation(g: Greenfork) -> int:
    try:
        return int(g.reload_info()["generation"])
    except (OSError, ValueError):
        return 0


def body(g: Greenfork, path: str = "/", url: str | None = None) -> bytes:
    status, _, data = http_get(url or g.url(), path)
    assert status == 200, (status, data)
    return data


def read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def stop_pid(pid: int) -> None:
    """Stop a master we did not start directly (an upgraded one), by pid."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        wait_for(lambda: not alive(pid), 15, f"pid {pid} to exit")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)


def write_app(path: Path, text: str) -> None:
    path.write_text(
        "def app(environ, start_response):\n"
        f"    body = {text!r}.encode()\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])\n"
        "    return [body]\n")
    # a new mtime even on filesystems with coarse timestamps
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


# ------------------------------------------------------------------- HUP

def test_hup_with_a_broken_config_keeps_serving_and_says_why(launcher: Launcher, tmp_path: Path) -> None:
    cfg = tmp_path / "greenfork.toml"
    cfg.write_text('app = "testapp:app"\nbind = ["http://127.0.0.1:0"]\nworkers = 2\n')
    g = launcher.start(["-c", str(cfg)])
    before = set(g.workers())
    cfg.write_text('app = "testapp:app"\nbind = ["http://127.0.0.1:0"]\nworkers = "many"\n')
    g.signal(signal.SIGHUP)
    wait_for(lambda: "Reload failed, the current workers keep serving" in g.log(), 10, "the failure")
    assert "invalid value 'many' for workers" in g.log()
    assert set(g.workers()) == before and generation(g) == 1
    assert body(g) == b"hello\n"


def test_hup_with_an_app_that_no_longer_imports_keeps_the_old_generation(launcher: Launcher,
                                                                         tmp_path: Path) -> None:
    app = tmp_path / "myapp.py"
    write_app(app, "v1")
    g = launcher.start(["myapp:app", "-b", "127.0.0.1:0", "-w", "2"], cwd=tmp_path)
    before = set(g.workers())
    app.write_text("def app(environ, start_response):\n    return [b'x'  # a syntax error\n")
    g.signal(signal.SIGHUP)
    wait_for(lambda: "Reload failed, the current workers keep serving" in g.log(), 15, "the failure")
    log = g.log()
    assert "SyntaxError" in log and "failed to boot: exit code 4" in log
    assert body(g) == b"v1" and generation(g) == 1
    wait_for(lambda: set(g.workers()) == before, 10, "the failed generation to be gone")
    write_app(app, "v2")
    g.signal(signal.SIGHUP)
    wait_for(lambda: generation(g) == 3, 15, "generation 3 (2 was used by the failed reload)")
    wait_for(lambda: body(g) == b"v2", 10, "the new code")
    assert cmdline(g.pid) == "greenfork: master [myapp:app] gen 3"


def test_hup_binds_new_addresses_and_closes_removed_ones(launcher: Launcher, tmp_path: Path,
                                                         sock_dir: Path) -> None:
    cfg = tmp_path / "greenfork.toml"
    sock = sock_dir / "extra.sock"
    cfg.write_text('bind = ["http://127.0.0.1:0"]\n')
    g = launcher.start(["-c", str(cfg)])
    tcp = g.url()
    cfg.write_text(f'bind = ["http://127.0.0.1:0", "unix:{sock}"]\n')
    g.signal(signal.SIGHUP)
    wait_for(lambda: generation(g) == 2, 10, "generation 2")
    assert g.addresses == [tcp, f"unix:{sock}"]  # the unchanged address kept its port
    assert body(g, url=f"unix:{sock}") and body(g, url=tcp)
    assert f"Now listening on: unix:{sock}" in g.log()
    cfg.write_text(f'bind = ["unix:{sock}"]\n')
    g.signal(signal.SIGHUP)
    wait_for(lambda: generation(g) == 3, 10, "generation 3")
    assert g.addresses == [f"unix:{sock}"]
    wait_for(lambda: f"No longer listening on: {tcp}" in g.log(), 10, "the old address to close")
    host, port = tcp.split("://")[1].rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5).close()
    assert body(g, url=f"unix:{sock}")


def test_hup_whose_new_bind_fails_changes_nothing(launcher: Launcher, tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    taken = blocker.getsockname()[1]
    try:
        cfg = tmp_path / "greenfork.toml"
        cfg.write_text('bind = ["http://127.0.0.1:0"]\n')
        g = launcher.start(["-c", str(cfg)])
        cfg.write_text(f'bind = ["http://127.0.0.1:0", "http://127.0.0.1:{taken}"]\n')
        g.signal(signal.SIGHUP)
        wait_for(lambda: "Reload failed" in g.log(), 10, "the failure")
        assert f"http://127.0.0.1:{taken}: address already in use" in g.log()
        assert generation(g) == 1 and body(g)
    finally:
        blocker.close()


def answered_and_closed(s: socket.socket, worker: int) -> None:
    """A request on a kept connection of a draining worker: served by it, with Connection: close,
    and the connection closed after it."""
    s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head
    assert rest == str(worker).encode()


def test_idle_keepalive_connection_is_answered_while_its_worker_drains(launcher: Launcher,
                                                                       tmp_path: Path) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0"])
    old = g.workers()[0]
    host, port = "127.0.0.1", g.port()
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).endswith(str(old).encode())
        # a slow request keeps the old worker draining for a while
        mark = tmp_path / "inside"
        t = threading.Thread(target=lambda: raw(g.url(), f"GET /sleep?s=3&mark={mark} HTTP/1.1\r\n"
                                                           f"Host: x\r\n\r\n".encode()), daemon=True)
        t.start()
        wait_for(mark.exists, 10, "the slow request")
        g.signal(signal.SIGHUP)
        wait_for(lambda: cmdline(old).endswith("(draining)"), 15, "the old worker to drain")
        answered_and_closed(s, old)
    t.join(10)


def test_an_idle_connection_is_kept_longer_than_a_proxys_one_second_pool_ttl(launcher: Launcher) -> None:
    """A draining worker keeps an idle keep-alive connection for 2 s (DRAIN_IDLE_GRACE, plus up
    to a second until the sweep sees it), so a proxy that drops pooled connections idle for 1 s
    (Apache's ttl=1, examples/apache) never sends a request on one as it closes: 1.2 s into the
    drain it is still open, and a request on it is served."""
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0"])
    old = g.workers()[0]
    with socket.create_connection(("127.0.0.1", g.port()), timeout=10) as s:
        s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).endswith(str(old).encode())
        g.signal(signal.SIGHUP)
        wait_for(lambda: cmdline(old).endswith("(draining)"), 15, "the old worker to drain")
        # (the idle time is what is tested: nothing to wait for but the clock)
        readable, _, _ = select.select([s], [], [], 1.2)
        assert readable == [], "the draining worker closed an idle connection within 1.2 s"
        answered_and_closed(s, old)
    wait_for(lambda: not alive(old), 15, "the old worker to exit")


# ------------------------------------------------------------ binary upgrade

def upgrade(g: Greenfork, pidfile: Path) -> int:
    g.signal(signal.SIGUSR2)
    new = wait_for(lambda: (p := read_pid(pidfile)) != g.pid and p, 20, "the new master's pidfile")
    assert read_pid(Path(str(pidfile) + ".oldbin")) == g.pid
    assert new in children(g.pid)
    return int(new)


def test_usr2_then_term_hands_over_to_the_new_master(launcher: Launcher, tmp_path: Path,
                                                     sock_dir: Path) -> None:
    pidfile = tmp_path / "gf.pid"
    sock = sock_dir / "up.sock"
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "-b", f"unix:{sock}", "-w", "2",
                        "--pidfile", str(pidfile)])
    new = upgrade(g, pidfile)
    try:
        # the pidfile comes first; the addresses file once the new workers serve
        wait_for(lambda: generation(g) == 2, 20, "the new master's addresses file")
        assert g.info["pid"] == new and g.info["addresses"] == g.addresses
        assert "(old)" in cmdline(g.pid) and cmdline(new) == "greenfork: master [testapp:app] gen 2"
        g.signal(signal.SIGUSR2)
        wait_for(lambda: "USR2 refused: an upgrade is already pending" in g.log(), 10, "the refusal")
        g.signal(signal.SIGTERM)
        assert g.wait(20) == 0
        assert read_pid(pidfile) == new and not Path(str(pidfile) + ".oldbin").exists()
        assert g.addr_file.exists() and body(g, "/pid")
        assert sock.exists() and body(g, url=f"unix:{sock}")  # the old master left the file alone
        assert alive(new) and len(children(new)) == 2
        assert "send TERM" not in g.log()
    finally:
        stop_pid(new)
    assert not pidfile.exists() and not g.addr_file.exists() and not sock.exists()


def test_usr2_winch_then_the_new_master_dies_and_the_old_one_resumes(launcher: Launcher,
                                                                     tmp_path: Path) -> None:
    pidfile = tmp_path / "gf.pid"
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "-w", "2", "--pidfile", str(pidfile)])
    old_workers = set(g.workers())
    new = upgrade(g, pidfile)
    g.signal(signal.SIGWINCH)
    wait_for(lambda: set(children(g.pid)) == {new}, 15, "the old master's workers to stop")
    new_workers = set(children(new))
    assert int(body(g, "/pid")) in new_workers
    os.kill(new, signal.SIGKILL)  # the new version is broken
    wait_for(lambda: read_pid(pidfile) == g.pid, 10, "the pidfile back")
    wait_for(lambda: len([p for p in children(g.pid) if alive(p)]) == 2, 15, "workers again")
    wait_for(lambda: int(body(g, "/pid")) in children(g.pid), 15, "the old master serving")
    assert not (set(children(g.pid)) & old_workers)
    assert "takes over again" in g.log() and generation(g) == 1
    assert not Path(str(pidfile) + ".oldbin").exists()


def test_usr2_winch_then_hup_rolls_back(launcher: Launcher, tmp_path: Path) -> None:
    pidfile = tmp_path / "gf.pid"
    g = launcher.start(["-b", "127.0.0.1:0", "--pidfile", str(pidfile)])
    new = upgrade(g, pidfile)
    try:
        g.signal(signal.SIGWINCH)
        wait_for(lambda: set(children(g.pid)) == {new}, 15, "the old master's workers to stop")
        g.signal(signal.SIGHUP)
        wait_for(lambda: len(children(g.pid)) == 2, 15, "the old master's worker back")
        os.kill(new, signal.SIGTERM)
        wait_for(lambda: read_pid(pidfile) == g.pid, 15, "the old master's pidfile back")
        assert body(g)
    finally:
        stop_pid(new)


# -------------------------------------------------------------- hung, slow

def test_a_worker_blocking_its_hub_is_aborted_with_its_stack_and_replaced(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "--timeout", "2", "--abort-grace", "2"])
    victim = g.workers()[0]
    threading.Thread(target=lambda: raw(g.url(), b"GET /hog?s=60 HTTP/1.1\r\nHost: x\r\n\r\n", timeout=30),
                     daemon=True).start()
    wait_for(lambda: "is hung" in g.log(), 15, "the hung-worker log line")
    wait_for(lambda: victim not in g.workers() and len(g.workers()) == 1, 15, "a replacement")
    log = g.log()
    assert "in hog_the_hub" in log  # the blocking function, named in the stack dump
    assert "Worker 0 greenlets:" in log
    assert body(g) == b"hello\n"


def test_request_timeout_answers_504_and_the_worker_lives_on(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "--request-timeout", "1"])
    worker = g.workers()[0]
    result: dict[str, object] = {}
    started = time.monotonic()
    t = threading.Thread(target=lambda: result.update(r=http_get(g.url(), "/sleep?s=10")))
    t.start()
    assert body(g) == b"hello\n"  # another connection, served meanwhile
    t.join(10)
    status, headers, _ = result["r"]  # type: ignore[misc]
    assert status == 504 and headers.get("connection") == "close"
    assert time.monotonic() - started < 5
    assert g.workers() == [worker]
    assert "exceeded --request-timeout" in g.log()


# ---------------------------------------------------------------- recycling

def test_max_requests_recycles_without_failing_a_request(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "--max-requests", "5"])
    first = g.workers()[0]
    seen: set[int] = set()

    def recycled() -> bool:
        seen.add(int(body(g, "/pid")))
        return len(seen) > 1

    wait_for(recycled, 20, "a second worker")
    wait_for(lambda: first not in g.workers(), 10, "the first worker to exit")
    assert "reached --max-requests" in g.log() or "served 5 requests" in g.log()


def test_max_worker_memory_recycles_a_bloated_worker(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "--max-worker-memory", "96MiB"])
    first = g.workers()[0]
    assert body(g, "/grow?mib=160") == b"grown\n"
    wait_for(lambda: first not in g.workers() and len(g.workers()) == 1, 30, "the bloated worker replaced")
    assert "over --max-worker-memory" in g.log()
    assert body(g)


def test_max_worker_lifetime(launcher: Launcher) -> None:
    g = launcher.start(["-b", "127.0.0.1:0", "--max-worker-lifetime", "2"])
    first = g.workers()[0]
    wait_for(lambda: first not in g.workers() and len(g.workers()) == 1, 15, "a younger worker")
    assert "reached --max-worker-lifetime" in g.log()


# ------------------------------------------------------------ --reload, --preload

def test_reload_serves_an_edited_file_and_survives_a_broken_one(launcher: Launcher, tmp_path: Path) -> None:
    app = tmp_path / "devapp.py"
    write_app(app, "v1")
    g = launcher.start(["devapp:app", "-b", "127.0.0.1:0", "--reload"], cwd=tmp_path)
    time.sleep(1.2)  # the watcher takes its first snapshot within a second of READY
    write_app(app, "v2")
    edited = time.monotonic()
    wait_for(lambda: body(g) == b"v2", 10, "the edited code")
    took = time.monotonic() - edited
    print(f"--reload latency {took:.2f} s")
    assert took < 2.0, took
    before = generation(g)
    app.write_text("def app(environ, start_response):\n    raise ImportError('half-edited'\n")
    wait_for(lambda: "Reload failed" in g.log(), 10, "the failed reload")
    assert "SyntaxError" in g.log() and body(g) == b"v2"
    write_app(app, "v3")
    wait_for(lambda: body(g) == b"v3", 10, "the fixed code")
    assert generation(g) > before


def test_preload_hup_reexecs_the_master_with_the_new_code(launcher: Launcher, tmp_path: Path) -> None:
    app = tmp_path / "preapp.py"
    write_app(app, "v1")
    g = launcher.start(["preapp:app", "-b", "127.0.0.1:0", "--preload", "-w", "2"], cwd=tmp_path)
    assert body(g) == b"v1"
    write_app(app, "v2")
    g.signal(signal.SIGHUP)
    assert g.wait(30) == 0  # the old master hands over and exits by itself
    info = g.reload_info()
    new = int(info["pid"])
    try:
        assert new != g.pid and info["generation"] == 2 and info["addresses"] == g.addresses
        assert body(g) == b"v2"
        assert "Reload: the new master" in g.log()
    finally:
        stop_pid(new)


# ----------------------------------------------------------- USR1, crashes

def test_usr1_reopens_moved_log_files_everywhere(launcher: Launcher, tmp_path: Path) -> None:
    err, acc = tmp_path / "error.log", tmp_path / "access.log"
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "--error-logfile", str(err),
                        "--access-logfile", str(acc)], boot_log=err)
    body(g, "/pid")
    wait_for(lambda: acc.exists() and "/pid" in acc.read_text(), 5, "the first access line")
    err.rename(tmp_path / "error.log.1")
    acc.rename(tmp_path / "access.log.1")
    g.signal(signal.SIGUSR1)
    wait_for(err.exists, 5, "the master to reopen its log")
    wait_for(lambda: http_get(g.url(), "/after")[0] == 200 and acc.exists(), 5, "the worker to reopen")
    wait_for(lambda: "/after" in acc.read_text(), 5, "an access line in the new file")
    assert http_get(g.url(), "/boom")[0] == 500
    wait_for(lambda: "secret-detail" in err.read_text(), 5, "a worker's error in the new file")
    assert "/after" not in (tmp_path / "access.log.1").read_text()


def test_a_request_that_kills_its_worker_is_survived(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "-w", "2"])
    for _ in range(3):
        before = set(g.workers())
        assert raw(g.url(), b"GET /exit HTTP/1.1\r\nHost: x\r\n\r\n") == b""
        wait_for(lambda b=before: len(g.workers()) == 2 and set(g.workers()) != b, 10, "a replacement")
    assert g.proc.poll() is None
    assert g.log().count("died: exit code 1") == 3
    assert body(g) == b"hello\n"


def test_a_worker_ready_then_killed_before_the_master_looks_died_not_failed_to_boot(
        launcher: Launcher, tmp_path: Path) -> None:
    """A worker that reports READY and is killed by the first request it accepts, both before the
    master's next look (here the master is stopped meanwhile; under load a busy turn of its loop
    will do), died: the master reads what the worker sent before handling its exit. Read the other
    way round it "failed to boot", and its slot was backed off as a boot failure's."""
    (tmp_path / "slowfork.py").write_text("import time\n\n\ndef post_fork(server, worker):\n"
                                          "    time.sleep(0.5)  # (time to stop the master first)\n")
    args = ["testapp:app", "-b", "127.0.0.1:0", "-w", "1", "--hook", "post_fork=slowfork:post_fork"]
    g = launcher.start(args, env={"PYTHONPATH": str(tmp_path)}, timeout=30)
    (first,) = g.workers()
    assert raw(g.url(), b"GET /exit HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    replacement = wait_for(lambda: [w for w in g.workers() if w != first], 10, "a replacement")[0]
    os.kill(g.pid, signal.SIGSTOP)
    try:
        host, port = g.url().split("://")[1].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as c:  # (the listen queue holds it)
            c.sendall(b"GET /exit HTTP/1.1\r\nHost: x\r\n\r\n")

            def zombie() -> bool:
                with open(f"/proc/{replacement}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] == "Z"

            wait_for(zombie, 15, "the replacement to boot, take the request and exit")
    finally:
        os.kill(g.pid, signal.SIGCONT)
    wait_for(lambda: g.log().count("died: exit code 1") == 2, 10, "the second death logged")
    assert "failed to boot" not in g.log()
    wait_for(lambda: len(g.workers()) == 1 and replacement not in g.workers(), 15, "a third worker")
    assert http_get(g.url())[0] == 200


def test_reload_extra_file_globs_trigger_a_reload(launcher: Launcher, tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    page = tmp_path / "templates" / "page.html"
    page.write_text("<p>1</p>")
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "--reload", "--reload-extra-file",
                        str(tmp_path / "templates" / "**" / "*.html")])
    time.sleep(1.2)  # the watcher's first snapshot
    page.write_text("<p>2</p>")
    st = page.stat()
    os.utime(page, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    wait_for(lambda: generation(g) == 2, 10, "a reload for the template")
    assert "page.html; asking the master to reload" in g.log()


def test_hups_during_a_reload_coalesce_into_one_more(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "-w", "2"])
    g.signal(signal.SIGHUP)
    wait_for(lambda: "starting generation 2" in g.log(), 10, "the first reload to start")
    g.signal(signal.SIGHUP)
    g.signal(signal.SIGHUP)
    wait_for(lambda: generation(g) == 3, 15, "generation 3")
    assert "one more reload will follow this one" in g.log()
    wait_for(lambda: len(g.workers()) == 2, 10, "two workers")
    assert "starting generation 4" not in g.log()


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGTERM])
def test_quit_is_quick_and_term_waits(launcher: Launcher, tmp_path: Path, sig: int) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "--graceful-timeout", "30"])
    mark = tmp_path / "inside"
    result: dict[str, bytes] = {}
    t = threading.Thread(target=lambda: result.update(r=raw(g.url(), f"GET /sleep?s=2&mark={mark} HTTP/1.1"
                                                                     f"\r\nHost: x\r\n\r\n".encode())))
    t.start()
    wait_for(mark.exists, 10, "the request to reach the app")
    started = time.monotonic()
    g.signal(sig)
    assert g.wait(15) == 0
    t.join(10)
    took = time.monotonic() - started
    if sig == signal.SIGQUIT:
        assert took < 1.5 and result["r"] == b""
    else:
        assert took >= 1.0 and result["r"].endswith(b"slept\n")


def test_the_watchdog_dumps_a_hub_stuck_in_one_c_call(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "--timeout", "2", "--abort-grace", "2"])
    victim = g.workers()[0]
    threading.Thread(target=lambda: raw(g.url(), b"GET /backtrack HTTP/1.1\r\nHost: x\r\n\r\n", timeout=30),
                     daemon=True).start()
    wait_for(lambda: victim not in g.workers() and len(g.workers()) == 1, 20, "a replacement")
    log = g.log()
    # faulthandler's watchdog thread dumps without help from the blocked main thread, before
    # the master's SIGABRT (which a hub stuck in C code that never checks signals ignores)
    watchdog = log.index("Timeout (0:00:01.5")
    assert watchdog < log.index("is hung")
    assert "in backtrack_forever" in log[watchdog:log.index("is hung")]

"""Running as a daemon: -D, the pidfile and its lock, --user/--group, --umask."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import APPS, Launcher, alive, children, http_get, wait_for

pytestmark = pytest.mark.timeout(60)


def run_daemon(args: list[str], launcher: Launcher) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "greenfork.master", *args], cwd=APPS, env=launcher.env(),
                          capture_output=True, text=True, timeout=40)


def read_pid(path: Path) -> int:
    return int(path.read_text())


def kill_tree(pid: int) -> None:
    """Teardown for a daemon (not our child, not a group leader): it and its workers, by pid."""
    for p in [pid, *children(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_daemon_returns_once_ready_and_term_removes_the_pidfile(launcher: Launcher, tmp_path: Path) -> None:
    pidfile, access = tmp_path / "gf.pid", tmp_path / "access.log"
    addr, err = tmp_path / "addr.json", tmp_path / "error.log"
    r = run_daemon(["testapp:app", "-D", "-p", str(pidfile), "--access-logfile", str(access),
                    "--error-logfile", str(err), "-b", "127.0.0.1:0", "--addresses-file", str(addr)],
                   launcher)
    assert r.returncode == 0, r.stderr
    pid = read_pid(pidfile)
    try:
        import json

        info = json.loads(addr.read_text())
        assert info["pid"] == pid  # the pidfile names the master
        # detached: a new session, and not its leader, so it can never regain a terminal
        assert os.getsid(pid) not in (os.getsid(0), pid)
        assert http_get(info["addresses"][0], "/pid")[0] == 200  # answering at once
        # logrotate: move the access log, USR1, a new file appears
        wait_for(lambda: access.exists() and access.stat().st_size > 0, 5, "the first access log line")
        access.rename(tmp_path / "access.log.1")
        os.kill(pid, signal.SIGUSR1)
        wait_for(lambda: http_get(info["addresses"][0], "/pid")[0] == 200 and access.exists()
                 and access.stat().st_size > 0, 10, "a reopened access log")
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid), 15, "the daemon to exit")
        assert not pidfile.exists()
    finally:
        kill_tree(pid)


def test_daemon_start_failure_is_reported_by_the_command(launcher: Launcher, tmp_path: Path) -> None:
    busy = launcher.start(["-b", "127.0.0.1:0"])
    r = run_daemon(["-D", "-b", f"127.0.0.1:{busy.port()}", "-p", str(tmp_path / "x.pid")], launcher)
    assert r.returncode == 2
    assert "address already in use" in r.stderr
    r = run_daemon(["no_such_app:app", "-D", "-b", "127.0.0.1:0"], launcher)
    assert r.returncode == 4 and "no module named 'no_such_app'" in r.stderr


def test_pidfile_of_a_live_server_refuses_a_second_start(launcher: Launcher, tmp_path: Path) -> None:
    pidfile = tmp_path / "gf.pid"
    g = launcher.start(["-b", "127.0.0.1:0", "-p", str(pidfile)])
    assert read_pid(pidfile) == g.pid
    second = launcher.spawn(["-b", "127.0.0.1:0", "-p", str(pidfile)], addresses_file=False)
    assert second.wait(20) == 2
    assert f"already running with pid {g.pid}" in second.log()
    assert read_pid(pidfile) == g.pid  # untouched
    g.signal(signal.SIGTERM)
    assert g.wait(15) == 0
    assert not pidfile.exists()


def test_stale_pidfile_is_replaced(launcher: Launcher, tmp_path: Path) -> None:
    pidfile = tmp_path / "gf.pid"
    pidfile.write_text("999999\n")  # a dead master's leftover: nobody holds its lock
    g = launcher.start(["-b", "127.0.0.1:0", "-p", str(pidfile)])
    assert read_pid(pidfile) == g.pid


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
def test_workers_run_as_user_while_master_binds(launcher: Launcher, sock_dir: Path,
                                                world_python: str) -> None:
    nobody = pwd.getpwnam("nobody")
    sock = sock_dir / "u.sock"
    os.chmod(sock_dir, 0o755)
    # The checkout may sit under a directory only root can enter (a 0700 temp dir): the app
    # the unprivileged workers import must be somewhere they can read.
    site = sock_dir / "site"
    site.mkdir(mode=0o755)
    shutil.copy(APPS / "testapp.py", site / "testapp.py")
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "-b", f"unix:{sock}", "--user", "nobody",
                        "--umask", "027"], python=world_python, cwd=site)
    for w in g.workers():
        assert os.stat(f"/proc/{w}").st_uid == nobody.pw_uid
    assert os.stat(f"/proc/{g.pid}").st_uid == 0
    assert sock.stat().st_uid == nobody.pw_uid
    assert http_get(g.url(), "/pid")[0] == 200
    assert "Workers will run as root" not in g.log()


def test_root_without_user_warns_and_unknown_user_is_a_config_error(launcher: Launcher) -> None:
    bad = launcher.spawn(["--user", "no-such-user-here"], addresses_file=False)
    assert bad.wait(20) == 2 and "no such user 'no-such-user-here'" in bad.log()
    if os.getuid() == 0:
        g = launcher.start(["-b", "127.0.0.1:0"])
        assert "Workers will run as root" in g.log()


def test_shutdown_delay_reports_not_ready_while_still_serving(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "--metrics-bind", "http://127.0.0.1:0",
                        "--shutdown-delay", "2"])
    metrics = g.reload_info()["metrics"]
    assert http_get(metrics, "/readyz")[0] == 200
    started = time.monotonic()
    g.signal(signal.SIGTERM)
    wait_for(lambda: http_get(metrics, "/readyz")[0] == 503, 5, "/readyz to report not ready")
    assert http_get(g.url(), "/pid")[0] == 200  # the app still answers: endpoints go first
    assert http_get(metrics, "/livez")[0] == 200
    assert g.wait(20) == 0
    assert time.monotonic() - started >= 2.0
    assert "--shutdown-delay" in g.log()


def test_master_adopts_and_reaps_what_the_app_orphans(launcher: Launcher) -> None:
    """PID-1 duty outside a container too: the master is its tree's subreaper."""
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0"])
    status, _, body = http_get(g.url(), "/orphan")
    orphan = int(body)

    def parent(pid: int) -> int:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])

    try:
        assert status == 200 and parent(orphan) == g.pid  # reparented to the master, not to init
    finally:
        wait_for(lambda: not os.path.exists(f"/proc/{orphan}"), 10, "the orphan to be reaped")
    assert alive(g.pid) and http_get(g.url(), "/pid")[0] == 200  # a stray exit changes nothing

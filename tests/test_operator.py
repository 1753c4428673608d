"""An operator's first hour, with real processes: a daemon that cannot start says why, a
pidfile refusal says nothing else first, a HUP sent while starting is applied once ready,
--check-config shows modes as modes, a bad address is named alone, a low port says how."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import APPS, Launcher, alive, children, http_get, wait_for

pytestmark = pytest.mark.timeout(90)


def greenfork(args: list[str], launcher: Launcher, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "greenfork.master", *args], cwd=kw.pop("cwd", APPS),
                          env=launcher.env(), capture_output=True, text=True, timeout=40, **kw)  # type: ignore[call-overload]


def kill_tree(pid: int) -> None:
    for p in [pid, *children(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------ item 7: -D and the pidfile

def test_a_daemon_with_an_error_log_prints_why_it_could_not_start(launcher: Launcher, tmp_path: Path) -> None:
    err = tmp_path / "error.log"
    r = greenfork(["no_such_app:app", "-D", "-b", "127.0.0.1:0", "--error-logfile", str(err)], launcher)
    assert r.returncode == 4
    assert "no module named 'no_such_app'" in r.stderr  # on the terminal, not only in the file
    assert "failed to boot (exit code 4); stopping" in r.stderr
    assert "no module named 'no_such_app'" in err.read_text()
    assert "Now listening on" not in r.stderr  # only errors are echoed


def test_a_daemon_that_starts_prints_nothing_and_keeps_errors_in_its_file(launcher: Launcher,
                                                                          tmp_path: Path) -> None:
    err, pidfile = tmp_path / "error.log", tmp_path / "gf.pid"
    r = greenfork(["testapp:app", "-D", "-b", "127.0.0.1:0", "-p", str(pidfile), "--error-logfile", str(err)],
                  launcher)
    assert r.returncode == 0 and r.stderr == ""
    pid = int(pidfile.read_text())
    try:
        url = next(line.rsplit(" ", 1)[1] for line in err.read_text().splitlines()
                   if "Now listening on" in line)
        assert http_get(url, "/boom")[0] == 500  # an error after start-up: in the file only
        wait_for(lambda: "secret-detail" in err.read_text(), 5, "the app's error in the log")
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid), 15, "the daemon to exit")
    finally:
        kill_tree(pid)


@pytest.mark.parametrize("daemon", [False, True])
def test_a_start_refused_by_the_pidfile_says_so_and_nothing_else(launcher: Launcher, tmp_path: Path,
                                                                 daemon: bool) -> None:
    pidfile = tmp_path / "gf.pid"
    g = launcher.start(["-b", "127.0.0.1:0", "-p", str(pidfile)])
    err = tmp_path / "second.log"
    # the same fixed port too: the pidfile is the reason given, not "address already in use"
    args = ["-b", f"127.0.0.1:{g.port()}", "-p", str(pidfile), "--error-logfile", str(err)]
    r = greenfork([*args, "-D"] if daemon else args, launcher)
    assert r.returncode == 2
    assert f"greenfork is already running with pid {g.pid}" in r.stderr
    assert "Now listening on" not in r.stderr + (err.read_text() if err.exists() else "")
    assert int(pidfile.read_text()) == g.pid and http_get(g.url())[0] == 200


def test_the_python_api_takes_the_pidfile_before_it_says_it_listens(launcher: Launcher,
                                                                     tmp_path: Path) -> None:
    pidfile = tmp_path / "gf.pid"
    g = launcher.start(["-b", "127.0.0.1:0", "-p", str(pidfile)])
    code = ("import logging, sys\n"
            "logging.basicConfig(stream=sys.stderr, level=logging.INFO)\n"
            "from greenfork.master import Server\n"
            f"s = Server(bind=['http://127.0.0.1:0'], pidfile={str(pidfile)!r})\n"
            "try:\n    s.start(timeout=20)\nexcept RuntimeError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], env=launcher.env(), capture_output=True, text=True,
                       timeout=40)
    assert "greenfork did not become ready (exit code 2)" in r.stdout
    assert f"already running with pid {g.pid}" in r.stderr and "Now listening on" not in r.stderr


# ------------------------------------------------------------------ item 8: HUP while starting

def test_a_hup_while_starting_is_applied_once_the_server_is_ready(launcher: Launcher, tmp_path: Path) -> None:
    (tmp_path / "slowapp.py").write_text(
        "import time\n"
        "time.sleep(1.5)  # a slow import: the deploy script's HUP arrives before READY\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', '2')])\n"
        "    return [b'ok']\n")
    g = launcher.spawn(["slowapp:app", "-b", "127.0.0.1:0", "-w", "2"], cwd=tmp_path)
    wait_for(g.addr_file.exists, 20, "the addresses file")
    assert "Booted" not in g.log()
    g.signal(signal.SIGHUP)  # as soon as the addresses file appears
    wait_for(lambda: g.reload_info()["generation"] == 2, 30, "generation 2")
    log = g.log()
    assert "HUP while starting: the reload runs once the server is ready" in log
    assert log.index("Booted 2 worker(s)") < log.index("Reloading: starting generation 2")
    assert "HUP ignored" not in log
    wait_for(lambda: len(g.workers()) == 2, 15, "the first generation to retire")
    assert http_get(g.url())[0] == 200


# ------------------------------------------------------------------ item 9: polish

def test_check_config_shows_modes_in_octal(launcher: Launcher) -> None:
    r = greenfork(["--umask", "022", "--unix-socket-mode", "600", "--check-config"], launcher)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "umask = 0o022  (command line --umask)" in lines
    assert "unix_socket_mode = 0o600  (command line --unix-socket-mode)" in lines


@pytest.mark.parametrize("how", ["flags", "env", "file"])
def test_a_bad_address_is_named_alone(launcher: Launcher, tmp_path: Path, how: str) -> None:
    env = launcher.env()
    args = ["--check-config"]
    if how == "flags":
        args += ["-b", "127.0.0.1:0", "-b", "ftp://x:1", "-b", "[::1]:0"]
    elif how == "env":
        env["GREENFORK_BIND"] = "127.0.0.1:0,ftp://x:1,[::1]:0"
    else:
        (tmp_path / "greenfork.toml").write_text('bind = ["127.0.0.1:0", "ftp://x:1", "[::1]:0"]\n')
    r = subprocess.run([sys.executable, "-m", "greenfork.master", *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=40)
    assert r.returncode == 2
    line, = r.stderr.splitlines()
    assert line.startswith("greenfork: error: invalid value 'ftp://x:1' for bind (from ")
    assert "unknown scheme 'ftp'" in line and "127.0.0.1:0" not in line and "::1" not in line


def test_a_low_port_as_a_user_says_how_to_bind_it(launcher: Launcher, sock_dir: Path,
                                                  request: pytest.FixtureRequest) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to start the command as another user")
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        if int(f.read()) <= 80:
            pytest.skip("this host lets anyone bind port 80")
    os.chmod(sock_dir, 0o755)
    python = sys.executable
    try:
        probe = subprocess.run([python, "-c", "import greenfork.master.cli"], user="nobody", group="nogroup",
                               extra_groups=[], cwd=sock_dir, capture_output=True, timeout=30)
        usable = probe.returncode == 0
    except PermissionError:
        usable = False
    if not usable:  # this interpreter lives where nobody may not read it
        python = request.getfixturevalue("world_python")
    g = launcher.spawn(["-b", "127.0.0.1:80"], addresses_file=False, python=python, cwd=sock_dir,
                       user="nobody", group="nogroup", extra_groups=[])
    assert g.wait(20) == 2
    out = g.log()
    assert "Failed to bind to address http://127.0.0.1:80: permission denied (ports below" in out
    for way in ("start greenfork as root with --user", "CAP_NET_BIND_SERVICE", "socket activation"):
        assert way in out


# ------------------------------------------------------------------ issue 19: HUP obeys `reloadable`

def test_a_hup_applies_what_it_can_and_names_what_needs_a_restart(launcher: Launcher, tmp_path: Path) -> None:
    cfg = tmp_path / "greenfork.toml"
    cfg.write_text('app = "testapp:app"\nbind = ["http://127.0.0.1:0"]\nworkers = 1\n')
    g = launcher.spawn(["-c", str(cfg)])  # not start(): its -w would win over the file
    wait_for(lambda: "Booted 1 worker(s)" in g.log(), 20, "the first worker")
    g.reload_info()
    cfg.write_text('app = "testapp:app"\nbind = ["http://127.0.0.1:0"]\nworkers = 2\nbacklog = 100\n'
                   'pidfile = "/nonexistent/gf.pid"\n')
    g.signal(signal.SIGHUP)
    wait_for(lambda: g.reload_info()["generation"] == 2, 15, "generation 2")
    wait_for(lambda: len(g.workers()) == 2, 15, "two workers")  # the reloadable change applies
    log = g.log()
    assert ("Reload: backlog changed to 100, which a HUP does not apply (only a restart or a binary "
            "upgrade (USR2) does); keeping 2048") in log
    assert "Reload: pidfile changed to '/nonexistent/gf.pid'" in log
    assert not Path("/nonexistent/gf.pid").exists() and http_get(g.url())[0] == 200

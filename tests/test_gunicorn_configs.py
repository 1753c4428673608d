"""gunicorn deployments moved to greenfork by renaming the binary (issue 16): three realistic
gunicorn.conf.py files used unchanged (tests/gunicorn/*), the command lines of gunicorn's own
documentation, and its systemd units (examples/systemd/from-gunicorn/)."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests import tlscerts
from tests.procs import APPS, Greenfork, Launcher, http_get, kill_tree, wait_for

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = ROOT / "tests" / "gunicorn"
UNITS = ROOT / "examples" / "systemd" / "from-gunicorn"


def booted(launcher: Launcher, args: list[str], cwd: Path, env: dict[str, str] | None = None,
           python: str = sys.executable, workers: int | None = None,
           boot_log: Path | None = None) -> Greenfork:
    """Start like launcher.start(), without adding -w (the config file says how many)."""
    g = launcher.spawn(args, cwd=cwd, env=env, python=python)

    def ready() -> bool:
        if g.proc.poll() is not None:
            raise AssertionError(f"greenfork exited with {g.proc.returncode}:\n{g.log()}")
        return g.addr_file.exists() and "Booted" in (boot_log.read_text() if boot_log else g.log())

    wait_for(ready, 40, "greenfork to boot")
    g.reload_info()
    if workers is not None:
        wait_for(lambda: len(g.workers()) == workers, 10, f"{workers} workers")
    return g


def get_json(url: str, path: str = "/") -> dict[str, object]:
    status, _, body = http_get(url, path)
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


# ------------------------------------------------------------------ dbapp: SQLAlchemy in post_fork


def test_sqlalchemy_pool_is_reset_in_post_fork(launcher: Launcher, tmp_path: Path) -> None:
    """`gunicorn dbapp:app` with dbapp/gunicorn.conf.py: preloaded, and post_fork disposes of the
    engine's pool, so every worker opens its own connections."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/dbapp.sqlite"}
    g = booted(launcher, ["dbapp:app", "-b", "127.0.0.1:0", "-w", "2"], PROJECTS / "dbapp", env, workers=2)
    workers = set(g.workers())
    seen = set()
    for _ in range(12):
        got = get_json(g.url())
        assert got["worker"] in workers
        assert got["connection_opened_by"] == got["worker"]  # not the master's inherited connection
        seen.add(got["worker"])
    log = g.log()
    for pid in workers:
        assert f"Worker spawned (pid: {pid}): database pool reset" in log
    assert '"GET / HTTP/1.1" 200' in log  # accesslog = "-"
    g.signal(signal.SIGTERM)
    assert g.wait(20) == 0

    # the control: the same preloaded app without the hook hands the master's connection on
    control = tmp_path / "greenfork.toml"
    control.write_text('preload = true\n')
    c = booted(launcher, ["-c", str(control), "dbapp:app", "-b", "127.0.0.1:0", "-w", "1"],
               PROJECTS / "dbapp", env, workers=1)
    assert get_json(c.url())["connection_opened_by"] == c.pid


# ------------------------------------------------------------------ timing: pre/post_request, worker_abort


def test_requests_are_timed_and_a_hung_worker_logs_its_threads(launcher: Launcher) -> None:
    """`gunicorn -c gunicorn.conf.py timingapp:app` (timeout lowered on the command line)."""
    g = booted(launcher, ["-c", "gunicorn.conf.py", "timingapp:app", "-b", "127.0.0.1:0", "-t", "3"],
               PROJECTS / "timing", workers=2)
    for ms in (50, 300):
        assert http_get(g.url(), f"/slow?ms={ms}")[0] == 200
    line = re.compile(r"timing GET /slow -> 200 OK in ([0-9.]+) ms \(worker (\d+), request (\d+)\)")
    found = wait_for(lambda: len(line.findall(g.log())) >= 2 and line.findall(g.log()), 10, "timing lines")
    durations = sorted(float(d) for d, _, _ in found)
    assert 50 <= durations[0] < 300 <= durations[1] < 2000
    assert {int(pid) for _, pid, _ in found} <= set(g.workers())

    def hang() -> None:
        try:
            http_get(g.url(), "/hang", timeout=30)
        except OSError:
            pass

    before = set(g.workers())
    threading.Thread(target=hang, daemon=True).start()
    aborted = re.compile(r"worker (\d+) aborted: no heartbeat for 3.0 s")
    wait_for(lambda: aborted.search(g.log()), 20, "worker_abort's line")
    match = aborted.search(g.log())
    assert match is not None
    victim = int(match.group(1))
    assert victim in before
    hook_output = g.log()[match.end():]
    # the hook's own dump: each thread's stack, the hung one in the app's busy loop (gevent's
    # monkey-patched threading does not know the main thread's real ident: its name reads "?")
    assert re.search(r"thread \S+ \(\d+\):\n", hook_output)
    assert 'timingapp.py", line' in hook_output and "in spin_without_yielding" in hook_output
    wait_for(lambda: len(g.workers()) == 2 and victim not in g.workers(), 15, "its replacement")
    assert http_get(g.url(), "/slow?ms=1")[0] == 200
    g.signal(signal.SIGTERM)
    assert g.wait(20) == 0


# ------------------------------------------------------------------ shop: PasteDeploy, raw_env, user/group


@pytest.fixture
def paste_python(world_python: str) -> str:
    """The world-readable interpreter (workers run as nobody), with PasteDeploy."""
    probe = subprocess.run([world_python, "-c", "import paste.deploy"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        subprocess.run([sys.executable, "-m", "pip", "--python", world_python, "install", "-q",
                        "--disable-pip-version-check", "pastedeploy>=3"], check=True, timeout=600)
    return world_python


@pytest.mark.skipif(os.getuid() != 0, reason="user and group need root")
def test_paste_app_with_raw_env_user_group_and_a_unix_socket(launcher: Launcher, sock_dir: Path,
                                                            paste_python: str) -> None:
    """`gunicorn -c gunicorn.conf.py --paste production.ini` in shop/, the socket where nginx finds it."""
    os.chmod(sock_dir, 0o755)
    site = sock_dir / "shop"
    shutil.copytree(PROJECTS / "shop", site)
    for path in [site, *site.iterdir()]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    sock = sock_dir / "shop.sock"
    pidfile = sock_dir / "shop.pid"
    env = {"SHOP_BIND": f"unix:{sock}", "SHOP_PIDFILE": str(pidfile)}
    g = booted(launcher, ["-c", "gunicorn.conf.py", "--paste", "production.ini"], site, env,
               python=paste_python, workers=2)
    nobody = pwd.getpwnam("nobody")
    st = sock.stat()
    assert stat.S_IMODE(st.st_mode) == 0o770  # umask = 0o007, as gunicorn applies it to its sockets
    assert st.st_uid == nobody.pw_uid
    got = get_json(f"unix:{sock}")
    assert got == {"title": "The Shop", "items": 3, "env": "production", "currency": "EUR",
                   "uid": nobody.pw_uid, "gid": got["gid"], "ini": "production.ini"}
    import grp

    assert got["gid"] == grp.getgrnam("nogroup").gr_gid
    for pid in g.workers():
        assert os.stat(f"/proc/{pid}").st_uid == nobody.pw_uid
    assert pidfile.read_text().strip() == str(g.pid)
    # production.ini's [loggers]: the app's logger writes through the ini's handler and format
    wait_for(lambda: re.search(r"INFO  \[shop\]\[\d+\] shop request /", g.log()), 10, "the app's log line")
    assert "GET / HTTP/1.1" in g.log()  # accesslog = "-"
    g.signal(signal.SIGTERM)
    assert g.wait(20) == 0
    assert not pidfile.exists()


def test_gunicorns_own_example_config_runs(launcher: Launcher, tmp_path: Path) -> None:
    """gunicorn's examples/example_config.py, unchanged: two warnings (sync workers, ssl_context),
    and its hooks log what they log under gunicorn."""
    shutil.copy(APPS / "gunicornapps.py", tmp_path / "gunicornapps.py")
    conf = str(PROJECTS / "example_config.py")
    g = booted(launcher, ["-c", conf, "gunicornapps:app", "-b", "127.0.0.1:0", "--log-level", "debug"],
               tmp_path, workers=1)
    log = g.log()
    warnings = re.findall(r"greenfork: warning: (.*)", log)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("example_config.py: worker_class = 'sync': greenfork runs the application")
    assert warnings[1].startswith("example_config.py: ssl_context = ssl_context() is ignored")
    (worker,) = g.workers()
    assert f"Worker spawned (pid: {worker})" in log  # post_fork
    # when_ready runs just after "Booted" is logged, which is what booted() waits for
    wait_for(lambda: "Server is ready. Spawning workers" in g.log(), 10, "when_ready's log line")
    got = get_json(g.url())
    assert (got["app"], got["spam"]) == ("app", "eggs")  # its raw_env
    g.signal(signal.SIGINT)
    assert g.wait(20) == 0
    log = g.log()
    assert "worker received INT or QUIT signal" in log  # worker_int
    assert "# Thread: " in log and 'File: "' in log  # its stack dump, at debug level


# ------------------------------------------------------------------ edge: TLS, HTTP/2, PROXY v2


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", "10", *args],
                          capture_output=True, text=True, timeout=30)


def test_tls_http2_and_proxy_protocol_behind_a_tcp_load_balancer(
        launcher: Launcher, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`gunicorn -c gunicorn.conf.py edgeapp:app` in edge/: its certfile makes its address TLS (as
    gunicorn's does), it offers HTTP/2, and requires PROXY v2 from its load balancer, here HAProxy
    passing TLS through (examples/haproxy/greenfork-passthrough.cfg); curl is the client."""
    from tests.test_behind_proxies import CLIENT, Proxy, example, free_port, start, tool

    certs = tlscerts.certs(tmp_path_factory)
    env = {"EDGE_CERTFILE": str(certs.server.cert), "EDGE_KEYFILE": str(certs.server.key)}
    g = booted(launcher, ["-c", "gunicorn.conf.py", "edgeapp:app", "-b", "127.0.0.1:0"], PROJECTS / "edge",
               env, workers=2)
    assert g.url().startswith("https://127.0.0.1:")
    assert "certfile is set, so https://127.0.0.1:0 serves TLS, as gunicorn serves every address" in g.log()
    assert "greenfork: warning" not in g.log()
    port = free_port()
    config = example("haproxy/greenfork-passthrough.cfg", {
        "bind :443": f"bind 127.0.0.1:{port}", "127.0.0.1:8443": f"127.0.0.1:{g.port()}"})
    (tmp_path / "haproxy.cfg").write_text(config)
    haproxy: list[Proxy] = []
    try:
        start(haproxy, "haproxy", [tool("haproxy", "haproxy"), "-db", "-f", str(tmp_path / "haproxy.cfg")],
              tmp_path / "haproxy.log", port)
        url = f"https://127.0.0.1:{port}/"
        # a client: HTTP/2 by ALPN over greenfork's own TLS; its address from HAProxy's PROXY header;
        # its own X-Forwarded-For not applied (forwarded_allow_ips names 127.0.0.1 only)
        out = curl("--http2", "--cacert", str(certs.ca), "--interface", CLIENT,
                   "-H", "X-Forwarded-For: 198.51.100.9", url)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"remote_addr": CLIENT, "scheme": "https", "protocol": "HTTP/2",
                                          "ssl_protocol": "TLSv1.3"}
        # the trusted sidecar on 127.0.0.1: its X-Forwarded-For is applied, over HTTP/1.1 too
        out = curl("--http1.1", "--cacert", str(certs.ca), "-H", "X-Forwarded-For: 198.51.100.9", url)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert (got["remote_addr"], got["protocol"]) == ("198.51.100.9", "HTTP/1.1")
        # around the load balancer, without a PROXY header: closed unanswered
        out = curl("--http2", "--cacert", str(certs.ca), g.url() + "/")
        assert out.returncode != 0 and out.stdout == ""
    finally:
        for p in haproxy:
            p.stop()
    assert f"{CLIENT} - - " in g.log()  # accesslog = "-": the client HAProxy named
    assert "198.51.100.9 - - " in g.log()  # and the one the trusted peer forwarded
    g.signal(signal.SIGTERM)
    assert g.wait(20) == 0


@pytest.mark.parametrize(("project", "args"), [
    ("dbapp", ["dbapp:app"]),
    ("timing", ["-c", "gunicorn.conf.py", "timingapp:app"]),
    ("shop", ["-c", "gunicorn.conf.py", "--paste", "production.ini"]),
    ("edge", ["-c", "gunicorn.conf.py", "edgeapp:app"]),
])
def test_the_projects_are_gunicorn_configs_that_gunicorn_accepts(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, project: str, args: list[str]) -> None:
    """The same files and command lines pass gunicorn's own --check-config (which imports the app)."""
    gunicorn = Path(sys.executable).parent / "gunicorn"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENFORK_", "GUNICORN_"))}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite", SHOP_BIND=f"unix:{tmp_path}/s.sock")
    certs = tlscerts.certs(tmp_path_factory)
    env.update(EDGE_CERTFILE=str(certs.server.cert), EDGE_KEYFILE=str(certs.server.key))
    out = subprocess.run([str(gunicorn), *args, "--check-config"], cwd=PROJECTS / project, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    mine = subprocess.run([sys.executable, "-m", "greenfork.master", *args, "--check-config"],
                          cwd=PROJECTS / project, env=env, capture_output=True, text=True, timeout=60)
    assert mine.returncode == 0, mine.stderr
    assert "greenfork: warning" not in mine.stderr  # nothing in them that greenfork does not honour


# ------------------------------------------------------------------ gunicorn's documentation


DOCS = PROJECTS / "dbapp"  # any directory without a config file does for cwd below


@pytest.mark.parametrize(("args", "path", "want"), [
    # run.md: the basics
    (["--workers=2", "gunicornapps:app"], "/", {"app": "app"}),
    (["--workers=2", "gunicornapps:create_app()"], "/", {"app": "factory", "env": "development"}),
    (["--workers=2", "gunicornapps:create_app('production', debug=True)"], "/",
     {"app": "factory", "env": "production", "debug": True}),
    # run.md, Django: the module alone means its `application`; --env sets the settings module
    (["gunicornapps"], "/", {"app": "app", "settings": None}),
    (["--env", "DJANGO_SETTINGS_MODULE=myproject.settings", "gunicornapps"], "/",
     {"settings": "myproject.settings"}),
    # run.md: commonly used arguments
    (["-w", "2", "-k", "gevent", "-n", "myapp", "gunicornapps:app"], "/", {"app": "app"}),
    (["-k", "gunicorn.workers.ggevent.GeventWorker", "--worker-connections", "100", "gunicornapps:app"], "/",
     {"app": "app"}),
    # deploy.md: behind a proxy
    (["-w", "3", "--forwarded-allow-ips=10.170.3.217,10.170.3.220", "gunicornapps:app"], "/",
     {"scheme": "http"}),
])
def test_command_lines_from_gunicorns_docs(launcher: Launcher, tmp_path: Path, args: list[str], path: str,
                                           want: dict[str, object]) -> None:
    shutil.copy(APPS / "gunicornapps.py", tmp_path / "gunicornapps.py")
    workers = next((int(a.split("=")[1]) for a in args if a.startswith("--workers=")), None)
    if "-w" in args:
        workers = int(args[args.index("-w") + 1])
    g = booted(launcher, [*args, "-b", "127.0.0.1:0"], tmp_path, workers=workers or 1)
    got = get_json(g.url(), path)
    assert {k: got.get(k) for k in want} == want
    assert "Traceback" not in g.log()
    g.signal(signal.SIGTERM)
    assert g.wait(20) == 0


def test_paste_command_lines_from_gunicorns_docs(launcher: Launcher, tmp_path: Path) -> None:
    """run.md: `gunicorn --paste development.ini -b :8080 --chdir /path/to/project`, and #admin."""
    project = tmp_path / "project"
    shutil.copytree(PROJECTS / "shop", project)
    (project / "gunicorn.conf.py").unlink()  # the docs' command line alone (it would switch users)
    for ini, title in (("production.ini", "The Shop"), ("production.ini#admin", "The Shop (admin)")):
        g = booted(launcher, ["--paste", ini, "-b", "127.0.0.1:0", "--chdir", str(project)], project)
        assert get_json(g.url())["title"] == title
        g.signal(signal.SIGTERM)
        assert g.wait(20) == 0


def test_config_file_command_lines_from_gunicorns_docs(launcher: Launcher, tmp_path: Path) -> None:
    """deploy.md: runit's `exec gunicorn -c $ROOT/gunicorn.conf.py --pid=$PID $APP` and
    supervisor's `gunicorn main:application -c /path/to/gunicorn.conf.py`."""
    timing = PROJECTS / "timing"
    pid = tmp_path / "app.pid"
    g = booted(launcher, ["-c", str(timing / "gunicorn.conf.py"), f"--pid={pid}", "timingapp:app",
                          "-b", "127.0.0.1:0"], timing, workers=2)
    assert pid.read_text().strip() == str(g.pid)
    g.signal(signal.SIGTERM)
    assert g.wait(20) == 0
    g = booted(launcher, ["timingapp:app", "-c", str(timing / "gunicorn.conf.py"), "-b", "127.0.0.1:0"],
               timing, workers=2)
    assert http_get(g.url(), "/slow?ms=1")[0] == 200
    g.signal(signal.SIGTERM)
    assert g.wait(20) == 0


def test_gunicorn_cmd_args_in_a_container_is_used_and_logged(launcher: Launcher, tmp_path: Path) -> None:
    """configure.md: `GUNICORN_CMD_ARGS="--bind=127.0.0.1 --workers=3" gunicorn app:app` (any free port
    here), with an error log file, where the note must land too."""
    shutil.copy(APPS / "gunicornapps.py", tmp_path / "gunicornapps.py")
    log = tmp_path / "error.log"
    g = booted(launcher, ["gunicornapps:app", "--error-logfile", str(log)], tmp_path,
               {"GUNICORN_CMD_ARGS": "--bind=127.0.0.1:0 --workers=3 --threads 2"}, workers=3, boot_log=log)
    assert g.url().startswith("http://127.0.0.1:")
    text = log.read_text()
    assert "[INFO] using GUNICORN_CMD_ARGS='--bind=127.0.0.1:0 --workers=3 --threads 2'" in text
    assert "[WARNING] env GUNICORN_CMD_ARGS --threads 2: greenfork runs each request" in text
    g.signal(signal.SIGHUP)  # a reload reads it again, and says so again
    wait_for(lambda: log.read_text().count("using GUNICORN_CMD_ARGS") == 2, 20, "the note on reload")
    g.signal(signal.SIGTERM)
    assert g.wait(20) == 0


@pytest.mark.parametrize("flag", ["--check-config", "--print-config"])
def test_check_and_print_config(tmp_path: Path, flag: str) -> None:
    """configure.md: `gunicorn --print-config APP_MODULE`, `gunicorn --check-config APP_MODULE`."""
    out = subprocess.run([sys.executable, "-m", "greenfork.master", flag, "timingapp:app"],
                         cwd=PROJECTS / "timing", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "workers = 2  (gunicorn.conf.py (workers))" in out.stdout
    assert "post_request = 'gunicorn.conf.py:post_request'  (gunicorn.conf.py (post_request))" in out.stdout


# ------------------------------------------------------------------ systemd: before and after


def test_the_systemd_unit_changes_by_one_word() -> None:
    def body(name: str) -> list[str]:
        return [line for line in (UNITS / name).read_text().splitlines() if not line.startswith("#")]

    pairs = list(zip(body("gunicorn.service"), body("greenfork.service"), strict=True))
    changed = [(b, a) for b, a in pairs if b != a]
    assert changed == [("ExecStart=/usr/bin/gunicorn applicationname.wsgi",
                        "ExecStart=/usr/bin/greenfork applicationname.wsgi")]
    doc = (ROOT / "docs" / "migrating-from-gunicorn.md").read_text()
    for name in ("gunicorn.service", "greenfork.service", "gunicorn.socket"):
        assert (UNITS / name).read_text() in doc, f"docs/migrating-from-gunicorn.md must show {name} as is"


def test_the_migrated_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is required (scripts/test installs Debian's systemd)")
    greenfork = str(Path(sys.executable).parent / "greenfork")
    for name in ("greenfork.service", "gunicorn.socket"):
        text = (UNITS / name).read_text().replace("/usr/bin/greenfork", greenfork)
        text = text.replace("/home/someuser/applicationroot", str(tmp_path))
        (tmp_path / name).write_text(text)
    out = subprocess.run([analyze, "verify", str(tmp_path / "greenfork.service")], capture_output=True,
                         text=True, timeout=30)
    problems = [line for line in out.stderr.splitlines() if "greenfork" in line or "gunicorn" in line]
    assert out.returncode == 0 and not problems, out.stderr


def test_the_migrated_unit_serves_on_gunicorns_socket(tmp_path: Path, sock_dir: Path) -> None:
    """ExecStart of the AFTER unit, started as systemd would start it: in WorkingDirectory, with
    the socket of gunicorn.socket passed (systemd-socket-activate) and no --bind."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.fail("systemd-socket-activate is required (scripts/test installs Debian's systemd)")
    exec_start = next(line for line in (UNITS / "greenfork.service").read_text().splitlines()
                      if line.startswith("ExecStart="))
    argv = exec_start.removeprefix("ExecStart=").split()
    assert argv[0] == "/usr/bin/greenfork"
    project = tmp_path / "applicationroot"
    (project / "applicationname").mkdir(parents=True)
    (project / "applicationname" / "__init__.py").write_text("")
    shutil.copy(APPS / "gunicornapps.py", project / "applicationname" / "wsgi.py")
    (project / "gunicorn.conf.py").write_text("workers = 2\nworker_class = 'gevent'\n")
    sock = sock_dir / "gunicorn.sock"
    log = tmp_path / "service.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENFORK_", "GUNICORN_", "LISTEN_"))}
    with open(log, "wb") as out:
        proc = subprocess.Popen([tool, "-l", str(sock), sys.executable, "-m", "greenfork.master", *argv[1:]],
                                cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for(sock.exists, 10, "the activation socket")
        got = get_json(f"unix:{sock}")
        assert got["app"] == "app"
        wait_for(lambda: "Booted 2 worker(s)" in log.read_text(), 20, "two workers (gunicorn.conf.py)")
        assert f"Now listening on: unix:{sock}" in log.read_text()
    finally:
        kill_tree(proc)

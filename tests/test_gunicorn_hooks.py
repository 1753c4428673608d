"""gunicorn's server hooks in real processes (issue 16): each runs at its moment, in the process
gunicorn runs it in, with what real hooks use; a hook that raises is logged with its name and
changes nothing else, except post_fork and post_worker_init, whose failure is a boot failure.

The probe (tests/gunicorn/probe/gunicorn.conf.py) records every hook as a JSON line, and raises
in the hooks $PROBE_RAISE names (or in all while $PROBE_RAISE_FILE exists).
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.procs import APPS, Greenfork, Launcher, alive, http_get, wait_for

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

PROBE = Path(__file__).resolve().parent / "gunicorn" / "probe"
ALL_HOOKS = ("on_starting", "on_reload", "when_ready", "pre_fork", "post_fork", "post_worker_init",
             "worker_int", "worker_abort", "pre_exec", "pre_request", "post_request", "child_exit",
             "worker_exit", "nworkers_changed", "on_exit")


class Probe:
    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self, hook: str | None = None, **match: Any) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [e for e in out if (hook is None or e["hook"] == hook)
                and all(e.get(k) == v for k, v in match.items())]

    def index(self, hook: str, **match: Any) -> int:
        """Position of the first such event in the whole sequence."""
        for i, e in enumerate(self.events()):
            if e["hook"] == hook and all(e.get(k) == v for k, v in match.items()):
                return i
        raise AssertionError(f"no {hook} {match} in {[e['hook'] for e in self.events()]}")

    def wait(self, hook: str, count: int = 1, timeout: float = 15, **match: Any) -> list[dict[str, Any]]:
        return wait_for(lambda: len(self.events(hook, **match)) >= count and self.events(hook, **match),
                        timeout, f"{count} {hook} {match}")


def start(launcher: Launcher, tmp: Path, *args: str, env: dict[str, str] | None = None,
          boot: bool = True, app: str = "testapp:app", path: Path = APPS) -> tuple[Greenfork, Probe]:
    probe = Probe(tmp / "events.jsonl")
    g = launcher.spawn([app, "--pythonpath", str(path), "-b", "127.0.0.1:0", *args], cwd=PROBE,
                       env={"PROBE_EVENTS": str(probe.path), **(env or {})})
    if boot:
        def ready() -> bool:
            if g.proc.poll() is not None:
                raise AssertionError(f"greenfork exited with {g.proc.returncode}:\n{g.log()}")
            # "Booted" is logged just before when_ready runs: wait for the hook's own record too
            return g.addr_file.exists() and "Booted" in g.log() and bool(probe.events("when_ready"))

        wait_for(ready, 30, "greenfork to boot and when_ready to run")
        g.reload_info()
    return g, probe


def hang_a_worker(url: str) -> None:
    """Block one worker's event loop (/hog) from a thread: its master aborts it."""
    def request() -> None:
        try:
            http_get(url, "/hog?s=30", timeout=20)
        except OSError:
            pass  # the worker is aborted under this request

    threading.Thread(target=request, daemon=True).start()


def test_each_hook_runs_at_its_moment_in_its_process(launcher: Launcher, tmp_path: Path) -> None:
    g, probe = start(launcher, tmp_path, "-t", "3")
    master = g.pid
    ev = probe.events()
    # as gunicorn: nworkers_changed(server, N, None) while setting up, then on_starting, before any fork
    assert [e["hook"] for e in ev[:2]] == ["nworkers_changed", "on_starting"]
    assert ev[0]["new"] == 2 and ev[0]["old"] is None and ev[0]["pid"] == master
    assert ev[1]["master"] == master and ev[1]["workers"] == 2 and ev[1]["bind"] == ["127.0.0.1:0"]
    pre_forks = probe.events("pre_fork")
    assert [(e["pid"], e["worker_pid"], e["age"]) for e in pre_forks] == [(master, None, 1),
                                                                          (master, None, 2)]
    workers = set(g.workers())
    assert len(workers) == 2
    for age in (1, 2):
        (post,) = probe.events("post_fork", age=age)
        assert post["pid"] == post["worker_pid"] in workers and post["ppid"] == post["master"] == master
        (init,) = probe.events("post_worker_init", age=age)
        assert init["pid"] == post["pid"] and init["app"] is True
        assert probe.index("pre_fork", age=age) < probe.index("post_fork", age=age) < \
            probe.index("post_worker_init", age=age) < probe.index("when_ready")
    (ready,) = probe.events("when_ready")
    assert ready["pid"] == master and ready["workers"] == 2

    # a request: pre_request and post_request in the worker that served it
    status, _, body = http_get(g.url(), "/pid?x=1", headers={"X-Probe": "yes"})
    assert status == 200
    served_by = int(body)
    (pre,) = probe.wait("pre_request")
    (post,) = probe.wait("post_request")
    assert pre["pid"] == post["pid"] == served_by and pre["worker_pid"] == served_by
    assert (pre["method"], pre["path"], pre["query"]) == ("GET", "/pid", "x=1")
    assert pre["headers"]["X-PROBE"] == "yes"
    assert (post["status"], post["code"], post["environ_path"]) == ("200 OK", 200, "/pid")
    assert post["sent"] == len(body)
    assert pre["t"] <= post["t"]
    assert http_get(g.url(), "/boom")[0] == 500
    (failed,) = probe.wait("post_request", path="/boom")
    assert (failed["status"], failed["code"]) == ("500 Internal Server Error", 500)
    assert pre["version"] == [1, 1]
    # an HTTP/2 request (cleartext, prior knowledge) runs them too, with the same req and resp
    out = subprocess.run(["curl", "-s", "--max-time", "10", "--http2-prior-knowledge", "-H", "X-Probe: h2",
                          g.url() + "/pid?h2=1"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    (pre,) = probe.wait("pre_request", query="h2=1")
    assert (pre["method"], pre["path"], pre["version"]) == ("GET", "/pid", [2, 0])
    assert pre["headers"]["X-PROBE"] == "h2" and pre["pid"] == int(out.stdout)
    assert [(e["status"], e["sent"]) for e in probe.wait("post_request", count=3)][2] == (
        "200 OK", len(out.stdout))

    # TTIN: nworkers_changed, and one more worker through its hooks
    g.signal(signal.SIGTTIN)
    (grown,) = probe.wait("nworkers_changed", new=3)
    assert grown["old"] == 2 and grown["pid"] == master
    probe.wait("post_worker_init", age=3)
    wait_for(lambda: len(g.workers()) == 3, 10, "three workers")
    old = set(g.workers())

    # HUP: on_reload in the master before the new generation forks; the old workers exit through
    # worker_exit (in them) and child_exit (in the master)
    g.signal(signal.SIGHUP)
    wait_for(lambda: "Reload complete" in g.log(), 20, "the reload")
    (reload,) = probe.wait("on_reload")
    assert reload["pid"] == master and reload["workers"] == 2
    assert probe.index("on_reload") < probe.index("pre_fork", age=4)
    for pid in old:
        (exited,) = probe.wait("worker_exit", worker_pid=pid)
        assert exited["pid"] == pid and exited["master"] == master
        (reaped,) = probe.wait("child_exit", worker_pid=pid)
        assert reaped["pid"] == master
        assert probe.index("worker_exit", worker_pid=pid) < probe.index("child_exit", worker_pid=pid)
    probe.wait("nworkers_changed", new=2, old=3)  # the file says 2 workers again

    # a hung worker: worker_abort, then worker_exit, in it; child_exit in the master
    hung_before = set(g.workers())
    hang_a_worker(g.url())
    (abort,) = probe.wait("worker_abort", timeout=20)
    hung = abort["pid"]
    assert hung in hung_before and abort["worker_pid"] == hung
    probe.wait("worker_exit", worker_pid=hung)
    probe.wait("child_exit", worker_pid=hung)
    assert probe.index("worker_abort") < probe.index("worker_exit", worker_pid=hung) < \
        probe.index("child_exit", worker_pid=hung)
    wait_for(lambda: len(g.workers()) == 2 and hung not in g.workers(), 15, "the replacement")
    last = set(g.workers())
    wait_for(lambda: all(probe.events("post_worker_init", worker_pid=p) for p in last), 10, "its hooks")

    # INT: a quick stop runs worker_int in each worker; on_exit comes last, in the master
    g.signal(signal.SIGINT)
    assert g.wait(20) == 0
    for pid in last:
        (interrupted,) = probe.events("worker_int", worker_pid=pid)
        assert interrupted["pid"] == pid
        assert probe.index("worker_int", worker_pid=pid) < probe.index("worker_exit", worker_pid=pid)
        assert probe.events("child_exit", worker_pid=pid)
    assert not probe.events("worker_int", worker_pid=hung)  # aborted, not interrupted
    ev = probe.events()
    assert ev[-1]["hook"] == "on_exit" and ev[-1]["pid"] == master
    assert set(e["hook"] for e in ev) == set(ALL_HOOKS) - {"pre_exec"}


CACHEAPP = """
def app(environ, start_response):
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", "public, max-age=60"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""


def test_request_hooks_run_for_requests_the_app_is_called_for(launcher: Launcher, tmp_path: Path) -> None:
    """As documented: the gate's answers run them (the app's place is taken), the shared cache's
    hits and the queue limit's refusals do not (nothing is called)."""
    (tmp_path / "cacheapp.py").write_text(CACHEAPP)
    g, probe = start(launcher, tmp_path, "--response-cache", "1MiB", "--allowed-hosts", "good.test",
                     app="cacheapp:app", path=tmp_path)
    good = {"Host": "good.test"}
    assert http_get(g.url(), "/a", headers=good)[0] == 200  # a miss: the app runs, and the hooks
    probe.wait("post_request", path="/a")
    status, headers, body = http_get(g.url(), "/a", headers=good)
    assert (status, body) == (200, b"/a") and "age" in headers  # a hit
    assert http_get(g.url(), "/b", headers={"Host": "evil.test"})[0] == 400  # the gate answers
    (gated,) = probe.wait("post_request", path="/b")
    assert gated["code"] == 400
    assert [e["path"] for e in probe.events("pre_request")] == ["/a", "/b"]  # not for the hit
    g.signal(signal.SIGTERM)
    assert g.wait(20) == 0


def test_pre_exec_runs_before_a_new_master_and_the_upgrade_carries_on(launcher: Launcher,
                                                                        tmp_path: Path) -> None:
    g, probe = start(launcher, tmp_path, env={"PROBE_RAISE": "pre_exec,on_exit"})
    old = g.pid
    g.signal(signal.SIGUSR2)
    (pre_exec,) = probe.wait("pre_exec")
    assert pre_exec["pid"] == old
    starting = probe.wait("on_starting", count=2)
    new = starting[1]["pid"]
    assert new != old and probe.index("pre_exec") < len(probe.events()) - 1
    wait_for(lambda: any(e["pid"] == new for e in probe.events("when_ready")), 20, "the new master ready")
    assert "Error in hook pre_exec (gunicorn.conf.py:pre_exec)" in g.log()
    g.signal(signal.SIGTERM)
    assert g.wait(30) == 0  # on_exit raised: logged, the exit code is still 0
    assert probe.events("on_exit", pid=old)
    assert "Error in hook on_exit (gunicorn.conf.py:on_exit)" in g.log()
    assert alive(new)
    assert http_get(json.loads(g.addr_file.read_text())["addresses"][0], "/pid")[0] == 200
    import os

    os.kill(new, signal.SIGTERM)
    wait_for(lambda: not alive(new), 20, "the new master to stop")
    assert probe.events("on_exit", pid=new)


def test_a_hook_that_raises_is_logged_with_its_name_and_changes_nothing(launcher: Launcher,
                                                                          tmp_path: Path) -> None:
    failing = [h for h in ALL_HOOKS if h not in ("post_fork", "post_worker_init", "pre_exec")]
    g, probe = start(launcher, tmp_path, "-t", "3", env={"PROBE_RAISE": ",".join(failing)})
    assert http_get(g.url(), "/pid")[0] == 200  # pre_request and post_request raised
    probe.wait("post_request")
    g.signal(signal.SIGTTIN)
    wait_for(lambda: len(g.workers()) == 3, 15, "TTIN despite nworkers_changed raising")
    g.signal(signal.SIGHUP)
    wait_for(lambda: "Reload complete" in g.log(), 20, "the reload despite on_reload raising")
    wait_for(lambda: len(probe.events("child_exit")) >= 3, 15, "the old workers reaped")
    hang_a_worker(g.url())
    probe.wait("worker_abort", timeout=20)
    wait_for(lambda: len(g.workers()) == 2 and "exited" in g.log(), 15, "the hung worker replaced")
    wait_for(lambda: http_get(g.url(), "/pid")[0] == 200, 10, "serving")
    g.signal(signal.SIGINT)
    assert g.wait(20) == 0
    log = g.log()
    for hook in failing:
        assert f"Error in hook {hook} (gunicorn.conf.py:{hook})" in log, hook
        assert f"RuntimeError: probe: {hook} fails on purpose" in log, hook
    assert "Traceback" in log  # each with its traceback, for the operator
    assert "Booted 2 worker(s)" in log  # when_ready raised after the server was ready anyway


@pytest.mark.parametrize("hook", ["post_fork", "post_worker_init"])
def test_a_failing_boot_hook_is_a_boot_failure(launcher: Launcher, tmp_path: Path, hook: str) -> None:
    g, probe = start(launcher, tmp_path, env={"PROBE_RAISE": hook}, boot=False)
    assert g.wait(30) == 3  # nothing ever served: a boot failure stops greenfork, exit code 3
    log = g.log()
    assert f"Error in hook {hook} (gunicorn.conf.py:{hook})" in log
    assert "failed to boot" in log and "Booted" not in log
    assert probe.events(hook) and not probe.events("when_ready")
    if hook == "post_fork":
        assert not probe.events("post_worker_init")  # the app was never loaded


def test_boot_hook_failures_abort_a_reload_and_back_off_respawns(launcher: Launcher, tmp_path: Path) -> None:
    flag = tmp_path / "fail-now"
    g, probe = start(launcher, tmp_path, env={"PROBE_RAISE_FILE": str(flag)})
    serving = set(g.workers())
    flag.touch()
    g.signal(signal.SIGHUP)
    wait_for(lambda: "Reload failed" in g.log(), 20, "the reload to fail")
    # the old generation keeps serving; the new one's workers are stopped (one may still be
    # exiting when the failure is logged)
    wait_for(lambda: set(g.workers()) == serving, 20, "only the old generation's workers")
    assert http_get(g.url(), "/pid")[0] == 200
    assert "Error in hook post_fork" in g.log()

    # a crashed worker's replacements fail their post_fork: respawns back off, never a tight loop
    victim = sorted(serving)[0]
    import os

    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: g.log().count("failed to boot") >= 3, 15, "repeated boot failures")
    first = g.log().count("failed to boot")
    time.sleep(2.0)  # a window to count attempts in: back-off means few of them
    attempts = g.log().count("failed to boot") - first
    assert attempts <= 8, attempts
    assert g.proc.poll() is None and http_get(g.url(), "/pid")[0] == 200  # the other worker serves
    flag.unlink()
    wait_for(lambda: len(g.workers()) == 2 and victim not in g.workers()
             and all(probe.events("post_worker_init", worker_pid=p) for p in g.workers()), 30,
             "the slot to recover once its hook stops failing")
    g.signal(signal.SIGTERM)
    assert g.wait(20) == 0


def test_a_hup_runs_the_hooks_of_the_configuration_it_reads(launcher: Launcher, tmp_path: Path) -> None:
    """gunicorn re-reads its config file on HUP: so does greenfork, hooks included."""
    events = tmp_path / "events.jsonl"
    conf = tmp_path / "gunicorn.conf.py"
    template = (
        "import json, os\n"
        "workers = 1\n"
        "def pre_fork(server, worker):\n"
        "    with open({path!r}, 'a') as f:\n"
        "        f.write(json.dumps({{'version': {version}, 'age': worker.age}}) + '\\n')\n"
        "def on_reload(server):\n"
        "    with open({path!r}, 'a') as f:\n"
        "        f.write(json.dumps({{'version': {version}, 'reload': server.cfg.workers}}) + '\\n')\n")
    conf.write_text(template.format(path=str(events), version=1))
    g = launcher.spawn(["-c", str(conf), "testapp:app", "-b", "127.0.0.1:0"])
    wait_for(lambda: "Booted 1 worker(s)" in g.log(), 30, "the first worker")
    conf.write_text(template.format(path=str(events), version=2).replace("workers = 1", "workers = 2"))
    g.signal(signal.SIGHUP)
    wait_for(lambda: "Reload complete" in g.log(), 30, "the reload")
    seen = [json.loads(line) for line in events.read_text().splitlines()]
    assert seen == [{"version": 1, "age": 1}, {"version": 2, "reload": 2},
                    {"version": 2, "age": 2}, {"version": 2, "age": 3}]


def test_the_python_api_takes_hook_functions(tmp_path: Path) -> None:
    """Server(..., post_worker_init=f, pre_request=g): hooks are settings like any other."""
    from greenfork.master import Server

    marks = tmp_path / "marks"
    marks.mkdir()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    def post_worker_init(worker: Any) -> None:
        (marks / f"init-{worker.pid}").write_text(str(worker.age))

    def pre_request(worker: Any, req: Any) -> None:
        (marks / "request").write_text(f"{req.method} {req.path}")

    server = Server(app, bind=["http://127.0.0.1:0"], workers=1, post_worker_init=post_worker_init,
                    pre_request=pre_request)
    server.start()
    try:
        assert http_get(server.addresses[0], "/hello")[0] == 200
        assert (marks / "request").read_text() == "GET /hello"
        (init,) = marks.glob("init-*")
        assert init.read_text() == "1"
    finally:
        assert server.stop() == 0

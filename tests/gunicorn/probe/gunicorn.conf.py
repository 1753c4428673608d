# A test probe, not a deployment: every server hook appends one JSON line to $PROBE_EVENTS
# saying which hook ran, in which process, and with what; a hook named in $PROBE_RAISE (or
# every hook, with "all") raises after recording, as does every hook while the file named by
# $PROBE_RAISE_FILE exists.
import json
import os
import time

bind = "127.0.0.1:8000"
workers = 2
worker_class = "gevent"


def record(hook, **fields):
    with open(os.environ["PROBE_EVENTS"], "a") as f:
        f.write(json.dumps({"hook": hook, "pid": os.getpid(), "t": time.monotonic(), **fields}) + "\n")
    wanted = os.environ.get("PROBE_RAISE", "").split(",")
    flag = os.environ.get("PROBE_RAISE_FILE")
    if hook in wanted or "all" in wanted or (flag and os.path.exists(flag)):
        raise RuntimeError(f"probe: {hook} fails on purpose")


def describe(worker):
    return {"worker_pid": worker.pid, "age": worker.age, "ppid": worker.ppid}


def on_starting(server):
    record("on_starting", master=server.pid, workers=server.num_workers, bind=server.cfg.bind)


def on_reload(server):
    record("on_reload", master=server.pid, workers=server.cfg.workers)


def when_ready(server):
    record("when_ready", master=server.pid, workers=len(server.WORKERS))


def pre_fork(server, worker):
    record("pre_fork", **describe(worker))


def post_fork(server, worker):
    record("post_fork", master=server.pid, **describe(worker))


def post_worker_init(worker):
    record("post_worker_init", app=worker.wsgi is not None, **describe(worker))


def worker_int(worker):
    record("worker_int", **describe(worker))


def worker_abort(worker):
    record("worker_abort", **describe(worker))


def pre_exec(server):
    record("pre_exec", master=server.pid)


def pre_request(worker, req):
    record("pre_request", method=req.method, path=req.path, query=req.query, version=list(req.version),
           headers=dict(req.headers), **describe(worker))


def post_request(worker, req, environ, resp):
    record("post_request", path=req.path, status=resp.status, code=resp.status_code,
           environ_path=environ["PATH_INFO"], sent=resp.sent, **describe(worker))


def child_exit(server, worker):
    record("child_exit", master=server.pid, **describe(worker))


def worker_exit(server, worker):
    record("worker_exit", master=server.pid, **describe(worker))


def nworkers_changed(server, new_value, old_value):
    record("nworkers_changed", new=new_value, old=old_value)


def on_exit(server):
    record("on_exit", master=server.pid)

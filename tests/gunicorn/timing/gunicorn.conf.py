# gunicorn settings for the timing service.
#
#     gunicorn -c gunicorn.conf.py timingapp:app
#
# Every request's duration goes to the error log; a worker the master kills for missing its
# heartbeat logs what each of its threads was doing first.
import sys
import threading
import time
import traceback

bind = "127.0.0.1:8000"
workers = 2
worker_class = "gevent"
timeout = 10
graceful_timeout = 10
errorlog = "-"
loglevel = "info"


def pre_request(worker, req):
    req.started = time.perf_counter()


def post_request(worker, req, environ, resp):
    elapsed_ms = (time.perf_counter() - req.started) * 1000
    worker.log.info("timing %s %s -> %s in %.1f ms (worker %s, request %s)",
                    req.method, req.path, resp.status, elapsed_ms, worker.pid, worker.nr)


def worker_abort(worker):
    worker.log.warning("worker %s aborted: no heartbeat for %s s", worker.pid, worker.timeout)
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        worker.log.warning("thread %s (%s):\n%s", names.get(ident, "?"), ident, stack)

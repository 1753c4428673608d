# Production settings for dbapp (Flask + SQLAlchemy).
#
#     gunicorn dbapp:app
#
# The app is preloaded: the master imports it once and the workers share its memory.
# SQLAlchemy's engine is created at import time, so each worker would inherit the master's
# connection pool; SQLAlchemy's documentation says to dispose of it in the new process.
import multiprocessing

bind = "0.0.0.0:8000"
workers = multiprocessing.cpu_count() * 2 + 1
worker_class = "gevent"
worker_connections = 200
preload_app = True
timeout = 30
graceful_timeout = 30
keepalive = 5
max_requests = 1000
max_requests_jitter = 50
accesslog = "-"
loglevel = "info"


def post_fork(server, worker):
    from dbapp import engine

    # close=False: the connections belong to the parent; just stop using them here
    engine.dispose(close=False)
    server.log.info("Worker spawned (pid: %s): database pool reset", worker.pid)

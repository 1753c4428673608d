"""The app the metrics tests serve: chosen statuses, a crash, slow requests, app metrics."""

from __future__ import annotations

import os
import time
from urllib.parse import parse_qs

from prometheus_client import Counter, Gauge

# Created at import, in the worker, after greenfork chose the multiprocess identity (--app-metrics).
HITS = Counter("myapp_hits", "Requests to /app/hit.", ["kind"])
LIVE = Gauge("myapp_live_workers", "1 per live worker.", multiprocess_mode="livesum")
LIVE.set(1)


def _text(start_response, body: bytes, status: str = "200 OK"):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        return _text(start_response, b"status\n", f"{code} Chosen")
    if path == "/crash":
        os._exit(1)  # the worker dies mid-request: a crash, not a SIGKILL
    if path == "/sleep":
        args = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
        if "mark" in args:
            with open(args["mark"], "w") as f:
                f.write(str(os.getpid()))
        time.sleep(float(args.get("s", 1)))
        return _text(start_response, b"slept\n")
    if path == "/app/hit":
        HITS.labels("test").inc()
        return _text(start_response, b"hit\n")
    if path == "/pid":
        return _text(start_response, str(os.getpid()).encode())
    return _text(start_response, b"hello\n")

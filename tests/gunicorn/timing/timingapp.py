"""A small service: /slow?ms=N takes N milliseconds; /hang blocks the worker's event loop."""

import time
from urllib.parse import parse_qs


def spin_without_yielding(seconds):
    # CPU work that never yields to gevent: the worker's heartbeat stops
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/slow":
        ms = int(parse_qs(environ["QUERY_STRING"]).get("ms", ["100"])[0])
        time.sleep(ms / 1000)  # gevent's sleep: other requests go on
    elif path == "/hang":
        spin_without_yielding(60)
    body = f"{path} done\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

"""Apps for the port-sharing tests (issue 17): each says who it is and what it was given.
Plain WSGI (no Flask: workers running as nobody import it from a bare venv); shareflask.py
has the Flask one."""

from __future__ import annotations

import json
import os
import time

IMPORTED_BY = os.getpid()  # the master's with --preload, a worker's otherwise
KEYS = ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "REMOTE_ADDR",
        "REMOTE_PORT", "wsgi.url_scheme", "HTTPS", "SSL_PROTOCOL", "greenfork.server_addresses")


def _named(name: str):
    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path.endswith("/body"):
            data = environ["wsgi.input"].read()
            body = json.dumps({"app": name, "got": len(data), "sum": sum(data) % 65521}).encode()
        elif path.endswith("/big"):
            body = b"x" * (1 << 20)
        else:
            if path.endswith("/sleep"):
                time.sleep(float(environ["QUERY_STRING"] or 1))
            body = json.dumps({"app": name, "pid": os.getpid(), "ppid": os.getppid(), "uid": os.getuid(),
                               "imported_by": IMPORTED_BY, **{k: environ.get(k) for k in KEYS}}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    app.__name__ = name
    return app


main = _named("main")
api = _named("api")
admin = _named("admin")
shop = _named("shop")
wild = _named("wild")
v1 = _named("v1")
one = _named("one")
two = _named("two")

def broken():
    raise RuntimeError("this factory always fails")

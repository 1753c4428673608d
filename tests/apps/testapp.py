"""WSGI apps the process tests serve (run from this folder: `greenfork testapp:app`)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator

HERE = os.path.dirname(os.path.abspath(__file__))
ENV_KEYS = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "RAW_URI", "SERVER_PROTOCOL",
            "SERVER_NAME", "SERVER_PORT", "REMOTE_ADDR", "REMOTE_PORT", "CONTENT_TYPE", "CONTENT_LENGTH",
            "HTTP_HOST", "greenfork.server_addresses", "greenfork.worker", "greenfork.generation",
            "wsgi.url_scheme", "wsgi.multithread", "wsgi.multiprocess")


def _text(start_response, body: bytes, status: str = "200 OK", extra=()):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *extra])
    return [body]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    query = environ["QUERY_STRING"]
    if path == "/sleep":
        # /sleep?s=2&mark=/path: the mark file tells a test the request is inside the app
        args = {k: v[0] for k, v in parse_qs(query).items()}
        if "mark" in args:
            with open(args["mark"], "w") as f:
                f.write(str(os.getpid()))
        time.sleep(float(args.get("s", 1)))
        return _text(start_response, b"slept\n")
    if path == "/echo":
        parts = []
        while chunk := environ["wsgi.input"].read(65536):  # validator: read() takes a size
            parts.append(chunk)
        return _text(start_response, b"".join(parts))
    if path == "/lines":
        lines = list(environ["wsgi.input"])
        return _text(start_response, json.dumps([x.decode() for x in lines]).encode())
    if path == "/env":
        data = {k: environ.get(k) for k in ENV_KEYS}
        data["pid"] = os.getpid()
        return _text(start_response, json.dumps(data).encode(), extra=[("X-Pid", str(os.getpid()))])
    if path == "/tlsenv":
        keys = {k: v for k, v in environ.items() if k.startswith(("SSL_", "HTTPS", "REMOTE_USER"))}
        keys["wsgi.url_scheme"] = environ["wsgi.url_scheme"]
        return _text(start_response, json.dumps(keys).encode())
    if path == "/software":
        return _text(start_response, environ["SERVER_SOFTWARE"].encode())
    if path == "/boom":
        raise RuntimeError("secret-detail-that-must-not-leak")
    if path == "/bad-length":
        # int() would take "1_3"; the wire must not
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "1_3")])
        return [b"hello"]
    if path == "/str-piece":
        # a list whose second piece is text, not bytes: nothing of it may go out
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"hello", "world"]
    if path == "/boom-late":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            yield b"partial"
            raise RuntimeError("late failure")

        return gen()
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"chunk%d\n" % i for i in range(5))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        write(b"hello")
        return [b"world"]
    if path == "/file":
        f = open(os.path.join(HERE, "data.bin"), "rb")  # noqa: SIM115 - closed by the server via file_wrapper
        size = os.fstat(f.fileno()).st_size
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(size))])
        return environ["wsgi.file_wrapper"](f, 65536)
    if path == "/big":
        # a large body with its head: one sendmsg, resumed mid-buffer on a slow reader
        body = bytes(range(256)) * (4 * 4096)
        return _text(start_response, body)
    if path == "/orphan":
        # a helper that outlives its parent: the shell exits at once, sleep is orphaned
        import subprocess

        out = subprocess.run(["sh", "-c", "sleep 1 >/dev/null 2>&1 & echo $!"], capture_output=True,
                             check=True)
        return _text(start_response, out.stdout.strip())  # the orphan's pid
    if path == "/pid":
        return _text(start_response, str(os.getpid()).encode())
    if path == "/hog":
        hog_the_hub(float(parse_qs(query).get("s", ["60"])[0]))
        return _text(start_response, b"done\n")
    if path == "/backtrack":
        return _text(start_response, b"%d\n" % backtrack_forever())
    if path == "/exit":
        os._exit(1)  # a crash in the middle of a request
    if path == "/grow":
        # memory the worker keeps (touched, so it counts in its unique set size)
        _hoard.append(b"x" * (int(parse_qs(query).get("mib", ["64"])[0]) << 20))
        return _text(start_response, b"grown\n")
    return _text(start_response, b"hello\n")


_hoard: list[bytes] = []


def hog_the_hub(seconds: float) -> None:
    """Blocks the worker's event loop: no other greenlet (nor the heartbeat) runs."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def backtrack_forever() -> int:
    """Blocks the hub inside one C call (catastrophic regex backtracking) that would not
    return within this test's lifetime."""
    import re

    return 1 if re.match(r"(a+)+$", "a" * 40 + "b") else 0


validated = validator(app)


class Broken:
    """Importing this module path fails: `greenfork testapp:missing` tests exit 4."""


def factory():
    return app


def hostile(environ, start_response):
    """Paths for the slow-client and limit tests (tests/test_hostile.py); the rest as app."""
    path = environ["PATH_INFO"]
    args = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    if path == "/limit":
        # /limit?max=N: this request's body limit, then echo the body's length
        environ["greenfork.set_max_request_body_size"](int(args["max"]) if args["max"] != "none" else None)
        size = 0
        while chunk := environ["wsgi.input"].read(65536):
            size += len(chunk)
        return _text(start_response, str(size).encode())
    if path == "/limit-late":
        environ["wsgi.input"].read(1)
        try:
            environ["greenfork.set_max_request_body_size"](1)
        except RuntimeError:
            return _text(start_response, b"refused")
        return _text(start_response, b"accepted")
    if path == "/stream-then-read":
        # the response starts before the body is read: a body timeout can only abort it
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            yield b"started\n"
            yield b"%d\n" % len(environ["wsgi.input"].read())

        return gen()
    if path == "/big":
        # /big?n=BYTES streamed in 64 KiB pieces: a client that stops reading blocks the send
        n = int(args.get("n", 1 << 20))
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
        piece = b"x" * 65536
        return (piece[: min(65536, n - i)] for i in range(0, n, 65536))
    if path == "/bigfile":
        # /bigfile?n=BYTES through wsgi.file_wrapper (os.sendfile): a sparse file, made once
        n = int(args.get("n", 1 << 20))
        name = os.path.join(tempfile.gettempdir(), "greenfork-test-sparse-%d.bin" % n)
        if not os.path.exists(name):
            tmp = "%s.%d" % (name, os.getpid())
            with open(tmp, "wb") as f:
                f.truncate(n)
            os.replace(tmp, name)
        f = open(name, "rb")  # noqa: SIM115 - closed by the server via file_wrapper
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
        return environ["wsgi.file_wrapper"](f, 65536)
    return app(environ, start_response)

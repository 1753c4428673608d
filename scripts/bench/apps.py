"""WSGI apps for scripts/bench (one per workload): `apps:hello`, `apps:file`, ...

The same shapes as the peers harness in shared/bench, so results compare.
"""

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20
HELLO = b"Hello, World!"
BIG = b"x" * MIB
DATA = os.path.join(os.environ.get("GREENFORK_BENCH_DATA", "/tmp"), "greenfork-bench-1mib.bin")


def ensure_data():
    if not os.path.exists(DATA):
        tmp = f"{DATA}.{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(BIG)
        os.replace(tmp, DATA)


ensure_data()


def _ok(start_response, n, ctype="text/plain"):
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(n))])


def hello(environ, start_response):
    _ok(start_response, len(HELLO))
    return [HELLO]


def big(environ, start_response):
    _ok(start_response, MIB, "application/octet-stream")
    return [BIG]


def file(environ, start_response):
    f = open(DATA, "rb")  # noqa: SIM115 - closed by the server through the wrapper
    _ok(start_response, MIB, "application/octet-stream")
    return environ["wsgi.file_wrapper"](f, 65536)


def echo(environ, start_response):
    n = int(environ.get("CONTENT_LENGTH") or 0)
    got = 0
    read = environ["wsgi.input"].read
    while got < n:
        chunk = read(min(65536, n - got))
        if not chunk:
            break
        got += len(chunk)
    body = str(got).encode()
    _ok(start_response, len(body))
    return [body]


PAGE = (b"<!doctype html><title>cached</title><p>" + b"greenfork " * 410)[:4092] + b"</p>"  # 4 KiB


def cached(environ, start_response):
    """A cacheable 4 KiB page (the `cached` workload; run greenfork with --response-cache)."""
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(PAGE))),
                              ("Cache-Control", "public, max-age=3600"), ("ETag", '"page-v1"')])
    return [PAGE]


def page(environ, start_response):
    """The same 4 KiB page, not cacheable: what `cached` costs when the app renders it."""
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(PAGE)))])
    return [PAGE]


def paths(environ, start_response):
    """hello at /, page at /page, cached at /cached, echo at /echo: every workload of cache_bench.py
    on one server."""
    return {"/page": page, "/cached": cached, "/echo": echo}.get(environ["PATH_INFO"], hello)(environ,
                                                                                            start_response)


def sleep(environ, start_response):
    time.sleep(0.05)
    return hello(environ, start_response)

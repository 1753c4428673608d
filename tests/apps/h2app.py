"""The app HTTP/2 tests serve (`greenfork h2app:app`): a few paths of its own, the rest testapp's.

/inflight?s=S   sleep S seconds, counting the calls in progress; /inflight-max reports the
                most seen at once (then resets it): the concurrency bound, seen from the app;
                /inflight-now how many are in progress (not counted by /calls)
/headers        the request's HTTP_* keys and a few others, as JSON
/slowread?n=N   read the body N bytes at a time, 50 ms apart, answer its length
/noread         answer at once, never reading the body
/short          declare 10 bytes, send 5
/chunks?n=N&size=B   N pieces of B bytes from a generator
/calls          how many requests the app has seen (per worker)
"""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs

from testapp import _text, hostile

_state = {"inflight": 0, "max": 0, "calls": 0}


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/inflight-now":  # (not counted in /calls: a test polls it)
        return _text(start_response, b"%d" % _state["inflight"])
    _state["calls"] += 1
    args = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    if path == "/inflight":
        _state["inflight"] += 1
        _state["max"] = max(_state["max"], _state["inflight"])
        try:
            time.sleep(float(args.get("s", "0.2")))
        finally:
            _state["inflight"] -= 1
        return _text(start_response, b"ok\n")
    if path == "/inflight-max":
        seen, _state["max"] = _state["max"], 0
        return _text(start_response, b"%d" % seen)
    if path == "/calls":
        return _text(start_response, b"%d" % _state["calls"])
    if path == "/headers":
        data = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        for key in ("SERVER_PROTOCOL", "CONTENT_LENGTH", "CONTENT_TYPE", "REQUEST_METHOD", "PATH_INFO",
                    "QUERY_STRING", "RAW_URI", "wsgi.url_scheme", "HTTPS", "SSL_PROTOCOL"):
            if key in environ:
                data[key] = environ[key]
        return _text(start_response, json.dumps(data).encode())
    if path == "/slowread":
        n = int(args.get("n", "1024"))
        got = 0
        while chunk := environ["wsgi.input"].read(n):
            got += len(chunk)
            time.sleep(0.05)
        return _text(start_response, b"%d" % got)
    if path == "/noread":
        return _text(start_response, b"not read\n")
    if path == "/short":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"short"]
    if path == "/chunks":
        n, size = int(args.get("n", "4")), int(args.get("size", "1000"))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (bytes([65 + i % 26]) * size for i in range(n))
    return hostile(environ, start_response)

"""The response-cache tests' app (tests/test_cache_process.py): every response is what the query
string asks for, and every call is logged, so a test counts the app's calls for a URL.

    GET /r?cc=public,max-age=60&st=200&vary=Accept-Encoding&cookie=1&etag=x&lm=...&exp=...
           &size=N&stream=1&cl=N&boom=1&slow=SECONDS&where=1&privcookie=1
                           (privcookie: "Cache-Control: private" to a request with a Cookie)
    GET /v?size=N          a body that names its version and can be checked from itself
    POST /r?...            (anything unsafe) answers 200 "changed"

The call log: one line "pid method path?query" per call, appended to $CACHEAPP_LOG.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from urllib.parse import parse_qs

LOG = os.environ.get("CACHEAPP_LOG", "/dev/null")
_seq = 0
_lock = threading.Lock()


def _log(environ: dict) -> None:
    line = f"{os.getpid()} {environ['REQUEST_METHOD']} {environ['PATH_INFO']}?{environ['QUERY_STRING']}\n"
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def versioned(version: str, size: int) -> bytes:
    """A body of `size` bytes that names its version and is fully determined by it."""
    head = f"version={version};".encode()
    seed = hashlib.sha256(version.encode()).digest()
    body = head + seed * (size // len(seed) + 1)
    return body[:size]


def check_versioned(body: bytes) -> str:
    """The version a body says it is; AssertionError if any byte differs from what it should be."""
    head, _, _ = body.partition(b";")
    version = head.removeprefix(b"version=").decode()
    assert body == versioned(version, len(body)), f"torn or mixed body for version {version!r}"
    return version


def app(environ, start_response):
    global _seq
    _log(environ)
    q = {k: v[-1] for k, v in parse_qs(environ["QUERY_STRING"], keep_blank_values=True).items()}
    method = environ["REQUEST_METHOD"]
    if method not in ("GET", "HEAD"):
        body = b"changed\n"
        start_response(q.get("st", "200") + " X", [("Content-Type", "text/plain"),
                                                   ("Content-Length", str(len(body)))])
        return [body]
    if environ["PATH_INFO"] == "/v":
        with _lock:
            _seq += 1
            version = f"{os.getpid()}-{_seq}"
        body = versioned(version, int(q.get("size", "20000")))
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body))),
                                  ("Cache-Control", "public, max-age=600"), ("ETag", f'"{version}"')])
        return [body]
    if "slow" in q:
        time.sleep(float(q["slow"]))  # gevent's sleep in a worker: other requests carry on
    size = int(q.get("size", "0"))
    text = f"{environ['QUERY_STRING']} ae={environ.get('HTTP_ACCEPT_ENCODING', '-')}".encode()
    if "where" in q:  # the URL the app would build links from (forwarded headers change it)
        text += (f" url={environ['wsgi.url_scheme']}://{environ.get('HTTP_HOST', '-')}"
                 f"{environ['SCRIPT_NAME']} {environ['SERVER_PROTOCOL']}").encode()
    text += b"\n"
    body = (text * (size // len(text) + 1))[:size] if size else text
    headers = [("Content-Type", "text/plain")]
    for param, name in (("cc", "Cache-Control"), ("vary", "Vary"), ("etag", "ETag"), ("lm", "Last-Modified"),
                        ("exp", "Expires"), ("pragma", "Pragma")):
        if param in q:
            headers.append((name, q[param]))
    if "cookie" in q:
        headers.append(("Set-Cookie", "session=s3cret"))
    if "privcookie" in q and "HTTP_COOKIE" in environ:  # a page private to a signed-in client
        headers = [h for h in headers if h[0] != "Cache-Control"] + [("Cache-Control", "private")]
    headers.append(("Content-Length", q.get("cl", str(len(body)))))
    status = q.get("st", "200")
    start_response(f"{status} {'OK' if status == '200' else 'Status'}", headers)
    if "boom" in q:
        def failing():
            yield body[:10]
            raise RuntimeError("the app failed mid-body")
        return failing()
    if "stream" in q:
        def pieces():
            for i in range(0, len(body), 1000):
                yield body[i:i + 1000]
        return pieces()
    return [body]

"""What an application behind a proxy sees (run from this folder: `greenfork proxyapp:app`).

/env    the environ's string values, and greenfork.proxy_protocol, as JSON
/check  200 when the environ is what the query expects, else 500 naming the difference, so a
        load generator's non-2xx count is the number of requests that saw the wrong client:
          addr=A        REMOTE_ADDR must be A
          scheme=S      wsgi.url_scheme must be S
          via=proxy_protocol  a PROXY header set the client (greenfork.proxy_protocol, PROXY command)
          via=forwarded       a forwarded header set it (greenfork.peer_addr and X-Forwarded-For)
          host=H        HTTP_HOST must be H
/ws-env a WebSocket: the environ (as /env) as its first message, then it waits for the client's
        close (what a WebSocket app sees behind a proxy)
"""

from __future__ import annotations

import json
import os
import time
from typing import Any
from urllib.parse import parse_qs

# A slow boot on demand: when the file PROXYAPP_BOOT_DELAY names exists, importing this module
# takes as many seconds as it says (a reload whose new workers take a while).
_delay = os.environ.get("PROXYAPP_BOOT_DELAY")
if _delay and os.path.exists(_delay):
    with open(_delay) as _f:
        time.sleep(float(_f.read()))


def _text(start_response: Any, body: bytes, status: str = "200 OK") -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _wrong(environ: dict[str, Any], want: dict[str, str]) -> str:
    if "addr" in want and environ.get("REMOTE_ADDR") != want["addr"]:
        return f"REMOTE_ADDR {environ.get('REMOTE_ADDR')!r}"
    if "scheme" in want and environ.get("wsgi.url_scheme") != want["scheme"]:
        return f"scheme {environ.get('wsgi.url_scheme')!r}"
    if "host" in want and environ.get("HTTP_HOST") != want["host"]:
        return f"host {environ.get('HTTP_HOST')!r}"
    via = want.get("via")
    if via == "proxy_protocol":
        pp = environ.get("greenfork.proxy_protocol")
        if not pp or pp["command"] != "PROXY" or "greenfork.peer_addr" not in environ:
            return f"no PROXY header applied: {pp!r}"
    elif via == "forwarded" and ("greenfork.peer_addr" not in environ
                                 or "HTTP_X_FORWARDED_FOR" not in environ):
        return "no forwarded header applied"
    return ""


def _env(environ: dict[str, Any]) -> bytes:
    data = {k: v for k, v in environ.items() if isinstance(v, str)}
    data["greenfork.proxy_protocol"] = environ.get("greenfork.proxy_protocol")
    data["pid"] = str(os.getpid())
    return json.dumps(data, sort_keys=True).encode()


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ["PATH_INFO"]
    if path == "/env":
        return _text(start_response, _env(environ))
    ws = environ.get("wsgi.websocket")
    if path == "/ws-env" and ws is not None:
        ws.send(_env(environ).decode())
        while ws.receive() is not None:
            pass
        return []
    if path == "/check":
        want = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
        wrong = _wrong(environ, want)
        if wrong:
            return _text(start_response, f"wrong: {wrong}\n".encode(), "500 Internal Server Error")
        return _text(start_response, b"ok\n")
    return _text(start_response, b"hello\n")

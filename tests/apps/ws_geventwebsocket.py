"""A gevent-websocket app, as it runs under gunicorn's GeventWebSocketWorker:
it finds its WebSocket in environ["wsgi.websocket"] and nothing else changes.

    greenfork tests.apps.ws_geventwebsocket:app
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from geventwebsocket.exceptions import WebSocketError


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    ws = environ.get("wsgi.websocket")
    path = environ["PATH_INFO"]
    if ws is None:  # not a WebSocket request: an ordinary response
        headers = [("Content-Type", "text/plain")]
        if environ.get("QUERY_STRING") == "cache":  # one the response cache may store
            headers.append(("Cache-Control", "public, max-age=60"))
        start_response("200 OK", headers)
        return [b"plain http\n"]
    if path == "/reject":
        # This app never touches ws, so the upgrade never happens: the client gets a 403.
        start_response("403 Forbidden", [("Content-Type", "text/plain")])
        return [b"not you\n"]
    if path == "/echo":
        while True:
            message = ws.receive()  # str for text, bytearray for binary, None at the end
            if message is None:
                break
            ws.send(message)
    elif path == "/chat":
        # Every connected client gets every message, through gevent-websocket's registry.
        while not ws.closed:
            message = ws.receive()
            if message is None:
                break
            for client in list(ws.handler.server.clients.values()):
                try:
                    client.ws.send(message)
                except WebSocketError:
                    pass
    elif path == "/push":
        # Server push without reading: the handshake happens on the first send.
        for i in range(int(environ.get("QUERY_STRING") or 3)):
            ws.send(f"push {i}")
        ws.close(1000, "pushed")
    elif path == "/info":
        ws.send(json.dumps({"path": ws.path, "origin": ws.origin, "protocol": ws.protocol,
                            "version": ws.version, "version_key": environ["wsgi.websocket_version"],
                            "client": list(ws.handler.client_address)}))
        ws.receive()
    elif path == "/env":
        # What the app sees of its client (behind proxies: tests/test_websocket_front.py), then echo
        env: dict[str, Any] = {k: v for k, v in environ.items() if isinstance(v, str)}
        pp = environ.get("greenfork.proxy_protocol")
        env["proxy_protocol_version"] = str(pp["version"]) if pp else ""
        env["client_address"] = list(ws.handler.client_address)
        env["pid"] = str(os.getpid())
        ws.send(json.dumps(env))
        while (message := ws.receive()) is not None:
            ws.send(message)
    elif path == "/ticker":
        # One message in, then server push only: the app never calls receive() again, yet the
        # client's pings are answered and its close frame ends the loop.
        ws.receive()
        i = 0
        try:
            while True:
                ws.send(f"tick {i}")
                i += 1
                gevent.sleep(0.05)
        except WebSocketError:
            pass
    elif path == "/flood":
        # Sends until the client is gone (a client that stops reading: --send-timeout).
        chunk = "x" * 65536
        try:
            while True:
                ws.send(chunk)
        except WebSocketError:
            pass
    elif path == "/whoami":
        # which worker and generation serve this WebSocket (reloads and recycling tests)
        ws.send(json.dumps({"pid": os.getpid(), "generation": environ.get("greenfork.generation")}))
        while ws.receive() is not None:
            pass
    elif path == "/close":
        ws.receive()
        ws.close(4000, "app closed")
        try:
            ws.receive()
        except WebSocketError as e:
            assert str(e) == "Connection is already closed"
    elif path == "/crash":
        ws.receive()
        raise RuntimeError("the app failed")
    return []

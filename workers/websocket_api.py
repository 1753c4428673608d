"""`environ["wsgi.websocket"]`: gevent-websocket's WebSocket, over websocket_session.Upgrade.

The same methods and attributes as geventwebsocket.websocket.WebSocket (0.10), with the
same meaning: receive() returns str for text and bytearray for binary, None once when the
connection ends (then raises WebSocketError); send(message, binary=None); close(code,
message) sends the close frame and marks the socket closed; `closed`, `path`, `origin`,
`protocol`, `version`, `environ`, `handler` (client_address, server.clients,
server.application, active_client, logger), `current_app`, send_frame() and the OPCODE_*
constants. The exceptions are gevent-websocket's own classes when it is installed.

Differences, on purpose: the handshake happens on the app's first touch of this object
(see websocket_session.py); pings from the client are answered and its close frames
completed even while the app is not in receive(); invalid close codes from the app raise
ValueError instead of going out on the wire; close() after the app returns without
closing sends 1011 when the app raised, 1000 otherwise.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from greenfork.workers.websocket_protocol import NORMAL, State, valid_close_code
from greenfork.workers.websocket_session import Mode, Upgrade, WebSocketError

log = logging.getLogger("greenfork.worker")

MSG_ALREADY_CLOSED: Final = "Connection is already closed"
MSG_SOCKET_DEAD: Final = "Socket is dead"


class Client:
    """gevent-websocket's handler.server.clients values."""

    __slots__ = ("address", "ws")

    def __init__(self, address: tuple[str, int], ws: WebSocket) -> None:
        self.address = address
        self.ws = ws


class Server:
    """What gevent-websocket apps reach through ws.handler.server: one per worker.

    gevent-websocket keys `clients` by the connection's own peer address, unique per TCP
    connection. Here `client_address` is the client the app sees (REMOTE_ADDR, REMOTE_PORT):
    behind a proxy that applied X-Forwarded-For it has no port, on a unix socket no address,
    so two connections could share it, and one would replace the other in a broadcast's
    list (and its end remove the other's entry). A second connection with an address already
    in use is keyed (address, -n) instead, n counting up per worker."""

    def __init__(self) -> None:
        self.clients: dict[tuple[str, int], Client] = {}
        self.application: object | None = None
        self.logger = logging.getLogger("greenfork.websocket")
        self._serial = 0

    def register(self, address: tuple[str, int], ws: WebSocket) -> tuple[str, int]:
        """Add a client; returns its key in `clients`."""
        key = address
        if key in self.clients:
            self._serial += 1
            key = (address[0], -self._serial)
        self.clients[key] = Client(address, ws)
        return key

    def unregister(self, key: tuple[str, int], ws: WebSocket) -> None:
        client = self.clients.get(key)
        if client is not None and client.ws is ws:
            del self.clients[key]


class Handler:
    """What gevent-websocket apps reach through ws.handler."""

    def __init__(self, server: Server, environ: dict[str, Any], ws: WebSocket) -> None:
        self.server = server
        self.environ = environ
        self.websocket = ws
        try:
            port = int(environ.get("REMOTE_PORT") or 0)
        except ValueError:
            port = 0
        self.client_address = (str(environ.get("REMOTE_ADDR", "")), port)
        self.key = self.client_address  # in server.clients (Server.register)

    @property
    def logger(self) -> logging.Logger:
        return self.server.logger

    @property
    def active_client(self) -> Client:
        return self.server.clients[self.key]


class _NoApp:
    def on_close(self, *args: object) -> None:
        pass


class WebSocket:
    OPCODE_CONTINUATION: Final = 0x00
    OPCODE_TEXT: Final = 0x01
    OPCODE_BINARY: Final = 0x02
    OPCODE_CLOSE: Final = 0x08
    OPCODE_PING: Final = 0x09
    OPCODE_PONG: Final = 0x0A

    __slots__ = ("_up", "_handler", "_server")

    def __init__(self, upgrade: Upgrade, server: Server) -> None:
        self._up = upgrade
        self._server = server
        self._handler: Handler | None = None

    def _open(self) -> Upgrade:
        up = self._up
        if up.mode is not Mode.WEBSOCKET:
            up.claim(Mode.WEBSOCKET)
            if self._handler is None:
                self._handler = Handler(self._server, up.environ, self)
                if self._server.application is None:
                    self._server.application = up.app
                if not up.finished:
                    handler, server = self._handler, self._server
                    handler.key = key = server.register(handler.client_address, self)
                    up.done.rawlink(lambda _: server.unregister(key, self))
        return up

    # ---------------------------------------------------------------- gevent-websocket's API
    def receive(self) -> str | bytearray | None:
        up = self._up
        if up.mode is not Mode.WEBSOCKET:
            up = self._open()
        if up.local_closed or up.none_delivered:
            self.current_app.on_close(MSG_ALREADY_CLOSED)
            raise WebSocketError(MSG_ALREADY_CLOSED)
        return up.receive()

    def send(self, message: str | bytes | bytearray | memoryview, binary: bool | None = None) -> None:
        up = self._up
        if up.mode is not Mode.WEBSOCKET:
            up = self._open()
        if binary is None and type(message) is str:  # the common case, first
            try:
                up.send(message, -1)  # (its UTF-8 length is counted only if metrics keep it)
            except WebSocketError:
                self.current_app.on_close(MSG_SOCKET_DEAD)
                raise
            return
        if binary is None:
            binary = not isinstance(message, str)
        if binary:
            data: str | bytes | bytearray | memoryview = \
                message.encode() if isinstance(message, str) else message
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"a WebSocket message is str or bytes, not {type(message).__name__}")
            size = len(data) if not isinstance(data, memoryview) else data.nbytes
        else:
            if isinstance(message, str):
                data = message
                size = len(message) if message.isascii() else len(message.encode())
            elif isinstance(message, (bytes, bytearray, memoryview)):
                # a text frame must be UTF-8: fail here, not at the peer
                data = bytes(message).decode("utf-8")
                size = len(message) if not isinstance(message, memoryview) else message.nbytes
            else:
                raise TypeError(f"a WebSocket message is str or bytes, not {type(message).__name__}")
        try:
            up.send(data, size)
        except WebSocketError:
            self.current_app.on_close(MSG_SOCKET_DEAD)
            raise

    def send_frame(self, message: str | bytes | bytearray, opcode: int) -> None:
        up = self._open()
        if opcode == self.OPCODE_TEXT:
            self.send(message, binary=False)
        elif opcode == self.OPCODE_BINARY:
            self.send(message, binary=True)
        elif opcode == self.OPCODE_CLOSE:
            self.close()
        elif opcode in (self.OPCODE_PING, self.OPCODE_PONG):
            payload = message.encode() if isinstance(message, str) else bytes(message)
            proto = up.proto
            if proto is None or up.finished or not up.send_control(
                    (lambda: proto.ping(payload)) if opcode == self.OPCODE_PING else
                    (lambda: proto.pong(payload))):
                raise WebSocketError(MSG_SOCKET_DEAD)
        else:
            raise ValueError(f"cannot send a frame with opcode {opcode:#x}")

    def close(self, code: int = NORMAL, message: str | bytes = b"") -> None:
        if not valid_close_code(code):
            raise ValueError(f"{code} is not a close code an application may send")
        up = self._open()
        if up.local_closed or up.finished:
            self.current_app.on_close(MSG_ALREADY_CLOSED)
            return
        if isinstance(message, (bytes, bytearray)):
            reason = message.decode("utf-8", "replace")
        else:
            reason = str(message)
        up.close(code, reason)

    @property
    def closed(self) -> bool:
        up = self._open()
        if up.local_closed or up.none_delivered:
            return True
        return not up.inbox and (up.finished or up.proto is None or up.proto.state is not State.OPEN)

    @property
    def environ(self) -> dict[str, Any] | None:
        up = self._open()
        return None if up.local_closed else up.environ

    @property
    def origin(self) -> str | None:
        return self._open().environ.get("HTTP_ORIGIN")

    @property
    def protocol(self) -> str | None:
        return self._open().environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL")

    @property
    def version(self) -> str | None:
        return self._open().environ.get("HTTP_SEC_WEBSOCKET_VERSION")

    @property
    def path(self) -> str | None:
        return self._open().environ.get("PATH_INFO")

    @property
    def handler(self) -> Handler:
        self._open()
        assert self._handler is not None
        return self._handler

    @property
    def logger(self) -> logging.Logger:
        return self.handler.logger

    @property
    def current_app(self) -> Any:
        app = self._server.application
        current = getattr(app, "current_app", None)
        return current if current is not None else _NoApp()

    def __bool__(self) -> bool:
        # `if environ.get("wsgi.websocket"):` is how such apps test for a WebSocket request
        self._open()
        return True

    def __repr__(self) -> str:
        up = self._up
        return f"<WebSocket {up.environ.get('PATH_INFO')!r} {up.mode.value}>"

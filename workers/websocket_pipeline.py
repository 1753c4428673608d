"""The WebSocket hand-off from the HTTP/1.1 pipeline (websocket.py's `prepare` / `finish`).

conn.py's Exchange method `upgrade(env, app)` lands here for a request whose head asked
for another protocol (http1.py's `req.upgrade`; HTTP/2 has no such head). A valid
WebSocket upgrade gets the app wrapped so that the request stage (request.py) runs it like
any app, with these differences:
- the request timer (--request-timeout) is never armed for it (the stage's choice);
- the app's result is taken whole (as gevent-websocket's handler does with
  `list(app(...))`) before `Upgrade.finish`, so an app that takes the connection over while
  its iterable runs is a WebSocket too;
- if the app took the connection over, the wrapper raises `TakenOver`: the stage records a
  101 and sends nothing, and the connection (conn.py) closes without an HTTP response;
  otherwise the app's response goes out as usual (a WebSocket route may refuse with 403).
An upgrade RFC 6455 does not allow becomes an app answering the `Refusal` (400, 426, 503),
and the connection closes after it (an upgrade head never keeps a connection alive).

`TransportStream` is websocket_session's `Stream` over the connection's transport: `recv()`
and `flush()` of `t.out`, decrypted and encrypted by tlstransport.py under TLS.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from greenfork.workers.timers import NONE
from greenfork.workers.transport import RECV_SIZE, Transport
from greenfork.workers.websocket import Refusal, Upgrade

if TYPE_CHECKING:
    from greenfork.workers.conn import Connection

log = logging.getLogger("greenfork.worker")

App = Callable[[dict[str, Any], Any], Iterable[bytes]]

# The connection-metrics error_type of a WebSocket its peer broke (METRICS.md, docs/metrics.md)
PROTOCOL_ERROR_CODES = (1002, 1007)


class TakenOver(Exception):
    """The app took the connection over (WebSocket): no HTTP response may follow."""


class TransportStream:
    """The connection's bytes for websocket_session.Upgrade.

    recv() runs in the greenlet reading (the app's in receive(), or a background reader) while
    send() runs in whichever greenlet holds the Upgrade's send lock: the transport's two waits
    use two watchers, the send timeout (--send-timeout, the SEND phase) lands in the greenlet
    waiting to send (transport.py's wait_for_room), and under TLS ciphertext made while
    reading queues behind a blocked send (tlstransport.py). The transport stays in the
    sweeper's set in phase NONE, which never expires, and without a request deadline.
    """

    __slots__ = ("closed", "drained", "pending", "t")

    def __init__(self, t: Transport, pending: bytes) -> None:
        self.t = t
        self.pending = pending  # bytes the client sent after the request head
        self.closed = False
        self.drained = True  # the last read took all there was

    def recv(self) -> bytes:
        if self.closed:
            raise OSError(errno.EBADF, "the connection is closed")
        t = self.t
        if self.drained:
            # A client's next message usually follows our answer to its last one, so a read
            # now would nearly always fail (and the failure costs a system call and an
            # exception per message): wait first, as conn.py does between requests.
            t.wait_readable()
        data = t.recv()
        self.drained = len(data) < RECV_SIZE
        return data

    def send(self, data: bytes) -> None:
        if self.closed:
            raise BrokenPipeError(errno.EPIPE, "the connection is closed")
        t = self.t
        t.out.append(data)
        t.flush()

    def close(self) -> None:
        """From the hub (Upgrade._close_stream), once the greenlets waiting in recv() or
        send() have been thrown out of their waits; never blocks. Closing the transport here,
        not when the app returns, is what cuts a connection whose app is busy elsewhere (a
        timeout, the end of the going-away grace); conn.py's own close after it is a no-op.
        Under TLS a close_notify goes out first, best effort."""
        if self.closed:
            return
        self.closed = True
        t = self.t
        t.out.clear()  # what an aborted send left behind
        t.enter(NONE)  # a send aborted while waiting for room left the SEND phase on
        t.close()


def hand_off(conn: Connection, env: dict[str, Any], app: App) -> App | None:
    """What to call instead of the app for an upgrade request, or None: not a WebSocket
    upgrade, serve it as plain HTTP."""
    req = conn.req
    assert req is not None
    stream = TransportStream(conn.t, conn.p.upgrade_data)
    ws = conn.server.websockets.prepare(env, req.headers, stream, app)
    if ws is None:
        return None
    if isinstance(ws, Refusal):
        return _refusal(ws)
    conn.upgraded = ws
    return _websocket(ws, app)


def _refusal(refusal: Refusal) -> App:
    def refuse(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        status, headers, body = refusal.response()
        start_response(status, headers)
        return [body]

    return refuse


def _websocket(up: Upgrade, app: App) -> App:
    def websocket(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        error: Exception | None = None
        chunks: list[bytes] = []
        try:
            result = app(environ, start_response)
            try:
                for chunk in result:
                    chunks.append(chunk)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception as e:  # StopIteration included: simple-websocket's "the connection is mine"
            error = e
        except BaseException:
            up.finish(None)  # (a worker being killed) the WebSocket still ends with a close frame
            raise
        if up.finish(error):
            raise TakenOver()
        if error is not None:
            raise error
        return chunks

    return websocket


def protocol_error(up: Upgrade) -> bool:
    """Whether the peer broke RFC 6455 (the close code of record is 1002 or 1007)."""
    return up.code in PROTOCOL_ERROR_CODES

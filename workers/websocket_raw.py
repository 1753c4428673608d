"""`environ["gunicorn.socket"]` on a WebSocket upgrade request: a socket over the stream.

simple-websocket (under flask-sock, and under python-engineio's gevent driver when
gevent-websocket is not installed) looks for the connection's socket in the environ,
writes its own 101 response and frames to it, and reads frames from it in a thread (a
greenlet under gevent's monkey patching). It finds werkzeug's key first, then gunicorn's;
greenfork sets gunicorn's, so those libraries take their gunicorn path (they end the app
with StopIteration, which Upgrade.finish expects).

What they call is here: recv, recv_into, send, sendall, close, shutdown, settimeout,
setblocking, getpeername, getsockname, setsockopt and fileno. The bytes the client sent
after the request head come first. Over TLS the stream decrypts, so fileno() cannot be the
connection's descriptor: it is an eventfd that is readable exactly when recv() would not
block, fed by a pump greenlet that reads the stream only after fileno() was asked for
(simple-websocket's ping_interval option polls the socket with a selector).

The library's frames are its own; this side only notices its 101 (the connection counts as
open from there) and the close frames it sends (the close code of record), and on
`going_away` puts a 1001 close frame between two of its writes, each of which is whole
frames.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import gevent
from gevent.event import Event

from greenfork.workers.websocket_protocol import GOING_AWAY
from greenfork.workers.websocket_session import Aborted, Mode, Upgrade, WebSocketError

_101 = b"HTTP/1.1 101"


def close_frame(code: int, reason: str) -> bytes:
    """A server's (unmasked) close frame."""
    payload = code.to_bytes(2, "big") + reason.encode()[:123]
    return bytes((0x88, len(payload))) + payload


class RawSocket:
    def __init__(self, upgrade: Upgrade) -> None:
        self._up = upgrade
        self._buf = upgrade.stream.pending
        self._eof = False
        self._closed = False
        self._wr_shut = False
        self._timeout: float | None = None
        self._efd = -1  # the eventfd fileno() returns, once asked for
        self._ready: Event | None = None  # the pump put bytes in _buf, or reached EOF
        self._drained: Event | None = None  # recv() emptied _buf: the pump may read again
        self.upgraded = False  # the library's 101 went out
        self.close_sent = False  # the library (or going_away) sent a close frame
        ipv6 = ":" in str(upgrade.environ.get("REMOTE_ADDR", ""))
        self.family = socket.AF_INET6 if ipv6 else socket.AF_INET
        self.type = socket.SOCK_STREAM
        self.proto = 0

    # ---------------------------------------------------------------- reading
    def _claim(self) -> Upgrade:
        up = self._up
        if up.mode is not Mode.RAW:
            up.claim(Mode.RAW)
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return up

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        up = self._claim()
        if bufsize <= 0:
            return b""
        if not self._buf and not self._eof:
            if self._ready is not None:
                self._wait_pump()
            elif self._timeout == 0.0:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            else:
                data = self._read(up)
                if not data:
                    self._eof = True
                self._buf = data
        buf = self._buf
        if len(buf) <= bufsize:
            self._buf = b""
            out = buf
        else:
            out, self._buf = buf[:bufsize], buf[bufsize:]
        if not self._buf and self._drained is not None and not self._eof:
            self._unsignal()
            self._drained.set()
        return bytes(out)

    def recv_into(self, buffer: bytes | bytearray | memoryview, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view))
        view[:len(data)] = data
        return len(data)

    def _read(self, up: Upgrade) -> bytes:
        try:
            if self._timeout is None:
                return up._recv()
            with gevent.Timeout(self._timeout, TimeoutError("timed out")):
                return up._recv()
        except Aborted:
            raise OSError(errno.EBADF, "the connection was closed") from None

    def _wait_pump(self) -> None:
        ready = self._ready
        assert ready is not None
        while not self._buf and not self._eof and not self._closed:
            if self._timeout == 0.0:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            ready.clear()
            if not ready.wait(self._timeout):
                raise TimeoutError("timed out")
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")

    # ---------------------------------------------------------------- fileno and its pump
    def fileno(self) -> int:
        up = self._claim()
        if self._efd < 0:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._ready = Event()
            self._drained = Event()
            if self._buf or self._eof:
                self._signal()
            gevent.spawn_raw(self._pump, up)
        return self._efd

    def _signal(self) -> None:
        if self._efd >= 0:
            os.eventfd_write(self._efd, 1)

    def _unsignal(self) -> None:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass

    def _pump(self, up: Upgrade) -> None:
        ready, drained = self._ready, self._drained
        assert ready is not None and drained is not None
        while not self._closed and not self._eof:
            while self._buf and not self._closed:
                drained.clear()
                drained.wait()
            if self._closed:
                break
            try:
                data = up._recv()
            except (OSError, Aborted):
                data = b""
            if data:
                self._buf = data
            else:
                self._eof = True
            self._signal()
            ready.set()

    # ---------------------------------------------------------------- writing
    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        up = self._claim()
        if self._wr_shut:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        chunk = bytes(data)
        if not chunk:
            return 0
        first = not self.upgraded
        with up.send_lock:
            try:
                up._write(chunk)
            except Aborted:
                raise BrokenPipeError(errno.EPIPE, "the connection was closed") from None
            except WebSocketError as e:
                raise BrokenPipeError(errno.EPIPE, str(e)) from None
        if first:
            if chunk.startswith(_101):
                self.upgraded = True
                up.count_open()
                if up.going_away:
                    self.go_away()
        elif chunk[0] == 0x88:  # FIN + close: the library's close frame
            self.close_sent = True
            if up.code == 1006:
                up.code = int.from_bytes(chunk[2:4], "big") if chunk[1] & 0x7F >= 2 else 1005
        return len(chunk)

    def sendall(self, data: bytes | bytearray | memoryview, flags: int = 0) -> None:
        self.send(data, flags)

    def go_away(self) -> None:
        """Called on going_away: a 1001 close frame between two of the library's writes."""
        up = self._up
        if not self.upgraded or self.close_sent or self._closed:
            return  # before its 101 this waits: send() calls back here after it
        self.close_sent = True
        up.code = GOING_AWAY
        gevent.spawn_raw(up.send_control, lambda: close_frame(GOING_AWAY, "server going away"))

    # ---------------------------------------------------------------- the end
    def close(self) -> None:
        if self._closed:
            return
        up = self._up
        if up.mode is Mode.PENDING:
            up.claim(Mode.RAW)  # closing the socket ends the connection, as it would for a real one
        self._closed = True
        if up.mode is Mode.RAW:
            up.abort()
        self._close_efd()

    def shutdown(self, how: int) -> None:
        self._claim()
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self._eof = True
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self._wr_shut = True

    def release(self) -> None:
        """From Upgrade._close_stream, in the hub: the stream is going away. A selector that
        polls fileno() wakes and sees EOF; the library closes the descriptor with close()."""
        self._eof = True
        if self._efd >= 0:
            self._signal()
        for ev in (self._ready, self._drained):
            if ev is not None:
                ev.set()

    def _close_efd(self) -> None:
        if self._efd >= 0:
            os.close(self._efd)
            self._efd = -1

    def __del__(self) -> None:
        try:
            self._close_efd()
        except Exception:
            pass

    # ---------------------------------------------------------------- what else sockets answer
    def settimeout(self, timeout: float | None) -> None:
        self._timeout = None if timeout is None else float(timeout)

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getpeername(self) -> tuple[str, int]:
        env = self._up.environ
        return str(env.get("REMOTE_ADDR", "")), int(env.get("REMOTE_PORT") or 0)

    def getsockname(self) -> tuple[str, int]:
        env = self._up.environ
        return str(env.get("SERVER_NAME", "")), int(env.get("SERVER_PORT") or 0)

    def setsockopt(self, *args: Any) -> None:
        """Socket options belong to the server's transport (and mean nothing over TLS)."""

    def getsockopt(self, *args: Any) -> int:
        return 0

    def dup(self) -> RawSocket:
        raise NotImplementedError("the connection cannot be duplicated")

    def __repr__(self) -> str:
        return f"<greenfork RawSocket {self._up.mode.value}{' closed' if self._closed else ''}>"

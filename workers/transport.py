"""The client socket under a connection: the OS socket, non-blocking, waits through the hub.

gevent's socket class costs, per connection, two io watchers, a getsockname, several
Python frames per call and, at close, the hub's waiter bookkeeping; profiles of short
connections showed it near a fifth of the worker's time. Here a read or write is tried
on the OS socket first, and only when it would block does the connection wait on an io
watcher, made the first time one is needed: a request that arrives with its connection,
answered with one write, never needs any.

Only the connection's own greenlet reads, writes and closes, so there is never a second
waiter to cancel. Timeouts are the sweeper's (timers.py): before a wait that may block
for long, the caller records its phase; the sweeper throws Expired into the wait.
"""

from __future__ import annotations

import _socket
import logging
import os
from typing import TYPE_CHECKING, Any, NoReturn

from greenfork.workers.timers import NONE, REASONS, SEND, Expired

if TYPE_CHECKING:
    from greenfork.workers.response import ResponseFramer
    from greenfork.workers.wsgi import StartResponse

log = logging.getLogger("greenfork.worker")

RECV_SIZE = 65536
FLUSH_AT = 65536  # gathered output above this is sent even while pipelining
GATHER_OVER = 65536  # above this, output parts go out with one sendmsg instead of being joined
GATHER_MAX = 64  # well under IOV_MAX
SEND_EXPIRED = REASONS[SEND]
_READ, _WRITE = 1, 2  # libev's EV_READ, EV_WRITE


class ClientGone(Exception):
    """The peer closed or reset while we were writing."""


class Transport:
    """Reading, gathered writing and sendfile over one client socket."""

    __slots__ = ("_rw", "_ww", "deadline", "expired", "framer", "head_flushed", "hub", "out", "phase",
                 "rx", "sock", "sr", "tx")

    def __init__(self, sock: _socket.socket, hub: Any) -> None:
        self.sock = sock  # the OS socket, already non-blocking
        self.hub = hub
        self._rw: Any = None  # io watchers, made on first use
        self._ww: Any = None
        self.out: list[bytes] = []
        self.framer: ResponseFramer | None = None
        self.sr: StartResponse | None = None
        self.head_flushed = False
        # timers.py: the phase this connection waits in and its deadline (0.0: not armed yet)
        self.phase = NONE
        self.deadline = 0.0
        self.expired: str | None = None  # the error_type, once a timeout fired
        self.rx = self.tx = 0

    # ---------------------------------------------------------------- reading
    def recv(self) -> bytes:
        """The next bytes from the client (b"" at its EOF), waiting as long as it takes."""
        sock = self.sock
        while True:
            try:
                return sock.recv(RECV_SIZE)
            except BlockingIOError:
                pass
            self.wait_readable()

    def wait_readable(self) -> None:
        w = self._rw
        if w is None:
            w = self._rw = self.hub.loop.io(self.sock.fileno(), _READ)
        self.hub.wait(w)

    def wait_writable(self) -> None:
        w = self._ww
        if w is None:
            w = self._ww = self.hub.loop.io(self.sock.fileno(), _WRITE)
        self.hub.wait(w)

    def close(self) -> None:
        for w in (self._rw, self._ww):
            if w is not None:
                w.close()
        self._rw = self._ww = None
        self.sock.close()

    # ---------------------------------------------------------------- writing
    def flush(self) -> None:
        """Send everything gathered in self.out."""
        out = self.out
        if not out:
            return
        if self.expired == SEND_EXPIRED:
            raise ClientGone()  # the send timeout fired: nothing more goes out
        if self.framer is not None:  # the head goes out now: start_response may no longer replace it
            self.head_flushed = True
            if self.sr is not None:
                self.sr.sent = True
        total = sum(map(len, out))
        if 1 < len(out) <= GATHER_MAX and total > GATHER_OVER:
            # A large body goes out with its head in one sendmsg, without the join's copy.
            parts, self.out = out, []
        else:
            parts = [out[0] if len(out) == 1 else b"".join(out)]
            out.clear()
        self.tx += total
        # One non-blocking send usually takes it all; a wait (and the send timeout)
        # is only needed when the socket buffer is full.
        try:
            sent = self.sock.send(parts[0]) if len(parts) == 1 else self.sock.sendmsg(parts)
        except BlockingIOError:
            sent = 0
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ClientGone() from e
        if sent < total:
            self._send_rest(parts, sent)

    def _send_rest(self, parts: list[bytes], sent: int) -> None:
        """The slow path of every write: the socket buffer was full."""
        sock = self.sock
        views = [memoryview(p) for p in parts]
        try:
            while True:
                while views and sent >= len(views[0]):  # drop the buffers that went out whole
                    sent -= len(views[0])
                    views.pop(0)
                if not views:
                    return
                views[0] = views[0][sent:]
                self._wait_for_room()
                try:
                    sent = sock.sendmsg(views)
                except BlockingIOError:
                    sent = 0
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ClientGone() from e

    def _wait_for_room(self) -> None:
        """Wait, in the SEND phase, until the socket takes more. Every wait follows a first
        full buffer or progress, so the send timeout counts from here."""
        phase = self.phase
        self.phase = SEND
        self.deadline = 0.0
        try:
            self.wait_writable()
        except Expired as e:
            self._send_expired(e)
        self.phase = phase
        self.deadline = 0.0

    def _send_expired(self, e: Expired) -> NoReturn:
        self.expired = e.reason
        log.debug("closed connection from %s: %s", self.peer(), e.reason)
        raise ClientGone() from None

    def peer(self) -> str:
        return "a client"

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        """os.sendfile in a cooperative loop: the kernel copies, the hub waits for room.
        Returns the bytes sent, short if the file is shorter than count."""
        sockfd = self.sock.fileno()
        remaining = count
        while remaining > 0:
            try:
                sent = os.sendfile(sockfd, fd, offset, min(remaining, 1 << 20))
            except BlockingIOError:
                self._wait_for_room()
                continue
            except (BrokenPipeError, ConnectionResetError) as e:
                raise ClientGone() from e
            if sent == 0:
                break  # the file is shorter than its Content-Length
            offset += sent
            remaining -= sent
            self.tx += sent
        return count - remaining

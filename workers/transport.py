"""The bytes of one client: the OS socket, non-blocking, waits through the hub.

The transport owns the file descriptor, every wait on it and the send and
sendfile paths; it knows nothing of HTTP. A protocol above it reads with recv(),
gathers output in `out` and sends it with flush().

gevent's socket class costs, per connection, two io watchers, a getsockname, several
Python frames per call and, at close, the hub's waiter bookkeeping; profiles of short
connections showed it near a fifth of the worker's time. Here a read or write is tried
on the OS socket first, and only when it would block does the transport wait on an io
watcher, made the first time one is needed: a request that arrives with its connection,
answered with one write, never needs any.

Only the connection's own greenlet reads, writes and closes, so there is never a second
waiter to cancel. One exception, flush_later(): a kept connection's answers, complete and
about to be followed by a wait for the next request, are sent by the hub at the end of its
loop iteration, together (_Later), rather than each before its greenlet's wait. The client's
side is woken once for a batch of answers instead of once for each (on a virtual machine a
wake-up across CPUs is an interrupt the hypervisor delivers: 16% of the worker's time under
a 16 KiB POST load); measured: echo16k +15%, pipeline16 +9%, hello unchanged (docs/performance.md).
What the kernel does not take at once goes back to the connection's greenlet, woken for it,
which sends the rest with its waits and send timeout as any flush().

Timeouts are the sweeper's (timers.py): a Transport is a Timed; before
a wait that may block for long, the caller enters its phase, and the sweeper throws
Expired into the wait.
"""

from __future__ import annotations

import _socket
import fcntl
import logging
import os
import socket
import struct
import termios
import time
from collections.abc import Callable
from typing import Any, Final, NoReturn

from greenlet import getcurrent

from greenfork.workers.timers import LINGER, NONE, REASONS, SEND, Expired, Timed

log = logging.getLogger("greenfork.worker")

RECV_SIZE: Final = 65536
FLUSH_AT: Final = 65536  # gathered output above this is sent even while pipelining
GATHER_OVER: Final = 65536  # above this, output parts go out with one sendmsg instead of being joined
GATHER_MAX: Final = 64  # well under IOV_MAX
# A lingering close discards for at most this long in all (nginx's lingering_time) and
# this much; each read may wait LINGER_TIMEOUT (timers.py: the LINGER phase's deadline).
LINGER_TIME: Final = 30.0
LINGER_BYTES: Final = 256 << 20
SEND_EXPIRED: Final = REASONS[SEND]
_READ, _WRITE = 1, 2  # libev's EV_READ, EV_WRITE
_MORE: Final = socket.MSG_MORE


class _Later:
    """One hub's transports whose output waits for the end of its loop iteration."""

    __slots__ = ("items", "loop")

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.items: list[Transport] = []

    def add(self, t: Transport) -> None:
        if not self.items:
            self.loop.run_callback(self.run)  # (run once the ready connections have all run)
        self.items.append(t)

    def run(self) -> None:
        items, self.items = self.items, []
        for t in items:
            t._send_later()


_LATER: dict[Any, _Later] = {}  # by hub (one in a worker)


def unknown_peer() -> str:
    return "a client"


class ClientGone(ConnectionError):
    """The peer closed or reset while we were writing, or stopped reading for too long
    (reason: the metrics' error_type). A ConnectionError, as a failed socket send is: code
    written for sockets (a WebSocket stream's users, apps catching OSError around a write,
    as under gunicorn) handles it without knowing this module."""

    def __init__(self, reason: str = "io_error") -> None:
        super().__init__(reason)
        self.reason = reason


class Transport(Timed):
    """Reading, gathered writing and sendfile over one client socket."""

    __slots__ = ("_later", "_rw", "_unread", "_ww", "describe", "expired", "flushes", "hub", "out", "rx",
                 "sock", "tx")

    def __init__(self, sock: _socket.socket, hub: Any) -> None:
        Timed.__init__(self)
        self.sock = sock  # the OS socket, already non-blocking
        self.hub = hub
        self._rw: Any = None  # io watchers, made on first use
        self._ww: Any = None
        self.out: list[bytes] = []  # gathered output (never rebound: protocols keep a reference)
        self.flushes = 0  # flush() calls that sent something: "has anything gone out since?"
        self.expired: str | None = None  # the error_type, once a timeout fired
        self.rx = self.tx = 0
        self.describe: Callable[[], str] = unknown_peer  # who is at the other end, for the log
        self._unread = b""  # bytes handed back by unread(): the next recv() returns them first
        # flush_later(): 1 while the hub holds our output, 2 when it left us a rest to send
        self._later = 0

    # ---------------------------------------------------------------- reading
    def recv(self) -> bytes:
        """The next bytes from the client (b"" at its EOF), waiting as long as it takes."""
        if self._unread:  # (one attribute test per read: the PROXY header's leftovers, rarely)
            data, self._unread = self._unread, b""
            return data
        sock = self.sock
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                self.wait_readable()
                continue
            self.rx += len(data)
            return data

    def recv_nowait(self) -> bytes | None:
        """The bytes already here (b"" at the client's EOF), or None if a read would wait
        (HTTP/2's driver waits for input and for its streams at once: h2conn.py)."""
        if self._unread:
            data, self._unread = self._unread, b""
            return data
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return None
        self.rx += len(data)
        return data

    def unread(self, data: bytes) -> None:
        """Hand back bytes read from the socket but not used (what followed a PROXY header):
        the next recv(), the raw one under TLS included, returns them before reading the socket.
        Read again before waiting: wait_readable() does not look at them."""
        self._unread = data + self._unread

    def wait_readable(self) -> None:
        w = self._rw
        if w is None:
            w = self._rw = self.hub.loop.io(self.sock.fileno(), _READ)
        self.hub.wait(w)
        if self._later:  # woken by the hub's flush, with a rest to send (_send_later)
            self._later = 0
            self.flush()

    def wait_writable(self) -> None:
        w = self._ww
        if w is None:
            w = self._ww = self.hub.loop.io(self.sock.fileno(), _WRITE)
        self.hub.wait(w)

    def pending_input(self) -> bool:
        """Whether the client's next bytes have already arrived. FIONREAD, because a recv
        would take them away from the greenlet that is about to read them."""
        if self._unread:
            return True
        try:
            raw = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return False
        return int(struct.unpack("i", raw)[0]) > 0

    # ---------------------------------------------------------------- closing
    def close(self) -> None:
        if self._later and self.out:  # ended before the hub sent it (a drain, say): one try
            try:
                self.sock.send(b"".join(self.out))
            except OSError:
                pass
            self.out.clear()
        for w in (self._rw, self._ww):
            if w is not None:
                w.close()
        self._rw = self._ww = None
        self.sock.close()
        # Greenlets are pooled: nothing may be thrown at this one for us any more.
        self.phase = NONE
        self.request_deadline = -1.0
        self.greenlet = None

    def linger(self) -> None:
        """Close without resetting what we sent last: the client may still be sending (a
        body we refused, requests behind an error). Closing a socket with unread input
        makes the kernel send a reset, which can destroy our answer before the client
        reads it; so, as nginx's lingering_close does, stop writing and read and discard
        for a bounded time and amount, until the client closes too. Then close()."""
        try:
            self.flush()
            self.end_writing()
            self.sock.shutdown(socket.SHUT_WR)
        except (ClientGone, OSError):
            return
        got = 0
        until = time.monotonic() + LINGER_TIME
        try:
            while got < LINGER_BYTES and time.monotonic() < until:
                self.enter(LINGER)
                data = self.recv_raw()
                if not data:
                    break
                got += len(data)
        except (Expired, OSError):
            pass
        finally:
            self.enter(NONE)

    def finish(self) -> None:
        """Send what is gathered as the connection's last bytes, then its FIN: close() follows.

        In one segment, not two (the answer, then a FIN of its own): MSG_MORE holds the tail
        back until shutdown() adds the FIN to it. For a connection per request that is a
        sixth of the worker's CPU (docs/performance.md). The FIN goes before close(), as
        linger() sends it: input we never read makes close() send a reset, which must not
        find the answer still held back."""
        self.flush(_MORE)
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client is gone: close() follows

    def end_writing(self) -> None:
        """The last bytes before the write side shuts (TLS: its close_notify)."""

    def recv_raw(self) -> bytes:
        """The next bytes on the socket itself (below any decryption), b"" at EOF."""
        return Transport.recv(self)

    # ---------------------------------------------------------------- writing
    def flush(self, flags: int = 0) -> None:
        """Send everything gathered in self.out (flags: the first send's, finish()'s MSG_MORE)."""
        out = self.out
        if not out:
            return
        if self.expired == SEND_EXPIRED:
            raise ClientGone(SEND_EXPIRED)  # the send timeout fired: nothing more goes out
        self.flushes += 1
        total = sum(map(len, out))
        if 1 < len(out) <= GATHER_MAX and total > GATHER_OVER:
            # A large body goes out with its head in one sendmsg, without the join's copy.
            parts = out[:]
        else:
            parts = [out[0] if len(out) == 1 else b"".join(out)]
        out.clear()
        self.tx += total
        # One non-blocking send usually takes it all; a wait (and the send timeout)
        # is only needed when the socket buffer is full.
        try:
            sent = self.sock.send(parts[0], flags) if len(parts) == 1 else self.sock.sendmsg(parts, (), flags)
        except BlockingIOError:
            sent = 0
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ClientGone() from e
        if sent < total:
            self._send_rest(parts, sent, flags)

    def flush_later(self) -> None:
        """flush(), by the hub at the end of its loop iteration: for a connection whose next
        step is wait_readable() (nothing else may write meanwhile: only that wait, a flush()
        or close() may follow; each of them sends what is still held, in order)."""
        if self.out and not self._later:
            if self.expired == SEND_EXPIRED:
                raise ClientGone(SEND_EXPIRED)
            self._later = 1
            later = _LATER.get(self.hub)
            if later is None:
                later = _LATER[self.hub] = _Later(self.hub.loop)
            later.add(self)

    def _send_later(self) -> None:
        """In the hub: one non-blocking send of what flush_later() left. A rest the kernel
        did not take goes back to the greenlet, woken from its wait_readable() to send it."""
        out = self.out
        if self._later != 1 or not out:  # sent meanwhile by the greenlet's own flush()
            self._later = 0
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.flushes += 1
        self.tx += len(data)
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:  # gone (or closed): its greenlet learns it at its next read
            self._later = 0
            return
        if sent == len(data):
            self._later = 0
            return
        out.append(data[sent:])
        self.tx -= len(data) - sent  # (flush() counts it again)
        self.flushes -= 1
        self._later = 2
        w = self._rw
        if w is not None and w.callback is not None:
            w.callback(*w.args)  # the greenlet's wait, woken as a read would wake it

    def _send_rest(self, parts: list[bytes], sent: int, flags: int = 0) -> None:
        """The slow path of every write: the socket buffer was full. (flags: finish()'s
        MSG_MORE, so that the tail still waits for the FIN.)"""
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
                self.wait_for_room()
                try:
                    sent = sock.sendmsg(views, (), flags)
                except BlockingIOError:
                    sent = 0
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ClientGone() from e

    def wait_for_room(self) -> None:
        """Wait, in the SEND phase, until the socket takes more. Every wait follows a first
        full buffer or progress, so the send timeout counts from here."""
        phase = self.phase
        # An upgraded connection (a WebSocket, websocket_stream.py) sends from whichever
        # greenlet holds its send lock: the send timeout must be thrown into the one
        # waiting here. (Always the connection's own greenlet for HTTP.)
        owner = self.greenlet
        self.greenlet = getcurrent()
        self.enter(SEND)
        try:
            self.wait_writable()
        except Expired as e:
            self._send_expired(e)
        finally:
            self.greenlet = owner
        self.enter(phase)

    def _send_expired(self, e: Expired) -> NoReturn:
        self.expired = e.reason
        log.debug("closed connection from %s: %s", self.describe(), e.reason)
        raise ClientGone(e.reason) from None

    @property
    def can_sendfile(self) -> bool:
        """Whether file bytes may go from the kernel's page cache to the socket as they are."""
        return True

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        """os.sendfile in a cooperative loop: the kernel copies, the hub waits for room.
        Returns the bytes sent, short if the file is shorter than count."""
        sockfd = self.sock.fileno()
        remaining = count
        while remaining > 0:
            try:
                sent = os.sendfile(sockfd, fd, offset, min(remaining, 1 << 20))
            except BlockingIOError:
                self.wait_for_room()
                continue
            except (BrokenPipeError, ConnectionResetError) as e:
                raise ClientGone() from e
            if sent == 0:
                break  # the file is shorter than its Content-Length
            offset += sent
            remaining -= sent
            self.tx += sent
        return count - remaining

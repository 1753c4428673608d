"""Accepting connections, and the greenlets that serve them.

A connection is served by one greenlet from start to close. Greenlets are kept
and reused rather than spawned per connection: on CPython 3.11 each new greenlet
maps (and at its end unmaps) a fresh 16 KiB frame stack, and gevent's Greenlet adds
spawn-tree bookkeeping; for short connections that was a tenth of the worker's time.
A greenlet that finished its connection parks itself, and the accept loop hands it
the next one through the hub (never by switching to it directly, so the accept loop
keeps running). At most POOL_MAX greenlets wait parked; beyond that they end.

The accept loop takes the OS socket's accept (gevent's wrapper builds a gevent
socket per client, which transport.py does without) and waits on one io watcher.
"""

from __future__ import annotations

import _socket
import errno
import logging
import socket
import sys
from typing import TYPE_CHECKING, Any, Final, Protocol

import gevent
from greenlet import getcurrent, greenlet

from greenfork.workers.conn import Connection

if TYPE_CHECKING:
    from greenfork.workers.worker import ListenerContext, WorkerServer

log = logging.getLogger("greenfork.worker")

POOL_MAX: Final = 64
# connections checked for an inherited TCP_NODELAY before each one is given it unchecked
NODELAY_CHECKS: Final = 64


class Runnable(Protocol):
    """What a pooled greenlet serves: a connection, or an HTTP/2 stream (h2stream.py)."""

    greenlet: Any

    def run(self) -> None: ...
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Acceptor:
    def __init__(self, server: WorkerServer) -> None:
        self.server = server
        self.hub = server.hub
        self.parked: list[greenlet] = []  # handler greenlets waiting for a connection

    def accept_loop(self, sock: socket.socket, ctx: ListenerContext) -> None:
        server = self.server
        limit = server.settings.worker_connections
        tcp = not ctx.unix
        shedder = server.shedder
        connections = server.connections
        hub = self.hub
        os_sock: Any = getattr(sock, "_sock", sock)  # gevent's socket wraps a non-blocking OS socket
        accept = os_sock._accept
        family = sock.family
        watcher = hub.loop.io(sock.fileno(), 1)
        # issue 17: a delegating front hands a connection over right here when its first read
        # holds a whole head for a target (delegation_inline.py); None on other listeners
        inline = ctx.inline
        data: bytes | None = b""
        # TCP_NODELAY (our answers go out whole; Nagle would hold a pipelined one back): set on
        # the listening socket (by the master before listen(), master/listeners.py), Linux's
        # accepted sockets inherit it, which saves a system call a connection. Connections the
        # kernel completed before it was set (an adopted socket's backlog) do not: so sockets
        # are checked, and given it, until one has inherited it, or NODELAY_CHECKS have not (then
        # each one gets it, unchecked). A single connection's word was not enough: a client that
        # connected before the option was set made every later connection pay the call.
        nodelay_each = False  # set it on each accepted socket (they do not inherit it)
        checks = NODELAY_CHECKS if tcp else 0  # connections still to check

        def full() -> bool:
            return len(connections) >= limit

        try:
            while not server.draining:
                if len(connections) >= limit:
                    # Excess connections are closed, never queued for as long as we stay full
                    # (but a worker with room gets the first chance at them: shed.py).
                    shedder.shed(sock, full, lambda: server.metrics.rejected(ctx.index))
                    continue
                shedder.room_again()
                try:
                    fd, addr = accept()
                except BlockingIOError:
                    hub.wait(watcher)
                    continue
                except OSError as e:
                    if server.draining:
                        return
                    if e.errno in _RESOURCE_ERRORS:
                        log.error("accept() failed: %s; pausing accepts for 0.5 s", e.strerror)
                        gevent.sleep(0.5)
                    continue
                client = None
                try:
                    client = _socket.socket(family, socket.SOCK_STREAM, 0, fd)
                    if inline is not None:
                        data = inline(client, addr)
                        if data is None:
                            continue  # handed over (its ACK is awaited in the hub)
                    client.setblocking(False)
                    if nodelay_each:
                        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    elif checks:
                        if client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
                            checks = 0  # inherited: no call a connection from now on
                        else:
                            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            checks -= 1
                            nodelay_each = not checks
                except OSError as e:  # reset before we got to it
                    log.debug("dropped a connection at accept: %s", e)
                    if client is None:
                        _socket.close(fd)
                    else:
                        client.close()
                    continue
                conn = Connection(server, client, addr, ctx)
                if inline is not None:
                    inline.resume(conn, data)
                server.connection_opened(conn)
                self.start(conn)
        finally:
            watcher.close()

    def start(self, conn: Runnable) -> None:
        """Serve conn in a parked greenlet, or a new one; either starts once the hub runs."""
        parked = self.parked
        g = None
        while parked and (g is None or g.dead):  # dead only if something threw into a parked one
            g = parked.pop()
        if g is None or g.dead:
            g = greenlet(self._serve, self.hub)
        conn.greenlet = g
        self.hub.loop.run_callback(g.switch, conn)

    def _serve(self, conn: Runnable) -> None:
        server = self.server
        parked = self.parked
        hub = self.hub
        me = getcurrent()
        while True:
            try:
                conn.run()
            except BaseException:  # conn.run handles everything an app or a client can cause
                hub.handle_error(me, *sys.exc_info())
                return
            conn = None  # type: ignore[assignment]  # not kept alive while parked
            if server.draining or len(parked) >= POOL_MAX:
                return
            parked.append(me)
            conn = hub.switch()

"""A delegating front's hand-over at accept time (issue 17): the common case without a greenlet.

A front that gets a new connection per request (clients sending `Connection: close`) pays
per connection what the delegation step costs in a Python worker: a Transport, a Connection,
a parser, a greenlet switch, a full parse of the head. Most such connections arrive whole: the
first read holds the whole head (TCP_DEFER_ACCEPT on the front's TCP listeners makes accept()
return only once the client's first bytes are there). For those, the acceptor itself does the
hand-over, inline:

1. one non-blocking recv (MSG_DONTWAIT: no fcntl to make the socket non-blocking);
2. a scan of the head for the request line and the Host header (`simple_head`): only heads
   that are plainly well formed pass; everything else, and a head not yet whole, goes the
   normal way (delegation.py's step, which parses it with the connection's own parser);
3. the prefix lookup; no match: the normal way (the front serves it, the bytes already read
   handed back with Transport.unread);
4. a non-blocking connect to the target's handoff: socket and one sendmsg carrying the message
   and the client's socket (handoff.py), then the acceptor goes back to accepting.

The ACK is awaited by an io watcher's callback in the hub (no greenlet): on ACK the front
closes its copy of the client's socket and the hand-off link. A target that closes the link
without the ACK has not taken the socket: the connection then goes the normal way, whose step
offers it again (and answers 503 after --delegate-wait). A target that neither answers nor
closes is given --send-timeout, as the normal way gives it (the pending hand-off is a Timed
the sweeper watches), then the front lets the connection go: the target may have it.

If connecting or sending fails (the target down or its queue full), nothing was sent and the
connection goes the normal way with the bytes read, which retries and answers 503 as before:
failures are rare and cost what they cost. TCP_NODELAY is left to the server that writes to
the client (delegation.py's Receiver sets it on the socket it takes).

A pending hand-off counts as one of the worker's connections (the connection limit, the
metrics' gauges, a draining worker waits for it) and is closed like one.
"""

from __future__ import annotations

import _socket
import logging
import re
import socket
import struct
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote_to_bytes

from greenfork.master.prefixes import Delegate
from greenfork.workers.conn import Connection
from greenfork.workers.handoff import ACK, encode_plain
from greenfork.workers.http1 import Limits
from greenfork.workers.mounts import PrefixTable, request_host
from greenfork.workers.timers import NONE, SEND, Expired, Timed

if TYPE_CHECKING:
    from greenfork.master.listeners import Listener
    from greenfork.workers.delegation import Delegator
    from greenfork.workers.worker import ListenerContext

log = logging.getLogger("greenfork.worker")

__all__ = ["Inline", "defer_accept", "simple_head"]

_READ, _WRITE = 1, 2  # libev's EV_READ, EV_WRITE
RECV_SIZE: Final = 65536  # as the transport reads
# A first read longer than this goes the normal way: the message then always fits a fresh
# unix socket's send buffer in one sendmsg (the rest is handled, but never expected).
INLINE_MAX: Final = 16384
DEFER_ACCEPT_SECONDS: Final = 1  # nginx's `listen ... deferred` sets the same
_VERSIONS: Final = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}
_METHOD = re.compile(rb"[A-Z]{1,16}")
# origin-form only (an absolute-form target names its own host): visible ASCII, no fragment
_TARGET = re.compile(rb"/[!\"$-~]*")
_HOST = re.compile(rb"[A-Za-z0-9.\-_:\[\]]*")  # a name or address and a port: nothing to unescape
_HOST_LINE = b"\r\nhost:"
_FD = struct.Struct("i")  # one descriptor, as SCM_RIGHTS carries it
_SOL_SOCKET, _SCM_RIGHTS = socket.SOL_SOCKET, socket.SCM_RIGHTS


def simple_head(data: bytes, limits: Limits) -> tuple[str, str, str] | None:
    """(host as prefixes compare it, decoded path, version) when data starts with a whole
    request head that is plainly well formed and within the limits: a request line of an
    upper-case method, an origin-form target and HTTP/1.0 or 1.1; CRLF line ends only, no
    folded lines; exactly one Host header with a plain value. Else None: the head goes to
    the connection's own parser, which routes or answers it exactly (delegation.py).
    Where this returns a route, the parser routes the head the same way (the tests check)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    line_end = data.find(b"\r\n")
    if line_end + 2 > limits.max_request_line:
        return None
    head = data[line_end:end + 2]  # the header lines, each starting with CRLF
    if len(head) > limits.max_header_bytes or head.count(b"\n") != head.count(b"\r\n") \
            or b"\r" in head.replace(b"\r\n", b"") or b"\n " in head or b"\n\t" in head:
        return None
    parts = data[:line_end].split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    v = _VERSIONS.get(version)
    if v is None or _METHOD.fullmatch(method) is None or _TARGET.fullmatch(target) is None:
        return None
    lower = head.lower()
    at = lower.find(_HOST_LINE)
    if at < 0 or lower.find(_HOST_LINE, at + 1) >= 0 or head.count(b"\r\n") - 1 > limits.max_headers:
        return None  # no Host, or two: the parser's answer, not ours
    start = at + len(_HOST_LINE)
    value = head[start:head.find(b"\r\n", start)].strip(b" \t")
    if _HOST.fullmatch(value) is None:
        return None
    path = target.partition(b"?")[0]
    if b"%" in path:
        path = unquote_to_bytes(path)  # as PATH_INFO holds it (wsgi.build_environ)
    return request_host(value.decode("ascii")), path.decode("latin-1"), v


def defer_accept(listener: Listener) -> None:
    """TCP_DEFER_ACCEPT on a delegating front's TCP listener: accept() returns once the
    client's first bytes are there, so the first read finds them (the kernel still completes
    a silent client's connection after the timeout; HTTP clients speak first)."""
    if listener.transport == "unix":
        return
    try:
        listener.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_SECONDS)
    except OSError as e:  # pragma: no cover - every Linux TCP socket takes it
        log.debug("TCP_DEFER_ACCEPT not set: %s", e)


class Inline:
    """The acceptor's hand-over for one plain (no TLS, no PROXY header) listener of a front."""

    __slots__ = ("ctx", "delegator", "limits", "server", "table")

    def __init__(self, delegator: Delegator, ctx: ListenerContext) -> None:
        self.delegator = delegator
        self.server = delegator.server
        self.table: PrefixTable[Delegate] = delegator.table
        self.limits = self.server.limits
        self.ctx = ctx

    def __call__(self, client: _socket.socket, addr: Any) -> bytes | None:
        """Hand a just-accepted connection over if it can be done here: None when it was (or
        waits for its ACK), else the bytes read (maybe none) for the normal way."""
        try:
            data = client.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except OSError:  # (nothing yet; or an error the normal way meets again)
            return b""
        if len(data) > INLINE_MAX:
            return data
        route = simple_head(data, self.limits)
        if route is None:
            return data
        hit = self.table.match(route[0], route[1])
        if hit is None:
            return data
        d = hit[0]
        ctx = self.ctx
        addr_s, port_s = ctx.remote(addr)
        msg = encode_plain(addr_s, port_s, d.target, data)
        link = _socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            link.connect(d.path)
            sent = link.sendmsg([msg], [(_SOL_SOCKET, _SCM_RIGHTS, _FD.pack(client.fileno()))])
        except OSError:  # down, busy, or gone meanwhile: nothing was sent; the normal way retries
            link.close()
            return data
        Pending(self, client, addr, d, data, link, msg, sent, route[2])
        return None

    def resume(self, conn: Connection, data: bytes | None) -> None:
        """The normal way for a connection this read from: its step reads these bytes first."""
        if data:
            conn.t.unread(data)
            conn.t.rx += len(data)


class Pending(Timed):
    """One hand-off sent, its ACK awaited by a watcher's callback; one of the worker's
    connections meanwhile (what the worker and its metrics read of a connection)."""

    __slots__ = ("addr", "client", "ctx", "d", "data", "error_type", "inline", "link", "opened", "req",
                 "rest", "rx", "started", "tx", "version", "watcher")
    h2 = None  # never HTTP/2
    idle = False  # never between requests
    dead = False  # the greenlet the sweeper throws into is this object: its throw() is the timeout

    def __init__(self, inline: Inline, client: _socket.socket, addr: Any, d: Delegate, data: bytes,
                 link: _socket.socket, msg: bytes, sent: int, version: str) -> None:
        Timed.__init__(self)
        self.inline = inline
        self.ctx = inline.ctx
        self.client = client
        self.addr = addr
        self.d = d
        self.data = data
        self.link = link
        self.rest = msg[sent:]
        self.started = time.monotonic()
        self.opened = 0.0
        self.version = version
        self.error_type = ""
        self.req = None
        self.rx, self.tx = len(data), 0
        self.greenlet = self
        self.phase = SEND  # --send-timeout bounds the wait for the ACK, as for the normal way
        server = inline.server
        server.connection_opened(self)  # type: ignore[arg-type]  # (the attributes it reads)
        loop = server.hub.loop
        self.watcher = loop.io(link.fileno(), _WRITE if self.rest else _READ)
        self.watcher.start(self._ready)

    @property
    def t(self) -> Pending:
        """The metrics read a connection's bytes from its transport: here, itself."""
        return self

    @property
    def timed(self) -> Pending:
        return self

    def _ready(self) -> None:
        try:
            if self.rest:
                self._send_rest()
                return
            try:
                answer = self.link.recv(1)
            except BlockingIOError:
                return
            except OSError:
                answer = b""
            self._stop_watching()
            if answer == ACK:
                self._done("success", "", False)
            else:
                self._again()
        except Exception:  # never leave it half done: the client is let go
            log.exception("inline hand-off to unix:%s failed", self.d.path)
            if self.watcher is not None:
                self._stop_watching()
                self._done("failed", "an internal error", False)

    def _send_rest(self) -> None:
        try:
            n = self.link.send(self.rest)
        except BlockingIOError:
            return
        except OSError as e:  # cut short after the socket went: the target may have it
            self._stop_watching()
            self._done("unavailable", f"the hand-off was cut short: {e.strerror or e}", False)
            return
        self.rest = self.rest[n:]
        if not self.rest:
            self.watcher.close()
            self.watcher = self.inline.server.hub.loop.io(self.link.fileno(), _READ)
            self.watcher.start(self._ready)

    def throw(self, exc: BaseException) -> None:
        """The sweeper's timeout (--send-timeout): no ACK; the target may have the socket."""
        if self.watcher is None or not isinstance(exc, Expired):
            return
        self._stop_watching()
        self._done("failed", "no answer within --send-timeout", False)

    def _stop_watching(self) -> None:
        self.watcher.close()
        self.watcher = None
        self.phase = NONE
        self.link.close()

    def _done(self, result: Any, why: str, ours: bool) -> None:
        self.client.close()  # the target holds its own copy, or lets it go
        server = self.inline.server
        self.inline.delegator.settle(self, self.d, result, why, ours, self.started)  # type: ignore[arg-type]
        server.connection_done(self)  # type: ignore[arg-type]

    def _again(self) -> None:
        """The target closed the link without taking the socket (its worker stopped between
        accept and receive): the socket is only ours; the normal way offers it again."""
        server = self.inline.server
        server.connections.discard(self)
        server.watched.discard(self)
        conn = Connection(server, self.client, self.addr, self.ctx)
        conn.opened = self.opened
        self.client.setblocking(False)
        self.inline.resume(conn, self.data)
        server.connections.add(conn)
        server.watched.add(conn.timed)
        server.acceptor.start(conn)

"""A delegating front's hand-over at accept time (issue 17): the common case without a greenlet.

A front that gets a new connection per request (clients sending `Connection: close`) pays
per connection what the delegation step costs in a Python worker: a Transport, a Connection,
a parser, a greenlet switch, a full parse of the head. Most such connections arrive whole: the
first read holds the whole head (--defer-accept, TCP_DEFER_ACCEPT on every TCP listener by
default, makes accept() return only once the client's first bytes are there). For those, the
acceptor itself does the hand-over, inline:

1. one non-blocking recv (MSG_DONTWAIT: no fcntl to make the socket non-blocking);
2. a scan of the head for the request line and the Host header (`simple_head`): only heads
   that are plainly well formed pass; everything else, and a head not yet whole, goes the
   normal way (delegation.py's step, which parses it with the connection's own parser);
3. the prefix lookup; no match: the normal way (the front serves it, the bytes already read
   handed back with Transport.unread);
4. a non-blocking connect to the target's handoff: socket and one sendmsg carrying the message
   and the client's socket (handoff.py), then the acceptor goes back to accepting.

The ACKs are read by one timer in the hub (every REAP_INTERVAL while hand-offs are pending;
no greenlet, no io watcher per hand-off): on ACK the front closes its copy of the client's
socket and the hand-off link. A target that closes the link without the ACK has not taken the
socket: the connection then goes the normal way, whose step offers it again (and answers 503
after --delegate-wait). A target that neither answers nor closes is given --send-timeout, as
the normal way gives it (the pending hand-off is a Timed the sweeper watches), then the front
lets the connection go: the target may have it. Holding the client's socket a little longer
costs nothing: the target ends the TCP connection itself when it is done (delegation.py's
_Taken), and the front's close only drops its reference.

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
import os
import re
import socket
import struct
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote_to_bytes

from greenfork.master.prefixes import Delegate
from greenfork.metrics.recorder import DelegationResult
from greenfork.workers.conn import Connection
from greenfork.workers.handoff import ACK, encode_plain
from greenfork.workers.http1 import Limits
from greenfork.workers.mounts import PrefixTable
from greenfork.workers.timers import NONE, SEND, Expired, Timed

if TYPE_CHECKING:
    from greenfork.workers.delegation import Delegator
    from greenfork.workers.worker import ListenerContext

log = logging.getLogger("greenfork.worker")

__all__ = ["Inline", "simple_head"]

RECV_SIZE: Final = 65536  # as the transport reads
# A first read longer than this goes the normal way: the message then always fits a fresh
# unix socket's send buffer in one sendmsg (the rest is handled, but never expected).
INLINE_MAX: Final = 16384
_VERSIONS: Final = {b"1": "1.1", b"0": "1.0"}
# A plainly well-formed head: an upper-case method, an origin-form target (an absolute-form
# one names its own host) of visible ASCII without a fragment, HTTP/1.0 or 1.1, header lines
# of a token, a colon and visible ASCII, spaces or tabs (so no folded line, no bare CR or LF).
_HEAD = re.compile(rb"([A-Z]{1,16}) (/[!\"$-~]*) HTTP/1\.([01])"
                   rb"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t -~]*)*\r\n\r\n")
_HOST = re.compile(rb"[a-z0-9.\-_]+(?::[0-9]*)?")  # a name or IPv4 address and a port, lower case
_HOST_LINE = b"\r\nhost:"
_FD = struct.Struct("i")  # one descriptor, as SCM_RIGHTS carries it
_SOL_SOCKET, _SCM_RIGHTS, _DONTWAIT = socket.SOL_SOCKET, socket.SCM_RIGHTS, socket.MSG_DONTWAIT
_AF_UNIX, _LINK_TYPE = socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
REAP_INTERVAL: Final = 0.002  # how often pending hand-offs' ACKs are read (the client's socket
# is held that much longer: harmless, the target ends the connection itself, see delegation.py)


def simple_head(data: bytes, limits: Limits) -> tuple[str, str, str] | None:
    """(host as prefixes compare it, decoded path, version) when data starts with a whole
    request head that is plainly well formed (_HEAD) and within the limits, with exactly one
    Host header whose value is a name or an IPv4 address and maybe a port. Else None: the
    head goes to the connection's own parser, which routes or answers it exactly
    (delegation.py). Where this returns a route, the parser routes the head the same way
    (tests/test_delegation_inline.py checks it, hypothesis included)."""
    m = _HEAD.match(data)
    if m is None:
        return None
    line = m.end(3)
    end = m.end()
    if line + 2 > limits.max_request_line or end - line - 2 > limits.max_header_bytes:
        return None
    lower = data[line:end].lower()
    at = lower.find(_HOST_LINE)
    if at < 0 or lower.find(_HOST_LINE, at + 7) >= 0 or lower.count(b"\r\n") - 2 > limits.max_headers:
        return None  # no Host, or two: the parser's answer, not ours
    value = lower[at + 7:lower.find(b"\r\n", at + 7)].strip(b" \t")
    if _HOST.fullmatch(value) is None:
        return None
    path = m.group(2).partition(b"?")[0]
    if path.find(b"%") >= 0:  # (not `in`: see wsgi.build_environ)
        path = unquote_to_bytes(path)  # as PATH_INFO holds it (wsgi.build_environ)
    host = value.partition(b":")[0].rstrip(b".").decode("ascii")  # as mounts.request_host() has it
    return host, path.decode("latin-1"), _VERSIONS[m.group(3)]


class Inline:
    """The acceptor's hand-over for one plain (no TLS, no PROXY header) listener of a front."""

    __slots__ = ("ctx", "debug", "delegator", "limits", "pending", "server", "table", "timer", "unix")

    def __init__(self, delegator: Delegator, ctx: ListenerContext) -> None:
        self.delegator = delegator
        self.server = delegator.server
        # each target with what a hand-off needs of it, worked out once: the socket's path as
        # bytes (no conversion per connect) and the metrics' label (a property)
        self.table: PrefixTable[tuple[Delegate, bytes, str]] = PrefixTable(
            [(d.prefix, (d, os.fsencode(d.path), d.target)) for d in delegator.delegates])
        self.limits = self.server.limits
        self.ctx = ctx
        self.unix = ctx.unix
        self.debug = log.isEnabledFor(logging.DEBUG)  # (the level is the worker's for its life)
        self.pending: list[Pending] = []  # sent, the ACK not read yet
        # One timer reads the ACKs of every pending hand-off (REAP_INTERVAL apart, while any
        # is pending) rather than an io watcher per hand-off: by the time it runs nearly all
        # have arrived, and a read that finds its ACK costs less than a watcher's epoll_ctl,
        # its wake-up and its callback.
        self.timer = self.server.hub.loop.timer(REAP_INTERVAL, REAP_INTERVAL, ref=False)

    def __call__(self, client: _socket.socket, addr: Any) -> bytes | None:
        """Hand a just-accepted connection over if it can be done here: None when it was (its
        ACK is read later), else the bytes read (maybe none) for the normal way."""
        try:
            data = client.recv(RECV_SIZE, _DONTWAIT)
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
        d, path, target = hit[0]
        msg = encode_plain("", "", target, data) if self.unix else \
            encode_plain(addr[0], str(addr[1]), target, data)
        link = _socket.socket(_AF_UNIX, _LINK_TYPE)
        try:
            link.connect(path)
            sent = link.sendmsg([msg], [(_SOL_SOCKET, _SCM_RIGHTS, _FD.pack(client.fileno()))])
        except OSError:  # down, busy, or gone meanwhile: nothing was sent; the normal way retries
            link.close()
            return data
        self.pending.append(Pending(self, client, addr, d, data, link, msg[sent:], route[2]))
        if self.debug:
            log.debug("handed a connection over at accept to unix:%s (%s)", d.path, target)
        if not self.timer.active:
            self.timer.start(self.reap)
        return None

    def resume(self, conn: Connection, data: bytes | None) -> None:
        """The normal way for a connection this read from: its step reads these bytes first."""
        if data:
            conn.t.unread(data)
            conn.t.rx += len(data)

    def reap(self) -> None:
        """The timer: read the ACK of each pending hand-off that has one."""
        keep: list[Pending] = []
        for p in self.pending:
            try:
                if not p.settled():
                    keep.append(p)
            except Exception:  # never leave one half done: its client is let go
                log.exception("inline hand-off to unix:%s failed", p.d.path)
                p.done("failed", "an internal error")
        self.pending = keep
        if not keep:
            self.timer.stop()


class Pending(Timed):
    """One hand-off sent, its ACK not read yet: one of the worker's connections meanwhile
    (it has what the worker, its sweeper and its metrics read of a connection)."""

    __slots__ = ("addr", "client", "ctx", "d", "data", "error_type", "inline", "link", "opened", "req",
                 "rest", "rx", "started", "tx", "version")
    h2 = None  # never HTTP/2
    idle = False  # never between requests
    dead = False  # the greenlet the sweeper throws into is this object: its throw() is the timeout

    def __init__(self, inline: Inline, client: _socket.socket, addr: Any, d: Delegate, data: bytes,
                 link: _socket.socket, rest: bytes, version: str) -> None:
        # (Timed's attributes set here rather than by its __init__: one call fewer per hand-off)
        self.deadline = self.body_wait = 0.0
        self.body_bytes = 0
        self.request_deadline = -1.0
        self.inline = inline
        self.ctx = inline.ctx
        self.client = client
        self.addr = addr
        self.d = d
        self.data = data
        self.link: _socket.socket | None = link
        self.rest = rest  # what sendmsg did not take (never expected: the message is small)
        self.started = time.monotonic()
        self.opened = 0.0
        self.version = version
        self.error_type = ""
        self.req = None
        self.rx, self.tx = len(data), 0
        self.greenlet = self
        self.phase = SEND  # --send-timeout bounds the wait for the ACK, as for the normal way
        inline.server.connection_opened(self)  # type: ignore[arg-type]  # (the attributes it reads)

    @property
    def t(self) -> Pending:
        """The metrics read a connection's bytes from its transport: here, itself."""
        return self

    @property
    def timed(self) -> Pending:
        return self

    def settled(self) -> bool:
        """Read the ACK if it is there and finish; False while it is not."""
        link = self.link
        if link is None:
            return True  # timed out meanwhile
        if self.rest:
            try:
                self.rest = self.rest[link.send(self.rest, _DONTWAIT):]
            except BlockingIOError:
                return False
            except OSError as e:  # cut short after the socket went: the target may have it
                self.done("unavailable", f"the hand-off was cut short: {e.strerror or e}")
                return True
            if self.rest:
                return False
        try:
            answer = link.recv(1, _DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            answer = b""
        if answer == ACK:
            self.done("success", "")
        else:
            self.again()
        return True

    def throw(self, exc: BaseException) -> None:
        """The sweeper's timeout (--send-timeout): no ACK; the target may have the socket."""
        if self.link is not None and isinstance(exc, Expired):
            self.done("failed", "no answer within --send-timeout")

    def done(self, result: DelegationResult, why: str) -> None:
        """Finished: the target holds its own copy of the client's socket (or let it go)."""
        if self.link is None:
            return
        self.link.close()
        self.link = None
        self.client.close()
        self.phase = NONE
        self.greenlet = None
        server = self.inline.server
        self.inline.delegator.settle(self, self.d, result, why, False, self.started)  # type: ignore[arg-type]
        server.connection_done(self)  # type: ignore[arg-type]

    def again(self) -> None:
        """The target closed the link without taking the socket (its worker stopped between
        accept and receive): the socket is only ours; the normal way offers it again."""
        assert self.link is not None
        self.link.close()
        self.link = None
        self.greenlet = None
        log.info("unix:%s (%s) closed a hand-off without taking the connection; offering it again",
                 self.d.path, self.d.target)
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

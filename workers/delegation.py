"""Delegation (issue 17): a front hands whole connections to other greenfork servers, and a
server receives them on its `handoff:` listener. docs/port-sharing.md is the operator's view.

Both run as a step of Connection.run(), before the HTTP/1.1 loop (ListenerContext.share):

- Delegator.step, on a front's listeners: read the first request head into the connection's
  own parser and look at it (RequestParser.first_request), match its host and path against
  --delegate; on a match, pass the client's socket and every byte read so far to the target
  (handoff.py's message, the socket attached with SCM_RIGHTS) and wait for the target's ACK;
  otherwise the connection's loop goes on with the request already parsed. A target that is down, or whose
  hand-off queue (its listen backlog) is full, is retried for --delegate-wait, then the
  client gets 503 with Retry-After from the front. Once the message is sent the front never
  answers the client itself: the target may still take it.
- Receiver.step, on a `handoff:` listener: the accepted unix connection carries one message;
  the client's socket replaces it in the transport, the bytes the front read are unread, and
  the connection is served as if it had been accepted here.

The connection stays with the server that got it: every later request on it (keep-alive,
pipelined) is served by the target. A front's https:// listener terminates TLS itself (a
descriptor cannot carry TLS state) and relays the plaintext over a socketpair whose other
end is handed over instead (relay.py).
"""

from __future__ import annotations

import _socket
import array
import logging
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import unquote_to_bytes

import gevent

from greenfork.master.prefixes import Delegate
from greenfork.metrics.recorder import DelegationResult
from greenfork.workers.handoff import ACK, Decoder, Handoff, HandoffError, encode, portable
from greenfork.workers.http1 import Request
from greenfork.workers.mounts import PrefixTable, request_host
from greenfork.workers.relay import relay_through
from greenfork.workers.request import http_date
from greenfork.workers.timers import FRESH, HEADERS, NONE, SEND, Expired
from greenfork.workers.tlstransport import TlsTransport
from greenfork.workers.transport import Transport

if TYPE_CHECKING:
    from greenfork.workers.conn import Connection
    from greenfork.workers.worker import WorkerServer

log = logging.getLogger("greenfork.worker")

_READ, _WRITE = 1, 2  # libev's EV_READ, EV_WRITE
_ANCILLARY: Final = socket.CMSG_SPACE(4 * 4)  # room for a few descriptors: more than one is refused
RETRY_FIRST: Final = 0.005  # the first pause before trying a target again; doubled up to RETRY_MAX
RETRY_MAX: Final = 0.1


class Step(Protocol):
    """What a listener does with a connection before the HTTP loop: False ends it."""

    def step(self, conn: Connection) -> bool: ...


def steps(server: WorkerServer) -> dict[int, Step]:
    """The step of each of the worker's listeners that has one, by listener index."""
    s = server.settings
    out: dict[int, Step] = {}
    delegator = Delegator(server, s.delegate, s.delegate_wait) if s.delegate else None
    receiver: Receiver | None = None
    for i, lst in enumerate(server.info.listeners):
        if lst.spec.handoff:
            receiver = receiver or Receiver(server)
            out[i] = receiver
        elif delegator is not None:
            out[i] = delegator
    return out


# --------------------------------------------------------------------------- the front
class Delegator:
    __slots__ = ("delegates", "failing", "server", "table", "wait")

    def __init__(self, server: WorkerServer, delegates: Sequence[Delegate], wait: float) -> None:
        self.server = server
        self.delegates = delegates
        self.table: PrefixTable[Delegate] = PrefixTable([(d.prefix, d) for d in delegates])
        self.wait = wait
        self.failing: set[str] = set()  # targets whose failure was logged (logged again once they work)

    def step(self, conn: Connection) -> bool:
        t = conn.t
        if getattr(t, "alpn", None) == "h2":
            return True  # an HTTP/2 connection is served here (its streams are not one head)
        # The connection's own parser reads the first head: served here, the loop takes the
        # request from it as it is; handed over, it is dropped with the connection.
        p = conn.p
        got: list[bytes] = []
        while True:
            req = p.first_request()
            if req is not None:
                break
            if p.failed:
                return True  # a malformed head: the loop answers it as it would have
            data = t.recv()  # in FRESH, then HEADERS: the sweeper bounds the head as the loop does
            p.receive_data(data)
            if not data:
                return True  # closed before a whole head: the loop sees the same
            if t.phase == FRESH:
                t.enter(HEADERS, restart=False)
            got.append(data)
        hit = self.table.match(request_host(_host_of(req)), _path_of(req))
        if hit is None:
            return True
        t.enter(NONE)
        conn.version = req.version
        conn.req = req  # for the 503's request metrics (let go of in settle())
        self.hand_off(conn, hit[0], b"".join(got), time.monotonic())
        return False

    def hand_off(self, conn: Connection, d: Delegate, data: bytes, started: float) -> None:
        t = conn.t
        if isinstance(t, TlsTransport):
            relay_through(self, conn, d, data, started)
            return
        try:
            extra = portable(conn.extra) if conn.extra else {}  # (the front's own keys stay)
            msg = encode(Handoff(data, conn.remote, extra, str(d.prefix)))
        except HandoffError as e:  # (a NUL in a field the front's connection added)
            self.settle(conn, d, "failed", str(e), True, started)
            return
        self.settle(conn, d, *self.send(d, msg, t.sock.fileno(), t), started)

    def send(self, d: Delegate, msg: bytes, fd: int, t: Transport) -> tuple[DelegationResult, str, bool]:
        """Try the target until it takes the socket or --delegate-wait is over: (the result as
        the delegated() hook counts it, the reason, whether the client may still be answered)."""
        deadline = time.monotonic() + self.wait
        pause = RETRY_FIRST
        while True:
            result, why, ours = _offer(d.path, msg, fd, t, self.server.hub)
            if result == "success" or not ours or result == "failed" or time.monotonic() + pause > deadline:
                return result, why, ours
            gevent.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    def settle(self, conn: Connection, d: Delegate, result: DelegationResult, why: str, ours: bool,
               started: float) -> None:
        """Count the outcome, log a target's failure once (and its recovery), answer 503 when
        the client is still ours to answer (counted as that request's, error_type
        delegation_failed)."""
        server = self.server
        target = d.target
        server.metrics.delegated(target, result)
        if result == "success":
            conn.req = None
            if target in self.failing:
                self.failing.discard(target)
                log.info("Delegation to unix:%s (%s) works again", d.path, target)
            return
        conn.error_type = "delegation_failed"
        if d.target not in self.failing:
            self.failing.add(d.target)
            log.warning("Delegation to unix:%s (%s) failed: %s%s", d.path, d.target, why,
                        "; answering 503 until it works" if ours else "")
        else:
            log.debug("Delegation to unix:%s (%s) failed: %s", d.path, d.target, why)
        if ours:
            conn.status = 503
            if conn.req is not None:  # the request's duration: from its head to the 503
                server.metrics.request(conn, conn.req, "delegation_failed", started)
            unavailable(conn.t, server.settings.server_header)
        conn.req = None


def _host_of(req: Request) -> str:
    if req.host is not None:
        return req.host.decode("latin-1")
    for name, value in req.headers:
        if len(name) == 4 and name.lower() == b"host":
            return value.decode("latin-1")
    return ""


def _path_of(req: Request) -> str:
    path = req.path
    if path.find(b"%") >= 0:  # (not `in`: see wsgi.build_environ)
        path = unquote_to_bytes(path)  # as PATH_INFO holds it (wsgi.build_environ)
    return path.decode("latin-1")


def unavailable(t: Transport, server_header: bool) -> None:
    """503 with Retry-After, then a lingering close (the client may still be sending a body)."""
    body = b"503 Service Unavailable: the server for this address is not available; try again\n"
    t.out.append(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                 b"Retry-After: 1\r\nConnection: close\r\nDate: %b\r\n%b\r\n%b"
                 % (len(body), http_date(), b"Server: greenfork\r\n" if server_header else b"", body))
    t.linger()


def _offer(path: str, msg: bytes, fd: int, t: Transport, hub: Any) -> tuple[DelegationResult, str, bool]:
    """One attempt: connect, send the message with the socket, wait for the ACK. The last
    item is False once the target may have the socket without having said so: from then on
    the client is the target's to answer, never the front's."""
    s = _socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    watchers: list[Any] = []
    sent = 0
    try:
        try:
            s.connect(path)
        except BlockingIOError:
            return "busy", "its hand-off queue is full", True
        except (FileNotFoundError, ConnectionRefusedError) as e:
            return "unavailable", f"{e.strerror or e} (is it running?)", True
        except OSError as e:
            return "failed", e.strerror or str(e), True
        # Sending and waiting for the ACK are bounded by --send-timeout (the sweeper's SEND
        # phase): a target that never accepts does not hold the front's greenlet forever.
        t.enter(SEND)
        try:
            sent = _send_with(s, msg, fd, hub, watchers)
            if sent < len(msg):
                _send_rest(s, memoryview(msg)[sent:], hub, watchers)
            while True:
                # wait first: the target has not even been scheduled yet (a failed read is
                # a syscall and an exception per hand-off)
                _wait(hub, s, _READ, watchers)
                try:
                    answer = s.recv(1)
                    break
                except BlockingIOError:
                    continue
                except OSError:
                    answer = b""
                    break
        except Expired:
            return "failed", "no answer within --send-timeout", sent == 0
        except OSError as e:
            return "unavailable", f"the hand-off was cut short: {e.strerror or e}", True
        finally:
            t.enter(NONE)
        if answer == ACK:
            return "success", "", False
        # Closed without taking the socket (its worker stopped between accept and receive): the
        # socket is still only ours, so it may be offered again.
        return "unavailable", "it closed the hand-off without taking the connection", True
    finally:
        for w in watchers:
            w.close()
        s.close()


def _send_with(s: _socket.socket, msg: bytes, fd: int, hub: Any, watchers: list[Any]) -> int:
    """sendmsg with the descriptor; the descriptor travels with the first byte that goes."""
    fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    while True:
        try:
            return int(s.sendmsg([msg], fds))
        except BlockingIOError:
            _wait(hub, s, _WRITE, watchers)


def _send_rest(s: _socket.socket, rest: memoryview, hub: Any, watchers: list[Any]) -> None:
    while rest:
        try:
            rest = rest[s.send(rest):]
        except BlockingIOError:
            _wait(hub, s, _WRITE, watchers)


def _wait(hub: Any, s: _socket.socket, events: int, watchers: list[Any]) -> None:
    for w in watchers:
        if w.events == events:
            break
    else:
        w = hub.loop.io(s.fileno(), events)
        watchers.append(w)
    hub.wait(w)


# --------------------------------------------------------------------------- the target
class _Taken(_socket.socket):
    """A client's socket taken from a front: closing it ends the TCP connection here (FIN
    sent) even when the front still holds its copy, as it does until it has read the ACK
    (a close would only drop this copy, and the front's later close would then do the
    teardown: for a connection per request, a third of what the front spends)."""

    __slots__ = ()

    def close(self) -> None:
        if self.fileno() >= 0:
            try:
                self.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # not connected any more: nothing to end
        super().close()


class Receiver:
    """On a `handoff:` listener: take the client's socket out of the front's message."""

    __slots__ = ("server",)

    def __init__(self, server: WorkerServer) -> None:
        self.server = server

    def step(self, conn: Connection) -> bool:
        t = conn.t
        link = t.sock  # the front's unix connection; the client's socket replaces it
        fds: list[int] = []
        watcher: Any = None
        try:
            dec = Decoder()
            while True:
                try:
                    data, anc, flags, _ = link.recvmsg(65536, _ANCILLARY)
                except BlockingIOError:
                    if watcher is None:
                        watcher = self.server.hub.loop.io(link.fileno(), _READ)
                    self.server.hub.wait(watcher)  # FRESH: the sweeper bounds this wait
                    continue
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.extend(array.array("i", payload[:len(payload) - len(payload) % 4]))
                if flags & socket.MSG_CTRUNC:
                    raise HandoffError("more descriptors than one")
                if not data:
                    raise HandoffError("the front closed before its message was whole")
                msg = dec.feed(data)
                if msg is not None:
                    break
            if len(fds) != 1:
                raise HandoffError(f"{len(fds)} descriptors instead of one")
            client = _Taken(fileno=fds[0])  # OSError if it is not a socket: closed below
            fds.clear()
            if client.type != socket.SOCK_STREAM:
                client.close()
                raise HandoffError("the descriptor is not a stream socket")
        except (HandoffError, OSError) as e:
            conn.error_type = "delegation_failed"
            log.warning("Refused a hand-off on %s: %s", conn.ctx.peer(conn.addr), e)
            return False
        finally:
            for fd in fds:
                _socket.close(fd)
            if watcher is not None:
                watcher.close()
        client.setblocking(False)
        if client.family != socket.AF_UNIX:
            # the server that writes to the client sets it: a front that hands over at
            # accept time leaves it (delegation_inline.py)
            try:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # reset meanwhile: serving it finds out
        try:
            link.send(ACK)  # one byte into a fresh socket's buffer: it does not block
        except OSError:
            pass  # the front is gone: it never answers the client after sending, so serve it
        link.close()
        t.sock = client
        conn.remote = msg.peer
        if msg.extra:
            conn.extra = dict(msg.extra)
        t.unread(msg.data)
        log.debug("took a connection from %s for %s", msg.peer[0] or "a unix client", msg.prefix)
        return True

"""One HTTP/1.1 client connection: the transport's bytes through the protocol to the
request stage, and back.

Runs in its own greenlet. The three stages stay apart: the transport (transport.py)
owns the socket and its waits, the protocol (h1proto.py, sans-IO) every rule of the
connection, the request stage (request.py) the application. This module is the
loop between them; h1exchange.py is the HTTP/1.1 side of the request stage's Exchange.

Responses are gathered in the transport's output list and sent with a single write
when the connection next has to wait for input, so pipelined requests are answered
with one write, and a small response goes out as one packet with its head.
"""

from __future__ import annotations

import _socket
import logging
import time
from typing import TYPE_CHECKING, Any, Final
from zlib import crc32

from gevent import GreenletExit

from greenfork.master import tlsinfo
from greenfork.workers import front, websocket_pipeline
from greenfork.workers.cachefast import NO_PARTS, NO_READ, REPLAY_READ_MAX
from greenfork.workers.h1exchange import H1Exchange
from greenfork.workers.h1proto import (
    CLOSED,
    DRAIN,
    KEEP,
    LINGER,
    NEED_DATA,
    H1Server,
    ProtocolError,
    Request,
)
from greenfork.workers.request import http_date, write_data
from greenfork.workers.response import error_response
from greenfork.workers.timers import FRESH, HEADERS, IDLE, NONE, Expired, RequestTimeout
from greenfork.workers.tlstransport import HandshakeFailed, TlsTransport
from greenfork.workers.transport import FLUSH_AT, ClientGone, Transport, unknown_peer
from greenfork.workers.websocket import Upgrade

if TYPE_CHECKING:
    from greenfork.workers.cachefast import Pass, Replay
    from greenfork.workers.h2conn import H2Driver
    from greenfork.workers.worker import ListenerContext, WorkerServer

log = logging.getLogger("greenfork.worker")

# The HTTP/2 connection preface (h2proto.PREFACE; spelled out here so that a worker serving
# only HTTP/1.1 never imports h2)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_NEVER = float("inf")  # (the earliest end of no pass)
# the methods the cache may answer (RFC 9111 4: GET and HEAD), told in one set lookup of a str
# whose hash it keeps, for every method
_ANSWERABLE: Final = frozenset(("GET", "HEAD"))


class Connection(H1Exchange):
    __slots__ = ("addr", "ctx", "extra", "out", "p", "remote", "server", "t", "timed",
                 "upgraded",  # WebSocket (websocket_pipeline.py)
                 "error_type", "opened", "version",  # for metrics (workers/instrument.py)
                 "h2")  # the HTTP/2 driver, while it serves this connection (workers/h2conn.py)

    def __init__(self, server: WorkerServer, sock: _socket.socket, addr: Any, ctx: ListenerContext,
                 transport: Transport | None = None) -> None:
        self.server = server
        self.addr = addr
        self.ctx = ctx
        self.remote = ctx.remote(addr)  # REMOTE_ADDR, REMOTE_PORT
        if transport is None:
            transport = Transport(sock, server.hub) if ctx.ssl is None else \
                TlsTransport(sock, server.hub, ctx.ssl)
        t = self.t = self.timed = transport
        self.out = t.out
        t.describe = self.peer
        t.enter(FRESH)  # a new connection waits for its first byte
        self.p = H1Server(server.limits)
        self.req = None  # (H1Exchange's slots)
        self.status = 0
        self.served = 0
        self.inp = None
        self.sr = None
        self.headed = False
        self.body_error = None
        self.mark = 0
        self.since = 0
        self.head_at = -1
        self.opened, self.error_type, self.version = 0.0, "", ""
        # environ keys this connection adds to each of its requests (TLS: mod_ssl's names;
        # a PROXY header's, workers/front.py)
        self.extra: dict[str, Any] = {}
        self.h2: H2Driver | None = None
        self.upgraded: Upgrade | None = None  # a WebSocket app took the connection over

    @property
    def greenlet(self) -> Any:
        return self.t.greenlet

    @greenlet.setter
    def greenlet(self, g: Any) -> None:
        self.t.greenlet = g

    @property
    def idle(self) -> bool:
        """Waiting between requests (the keep-alive gauge)."""
        return self.t.phase == IDLE

    def peer(self) -> str:
        return self.ctx.peer(self.addr)

    # -------------------------------------------------------------- the loop
    def run(self) -> None:
        t = self.t
        linger = False
        first = b""  # the first read, when h2c's look at it was made here
        try:
            # issue 14: a PROXY header is read first, before TLS (workers/front.py)
            if self.ctx.proxy is not None and not front.accept(self, self.ctx.proxy):
                return
            if type(t) is TlsTransport:
                if not self._handshake(t):
                    return
                if t.alpn == "h2":
                    linger = self._http2(b"")
                    return
            elif self.ctx.h2c:
                data = self._first_bytes()
                if data[:24] == H2_PREFACE:
                    linger = self._http2(data)
                    return
                if self.ctx.share is not None:
                    t.unread(data)  # the hand-off step reads them first
                elif self.server.fast is None:
                    self.p.receive_data(data)  # HTTP/1.1: parsed where the loop would have
                else:
                    # the loop's, as a read at a request boundary, which the response cache's
                    # fast path may know (a pass mark, a replay: a client with a new connection
                    # per request sends the same bytes)
                    first = data
            # issue 17: a handoff: listener takes its connection out of a front's message; a
            # delegating front may hand this one over (workers/delegation.py)
            if self.ctx.share is not None and not self.ctx.share.step(self):
                return
            linger = self._serve(first)
        except ClientGone as e:
            self.error_type = self.error_type or e.reason
        except (ConnectionError, TimeoutError):
            self.error_type = self.error_type or "io_error"
        except GreenletExit:
            pass
        except Expired as e:  # a wait we do not handle specially (never expected)
            self._timed_out(e)
        except RequestTimeout:
            pass  # fired after its request ended (the close of a slow iterable, say)
        except OSError as e:
            log.debug("connection from %s: %s", self.peer(), e)
        except Exception:
            log.exception("Unexpected error on a connection from %s", self.peer())
        finally:
            try:
                if linger:
                    t.linger()
            finally:
                try:
                    t.close()
                finally:
                    try:
                        self.server.connection_done(self)
                    finally:
                        # No reference cycle outlives the connection (the collector's work
                        # otherwise, per connection): the transport's describe is our bound
                        # method, and llhttp holds the parser's callbacks.
                        t.describe = unknown_peer
                        self.p.release()

    def _serve(self, first: bytes = b"") -> bool:
        """Serve requests until the connection ends (first: what run() read of it, for the
        loop to take as its first read); returns whether the close must linger."""
        p = self.p
        t = self.t
        # issue 18: the response cache's fast path for hits (workers/cachefast.py), when the worker
        # has one and this connection's environ keys leave the key alone; otherwise one test per
        # request of a local name
        fast = self.server.fast
        scheme = ""
        # the targets it may answer (one set lookup, before any call), the reads it answers
        # unparsed (cachefast.FastHits.replay), their lengths, the cache stage for pass marks, and
        # the paths the cache passes whole (cachestage.py's path_passes)
        hot, replays, lengths, passing, paths_passed = NO_PARTS if fast is None else fast.parts
        fresh: bytes | None = None  # a read that began at a request boundary (for fast.learn)
        marked = 0  # the read just parsed carries a pass mark: this many requests go past the cache
        passed = 0  # the requests of `fresh` answered so far, all sent past the cache by the memo
        until = _NEVER  # the earliest end of their passes
        # the last read the memo knew, and what it knew: a client repeats its bytes on a kept
        # connection, and comparing them costs less than hashing them for the memo's lookup (b""
        # with NO_READ: none; bytes, not None, so that another read's test is bytes' own compare
        # of two lengths)
        last = b""
        last_r: Replay | Pass = NO_READ
        last_n = 0  # the requests last_r marks past the cache for this connection's scheme
        action: str | None  # what the connection does after a request (h1proto's KEEP, CLOSE, LINGER)
        if fast is not None:
            # (without extra environ keys, the listener's own: what scheme() would find)
            scheme = (fast.scheme(self.ctx.base_environ, self.extra) or "") if self.extra else self.ctx.scheme
            if not scheme:
                fast = None
                hot, replays, lengths, passing, paths_passed = NO_PARTS
                if first:  # (parsed as run() would have without a fast path)
                    p.receive_data(first)
                    first = b""
        # (the loop asks for its next event at the end of each round)
        ev: object
        if not first:
            ev = p.next_event()
        elif (r := replays.get(first) if (size := len(first)) in lengths else None) is None or r.past:
            # run()'s read (run() leaves it to the loop only with a fast path): a new connection's
            # first, at a request boundary, and no repeat of a last read. Taken here as the loop
            # would take it (see there), without the loop's dispatch: a client with a new
            # connection per request sends the same bytes each time (a pass mark). A replay is
            # left to the loop, which may answer it at once. (Not kept as the last read: a
            # connection that repeats it looks it up once more, one that closes pays nothing.)
            if r is not None:
                fresh = first
                if r.scheme == scheme:
                    marked = r.marks
            elif passing.pass_prefixes and first.startswith(passing.pass_prefixes):
                marked = 1  # (a GET under a path passed whole: see the loop)
            elif size <= REPLAY_READ_MAX:
                fresh = first
            p.receive_data(first)
            first = b""
            ev = p.next_event()
        else:
            ev = NEED_DATA
        while True:
            if ev is NEED_DATA:
                # (run()'s read is the loop's first: nothing to send before it, and the phase
                # goes on from FRESH, as when run() parses it itself. A read the memo knows comes
                # back here too, to be taken as a repeat of the last read: see below.)
                if first:  # (run()'s replay, or a read the memo knows)
                    boundary = True
                    data, first = first, b""
                else:
                    # The keep-alive timeout runs between requests; a new connection and a
                    # started head share the headers timeout, counted from the connection's
                    # start or from the request's first byte (not per read).
                    boundary = p.between_requests
                    if boundary and self.served:
                        # the answers go out with the other connections' at the end of the hub's
                        # loop iteration (transport.py): wait_readable() comes next, as it must
                        t.flush_later()
                    else:
                        t.flush()
                    if boundary:
                        if self.served:
                            if t.phase != IDLE:
                                t.enter(IDLE)
                            # A keep-alive client sends its next request once it has read our
                            # answer, so reading at once nearly always fails (measured: over 99%
                            # under load, and the failed read and its exception cost a quarter of
                            # a small request): wait first. A new connection's first request
                            # usually came with it (three times in four): read first.
                            try:
                                t.wait_readable()
                            except Expired as e:
                                self._timed_out(e)
                                return False
                    elif t.phase != HEADERS:
                        # from FRESH, the headers timeout keeps counting from the connection's start
                        t.enter(HEADERS, restart=t.phase != FRESH)
                    try:
                        data = t.recv()
                    except Expired as e:
                        self._timed_out(e)
                        return p.must_linger()
                if not boundary or fast is None:
                    fresh = None  # (a head in several reads is never remembered)
                    marked = 0
                elif data == last and last_r.live:
                    # a kept connection repeating its last read: what the memo knew of it, without
                    # hashing it again (a pass mark, the commonest read of an uncached site). (passed
                    # and until are left as they are for a pass mark: a marked read is never learnt.)
                    fresh = data
                    marked = last_n
                    if not marked:
                        passed = 0
                        until = _NEVER
                        if not last_r.past and fast.replay(self, last_r, scheme):
                            ev = p.next_event()
                            continue  # answered; the protocol object is idle, as it was
                elif passing.pass_prefixes and data.startswith(passing.pass_prefixes):
                    # a GET under a path passed whole (a new URL each time): its request goes past
                    # the cache as a pass mark's does, found before parsing, and before the memo's
                    # lookup, which never knows a new URL's read (the loop finds the others after
                    # parsing, below: a request not first in its read, or in another form); the
                    # read is never learnt
                    fresh = None
                    marked = 1
                elif len(data) > REPLAY_READ_MAX:
                    # (a large read, a POST's with its body say: never remembered, so never looked
                    # up; hashing a 16 KiB POST's read would cost more than its whole request stage)
                    fresh = None
                    marked = 0
                elif len(data) in lengths and (r := replays.get(data)) is not None:
                    # the memo knows the read: it becomes the last read, and is taken again as a
                    # repeat of it (above). If the URL memo sends its requests past the cache, the
                    # request stage is told so (its before() would find the same; cachefast.Pass),
                    # for this scheme's.
                    last, last_r = data, r
                    last_n = r.marks if r.scheme == scheme else 0
                    first = data
                    continue
                else:  # a read the memo does not know (a new URL's, say)
                    fresh = data
                    marked = 0
                    passed = 0
                    until = _NEVER
                p.receive_data(data)
            elif type(ev) is Request:
                if t.phase != NONE:  # (a pipelined request finds it so already)
                    t.enter(NONE)
                if marked:  # (the same bytes parsed before held as many requests)
                    marked -= 1
                    passing.skip = ev  # (taken by that request: see request.py)
                    action = self._handle(ev)
                elif fast is None:  # (the cache off, or not for this connection: nothing else)
                    action = self._handle(ev)
                elif ev.method not in _ANSWERABLE:
                    # a method the cache never answers (an unsafe one drops the path's entries):
                    # sent past the cache as a pass mark's requests are when the path filter says
                    # nothing is stored under the path, as before() would find at once; never
                    # looked up in the fast path's targets (the read is never learnt either). The
                    # worker keeps the last such path's slot (cachestage.py), never its bit.
                    if (path := ev.path) != passing.unsafe_path:
                        passing.unsafe_path = path
                        passing.unsafe_slot = crc32(path) & passing.path_mask
                    if not passing.loop_bits[passing.unsafe_slot]:
                        passing.skip = ev
                    fresh = None
                    action = self._handle(ev)
                elif ev.target in hot and (action := fast.answer(self, ev, scheme)) is not None:
                    read, fresh = fresh, None  # a hit from the fast path
                    if read is not None and not passed and action == KEEP and p.between_requests:
                        fast.learn(read, ev, scheme)  # the read held this request and nothing more
                        last, last_r = b"", NO_READ  # (the memo has a new answer for some bytes)
                else:
                    if paths_passed and ev.path in paths_passed and ev.method == "GET":
                        # a GET under a path whose URLs are new each time and never stored, sent
                        # past the cache as a pass mark's requests are (before() would find the
                        # same); found here when the read's first bytes did not tell it (above)
                        passing.skip = ev
                        fresh = None  # (never a pass mark: not passed by the URL memo)
                    action = self._handle(ev)
                    if fresh is not None:
                        if passing.passed_req is ev:
                            # every request of the read so far went past the cache by the URL memo:
                            # once the read is used up, its bytes are a pass mark (pipelined or
                            # not, kept or not: a mark only skips before())
                            passed += 1
                            until = min(until, passing.passed_until)
                            if p.between_requests:
                                fast.learn_pass(fresh, passed, until, scheme)
                                last, last_r = b"", NO_READ  # (the memo has a new answer for some bytes)
                                fresh = None
                        else:
                            fresh = None
                if action != KEEP:
                    if self.upgraded is not None and self.upgraded.taken_over:
                        return self._taken_over(self.upgraded)
                    if action == LINGER:
                        t.flush()
                        return True
                    t.finish()  # the answer and the FIN, in one segment
                    return False
                # Pipelined requests behind this one: their answers are gathered, up to a bound.
                if p.pending and (len(self.out) > 64 or sum(map(len, self.out)) > FLUSH_AT):
                    t.flush()
            elif ev is CLOSED:
                return False
            elif isinstance(ev, ProtocolError):
                self._reject(ev)
                return p.must_linger()
            # a stray body piece or END can only follow a request the app
            # already finished with; _handle drained it, so nothing to do
            ev = p.next_event()

    # ---------------------------------------------------------------- HTTP/2
    def _first_bytes(self) -> bytes:
        """A cleartext listener that also serves HTTP/2 with prior knowledge: the first read,
        and more while it is a strict prefix of the HTTP/2 preface (which no HTTP/1.1
        request starts with), so that the choice is made on whole bytes."""
        t = self.t
        data = t.recv()
        while 0 < len(data) < 24 and H2_PREFACE.startswith(data):
            more = t.recv()
            if not more:
                break
            data += more
        return data

    def _http2(self, data: bytes) -> bool:
        """Serve the connection as HTTP/2 (workers/h2conn.py); `data` was read already."""
        from greenfork.workers.h2conn import serve

        return serve(self, data)

    def _handshake(self, t: TlsTransport) -> bool:
        """The TLS handshake, timed and counted; False if the connection is over."""
        metrics = self.server.metrics
        index = self.ctx.index
        metrics.tls_handshake_started(index)
        started = time.monotonic()
        try:
            t.handshake()
        except HandshakeFailed as e:
            self.error_type = e.reason
            metrics.tls_handshake_done(index, "", e.reason, time.monotonic() - started)
            log.debug("TLS handshake with %s failed: %s (%s)", self.peer(), e.reason, e.detail)
            if e.reason == "tls_not_supported":
                # nginx's courtesy: a plain HTTP request on a TLS port is told so, in plain HTTP
                self.out.append(error_response(400, http_date(), self.server.server_header,
                                               b"plain HTTP sent to an HTTPS port\n"))
                Transport.flush(t)
            return False
        metrics.tls_handshake_done(index, t.version, "", time.monotonic() - started)
        tls = tlsinfo.environ(t.sslobj, self.ctx.client_cert_user)
        self.extra = front.with_tls(self.extra, tls) if self.extra else tls  # after a PROXY header
        return True

    def _reject(self, err: ProtocolError) -> None:
        self.error_type = err.error_type
        log.debug("rejected request from %s: %s (%s)", self.peer(), err.error_type, err.detail)
        out = self.p.reject(err, date=http_date(), server=self.server.server_header)
        if out:
            self.out.append(out)
            self.t.flush()

    def _timed_out(self, e: Expired) -> None:
        """A wait between or inside request heads expired: 408 once a head has started."""
        t = self.t
        t.expired = e.reason
        self.error_type = self.error_type or e.reason
        if e.phase == HEADERS:
            self._reject(ProtocolError(408, e.reason, "request head not complete in time"))
        else:
            log.debug("closed connection from %s: %s", self.peer(), e.reason)

    # -------------------------------------------------------------- WebSocket
    def upgrade(self, env: dict[str, Any], app: Any) -> Any | None:
        """The Exchange's hand-off for an upgrade head (websocket_pipeline.py)."""
        return websocket_pipeline.hand_off(self, env, app)

    def _taken_over(self, up: Upgrade) -> bool:
        """A WebSocket app had the connection: the WebSocket closed the transport already,
        so there is nothing to send and nothing to linger for."""
        if websocket_pipeline.protocol_error(up):
            self.error_type = self.error_type or "websocket_protocol_error"
        elif self.t.expired is not None:  # the send timeout cut it (a client that stopped reading)
            self.error_type = self.error_type or self.t.expired
        return False

    # -------------------------------------------------------------- a request
    def _handle(self, req: Request) -> str:
        """Serve one request; return what the connection does next (h1proto's KEEP, CLOSE, LINGER)."""
        self.req = req
        self.status = 0
        self.body_error = None
        self.mark = len(self.out)
        self.since = self.t.flushes
        self.head_at = -1
        try:
            self.server.stage.serve(self, req, self.remote)
            self.served += 1
            action = self.p.after_response()
            if action == DRAIN:
                action = self._drain()
        finally:
            self.req = self.inp = self.sr = None  # they point back at us: no cycle left behind
        return action

    # ----------------------------------------------- the request stage's Exchange (h1exchange.py's, and:)
    def write(self, data: bytes) -> None:
        write_data(self, data)
        self.t.flush()

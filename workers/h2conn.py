"""One HTTP/2 connection under gevent: the driver between the transport, h2 and the streams.

Connection.run() (conn.py) hands a connection here once it is HTTP/2: after a TLS
handshake that chose `h2` by ALPN, or when a cleartext connection opened with the
connection preface (prior knowledge). The driver runs in the connection's greenlet and is
its only reader and its only writer:

- it reads what the socket has, feeds h2 (h2proto.ServerConnection), and hands the events
  on: a new request starts a Stream (h2stream.py) in a pooled greenlet, body data, ends,
  resets and window updates go to their stream and wake it;
- it sends what h2 queued: its own frames (SETTINGS and PING acknowledgements, window
  updates) and the streams' (they call h2 directly and then ask for a flush), gathered
  into one write per turn;
- while the socket is full it reads nothing more (so a peer that does not read cannot make
  it queue answers to PINGs and SETTINGS without bound) and streams wait for room.

After each read it lets the other greenlets run before reading again, so a connection that
floods cannot starve the worker's other connections, and the flood budgets (h2guard.py)
end it before it costs much.

Timeouts are the sweeper's (timers.py), on the connection's transport: FRESH until its
first request (--request-headers-timeout), HEADERS while a header block waits for its
CONTINUATION frames (the same), IDLE with no stream open (--keep-alive), SEND while the
socket does not take our bytes (--send-timeout); each stream has its own.

Stopping (worker.py's stop(): TERM, HUP, recycling) is RFC 9113 6.8's graceful shutdown
in two steps: GOAWAY with the largest stream id and a PING; when the PING's ACK comes back
(every stream the client opened before it saw the GOAWAY has reached us) or after a
second, GOAWAY with the last stream id. Streams up to it complete; later ones are
refused; the connection closes when the last one ends.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final

from greenlet import getcurrent
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes

from greenfork.workers.h2guard import PRIORITY, PRIORITY_PER_STREAM, RESET, Guard
from greenfork.workers.h2message import Rejected, answer_rejected, parse_request
from greenfork.workers.h2ping import pinger
from greenfork.workers.h2proto import (
    MAX_STREAM_ID,
    H2Limits,
    ServerConnection,
    StreamMalformed,
    cipher_allowed,
    error_type,
)
from greenfork.workers.h2stream import CLOSED as STREAM_CLOSED
from greenfork.workers.h2stream import DONE as STREAM_DONE
from greenfork.workers.h2stream import Stream
from greenfork.workers.request import http_date
from greenfork.workers.timers import FRESH, HEADERS, IDLE, NONE, Expired
from greenfork.workers.tlstransport import TlsTransport

if TYPE_CHECKING:
    from greenfork.workers.conn import Connection
    from greenfork.workers.worker import ListenerContext

log = logging.getLogger("greenfork.worker")

RUNNING, DRAINING, FINAL, CLOSED = range(4)  # the driver's states (see the module docstring)
DRAIN_PING: Final = b"gf-drain"
KEEPALIVE_PING: Final = b"gf-alive"
FINAL_GOAWAY_AFTER: Final = 1.0  # seconds: the second GOAWAY even without the PING's ACK
_READ: Final = 1


class H2Driver:
    """The HTTP/2 side of one Connection (conn.py)."""

    __slots__ = ("_rw", "conn", "congested", "ctx", "final_timer", "gone", "gone_reason", "greenlet", "guard",
                 "h2", "hub", "index", "last_input", "last_stream", "limits", "metrics", "opened", "ping_out",
                 "queued", "room_waiters", "server", "state", "streams", "t", "wake_pending", "waiting",
                 "window_waiters")

    def __init__(self, conn: Connection, limits: H2Limits) -> None:
        server = conn.server
        self.conn = conn
        self.t = conn.t
        self.server = server
        self.hub = server.hub
        self.ctx: ListenerContext = conn.ctx
        self.index = conn.ctx.index
        self.metrics = server.metrics
        self.limits = limits
        now = time.monotonic()
        self.guard = Guard(now)
        self.h2 = ServerConnection(limits, self.guard)
        self.streams: dict[int, Stream] = {}
        self.window_waiters: set[Stream] = set()  # streams waiting for the peer's window
        self.room_waiters: list[Stream] = []  # streams waiting for the socket to take our bytes
        self.congested = False  # a write is blocked: the socket is full
        self.queued = 0  # response bytes streams queued in h2 since the last flush took them
        self.gone = False  # the connection is over: streams fail at their next step
        self.gone_reason = "io_error"
        self.state = RUNNING
        self.last_stream = MAX_STREAM_ID  # streams past it are refused (after the final GOAWAY)
        self.opened = 0  # streams opened
        self.waiting = False  # in _wait(): a wake-up may switch to us
        self.wake_pending = False
        self.greenlet: Any = None
        self.final_timer: Any = None
        self.last_input = now  # for keep-alive pings
        self.ping_out = 0.0  # when our keep-alive PING went out (0: none outstanding)
        self._rw: Any = None

    # ------------------------------------------------------------------- run
    def run(self, initial: bytes) -> bool:
        """Serve the connection until it ends; `initial` is what was read before (the
        preface, on cleartext). Returns whether the close must linger (our last frames
        must not be lost to a reset under unread input)."""
        conn = self.conn
        conn.version = "2"
        conn.h2 = self
        self.greenlet = getcurrent()
        h2 = self.h2
        h2.start()
        linger = True
        try:
            if not self._cipher_ok():
                return True
            if initial:
                self._receive(initial)
            linger = self._loop()
        except Expired as e:  # thrown while a flush waited, or in a phase we left meanwhile
            self._timed_out(e)
        finally:
            self._end()
        return linger

    def _loop(self) -> bool:
        t = self.t
        while True:
            if self.state == CLOSED:
                self._flush()
                return True
            data = t.recv_nowait()
            if data is None:
                self._flush()
                if self.state == FINAL and not self.streams:
                    return True
                if self.state == CLOSED:
                    continue
                self._set_phase()
                try:
                    self._wait(True)
                except Expired as e:
                    self._timed_out(e)
                continue
            if not data:
                self.gone_reason = "io_error"
                return False  # the client closed: nothing of ours can reach it
            self._receive(data)
            # Let the streams just started (and every other greenlet) run before reading on.
            self._set_phase()
            try:
                self._wait(False)
            except Expired as e:
                self._timed_out(e)

    def _end(self) -> None:
        """The connection is over: streams still running fail at their next step; it closes
        when the last one has returned (conn.py then closes the transport)."""
        self.gone = True
        self.state = CLOSED
        if self.final_timer is not None:
            self.final_timer.close()
            self.final_timer = None
        if self.limits.ping_delay > 0:
            pinger(self.hub, self.limits.ping_delay).drivers.discard(self)
        for s in list(self.streams.values()):
            s.wake()
        self.t.enter(NONE)
        while self.streams:
            try:
                self._wait(False, park=True)
            except Expired:
                pass
        if self._rw is not None:
            self._rw.close()
            self._rw = None
        self.conn.h2 = None  # (it points back at us)

    def _cipher_ok(self) -> bool:
        t = self.t
        if type(t) is not TlsTransport:
            return True
        cipher = t.sslobj.cipher()
        name = cipher[0] if cipher else ""
        if cipher_allowed(t.version, name):
            return True
        self.conn.error_type = "tls_handshake_failed"
        log.warning("HTTP/2 refused to %s: TLS 1.2 cipher %s is on RFC 9113's block list (check --ciphers)",
                    self.conn.peer(), name)
        self.h2.close_connection(ErrorCodes.INADEQUATE_SECURITY)
        self._flush()
        return False

    # ----------------------------------------------------------------- waits
    def _wait(self, readable: bool, park: bool = False) -> None:
        """Until a stream asks for something (output(), stream_done()) or, if readable, the
        socket has input; not readable: one turn of the hub (the others run first)."""
        hub = self.hub
        self.waiting = True
        w = None
        if readable:
            w = self._rw
            if w is None:
                w = self._rw = hub.loop.io(self.t.sock.fileno(), _READ)
            w.start(self._wake)
        elif not park:
            self.wake_pending = True
            hub.loop.run_callback(self._wake)
        try:
            hub.switch()
        finally:
            self.waiting = False
            if w is not None:
                w.stop()

    def _wake(self) -> None:
        self.wake_pending = False
        if self.waiting:
            self.waiting = False
            self.greenlet.switch()

    def output(self) -> None:
        """A stream queued frames in h2 (or ended): the driver sends them on its next turn."""
        if self.waiting and not self.wake_pending:
            self.wake_pending = True
            self.hub.loop.run_callback(self._wake)

    def _set_phase(self) -> None:
        t = self.t
        if self.h2.in_header_block:
            want = HEADERS
        elif self.streams or self.state != RUNNING:
            want = NONE
        elif not self.opened:
            want = FRESH  # counted from the connection's start, like HTTP/1.1's first head
        else:
            want = IDLE
        if t.phase != want:
            t.enter(want, restart=want != FRESH)

    def _timed_out(self, e: Expired) -> None:
        conn = self.conn
        if self.state == RUNNING:
            conn.error_type = conn.error_type or e.reason
        log.debug("HTTP/2 connection from %s: %s", conn.peer(), e.reason)
        self._close(ErrorCodes.NO_ERROR)

    # -------------------------------------------------------------- writing
    def _flush(self) -> None:
        t = self.t
        data = self.h2.data_to_send()
        self.queued = 0
        if data:
            t.out.append(data)
        if not t.out:
            return
        self.congested = True  # seen by streams only while the send below waits for room
        try:
            t.flush()
        finally:
            self.congested = False
            waiters = self.room_waiters
            if waiters:
                self.room_waiters = []
                for s in waiters:
                    s.wake()

    def _close(self, code: ErrorCodes, err: str = "") -> None:
        """Stop here: GOAWAY with the last stream we took, the code says why."""
        if self.state == CLOSED:
            return
        if err:
            self.conn.error_type = self.conn.error_type or err
        h2 = self.h2
        try:
            h2.close_connection(code, last_stream_id=min(self.last_stream, h2.highest_inbound_stream_id))
        except H2Error:
            pass  # h2 has already closed its side (and queued its GOAWAY)
        self.state = CLOSED

    # -------------------------------------------------------------- reading
    def _receive(self, data: bytes) -> None:
        h2 = self.h2
        now = time.monotonic()
        self.guard.now = now
        self.last_input = now
        self.ping_out = 0.0  # anything from the peer answers a keep-alive PING
        try:
            events = h2.receive_data(data)
        except ProtocolError as e:
            # h2 has queued the GOAWAY with the error's code; later frames are not read
            self.conn.error_type = self.conn.error_type or error_type(e)
            log.debug("HTTP/2 connection error from %s: %s (%s)", self.conn.peer(), e, self.conn.error_type)
            self.state = CLOSED
            return
        except H2Error as e:  # (h2 raises nothing else while receiving; never let it pass unanswered)
            log.debug("HTTP/2 connection error from %s: %r", self.conn.peer(), e)
            self._close(ErrorCodes.PROTOCOL_ERROR, "http2_protocol_error")
            return
        except Exception:  # a bug (ours or h2's): the client still hears that the connection ends
            log.exception("Unexpected error on an HTTP/2 connection from %s", self.conn.peer())
            self._close(ErrorCodes.INTERNAL_ERROR, "_OTHER")
            return
        for ev in events:
            if type(ev) is RequestReceived:
                self._request(ev)
            elif type(ev) is DataReceived:
                self._data(ev)
            elif type(ev) is StreamEnded:
                s = self.streams.get(ev.stream_id)
                if s is not None:
                    s.ended = True
                    s.wake()
            elif type(ev) is WindowUpdated:
                self._window(ev.stream_id)
            elif type(ev) is StreamReset:
                self._reset(ev.stream_id, ev.error_code, ev.remote_reset)
            elif type(ev) is StreamMalformed:
                self._malformed(ev)
            elif type(ev) is RemoteSettingsChanged:
                if SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                    self._window(0)
            elif type(ev) is PingAckReceived:
                if ev.ping_data == DRAIN_PING and self.state == DRAINING:
                    self._final_goaway()
            elif type(ev) is ConnectionTerminated:
                self._peer_goaway(ev)
            if self.state == CLOSED:
                return

    def _request(self, ev: RequestReceived) -> None:
        sid = ev.stream_id
        ended = ev.stream_ended is not None
        if sid > self.last_stream or self.state == CLOSED \
                or len(self.streams) >= self.limits.max_concurrent_streams:
            self._refuse(sid)
            return
        self.opened += 1
        self.guard.earn(PRIORITY, PRIORITY_PER_STREAM)
        req = parse_request(ev.headers, self.limits)
        self.metrics.http2_stream_opened(self.index)
        if type(req) is Rejected:
            self._reject(sid, req, ended)
            return
        assert not isinstance(req, Rejected)
        s = Stream(self, sid, req, ended)
        self.streams[sid] = s
        self.server.watched.add(s.timer)
        self.server.acceptor.start(s)
        if sid >= MAX_STREAM_ID - 2 * self.limits.max_concurrent_streams and self.state == RUNNING:
            # The client is about to run out of stream ids: it can open no more on this
            # connection, so say so now, and let it finish what it has in flight.
            self.conn.error_type = self.conn.error_type or "stream_id_exhausted"
            self._final_goaway(sid)

    def _refuse(self, sid: int) -> None:
        """REFUSED_STREAM: not processed at all, the client may retry it (RFC 9113 8.7)."""
        try:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
        except H2Error:
            pass
        self.metrics.http2_stream_refused(self.index)
        flood = self.guard.spend(RESET)
        if flood is not None:
            self._close(ErrorCodes.ENHANCE_YOUR_CALM, flood)

    def _reject(self, sid: int, rej: Rejected, ended: bool) -> None:
        """A request we do not serve: malformed (reset), or answered here without the app."""
        log.debug("HTTP/2 request from %s refused: %s", self.conn.peer(), rej)
        answer_rejected(self.h2, sid, rej, ended, http_date(), self.server.server_header)
        self.metrics.http2_stream_closed(self.index, rej.error_type)

    def _data(self, ev: DataReceived) -> None:
        s = self.streams.get(ev.stream_id)
        flow = ev.flow_controlled_length
        if s is not None and s.state != STREAM_CLOSED and s.reset_code is None:
            data = ev.data
            if data:
                s.chunks.append((data, flow))
            elif flow:
                self.consumed(ev.stream_id, flow)  # padding only
            if ev.stream_ended is not None:
                s.ended = True
            s.wake()
        elif flow:
            # Nobody reads it (a stream refused, reset, or done): the window is the peer's again.
            self.consumed(ev.stream_id, flow)

    def consumed(self, sid: int, flow: int) -> None:
        """The application read `flow` flow-controlled bytes: reopen the windows (h2 decides
        when a WINDOW_UPDATE is worth sending)."""
        if flow and not self.gone:
            try:
                self.h2.acknowledge_received_data(flow, sid)
            except (H2Error, ValueError):
                pass

    def _window(self, sid: int) -> None:
        waiters = self.window_waiters
        if not waiters:
            return
        if sid:
            s = self.streams.get(sid)
            if s is not None and s in waiters:
                s.wake()
        else:
            for s in waiters:
                s.wake()

    def _reset(self, sid: int, code: int, remote: bool) -> None:
        s = self.streams.get(sid)
        if s is None:
            return
        if s.reset_code is None:
            s.reset_code = code
            s.err = s.err or ("stream_reset" if remote else "flow_control_window_exceeded")
        s.wake()

    def _malformed(self, ev: StreamMalformed) -> None:
        s = self.streams.get(ev.stream_id)
        log.debug("HTTP/2 stream %d from %s reset: %s", ev.stream_id, self.conn.peer(), ev.reason)
        if s is None:
            self.opened += 1
            self.metrics.http2_stream_opened(self.index)
            self.metrics.http2_stream_closed(self.index, ev.error_type)
            return
        if s.reset_code is None:
            s.reset_code = ErrorCodes.PROTOCOL_ERROR
            s.err = ev.error_type
        s.wake()

    def _peer_goaway(self, ev: ConnectionTerminated) -> None:
        """The client opens no more streams: the connection ends when ours are done."""
        if ev.error_code != ErrorCodes.NO_ERROR:
            log.debug("HTTP/2 GOAWAY from %s: %s", self.conn.peer(), ev.error_code)
        if self.state in (RUNNING, DRAINING):
            self.state = FINAL
            self.last_stream = self.h2.highest_inbound_stream_id

    # ------------------------------------------------------------- streams
    def stream_done(self, s: Stream) -> None:
        """A stream's greenlet is done with it (from that greenlet)."""
        sid = s.sid
        del self.streams[sid]
        self.server.watched.discard(s.timer)
        self.window_waiters.discard(s)
        if not self.gone:
            h2 = self.h2
            try:
                if s.state != STREAM_DONE and s.reset_code is None:  # the response did not finish
                    s.reset_code = ErrorCodes.INTERNAL_ERROR
                    h2.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
                elif not s.ended and s.reset_code is None:
                    # The response is complete, the body is not: RFC 9113 8.1, the client
                    # may stop sending it.
                    h2.reset_stream(sid, ErrorCodes.NO_ERROR)
            except H2Error:
                pass
            if s.chunks:
                self.consumed(sid, sum(flow for _, flow in s.chunks))
                s.chunks.clear()
        self.metrics.http2_stream_closed(self.index, s.err)
        self.output()

    # ------------------------------------------------------------- draining
    def go_away(self) -> None:
        """Start the graceful shutdown (called by the worker's stop(), from the hub)."""
        if self.state != RUNNING or self.gone:
            return
        self.state = DRAINING
        h2 = self.h2
        try:
            h2.send_goaway(MAX_STREAM_ID)
            h2.ping(DRAIN_PING)
        except H2Error:
            self.state = CLOSED
        self.final_timer = self.hub.loop.timer(FINAL_GOAWAY_AFTER)
        self.final_timer.start(self._final_due)
        self.output()

    def _final_due(self) -> None:
        if self.state == DRAINING:
            self._final_goaway()
            self.output()

    def _final_goaway(self, last: int = 0) -> None:
        """The second GOAWAY: the last stream id we take (by default every stream the client
        opened so far, even those of this read not yet handed out); later ones are refused."""
        self.state = FINAL
        self.last_stream = last or self.h2.highest_inbound_stream_id
        try:
            self.h2.send_goaway(self.last_stream)
        except H2Error:
            self.state = CLOSED

    # ------------------------------------------------------ keep-alive pings
    def keepalive(self, now: float) -> None:
        """Called about once a second by the worker's pinger when pings are configured."""
        limits = self.limits
        if self.gone or self.state == CLOSED:
            return
        if self.ping_out:
            if now - self.ping_out > limits.ping_timeout:
                self.conn.error_type = self.conn.error_type or "keep_alive_timeout"
                log.debug("HTTP/2 connection from %s: no answer to a keep-alive PING", self.conn.peer())
                self._close(ErrorCodes.NO_ERROR)
                self.output()
        elif now - self.last_input > limits.ping_delay:
            try:
                self.h2.ping(KEEPALIVE_PING)
            except H2Error:
                return
            self.ping_out = now
            self.output()

    def active_methods(self) -> list[str]:
        """The methods of the requests in progress (the active-requests gauge)."""
        return [s.req.method for s in self.streams.values()]


def serve(conn: Connection, initial: bytes) -> bool:
    """Serve `conn` as HTTP/2 (from Connection.run); returns whether its close must linger."""
    limits = conn.server.h2limits
    assert limits is not None
    d = H2Driver(conn, limits)
    if limits.ping_delay > 0:
        pinger(conn.server.hub, limits.ping_delay).drivers.add(d)
    return d.run(initial)

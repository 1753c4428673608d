"""One HTTP/2 stream: the request stage's Exchange for it, run in its own pooled greenlet.

Each stream's application call runs in a greenlet of the acceptor's pool (acceptor.py), so
a slow stream never holds up the others on its connection. The connection's driver
(h2conn.py) reads the socket, feeds h2 and hands each stream its events (body data, its
end, a reset, window updates); the stream calls h2 directly to queue its frames (greenlets
never preempt one another, and each h2 call appends whole frames, so frames never
interleave) and asks the driver, the one writer, to send them.

A stream has a `Timed` (timers.py) of its own: the sweeper times its waits for request body
bytes (BODY: --min-request-body-data-rate) and for the peer's flow-control window or for
room in the socket (SEND: --send-timeout), and --request-timeout bounds its application
call, exactly as for an HTTP/1.1 request; expiring one stream leaves its connection and
the other streams alone.

Flow control both ways:
- wsgi.input reads the body as it arrives and hands each piece's flow-controlled length
  back to h2 (acknowledge_received_data), which reopens the stream's and the connection's
  windows; a body the application does not read stays bounded by those windows.
- A response waits for the peer's window, per stream, and for the socket to take what is
  already queued (so a peer that opens its windows wide but reads slowly cannot make the
  server buffer without bound).

The response side of a stream moves through this table; a pair that is not in it is a bug
in the caller (LocalProtocolError):

    state       event     next
    OPEN        HEAD      SENDING   a response head was handed in (queued, not yet in h2)
    OPEN        ANSWER    SENDING   an error answer instead of the application's response
    OPEN        RESET     CLOSED    the stream was reset (by either side) or the connection is gone
    SENDING     PUSH      SENDING   head and body bytes handed to h2 (the head is now out)
    SENDING     END       DONE      END_STREAM queued
    SENDING     ANSWER    SENDING   an unsent head replaced by an error answer
    SENDING     RESET     CLOSED
    DONE        RESET     CLOSED    a reset after the response (the body was not read, say)
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Final, NoReturn

from gevent import GreenletExit
from h2.errors import ErrorCodes
from h2.exceptions import FlowControlError, H2Error

from greenfork.workers.h2guard import UPDATES_PER_DATA_FRAME, WINDOW_UPDATE
from greenfork.workers.h2message import error_head, has_body, response_head
from greenfork.workers.http1 import ProtocolError, Request
from greenfork.workers.request import BodyError, http_date, write_data
from greenfork.workers.timers import BODY, NONE, SEND, Expired, RequestTimeout, Timed
from greenfork.workers.transport import ClientGone
from greenfork.workers.wsgi import FileWrapper, Input, StartResponse

if TYPE_CHECKING:
    from greenfork.workers.h2conn import H2Driver

log = logging.getLogger("greenfork.worker")

OPEN, SENDING, DONE, CLOSED = range(4)
STATE_NAMES: Final = ("OPEN", "SENDING", "DONE", "CLOSED")
HEAD, PUSH, END, ANSWER, RESET = range(5)
EVENT_NAMES: Final = ("HEAD", "PUSH", "END", "ANSWER", "RESET")
TRANSITIONS: Final = {
    (OPEN, HEAD): SENDING,
    (OPEN, ANSWER): SENDING,
    (OPEN, RESET): CLOSED,
    (SENDING, PUSH): SENDING,
    (SENDING, END): DONE,
    (SENDING, ANSWER): SENDING,
    (SENDING, RESET): CLOSED,
    (DONE, RESET): CLOSED,
}
_TABLE: Final = [[TRANSITIONS.get((s, e), -1) for e in range(len(EVENT_NAMES))]
                  for s in range(len(STATE_NAMES))]

BATCH: Final = 1 << 16  # response bytes queued in h2 at a time, between checks for room
HIGH_WATER: Final = 1 << 18  # response bytes queued on a connection before its streams wait for the writer


class LocalProtocolError(RuntimeError):
    """The caller did something the stream's table does not allow (a bug, never the client's)."""


class Stream:
    """One request and its response on an HTTP/2 connection (an Exchange, see request.py)."""

    __slots__ = ("body_error", "chunks", "ctx", "d", "ended", "err", "expect", "expired", "extra", "head",
                 "head_out", "headed", "inp", "limit", "no_body", "pending", "received", "remaining", "req",
                 "reset_code", "sent", "sid", "sr", "state", "status", "timer", "version", "wake_pending",
                 "waiting")

    def __init__(self, d: H2Driver, sid: int, req: Request, ended: bool) -> None:
        # what the sweeper times: its waits, its --request-timeout (its greenlet is ours)
        self.timer = Timed()
        self.d = d
        self.sid = sid
        self.req = req
        self.ctx = d.ctx
        self.extra = d.conn.extra
        self.version = "2"
        self.status = 0
        self.body_error: ProtocolError | None = None
        self.inp: Input | None = None
        self.sr: StartResponse | None = None
        self.headed = False
        self.state = OPEN
        self.chunks: deque[tuple[bytes, int]] = deque()  # body pieces and their flow-controlled lengths
        self.ended = ended  # the request's END_STREAM has arrived
        self.reset_code: int | None = None  # set once the stream is reset, by either side
        self.err = ""  # why the stream ended early (the metrics' error_type), "" if it did not
        self.expired: str | None = None  # the error_type of a body timeout that fired
        self.expect = req.expect_continue  # "100 Continue" owed before the first read
        self.limit: int | None = None
        self.received = 0
        self.head: list[tuple[bytes, bytes]] | None = None  # a head not yet handed to h2
        self.head_out = False
        self.pending: list[bytes] = []  # body bytes not yet handed to h2
        self.sent = 0
        self.remaining: int | None = None  # bytes still owed under Content-Length
        self.no_body = False
        self.waiting = False
        self.wake_pending = False

    @property
    def timed(self) -> Timed:
        return self.timer

    @property
    def greenlet(self) -> Any:
        return self.timer.greenlet

    @greenlet.setter
    def greenlet(self, g: Any) -> None:
        self.timer.greenlet = g

    def _move(self, event: int) -> None:
        nxt = _TABLE[self.state][event]
        if nxt < 0:
            raise LocalProtocolError(f"{EVENT_NAMES[event]} while {STATE_NAMES[self.state]}")
        self.state = nxt

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        """The stream's greenlet: the request stage, then the driver's bookkeeping."""
        try:
            self.d.server.stage.serve(self, self.req, self.d.conn.remote)
        except ClientGone as e:  # an error answer that could not be sent
            self.err = self.err or e.reason
        except (Expired, RequestTimeout, GreenletExit):
            pass  # fired after the request ended (the close of a slow iterable, say)
        except Exception:
            log.exception("Unexpected error on HTTP/2 stream %d from %s", self.sid, self.d.conn.peer())
        finally:
            self.inp = self.sr = None  # they point back at us: no cycle left behind
            self.d.stream_done(self)

    # ------------------------------------------------- waits (driver wakes us)
    def _wait(self, phase: int) -> None:
        """Until the driver wakes us, in a phase the sweeper times."""
        self.d.output()  # what we queued goes out while we wait (window updates, say)
        timer = self.timer
        timer.enter(phase)
        self.waiting = True
        try:
            self.d.hub.switch()
        finally:
            self.waiting = False
            self.wake_pending = False  # a wake-up still scheduled finds nobody waiting
            timer.enter(NONE)

    def wake(self) -> None:
        if self.waiting and not self.wake_pending:
            self.wake_pending = True
            self.d.hub.loop.run_callback(self._resume)

    def _resume(self) -> None:
        if self.wake_pending:
            self.wake_pending = False
            if self.waiting:
                self.greenlet.switch()

    def _gone(self) -> NoReturn:
        if self.reset_code is not None:
            raise ClientGone("stream_reset")
        raise ClientGone(self.d.gone_reason)

    # -------------------------------------------------- the request body
    def read_body(self) -> bytes:
        while True:
            if self.expired is not None:
                raise self._body_failed(ProtocolError(0, self.expired, "timed out"))
            chunks = self.chunks
            if chunks:
                data, flow = chunks.popleft()
                self.d.consumed(self.sid, flow)
                n = len(data)
                self.received += n
                self.timer.body_bytes += n
                limit = self.limit
                if limit is not None and self.received > limit:
                    raise self._body_failed(ProtocolError(413, "max_request_body_size_exceeded",
                                                          f"body over the limit of {limit} bytes"))
                return data
            if self.ended:
                return b""
            if self.reset_code is not None or self.d.gone:
                self._gone()
            try:
                self._wait(BODY)
            except Expired as e:
                self.expired = e.reason
                self.err = e.reason
                raise self._body_failed(ProtocolError(408, e.reason, "request body too slow")) from None

    def _body_failed(self, err: ProtocolError) -> BodyError:
        if self.body_error is None:
            self.body_error = err
        return BodyError(err)

    def start_body(self, limit: int | None) -> None:
        self.timer.body_wait = 0.0
        self.timer.body_bytes = 0
        self.limit = limit
        length = self.req.content_length
        if limit is not None and length is not None and length > limit:
            self.expect = False  # a final answer instead (RFC 9110 10.1.1)
            raise self._body_failed(ProtocolError(413, "max_request_body_size_exceeded",
                                                  f"Content-Length {length} over the limit of {limit}"))
        if self.expect:
            self.expect = False
            if not self.ended and self.state == OPEN and not self.chunks and self.reset_code is None \
                    and not self.d.gone:
                try:
                    self.d.h2.send_headers(self.sid, [(b":status", b"100")])
                except H2Error:
                    self._gone_or_reset()
                self.d.output()

    # ------------------------------------------------------- the response
    def send_head(self, status: str, headers: list[tuple[str, str]]) -> None:
        d = self.d
        head, code, length = response_head(status, headers, date=http_date(), server=d.server.server_header)
        self._move(HEAD)
        self.head = head
        self.status = code
        self.no_body = not has_body(self.req.method, code)
        self.remaining = None if self.no_body else length

    def respond(self, status: str, headers: list[tuple[str, str]],
                body: list[bytes] | tuple[bytes, ...]) -> None:
        self.send_head(status, headers)
        for data in body:
            if data:
                self.send_data(data)
        self.end()

    def send_data(self, data: bytes) -> None:
        if self.no_body:
            return
        remaining = self.remaining
        if remaining is not None:
            if len(data) > remaining:
                data = data[:remaining]  # what was declared, no more (the stream then ends normally)
            self.remaining = remaining - len(data)
        if data:
            self.pending.append(data)
            self.sent += len(data)

    def flush(self) -> None:
        if self.state == SENDING:
            self._push(False)

    def write(self, data: bytes) -> None:
        write_data(self, data)
        self.flush()

    def end(self) -> None:
        if self.remaining:
            # Shorter than its Content-Length: the client must not take it for complete.
            log.debug("HTTP/2 stream %d: the response is %d bytes short of its Content-Length; reset",
                      self.sid, self.remaining)
            self._push(False)
            self._reset(ErrorCodes.INTERNAL_ERROR)
            return
        self._push(True)

    def head_sent(self) -> bool:
        return self.head_out

    def body_bytes(self) -> int:
        return self.sent

    def send_file(self, fw: FileWrapper) -> bool:
        return False  # DATA frames carry it: the request stage reads it in blocks

    def upgrade(self, env: dict[str, Any], app: Any) -> Any | None:
        """Never asked: an HTTP/2 request carries no Upgrade (h2message.py refuses the header), and
        WebSocket over HTTP/2 (RFC 8441's extended CONNECT) is not offered."""
        return None

    def answer_instead(self, status: int) -> bool:
        if self.head_out:
            self.status = self.status or status
            return False
        self.head = None
        self.pending.clear()
        self.sent = 0
        self.status = status
        if not status:
            self._reset(ErrorCodes.CANCEL)  # nothing to say: the reset tells the client
            return True
        if self.reset_code is not None or self.d.gone:
            return True  # nobody to answer
        head, body = error_head(status, http_date(), self.d.server.server_header)
        self._move(ANSWER)  # then sent through the normal path, and DONE
        self.head = head
        self.no_body = False
        self.remaining = 0
        self.pending.append(body)
        self.sent = len(body)
        self._push(True)
        return True

    def abort(self) -> None:
        self._reset(ErrorCodes.INTERNAL_ERROR)

    def _reset(self, code: int) -> None:
        if self.state == CLOSED:
            return
        self._move(RESET)
        if self.reset_code is None and not self.d.gone:
            self.reset_code = code
            try:
                self.d.h2.reset_stream(self.sid, code)
            except H2Error:
                pass  # the stream is already closed in h2 (its response ended, say)
            self.d.output()

    # ------------------------------------------------ queueing frames in h2
    def _push(self, end: bool) -> None:
        """Hand the head and the pending body to h2, waiting for the peer's window and for
        room in the socket as needed; END_STREAM too if end."""
        d = self.d
        if self.reset_code is not None or d.gone:
            self._gone()
        self._move(PUSH)
        h2 = d.h2
        sid = self.sid
        head = self.head
        pending = self.pending
        try:
            if head is not None:
                self.head = None
                self.head_out = True
                if end and not pending:
                    h2.send_response(sid, head, True)
                    self.state = DONE  # (SENDING, END)
                    d.output()
                    return
                if end and len(pending) == 1 and not d.congested:
                    # The usual small response: HEADERS and one DATA frame with END_STREAM.
                    data = pending[0]
                    if h2.send_response(sid, head, False, data):
                        pending.clear()
                        self.state = DONE  # (SENDING, END)
                        d.queued += len(data)
                        d.guard.earn(WINDOW_UPDATE, UPDATES_PER_DATA_FRAME)
                        d.output()
                        return
                else:
                    h2.send_response(sid, head, False)
            if pending:
                data = pending[0] if len(pending) == 1 else b"".join(pending)
                pending.clear()
                size = len(data)
                # The usual small response: one DATA frame, if the window has room for it
                # (h2 checks that before it changes anything).
                if end and size <= h2.max_outbound_frame_size and not d.congested:
                    try:
                        h2.send_body(sid, data, True)
                    except FlowControlError:
                        self._send(data, end)
                    else:
                        d.queued += size
                        d.guard.earn(WINDOW_UPDATE, UPDATES_PER_DATA_FRAME)
                else:
                    self._send(data, end)
            elif end:
                h2.end_stream(sid)
        except H2Error:
            # The stream was reset meanwhile, or the connection failed: h2 refuses the frame.
            self._gone_or_reset()
        if end:
            self._move(END)
        d.output()

    def _send(self, data: bytes, end: bool) -> None:
        d = self.d
        h2 = d.h2
        sid = self.sid
        view = memoryview(data)
        pos = 0
        size = len(data)
        while True:
            if d.congested or d.queued >= HIGH_WATER:
                self._wait_for(d.room_waiters)
            window = h2.local_flow_control_window(sid)
            if window <= 0:
                d.window_waiters.add(self)
                try:
                    self._wait_send()
                finally:
                    d.window_waiters.discard(self)
                continue
            frame = h2.max_outbound_frame_size
            start = pos
            stop = min(size, pos + window, pos + BATCH)
            frames = 0
            while pos < stop:
                n = min(frame, stop - pos)
                h2.send_body(sid, data if n == size else view[pos:pos + n], end and pos + n == size)
                pos += n
                frames += 1
            d.guard.earn(WINDOW_UPDATE, UPDATES_PER_DATA_FRAME * frames)
            d.queued += stop - start
            if pos >= size:
                return
            d.output()  # the writer starts on what is queued while we go on

    def _wait_for(self, waiters: list[Stream]) -> None:
        waiters.append(self)
        self._wait_send()

    def _wait_send(self) -> None:
        if self.reset_code is not None or self.d.gone:
            self._gone()
        try:
            self._wait(SEND)
        except Expired as e:
            # The peer kept its window shut (or stopped reading) for --send-timeout.
            self.err = e.reason
            log.debug("HTTP/2 stream %d from %s: %s", self.sid, self.d.conn.peer(), e.reason)
            self._reset(ErrorCodes.CANCEL)
            raise ClientGone(e.reason) from None
        if self.reset_code is not None or self.d.gone:
            self._gone()

    def _gone_or_reset(self) -> NoReturn:
        if self.reset_code is None and not self.d.gone:
            self.reset_code = ErrorCodes.STREAM_CLOSED
        self._gone()

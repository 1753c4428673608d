"""The HTTP/1.1 side of the request stage's Exchange (request.py): what a connection does for
one request once its loop (conn.py) has parsed the head. The app's body reads go through the
protocol object (h1proto.py) and the transport's timed waits; its answer is gathered in the
transport's output list for the loop to send.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from greenfork.workers.h1proto import END, MUST_CLOSE, NEED_DATA, H1Server, ProtocolError, Request
from greenfork.workers.request import BodyError, http_date
from greenfork.workers.request import log_body_error as request_log_body_error
from greenfork.workers.timers import BODY, NONE, Expired
from greenfork.workers.timers import DRAIN as DRAINING
from greenfork.workers.transport import Transport
from greenfork.workers.wsgi import FileWrapper, Input, StartResponse

if TYPE_CHECKING:
    from greenfork.workers.worker import ListenerContext, WorkerServer

DRAIN_LIMIT = 1 << 20  # unread body bytes we discard to keep a connection reusable


class H1Exchange:
    """conn.Connection's request half: the per-request state here, the connection's in Connection."""

    __slots__ = ("body_error", "head_at", "headed", "inp", "mark", "req", "served", "since", "sr", "status")
    server: WorkerServer
    ctx: ListenerContext
    p: H1Server
    t: Transport
    out: list[bytes]

    # (set by Connection.__init__: one call less per connection)
    req: Request | None
    status: int
    served: int
    inp: Input | None
    sr: StartResponse | None
    headed: bool
    body_error: ProtocolError | None
    mark: int  # where this request's response starts in the gathered output
    since: int  # the transport's flush count when it started
    head_at: int  # the flush count when its head was queued (-1: not yet)

    def _drain(self) -> str:
        """The app left part of the body unread: discard it (bounded in bytes here, in time
        by the sweeper's DRAIN phase) so the connection can serve the next request."""
        inp = self.inp
        t = self.t
        t.enter(DRAINING)
        ok = False
        try:
            ok = inp is not None and inp.drain(DRAIN_LIMIT)
        except BodyError as e:
            # A body over --max-request-body-size is a 413 even when the app never read
            # it, if its answer has not gone out yet; otherwise the close ends it.
            if e.err.status == 413:
                answered = self.answer_instead(413)
                request_log_body_error(e.err, self.req, answered=answered)
        t.enter(NONE)
        if not ok and self.p.state != MUST_CLOSE:
            self.p.abort()
        return self.p.after_response()

    # ----------------------------------------------- the request stage's Exchange
    def read_body(self) -> bytes:
        p = self.p
        t = self.t
        while True:
            if t.expired is not None:
                # a timeout already fired on this body: every later read fails the same way
                raise self._body_failed(ProtocolError(0, t.expired, "timed out"))
            ev = p.next_event()
            if type(ev) is bytes:
                return ev
            if ev is END:
                return b""
            if ev is NEED_DATA:
                t.flush()
                draining = t.phase == DRAINING
                if not draining:
                    t.enter(BODY)
                try:
                    data = t.recv()
                except Expired as e:
                    t.expired = e.reason
                    # 408 if the response has not started (else the close aborts it)
                    raise self._body_failed(ProtocolError(0 if draining else 408, e.reason,
                                                          "request body too slow")) from None
                t.body_bytes += len(data)
                if not draining:
                    t.enter(NONE)
                p.receive_data(data)
                continue
            if isinstance(ev, ProtocolError):
                raise self._body_failed(ev)
            return b""  # CLOSED

    def _body_failed(self, err: ProtocolError) -> BodyError:
        if self.body_error is None and self.t.phase != DRAINING:
            self.body_error = err
        return BodyError(err)

    def start_body(self, limit: int | None) -> None:
        t = self.t
        t.body_wait = 0.0
        t.body_bytes = 0
        try:
            out = self.p.start_body(limit)
        except ProtocolError as e:
            raise self._body_failed(e) from None
        if out:
            self.out.append(out)
            t.flush()

    def send_head(self, status: str, headers: list[tuple[str, str]]) -> None:
        server = self.server
        p = self.p
        self.out.append(p.head(status, headers, date=http_date(), server=server.server_header,
                               keep_alive=server.keep_wish))
        self.status = p.status
        self.head_at = self.t.flushes

    def respond(self, status: str, headers: list[tuple[str, str]],
                body: list[bytes] | tuple[bytes, ...]) -> None:
        server = self.server
        p = self.p
        p.respond(status, headers, body, self.out, date=http_date(), server=server.server_header,
                  keep_alive=server.keep_wish)
        self.status = p.status
        self.head_at = self.t.flushes

    def send_data(self, data: bytes) -> None:
        self.out.append(self.p.send_data(data))

    def flush(self) -> None:
        self.t.flush()

    def end(self) -> None:
        end = self.p.end()
        if end:
            self.out.append(end)

    def head_sent(self) -> bool:
        return 0 <= self.head_at < self.t.flushes

    def answer_instead(self, status: int) -> bool:
        if self.head_sent():
            self.status = self.status or status
            return False
        # Gathered output before this request's start went out with any flush since (a
        # "100 Continue", say): then everything left in it is this request's.
        del self.out[self.mark if self.t.flushes == self.since else 0:]
        self.status = status
        out = self.p.error(status, date=http_date(), server=self.server.server_header)
        if out:
            self.out.append(out)
        return True

    def abort(self) -> None:
        self.p.abort()

    def body_bytes(self) -> int:
        return self.p.body_bytes

    def send_file(self, fw: FileWrapper) -> bool:
        """os.sendfile in a cooperative loop: the kernel copies, the hub waits for room."""
        t = self.t
        span = self.p.file_span()
        if span is None or not self.ctx.sendfile or not t.can_sendfile or not hasattr(fw.filelike, "fileno"):
            return False
        try:
            fd = fw.filelike.fileno()
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        except (OSError, ValueError):
            return False  # not a real file after all
        t.flush()
        self.p.file_sent(t.sendfile(fd, offset, span))
        return True

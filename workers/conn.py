"""One client connection: read bytes, feed the sans-IO core, run the app, write.

Runs in its own greenlet. Responses are gathered in one output list and sent
with a single write when the connection next has to wait for input, so
pipelined requests are answered with one write, and a small response goes out
as one packet with its head.

No socket timeouts: before each wait the connection records its phase (timers.py),
and the worker's sweeper throws Expired into the greenlet when a deadline passes.
"""

from __future__ import annotations

import _socket
import logging
import os
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from gevent import GreenletExit, Timeout
from gevent.socket import wait_read

from greenfork.workers.http1 import (
    CLOSED,
    END,
    NEED_DATA,
    H1Connection,
    ProtocolError,
    Request,
)
from greenfork.workers.response import (
    CONTINUE,
    error_response,
    response_head,
)
from greenfork.workers.timers import BODY, DRAIN, FRESH, HEADERS, IDLE, NONE, Expired
from greenfork.workers.transport import FLUSH_AT, ClientGone, Transport
from greenfork.workers.wsgi import FileWrapper, Input, StartResponse, build_environ

if TYPE_CHECKING:
    from greenfork.workers.worker import ListenerContext, WorkerServer

log = logging.getLogger("greenfork.worker")

DRAIN_LIMIT = 1 << 20  # unread body bytes we discard to keep a connection reusable

_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date header value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


class RequestTimeout(BaseException):
    """--request-timeout fired. A BaseException, like gevent.Timeout, so that an app's
    `except Exception` cannot swallow it."""


class BodyError(OSError):
    """The request body was malformed, over the limit, too slow or cut short, while
    the app (or the drain after it) was reading it. An OSError, like any failed read."""

    def __init__(self, err: ProtocolError) -> None:
        super().__init__(err.detail)
        self.err = err


class Connection(Transport):
    __slots__ = ("addr", "body_bytes", "body_wait", "ctx", "greenlet", "h1", "idle", "inp", "remote",
                 "req", "served", "server", "status",
                 "error_type", "opened", "version")  # for metrics (workers/instrument.py)

    def __init__(self, server: WorkerServer, sock: _socket.socket, addr: Any, ctx: ListenerContext) -> None:
        Transport.__init__(self, sock, server.hub)
        self.server = server
        self.addr = addr
        self.ctx = ctx
        self.remote = ctx.remote(addr)  # REMOTE_ADDR, REMOTE_PORT
        self.h1 = H1Connection(server.limits)
        self.idle = False
        self.greenlet: Any = None
        self.req: Request | None = None
        self.status = 0
        self.served = 0
        self.inp: Input | None = None
        # timers.py: a new connection waits for its first byte; for the body rate, the
        # time spent waiting for body bytes and their count
        self.phase = FRESH
        self.body_wait = 0.0
        self.body_bytes = 0
        self.opened, self.error_type, self.version = 0.0, "", ""

    def peer(self) -> str:
        return self.ctx.peer(self.addr)

    # -------------------------------------------------------------- the loop
    def run(self) -> None:
        try:
            self._serve()
        except (ClientGone, ConnectionError, TimeoutError):
            self.error_type = "io_error"
        except GreenletExit:
            pass
        except Expired as e:  # a wait we do not handle specially (never expected)
            self._timed_out(e)
        except BodyError as e:
            self._reject(e.err)
        except OSError as e:
            log.debug("connection from %s: %s", self.peer(), e)
        except Exception:
            log.exception("Unexpected error on a connection from %s", self.peer())
        finally:
            try:
                self.close()
            finally:
                self.server.connection_done(self)

    def _serve(self) -> None:
        h1 = self.h1
        server = self.server
        while True:
            ev = h1.next_event()
            if ev is NEED_DATA:
                self.flush()
                between = h1.between_requests
                self.idle = between
                if between and server.draining:
                    # Draining: the client may already have sent its next (or, on a just
                    # accepted connection, its first) request; closing now would reset it.
                    # Wait briefly for it; it is answered with Connection: close.
                    try:
                        wait_read(self.sock.fileno(), timeout=server.drain_idle_grace,
                                  timeout_exc=TimeoutError("drain idle grace"))
                    except TimeoutError:
                        return
                # The keep-alive timeout runs between requests; a new connection and a
                # started head share the headers timeout, counted from the connection's
                # start or from the request's first byte (not per read).
                if between:
                    if self.served and self.phase != IDLE:
                        self.phase = IDLE
                        self.deadline = 0.0
                elif self.phase != HEADERS:
                    if self.phase != FRESH:
                        self.deadline = 0.0
                    self.phase = HEADERS
                try:
                    if between and self.served:
                        # A keep-alive client sends its next request once it has read our
                        # answer, so reading at once nearly always fails (measured: over 99%
                        # under load, and the failed read and its exception cost a quarter of
                        # a small request): wait first. A new connection's first request
                        # usually came with it (three times in four): read first.
                        self.wait_readable()
                    data = self.recv()
                except Expired as e:
                    self._timed_out(e)
                    return
                finally:
                    self.idle = False
                self.rx += len(data)
                h1.receive_data(data)
            elif type(ev) is Request:
                if not self._handle(ev):
                    self.flush()
                    return
                # Pipelined requests behind this one: their answers are gathered, up to a bound.
                if h1.pending and (len(self.out) > 64 or sum(map(len, self.out)) > FLUSH_AT):
                    self.flush()
            elif ev is CLOSED:
                return
            elif isinstance(ev, ProtocolError):
                self._reject(ev)
                return
            # a stray body piece or END can only follow a request the app
            # already finished with; _handle drained it, so nothing to do

    def _reject(self, err: ProtocolError) -> None:
        self.error_type = err.error_type
        log.debug("rejected request from %s: %s (%s)", self.peer(), err.error_type, err.detail)
        if err.status:
            self.out.append(error_response(err.status, http_date(), self.server.server_header))
            self.flush()

    def _timed_out(self, e: Expired) -> None:
        """A wait between or inside request heads expired: 408 once a head has started."""
        self.expired = e.reason
        self.error_type = self.error_type or e.reason
        if e.phase == HEADERS:
            self._reject(ProtocolError(408, e.reason, "request head not complete in time"))
        else:
            log.debug("closed connection from %s: %s", self.peer(), e.reason)

    # -------------------------------------------------------------- a request
    def _handle(self, req: Request) -> bool:
        """Serve one request; return whether the connection may be reused."""
        server = self.server
        timed = server.timed  # the access log or metrics want the duration
        started = time.monotonic() if timed else 0.0
        self.req = req
        self.status = 0
        self.framer = None
        self.head_flushed = False
        self.phase = NONE
        self.body_wait = 0.0
        self.body_bytes = 0
        env = build_environ(self.ctx.base_environ, req, server.script_name)
        env["REMOTE_ADDR"], env["REMOTE_PORT"] = self.remote
        inp = self.inp = Input(self._pull_body, self._start_body, server.limits.max_body)
        inp.bodyless = not req.chunked and not req.content_length
        env["wsgi.input"] = inp
        env["greenfork.set_max_request_body_size"] = inp.set_max_body_size
        sr = self.sr = StartResponse(self._write)
        mark = len(self.out)
        result: Any = None
        keep = True
        # We are no proxy and speak nothing but HTTP: the server answers these itself.
        app = server.app if req.path != b"*" and req.method != "CONNECT" else _server_itself
        err = ""  # the metrics' error_type
        # --request-timeout bounds this request's greenlet only; the connection's other
        # requests and the worker's other connections carry on.
        timer = Timeout.start_new(server.request_timeout, RequestTimeout) if server.request_timeout else None
        try:
            result = app(env, sr)
            if isinstance(result, FileWrapper) and self._can_sendfile(result, sr):
                self._sendfile(result)
            elif type(result) is list or type(result) is tuple:
                for data in result:
                    if data:
                        self._body(data)
            else:
                for data in result:
                    if data:
                        self._body(data)
                        self.flush()  # an iterator may be streaming: do not hold its output
            if self.framer is None:
                self._start()
            framer = self.framer
            assert framer is not None
            end = framer.end()
            if end:
                self.out.append(end)
            keep = framer.keep_alive
        except (ClientGone, ConnectionError, TimeoutError):
            keep = False
            self.status = self.status or 499
            err = self.error_type = "io_error"
        except BodyError as e:
            # The body broke while the app read it: answer for the body if we still can.
            keep = False
            err = e.err.error_type
            self._answer_instead(mark, e.err.status)
            log.debug("request body from %s: %s (%s)", self.peer(), e.err.error_type,
                      e.err.detail)
        except RequestTimeout:
            keep = False
            log.error("Request %s %s exceeded --request-timeout (%g s)", req.method,
                      req.target.decode("latin-1"), server.request_timeout)
            self._answer_instead(mark, 504)
        except Exception:
            keep = False
            err = "error_after_starting_response" if self.head_flushed else "_OTHER"
            log.exception("Error handling request %s %s", req.method, req.target.decode("latin-1"))
            self._answer_instead(mark, 500)
        finally:
            if timer is not None:
                timer.close()
            close = None if type(result) is list else getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("Error closing the response iterable")
        if timed:
            if server.access_log is not None:
                framer = self.framer
                sent = framer.body_bytes if framer is not None else 0
                server.access_log.log(env, self.status, self.sr.headers if self.sr else [], sent,
                                      time.monotonic() - started)
            server.metrics.request(self, req, err, started)
        self.served += 1
        if keep and not inp.finished and not (inp.bodyless and self.h1.skip_end()):
            # Bounded in bytes here and in time by the sweeper (DRAIN phase).
            self.phase = DRAIN
            self.deadline = 0.0
            try:
                keep = inp.drain(DRAIN_LIMIT)
            except BodyError:
                keep = False  # the response is already gathered; the close ends it
            self.phase = NONE
        self.req = self.sr = None
        self.inp = None
        return keep and not server.draining and server.keep_alive > 0

    def _answer_instead(self, mark: int, status: int) -> None:
        """A request failed: if nothing went out yet, drop what was gathered since mark and
        answer status (0: nothing); mid-body, the close after the response tells the client."""
        if not self.head_flushed:
            del self.out[mark:]
            self.status = status
            if status:
                self.out.append(error_response(status, http_date(), self.server.server_header))
        else:
            self.status = self.status or status

    def _pull_body(self) -> bytes:
        h1 = self.h1
        while True:
            if self.expired is not None:
                # a timeout already fired on this body: every later read fails the same way
                raise BodyError(ProtocolError(0, self.expired, "timed out"))
            ev = h1.next_event()
            if type(ev) is bytes:
                return ev
            if ev is END:
                return b""
            if ev is NEED_DATA:
                self.flush()
                draining = self.phase == DRAIN
                if not draining:
                    self.phase = BODY
                try:
                    data = self.recv()
                except Expired as e:
                    self.expired = e.reason
                    # 408 if the response has not started (else the close aborts it)
                    raise BodyError(ProtocolError(0 if draining else 408, e.reason,
                                                  "request body too slow")) from None
                self.body_bytes += len(data)
                self.rx += len(data)
                self.phase = DRAIN if draining else NONE
                h1.receive_data(data)
                continue
            if isinstance(ev, ProtocolError):
                raise BodyError(ev)
            return b""  # CLOSED

    def _start_body(self) -> None:
        """Before the first read of wsgi.input (by the app or the drain): apply the
        request's body limit, then invite the body if the client waits for that."""
        inp = self.inp
        assert inp is not None and self.req is not None
        err = self.h1.set_body_limit(inp.max_body)
        if err is not None:
            raise BodyError(err)  # 413 instead of "100 Continue"
        if self.req.expect_continue and self.framer is None:
            self.out.append(CONTINUE)
            self.flush()

    # ------------------------------------------------------------- response
    def _start(self) -> None:
        sr = self.sr
        assert sr is not None and self.req is not None
        if sr.status is None:
            raise RuntimeError("the application returned without calling start_response")
        server = self.server
        req = self.req
        # A client still waiting for "100 Continue" has not sent the body the app did not
        # read: rather than wait for it, say the connection closes (RFC 9110 10.1.1).
        unsent = req.expect_continue and self.inp is not None and not self.inp.started
        head, self.framer = response_head(req, sr.status, sr.headers,
                                          keep_alive=not server.draining and server.keep_alive > 0
                                          and not unsent,
                                          date=http_date(), server=server.server_header)
        self.status = int(sr.status[:3])
        self.out.append(head)

    def _body(self, data: bytes) -> None:
        if self.framer is None:
            self._start()
        assert self.framer is not None
        if type(data) is not bytes:
            raise TypeError(f"the application yielded {type(data).__name__}, not bytes")
        self.out.append(self.framer.frame(data))

    def _write(self, data: bytes) -> None:
        """The legacy write() callable from start_response."""
        self._body(data)
        self.flush()

    # ------------------------------------------------------------- sendfile
    def _can_sendfile(self, fw: FileWrapper, sr: StartResponse) -> bool:
        if not self.ctx.sendfile or not hasattr(fw.filelike, "fileno"):
            return False
        if sr.status is None:
            return False
        self._start()
        framer = self.framer
        assert framer is not None
        return not framer.chunked and not framer.no_body and framer.remaining is not None

    def _sendfile(self, fw: FileWrapper) -> None:
        """os.sendfile in a cooperative loop: the kernel copies, the hub waits for room."""
        framer = self.framer
        assert framer is not None and framer.remaining is not None
        try:
            fd = fw.filelike.fileno()
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        except (OSError, ValueError):
            for data in fw:  # not a real file after all
                self._body(data)
            return
        self.flush()
        sent = self.sendfile(fd, offset, framer.remaining)
        remaining = framer.remaining - sent
        framer.body_bytes += sent
        framer.remaining = remaining
        if remaining:
            framer.keep_alive = False


def _server_itself(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """Requests the server answers without the application.

    `OPTIONS *` (RFC 9110 9.3.7) asks about the server in general, not a resource: 200 with
    no content, and the connection stays open. An application would see PATH_INFO "*",
    which routers do not expect.

    CONNECT (RFC 9110 9.3.6) asks for a tunnel, which only a proxy provides. The method is
    known but the target (an authority, not a resource) supports no method here: 405 with
    an empty Allow (RFC 9110 10.2.1: "allows no methods"); the request was already marked
    to close (llhttp treats CONNECT like an upgrade), so tunnel bytes are never parsed.
    """
    if environ["REQUEST_METHOD"] == "CONNECT":
        body = b"405 Method Not Allowed\n"
        start_response("405 Method Not Allowed", [("Allow", ""), ("Content-Type", "text/plain"),
                                                  ("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", [("Content-Length", "0")])
    return []

"""One client connection: read bytes, feed the sans-IO core, run the app, write.

Runs in its own greenlet. Responses are gathered in one output list and sent
with a single sendall when the connection next has to wait for input, so
pipelined requests are answered with one write, and a small response goes out
as one packet with its head.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from gevent import GreenletExit, Timeout
from gevent.socket import wait_write

from greenfork.workers.http1 import (
    CLOSED,
    CONTINUE,
    END,
    NEED_DATA,
    H1Connection,
    ProtocolError,
    Request,
    ResponseFramer,
    error_response,
    response_head,
)
from greenfork.workers.wsgi import FileWrapper, Input, StartResponse, build_environ

if TYPE_CHECKING:
    from greenfork.workers.worker import ListenerContext, WorkerServer

log = logging.getLogger("greenfork.worker")

RECV_SIZE = 65536
FLUSH_AT = 65536  # gathered output above this is sent even while pipelining
DRAIN_LIMIT = 1 << 20  # unread body bytes we discard to keep a connection reusable
SEND_TIMEOUT = 60.0
HEADERS_TIMEOUT = 30.0

_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date header value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


class ClientGone(Exception):
    """The peer closed or reset while we were writing."""


class RequestTimeout(BaseException):
    """--request-timeout fired. A BaseException, like gevent.Timeout, so that an app's
    `except Exception` cannot swallow it."""


class BodyError(Exception):
    """The request body was malformed, over the limit or cut short, while the
    app (or the drain after it) was reading it."""

    def __init__(self, err: ProtocolError) -> None:
        super().__init__(err.detail)
        self.err = err


class Connection:
    __slots__ = ("addr", "ctx", "framer", "greenlet", "h1", "head_flushed", "idle", "out", "req",
                 "served", "server", "sock", "sr", "status")

    def __init__(self, server: WorkerServer, sock: socket.socket, addr: Any, ctx: ListenerContext) -> None:
        self.server = server
        self.sock = sock
        self.addr = addr
        self.ctx = ctx
        self.h1 = H1Connection(server.limits)
        self.out: list[bytes] = []
        self.idle = False
        self.greenlet: Any = None
        self.req: Request | None = None
        self.sr: StartResponse | None = None
        self.framer: ResponseFramer | None = None
        self.head_flushed = False
        self.status = 0
        self.served = 0

    # -------------------------------------------------------------- the loop
    def run(self) -> None:
        try:
            self._serve()
        except (ClientGone, ConnectionError, TimeoutError, GreenletExit):
            pass
        except BodyError as e:
            self._reject(e.err)
        except OSError as e:
            log.debug("connection from %s: %s", self.ctx.peer(self.addr), e)
        except Exception:
            log.exception("Unexpected error on a connection from %s", self.ctx.peer(self.addr))
        finally:
            try:
                self.sock.close()
            finally:
                self.server.connection_done(self)

    def _serve(self) -> None:
        h1 = self.h1
        server = self.server
        while True:
            ev = h1.next_event()
            if ev is NEED_DATA:
                self._flush()
                between = h1.between_requests
                self.idle = between
                # keep-alive idle time applies between requests; the first request
                # (and any partial head) gets the headers timeout
                wait = server.keep_alive if between and self.served else HEADERS_TIMEOUT
                if between and server.draining:
                    # Draining: the client may already have sent its next (or, on a just
                    # accepted connection, its first) request; closing now would reset
                    # it. Wait briefly for it; it is answered with Connection: close.
                    wait = min(wait, server.drain_idle_grace)
                self.sock.settimeout(wait)
                try:
                    data = self.sock.recv(RECV_SIZE)
                except TimeoutError:
                    if not between:
                        self._reject(ProtocolError(408, "request_headers_timeout", "headers timeout"))
                    return
                finally:
                    self.idle = False
                h1.receive_data(data)
            elif type(ev) is Request:
                if not self._handle(ev):
                    self._flush()
                    return
                if len(self.out) > 64 or sum(map(len, self.out)) > FLUSH_AT:
                    self._flush()
            elif ev is CLOSED:
                return
            elif isinstance(ev, ProtocolError):
                self._reject(ev)
                return
            # a stray body piece or END can only follow a request the app
            # already finished with; _handle drained it, so nothing to do

    def _reject(self, err: ProtocolError) -> None:
        log.debug("rejected request from %s: %s (%s)", self.ctx.peer(self.addr), err.detail, err.error_type)
        if err.status:
            self.out.append(error_response(err.status, http_date(), self.server.server_header))
            self._flush()

    # -------------------------------------------------------------- a request
    def _handle(self, req: Request) -> bool:
        """Serve one request; return whether the connection may be reused."""
        server = self.server
        started = time.monotonic()
        self.req = req
        self.status = 0
        self.framer = None
        self.head_flushed = False
        env = build_environ(self.ctx.base_environ, req, server.script_name)
        env["REMOTE_ADDR"], env["REMOTE_PORT"] = self.ctx.remote(self.addr)
        inp = Input(self._pull_body, self._send_continue if req.expect_continue else None)
        env["wsgi.input"] = inp
        sr = self.sr = StartResponse(self._write)
        mark = len(self.out)
        result: Any = None
        keep = True
        # --request-timeout bounds this request's greenlet only; the connection's other
        # requests and the worker's other connections carry on.
        timer = Timeout.start_new(server.request_timeout, RequestTimeout) if server.request_timeout else None
        try:
            result = server.app(env, sr)
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
                        self._flush()  # an iterator may be streaming: do not hold its output
            if self.framer is None:
                self._start()
            assert self.framer is not None
            self.out.append(self.framer.end())
            keep = self.framer.keep_alive
        except (ClientGone, ConnectionError, TimeoutError):
            keep = False
            self.status = self.status or 499
        except BodyError as e:
            # The body broke while the app read it: answer for the body if we still can.
            keep = False
            if not self.head_flushed:
                del self.out[mark:]
                self.status = e.err.status
                if e.err.status:
                    self.out.append(error_response(e.err.status, http_date(), server.server_header))
            log.debug("request body from %s: %s", self.ctx.peer(self.addr), e.err.detail)
        except RequestTimeout:
            keep = False
            log.error("Request %s %s exceeded --request-timeout (%g s)", req.method,
                      req.target.decode("latin-1"), server.request_timeout)
            if not self.head_flushed:
                del self.out[mark:]
                self.status = 504
                self.out.append(error_response(504, http_date(), server.server_header))
            else:
                self.status = self.status or 504  # mid-body: the close tells the client
        except Exception:
            keep = False
            log.exception("Error handling request %s %s", req.method, req.target.decode("latin-1"))
            if not self.head_flushed:
                # Nothing went out yet: drop what was gathered, answer 500.
                del self.out[mark:]
                self.status = 500
                self.out.append(error_response(500, http_date(), server.server_header))
            else:
                self.status = self.status or 500  # mid-body: the close tells the client
        finally:
            if timer is not None:
                timer.close()
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("Error closing the response iterable")
        if server.access_log is not None:
            server.access_log.log(env, self.status, env["REMOTE_ADDR"],
                                  self.sr.headers if self.sr else [], time.monotonic() - started)
        self.req = self.sr = None
        self.served += 1
        if keep and not inp.finished:
            self.sock.settimeout(HEADERS_TIMEOUT)
            try:
                keep = inp.drain(DRAIN_LIMIT)
            except BodyError:
                keep = False  # the response is already gathered; the close ends it
        return keep and not server.draining and server.keep_alive > 0

    def _pull_body(self) -> bytes:
        h1 = self.h1
        while True:
            ev = h1.next_event()
            if type(ev) is bytes:
                return ev
            if ev is END:
                return b""
            if ev is NEED_DATA:
                self._flush()
                self.sock.settimeout(HEADERS_TIMEOUT)
                h1.receive_data(self.sock.recv(RECV_SIZE))
                continue
            if isinstance(ev, ProtocolError):
                raise BodyError(ev)
            return b""  # CLOSED

    def _send_continue(self) -> None:
        if self.framer is None:
            self.out.append(CONTINUE)
            self._flush()

    # ------------------------------------------------------------- response
    def _start(self) -> None:
        sr = self.sr
        assert sr is not None and self.req is not None
        if sr.status is None:
            raise RuntimeError("the application returned without calling start_response")
        server = self.server
        head, self.framer = response_head(self.req, sr.status, sr.headers,
                                          keep_alive=not server.draining and server.keep_alive > 0,
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
        self._flush()

    def _flush(self) -> None:
        if not self.out:
            return
        data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
        self.out.clear()
        if self.framer is not None:
            self.head_flushed = True
            if self.sr is not None:
                self.sr.sent = True
        self.sock.settimeout(SEND_TIMEOUT)
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ClientGone() from e

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
        self._flush()
        sockfd = self.sock.fileno()
        remaining = framer.remaining
        while remaining > 0:
            try:
                sent = os.sendfile(sockfd, fd, offset, min(remaining, 1 << 20))
            except BlockingIOError:
                wait_write(sockfd, timeout=SEND_TIMEOUT, timeout_exc=TimeoutError("send timeout"))
                continue
            except (BrokenPipeError, ConnectionResetError) as e:
                raise ClientGone() from e
            if sent == 0:
                break  # the file is shorter than its Content-Length
            offset += sent
            remaining -= sent
        framer.remaining = remaining
        if remaining:
            framer.keep_alive = False


def serve_connection(server: WorkerServer, sock: socket.socket, addr: Any, ctx: ListenerContext,
                     register: Callable[[Connection], None]) -> None:
    conn = Connection(server, sock, addr, ctx)
    register(conn)
    conn.run()

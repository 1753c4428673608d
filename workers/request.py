"""The request stage: the one WSGI adapter, driven by every protocol.

A protocol (HTTP/1.1 in conn.py; HTTP/2 streams later) hands one request at a
time to serve(), through the small Exchange interface below: how to read the
body, how to send the head, the body and the end, and how to answer with an
error instead. Everything PEP 3333 asks of a server lives here, once: the
environ, start_response with exc_info, write(), wsgi.input, file_wrapper, the
iterable's close(), and what a failing application or a bad body turns into.

A response head is sent lazily, with the first body bytes (or at the end), so an
application may still call start_response again with exc_info until then.
"""

from __future__ import annotations

import logging
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Protocol

from greenfork.workers import gate
from greenfork.workers.cachestage import Hit
from greenfork.workers.cachestage import attach as attach_cache
from greenfork.workers.http1 import ProtocolError, Request
from greenfork.workers.overload import attach as attach_limit
from greenfork.workers.timers import RequestTimeout, Timed
from greenfork.workers.transport import ClientGone
from greenfork.workers.websocket_pipeline import TakenOver
from greenfork.workers.wsgi import FileWrapper, Input, StartResponse, build_environ

if TYPE_CHECKING:
    from greenfork.workers.cachefill import Fill
    from greenfork.workers.hookpoints import RequestHooks
    from greenfork.workers.mounts import Mounts
    from greenfork.workers.worker import ListenerContext, WorkerServer

log = logging.getLogger("greenfork.worker")

CLIENT_GONE = 499  # the status recorded when the client left before a response: never on the wire

_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date header value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


class BodyError(OSError):
    """The request body was malformed, over the limit, too slow or cut short, while
    the app (or the drain after it) was reading it. An OSError, like any failed read."""

    def __init__(self, err: ProtocolError) -> None:
        super().__init__(err.detail)
        self.err = err


class Exchange(Protocol):
    """One request's conversation with its client, as this stage needs it."""

    status: int  # the status sent (or about to be), for the access log and metrics
    body_error: ProtocolError | None  # what went wrong with the body while the app read it
    extra: dict[str, Any]  # environ keys the connection adds (TLS, a PROXY header ...)
    inp: Input | None  # this request's wsgi.input and start_response, held for its duration
    sr: StartResponse | None
    headed: bool  # the head has been handed to the protocol
    ctx: ListenerContext
    version: str  # the protocol version, for the connection's metrics

    @property
    def timed(self) -> Timed: ...  # whose greenlet runs the app: --request-timeout is armed on it

    def write(self, data: bytes) -> None: ...  # start_response's legacy write(): write_data, flush
    def read_body(self) -> bytes: ...  # the next piece of the body, b"" at its end; BodyError
    def start_body(self, limit: int | None) -> None: ...  # before the first read; BodyError (413)
    def send_head(self, status: str, headers: list[tuple[str, str]]) -> None: ...
    def send_data(self, data: bytes) -> None: ...
    # send_head, send_data for each piece and end, at once: a body the app returned as a list or
    # tuple, its pieces already checked to be bytes
    def respond(self, status: str, headers: list[tuple[str, str]],
                body: list[bytes] | tuple[bytes, ...]) -> None: ...
    def flush(self) -> None: ...
    def send_file(self, fw: FileWrapper) -> bool: ...  # after send_head; False: iterate it instead
    def end(self) -> None: ...
    def head_sent(self) -> bool: ...  # is the head on the wire (no error answer can replace it)?
    def answer_instead(self, status: int) -> bool: ...  # replace the unsent response; False if too late
    def abort(self) -> None: ...  # the response cannot be completed: the connection (or stream) ends
    def body_bytes(self) -> int: ...  # response body bytes sent (the access log's %(B)s)
    # WebSocket: the request's head asked for another protocol (HTTP/1.1's Upgrade; never
    # called for HTTP/2). The app to call instead (it may raise TakenOver), or None: plain HTTP.
    def upgrade(self, env: dict[str, Any], app: Any) -> Any | None: ...


class RequestStage:
    """Runs the application for one exchange at a time (one per worker, shared)."""

    def __init__(self, server: WorkerServer) -> None:
        self.server = server
        self.script_name = server.script_name
        self.max_body = server.limits.max_body
        self.request_timeout = server.request_timeout
        self.mounts: Mounts | None = None  # issue 17: --mount's table, set by the worker once loaded
        # issue 14: forwarded headers, allowed hosts, --require-header; None when none is set
        self.gate = gate.build(server.settings)
        # gunicorn's pre_request/post_request hooks (workers/hookpoints.py): None unless one is set
        self.hooks: RequestHooks | None = None
        # issue 18: the shared response cache and the request queue limit (None when off; when
        # on, the limit also puts a counting wrapper in front of serve())
        self.cache = attach_cache(server)
        self.queue = attach_limit(self)

    def serve(self, ex: Exchange, req: Request, remote: tuple[str, str]) -> None:
        server = self.server
        timed = server.timed  # the access log or metrics want the duration
        started = time.monotonic() if timed else 0.0
        ctx = ex.ctx
        env = build_environ(ctx.base_environ, req, self.script_name)
        env["REMOTE_ADDR"], env["REMOTE_PORT"] = remote
        if ex.extra:
            env.update(ex.extra)
        if ctx.unix:
            _server_from_host(env)
        # The exchange holds these for the request (and lets go of them after it: they
        # point back at it, and a cycle per request would be left to the garbage collector).
        inp = ex.inp = Input(ex, self.max_body)
        env["wsgi.input"] = inp
        env["greenfork.set_max_request_body_size"] = inp.set_max_body_size
        sr = ex.sr = StartResponse(ex)
        ex.headed = False
        result: Any = None
        # We are no proxy and speak nothing but HTTP: the server answers these itself.
        app = server.app if req.path != b"*" and req.method != "CONNECT" else _server_itself
        # issue 17: with --mount, the prefix picks the app, splits SCRIPT_NAME/PATH_INFO and
        # names itself in environ["greenfork.route"] (workers/mounts.py). Off: one attribute test.
        if self.mounts is not None and app is not _server_itself:
            app = self.mounts.route(env)
        err = ""  # the metrics' error_type
        if self.gate is not None:  # issue 14 (workers/gate.py): may answer instead of the app
            app, err = self.gate.check(env, req.headers, app)
        # ---- issue 18: the shared response cache (workers/cachestage.py) ----------------------
        # Once the environ's scheme and host are final (they are the key's): a hit is answered
        # there without the app; a miss that may be stored runs the app through the Fill, which
        # keeps its body. With the cache off this is one attribute test.
        fill: Fill | None = None
        cache = self.cache
        if cache is not None:
            if cache.skip is req:  # the fast path knows it goes past the cache (a pass mark)
                if not err:
                    cache.bypass[0] += 1.0
            elif not err:  # (not when the gate answered)
                got = cache.before(ex, req, env, started)
                if got is not None:
                    if got is Hit.HIT:
                        return
                    fill = got
                    app = fill.wrap(app)
        # The request queue limit (workers/overload.py), after the cache: hits are answered even
        # when the worker is full; past the limit the rest get 503 now.
        if self.queue is not None and not err and self.queue.over(req):
            self.queue.refuse(ex, req, env, started)
            return
        # ----------------------------------------------------------------------------------------
        # WebSocket (websocket_pipeline.py): an upgrade head gets the app wrapped, and no
        # request timer, however long the WebSocket lives.
        upgrade = None
        if req.upgrade and not err:  # not when the gate answers instead of the app
            upgrade = ex.upgrade(env, app)
            if upgrade is not None:
                app = upgrade
        # --request-timeout bounds this request only; the connection's other requests and
        # the worker's other connections carry on (the sweeper throws RequestTimeout).
        timer = ex.timed if self.request_timeout and upgrade is None else None
        if timer is not None:
            timer.request_deadline = 0.0
        hooks = self.hooks  # server hooks (issue 16): one test when unset
        hooked = hooks.before(req, env) if hooks is not None else None
        try:
            result = app(env, sr)
            listed = type(result) is list or type(result) is tuple
            if listed:
                for data in result:  # before anything goes out: a wrong piece is answered 500
                    if type(data) is not bytes:
                        raise TypeError(f"the application returned {type(data).__name__}, not bytes")
            if listed and not ex.headed and ex.body_error is None and sr.status is not None:
                ex.respond(sr.status, sr.headers, result)  # the common case: all in one call
                ex.headed = True
            else:
                if isinstance(result, FileWrapper) and start_head(ex) and ex.send_file(result):
                    pass
                elif listed:
                    if not ex.headed:
                        start_head(ex)
                    for data in result:
                        if data:
                            ex.send_data(data)
                else:
                    for data in result:
                        if data:
                            write_data(ex, data)
                            ex.flush()  # an iterator may be streaming: do not hold its output
                if ex.body_error is not None:
                    raise BodyError(ex.body_error)  # the app answered a body it could not read
                if not ex.headed:
                    start_head(ex)
                ex.end()
        except ClientGone as e:
            ex.abort()
            ex.status = ex.status or CLIENT_GONE
            err = e.reason
        except TakenOver:
            # A WebSocket had the connection and has closed it: nothing goes out any more.
            ex.status = 101
            ex.abort()
        except BodyError as e:
            # The body broke while the app read it: whatever the app made of it, the client
            # hears about its own mistake (4xx), or the close ends a response already started.
            err = e.err.error_type
            log_body_error(e.err, req, env)
            if not ex.answer_instead(e.err.status):
                ex.abort()
        except RequestTimeout:
            log.error("Request %s %s exceeded --request-timeout (%g s)", req.method,
                      req.target.decode("latin-1"), self.request_timeout)
            if not ex.answer_instead(504):
                ex.abort()
        except Exception:
            if ex.body_error is not None:
                # The app failed over a body it could not read: the client's error, not the app's.
                err = ex.body_error.error_type
                log_body_error(ex.body_error, req, env)
                if not ex.answer_instead(ex.body_error.status):
                    ex.abort()
            else:
                err = "error_after_starting_response" if ex.head_sent() else "_OTHER"
                log.exception("Error handling request %s %s", req.method, req.target.decode("latin-1"))
                if not ex.answer_instead(500):
                    ex.abort()
        finally:
            if timer is not None:
                timer.request_deadline = -1.0
            close = None if type(result) is list else getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("Error closing the response iterable")
        if fill is not None:  # the shared response cache: store the complete response (or invalidate)
            fill.after(ex, sr.status, sr.headers, result, err)
        if timed:
            if server.access_log is not None:
                server.access_log.log(env, ex.status, sr.headers, ex.body_bytes(),
                                      time.monotonic() - started)
            # http_route: a mount's prefix (issue 17), or a route template the app set there
            route = env.get("greenfork.route", "")
            server.metrics.request(ex, req, err, started, route if type(route) is str else "")
        if hooked is not None and hooks is not None:
            hooks.after(ex, sr, hooked, env)


def start_head(ex: Exchange) -> bool:
    """Send the head from start_response's arguments, once: lazily, with the first body
    bytes or at the end, so that start_response may be called again with exc_info until then."""
    if not ex.headed:
        if ex.body_error is not None:
            # The app answers a body it could not read: the client hears of its own mistake
            # (4xx) instead, so nothing of the app's answer may go out.
            raise BodyError(ex.body_error)
        sr = ex.sr
        assert sr is not None
        if sr.status is None:
            raise RuntimeError("the application returned without calling start_response")
        ex.headed = True
        ex.send_head(sr.status, sr.headers)
    return True


def write_data(ex: Exchange, data: bytes) -> None:
    if not ex.headed:
        start_head(ex)
    if type(data) is not bytes:
        raise TypeError(f"the application yielded {type(data).__name__}, not bytes")
    ex.send_data(data)


def log_body_error(err: ProtocolError, req: Request | None, env: dict[str, Any] | None = None, *,
                   answered: bool = True) -> None:
    peer = "the client" if env is None else (env.get("REMOTE_ADDR") or "a unix socket")
    where = f"{req.method} {req.target.decode('latin-1')} from {peer}" if req is not None else "a request"
    if err.status == 413:
        log.warning("Request body over --max-request-body-size (%s), %s: %s", err.detail, where,
                    "answered 413" if answered else
                    "the application answered without reading it; the connection is closed")
    else:
        log.info("Bad request body (%s: %s), %s: answered %s", err.error_type, err.detail, where,
                 err.status or "with a close")


def _server_from_host(env: dict[str, Any]) -> None:
    """SERVER_NAME and SERVER_PORT on a unix socket, which has neither: from the Host
    header when there is one, else "localhost" and the scheme's default port."""
    host = env.get("HTTP_HOST", "")
    if host:
        if host.startswith("["):
            end = host.find("]")
            name, port = host[:end + 1], host[end + 2:]
        else:
            name, _, port = host.partition(":")
        if name:
            env["SERVER_NAME"] = name
            env["SERVER_PORT"] = port or ("443" if env["wsgi.url_scheme"] == "https" else "80")
            return
    env["SERVER_NAME"] = "localhost"
    env["SERVER_PORT"] = "443" if env["wsgi.url_scheme"] == "https" else "80"


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

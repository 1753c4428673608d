"""Where a worker calls gunicorn-style server hooks (master/hooks.py runs them).

- post_fork: boot.py, after monkey-patching, before the worker is built (after_fork());
- post_worker_init: once the application is loaded, before accepting (attach());
- pre_request / post_request: RequestStage.serve(), through `stage.hooks` (RequestHooks),
  which stays None when neither is set, so a request then costs one `is None` test more;
- worker_int: WorkerServer.stop() for a quick stop (quick_stop());
- worker_abort and worker_exit on SIGABRT: stackdump's handler, before it exits
  (`stackdump.last_words`); worker_exit otherwise: the executor, as the child exits.
"""

from __future__ import annotations

import http
import logging
from typing import TYPE_CHECKING, Any

from greenfork.master.hooks import WorkerHooks, call
from greenfork.workers import stackdump

if TYPE_CHECKING:
    from greenfork.workers.http1 import Request
    from greenfork.workers.request import Exchange
    from greenfork.workers.worker import WorkerServer
    from greenfork.workers.wsgi import StartResponse

log = logging.getLogger("greenfork.worker")


def after_fork(hooks: WorkerHooks) -> bool:
    """Import the worker's hooks and run post_fork; False: the worker fails to boot."""
    return hooks.prepare() and hooks.post_fork()


def attach(server: WorkerServer) -> bool:
    """The application is loaded: wire the request, interrupt and abort hooks, run
    post_worker_init; False: the worker fails to boot."""
    hooks = server.info.hooks
    if hooks is None:
        return True
    hooks.worker.wsgi = server.app
    if hooks.has("pre_request") or hooks.has("post_request"):
        server.stage.hooks = RequestHooks(hooks)
    if hooks.has("worker_abort") or hooks.has("worker_exit"):
        def last_words() -> None:
            hooks.worker_abort()
            hooks.worker_exit()

        stackdump.last_words = last_words
    return hooks.post_worker_init()


def listening(server: WorkerServer) -> None:
    hooks = server.info.hooks
    if hooks is not None:
        hooks.worker.sockets = list(server.sockets)


def quick_stop(server: WorkerServer) -> None:
    hooks = server.info.hooks
    if hooks is not None:
        hooks.worker_int()


class RequestView:
    """The `req` gunicorn's pre_request and post_request receive (gunicorn's http.Request).
    Hooks may set attributes on it (`req.started = time.monotonic()` in pre_request, read back
    in post_request), as they do on gunicorn's."""

    def __init__(self, req: Request, env: dict[str, Any]) -> None:
        self._req = req
        self._env = env

    @property
    def method(self) -> str:
        return self._req.method

    @property
    def uri(self) -> str:
        return self._req.target.decode("latin-1")

    @property
    def path(self) -> str:
        return self._req.path.decode("latin-1")

    @property
    def query(self) -> str:
        return self._req.query.decode("latin-1")

    fragment = ""
    trailers: list[tuple[str, str]] = []

    @property
    def version(self) -> tuple[int, int]:
        major, _, minor = self._req.version.partition(".")
        return int(major), int(minor or 0)

    @property
    def headers(self) -> list[tuple[str, str]]:
        """As gunicorn gives them: upper-case names, str values, in the order received. An
        HTTP/2 request's :authority is its HOST, last, as gunicorn's HTTP/2 puts it (RFC 9113
        8.3.1: it stands for the Host field, which the request then usually leaves out)."""
        req = self._req
        out = [(n.decode("latin-1").upper(), v.decode("latin-1")) for n, v in req.headers]
        if req.version == "2" and req.host is not None:
            out = [h for h in out if h[0] != "HOST"]
            out.append(("HOST", req.host.decode("latin-1")))
        return out

    @property
    def scheme(self) -> str:
        return str(self._env.get("wsgi.url_scheme", "http"))

    @property
    def remote_addr(self) -> str:
        return str(self._env.get("REMOTE_ADDR", ""))

    @property
    def environ(self) -> dict[str, Any]:
        return self._env

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class ResponseView:
    """The `resp` post_request receives (gunicorn's http.wsgi.Response), once it is complete."""

    __slots__ = ("headers", "sent", "status", "status_code")

    def __init__(self, status_code: int, status: str | None, headers: list[tuple[str, str]],
                 sent: int) -> None:
        self.status_code = status_code
        # the status sent; a 500 or 504 sent instead of the app's own is shown as sent
        if status is None or not status.startswith(str(status_code)):
            try:
                status = f"{status_code} {http.HTTPStatus(status_code).phrase}"
            except ValueError:
                status = str(status_code)  # 499: the client left before a response
        self.status = status
        self.headers = headers
        self.sent = sent

    @property
    def response_length(self) -> int:
        return self.sent

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


class RequestHooks:
    """pre_request and post_request, set on the request stage only when one of them is."""

    __slots__ = ("hooks", "worker")

    def __init__(self, hooks: WorkerHooks) -> None:
        self.hooks = hooks
        self.worker = hooks.worker

    def before(self, req: Request, env: dict[str, Any]) -> RequestView:
        view = RequestView(req, env)
        self.worker.nr += 1
        call(self.hooks.settings, "pre_request", (self.worker, view), log)
        return view

    def after(self, ex: Exchange, sr: StartResponse, view: RequestView, env: dict[str, Any]) -> None:
        if self.hooks.settings.post_request is None:
            return
        resp = ResponseView(ex.status, sr.status, list(sr.headers or ()), ex.body_bytes())
        call(self.hooks.settings, "post_request", (self.worker, view, env, resp), log)

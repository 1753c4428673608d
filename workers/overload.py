"""--max-queued-requests: past N requests in flight, a worker answers 503 at once (docs/overload.md).

Where the line is drawn: requests in flight in the worker, from the parsed head to the end of the
response. A gevent worker hands every request to a greenlet at once, so it has no queue of its
own in front of "handlers": its requests wait together, for the one CPU, for the app's pools and
for their clients, and every request added slows all the others down. Their number is what
grows without bound under overload (until --worker-connections closes new connections, which
tells the client nothing), and it is known exactly, at no cost, at the moment a request arrives.
Connections are the wrong count (idle keep-alive connections cost nothing), and the kernel's
listen queue cannot be answered from: a connection in it has no worker yet, and only a worker
can read the request and say 503 (the master never serves requests).

WebSocket sessions run inside the app call for as long as they are open: an upgrade request is
refused like any other when the worker is full, but not counted once it runs. Everything else,
a long download or a server-sent event stream included, counts while it is in flight.

The count is kept by a wrapper in front of RequestStage.serve(); the test is made inside serve(),
after the response cache's block: a hit is answered even when the worker is full (as HTTP.sys's
kernel cache answers in front of its request queue), so cached pages keep flowing while the app
is overloaded.

The refusal is a tiny fixed response: `503 Service Unavailable`, `Retry-After: 1`, and the
connection closes after it (a client's next attempt goes back to the shared accept queue, where
a worker with room may take it). Counted with error_type request_queue_full; the worker's count
and limit are the gauges greenfork_queued_requests and greenfork_queued_requests_limit, which
the master's /readyz reads (503 while every ready worker is at 90% of its limit).

Off (the default), nothing here runs: serve() is not wrapped, and its test is one attribute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from greenfork.metrics.recorder import NullFrontDoor
from greenfork.workers.transport import ClientGone

if TYPE_CHECKING:
    from greenfork.workers.http1 import Request
    from greenfork.workers.request import Exchange, RequestStage

log = logging.getLogger("greenfork.worker")

ERROR_TYPE: Final = "request_queue_full"
STATUS: Final = "503 Service Unavailable"
BODY: Final = b"503 request queue full\n"
RETRY_AFTER: Final = "1"  # seconds: one request's worth of patience for a client that honours it
HEADERS: Final = (("Content-Type", "text/plain"), ("Content-Length", str(len(BODY))),
                  ("Retry-After", RETRY_AFTER))
CLOSE: Final = ("Connection", "close")  # HTTP/1.x only: HTTP/2 forbids the field; its stream ends alone


class Limiter:
    """Stands in for RequestStage.serve and counts the requests in flight (this one included);
    serve() asks over() once the cache had its chance, and refuse() answers."""

    __slots__ = ("gauge", "inflight", "inner", "limit", "refused", "stage")

    def __init__(self, stage: RequestStage, limit: int) -> None:
        self.stage = stage
        self.inner: Callable[[Exchange, Request, tuple[str, str]], None] = stage.serve
        self.limit = limit
        self.inflight = 0
        self.refused = 0  # since the worker last had room (for the log lines)
        metrics = stage.server.metrics
        self.gauge = None if isinstance(metrics, NullFrontDoor) else metrics.queued_requests

    def __call__(self, ex: Exchange, req: Request, remote: tuple[str, str]) -> None:
        if req.upgrade:  # a WebSocket session is not a request in flight (see above)
            self.inner(ex, req, remote)
            return
        n = self.inflight = self.inflight + 1
        gauge = self.gauge
        if gauge is not None:
            gauge(n)
        try:
            self.inner(ex, req, remote)
        finally:
            n = self.inflight = self.inflight - 1
            if gauge is not None:
                gauge(n)
            if self.refused and n < self.limit:
                self._room_again()

    def over(self, req: Request) -> bool:
        """Is this request past the limit? (It is counted already, unless it is an upgrade.)"""
        return self.inflight > self.limit or (req.upgrade and self.inflight >= self.limit)

    def refuse(self, ex: Exchange, req: Request, env: dict[str, Any], started: float) -> None:
        server = self.stage.server
        self.refused += 1
        if self.refused == 1:
            log.warning("Worker %d has %d requests in flight (--max-queued-requests): answering 503 "
                        "(error_type request_queue_full)", server.info.slot, self.inflight - 1)
        err = ERROR_TYPE
        headers = list(HEADERS)
        if req.version != "2":
            headers.append(CLOSE)
        try:
            ex.headed = True
            ex.send_head(STATUS, headers)
            ex.send_data(BODY)
            ex.end()
        except ClientGone as e:
            ex.abort()
            err = e.reason
        if server.timed:
            if server.access_log is not None:
                server.access_log.log(env, ex.status, headers, ex.body_bytes(), time.monotonic() - started)
            server.metrics.request(ex, req, err, started)

    def _room_again(self) -> None:
        log.warning("Worker %d has room again; %d request(s) were answered 503 at the limit",
                    self.stage.server.info.slot, self.refused)
        self.refused = 0


def attach(stage: RequestStage) -> Limiter | None:
    """With --max-queued-requests N > 0: wrap the stage's serve() and announce the limit; the
    limiter is returned for serve()'s test (None: off)."""
    server = stage.server
    limit = server.settings.max_queued_requests
    if limit <= 0:
        return None
    limiter = Limiter(stage, limit)
    stage.serve = limiter  # type: ignore[method-assign]  # an instance attribute: callers find it first
    server.metrics.announce(max_queued_requests=limit)
    return limiter

"""The worker's metrics hooks, called by conn.py and worker.py.

`attach(server)` returns Instruments writing into the worker's shared-memory
slot when the master gave it one (--metrics-bind), or NULL, whose hooks do
nothing. Per request the cost is one call, a dict lookup, a bisect and a few
float adds into shared memory (no locks, no syscalls). Gauges that would need
a hook on every read (idle keep-alive connections, requests in flight) are
sampled once a second from the hub instead.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from time import monotonic
from typing import TYPE_CHECKING

import gevent

from greenfork.metrics import appmetrics
from greenfork.metrics.layout import NBUCKETS, REQUEST_BUCKETS
from greenfork.metrics.recorder import NullFrontDoor, Recorder
from greenfork.metrics.slots import Slot
from greenfork.workers.request import CLIENT_GONE
from greenfork.workers.websocket import Observer

if TYPE_CHECKING:
    from greenfork.workers.conn import Connection
    from greenfork.workers.http1 import Request
    from greenfork.workers.request import Exchange
    from greenfork.workers.worker import WorkerServer

SAMPLE_INTERVAL = 1.0



class NullInstruments(NullFrontDoor):
    """Metrics off: hooks that cost one call each."""

    __slots__ = ()

    def opened(self, conn: Connection) -> None:
        pass

    def closed(self, conn: Connection) -> None:
        pass

    def rejected(self, listener: int) -> None:
        pass

    def request(self, conn: Exchange, req: Request, err: str, started: float, route: str = "") -> None:
        pass


NULL = NullInstruments()


class Instruments(Recorder):
    """Hooks over this worker's slot. The per-request hook inlines Recorder.observe:
    one Python frame per request is most of the cost."""

    __slots__ = ("server",)

    def __init__(self, server: WorkerServer, slot: Slot) -> None:
        super().__init__(slot)
        self.server = server

    def opened(self, conn: Connection) -> None:
        conn.opened = monotonic()
        self.conn_opened(conn.ctx.index)

    def closed(self, conn: Connection) -> None:
        t = conn.t
        self.conn_closed(conn.ctx.index, conn.version, conn.error_type, monotonic() - conn.opened, t.rx, t.tx)
        t.rx = t.tx = 0

    def request(self, conn: Exchange, req: Request, err: str, started: float, route: str = "") -> None:
        """route: the mount's prefix (issue 17), the http_route label; "" leaves it out."""
        duration = monotonic() - started
        status = conn.status
        if status == CLIENT_GONE:
            status = 0  # no response went out: the status label is left off, error_type says why
        version = conn.version = req.version
        raw = (req.method, status, conn.ctx.scheme, version, err, route)
        b = self._req_cells.get(raw)
        if b is None:
            b = self.request_cell(raw)
        mv = self.mv
        mv[b + bisect_left(REQUEST_BUCKETS, duration)] += 1.0
        mv[b + NBUCKETS] += duration

    def sample_forever(self) -> None:
        """Once a second: the sampled gauges, and the bytes of open connections (a
        connection's bytes are otherwise added when it closes, not per request)."""
        nlisteners = len(self.server.info.listeners)
        while True:
            keepalive = [0] * nlisteners
            active: Counter[tuple[str, str]] = Counter()
            for conn in list(self.server.connections):
                index = conn.ctx.index
                if conn.idle:
                    keepalive[index] += 1
                req = conn.req
                if req is not None:
                    active[req.method, conn.ctx.scheme] += 1
                if conn.h2 is not None:  # HTTP/2: each stream in progress
                    for method in conn.h2.active_methods():
                        active[method, conn.ctx.scheme] += 1
                t = conn.t
                if t.rx or t.tx:
                    self.transferred(index, t.rx, t.tx)
                    t.rx = t.tx = 0
            self.sample(keepalive, active)
            gevent.sleep(SAMPLE_INTERVAL)


class WebSocketMetrics(Observer):
    """websocket.py's Observer as the metrics hooks themselves (no-ops with metrics off):
    bound methods, not methods that call them, since two of them run per message."""

    def __init__(self, metrics: NullInstruments | Instruments) -> None:
        self.opened = metrics.websocket_opened  # type: ignore[method-assign]
        self.received = metrics.websocket_received  # type: ignore[method-assign, assignment]
        self.sent = metrics.websocket_sent  # type: ignore[method-assign, assignment]
        self.closed = metrics.websocket_closed  # type: ignore[method-assign]
        self.sizes = metrics is not NULL


def attach(server: WorkerServer) -> NullInstruments | Instruments:
    """The hooks for this worker (before its app is imported: app metrics need the slot identity)."""
    info = server.info
    if info.metrics is None:
        return NULL
    if info.settings.app_metrics:
        appmetrics.use_slot_identity(info.metrics.index)
    inst = Instruments(server, info.metrics)
    # Every feature this worker can feed, in one call (it sets the whole feature word): the
    # master then shows their families from zero. WebSocket is always on.
    inst.announce(websocket=True)
    gevent.spawn(inst.sample_forever)
    return inst

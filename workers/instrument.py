"""The worker's metrics hooks, called by conn.py and worker.py.

`attach(server)` returns Instruments writing into the worker's shared-memory
slot when the master gave it one (--metrics-bind), or NULL, whose hooks do
nothing. Per request the cost is one call, a dict lookup, a bisect and a few
float adds into shared memory (no locks, no syscalls). Gauges that would need
a hook on every read (idle keep-alive connections, requests in flight) are
sampled once a second from the hub instead.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import gevent

from greenfork.metrics import appmetrics
from greenfork.metrics.recorder import Recorder

if TYPE_CHECKING:
    from greenfork.workers.conn import Connection
    from greenfork.workers.http1 import Request
    from greenfork.workers.worker import WorkerServer

SAMPLE_INTERVAL = 1.0
CLIENT_GONE = 499  # conn.py's status when the client left before a response: never on the wire


class NullInstruments:
    """Metrics off: hooks that cost one call each."""

    __slots__ = ()

    def opened(self, conn: Connection) -> None:
        pass

    def closed(self, conn: Connection) -> None:
        pass

    def request(self, conn: Connection, req: Request, err: str, started: float) -> None:
        pass


NULL = NullInstruments()


class Instruments(NullInstruments):
    __slots__ = ("rec", "server")

    def __init__(self, server: WorkerServer, rec: Recorder) -> None:
        self.server = server
        self.rec = rec

    def opened(self, conn: Connection) -> None:
        conn.opened = time.monotonic()
        self.rec.opened(conn.ctx.index)

    def closed(self, conn: Connection) -> None:
        self.rec.closed(conn.ctx.index, conn.version, conn.error_type, time.monotonic() - conn.opened,
                        conn.rx, conn.tx)
        conn.rx = conn.tx = 0

    def request(self, conn: Connection, req: Request, err: str, started: float) -> None:
        status = conn.status
        if status == CLIENT_GONE and err == "io_error":
            status = 0  # no response went out: the status label is left off, error_type says why
        rx, tx = conn.rx, conn.tx
        conn.rx = conn.tx = 0
        conn.version = req.version
        ctx = conn.ctx
        self.rec.request(ctx.index, req.method, status, ctx.scheme, req.version, err,
                         time.monotonic() - started, rx, tx)

    def sample_forever(self) -> None:
        nlisteners = len(self.server.info.listeners)
        while True:
            keepalive = [0] * nlisteners
            active: Counter[tuple[str, str]] = Counter()
            for conn in list(self.server.connections):
                if conn.idle:
                    keepalive[conn.ctx.index] += 1
                req = conn.req
                if req is not None:
                    active[req.method, conn.ctx.scheme] += 1
            self.rec.sample(keepalive, active)
            gevent.sleep(SAMPLE_INTERVAL)


def attach(server: WorkerServer) -> Any:
    """The hooks for this worker (before its app is imported: app metrics need the slot identity)."""
    info = server.info
    if info.metrics is None:
        return NULL
    if info.settings.app_metrics:
        appmetrics.use_slot_identity(info.metrics.index)
    inst = Instruments(server, Recorder(info.metrics))
    gevent.spawn(inst.sample_forever)
    return inst

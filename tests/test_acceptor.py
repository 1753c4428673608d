"""The acceptor's greenlet pool, in-process on gevent's hub (no sockets: the
connections are stand-ins whose run() records which greenlet served them)."""

from __future__ import annotations

from typing import Any

import gevent
import gevent.event
from greenlet import getcurrent

from greenfork.workers import acceptor
from greenfork.workers.acceptor import Acceptor


class FakeServer:
    def __init__(self) -> None:
        self.hub = gevent.get_hub()
        self.draining = False
        self.connections: set[Any] = set()


class FakeConn:
    def __init__(self, server: FakeServer, block: gevent.event.Event | None = None) -> None:
        self.server = server
        self.block = block
        self.greenlet: Any = None
        self.idle = False
        self.served_by: Any = None
        self.exited = False
        server.connections.add(self)

    def run(self) -> None:
        self.served_by = getcurrent()
        try:
            if self.block is not None:
                self.idle = True
                self.block.wait()
        except gevent.GreenletExit:
            self.exited = True
        finally:
            self.idle = False
            self.server.connections.discard(self)


def test_a_finished_greenlet_serves_the_next_connection() -> None:
    server = FakeServer()
    acc = Acceptor(server)  # type: ignore[arg-type]
    first = FakeConn(server)
    acc.start(first)  # type: ignore[arg-type]
    gevent.sleep(0)
    assert first.served_by is not None and acc.parked == [first.served_by]
    second = FakeConn(server)
    acc.start(second)  # type: ignore[arg-type]
    gevent.sleep(0)
    assert second.served_by is first.served_by  # reused, not spawned
    assert acc.parked == [first.served_by]


def test_the_pool_is_bounded() -> None:
    server = FakeServer()
    acc = Acceptor(server)  # type: ignore[arg-type]
    hold = gevent.event.Event()
    conns = [FakeConn(server, hold) for _ in range(acceptor.POOL_MAX + 10)]
    for c in conns:
        acc.start(c)  # type: ignore[arg-type]
    gevent.sleep(0)
    assert len({c.served_by for c in conns}) == len(conns)  # all at once: one greenlet each
    hold.set()
    gevent.sleep(0)
    gevent.sleep(0)
    assert len(acc.parked) == acceptor.POOL_MAX
    assert not server.connections

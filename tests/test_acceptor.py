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


def test_closing_an_idle_connection_never_hits_the_next_one_on_its_greenlet() -> None:
    """close_idle is checked when the hub runs it: by then the greenlet may serve another."""
    server = FakeServer()
    acc = Acceptor(server)  # type: ignore[arg-type]
    hold = gevent.event.Event()
    old = FakeConn(server, hold)
    acc.start(old)  # type: ignore[arg-type]
    gevent.sleep(0)
    assert old.idle
    hold.set()  # its client sends a request: it wakes before the close runs ...
    acc.close_idle(old)  # type: ignore[arg-type]
    gevent.sleep(0)
    assert not old.exited and old not in server.connections  # ... finishes, parks
    new = FakeConn(server, gevent.event.Event())
    acc.start(new)  # type: ignore[arg-type]
    gevent.sleep(0)
    gevent.sleep(0)
    assert new.served_by is old.served_by and new.idle and not new.exited
    acc.close_idle(new)  # type: ignore[arg-type]
    gevent.sleep(0)
    assert new.exited and new not in server.connections

"""The master's metrics endpoint, driven step by step the way the master loop drives it.

A real listener on loopback and real client sockets; the "loop" is select() on
the service's own fds, so every test also shows the service never blocks.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from greenfork.master import metricsd
from greenfork.master.addresses import parse_bind
from greenfork.master.arbiter import Arbiter
from greenfork.master.listeners import bind_all, close_all
from greenfork.master.metricsd import MetricsService
from greenfork.master.settings import defaults
from greenfork.master.states import Event
from greenfork.metrics.collector import CacheStats
from greenfork.metrics.recorder import Recorder
from tests.metricsutil import parse, total
from tests.test_arbiter import arbiter as fake_arbiter
from tests.test_arbiter import feed


@pytest.fixture
def svc() -> Iterator[tuple[MetricsService, Arbiter]]:
    listeners = bind_all([parse_bind("http://127.0.0.1:0")])
    arbiter, _ = fake_arbiter(defaults(workers=2))
    service = MetricsService(listeners, [], lambda: arbiter)
    try:
        yield service, arbiter
    finally:
        service.close()
        close_all(listeners)


def pump(service: MetricsService, until: Callable[[], bool], timeout: float = 5.0) -> None:
    """Run the service's part of the master loop until `until()` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out pumping the metrics service"
        r, w = service.fds()
        readable, writable, _ = select.select(r, w, [], 0.02)
        service.serve(readable, writable)


def connect(service: MetricsService) -> socket.socket:
    host, port = service.listeners[0].sock.getsockname()[:2]
    s = socket.create_connection((host, port), timeout=5)
    s.setblocking(False)
    return s


def exchange(service: MetricsService, request: bytes) -> bytes:
    s = connect(service)
    s.sendall(request)
    got = bytearray()
    closed = [False]

    def done() -> bool:
        try:
            data = s.recv(65536)
        except BlockingIOError:
            return False
        if not data:
            closed[0] = True
            return True
        got.extend(data)
        return False

    pump(service, done)
    s.close()
    return bytes(got)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_routes_methods_and_readiness(svc: tuple[MetricsService, Arbiter]) -> None:
    service, arbiter = svc
    assert status_of(exchange(service, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")) == 200
    assert status_of(exchange(service, b"GET /readyz HTTP/1.1\r\n\r\n")) == 503  # no worker yet
    feed(arbiter, Event.START)
    pids = list(arbiter.workers)
    feed(arbiter, Event.READY, pids[0])
    assert status_of(exchange(service, b"GET /readyz HTTP/1.1\r\n\r\n")) == 200  # one READY is enough
    feed(arbiter, Event.TERM)
    assert status_of(exchange(service, b"GET /readyz HTTP/1.1\r\n\r\n")) == 503  # draining
    assert status_of(exchange(service, b"GET /livez HTTP/1.1\r\n\r\n")) == 200
    assert status_of(exchange(service, b"GET / HTTP/1.1\r\n\r\n")) == 404
    assert status_of(exchange(service, b"GET /metrics/x HTTP/1.1\r\n\r\n")) == 404
    resp = exchange(service, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert status_of(resp) == 405 and b"\r\nAllow: GET\r\n" in resp
    assert status_of(exchange(service, b"GARBAGE\r\n\r\n")) == 400
    resp = exchange(service, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
    assert status_of(resp) == 200
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n" in resp
    assert b"greenfork_workers{state=\"draining\"} 2.0" in resp


def test_oversized_request_is_refused(svc: tuple[MetricsService, Arbiter]) -> None:
    service, _ = svc
    resp = exchange(service, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n")
    assert status_of(resp) == 431


def test_a_slow_client_blocks_nobody_and_times_out(svc: tuple[MetricsService, Arbiter],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    service, _ = svc
    monkeypatch.setattr(metricsd, "CLIENT_TIMEOUT", 0.3)
    slow = connect(service)
    slow.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
    pump(service, lambda: len(service.clients) == 1)
    started = time.monotonic()
    assert status_of(exchange(service, b"GET /livez HTTP/1.1\r\n\r\n")) == 200
    assert time.monotonic() - started < 0.3

    def slow_closed() -> bool:
        try:
            return slow.recv(1) == b""
        except BlockingIOError:
            return False

    pump(service, slow_closed)
    assert not service.clients
    slow.close()


def test_connections_are_bounded(svc: tuple[MetricsService, Arbiter]) -> None:
    service, _ = svc
    idle = [connect(service) for _ in range(metricsd.MAX_CLIENTS)]
    pump(service, lambda: len(service.clients) == metricsd.MAX_CLIENTS)
    r, _ = service.fds()
    assert service.listeners[0].sock.fileno() not in r  # the next ones wait in the kernel queue
    extra = connect(service)
    extra.sendall(b"GET /livez HTTP/1.1\r\n\r\n")
    for _ in range(5):
        r, w = service.fds()
        readable, writable, _ = select.select(r, w, [], 0.02)
        service.serve(readable, writable)
    assert len(service.clients) == metricsd.MAX_CLIENTS
    idle.pop().close()
    got = bytearray()

    def answered() -> bool:
        try:
            got.extend(extra.recv(4096))
        except BlockingIOError:
            pass
        return b"\r\n\r\nok\n" in got

    pump(service, answered)
    for s in [*idle, extra]:
        s.close()


def test_the_masters_front_door_sources_are_served() -> None:
    listeners = bind_all([parse_bind("http://127.0.0.1:0")])
    arbiter, _ = fake_arbiter(defaults(workers=1))
    stats = [CacheStats(stores=5, evictions=1, bytes=1234)]
    service = MetricsService(listeners, [], lambda: arbiter,
                             certificates=lambda: [("example.com", 1_900_000_000.0)],
                             cache_stats=lambda: stats[0], delegation_targets=["/api"])
    try:
        body = exchange(service, b"GET /metrics HTTP/1.1\r\n\r\n").split(b"\r\n\r\n", 1)[1].decode()
        s = parse(body)
        expiry = total(s, "greenfork_tls_certificate_expiry_timestamp_seconds", server_name="example.com")
        assert expiry == 1.9e9
        assert total(s, "greenfork_response_cache_stores_total") == 5
        assert total(s, "greenfork_response_cache_bytes") == 1234
        assert total(s, "greenfork_delegated_connections_total", target="/api", result="success") == 0
        # a source set after construction (the TLS contexts may be built later) is used as well
        service.collector.frontdoor.certificates = lambda: [("late.example.com", 2e9)]
        body = exchange(service, b"GET /metrics HTTP/1.1\r\n\r\n").split(b"\r\n\r\n", 1)[1].decode()
        assert total(parse(body), "greenfork_tls_certificate_expiry_timestamp_seconds",
                     server_name="late.example.com") == 2e9
    finally:
        service.close()
        close_all(listeners)


def test_readyz_reports_saturation_of_every_ready_workers_request_queue(
        svc: tuple[MetricsService, Arbiter]) -> None:
    service, arbiter = svc
    feed(arbiter, Event.START)
    recorders = []
    for pid, w in list(arbiter.workers.items()):
        slot = service.acquire(w)
        service.assign(slot, pid)
        feed(arbiter, Event.READY, pid)
        rec = Recorder(slot)
        rec.announce(max_queued_requests=10)
        recorders.append(rec)
    ready = b"GET /readyz HTTP/1.1\r\n\r\n"
    assert status_of(exchange(service, ready)) == 200
    recorders[0].queued_requests(10)
    assert status_of(exchange(service, ready)) == 200  # one worker still has room
    recorders[1].queued_requests(int(10 * metricsd.READY_QUEUE_FRACTION))
    resp = exchange(service, ready)
    assert status_of(resp) == 503 and resp.endswith(b"not ready\n")
    recorders[1].queued_requests(2)
    assert status_of(exchange(service, ready)) == 200

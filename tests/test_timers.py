"""The sweeper's arithmetic, with fake connections and a fake clock (no gevent)."""

from __future__ import annotations

from greenfork.workers.timers import (
    BODY,
    DRAIN,
    FRESH,
    HEADERS,
    IDLE,
    NONE,
    SEND,
    Expired,
    Sweeper,
    Timed,
    Timeouts,
)


class FakeGreenlet:
    def __init__(self) -> None:
        self.dead = False
        self.thrown: list[BaseException] = []

    def throw(self, e: BaseException) -> None:
        self.thrown.append(e)


class Conn(Timed):
    def __init__(self, phase: int) -> None:
        super().__init__()
        self.phase = phase
        self.greenlet = FakeGreenlet()


def sweeper(conns: list[Conn], **kw: float) -> Sweeper:
    s = Sweeper(conns, Timeouts(**kw))
    s._last = 100.0
    return s


def reasons(conn: Conn) -> list[str]:
    return [e.reason for e in conn.greenlet.thrown if isinstance(e, Expired)]


def test_deadline_is_armed_lazily_then_expires() -> None:
    idle, head, fresh, send, none = Conn(IDLE), Conn(HEADERS), Conn(FRESH), Conn(SEND), Conn(NONE)
    s = sweeper([idle, head, fresh, send, none], keep_alive=5, request_headers=3, send=4)
    assert s.sweep(101.0) == []  # first sight arms: now + timeout
    assert (idle.deadline, head.deadline, fresh.deadline, send.deadline) == (106.0, 104.0, 104.0, 105.0)
    assert s.sweep(103.9) == []
    assert s.sweep(104.0) == [head, fresh]
    assert reasons(head) == ["request_headers_timeout"] and reasons(fresh) == ["request_headers_timeout"]
    assert head.phase == NONE  # never expired twice
    assert s.sweep(106.5) == [idle, send]
    assert reasons(idle) == ["keep_alive_timeout"] and reasons(send) == ["min_response_data_rate"]
    assert none.greenlet.thrown == []


def test_body_rate_counts_only_waiting_time_after_the_grace_period() -> None:
    c = Conn(BODY)
    s = sweeper([c], min_body_rate=100, body_grace=2)
    for t in (101.0, 102.0):
        assert s.sweep(t) == []  # within the grace period, even with no bytes
    c.body_bytes = 250  # 250 bytes over 2.5 s of waiting: 100 B/s, enough
    c.phase = NONE  # the app is busy for a long time: not counted
    assert s.sweep(110.0) == []
    c.phase = BODY
    assert s.sweep(110.5) == []
    assert c.body_wait == 2.5
    assert s.sweep(111.5) == [c]  # 250 bytes in 3.5 s: under 100 B/s
    assert reasons(c) == ["min_request_body_data_rate"]


def test_body_rate_zero_disables_it() -> None:
    c = Conn(BODY)
    s = sweeper([c], min_body_rate=0, body_grace=0)
    assert s.sweep(1000.0) == []


def test_drain_is_bounded_in_time_even_at_a_good_rate() -> None:
    c = Conn(DRAIN)
    s = sweeper([c], min_body_rate=1, body_grace=0, drain=5)
    c.body_bytes = 10**9
    assert s.sweep(101.0) == []
    assert s.sweep(106.0) == [c] and reasons(c) == ["request_body_drain_timeout"]


def test_dead_greenlets_are_skipped() -> None:
    c = Conn(IDLE)
    c.greenlet.dead = True
    s = sweeper([c], keep_alive=1)
    s.sweep(101.0)
    s.sweep(103.0)
    assert c.greenlet.thrown == []


def test_interval() -> None:
    assert Timeouts().interval() == 1.0
    assert Timeouts(request_headers=0.6, keep_alive=0.6, send=0.6, body_grace=0.4).interval() == 0.1
    assert Timeouts(keep_alive=0.0, request_headers=0.1, send=0.1, drain=0.1).interval() == 0.05
    assert Timeouts(request=2.0).interval() == 0.5


def test_a_closed_transport_is_never_expired() -> None:
    """Greenlets are pooled: once a connection is closed, a sweep that still holds its
    transport must not throw into the greenlet, which may be serving the next connection."""
    import socket

    from greenfork.workers.transport import Transport

    a, b = socket.socketpair()
    try:
        t = Transport(a, None)
        t.greenlet = FakeGreenlet()
        g = t.greenlet
        t.enter(IDLE)
        t.request_deadline = 0.0
        s = Sweeper([t], Timeouts(keep_alive=1, request=1))
        s._last = 100.0
        s.sweep(100.5)  # arms both deadlines
        t.close()
        assert s.sweep(200.0) == [] and g.thrown == []
    finally:
        b.close()


def test_the_proxy_phase_has_its_own_timeout() -> None:
    from greenfork.workers.timers import PROXY, REASONS

    waiting = Conn(PROXY)
    s = sweeper([waiting], proxy_protocol=2, request_headers=30)
    s.sweep(101.0)
    assert waiting.deadline == 103.0 and s.sweep(102.9) == []
    assert s.sweep(103.0) == [waiting] and reasons(waiting) == ["proxy_protocol_timeout"]
    assert REASONS[PROXY] == "proxy_protocol_timeout"
    assert Timeouts(proxy_protocol=0.4).interval() == 0.1


def test_unread_bytes_come_back_first() -> None:
    """Transport.unread: what followed a PROXY header is read again before the socket."""
    import socket

    from greenfork.workers.transport import Transport

    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        t = Transport(a, None)
        assert not t.pending_input()
        b.sendall(b"world")
        t.unread(b"hello ")
        assert t.pending_input()
        assert t.recv() == b"hello "  # as handed back, not merged with the socket's
        assert t.recv() == b"world" and t.rx == 5  # counted once, when first read
        t.unread(b"b")
        t.unread(b"a")  # a second hand-back goes before the first
        assert t.recv_raw() == b"ab"
    finally:
        a.close()
        b.close()

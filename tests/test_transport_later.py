"""flush_later() (workers/transport.py): a kept connection's answers sent by the hub at the end
of its loop iteration. In-process on gevent's hub, over real loopback TCP sockets: what the
kernel takes at once, what it does not (the rest goes back to the connection's greenlet), and
a greenlet that flushes or closes before the hub's turn."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import gevent
import pytest

from greenfork.workers.timers import SEND
from greenfork.workers.transport import Transport


def connected() -> tuple[Transport, socket.socket]:
    """(the server's transport, the client's blocking socket), connected over loopback."""
    with socket.create_server(("127.0.0.1", 0)) as lst:
        client = socket.create_connection(lst.getsockname(), timeout=10)
        server, _ = lst.accept()
    server.setblocking(False)
    return Transport(server, gevent.get_hub()), client


@pytest.fixture
def pair() -> Iterator[tuple[Transport, socket.socket]]:
    t, client = connected()
    try:
        yield t, client
    finally:
        client.close()
        if t.sock.fileno() >= 0:
            t.close()


def read(c: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        data = c.recv(1 << 20)
        assert data, f"closed after {len(got)} of {n} bytes"
        got += data
    return got


def serve_one(t: Transport, answer: bytes) -> gevent.Greenlet:
    """A connection's greenlet as conn.py runs it: an answer gathered, flush_later(), then a
    wait for the next request, which it returns."""
    def run() -> bytes:
        t.out.append(answer)
        t.flush_later()
        t.wait_readable()
        return t.recv()

    return gevent.spawn(run)


def test_answers_go_out_whole_and_the_wait_goes_on(pair: tuple[Transport, socket.socket]) -> None:
    t, client = pair
    g = serve_one(t, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    gevent.sleep(0.01)  # the greenlet waits, the hub has sent (nothing waits for the client)
    assert read(client, 40).endswith(b"\r\n\r\nhi")
    assert t.tx == 40 and t.flushes == 1 and not t.out
    client.sendall(b"next")
    assert g.get(timeout=10) == b"next"


def test_several_connections_in_one_iteration(pair: tuple[Transport, socket.socket]) -> None:
    t, client = pair
    t2, client2 = connected()
    try:
        g1, g2 = serve_one(t, b"one"), serve_one(t2, b"two")
        gevent.sleep(0.01)  # both greenlets run, then the hub's turn sends both answers
        assert read(client, 3) == b"one" and read(client2, 3) == b"two"
        client.sendall(b"a")
        client2.sendall(b"b")
        assert (g1.get(timeout=10), g2.get(timeout=10)) == (b"a", b"b")
    finally:
        t2.close()
        client2.close()


def test_what_the_kernel_does_not_take_the_greenlet_sends(pair: tuple[Transport, socket.socket]) -> None:
    """4 MiB against small buffers: the hub's one send takes part of it; the greenlet, woken
    from its wait, sends the rest as the client reads, then waits for the next request."""
    t, client = pair
    t.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    answer = bytes(range(256)) * 16384
    g = serve_one(t, answer)
    gevent.sleep(0.05)
    # the hub's send was partial: the greenlet, woken, sends the rest and waits for room
    assert t.phase == SEND and not t.out and not g.ready()
    got = b""
    client.setblocking(False)
    for _ in range(100_000):  # read what is there, letting the worker's side run meanwhile
        if len(got) == len(answer):
            break
        try:
            got += client.recv(65536)
        except BlockingIOError:
            gevent.sleep(0.001)
    client.settimeout(10)
    assert got == answer and t.tx == len(answer) and t.phase != SEND
    client.sendall(b"next")
    assert g.get(timeout=10) == b"next"


def test_a_flush_before_the_hubs_turn_sends_once(pair: tuple[Transport, socket.socket]) -> None:
    t, client = pair

    def run() -> None:
        t.out.append(b"first")
        t.flush_later()
        t.out.append(b"+second")
        t.flush()  # (an error answer, say: both go out now, in order; the hub sends nothing)

    gevent.spawn(run).get(timeout=10)
    gevent.sleep(0.01)
    client.sendall(b"x")  # (so that a duplicate would have arrived before what follows)
    t.out.append(b"|third")
    t.flush()
    assert read(client, 18) == b"first+second|third"


def test_a_close_before_the_hubs_turn_still_sends(pair: tuple[Transport, socket.socket]) -> None:
    t, client = pair

    def run() -> None:
        t.out.append(b"bye")
        t.flush_later()
        t.close()  # (a drain ends the connection in the same iteration)

    gevent.spawn(run).get(timeout=10)
    gevent.sleep(0.01)
    assert client.recv(100) == b"bye"
    assert client.recv(100) == b""

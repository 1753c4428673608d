"""A kept connection's answers are sent by the hub at the end of its loop iteration
(workers/transport.py, flush_later()), or at once while pipelined answers pile up; a client
that sends without reading fills every buffer on the way, so sends of both kinds find no room:
every answer must still arrive, whole and in order, once it reads. (The hub's own partial
send is tested in-process, where it can be forced: tests/test_transport_later.py.)"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading

import pytest

from tests.procs import Launcher, wait_for


def queues(port: int, client_port: int) -> tuple[int, int]:
    """(Recv-Q, Send-Q) of the server's end of the connection, from ss(8)."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.fail("ss is required (Debian's iproute2 package, which scripts/test installs)")
    out = subprocess.run([ss, "-Htn", f"( sport = :{port} and dport = :{client_port} )"], capture_output=True,
                         text=True, timeout=10, check=True).stdout.split()
    return (int(out[1]), int(out[2])) if out else (0, 0)


def read_head(c: socket.socket, buf: bytearray) -> bytes:
    while (end := buf.find(b"\r\n\r\n")) < 0:
        data = c.recv(1 << 20)
        if not data:
            raise AssertionError(f"closed with {len(buf)} bytes of a head")
        buf += data
    head = bytes(buf[:end + 4])
    del buf[:end + 4]
    return head


def read_exactly(c: socket.socket, n: int, buf: bytearray) -> bytes:
    while len(buf) < n:
        data = c.recv(1 << 20)
        if not data:
            raise AssertionError(f"closed after {len(buf)} of {n} bytes")
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


def batch_of(first: int, count: int, size: int) -> tuple[bytes, list[bytes]]:
    """`count` POSTs to /echo in exactly `size` bytes (the last body takes up the slack)."""
    def request(body: bytes) -> bytes:
        return b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    bodies = [(b"%08d" % (first + i)) * 250 for i in range(count - 1)]
    used = sum(len(request(b)) for b in bodies)
    last = len(request(b""))
    pad = size - used - last
    pad -= len(request(b"x" * pad)) - last - pad  # (the Content-Length's digits)
    bodies.append(b"%08d" % (first + count - 1) + b"x" * (pad - 8))
    data = b"".join(request(b) for b in bodies)
    assert len(data) == size, len(data)
    return data, bodies


def test_answers_the_kernel_cannot_take_at_once_all_arrive_in_order(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0"])
    port = g.port()
    # Writes of 64 KiB, each of whole requests: the worker's reads (64 KiB) end between two
    # requests, so the answers gathered for each read go to the hub (flush_later); 24 MB each
    # way, more than the buffers on the way hold.
    batches = [batch_of(i * 30, 30, 65536) for i in range(400)]
    bodies = [b for _, bs in batches for b in bs]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        failed: list[BaseException] = []

        def send() -> None:
            try:
                for data, _ in batches:
                    c.sendall(data)
            except BaseException as e:
                failed.append(e)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        # Nothing is read until the worker has stopped reading too: requests pile up unread on
        # its side, because its answers found no room and its greenlet waits to send them.
        cport = c.getsockname()[1]
        wait_for(lambda: queues(port, cport)[0] > 50_000, 30,
                 "the worker to stop reading, its sends blocked")
        buf = bytearray()
        for i, body in enumerate(bodies):
            head = read_head(c, buf)
            assert head.startswith(b"HTTP/1.1 200 OK"), (i, head)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            got = read_exactly(c, length, buf)
            assert got == body, f"answer {i}: {got[:16]!r}..."
        sender.join(30)
        assert not sender.is_alive() and not failed, failed

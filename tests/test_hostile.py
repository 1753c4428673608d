"""Slow, stalled, oversized and numerous clients against a real worker, on loopback.

Timeouts are set short (fractions of a second) so that each test is bounded in a
few seconds; the sweeper then checks every 1/4 of the shortest timeout.
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.procs import Greenfork, Launcher, http_get, raw, wait_for

pytestmark = pytest.mark.timeout(60)

SHORT = ["--request-headers-timeout", "0.6", "--keep-alive", "0.6", "--send-timeout", "0.6",
         "--request-body-grace-period", "0.4", "--min-request-body-data-rate", "1000"]


def start(launcher: Launcher, *args: str) -> Greenfork:
    return launcher.start(["testapp:hostile", "-b", "127.0.0.1:0", "--log-level", "debug", *args])


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Greenfork]:
    ln = Launcher(tmp_path_factory.mktemp("short"))
    try:
        yield start(ln, *SHORT)
    finally:
        ln.cleanup()


def connect(g: Greenfork, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", g.port()), timeout=timeout)


def read_until_close(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def timed_close(s: socket.socket) -> tuple[bytes, float]:
    t0 = time.monotonic()
    out = read_until_close(s)
    return out, time.monotonic() - t0


# ------------------------------------------------------------------ request head
def test_incomplete_head_gets_408_after_the_headers_timeout(short: Greenfork) -> None:
    with connect(short) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        out, took = timed_close(s)
    assert out.startswith(b"HTTP/1.1 408 ") and b"Connection: close\r\n" in out
    assert 0.4 < took < 2.5
    wait_for(lambda: "request_headers_timeout" in short.log(), 5, "the debug line")
    assert "from 127.0.0.1:" in short.log()


def test_headers_timeout_is_total_not_per_read(short: Greenfork) -> None:
    """A slowloris client sending a byte every 0.2 s is cut off after 0.6 s in all."""
    with connect(short) as s:
        t0 = time.monotonic()
        out = b""
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.2)  # the stimulus: a slow client
            s.setblocking(False)
            try:
                out += s.recv(65536)
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
            if out:
                break
        took = time.monotonic() - t0
    assert out.startswith(b"HTTP/1.1 408 ")
    assert took < 3


def test_silent_new_connection_is_closed_without_a_response(short: Greenfork) -> None:
    with connect(short) as s:
        out, took = timed_close(s)
    assert out == b"" and 0.4 < took < 2.5


def test_idle_keep_alive_connection_is_closed(short: Greenfork) -> None:
    with connect(short) as s:
        s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        out, took = timed_close(s)
    assert out == b"" and 0.4 < took < 2.5
    wait_for(lambda: "keep_alive_timeout" in short.log(), 5, "the debug line")


# ------------------------------------------------------------------ request body
def test_stalled_body_gets_408(short: Greenfork) -> None:
    with connect(short) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"a" * 10)
        out, took = timed_close(s)
    assert out.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in out
    assert took < 3
    wait_for(lambda: "min_request_body_data_rate" in short.log(), 5, "the debug line")


def test_slow_body_within_the_rate_is_served(short: Greenfork) -> None:
    """2,000 bytes every 0.1 s is 20 kB/s, over the 1,000 B/s minimum: served in full."""
    with connect(short) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 30000\r\nConnection: close\r\n\r\n")
        for _ in range(15):
            s.sendall(b"b" * 2000)
            time.sleep(0.1)  # the stimulus: a steady but slow upload
        out = read_until_close(s)
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"b" * 30000)


def test_stalled_body_after_the_response_started_aborts_it(short: Greenfork) -> None:
    with connect(short) as s:
        s.sendall(b"POST /stream-then-read HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
        out, took = timed_close(s)
    assert out.startswith(b"HTTP/1.1 200 ") and b"started\n" in out
    assert not out.endswith(b"0\r\n\r\n"), "an aborted chunked response must not look complete"
    assert took < 3


def test_unread_body_is_drained_within_bounds(short: Greenfork) -> None:
    """The app answers without reading; the rest of the body never comes: closed, not held."""
    with connect(short) as s:
        s.sendall(b"POST /pid HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
        out, took = timed_close(s)
    assert out.startswith(b"HTTP/1.1 200 ") and out.count(b"HTTP/1.1") == 1
    assert took < 3
    wait_for(lambda: "request_body_drain_timeout" in short.log() or
             "min_request_body_data_rate" in short.log(), 5, "the debug line")


def test_unread_body_that_arrives_is_drained_and_the_connection_reused(short: Greenfork) -> None:
    body = b"z" * 5000
    out = raw(short.url(), b"POST /pid HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + body
              + b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 ") == 2


# ------------------------------------------------------------------ response
@pytest.mark.parametrize("path", ["/big", "/bigfile"])  # the write path, and the sendfile path
def test_client_that_stops_reading_is_dropped_after_the_send_timeout(short: Greenfork, path: str) -> None:
    n = 64 << 20
    mark = len(short.log())
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    with s:
        s.connect(("127.0.0.1", short.port()))
        s.sendall(b"GET %s?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (path.encode(), n))
        # the stimulus is not reading at all; the server's send blocks, then expires
        wait_for(lambda: "min_response_data_rate" in short.log()[mark:], 10, "the send timeout")
        out = read_until_close(s)
    assert out.startswith(b"HTTP/1.1 200 ") and len(out) < n


# ------------------------------------------------------------------ body size
@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Greenfork]:
    ln = Launcher(tmp_path_factory.mktemp("small"))
    try:
        yield start(ln, "--max-request-body-size", "10", "--max-request-line-size", "100",
                    "--max-request-header-count", "5", "--max-request-headers-total-size", "300")
    finally:
        ln.cleanup()


def post(path: bytes, body: bytes, chunked: bool = False) -> bytes:
    if chunked:
        return (b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                b"%x\r\n%s\r\n0\r\n\r\n" % (path, len(body), body))
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        path, len(body), body)


def test_configured_limits_over_the_wire(small: Greenfork) -> None:
    assert raw(small.url(), post(b"/echo", b"x" * 11)).startswith(b"HTTP/1.1 413 ")
    assert raw(small.url(), post(b"/echo", b"x" * 11, chunked=True)).startswith(b"HTTP/1.1 413 ")
    assert raw(small.url(), post(b"/echo", b"x" * 10)).endswith(b"\r\n\r\n" + b"x" * 10)
    long_line = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw(small.url(), long_line).startswith(b"HTTP/1.1 414 ")
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(5))
    assert raw(small.url(), b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431 ")
    big = b"X-Big: " + b"v" * 300 + b"\r\n"
    assert raw(small.url(), b"GET / HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n").startswith(b"HTTP/1.1 431 ")


def test_per_request_body_limit(small: Greenfork) -> None:
    ok = raw(small.url(), post(b"/limit?max=100", b"x" * 50))
    assert ok.startswith(b"HTTP/1.1 200 ") and ok.endswith(b"\r\n\r\n50")
    ok = raw(small.url(), post(b"/limit?max=none", b"x" * 5000, chunked=True))
    assert ok.endswith(b"\r\n\r\n5000")
    assert raw(small.url(), post(b"/limit?max=3", b"x" * 5)).startswith(b"HTTP/1.1 413 ")
    late = raw(small.url(), post(b"/limit-late", b"x" * 5))
    assert late.endswith(b"\r\n\r\nrefused")


def test_413_before_100_continue(small: Greenfork) -> None:
    """RFC 9110 10.1.1: a body that will be refused is never invited."""
    with connect(small) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
        out = read_until_close(s)
    assert out.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in out


# ------------------------------------------------------------------ framing errors close
def test_smuggled_request_is_never_answered(short: Greenfork) -> None:
    """RFC 9112 6.3/11.2: after a framing error nothing further on the connection is read."""
    smuggled = b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n"
    attempts = [
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" % (5 + len(smuggled)) + smuggled,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n"
        b"0\r\n\r\n" + smuggled,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc" + smuggled,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n"
        + smuggled,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n" + smuggled,
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n" + smuggled,
    ]
    for data in attempts:
        out = raw(short.url(), data)
        assert out.count(b"HTTP/1.1 ") == 1, out
        assert out.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 501 ")) and b"Connection: close" in out


# ------------------------------------------------------------------ OPTIONS * and CONNECT
def test_options_asterisk_is_answered_by_the_server_and_keeps_the_connection(short: Greenfork) -> None:
    out = raw(short.url(), b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\nGET /pid HTTP/1.1\r\nHost: x\r\n"
                           b"Connection: close\r\n\r\n")
    first, _, rest = out.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 0" in first
    assert rest.startswith(b"HTTP/1.1 200 ")


def test_connect_is_405_and_closes(short: Greenfork) -> None:
    out = raw(short.url(), b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
                           b"\x16\x03\x01\x00\x05hello")
    assert out.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: \r\n" in out and b"Connection: close" in out
    assert out.count(b"HTTP/1.1") == 1


# ------------------------------------------------------------------ many clients
def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("this test needs 1,200 open files")


def test_worker_connections_excess_is_closed_and_logged_once(launcher: Launcher) -> None:
    g = start(launcher, "--worker-connections", "5")
    idle = [connect(g) for _ in range(5)]
    try:
        # all five slots are taken by keep-alive connections, each answered once (so accepted)
        for s in idle:
            s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        for _ in range(3):
            with connect(g) as s:
                s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
                out, took = timed_close(s)
            assert out == b"" and took < 2
        wait_for(lambda: "closing new connections" in g.log(), 5, "the warning")
        assert g.log().count("closing new connections") == 1
        idle.pop().close()
        wait_for(lambda: _served(g), 5, "a free slot to serve again")
        wait_for(lambda: "connection(s) were closed at the limit" in g.log(), 5, "the end of the episode")
    finally:
        for s in idle:
            s.close()


def _served(g: Greenfork) -> bool:
    try:
        return raw(g.url(), b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                   timeout=2).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def test_fresh_client_is_served_promptly_among_1000_idle_and_50_slowloris(launcher: Launcher) -> None:
    raise_nofile()
    g = start(launcher, "--worker-connections", "2000")
    idle: list[socket.socket] = []
    slow: list[socket.socket] = []
    stop = threading.Event()

    def slowloris() -> None:
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
        i = 0
        while not stop.is_set() and i < len(head):
            for s in slow:
                try:
                    s.send(head[i:i + 1])
                except OSError:
                    pass
            i += 1
            stop.wait(1.0)  # the stimulus: one header byte per second

    t = threading.Thread(target=slowloris, daemon=True)
    try:
        for _ in range(1000):
            idle.append(connect(g))
        for _ in range(50):
            slow.append(connect(g))
        t.start()
        worst = 0.0
        for _ in range(5):
            t0 = time.monotonic()
            status, _, _ = http_get(g.url(), "/pid", timeout=2)
            worst = max(worst, time.monotonic() - t0)
            assert status == 200
            time.sleep(0.3)  # spread the fresh clients over the slowloris seconds
        assert worst < 2.0
        # the idle and slow connections are all still open: nothing was dropped to make room
        for s in idle[:20] + slow[:5]:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
    finally:
        stop.set()
        t.join(5)
        for s in idle + slow:
            s.close()

"""HTTP/2 abuse: each attack is answered with the RFC's code, bounded in what it costs the
server (frames answered, app calls started, CPU, memory), counted in the metrics'
error_type, and does not slow another connection down."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.h2raw import Raw, request_headers
from tests.metricsutil import scrape, total
from tests.procs import Greenfork, Launcher, http_get, wait_for

LIMIT = 8  # --http2-max-concurrent-streams


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Greenfork]:
    ln = Launcher(tmp_path_factory.mktemp("h2abuse"))
    try:
        yield ln.start(["h2app:app", "-b", "127.0.0.1:0", "--http2-max-concurrent-streams", str(LIMIT),
                        "--send-timeout", "2", "--request-headers-timeout", "2",
                        "--metrics-bind", "127.0.0.1:0"])
    finally:
        ln.cleanup()


def worker(g: Greenfork) -> int:
    pids = g.workers()
    assert len(pids) == 1
    return pids[0]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def conn_errors(g: Greenfork, error_type: str) -> float:
    return total(scrape(g.info["metrics"]), "greenfork_connection_duration_seconds_count",
                 error_type=error_type)


def flood(c: Raw, frames: bytes, batches: int) -> tuple[GoAwayFrame, int]:
    """Send `frames` again and again until the server's GOAWAY arrives: the GOAWAY, and how many
    batches went out before the server closed (sends fail once it has)."""
    sent = 0
    c.sock.settimeout(5)
    try:
        for _ in range(batches):
            c.sock.sendall(frames)
            sent += 1
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    g = c.goaway(timeout=10)
    return g, sent


def responsive(g: Greenfork, limit: float = 1.0) -> None:
    """Another connection is served, and promptly."""
    started = time.monotonic()
    status, _, body = http_get(g.url(), "/")
    assert status == 200 and body == b"hello\n"
    assert time.monotonic() - started < limit


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


# ------------------------------------------------------------ rapid reset
def test_rapid_reset_is_bounded_and_ends_the_connection(server: Greenfork) -> None:
    """CVE-2023-44487: streams opened and reset at once. The app never runs more than the
    stream limit at a time (a reset stream counts until its app call returns), and the
    connection ends with ENHANCE_YOUR_CALM once the resets outrun their budget."""
    http_get(server.url(), "/inflight-max")  # reset the app's high-water mark
    before = http_get(server.url(), "/calls")[2]
    with Raw.connect(server.port()) as c:
        sid = 1
        started = time.monotonic()
        c.sock.settimeout(5)
        try:
            for i in range(100):  # 2000 streams, 20 at a time, as fast as the server takes them
                batch = []
                for _ in range(20):
                    batch.append(c.headers_frame(sid, request_headers("/inflight?s=0.3")).serialize())
                    batch.append(RstStreamFrame(sid, error_code=ErrorCodes.CANCEL).serialize())
                    sid += 2
                c.sock.sendall(b"".join(batch))
                c.ping(struct.pack(">Q", i))  # each batch in a read of its own: its streams start
        except (BrokenPipeError, ConnectionResetError, EOFError):
            pass
        seen = [f for f in c.frames if isinstance(f, GoAwayFrame)]
        ga = seen[0] if seen else c.goaway()
        assert ga.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert time.monotonic() - started < 5
    wait_for(lambda: http_get(server.url(), "/inflight-now")[2] == b"0", 5, "the app calls still running")
    high = int(http_get(server.url(), "/inflight-max")[2])
    calls = int(http_get(server.url(), "/calls")[2]) - int(before) - 2
    assert 1 <= high <= LIMIT, high  # never more than the limit at once
    assert calls <= 300, calls  # app calls the 2000 streams got: the reset budget (200) and its refill
    responsive(server)
    wait_for(lambda: conn_errors(server, "stream_reset_flood") >= 1, 5, "stream_reset_flood in the metrics")


def test_streams_past_the_limit_are_refused_until_that_is_a_flood(server: Greenfork) -> None:
    with Raw.connect(server.port()) as c:
        for i in range(LIMIT):
            c.request(1 + 2 * i, "/sleep?s=1")
        burst = b"".join(c.headers_frame(1 + 2 * (LIMIT + i), request_headers("/")).serialize()
                         for i in range(1000))
        ga, _ = flood(c, burst, 1)
        refused = [f for f in c.frames
                   if isinstance(f, RstStreamFrame) and f.error_code == ErrorCodes.REFUSED_STREAM]
        assert ga.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert 100 <= len(refused) <= 300


# ------------------------------------------------------- CONTINUATION floods
def test_continuation_flood_of_empty_frames(server: Greenfork) -> None:
    """CVE-2024-27316 family: a header block that never ends."""
    with Raw.connect(server.port()) as c:
        c.send(HeadersFrame(1, c.block(request_headers("/")), flags=["END_STREAM"]))
        ga, _batches = flood(c, ContinuationFrame(1, b"").serialize() * 10, 1000)
        assert ga.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    wait_for(lambda: conn_errors(server, "continuation_flood") >= 1, 5, "continuation_flood in the metrics")
    responsive(server)


def test_continuation_flood_of_large_frames_is_bounded_in_bytes(server: Greenfork) -> None:
    pid = worker(server)
    rss = rss_mib(pid)
    with Raw.connect(server.port()) as c:
        c.send(HeadersFrame(1, c.block(request_headers("/")), flags=["END_STREAM"]))
        ga, _batches = flood(c, ContinuationFrame(1, b"\x00" * 16384).serialize(), 200)
        assert ga.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert rss_mib(pid) - rss < 16


def test_header_block_never_finished_times_out(server: Greenfork) -> None:
    with Raw.connect(server.port()) as c:
        c.send(HeadersFrame(1, c.block(request_headers("/"))[:3], flags=["END_STREAM"]))
        started = time.monotonic()
        c.eof(timeout=10)  # --request-headers-timeout 2
        assert time.monotonic() - started < 5
    wait_for(lambda: conn_errors(server, "request_headers_timeout") >= 1, 5, "the timeout in the metrics")


# --------------------------------------------------------------- HPACK
def test_hpack_bomb_stops_at_the_bound(server: Greenfork) -> None:
    """A 4000-byte field put in the dynamic table once, then referenced by one byte each."""
    pid = worker(server)
    rss = rss_mib(pid)
    cpu = cpu_seconds(pid)
    with Raw.connect(server.port()) as c:
        c.request(1, "/", extra=[("x-bomb", "b" * 4000)])  # indexed: the newest dynamic entry, 62
        c.response(1)
        block = c.block(request_headers("/")) + b"\xbe" * 16000  # 16000 copies: 64 MB decoded
        c.send(HeadersFrame(3, block[:16384], flags=["END_STREAM", "END_HEADERS"]))
        ga = c.goaway()
        assert ga.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert rss_mib(pid) - rss < 16
    assert cpu_seconds(pid) - cpu < 1.0
    wait_for(lambda: conn_errors(server, "max_request_headers_total_size_exceeded") >= 1, 5, "the metric")


def test_table_size_update_past_our_setting_is_compression_error(server: Greenfork) -> None:
    with Raw.connect(server.port()) as c:
        # RFC 7541 6.3: a dynamic table size update to 1 MiB, over SETTINGS_HEADER_TABLE_SIZE 4096
        c.send(HeadersFrame(1, b"\x3f\xe1\xff\x3f" + c.block(request_headers("/")),
                            flags=["END_STREAM", "END_HEADERS"]))
        assert c.goaway().error_code == ErrorCodes.COMPRESSION_ERROR
    wait_for(lambda: conn_errors(server, "hpack_decode_failed") >= 1, 5, "hpack_decode_failed in the metrics")


# ------------------------------------------------------- control-frame floods
@pytest.mark.parametrize(("name", "make", "answers"), [
    ("settings_flood", lambda i: SettingsFrame(0, settings={SettingsFrame.HEADER_TABLE_SIZE: 4096}),
     SettingsFrame),
    ("ping_flood", lambda i: PingFrame(0, opaque_data=struct.pack(">Q", i)), PingFrame),
    ("priority_flood", lambda i: PriorityFrame(1 + 2 * (i % 50), depends_on=0, stream_weight=i % 256), None),
    ("window_update_flood", lambda i: WindowUpdateFrame(0, window_increment=1), None),
])
def test_control_frame_flood(server: Greenfork, name: str, make: object, answers: type | None) -> None:
    pid = worker(server)
    cpu = cpu_seconds(pid)
    with Raw.connect(server.port()) as c:
        frames = b"".join(make(i).serialize() for i in range(5000))  # type: ignore[operator]
        started = time.monotonic()
        ga, _ = flood(c, frames, 20)
        assert ga.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert time.monotonic() - started < 5
        if answers is not None:  # the server answered the first ones only
            acks = [f for f in c.frames if isinstance(f, answers) and "ACK" in f.flags]
            assert len(acks) <= 1100
    assert cpu_seconds(pid) - cpu < 2.0
    wait_for(lambda: conn_errors(server, name) >= 1, 5, f"{name} in the metrics")
    responsive(server)


def test_empty_data_flood(server: Greenfork) -> None:
    with Raw.connect(server.port()) as c:
        c.send(c.headers_frame(1, request_headers("/slowread", "POST"), end_stream=False))
        ga, _ = flood(c, DataFrame(1, b"").serialize() * 1000, 20)
        assert ga.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    wait_for(lambda: conn_errors(server, "empty_frames_flood") >= 1, 5, "empty_frames_flood in the metrics")


def test_unknown_frame_flood(server: Greenfork) -> None:
    with Raw.connect(server.port()) as c:
        ga, _ = flood(c, frame(0xEE, 0, 0, b"12345678") * 1000, 20)
        assert ga.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_a_flood_does_not_slow_other_connections(server: Greenfork) -> None:
    """Four connections flooding PINGs without pause while another is served."""
    stop = threading.Event()
    flooding: set[int] = set()  # the attackers that have sent a first batch

    def attack(n: int) -> None:
        while not stop.is_set():
            try:
                with Raw.connect(server.port()) as c:
                    payload = b"".join(PingFrame(0, opaque_data=struct.pack(">Q", i)).serialize()
                                       for i in range(3000))
                    while not stop.is_set():
                        c.sock.sendall(payload)
                        flooding.add(n)
            except OSError:
                continue

    threads = [threading.Thread(target=attack, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(flooding) == 4, 10, "all four attackers flooding")
        worst = 0.0
        for _ in range(20):
            started = time.monotonic()
            status, _, _ = http_get(server.url(), "/")
            worst = max(worst, time.monotonic() - started)
            assert status == 200
        assert worst < 0.5, f"a request took {worst:.3f} s under the flood"
    finally:
        stop.set()
        for t in threads:
            t.join(10)


# ---------------------------------------------------------- flow control abuse
def test_a_peer_that_never_opens_its_window(server: Greenfork) -> None:
    """INITIAL_WINDOW_SIZE 0: the response waits, then --send-timeout resets the stream; the
    app's body is not buffered past what it handed over."""
    with Raw.connect(server.port(), settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}) as c:
        c.request(1, f"/big?n={64 << 20}")
        started = time.monotonic()
        rst = c.rst(1, timeout=10)
        assert rst.error_code == ErrorCodes.CANCEL
        assert 1.5 < time.monotonic() - started < 6
        c.ping()  # the connection lives on
    wait_for(lambda: total(scrape(server.info["metrics"]), "greenfork_http2_streams_total",
                           error_type="min_response_data_rate") >= 1, 5, "the stream's error in the metrics")


def test_a_peer_that_does_not_read_is_bounded_and_closed(server: Greenfork) -> None:
    """Windows opened wide, socket never read: the server stops at the socket, not at 256 MB,
    and --send-timeout closes the connection."""
    pid = worker(server)
    rss = rss_mib(pid)
    closed = conn_errors(server, "min_response_data_rate")
    with Raw.connect(server.port(), settings={SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1}) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.send(WindowUpdateFrame(0, window_increment=2**31 - 1 - 65535))
        for i in range(4):
            c.request(1 + 2 * i, f"/big?n={64 << 20}")
        time.sleep(1.0)
        grown = rss_mib(pid) - rss
        assert grown < 16, f"the worker grew {grown:.0f} MiB for a peer that reads nothing"
        wait_for(lambda: conn_errors(server, "min_response_data_rate") > closed, 10, "the send timeout")
    responsive(server)


# ------------------------------------------------------------ stream ids
def test_stream_id_exhaustion_ends_the_connection_gracefully(server: Greenfork) -> None:
    with Raw.connect(server.port()) as c:
        sid = 2**31 - 1 - 2 * LIMIT + 2 if (2**31 - 1 - 2 * LIMIT) % 2 == 0 else 2**31 - 1 - 2 * LIMIT
        c.request(sid, "/sleep?s=0.3")
        c.request(sid + 2, "/")  # after the GOAWAY: refused
        assert c.rst(sid + 2).error_code == ErrorCodes.REFUSED_STREAM
        _, body = c.response(sid)  # the one before it completes
        assert body == b"slept\n"
        c.eof()  # and the connection ends with it
        goaways = [f for f in c.frames if isinstance(f, GoAwayFrame)]
        assert [(g.error_code, g.last_stream_id) for g in goaways] == [(ErrorCodes.NO_ERROR, sid)]
    wait_for(lambda: conn_errors(server, "stream_id_exhausted") >= 1, 5, "stream_id_exhausted in the metrics")

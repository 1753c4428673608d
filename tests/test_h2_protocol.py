"""RFC 9113, rule by rule, with raw frames against a real server (tests/h2raw.py).

Each test names the section it follows and sends what the RFC describes; the server is a real
greenfork process on loopback serving tests/apps/h2app.py with HTTP/2 by prior knowledge.
"""

from __future__ import annotations

import json
import struct
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

from tests.h2raw import PREFACE, Raw, request_headers
from tests.procs import Greenfork, Launcher

S = SettingsFrame


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Greenfork]:
    ln = Launcher(tmp_path_factory.mktemp("h2proto"))
    try:
        yield ln.start(["h2app:app", "-b", "127.0.0.1:0", "--http2-max-concurrent-streams", "4",
                        "--send-timeout", "3"])
    finally:
        ln.cleanup()


@pytest.fixture
def c(server: Greenfork) -> Iterator[Raw]:
    with Raw.connect(server.port()) as raw:
        yield raw


def alive(c: Raw, sid: int) -> None:
    """The connection still serves requests."""
    c.request(sid, "/")
    headers, body = c.response(sid)
    assert headers[":status"] == "200" and body == b"hello\n"


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    """A frame from its parts (for what hyperframe will not build: bad lengths, zero increments)."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


# ------------------------------------------------------------------ 3.4, 6.5
def test_server_preface_is_settings_with_our_limits(c: Raw) -> None:
    first = c.read_frame()
    assert isinstance(first, SettingsFrame) and "ACK" not in first.flags  # 3.4: SETTINGS first
    assert first.settings == {S.HEADER_TABLE_SIZE: 4096, S.ENABLE_PUSH: 0, S.MAX_CONCURRENT_STREAMS: 4,
                              S.INITIAL_WINDOW_SIZE: 768 * 1024, S.MAX_FRAME_SIZE: 16384,
                              S.MAX_HEADER_LIST_SIZE: 32768, S.ENABLE_CONNECT_PROTOCOL: 0}
    update = c.read_frame()  # 6.9.2: the connection window is opened by WINDOW_UPDATE, to 1 MiB
    assert isinstance(update, WindowUpdateFrame) and update.stream_id == 0
    assert update.window_increment == (1 << 20) - 65535


def test_client_settings_are_acknowledged(c: Raw) -> None:  # 6.5.3
    c.until(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)


def test_a_get_is_answered(c: Raw) -> None:  # 8.1
    c.request(1, "/env?x=1")
    headers, body = c.response(1)
    assert headers[":status"] == "200" and headers["content-type"] == "text/plain"
    assert headers["server"] == "greenfork" and "date" in headers
    env = json.loads(body)
    assert env["SERVER_PROTOCOL"] == "HTTP/2" and env["PATH_INFO"] == "/env" and env["QUERY_STRING"] == "x=1"
    assert env["HTTP_HOST"] == "127.0.0.1"  # :authority (8.3.1)


def test_preface_then_request_in_one_write_and_byte_by_byte(server: Greenfork) -> None:
    import socket
    import time

    from hpack import Encoder

    block = Encoder().encode(request_headers("/"))
    data = PREFACE + SettingsFrame(0).serialize() + \
        HeadersFrame(1, block, flags=["END_STREAM", "END_HEADERS"]).serialize()
    for step in (len(data), 1):
        with socket.create_connection(("127.0.0.1", server.port()), timeout=10) as s:
            for i in range(0, len(data), step):
                s.sendall(data[i:i + step])
                if step == 1:
                    time.sleep(0.001)
            raw = Raw(s)
            headers, body = raw.response(1)
            assert headers[":status"] == "200" and body == b"hello\n"


def test_h1_still_served_on_the_same_port(server: Greenfork) -> None:
    from tests.procs import http_get

    status, _, body = http_get(server.url(), "/")
    assert status == 200 and body == b"hello\n"


def test_a_prefix_of_the_preface_then_http1_is_http1(server: Greenfork) -> None:
    from tests.procs import raw

    # "PRI " could start an HTTP/1.1 request line: it stays HTTP/1.1 (and PRI is no method we serve)
    out = raw(server.url(), b"PRI /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 ")


# --------------------------------------------------------------------- 4.2, 4.3
def test_frame_over_max_frame_size_is_frame_size_error(c: Raw) -> None:
    c.send(c.headers_frame(1, request_headers("/echo", "POST"), end_stream=False))
    c.send_raw(frame(0x0, 0, 1, b"x" * 16385))
    g = c.goaway()
    assert g.error_code == ErrorCodes.FRAME_SIZE_ERROR


def test_bad_hpack_is_compression_error(c: Raw) -> None:
    # index 70 of an empty dynamic table (RFC 7541 2.3.3: a decoding error)
    c.send(HeadersFrame(1, b"\x82\x86\x84\xc6", flags=["END_STREAM", "END_HEADERS"]))
    g = c.goaway()
    assert g.error_code == ErrorCodes.COMPRESSION_ERROR


# ------------------------------------------------------------------ 5.1, 5.1.1
def test_even_stream_id_from_client_is_protocol_error(c: Raw) -> None:
    c.send(c.headers_frame(2, request_headers("/")))
    assert c.goaway().error_code == ErrorCodes.PROTOCOL_ERROR


def test_decreasing_stream_id_is_protocol_error(c: Raw) -> None:
    alive(c, 5)
    c.send(c.headers_frame(3, request_headers("/")))
    assert c.goaway().error_code == ErrorCodes.PROTOCOL_ERROR


def test_data_on_idle_stream_is_protocol_error(c: Raw) -> None:
    c.send(DataFrame(7, b"x"))
    assert c.goaway().error_code == ErrorCodes.PROTOCOL_ERROR


def test_rst_stream_on_idle_stream_is_protocol_error(c: Raw) -> None:  # 6.4
    c.send(RstStreamFrame(9, error_code=ErrorCodes.CANCEL))
    assert c.goaway().error_code == ErrorCodes.PROTOCOL_ERROR


def test_data_after_end_stream_is_stream_closed(c: Raw) -> None:
    # half-closed (remote): a frame other than WINDOW_UPDATE, PRIORITY or RST_STREAM is a
    # stream error STREAM_CLOSED
    c.request(1, "/sleep?s=0.5")
    c.send(DataFrame(1, b"late"))
    assert c.rst(1).error_code == ErrorCodes.STREAM_CLOSED
    alive(c, 3)


# ---------------------------------------------------------------------- 5.1.2
def test_streams_past_the_limit_are_refused_and_the_connection_lives(c: Raw) -> None:
    for sid in (1, 3, 5, 7):
        c.request(sid, "/sleep?s=0.5")
    c.request(9, "/")  # the fifth, past --http2-max-concurrent-streams 4
    assert c.rst(9).error_code == ErrorCodes.REFUSED_STREAM
    for sid in (1, 3, 5, 7):
        headers, body = c.response(sid)
        assert headers[":status"] == "200" and body == b"slept\n"
    alive(c, 11)


# ------------------------------------------------------------------- 5.3.1, 5.5
def test_stream_depending_on_itself_is_a_stream_error(c: Raw) -> None:
    c.send(PriorityFrame(3, depends_on=3, stream_weight=10))
    assert c.rst(3).error_code == ErrorCodes.PROTOCOL_ERROR
    c.send(HeadersFrame(5, c.block(request_headers("/")), flags=["END_STREAM", "END_HEADERS", "PRIORITY"],
                        depends_on=5, stream_weight=1))
    assert c.rst(5).error_code == ErrorCodes.PROTOCOL_ERROR
    alive(c, 7)


def test_unknown_frame_types_are_ignored(c: Raw) -> None:
    c.send_raw(frame(0xEE, 0, 0, b"whatever"))  # (hyperframe serializes extension frames without a length)
    c.send_raw(frame(0xEF, 0xFF, 1, b"abc"))
    alive(c, 1)


# ------------------------------------------------------------------------- 6.x
def test_ping_is_answered_with_the_same_data(c: Raw) -> None:  # 6.7
    c.send(PingFrame(0, opaque_data=b"abcdefgh"))
    ack = c.until(lambda f: isinstance(f, PingFrame))
    assert "ACK" in ack.flags and ack.opaque_data == b"abcdefgh"


def test_window_update_of_zero_on_a_stream_is_a_stream_error(c: Raw) -> None:  # 6.9
    c.request(1, "/sleep?s=0.3")
    c.send_raw(frame(0x8, 0, 1, b"\0\0\0\0"))
    assert c.rst(1).error_code == ErrorCodes.PROTOCOL_ERROR
    alive(c, 3)


def test_window_update_of_zero_on_the_connection_is_a_connection_error(c: Raw) -> None:  # 6.9
    c.send_raw(frame(0x8, 0, 0, b"\0\0\0\0"))
    assert c.goaway().error_code == ErrorCodes.PROTOCOL_ERROR


def test_data_past_the_stream_window_is_flow_control_error(server: Greenfork) -> None:  # 6.9.1
    with Raw.connect(server.port()) as c:
        c.send(c.headers_frame(1, request_headers("/slowread?n=1", "POST"), end_stream=False))
        piece = b"x" * 16384
        for _ in range(48):  # 768 KiB: the whole stream window, which nobody reads fast
            c.send(DataFrame(1, piece))
        c.send(DataFrame(1, b"one too many"))
        f = c.until(lambda f: isinstance(f, RstStreamFrame | GoAwayFrame))
        assert f.error_code == ErrorCodes.FLOW_CONTROL_ERROR


def test_response_waits_for_the_window(server: Greenfork) -> None:  # 6.9.2
    with Raw.connect(server.port(), settings={S.INITIAL_WINDOW_SIZE: 0}) as c:
        c.auto_window = False
        c.request(1, "/")
        head = c.until(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1)
        assert "END_STREAM" not in head.flags
        with pytest.raises(TimeoutError):
            c.until(lambda f: isinstance(f, DataFrame), timeout=0.5)  # no window, no DATA
        c.send(WindowUpdateFrame(1, window_increment=3))
        d = c.until(lambda f: isinstance(f, DataFrame))
        assert d.data == b"hel" and "END_STREAM" not in d.flags
        c.send(SettingsFrame(0, settings={S.INITIAL_WINDOW_SIZE: 100}))  # 6.9.2: applies to open streams
        d = c.until(lambda f: isinstance(f, DataFrame))
        assert d.data == b"lo\n" and "END_STREAM" in d.flags


def test_request_body_larger_than_the_windows_flows_as_the_app_reads(server: Greenfork) -> None:
    size = 4 << 20  # four times the connection window
    with Raw.connect(server.port()) as c:
        c.send(c.headers_frame(1, request_headers("/echo", "POST"), end_stream=False))
        stream_window, conn_window, sent = 65535, 65535, 0  # until our SETTINGS are seen
        piece = b"y" * 16384
        while sent < size:
            while min(stream_window, conn_window) < len(piece):
                f = c.until(lambda f: isinstance(f, WindowUpdateFrame | SettingsFrame))
                if isinstance(f, WindowUpdateFrame):
                    if f.stream_id == 0:
                        conn_window += f.window_increment
                    else:
                        stream_window += f.window_increment
                elif S.INITIAL_WINDOW_SIZE in f.settings:
                    stream_window += f.settings[S.INITIAL_WINDOW_SIZE] - 65535
            n = min(len(piece), size - sent)
            c.send(DataFrame(1, piece[:n], flags=["END_STREAM"] if sent + n == size else []))
            sent += n
            stream_window -= n
            conn_window -= n
        headers, body = c.response(1, timeout=30)
        assert headers[":status"] == "200" and len(body) == size


def test_padding_counts_against_the_window_and_is_handed_back(c: Raw) -> None:  # 6.1
    c.send(c.headers_frame(1, request_headers("/echo", "POST"), end_stream=False))
    c.send(DataFrame(1, b"abc", pad_length=200, flags=["PADDED", "END_STREAM"]))
    _headers, body = c.response(1)
    assert body == b"abc"


def test_client_goaway_lets_streams_finish(c: Raw) -> None:  # 6.8
    c.request(1, "/sleep?s=0.3")
    c.send(GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.NO_ERROR))
    _headers, body = c.response(1)
    assert body == b"slept\n"
    c.eof()  # then the server closes


# ------------------------------------------------------------------------ 6.10
def test_header_block_in_continuation_frames(c: Raw) -> None:
    block = c.block(request_headers("/headers", extra=[("x-long", "v" * 5000)]))
    c.send(HeadersFrame(1, block[:10], flags=["END_STREAM"]),
           ContinuationFrame(1, block[10:20]),
           ContinuationFrame(1, block[20:], flags=["END_HEADERS"]))
    _headers, body = c.response(1)
    assert json.loads(body)["HTTP_X_LONG"] == "v" * 5000


def test_other_frame_inside_a_header_block_is_protocol_error(c: Raw) -> None:
    block = c.block(request_headers("/"))
    c.send(HeadersFrame(1, block[:5], flags=["END_STREAM"]), PingFrame(0, opaque_data=b"x" * 8))
    assert c.goaway().error_code == ErrorCodes.PROTOCOL_ERROR


# ------------------------------------------------------------------ 8.1, 8.1.1
@pytest.mark.parametrize("headers", [
    [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/"), ("X-Upper", "1")],  # 8.2.1
    [(":method", "GET"), (":scheme", "http"), (":path", "/"), ("a", "1"), (":authority", "a")],  # 8.3
    [(":method", "GET"), (":scheme", "http"), (":authority", "a")],  # 8.3.1: no :path
    [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "")],
    [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/"), (":path", "/")],
    [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/"), (":status", "200")],
    [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/"), (":protocol", "ws")],
    # 8.2.2
    [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/"), ("connection", "x")],
    [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/"), ("upgrade", "h2c")],
    [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/"), ("te", "gzip")],
    [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/"), ("x", " lead")],  # 8.2.1
    [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/"), ("x", "a\x00b")],
    [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "x")],  # 8.3.1: not absolute
    [(":method", "GET"), (":scheme", "http"), (":authority", "u@a"), (":path", "/")],  # userinfo
    [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/"), ("host", "b")],
    [(":method", "CONNECT"), (":authority", "a:443"), (":path", "/")],  # 8.5
    [(":method", "G E T"), (":scheme", "http"), (":authority", "a"), (":path", "/")],
    [(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/"), ("content-length", "x")],
])
def test_malformed_request_is_a_stream_error(c: Raw, headers: list[tuple[str, str]]) -> None:
    c.send(HeadersFrame(1, bytes(c.enc.encode(headers, huffman=False)), flags=["END_STREAM", "END_HEADERS"]))
    assert c.rst(1).error_code == ErrorCodes.PROTOCOL_ERROR
    alive(c, 3)  # a stream error, not a connection error


def test_content_length_disagreeing_with_data_is_a_stream_error(c: Raw) -> None:  # 8.1.1
    c.send(c.headers_frame(1, request_headers("/echo", "POST", extra=[("content-length", "10")]),
                           end_stream=False),
           DataFrame(1, b"too short", flags=["END_STREAM"]))
    assert c.rst(1).error_code == ErrorCodes.PROTOCOL_ERROR
    c.send(c.headers_frame(3, request_headers("/echo", "POST", extra=[("content-length", "2")]),
                           end_stream=False),
           DataFrame(3, b"too long"))
    assert c.rst(3).error_code == ErrorCodes.PROTOCOL_ERROR
    alive(c, 5)


def test_trailers_are_accepted(c: Raw) -> None:  # 8.1
    c.send(c.headers_frame(1, request_headers("/echo", "POST"), end_stream=False),
           DataFrame(1, b"body"),
           c.headers_frame(1, [("x-checksum", "abc")], end_stream=True))
    _, body = c.response(1)
    assert body == b"body"


def test_cookie_crumbs_are_joined(c: Raw) -> None:  # 8.2.3
    c.request(1, "/headers", extra=[("cookie", "a=1"), ("cookie", "b=2")])
    _, body = c.response(1)
    assert json.loads(body)["HTTP_COOKIE"] == "a=1; b=2"


def test_expect_100_continue(c: Raw) -> None:
    c.send(c.headers_frame(1, request_headers("/echo", "POST", extra=[("expect", "100-continue")]),
                           end_stream=False))
    c.until(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1)
    assert dict(c.blocks[1][0])[":status"] == "100"
    c.send(DataFrame(1, b"payload", flags=["END_STREAM"]))
    headers, body = c.response(1)
    assert headers[":status"] == "200" and body == b"payload"


def test_head_has_no_data(c: Raw) -> None:
    c.request(1, "/", method="HEAD")
    f = c.until(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1)
    headers = dict(c.blocks[1][0])
    assert "END_STREAM" in f.flags and headers["content-length"] == "6"


def test_options_star_and_connect(c: Raw) -> None:
    c.send(c.headers_frame(1, [(":method", "OPTIONS"), (":scheme", "http"), (":authority", "a"),
                               (":path", "*")]))
    headers, _ = c.response(1)
    assert headers[":status"] == "200"
    c.send(c.headers_frame(3, [(":method", "CONNECT"), (":authority", "example.com:443")]))
    headers, _ = c.response(3)
    assert headers[":status"] == "405"  # we are no proxy


def test_limits_answered_like_http1(c: Raw) -> None:
    c.request(1, "/", extra=[("x-big", "v" * 20000)])  # past --http2-max-request-header-field-size
    headers, _ = c.response(1)
    assert headers[":status"] == "431"
    c.request(3, "/", extra=[(f"x-{i}", "v") for i in range(101)])  # past --max-request-header-count
    headers, _ = c.response(3)
    assert headers[":status"] == "431"
    c.request(5, "/" + "p" * 9000)  # past --max-request-line-size
    headers, _ = c.response(5)
    assert headers[":status"] == "414"
    alive(c, 7)


def test_response_without_length_and_streamed(c: Raw) -> None:
    c.request(1, "/chunks?n=5&size=7000")
    headers, body = c.response(1)
    assert "content-length" not in headers and "transfer-encoding" not in headers
    assert body == b"".join(bytes([65 + i]) * 7000 for i in range(5))


def test_connection_specific_response_fields_are_dropped(c: Raw) -> None:  # 8.2.2
    c.request(1, "/stream")  # HTTP/1.1 would chunk it: no Transfer-Encoding here
    headers, body = c.response(1)
    assert not {"transfer-encoding", "connection", "keep-alive"} & set(headers)
    assert body == b"".join(b"chunk%d\n" % i for i in range(5))


def test_short_body_is_reset(c: Raw) -> None:
    c.request(1, "/short")
    assert c.rst(1).error_code == ErrorCodes.INTERNAL_ERROR
    alive(c, 3)


def test_app_error_before_start_is_500_and_after_is_reset(c: Raw) -> None:
    c.request(1, "/boom")
    headers, body = c.response(1)
    assert headers[":status"] == "500" and b"secret" not in body
    c.request(3, "/boom-late")
    assert c.rst(3).error_code == ErrorCodes.INTERNAL_ERROR
    alive(c, 5)


def test_body_not_read_is_reset_with_no_error_after_the_response(c: Raw) -> None:  # 8.1
    c.send(c.headers_frame(1, request_headers("/noread", "POST"), end_stream=False),
           DataFrame(1, b"x" * 1000))
    _headers, body = c.response(1)
    assert body == b"not read\n"
    assert c.rst(1).error_code == ErrorCodes.NO_ERROR


def test_client_reset_ends_the_stream_only(c: Raw) -> None:
    c.request(1, "/sleep?s=0.3")
    c.send(RstStreamFrame(1, error_code=ErrorCodes.CANCEL))
    alive(c, 3)


def test_file_wrapper_as_data_frames(c: Raw) -> None:
    import os

    c.request(1, "/file")
    headers, body = c.response(1)
    with open(os.path.join(os.path.dirname(__file__), "apps", "data.bin"), "rb") as f:
        assert body == f.read()
    assert headers["content-length"] == str(len(body))

"""HTTP/2's sans-IO parts, without a network: the connection (h2proto.py) fed bytes whole and one
at a time, request and response rules (h2message.py), the flood budgets (h2guard.py), the
stream's state table (h2stream.py); and fuzzing of the connection and the request rules."""

from __future__ import annotations

import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenfork.workers import conn, h2guard, h2stream
from greenfork.workers.h2guard import Guard
from greenfork.workers.h2message import Rejected, error_head, has_body, parse_request, response_head
from greenfork.workers.h2proto import (
    PREFACE,
    H2Abuse,
    H2Limits,
    ServerConnection,
    StreamMalformed,
    error_type,
    goaway,
)
from greenfork.workers.http1 import Request

LIMITS = H2Limits()
REQ = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"), (b":path", b"/a?b=c")]


def client() -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None,
                                                             validate_outbound_headers=False,
                                                             normalize_outbound_headers=False))
    c.initiate_connection()
    return c


def server(limits: H2Limits = LIMITS) -> ServerConnection:
    s = ServerConnection(limits, Guard(time.monotonic()))
    s.start()
    return s


def feed(s: ServerConnection, data: bytes, one_at_a_time: bool = False) -> list[Any]:
    if not one_at_a_time:
        return s.receive_data(data)
    events: list[Any] = []
    for i in range(len(data)):
        events += s.receive_data(data[i:i + 1])
    return events


def shape(events: list[Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, h2.events.RequestReceived):
            out.append(("request", e.stream_id, tuple(e.headers)))
        elif isinstance(e, h2.events.DataReceived):
            out.append(("data", e.stream_id, e.data))
        elif isinstance(e, StreamMalformed):
            out.append(("malformed", e.stream_id, e.error_type))
        else:
            out.append((type(e).__name__, getattr(e, "stream_id", None)))
    return out


def frames(data: bytes) -> list[Frame]:
    out = []
    while data:
        f, length = Frame.parse_frame_header(memoryview(data[:9]))
        f.parse_body(memoryview(data[9:9 + length]))
        out.append(f)
        data = data[9 + length:]
    return out


def test_the_preface_constant_in_conn_is_h2protos() -> None:
    assert conn.H2_PREFACE == PREFACE


# ------------------------------------------------------------ the connection
def test_initial_settings_and_window() -> None:
    s = ServerConnection(H2Limits(max_concurrent_streams=7, initial_window_size=100000,
                                  connection_window_size=1 << 22), Guard(0.0))
    s.start()
    c = client()
    events = c.receive_data(s.data_to_send())
    changed = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)).changed_settings
    assert changed[SettingsFrame.MAX_CONCURRENT_STREAMS].new_value == 7
    assert changed[SettingsFrame.INITIAL_WINDOW_SIZE].new_value == 100000
    update = next(e for e in events if isinstance(e, h2.events.WindowUpdated))
    assert update.stream_id == 0 and update.delta == (1 << 22) - 65535


@pytest.mark.parametrize("one", [False, True])
def test_bytes_whole_and_one_at_a_time_give_the_same_events(one: bool) -> None:
    c = client()
    c.send_headers(1, REQ, end_stream=False)
    c.send_data(1, b"x" * 1000)
    c.send_data(1, b"y", end_stream=True)
    c.send_headers(3, REQ, end_stream=True)
    c.ping(b"12345678")
    data = c.data_to_send()
    got = shape(feed(server(), data, one_at_a_time=one))
    if one:  # bytes one at a time deliver the body in more pieces, and nothing else differently
        whole = shape(feed(server(), data))
        assert [g for g in got if g[0] != "data"] == [g for g in whole if g[0] != "data"]
    kinds = [g[0] for g in got]
    assert kinds.count("request") == 2 and b"".join(g[2] for g in got if g[0] == "data") == b"x" * 1000 + b"y"


def test_content_length_mismatch_is_a_stream_error_only() -> None:
    s = server()
    c = client()
    c.send_headers(1, [*REQ, (b"content-length", b"5")], end_stream=False)
    c.send_data(1, b"toolong", end_stream=True)
    events = feed(s, c.data_to_send())
    assert ("malformed", 1, "invalid_request_headers") in shape(events)
    out = s.data_to_send()
    assert b"\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x01" in out  # RST_STREAM(1, PROTOCOL_ERROR)
    c.send_headers(3, REQ, end_stream=True)  # the connection carries on
    assert [e.stream_id for e in feed(s, c.data_to_send()) if isinstance(e, h2.events.RequestReceived)] == [3]


def test_bad_hpack_is_compression_error() -> None:
    s = server()
    with pytest.raises(H2Abuse) as e:
        feed(s, PREFACE + SettingsFrame(0).serialize() +
             HeadersFrame(1, b"\xc6", flags=["END_HEADERS", "END_STREAM"]).serialize())
    assert e.value.error_code == ErrorCodes.COMPRESSION_ERROR and error_type(e.value) == "hpack_decode_failed"
    assert s.data_to_send().endswith(goaway(0, ErrorCodes.COMPRESSION_ERROR))


def test_continuation_frames_are_bounded_in_count() -> None:
    s = server()
    data = PREFACE + SettingsFrame(0).serialize() + HeadersFrame(1, b"", flags=["END_STREAM"]).serialize()
    data += ContinuationFrame(1, b"").serialize() * 40
    with pytest.raises(H2Abuse) as e:
        feed(s, data)
    assert e.value.error_type == "continuation_flood" and e.value.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_continuation_frames_are_bounded_in_bytes() -> None:
    s = server()
    data = PREFACE + SettingsFrame(0).serialize() + HeadersFrame(1, b"", flags=["END_STREAM"]).serialize()
    data += ContinuationFrame(1, b"\0" * 16384).serialize() * 6
    with pytest.raises(H2Abuse) as e:
        feed(s, data)
    assert e.value.error_type == "continuation_flood"


def test_in_header_block() -> None:
    s = server()
    feed(s, PREFACE + SettingsFrame(0).serialize() +
         HeadersFrame(1, b"\x82", flags=["END_STREAM"]).serialize())
    assert s.in_header_block


def test_graceful_goaway_keeps_streams_going() -> None:
    s = server()
    c = client()
    c.send_headers(1, REQ, end_stream=True)
    feed(s, c.data_to_send())
    s.data_to_send()
    s.send_goaway(1)
    s.send_headers(1, [(b":status", b"200")], end_stream=True)  # still allowed: h2's state is open
    assert [type(f).__name__ for f in frames(s.data_to_send())] == ["GoAwayFrame", "HeadersFrame"]


def test_client_goaway_keeps_our_responses_going() -> None:
    s = server()
    c = client()
    c.send_headers(1, REQ, end_stream=True)
    c.close_connection()
    events = feed(s, c.data_to_send())
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    s.send_headers(1, [(b":status", b"200")], end_stream=True)  # h2 alone would refuse this
    assert s.data_to_send()


def test_streams_past_the_limit_are_left_to_the_driver() -> None:
    s = server(H2Limits(max_concurrent_streams=2))
    c = client()
    for sid in (1, 3, 5):
        c.send_headers(sid, REQ, end_stream=True)
    events = feed(s, c.data_to_send())
    assert [e.stream_id for e in events if isinstance(e, h2.events.RequestReceived)] == [1, 3, 5]


@pytest.mark.parametrize(("frames", "flood"), [
    (lambda i: PingFrame(0, opaque_data=i.to_bytes(8, "big")), "ping_flood"),
    (lambda i: SettingsFrame(0), "settings_flood"),
    (lambda i: DataFrame(1, b""), "empty_frames_flood"),
])
def test_flood_budgets_inside_the_frame_buffer(frames: Any, flood: str) -> None:
    s = server()
    c = client()
    c.send_headers(1, REQ, end_stream=False)
    feed(s, c.data_to_send())
    with pytest.raises(H2Abuse) as e:
        feed(s, b"".join(frames(i).serialize() for i in range(500)))
    assert e.value.error_type == flood


def test_zero_window_update_on_an_open_stream_resets_it() -> None:
    s = server()
    c = client()
    c.send_headers(1, REQ, end_stream=False)
    feed(s, c.data_to_send())
    events = feed(s, b"\0\0\x04\x08\0\0\0\0\x01\0\0\0\0")
    assert shape(events) == [("malformed", 1, "http2_protocol_error")]
    with pytest.raises(ProtocolError):
        feed(s, b"\0\0\x04\x08\0\0\0\0\x09\0\0\0\0")  # an idle stream: a connection error


def test_closed_streams_remembered_are_bounded() -> None:
    s = server(H2Limits(max_concurrent_streams=10))
    assert s.MAX_CLOSED_STREAMS == 256


# --------------------------------------------------------------- requests
def test_a_request() -> None:
    req = parse_request([*REQ, (b"cookie", b"a"), (b"content-length", b"12"), (b"expect", b"100-continue")],
                        LIMITS)
    assert isinstance(req, Request)
    assert (req.method, req.target, req.path, req.query, req.version, req.host) == \
        ("GET", b"/a?b=c", b"/a", b"b=c", "2", b"example.com")
    assert req.content_length == 12 and req.expect_continue and req.headers[0] == (b"cookie", b"a")


@pytest.mark.parametrize(("headers", "status"), [
    ([(b":method", b"GET"), (b":path", b"/")], 0),
    ([*REQ, (b"Upper", b"x")], 0),
    ([*REQ, (b"x", b"v\r\n")], 0),
    ([*REQ, (b"x", b"v ")], 0),
    ([*REQ, (b"", b"v")], 0),
    ([*REQ, (b"x:y", b"v")], 0),
    ([*REQ, (b"transfer-encoding", b"chunked")], 0),
    ([*REQ, (b"te", b"trailers")], None),
    ([*REQ, (b"host", b"example.com")], None),
    ([*REQ, (b"host", b"other")], 0),
    ([*REQ, (b"host", b"a"), (b"host", b"a")], 0),
    ([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"host", b"a"), (b"host", b"b")], 400),
    ([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a b"), (b":path", b"/")], 400),
    ([(b":method", b"GET"), (b":scheme", b"ftp"), (b":authority", b"a"), (b":path", b"/")], 400),
    ([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/a b")], 400),
    ([*REQ, (b"expect", b"something")], 417),
    ([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/" * 9000)], 414),
    ([*REQ, *[(b"x-%d" % i, b"v") for i in range(101)]], 431),
    ([*REQ, (b"x", b"v" * 20000)], 431),
    ([*REQ, *[(b"x-%d" % i, b"v" * 1000) for i in range(40)]], 431),
    ([(b":method", b"OPTIONS"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"*")], None),
    ([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"*")], 0),
    ([(b":method", b"CONNECT"), (b":authority", b"a:443")], None),
    ([(b":method", b"CONNECT"), (b":scheme", b"https"), (b":authority", b"a:443")], 0),
])
def test_request_rules(headers: list[tuple[bytes, bytes]], status: int | None) -> None:
    got = parse_request(headers, LIMITS)
    if status is None:
        assert isinstance(got, Request), got
    else:
        assert isinstance(got, Rejected) and got.status == status, got


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([b":method", b":path", b":scheme", b":authority", b":status",
                                           b"host", b"te", b"content-length", b"x", b"X", b""])
                          | st.binary(max_size=8),
                          st.binary(max_size=12)), max_size=12))
def test_request_rules_never_raise(headers: list[tuple[bytes, bytes]]) -> None:
    got = parse_request(headers, LIMITS)
    assert isinstance(got, Request | Rejected)
    if isinstance(got, Request):
        names = [n for n, _ in headers]
        assert b":method" in names and all(n == n.lower() for n in names)


# --------------------------------------------------------------- responses
def test_response_head() -> None:
    fields = [("Content-Type", "text/plain"), ("Content-Length", "3"), ("Connection", "close"),
              ("Transfer-Encoding", "chunked"), ("X-Pad", "  v  ")]
    head, code, length = response_head("404 Not Found", fields, date=b"D", server=True)
    assert code == 404 and length == 3
    assert head == [(b":status", b"404"), (b"content-type", b"text/plain"), (b"content-length", b"3"),
                    (b"x-pad", b"v"), (b"date", b"D"), (b"server", b"greenfork")]
    head, _, length = response_head("200 OK", [], date=b"D", server=False)
    assert head == [(b":status", b"200"), (b"date", b"D")] and length is None


@pytest.mark.parametrize("item", [("Content-Length", "1_3"), ("Bad Name", "v"), ("X", "a\0b")])
def test_bad_response_headers_raise(item: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        response_head("200 OK", [item], date=b"D", server=True)


def test_no_body_statuses() -> None:
    assert not has_body("HEAD", 200) and not has_body("GET", 204) and not has_body("GET", 304)
    assert has_body("GET", 200) and not has_body("GET", 103)
    head, body = error_head(431, b"D", False)
    assert dict(head)[b"content-length"] == b"%d" % len(body) and body.startswith(b"431 ")


# ------------------------------------------------------------------ budgets
def test_a_budget_spends_its_burst_then_its_rate() -> None:
    g = Guard(100.0)
    burst = h2guard.BUDGETS[h2guard.PING].burst
    assert all(g.spend(h2guard.PING) is None for _ in range(burst))
    assert g.spend(h2guard.PING) == "ping_flood"
    g.now = 101.0  # a second later: the rate's worth again
    rate = int(h2guard.BUDGETS[h2guard.PING].rate)
    assert all(g.spend(h2guard.PING) is None for _ in range(rate))
    assert g.spend(h2guard.PING) == "ping_flood"


def test_earned_tokens_are_capped() -> None:
    g = Guard(0.0)
    g.earn(h2guard.WINDOW_UPDATE, 10**9)
    assert g.buckets[h2guard.WINDOW_UPDATE] == 2 * h2guard.BUDGETS[h2guard.WINDOW_UPDATE].burst


# --------------------------------------------------------- the stream's table
def test_stream_table_has_no_pair_it_does_not_name() -> None:
    assert h2stream._TABLE[h2stream.OPEN][h2stream.END] == -1
    assert h2stream._TABLE[h2stream.DONE][h2stream.HEAD] == -1
    assert h2stream._TABLE[h2stream.CLOSED][h2stream.RESET] == -1
    assert h2stream._TABLE[h2stream.SENDING][h2stream.END] == h2stream.DONE


# ---------------------------------------------------------------- fuzzing
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_bytes_after_the_preface_raise_only_protocol_errors(data: bytes, one: bool) -> None:
    s = server()
    c = client()
    c.send_headers(1, REQ, end_stream=False)
    feed(s, c.data_to_send())
    try:
        feed(s, data, one_at_a_time=one)
    except ProtocolError:
        out = s.data_to_send()
        assert GoAwayFrame.type in out or out  # h2 queued its GOAWAY


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(["headers", "data", "end", "rst", "ping", "settings", "window", "priority",
                                 "continuation"]), max_size=30))
def test_frame_sequences_raise_only_protocol_errors(seq: list[str]) -> None:
    s = server()
    c = client()
    data = bytearray(c.data_to_send())
    sid = 1
    for op in seq:
        if op == "headers":
            sid += 2
            data += HeadersFrame(sid, c.encoder.encode(REQ), flags=["END_HEADERS"]).serialize()
        elif op == "data":
            data += DataFrame(sid, b"abc").serialize()
        elif op == "end":
            data += DataFrame(sid, b"", flags=["END_STREAM"]).serialize()
        elif op == "rst":
            data += b"\0\0\x04\x03\0" + sid.to_bytes(4, "big") + b"\0\0\0\x08"
        elif op == "ping":
            data += PingFrame(0, opaque_data=b"abcdefgh").serialize()
        elif op == "settings":
            data += SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1000}).serialize()
        elif op == "window":
            data += b"\0\0\x04\x08\0" + sid.to_bytes(4, "big") + b"\0\0\0\x05"
        elif op == "priority":
            data += b"\0\0\x05\x02\0" + sid.to_bytes(4, "big") + b"\0\0\0\x01\x10"
        else:
            data += ContinuationFrame(sid, b"").serialize()
    try:
        feed(s, bytes(data))
    except ProtocolError:
        pass


@pytest.mark.parametrize(("version", "cipher", "ok"), [
    ("TLSv1.3", "TLS_AES_128_GCM_SHA256", True),
    ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", True),
    ("TLSv1.2", "ECDHE-RSA-CHACHA20-POLY1305", True),
    ("TLSv1.2", "DHE-RSA-AES256-CCM", True),
    ("TLSv1.2", "AES128-GCM-SHA256", False),  # no forward secrecy
    ("TLSv1.2", "ECDHE-RSA-AES128-SHA256", False),  # CBC
])
def test_rfc9113_tls12_cipher_rule(version: str, cipher: str, ok: bool) -> None:
    from greenfork.workers.h2proto import cipher_allowed

    assert cipher_allowed(version, cipher) is ok


def test_our_hpack_table_stays_small_and_clients_follow() -> None:
    from greenfork.workers.h2proto import ENCODER_TABLE

    s = server()
    c = client()
    c.update_settings({SettingsFrame.HEADER_TABLE_SIZE: 65536})
    for sid in range(1, 80, 2):
        c.send_headers(sid, REQ, end_stream=True)
    events = feed(s, c.data_to_send())
    assert s.encoder.header_table_size == ENCODER_TABLE
    got = []
    for e in events:
        if isinstance(e, h2.events.RequestReceived):
            date = b"Sun, 29 Nov 2026 18:00:%02d GMT" % (e.stream_id % 60)  # a new Date value each time
            s.send_response(e.stream_id, [(b":status", b"200"), (b"date", date), (b"x-a", b"1")], True)
    for e in c.receive_data(s.data_to_send()):
        if isinstance(e, h2.events.ResponseReceived):
            got.append(dict(e.headers))
    assert len(got) == 40 and all(g[b"x-a"] == b"1" for g in got)  # the client's decoder followed
    assert s.encoder.header_table._current_size <= ENCODER_TABLE


def test_alpn_follows_http_protocols_and_delegation() -> None:
    from greenfork.master import tls
    from greenfork.master.settings import defaults

    assert tls.alpn_protocols(defaults()) == ("h2", "http/1.1")
    assert tls.alpn_protocols(defaults(http_protocols=("h1",))) == ("http/1.1",)
    assert tls.alpn_protocols(defaults(http_protocols=("h2",))) == ("h2",)
    # a delegating front hands over HTTP/1.1 connections: it offers no h2
    assert tls.alpn_protocols(defaults(delegate=("a delegate",))) == ("http/1.1",)

"""The sans-IO WebSocket pieces: the opening handshake (RFC 6455 4.2) and the connection
(framing, limits, close handshake), fed raw frames written from RFC 6455 5.2, whole and one
byte at a time, and fuzzed with hypothesis."""

from __future__ import annotations

import base64
import os
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol

from greenfork.workers.websocket_handshake import Offer, Refusal, accept, inspect
from greenfork.workers.websocket_protocol import (
    BoundedDeflate,
    Closed,
    Pong,
    State,
    StateError,
    WebSocketProtocol,
    valid_close_code,
)

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
KEY = b"\x37\xfa\x21\x3d"
MiB = 1 << 20


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True,
          key: bytes = KEY) -> bytes:
    """One frame as RFC 6455 5.2 lays it out; a client's frames are masked (5.3)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, mbit | n))
    elif n < 1 << 16:
        head = bytes((first, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, mbit | 127)) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _xor(payload, key)
    return head + key + masked


def _xor(payload: bytes, key: bytes) -> bytes:
    whole = (key * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(whole, "big")).to_bytes(len(payload), "big")


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def parse_server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split what the server sent into (opcode, payload); server frames are never masked."""
    out = []
    i = 0
    while i < len(data):
        op = data[i] & 0x0F
        assert data[i + 1] & 0x80 == 0, "a server must not mask"
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n = struct.unpack("!H", data[i:i + 2])[0]
            i += 2
        elif n == 127:
            n = struct.unpack("!Q", data[i:i + 8])[0]
            i += 8
        out.append((op, data[i:i + n]))
        i += n
    return out


def proto(**kw: int) -> WebSocketProtocol:
    return WebSocketProtocol(max_message_size=kw.get("max_message_size", MiB),
                             max_frame_size=kw.get("max_frame_size", MiB))


def feed(p: WebSocketProtocol, data: bytes, bytewise: bool) -> list[object]:
    if not bytewise:
        return list(p.receive(data))
    events: list[object] = []
    for i in range(len(data)):
        events += p.receive(data[i:i + 1])
    return events


both = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])


# ---------------------------------------------------------------- messages
@both
def test_text_and_binary_messages(bytewise: bool) -> None:
    p = proto()
    events = feed(p, frame(TEXT, "héllo".encode()) + frame(BINARY, b"\x00\xff") + frame(TEXT), bytewise)
    assert events == ["héllo", bytearray(b"\x00\xff"), ""]
    assert type(events[1]) is bytearray  # gevent-websocket returns bytearray for binary
    assert p.state is State.OPEN and p.data_to_send() == b""


@both
def test_fragmented_message_with_control_frames_inside(bytewise: bool) -> None:
    p = proto()
    data = (frame(TEXT, b"frag", fin=False) + frame(PING, b"in the middle") + frame(CONT, b"men", fin=False)
            + frame(PONG, b"unsolicited") + frame(CONT, "ted ✓".encode()))
    events = feed(p, data, bytewise)
    assert [e for e in events if isinstance(e, str)] == ["fragmented ✓"]
    assert [e.payload for e in events if isinstance(e, Pong)] == [b"unsolicited"]
    assert parse_server_frames(p.data_to_send()) == [(PONG, b"in the middle")]


@both
def test_ping_is_answered_with_its_payload(bytewise: bool) -> None:
    p = proto()
    assert feed(p, frame(PING, b"abc") + frame(PING), bytewise) == []
    assert parse_server_frames(p.data_to_send()) == [(PONG, b"abc"), (PONG, b"")]


# ---------------------------------------------------------------- failures (RFC 6455 7.1.7)
def failed(p: WebSocketProtocol, events: list[object], code: int) -> None:
    closes = [e for e in events if isinstance(e, Closed)]
    assert len(closes) == 1 and closes[0].code == code and not closes[0].by_peer, events
    assert p.state is State.FAILED
    sent = parse_server_frames(p.data_to_send())
    assert [(op, payload[:2]) for op, payload in sent] == [(CLOSE, struct.pack("!H", code))]
    # nothing the peer sends afterwards is processed, and EOF ends it
    assert p.receive(frame(PING, b"late") + frame(TEXT, b"late")) == []
    assert p.data_to_send() == b""
    assert p.receive(b"") == [] and p.state is State.CLOSED


CASES = {
    "invalid utf-8": (frame(TEXT, b"ok \xff\xfe"), 1007),
    "invalid utf-8 in a fragment": (frame(TEXT, b"ok", fin=False) + frame(CONT, b"\xc0\xaf"), 1007),
    "truncated utf-8 at the end": (frame(TEXT, b"\xe2\x82"), 1007),
    "rsv1 without extension": (frame(TEXT, b"x", rsv=4), 1002),
    "rsv2": (frame(BINARY, b"x", rsv=2), 1002),
    "rsv3": (frame(BINARY, b"x", rsv=1), 1002),
    "control frame over 125 bytes": (frame(PING, b"p" * 126), 1002),
    "close frame over 125 bytes": (frame(CLOSE, close_payload(1000, b"r" * 124)), 1002),
    "fragmented ping": (frame(PING, b"p", fin=False), 1002),
    "unmasked client frame": (frame(TEXT, b"x", mask=False), 1002),
    "continuation without a start": (frame(CONT, b"x"), 1002),
    "new message inside a fragmented one": (frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), 1002),
    "reserved opcode 3": (frame(0x3, b""), 1002),
    "reserved control opcode 0xB": (frame(0xB, b""), 1002),
    "close with a 1-byte payload": (frame(CLOSE, b"\x03"), 1002),
    "close reason not utf-8": (frame(CLOSE, close_payload(1000, b"\xff")), 1007),
    "non-minimal length": (bytes((0x81, 0x80 | 126, 0, 5)) + KEY + b"hello", 1002),
}


@both
@pytest.mark.parametrize("name", list(CASES))
def test_protocol_errors_fail_the_connection(name: str, bytewise: bool) -> None:
    data, code = CASES[name]
    p = proto()
    failed(p, feed(p, data, bytewise), code)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
def test_close_codes_invalid_on_the_wire(code: int) -> None:
    p = proto()
    failed(p, p.receive(frame(CLOSE, close_payload(code))), 1002)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999])
def test_peer_close_is_echoed(code: int) -> None:
    p = proto()
    events = p.receive(frame(TEXT, b"last") + frame(CLOSE, close_payload(code, b"bye"))
                       + frame(TEXT, b"after"))
    assert events[0] == "last"
    ev = events[1]
    assert isinstance(ev, Closed) and (ev.code, ev.reason, ev.by_peer) == (code, "bye", True)
    assert len(events) == 2  # nothing after the close frame
    assert parse_server_frames(p.data_to_send()) == [(CLOSE, close_payload(code))]
    assert p.state is State.CLOSED


def test_close_without_code_is_answered_without_one() -> None:
    p = proto()
    [ev] = p.receive(frame(CLOSE))
    assert isinstance(ev, Closed) and ev.code == 1005
    assert parse_server_frames(p.data_to_send()) == [(CLOSE, b"")]


@both
def test_our_close_then_theirs(bytewise: bool) -> None:
    p = proto()
    assert parse_server_frames(p.close(1001, "going away")) == [(CLOSE, close_payload(1001, b"going away"))]
    assert p.state is State.CLOSING
    with pytest.raises(StateError):
        p.send("too late")
    # data after our close frame is dropped, pings are not answered, their close completes it
    events = feed(p, frame(TEXT, b"dropped") + frame(PING) + frame(CLOSE, close_payload(1001)), bytewise)
    assert [type(e) for e in events] == [Closed] and events[0].code == 1001  # type: ignore[attr-defined]
    assert p.state is State.CLOSED and p.data_to_send() == b""


def test_eof_without_close_is_1006() -> None:
    p = proto()
    [ev] = p.receive(b"")
    assert isinstance(ev, Closed) and ev.code == 1006 and p.state is State.CLOSED
    with pytest.raises(StateError):
        p.receive(b"")  # a pair not in the table is an error


# ---------------------------------------------------------------- limits
@both
def test_message_over_the_limit_is_1009(bytewise: bool) -> None:
    p = proto(max_message_size=10)
    assert feed(p, frame(TEXT, b"0123456789"), bytewise) == ["0123456789"]
    failed(p, feed(p, frame(TEXT, b"01234", fin=False) + frame(CONT, b"567890"), bytewise), 1009)


def test_frame_over_the_limit_is_1009_before_it_is_all_read() -> None:
    p = proto(max_frame_size=100)
    whole = frame(BINARY, b"x" * 1000)
    failed(p, p.receive(whole[:300]), 1009)


def test_text_limit_counts_utf8_bytes() -> None:
    p = proto(max_message_size=6)
    failed(p, p.receive(frame(TEXT, "ééé✓".encode())), 1009)  # 4 characters, 9 bytes


# ---------------------------------------------------------------- permessage-deflate
def negotiated(max_message_size: int = MiB, offer: str = "permessage-deflate; client_max_window_bits",
               ) -> tuple[WebSocketProtocol, FrameProtocol]:
    o = inspect("GET", "HTTP/1.1", [(b"Host", b"x"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
                                    (b"Sec-WebSocket-Key", base64.b64encode(os.urandom(16))),
                                    (b"Sec-WebSocket-Version", b"13"),
                                    (b"Sec-WebSocket-Extensions", offer.encode())])
    assert isinstance(o, Offer)
    response, agreed = accept(o, None, [BoundedDeflate(max_message_size)])
    assert b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=12" in response
    server = WebSocketProtocol(max_message_size=max_message_size, max_frame_size=max_message_size,
                               extensions=agreed)
    client_ext = PerMessageDeflate()
    client_ext.finalize("permessage-deflate; client_max_window_bits=12")
    return server, FrameProtocol(client=True, extensions=[client_ext])


def test_deflate_round_trip() -> None:
    server, client = negotiated()
    text = "compress me " * 200
    assert server.receive(bytes(client.send_data(text))) == [text]
    assert server.receive(bytes(client.send_data(b"\x00" * 5000))) == [bytearray(5000)]
    client.receive_bytes(server.send(text) + server.send(b"tiny"))
    frames = list(client.received_frames())
    assert [f.payload for f in frames] == [text, b"tiny"]
    raw = server.send("x" * 1000)
    assert raw[0] & 0x40 and len(raw) < 100  # RSV1: compressed
    assert server.send("small")[0] & 0x40 == 0  # under 128 bytes: sent as is


def test_deflate_bomb_stops_at_the_limit() -> None:
    server, client = negotiated(max_message_size=64 * 1024)
    bomb = bytes(client.send_data(b"\x00" * (50 * MiB)))  # about 50 KiB on the wire
    assert len(bomb) < 100 * 1024
    failed(server, server.receive(bomb), 1009)


def test_corrupt_deflate_data_is_1007() -> None:
    server, _ = negotiated()
    failed(server, server.receive(frame(BINARY, b"\xff\xff\xff\xff", rsv=4)), 1007)


def test_bad_deflate_parameters_decline_the_extension() -> None:
    ext = BoundedDeflate(MiB)
    assert ext.accept("permessage-deflate; client_max_window_bits=abc") is None
    assert ext.accept("permessage-deflate; server_max_window_bits=99") is None


def test_compressor_window_is_small() -> None:
    # our deflate stream must inflate with a 4 KiB window
    server, _ = negotiated()
    data = server.send(os.urandom(3000).hex())
    assert zlib.decompressobj(-12).decompress(parse_server_frames(data)[0][1] + b"\x00\x00\xff\xff")


# ---------------------------------------------------------------- handshake
def head(**over: bytes | None) -> list[tuple[bytes, bytes]]:
    fields = {b"Host": b"example.com", b"Upgrade": b"websocket", b"Connection": b"keep-alive, Upgrade",
              b"Sec-WebSocket-Key": b"dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version": b"13"}
    for k, v in over.items():
        name = k.replace("_", "-").encode()
        if v is None:
            fields.pop(name, None)
        else:
            fields[name] = v
    return list(fields.items())


def test_handshake_accepts_rfc_example() -> None:
    o = inspect("GET", "HTTP/1.1", head(**{"Sec_WebSocket_Protocol": b"chat, superchat"}))
    assert isinstance(o, Offer) and o.subprotocols == ("chat", "superchat")
    response, agreed = accept(o, "chat", [])
    # RFC 6455 1.3's worked example
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and response.endswith(b"\r\n\r\n")
    assert b"Sec-WebSocket-Protocol: chat\r\n" in response and agreed == []
    with pytest.raises(ValueError):
        accept(o, "other", [])


@pytest.mark.parametrize("method,version,fields", [
    ("POST", "HTTP/1.1", {}),
    ("GET", "HTTP/1.1", {"Upgrade": None}),
    ("GET", "HTTP/1.1", {"Upgrade": b"h2c"}),
    ("GET", "HTTP/1.1", {"Connection": b"keep-alive"}),
])
def test_not_an_upgrade_is_a_plain_request(method: str, version: str,
                                           fields: dict[str, bytes | None]) -> None:
    assert inspect(method, version, head(**fields)) is None


@pytest.mark.parametrize("version,fields,status", [
    ("HTTP/1.0", {}, 400),
    ("HTTP/1.1", {"Host": None}, 400),
    ("HTTP/1.1", {"Sec_WebSocket_Key": None}, 400),
    ("HTTP/1.1", {"Sec_WebSocket_Key": b"c2hvcnQ="}, 400),
    ("HTTP/1.1", {"Sec_WebSocket_Key": b"not base64!!"}, 400),
    ("HTTP/1.1", {"Content_Length": b"5"}, 400),
    ("HTTP/1.1", {"Transfer_Encoding": b"chunked"}, 400),
    ("HTTP/1.1", {"Sec_WebSocket_Version": None}, 426),
    ("HTTP/1.1", {"Sec_WebSocket_Version": b"8"}, 426),
])
def test_bad_upgrades_are_refused(version: str, fields: dict[str, bytes | None], status: int) -> None:
    r = inspect("GET", version, head(**fields))
    assert isinstance(r, Refusal) and r.status == status
    status_line, headers, body = r.response()
    assert status_line.startswith(str(status)) and ("Connection", "close") in headers and body
    if status == 426:
        assert ("Sec-WebSocket-Version", "13") in headers


def test_header_names_are_case_insensitive() -> None:
    fields = [(k.lower(), v) for k, v in head()]
    assert isinstance(inspect("GET", "HTTP/1.1", fields), Offer)


# Header values as the HTTP/1.1 parser hands them over: any bytes but CR, LF and NUL; plus
# the shapes a handshake field takes, so that many draws get past the first checks.
_field_value = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")),
    st.sampled_from([b"websocket", b"Upgrade", b"upgrade, keep-alive", b"13", b"8", b"",
                     b"dGhlIHNhbXBsZSBub25jZQ==", b"chat, superchat", b"\xff\xfe"]),
)
_extension_offer = st.lists(
    st.sampled_from(["permessage-deflate", "client_max_window_bits", "client_max_window_bits=8",
                     "client_max_window_bits=16", "server_max_window_bits=9", "server_max_window_bits=",
                     "server_no_context_takeover", "client_no_context_takeover", "x-webkit-deflate-frame",
                     "=", ";", ",", "server_max_window_bits=abc", "\xe9"]),
    max_size=6).map("; ".join)
_names = st.sampled_from([b"Host", b"Upgrade", b"Connection", b"Sec-WebSocket-Key", b"Sec-WebSocket-Version",
                          b"Sec-WebSocket-Protocol", b"Sec-WebSocket-Extensions", b"Content-Length",
                          b"Transfer-Encoding", b"X-Other", b"SEC-WEBSOCKET-KEY"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_names, _field_value), max_size=10), st.lists(_extension_offer, max_size=3),
       st.sampled_from(["GET", "POST", "get"]), st.sampled_from(["HTTP/1.1", "HTTP/1.0"]), st.data())
def test_fuzz_handshake(fields: list[tuple[bytes, bytes]], offers: list[str], method: str, version: str,
                        data: st.DataObject) -> None:
    """Any request head sorts into None, a Refusal or an Offer without raising; an Offer's 101 is
    one well-formed head (each line a field, no line break from the client's bytes) whether
    permessage-deflate is accepted, declined or malformed."""
    valid = head()
    fields = [*data.draw(st.sampled_from([[], valid[:-1], valid])), *fields]
    fields += [(b"Sec-WebSocket-Extensions", o.encode("latin-1")) for o in offers]
    found = inspect(method, version, fields)
    if found is None or isinstance(found, Refusal):
        if found is not None:
            status_line, headers, body = found.response()
            assert status_line.startswith(str(found.status)) and ("Connection", "close") in headers
            assert body.endswith(b"\n")
        return
    assert isinstance(found, Offer)
    chosen = data.draw(st.sampled_from([None, *found.subprotocols]))
    assert all(p.isascii() and p.isprintable() and " " not in p for p in found.subprotocols)
    response, agreed = accept(found, chosen, [BoundedDeflate(MiB)])
    lines = response.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols" and response.endswith(b"\r\n\r\n")
    assert all(b": " in line and b"\n" not in line for line in lines[1:-2])
    assert len(agreed) <= 1 and (bool(agreed) == (b"Sec-WebSocket-Extensions:" in response))
    if agreed:  # the connection that follows works with what was agreed
        proto = WebSocketProtocol(max_message_size=MiB, max_frame_size=MiB, extensions=agreed)
        assert proto.receive(frame(TEXT, b"after the handshake")) == ["after the handshake"]


def test_valid_close_codes_for_apps() -> None:
    assert valid_close_code(1000) and valid_close_code(4999) and valid_close_code(3000)
    assert not any(valid_close_code(c) for c in (999, 1004, 1005, 1006, 1015, 2000, 5000))


# ---------------------------------------------------------------- fuzz
EXAMPLES = int(os.environ.get("GREENFORK_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

frames = st.builds(
    frame,
    st.sampled_from([CONT, TEXT, BINARY, CLOSE, PING, PONG, 0x3, 0xB]),
    st.one_of(st.binary(max_size=200), st.text(max_size=50).map(str.encode),
              st.sampled_from([close_payload(1000), close_payload(1005), b"\xe2\x82"])),
    fin=st.booleans(), rsv=st.sampled_from([0, 0, 0, 4, 1]), mask=st.sampled_from([True, True, False]))


def check_invariants(p: WebSocketProtocol, stream: bytes, cuts: list[int]) -> None:
    seen_close = 0
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    for piece in pieces:
        if not piece:
            continue
        if p.state is State.CLOSED:
            break
        for ev in p.receive(piece):
            assert isinstance(ev, (str, bytearray, Pong, Closed))
            if isinstance(ev, Closed):
                seen_close += 1
                assert 1000 <= ev.code <= 4999
        out = p.data_to_send()
        for op, _ in parse_server_frames(out):
            assert op in (PONG, CLOSE)
    assert seen_close <= 1
    assert p.state in (State.OPEN, State.CLOSED, State.FAILED)


@FUZZ
@given(st.lists(frames, max_size=12), st.data())
def test_fuzz_frame_sequences(seq: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(seq)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    check_invariants(proto(max_message_size=300, max_frame_size=150), stream, cuts)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(stream: bytes) -> None:
    check_invariants(proto(), stream, [])


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_compressed_payloads(payload: bytes) -> None:
    server, _ = negotiated(max_message_size=4096)
    check_invariants(server, frame(BINARY, payload, rsv=4), [])


# ---------------------------------------------------------------- the fast path against wsproto alone
def wsproto_only(**kw: int) -> WebSocketProtocol:
    """The same connection with every frame going through wsproto (the fast path off)."""
    p = proto(**kw)
    p._fast_in = -1
    p._fast_out = -1
    return p


def outcome(p: WebSocketProtocol, pieces: list[bytes],
            one: bool = False) -> tuple[list[object], list[object], State]:
    """Everything that came of the pieces: events, frames to send, the state at the end. (Which
    piece an event comes with may differ: the fast path takes a small frame once it is whole,
    wsproto as its bytes come.) one: each piece is offered to receive_one() first, as the
    session does."""
    events: list[object] = []
    sent: list[object] = []
    for piece in pieces:
        if p.state is State.CLOSED:
            break  # (the session stops reading)
        msg = p.receive_one(piece) if one else None
        for ev in [msg] if msg is not None else p.receive(piece):
            if isinstance(ev, Closed):
                events.append(("closed", ev.code, ev.by_peer))
            elif isinstance(ev, Pong):
                events.append(("pong", bytes(ev.payload)))
            else:
                events.append((type(ev).__name__, ev))
        # (a close reason is prose: where a decoder reports bad UTF-8 depends on its pieces)
        sent += [(op, payload[:2] if op == CLOSE else payload)
                 for op, payload in parse_server_frames(p.data_to_send())]
    return events, sent, p.state


sized = st.builds(lambda n, b: bytes([b]) * n, st.integers(0, 10_000), st.integers(0, 255))
long_frames = st.builds(
    frame,
    st.sampled_from([CONT, TEXT, BINARY, CLOSE, PING, PONG]),
    st.one_of(st.binary(max_size=200), st.text(max_size=50).map(str.encode), sized,
              st.sampled_from([b"\xe2\x82", "é".encode() * 70, b"\xed\xa0\x80"])),
    fin=st.sampled_from([True, True, False]), rsv=st.sampled_from([0, 0, 0, 0, 4]),
    mask=st.sampled_from([True, True, True, False]))


@FUZZ
@given(st.lists(long_frames, max_size=10), st.data(), st.sampled_from([(1 << 20, 1 << 20), (3000, 700)]))
def test_fuzz_fast_path_matches_wsproto(seq: list[bytes], data: st.DataObject,
                                        limits: tuple[int, int]) -> None:
    # The same bytes, cut the same way, give the same messages, replies and end with the fast
    # path as with wsproto reading every frame.
    stream = b"".join(seq)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    pieces = [p for p in pieces if p]
    kw = {"max_message_size": limits[0], "max_frame_size": limits[1]}
    assert outcome(proto(**kw), pieces) == outcome(wsproto_only(**kw), pieces)
    assert outcome(proto(**kw), pieces, one=True) == outcome(wsproto_only(**kw), pieces)


@FUZZ
@given(st.lists(long_frames, min_size=1, max_size=6), st.sampled_from([(1 << 20, 1 << 20), (100, 60)]))
def test_fuzz_one_frame_per_read_matches_wsproto(seq: list[bytes], limits: tuple[int, int]) -> None:
    # Reads of one frame each, the case receive_one() takes: the same messages, replies and end.
    kw = {"max_message_size": limits[0], "max_frame_size": limits[1]}
    assert outcome(proto(**kw), seq, one=True) == outcome(wsproto_only(**kw), seq)


@pytest.mark.parametrize(("name", "before", "data"), [
    ("two frames in one read", b"", frame(TEXT, b"a") + frame(TEXT, b"b")),
    ("a frame cut short", b"", frame(TEXT, b"abc")[:-1]),
    ("its rest after a piece", frame(TEXT, b"abc")[:3], frame(TEXT, b"abc")[3:]),
    ("a fragment in progress", frame(TEXT, b"frag", fin=False), frame(CONT, b"ment")),
    ("a frame while fragments go on", frame(TEXT, b"frag", fin=False), frame(TEXT, b"x")),
    ("unmasked", b"", frame(TEXT, b"a", mask=False)),
    ("reserved bit", b"", frame(TEXT, b"a", rsv=4)),
    ("not final", b"", frame(TEXT, b"a", fin=False)),
    ("a ping", b"", frame(PING, b"a")),
    ("a close", b"", frame(CLOSE, close_payload(1000))),
    ("invalid UTF-8", b"", frame(TEXT, b"\xff")),
    ("a 16-bit length", b"", frame(TEXT, b"x" * 126)),
    ("after our close", b"close", frame(TEXT, b"a")),
    ("over the frame limit", b"limit", frame(TEXT, b"x" * 50)),
])
def test_receive_one_takes_nothing_but_one_whole_small_message(name: str, before: bytes, data: bytes) -> None:
    p = proto(max_frame_size=40) if before == b"limit" else proto()
    if before == b"close":
        p.close()
    elif before and before != b"limit":
        p.receive(before)
    assert p.receive_one(data) is None
    fresh = proto()
    assert fresh.receive_one(frame(TEXT, "é!".encode())) == "é!"
    assert fresh.receive_one(frame(BINARY, b"\x00\xff")) == bytearray(b"\x00\xff")
    assert fresh.receive_one(frame(TEXT, b"")) == ""


def test_fast_path_frames_between_fragments_and_in_pieces() -> None:
    p = proto()
    big = os.urandom(20_000)  # over FAST_WAIT: streamed through wsproto when it comes in pieces
    mid = frame(BINARY, b"m" * 300)  # a 16-bit length, taken by the fast path
    stream = (frame(TEXT, b"a") + frame(TEXT, b"frag", fin=False) + frame(PING, b"x") + frame(CONT, b"ment")
              + mid + frame(BINARY, big) + frame(TEXT, "é".encode() * 100))
    got: list[object] = []
    for i in range(0, len(stream), 777):
        got += p.receive(stream[i:i + 777])
    assert got == ["a", "fragment", bytearray(b"m" * 300), bytearray(big), "é" * 100]
    assert parse_server_frames(p.data_to_send()) == [(PONG, b"x")]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70_000])
@pytest.mark.parametrize("text", [True, False], ids=["text", "binary"])
def test_messages_we_send_are_framed_as_wsproto_frames_them(size: int, text: bool) -> None:
    message: str | bytes = "é" * (size // 2) + "x" * (size % 2) if text else os.urandom(size)
    assert proto().send(message) == wsproto_only().send(message)
    assert parse_server_frames(proto().send(message)) == [
        (TEXT if text else BINARY, message.encode() if isinstance(message, str) else message)]


def test_compressed_connections_send_short_messages_plain_and_long_ones_through_wsproto() -> None:
    server, client = negotiated(max_message_size=MiB)
    short, long = "s" * 10, "l" * 1000
    for msg in (short, long):
        data = server.send(msg)
        rsv1 = bool(data[0] & 0x40)
        assert rsv1 == (msg is long)
        client.receive_bytes(data)
        (got,) = list(client.received_frames())
        assert got.payload == msg and got.message_finished


def test_data_leaves_the_state_as_it_is() -> None:
    # WebSocketProtocol skips step() for data in OPEN, CLOSING and FAILED and for sending in
    # OPEN (the hot path): the table must keep saying that those moves change nothing.
    from greenfork.workers.websocket_protocol import _TABLE, Ev

    assert {s: _TABLE.get((s, Ev.DATA_IN)) for s in State} == {
        State.OPEN: State.OPEN, State.CLOSING: State.CLOSING, State.FAILED: State.FAILED, State.CLOSED: None}
    assert {s: _TABLE.get((s, Ev.DATA_OUT)) for s in State} == {
        State.OPEN: State.OPEN, State.CLOSING: None, State.FAILED: None, State.CLOSED: None}
    p = proto()
    p.receive(frame(CLOSE, close_payload(1000)))
    with pytest.raises(StateError):
        p.receive(frame(TEXT, b"after the end"))
    with pytest.raises(StateError):
        p.send("after the end")

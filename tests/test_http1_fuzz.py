"""Property tests for the HTTP/1.1 parser: valid pipelines round-trip under any
split of the stream; arbitrary and mutated bytes never raise, never invent
requests, and an error is final.

GREENFORK_FUZZ_EXAMPLES sets the examples per test (5,000 each by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenfork.workers.http1 import CLOSED, END, NEED_DATA, ProtocolError, Request, RequestParser
from tests.test_http1 import Partial, Req, normalize, run

EXAMPLES = int(os.environ.get("GREENFORK_FUZZ_EXAMPLES", "5000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
TCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@"
VCHAR = "".join(map(chr, range(0x61, 0x7F))) + "".join(map(chr, range(0x21, 0x61)))
# Fields the parser or the server interprets: generated ones must not change framing or persistence.
RESERVED = {"host", "content-length", "transfer-encoding", "expect", "connection", "upgrade",
            "proxy-connection", "keep-alive", "te", "trailer"}


# RFC 9112 7.1.1's forms, with the whitespace (BWS) it allows around ";" and "="
CHUNK_EXTENSIONS = [b"", b";a", b";a=b", b';n="q v"', b" ; a = b", b';x="a\\"b";y', b"\t;k=v ;z", b';e=""',
                    b"", b""]


@dataclass
class Gen:
    method: str
    path: str
    query: str | None
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # "none", "length" or "chunked"
    wire: bytes


def chars(alphabet: str, min_size: int = 0, max_size: int = 20) -> st.SearchStrategy[str]:
    """Text over alphabet, drawn as one bytes value (far cheaper than st.text; shrinks to alphabet[0])."""
    table = bytes(ord(alphabet[i % len(alphabet)]) for i in range(256))
    return st.binary(min_size=min_size, max_size=max_size).map(lambda b: b.translate(table).decode("ascii"))


names = chars(TCHAR, 1, 12).map(lambda n: "X-" + n if n.lower() in RESERVED else n)
values = chars(VCHAR + " \t").map(lambda v: v.strip(" \t"))


@st.composite
def requests(draw: st.DrawFn, last: bool) -> Gen:
    # One number picks the small choices: each draw costs hypothesis about as much as parsing a request.
    pick = draw(st.integers(0, len(METHODS) * 2 * 3 * 36 * 2 - 1))
    pick, mi = divmod(pick, len(METHODS))
    pick, vi = divmod(pick, 2)
    pick, fi = divmod(pick, 3)
    has_query, where = divmod(pick, 36)  # where: the place of Host and the framing field among the others
    method, version, framing = METHODS[mi], ("1.1", "1.0")[vi], ("none", "length", "chunked")[fi]
    path = "/" + draw(chars(PCHAR + "/"))
    query = draw(chars(PCHAR + "/?")) if has_query else None
    headers = draw(st.lists(st.tuples(names, values), max_size=5))
    body = b""
    wire_body = b""
    framing_fields: list[tuple[str, str]] = []
    if framing == "length":
        body = draw(st.binary(max_size=200))
        framing_fields.append(("Content-Length", str(len(body))))
        wire_body = body
    elif framing == "chunked":
        chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=6))
        body = b"".join(chunks)
        framing_fields.append(("Transfer-Encoding", "chunked"))
        for chunk in chunks:
            ext = CHUNK_EXTENSIONS[chunk[0] % len(CHUNK_EXTENSIONS)]  # varied without another draw
            wire_body += b"%x%s\r\n%s\r\n" % (len(chunk), ext, chunk)
        trailers = draw(st.lists(st.tuples(names, values), max_size=2))
        wire_body += b"0\r\n" + b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in trailers)
        wire_body += b"\r\n"
    all_fields = list(headers)
    if version == "1.1":
        all_fields.insert(where % (len(all_fields) + 1), ("Host", "example.com"))
    elif not last:
        all_fields.append(("Connection", "keep-alive"))  # else the parser refuses what follows
    for field in framing_fields:
        all_fields.insert(where // 6 % (len(all_fields) + 1), field)
    target = path + ("" if query is None else "?" + query)
    wire = f"{method} {target} HTTP/{version}\r\n".encode()
    wire += b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in all_fields) + b"\r\n" + wire_body
    return Gen(method, path, query, version, all_fields, body, framing, wire)


@st.composite
def pipelines(draw: st.DrawFn, most: int = 4) -> list[Gen]:
    n = draw(st.integers(1, most))
    return [draw(requests(last=i == n - 1)) for i in range(n)]


def cut(data: bytes, points: bytes) -> list[bytes]:
    """Split data where points (read as 16-bit numbers) say."""
    numbers = (int.from_bytes(points[i:i + 2], "big") for i in range(0, len(points), 2))
    cuts = sorted({n % (len(data) + 1) for n in numbers})
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return [p for p in pieces if p]  # b"" would be the peer's EOF


split_points = st.binary(max_size=24)  # up to 12 cut points


@FUZZ
@given(pipelines(), split_points, split_points)
def test_valid_pipelines_round_trip(gens: list[Gen], points_a: bytes, points_b: bytes) -> None:
    data = b"".join(g.wire for g in gens)
    whole = normalize(run([data]))
    assert normalize(run(cut(data, points_a))) == whole
    assert normalize(run(cut(data, points_b))) == whole
    expected: list[Any] = []
    for g in gens:
        expected.append(g)
        if g.body:
            expected.append(g.body)
        expected.append(END)
    expected.append(NEED_DATA)
    assert len(whole) == len(expected), whole
    assert sum(type(e) is Req for e in whole) == len(gens)
    for ev, exp in zip(whole, expected, strict=True):
        if type(exp) is Gen:
            assert type(ev) is Req
            assert ev.method == exp.method and ev.version == exp.version
            assert ev.path == exp.path.encode() and ev.query == (exp.query or "").encode()
            assert ev.headers == tuple((n.encode(), v.encode()) for n, v in exp.headers)
            assert ev.chunked == (exp.framing == "chunked")
            assert ev.content_length == (len(exp.body) if exp.framing == "length" else None)
            assert ev.keep_alive == (exp.version == "1.1" or (
                ("Connection", "keep-alive") in exp.headers and exp.framing != "chunked"))
        else:
            assert ev == exp


# ------------------------------------------------------------------ hostile bytes
def feed_hostile(pieces: list[bytes]) -> list[Any]:
    """Feed pieces; every event must be one of the documented kinds, and an error is final."""
    conn = RequestParser()
    events: list[Any] = []
    for piece in pieces:
        conn.receive_data(piece)
        while True:
            ev = conn.next_event()
            if ev is NEED_DATA:
                break
            if isinstance(ev, ProtocolError):
                assert ev.status in (0, 400, 413, 414, 417, 431, 501, 505), ev
                assert isinstance(ev.error_type, str) and ev.error_type
                conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                conn.receive_data(b"")
                assert conn.next_event() is ev and conn.next_event() is ev
                events.append(ev)
                return events
            if ev is CLOSED:
                assert conn.next_event() is CLOSED
                events.append(ev)
                return events
            assert type(ev) is Request or ev is END or (type(ev) is bytes and ev), ev
            events.append(ev)
    return events


def check_hostile(data: bytes, points: bytes) -> None:
    pieces = cut(data, points)
    events = feed_hostile(pieces)
    heads = data.count(b"\n\r\n") + data.count(b"\n\n")
    assert sum(type(e) is Request for e in events) <= heads
    # where the stream was cut changes nothing but how the body is chunked
    whole = normalize(run([data] if data else []))
    split = normalize(run(pieces))
    assert len(whole) == len(split)
    for a, b in zip(whole, split, strict=True):
        if type(a) is Partial:
            assert a.data.startswith(b.data) or b.data.startswith(a.data)
        else:
            assert a == b


PREFIXES = [b"", b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"]


@FUZZ
@given(st.sampled_from(PREFIXES), st.binary(max_size=300), split_points)
def test_random_bytes(prefix: bytes, data: bytes, points: bytes) -> None:
    check_hostile(prefix + data, points)


mutation = st.tuples(st.sampled_from(["flip", "insert", "delete", "replace"]), st.integers(0, 1 << 16),
                     st.integers(0, 255))
TOKENS = [b"\r", b"\n", b" ", b"\t", b":", b"\x00", b"\x7f", b"\xff", b"0", b"chunked", b"Host", b"HTTP/1.1"]


def mutate(data: bytearray, op: str, where: int, value: int) -> None:
    i = where % (len(data) + 1)
    if op == "insert":
        data[i:i] = bytes([value])
    elif op == "replace":
        data[i:i] = TOKENS[value % len(TOKENS)]
    elif data and op == "flip":
        data[i % len(data)] ^= 1 << (value % 8)
    elif data and op == "delete":
        del data[i % len(data)]


@FUZZ
@given(pipelines(most=2), st.lists(mutation, min_size=1, max_size=6), split_points)
def test_mutated_requests(gens: list[Gen], mutations: list[tuple[str, int, int]], points: bytes) -> None:
    data = bytearray(b"".join(g.wire for g in gens))
    for op, where, value in mutations:
        mutate(data, op, where, value)
    check_hostile(bytes(data), points)


@FUZZ
@given(pipelines(most=3), st.integers(0, 1 << 16), split_points)
def test_truncated_then_eof(gens: list[Gen], at: int, points: bytes) -> None:
    """A pipeline cut anywhere then closed: complete requests come out, then CLOSED or a status-0 error."""
    data = b"".join(g.wire for g in gens)
    data = data[: at % (len(data) + 1)]
    events = feed_hostile([*cut(data, points), b""])
    last = events[-1]
    assert last is CLOSED or (isinstance(last, ProtocolError) and last.status == 0), events
    complete = 0
    for g in gens:
        if len(data) >= len(g.wire):
            complete += 1
            data = data[len(g.wire):]
        else:
            break
    assert events.count(END) == complete
    assert (last is CLOSED) == (data == b"")


# ------------------------------------------------------------------ issue 11's cases
PROTOCOLS = ["HTTP", "http", "Http", "HTTPS", "RTSP", "ICE", "HTCPCP", "HTTP2", "H", "SIP", "XHTTP"]
ALL_METHODS = [*METHODS, "SOURCE", "DESCRIBE", "SETUP", "PLAY", "TEARDOWN", "PROPFIND", "QUERY"]


@FUZZ
@given(st.sampled_from(ALL_METHODS), st.one_of(st.sampled_from(PROTOCOLS), chars(TCHAR, 1, 8)),
       st.sampled_from(["1.1", "1.0", "2.0"]), split_points)
def test_only_http_is_http(method: str, name: str, version: str, points: bytes) -> None:
    """RFC 9112 2.3: HTTP-name is "HTTP", case-sensitive: any other name is refused before
    a request is handed out, however the line was cut (llhttp also speaks RTSP and ICE)."""
    data = f"{method} / {name}/{version}\r\nHost: a\r\nContent-Length: 0\r\n\r\n".encode()
    for pieces in ([data], cut(data, points)):
        events = run(pieces)
        if name == "HTTP" and version != "2.0" and method not in ("DESCRIBE", "SETUP", "PLAY", "TEARDOWN"):
            assert type(events[0]) is Req, (data, events)
        else:
            assert not any(type(e) is Req for e in events), (data, events)
            assert isinstance(events[-1], ProtocolError) and events[-1].status in (400, 501, 505)


bws = st.sampled_from(["", " ", "\t", "  "])
token = chars(TCHAR, 1, 6)
quoted = chars(VCHAR.replace('"', "").replace("\\", "") + " \t", 0, 6).map(lambda v: '"' + v + '"')
extension = st.tuples(bws, bws, token, st.one_of(st.none(), st.tuples(bws, bws, st.one_of(token, quoted))))


@FUZZ
@given(st.lists(extension, max_size=4), st.lists(extension, max_size=3), st.binary(min_size=1, max_size=30),
       split_points)
def test_every_valid_chunk_extension_is_accepted(first: list[Any], last: list[Any], body: bytes,
                                                 points: bytes) -> None:
    """RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] );
    every extension the grammar allows, on a data chunk and on the last chunk, reaches the app
    with the body intact."""

    def render(exts: list[Any]) -> bytes:
        out = ""
        for b1, b2, name, val in exts:
            out += f"{b1};{b2}{name}" + ("" if val is None else f"{val[0]}={val[1]}{val[2]}")
        return out.encode("latin-1")

    data = (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x%s\r\n%s\r\n0%s\r\n\r\n" % (len(body), render(first), body, render(last)))
    for pieces in ([data], cut(data, points)):
        events = normalize(run(pieces))
        assert type(events[0]) is Req and events[1] == body and events[2] is END, (data, events)

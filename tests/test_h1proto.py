"""HTTP/1.1 connection rules (workers/h1proto.py), sans-IO: bytes in, calls in, bytes out.

Every rule the protocol object owns is checked by feeding bytes (whole and one byte
at a time) and asserting the bytes and decisions that come out; no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from greenfork.workers import h1proto
from greenfork.workers.h1proto import (
    CLOSE,
    DRAIN,
    END,
    KEEP,
    LINGER,
    NEED_DATA,
    H1Server,
    LocalProtocolError,
    ProtocolError,
    Request,
)
from greenfork.workers.http1 import Limits

DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"
GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def feed(p: H1Server, data: bytes, bytewise: bool = False) -> list[Any]:
    """Feed data, pulling events after each piece, until the parser needs more, or a
    request head is out (as the connection does: its body is read by the app, and the
    next request waits its turn), or an error."""
    events: list[Any] = []
    for piece in ([data[i:i + 1] for i in range(len(data))] if bytewise else [data]):
        p.receive_data(piece)
        events += pull(p)
        if events and (type(events[-1]) is Request or isinstance(events[-1], ProtocolError)):
            break
    return events


def pull(p: H1Server) -> list[Any]:
    events: list[Any] = []
    while True:
        ev = p.next_event()
        if ev is NEED_DATA:
            return events
        events.append(ev)
        if type(ev) is Request or isinstance(ev, ProtocolError) or ev is END:
            return events


def serve(p: H1Server, status: str = "200 OK", headers: list[tuple[str, str]] | None = None,
          body: bytes = b"hi", keep_alive: bool = True) -> bytes:
    headers = [("Content-Length", str(len(body)))] if headers is None else headers
    out = p.head(status, headers, date=DATE, server=False, keep_alive=keep_alive)
    out += p.send_data(body)
    return out + p.end()


@pytest.mark.parametrize("bytewise", [False, True])
def test_keep_alive_cycle(bytewise: bool) -> None:
    p = H1Server(Limits())
    events = feed(p, GET, bytewise)
    assert [type(e) for e in events] == [Request]
    assert p.skip_end()  # a bodyless request's END came with its head
    p.receive_data(GET)  # the next request, pipelined
    assert p.state == h1proto.SEND_RESPONSE
    out = serve(p)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhi")
    assert b"Connection" not in out
    assert p.after_response() == KEEP and p.state == h1proto.IDLE
    assert type(p.next_event()) is Request  # the pipelined second request, parsed already
    assert p.next_event() is END
    p.receive_data(GET)
    with pytest.raises(LocalProtocolError, match="REQUEST while SEND_RESPONSE"):
        p.next_event()  # a third request handed out before the second is answered: a bug


@pytest.mark.parametrize(("request_bytes", "headers", "server_keep", "said", "expected"), [
    (b"GET / HTTP/1.0\r\n\r\n", [("Content-Length", "2")], True, True, CLOSE),  # 1.0 closes by default
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", [("Content-Length", "2")], True, False, KEEP),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", [("Content-Length", "2")], True, True,
     CLOSE),
    (GET, [("Content-Length", "2"), ("Connection", "close")], True, True, CLOSE),  # the app's wish
    (GET, [("Content-Length", "2")], False, True, CLOSE),  # the server's wish (draining, --keep-alive 0)
    # the head went out before the body showed it wrong: only the close can tell the client
    (GET, [("Content-Length", "5")], True, False, CLOSE),  # body shorter than promised
    (GET, [("Content-Length", "1")], True, False, CLOSE),  # longer than promised: cut, then close
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", [], True, True, CLOSE),  # 1.0, no length
    (GET, [], True, False, KEEP),  # 1.1, no length: chunked
])
def test_who_decides_keep_alive(request_bytes: bytes, headers: list[tuple[str, str]], server_keep: bool,
                                said: bool, expected: str) -> None:
    p = H1Server(Limits())
    feed(p, request_bytes)
    out = serve(p, headers=headers, keep_alive=server_keep)
    assert (b"Connection: close\r\n" in out) == said
    assert p.after_response() == expected


def test_100_continue_is_sent_once_before_the_first_read() -> None:
    p = H1Server(Limits())
    feed(p, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert p.start_body(None) == b"HTTP/1.1 100 Continue\r\n\r\n"
    p.receive_data(b"abc")
    assert pull(p) == [b"abc", END]
    out = serve(p)
    assert b"Connection: close" not in out and p.after_response() == KEEP


def test_100_continue_never_after_the_response_started() -> None:
    """The app answered without reading: the client still waits with its body, so the
    answer says close, and a late read (the drain) sends no 100 Continue."""
    p = H1Server(Limits())
    feed(p, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    out = serve(p)
    assert b"Connection: close\r\n" in out
    assert p.after_response() == LINGER  # the body may still come: do not reset it
    p2 = H1Server(Limits())
    feed(p2, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    p2.head("200 OK", [], date=DATE, server=False, keep_alive=True)
    assert p2.start_body(None) == b""  # a read after the head went out: no 100 Continue


def test_a_body_over_the_limit_is_refused_at_the_first_read_without_100_continue() -> None:
    p = H1Server(Limits(max_body=2))
    feed(p, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    with pytest.raises(ProtocolError) as e:
        p.start_body(2)
    assert e.value.status == 413 and "Content-Length 3" in e.value.detail
    out = p.error(413, date=DATE, server=False)
    assert out.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in out
    assert p.after_response() == LINGER


def test_unread_body_is_drained_before_the_next_request() -> None:
    p = H1Server(Limits())
    feed(p, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
    serve(p)
    assert p.after_response() == DRAIN
    p.start_body(None)
    p.receive_data(b"abc" + GET)
    assert pull(p) == [b"abc", END]  # what the connection's drain reads
    assert p.after_response() == KEEP


def test_a_bodyless_request_needs_no_drain() -> None:
    p = H1Server(Limits())
    feed(p, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    serve(p)
    assert p.skip_end() and p.after_response() == KEEP


def test_a_clean_close_does_not_linger() -> None:
    p = H1Server(Limits())
    feed(p, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    serve(p)
    assert p.after_response() == CLOSE


def test_requests_pipelined_behind_a_close_make_it_linger() -> None:
    p = H1Server(Limits())
    feed(p, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHo")
    serve(p)
    assert p.after_response() == LINGER


def test_malformed_input_is_answered_and_lingers() -> None:
    p = H1Server(Limits())
    events = feed(p, GET + b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
    assert type(events[0]) is Request and p.skip_end()
    serve(p)
    assert p.after_response() == KEEP
    err = p.next_event()
    assert isinstance(err, ProtocolError) and err.status == 400
    out = p.reject(err, date=DATE, server=False)
    assert out.startswith(b"HTTP/1.1 400 ") and p.after_response() == LINGER


def test_an_error_answer_replaces_an_unsent_response() -> None:
    p = H1Server(Limits())
    feed(p, GET)
    p.head("200 OK", [("Content-Length", "2")], date=DATE, server=False, keep_alive=True)
    out = p.error(500, date=DATE, server=False)
    assert out.startswith(b"HTTP/1.1 500 ") and p.state == h1proto.MUST_CLOSE


def test_a_file_span_follows_the_framing() -> None:
    p = H1Server(Limits())
    feed(p, GET)
    p.head("200 OK", [("Content-Length", "10")], date=DATE, server=False, keep_alive=True)
    assert p.file_span() == 10
    p.file_sent(4)  # the file was shorter than its Content-Length
    p.end()
    assert p.after_response() == CLOSE
    p = H1Server(Limits())
    feed(p, GET)
    p.head("200 OK", [], date=DATE, server=False, keep_alive=True)
    assert p.file_span() is None  # chunked: our hands frame it


def test_a_pair_missing_from_the_table_raises() -> None:
    """The table is the rule: calls in an order it does not allow are a bug, and say so."""
    p = H1Server(Limits())
    with pytest.raises(LocalProtocolError, match="HEAD while IDLE"):
        p.head("200 OK", [], date=DATE, server=False, keep_alive=True)
    feed(p, GET)
    serve(p)
    p.skip_end()
    with pytest.raises(LocalProtocolError, match="HEAD while DONE"):
        p.head("200 OK", [], date=DATE, server=False, keep_alive=True)
    assert (h1proto.IDLE, h1proto.HEAD) not in h1proto.TRANSITIONS


def test_every_table_entry_is_reachable_by_name() -> None:
    for (state, event), nxt in h1proto.TRANSITIONS.items():
        assert h1proto.STATE_NAMES[state] and h1proto.EVENT_NAMES[event] and h1proto.STATE_NAMES[nxt]


@pytest.mark.parametrize("req, headers, body", [
    (GET, [("Content-Length", "5")], [b"he", b"", b"llo"]),
    (GET, [("Content-Length", "9")], [b"short"]),  # shorter than declared: the connection closes
    (GET, [("Content-Type", "text/plain")], [b"chunk", b"ed"]),  # no length: chunked
    (b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", [("Content-Length", "5")], [b"hello"]),
    (b"GET / HTTP/1.0\r\n\r\n", [], [b"close-delimited"]),
])
def test_respond_is_head_pieces_and_end(req: bytes, headers: list[tuple[str, str]],
                                        body: list[bytes]) -> None:
    """respond(), the request stage's path for a list body, writes what head(), send_data() for each
    piece and end() write, and leaves the connection in the same state with the same verdict."""
    one, three = H1Server(Limits()), H1Server(Limits())
    feed(one, req)
    feed(three, req)
    out: list[bytes] = []
    one.respond("200 OK", headers, body, out, date=DATE, server=True, keep_alive=True)
    expected = three.head("200 OK", headers, date=DATE, server=True, keep_alive=True)
    for piece in body:
        expected += three.send_data(piece)
    expected += three.end()
    assert b"".join(out) == expected
    assert (one.state, one.status, one.body_bytes) == (three.state, three.status, three.body_bytes)
    assert one.after_response() == three.after_response()

"""The sans-IO HTTP/1.1 core: every request is fed whole, a byte at a time and in
random splits, and the three event sequences must agree (RFC 9112 framing does
not depend on how TCP cut the stream)."""

from __future__ import annotations

import random
from typing import Any, NamedTuple

import pytest

from greenfork.workers.http1 import (
    CLOSED,
    END,
    NEED_DATA,
    Limits,
    ProtocolError,
    Request,
    RequestParser,
)
from greenfork.workers.response import (
    CONTINUE,
    ResponseFramer,
    error_response,
    response_head,
)

DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"
MAX_HEAD = Limits().max_request_line + Limits().max_header_bytes + 4  # where the unbounded-head guard trips


class Req(NamedTuple):
    """A Request as it looked when next_event() returned it."""

    method: str
    target: bytes
    path: bytes
    query: bytes
    version: str
    headers: tuple[tuple[bytes, bytes], ...]
    keep_alive: bool
    expect_continue: bool
    content_length: int | None
    chunked: bool
    host: bytes | None
    upgrade: bool


class Err(NamedTuple):
    status: int
    error_type: str


class Partial(NamedTuple):
    """Body bytes of a request cut short by an error: how many arrive first depends on the split."""

    data: bytes


def snap(r: Request) -> Req:
    return Req(r.method, r.target, r.path, r.query, r.version, tuple(r.headers), r.keep_alive,
               r.expect_continue, r.content_length, r.chunked, r.host, r.upgrade)


def run(pieces: list[bytes], limits: Limits | None = None, eof: bool = False) -> list[Any]:
    """Feed pieces in order, pulling events after each; stop at a terminal event."""
    conn = RequestParser(limits) if limits is not None else RequestParser()
    events: list[Any] = []
    for piece in [*pieces, *([b""] if eof else [])]:
        conn.receive_data(piece)
        while True:
            ev = conn.next_event()
            if ev is NEED_DATA:
                break
            if ev is CLOSED or isinstance(ev, ProtocolError):
                events.append(ev)
                return events
            assert type(ev) is Request or ev is END or (type(ev) is bytes and ev), ev
            events.append(snap(ev) if type(ev) is Request else ev)
    events.append(NEED_DATA)
    return events


def normalize(events: list[Any]) -> list[Any]:
    """Join body pieces per request; turn errors into comparable values."""
    out: list[Any] = []
    for ev in events:
        if type(ev) is bytes and out and type(out[-1]) is bytes:
            out[-1] += ev
        elif isinstance(ev, ProtocolError):
            if out and type(out[-1]) is bytes:
                out[-1] = Partial(out[-1])
            out.append(Err(ev.status, ev.error_type))
        else:
            out.append(ev)
    return out


def splits(data: bytes, rng: random.Random) -> list[bytes]:
    if len(data) < 2:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def parse(data: bytes, limits: Limits | None = None, eof: bool = False) -> list[Any]:
    """Events for data fed whole; asserts byte-at-a-time and random splits agree."""
    whole = normalize(run([data], limits, eof))
    rng = random.Random(data)
    others = [normalize(run([data[i:i + 1] for i in range(len(data))], limits, eof))]
    others += [normalize(run(splits(data, rng), limits, eof)) for _ in range(3)]
    for other in others:
        assert len(other) == len(whole), (whole, other)
        for a, b in zip(whole, other, strict=True):
            if type(a) is Partial:
                assert type(b) is Partial and (a.data.startswith(b.data) or b.data.startswith(a.data))
            else:
                assert a == b, (whole, other)
    return whole


def R(**fields: Any) -> dict[str, Any]:
    return fields


def check(events: list[Any], expected: list[Any]) -> None:
    assert len(events) == len(expected), events
    for ev, exp in zip(events, expected, strict=True):
        if type(exp) is dict:
            assert type(ev) is Req, ev
            assert {k: getattr(ev, k) for k in exp} == exp
        else:
            assert ev == exp


def head(*lines: bytes, version: bytes = b"1.1", method: bytes = b"GET", target: bytes = b"/") -> bytes:
    fields = b"".join(line + b"\r\n" for line in lines)
    return b"%s %s HTTP/%s\r\n%s\r\n" % (method, target, version, fields)


HOST = b"Host: example.com"
CHUNKED_POST = head(HOST, b"Transfer-Encoding: chunked", method=b"POST")

# ------------------------------------------------------------------ valid requests
VALID = [
    pytest.param(head(HOST), [R(method="GET", path=b"/", query=b"", version="1.1", keep_alive=True,
                                host=None, content_length=None, chunked=False), END, NEED_DATA],
                 id="simple-GET-rfc9112-3"),
    pytest.param(head(version=b"1.0"), [R(version="1.0", keep_alive=False), END, NEED_DATA],
                 id="http10-closes-by-default-rfc9112-9.3"),
    pytest.param(head(b"Connection: keep-alive", version=b"1.0"),
                 [R(version="1.0", keep_alive=True), END, NEED_DATA],
                 id="http10-keep-alive-rfc9112-9.3"),
    pytest.param(head(HOST, b"Connection: close"), [R(keep_alive=False), END, NEED_DATA],
                 id="http11-connection-close-rfc9112-9.6"),
    pytest.param(head(HOST, target=b"/a/b?x=1&y=%20"),
                 [R(target=b"/a/b?x=1&y=%20", path=b"/a/b", query=b"x=1&y=%20"), END, NEED_DATA],
                 id="origin-form-query-rfc9112-3.2.1"),
    pytest.param(head(HOST, target=b"/p?"), [R(path=b"/p", query=b""), END, NEED_DATA],
                 id="origin-form-empty-query-rfc9112-3.2.1"),
    pytest.param(head(HOST, method=b"OPTIONS", target=b"*"),
                 [R(method="OPTIONS", path=b"*", target=b"*"), END, NEED_DATA],
                 id="asterisk-form-rfc9112-3.2.4"),
    pytest.param(head(b"Host: ignored", target=b"http://h:81/x?y"),
                 [R(host=b"h:81", path=b"/x", query=b"y", target=b"http://h:81/x?y"), END, NEED_DATA],
                 id="absolute-form-rfc9112-3.2.2"),
    pytest.param(head(HOST, target=b"http://h"), [R(host=b"h", path=b"/", query=b""), END, NEED_DATA],
                 id="absolute-form-empty-path-rfc9112-3.2.2"),
    pytest.param(head(HOST, b"Content-Length: 5", method=b"POST") + b"hello",
                 [R(method="POST", content_length=5, chunked=False), b"hello", END, NEED_DATA],
                 id="content-length-body-rfc9112-6.2"),
    pytest.param(head(HOST, b"Content-Length: 0", method=b"POST"), [R(content_length=0), END, NEED_DATA],
                 id="content-length-zero-rfc9112-6.2"),
    pytest.param(head(HOST, b"Transfer-Encoding: chunked", method=b"POST")
                 + b"5;name=value;flag\r\nhello\r\n1\r\n \r\nA;x=\"q\"\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n"
                 + b"Another: two\r\n\r\n",
                 [R(chunked=True, content_length=None,
                    headers=((b"Host", b"example.com"), (b"Transfer-Encoding", b"chunked"))),
                  b"hello 0123456789", END, NEED_DATA],
                 id="chunked-extensions-trailers-not-merged-rfc9112-7.1-rfc9110-6.5.1"),
    pytest.param(CHUNKED_POST + b"0\r\n\r\n",
                 [R(chunked=True), END, NEED_DATA], id="chunked-empty-rfc9112-7.1"),
    pytest.param(head(HOST, target=b"/1") + head(HOST, target=b"/2") + head(HOST, target=b"/3")
                 + head(HOST, b"Content-Length: 3", method=b"POST", target=b"/4") + b"abc",
                 [R(path=b"/1"), END, R(path=b"/2"), END, R(path=b"/3"), END,
                  R(method="POST", path=b"/4"), b"abc", END, NEED_DATA],
                 id="pipelined-rfc9112-9.3.2"),
    pytest.param(head(HOST, b"Expect: 100-continue", b"Content-Length: 2", method=b"POST") + b"hi",
                 [R(expect_continue=True), b"hi", END, NEED_DATA], id="expect-100-continue-rfc9110-10.1.1"),
    pytest.param(head(b"Expect: 100-Continue", b"Content-Length: 2", version=b"1.0", method=b"POST") + b"hi",
                 [R(expect_continue=False), b"hi", END, NEED_DATA],
                 id="expect-100-continue-ignored-on-1.0-rfc9110-10.1.1"),
    pytest.param(head(HOST, b"X-A: 1", b"x-a: 2", b"Cookie: a=1"),
                 [R(headers=((b"Host", b"example.com"), (b"X-A", b"1"), (b"x-a", b"2"), (b"Cookie", b"a=1"))),
                  END, NEED_DATA],
                 id="headers-in-order-repeated-kept-rfc9110-5.3"),
    pytest.param(head(HOST, b"X-Sp:  \t padded value\t "),
                 [R(headers=((b"Host", b"example.com"), (b"X-Sp", b"padded value"))), END, NEED_DATA],
                 id="ows-trimmed-rfc9112-5.1"),
    pytest.param(b"\r\n" + head(HOST), [R(path=b"/"), END, NEED_DATA], id="leading-empty-line-rfc9112-2.2"),
    pytest.param(head(HOST, b"Connection: keep-alive", b"Transfer-Encoding: chunked", version=b"1.0",
                      method=b"POST") + b"1\r\nx\r\n0\r\n\r\n",
                 [R(chunked=True, keep_alive=False), b"x", END, NEED_DATA],
                 id="http10-transfer-encoding-closes-rfc9112-6.1"),
    pytest.param(head(HOST, b"X-Name: caf\xe9"),
                 [R(headers=((b"Host", b"example.com"), (b"X-Name", b"caf\xe9"))), END, NEED_DATA],
                 id="obs-text-in-value-rfc9110-5.5"),
    pytest.param(head(b"Host:"), [R(headers=((b"Host", b""),)), END, NEED_DATA],
                 id="empty-host-rfc9112-3.2"),
    pytest.param(head(b"Host: [::1]:8080"), [R(), END, NEED_DATA], id="host-ip-literal-rfc9112-3.2"),
    pytest.param(head(HOST, method=b"CONNECT", target=b"example.com:443"),
                 [R(method="CONNECT", path=b"example.com:443", keep_alive=False), END, CLOSED],
                 id="connect-authority-form-rfc9112-3.2.3"),
    # RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ),
    # a token or a quoted-string; every valid form reaches the app intact (llhttp refuses some)
    *[pytest.param(CHUNKED_POST + b"5" + ext + b"\r\nhello\r\n0" + ext + b"\r\n\r\n",
                   [R(chunked=True), b"hello", END, NEED_DATA], id=f"chunk-ext-{name}-rfc9112-7.1.1")
      for name, ext in [("name-only", b";a"), ("token", b";a=b"), ("quoted", b';a="b c"'),
                        ("quoted-escape", b';a="b\\"c"'), ("quoted-empty", b';a=""'),
                        ("bws-everywhere", b" ; a = b"), ("bws-before-semicolon", b"\t;a"),
                        ("bws-after-semicolon", b"; a=b"), ("bws-around-equals", b";a =\tb"),
                        ("several", b";a;b=c;d=\"e\""), ("several-bws", b';a="x" ;b ; c=d'),
                        ("obs-text-in-quoted", b';a="caf\xe9"')]],
    pytest.param(CHUNKED_POST + b"0003\r\nabc\r\n0\r\n\r\n",
                 [R(chunked=True), b"abc", END, NEED_DATA], id="chunk-size-leading-zeros-rfc9112-7.1"),
]


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_valid(data: bytes, expected: list[Any]) -> None:
    check(parse(data), expected)


# ------------------------------------------------------------------ rejected requests
def headers(n: int) -> list[bytes]:
    return [b"X-%d: v" % i for i in range(n)]


ERRORS = [
    pytest.param(head(), 400, id="missing-host-rfc9112-3.2"),
    pytest.param(head(HOST, b"Host: other"), 400, id="two-host-rfc9112-3.2"),
    pytest.param(head(b"host: a", b"HOST: a"), 400, id="two-host-any-case-rfc9112-3.2"),
    pytest.param(head(HOST, b"Content-Length: 3", b"Transfer-Encoding: chunked", method=b"POST") + b"abc",
                 400, id="cl-and-te-rfc9112-6.3"),
    pytest.param(head(HOST, b"Transfer-Encoding: chunked", b"Content-Length: 3", method=b"POST") + b"abc",
                 400, id="te-and-cl-rfc9112-6.3"),
    pytest.param(head(HOST, b"Content-Length: 3", b"Content-Length: 4", method=b"POST") + b"abcd", 400,
                 id="two-content-lengths-rfc9112-6.3"),
    pytest.param(head(HOST, b"Content-Length: 1, 2", method=b"POST") + b"ab", 400,
                 id="content-length-list-rfc9112-6.3"),
    pytest.param(head(HOST, b"Content-Length: abc", method=b"POST"), 400, id="non-numeric-cl-rfc9112-6.3"),
    pytest.param(head(HOST, b"Content-Length: -1", method=b"POST"), 400, id="negative-cl-rfc9110-8.6"),
    pytest.param(head(HOST, b"Content-Length: +1", method=b"POST") + b"a", 400, id="signed-cl-rfc9110-8.6"),
    pytest.param(head(HOST, b"Transfer-Encoding: gzip", method=b"POST"), 400,
                 id="te-chunked-not-final-rfc9112-6.3"),
    pytest.param(head(HOST, b"Transfer-Encoding: chunked, gzip", method=b"POST"), 400,
                 id="te-chunked-then-gzip-rfc9112-6.3"),
    pytest.param(head(HOST, b"Transfer-Encoding: gzip, chunked", method=b"POST"), 501,
                 id="te-unknown-coding-rfc9112-6.1"),
    pytest.param(head(HOST, b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked", method=b"POST"), 501,
                 id="te-split-over-fields-rfc9112-6.1"),
    pytest.param(head(HOST, version=b"2.0"), 505, id="http-2.0-rfc9110-15.6.6"),
    pytest.param(head(HOST, version=b"1.2"), 505, id="http-1.2-rfc9110-15.6.6"),
    pytest.param(head(HOST, version=b"0.9"), 505, id="http-0.9-rfc9110-15.6.6"),
    pytest.param(head(HOST, method=b"FOO"), 501, id="unknown-method-rfc9110-9.1"),
    pytest.param(head(HOST, method=b"get"), 501, id="method-is-case-sensitive-rfc9110-9.1"),
    pytest.param(head(HOST, b"X-A: one", b" two"), 400, id="obs-fold-rfc9112-5.2"),
    pytest.param(head(HOST, b"X-A: one", b"\ttwo"), 400, id="obs-fold-tab-rfc9112-5.2"),
    pytest.param(head(HOST, b"X-A : one"), 400, id="space-before-colon-rfc9112-5.1"),
    pytest.param(head(HOST, b"X A: one"), 400, id="space-in-name-rfc9110-5.1"),
    pytest.param(head(HOST, b"no colon here"), 400, id="no-colon-rfc9112-5"),
    pytest.param(b"GET / HTTP/1.1\nHost: a\n\n", 400, id="bare-lf-after-request-line-rfc9112-2.2"),
    pytest.param(b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400, id="bare-cr-after-request-line-rfc9112-2.2"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\n\r\n", 400, id="bare-lf-after-field-rfc9112-2.2"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400, id="bare-cr-after-field-rfc9112-2.2"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400, id="bare-cr-in-value-rfc9112-2.2"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400, id="bare-lf-ending-head-rfc9112-2.2"),
    pytest.param(head(HOST, b"X: a\x00b"), 400, id="nul-in-value-rfc9110-5.5"),
    pytest.param(head(HOST, b"X: a\x01b"), 400, id="ctl-in-value-rfc9110-5.5"),
    pytest.param(head(HOST, b"X: a\x7fb"), 400, id="del-in-value-rfc9110-5.5"),
    pytest.param(head(HOST, b"X\x01Y: a"), 400, id="ctl-in-name-rfc9110-5.1"),
    pytest.param(head(HOST, b"X\x00Y: a"), 400, id="nul-in-name-rfc9110-5.1"),
    pytest.param(head(HOST, b": a"), 400, id="empty-field-name-rfc9110-5.1"),
    pytest.param(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, id="whitespace-after-start-line-rfc9112-2.2"),
    pytest.param(head(b"Host: a b"), 400, id="invalid-host-rfc9112-3.2"),
    pytest.param(head(b"Host: a/b"), 400, id="host-with-path-rfc9112-3.2"),
    pytest.param(head(b"Host: u@a"), 400, id="host-with-userinfo-rfc9112-3.2"),
    pytest.param(head(HOST, target=b"http://u@h/x"), 400, id="absolute-form-userinfo-rfc9110-4.2.4"),
    pytest.param(head(HOST, target=b"http:///x"), 400, id="absolute-form-empty-host-rfc9110-4.2.1"),
    pytest.param(head(HOST, target=b"example.com:80"), 400,
                 id="authority-form-only-for-connect-rfc9112-3.2.3"),
    pytest.param(head(HOST, method=b"CONNECT", target=b"/"), 400, id="connect-origin-form-rfc9112-3.2.3"),
    pytest.param(head(HOST, method=b"CONNECT", target=b"example.com"), 400,
                 id="connect-without-port-rfc9110-9.3.6"),
    pytest.param(head(HOST, method=b"CONNECT", target=b"example.com:"), 400,
                 id="connect-empty-port-rfc9110-9.3.6"),
    pytest.param(head(HOST, method=b"CONNECT", target=b"example.com:0"), 400,
                 id="connect-invalid-port-rfc9110-9.3.6"),
    pytest.param(head(HOST, method=b"CONNECT", target=b"http://example.com:80/"), 400,
                 id="connect-absolute-form-rfc9112-3.2.3"),
    pytest.param(head(HOST, target=b"/a\tb"), 400, id="tab-in-target-rfc9112-3.2"),
    pytest.param(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="space-in-target-rfc9112-3"),
    pytest.param(b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, id="lowercase-http-name-rfc9112-2.3"),
    # RFC 9112 2.3: HTTP-name is "HTTP", case-sensitive; llhttp also parses RTSP and ICE
    *[pytest.param(b"%s / %s\r\nHost: a\r\nContent-Length: 0\r\n\r\n" % (m, proto), 400,
                   id=f"protocol-{m.decode()}-{proto.decode()}-rfc9112-2.3")
      for m, proto in [(b"GET", b"RTSP/1.0"), (b"POST", b"RTSP/1.0"), (b"OPTIONS", b"RTSP/1.0"),
                       (b"GET", b"RTSP/1.1"), (b"SOURCE", b"ICE/1.0"), (b"DESCRIBE", b"RTSP/1.0"),
                       (b"SETUP", b"RTSP/1.0"), (b"PLAY", b"RTSP/1.0"), (b"TEARDOWN", b"RTSP/1.0"),
                       (b"GET_PARAMETER", b"RTSP/1.0"), (b"RECORD", b"RTSP/1.0"), (b"FLUSH", b"RTSP/1.0"),
                       (b"GET", b"ICE/1.0"), (b"GET", b"http/1.1"), (b"GET", b"Http/1.1"),
                       (b"GET", b"HTTPS/1.1"), (b"GET", b"HTCPCP/1.0")]],
    pytest.param(b"GET /\r\n", 400, id="http-0.9-answered-at-once"),
    pytest.param(b"GET /index.html\r\n\r\n", 400, id="http-0.9-with-empty-line"),
    pytest.param(b"GET /\r\nHost: a\r\n\r\n", 400, id="http-0.9-with-fields"),
    # the head still incomplete, its field lines in the same read as the request line (found
    # by tests/test_http1_fuzz.py: the verdict once depended on where the reads were cut)
    pytest.param(b"PATCH /HTTP/1.0\r\na: a\r\nb: b\r\n\r", 400, id="http-0.9-head-incomplete-rfc9112-3"),
    pytest.param(b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400, id="version-two-digits-rfc9112-2.3"),
    pytest.param(head(HOST, b"Content-Length: 1 2", method=b"POST"), 400, id="cl-with-space-rfc9110-8.6"),
    pytest.param(head(HOST, b"Content-Length: 1", b"Content-Length: 1", method=b"POST") + b"a", 400,
                 id="identical-content-lengths-rfc9112-6.3"),
    pytest.param(head(HOST, b"Transfer-Encoding: chunked", b"Content-Length: 0", method=b"POST"), 400,
                 id="te-and-cl-zero-rfc9112-6.1"),
    pytest.param(head(HOST, b"Transfer-Encoding: chunked, chunked", method=b"POST"), 400,
                 id="te-chunked-twice-rfc9112-6.1"),
    pytest.param(head(HOST, b"Transfer-Encoding: identity", method=b"POST"), 400,
                 id="te-identity-rfc9112-6.1"),
    pytest.param(head(HOST, target=b"/a\x00b"), 400, id="nul-in-target-rfc9112-3.2"),
    pytest.param(head(HOST, target=b"/\x7f"), 400, id="del-in-target-rfc9112-3.2"),
    pytest.param(head(HOST, target=b"ftp://h/x"), 400, id="absolute-form-not-http-rfc9112-3.2.2"),
    pytest.param(head(HOST, target=b"*"), 400, id="asterisk-form-only-for-options-rfc9112-3.2.4"),
    pytest.param(head(HOST, b"Expect: something-else"), 417, id="unknown-expectation-rfc9110-10.1.1"),
    pytest.param(head(HOST, target=b"/" + b"a" * 8192), 414, id="target-over-8192-rfc9112-3"),
    pytest.param(head(HOST, *headers(100)), 431, id="101-fields-rfc6585-5"),
    pytest.param(head(HOST, b"X-Big: " + b"v" * 32 * 1024), 431, id="one-field-over-32k-rfc6585-5"),
    pytest.param(head(HOST, *[b"X-%d: %s" % (i, b"v" * 1000) for i in range(33)]), 431,
                 id="field-block-over-32k-rfc6585-5"),
    pytest.param(head(HOST, b"Content-Length: 99999999999999999999", method=b"POST"), 400,
                 id="cl-overflow-rfc9110-8.6"),
]


@pytest.mark.parametrize(("data", "status"), ERRORS)
def test_rejected(data: bytes, status: int) -> None:
    events = parse(data)
    assert type(events[-1]) is Err, events
    assert events[-1].status == status
    assert not any(type(e) is Req for e in events), "a rejected head must not reach the app"


def test_limits_are_inclusive() -> None:
    """Exactly at each bound is still accepted (Kestrel's defaults)."""
    # "GET " + target + " HTTP/1.1\r\n" is exactly 8192 bytes
    check(parse(head(HOST, target=b"/" + b"a" * 8176)), [R(path=b"/" + b"a" * 8176), END, NEED_DATA])
    assert parse(head(HOST, target=b"/" + b"a" * 8177))[-1] == Err(414, "invalid_request_line")
    check(parse(head(HOST, *headers(99))), [R(), END, NEED_DATA])
    check(parse(head(HOST, b"Content-Length: 30000000", method=b"POST")),
          [R(content_length=30_000_000), NEED_DATA])
    assert parse(head(HOST, b"Content-Length: 30000001", method=b"POST"))[-1].status == 413


def test_configured_limits() -> None:
    small = Limits(max_request_line=64, max_headers=2, max_header_bytes=100, max_body=5)
    assert parse(head(HOST, target=b"/" + b"a" * 50), small)[-1].status == 414
    assert parse(head(HOST, b"A: 1", b"B: 2"), small)[-1].status == 431
    assert parse(head(HOST, b"A: " + b"v" * 90), small)[-1].status == 431
    check(parse(head(HOST, b"Content-Length: 6", method=b"POST") + b"abcdef", small),
          [R(), Err(413, "max_request_body_size_exceeded")])
    unlimited = Limits(max_body=None)
    check(parse(head(HOST, b"Content-Length: 99999999999", method=b"POST"), unlimited),
          [R(content_length=99999999999), NEED_DATA])


# ------------------------------------------------------------------ per-request body limit
POST_CL = head(HOST, b"Content-Length: 40000000", method=b"POST")
POST_CHUNKED = head(HOST, b"Transfer-Encoding: chunked", method=b"POST")


def first_request(conn: RequestParser, data: bytes) -> Request:
    conn.receive_data(data)
    ev = conn.next_event()
    assert type(ev) is Request
    return ev


def test_set_body_limit_raises_it_for_one_request() -> None:
    conn = RequestParser()
    first_request(conn, POST_CL + b"x" * 10)
    assert conn.set_body_limit(50_000_000) is None
    assert conn.next_event() == b"x" * 10


def test_set_body_limit_none_is_unlimited_and_the_default_returns() -> None:
    conn = RequestParser(Limits(max_body=4))
    first_request(conn, POST_CHUNKED + b"8\r\n12345678\r\n0\r\n\r\n" + POST_CHUNKED + b"8\r\n12345678\r\n")
    assert conn.set_body_limit(None) is None
    assert conn.next_event() == b"12345678" and conn.next_event() is END
    assert type(conn.next_event()) is Request  # the next request is back at the default
    err = conn.next_event()
    assert isinstance(err, ProtocolError) and err.status == 413


def test_set_body_limit_lowered_refuses_content_length_up_front() -> None:
    """RFC 9110 15.5.14: 413 before a byte is read; nothing queued behind it is delivered."""
    conn = RequestParser()
    first_request(conn, head(HOST, b"Content-Length: 5", method=b"POST") + b"hello" + head(HOST))
    err = conn.set_body_limit(4)
    assert err is not None and err.status == 413 and err.error_type == "max_request_body_size_exceeded"
    assert conn.next_event() is err


def test_set_body_limit_after_reading_is_an_error() -> None:
    conn = RequestParser()
    first_request(conn, head(HOST, b"Content-Length: 2", method=b"POST") + b"x")
    assert conn.next_event() == b"x"
    with pytest.raises(RuntimeError):
        conn.set_body_limit(1)


# ------------------------------------------------------------------ errors inside a body
BODY_ERRORS = [
    pytest.param(CHUNKED_POST + b"zz\r\n", None, 400,
                 id="bad-chunk-size-rfc9112-7.1"),
    pytest.param(CHUNKED_POST + b"3\r\nabcX\r\n", None, 400,
                 id="chunk-data-overrun-rfc9112-7.1"),
    pytest.param(CHUNKED_POST + b"3\nabc\n0\n\n", None, 400,
                 id="chunk-bare-lf-rfc9112-7.1"),
    pytest.param(head(HOST, b"Transfer-Encoding: chunked", method=b"POST")
                 + b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n", Limits(max_body=10), 413,
                 id="chunked-over-max-body-rfc9110-15.5.14"),
    pytest.param(head(HOST, b"Content-Length: 30000001", method=b"POST"), None, 413,
                 id="cl-over-limit-rfc9110-15.5.14"),
    pytest.param(CHUNKED_POST + b"FFFFFFFFFFFFFFFFF\r\n", None, 400,
                 id="chunk-size-overflow-rfc9112-7.1"),
    pytest.param(CHUNKED_POST + b"-1\r\n", None, 400,
                 id="negative-chunk-size-rfc9112-7.1"),
    pytest.param(CHUNKED_POST + b"0x3\r\nabc\r\n", None, 400,
                 id="chunk-size-0x-prefix-rfc9112-7.1"),
    pytest.param(CHUNKED_POST + b" 3\r\nabc\r\n", None, 400,
                 id="chunk-size-leading-space-rfc9112-7.1"),
    pytest.param(CHUNKED_POST + b"3\r\nabc0\r\n\r\n", None, 400,
                 id="missing-crlf-after-chunk-rfc9112-7.1"),
    pytest.param(CHUNKED_POST + b"0\r\nX: a\r\n b\r\n\r\n", None,
                 400, id="trailer-obs-fold-rfc9112-7.1.2"),
    pytest.param(CHUNKED_POST + b"0\r\nno colon\r\n\r\n", None,
                 400, id="trailer-without-colon-rfc9112-7.1.2"),
    pytest.param(CHUNKED_POST + b"0\r\nX : a\r\n\r\n", None,
                 400, id="trailer-space-before-colon-rfc9112-7.1.2"),
    pytest.param(CHUNKED_POST + b"0\r\nX: a\x00\r\n\r\n", None,
                 400, id="trailer-nul-rfc9112-7.1.2"),
    *[pytest.param(CHUNKED_POST + b"5" + ext + b"\r\nhello\r\n0\r\n\r\n", None, 400,
                   id=f"chunk-ext-invalid-{name}-rfc9112-7.1.1")
      for name, ext in [("empty", b";"), ("empty-name", b";=b"), ("empty-value", b";a="),
                        ("two-equals", b";a=b=c"), ("trailing-space", b";a=b "), ("nul", b";a\x00"),
                        ("del-in-quoted", b';a="\x7f"'), ("unterminated-quote", b';a="b'),
                        ("space-in-name", b";a b"), ("comma", b";a,b")]],
]


@pytest.mark.parametrize(("data", "limits", "status"), BODY_ERRORS)
def test_rejected_in_body(data: bytes, limits: Limits | None, status: int) -> None:
    """The head was valid, so the Request is out; then the body is refused."""
    events = parse(data, limits)
    assert type(events[0]) is Req
    assert type(events[-1]) is Err and events[-1].status == status
    assert END not in events
    delivered = events[1].data if type(events[1]) is Partial else b""
    assert len(delivered) <= (limits or Limits()).max_body


def test_chunked_body_never_delivers_past_max_body() -> None:
    """Whatever the split, the app never sees more than max_body bytes of a chunked body."""
    data = head(HOST, b"Transfer-Encoding: chunked", method=b"POST")
    data += b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"
    for pieces in ([data], [data[i:i + 1] for i in range(len(data))]):
        events = run(pieces, Limits(max_body=10))
        body = b"".join(e for e in events if type(e) is bytes)
        assert len(body) <= 10 and b"1234567812345678".startswith(body)
        assert isinstance(events[-1], ProtocolError) and events[-1].status == 413


# ------------------------------------------------------------------ after an error
def test_error_is_sticky() -> None:
    conn = RequestParser()
    conn.receive_data(head())  # no Host
    err = conn.next_event()
    assert isinstance(err, ProtocolError) and err.status == 400
    conn.receive_data(head(HOST))
    conn.receive_data(b"")
    for _ in range(5):
        assert conn.next_event() is err


def test_good_request_before_bad_one_is_still_served() -> None:
    """RFC 9112 9.3.2: answer the complete pipelined request, then reject the next."""
    data = head(HOST, target=b"/ok") + head(HOST, b"Content-Length: 2", method=b"POST") + b"hi"
    data += head(target=b"/bad")
    check(parse(data),
          [R(path=b"/ok"), END, R(method="POST"), b"hi", END, Err(400, "invalid_request_headers")])


# ------------------------------------------------------------------ EOF (RFC 9112 9.6, 8)
def test_eof_between_requests_is_closed() -> None:
    check(parse(b"", eof=True), [CLOSED])
    check(parse(head(HOST), eof=True), [R(), END, CLOSED])
    check(parse(head(HOST, b"Content-Length: 2", method=b"POST") + b"hi", eof=True),
          [R(), b"hi", END, CLOSED])


def test_eof_inside_body_is_incomplete_message() -> None:
    """RFC 9112 8: a message cut short by a close is incomplete; nothing to answer."""
    data = head(HOST, b"Content-Length: 5", method=b"POST") + b"ab"
    events = parse(data, eof=True)
    check(events, [R(content_length=5), Partial(b"ab"), Err(0, "unexpected_end_of_request_content")])
    chunked = CHUNKED_POST + b"5\r\nab"
    events = parse(chunked, eof=True)
    assert events[0].chunked and events[-1] == Err(0, "unexpected_end_of_request_content")


@pytest.mark.parametrize("data", [b"G", b"GET / HT", head(HOST)[:-2], head(HOST) + b"GET /"],
                         ids=["first-byte", "request-line", "before-empty-line", "second-request"])
def test_eof_inside_head_is_status_0(data: bytes) -> None:
    events = parse(data, eof=True)
    assert type(events[-1]) is Err and events[-1].status == 0


def test_eof_is_final() -> None:
    conn = RequestParser()
    conn.receive_data(b"")
    conn.receive_data(head(HOST))
    assert conn.next_event() is CLOSED
    assert conn.next_event() is CLOSED


# ------------------------------------------------------------------ upgrade (RFC 9110 7.8)
@pytest.mark.parametrize("extra", [b"", b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
                                   head(HOST, target=b"/next")],
                         ids=["nothing", "websocket-frame", "http-request"])
def test_upgrade_is_served_then_closed(extra: bytes) -> None:
    data = head(HOST, b"Connection: Upgrade", b"Upgrade: websocket", b"Sec-WebSocket-Version: 13")
    events = parse(data + extra)
    check(events, [R(upgrade=True, keep_alive=False), END, CLOSED])


def test_upgrade_with_body_is_closed_before_the_app_answers() -> None:
    """keep_alive is False on the Request as first returned, so the response says Connection: close."""
    data = head(HOST, b"Connection: upgrade", b"Upgrade: h2c", b"Content-Length: 3", method=b"POST") + b"abc"
    conn = RequestParser()
    for i in range(len(data)):
        conn.receive_data(data[i:i + 1])
        ev = conn.next_event()
        if type(ev) is Request:
            assert ev.keep_alive is False and ev.upgrade
            out, framer = response_head(ev, "200 OK", [("Content-Length", "0")], keep_alive=True, date=DATE,
                                        server=True)
            assert b"\r\nConnection: close\r\n" in out and not framer.keep_alive
            break
    else:
        pytest.fail("no Request")


def test_connect_is_closed_after() -> None:
    check(parse(head(HOST, method=b"CONNECT", target=b"h:443") + b"\x16\x03\x01"),
          [R(method="CONNECT", path=b"h:443", keep_alive=False), END, CLOSED])


# ------------------------------------------------------------------ idle state
def test_between_requests() -> None:
    conn = RequestParser()
    assert conn.between_requests
    conn.receive_data(b"G")
    assert not conn.between_requests
    conn.receive_data(head(HOST)[1:] + head(HOST, b"Content-Length: 2", method=b"POST"))
    assert not conn.between_requests  # events still queued
    assert type(conn.next_event()) is Request and conn.next_event() is END
    assert type(conn.next_event()) is Request
    assert conn.next_event() is NEED_DATA
    assert not conn.between_requests  # waiting for a body
    conn.receive_data(b"h")
    conn.receive_data(b"i")
    assert conn.next_event() == b"h" and conn.next_event() == b"i" and conn.next_event() is END
    assert conn.between_requests
    assert conn.next_event() is NEED_DATA


# ------------------------------------------------------------------ unbounded heads
def fed_until_error(data: bytes, step: int) -> int:
    """Feed data step bytes at a time like a socket; return how much went in before the error showed."""
    conn = RequestParser()
    for fed in range(step, len(data) + step, step):
        conn.receive_data(data[fed - step:fed])
        ev = conn.next_event()
        while type(ev) is Request or type(ev) is bytes:
            ev = conn.next_event()
        if isinstance(ev, ProtocolError):
            assert conn.next_event() is ev
            return fed
    pytest.fail("no error")


@pytest.mark.parametrize(("prefix", "status"), [
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ", 431, id="endless-value-rfc6585-5"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n", 431, id="endless-name-rfc6585-5"),
    pytest.param(b"GET /", 414, id="endless-target-rfc9112-3"),
])
def test_endless_head_is_cut_off(prefix: bytes, status: int) -> None:
    data = prefix + b"v" * (100 * 1024)
    assert parse(data)[-1].status == status
    # Fed as a socket would, the error shows up within one read of the bound: memory stays bounded.
    assert fed_until_error(data, 1024) <= MAX_HEAD + 1024
    assert fed_until_error(data, 65536) <= MAX_HEAD + 65536


@pytest.mark.parametrize("tail", [b"X-T: ", b"X-T: 1\r\n", b""], ids=["value", "name", "field-name"])
def test_endless_trailer_section_is_cut_off(tail: bytes) -> None:
    """RFC 9112 7.1.2: the trailer section after the last chunk is bounded like a head (431)."""
    data = CHUNKED_POST + b"1\r\nx\r\n0\r\n" + tail
    data += b"v" * (200 * 1024)
    bound = len(data) - 200 * 1024 + Limits().max_header_bytes
    for step in (1, 1024, 65536):
        assert fed_until_error(data, step) <= bound + 2 * step
    events = normalize(run([data[i:i + 4096] for i in range(0, len(data), 4096)]))
    assert events[1:] == [Partial(b"x"), Err(431, "invalid_request_headers")]


def test_trailers_are_not_merged_into_headers() -> None:
    """RFC 9110 6.5.1: a trailer cannot smuggle Host, Content-Type or anything else into the head."""
    data = head(HOST, b"Transfer-Encoding: chunked", method=b"POST")
    data += b"2\r\nhi\r\n0\r\nHost: evil\r\nContent-Type: text/evil\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    events = parse(data)
    check(events, [R(headers=((b"Host", b"example.com"), (b"Transfer-Encoding", b"chunked")), host=None,
                     content_length=None), b"hi", END, NEED_DATA])


def test_trailing_whitespace_is_not_part_of_the_value() -> None:
    """RFC 9112 5.1: OWS after the value is excluded, so "100-continue " is still understood."""
    data = head(b"Host: a \t", b"Expect: 100-continue ", b"Content-Length: 1 ", method=b"POST") + b"x"
    check(parse(data), [R(expect_continue=True, content_length=1,
                          headers=((b"Host", b"a"), (b"Expect", b"100-continue"), (b"Content-Length", b"1"))),
                        b"x", END, NEED_DATA])


# ------------------------------------------------------------------ response side (RFC 9112 6, 9)
def request(data: bytes) -> Request:
    conn = RequestParser()
    conn.receive_data(data)
    ev = conn.next_event()
    assert type(ev) is Request
    return ev


GET11 = head(HOST)
GET10 = head(version=b"1.0")


Fields = dict[str, list[str]]


def respond(data: bytes, status: str = "200 OK", hdrs: list[tuple[str, str]] | None = None,
            keep_alive: bool = True, server: bool = True) -> tuple[bytes, ResponseFramer, Fields]:
    out, framer = response_head(request(data), status, hdrs or [], keep_alive=keep_alive, date=DATE,
                                server=server)
    assert out.startswith(b"HTTP/1.1 %s\r\n" % status.encode()) and out.endswith(b"\r\n\r\n")
    fields: Fields = {}
    for line in out.decode("latin-1").split("\r\n")[1:-2]:
        name, _, value = line.partition(": ")
        fields.setdefault(name.lower(), []).append(value)
    return out, framer, fields


def test_fixed_length_keep_alive_11() -> None:
    _, framer, fields = respond(GET11, hdrs=[("Content-Type", "text/plain"), ("Content-Length", "5")])
    assert fields["content-length"] == ["5"] and fields["content-type"] == ["text/plain"]
    assert "transfer-encoding" not in fields and "connection" not in fields  # 1.1 persists by default
    assert fields["date"] == [DATE.decode()] and fields["server"] == ["greenfork"]
    assert framer.frame(b"hel") + framer.frame(b"lo") == b"hello"
    assert framer.end() == b"" and framer.keep_alive


def test_chunked_when_no_length_11() -> None:
    """RFC 9112 7.1: chunk-size in hex, CRLF, data, CRLF; last-chunk 0 then an empty trailer section."""
    _, framer, fields = respond(GET11)
    assert fields["transfer-encoding"] == ["chunked"] and "content-length" not in fields
    assert framer.frame(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert framer.frame(b"") == b""  # an empty write must not end the body early
    assert framer.end() == b"0\r\n\r\n" and framer.keep_alive


def test_http10_without_length_is_close_delimited() -> None:
    """RFC 9112 6.3 (8): no chunked for 1.0; the close ends the body."""
    _, framer, fields = respond(GET10)
    assert fields["connection"] == ["close"] and "transfer-encoding" not in fields
    assert not framer.keep_alive and framer.frame(b"abc") == b"abc" and framer.end() == b""


def test_http10_keep_alive_with_length() -> None:
    _, framer, fields = respond(head(b"Connection: keep-alive", version=b"1.0"),
                                hdrs=[("Content-Length", "1")])
    assert fields["connection"] == ["keep-alive"] and framer.keep_alive


def test_head_keeps_length_but_frames_no_body() -> None:
    """RFC 9110 9.3.2: HEAD gets the GET headers and no content."""
    _, framer, fields = respond(head(HOST, method=b"HEAD"), hdrs=[("Content-Length", "10")])
    assert fields["content-length"] == ["10"]
    assert framer.frame(b"0123456789") == b"" and framer.end() == b"" and framer.keep_alive
    _, framer, fields = respond(head(HOST, method=b"HEAD"))
    assert "transfer-encoding" not in fields and framer.end() == b"" and framer.keep_alive


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_no_body_statuses(status: str) -> None:
    """RFC 9110 15.3.5, 15.4.5: never a body, never chunked."""
    _, framer, fields = respond(GET11, status)
    assert "transfer-encoding" not in fields
    assert framer.frame(b"oops") == b"" and framer.end() == b"" and framer.keep_alive


def test_app_hop_by_hop_headers() -> None:
    """PEP 3333 / RFC 9110 7.6.1: the server owns connection-level fields."""
    app_headers = [("Connection", "close"), ("Transfer-Encoding", "chunked"), ("Keep-Alive", "timeout=5"),
                   ("Upgrade", "h2c"), ("Trailer", "X"), ("Content-Length", "2"), ("X-App", "1")]
    _, framer, fields = respond(GET11, hdrs=app_headers)
    assert fields["connection"] == ["close"] and not framer.keep_alive
    for name in ("transfer-encoding", "keep-alive", "upgrade", "trailer"):
        assert name not in fields
    assert fields["x-app"] == ["1"] and fields["content-length"] == ["2"]
    _, framer, fields = respond(GET11, hdrs=[("Connection", "Keep-Alive"), ("Content-Length", "0")])
    assert "connection" not in fields and framer.keep_alive


def test_body_over_content_length_is_truncated() -> None:
    _, framer, _ = respond(GET11, hdrs=[("Content-Length", "3")])
    assert framer.frame(b"ab") == b"ab"
    assert framer.frame(b"cdef") == b"c"
    assert framer.frame(b"more") == b""
    assert not framer.keep_alive and framer.end() == b""


def test_body_under_content_length_closes() -> None:
    _, framer, _ = respond(GET11, hdrs=[("Content-Length", "3")])
    assert framer.frame(b"ab") == b"ab"
    assert framer.keep_alive
    assert framer.end() == b""
    assert not framer.keep_alive  # the client would wait for the missing byte


def test_draining_says_close() -> None:
    _, framer, fields = respond(GET11, hdrs=[("Content-Length", "0")], keep_alive=False)
    assert fields["connection"] == ["close"] and not framer.keep_alive


def test_request_close_says_close() -> None:
    _, framer, fields = respond(head(HOST, b"Connection: close"), hdrs=[("Content-Length", "0")])
    assert fields["connection"] == ["close"] and not framer.keep_alive


def test_server_header_optional() -> None:
    _, _, fields = respond(GET11, hdrs=[("Content-Length", "0")], server=False)
    assert "server" not in fields and fields["date"] == [DATE.decode()]


@pytest.mark.parametrize("status", [400, 408, 413, 414, 417, 431, 500, 501, 505, 599])
def test_error_response(status: int) -> None:
    out = error_response(status, DATE)
    head_part, sep, body = out.partition(b"\r\n\r\n")
    assert sep and out.startswith(b"HTTP/1.1 %d " % status)
    lines = head_part.split(b"\r\n")[1:]
    fields = dict(line.split(b": ", 1) for line in lines)
    assert int(fields[b"Content-Length"]) == len(body) > 0
    assert fields[b"Connection"] == b"close" and fields[b"Date"] == DATE
    assert body.startswith(b"%d " % status)


def test_error_response_never_echoes_the_request() -> None:
    bad = head(b"Host: <script>alert(1)</script>", target=b"/<script>", version=b"9.9")
    err = parse(bad)[-1]
    assert err == Err(505, "invalid_request_line")
    out = error_response(err.status, DATE)
    assert b"script" not in out and b"alert" not in out


def test_continue_bytes() -> None:
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"


# ---------------------------------------------------------- caches on the hot path
def test_host_cache_never_admits_an_invalid_host() -> None:
    """A valid Host is remembered; an invalid one, before or after it, is still a 400."""
    for host in (b"example.com", b"exa mple.com", b"example.com", b"[::1", b"example.com:80"):
        conn = RequestParser()
        conn.receive_data(head(b"Host: " + host))
        ev = conn.next_event()
        if host in (b"exa mple.com", b"[::1"):
            assert isinstance(ev, ProtocolError) and ev.status == 400, host
        else:
            assert type(ev) is Request, host


def test_long_method_counts_toward_the_request_line_limit() -> None:
    """The request-line bound counts the method even when the target alone fits."""
    limits = Limits(max_request_line=64)
    ok = RequestParser(limits)
    target = b"/" + b"a" * (64 - len(b"GET  HTTP/1.1\r\n") - 1)
    ok.receive_data(head(HOST, target=target))
    assert type(ok.next_event()) is Request
    long = RequestParser(limits)
    long.receive_data(head(HOST, method=b"PROPPATCH", target=target))
    ev = long.next_event()
    assert isinstance(ev, ProtocolError) and ev.status == 414


@pytest.mark.parametrize("value", ["1_3", " 13", "+13", "-1", "13 ", "", "\u0661\u0663"])
def test_invalid_content_length_from_the_app_is_refused(value: str) -> None:
    """int() takes these, the wire must not: the app's error, never a bad head on the wire."""
    with pytest.raises(ValueError):
        respond(GET11, hdrs=[("Content-Length", value)])


def test_cached_header_lines_give_the_same_head() -> None:
    hdrs = [("Content-Type", "text/plain"), ("Content-Length", "5"), ("Connection", "close"),
            ("Keep-Alive", "timeout=5")]
    first = respond(GET11, hdrs=hdrs)
    again = respond(GET11, hdrs=list(hdrs))
    assert first[0] == again[0] and first[2] == again[2]
    assert first[2]["connection"] == ["close"] and "keep-alive" not in first[2]
    assert not first[1].keep_alive and not again[1].keep_alive


def test_http_name_check_survives_pipelining_and_bodies() -> None:
    """The protocol name is checked on each request line, wherever it falls in the stream."""
    body = b"GET / RTSP/1.0\r\nHost: a\r\n\r\n"
    data = (head(HOST, b"Content-Length: %d" % len(body), method=b"POST") + body
            + head(HOST, target=b"/2") + b"GET /3 RTSP/1.0\r\nHost: a\r\n\r\n")
    events = parse(data)
    assert [type(e) for e in events] == [Req, bytes, type(END), Req, type(END), Err]
    assert events[1] == body  # a body is a body


def test_an_upgrade_keeps_the_bytes_after_its_head() -> None:
    data = head(HOST, b"Upgrade: websocket", b"Connection: upgrade") + b"\x81\x05hello"
    for pieces in ([data], [data[i:i + 1] for i in range(len(data))]):
        conn = RequestParser()
        for piece in pieces:
            conn.receive_data(piece)
        req = conn.next_event()
        assert type(req) is Request and req.upgrade and not req.keep_alive
        assert conn.next_event() is END and conn.next_event() is CLOSED
        assert conn.upgrade_data == b"\x81\x05hello"

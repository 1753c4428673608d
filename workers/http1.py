"""HTTP/1.1 requests, sans-IO: bytes in, events out (responses: response.py; the
connection's rules over both: h1proto.py).

Nothing here touches a socket, a clock or gevent, so it is tested by feeding
bytes whole and one at a time. Heads and Content-Length bodies are parsed by
llhttp (via httptools), strict: it rejects Content-Length with Transfer-Encoding,
duplicate lengths, obs-fold and bare CR/LF. Chunked bodies are decoded by
chunked.py. On top we add what llhttp does not do: bounds on the request head
and body, Host rules, HTTP as the only protocol name, and an answer to a request
line without a version.

Events from RequestParser.next_event():
  Request        a request head; set_body_limit() may follow, before the next next_event()
  bytes          a piece of the current request's body (never empty)
  END            the current request's body is complete
  ProtocolError  the input is malformed; answer err.status (if any) and close
  NEED_DATA      feed more with receive_data()
  CLOSED         the peer closed cleanly between requests
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

import httptools

from greenfork.workers.chunked import ChunkedDecoder, ChunkError


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Sentinel("NEED_DATA")
END: Final = _Sentinel("END")
CLOSED: Final = _Sentinel("CLOSED")


@dataclass(frozen=True, slots=True)
class Limits:
    """Kestrel's defaults. max_request_line counts method, target, version and CRLF.
    max_body (None: no limit) is the default for each request; it is checked when the
    consumer first asks for the body (Content-Length up front, then bytes as they are
    delivered), so set_body_limit() can change it for one request before that."""

    max_request_line: int = 8192
    max_headers: int = 100
    max_header_bytes: int = 32768
    max_body: int | None = 30_000_000


DEFAULT_LIMITS: Final = Limits()


class ProtocolError(Exception):
    """Malformed or over-limit input. status 0 means close without answering."""

    def __init__(self, status: int, error_type: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error_type = error_type
        self.detail = detail


class Request:
    __slots__ = ("chunked", "content_length", "expect_continue", "headers", "host", "keep_alive",
                 "method", "path", "query", "target", "upgrade", "version")

    def __init__(self) -> None:
        self.method = "GET"
        self.target = b""
        self.path = b""
        self.query = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.expect_continue = False
        self.content_length: int | None = None
        self.chunked = False
        self.host: bytes | None = None  # from an absolute-form target, which wins over Host (RFC 9112 3.2.2)
        self.upgrade = False

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target!r} HTTP/{self.version}>"


_HEAD, _BODY, _DONE = 0, 1, 2  # per-message parse state
# How the bytes after a head are framed: llhttp parses heads and Content-Length bodies,
# chunked bodies are ours (chunked.py); after an upgrade nothing is parsed any more.
_M_HEAD, _M_LENGTH, _M_CHUNKED, _M_UPGRADED = 0, 1, 2, 3
_CRLF2 = b"\r\n\r\n"
# llhttp also parses RTSP/1.x and ICE/1.x request lines: with these methods the
# protocol name must be checked (the others it accepts only with HTTP, or only with RTSP).
_SHARED_METHODS = frozenset({"GET", "POST", "OPTIONS", "SOURCE"})
_RTSP_METHODS = frozenset({"DESCRIBE", "ANNOUNCE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER",
                           "SET_PARAMETER", "REDIRECT", "RECORD", "FLUSH"})
_CHUNK_END = b"0\r\n\r\n"


class RequestParser:
    """One connection's request parser. Feed bytes with receive_data(); pull events.

    Heads are cut out of the byte stream here (at their blank line) and fed to llhttp
    one at a time, so that the bytes after a head are known exactly: a Content-Length
    body goes to llhttp, a chunked one to ChunkedDecoder, and an upgrade's bytes to
    whoever takes the connection over.
    """

    __slots__ = ("_body_limit", "_check_pending", "_chunked", "_closed", "_cur_head", "_delivered",
                 "_delivering", "_error", "_events", "_head_len", "_head_parts", "_header_bytes",
                 "_header_count", "_limits", "_max_head", "_mode", "_parser", "_remaining", "_req", "_state",
                 "_tail", "_url", "_url_len", "upgrade_data")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[object] = deque()
        self._state = _DONE
        self._mode = _M_HEAD
        self._req: Request | None = None
        self._url: list[bytes] = []
        self._url_len = 0
        self._max_head = limits.max_request_line + limits.max_header_bytes + 4
        self._head_parts: list[bytes] = []  # an incomplete head's bytes so far
        self._head_len = 0
        self._tail = b""  # the last 3 bytes of _head_parts: the blank line may straddle reads
        self._cur_head = b""  # the (last piece of the) head being fed, for checks of its request line
        self._header_count = 0
        self._header_bytes = 0
        self._remaining = 0  # Content-Length body bytes still to come
        self._chunked: ChunkedDecoder | None = None
        self._error: ProtocolError | None = None
        self._closed = False
        self.upgrade_data = b""  # bytes after an upgrade's head (for whoever takes the connection)
        # Delivery side: the body limit applies to what the consumer is handed, not to what
        # has been parsed, because a head and its body often arrive in one read, before the
        # consumer could change the limit. Memory stays bounded: the consumer feeds more only
        # once the queue is empty.
        self._delivering: Request | None = None  # the last Request handed out
        self._check_pending = False  # its Content-Length is not yet checked against the limit
        self._body_limit: int | None = limits.max_body
        self._delivered = 0

    # ------------------------------------------------------------ input side
    def receive_data(self, data: bytes) -> None:
        """Feed what the socket gave; b"" is the peer's EOF."""
        if self._error is not None or self._closed:
            return
        if not data:
            self._eof()
            return
        pos, end = 0, len(data)
        while pos < end and self._error is None:
            mode = self._mode
            if mode == _M_HEAD:
                pos = self._feed_head(data, pos)
            elif mode == _M_LENGTH:
                take = min(self._remaining, end - pos)
                self._remaining -= take
                self._feed(data if take == end else memoryview(data)[pos:pos + take])
                pos += take
            elif mode == _M_CHUNKED:
                pos = self._feed_chunked(data, pos)
            else:
                self.upgrade_data += data[pos:]
                return

    def _eof(self) -> None:
        self._closed = True
        if self._mode == _M_UPGRADED:
            return
        if self._state == _DONE and not self._head_len:
            self._events.append(CLOSED)
        elif self._state == _BODY:
            # RFC 9112 8: a message cut short by a close is incomplete; nothing to answer.
            self._fail(ProtocolError(0, "unexpected_end_of_request_content", "EOF inside the body"))
        else:
            self._fail(ProtocolError(0, "invalid_request_headers", "EOF inside the request head"))

    def _feed_head(self, data: bytes, pos: int) -> int:
        """Feed llhttp up to the end of the next head (or all of data if it does not end here)."""
        start = pos
        parts = self._head_parts
        if parts:
            # the blank line may straddle reads
            tail = self._tail
            k = (tail + data[pos:pos + 3]).find(_CRLF2)
            stop = pos + k + 4 - len(tail) if k >= 0 else -1
        else:
            pos = _skip_empty_lines(data, pos)  # before a request (RFC 9112 2.2)
            stop = -1
        if stop < 0:
            k = data.find(_CRLF2, pos)
            stop = k + 4 if k >= 0 else -1
        if stop < 0:
            piece = data[start:] if start else data
            self._cur_head = b""
            parts.append(piece)
            self._tail = (self._tail + piece)[-3:]
            self._head_len += len(piece)
            self._feed(piece)
            if self._error is None:
                self._incomplete_head(piece)
            return len(data)
        piece = data if not start and stop == len(data) else data[start:stop]
        self._head_len += len(piece)
        self._cur_head = piece
        self._feed(piece)
        return stop

    def _incomplete_head(self, piece: bytes) -> None:
        # A head that never completes must not grow without bound.
        if self._head_len > self._max_head:
            if self._state == _HEAD and self._req is not None and not self._header_count:
                self._fail(ProtocolError(414, "invalid_request_line", "request line too long"))
            else:
                self._fail(ProtocolError(431, "invalid_request_headers", "request head too large"))
        elif b"\n" in piece and not self._header_count and self._state == _HEAD:
            # An HTTP/0.9 request line ("GET /" CRLF, no version) leaves llhttp waiting
            # for header fields that will never come: answer it now.
            err = self._http09()
            if err is not None:
                self._fail(err)

    @staticmethod
    def _request_line(head: bytes) -> bytes | None:
        s = _skip_empty_lines(head, 0)
        nl = head.find(b"\n", s)
        return None if nl < 0 else head[s:nl].rstrip(b"\r")

    def _http09(self) -> ProtocolError | None:
        """The error for a head whose request line has no version, once that line is complete
        (llhttp has taken a method and a target from it)."""
        if not self._url:
            return None
        line = self._request_line(self._head())
        if line is not None and line.count(b" ") < 2:
            return ProtocolError(400, "invalid_request_line", "no HTTP version (HTTP/0.9)")
        return None

    def _feed_chunked(self, data: bytes, pos: int) -> int:
        dec = self._chunked
        assert dec is not None
        out: list[bytes] = []
        try:
            pos = dec.feed(data, pos, out)
        except ChunkError as e:
            self._events.extend(out)
            self._fail(ProtocolError(e.status, e.error_type, e.detail))
            return len(data)
        self._events.extend(out)
        if dec.done:
            self._chunked = None
            self._mode = _M_HEAD
            self._feed(_CHUNK_END)  # llhttp waits in the body: its message ends here too (END)
        return pos

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The head asked for another protocol (Upgrade, CONNECT): nothing after it is
            # HTTP/1.1 any more. The request is served; what follows is kept for a hand-off.
            if self._req is not None:
                self._req.keep_alive = False
            self._mode = _M_UPGRADED
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            self._head_failed(cause if isinstance(cause, ProtocolError) else
                              ProtocolError(400, "_OTHER", f"parser callback failed: {cause!r}"))
        except httptools.HttpParserInvalidMethodError:
            self._head_failed(ProtocolError(501, "invalid_request_line", "unknown method"))
        except httptools.HttpParserInvalidURLError:
            self._head_failed(ProtocolError(400, "invalid_request_line", "invalid request target"))
        except httptools.HttpParserError as e:
            self._head_failed(_classify(str(e), self._state))

    def _head_failed(self, err: ProtocolError) -> None:
        # However the head was cut into reads, a request line without a version is
        # diagnosed as such: a later piece of it may fail for another reason first.
        if self._state == _HEAD:
            err = self._http09() or err
        self._fail(err)

    def next_event(self) -> object:
        if self._check_pending:
            self._check_content_length()
        if self._events:
            ev = self._events.popleft()
            t = type(ev)
            if t is bytes:
                self._delivered += len(ev)  # type: ignore[arg-type]
                if self._body_limit is not None and self._delivered > self._body_limit:
                    self._too_large("body over the limit")
                    return self._error
            elif t is Request:
                self._delivering = ev  # type: ignore[assignment]
                self._check_pending = True
                self._body_limit = self._limits.max_body
                self._delivered = 0
            return ev
        if self._error is not None:
            return self._error
        if self._closed or self._mode == _M_UPGRADED:
            return CLOSED
        return NEED_DATA

    def set_body_limit(self, limit: int | None) -> ProtocolError | None:
        """The body limit for the request just handed out (None: no limit); call it before
        the next next_event(). Returns the 413 error when Content-Length is already over it."""
        if not self._check_pending:
            raise RuntimeError("the request body is already being read")
        self._body_limit = limit
        return self._check_content_length()

    def _check_content_length(self) -> ProtocolError | None:
        self._check_pending = False
        req = self._delivering
        limit = self._body_limit
        if req is not None and limit is not None and req.content_length is not None and \
                req.content_length > limit:
            self._too_large(f"Content-Length {req.content_length} over the limit of {limit}")
            return self._error
        return None

    def _too_large(self, detail: str) -> None:
        # Nothing after this is delivered: the rest of the body, and any request pipelined
        # behind it, go unread, and the connection closes after the 413.
        self._events.clear()
        self._error = ProtocolError(413, "max_request_body_size_exceeded", detail)

    @property
    def body_limit(self) -> int | None:
        """The limit in force for the current request's body."""
        return self._body_limit

    def skip_end(self) -> bool:
        """For a request without a body: take its END if it is next (it is parsed
        with the head), so no drain is needed before the next request."""
        events = self._events
        if events and events[0] is END:
            events.popleft()
            return True
        return False

    @property
    def pending(self) -> bool:
        """Events are parsed and waiting (a pipelined request, say)."""
        return bool(self._events)

    @property
    def between_requests(self) -> bool:
        """No request is in progress: not even its first byte has arrived.
        Such a connection is idle (keep-alive timeout, closed when draining)."""
        return self._state == _DONE and not self._events and not self._head_len

    def _fail(self, err: ProtocolError) -> None:
        # Events already parsed stay in front: a complete pipelined request
        # before the bad one is still answered, then the error, then close.
        if self._error is None:
            self._error = err

    # ------------------------------------------------------ llhttp callbacks
    def on_message_begin(self) -> None:
        self._state = _HEAD
        self._req = Request()
        self._url.clear()
        self._url_len = 0
        self._header_count = 0
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._url_len += len(url)
        # method SP target SP HTTP/1.1 CRLF: the method is known by now, the version is 8 bytes
        # (no method llhttp knows is longer than 32, so most URLs skip asking for it)
        if self._url_len + 44 > self._limits.max_request_line and \
                self._url_len + len(self._parser.get_method()) + 12 > self._limits.max_request_line:
            raise ProtocolError(414, "invalid_request_line", "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self._req
        assert req is not None
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self._limits.max_headers:
            raise ProtocolError(431, "invalid_request_headers", "too many header fields")
        if self._header_bytes > self._limits.max_header_bytes:
            raise ProtocolError(431, "invalid_request_headers", "header fields too large")
        # llhttp drops the OWS before a value but keeps the OWS after it (RFC 9112 5.1: not part of it)
        req.headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        req = self._req
        assert req is not None
        p = self._parser
        raw_method = p.get_method()
        req.method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        req.version = p.get_http_version()
        if req.version != "1.1" and req.version != "1.0":
            if req.version == "0.9":
                line = self._request_line(self._head()) or b""
                if not line.endswith(b" HTTP/0.9"):  # llhttp says 0.9 for a line with no version
                    raise ProtocolError(400, "invalid_request_line", "no HTTP version (HTTP/0.9)")
            raise ProtocolError(505, "invalid_request_line", "unsupported HTTP version")
        if req.method in _SHARED_METHODS or req.method in _RTSP_METHODS:
            self._check_protocol_name(req.method)
        req.keep_alive = p.should_keep_alive()
        req.upgrade = p.should_upgrade()
        if req.upgrade:
            # Decided here, while the Request is still ours: by the time llhttp
            # reports the upgrade, the caller may already be answering it.
            req.keep_alive = False
        target = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        req.target = target
        if req.method == "CONNECT":
            self._absolute_form(req, target)  # only authority-form is valid (RFC 9112 3.2.3)
        elif target[:1] == b"/":
            path, _, query = target.partition(b"?")
            req.path, req.query = path, query
        elif target == b"*" and req.method == "OPTIONS":
            req.path = b"*"
        else:
            self._absolute_form(req, target)
        host_count = 0
        codings: list[bytes] = []
        for name, value in req.headers:
            lname = name.lower()
            if lname == b"host":
                host_count += 1
                if value not in _HOSTS_OK and not _valid_host(value):
                    raise ProtocolError(400, "invalid_request_headers", "invalid Host")
            elif lname == b"content-length":
                req.content_length = int(value)  # llhttp validated the digits and duplicates
            elif lname == b"transfer-encoding":
                codings += (c.strip().lower() for c in value.split(b","))
            elif lname == b"expect":
                if value.lower() != b"100-continue":
                    raise ProtocolError(417, "invalid_request_headers", "unsupported Expect")
                req.expect_continue = req.version == "1.1"
        if codings:
            # RFC 9112 6.1: chunked must be last (else the length is unknowable: 400);
            # any other coding we cannot decode (501).
            if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
                raise ProtocolError(400, "invalid_request_headers", "chunked is not the final coding")
            if len(codings) > 1:
                raise ProtocolError(501, "invalid_request_headers", "unsupported Transfer-Encoding")
            req.chunked = True
            if req.version == "1.0":
                req.keep_alive = False  # RFC 9112 6.1: framing is suspect; close after this message
        if host_count > 1 or (host_count == 0 and req.version == "1.1"):
            raise ProtocolError(400, "invalid_request_headers",
                                "missing Host" if host_count == 0 else "more than one Host")
        self._state = _BODY
        self._head_len = 0
        if self._head_parts:
            self._head_parts = []
            self._tail = b""
        if req.chunked:
            self._mode = _M_CHUNKED
            self._chunked = ChunkedDecoder(self._limits.max_header_bytes)
        elif req.content_length:
            self._mode = _M_LENGTH
            self._remaining = req.content_length
        self._events.append(req)

    def _head(self) -> bytes:
        """The bytes of the head being parsed (in llhttp's callbacks of its last piece)."""
        return b"".join(self._head_parts) + self._cur_head if self._head_parts else self._cur_head

    def _check_protocol_name(self, method: str) -> None:
        """RFC 9112 2.3: HTTP-name is "HTTP", case-sensitive. llhttp also takes RTSP/1.x
        (with GET, POST, OPTIONS and RTSP's own methods) and ICE/1.x (with SOURCE)."""
        if method in _RTSP_METHODS:
            raise ProtocolError(400, "invalid_request_line", "not an HTTP request line (RTSP)")
        head = self._head()
        s = 0
        while head.startswith(b"\r\n", s):
            s += 2
        nl = head.find(b"\r\n", s)
        if nl < 0 or head[nl - 8:nl - 3] != b"HTTP/":
            raise ProtocolError(400, "invalid_request_line", "not an HTTP request line")

    def _absolute_form(self, req: Request, target: bytes) -> None:
        if req.method == "CONNECT":
            # RFC 9112 3.2.3: authority-form, host:port. RFC 9110 9.3.6: an empty or invalid
            # port MUST be rejected, typically with 400. A valid one is still no tunnel: the
            # connection layer answers it (we are not a proxy).
            host, colon, port = target.rpartition(b":")
            if not colon or not host or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536 \
                    or b"/" in host or b"@" in host:
                raise ProtocolError(400, "invalid_request_line", "CONNECT needs host:port")
            req.path = target
            return
        try:
            url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            raise ProtocolError(400, "invalid_request_line", "invalid request target") from None
        # RFC 9110 4.2.1: an http(s) URI has a non-empty host; 4.2.4: userinfo is an error
        if url.schema not in (b"http", b"https") or not url.host or url.userinfo:
            raise ProtocolError(400, "invalid_request_line", "invalid request target")
        req.host = url.host if url.port is None else b"%s:%d" % (url.host, url.port)
        req.path = url.path or b"/"
        req.query = url.query or b""

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._state = _DONE
        self._mode = _M_HEAD
        self._req = None
        self._events.append(END)


# RFC 3986 reg-name, IPv4 and IP-literal characters, and ":" before a port
_HOST_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=[]:"


# Decoded once: nearly every request uses one of these.
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
# Host values already found valid (a client repeats its Host on every request); bounded.
_HOSTS_OK: set[bytes] = set()


def _valid_host(value: bytes) -> bool:
    """RFC 9112 3.2: Host = uri-host [ ":" port ]; an invalid one is a 400. Empty is valid
    (a client sends it when the target URI has no authority). Valid values are remembered."""
    if _host_syntax_ok(value):
        if len(_HOSTS_OK) >= 256:
            _HOSTS_OK.clear()
        _HOSTS_OK.add(value)
        return True
    return False


def _host_syntax_ok(value: bytes) -> bool:
    if value.translate(None, _HOST_CHARS):
        return False
    if value[:1] == b"[":
        end = value.find(b"]")
        if end < 0 or b"[" in value[1:] or b"]" in value[end + 1:]:
            return False
        host, rest = value[:end + 1], value[end + 1:]
        return not rest or (rest[:1] == b":" and rest[1:].isdigit())
    if b"[" in value or b"]" in value:
        return False
    host, colon, port = value.partition(b":")
    return not colon or (port.isdigit() and b":" not in port) or (not port and bool(host))


def _skip_empty_lines(data: bytes, pos: int) -> int:
    """Past the empty lines llhttp ignores before a request line (CRLF or a bare LF)."""
    while True:
        if data.startswith(b"\r\n", pos):
            pos += 2
        elif data.startswith(b"\n", pos):
            pos += 1
        else:
            return pos


def _classify(message: str, state: int) -> ProtocolError:
    """Map llhttp's error text to a status and a metrics error_type."""
    m = message.lower()
    if "version" in m:
        # "Expected CRLF after version" is a bare CR/LF, not an unsupported version: 400
        return ProtocolError(400 if "crlf" in m else 505, "invalid_request_line", message)
    if "transfer-encoding" in m or "transfer encoding" in m:
        return ProtocolError(501 if "unknown" in m else 400, "invalid_request_headers", message)
    if state == _BODY:
        return ProtocolError(400, "unexpected_end_of_request_content", message)
    if "method" in m or "url" in m or "request line" in m:
        return ProtocolError(400, "invalid_request_line", message)
    return ProtocolError(400, "invalid_request_headers", message)

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
# Who parses the bytes: llhttp (heads and Content-Length bodies), chunked.py (a chunked
# body), nobody (after an upgrade: they are kept for a hand-off).
_M_HEAD, _M_CHUNKED, _M_UPGRADED = 0, 1, 2
_CRLF2 = b"\r\n\r\n"
_VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}


class _TakeOver(Exception):
    """Raised in llhttp's headers callback to stop it at a chunked head: the body is ours."""


class RequestParser:
    """One connection's request parser. Feed bytes with receive_data(); pull events.

    llhttp parses each read whole (one call however many pipelined requests it holds);
    alongside, the end of every head is located in the read (its blank line, found from
    where the message began), so the bytes after a head are known exactly: the request
    line is checked there, a chunked body is taken away from llhttp (it stops at the head,
    and chunked.py decodes the rest), and an upgrade's bytes are kept for whoever takes the
    connection over.
    """

    __slots__ = ("_after_head", "_body_limit", "_check_pending", "_chunk_start", "_chunked", "_closed",
                 "_data", "_delivered", "_delivering", "_error", "_events", "_head_len", "_head_parts",
                 "_header_bytes", "_header_count", "_limits", "_line_checked", "_max_head", "_mode",
                 "_parser", "_req", "_scan", "_skip", "_state", "_tail", "_their_done", "_url", "_url_len",
                 "upgrade_data")

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
        # Where heads are in the read being parsed: it is _data; the next head starts at
        # _scan in it (after the bytes of earlier messages), unless it began in earlier
        # reads, whose bytes of it are in _head_parts.
        self._data = b""
        self._scan = 0
        # True: the next head starts after the first blank line at or after _scan (the end of
        # a head without a body is only searched for when a request follows it in the read)
        self._after_head = False
        self._skip = 0  # bytes of a Content-Length body still to come in later reads
        self._head_parts: list[bytes] = []
        self._head_len = 0
        self._tail = b""  # the last 3 bytes of _head_parts: the blank line may straddle reads
        self._chunk_start = 0  # where a chunked body starts in _data
        self._header_count = 0
        self._header_bytes = 0
        # the request line of the head being parsed was checked for a version (once complete)
        self._line_checked = False
        self._chunked: ChunkedDecoder | None = None
        self._error: ProtocolError | None = None
        self._closed = False
        self._their_done = True  # the body of the last Request handed out was delivered to its END
        self.upgrade_data = b""  # bytes after an upgrade's head (for whoever takes the connection)
        # Delivery side: the body limit applies to what the consumer is handed, not to what
        # has been parsed, because a head and its body often arrive in one read, before the
        # consumer could change the limit. Memory stays bounded: the consumer feeds more only
        # once the queue is empty.
        self._delivering: Request | None = None  # the last Request handed out
        self._check_pending = False  # its Content-Length is not yet checked against the limit
        self._body_limit: int | None = limits.max_body
        self._delivered = 0

    def release(self) -> None:
        """The connection is over: drop the llhttp parser. It holds this object's callbacks, a
        reference cycle per connection that only the cyclic collector would free otherwise (which
        cost about a tenth of a new-connection-per-request load). Nothing may be fed after this."""
        self._closed = True
        self._parser = _RELEASED

    # ------------------------------------------------------------ input side
    def receive_data(self, data: bytes) -> None:
        """Feed what the socket gave; b"" is the peer's EOF."""
        if self._error is not None or self._closed:
            return
        if not data:
            self._eof()
            return
        while True:
            mode = self._mode
            if mode == _M_CHUNKED:
                pos = self._feed_chunked(data, 0)
                if pos >= len(data) or self._error is not None:
                    return
                data = data[pos:]  # a request pipelined behind the chunked one
            elif mode == _M_UPGRADED:
                self.upgrade_data += data
                return
            skip = self._skip
            if skip:
                scan = min(skip, len(data))
                self._skip = skip - scan
            else:
                scan = 0
            self._data = data
            self._scan = scan
            self._after_head = False
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserCallbackError as e:
                if not isinstance(e.__context__, _TakeOver):
                    self._callback_failed(e.__context__)
                    return
                # the chunked body is ours from here on; llhttp starts afresh after it
                self._parser = httptools.HttpRequestParser(self)
                self._mode = _M_CHUNKED
                data = data[self._chunk_start:]
                if not data:
                    return
                continue
            except httptools.HttpParserUpgrade as e:
                # The head asked for another protocol (Upgrade, CONNECT): nothing after it is
                # HTTP/1.1 any more. The request is served; what follows is kept for a hand-off.
                if self._req is not None:
                    self._req.keep_alive = False
                self._mode = _M_UPGRADED
                self.upgrade_data = data[e.args[0]:] if e.args else b""
                return
            except httptools.HttpParserInvalidMethodError:
                self._head_failed(ProtocolError(501, "invalid_request_line", "unknown method"))
            except httptools.HttpParserInvalidURLError:
                self._head_failed(ProtocolError(400, "invalid_request_line", "invalid request target"))
            except httptools.HttpParserError as e:
                self._head_failed(_classify(str(e), self._state))
            if self._state == _HEAD and self._error is None:
                start = self._head_start()
                self._incomplete_head(data[start:] if start else data)
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

    def _incomplete_head(self, piece: bytes) -> None:
        """The read ended inside a head: keep its bytes, and bound it."""
        self._head_parts.append(piece)
        self._tail = (self._tail + piece)[-3:]
        self._head_len += len(piece)
        # A head that never completes must not grow without bound.
        if self._head_len > self._max_head:
            if self._req is not None and not self._header_count:
                self._fail(ProtocolError(414, "invalid_request_line", "request line too long"))
            else:
                self._fail(ProtocolError(431, "invalid_request_headers", "request head too large"))
        elif not self._line_checked and piece.find(b"\n") >= 0:  # (find: see _host_syntax_ok)
            # An HTTP/0.9 request line ("GET /" CRLF, no version) leaves llhttp waiting
            # for header fields that will never come: answer it now. Checked once, when the
            # line is complete, whatever llhttp parsed after it in the same read (header lines
            # or not): the verdict must not depend on where the reads were cut, and the head
            # is joined once, not per read of a client that sends a byte at a time.
            head = b"".join(self._head_parts)
            line = self._request_line(head)
            if line is not None:
                self._line_checked = True
                err = self._http09(head)
                if err is not None:
                    self._fail(err)

    def _head_start(self) -> int:
        """Where the head being parsed starts in the current read."""
        if self._after_head:
            self._scan = self._data.find(_CRLF2, self._scan) + 4
            self._after_head = False
        return self._scan

    def _head(self) -> bytes:
        """The bytes of the head being parsed (and possibly some after it)."""
        start = self._head_start()
        rest = self._data[start:] if start else self._data
        return b"".join(self._head_parts) + rest if self._head_parts else rest

    @staticmethod
    def _request_line(head: bytes) -> bytes | None:
        s = _skip_empty_lines(head, 0)
        nl = head.find(b"\n", s)
        return None if nl < 0 else head[s:nl].rstrip(b"\r")

    def _http09(self, head: bytes | None = None) -> ProtocolError | None:
        """The error for a head whose request line has no version, once that line is complete
        (llhttp has taken a method and a target from it)."""
        if not self._url:
            return None
        line = self._request_line(self._head() if head is None else head)
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
            self._state = _DONE
            self._req = None
            self._events.append(END)
        return pos

    def _callback_failed(self, cause: BaseException | None) -> None:
        self._head_failed(cause if isinstance(cause, ProtocolError) else
                          ProtocolError(400, "_OTHER", f"parser callback failed: {cause!r}"))

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
                    self._too_large(f"chunked body over the limit of {self._body_limit}")
                    return self._error
            elif t is Request:
                self._delivering = ev  # type: ignore[assignment]
                self._check_pending = True
                self._body_limit = self._limits.max_body
                self._delivered = 0
                self._their_done = False
                self._handed_out(ev)  # type: ignore[arg-type]
            elif ev is END:
                self._their_done = True
            return ev
        if self._error is not None:
            return self._error
        if self._closed or self._mode == _M_UPGRADED:
            return CLOSED
        return NEED_DATA

    def first_request(self) -> Request | None:
        """The next event if it is a request head, without handing it out: a step that runs
        before the connection's loop (issue 17's delegation) may route on it, and the loop
        then takes it as if nothing had looked."""
        events = self._events
        return events[0] if events and type(events[0]) is Request else None

    def _handed_out(self, req: Request) -> None:
        """A request head goes to the consumer (the connection's rules hang on this)."""

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

    def skip_end(self) -> bool:
        """For a request without a body: take its END if it is next (it is parsed
        with the head), so no drain is needed before the next request."""
        events = self._events
        if events and events[0] is END:
            events.popleft()
            self._their_done = True
            return True
        return False

    @property
    def pending(self) -> bool:
        """Events are parsed and waiting (a pipelined request, say)."""
        return bool(self._events)

    @property
    def failed(self) -> bool:
        """The input went wrong somewhere (the error waits behind any complete requests)."""
        return self._error is not None

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

    def _version(self, buf: bytes, start: int) -> str:
        """The request line's version where it is not at the usual place (llhttp also takes
        several spaces around the target), or the error for one that is not HTTP/1.x."""
        line = buf[start:buf.find(b"\n", start)].rstrip(b"\r")
        version = _VERSIONS.get(line[-8:])
        if version is not None and line[-9:-8] == b" ":
            return version
        if line[-9:-4] not in (b" HTTP", b"\tHTTP") and self._parser.get_http_version() != "0.9":
            raise ProtocolError(400, "invalid_request_line", "not an HTTP request line")
        if self._parser.get_http_version() == "0.9" and not line.endswith(b" HTTP/0.9"):
            # llhttp says 0.9 for a line with no version
            raise ProtocolError(400, "invalid_request_line", "no HTTP version (HTTP/0.9)")
        raise ProtocolError(505, "invalid_request_line", "unsupported HTTP version")

    def _split_head(self) -> tuple[bytes, int]:
        """A head that began in earlier reads: its bytes, and where it ends in this read
        (its blank line may straddle the reads)."""
        data = self._data
        k = (self._tail + data[:3]).find(_CRLF2)
        end = k + 4 - len(self._tail) if k >= 0 else data.find(_CRLF2) + 4
        return b"".join(self._head_parts) + data[:end], end

    def on_headers_complete(self) -> None:
        req = self._req
        assert req is not None
        p = self._parser
        raw_method = p.get_method()
        req.method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        # Where this head is: in buf, from start (its request line); its end in this read
        # is found only when something follows it (the next head, a body).
        if self._head_parts:
            buf, end = self._split_head()
            start = 0
        else:
            buf = self._data
            start = self._scan
            if self._after_head:  # after a head without a body, found now (see _head_start)
                start = buf.find(_CRLF2, start) + 4
                self._after_head = False
            end = -1
        first = buf[start]
        if first == 13 or first == 10:  # empty lines before the request line
            start = _skip_empty_lines(buf, start)
        # The protocol and version, read from the bytes (cheaper than llhttp's version
        # string) where they usually are: one SP each side of the target. Only "HTTP" is
        # HTTP (RFC 9112 2.3; llhttp also takes RTSP/1.x and ICE/1.x).
        pos = start + len(raw_method) + self._url_len + 2
        req.version = _VERSIONS.get(buf[pos:pos + 8]) or self._version(buf, start)
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
        if self._head_parts:  # (only a head in several reads was ever checked by _incomplete_head)
            self._head_parts = []
            self._tail = b""
            self._line_checked = False
        self._events.append(req)
        if not req.chunked and not req.content_length:
            if end < 0:
                self._scan = start
                self._after_head = True
            else:
                self._scan = end
            return
        if end < 0:
            end = buf.find(_CRLF2, start) + 4
        if req.chunked:
            self._chunked = ChunkedDecoder(self._limits.max_header_bytes)
            self._chunk_start = end
            raise _TakeOver()
        # the next request starts after this one's body, here or in a later read
        assert req.content_length is not None
        body_end = end + req.content_length
        size = len(self._data)
        if body_end <= size:
            self._scan = body_end
        else:
            self._scan = size
            self._skip = body_end - size

    def _absolute_form(self, req: Request, target: bytes) -> None:
        if req.method == "CONNECT":
            # RFC 9112 3.2.3: authority-form, host:port. RFC 9110 9.3.6: an empty or invalid
            # port MUST be rejected, typically with 400. A valid one is still no tunnel: the
            # connection layer answers it (we are not a proxy).
            host, colon, port = target.rpartition(b":")
            if not colon or not host or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536 \
                    or host.find(b"/") >= 0 or host.find(b"@") >= 0:
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
        self._req = None
        self._events.append(END)


# RFC 3986 reg-name, IPv4 and IP-literal characters, and ":" before a port
_HOST_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=[]:"


# What release() leaves in place of a connection's parser: one for all, bound to nothing.
_RELEASED = httptools.HttpRequestParser(object())

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
    # (find, not `in`: see wsgi.build_environ)
    if value.translate(None, _HOST_CHARS):
        return False
    if value[:1] == b"[":
        end = value.find(b"]")
        if end < 0 or value.find(b"[", 1) >= 0 or value.find(b"]", end + 1) >= 0:
            return False
        host, rest = value[:end + 1], value[end + 1:]
        return not rest or (rest[:1] == b":" and rest[1:].isdigit())
    if value.find(b"[") >= 0 or value.find(b"]") >= 0:
        return False
    host, colon, port = value.partition(b":")
    return not colon or (port.isdigit() and port.find(b":") < 0) or (not port and bool(host))


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

"""HTTP/1.1 responses, sans-IO: the head serialized, the body framed, as bytes.

The counterpart of http1.py (which parses requests): nothing here touches a socket
or a clock (the Date value is handed in), so it is tested by comparing bytes.
"""

from __future__ import annotations

from typing import Final

from greenfork.workers.http1 import Request

_NO_BODY_STATUS = frozenset({204, 304})
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                         "te", "trailer", "upgrade"})
_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
            414: "URI Too Long", 417: "Expectation Failed", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
            504: "Gateway Timeout", 505: "HTTP Version Not Supported"}
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class ResponseFramer:
    """Frames one response's body: fixed length, chunked, close-delimited or none."""

    __slots__ = ("body_bytes", "chunked", "keep_alive", "no_body", "remaining", "status")

    def __init__(self, chunked: bool, remaining: int | None, no_body: bool, keep_alive: bool,
                 status: int = 0) -> None:
        self.reset(chunked, remaining, no_body, keep_alive, status)

    def reset(self, chunked: bool, remaining: int | None, no_body: bool, keep_alive: bool,
              status: int = 0) -> None:
        """For the next response on the connection (one framer serves them all)."""
        self.status = status  # the response's status code
        self.body_bytes = 0  # body bytes framed so far (the access log's %(B)s)
        self.chunked = chunked
        self.remaining = remaining  # bytes still owed under Content-Length
        self.no_body = no_body
        self.keep_alive = keep_alive

    def frame(self, data: bytes) -> bytes:
        if self.no_body or not data:
            return b""
        if self.chunked:
            self.body_bytes += len(data)
            return b"%x\r\n%b\r\n" % (len(data), data)
        if self.remaining is not None:
            if len(data) > self.remaining:
                # The app wrote more than it declared: send what was promised and
                # close, so the excess is never read as the next response.
                data = data[: self.remaining]
                self.keep_alive = False
            self.remaining -= len(data)
        self.body_bytes += len(data)
        return data

    def end(self) -> bytes:
        if self.chunked and not self.no_body:
            return b"0\r\n\r\n"
        if self.remaining and not self.no_body:
            self.keep_alive = False  # short body: the client would wait for the rest
        return b""


# Encoded header lines and status lines, by value: an app sends the same few again and again.
# kind: a Content-Length's value (>= 0), or one of these. Bounded: cleared when full.
_PLAIN, _DROP, _CLOSE = -1, -2, -3
_LINES: dict[tuple[str, str], tuple[bytes, int]] = {}
_STATUS: dict[str, tuple[bytes, int]] = {}
_CACHE_MAX = 1024


def _header_line(item: tuple[str, str]) -> tuple[bytes, int]:
    name, value = item
    lname = name.lower()
    kind = _PLAIN
    if lname in _HOP_BY_HOP:
        # PEP 3333: the server owns hop-by-hop headers
        kind = _CLOSE if lname == "connection" and "close" in value.lower() else _DROP
    elif lname == "content-length":
        # int() would also take " 13", "+13" and "1_3", which must not reach the wire
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"invalid Content-Length {value!r} from the application")
        kind = int(value)
    hit = (b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")), kind)
    if len(_LINES) >= _CACHE_MAX:
        _LINES.clear()
    _LINES[item] = hit
    return hit


def _status_line(status: str) -> tuple[bytes, int]:
    hit = (b"HTTP/1.1 %s\r\n" % status.encode("latin-1"), int(status[:3]))
    if len(_STATUS) >= _CACHE_MAX:
        _STATUS.clear()
    _STATUS[status] = hit
    return hit


def response_head(req: Request, status: str, headers: list[tuple[str, str]], *, keep_alive: bool, date: bytes,
                  server: bool, framer: ResponseFramer | None = None) -> tuple[bytes, ResponseFramer]:
    """Serialize the status line and headers; decide framing and persistence (in framer,
    reset, when one is given).

    keep_alive is the server's wish (False while draining); the request and
    the app's headers can only turn it off.
    """
    line, code = _STATUS.get(status) or _status_line(status)
    no_body = req.method == "HEAD" or code in _NO_BODY_STATUS or code < 200
    keep_alive = keep_alive and req.keep_alive
    length: int | None = None
    out = [line]
    lines = _LINES
    for item in headers:
        line, kind = lines.get(item) or _header_line(item)
        if kind == _PLAIN:
            out.append(line)
        elif kind >= 0:
            length = kind
            out.append(line)
        elif kind == _CLOSE:
            keep_alive = False
    chunked = False
    if length is None and not no_body:
        if req.version == "1.1":
            chunked = True
            out.append(b"Transfer-Encoding: chunked\r\n")
        else:
            keep_alive = False  # HTTP/1.0 without a length: the close ends the body
    if keep_alive:
        if req.version == "1.0":
            out.append(b"Connection: keep-alive\r\n")
    else:
        out.append(b"Connection: close\r\n")
    out += (b"Date: ", date, b"\r\nServer: greenfork\r\n\r\n" if server else b"\r\n\r\n")
    remaining = None if (chunked or no_body) else length
    if framer is None:
        return b"".join(out), ResponseFramer(chunked, remaining, no_body, keep_alive, code)
    framer.reset(chunked, remaining, no_body, keep_alive, code)
    return b"".join(out), framer


def error_response(status: int, date: bytes, server: bool = True, body: bytes = b"") -> bytes:
    """A tiny fixed answer for a request we reject; never echoes the input."""
    reason = _REASONS.get(status, "Error").encode()
    body = body or b"%d %b\n" % (status, reason)
    return b"HTTP/1.1 %d %b\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n" \
           b"Date: %b\r\n%b\r\n%b" % (status, reason, len(body), date,
                                       b"Server: greenfork\r\n" if server else b"", body)


# ------------------------------------------- pre-serialized heads (the response cache's fast path)
def fixed_head(status: str, headers: tuple[tuple[str, str], ...] | list[tuple[str, str]]) \
        -> tuple[bytes, int, int] | None:
    """The status line and header lines exactly as response_head() writes them, for a response
    whose framing cannot depend on the request: (bytes, status code, Content-Length). None when
    response_head() would drop or act on a field (hop-by-hop, Connection), when there is no
    Content-Length, or for a status without a body: such a response takes the ordinary path."""
    line, code = _STATUS.get(status) or _status_line(status)
    if code in _NO_BODY_STATUS or code < 200:
        return None
    out = [line]
    length = -1
    for item in headers:
        line, kind = _LINES.get(item) or _header_line(item)
        if kind == _PLAIN:
            out.append(line)
        elif kind >= 0 and length < 0:
            length = kind
            out.append(line)
        else:
            return None  # a second Content-Length, or a field the connection acts on
    if length < 0:
        return None
    return b"".join(out), code, length


def head_end(keep_alive: bool, version: str, date: bytes, server: bool) -> bytes:
    """What response_head() writes after the header fields of a response with a Content-Length:
    the Connection field the persistence needs, Date, Server and the blank line."""
    if keep_alive:
        conn = b"Connection: keep-alive\r\n" if version == "1.0" else b""
    else:
        conn = b"Connection: close\r\n"
    return b"%bDate: %b%b" % (conn, date, b"\r\nServer: greenfork\r\n\r\n" if server else b"\r\n\r\n")

"""HTTP/2 requests and response heads, sans-IO: header lists in, Request out; WSGI headers in,
header lists out.

A request's header list (decoded by h2 from HPACK) becomes the same `Request` HTTP/1.1's
parser makes, so the request stage treats both alike; the rules are RFC 9113's, applied
here because h2's own checks raise connection errors where the RFC asks for stream errors:

- 8.2.1: field names are lowercase tokens (no controls, SP, uppercase, DEL or non-ASCII,
  no colon but a pseudo-header's first byte); values carry no NUL, CR or LF and neither
  start nor end with SP or HTAB.
- 8.2.2: no connection-specific field (Connection, Keep-Alive, Proxy-Connection,
  Transfer-Encoding, Upgrade); TE only as "trailers".
- 8.3: pseudo-headers come first, once each, and only the request's four (:protocol
  belongs to extended CONNECT, which we do not offer).
- 8.3.1: :method, :scheme and :path are present (only :method and :authority for
  CONNECT); :path is non-empty and, for http and https, starts with "/" or is "*"
  (OPTIONS); :authority has no userinfo, and a Host field that disagrees with it makes
  the request malformed.

A malformed request is a stream error (PROTOCOL_ERROR, 8.1.1): `Rejected` with status 0.
The limits HTTP/1.1 has are answered as HTTP/1.1 answers them: 431 for too many or too
large header fields (and one field past --http2-max-request-header-field-size), 414 for
a request line (method and :path) past --max-request-line-size, 400 for a bad Host, 417
for an Expect we do not know.
"""

from __future__ import annotations

from typing import Final

from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from greenfork.workers.h2proto import H2Limits, ServerConnection
from greenfork.workers.http1 import _HOSTS_OK, Request, _valid_host  # Host syntax, shared with HTTP/1.1

_PSEUDO: Final = {b":method": 0, b":scheme": 1, b":authority": 2, b":path": 3}
_CONNECTION, _TE, _HOST, _LENGTH, _EXPECT = range(5)
# The fields with a rule of their own (RFC 9113 8.2.2's connection-specific ones among them)
_SPECIAL: Final = {b"connection": _CONNECTION, b"keep-alive": _CONNECTION, b"proxy-connection": _CONNECTION,
                   b"transfer-encoding": _CONNECTION, b"upgrade": _CONNECTION, b"te": _TE, b"host": _HOST,
                   b"content-length": _LENGTH, b"expect": _EXPECT}
_NAME_CHARS: Final = bytes(c for c in range(0x21, 0x7F) if not 0x41 <= c <= 0x5A and c != 0x3A)
_TOKEN: Final = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_METHODS: Final = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
# Fields already found valid (a client sends the same few on every request; HPACK hands back
# the same objects from its tables); bounded.
_CHECKED: set[tuple[bytes, bytes]] = set()


class Rejected:
    """A request we do not serve: status 0 resets the stream (PROTOCOL_ERROR, malformed),
    else the stream is answered with that status."""

    __slots__ = ("detail", "error_type", "status")

    def __init__(self, status: int, error_type: str, detail: str) -> None:
        self.status = status
        self.error_type = error_type
        self.detail = detail

    def __repr__(self) -> str:
        return f"<Rejected {self.status} {self.error_type}: {self.detail}>"


def _malformed(detail: str) -> Rejected:
    return Rejected(0, "invalid_request_headers", detail)


def _field_ok(name: bytes, value: bytes) -> bool:
    if not name or name.translate(None, _NAME_CHARS):
        return False
    # (find, not `in`: see wsgi.build_environ)
    if value.find(b"\0") >= 0 or value.find(b"\r") >= 0 or value.find(b"\n") >= 0:
        return False
    return not value or (value[0] not in (0x20, 0x09) and value[-1] not in (0x20, 0x09))


def parse_request(headers: list[tuple[bytes, bytes]], limits: H2Limits) -> Request | Rejected:
    """The Request of a complete request header list, or why it is not served."""
    pseudo: list[bytes | None] = [None, None, None, None]  # :method, :scheme, :authority, :path
    fields: list[tuple[bytes, bytes]] = []
    size = 0
    host: bytes | None = None
    hosts = 0
    content_length: int | None = None
    expect = False
    checked = _CHECKED
    for item in headers:
        name, value = item
        if name[:1] == b":":
            i = _PSEUDO.get(name)
            if i is None:
                return _malformed(f"unknown pseudo-header {name!r}")
            if fields:
                return _malformed("a pseudo-header after a regular field")
            if pseudo[i] is not None:
                return _malformed(f"two {name.decode('latin-1')}")
            if item not in checked:
                if value.find(b"\0") >= 0 or value.find(b"\r") >= 0 or value.find(b"\n") >= 0:
                    return _malformed(f"invalid {name.decode('latin-1')}")
                if i != 3:  # (:path: no point remembering those)
                    checked.add(item)
            pseudo[i] = value
            continue
        size += len(name) + len(value) + 4  # counted as HTTP/1.1 counts a header line
        if item not in checked:
            if not _field_ok(name, value):
                return _malformed(f"invalid header field {name[:64]!r}")
            field_max = limits.max_header_field_size
            if len(name) > field_max or len(value) > field_max:
                return Rejected(431, "invalid_request_headers", "a header field is too large")
            if len(checked) >= 1024:
                checked.clear()
            checked.add(item)
        special = _SPECIAL.get(name)
        if special is not None:
            if special == _CONNECTION:
                return _malformed(f"connection-specific field {name.decode('latin-1')}")
            if special == _TE:
                if value.lower() != b"trailers":
                    return _malformed("TE other than trailers")
            elif special == _HOST:
                hosts += 1
                host = value
            elif special == _LENGTH:
                # (h2 has checked this already, and that repeats agree; the rule holds here alone too)
                if not value.isdigit() or (content_length is not None and int(value) != content_length):
                    return _malformed("invalid content-length")
                content_length = int(value)
            elif value.lower() != b"100-continue":  # Expect
                return Rejected(417, "invalid_request_headers", "unsupported Expect")
            else:
                expect = True
        fields.append(item)
    method, scheme, authority, path = pseudo
    count = len(fields)
    if method is None:
        return _malformed("no :method")
    if count > limits.max_header_count:
        return Rejected(431, "invalid_request_headers", "too many header fields")
    if size > limits.max_header_list_size:
        return Rejected(431, "invalid_request_headers", "header fields too large")
    req = Request()
    req.version = "2"
    req.headers = fields
    text = _METHODS.get(method)
    if text is None:
        if not method or method.translate(None, _TOKEN):
            return _malformed("invalid :method")
        text = method.decode("ascii")
    req.method = text
    if authority is not None:
        if authority.find(b"@") >= 0:  # (find: see _field_ok)
            return _malformed("userinfo in :authority")
        if authority not in _HOSTS_OK and not _valid_host(authority):
            return Rejected(400, "invalid_request_headers", "invalid :authority")
        if host is not None and host != authority:
            return _malformed("Host disagrees with :authority")
        req.host = authority
    if hosts > 1:
        return Rejected(400, "invalid_request_headers", "more than one Host")
    if host is not None and authority is None and host not in _HOSTS_OK and not _valid_host(host):
        return Rejected(400, "invalid_request_headers", "invalid Host")
    if text == "CONNECT":
        if scheme is not None or path is not None:
            # extended CONNECT (RFC 8441) would carry :protocol, which is not offered
            return _malformed("CONNECT with :scheme or :path")
        if authority is None:
            return _malformed("CONNECT without :authority")
        req.target = req.path = authority  # the request stage answers CONNECT itself (405)
        req.content_length = content_length
        req.expect_continue = expect
        return req
    if scheme is None or path is None:
        return _malformed("no :scheme" if scheme is None else "no :path")
    if not path:
        return _malformed("empty :path")
    if len(method) + len(path) + 12 > limits.max_request_line:
        return Rejected(414, "invalid_request_line", "request line too long")
    if scheme in (b"http", b"https"):
        if path[0] != 0x2F and (path != b"*" or text != "OPTIONS"):  # "/..." or "*" (OPTIONS)
            return _malformed("a :path that is not absolute")
    elif not scheme or scheme.translate(None, _TOKEN):
        return _malformed("invalid :scheme")
    else:
        return Rejected(400, "invalid_request_line", f"unsupported scheme {scheme[:32]!r}")
    if path.find(b" ") >= 0 or path.find(b"\t") >= 0 or path.find(b"#") >= 0:  # (find: see _field_ok)
        return Rejected(400, "invalid_request_line", "invalid request target")
    req.target = path
    req.path, _, req.query = path.partition(b"?")
    req.content_length = content_length
    req.expect_continue = expect
    return req


# ------------------------------------------------------------------ responses
_NO_BODY_STATUS: Final = frozenset({204, 304})
# Connection-specific fields (RFC 9113 8.2.2) and the HTTP/1.1 framing the server owns (PEP
# 3333), as response.py drops them for HTTP/1.1.
_DROP: Final = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
                          "trailer", "upgrade"})
_PLAIN, _DROPPED = -1, -2
_FIELDS: dict[tuple[str, str], tuple[tuple[bytes, bytes], int]] = {}
_STATUS: dict[str, tuple[tuple[bytes, bytes], int]] = {}
_CACHE_MAX = 1024
_SERVER: Final = (b"server", b"greenfork")
_REASONS: Final = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
                   417: "Expectation Failed", 431: "Request Header Fields Too Large",
                   500: "Internal Server Error", 503: "Service Unavailable", 504: "Gateway Timeout"}


def _field(item: tuple[str, str]) -> tuple[tuple[bytes, bytes], int]:
    name, value = item
    lname = name.lower()
    kind = _PLAIN
    if lname in _DROP:
        kind = _DROPPED
    elif lname == "content-length":
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"invalid Content-Length {value!r} from the application")
        kind = int(value)
    raw = lname.encode("latin-1")
    if not raw or raw.translate(None, _NAME_CHARS):
        raise ValueError(f"header name {name!r} is not a token")
    data = value.strip(" \t").encode("latin-1")  # RFC 9113 8.2.1: no whitespace at either end
    if data.find(b"\0") >= 0:  # (find: see _field_ok)
        raise ValueError(f"header {name!r} contains a NUL")
    hit = ((raw, data), kind)
    if len(_FIELDS) >= _CACHE_MAX:
        _FIELDS.clear()
    _FIELDS[item] = hit
    return hit


def _status(status: str) -> tuple[tuple[bytes, bytes], int]:
    code = int(status[:3])
    hit = ((b":status", status[:3].encode("ascii")), code)
    if len(_STATUS) >= _CACHE_MAX:
        _STATUS.clear()
    _STATUS[status] = hit
    return hit


def response_head(status: str, headers: list[tuple[str, str]], *, date: bytes,
                  server: bool) -> tuple[list[tuple[bytes, bytes]], int, int | None]:
    """The HTTP/2 header list of a WSGI response (status line and headers as start_response
    checked them), its status code, and its Content-Length (None if it has none)."""
    first, code = _STATUS.get(status) or _status(status)
    out = [first]
    length: int | None = None
    fields = _FIELDS
    for item in headers:
        field, kind = fields.get(item) or _field(item)
        if kind == _PLAIN:
            out.append(field)
        elif kind >= 0:
            length = kind
            out.append(field)
    out.append((b"date", date))
    if server:
        out.append(_SERVER)
    return out, code, length


def has_body(method: str, code: int) -> bool:
    return method != "HEAD" and code not in _NO_BODY_STATUS and code >= 200


def error_head(status: int, date: bytes, server: bool) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """A small fixed answer to a request we refuse (never echoing it): header list and body."""
    body = b"%d %s\n" % (status, _REASONS.get(status, "Error").encode("ascii"))
    head = [(b":status", b"%d" % status), (b"content-type", b"text/plain"),
            (b"content-length", b"%d" % len(body)), (b"date", date)]
    if server:
        head.append(_SERVER)
    return head, body


def answer_rejected(h2: ServerConnection, sid: int, rej: Rejected, ended: bool, date: bytes,
                    server: bool) -> None:
    """A request not served: reset if malformed, else answered with its status (its small body
    when the stream's window has room for it, none otherwise: never a wait)."""
    try:
        if rej.status:
            head, body = error_head(rej.status, date, server)
            if h2.local_flow_control_window(sid) >= len(body):
                h2.send_headers(sid, head)
                h2.send_data(sid, body, end_stream=True)
            else:
                h2.send_headers(sid, [*head[:2], (b"content-length", b"0"), *head[3:]], end_stream=True)
            if not ended:
                h2.reset_stream(sid, ErrorCodes.NO_ERROR)  # RFC 9113 8.1: no need to send the rest
        else:
            h2.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
    except H2Error:
        pass  # the stream is gone already (reset by the client in the same read, say)

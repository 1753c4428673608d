"""PEP 3333 pieces: the environ, wsgi.input, start_response and file_wrapper.

Free of sockets: the request stage (request.py) hands in a pull() for body bytes
and a write() for response bytes, so these are tested without a network.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any, Protocol
from urllib.parse import unquote_to_bytes

from greenfork.workers.http1 import Request

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

# Header names seen on nearly every request, mapped once instead of per request.
_HEADER_KEYS: dict[bytes, str] = {}


def header_key(name: bytes) -> str | None:
    key = _HEADER_KEYS.get(name)
    if key is None:
        text = name.decode("latin-1")
        if "_" in text:
            # "X_Forwarded_For" and "X-Forwarded-For" would both become
            # HTTP_X_FORWARDED_FOR; dropping underscores stops one spoofing the
            # other behind a proxy that only filters the dashed form (as nginx does).
            return None
        key = "HTTP_" + text.upper().replace("-", "_")
        if key == "HTTP_CONTENT_TYPE":
            key = "CONTENT_TYPE"
        elif key == "HTTP_CONTENT_LENGTH":
            key = "CONTENT_LENGTH"
        if len(_HEADER_KEYS) < 1024:
            _HEADER_KEYS[name] = key
    return key


_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0", "2": "HTTP/2"}


def build_environ(base: dict[str, Any], req: Request, script_name: str) -> dict[str, Any]:
    """A fresh environ: the per-listener base copied, then the request's keys."""
    env = base.copy()
    path = req.path
    # (find, not `in`: CPython 3.11's `bytes in bytes` first tries the operand as an int and
    # builds a TypeError it then drops, about 2,000 instructions, 1.4% of a keep-alive request)
    if path.find(b"%") >= 0:
        path = unquote_to_bytes(path)
    path_info = path.decode("latin-1")
    if script_name and path_info.startswith(script_name) and \
            path_info[len(script_name):len(script_name) + 1] in ("", "/"):  # "/app" is no prefix of "/apple"
        path_info = path_info[len(script_name):]
    env["REQUEST_METHOD"] = req.method
    env["SCRIPT_NAME"] = script_name
    env["PATH_INFO"] = path_info
    env["QUERY_STRING"] = req.query.decode("latin-1")
    env["RAW_URI"] = env["REQUEST_URI"] = req.target.decode("latin-1")
    env["SERVER_PROTOCOL"] = _PROTOCOLS.get(req.version) or "HTTP/" + req.version
    keys = _HEADER_KEYS
    for name, value in req.headers:
        key = keys.get(name) or header_key(name)
        if key is None:
            continue
        text = value.decode("latin-1")
        if key in env and key.startswith("HTTP_"):
            # RFC 9110 5.3: repeated fields combine with commas; Cookie with "; " (RFC 6265 5.4)
            env[key] += ("; " if key == "HTTP_COOKIE" else ",") + text
        else:
            env[key] = text
    if req.host is not None:
        env["HTTP_HOST"] = req.host.decode("latin-1")  # absolute-form target wins (RFC 9112 3.2.2)
    if req.chunked:
        env.pop("CONTENT_LENGTH", None)
    return env


class BodySource(Protocol):
    """Where wsgi.input's bytes come from (the request stage's exchange)."""

    def read_body(self) -> bytes: ...  # the next piece of the body, b"" at its end

    def start_body(self, limit: int | None) -> None: ...  # once, before the first read_body()


class Input:
    """wsgi.input: streams the body from the connection, never past its end.

    source.start_body(max_body) runs before the first source.read_body(): the protocol
    applies the limit there and sends "100 Continue" when the client asked for it.
    """

    __slots__ = ("_buf", "_done", "_source", "consumed", "max_body", "started")

    def __init__(self, source: BodySource, max_body: int | None = None) -> None:
        self._source = source
        self._buf = b""
        self._done = False
        self.consumed = 0
        self.max_body = max_body
        self.started = False

    def set_max_body_size(self, limit: int | None) -> None:
        """environ["greenfork.set_max_request_body_size"]: this request's body limit in
        bytes (None: no limit), before the first read; afterwards the limit is in force."""
        if self.started:
            raise RuntimeError("wsgi.input has already been read; set the body size limit before that")
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValueError(f"expected a byte count or None, not {limit!r}")
        self.max_body = limit

    def _next(self) -> bytes:
        """The next piece of body from the connection, b"" at the end."""
        if self._done:
            return b""
        if not self.started:
            self.started = True
            self._source.start_body(self.max_body)
        data = self._source.read_body()
        if not data:
            self._done = True
        return data

    def _more(self) -> bool:
        data = self._next()
        if not data:
            return False
        self._buf = self._buf + data if self._buf else data
        return True

    # Reads never grow one bytes object piece by piece: a 30 MB body read whole
    # would copy gigabytes. Pieces are joined once, or kept in a bytearray.
    def read(self, size: int | None = -1) -> bytes:
        buf = self._buf
        if size is None or size < 0:
            parts = [buf] if buf else []
            while chunk := self._next():
                parts.append(chunk)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            self._buf = b""
        else:
            if len(buf) < size:
                parts = [buf] if buf else []
                have = len(buf)
                while have < size and (chunk := self._next()):
                    parts.append(chunk)
                    have += len(chunk)
                buf = parts[0] if len(parts) == 1 else b"".join(parts)
            if len(buf) <= size:
                data, self._buf = buf, b""
            else:
                data, self._buf = buf[:size], buf[size:]
        self.consumed += len(data)
        return data

    def read1(self, size: int = -1) -> bytes:
        if not self._buf:
            self._more()
        return self.read(size if size >= 0 else len(self._buf))

    def readline(self, size: int | None = -1) -> bytes:
        limit = sys.maxsize if size is None or size < 0 else size
        buf = self._buf
        nl = buf.find(b"\n", 0, limit)
        if nl >= 0 or len(buf) >= limit:
            return self.read(nl + 1 if nl >= 0 else limit)
        acc = bytearray(buf)
        while True:
            start = len(acc)
            chunk = self._next()
            if not chunk:
                cut = len(acc)
                break
            acc += chunk
            nl = acc.find(b"\n", start, limit)
            if nl >= 0:
                cut = nl + 1
                break
            if len(acc) >= limit:
                cut = limit
                break
        data = bytes(acc[:cut])
        self._buf = bytes(acc[cut:])
        self.consumed += len(data)
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def drain(self, limit: int) -> bool:
        """Discard what the app left unread, up to limit bytes; True if the body ended."""
        got = len(self._buf)
        self._buf = b""
        while got <= limit:
            if not self._more():
                return True
            got += len(self._buf)
            self._buf = b""
        return False

    @property
    def finished(self) -> bool:
        return self._done and not self._buf


class Errors:
    """wsgi.errors: text to the error log, a line at a time."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._emit(line)
        return len(text)

    def writelines(self, seq: Iterable[str]) -> None:
        for text in seq:
            self.write(text)

    def flush(self) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial = ""


class FileWrapper:
    """wsgi.file_wrapper: iterable in blocks, and recognised by the connection,
    which sends a regular file with os.sendfile instead."""

    def __init__(self, filelike: IO[bytes], blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        close = getattr(filelike, "close", None)
        if close is not None:
            self.close = close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data


# Header items an app sent before and that passed _check_header; bounded.
_CHECKED: set[tuple[str, str]] = set()


def _check_header(item: object) -> None:
    if type(item) is not tuple or len(item) != 2:
        raise TypeError(f"header {item!r} is not a (name, value) tuple")
    name, value = item
    if not isinstance(name, str) or not isinstance(value, str):
        raise TypeError(f"header {item!r} must be two str")
    if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
        raise ValueError(f"header {name!r} contains a line break or colon")
    if type(name) is str and type(value) is str:  # a str subclass may hash differently
        if len(_CHECKED) >= 1024:
            _CHECKED.clear()
        _CHECKED.add(item)


class ResponseSink(Protocol):
    """Where start_response's write() goes (the request stage's exchange)."""

    def write(self, data: bytes) -> None: ...

    def head_sent(self) -> bool: ...  # whether the head is on the wire (then exc_info re-raises)


class StartResponse:
    """start_response and its write(), for one request."""

    __slots__ = ("headers", "sink", "status")

    def __init__(self, sink: ResponseSink) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.sink = sink

    def __call__(self, status: str, headers: list[tuple[str, str]],
                 exc_info: ExcInfo | None = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.sink.head_sent():
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # PEP 3333: avoid a reference cycle
        elif self.status is not None:
            raise AssertionError("start_response called twice without exc_info")
        if not isinstance(status, str) or len(status) < 4 or not status[:3].isdigit() or status[3] != " ":
            raise ValueError(f"invalid status {status!r}: expected e.g. '200 OK'")
        checked = _CHECKED
        for item in headers:
            try:
                if item in checked:
                    continue
            except TypeError:
                pass  # unhashable: not a tuple of two str, which _check_header says
            _check_header(item)
        self.status = status
        self.headers = headers
        return self.sink.write

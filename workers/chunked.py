"""The chunked transfer coding of a request body (RFC 9112 7.1), decoded sans-IO.

llhttp parses request heads and Content-Length bodies; chunked bodies are decoded
here because llhttp's strict mode disagrees with the RFC on chunk extensions both
ways: it refuses whitespace that RFC 9112 7.1.1 allows around ";" and "=" (BWS),
and it accepts an empty extension name or value, which the grammar does not:

    chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
    last-chunk     = 1*("0") [ chunk-ext ] CRLF
    chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
    chunk-ext-name = token
    chunk-ext-val  = token / quoted-string
    trailer-section = *( field-line CRLF )

Extensions are validated and ignored (no extension is defined that a server must
understand); trailer fields are validated, bounded and dropped, never merged into
the header section (RFC 9110 6.5.1). Lines end with CRLF only, as llhttp demands
of the head: a bare LF is a framing error here too.
"""

from __future__ import annotations

import re
from typing import Final

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_EXT = rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
# 16 hex digits: a size beyond 2**64 is nobody's body, and a bound keeps int() cheap
_SIZE_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})(" + _EXT + rb")\r\n")
# RFC 9110 5.5: field-value = *field-content; no CTLs but HTAB; obs-fold is refused (RFC 9112 5.2)
_VALUE = rb"(?:[!-~\x80-\xff](?:[\t -~\x80-\xff]*[!-~\x80-\xff])?)?"
_FIELD_LINE: Final = re.compile(_TOKEN + rb":[ \t]*" + _VALUE + rb"[ \t]*\r\n")

MAX_SIZE_LINE: Final = 4096  # a chunk-size line with its extensions

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkError(Exception):
    """Malformed framing (400) or a trailer section over its bound (431)."""

    def __init__(self, status: int, error_type: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error_type = error_type
        self.detail = detail


class ChunkedDecoder:
    """Feed bytes with feed(); body pieces are appended to the list given to it."""

    __slots__ = ("_line", "_max_trailers", "_remaining", "_state", "_trailer_bytes")

    def __init__(self, max_trailer_bytes: int = 32768) -> None:
        self._state = _SIZE
        self._line = b""  # an incomplete line carried over to the next feed
        self._remaining = 0  # chunk-data bytes still to come
        self._trailer_bytes = 0
        self._max_trailers = max_trailer_bytes

    @property
    def done(self) -> bool:
        """The message ended (last chunk and trailer section read)."""
        return self._state == _DONE

    @property
    def in_data(self) -> bool:
        """Inside chunk-data: the peer's EOF here cuts the body short."""
        return self._state in (_DATA, _DATA_END)

    def feed(self, data: bytes, pos: int, out: list[bytes]) -> int:
        """Decode data[pos:], appending body pieces to out; returns the position reached
        (short of len(data) only once the message is complete: the rest is the next
        request's). Raises ChunkError on malformed input."""
        end = len(data)
        while pos < end:
            state = self._state
            if state == _DATA:
                n = min(self._remaining, end - pos)
                out.append(data[pos:pos + n] if pos or n < end else data)
                pos += n
                self._remaining -= n
                if not self._remaining:
                    self._state = _DATA_END
            elif state == _DONE:
                return pos
            else:
                line, pos = self._take_line(data, pos, end)
                if line is None:
                    return end
                if state == _SIZE:
                    self._size_line(line)
                elif state == _DATA_END:
                    if line != b"\r\n":
                        raise ChunkError(400, "unexpected_end_of_request_content",
                                         "chunk data not followed by CRLF")
                    self._state = _SIZE
                else:
                    self._trailer_line(line)
        return pos

    def _take_line(self, data: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
        """The next whole line (with its CRLF), or None after keeping a partial one."""
        nl = data.find(b"\n", pos, end)
        limit = MAX_SIZE_LINE if self._state != _TRAILER else self._max_trailers
        if nl < 0:
            self._line += data[pos:end]
            if len(self._line) > limit:
                self._too_long()
            return None, end
        stop = nl + 1
        line = data[pos:stop]
        if self._line:
            line, self._line = self._line + line, b""
        if len(line) > limit:
            self._too_long()
        return line, stop

    def _too_long(self) -> None:
        if self._state == _TRAILER:
            raise ChunkError(431, "invalid_request_headers", "trailer section too large")
        raise ChunkError(400, "unexpected_end_of_request_content", "chunk-size line too long")

    def _size_line(self, line: bytes) -> None:
        m = _SIZE_LINE.fullmatch(line)
        if m is None:
            raise ChunkError(400, "unexpected_end_of_request_content", "invalid chunk-size line")
        size = int(m.group(1), 16)
        if size:
            self._remaining = size
            self._state = _DATA
        else:
            self._state = _TRAILER

    def _trailer_line(self, line: bytes) -> None:
        if line == b"\r\n":
            self._state = _DONE
            return
        self._trailer_bytes += len(line)
        if self._trailer_bytes > self._max_trailers:
            raise ChunkError(431, "invalid_request_headers", "trailer section too large")
        if _FIELD_LINE.fullmatch(line) is None:
            raise ChunkError(400, "invalid_request_headers", "invalid trailer field")

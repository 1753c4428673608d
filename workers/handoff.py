"""The hand-off message between a delegating front and its target (issue 17), sans-IO.

A front connects to the target's `handoff:` unix socket and sends one message, with the
client's socket attached to its first byte (SCM_RIGHTS):

    "GFH1"  header length (2 bytes)  data length (4 bytes)   big-endian
    header  UTF-8 fields separated by NUL: REMOTE_ADDR, REMOTE_PORT, the matched prefix, then
            environ key and value pairs (what the front's connection adds: TLS, PROXY)
    data    the bytes the front read from the client: the first request head and what followed

(NUL-separated rather than JSON: a hand-off per connection is the front's whole cost, and
this is a split instead of a JSON parse, a fifth of the time.)

The target answers ACK (one byte) once it holds the socket, then closes. Until the front
reads that byte it keeps its own copy of the socket: a target that closes without it (a
worker killed between accept and receive) loses nothing, and the front tries again.

`peer` is the client as the front saw it (after a PROXY header, say), `extra` the environ
keys the front's connection adds (TLS, when the front terminated it). The target trusts
both: only a front may connect to the socket (its mode and group: --unix-socket-mode,
--handoff-socket-group).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["ACK", "Decoder", "Handoff", "HandoffError", "encode", "encode_plain"]

MAGIC: Final = b"GFH1"
ACK: Final = b"\x06"
_FRAME: Final = struct.Struct(">4sHI")
MAX_HEADER: Final = 16384
MAX_DATA: Final = 1 << 20  # a request head and one read after it fit many times over
_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,127}")
# what the request itself decides: a front's extra keys never replace these
_REQUEST_KEYS = frozenset({"REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL",
                           "CONTENT_TYPE", "CONTENT_LENGTH", "REMOTE_ADDR", "REMOTE_PORT", "RAW_URI",
                           "REQUEST_URI"})


class HandoffError(ValueError):
    """A message that is not a hand-off (or not one this version understands)."""


@dataclass(slots=True)
class Handoff:
    data: bytes  # what the front read from the client
    peer: tuple[str, str] = ("", "")  # REMOTE_ADDR, REMOTE_PORT as the front saw them
    extra: dict[str, str] = field(default_factory=dict)  # environ keys the front's connection added
    prefix: str = ""  # the --delegate prefix that matched (for the log)


def encode(h: Handoff) -> bytes:
    fields = [*h.peer, h.prefix]
    for k, v in h.extra.items():
        fields += (k, v)
    if any("\0" in f for f in fields):
        raise HandoffError("a NUL in a hand-off field")
    header = "\0".join(fields).encode("utf-8", "surrogateescape")
    if len(header) > MAX_HEADER or len(h.data) > MAX_DATA:
        raise HandoffError("hand-off message too large")
    return b"".join((_FRAME.pack(MAGIC, len(header), len(h.data)), header, h.data))


def encode_plain(addr: str, port: str, prefix: str, data: bytes) -> bytes:
    """encode(Handoff(data, (addr, port), {}, prefix)) for a plain connection's hand-off (no
    extra keys), as the front's accept-time hand-over builds it: the caller passes fields
    without NUL (an address, a port, a configured prefix) and data within MAX_DATA."""
    header = f"{addr}\0{port}\0{prefix}".encode("utf-8", "surrogateescape")
    return b"".join((_FRAME.pack(MAGIC, len(header), len(data)), header, data))


def _allowed_key(key: str) -> bool:
    # The front may say what a TLS or PROXY front door would have added, never what the
    # server itself owns (wsgi.input, greenfork.*, the request's own keys).
    if key == "wsgi.url_scheme":
        return True
    return bool(_KEY_RE.fullmatch(key)) and not key.startswith(("wsgi.", "greenfork.", "HTTP_")) \
        and key not in _REQUEST_KEYS


def _decode_header(raw: bytes) -> tuple[tuple[str, str], dict[str, str], str]:
    try:
        fields = raw.decode("utf-8", "surrogateescape").split("\0")
    except UnicodeDecodeError:  # pragma: no cover - surrogateescape takes any bytes
        raise HandoffError("the header is not UTF-8") from None
    if len(fields) < 3 or len(fields) % 2 == 0:
        raise HandoffError("the header is not address, port, prefix and key-value pairs")
    addr, port, prefix = fields[:3]
    if len(addr) > 255 or len(port) > 5 or (port and not port.isdigit()):
        raise HandoffError("the peer is not an address and a port")
    extra = dict(zip(fields[3::2], fields[4::2], strict=True))
    bad = [k for k in extra if not _allowed_key(k)]
    if bad:
        raise HandoffError(f"extra names keys a front may not set: {', '.join(sorted(bad))}")
    if extra.get("wsgi.url_scheme", "http") not in ("http", "https"):
        raise HandoffError("wsgi.url_scheme is neither http nor https")
    return (addr, port), extra, prefix


class Decoder:
    """Feed the bytes read from a hand-off connection; feed() returns the Handoff once whole."""

    __slots__ = ("_buf", "_need")

    def __init__(self) -> None:
        self._buf = b""
        self._need = _FRAME.size

    def feed(self, data: bytes) -> Handoff | None:
        buf = self._buf = self._buf + data
        if len(buf) < self._need:
            return None
        magic, hlen, dlen = _FRAME.unpack_from(buf)
        if magic != MAGIC:
            raise HandoffError("not a hand-off message (bad magic)")
        if hlen > MAX_HEADER or dlen > MAX_DATA:
            raise HandoffError("hand-off message too large")
        self._need = _FRAME.size + hlen + dlen
        if len(buf) < self._need:
            return None
        if len(buf) > self._need:
            raise HandoffError("bytes after the hand-off message")
        start = _FRAME.size
        peer, extra, prefix = _decode_header(buf[start:start + hlen])
        return Handoff(data=buf[start + hlen:], peer=peer, extra=extra, prefix=prefix)


def portable(extra: dict[str, Any]) -> dict[str, str]:
    """The keys of a front's connection that go along with a hand-off: the client's scheme and
    TLS keys. The front's own greenfork.* keys stay behind (after a PROXY header: the proxy's
    address and greenfork.proxy_protocol, a dict), since a target refuses them from a front."""
    return {k: v for k, v in extra.items() if type(v) is str and not k.startswith("greenfork.")}

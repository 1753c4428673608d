"""The server side of the WebSocket opening handshake (RFC 6455 4.2), sans-IO.

`inspect` sorts a request into three kinds, the way gevent-websocket's WebSocketHandler
does, so that apps see what they saw under it:
- not an upgrade to WebSocket at all (not GET, no `Upgrade: websocket`, no `Connection:
  upgrade`): None, and the app sees a plain request;
- an upgrade to WebSocket that RFC 6455 4.2.1 does not allow (HTTP/1.0, a body, no Host,
  a missing or malformed key, an unknown version): a `Refusal`, which the server sends
  without calling the app (400, or 426 with `Sec-WebSocket-Version: 13` for the version);
- a valid one: an `Offer`, from which `accept` makes the 101 response and the negotiated
  extensions (permessage-deflate, RFC 7692, through wsproto's negotiation).

No sockets, no clock, no gevent: bytes and header lists in, bytes out.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import Final

from wsproto.extensions import Extension
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import generate_accept_token

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2
VERSION: Final = "13"  # RFC 6455; the hybi drafts 7 and 8 gevent-websocket also took are long gone


@dataclass(frozen=True, slots=True)
class Refusal:
    """An upgrade request the server answers itself; the connection closes after it."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def status_line(self) -> str:
        return f"{self.status} {_PHRASES[self.status]}"

    def response(self) -> tuple[str, list[tuple[str, str]], bytes]:
        """(WSGI status, headers, body) for the server to send as it sends any response."""
        body = (self.reason + "\n").encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                   ("Connection", "close"), *self.headers]
        return self.status_line, headers, body


_PHRASES: Final = {400: "Bad Request", 426: "Upgrade Required", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Offer:
    """A valid WebSocket upgrade request."""

    key: bytes
    subprotocols: tuple[str, ...]  # in the client's order of preference
    extensions: tuple[str, ...]  # each offer as sent, e.g. "permessage-deflate; client_max_window_bits"


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def _items(value: bytes) -> list[str]:
    return [t.strip() for t in value.decode("latin-1").split(",") if t.strip()]


def inspect(method: str, http_version: str, head: list[tuple[bytes, bytes]]) -> Offer | Refusal | None:
    """Sort a request (method, "HTTP/1.1", its header fields) as the module doc says."""
    if method != "GET":
        return None
    upgrade: list[bytes] = []
    connection: list[bytes] = []
    keys: list[bytes] = []
    versions: list[bytes] = []
    subprotocols: list[str] = []
    extensions: list[str] = []
    host = body = False
    for raw_name, value in head:
        name = raw_name.lower()
        if name == b"upgrade":
            upgrade += _tokens(value)
        elif name == b"connection":
            connection += _tokens(value)
        elif name == b"sec-websocket-key":
            keys.append(value.strip())
        elif name == b"sec-websocket-version":
            versions.append(value.strip())
        elif name == b"sec-websocket-protocol":
            # RFC 6455 4.1: each a token; others could not be named in our answer
            subprotocols += [p for p in _items(value) if _TOKEN.fullmatch(p)]
        elif name == b"sec-websocket-extensions":
            extensions += _items(value)
        elif name == b"host":
            host = True
        elif name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            body = True
    if b"websocket" not in upgrade or b"upgrade" not in connection:
        return None  # gevent-websocket passes these to the app as plain requests
    if http_version != "HTTP/1.1":
        return Refusal(400, "A WebSocket upgrade needs HTTP/1.1")
    if body:
        # The bytes after the head are frames; a body there would be read as frames.
        return Refusal(400, "A WebSocket upgrade request has no body")
    if not host:
        return Refusal(400, "A WebSocket upgrade needs a Host header")
    if len(versions) != 1 or versions[0].decode("latin-1") != VERSION:
        return Refusal(426, "Unsupported or missing Sec-WebSocket-Version",
                       (("Sec-WebSocket-Version", VERSION),))
    if len(keys) != 1:
        return Refusal(400, "A WebSocket upgrade needs exactly one Sec-WebSocket-Key")
    key = keys[0]
    try:
        nonce = binascii.a2b_base64(key, strict_mode=True)
    except (binascii.Error, ValueError):
        nonce = b""
    if len(nonce) != 16:  # RFC 6455 4.1: a base64-encoded 16-byte value
        return Refusal(400, "Sec-WebSocket-Key is not a base64-encoded 16-byte value")
    return Offer(key, tuple(subprotocols), tuple(extensions))


def accept(offer: Offer, subprotocol: str | None,
           extensions: list[Extension]) -> tuple[bytes, list[Extension]]:
    """The 101 response for `offer`, and the extensions that are now on.

    `extensions` are the ones the server supports, fresh objects for this connection;
    each accepts or declines its offer (RFC 7692 5). `subprotocol` must be one the client
    offered, or None: without a Sec-WebSocket-Protocol answer, no subprotocol is in use.
    """
    lines = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade",
             b"Sec-WebSocket-Accept: " + generate_accept_token(offer.key)]
    if subprotocol is not None:
        if subprotocol not in offer.subprotocols:
            raise ValueError(f"subprotocol {subprotocol!r} was not offered")
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("ascii"))
    agreed: list[Extension] = []
    if offer.extensions and extensions:
        answer = server_extensions_handshake(offer.extensions, extensions)
        if answer:
            lines.append(b"Sec-WebSocket-Extensions: " + answer)
            agreed = [e for e in extensions if e.enabled()]
    return b"\r\n".join(lines) + b"\r\n\r\n", agreed

"""Helpers for the proxy tests: raw connections that speak PROXY headers, and a small
HTTP/1.1 response reader that works over plain sockets, unix sockets and TLS objects."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time
from typing import Any, Protocol

import google_crc32c

from greenfork.workers.proxyproto import V2_SIGNATURE


class Stream(Protocol):
    def sendall(self, data: bytes) -> None: ...
    def recv(self, n: int) -> bytes: ...


# ------------------------------------------------------------------ v2 headers
def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def ssl_tlv(client: int, verify: int, *subs: tuple[int, bytes]) -> bytes:
    return tlv(0x20, struct.pack("!BI", client, verify) + b"".join(tlv(t, v) for t, v in subs))


def v2(src: tuple[str, int] | None, dst: tuple[str, int] | None, *, local: bool = False, tlvs: bytes = b"",
       crc: bool = False) -> bytes:
    """A v2 header: PROXY over TCP (IPv4 or IPv6 from the addresses), or LOCAL without
    addresses; with crc a CRC32C TLV is appended and filled in."""
    if local or src is None or dst is None:
        fam, addr = 0x00, b""
    elif ":" in src[0]:
        fam = 0x21
        addr = (socket.inet_pton(socket.AF_INET6, src[0]) + socket.inet_pton(socket.AF_INET6, dst[0])
                + struct.pack("!HH", src[1], dst[1]))
    else:
        fam = 0x11
        addr = socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!HH", src[1], dst[1])
    body = addr + tlvs + (tlv(0x03, b"\0\0\0\0") if crc else b"")
    header = V2_SIGNATURE + bytes([0x20 | (0 if local else 1), fam]) + struct.pack("!H", len(body)) + body
    if crc:
        header = header[:-4] + google_crc32c.value(header).to_bytes(4, "big")
    return header


def v1(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    family = "TCP6" if ":" in src[0] else "TCP4"
    return f"PROXY {family} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


# ------------------------------------------------------------------ connections
def connect(url: str, timeout: float = 10, source: str | None = None) -> socket.socket:
    """A connection to a published URL (http://, https:// or unix:), optionally from a
    chosen loopback address."""
    for prefix in ("https://unix:", "http://unix:", "unix:"):
        if url.startswith(prefix):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(url[len(prefix):])
            return s
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    host = host.strip("[]")
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if source is not None:
        s.bind((source, 0))
    s.connect((host, int(port)))
    return s


def request(path: str = "/env", host: str = "app.test", headers: dict[str, str] | None = None,
            close: bool = False) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(s: Stream, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body (all the test apps send one)."""
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole response head: {buf!r}")
        buf += chunk
        if time.monotonic() > deadline:
            raise TimeoutError("no response")
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a response body")
        body += chunk
    return status, headers, body


def env_of(s: Stream, data: bytes) -> dict[str, Any]:
    s.sendall(data)
    status, _, body = read_response(s)
    assert status == 200, body
    env: dict[str, Any] = json.loads(body)
    return env


def read_all(s: socket.socket, timeout: float = 10) -> bytes:
    """Everything until the server closes (raises TimeoutError if it does not)."""
    s.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


class TlsOverSocket:
    """A TLS client over a socket through MemoryBIOs, so the first flight can be sent in the
    same write as a PROXY header before it (the server must hand those bytes to TLS)."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, prefix: bytes = b"",
                 server_hostname: str | None = None) -> None:
        self.sock = sock
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=server_hostname)
        pending = prefix
        for _ in range(100):  # bounded: a handshake is a few round trips
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            pending += self.out.read()
            if pending:
                sock.sendall(pending)
                pending = b""
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake")
            self.inc.write(data)
        else:
            raise AssertionError("handshake did not finish")
        rest = self.out.read()
        if rest:
            sock.sendall(rest)

    def sendall(self, data: bytes) -> None:
        self.obj.write(data)
        self.sock.sendall(self.out.read())

    def recv(self, n: int) -> bytes:
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                if not data:
                    return b""
                self.inc.write(data)
            except ssl.SSLZeroReturnError:
                return b""

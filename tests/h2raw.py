"""A raw HTTP/2 client for tests: frames built with hyperframe, header blocks with hpack, over a
real socket (cleartext with prior knowledge, or TLS with ALPN h2). It checks nothing itself:
tests send what RFC 9113 says and assert what comes back, frame by frame."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def request_headers(path: str = "/", method: str = "GET", authority: str = "127.0.0.1",
                    scheme: str = "http", extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path), *extra]


class Raw:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.enc = Encoder()
        self.dec = Decoder()
        self.frames: list[Frame] = []  # every frame read, in order
        self.closed = False
        # every header block the server sent, decoded in order (HPACK's state depends on it)
        self.blocks: dict[int, list[list[tuple[str, str]]]] = {}
        self._block = b""
        self.answer_pings = True  # as RFC 9113 6.7 asks (a test may play a peer that does not)
        self.auto_window = True  # give back the window of each DATA frame read
        # each stream's response so far: its final headers, body and whether it has ended
        self.heads: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}

    @classmethod
    def connect(cls, port: int, *, tls: ssl.SSLContext | None = None, preface: bool = True,
                settings: dict[int, int] | None = None, host: str = "127.0.0.1", timeout: float = 10) -> Raw:
        s = socket.create_connection((host, port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as real clients: no 40 ms stalls
        if tls is not None:
            s = tls.wrap_socket(s, server_hostname=None)
            assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
        raw = cls(s)
        if preface:
            raw.send_raw(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())
        return raw

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- sending
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, *frames: Frame) -> None:
        self.sock.sendall(b"".join(f.serialize() for f in frames))

    def block(self, headers: Iterable[tuple[str, str]]) -> bytes:
        return bytes(self.enc.encode(list(headers)))

    def headers_frame(self, sid: int, headers: Iterable[tuple[str, str]], *, end_stream: bool = True,
                      end_headers: bool = True, **kw: Any) -> HeadersFrame:
        flags = (["END_STREAM"] if end_stream else []) + (["END_HEADERS"] if end_headers else [])
        return HeadersFrame(sid, self.block(headers), flags=flags, **kw)

    def header_frames(self, sid: int, headers: Iterable[tuple[str, str]], *, end_stream: bool = True,
                      size: int = 16384) -> list[Frame]:
        """A header block in HEADERS and as many CONTINUATION frames as its size needs."""
        block = self.block(headers)
        parts = [block[i:i + size] for i in range(0, len(block), size)] or [b""]
        frames: list[Frame] = [HeadersFrame(sid, parts[0], flags=["END_STREAM"] if end_stream else [])]
        frames += [ContinuationFrame(sid, p) for p in parts[1:]]
        frames[-1].flags.add("END_HEADERS")
        return frames

    def request(self, sid: int, path: str = "/", *, method: str = "GET", body: bytes | None = None,
                extra: Iterable[tuple[str, str]] = (), authority: str = "127.0.0.1") -> None:
        frames = self.header_frames(sid, request_headers(path, method, authority, extra=extra),
                                    end_stream=body is None)
        if body is not None:
            frames.append(DataFrame(sid, body, flags=["END_STREAM"]))
        self.send(*frames)

    # ---------------------------------------------------------------- reading
    def read_frame(self, timeout: float = 5.0) -> Frame | None:
        """The next frame, or None at EOF (a reset counts as EOF). Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 9:
                f, length = Frame.parse_frame_header(memoryview(bytes(self.buf[:9])))
                if len(self.buf) >= 9 + length:
                    f.parse_body(memoryview(bytes(self.buf[9:9 + length])))
                    del self.buf[:9 + length]
                    self.frames.append(f)
                    self._track(f)
                    return f
            if self.closed:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
            self.buf += data

    def _track(self, f: Frame) -> None:
        sid = f.stream_id
        if isinstance(f, HeadersFrame | ContinuationFrame):
            self._block += f.data
            if "END_HEADERS" in f.flags:
                decoded = [(k, v) for k, v in self.dec.decode(self._block)]
                self.blocks.setdefault(sid, []).append(decoded)
                self._block = b""
                if dict(decoded).get(":status", "200")[0] != "1":  # 1xx: informational
                    self.heads.setdefault(sid, {}).update(decoded)
        elif isinstance(f, DataFrame):
            self.bodies.setdefault(sid, bytearray()).extend(f.data)
            if self.auto_window and f.flow_controlled_length:
                try:
                    self.send(WindowUpdateFrame(0, window_increment=f.flow_controlled_length),
                              WindowUpdateFrame(sid, window_increment=f.flow_controlled_length))
                except OSError:
                    pass
        elif isinstance(f, RstStreamFrame):
            self.resets[sid] = f.error_code
        if sid and "END_STREAM" in f.flags:
            self.ended.add(sid)

    def until(self, pred: Callable[[Frame], bool], timeout: float = 5.0) -> Frame:
        """Read until a frame matches (answering the server's SETTINGS and PINGs)."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_frame(max(0.01, deadline - time.monotonic()))
            if f is None:
                raise EOFError(f"connection closed; frames: {self.frames!r}")
            self._answer(f)
            if pred(f):
                return f

    def _answer(self, f: Frame) -> None:
        if isinstance(f, PingFrame) and "ACK" not in f.flags and self.answer_pings:
            try:
                self.send(PingFrame(0, opaque_data=f.opaque_data, flags=["ACK"]))
            except OSError:
                pass
        if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
            try:
                self.send(SettingsFrame(0, flags=["ACK"]))
            except OSError:
                pass  # the server has closed: what it sent before is still read

    def goaway(self, timeout: float = 5.0) -> GoAwayFrame:
        f = self.until(lambda f: isinstance(f, GoAwayFrame), timeout)
        assert isinstance(f, GoAwayFrame)
        return f

    def rst(self, sid: int, timeout: float = 5.0) -> RstStreamFrame:
        f = self.until(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == sid, timeout)
        assert isinstance(f, RstStreamFrame)
        return f

    def response(self, sid: int, timeout: float = 10.0) -> tuple[dict[str, str], bytes]:
        """Headers (pseudo ones included) and body of stream sid, once its END_STREAM is read."""
        deadline = time.monotonic() + timeout
        while sid not in self.ended:
            if sid in self.resets:
                raise AssertionError(f"stream {sid} reset: {self.resets[sid]}")
            f = self.until(lambda f: f.stream_id in (sid, 0), max(0.01, deadline - time.monotonic()))
            if isinstance(f, GoAwayFrame) and (f.error_code or f.last_stream_id < sid):
                raise AssertionError(f"GOAWAY while waiting for stream {sid}: {f.error_code}")
        return self.heads.get(sid, {}), bytes(self.bodies.get(sid, b""))

    def eof(self, timeout: float = 5.0) -> list[Frame]:
        """Read until the server closes; the frames read meanwhile."""
        got: list[Frame] = []
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_frame(max(0.01, deadline - time.monotonic()))
            if f is None:
                return got
            got.append(f)

    def ping(self, data: bytes = b"12345678", timeout: float = 5.0) -> None:
        """A PING round trip: everything the server sent before its ACK has been read."""
        self.send(PingFrame(0, opaque_data=data))
        self.until(lambda f: isinstance(f, PingFrame) and "ACK" in f.flags and f.opaque_data == data, timeout)

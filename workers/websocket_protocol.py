"""One WebSocket connection after the handshake, sans-IO: bytes in, messages out.

Framing is wsproto's (its FrameProtocol: masking, fragmentation, control frames inside
fragmented messages, UTF-8 of text and close reasons, close codes, reserved bits, the
125-byte bound on control frames). On top of it this module keeps what wsproto leaves to
its user: the connection's state (a table: a pair not in it is an error), whole messages,
the size limits (1009), the replies the protocol requires (pong, the close echo), and a
bound on inflating compressed data, so that a small compressed frame cannot expand past
the message limit in memory (wsproto inflates without one).

No sockets, no clock, no gevent: `receive` takes the bytes the peer sent and returns
what happened; what must go out in reply waits in `data_to_send()`.
"""

from __future__ import annotations

import enum
import zlib
from typing import Final

from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, ParseFailed, RsvBits

# Close codes (RFC 6455 7.4.1)
NORMAL: Final = 1000
GOING_AWAY: Final = 1001
PROTOCOL_ERROR: Final = 1002
NO_STATUS: Final = 1005  # never on the wire: the peer's close frame had no code
ABNORMAL: Final = 1006  # never on the wire: the connection ended without a close frame
INVALID_DATA: Final = 1007
TOO_BIG: Final = 1009
INTERNAL_ERROR: Final = 1011


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"  # our close frame is out; waiting for the peer's
    FAILED = "failed"  # we failed the connection (RFC 6455 7.1.7): input is discarded until EOF
    CLOSED = "closed"


class Ev(enum.Enum):
    DATA_IN = "data in"
    DATA_OUT = "data out"
    PING_OUT = "ping out"
    CLOSE_IN = "close in"
    CLOSE_OUT = "close out"
    ERROR = "protocol error"
    EOF = "end of stream"


_TABLE: Final[dict[tuple[State, Ev], State]] = {
    (State.OPEN, Ev.DATA_IN): State.OPEN,
    (State.OPEN, Ev.DATA_OUT): State.OPEN,
    (State.OPEN, Ev.PING_OUT): State.OPEN,
    (State.OPEN, Ev.CLOSE_IN): State.CLOSED,  # our echo is queued with it
    (State.OPEN, Ev.CLOSE_OUT): State.CLOSING,
    (State.OPEN, Ev.ERROR): State.FAILED,  # our close frame (1002, 1007, 1009) is queued with it
    (State.OPEN, Ev.EOF): State.CLOSED,  # 1006
    (State.CLOSING, Ev.DATA_IN): State.CLOSING,  # data after our close frame is dropped
    (State.CLOSING, Ev.CLOSE_IN): State.CLOSED,
    (State.CLOSING, Ev.ERROR): State.FAILED,  # no second close frame
    (State.CLOSING, Ev.EOF): State.CLOSED,
    (State.FAILED, Ev.DATA_IN): State.FAILED,
    (State.FAILED, Ev.EOF): State.CLOSED,
}


class StateError(RuntimeError):
    """An operation the connection's state does not allow (sending after a close frame ...)."""


def step(state: State, ev: Ev) -> State:
    try:
        return _TABLE[state, ev]
    except KeyError:
        raise StateError(f"{ev.value} is not allowed in state {state.value}") from None


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate (RFC 7692) with the limits a server needs.

    - Inflating stops at the message limit (zlib's max_length): beyond it, 1009.
    - Our compressor uses a 4 KiB window and memLevel 5 (about 32 KiB a connection instead
      of about 320 KiB at zlib's defaults); any window up to the negotiated one is valid for
      the peer's inflater. A client that offers `client_max_window_bits` without a value is
      answered with 12, so that our inflater for it needs a 4 KiB window too.
    - Messages shorter than `min_size` go out uncompressed (RSV1 clear), as RFC 7692 6 allows:
      for a few bytes deflate costs more time than it saves on the wire.
    """

    WINDOW_BITS: Final = 12
    MEM_LEVEL: Final = 5

    def __init__(self, max_message_size: int, min_size: int = 128) -> None:
        super().__init__()
        self.max_message_size = max_message_size
        self.min_size = min_size
        self._budget = max_message_size

    def accept(self, offer: str) -> bool | str | None:
        params = [p.strip() for p in offer.split(";")]
        params = [f"client_max_window_bits={self.WINDOW_BITS}" if p == "client_max_window_bits" else p
                  for p in params]
        try:
            return super().accept("; ".join(params))
        except ValueError:  # a malformed parameter: decline this offer rather than fail the request
            return None

    def frame_inbound_header(self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits,
                             payload_length: int) -> CloseReason | RsvBits:
        if self._inbound_compressed is None:  # the first frame of a message
            self._budget = self.max_message_size
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        d = self._decompressor
        assert d is not None
        try:
            out = d.decompress(data, self._budget + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if len(out) > self._budget or d.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        self._budget -= len(out)
        return out

    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol,
                                   data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        return self._inflate(bytes(data))

    def frame_inbound_complete(self, proto: FrameDecoder | FrameProtocol,
                               fin: bool) -> bytes | CloseReason | None:
        if not fin:
            return None
        if not self._inbound_is_compressible or not self._inbound_compressed:
            self._inbound_compressed = None
            return None
        out = self._inflate(b"\x00\x00\xff\xff")
        if isinstance(out, CloseReason):
            return out
        if self.client_no_context_takeover:
            self._decompressor = None
        self._inbound_compressed = None
        return out

    def frame_outbound(self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, data: bytes,
                       fin: bool) -> tuple[RsvBits, bytes]:
        # This module only sends whole messages, so every data frame is a first and last frame.
        if opcode not in (Opcode.TEXT, Opcode.BINARY) or not fin:
            return super().frame_outbound(proto, opcode, rsv, data, fin)
        if len(data) < self.min_size:
            return rsv, data
        if self._compressor is None:
            bits = min(self.server_max_window_bits, self.WINDOW_BITS)
            self._compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits,
                                                self.MEM_LEVEL)
        out = self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        if self.server_no_context_takeover:
            self._compressor = None
        return RsvBits(True, rsv.rsv2, rsv.rsv3), out[:-4]


class Closed:
    """The connection reached CLOSED (or FAILED): `code` is the close code of record."""

    __slots__ = ("code", "reason", "by_peer")

    def __init__(self, code: int, reason: str, by_peer: bool) -> None:
        self.code = code
        self.reason = reason
        self.by_peer = by_peer

    def __repr__(self) -> str:
        return f"Closed({self.code}, {self.reason!r}, by_peer={self.by_peer})"


class Pong:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


Message = str | bytearray
Event = Message | Pong | Closed


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class WebSocketProtocol:
    """The server side of one connection. `receive(data)` returns, in order, the whole
    messages (str for text, bytearray for binary, as gevent-websocket returns them), Pong
    events, and at most one Closed."""

    __slots__ = ("state", "_proto", "_out", "_parts", "_text", "_size", "_frame", "max_message_size",
                 "max_frame_size", "close_code", "close_reason", "_buf", "_through", "_fragmented",
                 "_fast_in", "_fast_out")

    def __init__(self, *, max_message_size: int, max_frame_size: int,
                 extensions: list[Extension] | None = None) -> None:
        self.state = State.OPEN
        self._proto = FrameProtocol(client=False, extensions=extensions or [])
        # The fast path (see _receive): bytes of a frame not yet whole, the bytes of a frame
        # wsproto is reading that it has not been given yet, whether a fragmented message is
        # in progress (its frames all go to wsproto), the largest payload taken here, and
        # the largest message sent without wsproto (none when it would be compressed).
        self._buf = b""
        self._through = 0
        self._fragmented = False
        self._fast_in = min(FAST_MAX, max_frame_size, max_message_size)
        deflate = [e for e in extensions or [] if isinstance(e, PerMessageDeflate)]
        if not extensions:
            self._fast_out = 1 << 62
        elif len(deflate) == len(extensions) and isinstance(deflate[0], BoundedDeflate):
            self._fast_out = deflate[0].min_size - 1  # shorter messages go out uncompressed
        else:
            self._fast_out = -1
        self._out = bytearray()
        self._parts: list[str] | bytearray | None = None  # the message being assembled
        self._text = False
        self._size = 0  # bytes in the message so far
        self._frame = 0  # bytes in the current frame so far
        self.max_message_size = max_message_size
        self.max_frame_size = max_frame_size
        self.close_code: int | None = None  # of record, once CLOSING, FAILED or CLOSED
        self.close_reason = ""

    # ---------------------------------------------------------------- input
    def receive(self, data: bytes) -> list[Event]:
        """Feed what the peer sent; b"" means the peer closed the stream."""
        state = self.state
        if not data:
            self.state = step(state, Ev.EOF)
            if state is State.OPEN:
                self.close_code = ABNORMAL
                self.close_reason = "the peer closed the connection without a close frame"
                return [Closed(ABNORMAL, self.close_reason, True)]
            if state is State.CLOSING:
                return [Closed(self.close_code or ABNORMAL, self.close_reason, False)]
            return []
        if state is State.CLOSED:
            step(state, Ev.DATA_IN)  # raises: DATA_IN leaves every other state as it is (the table)
        if state is State.FAILED:
            return []  # RFC 6455 7.1.7: no more processing of the peer's data
        events: list[Event] = []
        try:
            self._receive(self._buf + data if self._buf else data, events)
        except ParseFailed as e:
            events.append(self._fail(int(e.code), str(e)))
        except _TooBig as e:
            events.append(self._fail(TOO_BIG, str(e)))
        return events

    def receive_one(self, data: bytes) -> Message | None:
        """The commonest read, taken whole without the event list: `data` is exactly one
        masked, unfragmented text or binary frame under 126 bytes (valid UTF-8 for text),
        read while OPEN with nothing buffered and no fragmented message in progress. Returns the
        message; None: not that read, nothing was taken (give it to receive(), which reports
        what is wrong with it, if anything)."""
        n = len(data) - 6
        if n < 0 or n >= 126 or data[1] != 0x80 | n or self._buf or self._through or self._fragmented \
                or self.state is not State.OPEN or n > self._fast_in:
            return None
        b0 = data[0]
        if b0 == 0x81:
            try:
                return _unmask(data[6:], data[2:6]).decode("utf-8")
            except UnicodeDecodeError:
                return None
        if b0 == 0x82:
            return bytearray(_unmask(data[6:], data[2:6]))
        return None

    def _receive(self, buf: bytes, events: list[Event]) -> None:
        """Frame by frame. The common frame (a whole unfragmented masked text or binary
        message, no reserved bits, its payload under FAST_MAX, in its minimal length form)
        is taken here: unmasked and UTF-8-checked by CPython's C code, which is most of what a
        small message costs. Every other frame (control frames, fragments, compressed or large
        frames, and every malformed one) goes to wsproto as it is, whole or streamed: wsproto
        only ever sees frames from their first byte, and never one taken here between its
        fragments, so its state is what it would be had it seen them all."""
        self._buf = b""
        pos, end = 0, len(buf)
        while pos < end and self.state is not State.CLOSED and self.state is not State.FAILED:
            through = self._through
            if through:  # the rest of a frame wsproto is reading
                n = min(through, end - pos)
                self._through = through - n
                self._feed(buf[pos:pos + n] if pos or n < end else buf, events)
                pos += n
                continue
            if end - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            n, h = b1 & 0x7F, 2
            if n == 126:
                if end - pos < 4:
                    break
                n, h = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif n == 127:
                if end - pos < 10:
                    break
                n, h = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if b1 & 0x80:
                h += 4
            total = h + n
            op = b0 & 0x0F
            if ((b0 & 0xF0) == 0x80 and (op == 1 or op == 2) and b1 & 0x80 and not self._fragmented
                    and n <= self._fast_in and (n < 126 if h == 6 else (h == 8 and n >= 126))):
                if end - pos < total:
                    if total <= FAST_WAIT:
                        break  # wait for the rest of this frame
                    # A larger frame arriving in pieces goes to wsproto, which streams it,
                    # rather than being copied into a growing buffer piece after piece.
                    self._fragmented = False
                    self._through = total - (end - pos)
                    self._feed(buf[pos:] if pos else buf, events)
                    return
                start = pos + h
                pos += total
                payload = _unmask(buf[start:pos], buf[start - 4:start])
                # (no limit to check: n is within both, and no message is being assembled)
                if op == 1:
                    try:
                        msg: Message = payload.decode("utf-8")
                    except UnicodeDecodeError as e:  # (the reason wsproto would give)
                        events.append(self._fail(INVALID_DATA, str(e)))
                        return
                else:
                    msg = bytearray(payload)
                if self.state is State.OPEN:
                    events.append(msg)
                continue
            if op < 8:  # a data frame wsproto reads: is a fragmented message in progress after it?
                self._fragmented = not b0 & 0x80
            take = min(total, end - pos)
            self._through = total - take
            self._feed(buf[pos:pos + take] if pos or take < end else buf, events)
            pos += take
        if pos < end and self.state is not State.CLOSED and self.state is not State.FAILED:
            self._buf = buf[pos:]

    def _feed(self, data: bytes, events: list[Event]) -> None:
        """Bytes of frames for wsproto, from a frame's first byte on."""
        self._proto.receive_bytes(data)
        for frame in self._proto.received_frames():
            op = frame.opcode
            if op is Opcode.TEXT or op is Opcode.BINARY:
                msg = self._data(frame.payload, op is Opcode.TEXT, frame.frame_finished,
                                 frame.message_finished)
                if msg is not None and self.state is State.OPEN:
                    events.append(msg)
            elif op is Opcode.PING:
                if self.state is State.OPEN:
                    self._out += self._proto.pong(frame.payload)  # type: ignore[arg-type]
            elif op is Opcode.PONG:
                events.append(Pong(frame.payload))  # type: ignore[arg-type]
            elif op is Opcode.CLOSE:
                events.append(self._close_in(*frame.payload))
                break

    def _data(self, payload: object, text: bool, frame_done: bool, message_done: bool) -> Message | None:
        if isinstance(payload, str):
            n = utf8_len(payload)
        else:
            assert isinstance(payload, (bytes, bytearray))
            n = len(payload)
        self._frame += n
        self._size += n
        if self._frame > self.max_frame_size:
            raise _TooBig(f"frame larger than {self.max_frame_size} bytes")
        if self._size > self.max_message_size:
            raise _TooBig(f"message larger than {self.max_message_size} bytes")
        if frame_done:
            self._frame = 0
        parts = self._parts
        if message_done and parts is None:  # the common case: one frame, one piece
            self._size = 0
            return payload if text else bytearray(payload)  # type: ignore[return-value, arg-type]
        if parts is None:
            parts = self._parts = [] if text else bytearray()
            self._text = text
        if text:
            parts.append(payload)  # type: ignore[arg-type]
        else:
            parts += payload  # type: ignore[operator]
        if not message_done:
            return None
        self._parts = None
        self._size = 0
        return "".join(parts) if text else parts  # type: ignore[arg-type, return-value]

    def _close_in(self, code: int, reason: str) -> Closed:
        state = self.state
        self.state = step(state, Ev.CLOSE_IN)
        if state is State.OPEN:
            # Echo the peer's code (RFC 6455 5.5.1); a close without a code is answered without one.
            self._out += self._proto.close(None if code == NO_STATUS else code)
            self.close_code, self.close_reason = int(code), reason
            return Closed(int(code), reason, True)
        return Closed(self.close_code or int(code), self.close_reason, False)

    def _fail(self, code: int, reason: str) -> Closed:
        """Fail the connection (RFC 6455 7.1.7): a close frame with `code` if we have not sent one."""
        state = self.state
        self.state = step(state, Ev.ERROR)
        if state is State.OPEN:
            self._out += self._proto.close(code, reason[:120])
            self.close_code, self.close_reason = code, reason
        return Closed(self.close_code or code, reason, False)

    # ---------------------------------------------------------------- output
    def data_to_send(self) -> bytes:
        """Replies `receive` queued (pongs, the close echo, our close frame on an error)."""
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    def send(self, message: str | bytes | bytearray | memoryview) -> bytes:
        """One whole message: text for str, binary otherwise."""
        if self.state is not State.OPEN:
            step(self.state, Ev.DATA_OUT)  # raises: only OPEN sends, and stays OPEN (the table)
        if isinstance(message, str):
            data, first = message.encode("utf-8"), 0x81
        else:
            data, first = bytes(message), 0x82
        n = len(data)
        if n > self._fast_out:  # compressed: wsproto and its extension frame it
            return bytes(self._proto.send_data(message if isinstance(message, str) else data))
        # an uncompressed whole message is one unmasked frame (RFC 6455 5.2), its length in
        # its minimal form
        if n < 126:
            return bytes((first, n)) + data
        if n < 65536:
            return bytes((first, 126)) + n.to_bytes(2, "big") + data
        return bytes((first, 127)) + n.to_bytes(8, "big") + data

    def ping(self, payload: bytes = b"") -> bytes:
        self.state = step(self.state, Ev.PING_OUT)
        return bytes(self._proto.ping(payload))

    def pong(self, payload: bytes = b"") -> bytes:
        """An unsolicited pong (RFC 6455 5.5.3: a one-way heartbeat)."""
        self.state = step(self.state, Ev.PING_OUT)
        return bytes(self._proto.pong(payload))

    def close(self, code: int = NORMAL, reason: str = "") -> bytes:
        """Start the closing handshake with our close frame."""
        self.state = step(self.state, Ev.CLOSE_OUT)
        self.close_code, self.close_reason = code, reason
        return bytes(self._proto.close(code, reason or None))


class _TooBig(Exception):
    pass


FAST_MAX: Final = 65535  # the largest frame payload the fast path takes (a 16-bit length)
FAST_WAIT: Final = 8192  # the largest frame the fast path waits for when it comes in pieces


def _unmask(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 5.3, as one big-integer XOR (C speed for any length)."""
    n = len(payload)
    if not n:
        return b""
    mask = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")


def valid_close_code(code: int) -> bool:
    """Whether an application may send `code` (RFC 6455 7.4.1 and 7.4.2)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013) or \
        3000 <= code <= 4999

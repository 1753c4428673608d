"""The HTTP/2 connection, sans-IO: the `h2` library's state machine with the server's rules added.

`h2` parses and serializes frames, keeps the streams' and the connection's states, flow
control and HPACK; we do not redo any of it. What a production server needs beyond it is
added here, in a subclass and two replaced parts, each at a documented seam of h2 4.x:

- Stream errors stay stream errors (RFC 9113 5.4.2, 8.1.1). h2 raises a connection error
  for a request whose content-length is malformed or disagrees with its DATA, for trailers
  without END_STREAM and for a stream depending on itself; here those reset the one stream
  (RST_STREAM PROTOCOL_ERROR) and surface as a StreamMalformed event.
- Errors carry the code the RFC names: a header block that fails to decompress is a
  COMPRESSION_ERROR (RFC 9113 4.3), not h2's PROTOCOL_ERROR; floods and HPACK bombs are
  ENHANCE_YOUR_CALM. Every connection error has a metrics error_type (`error_type()`).
- Abuse is bounded before h2 spends work on it: the frame buffer counts each frame against
  the flood budgets of h2guard.py and bounds a header block (its size and its CONTINUATION
  frames, CVE-2024-27316); the HPACK decoder stops at a hard bound on the decoded size.
- REFUSED_STREAM instead of a dead connection past SETTINGS_MAX_CONCURRENT_STREAMS: h2
  would make that a connection error; the driver refuses such streams itself.
- Graceful GOAWAY: h2 closes its side as soon as a GOAWAY is sent or received, and drops
  queued output; RFC 9113 6.8 lets the streams below the last stream id complete, so the
  GOAWAY frames go out (and come in) without touching h2's connection state.
- Our settings are in force from the first byte: they are in the initial SETTINGS frame
  and h2's view of them is set before it, not after the peer's ACK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from h2.config import H2Configuration
from h2.connection import AllowedStreamIDs, ConnectionInputs, H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, Event, RequestReceived
from h2.exceptions import (
    DenialOfServiceError,
    FlowControlError,
    FrameTooLargeError,
    InvalidBodyLengthError,
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
)
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from h2.stream import StreamInputs
from h2.utilities import HeaderValidationFlags
from hpack import Encoder, HPACKError, OversizedHeaderListError
from hpack import hpack as hpack_module
from hpack import table as hpack_table
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from greenfork.workers.h2guard import (
    EMPTY,
    PING,
    PRIORITY,
    RESET,
    SETTINGS,
    WINDOW_UPDATE,
    Guard,
)
from greenfork.workers.h2hpack import MemoDecoder, MemoEncoder


class _Quiet:
    """hpack's module logger, in a worker: hpack logs at debug level several times for every
    header it encodes or decodes (twenty calls a request, a tenth of h2's own cost), and its
    debug output is never wanted in a server's log."""

    @staticmethod
    def debug(*args: object, **kwargs: object) -> None:
        pass


hpack_module.log = _Quiet()  # type: ignore[assignment]
hpack_table.log = _Quiet()  # type: ignore[assignment]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# (h2 reads these only when header normalization or validation is on, which it is not here)
_NO_FLAGS: Final = HeaderValidationFlags(is_client=False, is_trailer=False, is_response_header=True,
                                         is_push_promise=False)
MAX_STREAM_ID: Final = 2**31 - 1
DEFAULT_CONNECTION_WINDOW: Final = 65535  # RFC 9113 6.9.2: the connection window starts here
# Frames of one header block (HEADERS or PUSH_PROMISE and its CONTINUATIONs): a real client
# needs a few (a 32 KiB header section at the smallest frame size is 3).
MAX_BLOCK_FRAMES: Final = 32
ENCODER_TABLE: Final = 1024  # bytes of HPACK dynamic table our encoder uses (SmallTableEncoder)
PRUNE_AT: Final = 64  # streams h2 keeps (open and closed) before it is asked to forget the closed


@dataclass(frozen=True, slots=True)
class H2Limits:
    """Kestrel's Http2Limits (its defaults), and the HTTP/1.1 header limits per stream."""

    max_concurrent_streams: int = 100
    header_table_size: int = 4096
    max_frame_size: int = 16384
    max_header_field_size: int = 16384
    max_header_list_size: int = 32768  # --max-request-headers-total-size
    max_header_count: int = 100  # --max-request-header-count
    max_request_line: int = 8192  # --max-request-line-size, for :method and :path
    initial_window_size: int = 768 * 1024
    connection_window_size: int = 1 << 20
    ping_delay: float = 0.0  # 0: no keep-alive pings
    ping_timeout: float = 20.0

    @classmethod
    def from_settings(cls, s: Any) -> H2Limits:
        return cls(max_concurrent_streams=s.http2_max_concurrent_streams,
                   header_table_size=s.http2_header_table_size, max_frame_size=s.http2_max_frame_size,
                   max_header_field_size=s.http2_max_request_header_field_size,
                   max_header_list_size=s.max_request_headers_total_size,
                   max_header_count=s.max_request_header_count, max_request_line=s.max_request_line_size,
                   initial_window_size=s.http2_initial_window_size,
                   connection_window_size=s.http2_initial_connection_window_size,
                   ping_delay=s.http2_keep_alive_ping_delay, ping_timeout=s.http2_keep_alive_ping_timeout)

    @property
    def decoded_bound(self) -> int:
        """The HPACK decoder's hard stop (RFC 7541 sizes: name, value and 32 per field). A
        header section between the advertised limit and this gets 431 on its stream; past it
        decoding stops, and since the HPACK state is then lost, so does the connection."""
        return 2 * self.max_header_list_size + 32 * self.max_header_count

    @property
    def block_bound(self) -> int:
        """The largest encoded header block buffered: HPACK rarely makes a field larger than
        its text, so a block past this cannot decode to an acceptable header section."""
        return 2 * self.max_header_list_size + self.max_frame_size


class H2Abuse(ProtocolError):
    """A connection error found by our own rules (raised inside h2, which then queues the
    GOAWAY with this error_code)."""

    def __init__(self, message: str, error_code: ErrorCodes, error_type: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.error_type = error_type


class StreamMalformed(Event):
    """A stream we reset with PROTOCOL_ERROR: its request is malformed (RFC 9113 8.1.1), or
    another stream error (error_type says which)."""

    def __init__(self, stream_id: int, reason: str, error_type: str = "invalid_request_headers") -> None:
        self.stream_id = stream_id
        self.reason = reason
        self.error_type = error_type

    def __repr__(self) -> str:
        return f"<StreamMalformed stream_id:{self.stream_id}, reason:{self.reason}>"


def error_type(exc: Exception) -> str:
    """The metrics error_type of a connection error raised by h2 (or by our rules)."""
    if isinstance(exc, H2Abuse):
        return exc.error_type
    if isinstance(exc, FrameTooLargeError):
        return "max_frame_length_exceeded"
    if isinstance(exc, FlowControlError):
        return "flow_control_window_exceeded"
    if isinstance(exc, DenialOfServiceError):
        return "max_request_headers_total_size_exceeded"
    return "http2_protocol_error"


def cipher_allowed(tls_version: str, cipher: str) -> bool:
    """RFC 9113 9.2.2: HTTP/2 over TLS 1.2 only with ephemeral key exchange and an AEAD cipher
    (Appendix A lists every other suite); TLS 1.3's suites all qualify."""
    if tls_version != "TLSv1.2":
        return True
    return cipher.startswith(("ECDHE-", "DHE-")) and any(x in cipher for x in ("GCM", "CHACHA20", "CCM"))


def goaway(last_stream_id: int, code: ErrorCodes = ErrorCodes.NO_ERROR) -> bytes:
    """A GOAWAY frame, serialized."""
    return bytes(GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code).serialize())


class SmallTableEncoder(MemoEncoder):
    """h2's HPACK encoder, keeping a dynamic table of at most ENCODER_TABLE bytes whatever the
    peer allows (RFC 7541 4.2 lets the encoder use less, with a size update it sends). The
    encoder searches its table linearly for every field it sends, and the Date value adds an
    entry each second: at 4 KiB a long-lived connection's table fills with old dates and each
    response walks dozens of them. A few stable response fields fit in 1 KiB."""

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        Encoder.header_table_size.fset(self, min(value, ENCODER_TABLE))  # type: ignore[attr-defined]


class GuardedDecoder(MemoDecoder):
    """h2's HPACK decoder with the RFC's error code and a hard bound on the decoded size."""

    def decode(self, data: bytes, raw: bool = False) -> Any:
        try:
            return MemoDecoder.decode(self, data, raw)
        except OversizedHeaderListError:
            # h2 calls this a DenialOfServiceError; the error code is the same
            raise H2Abuse("the header block decodes past the bound (an HPACK bomb)",
                          ErrorCodes.ENHANCE_YOUR_CALM, "max_request_headers_total_size_exceeded") from None
        except (HPACKError, IndexError, TypeError, ValueError, UnicodeDecodeError) as e:
            # RFC 9113 4.3: a field block that fails to decompress is a COMPRESSION_ERROR
            raise H2Abuse(f"the header block fails to decompress: {e}", ErrorCodes.COMPRESSION_ERROR,
                          "hpack_decode_failed") from None


class ZeroWindowUpdate(Frame):
    """A WINDOW_UPDATE of 0 on a stream: hyperframe cannot parse it, and h2 would then make
    it a connection error; RFC 9113 6.9 makes it a stream error."""

    type = WindowUpdateFrame.type

    def serialize_body(self) -> bytes:
        return b"\0\0\0\0"


class GuardedFrameBuffer(FrameBuffer):
    """h2's frame buffer, which sees every frame first: each is counted against the flood
    budgets, and a header block is bounded in bytes and frames."""

    def __init__(self, guard: Guard, block_bound: int) -> None:
        super().__init__(server=True)
        self.guard = guard
        self.block_bound = block_bound
        self.block_bytes = 0
        self.block_frames = 0

    @property
    def in_header_block(self) -> bool:
        """A header block has started and waits for its CONTINUATION frames."""
        return bool(self._headers_buffer)

    def __next__(self) -> Frame:
        try:
            return FrameBuffer.__next__(self)
        except ProtocolError:
            # (hyperframe refuses the frame before it leaves the buffer: it is still here)
            data = self._data
            if len(data) >= 13 and data[3] == 0x8 and data[:3] == b"\0\0\4" and not self._headers_buffer \
                    and not (data[9] & 0x7F or data[10] or data[11] or data[12]):
                sid = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
                if sid:
                    del data[:13]
                    self._spend(WINDOW_UPDATE)
                    return ZeroWindowUpdate(sid)
            raise

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        kind = type(f)
        if self._headers_buffer:
            # a block in progress: h2 checks that this is a CONTINUATION of the same stream
            if isinstance(f, ContinuationFrame):
                self.block_frames += 1
                self.block_bytes += len(f.data)
                if self.block_frames > MAX_BLOCK_FRAMES or self.block_bytes > self.block_bound:
                    raise H2Abuse(f"header block of {self.block_frames} frames, {self.block_bytes} bytes",
                                  ErrorCodes.ENHANCE_YOUR_CALM, "continuation_flood")
            return super()._update_header_buffer(f)
        if kind is HeadersFrame:
            assert isinstance(f, HeadersFrame)
            if "END_HEADERS" in f.flags:
                return f  # a whole block: h2's own step would hand it back as it is
            self.block_frames = 1
            self.block_bytes = len(f.data)
            return super()._update_header_buffer(f)
        # Outside a header block h2 hands every other frame back as it is: only the budgets
        if kind is DataFrame:
            assert isinstance(f, DataFrame)
            if not f.data and "END_STREAM" not in f.flags:
                self._spend(EMPTY)
        elif kind is WindowUpdateFrame:
            self._spend(WINDOW_UPDATE)
        elif kind is PingFrame:
            assert f is not None
            if "ACK" not in f.flags:
                self._spend(PING)
        elif kind is SettingsFrame:
            assert f is not None
            if "ACK" not in f.flags:
                self._spend(SETTINGS)
        elif kind is RstStreamFrame:
            self._spend(RESET)
        elif kind is PriorityFrame:
            self._spend(PRIORITY)
        elif kind is ExtensionFrame:
            self._spend(EMPTY)  # ignored by the RFC's rule (5.5), but not for free
        elif kind is not ContinuationFrame:
            return super()._update_header_buffer(f)  # PUSH_PROMISE: h2 refuses it later
        return f

    def _spend(self, kind: int) -> None:
        flood = self.guard.spend(kind)
        if flood is not None:
            raise H2Abuse(flood.replace("_", " "), ErrorCodes.ENHANCE_YOUR_CALM, flood)


class ServerConnection(H2Connection):
    """h2's connection, server side, with the rules of the module docstring."""

    def __init__(self, limits: H2Limits, guard: Guard) -> None:
        # h2 remembers how each closed stream ended (for frames still in flight) in a dict of
        # 65536 entries per connection by default: a few MB a connection. A few hundred cover
        # what can be in flight.
        self.MAX_CLOSED_STREAMS = max(256, 4 * limits.max_concurrent_streams)
        super().__init__(H2Configuration(
            client_side=False, header_encoding=None,
            # Header rules are ours (h2stream.py: a malformed request is a stream error, h2's
            # checks raise connection errors); responses are built valid (h2response.py).
            validate_inbound_headers=False, normalize_inbound_headers=False,
            validate_outbound_headers=False, normalize_outbound_headers=False))
        self.limits = limits
        self._prune_at = PRUNE_AT
        self.local_settings = Settings(client=False, initial_values={
            SettingCodes.HEADER_TABLE_SIZE: limits.header_table_size,
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_window_size,
            SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
        })
        self.max_inbound_frame_size = limits.max_frame_size
        self.encoder = SmallTableEncoder()
        self.encoder.header_table_size = ENCODER_TABLE
        self.decoder = GuardedDecoder(limits.decoded_bound)
        self.decoder.max_allowed_table_size = limits.header_table_size
        self.incoming_buffer = GuardedFrameBuffer(guard, limits.block_bound)
        self._frame_dispatch_table[ZeroWindowUpdate] = self._receive_zero_window_update

    def start(self) -> None:
        """The server's connection preface: SETTINGS, then the connection window opened
        to its configured size (SETTINGS cannot change that one)."""
        self.initiate_connection()
        extra = self.limits.connection_window_size - DEFAULT_CONNECTION_WINDOW
        if extra > 0:
            self.increment_flow_control_window(extra)

    @property
    def in_header_block(self) -> bool:
        buffer = self.incoming_buffer
        return isinstance(buffer, GuardedFrameBuffer) and buffer.in_header_block

    # ------------------------------------------------------- the frame path
    def _receive_frame(self, frame: Frame) -> list[Event]:
        # h2's own, less its trace line: h2 formats every frame it receives with repr() even
        # when nothing logs (about a tenth of what a small request costs the server)
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # closed by a reset: a stream error (RST_STREAM); else a connection error
            if not self._stream_is_closed_by_reset(e.stream_id):
                raise
            self._prepare_for_sending([RstStreamFrame(e.stream_id, error_code=e.error_code)])
            return e._events
        except StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                self._prepare_for_sending([RstStreamFrame(e.stream_id, error_code=ErrorCodes.STREAM_CLOSED)])
                return []
            if self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            raise
        self._prepare_for_sending(frames)
        return events  # type: ignore[no-any-return]

    def send_response(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool,
                      body: bytes = b"") -> bool:
        """h2's send_headers for a server's final response (status >= 200, built valid and as
        bytes by h2message.py), without the steps such a response never needs: client-side
        checks, priority, encoding bytes to bytes, looking for :method or a 1xx status, the
        validation flags of checks that are off. The same state machines, HPACK encoder and
        frames (it is a quarter of what the response side of a small request costs).

        With a body (and not end_stream), the whole response goes with it: one DATA frame
        with END_STREAM, if the windows and the frame size allow; returns whether it did."""
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        stream = self._get_stream_by_id(stream_id)
        stream.state_machine.process_input(StreamInputs.SEND_HEADERS)
        frames: list[Frame] = list(stream._build_headers_frames(
            headers, self.encoder, HeadersFrame(stream_id), _NO_FLAGS))
        if end_stream:
            stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
            frames[0].flags.add("END_STREAM")
        size = len(body)
        done = 0 < size <= self.max_outbound_frame_size and size <= self.outbound_flow_control_window \
            and size <= stream.outbound_flow_control_window
        if done:
            self.state_machine.process_input(ConnectionInputs.SEND_DATA)
            frames += stream.send_data(body, True)
            self.outbound_flow_control_window -= size
        self._prepare_for_sending(frames)
        return done

    def send_body(self, stream_id: int, data: bytes | memoryview, end_stream: bool) -> None:
        """h2's send_data for one unpadded DATA frame: the same checks (window, frame size),
        state machines and frame, the stream looked up once instead of three times."""
        size = len(data)
        stream = self._get_stream_by_id(stream_id)
        if size > self.outbound_flow_control_window or size > stream.outbound_flow_control_window:
            raise FlowControlError(f"Cannot send {size} bytes, the flow-control window is smaller")
        if size > self.max_outbound_frame_size:
            raise FrameTooLargeError(f"Cannot send a frame of {size} bytes")
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        self._prepare_for_sending(stream.send_data(data, end_stream))
        self.outbound_flow_control_window -= size

    # ---------------------------------------------------------------- GOAWAY
    def send_goaway(self, last_stream_id: int) -> None:
        """A graceful GOAWAY (NO_ERROR): no new streams past last_stream_id, the others
        complete. h2's close_connection would end every stream at once."""
        self._prepare_for_sending([GoAwayFrame(0, last_stream_id=last_stream_id,
                                               error_code=ErrorCodes.NO_ERROR)])

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        # The peer opens no more streams; ours below its last stream id may still complete
        # (h2 would close the connection and drop the responses queued for them).
        ev = ConnectionTerminated()
        ev.error_code = _code(frame.error_code)
        ev.last_stream_id = frame.last_stream_id
        ev.additional_data = frame.additional_data or None
        return [], [ev]

    # -------------------------------------------------------- stream limit
    @property
    def open_inbound_streams(self) -> int:
        # h2 reads this for each new stream, to answer one past the limit with a connection
        # error: the driver refuses such streams itself, with REFUSED_STREAM. Reading it is
        # also when h2 forgets closed streams, walking all of them: done here only once their
        # number has doubled, so the walk costs O(1) a stream.
        if len(self.streams) >= self._prune_at:
            H2Connection.open_inbound_streams.fget(self)  # type: ignore[attr-defined]
            self._prune_at = max(PRUNE_AT, 2 * len(self.streams))
        return 0

    # ------------------------------------------------ stream errors stay so
    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[Event]]:
        try:
            if frame.stream_id in self.streams:  # trailers, or a frame on a stream that is done
                return super()._receive_headers_frame(frame)
            return self._receive_request(frame)
        except ProtocolError as e:
            # Raised after the block decoded and the stream opened (h2's checks of
            # content-length, trailers, a stream depending on itself): the request is
            # malformed, a stream error. Anything earlier (H2Abuse, the stream's state, the
            # connection's state) is a subclass or left the stream unopened: a connection error.
            if type(e) is not ProtocolError or not self._open_stream(frame.stream_id):
                raise
            return self._malformed(frame.stream_id, str(e))

    def _receive_request(self, frame: HeadersFrame) -> tuple[list[Frame], list[Event]]:
        """h2's receipt of a HEADERS frame opening a stream, less what a server never needs:
        the concurrency check (the driver refuses streams itself), looking for a 1xx status
        (a client sends none), the validation flags of checks that are off. The same decoder,
        state machines, stream and content-length tracking, and the same events."""
        self.open_inbound_streams  # noqa: B018  (forgets closed streams now and then)
        headers = self.decoder.decode(frame.data, raw=True)  # GuardedDecoder: the RFC's errors
        events: list[Event] = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = self._begin_new_stream(frame.stream_id, AllowedStreamIDs.ODD)
        received: list[Event] = stream.state_machine.process_input(StreamInputs.RECV_HEADERS)
        request = received[0]
        assert isinstance(request, RequestReceived)
        if "END_STREAM" in frame.flags:
            ended = stream.state_machine.process_input(StreamInputs.RECV_END_STREAM)
            request.stream_ended = ended[0]  # type: ignore[assignment]  # (a StreamEnded)
            received += ended
        stream._initialize_content_length(headers)
        request.headers = headers  # type: ignore[assignment]  # (the decoder's list)
        if "PRIORITY" in frame.flags:
            _, updated = self._receive_priority_frame(frame)
            request.priority_updated = updated[0]  # type: ignore[assignment]  # (a PriorityUpdated)
            received += updated
        return [], events + received

    def _receive_data_frame(self, frame: DataFrame) -> tuple[list[Frame], list[Event]]:
        try:
            return super()._receive_data_frame(frame)
        except InvalidBodyLengthError as e:
            # RFC 9113 8.1.1: DATA that disagrees with content-length makes the request
            # malformed. The connection window still gets these bytes back (nobody reads them).
            frames, events = self._malformed(frame.stream_id, str(e))
            increment = self._inbound_flow_control_window_manager.process_bytes(frame.flow_controlled_length)
            if increment:
                frames.append(WindowUpdateFrame(0, window_increment=increment))
            return frames, events

    def _receive_rst_stream_frame(self, frame: RstStreamFrame) -> tuple[list[Frame], list[Event]]:
        sid = frame.stream_id
        if sid > (self.highest_inbound_stream_id if sid % 2 else self.highest_outbound_stream_id):
            # RFC 9113 6.4: RST_STREAM for an idle stream is a connection error (h2 ignores it)
            raise ProtocolError(f"RST_STREAM for the idle stream {sid}")
        return super()._receive_rst_stream_frame(frame)

    def _receive_priority_frame(self, frame: HeadersFrame | PriorityFrame) -> tuple[list[Frame], list[Event]]:
        if type(frame) is PriorityFrame and frame.depends_on == frame.stream_id:
            # RFC 9113 5.3.1: a stream error (h2 makes it a connection error)
            if self._open_stream(frame.stream_id):
                return self._malformed(frame.stream_id, "the stream depends on itself")
            return [RstStreamFrame(frame.stream_id, error_code=ErrorCodes.PROTOCOL_ERROR)], []
        return super()._receive_priority_frame(frame)

    def _receive_zero_window_update(self, frame: ZeroWindowUpdate) -> tuple[list[Frame], list[Event]]:
        sid = frame.stream_id
        if self._open_stream(sid):
            return self._malformed(sid, "WINDOW_UPDATE of 0", "http2_protocol_error")
        if sid > (self.highest_inbound_stream_id if sid % 2 else self.highest_outbound_stream_id):
            raise ProtocolError(f"WINDOW_UPDATE for the idle stream {sid}")  # RFC 9113 5.1
        return [], []  # a closed stream's: nothing to reset

    def _open_stream(self, stream_id: int) -> bool:
        stream = self.streams.get(stream_id)
        return stream is not None and not stream.closed

    def _malformed(self, stream_id: int, reason: str,
                   error_type: str = "invalid_request_headers") -> tuple[list[Frame], list[Event]]:
        frames: list[Frame] = self.streams[stream_id].reset_stream(ErrorCodes.PROTOCOL_ERROR)
        return frames, [StreamMalformed(stream_id, reason, error_type)]


def _code(value: int) -> ErrorCodes | int:
    try:
        return ErrorCodes(value)
    except ValueError:
        return value


__all__ = ["MAX_STREAM_ID", "PREFACE", "GuardedDecoder", "GuardedFrameBuffer", "H2Abuse", "H2Limits",
           "ServerConnection", "StreamMalformed", "cipher_allowed", "error_type", "goaway"]

"""One upgraded connection under gevent: the hand-off object between the server and the app.

The server makes an `Upgrade` for a valid WebSocket request before it calls the app, and
the app takes the connection over in one of two ways, whichever it touches first:
- through `environ["wsgi.websocket"]` (gevent-websocket's API, websocket_api.py): the 101
  goes out on that first touch, framing is ours (websocket_protocol.py);
- through the raw socket in `environ["gunicorn.socket"]` (websocket_raw.py), which
  simple-websocket (flask-sock, python-engineio without gevent-websocket) finds there and
  over which it writes its own 101 and frames.
An app that touches neither gets its ordinary HTTP response sent: the upgrade never
happened. So both kinds of app run on one server with no setting, and a WebSocket route
can still refuse with an HTTP status. gevent-websocket itself sends the 101 before calling
the app; here it waits for the app's first touch of `wsgi.websocket` (any method or
attribute, `closed` and truth tests included), which every app of that kind makes before
it talks.

Under `wsgi.websocket` one greenlet at a time reads the stream, answers pings, completes
close handshakes and queues whole messages for `receive()`: the app's own while it waits in
`receive()` (no greenlet switch between a read and the app, which halves what a small
message costs), else a background reader, so that the client is heard while the app does
something else. The background reader reads a bounded number of messages ahead (then it
stops reading: TCP's flow control reaches the client). Sends from any
greenlet are serialized by one lock, so frames never interleave. Keep-alive pings, the pong
timeout, the idle timeout and the close timeout are the worker's one sweeper
(websocket.py): no connection owns a timer.

Every stream operation records the greenlet inside it, so that an abort (a timeout, the
end of a `going_away` grace) can throw into exactly those waits from the hub, then close
the stream: the stream itself only needs recv, send and close.
"""

from __future__ import annotations

import enum
import importlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from greenfork.workers.websocket_handshake import Offer, accept
from greenfork.workers.websocket_protocol import (
    ABNORMAL,
    GOING_AWAY,
    NORMAL,
    BoundedDeflate,
    Closed,
    State,
    StateError,
    WebSocketProtocol,
    utf8_len,
)

if TYPE_CHECKING:
    from greenfork.workers.websocket import WebSockets

log = logging.getLogger("greenfork.worker")

_Base: type[OSError]
try:  # apps written for gevent-websocket catch its exception class: raise one they catch
    _Base = importlib.import_module("geventwebsocket.exceptions").WebSocketError
except ImportError:  # pragma: no cover - depends on what the app installed
    _Base = OSError


class WebSocketError(_Base):  # type: ignore[valid-type, misc]
    """gevent-websocket's WebSocketError (an OSError) when it is installed, else an OSError."""


class Stream(Protocol):
    """What the server hands over: the connection's bytes, decrypted under TLS.

    recv() and send() may run at the same time in two greenlets (one reader, one writer);
    a greenlet blocked in either may get an exception thrown into it (the abort), which
    must leave the stream closable. close() is called once, from the hub, never blocks."""

    pending: bytes

    def recv(self) -> bytes: ...

    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-worker WebSocket limits and timers (seconds; 0 turns a timer off)."""

    max_message_size: int = 16 << 20  # a larger message closes with 1009
    max_frame_size: int = 16 << 20  # a larger frame (payload, after inflating) closes with 1009
    ping_interval: float = 20.0  # a ping after this long without hearing from the client
    ping_timeout: float = 20.0  # no byte from the client this long after a ping: the connection is dead
    idle_timeout: float = 0.0  # no message either way for this long: close with 1001
    close_timeout: float = 5.0  # the peer's close frame (or EOF) is awaited this long after ours
    compression: bool = True  # accept permessage-deflate (RFC 7692) when the client offers it
    max_queued: int = 32  # whole messages read ahead of the app's receive()

    def __post_init__(self) -> None:
        if self.max_message_size < 1 or self.max_frame_size < 1 or self.max_queued < 1:
            raise ValueError("WebSocket sizes must be positive")
        for name in ("ping_interval", "ping_timeout", "idle_timeout", "close_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"WebSocket {name} must not be negative")
        if self.ping_interval and not self.ping_timeout:
            raise ValueError("a ping_interval needs a ping_timeout")


class Observer:
    """Metrics hooks, no-ops here. Called from worker greenlets and from the hub: they must
    be cheap and must not block. `closed` gets the close code of record: the peer's code when
    it closed first, ours when we did, 1006 when the connection ended without a handshake."""

    # whether received() and sent() want the sizes: without metrics, a message's UTF-8 length is
    # not worked out just to be dropped
    sizes: bool = False

    def opened(self) -> None:
        pass

    def received(self, size: int) -> None:
        pass

    def sent(self, size: int) -> None:
        pass

    def closed(self, code: int) -> None:
        pass


class Mode(enum.Enum):
    PENDING = "pending"  # the app has not touched either object
    WEBSOCKET = "websocket"  # wsgi.websocket: our handshake and framing
    RAW = "raw"  # the raw socket: the app's library does both


_CLAIM: Final[dict[tuple[Mode, Mode], Mode]] = {
    (Mode.PENDING, Mode.WEBSOCKET): Mode.WEBSOCKET,
    (Mode.PENDING, Mode.RAW): Mode.RAW,
    (Mode.WEBSOCKET, Mode.WEBSOCKET): Mode.WEBSOCKET,
    (Mode.RAW, Mode.RAW): Mode.RAW,
}


class Aborted(BaseException):
    """Thrown into a greenlet waiting in the stream when the connection is aborted.
    A BaseException, so that no `except Exception` between here and the wait swallows it."""


class Upgrade:
    """A valid WebSocket upgrade request, and once the app takes it over, the connection."""

    def __init__(self, owner: WebSockets, environ: dict[str, Any], offer: Offer, stream: Stream,
                 app: object | None) -> None:
        self.owner = owner
        self.limits = owner.limits
        self.observer = owner.observer
        self.environ = environ
        self.offer = offer
        self.stream = stream
        self.app = app
        self.mode = Mode.PENDING
        self.proto: WebSocketProtocol | None = None
        self.inbox: deque[str | bytearray] = deque()
        self.arrived = Event()  # a message (or the end) for receive()
        self.room = Event()  # the app took messages: the paused reader may go on
        self.done = Event()  # the stream is closed
        self.send_lock = Semaphore()
        self.in_recv: Any = None  # the greenlet inside stream.recv(), if any
        self.in_send: Any = None
        self.reader: Any = None  # the greenlet reading and processing input now (one at a time)
        self.background = False  # a background reader greenlet is running
        self.waiting = 0  # greenlets in receive() waiting for the reader
        self.finished = False  # _shutdown ran: the end is decided
        self.code = ABNORMAL  # the close code of record
        self.local_closed = False  # the app called close()
        self.none_delivered = False  # receive() returned None once (gevent-websocket's end signal)
        self.going_away = False
        self.paused = False
        # read by the sweeper (websocket.py); plain fields, no timers
        self.rx = 0  # bytes received
        self.msgs = 0  # messages either way
        self.ping_at = 0.0  # when the next ping is due (0.0: not armed yet)
        self.ping_sent = 0.0  # when the outstanding ping went out (0.0: none)
        self.rx_at_ping = 0
        self.idle_at = 0.0
        self.msgs_seen = 0
        self.close_at = 0.0  # the close handshake's deadline (0.0: not armed yet)
        self.raw: Any = None  # websocket_raw.RawSocket, once made
        self.counted = False  # observer.opened() was called: closed() follows once

    # ---------------------------------------------------------------- the server's side
    @property
    def taken_over(self) -> bool:
        return self.mode is not Mode.PENDING

    def finish(self, error: BaseException | None = None) -> bool:
        """Called by the server when the app has returned (or raised `error`). Returns
        whether the app took the connection over; if it did, the close handshake is completed
        (bounded by close_timeout), the stream is closed, and no HTTP response may follow.
        If not, the server sends the app's response (or handles `error`) as for any request."""
        if self.mode is Mode.PENDING:
            self.owner.forget(self)
            return False
        if error is not None:
            if isinstance(error, (StopIteration, OSError, Aborted)):
                # simple-websocket's way of telling gunicorn and werkzeug "the connection is mine"
                log.debug("WebSocket app ended with %r", error)
            else:
                log.error("WebSocket application error on %s", self.environ.get("PATH_INFO"),
                          exc_info=(type(error), error, error.__traceback__))
        if self.mode is Mode.WEBSOCKET and not self.finished:
            proto = self.proto
            if proto is not None and proto.state is State.OPEN:
                # gevent-websocket closes with 1000 when the app returns without closing
                self.close(1011 if error is not None and not isinstance(error, OSError) else NORMAL, "")
        self.close_at = 0.0  # the sweeper arms close_timeout from now (raw connections too)
        self.owner.closing(self)
        self.done.wait()
        return True

    # ---------------------------------------------------------------- taking over
    def claim(self, mode: Mode) -> None:
        """The app touched `mode`'s object. Raises if it already took the other one."""
        current = self.mode
        try:
            self.mode = _CLAIM[current, mode]
        except KeyError:
            raise WebSocketError(f"this connection was already taken over through the {current.value} "
                                 "interface") from None
        if current is not Mode.PENDING:
            return
        if mode is Mode.RAW:
            self.owner.adopt(self)
            return
        limits = self.limits
        extensions = [BoundedDeflate(limits.max_message_size)] if limits.compression else []
        subprotocol = self._subprotocol()
        response, agreed = accept(self.offer, subprotocol, list(extensions))
        self.proto = WebSocketProtocol(max_message_size=limits.max_message_size,
                                       max_frame_size=limits.max_frame_size, extensions=agreed)
        self.owner.adopt(self)
        try:
            with self.send_lock:
                self._write(response)
        except (OSError, Aborted):
            self._shutdown(ABNORMAL)
            return
        self.count_open()
        pending = self.stream.pending  # frames that came with the request head
        if pending:
            self.stream.pending = b""
            self.reader = gevent.getcurrent()
            try:
                self._read(pending)
            finally:
                self.reader = None
        self.read_in_background()  # until the app reads itself, in receive()
        if self.going_away:
            gevent.spawn_raw(self.close, GOING_AWAY, "server going away")

    def _subprotocol(self) -> str | None:
        # gevent-websocket's hook: the application object's app_protocol(path) names it
        chooser = getattr(self.app, "app_protocol", None)
        if chooser is None or not self.offer.subprotocols:
            return None
        try:
            chosen = chooser(self.environ.get("PATH_INFO", ""))
        except Exception:
            log.exception("app_protocol() failed; no subprotocol chosen")
            return None
        return chosen if chosen in self.offer.subprotocols else None

    # ---------------------------------------------------------------- stream operations
    def _recv(self) -> bytes:
        self.in_recv = gevent.getcurrent()
        try:
            data = self.stream.recv()
        finally:
            self.in_recv = None
        self.rx += len(data)
        return data

    def _write(self, data: bytes) -> None:
        """Send bytes; the caller holds send_lock."""
        if self.finished:
            raise WebSocketError("Socket is dead")
        self.in_send = gevent.getcurrent()
        try:
            self.stream.send(data)
        finally:
            self.in_send = None

    # ---------------------------------------------------------------- messages (wsgi.websocket)
    def send(self, message: str | bytes | bytearray | memoryview, size: int) -> None:
        """size: the message's bytes for the metrics; -1 for a str not yet measured."""
        with self.send_lock:
            proto = self.proto
            if proto is None or proto.state is not State.OPEN or self.finished:
                raise WebSocketError("Socket is dead")
            data = proto.send(message)
            # (_write, inline: one frame per message, the commonest write)
            self.in_send = gevent.getcurrent()
            try:
                self.stream.send(data)
            except (OSError, Aborted) as e:
                self._shutdown(ABNORMAL)
                raise WebSocketError("Socket is dead") from e
            finally:
                self.in_send = None
        self.msgs += 1
        if self.observer.sizes:
            self.observer.sent(utf8_len(message) if size < 0 and type(message) is str else size)

    def send_control(self, make: Callable[[], bytes]) -> bool:
        """Send the frame make() returns (a WebSocketProtocol call, made under the lock so
        that frames leave in the order the protocol's state saw them); False if it did not
        go out."""
        with self.send_lock:
            if self.finished:
                return False
            try:
                data = make()
            except StateError:
                return False
            try:
                self._write(data)
            except (OSError, Aborted):
                self._shutdown(ABNORMAL)
                return False
        return True

    def receive(self) -> str | bytearray | None:
        inbox = self.inbox
        while not inbox:
            if self.finished or self.proto is None or self.proto.state is not State.OPEN:
                self.none_delivered = True
                return None
            if self.reader is None:
                # Nobody reads: read here, in the app's greenlet (a reader greenlet handing
                # each message over would cost two greenlet switches and an Event per message).
                self.reader = gevent.getcurrent()
                try:
                    self._read()
                finally:
                    self.reader = None
                continue
            self.waiting += 1
            self.arrived.clear()
            try:
                self.arrived.wait()
            finally:
                self.waiting -= 1
        msg = inbox.popleft()
        if self.paused and len(inbox) < self.limits.max_queued // 2:
            self.room.set()
        return msg

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Start the closing handshake; the reader completes it (or the sweeper's
        close_timeout aborts it)."""
        proto = self.proto
        if proto is None or self.finished:
            return
        self.local_closed = True
        self.inbox.clear()  # the app is done reading: a paused reader must reach the close frame
        self.room.set()
        if proto.state is State.OPEN:
            self.code = code
            self.send_control(lambda: proto.close(code, reason))
            self.owner.closing(self)
            self.read_in_background()  # the peer's close frame must be read, whatever the app does

    def ping(self) -> None:
        """Sent from a greenlet the sweeper spawns."""
        proto = self.proto
        if proto is not None and proto.state is State.OPEN:
            self.send_control(proto.ping)

    # ---------------------------------------------------------------- reading
    # One greenlet at a time reads and processes the input: the app's own, inside receive(),
    # while it waits for a message (the common case: no greenlet switch between the read and
    # the app); otherwise a background reader, so that pings are answered, close handshakes
    # completed and the client heard from while the app does something else. The background
    # reader starts with the connection (the bytes that came with the head), when a close
    # frame goes out, and from the sweeper (websocket.py) for a connection nobody reads; it
    # stops once it has handed a message to an app waiting in receive().
    def read_in_background(self) -> None:
        if not self.background and self.reader is None and not self.finished and self.proto is not None:
            self.background = True
            gevent.spawn_raw(self._background)

    def _background(self) -> None:
        inbox = self.inbox
        limits = self.limits
        me = gevent.getcurrent()
        try:
            while not self.finished:
                while len(inbox) >= limits.max_queued and not self.finished:
                    self.paused = True  # the app is behind: TCP's flow control slows the client
                    self.room.clear()
                    self.room.wait()
                self.paused = False
                if self.finished or self.reader is not None:
                    return  # (the app took the reading over while this greenlet was starting)
                self.reader = me
                try:
                    if not self._read():
                        return
                finally:
                    self.reader = None
                if self.waiting:
                    self.arrived.set()  # the app reads on itself (or takes what came)
                    return
        finally:
            self.background = False

    def _read(self, data: bytes | None = None) -> bool:
        """Read once (or take `data`) and process it, in the greenlet holding `reader`.
        False once the connection is over (it is then shut down)."""
        proto = self.proto
        assert proto is not None
        try:
            if data is None:
                data = self._recv()
            msg = proto.receive_one(data)
            if msg is None:
                return self._process(proto, data)
            # the commonest read: one small whole message, nothing else (see receive_one)
            self.inbox.append(msg)
            self.msgs += 1
            observer = self.observer
            if observer.sizes:
                observer.received(utf8_len(msg) if type(msg) is str else len(msg))
            if self.waiting:
                self.arrived.set()
            return True
        except Aborted:
            return False
        except OSError as e:  # the client reset the connection, or the stream failed
            log.debug("WebSocket stream error: %s", e)
            closing = proto.state is not State.OPEN and proto.close_code
            self._shutdown(proto.close_code if closing and proto.close_code else ABNORMAL)
            return False
        except Exception:
            log.exception("WebSocket reader failed")
            self._shutdown(ABNORMAL)
            return False

    def _process(self, proto: WebSocketProtocol, data: bytes) -> bool:
        events = proto.receive(data)
        reply = proto.data_to_send()
        if reply:
            self.send_control(lambda: reply)
        got = False
        observer = self.observer
        for ev in events:
            if type(ev) is str or type(ev) is bytearray:
                self.inbox.append(ev)
                self.msgs += 1
                if observer.sizes:
                    observer.received(utf8_len(ev) if type(ev) is str else len(ev))
                got = True
            elif isinstance(ev, Closed):
                self.code = ev.code
        if got and self.waiting:
            self.arrived.set()
        state = proto.state
        if state is State.CLOSED or state is State.FAILED:
            # FAILED: RFC 6455 7.1.7, our close frame is out, close the connection now (as
            # gevent-websocket does) rather than read on for the peer's
            self._shutdown(self.code if self.code else ABNORMAL)
            return False
        if state is State.CLOSING:
            self.arrived.set()  # receive() returns None from now on
            self.owner.closing(self)
        return True

    # ---------------------------------------------------------------- the end
    def count_open(self) -> None:
        self.counted = True
        try:
            self.observer.opened()
        except Exception:
            log.exception("WebSocket observer failed")

    def abort(self, code: int | None = None) -> None:
        """End now, without waiting for the peer (a timeout, a grace period over, the raw
        socket closed). `code` is recorded as the close code, else the one so far."""
        self._shutdown(self.code if code is None else code)

    def _shutdown(self, code: int) -> None:
        if self.finished:
            return
        self.finished = True
        self.code = code
        self.owner.forget(self)
        if self.counted:
            try:
                self.observer.closed(code)
            except Exception:
                log.exception("WebSocket observer failed")
        self.arrived.set()
        self.room.set()
        gevent.get_hub().loop.run_callback(self._close_stream)

    def _close_stream(self) -> None:
        """In the hub, with every other greenlet suspended: whoever is still inside a stream
        operation is waiting there, so the throw lands in that wait."""
        try:
            for g in (self.in_recv, self.in_send):
                if g is not None and not g.dead:
                    try:
                        g.throw(Aborted())
                    except Exception:
                        log.exception("interrupting a WebSocket stream wait failed")
            raw = self.raw
            if raw is not None:
                raw.release()
            try:
                self.stream.close()
            except Exception:
                log.exception("closing a WebSocket stream failed")
        finally:
            self.done.set()

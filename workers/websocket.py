"""WebSocket for gevent applications: the hand-off from the HTTP pipeline, and the worker's
one sweeper for every WebSocket's timers.

The pipeline's side, for each HTTP/1.x request (docs/websocket.md has the whole contract):

    ws = websockets.prepare(environ, head, stream, app)  # before calling the app
    if isinstance(ws, Refusal):       # a bad upgrade request: send ws.response(), close
    ...call the app as usual (no request timer when ws is an Upgrade)...
    if isinstance(ws, Upgrade) and ws.finish(error):   # error: what the app raised, or None
        return                        # the app took the connection: it is closed, send nothing
    ...send the app's response as usual...

`prepare` returns None for requests that are not WebSocket upgrades (no cost beyond
looking at the method and a few header names). One `WebSockets` per worker owns the limits,
the metrics observer, the set of open WebSockets, a single loop timer for pings, pong,
idle and close timeouts (like timers.py's sweeper: no connection owns a timer), and
`going_away(grace)` for TERM, HUP and recycling.

Modules: websocket_handshake (RFC 6455 4.2, sans-IO), websocket_protocol (framing on
wsproto, limits, close handshake, sans-IO), websocket_session (one connection under
gevent), websocket_api (environ["wsgi.websocket"], gevent-websocket's API), websocket_raw
(environ["gunicorn.socket"] for simple-websocket and flask-sock).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
from gevent.event import Event

from greenfork.workers.websocket_api import Server, WebSocket
from greenfork.workers.websocket_handshake import VERSION, Refusal, inspect
from greenfork.workers.websocket_protocol import GOING_AWAY, INTERNAL_ERROR, State
from greenfork.workers.websocket_raw import RawSocket
from greenfork.workers.websocket_session import Limits, Mode, Observer, Stream, Upgrade, WebSocketError

__all__ = ["Limits", "Observer", "Refusal", "Stream", "Upgrade", "WebSocketError", "WebSockets",
           "websocket_limits"]

log = logging.getLogger("greenfork.worker")


def websocket_limits(s: Any) -> Limits:
    """The Limits from the worker's settings (master/settings.py, section WebSocket)."""
    return Limits(max_message_size=s.websocket_max_message_size, max_frame_size=s.websocket_max_frame_size,
                  ping_interval=s.websocket_ping_interval, ping_timeout=s.websocket_ping_timeout,
                  idle_timeout=s.websocket_idle_timeout, close_timeout=s.websocket_close_timeout,
                  compression=s.websocket_compression)


class WebSockets:
    """The worker's WebSockets: make one at worker start, call prepare() per request."""

    def __init__(self, limits: Limits | None = None, observer: Observer | None = None) -> None:
        self.limits = limits or Limits()
        self.observer = observer or Observer()
        self.server = Server()  # gevent-websocket's ws.handler.server, shared like its WSGIServer
        self._open: set[Upgrade] = set()
        self._closing: set[Upgrade] = set()
        self._empty = Event()
        self._empty.set()
        self.draining = False
        self._grace: float | None = None
        self._timer: Any = None
        self._last = 0.0
        lim = self.limits
        timers = [t for t in (lim.ping_interval, lim.ping_timeout, lim.idle_timeout, lim.close_timeout)
                  if t > 0]
        self.interval = max(0.05, min(1.0, min(timers, default=4.0) / 4))

    @property
    def count(self) -> int:
        """Connections taken over by an app and not closed yet."""
        return len(self._open)

    # ---------------------------------------------------------------- the pipeline's side
    def prepare(self, environ: dict[str, Any], head: list[tuple[bytes, bytes]], stream: Stream,
                app: object | None = None) -> Upgrade | Refusal | None:
        """Look at a request before the app runs. None: not a WebSocket upgrade, serve it as
        usual. Refusal: an upgrade RFC 6455 does not allow; send refusal.response() without
        calling the app and close. Upgrade: the environ now holds `wsgi.websocket`,
        `wsgi.websocket_version` and `gunicorn.socket`; call the app, then finish()."""
        found = inspect(environ.get("REQUEST_METHOD", ""), environ.get("SERVER_PROTOCOL", ""), head)
        if found is None or isinstance(found, Refusal):
            return found
        if self.draining:
            return Refusal(503, "The server is going away", (("Retry-After", "1"),))
        up = Upgrade(self, environ, found, stream, app)
        up.raw = RawSocket(up)
        environ["wsgi.websocket"] = WebSocket(up, self.server)
        environ["wsgi.websocket_version"] = VERSION
        environ["gunicorn.socket"] = up.raw
        return up

    def going_away(self, grace: float) -> int:
        """TERM, HUP, recycling: every open WebSocket gets a 1001 close frame, and the close
        handshakes are awaited at most `grace` seconds; those still open then are cut. Blocks
        the calling greenlet until all are closed or grace is over; returns how many were cut.
        WebSocket upgrades asked for from now on are refused with 503; an app that takes a
        connection over later (it was already running) gets 1001 right after its 101."""
        self.draining = True
        self._grace = grace
        for up in list(self._open):
            self._go_away(up)
        self._empty.wait(max(0.0, grace))
        late = [up for up in self._open if not up.finished]
        for up in late:
            up.abort()
        return len(late)

    def _go_away(self, up: Upgrade) -> None:
        up.going_away = True
        if up.mode is Mode.WEBSOCKET:
            proto = up.proto
            if proto is not None and proto.state is State.OPEN:
                gevent.spawn_raw(up.close, GOING_AWAY, "server going away")
        elif up.raw is not None:
            up.raw.go_away()
        up.close_at = 0.0
        self._closing.add(up)

    # ---------------------------------------------------------------- Upgrade's side
    def adopt(self, up: Upgrade) -> None:
        """The app took the connection over."""
        self._open.add(up)
        self._empty.clear()
        if self.draining:
            up.going_away = True
            self._closing.add(up)
        if self._timer is None:
            self._start()

    def forget(self, up: Upgrade) -> None:
        self._open.discard(up)
        self._closing.discard(up)
        if not self._open:
            self._empty.set()
            self._stop()

    def closing(self, up: Upgrade) -> None:
        """The close handshake started (or the app returned): bound it by close_timeout."""
        if up in self._open and up not in self._closing:
            up.close_at = 0.0
            self._closing.add(up)

    # ---------------------------------------------------------------- the sweeper
    def _start(self) -> None:
        self._last = time.monotonic()
        # A raw loop timer, not a greenlet: its callback runs in the hub (see timers.py)
        self._timer = gevent.get_hub().loop.timer(self.interval, self.interval, ref=False)
        self._timer.start(self._safe_sweep)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None

    def _safe_sweep(self) -> None:
        try:
            self.sweep(time.monotonic())
        except Exception:
            log.exception("WebSocket sweeper failed")

    def sweep(self, now: float) -> None:
        lim = self.limits
        for up in list(self._closing):
            if up.finished:
                self._closing.discard(up)
                continue
            limit = self._grace if up.going_away and self._grace is not None else lim.close_timeout
            if up.close_at == 0.0:
                up.close_at = now + limit
            elif now >= up.close_at:
                up.abort()
        for up in list(self._open):
            proto = up.proto
            if up.finished or proto is None or proto.state is not State.OPEN or up in self._closing:
                continue
            if up.reader is None:
                up.read_in_background()  # the app is not in receive(): someone must hear the client
            if lim.ping_interval:
                self._keepalive(up, now)
            if lim.idle_timeout and not up.finished:
                if up.idle_at == 0.0 or up.msgs != up.msgs_seen:
                    up.msgs_seen = up.msgs
                    up.idle_at = now + lim.idle_timeout
                elif now >= up.idle_at:
                    up.idle_at = now + lim.idle_timeout
                    gevent.spawn_raw(up.close, GOING_AWAY, "idle timeout")

    def _keepalive(self, up: Upgrade, now: float) -> None:
        lim = self.limits
        if up.ping_sent:
            if up.rx != up.rx_at_ping or up.paused:  # heard from the client (or we stopped reading)
                up.ping_sent = 0.0
                up.rx_at_ping = up.rx
                up.ping_at = now + lim.ping_interval
            elif now - up.ping_sent >= lim.ping_timeout:
                log.debug("WebSocket keepalive ping timeout on %s", up.environ.get("PATH_INFO"))
                up.abort(INTERNAL_ERROR)
        elif up.ping_at == 0.0:
            up.rx_at_ping = up.rx
            up.ping_at = now + lim.ping_interval
        elif now >= up.ping_at:
            if up.rx != up.rx_at_ping or up.paused:
                up.rx_at_ping = up.rx
                up.ping_at = now + lim.ping_interval
            else:
                up.ping_sent = now
                gevent.spawn_raw(up.ping)

"""Every timeout of a worker, driven by one periodic timer.

Nothing arms a timer of its own. What can time out is a `Timed` object (a
connection's transport, later an HTTP/2 stream): it records the phase it waits in
(for a request head, idle between requests, for body bytes, blocked sending ...)
with `enter(phase)`, the one method that changes it, and the sweeper looks at
every Timed about once a second. Entering a phase costs two attribute stores and
no clock read: `deadline = 0.0` means "not armed yet", and the sweeper arms it from
its own clock the first time it sees the phase. So a timeout fires between its
value and its value plus one sweep interval, and the whole mechanism costs
O(timed objects) per second, nothing per read.

A request's own bound (--request-timeout) runs beside the wait phases: it spans
the app's work and its waits alike, so it is a second deadline on the same
object, armed the same lazy way (`request_deadline`: -1 off, 0 armed at the next
sweep).

When a deadline passes, the sweeper throws into the Timed's greenlet: Expired
for a wait phase, RequestTimeout for the request bound. It does so from the
timer's callback, which runs in the hub while every other greenlet is
suspended: the phase it has just read is the phase the greenlet is blocked in,
so the exception lands inside that wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Final

log = logging.getLogger("greenfork.worker")

# Phases. NONE: running the app or our own code, no deadline.
NONE: Final = 0
FRESH: Final = 1  # a new connection waiting for its first byte: request_headers_timeout, then close silently
IDLE: Final = 2  # keep-alive, between requests: keep_alive, then close silently
HEADERS: Final = 3  # a request head has started: request_headers_timeout, then 408
BODY: Final = 4  # the app waits for body bytes: min_request_body_data_rate after the grace period
DRAIN: Final = 5  # discarding an unread body after the response: the body rate, and DRAIN_TIMEOUT in all
SEND: Final = 6  # blocked writing: send_timeout without progress, then close
LINGER: Final = 7  # closing after an error: discard what the client still sends, LINGER_TIMEOUT in all
HANDSHAKE: Final = 8  # a TLS handshake in progress: tls_handshake_timeout, then close

DRAIN_TIMEOUT: Final = 5.0
LINGER_TIMEOUT: Final = 5.0  # nginx's lingering_timeout: the longest wait for the next bytes

# The METRICS.md error_type each expiry reports (Kestrel's names).
REASONS: Final = {
    FRESH: "request_headers_timeout",
    IDLE: "keep_alive_timeout",
    HEADERS: "request_headers_timeout",
    BODY: "min_request_body_data_rate",
    DRAIN: "request_body_drain_timeout",
    SEND: "min_response_data_rate",
    LINGER: "io_error",
    HANDSHAKE: "tls_handshake_timeout",
}


class Expired(BaseException):
    """Thrown into a greenlet by the sweeper. A BaseException, so that an
    application's `except Exception` around a wsgi.input read cannot swallow it."""

    def __init__(self, phase: int) -> None:
        super().__init__(REASONS[phase])
        self.phase = phase
        self.reason = REASONS[phase]


class RequestTimeout(BaseException):
    """--request-timeout fired. A BaseException, like gevent.Timeout, so that an app's
    `except Exception` cannot swallow it."""


class Timed:
    """What the sweeper watches: a phase with its deadline, the body-rate counters,
    the request bound, and the greenlet to throw into."""

    __slots__ = ("body_bytes", "body_wait", "deadline", "greenlet", "phase", "request_deadline")

    def __init__(self) -> None:
        self.phase = NONE
        self.deadline = 0.0  # 0.0: armed by the next sweep
        self.body_wait = 0.0  # seconds spent waiting for body bytes (BODY, DRAIN)
        self.body_bytes = 0  # body bytes received meanwhile
        self.request_deadline = -1.0  # -1: no request bound; 0.0: armed by the next sweep
        self.greenlet: Any = None

    def enter(self, phase: int, restart: bool = True) -> None:
        """The one way to change phase. The new phase's deadline is armed by the next sweep,
        unless restart is False: then the deadline already running carries over (a head
        that starts on a new connection shares the connection's headers timeout)."""
        self.phase = phase
        if restart:
            self.deadline = 0.0

    def pending_input(self) -> bool:
        """Whether bytes already wait to be read (an idle connection is then not idle)."""
        return False


@dataclass(frozen=True, slots=True)
class Timeouts:
    request_headers: float = 30.0
    keep_alive: float = 75.0
    min_body_rate: float = 240.0  # bytes per second; 0 disables
    body_grace: float = 5.0
    send: float = 60.0
    drain: float = DRAIN_TIMEOUT
    linger: float = LINGER_TIMEOUT
    handshake: float = 10.0
    request: float = 0.0  # --request-timeout; 0 disables

    @classmethod
    def from_settings(cls, s: Any) -> Timeouts:
        return cls(request_headers=s.request_headers_timeout, keep_alive=s.keep_alive,
                   min_body_rate=s.min_request_body_data_rate, body_grace=s.request_body_grace_period,
                   send=s.send_timeout, request=s.request_timeout,
                   handshake=s.tls_handshake_timeout)

    def interval(self) -> float:
        """Once a second; more often when a timeout is configured shorter than 4 s (tests),
        so that the lateness of a sweep stays a fraction of the timeout."""
        values = [self.request_headers, self.send, self.drain, self.linger, self.handshake]
        if self.keep_alive > 0:
            values.append(self.keep_alive)
        if self.min_body_rate > 0 and self.body_grace > 0:
            values.append(self.body_grace)
        if self.request > 0:
            values.append(self.request)
        return max(0.05, min(1.0, min(values) / 4))


class Sweeper:
    def __init__(self, timed: Iterable[Timed], timeouts: Timeouts) -> None:
        self.timed = timed
        self.timeouts = timeouts
        self._limit = self._limits(timeouts)
        self.interval = timeouts.interval()
        self._timer: Any = None
        self._last = 0.0

    @staticmethod
    def _limits(t: Timeouts) -> dict[int, float]:
        return {FRESH: t.request_headers, IDLE: t.keep_alive, HEADERS: t.request_headers,
                DRAIN: t.drain, SEND: t.send, LINGER: t.linger, HANDSHAKE: t.handshake}

    def start(self) -> None:
        import gevent

        self._last = time.monotonic()
        # A raw loop timer, not a greenlet: its callback runs in the hub, which is
        # where a throw into another greenlet must come from (see the module doc).
        self._timer = gevent.get_hub().loop.timer(self.interval, self.interval, ref=False)
        self._timer.start(self._safe_sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def drain(self, grace: float, now: float) -> None:
        """The worker stops: an idle connection (or a new one that sent nothing yet) gets
        `grace` seconds for one more request, then it is closed like a keep-alive timeout.
        Its client may already have sent that request; closing at once would reset it."""
        self.timeouts = replace(self.timeouts, keep_alive=min(self.timeouts.keep_alive or grace, grace),
                                request_headers=min(self.timeouts.request_headers, grace))
        self._limit[IDLE] = self.timeouts.keep_alive
        self._limit[FRESH] = self.timeouts.request_headers
        for t in list(self.timed):
            if t.phase in (IDLE, FRESH) and (t.deadline == 0.0 or t.deadline > now + grace):
                t.deadline = now + grace

    def _safe_sweep(self) -> None:
        try:
            self.sweep(time.monotonic())
        except Exception:  # never let one bad connection stop the timer
            log.exception("connection sweeper failed")

    def sweep(self, now: float) -> list[Timed]:
        """Arm new deadlines, expire passed ones; returns what expired."""
        dt = now - self._last
        self._last = now
        limits = self._limit
        rate = self.timeouts.min_body_rate
        grace = self.timeouts.body_grace
        request = self.timeouts.request
        expired: list[Timed] = []
        late: list[Timed] = []
        for t in list(self.timed):  # expiring one may remove it from the set
            if request > 0 and t.request_deadline >= 0.0:
                if t.request_deadline == 0.0:
                    t.request_deadline = now + request
                elif now >= t.request_deadline:
                    late.append(t)
                    continue
            phase = t.phase
            if phase == NONE:
                continue
            if phase in (BODY, DRAIN):
                # Only the time spent waiting for the client counts, not the app's own
                # time between reads: sampled here rather than clocked on every read.
                t.body_wait += dt
                waited = t.body_wait
                # Kestrel's rule: after the grace period, the rate over the whole wait so far
                if rate > 0 and waited > grace and t.body_bytes < rate * waited:
                    expired.append(t)
                    continue
                if phase == BODY:
                    continue
            if t.deadline == 0.0:
                t.deadline = now + limits[phase]
            elif now >= t.deadline:
                if phase == IDLE and t.pending_input():
                    continue  # its next request has arrived: it is about to be served
                expired.append(t)
        for t in late:
            self.request_expired(t)
        for t in expired:
            self.expire(t)
        return expired + late

    def request_expired(self, t: Timed) -> None:
        g = t.greenlet
        t.request_deadline = -1.0  # never twice
        if g is None or g.dead:
            return
        try:
            g.throw(RequestTimeout())
        except Exception:
            log.exception("interrupting a request failed")

    @staticmethod
    def expire(t: Timed) -> None:
        g = t.greenlet
        phase = t.phase
        if g is None or g.dead or phase == NONE:
            return
        t.phase = NONE  # never twice
        try:
            g.throw(Expired(phase))
        except Exception:
            log.exception("expiring a connection failed")

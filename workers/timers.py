"""Connection timeouts, all driven by one periodic timer per worker.

A connection never arms a timer of its own. It records which phase it is in
(waiting for a request head, idle between requests, waiting for body bytes,
blocked sending) in two plain attributes, `phase` and `deadline`, and the
sweeper looks at every connection about once a second. Entering a phase costs
two attribute stores and no clock read: `deadline = 0.0` means "not armed yet",
and the sweeper arms it from its own clock the first time it sees the phase.
So a timeout fires between its value and its value plus one sweep interval,
and the whole mechanism costs O(connections) per second, nothing per read.

When a deadline passes, the sweeper throws Expired into the connection's
greenlet. It does so from the timer's callback, which runs in the hub while
every other greenlet is suspended: the phase it has just read is the phase the
connection is blocked in, so the exception always lands inside that wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

log = logging.getLogger("greenfork.worker")

# Phases. NONE: running the app or our own code, no deadline.
NONE: Final = 0
FRESH: Final = 1  # a new connection waiting for its first byte: request_headers_timeout, then close silently
IDLE: Final = 2  # keep-alive, between requests: keep_alive, then close silently
HEADERS: Final = 3  # a request head has started: request_headers_timeout, then 408
BODY: Final = 4  # the app waits for body bytes: min_request_body_data_rate after the grace period
DRAIN: Final = 5  # discarding an unread body after the response: the body rate, and DRAIN_TIMEOUT in all
SEND: Final = 6  # blocked writing: send_timeout without progress, then close

DRAIN_TIMEOUT: Final = 5.0

# The METRICS.md error_type each expiry reports (Kestrel's names).
REASONS: Final = {
    FRESH: "request_headers_timeout",
    IDLE: "keep_alive_timeout",
    HEADERS: "request_headers_timeout",
    BODY: "min_request_body_data_rate",
    DRAIN: "request_body_drain_timeout",
    SEND: "min_response_data_rate",
}


class Expired(BaseException):
    """Thrown into a connection's greenlet by the sweeper. A BaseException, so that an
    application's `except Exception` around a wsgi.input read cannot swallow it."""

    def __init__(self, phase: int) -> None:
        super().__init__(REASONS[phase])
        self.phase = phase
        self.reason = REASONS[phase]


class Timed(Protocol):
    """What the sweeper needs from a connection (workers/conn.py Connection)."""

    phase: int
    deadline: float
    body_wait: float
    body_bytes: int
    greenlet: Any


@dataclass(frozen=True, slots=True)
class Timeouts:
    request_headers: float = 30.0
    keep_alive: float = 75.0
    min_body_rate: float = 240.0  # bytes per second; 0 disables
    body_grace: float = 5.0
    send: float = 60.0
    drain: float = DRAIN_TIMEOUT

    @classmethod
    def from_settings(cls, s: Any) -> Timeouts:
        return cls(request_headers=s.request_headers_timeout, keep_alive=s.keep_alive,
                   min_body_rate=s.min_request_body_data_rate, body_grace=s.request_body_grace_period,
                   send=s.send_timeout)

    def interval(self) -> float:
        """Once a second; more often when a timeout is configured shorter than 4 s (tests),
        so that the lateness of a sweep stays a fraction of the timeout."""
        values = [self.request_headers, self.send, self.drain]
        if self.keep_alive > 0:
            values.append(self.keep_alive)
        if self.min_body_rate > 0 and self.body_grace > 0:
            values.append(self.body_grace)
        return max(0.05, min(1.0, min(values) / 4))


class Sweeper:
    def __init__(self, connections: Iterable[Timed], timeouts: Timeouts) -> None:
        self.connections = connections
        self.timeouts = timeouts
        t = timeouts
        self._limit = {FRESH: t.request_headers, IDLE: t.keep_alive, HEADERS: t.request_headers,
                       DRAIN: t.drain, SEND: t.send}
        self.interval = t.interval()
        self._timer: Any = None
        self._last = 0.0

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

    def _safe_sweep(self) -> None:
        try:
            self.sweep(time.monotonic())
        except Exception:  # never let one bad connection stop the timer
            log.exception("connection sweeper failed")

    def sweep(self, now: float) -> list[Timed]:
        """Arm new deadlines, expire passed ones; returns the connections expired."""
        dt = now - self._last
        self._last = now
        limits = self._limit
        rate = self.timeouts.min_body_rate
        grace = self.timeouts.body_grace
        expired: list[Timed] = []
        for conn in list(self.connections):  # expiring one may remove it from the set
            phase = conn.phase
            if phase == NONE:
                continue
            if phase in (BODY, DRAIN):
                # Only the time spent waiting for the client counts, not the app's own
                # time between reads: sampled here rather than clocked on every read.
                conn.body_wait += dt
                waited = conn.body_wait
                # Kestrel's rule: after the grace period, the rate over the whole wait so far
                if rate > 0 and waited > grace and conn.body_bytes < rate * waited:
                    expired.append(conn)
                    continue
                if phase == BODY:
                    continue
            if conn.deadline == 0.0:
                conn.deadline = now + limits[phase]
            elif now >= conn.deadline:
                expired.append(conn)
        for conn in expired:
            self.expire(conn)
        return expired

    @staticmethod
    def expire(conn: Timed) -> None:
        g = conn.greenlet
        phase = conn.phase
        if g is None or g.dead or phase == NONE:
            return
        conn.phase = NONE  # never twice
        try:
            g.throw(Expired(phase))
        except Exception:
            log.exception("expiring a connection failed")

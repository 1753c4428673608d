"""HTTP/2 keep-alive pings (--http2-keep-alive-ping-delay, Kestrel's KeepAlivePingDelay): one
timer per worker, like the sweeper's (timers.py), that asks each HTTP/2 connection about once a
second whether it has been silent long enough for a PING, or too long after one."""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

log = logging.getLogger("greenfork.worker")


class Pinged(Protocol):
    def keepalive(self, now: float) -> None: ...


class Pinger:
    def __init__(self, hub: Any, interval: float) -> None:
        self.drivers: set[Pinged] = set()
        self._timer = hub.loop.timer(interval, interval, ref=False)  # (in the hub: nothing blocks)
        self._timer.start(self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        for d in list(self.drivers):
            try:
                d.keepalive(now)
            except Exception:
                log.exception("HTTP/2 keep-alive ping failed")


_pinger: Pinger | None = None


def pinger(hub: Any, delay: float) -> Pinger:
    """The worker's Pinger (made on first use)."""
    global _pinger
    if _pinger is None:
        _pinger = Pinger(hub, max(0.05, min(1.0, delay / 4)))
    return _pinger

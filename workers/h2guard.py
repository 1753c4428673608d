"""Flood budgets for one HTTP/2 connection, sans-IO (the time is handed in).

Frames that make the server work without asking it for anything (SETTINGS, PING, PRIORITY,
RST_STREAM, WINDOW_UPDATE, empty DATA, unknown frame types) each spend a token from a
bucket of their kind. A bucket holds `burst` tokens and refills at `rate` per second; an
empty one means a flood: the connection ends with GOAWAY ENHANCE_YOUR_CALM and the
bucket's error_type (the metrics' name). So a flood costs the server at most `burst`
frames of work, then `rate` a second, whatever the peer sends.

Some kinds also earn tokens from what the server does: each DATA frame sent earns the
peer the WINDOW_UPDATE frames it may answer with, and each stream it opens may bring
PRIORITY frames along. Refused streams spend from the reset bucket too: opening streams
past the limit only to have them refused is the same attack as resetting them
(CVE-2023-44487, "rapid reset").

The numbers are generous for real clients (a browser opening a page, a gRPC client
pinging, curl and nghttp2 acknowledging every DATA frame) and small next to what an
attacker needs: nghttp2 allows 1000 resets then 33 a second, nginx counts frames against
payload; these budgets bound each kind separately so the error names what happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Kinds of frames with a budget (indexes into Guard.buckets).
SETTINGS: Final = 0
PING: Final = 1
PRIORITY: Final = 2
RESET: Final = 3  # RST_STREAM received, and streams refused by the server
WINDOW_UPDATE: Final = 4
EMPTY: Final = 5  # DATA without payload or END_STREAM, and frames of unknown types


@dataclass(frozen=True, slots=True)
class Budget:
    burst: int
    rate: float  # tokens a second
    error_type: str


BUDGETS: Final = (
    Budget(32, 4.0, "settings_flood"),
    Budget(64, 16.0, "ping_flood"),
    Budget(512, 128.0, "priority_flood"),
    Budget(200, 33.0, "stream_reset_flood"),
    Budget(1024, 256.0, "window_update_flood"),
    Budget(64, 16.0, "empty_frames_flood"),
)
# What a stream opened earns (PRIORITY frames for it), and a DATA frame sent (the stream's and
# the connection's WINDOW_UPDATE).
PRIORITY_PER_STREAM: Final = 2
UPDATES_PER_DATA_FRAME: Final = 2


class Guard:
    """The buckets of one connection. `now` is set by the caller before frames are counted."""

    __slots__ = ("buckets", "now", "stamps")

    def __init__(self, now: float) -> None:
        self.buckets = [float(b.burst) for b in BUDGETS]
        self.stamps = [now] * len(BUDGETS)  # when each bucket was last refilled
        self.now = now

    def spend(self, kind: int) -> str | None:
        """One frame of this kind: None, or the error_type of the flood it completes."""
        tokens = self.buckets[kind] - 1.0
        if tokens < 0.0:
            # Refilled lazily, only when empty: no clock arithmetic for a well-behaved peer.
            budget = BUDGETS[kind]
            now = self.now
            tokens = min(float(budget.burst), tokens + (now - self.stamps[kind]) * budget.rate)
            self.stamps[kind] = now
            if tokens < 0.0:
                self.buckets[kind] = 0.0
                return budget.error_type
        self.buckets[kind] = tokens
        return None

    def earn(self, kind: int, n: int) -> None:
        """Tokens the server's own work grants the peer (up to twice the burst)."""
        cap = 2.0 * BUDGETS[kind].burst
        tokens = self.buckets[kind] + n
        self.buckets[kind] = tokens if tokens < cap else cap

"""systemd's notify protocol, without a library: one datagram per state change.

NOTIFY_SOCKET names a unix datagram socket (a leading "@" is the abstract
namespace). Nothing here may fail the server: systemd gone or a full socket
only costs the message.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # ping twice per period, as sd_watchdog_enabled(3) advises
            self.watchdog_interval = int(usec) / 1e6 / 2
        self.next_ping = 0.0
        self._sock: socket.socket | None = None

    def send(self, *fields: str) -> None:
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            pass

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self, status: str) -> None:
        # Type=notify-reload wants the monotonic time of the reload request.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog_due(self, now: float) -> float | None:
        """Ping if due (only while the master loop turns, which is the point); next deadline."""
        if self.watchdog_interval is None:
            return None
        if now >= self.next_ping:
            self.send("WATCHDOG=1")
            self.next_ping = now + self.watchdog_interval
        return self.next_ping

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

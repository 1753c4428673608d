"""Load through HAProxy with wrk, for as long as an operation takes: started before it, stopped
(SIGINT: wrk then prints its summary) after it; the counts come from a Lua script's last line."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .config import FleetError

LUA = Path(__file__).with_name("count.lua")
LINE = re.compile(r"^FLEET requests=(\d+) non2xx=(\d+) connect=(\d+) read=(\d+) write=(\d+) "
                  r"status=(\d+) timeout=(\d+)$", re.M)


@dataclass(frozen=True)
class Result:
    requests: int
    non2xx: int
    connect: int
    read: int
    write: int
    timeout: int

    @property
    def failed(self) -> int:
        """Requests that did not get a 2xx: wrong statuses and every socket error (wrk counts a
        connection that broke as one error: the request on it, if any, failed)."""
        return self.non2xx + self.connect + self.read + self.write + self.timeout


class Load:
    def __init__(self, url: str, log: Path, *, connections: int = 16, threads: int = 2,
                 max_seconds: int = 600, path: str = "/") -> None:
        wrk = shutil.which("wrk")
        if wrk is None:
            raise FleetError("wrk is not installed (scripts/fleet installs Debian's wrk)")
        self.log = log
        self.out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        # -d bounds it in case nobody stops it; --timeout above the hosts' slowest answer
        self.proc = subprocess.Popen(
            [wrk, f"-t{threads}", f"-c{connections}", f"-d{max_seconds}s", "--timeout", "10s", "-s", str(LUA),
             url.rstrip("/") + path], stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

    def stop(self, timeout: float = 15) -> Result:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        finally:
            self.out.close()
        text = self.log.read_text(errors="replace")
        m = LINE.search(text)
        if m is None:
            raise FleetError(f"wrk printed no summary (exit {self.proc.returncode}): {text[-500:]}")
        req, non2xx, connect, read, write, _status, tmo = (int(x) for x in m.groups())
        return Result(req, non2xx, connect, read, write, tmo)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.out.close()

"""HAProxy: started from examples/fleet/haproxy.cfg as it is (the environment names the
fleet), and asked through its runtime API (the stats socket) how it sees each host."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from . import proc
from .config import EXAMPLES, Fleet, FleetError

CONFIG = EXAMPLES / "fleet" / "haproxy.cfg"
BACKEND = "greenfork"


def binary() -> str:
    for path in ("/usr/sbin/haproxy", "/usr/bin/haproxy"):
        if Path(path).exists():
            return path
    raise FleetError("haproxy is not installed (scripts/fleet installs Debian's haproxy)")


def environ(fleet: Fleet) -> dict[str, str]:
    return {**os.environ, **fleet.env()}


def start(fleet: Fleet) -> int:
    proc.run([binary(), "-c", "-q", "-f", str(CONFIG)], env=environ(fleet))
    log = fleet.dir / "haproxy.log"
    pid = proc.spawn([binary(), "-db", "-f", str(CONFIG)], log, env=environ(fleet))
    fleet.haproxy_pidfile.write_text(f"{pid}\n")

    def listening() -> bool:
        if not proc.alive(pid):
            raise FleetError(f"haproxy exited: {log.read_text(errors='replace')[-2000:]}")
        return fleet.haproxy_socket.exists() and _connects(fleet.port)

    proc.wait_for(listening, 10, "haproxy to listen")
    return pid


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def pid_of(fleet: Fleet) -> int | None:
    """Our HAProxy's pid: the pidfile's, if that process runs our config (not a reused pid)."""
    pid = proc.read_pid(fleet.haproxy_pidfile)
    if pid is None or not proc.alive(pid):
        return None
    cmd = proc.cmdline(pid)
    return pid if "haproxy" in cmd and str(CONFIG) in cmd and _env_dir(pid) == str(fleet.dir) else None


def _env_dir(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"FLEET_DIR="):
            return item[len(b"FLEET_DIR="):].decode(errors="replace")
    return None


def stop(fleet: Fleet) -> bool:
    pid = pid_of(fleet)
    if pid is not None:
        proc.stop(pid, signal.SIGUSR1, grace=5)  # USR1: soft stop, finishing sessions
    fleet.haproxy_pidfile.unlink(missing_ok=True)
    fleet.haproxy_socket.unlink(missing_ok=True)
    return pid is not None


def command(fleet: Fleet, line: str, timeout: float = 5) -> str:
    """One runtime API command; its whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(fleet.haproxy_socket))
        except OSError as e:
            raise FleetError(f"haproxy's runtime API ({fleet.haproxy_socket}): {e.strerror}") from None
        s.sendall(line.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def servers(fleet: Fleet) -> dict[str, dict[str, str]]:
    """`show stat` for the hosts: {"h1": {"status": "UP", "check_status": "L7OK", ...}}."""
    text = command(fleet, "show stat")
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise FleetError(f"haproxy's `show stat` answered {text[:200]!r}")
    header = lines[0][2:].split(",")
    rows = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == BACKEND and row.get("svname") not in ("FRONTEND", "BACKEND"):
            rows[row["svname"]] = row
    return rows


def status(fleet: Fleet, n: int) -> str:
    """UP, DOWN, "DOWN 1/2" (going up), "UP 1/2" (going down), MAINT, NOLB..."""
    return servers(fleet).get(f"h{n}", {}).get("status", "?")


def wait_status(fleet: Fleet, n: int, want: str, timeout: float) -> float:
    """Wait until HAProxy reports host n in state `want`; returns the seconds it took."""
    t0 = time.monotonic()
    proc.wait_for(lambda: status(fleet, n) == want, timeout, f"haproxy to see host {n} {want}", every=0.02)
    return time.monotonic() - t0


def wait_checked_up(fleet: Fleet, n: int, timeout: float) -> None:
    """Host n is UP and HAProxy's health check has passed again since this call: the
    check counter `chkfail` tells failures only, so wait for a full check interval's worth of
    passing checks (`check_status` L7OK, status UP, never DOWN meanwhile)."""
    deadline = time.monotonic() + timeout
    seen_ok_after = time.monotonic() + 1.1  # `inter 1s`: a check ran after this call by then
    while True:
        row = servers(fleet).get(f"h{n}", {})
        passing = row.get("status") == "UP" and row.get("check_status") == "L7OK"
        if passing and time.monotonic() > seen_ok_after:
            return
        if time.monotonic() > deadline:
            raise FleetError(f"haproxy does not see host {n} up: {row.get('status')} "
                             f"{row.get('check_status')} {row.get('last_chk')}")
        time.sleep(0.05)

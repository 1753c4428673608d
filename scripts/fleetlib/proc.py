"""Processes by pid: commands with timeouts, detached daemons, process trees, bounded waits."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from .config import FleetError

T = TypeVar("T")


def run(cmd: Sequence[str], *, timeout: float = 30, check: bool = True,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A command that must finish; a failure is a FleetError naming it and its stderr."""
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                             env=None if env is None else dict(env), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise FleetError(f"{' '.join(cmd)}: no answer in {timeout:.0f} s") from None
    except FileNotFoundError:
        raise FleetError(f"{cmd[0]}: not installed (scripts/fleet installs Debian's packages)") from None
    if check and out.returncode != 0:
        raise FleetError(f"{' '.join(cmd)} failed ({out.returncode}): {(out.stderr or out.stdout).strip()}")
    return out


def spawn(cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
    """A long-running process in its own session, output to log; returns its pid. It is
    not our child for long: whoever stops it does so by pid (stop())."""
    with open(log, "ab") as out:
        p = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=None if env is None else dict(env))
    return p.pid


def wait_for(cond: Callable[[], T | None], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll cond until it returns something truthy; FleetError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise FleetError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def descendants(pid: int) -> list[int]:
    """pid's children, their children, ... (a bounded walk of /proc)."""
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 4096:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            kids = []
        found += kids
        todo += kids
    return found


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def kill_tree(pid: int) -> list[int]:
    """SIGKILL pid and everything under it. The tree is frozen first (SIGSTOP), so a master
    cannot fork a replacement between the reading of its children and their killing."""
    tree = [pid]
    for _ in range(3):  # a fork in flight when we stopped the parent shows up on the next pass
        for p in tree:
            _signal(p, signal.SIGSTOP)
        more = [p for t in list(tree) for p in descendants(t) if p not in tree]
        if not more:
            break
        tree += more
    for p in tree:
        _signal(p, signal.SIGKILL)
    return tree


def stop(pid: int, sig: int = signal.SIGTERM, grace: float = 10) -> None:
    """sig, then SIGKILL after grace if pid is still there; returns once it is gone."""
    if not alive(pid):
        return
    _signal(pid, sig)
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        _signal(pid, signal.SIGKILL)
        wait_gone([pid], 5)


def wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass

"""One greenfork host per namespace: a daemon (-D) with a pidfile, an addresses file and a
metrics listener on the host's own address; signals go to the master named by the pidfile."""

from __future__ import annotations

import json
import os
import shlex
import signal
import time
from typing import Any

from . import netns, proc
from .config import APP_PORT, METRICS_PORT, Fleet, FleetError


def command(fleet: Fleet, n: int) -> list[str]:
    d = fleet.host_dir(n)
    ip = fleet.host_ip(n)
    cmd = ["ip", "netns", "exec", fleet.host_ns(n), fleet.python, "-m", "greenfork.master"]
    if fleet.app:
        cmd.append(fleet.app)
    cmd += ["-D", "--pidfile", str(d / "greenfork.pid"), "--addresses-file", str(d / "addresses.json"),
            "--error-logfile", str(d / "error.log"), "--workers", str(fleet.workers),
            "--bind", f"http://{ip}:{APP_PORT}", "--metrics-bind", f"http://{ip}:{METRICS_PORT}"]
    if fleet.proxy == "v2":
        # only HAProxy's side of the link may send the header that sets REMOTE_ADDR
        cmd += ["--proxy-protocol", "v2", "--proxy-allow-from", f"{fleet.lb_ip}/32"]
    cmd += shlex.split(os.environ.get("FLEET_ARGS", ""))
    return cmd


def master(fleet: Fleet, n: int) -> int | None:
    """The live master of host n, from its pidfile."""
    pid = proc.read_pid(fleet.pidfile(n))
    return pid if pid is not None and proc.alive(pid) else None


def addresses(fleet: Fleet, n: int) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((fleet.host_dir(n) / "addresses.json").read_text())
        return data
    except (FileNotFoundError, ValueError):
        return {}


def start(fleet: Fleet, n: int) -> int:
    """Start host n and return its master's pid once its workers are ready (-D returns then)."""
    if not netns.exists(fleet.host_ns(n)):
        raise FleetError(f"host {n}: no namespace {fleet.host_ns(n)}: run `scripts/fleet up` first")
    running = master(fleet, n)
    if running is not None:
        raise FleetError(f"host {n} is already running (master pid {running})")
    fleet.host_dir(n).mkdir(parents=True, exist_ok=True)
    proc.run(command(fleet, n), timeout=60)
    pid = master(fleet, n)
    if pid is None:
        raise FleetError(f"host {n}: greenfork returned but wrote no pidfile; see "
                         f"{fleet.host_dir(n) / 'error.log'}")
    return pid


def kill(fleet: Fleet, n: int) -> list[int]:
    """SIGKILL host n's whole process tree (its master and every worker)."""
    pid = master(fleet, n)
    if pid is None:
        raise FleetError(f"host {n} is not running")
    # a pending upgrade's other master is in the namespace too: the host is all of them
    roots = {pid, *(p for p in netns.pids(fleet.host_ns(n)) if p not in proc.descendants(pid))}
    killed = [p for root in sorted(roots) for p in proc.kill_tree(root)]
    proc.wait_gone(killed, 10)
    return killed


def stop(fleet: Fleet, n: int) -> None:
    """Graceful stop (TERM); greenfork finishes its in-flight requests first."""
    pid = master(fleet, n)
    if pid is not None:
        proc.stop(pid, signal.SIGTERM, grace=40)


def send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise FleetError(f"master {pid} is gone") from None


def upgrade(fleet: Fleet, n: int, timeout: float = 60) -> tuple[int, int]:
    """USR2: start a new master on the same sockets; returns (old, new) once the new one's
    workers are READY (it writes the pidfile only then)."""
    old = master(fleet, n)
    if old is None:
        raise FleetError(f"host {n} is not running")
    send(old, signal.SIGUSR2)

    def new_master() -> int | None:
        pid = proc.read_pid(fleet.pidfile(n))  # absent between the rename to .oldbin and the new one
        if not proc.alive(old):
            raise FleetError(f"host {n}: the old master {old} exited during the upgrade; see "
                             f"{fleet.host_dir(n) / 'error.log'}")
        return pid if pid is not None and pid != old and proc.alive(pid) else None

    return old, proc.wait_for(new_master, timeout, f"host {n}'s new master to be ready")


def retire(fleet: Fleet, n: int, old: int, timeout: float = 40) -> None:
    """TERM the old master of an upgrade; returns once it has drained and exited."""
    send(old, signal.SIGTERM)
    proc.wait_for(lambda: not proc.alive(old), timeout, f"host {n}'s old master {old} to drain and exit")
    if (fleet.pidfile(n).parent / "greenfork.pid.oldbin").exists():
        raise FleetError(f"host {n}: the old master left its .oldbin pidfile")


def reload(fleet: Fleet, n: int, timeout: float = 60) -> tuple[int, int]:
    """HUP: a new generation of workers; returns (old, new generation) once it serves (the
    addresses file is rewritten with the new generation when the reload commits)."""
    pid = master(fleet, n)
    if pid is None:
        raise FleetError(f"host {n} is not running")
    before = int(addresses(fleet, n).get("generation", 0))
    send(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gen = int(addresses(fleet, n).get("generation", 0))
        if gen > before:
            return before, gen
        if not proc.alive(pid):
            raise FleetError(f"host {n}: the master {pid} exited during the reload")
        time.sleep(0.05)
    raise FleetError(f"host {n}: no new generation after {timeout:.0f} s (a failed reload? see "
                     f"{fleet.host_dir(n) / 'error.log'})")

"""The rolling procedures: one host at a time, the next only once HAProxy sees this one ready
again, all of it under load through HAProxy."""

from __future__ import annotations

import time
from collections.abc import Callable

from . import haproxy, hosts
from .config import HOSTS, Fleet, FleetError

Say = Callable[[str], None]


def require_all_up(fleet: Fleet) -> None:
    rows = haproxy.servers(fleet)
    down = [f"{name} ({row.get('status')})" for name, row in sorted(rows.items())
            if row.get("status") != "UP"]
    if down:
        raise FleetError(f"not every host is up in haproxy: {', '.join(down)}; a roll would take "
                         "more capacity away (start them: scripts/fleet start N)")


def transitions(fleet: Fleet) -> dict[str, int]:
    """HAProxy's count of UP-to-DOWN transitions per host (`chkdown`)."""
    return {name: int(row.get("chkdown") or 0) for name, row in haproxy.servers(fleet).items()}


def upgrade_all(fleet: Fleet, say: Say) -> None:
    """USR2 each host in turn: the new master starts on the same sockets; once HAProxy's checks
    pass against it, the old master is told to finish (TERM) and drains."""
    for n in HOSTS:
        t0 = time.monotonic()
        old, new = hosts.upgrade(fleet, n)
        # From here the old master no longer answers the metrics listener (its successor is
        # ready): every check that passes from now on was answered by the new master.
        haproxy.wait_checked_up(fleet, n, timeout=30)
        hosts.retire(fleet, n, old)
        if haproxy.status(fleet, n) != "UP":
            raise FleetError(f"host {n}: haproxy sees it {haproxy.status(fleet, n)} after the upgrade")
        say(f"host {n}: master {old} -> {new} (USR2, {time.monotonic() - t0:.1f} s)")


def reload_all(fleet: Fleet, say: Say) -> None:
    """HUP each host in turn: a new generation of workers, the old ones drain once it is ready."""
    for n in HOSTS:
        t0 = time.monotonic()
        before, after = hosts.reload(fleet, n)
        haproxy.wait_checked_up(fleet, n, timeout=30)
        say(f"host {n}: generation {before} -> {after} (HUP, {time.monotonic() - t0:.1f} s)")

"""Worker health policy the arbiter applies on its ticks: hung workers and recycling.

Hung: a READY (or draining) worker whose heartbeat is older than --timeout gets
SIGABRT (it dumps its stacks to the error log), then SIGKILL after --abort-grace.

Recycling: a worker is marked with a reason (max_requests when it says so over
its control socket, max_lifetime from its expiry time, max_memory after
MEMORY_STRIKES samples in a row above the limit). One marked worker at a time
gets a replacement in its slot; when the replacement is READY the old worker is
told to QUIT. So capacity never dips, and a whole generation never recycles at once.

Functions, not methods, to keep arbiter.py to the state machine; everything goes
through the arbiter's OsPort.
"""

from __future__ import annotations

import logging
import random
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from greenfork.master.arbiter import Arbiter
    from greenfork.master.records import Worker
    from greenfork.master.settings import Settings

log = logging.getLogger("greenfork.master")

MEMORY_INTERVAL = 2.0  # seconds between --max-worker-memory samples
MEMORY_STRIKES = 3  # consecutive samples over the limit before a worker is recycled
MIB = 1024 * 1024


def expiry(settings: Settings, spawned_at: float) -> float:
    if settings.max_worker_lifetime <= 0:
        return 0.0
    return spawned_at + settings.max_worker_lifetime + random.uniform(0, settings.max_worker_lifetime_jitter)


def _watched(arb: Arbiter) -> list[Worker]:
    from greenfork.master.records import WState

    return [w for w in arb.workers.values() if w.state in (WState.READY, WState.DRAINING)]


def deadlines(arb: Arbiter) -> list[float]:
    """When the next check is due; only for the checks the current state runs (a deadline
    nobody acts on would be in the past forever and spin the loop)."""
    from greenfork.master.records import State

    out: list[float] = []
    if arb.state in (State.QUITTING, State.STOPPED):
        return out
    timeout = arb.settings.timeout
    for w in _watched(arb):
        if w.abort_at:
            if not w.killed:
                out.append(w.abort_at + arb.settings.abort_grace)
        elif timeout > 0:
            out.append(w.heartbeat + timeout)
        if w.expires_at and not w.recycle and arb.state == State.RUNNING:
            out.append(w.expires_at)
    if arb.settings.max_worker_memory > 0 and arb.workers and arb.state == State.RUNNING:
        out.append(arb.next_sample)
    return out


def check_hung(arb: Arbiter, now: float) -> None:
    timeout = arb.settings.timeout
    for w in _watched(arb):
        if w.abort_at:
            if not w.killed and now - w.abort_at >= arb.settings.abort_grace:
                log.error("Worker %d (pid %d) still alive %.0f s after SIGABRT; killing it",
                          w.slot, w.pid, arb.settings.abort_grace)
                w.killed = True
                arb.port.kill(w.pid, signal.SIGKILL)
        elif timeout > 0 and now - w.heartbeat > timeout:
            log.error("Worker %d (pid %d) is hung: no heartbeat for %.0f s (--timeout %.0f s); "
                      "aborting it, its stacks follow in the log", w.slot, w.pid, now - w.heartbeat, timeout)
            w.abort_at = now
            w.exit_reason = "timeout"
            arb.port.kill(w.pid, signal.SIGABRT)


def check_recycle(arb: Arbiter, now: float) -> None:
    from greenfork.master.records import WState

    s = arb.settings
    ready = [w for w in arb.workers.values() if w.state == WState.READY and w.generation == arb.generation]
    for w in ready:
        if w.expires_at and now >= w.expires_at and not w.recycle:
            w.recycle = "max_lifetime"
            log.info("Worker %d (pid %d) reached --max-worker-lifetime; it will be replaced", w.slot, w.pid)
    if s.max_worker_memory > 0 and now >= arb.next_sample:
        arb.next_sample = now + MEMORY_INTERVAL
        for w in ready:
            uss = arb.port.memory(w.pid)
            if uss is None:
                continue
            w.mem_over = w.mem_over + 1 if uss > s.max_worker_memory else 0
            if w.mem_over >= MEMORY_STRIKES and not w.recycle:
                w.recycle = "max_memory"
                log.info("Worker %d (pid %d) uses %.0f MiB, over --max-worker-memory (%.0f MiB) on %d "
                         "samples; it will be replaced", w.slot, w.pid, uss / MIB, s.max_worker_memory / MIB,
                         MEMORY_STRIKES)
    if any(w.replaces and w.state == WState.BOOTING for w in arb.workers.values()):
        return  # one replacement at a time
    for w in sorted((w for w in ready if w.recycle), key=lambda w: w.spawned_at):
        h = arb.health.get(w.slot)
        if h is not None and h.due > now:
            continue  # its last replacement failed to boot: back off
        log.info("Recycling worker %d (pid %d): %s; starting its replacement first", w.slot, w.pid, w.recycle)
        new = arb._spawn(w.slot)
        new.replaces = w.pid
        return


def replacement_ready(arb: Arbiter, new: Worker) -> None:
    """A READY worker retires the worker it replaces (recycling) or, after a reload
    whose slot it fills, nothing: the reload's commit does that."""
    from greenfork.master.records import QUIT, WState

    if not new.replaces:
        return
    old = arb.workers.get(new.replaces)
    new.replaces = 0
    if old is not None and old.state == WState.READY:
        arb._stop(old, QUIT, old.recycle or "reload")

"""Worker health policy the arbiter applies on its ticks: hung workers and recycling.

Hung: a READY (or draining) worker whose heartbeat is older than --timeout gets
SIGABRT (it dumps its stacks to the error log), then SIGKILL after --abort-grace.

Recycling: a worker is marked with a reason (max_requests when it says so over
its control socket, max_lifetime from its expiry time, max_memory after
MEMORY_STRIKES samples in a row above the limit). One marked worker at a time
gets a replacement in its slot; when the replacement is READY the old worker is
told to QUIT. So capacity never dips, and a whole generation never recycles at once.

Functions over the worker table (pool.py); they act by appending commands to it.
"""

from __future__ import annotations

import logging
import random
import signal
from typing import TYPE_CHECKING

from greenfork.master.commands import Kill, SampleMemory
from greenfork.master.control import QUIT
from greenfork.master.records import Worker
from greenfork.master.settings import Settings
from greenfork.master.states import WState

if TYPE_CHECKING:
    from greenfork.master.pool import Pool

log = logging.getLogger("greenfork.master")

MEMORY_INTERVAL = 2.0  # seconds between --max-worker-memory samples
MEMORY_STRIKES = 3  # consecutive samples over the limit before a worker is recycled
MIB = 1024 * 1024


def expiry(settings: Settings, spawned_at: float) -> float:
    if settings.max_worker_lifetime <= 0:
        return 0.0
    return spawned_at + settings.max_worker_lifetime + random.uniform(0, settings.max_worker_lifetime_jitter)


def _watched(pool: Pool) -> list[Worker]:
    return [w for w in pool.workers.values() if w.state in (WState.READY, WState.DRAINING)]


def _ready(pool: Pool, generation: int) -> list[Worker]:
    return [w for w in pool.workers.values() if w.state == WState.READY and w.generation == generation]


# ------------------------------------------------------------------ hung workers
def hung_deadlines(pool: Pool, settings: Settings) -> list[float]:
    out: list[float] = []
    for w in _watched(pool):
        if w.abort_at:
            if not w.killed:
                out.append(w.abort_at + settings.abort_grace)
        elif settings.timeout > 0:
            out.append(w.heartbeat + settings.timeout)
    return out


def check_hung(pool: Pool, settings: Settings, now: float) -> None:
    timeout = settings.timeout
    for w in _watched(pool):
        if w.abort_at:
            if not w.killed and now - w.abort_at >= settings.abort_grace:
                log.error("Worker %d (pid %d) still alive %.0f s after SIGABRT; killing it",
                          w.slot, w.pid, settings.abort_grace)
                w.killed = True
                pool.out.append(Kill(w, signal.SIGKILL))
        elif timeout > 0 and now - w.heartbeat > timeout:
            log.error("Worker %d (pid %d) is hung: no heartbeat for %.0f s (--timeout %.0f s); "
                      "aborting it, its stacks follow in the log", w.slot, w.pid, now - w.heartbeat, timeout)
            w.abort_at = now
            w.exit_reason = "timeout"
            pool.out.append(Kill(w, signal.SIGABRT))


# ------------------------------------------------------------------ recycling
def recycle_deadlines(pool: Pool, generation: int) -> list[float]:
    return [w.expires_at for w in _ready(pool, generation) if w.expires_at and not w.recycle]


def sample_deadlines(pool: Pool, settings: Settings) -> list[float]:
    return [pool.next_sample] if settings.max_worker_memory > 0 and pool.workers else []


def mark(w: Worker, reason: str, why: str) -> None:
    if w.state == WState.READY and not w.recycle:
        w.recycle = reason
        log.info("Worker %d (pid %d) %s; it will be replaced", w.slot, w.pid, why)


def check_recycle(pool: Pool, settings: Settings, generation: int, now: float) -> None:
    for w in _ready(pool, generation):
        if w.expires_at and now >= w.expires_at:
            mark(w, "max_lifetime", "reached --max-worker-lifetime")
    replace_one(pool, settings, generation, now)


def sample_due(pool: Pool, settings: Settings, generation: int, now: float) -> None:
    """Ask for a --max-worker-memory sample when one is due (answered with MEMORY)."""
    if settings.max_worker_memory > 0 and now >= pool.next_sample:
        pool.next_sample = now + MEMORY_INTERVAL
        pids = tuple(w.pid for w in _ready(pool, generation))
        if pids:
            pool.out.append(SampleMemory(pids))


def memory_sampled(pool: Pool, settings: Settings, generation: int, samples: dict[int, int | None],
                   now: float) -> None:
    limit = settings.max_worker_memory
    for pid, uss in samples.items():
        w = pool.workers.get(pid)
        if w is None or uss is None or limit <= 0:
            continue
        w.mem_over = w.mem_over + 1 if uss > limit else 0
        if w.mem_over >= MEMORY_STRIKES:
            mark(w, "max_memory", f"uses {uss / MIB:.0f} MiB, over --max-worker-memory "
                                  f"({limit / MIB:.0f} MiB) on {MEMORY_STRIKES} samples")
    replace_one(pool, settings, generation, now)


def replace_one(pool: Pool, settings: Settings, generation: int, now: float) -> None:
    if any(w.replaces and w.state in (WState.FORKING, WState.BOOTING) for w in pool.every()):
        return  # one replacement at a time
    for w in sorted((w for w in _ready(pool, generation) if w.recycle), key=lambda w: w.spawned_at):
        h = pool.health.get(w.slot)
        if h is not None and h.due > now:
            continue  # its last replacement failed to boot: back off
        log.info("Recycling worker %d (pid %d): %s; starting its replacement first", w.slot, w.pid, w.recycle)
        new = pool.spawn(w.slot, settings, generation)
        new.replaces = w.pid
        return


def replacement_ready(pool: Pool, new: Worker) -> None:
    """A READY worker retires the worker it replaces (recycling); after a reload whose
    slot it fills, nothing: the reload's commit does that."""
    if not new.replaces:
        return
    old = pool.workers.get(new.replaces)
    new.replaces = 0
    if old is not None and old.state == WState.READY:
        pool.stop(old, QUIT, old.recycle or "reload")

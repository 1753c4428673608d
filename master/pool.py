"""The worker table: records by pid, their slots' health, and the crash policy.

A crash is replaced at once; repeated crashes and boot failures of a slot back
off (0.1 s, 0.2 s, ... up to 10 s, with jitter); RAPID_FAILS boot failures in
FAIL_WINDOW pause the slot until the window has passed. The pool acts only by
appending commands to the arbiter's outbox.
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Callable

from greenfork.master import recycle
from greenfork.master.commands import Command, Kill, Send, Spawn, WorkerExited
from greenfork.master.control import QUIT
from greenfork.master.records import FAIL_WINDOW, RAPID_FAILS, SlotHealth, Worker, exit_reason
from greenfork.master.settings import Settings
from greenfork.master.states import WState

log = logging.getLogger("greenfork.master")

ALIVE = (WState.FORKING, WState.BOOTING, WState.READY)  # not told to stop, not gone


class Pool:
    def __init__(self, out: list[Command], clock: Callable[[], float]) -> None:
        self.out = out  # the arbiter's outbox
        self.clock = clock
        self.workers: dict[int, Worker] = {}  # pid -> record, from SPAWNED to the reap
        self.forking: list[Worker] = []  # Spawn emitted, SPAWNED not yet handled
        self.health: dict[int, SlotHealth] = {}
        # Once any worker has served, a boot failure is a worker's problem (back-off and
        # retry), no longer a sign that the app cannot load at all.
        self.ever_ready = False
        self.next_sample = 0.0  # next --max-worker-memory sample

    # ------------------------------------------------------------- queries
    def every(self) -> list[Worker]:
        return [*self.workers.values(), *self.forking]

    def live(self) -> list[Worker]:
        return [w for w in self.every() if w.state in ALIVE]

    def of_generation(self, generation: int) -> list[Worker]:
        return [w for w in self.live() if w.generation == generation]

    def slot_missing(self, slot: int, generation: int) -> bool:
        return not any(w.slot == slot and w.generation == generation for w in self.live())

    # ------------------------------------------------------------- life cycle
    def spawn(self, slot: int, settings: Settings, generation: int, staged: bool = False) -> Worker:
        now = self.clock()
        w = Worker(slot=slot, generation=generation, spawned_at=now, heartbeat=now,
                   boot_deadline=now + settings.boot_timeout, expires_at=recycle.expiry(settings, now))
        self.forking.append(w)
        self.out.append(Spawn(w, settings, staged))
        return w

    def register(self, w: Worker, pid: int) -> None:
        self.forking.remove(w)
        w.pid = pid
        w.move("forked")
        self.workers[pid] = w
        log.debug("Booting worker %d with pid %d (generation %d)", w.slot, pid, w.generation)

    def mark_ready(self, w: Worker) -> None:
        w.move("ready")
        w.heartbeat = self.clock()
        self.health.setdefault(w.slot, SlotHealth()).paused_logged = False
        log.info("Worker %d (pid %d) ready", w.slot, w.pid)
        self.ever_ready = True

    def stop(self, w: Worker, message: bytes, reason: str = "shutdown") -> None:
        w.move("stop")
        w.exit_reason = w.exit_reason or reason
        w.stop_sent = True
        self.out.append(Send(w, message))
        # The signal backs the message up: a worker whose control socket is
        # stuck or whose hub is blocked still hears it.
        self.out.append(Kill(w, signal.SIGTERM if message == QUIT else signal.SIGQUIT))

    def reaped(self, pid: int, status: int) -> tuple[Worker, WState] | None:
        """Forget a reaped worker; None for a stray child (PID 1 duty), already reaped."""
        w = self.workers.pop(pid, None)
        if w is None:
            return None
        was = w.state
        w.move("exit")
        self.out.append(WorkerExited(w, exit_reason(w, was, status), status))
        return w, was

    # ------------------------------------------------------------- crash policy
    def count_failure(self, w: Worker, was: WState, status: int, description: str) -> None:
        """A worker exited without being asked to: log it and back its slot off."""
        now = self.clock()
        h = self.health.setdefault(w.slot, SlotHealth())
        if was == WState.BOOTING:
            h.failures = [t for t in h.failures if now - t < FAIL_WINDOW] + [now]
            log.error("Worker %d (pid %d) failed to boot: %s", w.slot, w.pid, description)
        else:
            log.warning("Worker %d (pid %d) died: %s", w.slot, w.pid, description)
            if now - w.spawned_at > FAIL_WINDOW:
                h.crashes = 0
        h.crashes += 1
        h.due = now + self._backoff(h, now)

    def _backoff(self, h: SlotHealth, now: float) -> float:
        # Only the last minute counts: stale failures would otherwise give a 0 s back-off to every crash.
        h.failures = [t for t in h.failures if now - t < FAIL_WINDOW]
        if len(h.failures) >= RAPID_FAILS:
            if not h.paused_logged:
                log.error("Worker slot failed to boot %d times in a minute; pausing it until %.0f s "
                          "after the first failure", len(h.failures), FAIL_WINDOW)
                h.paused_logged = True
            return max(0.0, h.failures[0] + FAIL_WINDOW - now)
        if h.crashes <= 1:
            return 0.0  # a single crash is replaced at once
        # 0.1 s, 0.2 s, ... capped, with jitter so slots do not fork in lockstep
        return min(0.1 * 2.0 ** (h.crashes - 2), 10.0) * random.uniform(0.8, 1.2)

    def respawn_due(self, settings: Settings, generation: int) -> None:
        now = self.clock()
        for slot in range(settings.workers):
            h = self.health.get(slot)
            if self.slot_missing(slot, generation) and (h is None or h.due <= now):
                self.spawn(slot, settings, generation)

    def respawn_deadlines(self, settings: Settings, generation: int) -> list[float]:
        return [h.due for slot, h in self.health.items()
                if h.due and slot < settings.workers and self.slot_missing(slot, generation)]

    def boot_timeouts(self, now: float, skip_generation: int = 0) -> None:
        for w in self.workers.values():
            if w.state == WState.BOOTING and not w.stop_sent and w.generation != skip_generation and \
                    now > w.boot_deadline:
                # A worker that never reports READY is killed; its exit counts as a boot failure.
                log.error("Worker %d (pid %d) not ready after %.0f s (--boot-timeout); killing it",
                          w.slot, w.pid, w.boot_deadline - w.spawned_at)
                w.stop_sent = True
                self.out.append(Kill(w, signal.SIGKILL))

    def boot_deadlines(self) -> list[float]:
        return [w.boot_deadline for w in self.workers.values()
                if w.state == WState.BOOTING and not w.stop_sent]

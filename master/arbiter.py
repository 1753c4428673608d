"""The master's supervising logic: the table of states.py, its actions, and nothing else.

No I/O: `handle(event, ...)` returns the commands (commands.py) the loop's
executor carries out; the answers of those that have one come back through
handle(). Tests drive it with a command log instead of an executor. The clock is
the only thing it reads from outside.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from greenfork.master import recycle
from greenfork.master.commands import (
    CloseRetired,
    Command,
    Detail,
    Exit,
    Input,
    Kill,
    Notify,
    ReopenLogs,
    Send,
    ServerReady,
    WorkersChanged,
)
from greenfork.master.control import EXIT_APP_IMPORT, EXIT_BOOT, EXIT_OK, QUIT, REOPEN, TERMINATE
from greenfork.master.pool import Pool
from greenfork.master.records import (
    KILL_GRACE,
    QUICK_GRACE,
    Reload,
    StopClock,
    Upgrade,
    Worker,
    exit_description,
)
from greenfork.master.reloading import ReloadActions
from greenfork.master.settings import Settings
from greenfork.master.states import CHECKS, IGNORED, MASTER, Event, State, TransitionError, WState
from greenfork.master.upgrading import UpgradeActions

log = logging.getLogger("greenfork.master")

E = Event


class _Bound(NamedTuple):
    action: Callable[[Input], None]
    next: State | None
    guard: Callable[[Input], bool] | None


class Arbiter(ReloadActions, UpgradeActions):
    """Master state machine. `handle()` is the only way in."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic,
                 generation: int = 1, can_exec: bool = False) -> None:
        self.settings = settings  # the serving generation's settings
        self.state = State.STARTING
        self.generation = generation  # the serving generation
        self.next_gen = generation + 1  # numbers are never reused, even by failed reloads
        self.can_exec = can_exec  # a command line to re-execute (USR2, HUP with --preload)
        self.clock = clock
        self.exit_code = EXIT_OK
        self.out: list[Command] = []  # the commands of the handle() under way
        self.pool = Pool(self.out, clock)
        self.reload = Reload()
        self.upgrade = Upgrade()
        self.stop_clock = StopClock()
        self._follow: deque[Input] = deque()
        self.table = {key: tuple(_Bound(getattr(self, r.action), r.next,
                                        getattr(self, r.guard) if r.guard else None) for r in rules)
                      for key, rules in MASTER.items()}

    @property
    def workers(self) -> dict[int, Worker]:
        return self.pool.workers

    # ------------------------------------------------------------- the way in
    def handle(self, event: Event, pid: int = 0, status: int = 0, detail: Detail = None) -> list[Command]:
        self.out.clear()
        self._follow.append(Input(event, pid, status, detail))
        try:
            while self._follow:
                self._step(self._follow.popleft())
        finally:
            self._follow.clear()
        return list(self.out)

    def _step(self, inp: Input) -> None:
        rules = self.table.get((self.state, inp.event))
        if rules is None:
            if (self.state, inp.event) in IGNORED:
                return
            raise TransitionError(f"event {inp.event.value} in state {self.state.value}")
        for rule in rules:
            if rule.guard is None or rule.guard(inp):
                rule.action(inp)
                if rule.next is not None:
                    self.state = rule.next
                return

    def _follow_up(self, event: Event) -> None:
        """Handled right after the current action, in the state the table gives it."""
        self._follow.append(Input(event))

    # ------------------------------------------------------------- queries
    def live(self) -> list[Worker]:
        return self.pool.live()

    def status(self) -> str:
        ready = sum(1 for w in self.pool.workers.values() if w.state is WState.READY)
        return f"generation {self.generation}, {ready}/{self.settings.workers} workers ready"

    def next_deadline(self) -> float | None:
        checks, s, pool = CHECKS[self.state], self.settings, self.pool
        times: list[float] = []
        if "respawn" in checks:
            times += pool.respawn_deadlines(s, self.generation)
        if "boot" in checks or "new_boot" in checks:
            times += pool.boot_deadlines()
        if "hung" in checks:
            times += recycle.hung_deadlines(pool, s)
        if "recycle" in checks:
            times += recycle.recycle_deadlines(pool, self.generation)
        if "memory" in checks:
            times += recycle.sample_deadlines(pool, s)
        if ("delay" in checks or "deadline" in checks) and self.stop_clock.deadline is not None:
            times.append(self.stop_clock.deadline)
        return min(times) if times else None

    # ------------------------------------------------------------- guards
    def has_delay(self, inp: Input) -> bool:
        return self.settings.shutdown_delay > 0

    def reexec_reloads(self, inp: Input) -> bool:
        """--preload: the app lives in the master, so new code needs a new master image."""
        return self.settings.preload and self.can_exec

    def upgrade_pending(self, inp: Input) -> bool:
        return self.upgrade.pending

    def cannot_exec(self, inp: Input) -> bool:
        return not self.can_exec

    def is_child(self, inp: Input) -> bool:
        return self.upgrade.pending and inp.pid == self.upgrade.child

    # ------------------------------------------------------------- workers
    def spawn_first(self, inp: Input) -> None:
        for slot in range(self.settings.workers):
            self.pool.spawn(slot, self.settings, self.generation)

    def register(self, inp: Input) -> None:
        assert isinstance(inp.detail, Worker)
        self.pool.register(inp.detail, inp.pid)

    def heartbeat(self, inp: Input) -> None:
        w = self.pool.workers.get(inp.pid)
        if w is not None:
            w.heartbeat = self.clock()

    def _booting(self, pid: int) -> Worker | None:
        w = self.pool.workers.get(pid)
        return w if w is not None and w.state is WState.BOOTING else None

    def _ready(self, w: Worker) -> None:
        self.pool.mark_ready(w)
        recycle.replacement_ready(self.pool, w)

    def first_worker_ready(self, inp: Input) -> None:
        w = self._booting(inp.pid)
        if w is None:
            return
        self._ready(w)
        live = self.pool.live()
        if len(live) >= self.settings.workers and all(x.state is WState.READY for x in live):
            self._follow_up(E.BOOTED)

    def worker_ready(self, inp: Input) -> None:
        w = self._booting(inp.pid)
        if w is not None:
            self._ready(w)

    def retire_late(self, inp: Input) -> None:
        w = self._booting(inp.pid)
        if w is not None:
            w.move("ready")
            self.pool.stop(w, QUIT)

    def announce_ready(self, inp: Input) -> None:
        self.out.append(ServerReady(self.settings.workers, self.status()))
        if self.reload.queued:
            log.info("Reloading for the HUP received while starting")
            self._follow_up(E.HUP)

    def worker_exit(self, inp: Input) -> None:
        got = self.pool.reaped(inp.pid, inp.status)
        if got is None:
            return  # a stray child (PID 1 duty), already reaped
        w, was = got
        if was is WState.DRAINING:
            log.info("Worker %d (pid %d) exited: %s", w.slot, w.pid, exit_description(inp.status))
        elif was is WState.BOOTING and not self.pool.ever_ready and \
                inp.status in (EXIT_APP_IMPORT, EXIT_BOOT):
            # Nothing has ever served: an app that cannot be imported will not
            # import on the next try either. Stop with the worker's reason.
            log.error("Worker %d failed to boot (%s); stopping", w.slot, exit_description(inp.status))
            self.exit_code = inp.status
            self._follow_up(E.BOOT_FATAL)
            return
        else:
            self.pool.count_failure(w, was, inp.status, exit_description(inp.status))
            if w.slot >= self.settings.workers:
                return
        self.pool.respawn_due(self.settings, self.generation)

    def worker_gone(self, inp: Input) -> None:
        got = self.pool.reaped(inp.pid, inp.status)
        if got is not None:
            log.info("Worker %d (pid %d) exited: %s", got[0].slot, inp.pid, exit_description(inp.status))

    def worker_gone_ending(self, inp: Input) -> None:
        self.worker_gone(inp)
        self._all_exited()

    def _all_exited(self) -> None:
        if not self.pool.every():
            self._follow_up(E.ALL_EXITED)

    def recycle_ask(self, inp: Input) -> None:
        w = self.pool.workers.get(inp.pid)
        if w is not None:
            recycle.mark(w, "max_requests", "reached --max-requests")

    def memory_sampled(self, inp: Input) -> None:
        assert isinstance(inp.detail, dict)
        recycle.memory_sampled(self.pool, self.settings, self.generation, inp.detail, self.clock())

    def scale_up(self, inp: Input) -> None:
        old = self.settings.workers
        self.settings = self.settings.replace(workers=old + 1)
        log.info("TTIN: %d worker(s)", self.settings.workers)
        self.out.append(WorkersChanged(old, old + 1))
        self.pool.respawn_due(self.settings, self.generation)

    def scale_down(self, inp: Input) -> None:
        old = self.settings.workers
        if old <= 1:
            log.warning("TTOU ignored: at least one worker stays")
            return
        self.settings = self.settings.replace(workers=old - 1)
        log.info("TTOU: %d worker(s)", self.settings.workers)
        self.out.append(WorkersChanged(old, old - 1))
        for w in self.pool.live():
            if w.slot >= self.settings.workers:
                self.pool.stop(w, QUIT, "scale_down")

    def refuse_resize(self, inp: Input) -> None:
        log.warning("TTIN/TTOU ignored while %s", self.state.value)

    def reopen(self, inp: Input) -> None:
        self.out.append(ReopenLogs())
        for w in self.pool.workers.values():
            self.out.append(Send(w, REOPEN))

    # ------------------------------------------------------------- TICK
    def supervise(self, inp: Input) -> None:
        now = self.clock()
        for check in CHECKS[self.state]:
            getattr(self, "_check_" + check)(now)

    def _check_boot(self, now: float) -> None:
        self.pool.boot_timeouts(now, skip_generation=self.reload.generation)

    def _check_hung(self, now: float) -> None:
        recycle.check_hung(self.pool, self.settings, now)

    def _check_recycle(self, now: float) -> None:
        recycle.check_recycle(self.pool, self.settings, self.generation, now)

    def _check_memory(self, now: float) -> None:
        recycle.sample_due(self.pool, self.settings, self.generation, now)

    def _check_retired(self, now: float) -> None:
        if self.reload.retiring and not any(w.generation < self.generation for w in self.pool.every()):
            self.reload.retiring = False
            self.out.append(CloseRetired())

    def _check_respawn(self, now: float) -> None:
        self.pool.respawn_due(self.settings, self.generation)

    def _check_delay(self, now: float) -> None:
        if self.stop_clock.deadline is not None and now >= self.stop_clock.deadline:
            self.stop_clock.deadline = None
            self._follow_up(E.DELAY_OVER)

    def _check_deadline(self, now: float) -> None:
        c = self.stop_clock
        if c.deadline is None or now < c.deadline:
            return
        if not c.signalled:
            log.warning("%d worker(s) still busy at the deadline; killing them", len(self.pool.every()))
            sig, c.signalled = c.first, True
        else:
            sig = signal.SIGKILL
        for w in self.pool.every():
            self.out.append(Kill(w, sig))
        c.deadline = now + KILL_GRACE

    # ------------------------------------------------------------- stopping
    def begin_delay(self, inp: Input) -> None:
        delay = self.settings.shutdown_delay
        log.info("TERM: serving %.0f s more while reporting not ready (--shutdown-delay), then draining",
                 delay)
        self.out.append(Notify("stopping"))
        self._drop_reload()  # a reload in progress is abandoned: its generation would never serve
        self.stop_clock = StopClock(deadline=self.clock() + delay)

    def begin_drain(self, inp: Input) -> None:
        log.info("Shutting down gracefully (up to %.0f s for in-flight requests)",
                 self.settings.graceful_timeout)
        self.out.append(Notify("stopping"))
        self._drop_reload()
        self.stop_clock = StopClock(self.clock() + self.settings.graceful_timeout, first=signal.SIGQUIT)
        for w in self.pool.every():
            if w.state is not WState.DRAINING:
                self.pool.stop(w, QUIT)
        self._all_exited()

    def begin_quit(self, inp: Input) -> None:
        log.info("Shutting down quickly")
        self.out.append(Notify("stopping"))
        self._drop_reload()
        self.stop_clock = StopClock(self.clock() + QUICK_GRACE, first=signal.SIGKILL)
        for w in self.pool.every():
            if w.state is WState.DRAINING:
                self.out.append(Kill(w, signal.SIGQUIT))
            else:
                self.pool.stop(w, TERMINATE)
        self._all_exited()

    def finish(self, inp: Input) -> None:
        self.out.append(Exit(self.exit_code))

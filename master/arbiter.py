"""The master's supervising logic: a state table over events, acting through an OsPort.

No I/O of its own: fork, kill, reap and the clock come through the OsPort, so
tests drive it with a fake port and assert the sequence of actions. The real
select loop (loop.py) turns signals, control messages and deadlines into
events and calls Arbiter.handle().
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Callable
from functools import partial

from greenfork.master import recycle, reloading, upgrading
from greenfork.master.records import (  # re-exported: the rest of greenfork imports them from here
    EXIT_APP_IMPORT,
    EXIT_BOOT,
    EXIT_OK,
    EXIT_RUNTIME,
    EXIT_USAGE,
    FAIL_WINDOW,
    HEARTBEAT,
    KILL_GRACE,
    QUICK_GRACE,
    QUIT,
    RAPID_FAILS,
    READY,
    RECYCLE_ME,
    RELOAD_ME,
    REOPEN,
    TERMINATE,
    WORKER_TABLE,
    Event,
    OsPort,
    SlotHealth,
    State,
    TransitionError,
    Worker,
    WState,
    exit_description,
    exit_reason,
)
from greenfork.master.settings import Settings

log = logging.getLogger("greenfork.master")

__all__ = [
    "EXIT_APP_IMPORT", "EXIT_BOOT", "EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE", "FAIL_WINDOW", "HEARTBEAT",
    "KILL_GRACE", "QUICK_GRACE", "QUIT", "RAPID_FAILS", "READY", "RECYCLE_ME", "RELOAD_ME", "REOPEN",
    "TERMINATE", "WORKER_TABLE", "Arbiter", "Event", "OsPort", "SlotHealth", "State", "TransitionError",
    "WState", "Worker", "exit_description", "exit_reason",
]


class Arbiter:
    """Master state machine. `handle(event, ...)` is the only way in."""

    def __init__(self, settings: Settings, port: OsPort, generation: int = 1) -> None:
        self.settings = settings  # the serving generation's settings
        self.port = port
        self.state = State.STARTING
        self.generation = generation  # the serving generation
        self.next_gen = generation + 1  # numbers are never reused, even by failed reloads
        self.pending: Settings | None = None  # a reload's settings until it commits
        self.pending_gen = 0
        self.hup_again = False  # a HUP arrived during a reload: one more after it
        self.bind_changing = False  # the pending reload prepared new listeners
        self.retiring = False  # removed listeners wait for the old generation to go
        self.child = 0  # pid of the new master of an upgrade (USR2, or HUP with --preload)
        self.child_ready = False
        self.handover = False  # the child is a --preload reload: drain once it is ready
        self.next_sample = 0.0  # next --max-worker-memory sample
        self.workers: dict[int, Worker] = {}  # pid -> record
        self.health: dict[int, SlotHealth] = {}
        self.exit_code = EXIT_OK
        self.deadline: float | None = None  # drain/quit deadline
        self.kill_sent = False
        self.ever_ready = False
        self.table: dict[tuple[State, Event], tuple[Callable[..., State | None], State]] = {}
        self._build_table()

    # ------------------------------------------------------------- the table
    def _build_table(self) -> None:
        S, E = State, Event
        t = self.table
        for st in (S.STARTING, S.RUNNING):
            t[st, E.READY] = (self._on_ready, st)
            t[st, E.EXIT] = (self._on_exit, st)
            t[st, E.TICK] = (self._tick, st)
            t[st, E.TTIN] = (self._scale_up, st)
            t[st, E.TTOU] = (self._scale_down, st)
        t[S.STARTING, E.HUP] = (partial(reloading.ignore_hup, self), S.STARTING)
        t[S.STARTING, E.RELOAD_ASK] = (self._ignore, S.STARTING)
        t[S.STARTING, E.USR2] = (partial(upgrading.refuse_usr2, self), S.STARTING)
        t[S.STARTING, E.WINCH] = (self._ignore_winch, S.STARTING)
        t[S.RUNNING, E.HUP] = (partial(reloading.reload, self), S.RUNNING)
        t[S.RUNNING, E.RELOAD_ASK] = (partial(reloading.reload_ask, self), S.RUNNING)
        t[S.RUNNING, E.USR2] = (partial(upgrading.upgrade, self), S.RUNNING)
        t[S.RUNNING, E.WINCH] = (partial(upgrading.winch, self), S.RUNNING)
        # RELOADING: the serving generation keeps its crash policy; the new one is all or nothing.
        t[S.RELOADING, E.READY] = (partial(reloading.reloading_ready, self), S.RELOADING)
        t[S.RELOADING, E.EXIT] = (partial(reloading.reloading_exit, self), S.RELOADING)
        t[S.RELOADING, E.TICK] = (partial(reloading.reloading_tick, self), S.RELOADING)
        t[S.RELOADING, E.HUP] = (partial(reloading.coalesce_hup, self), S.RELOADING)
        t[S.RELOADING, E.RELOAD_ASK] = (self._ignore, S.RELOADING)  # the new generation loads fresh code
        t[S.RELOADING, E.TTIN] = (self._ignore_resize, S.RELOADING)
        t[S.RELOADING, E.TTOU] = (self._ignore_resize, S.RELOADING)
        t[S.RELOADING, E.USR2] = (partial(upgrading.refuse_usr2, self), S.RELOADING)
        t[S.RELOADING, E.WINCH] = (self._ignore_winch, S.RELOADING)
        # PARKED: WINCHed during an upgrade; HUP brings workers back (rollback).
        t[S.PARKED, E.READY] = (self._retire_late, S.PARKED)
        t[S.PARKED, E.EXIT] = (self._on_exit_quiet, S.PARKED)
        t[S.PARKED, E.TICK] = (partial(upgrading.parked_tick, self), S.PARKED)
        t[S.PARKED, E.HUP] = (partial(upgrading.unpark, self), S.RUNNING)
        t[S.PARKED, E.RELOAD_ASK] = (self._ignore, S.PARKED)
        t[S.PARKED, E.TTIN] = (self._ignore_resize, S.PARKED)
        t[S.PARKED, E.TTOU] = (self._ignore_resize, S.PARKED)
        t[S.PARKED, E.USR2] = (partial(upgrading.refuse_usr2, self), S.PARKED)
        t[S.PARKED, E.WINCH] = (self._ignore, S.PARKED)
        # DELAYING: TERM with --shutdown-delay; everything goes on as RUNNING but changes.
        t[S.DELAYING, E.READY] = (self._on_ready, S.DELAYING)
        t[S.DELAYING, E.EXIT] = (self._on_exit, S.DELAYING)
        t[S.DELAYING, E.TICK] = (self._delay_tick, S.DELAYING)
        t[S.DELAYING, E.TERM] = (self._begin_drain, S.DRAINING)  # a second TERM: no more waiting
        for e in (E.HUP, E.RELOAD_ASK, E.TTIN, E.TTOU, E.USR2, E.WINCH, E.RECYCLE):
            t[S.DELAYING, e] = (self._ignore, S.DELAYING)
        for st in (S.STARTING, S.RUNNING, S.RELOADING, S.PARKED):
            t[st, E.TERM] = (self._begin_term, S.DRAINING)
            t[st, E.QUICK] = (self._begin_quit, S.QUITTING)
            t[st, E.USR1] = (self._reopen, st)
            t[st, E.RECYCLE] = (self._recycle_ask, st)
        for ending in (S.DRAINING, S.QUITTING):
            t[ending, E.READY] = (self._retire_late, ending)
            t[ending, E.EXIT] = (self._on_exit_ending, ending)
            for e in (E.TERM, E.HUP, E.TTIN, E.TTOU, E.USR2, E.WINCH, E.RECYCLE, E.RELOAD_ASK):
                t[ending, e] = (self._ignore, ending)
            t[ending, E.USR1] = (self._reopen, ending)
            t[ending, E.TICK] = (self._ending_tick, ending)
        t[S.DRAINING, E.QUICK] = (self._begin_quit, S.QUITTING)
        t[S.QUITTING, E.QUICK] = (self._ignore, S.QUITTING)
        t[S.DELAYING, E.QUICK] = (self._begin_quit, S.QUITTING)
        t[S.DELAYING, E.USR1] = (self._reopen, S.DELAYING)
        for st in (S.STARTING, S.RUNNING, S.RELOADING, S.PARKED, S.DELAYING, S.DRAINING, S.QUITTING):
            t[st, E.CHILD_READY] = (partial(upgrading.child_ready, self), st)
            t[st, E.CHILD_EXIT] = (partial(upgrading.child_exit, self), st)
        for e in Event:
            t[S.STOPPED, e] = (self._ignore, S.STOPPED)

    def handle(self, event: Event, pid: int = 0, status: int = 0) -> None:
        entry = self.table.get((self.state, event))
        if entry is None:
            raise TransitionError(f"event {event.value} in state {self.state.value}")
        action, nxt = entry
        override = action(pid=pid, status=status)
        self.state = override or nxt

    # --------------------------------------------------------------- queries
    def live(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.state in (WState.BOOTING, WState.READY)]

    def next_deadline(self) -> float | None:
        times: list[float] = []
        if self.state in (State.STARTING, State.RUNNING, State.RELOADING, State.DELAYING):  # they respawn
            times += [h.due for slot, h in self.health.items() if h.due and self._slot_missing(slot)]
        for w in self.workers.values():
            if w.state == WState.BOOTING and not w.stop_sent:
                s = self.pending if w.generation == self.pending_gen and self.pending else self.settings
                times.append(w.spawned_at + s.boot_timeout)
        times += recycle.deadlines(self)
        if self.deadline is not None:
            times.append(self.deadline)
        return min(times) if times else None

    def _slot_missing(self, slot: int) -> bool:
        return slot < self.settings.workers and not any(
            w.slot == slot and w.generation == self.generation and w.state in (WState.BOOTING, WState.READY)
            for w in self.workers.values())

    # --------------------------------------------------------------- actions
    def start(self) -> None:
        """Fork the first generation (the loop calls this once, before any event)."""
        for slot in range(self.settings.workers):
            self._spawn(slot)

    def _spawn(self, slot: int, settings: Settings | None = None, generation: int = 0) -> Worker:
        settings = settings or self.settings
        w = Worker(slot=slot, generation=generation or self.generation, spawned_at=self.port.monotonic())
        w.pid = self.port.spawn(w, settings)
        w.heartbeat = w.spawned_at
        w.expires_at = recycle.expiry(settings, w.spawned_at)
        self.workers[w.pid] = w
        self.port.worker_spawned(w)
        log.debug("Booting worker %d with pid %d (generation %d)", slot, w.pid, w.generation)
        return w

    def _mark_ready(self, w: Worker) -> None:
        w.move("ready")
        self.health.setdefault(w.slot, SlotHealth()).paused_logged = False
        log.info("Worker %d (pid %d) ready", w.slot, w.pid)
        # Once any worker serves, a later boot failure is a worker's problem
        # (back-off and retry), no longer a reason to stop the server.
        self.ever_ready = True
        recycle.replacement_ready(self, w)

    def _on_ready(self, pid: int, status: int) -> State | None:
        w = self.workers.get(pid)
        if w is None or w.state != WState.BOOTING:
            return None
        self._mark_ready(w)
        if self.state == State.STARTING and all(
                x.state == WState.READY for x in self.live()) and len(self.live()) >= self.settings.workers:
            self.port.ready()
            return State.RUNNING
        return None

    def _on_exit(self, pid: int, status: int) -> State | None:
        w = self.workers.pop(pid, None)
        if w is None:
            return None  # a stray child (PID 1 duty), already reaped
        was = w.state
        w.move("exit")
        self.port.worker_exited(w, exit_reason(w, was, status), status)
        if was == WState.DRAINING:
            log.info("Worker %d (pid %d) exited: %s", w.slot, pid, exit_description(status))
            return self._respawn_due()
        now = self.port.monotonic()
        h = self.health.setdefault(w.slot, SlotHealth())
        if was == WState.BOOTING:
            if not self.ever_ready and status in (EXIT_APP_IMPORT, EXIT_BOOT):
                # Nothing has ever served: an app that cannot be imported will not
                # import on the next try either. Stop with the worker's reason.
                log.error("Worker %d failed to boot (%s); stopping", w.slot, exit_description(status))
                self.exit_code = status
                return self._begin_quit(0, 0)
            h.failures = [t for t in h.failures if now - t < FAIL_WINDOW] + [now]
            log.error("Worker %d (pid %d) failed to boot: %s", w.slot, pid, exit_description(status))
        else:
            log.warning("Worker %d (pid %d) died: %s", w.slot, pid, exit_description(status))
            if now - w.spawned_at > FAIL_WINDOW:
                h.crashes = 0
        h.crashes += 1
        h.due = now + self._backoff(h, now)
        if w.slot < self.settings.workers:
            self._respawn_due()
        return None

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

    def _boot_timeouts(self, now: float) -> None:
        for w in self.workers.values():
            if w.state == WState.BOOTING and not w.stop_sent and w.generation != self.pending_gen and \
                    now - w.spawned_at > self.settings.boot_timeout:
                # A worker that never reports READY is killed; its exit counts as a boot failure.
                log.error("Worker %d (pid %d) not ready after %.0f s (--boot-timeout); killing it",
                          w.slot, w.pid, self.settings.boot_timeout)
                w.stop_sent = True
                self.port.kill(w.pid, signal.SIGKILL)

    def _respawn_due(self, pid: int = 0, status: int = 0) -> State | None:
        now = self.port.monotonic()
        for slot in range(self.settings.workers):
            h = self.health.get(slot)
            if self._slot_missing(slot) and (h is None or h.due <= now):
                self._spawn(slot)
        return None

    def _tick(self, pid: int, status: int) -> State | None:
        now = self.port.monotonic()
        self._boot_timeouts(now)
        recycle.check_hung(self, now)
        if self.state == State.RUNNING:
            recycle.check_recycle(self, now)
            self._close_retired()
        return self._respawn_due()

    def _close_retired(self) -> None:
        if self.retiring and not any(w.generation < self.generation for w in self.workers.values()):
            self.retiring = False
            self.port.close_retired()

    # ---------------------------------------------------------------- reload
    def _on_exit_quiet(self, pid: int, status: int) -> State | None:
        w = self.workers.pop(pid, None)
        if w is not None:
            was = w.state
            w.move("exit")
            self.port.worker_exited(w, exit_reason(w, was, status), status)
            log.info("Worker %d (pid %d) exited: %s", w.slot, pid, exit_description(status))
        return None

    # -------------------------------------------------------------- stopping
    def _stop(self, w: Worker, message: bytes, reason: str = "shutdown") -> None:
        w.move("stop")
        w.exit_reason = w.exit_reason or reason
        w.stop_sent = True
        self.port.send(w, message)
        # The signal backs the message up: a worker whose control socket is
        # stuck or whose hub is blocked still hears it.
        self.port.kill(w.pid, signal.SIGTERM if message == QUIT else signal.SIGQUIT)

    def _drop_pending(self) -> None:
        """A stop during a reload: the new generation stops with everything else."""
        if self.bind_changing:
            self.bind_changing = False
            self.port.abort_listeners()
        self.pending, self.pending_gen, self.hup_again = None, 0, False

    def _begin_term(self, pid: int, status: int) -> State | None:
        delay = self.settings.shutdown_delay
        if delay <= 0 or self.state == State.PARKED:
            return self._begin_drain(pid, status)
        log.info("TERM: serving %.0f s more while reporting not ready (--shutdown-delay), then draining",
                 delay)
        self._drop_pending()  # a reload in progress is abandoned: its generation would never serve
        self.deadline = self.port.monotonic() + delay
        return State.DELAYING

    def _delay_tick(self, pid: int, status: int) -> State | None:
        self._tick(pid, status)
        if self.deadline is not None and self.port.monotonic() >= self.deadline:
            self.deadline = None
            return self._begin_drain(pid, status) or State.DRAINING
        return None

    def _begin_drain(self, pid: int, status: int) -> State | None:
        log.info("Shutting down gracefully (up to %.0f s for in-flight requests)",
                 self.settings.graceful_timeout)
        self._drop_pending()
        self.deadline = self.port.monotonic() + self.settings.graceful_timeout
        for w in list(self.workers.values()):
            if w.state != WState.DRAINING:
                self._stop(w, QUIT)
        return self._maybe_stopped()

    def _begin_quit(self, pid: int, status: int) -> State | None:
        log.info("Shutting down quickly")
        self._drop_pending()
        self.deadline = self.port.monotonic() + QUICK_GRACE
        self.kill_sent = False
        for w in list(self.workers.values()):
            if w.state == WState.DRAINING:
                self.port.kill(w.pid, signal.SIGQUIT)
            else:
                self._stop(w, TERMINATE)
        return self._maybe_stopped() or State.QUITTING

    def _retire_late(self, pid: int, status: int) -> State | None:
        w = self.workers.get(pid)
        if w is not None and w.state == WState.BOOTING:
            w.move("ready")
            self._stop(w, QUIT)
        return None

    def _on_exit_ending(self, pid: int, status: int) -> State | None:
        self._on_exit_quiet(pid, status)
        return self._maybe_stopped()

    def _maybe_stopped(self) -> State | None:
        return State.STOPPED if not self.workers else None

    def _ending_tick(self, pid: int, status: int) -> State | None:
        if self.state == State.DRAINING:
            recycle.check_hung(self, self.port.monotonic())
        if self.deadline is None or self.port.monotonic() < self.deadline:
            return None
        if not self.kill_sent:
            log.warning("%d worker(s) still busy at the deadline; killing them", len(self.workers))
            sig = signal.SIGKILL if self.state == State.QUITTING else signal.SIGQUIT
            for w in self.workers.values():
                self.port.kill(w.pid, sig)
            self.kill_sent = True
            self.deadline = self.port.monotonic() + KILL_GRACE
        else:
            for w in self.workers.values():
                self.port.kill(w.pid, signal.SIGKILL)
            self.deadline = self.port.monotonic() + KILL_GRACE
        return None

    # ------------------------------------------------------ resize, reopen, recycle
    def _scale_up(self, pid: int, status: int) -> State | None:
        self.settings = self.settings.replace(workers=self.settings.workers + 1)
        log.info("TTIN: %d worker(s)", self.settings.workers)
        return self._respawn_due()

    def _scale_down(self, pid: int, status: int) -> State | None:
        if self.settings.workers <= 1:
            log.warning("TTOU ignored: at least one worker stays")
            return None
        self.settings = self.settings.replace(workers=self.settings.workers - 1)
        log.info("TTOU: %d worker(s)", self.settings.workers)
        for w in self.live():
            if w.slot >= self.settings.workers:
                self._stop(w, QUIT, "scale_down")
        return None

    def _ignore_resize(self, pid: int, status: int) -> State | None:
        log.warning("TTIN/TTOU ignored while %s", self.state.value)
        return None

    def _ignore_winch(self, pid: int, status: int) -> State | None:
        log.warning("WINCH ignored while %s", self.state.value)
        return None

    def _recycle_ask(self, pid: int, status: int) -> State | None:
        w = self.workers.get(pid)
        if w is not None and w.state == WState.READY and not w.recycle:
            w.recycle = "max_requests"
            log.info("Worker %d (pid %d) reached --max-requests; it will be replaced", w.slot, pid)
        return None

    def _reopen(self, pid: int, status: int) -> State | None:
        self.port.reopen_logs()
        for w in self.workers.values():
            self.port.send(w, REOPEN)
        return None

    def _ignore(self, pid: int, status: int) -> State | None:
        return None

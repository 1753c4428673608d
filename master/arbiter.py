"""The master's supervising logic: a state table over events, acting through an OsPort.

No I/O of its own: fork, kill, reap and the clock come through the OsPort, so
tests drive it with a fake port and assert the sequence of actions. The real
select loop (loop.py) turns signals, control messages and deadlines into
events and calls Arbiter.handle().
"""

from __future__ import annotations

import enum
import logging
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from greenfork.master.settings import Settings

log = logging.getLogger("greenfork.master")

# Exit codes (DESIGN §2): documented in docs/signals.md.
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_BOOT, EXIT_APP_IMPORT = 0, 1, 2, 3, 4

RAPID_FAILS = 10  # boot failures per slot per minute before the slot pauses
FAIL_WINDOW = 60.0
QUICK_GRACE = 2.0  # INT/QUIT: how long workers get before SIGKILL
KILL_GRACE = 1.0  # after the graceful deadline's SIGQUIT, before SIGKILL


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"  # TERM: graceful stop
    QUITTING = "quitting"  # INT/QUIT: quick stop
    STOPPED = "stopped"


class Event(enum.Enum):
    READY = "ready"  # a worker reported READY
    EXIT = "exit"  # a worker was reaped
    TERM = "term"
    QUICK = "quick"  # INT or QUIT
    HUP = "hup"
    TTIN = "ttin"
    TTOU = "ttou"
    USR1 = "usr1"
    TICK = "tick"  # a deadline may have passed


class WState(enum.Enum):
    BOOTING = "booting"
    READY = "ready"
    DRAINING = "draining"
    GONE = "gone"


# A worker record's own table: (state, what happened) -> next state.
WORKER_TABLE: dict[tuple[WState, str], WState] = {
    (WState.BOOTING, "ready"): WState.READY,
    (WState.BOOTING, "stop"): WState.DRAINING,
    (WState.BOOTING, "exit"): WState.GONE,
    (WState.READY, "stop"): WState.DRAINING,
    (WState.READY, "exit"): WState.GONE,
    (WState.DRAINING, "ready"): WState.DRAINING,
    (WState.DRAINING, "stop"): WState.DRAINING,
    (WState.DRAINING, "exit"): WState.GONE,
}


class TransitionError(RuntimeError):
    """A (state, event) pair that the table does not define: a bug, never ignored silently."""


@dataclass(slots=True)
class Worker:
    slot: int
    generation: int
    pid: int = 0
    state: WState = WState.BOOTING
    spawned_at: float = 0.0
    stop_sent: bool = False
    heartbeat: float = 0.0  # monotonic time of the last READY/heartbeat message
    # Why the master stopped it (reload, scale_down, shutdown, max_requests, ...);
    # empty for an exit the master did not ask for (crashed, killed, boot_failed).
    exit_reason: str = ""

    def move(self, what: str) -> None:
        nxt = WORKER_TABLE.get((self.state, what))
        if nxt is None:
            raise TransitionError(f"worker {self.slot} (pid {self.pid}): {what} while {self.state.value}")
        self.state = nxt


@dataclass(slots=True)
class SlotHealth:
    """Recent boot failures of one slot, for back-off and the rapid-fail pause."""

    failures: list[float] = field(default_factory=list)
    crashes: int = 0  # consecutive crashes, reset by a worker that stays up
    due: float = 0.0  # earliest time the slot may be respawned
    paused_logged: bool = False


class OsPort(Protocol):
    def monotonic(self) -> float: ...
    def spawn(self, worker: Worker) -> int: ...
    def send(self, worker: Worker, message: bytes) -> None: ...
    def kill(self, pid: int, sig: int) -> None: ...
    def published(self, generation: int) -> None: ...
    def ready(self) -> None: ...
    def reopen_logs(self) -> None: ...
    def reload_settings(self) -> Settings: ...
    # Lifecycle notifications, for metrics and logs; they must not fail.
    def worker_spawned(self, worker: Worker) -> None: ...
    def worker_exited(self, worker: Worker, reason: str, status: int) -> None: ...
    def reloaded(self, ok: bool) -> None: ...


# Control messages, one byte each. Master -> worker:
QUIT, TERMINATE, REOPEN = b"Q", b"T", b"O"
# Worker -> master: accepting; alive (once a second from the worker's hub).
READY, HEARTBEAT = b"R", b"H"


def exit_reason(w: Worker, was: WState, status: int) -> str:
    """The metrics' `reason` label for a reaped worker."""
    if w.exit_reason:
        return w.exit_reason
    if was == WState.BOOTING:
        return "boot_failed"
    if status == -signal.SIGKILL:
        return "killed"
    return "crashed"


def exit_description(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit code {status}"


class Arbiter:
    """Master state machine. `handle(event, ...)` is the only way in."""

    def __init__(self, settings: Settings, port: OsPort) -> None:
        self.settings = settings
        self.port = port
        self.state = State.STARTING
        self.generation = 1
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
        for live in (S.STARTING, S.RUNNING):
            t[live, E.READY] = (self._on_ready, live)
            t[live, E.EXIT] = (self._on_exit, live)
            t[live, E.TERM] = (self._begin_drain, S.DRAINING)
            t[live, E.QUICK] = (self._begin_quit, S.QUITTING)
            t[live, E.USR1] = (self._reopen, live)
            t[live, E.TICK] = (self._respawn_due, live)
            t[live, E.TTIN] = (self._scale_up, live)
            t[live, E.TTOU] = (self._scale_down, live)
        t[S.STARTING, E.HUP] = (self._ignore_hup, S.STARTING)
        t[S.RUNNING, E.HUP] = (self._reload, S.RUNNING)
        for ending in (S.DRAINING, S.QUITTING):
            t[ending, E.READY] = (self._retire_late, ending)
            t[ending, E.EXIT] = (self._on_exit_ending, ending)
            t[ending, E.TERM] = (self._ignore, ending)
            t[ending, E.HUP] = (self._ignore, ending)
            t[ending, E.TTIN] = (self._ignore, ending)
            t[ending, E.TTOU] = (self._ignore, ending)
            t[ending, E.USR1] = (self._reopen, ending)
            t[ending, E.TICK] = (self._ending_tick, ending)
        t[S.DRAINING, E.QUICK] = (self._begin_quit, S.QUITTING)
        t[S.QUITTING, E.QUICK] = (self._ignore, S.QUITTING)
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
        times = [h.due for slot, h in self.health.items() if h.due and self._slot_missing(slot)]
        times += [w.spawned_at + self.settings.boot_timeout for w in self.workers.values()
                  if w.state == WState.BOOTING and not w.stop_sent]
        if self.deadline is not None:
            times.append(self.deadline)
        return min(times) if times else None

    def _slot_missing(self, slot: int) -> bool:
        return slot < self.settings.workers and not any(
            w.slot == slot and w.state in (WState.BOOTING, WState.READY) for w in self.workers.values())

    # --------------------------------------------------------------- actions
    def start(self) -> None:
        """Fork the first generation (the loop calls this once, before any event)."""
        for slot in range(self.settings.workers):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        w = Worker(slot=slot, generation=self.generation, spawned_at=self.port.monotonic())
        w.pid = self.port.spawn(w)
        w.heartbeat = w.spawned_at
        self.workers[w.pid] = w
        self.port.worker_spawned(w)
        log.debug("Booting worker %d with pid %d", slot, w.pid)

    def _on_ready(self, pid: int, status: int) -> State | None:
        w = self.workers.get(pid)
        if w is None or w.state != WState.BOOTING:
            return None
        w.move("ready")
        self.health.setdefault(w.slot, SlotHealth()).paused_logged = False
        log.info("Worker %d (pid %d) ready", w.slot, pid)
        # Once any worker serves, a later boot failure is a worker's problem
        # (back-off and retry), no longer a reason to stop the server.
        self.ever_ready = True
        self.retire_replaced()
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

    def _respawn_due(self, pid: int = 0, status: int = 0) -> State | None:
        now = self.port.monotonic()
        for w in self.workers.values():
            if w.state == WState.BOOTING and not w.stop_sent and \
                    now - w.spawned_at > self.settings.boot_timeout:
                # A worker that never reports READY is killed; its exit counts as a boot failure.
                log.error("Worker %d (pid %d) not ready after %.0f s (--boot-timeout); killing it",
                          w.slot, w.pid, self.settings.boot_timeout)
                w.stop_sent = True
                self.port.kill(w.pid, signal.SIGKILL)
        for slot in range(self.settings.workers):
            h = self.health.get(slot)
            if self._slot_missing(slot) and (h is None or h.due <= now):
                self._spawn(slot)
        return None

    def _ignore_hup(self, pid: int, status: int) -> State | None:
        log.warning("HUP ignored: the server is still starting")
        return None

    def _reload(self, pid: int, status: int) -> State | None:
        """Replace every worker by a new generation, new ones first; each old
        worker is told to quit only when its slot's replacement is READY."""
        try:
            new = self.port.reload_settings()
        except ValueError as e:
            log.error("Reload failed, the current workers keep serving: %s", e)
            self.port.reloaded(False)
            return None
        if new.bind != self.settings.bind:
            log.error("Reload: changing bind addresses needs a restart; keeping %s",
                      ", ".join(self.settings.bind))
            new = new.replace(bind=self.settings.bind)
        old_count = self.settings.workers
        self.settings = new
        self.generation += 1
        log.info("Reloading: starting generation %d with %d worker(s)", self.generation, new.workers)
        for slot in range(new.workers):
            self._spawn(slot)
        for w in self.live():
            if w.generation < self.generation and w.slot >= new.workers:
                self._stop(w, QUIT, "scale_down")  # nothing replaces these
        if new.workers > old_count:
            log.info("Reload: %d -> %d workers", old_count, new.workers)
        self.port.published(self.generation)
        self.port.reloaded(True)
        return None

    def retire_replaced(self) -> None:
        """Old-generation workers whose slot has a READY newer worker get QUIT."""
        ready_slots = {w.slot for w in self.workers.values()
                       if w.state == WState.READY and w.generation == self.generation}
        for w in list(self.workers.values()):
            if w.generation < self.generation and w.slot in ready_slots and w.state != WState.DRAINING:
                self._stop(w, QUIT, "reload")

    def _stop(self, w: Worker, message: bytes, reason: str = "shutdown") -> None:
        w.move("stop")
        w.exit_reason = w.exit_reason or reason
        w.stop_sent = True
        self.port.send(w, message)
        # The signal backs the message up: a worker whose control socket is
        # stuck or whose hub is blocked still hears it.
        self.port.kill(w.pid, signal.SIGTERM if message == QUIT else signal.SIGQUIT)

    def _begin_drain(self, pid: int, status: int) -> State | None:
        log.info("Shutting down gracefully (up to %.0f s for in-flight requests)",
                 self.settings.graceful_timeout)
        self.deadline = self.port.monotonic() + self.settings.graceful_timeout
        for w in list(self.workers.values()):
            if w.state != WState.DRAINING:
                self._stop(w, QUIT)
        return self._maybe_stopped()

    def _begin_quit(self, pid: int, status: int) -> State | None:
        log.info("Shutting down quickly")
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
        w = self.workers.pop(pid, None)
        if w is not None:
            was = w.state
            w.move("exit")
            self.port.worker_exited(w, exit_reason(w, was, status), status)
            log.info("Worker %d (pid %d) exited: %s", w.slot, pid, exit_description(status))
        return self._maybe_stopped()

    def _maybe_stopped(self) -> State | None:
        return State.STOPPED if not self.workers else None

    def _ending_tick(self, pid: int, status: int) -> State | None:
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

    def _reopen(self, pid: int, status: int) -> State | None:
        self.port.reopen_logs()
        for w in self.workers.values():
            self.port.send(w, REOPEN)
        return None

    def _ignore(self, pid: int, status: int) -> State | None:
        return None

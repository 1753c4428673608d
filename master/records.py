"""The master's vocabulary: states, events, worker records, control bytes, the OS port.

Kept apart from arbiter.py (the state machine itself) so the policy modules and
the loop can share these without importing the machine.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass, field
from typing import Protocol

from greenfork.master.settings import Settings

# Exit codes (DESIGN §2): documented in docs/signals.md.
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_BOOT, EXIT_APP_IMPORT = 0, 1, 2, 3, 4

RAPID_FAILS = 10  # boot failures per slot per minute before the slot pauses
FAIL_WINDOW = 60.0
QUICK_GRACE = 2.0  # INT/QUIT: how long workers get before SIGKILL
KILL_GRACE = 1.0  # after the graceful deadline's SIGQUIT, before SIGKILL


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RELOADING = "reloading"  # a new generation is booting; the current one serves
    PARKED = "parked"  # WINCH during an upgrade: no workers, sockets kept for a rollback
    DELAYING = "delaying"  # TERM with --shutdown-delay: still serving, reported not ready
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
    USR2 = "usr2"  # binary upgrade
    WINCH = "winch"  # during an upgrade: stop this master's workers, keep its sockets
    RECYCLE = "recycle"  # a worker reached --max-requests
    RELOAD_ASK = "reload_ask"  # a worker saw a source file change (--reload)
    CHILD_READY = "child_ready"  # the upgraded master's workers are ready
    CHILD_EXIT = "child_exit"  # the upgraded master exited
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
    abort_at: float = 0.0  # when SIGABRT was sent for a missed heartbeat (--timeout)
    killed: bool = False  # SIGKILL sent after --abort-grace
    recycle: str = ""  # max_requests / max_lifetime / max_memory: waiting for its replacement
    replaces: int = 0  # pid of the worker this one recycles (retired when this one is READY)
    expires_at: float = 0.0  # --max-worker-lifetime (+ jitter), 0 for none
    mem_over: int = 0  # consecutive memory samples above --max-worker-memory

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
    def spawn(self, worker: Worker, settings: Settings) -> int: ...
    def send(self, worker: Worker, message: bytes) -> None: ...
    def kill(self, pid: int, sig: int) -> None: ...
    def published(self, generation: int) -> None: ...
    def ready(self) -> None: ...
    def reopen_logs(self) -> None: ...
    def reload_settings(self) -> Settings: ...
    # Listener reconciliation for a reload that changes `bind`: prepare binds the new
    # addresses (ValueError aborts the reload); commit or abort ends it; close_retired
    # closes the removed ones once no worker of an older generation is left.
    def prepare_listeners(self, bind: tuple[str, ...]) -> None: ...
    def commit_listeners(self) -> None: ...
    def abort_listeners(self) -> None: ...
    def close_retired(self) -> None: ...
    def memory(self, pid: int) -> int | None: ...
    # Binary upgrade: can_exec is False under the Python API (no command line to re-run).
    def can_exec(self) -> bool: ...
    def exec_master(self, generation: int) -> int: ...
    def pidfile_oldbin(self) -> None: ...
    def pidfile_restore(self) -> None: ...
    # Lifecycle notifications, for metrics and logs; they must not fail.
    def worker_spawned(self, worker: Worker) -> None: ...
    def worker_exited(self, worker: Worker, reason: str, status: int) -> None: ...
    def reloaded(self, ok: bool) -> None: ...


# Control messages, one byte each. Master -> worker:
QUIT, TERMINATE, REOPEN = b"Q", b"T", b"O"
# Worker -> master: accepting; alive (once a second from the worker's hub);
# reached --max-requests; a watched source file changed (--reload).
READY, HEARTBEAT, RECYCLE_ME, RELOAD_ME = b"R", b"H", b"M", b"L"


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

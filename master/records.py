"""The records the master keeps: workers, slot health, the reload transaction, the upgrade,
the stop clock. Each record with states moves only through its table (states.py)."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from greenfork.master.settings import Settings
from greenfork.master.states import (
    RELOAD_TABLE,
    UPGRADE_TABLE,
    WORKER_TABLE,
    ReloadState,
    UpgradeState,
    WState,
    step,
)

RAPID_FAILS = 10  # boot failures per slot per minute before the slot pauses
FAIL_WINDOW = 60.0
QUICK_GRACE = 2.0  # INT/QUIT: how long workers get before SIGKILL
KILL_GRACE = 1.0  # after the graceful deadline's SIGQUIT, before SIGKILL


@dataclass(slots=True)
class Worker:
    slot: int
    generation: int
    pid: int = 0  # filled in by whoever executes the Spawn command
    state: WState = WState.FORKING
    spawned_at: float = 0.0
    boot_deadline: float = 0.0  # spawned_at + the --boot-timeout of the settings it was spawned with
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
        self.state = step(WORKER_TABLE, self.state, what, f"worker {self.slot} (pid {self.pid})")


@dataclass(slots=True)
class SlotHealth:
    """Recent boot failures of one slot, for back-off and the rapid-fail pause."""

    failures: list[float] = field(default_factory=list)
    crashes: int = 0  # consecutive crashes, reset by a worker that stays up
    due: float = 0.0  # earliest time the slot may be respawned
    paused_logged: bool = False


@dataclass(slots=True)
class Reload:
    """The reload transaction (states.py: RELOAD_TABLE). One record, reused."""

    state: ReloadState = ReloadState.IDLE
    reexec: bool = False  # --preload with a command line: re-execute the master instead
    generation: int = 0  # the new generation, once prepared
    settings: Settings | None = None  # the new generation's settings, once prepared
    staged: bool = False  # the prepare step staged resources (listeners): commit or roll them back
    failure: str = ""  # why the new generation failed (GENERATION_FAILED)
    # These two outlive the transaction:
    queued: bool = False  # a HUP arrived while STARTING or during the transaction: one more follows
    retiring: bool = False  # a commit removed listeners: closed once no older generation's worker is left

    def move(self, what: str) -> None:
        self.state = step(RELOAD_TABLE, self.state, what, "the reload")
        if self.state is ReloadState.IDLE:
            self.reexec, self.generation, self.settings, self.staged, self.failure = False, 0, None, False, ""


@dataclass(slots=True)
class Upgrade:
    """A new master on the same sockets (states.py: UPGRADE_TABLE). One record, reused."""

    state: UpgradeState = UpgradeState.IDLE
    child: int = 0  # the new master's pid
    handover: bool = False  # a --preload reload: this master drains once the new one is ready

    def move(self, what: str) -> None:
        self.state = step(UPGRADE_TABLE, self.state, what, "the upgrade")
        if self.state is UpgradeState.IDLE:
            self.child, self.handover = 0, False

    @property
    def pending(self) -> bool:
        return self.state is not UpgradeState.IDLE


@dataclass(slots=True)
class StopClock:
    """DELAYING's end, or the deadline of a drain or quick stop. `signalled`: the deadline
    passed and its first signal (`first`) went out; from then on SIGKILL every KILL_GRACE."""

    deadline: float | None = None
    first: int = signal.SIGQUIT
    signalled: bool = False


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

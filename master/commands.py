"""What the arbiter asks of the world, and how its answers come back.

Arbiter.handle() returns a list of commands; the loop's Executor (executor.py)
carries them out in order, and tests log them. A command whose outcome the
arbiter needs (a pid, prepared settings, a memory sample) is answered with an
Input that goes back through handle() at once, before the rest of the batch
(run() below does exactly that, for the loop and for the tests alike).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from greenfork.master.records import Worker
from greenfork.master.settings import Settings
from greenfork.master.states import Event


@dataclass(frozen=True, slots=True)
class Prepared:
    """PrepareReload's outcome: the settings the new generation runs with."""

    settings: Settings
    staged: bool  # resources (listeners) were staged: CommitReload or AbortReload ends them
    held: tuple[str, ...] = ()  # changed settings a HUP cannot apply, kept at their running value


Detail = Worker | Prepared | str | dict[int, int | None] | None


@dataclass(frozen=True, slots=True)
class Input:
    event: Event
    pid: int = 0
    status: int = 0
    detail: Detail = None


# ------------------------------------------------------------------ workers
@dataclass(frozen=True, slots=True)
class Spawn:
    """Fork a worker (pre_fork/post_fork). The executor sets worker.pid; answer: SPAWNED."""

    worker: Worker
    settings: Settings
    staged: bool = False  # it serves the reload's staged listeners, not the current ones


@dataclass(frozen=True, slots=True)
class Send:
    worker: Worker
    message: bytes  # control.QUIT, TERMINATE or REOPEN


@dataclass(frozen=True, slots=True)
class Kill:
    worker: Worker  # by record, not pid: it may have been forked earlier in the same batch
    sig: int


@dataclass(frozen=True, slots=True)
class WorkerExited:
    """A worker was reaped (child_exit): for metrics and the debug log."""

    worker: Worker
    reason: str
    status: int


@dataclass(frozen=True, slots=True)
class SampleMemory:
    """Read each worker's unique memory; answer: MEMORY with {pid: bytes or None}."""

    pids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WorkersChanged:
    """The configured worker count changed (nworkers_changed): TTIN, TTOU, a reload."""

    old: int
    new: int


# ------------------------------------------------------------------ reloads
@dataclass(frozen=True, slots=True)
class PrepareReload:
    """The reload's one fallible step (on_reload): re-read the settings, hold what a HUP
    cannot change, stage new listeners (and, with TLS, new contexts). Answer: PREPARED
    with a Prepared, or PREPARE_FAILED with the reason; nothing stays staged on failure.
    With `reexec` only the settings are read: a new master will apply them."""

    current: Settings
    reexec: bool = False


@dataclass(frozen=True, slots=True)
class CommitReload:
    """The staged resources become current (new listeners are logged)."""


@dataclass(frozen=True, slots=True)
class AbortReload:
    """Roll back the prepare step: close what it staged."""


@dataclass(frozen=True, slots=True)
class CloseRetired:
    """Close the listeners a committed reload removed, now that no old worker uses them."""


# ------------------------------------------------------------------ upgrades
@dataclass(frozen=True, slots=True)
class ExecMaster:
    """Execute a new master on the same sockets. Answer: EXEC_STARTED with its pid, or
    EXEC_FAILED with the reason."""

    generation: int


@dataclass(frozen=True, slots=True)
class PidfileOldbin:
    """PIDFILE becomes PIDFILE.oldbin: the new master writes PIDFILE once ready."""


@dataclass(frozen=True, slots=True)
class PidfileRestore:
    """The new master is gone: PIDFILE is ours again."""


# ------------------------------------------------------------------ the outside world
@dataclass(frozen=True, slots=True)
class Publish:
    """Write the addresses file for this generation (the listeners' current URLs)."""

    generation: int


@dataclass(frozen=True, slots=True)
class ServerReady:
    """The first generation is ready (when_ready): log it, tell systemd, -D and start()."""

    workers: int
    status: str = ""  # for systemd's STATUS=


@dataclass(frozen=True, slots=True)
class Notify:
    """For systemd (sd_notify) and the reload counters."""

    kind: Literal["reloading", "reloaded", "reload_failed", "stopping", "mainpid"]
    status: str = ""  # reloaded: for systemd's STATUS=
    pid: int = 0  # mainpid: the new master's


@dataclass(frozen=True, slots=True)
class ReopenLogs:
    pass


@dataclass(frozen=True, slots=True)
class Exit:
    """Every worker is gone: the loop ends and the master exits with `code` (on_exit)."""

    code: int


Command = (Spawn | Send | Kill | WorkerExited | SampleMemory | WorkersChanged | PrepareReload | CommitReload
           | AbortReload | CloseRetired | ExecMaster | PidfileOldbin | PidfileRestore | Publish | ServerReady
           | Notify | ReopenLogs | Exit)


class Machine(Protocol):
    def handle(self, event: Event, pid: int = 0, status: int = 0, detail: Detail = None) -> list[Command]: ...


def run(machine: Machine, first: Input, execute: Callable[[Command], Input | None]) -> None:
    """Handle one input and carry out every command it leads to, answers first."""
    pending = deque(machine.handle(first.event, first.pid, first.status, first.detail))
    while pending:
        answer = execute(pending.popleft())
        if answer is not None:
            more = machine.handle(answer.event, answer.pid, answer.status, answer.detail)
            pending.extendleft(reversed(more))

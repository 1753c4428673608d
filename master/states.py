r"""Every state machine of the master, in one place: states, events and tables, as data.

Four machines, after h11's `_state.py`: the master itself, and three kinds of
records it keeps, each with its own states and its own table. Actions (in
arbiter.py) change records and emit commands (commands.py); they never choose
the master's next state: the table does.

THE MASTER (State x Event -> rules). Every change of state, from MASTER below:

    STARTING  --BOOTED-->                                      RUNNING
    RUNNING   --HUP-->                                         RELOADING
    RELOADING --GENERATION_READY, GENERATION_FAILED,
                PREPARE_FAILED-->                              RUNNING
    RUNNING   --WINCH (an upgrade is pending)-->               PARKED
    PARKED    --HUP (rollback), CHILD_EXIT (of the new master)-> RUNNING
    STARTING, RUNNING, RELOADING --TERM (--shutdown-delay)-->  DELAYING
    DELAYING  --DELAY_OVER, TERM-->                            DRAINING
    STARTING, RUNNING, RELOADING, PARKED --TERM (no delay)-->  DRAINING
    RUNNING, PARKED, DELAYING --HANDED_OVER-->                 DRAINING
    every state but QUITTING and STOPPED --QUICK-->            QUITTING
    STARTING, DELAYING --BOOT_FATAL-->                         QUITTING
    DRAINING, QUITTING --ALL_EXITED-->                         STOPPED

  MASTER maps (state, event) to rules tried in order: (guard, action, next). The
  first rule whose guard holds (no guard: always) runs its action; then the state
  becomes `next` (SAME: unchanged). A pair in IGNORED is deliberately a no-op. A
  pair in neither is impossible by design and raises TransitionError.

  Events come from four places:
  - the loop: signals (TERM, QUICK, HUP, TTIN, TTOU, USR1, USR2, WINCH), worker
    messages (READY, HEARTBEAT, RECYCLE, RELOAD_ASK), the reaper (EXIT, and
    CHILD_EXIT for a new master of an upgrade), the upgrade pipe (CHILD_READY),
    the clock (TICK), and START once before anything else;
  - the results of commands, handed back by whoever executed them, at once and
    before the next input: SPAWNED (Spawn), PREPARED or PREPARE_FAILED
    (PrepareReload), EXEC_STARTED or EXEC_FAILED (ExecMaster), MEMORY (SampleMemory);
  - follow-ups an action raises when it sees that something completed; they are
    handled right after it, in the new state: BOOTED (the first generation is
    ready), GENERATION_READY and GENERATION_FAILED (a reload's new generation),
    BOOT_FATAL (the app cannot load before anything served), DELAY_OVER
    (--shutdown-delay), HANDED_OVER (a --preload reload's new master is ready),
    ALL_EXITED (nothing left to wait for), and HUP again for a queued reload.

  TICK runs the checks CHECKS lists for the state (the loop's select() timeout is
  the earliest deadline among the same checks, so a deadline nobody acts on can
  never spin the loop). DELAYING, DRAINING and QUITTING keep their deadline in a
  StopClock record: `deadline`, and `signalled` once the deadline's first signal
  (SIGQUIT for a drain, SIGKILL for a quick stop) went out; then SIGKILL every
  second until the last worker is reaped.

A WORKER RECORD (WState x what -> WState), one per forked process

    FORKING --forked--> BOOTING --ready--> READY --stop--> DRAINING --exit--> GONE
    (stop from FORKING or BOOTING goes to DRAINING too; exit from BOOTING is a boot failure)

  FORKING lasts from the Spawn command to its SPAWNED result (the executor fills
  in the pid). A slot's SlotHealth (crash back-off, the rapid-fail pause) outlives
  its workers. The worker table (pool.py) also knows whether any worker was ever
  READY: until then a boot failure with exit code 3 or 4 is fatal (BOOT_FATAL),
  after it the slot backs off and retries.

THE RELOAD TRANSACTION (ReloadState x what -> ReloadState), one record

    IDLE --begin--> PREPARING --prepared--> BOOTING --commit/abort/drop--> IDLE
                        \--failed/reexec--> IDLE

  HUP opens it (master RUNNING -> RELOADING). PrepareReload is its one step that
  can fail and be rolled back: re-read the settings (a changed setting that a HUP
  cannot apply is held at its running value and logged), bind new listeners
  (TLS contexts will be built there too). Then the new generation boots; when all
  of it is READY the master commits (old generation told to QUIT, staged
  listeners made current, addresses published), else aborts (new generation
  stopped, staged listeners closed). A stop drops it. With --preload (and a
  command line to re-execute) the prepared settings only validate: the upgrade
  machine re-executes the master instead (`reexec`), and the master stays RUNNING.
  A HUP while STARTING or RELOADING is queued (`queued`, at most one): it runs as
  a follow-up HUP once the server is ready or the transaction has ended. A commit
  that removed listeners sets `retiring`: the TICK check "retired" closes them
  once no worker of an older generation is left.

THE UPGRADE (UpgradeState x what -> UpgradeState), one record

    IDLE --exec--> EXECUTING --started--> PENDING --ready--> READY --exit--> IDLE
                       \--failed--> IDLE       \--exit--> IDLE

  USR2 (or HUP with --preload: `handover`) executes a new master on the same
  sockets. Its readiness arrives as CHILD_READY: for a handover the master then
  drains (HANDED_OVER); for USR2 the operator decides (TERM, or WINCH -> PARKED).
  Its exit (CHILD_EXIT) hands the pidfile and addresses back to this master, which
  resumes its workers if it was PARKED.

Where gunicorn's server hooks run (master/hooks.py, called by the executor): on_starting:
before START; on_reload: the PrepareReload command; when_ready: ServerReady; pre_fork and
post_fork: around the fork that executes Spawn; child_exit (and, in the worker,
worker_exit): WorkerExited; nworkers_changed: WorkersChanged; pre_exec: ExecMaster;
on_exit: Exit.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import NamedTuple, TypeVar

_S = TypeVar("_S", bound=enum.Enum)


class TransitionError(RuntimeError):
    """A (state, event) pair that no table defines: a bug, never ignored silently."""


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RELOADING = "reloading"  # a new generation boots; the current one serves
    PARKED = "parked"  # WINCH during an upgrade: no workers, sockets kept for a rollback
    DELAYING = "delaying"  # TERM with --shutdown-delay: still serving, reported not ready
    DRAINING = "draining"  # TERM: graceful stop
    QUITTING = "quitting"  # INT/QUIT: quick stop
    STOPPED = "stopped"


class Event(enum.Enum):
    # from the loop
    START = "start"
    READY = "ready"  # a worker reported READY
    HEARTBEAT = "heartbeat"
    RECYCLE = "recycle"  # a worker reached --max-requests
    RELOAD_ASK = "reload_ask"  # a worker saw a source file change (--reload)
    EXIT = "exit"  # a worker (or a stray child) was reaped
    TERM = "term"
    QUICK = "quick"  # INT or QUIT
    HUP = "hup"
    TTIN = "ttin"
    TTOU = "ttou"
    USR1 = "usr1"
    USR2 = "usr2"  # binary upgrade
    WINCH = "winch"  # during an upgrade: stop this master's workers, keep its sockets
    CHILD_READY = "child_ready"  # the new master's workers are ready
    CHILD_EXIT = "child_exit"  # the new master exited
    TICK = "tick"  # a deadline may have passed
    # results of commands
    SPAWNED = "spawned"
    PREPARED = "prepared"
    PREPARE_FAILED = "prepare_failed"
    EXEC_STARTED = "exec_started"
    EXEC_FAILED = "exec_failed"
    MEMORY = "memory"
    # follow-ups
    BOOTED = "booted"
    GENERATION_READY = "generation_ready"
    GENERATION_FAILED = "generation_failed"
    BOOT_FATAL = "boot_fatal"
    DELAY_OVER = "delay_over"
    HANDED_OVER = "handed_over"
    ALL_EXITED = "all_exited"


class WState(enum.Enum):
    FORKING = "forking"
    BOOTING = "booting"
    READY = "ready"
    DRAINING = "draining"
    GONE = "gone"


class ReloadState(enum.Enum):
    IDLE = "idle"
    PREPARING = "preparing"
    BOOTING = "booting"


class UpgradeState(enum.Enum):
    IDLE = "idle"
    EXECUTING = "executing"
    PENDING = "pending"  # the new master runs; its workers are not ready yet
    READY = "ready"


WORKER_TABLE: dict[tuple[WState, str], WState] = {
    (WState.FORKING, "forked"): WState.BOOTING,
    (WState.FORKING, "stop"): WState.DRAINING,  # stopped in the same turn it was forked
    (WState.BOOTING, "ready"): WState.READY,
    (WState.BOOTING, "stop"): WState.DRAINING,
    (WState.BOOTING, "exit"): WState.GONE,
    (WState.READY, "stop"): WState.DRAINING,
    (WState.READY, "exit"): WState.GONE,
    (WState.DRAINING, "forked"): WState.DRAINING,
    (WState.DRAINING, "ready"): WState.DRAINING,
    (WState.DRAINING, "stop"): WState.DRAINING,
    (WState.DRAINING, "exit"): WState.GONE,
}

RELOAD_TABLE: dict[tuple[ReloadState, str], ReloadState] = {
    (ReloadState.IDLE, "begin"): ReloadState.PREPARING,
    (ReloadState.PREPARING, "prepared"): ReloadState.BOOTING,
    (ReloadState.PREPARING, "reexec"): ReloadState.IDLE,
    (ReloadState.PREPARING, "failed"): ReloadState.IDLE,
    (ReloadState.BOOTING, "commit"): ReloadState.IDLE,
    (ReloadState.BOOTING, "abort"): ReloadState.IDLE,
    (ReloadState.BOOTING, "drop"): ReloadState.IDLE,
}

UPGRADE_TABLE: dict[tuple[UpgradeState, str], UpgradeState] = {
    (UpgradeState.IDLE, "exec"): UpgradeState.EXECUTING,
    (UpgradeState.EXECUTING, "started"): UpgradeState.PENDING,
    (UpgradeState.EXECUTING, "failed"): UpgradeState.IDLE,
    (UpgradeState.PENDING, "ready"): UpgradeState.READY,
    (UpgradeState.PENDING, "exit"): UpgradeState.IDLE,
    (UpgradeState.READY, "exit"): UpgradeState.IDLE,
}


class Rule(NamedTuple):
    action: str  # an Arbiter method, called with the event's input
    next: State | None = None  # None: the state stays
    guard: str | None = None  # an Arbiter predicate over the same input; None: always


SAME = None
S, E = State, Event
LIVE = tuple(s for s in State if s is not S.STOPPED)
SERVING = (S.STARTING, S.RUNNING, S.DELAYING)  # the crash policy applies: workers are respawned
ENDING = (S.DRAINING, S.QUITTING)

_ROWS: list[tuple[tuple[State, ...], Event, tuple[Rule, ...]]] = [
    # --- the first generation, workers coming and going
    ((S.STARTING,), E.START, (Rule("spawn_first"),)),
    (LIVE, E.SPAWNED, (Rule("register"),)),
    ((S.STARTING,), E.READY, (Rule("first_worker_ready"),)),  # raises BOOTED with the last one
    ((S.RUNNING, S.DELAYING), E.READY, (Rule("worker_ready"),)),
    ((S.RELOADING,), E.READY, (Rule("worker_ready_reloading"),)),  # raises GENERATION_READY
    ((S.PARKED, *ENDING), E.READY, (Rule("retire_late"),)),
    (LIVE, E.HEARTBEAT, (Rule("heartbeat"),)),
    ((S.STARTING,), E.BOOTED, (Rule("announce_ready", S.RUNNING),)),
    (SERVING, E.EXIT, (Rule("worker_exit"),)),  # raises BOOT_FATAL if nothing ever served
    ((S.RELOADING,), E.EXIT, (Rule("worker_exit_reloading"),)),  # raises GENERATION_FAILED
    ((S.PARKED,), E.EXIT, (Rule("worker_gone"),)),
    (ENDING, E.EXIT, (Rule("worker_gone_ending"),)),  # raises ALL_EXITED with the last one
    ((S.STARTING, S.DELAYING), E.BOOT_FATAL, (Rule("begin_quit", S.QUITTING),)),
    (LIVE, E.TICK, (Rule("supervise"),)),
    ((S.RUNNING,), E.MEMORY, (Rule("memory_sampled"),)),
    ((S.STARTING, S.RUNNING, S.RELOADING, S.PARKED), E.RECYCLE, (Rule("recycle_ask"),)),
    ((S.STARTING, S.RUNNING), E.TTIN, (Rule("scale_up"),)),
    ((S.STARTING, S.RUNNING), E.TTOU, (Rule("scale_down"),)),
    ((S.RELOADING, S.PARKED), E.TTIN, (Rule("refuse_resize"),)),
    ((S.RELOADING, S.PARKED), E.TTOU, (Rule("refuse_resize"),)),
    (LIVE, E.USR1, (Rule("reopen"),)),
    # --- reload (HUP, --reload)
    ((S.STARTING, S.RELOADING), E.HUP, (Rule("queue_hup"),)),
    ((S.RUNNING,), E.HUP, (Rule("prepare_reexec", guard="reexec_reloads"),
                           Rule("begin_reload", S.RELOADING))),
    ((S.RUNNING,), E.RELOAD_ASK, (Rule("reload_ask"),)),  # raises HUP for a current worker
    ((S.RELOADING,), E.PREPARED, (Rule("spawn_generation"),)),
    ((S.RELOADING,), E.PREPARE_FAILED, (Rule("reload_failed", S.RUNNING),)),
    ((S.RELOADING,), E.GENERATION_READY, (Rule("commit", S.RUNNING),)),
    ((S.RELOADING,), E.GENERATION_FAILED, (Rule("abort", S.RUNNING),)),
    # --preload: the reload's prepared settings re-execute the master (the upgrade machine)
    ((S.RUNNING,), E.PREPARED, (Rule("refuse_reexec", guard="upgrade_pending"), Rule("reexec"))),
    ((S.RUNNING,), E.PREPARE_FAILED, (Rule("reload_failed"),)),
    # --- binary upgrade (USR2), WINCH, the new master
    ((S.RUNNING,), E.USR2, (Rule("refuse_usr2", guard="upgrade_pending"),
                            Rule("usr2_without_command", guard="cannot_exec"),
                            Rule("begin_upgrade"))),
    ((S.STARTING, S.RELOADING, S.PARKED), E.USR2, (Rule("refuse_usr2"),)),
    ((S.RUNNING,), E.EXEC_STARTED, (Rule("upgrade_started"),)),
    ((S.RUNNING,), E.EXEC_FAILED, (Rule("upgrade_failed"),)),
    ((S.RUNNING, S.RELOADING, S.PARKED, S.DELAYING), E.CHILD_READY,
     (Rule("child_ready"),)),  # raises HANDED_OVER for a --preload reload
    (ENDING, E.CHILD_READY, (Rule("child_ready_ending"),)),
    ((S.RUNNING, S.PARKED, S.DELAYING), E.HANDED_OVER, (Rule("begin_drain", S.DRAINING),)),
    ((S.RUNNING, S.RELOADING, S.DELAYING), E.CHILD_EXIT, (Rule("child_exit"),)),
    (ENDING, E.CHILD_EXIT, (Rule("child_exit_ending"),)),
    ((S.PARKED,), E.CHILD_EXIT, (Rule("child_exit_resume", S.RUNNING, guard="is_child"),
                                 Rule("child_exit"))),
    ((S.RUNNING,), E.WINCH, (Rule("park", S.PARKED, guard="upgrade_pending"),
                             Rule("winch_without_upgrade"))),
    ((S.STARTING, S.RELOADING), E.WINCH, (Rule("refuse_winch"),)),
    ((S.PARKED,), E.HUP, (Rule("unpark", S.RUNNING),)),  # rollback
    # --- stopping
    ((S.STARTING, S.RUNNING, S.RELOADING), E.TERM, (Rule("begin_delay", S.DELAYING, guard="has_delay"),
                                                    Rule("begin_drain", S.DRAINING))),
    ((S.PARKED, S.DELAYING), E.TERM, (Rule("begin_drain", S.DRAINING),)),  # a second TERM: no waiting
    ((S.DELAYING,), E.DELAY_OVER, (Rule("begin_drain", S.DRAINING),)),
    ((S.STARTING, S.RUNNING, S.RELOADING, S.PARKED, S.DELAYING, S.DRAINING), E.QUICK,
     (Rule("begin_quit", S.QUITTING),)),
    (ENDING, E.ALL_EXITED, (Rule("finish", S.STOPPED),)),
]

# Deliberately nothing: each of these inputs means nothing in that state.
IGNORED: frozenset[tuple[State, Event]] = frozenset(
    [(s, e) for s in (S.DELAYING, *ENDING) for e in (E.HUP, E.TTIN, E.TTOU, E.USR2, E.RECYCLE,
                                                     E.RELOAD_ASK, E.WINCH)]
    + [(s, E.TERM) for s in ENDING]  # already stopping; QUICK still escalates a drain
    + [(S.QUITTING, E.QUICK)]
    + [(S.PARKED, E.WINCH)]  # already parked
    + [(s, E.RELOAD_ASK) for s in (S.STARTING, S.RELOADING, S.PARKED)]  # a reload boots fresh code anyway
    # STOPPED: the loop ends at once; inputs read in that last turn are dropped
    + [(S.STOPPED, e) for e in (E.READY, E.HEARTBEAT, E.RECYCLE, E.RELOAD_ASK, E.EXIT, E.TERM, E.QUICK,
                                E.HUP, E.TTIN, E.TTOU, E.USR1, E.USR2, E.WINCH, E.CHILD_READY,
                                E.CHILD_EXIT, E.TICK)]
)


def _build() -> dict[tuple[State, Event], tuple[Rule, ...]]:
    table: dict[tuple[State, Event], tuple[Rule, ...]] = {}
    for states, event, rules in _ROWS:
        for state in states:
            if (state, event) in table or (state, event) in IGNORED:
                raise AssertionError(f"({state.value}, {event.value}) is defined twice")
            if rules[-1].guard is not None:
                raise AssertionError(f"({state.value}, {event.value}): the last rule needs no guard")
            table[state, event] = rules
    return table


MASTER: dict[tuple[State, Event], tuple[Rule, ...]] = _build()

# What TICK checks in each state, in this order (see Arbiter.supervise and next_deadline).
CHECKS: dict[State, tuple[str, ...]] = {
    S.STARTING: ("boot", "hung", "respawn"),
    S.RUNNING: ("boot", "hung", "recycle", "memory", "retired", "respawn"),
    S.RELOADING: ("new_boot", "boot", "hung", "respawn"),
    S.PARKED: ("hung",),
    S.DELAYING: ("boot", "hung", "respawn", "delay"),
    S.DRAINING: ("hung", "deadline"),
    S.QUITTING: ("deadline",),
    S.STOPPED: (),
}


def step(table: Mapping[tuple[_S, str], _S], state: _S, what: str, who: str) -> _S:
    """A record's transition; a pair its table lacks is a TransitionError naming the record."""
    nxt = table.get((state, what))
    if nxt is None:
        raise TransitionError(f"{who}: {what} while {state.value}")
    return nxt

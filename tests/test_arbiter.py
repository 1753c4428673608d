"""The master's supervising state machine, driven through a command log.

Every test asserts the exact sequence of commands the arbiter gave, as the
FakeWorld executed them (it answers the commands that need an answer, as the
real executor does). The clock is the world's `now`, moved by the test; no
processes, no sleeps.
"""

from __future__ import annotations

import signal
import weakref

import pytest

from greenfork.master.arbiter import Arbiter
from greenfork.master.commands import (
    AbortReload,
    CloseRetired,
    Command,
    CommitReload,
    ExecMaster,
    Exit,
    Input,
    Kill,
    Notify,
    PidfileOldbin,
    PidfileRestore,
    Prepared,
    PrepareReload,
    Publish,
    ReopenLogs,
    SampleMemory,
    Send,
    ServerReady,
    Spawn,
    WorkerExited,
    WorkersChanged,
    run,
)
from greenfork.master.control import QUIT, REOPEN, TERMINATE
from greenfork.master.prepare import hold_unreloadable
from greenfork.master.records import FAIL_WINDOW, KILL_GRACE, QUICK_GRACE, Reload, Upgrade, Worker
from greenfork.master.settings import Settings, defaults
from greenfork.master.states import (
    IGNORED,
    MASTER,
    RELOAD_TABLE,
    UPGRADE_TABLE,
    WORKER_TABLE,
    Event,
    ReloadState,
    State,
    TransitionError,
    UpgradeState,
    WState,
)

Action = tuple[object, ...]
START = 1000.0


class FakeWorld:
    """Stands in for the executor: logs each command as a short tuple (the ones that act on
    processes, listeners and files); keeps notifications apart; answers like the executor."""

    def __init__(self) -> None:
        self.commands: list[Command] = []  # everything, in order
        self.actions: list[Action] = []
        self.now = START
        self.last_pid = 100
        self.reload_to: Settings | None = None
        self.reload_error: str | None = None
        self.bind_error: str | None = None
        self.exec_error: str | None = None
        self.mem: dict[int, int] = {}
        # notifications, kept apart so the action sequences stay readable
        self.exits: list[tuple[int, str, int]] = []  # (pid, reason, status)
        self.reloads: list[bool] = []
        self.notified: list[str] = []
        self.resized: list[tuple[int, int]] = []
        self.spawned = 0
        self.settings_of: dict[int, Settings] = {}  # pid -> the settings it was spawned with
        self.exit_code: int | None = None

    def execute(self, cmd: Command) -> Input | None:
        self.commands.append(cmd)
        act = self.actions.append
        match cmd:
            case Spawn():
                self.last_pid += 1
                cmd.worker.pid = self.last_pid
                self.settings_of[self.last_pid] = cmd.settings
                self.spawned += 1
                act(("spawn", cmd.worker.slot, cmd.worker.generation, self.last_pid))
                return Input(Event.SPAWNED, self.last_pid, detail=cmd.worker)
            case Send():
                act(("send", cmd.worker.pid, cmd.message))
            case Kill():
                assert cmd.worker.pid > 0
                act(("kill", cmd.worker.pid, cmd.sig))
            case WorkerExited():
                self.exits.append((cmd.worker.pid, cmd.reason, cmd.status))
            case PrepareReload():
                return self._prepare(cmd)
            case CommitReload():
                act(("commit_listeners",))
            case AbortReload():
                act(("abort_listeners",))
            case CloseRetired():
                act(("close_retired",))
            case ExecMaster():
                if self.exec_error is not None:
                    return Input(Event.EXEC_FAILED, detail=self.exec_error)
                self.last_pid += 1
                act(("exec_master", cmd.generation, self.last_pid))
                return Input(Event.EXEC_STARTED, self.last_pid)
            case PidfileOldbin():
                act(("oldbin",))
            case PidfileRestore():
                act(("restore_pidfile",))
            case Publish():
                act(("published", cmd.generation))
            case ServerReady():
                act(("ready",))
            case ReopenLogs():
                act(("reopen",))
            case Notify():
                self.notified.append(cmd.kind)
                if cmd.kind in ("reloaded", "reload_failed"):
                    self.reloads.append(cmd.kind == "reloaded")
            case SampleMemory():
                return Input(Event.MEMORY, detail={pid: self.mem.get(pid) for pid in cmd.pids})
            case WorkersChanged():
                self.resized.append((cmd.old, cmd.new))
            case Exit():
                self.exit_code = cmd.code
        return None

    def _prepare(self, cmd: PrepareReload) -> Input:
        """What Staging.prepare does, with a settings file and listeners of our own."""
        self.actions.append(("reload",))
        if self.reload_error is not None:
            return Input(Event.PREPARE_FAILED, detail=self.reload_error)
        assert self.reload_to is not None
        if cmd.reexec:
            return Input(Event.PREPARED, detail=Prepared(self.reload_to, staged=False))
        new, held = hold_unreloadable(cmd.current, self.reload_to)
        staged = new.bind != cmd.current.bind
        if staged:
            self.actions.append(("bind", new.bind))
            if self.bind_error is not None:
                return Input(Event.PREPARE_FAILED, detail=self.bind_error)
        return Input(Event.PREPARED, detail=Prepared(new, staged, held))

    def take(self) -> list[Action]:
        out, self.actions = self.actions, []
        return out


WORLDS: weakref.WeakKeyDictionary[Arbiter, FakeWorld] = weakref.WeakKeyDictionary()


def arbiter(settings: Settings, generation: int = 1) -> tuple[Arbiter, FakeWorld]:
    world = FakeWorld()
    arb = Arbiter(settings, clock=lambda: world.now, generation=generation, can_exec=True)
    WORLDS[arb] = world
    return arb, world


def feed(arb: Arbiter, event: Event, pid: int = 0, status: int = 0) -> None:
    """Handle one input as the loop does: every command executed, answers handed back."""
    run(arb, Input(event, pid, status), WORLDS[arb].execute)


def do(arb: Arbiter, event: Event, pid: int = 0, status: int = 0) -> list[Action]:
    """Handle one input; return the actions it caused."""
    feed(arb, event, pid, status)
    return WORLDS[arb].take()


def started(workers: int = 2, **overrides: object) -> tuple[Arbiter, FakeWorld]:
    """Started, no worker READY yet; pids are 101..100+workers in slot order."""
    # No heartbeats arrive from a fake world: the hung check is off unless a test sets --timeout.
    overrides.setdefault("timeout", 0.0)
    arb, port = arbiter(defaults(workers=workers, **overrides))
    assert do(arb, Event.START) == [("spawn", slot, 1, 101 + slot) for slot in range(workers)]
    return arb, port


def running(workers: int = 2, **overrides: object) -> tuple[Arbiter, FakeWorld]:
    """Every worker READY."""
    arb, port = started(workers, **overrides)
    for pid in list(arb.workers):
        feed(arb, Event.READY, pid)
    assert arb.state is State.RUNNING
    assert port.take() == [("ready",)]
    return arb, port


def told_quit(pid: int) -> list[Action]:
    return [("send", pid, QUIT), ("kill", pid, signal.SIGTERM)]


def told_terminate(pid: int) -> list[Action]:
    return [("send", pid, TERMINATE), ("kill", pid, signal.SIGQUIT)]


def due(arb: Arbiter) -> float:
    d = arb.next_deadline()
    assert d is not None
    return d


# ---------------------------------------------------------------- the tables

ALL_PAIRS = [(s, e) for s in State for e in Event]
UNDEFINED = [p for p in ALL_PAIRS if p not in MASTER and p not in IGNORED]


def test_the_table_holds_what_acts_and_ignored_pairs_are_listed_apart() -> None:
    assert not set(MASTER) & IGNORED
    # Far from every pair does something: a complete table would make "missing" meaningless.
    assert len(MASTER) < len(ALL_PAIRS) / 2 and len(UNDEFINED) > len(ALL_PAIRS) / 3
    arb, _ = arbiter(defaults())
    for key, rules in MASTER.items():  # every action and guard is a method of the arbiter
        for rule in rules:
            assert callable(getattr(arb, rule.action)), key
            assert rule.guard is None or callable(getattr(arb, rule.guard)), key
    # The results of commands and the follow-ups are never ignored: they only come where expected.
    answers = {Event.SPAWNED, Event.PREPARED, Event.PREPARE_FAILED, Event.EXEC_STARTED, Event.EXEC_FAILED,
               Event.MEMORY, Event.BOOTED, Event.GENERATION_READY, Event.GENERATION_FAILED, Event.BOOT_FATAL,
               Event.DELAY_OVER, Event.HANDED_OVER, Event.ALL_EXITED, Event.START}
    assert not {e for _, e in IGNORED} & answers


@pytest.mark.parametrize("pair", UNDEFINED, ids=[f"{s.value}-{e.value}" for s, e in UNDEFINED])
def test_a_pair_in_neither_the_table_nor_the_ignored_set_raises(pair: tuple[State, Event]) -> None:
    arb, world = arbiter(defaults())
    arb.state = pair[0]
    with pytest.raises(TransitionError):
        arb.handle(pair[1], pid=101)
    assert arb.state is pair[0]
    assert arb.out == [] and world.commands == []


@pytest.mark.parametrize("pair", sorted(IGNORED, key=str), ids=[f"{s.value}-{e.value}" for s, e in
                                                                   sorted(IGNORED, key=str)])
def test_an_ignored_pair_does_nothing(pair: tuple[State, Event]) -> None:
    arb, _ = running(2)
    arb.state = pair[0]
    assert arb.handle(pair[1], pid=101) == []
    assert arb.state is pair[0] and sorted(arb.workers) == [101, 102]


def test_the_next_state_comes_from_the_table_not_from_the_action() -> None:
    """TERM from RUNNING: the guarded rule's state (DELAYING with a delay, else DRAINING);
    the drain of an empty master then goes on to STOPPED through its follow-up."""
    arb, _ = running(1, shutdown_delay=5.0)
    assert do(arb, Event.TERM) == [] and arb.state is State.DELAYING
    arb, _ = running(1)
    feed(arb, Event.TERM)
    assert arb.state is State.DRAINING
    arb, _ = running(1)
    feed(arb, Event.USR2)
    feed(arb, Event.WINCH)
    feed(arb, Event.EXIT, 101, 0)
    assert arb.state is State.PARKED and not arb.workers
    WORLDS[arb].take()
    assert do(arb, Event.TERM) == [] and arb.state is State.STOPPED
    assert WORLDS[arb].exit_code == 0


@pytest.mark.parametrize(("key", "after"), list(WORKER_TABLE.items()),
                         ids=[f"{s.value}-{w}" for s, w in WORKER_TABLE])
def test_worker_record_transitions(key: tuple[WState, str], after: WState) -> None:
    w = Worker(slot=0, generation=1, pid=7, state=key[0])
    w.move(key[1])
    assert w.state is after


def test_undefined_record_transitions_raise() -> None:
    with pytest.raises(TransitionError):
        Worker(slot=0, generation=1, pid=7, state=WState.GONE).move("ready")
    for state in WState:
        for what in ("forked", "ready", "stop", "exit"):
            if (state, what) not in WORKER_TABLE:
                w = Worker(slot=0, generation=1, pid=7, state=state)
                with pytest.raises(TransitionError):
                    w.move(what)
                assert w.state is state
    for rstate in ReloadState:
        for what in ("begin", "prepared", "reexec", "failed", "commit", "abort", "drop"):
            r = Reload(state=rstate)
            if (rstate, what) in RELOAD_TABLE:
                r.move(what)
                assert r.state is RELOAD_TABLE[rstate, what]
            else:
                with pytest.raises(TransitionError):
                    r.move(what)
                assert r.state is rstate
    for ustate in UpgradeState:
        for what in ("exec", "started", "failed", "ready", "exit"):
            u = Upgrade(state=ustate, child=5)
            if (ustate, what) in UPGRADE_TABLE:
                u.move(what)
                assert u.state is UPGRADE_TABLE[ustate, what]
                assert u.pending is (u.state is not UpgradeState.IDLE)
            else:
                with pytest.raises(TransitionError):
                    u.move(what)


def test_a_record_back_to_idle_forgets_its_transaction() -> None:
    r = Reload(state=ReloadState.BOOTING, generation=3, staged=True, failure="x", queued=True)
    r.move("abort")
    assert (r.state, r.generation, r.staged, r.failure, r.settings) == (ReloadState.IDLE, 0, False, "", None)
    assert r.queued  # a queued HUP outlives the transaction: it is what runs next
    u = Upgrade(state=UpgradeState.READY, child=9, handover=True)
    u.move("exit")
    assert (u.child, u.handover) == (0, False)


# --------------------------------------------------------------------- start

def test_start_spawns_generation_1_and_runs_after_the_last_ready() -> None:
    arb, port = arbiter(defaults(workers=3))
    feed(arb, Event.START)
    assert port.take() == [("spawn", 0, 1, 101), ("spawn", 1, 1, 102), ("spawn", 2, 1, 103)]
    assert do(arb, Event.READY, 102) == do(arb, Event.READY, 101) == []
    assert arb.state is State.STARTING
    assert do(arb, Event.READY, 103) == [("ready",)]
    assert arb.state is State.RUNNING
    feed(arb, Event.READY, 103)  # a repeated READY changes nothing
    assert do(arb, Event.TICK) == []
    assert arb.next_deadline() == START + arb.settings.timeout  # the heartbeat check


# ------------------------------------------------------------------- crashes

def test_crash_is_replaced_at_once_then_backs_off_growing() -> None:
    arb, port = running(2)
    assert do(arb, Event.EXIT, 101, -9) == [("spawn", 0, 1, 103)]  # same tick
    feed(arb, Event.READY, 103)

    port.now += 1.0
    assert do(arb, Event.EXIT, 103, -9) == []  # second crash within a minute: delayed
    first = due(arb) - port.now
    assert 0.08 - 1e-9 <= first <= 0.12 + 1e-9
    port.now = due(arb) - 0.01
    assert do(arb, Event.TICK) == []
    port.now = due(arb)
    assert do(arb, Event.TICK) == [("spawn", 0, 1, 104)]
    feed(arb, Event.READY, 104)

    port.now += 1.0
    assert do(arb, Event.EXIT, 104, -9) == []  # third: a longer delay
    second = due(arb) - port.now
    assert second > first
    assert 0.16 - 1e-9 <= second <= 0.24 + 1e-9
    assert do(arb, Event.TICK) == []
    port.now = due(arb)
    assert do(arb, Event.TICK) == [("spawn", 0, 1, 105)]
    # nothing is due but the new worker's boot deadline
    assert arb.next_deadline() == port.now + arb.settings.boot_timeout
    assert sorted(arb.workers) == [102, 105]


def test_a_worker_that_never_reports_ready_is_killed_at_the_boot_timeout() -> None:
    arb, port = started(1)
    port.now += arb.settings.boot_timeout - 0.1
    assert do(arb, Event.TICK) == []
    port.now += 0.2
    assert do(arb, Event.TICK) == [("kill", 101, signal.SIGKILL)]
    assert do(arb, Event.TICK) == []  # killed once
    assert do(arb, Event.EXIT, 101, -signal.SIGKILL) == [("spawn", 0, 1, 102)]  # a boot failure, retried


# ------------------------------------------------------------- boot failures

@pytest.mark.parametrize("status", [4, 3])
def test_boot_failure_at_first_start_stops_with_its_code(status: int) -> None:
    arb, _ = started(3)
    assert do(arb, Event.EXIT, 101, status) == told_terminate(102) + told_terminate(103)
    assert (arb.state, arb.exit_code) == (State.QUITTING, status)
    feed(arb, Event.EXIT, 102, 0)
    assert do(arb, Event.EXIT, 103, -signal.SIGQUIT) == []
    assert (arb.state, arb.exit_code) == (State.STOPPED, status)


def test_boot_failure_after_another_worker_served_is_retried_not_fatal() -> None:
    arb, _ = started(2)
    feed(arb, Event.READY, 102)  # one worker serves: the app imports fine
    assert do(arb, Event.EXIT, 101, 4) == [("spawn", 0, 1, 103)]
    assert (arb.state, arb.exit_code) == (State.STARTING, 0)


def test_boot_failure_of_the_only_worker_stops_at_once() -> None:
    arb, _ = started(1)
    assert do(arb, Event.EXIT, 101, 4) == []
    assert (arb.state, arb.exit_code) == (State.STOPPED, 4)


def fail_until_paused(arb: Arbiter, port: FakeWorld) -> tuple[float, int]:
    """From RUNNING with one worker (pid 101): a crash, then 10 boot failures."""
    assert do(arb, Event.EXIT, 101, -9) == [("spawn", 0, 1, 102)]
    first_failure, pid = port.now, 102
    for n in range(1, 11):
        assert do(arb, Event.EXIT, pid, 4) == []  # never respawned in the same tick
        assert arb.state is State.RUNNING
        assert due(arb) > port.now
        if n < 10:
            port.now, pid = due(arb), pid + 1
            assert do(arb, Event.TICK) == [("spawn", 0, 1, pid)]
    assert port.now - first_failure < FAIL_WINDOW
    return first_failure, pid


def test_boot_failures_after_ready_back_off_then_pause_the_slot() -> None:
    arb, port = running(1)
    first_failure, pid = fail_until_paused(arb, port)
    assert due(arb) == pytest.approx(first_failure + FAIL_WINDOW)
    for _ in range(1000):
        feed(arb, Event.TICK)
    port.now = first_failure + FAIL_WINDOW - 0.01
    assert do(arb, Event.TICK) == []
    port.now = due(arb)
    assert do(arb, Event.TICK) == [("spawn", 0, 1, pid + 1)]
    assert arb.exit_code == 0


def test_a_crash_after_the_pause_still_backs_off() -> None:
    # The pause's failures are long past; the slot's consecutive crashes still count.
    arb, port = running(1)
    _, pid = fail_until_paused(arb, port)
    port.now = due(arb)
    assert do(arb, Event.TICK) == [("spawn", 0, 1, pid + 1)]
    feed(arb, Event.READY, pid + 1)
    port.now += 30.0
    assert do(arb, Event.EXIT, pid + 1, -signal.SIGSEGV) == []
    assert due(arb) > port.now


def test_boot_failures_at_a_frozen_clock_never_spin() -> None:
    arb, port = running(1)
    feed(arb, Event.EXIT, 101, -9)
    for _ in range(1000):
        for pid in list(arb.workers):
            feed(arb, Event.EXIT, pid, 4)
        feed(arb, Event.TICK)
    assert [a for a in port.actions if a[0] == "spawn"] == [("spawn", 0, 1, 102)]


# ------------------------------------------------------------------ stopping

def test_term_drains_and_stops_when_the_last_worker_is_reaped() -> None:
    arb, port = running(2)
    port.reload_to = defaults(workers=2)
    assert do(arb, Event.TERM) == told_quit(101) + told_quit(102)
    assert arb.state is State.DRAINING
    for event in (Event.TERM, Event.HUP, Event.TTIN, Event.TTOU, Event.TICK):
        assert do(arb, event) == []  # HUP too: no reload during a drain
    assert do(arb, Event.EXIT, 101, 0) == []
    assert arb.state is State.DRAINING
    assert do(arb, Event.EXIT, 102, 0) == []
    assert (arb.state, arb.exit_code) == (State.STOPPED, 0)


def test_drain_deadline_sends_sigquit_then_sigkill() -> None:
    arb, port = running(2, graceful_timeout=30.0)
    assert do(arb, Event.TERM) == told_quit(101) + told_quit(102)
    assert due(arb) == START + 30.0
    feed(arb, Event.EXIT, 101, 0)
    port.now = START + 29.9
    assert do(arb, Event.TICK) == []
    port.now = START + 30.0
    assert do(arb, Event.TICK) == [("kill", 102, signal.SIGQUIT)]
    assert do(arb, Event.TICK) == []
    port.now = START + 30.0 + KILL_GRACE
    assert do(arb, Event.TICK) == [("kill", 102, signal.SIGKILL)]
    feed(arb, Event.EXIT, 102, -signal.SIGKILL)
    assert arb.state is State.STOPPED


def test_quick_stop_terminates_then_kills() -> None:
    arb, port = running(2)
    assert do(arb, Event.QUICK) == told_terminate(101) + told_terminate(102)
    assert arb.state is State.QUITTING
    assert do(arb, Event.QUICK) == do(arb, Event.TERM) == []
    assert arb.state is State.QUITTING
    port.now = START + QUICK_GRACE
    assert do(arb, Event.TICK) == [("kill", 101, signal.SIGKILL), ("kill", 102, signal.SIGKILL)]
    feed(arb, Event.EXIT, 101, -signal.SIGKILL)
    feed(arb, Event.EXIT, 102, -signal.SIGKILL)
    assert arb.state is State.STOPPED


def test_quick_during_a_drain_escalates() -> None:
    arb, port = running(2)
    feed(arb, Event.TERM)
    port.take()
    port.now += 5.0
    assert do(arb, Event.QUICK) == [("kill", 101, signal.SIGQUIT), ("kill", 102, signal.SIGQUIT)]
    assert arb.state is State.QUITTING
    assert due(arb) == START + 5.0 + QUICK_GRACE
    port.now = due(arb)
    assert do(arb, Event.TICK) == [("kill", 101, signal.SIGKILL), ("kill", 102, signal.SIGKILL)]


# -------------------------------------------------------------------- reload

def hup(arb: Arbiter, port: FakeWorld, **settings: object) -> list[Action]:
    settings.setdefault("timeout", 0.0)
    port.reload_to = defaults(**settings)  # type: ignore[arg-type]
    return do(arb, Event.HUP)


def test_hup_keeps_the_old_generation_until_the_whole_new_one_is_ready() -> None:
    arb, port = running(2)
    assert hup(arb, port, workers=2, keep_alive=10.0) == [
        ("reload",), ("spawn", 0, 2, 103), ("spawn", 1, 2, 104)]
    assert arb.state is State.RELOADING
    assert (arb.generation, arb.reload.generation) == (1, 2)
    assert port.settings_of[103].keep_alive == 10.0 and arb.settings.keep_alive == 75.0
    assert do(arb, Event.READY, 104) == []  # half a generation retires nothing
    assert do(arb, Event.READY, 103) == told_quit(101) + told_quit(102) + [("published", 2)]
    assert (arb.state, arb.generation, arb.settings.keep_alive) == (State.RUNNING, 2, 10.0)
    assert port.reloads == [True]
    feed(arb, Event.EXIT, 102, 0)
    feed(arb, Event.EXIT, 101, 0)
    assert do(arb, Event.TICK) == []
    assert sorted(arb.workers) == [103, 104]
    assert [r for _, r, _ in port.exits] == ["reload", "reload"]


def test_a_hup_while_starting_is_applied_once_the_server_is_ready() -> None:
    arb, port = started(2)
    assert hup(arb, port, workers=2, keep_alive=5.0) == []
    assert hup(arb, port, workers=2, keep_alive=5.0) == []  # still one reload, not two
    assert (arb.state, arb.generation, arb.reload.queued) == (State.STARTING, 1, True)
    feed(arb, Event.READY, 101)
    assert do(arb, Event.READY, 102) == [("ready",), ("reload",), ("spawn", 0, 2, 103), ("spawn", 1, 2, 104)]
    assert (arb.state, arb.reload.queued) == (State.RELOADING, False)
    assert port.settings_of[103].keep_alive == 5.0
    feed(arb, Event.READY, 103)
    assert do(arb, Event.READY, 104) == told_quit(101) + told_quit(102) + [("published", 2)]
    assert port.notified == ["reloading", "reloaded"]


def test_a_hup_while_starting_goes_with_a_start_that_fails() -> None:
    arb, port = started(1)
    hup(arb, port, workers=1)
    assert do(arb, Event.EXIT, 101, 4) == []
    assert (arb.state, port.exit_code, arb.reload.queued) == (State.STOPPED, 4, False)


def test_reload_with_bad_settings_keeps_the_current_workers() -> None:
    arb, port = running(2)
    before = arb.settings
    port.reload_error = "workers: must be between 1 and 4096"
    assert do(arb, Event.HUP) == [("reload",)]
    assert (arb.state, arb.generation, arb.settings) == (State.RUNNING, 1, before)
    assert port.reloads == [False]


def test_reload_with_a_new_address_binds_first_and_retires_the_old_ones_after_the_drain() -> None:
    arb, port = running(1, bind=("http://127.0.0.1:8000",))
    assert hup(arb, port, workers=1, bind=("http://127.0.0.1:9000",)) == [
        ("reload",), ("bind", ("http://127.0.0.1:9000",)), ("spawn", 0, 2, 102)]
    assert do(arb, Event.READY, 102) == [*told_quit(101), ("commit_listeners",), ("published", 2)]
    assert arb.settings.bind == ("http://127.0.0.1:9000",)
    assert do(arb, Event.TICK) == []  # the old generation still drains on the old socket
    feed(arb, Event.EXIT, 101, 0)
    assert do(arb, Event.TICK) == [("close_retired",)]
    assert do(arb, Event.TICK) == []


def test_reload_whose_new_bind_fails_changes_nothing() -> None:
    arb, port = running(1, bind=("http://127.0.0.1:8000",))
    port.bind_error = "Failed to bind to address http://127.0.0.1:80: permission denied"
    assert hup(arb, port, workers=1, bind=("http://127.0.0.1:80",)) == [("reload",), ("bind", ("http://127.0.0.1:80",))]
    assert (arb.state, arb.generation, arb.settings.bind) == (State.RUNNING, 1, ("http://127.0.0.1:8000",))
    assert port.reloads == [False]


def test_reload_with_fewer_workers_retires_every_old_worker_at_the_commit() -> None:
    arb, port = running(3)
    assert hup(arb, port, workers=2) == [("reload",), ("spawn", 0, 2, 104), ("spawn", 1, 2, 105)]
    feed(arb, Event.READY, 104)
    assert do(arb, Event.READY, 105) == told_quit(101) + told_quit(102) + told_quit(103) + [("published", 2)]
    for pid in (101, 102, 103):
        feed(arb, Event.EXIT, pid, 0)
    assert do(arb, Event.TICK) == []
    assert sorted(arb.workers) == [104, 105]


@pytest.mark.parametrize("ready_first", [False, True])
def test_a_new_worker_failing_to_boot_aborts_the_reload(ready_first: bool) -> None:
    arb, port = running(2)
    hup(arb, port, workers=2)
    if ready_first:
        assert do(arb, Event.READY, 104) == []
    # slot 0's new worker cannot import the app: the new generation goes, the old one stays
    stop_104 = told_quit(104) if ready_first else told_terminate(104)
    assert do(arb, Event.EXIT, 103, 4) == stop_104
    assert (arb.state, arb.generation, arb.exit_code) == (State.RUNNING, 1, 0)
    assert arb.reload.state is ReloadState.IDLE
    assert port.reloads == [False]
    feed(arb, Event.EXIT, 104, 0)
    port.now += 120.0
    assert do(arb, Event.TICK) == []  # the old workers were never touched, nothing to respawn
    assert {pid: w.state for pid, w in arb.workers.items()} == {101: WState.READY, 102: WState.READY}
    assert port.exits == [(103, "boot_failed", 4), (104, "reload", 0)]
    # the next HUP gets a fresh generation number
    assert hup(arb, port, workers=2)[1:] == [("spawn", 0, 3, 105), ("spawn", 1, 3, 106)]


def test_a_new_worker_not_ready_within_the_boot_timeout_aborts_the_reload() -> None:
    arb, port = running(2)
    hup(arb, port, workers=2, boot_timeout=5.0)
    feed(arb, Event.READY, 103)
    port.now += 5.0
    assert do(arb, Event.TICK) == []
    port.now += 0.1
    assert do(arb, Event.TICK) == [("kill", 104, signal.SIGKILL), *told_quit(103)]
    assert (arb.state, arb.generation) == (State.RUNNING, 1)
    feed(arb, Event.EXIT, 104, -9)
    feed(arb, Event.EXIT, 103, 0)
    assert port.exits == [(104, "boot_failed", -9), (103, "reload", 0)]
    assert port.reloads == [False]


def test_hup_during_a_reload_is_coalesced_into_one_more_reload() -> None:
    arb, port = running(1)
    hup(arb, port, workers=1)
    assert hup(arb, port, workers=1) == []
    assert hup(arb, port, workers=1) == []  # still one more, not two
    assert arb.reload.queued
    assert do(arb, Event.READY, 102) == [*told_quit(101), ("published", 2), ("reload",), ("spawn", 0, 3, 103)]
    assert arb.state is State.RELOADING
    assert do(arb, Event.READY, 103) == [*told_quit(102), ("published", 3)]
    assert (arb.state, arb.generation, arb.reload.queued) == (State.RUNNING, 3, False)


def test_hup_during_a_reload_that_fails_still_reloads_once_more() -> None:
    arb, port = running(1)
    hup(arb, port, workers=1)
    hup(arb, port, workers=1)
    assert do(arb, Event.EXIT, 102, 4) == [("reload",), ("spawn", 0, 3, 103)]
    assert port.reloads == [False]


def test_an_old_worker_crashing_during_a_reload_is_replaced_in_the_old_generation() -> None:
    arb, port = running(2)
    hup(arb, port, workers=2, keep_alive=5.0)
    assert do(arb, Event.EXIT, 101, -9) == [("spawn", 0, 1, 105)]
    assert port.settings_of[105].keep_alive == 75.0  # the serving generation's settings
    assert arb.state is State.RELOADING
    feed(arb, Event.READY, 103)
    # the commit retires the old generation, including its replacement still booting
    assert do(arb, Event.READY, 104) == told_quit(102) + told_quit(105) + [("published", 2)]


def test_a_new_worker_crashing_after_ready_during_the_reload_aborts_it() -> None:
    arb, port = running(2)
    hup(arb, port, workers=2)
    feed(arb, Event.READY, 103)
    assert do(arb, Event.EXIT, 103, -11) == told_terminate(104)
    assert port.exits == [(103, "crashed", -11)]
    assert (arb.state, arb.generation) == (State.RUNNING, 1)


@pytest.mark.parametrize("event", [Event.TERM, Event.QUICK])
def test_a_stop_during_a_reload_stops_both_generations(event: Event) -> None:
    arb, port = running(1, bind=("http://127.0.0.1:8000",))
    hup(arb, port, workers=1, bind=("http://127.0.0.1:9000",))
    port.take()
    actions = do(arb, event)
    assert actions[0] == ("abort_listeners",)
    stop = told_quit if event is Event.TERM else told_terminate
    assert actions[1:] == stop(101) + stop(102)
    assert arb.reload.state is ReloadState.IDLE and not arb.reload.queued
    feed(arb, Event.EXIT, 101, 0)
    feed(arb, Event.EXIT, 102, 0)
    assert arb.state is State.STOPPED


def test_resize_during_a_reload_is_ignored_and_usr1_still_reopens() -> None:
    arb, port = running(1)
    hup(arb, port, workers=1)
    assert do(arb, Event.TTIN) == do(arb, Event.TTOU) == []
    assert do(arb, Event.USR1) == [("reopen",), ("send", 101, REOPEN), ("send", 102, REOPEN)]
    assert do(arb, Event.USR2) == do(arb, Event.WINCH) == do(arb, Event.RELOAD_ASK, 101) == []


def test_reload_ask_from_a_current_worker_reloads_once() -> None:
    arb, port = running(2, reload=True)
    port.reload_to = arb.settings
    assert do(arb, Event.RELOAD_ASK, 101) == [("reload",), ("spawn", 0, 2, 103), ("spawn", 1, 2, 104)]
    assert do(arb, Event.RELOAD_ASK, 102) == []  # the other worker saw the same change
    assert do(arb, Event.RELOAD_ASK, 4242) == []


# -------------------------------------------------------- resize and reopen

def test_ttin_adds_a_slot_and_ttou_quits_the_highest() -> None:
    arb, _ = running(2)
    assert do(arb, Event.TTIN) == [("spawn", 2, 1, 103)]
    assert arb.settings.workers == 3
    assert do(arb, Event.READY, 103) == []
    assert do(arb, Event.TTOU) == told_quit(103)
    assert do(arb, Event.EXIT, 103, 0) == []
    assert do(arb, Event.TTOU) == told_quit(102)
    assert arb.settings.workers == 1
    assert do(arb, Event.TTOU) == []
    assert arb.settings.workers == 1


def test_usr1_reopens_logs_everywhere() -> None:
    arb, _ = running(2)
    assert do(arb, Event.USR1) == [("reopen",), ("send", 101, REOPEN), ("send", 102, REOPEN)]


# ------------------------------------------------------------ late and stray

def test_ready_while_draining_is_told_to_quit() -> None:
    arb, _ = started(2)
    feed(arb, Event.READY, 101)
    # 102 is still booting: it is told to quit all the same, and its READY changes nothing
    assert do(arb, Event.TERM) == told_quit(101) + told_quit(102)
    assert do(arb, Event.READY, 102) == []
    assert (arb.state, arb.workers[102].state) == (State.DRAINING, WState.DRAINING)


def test_exit_of_an_unknown_pid_changes_nothing() -> None:
    arb, _ = running(2)
    assert do(arb, Event.EXIT, 4242, -9) == []
    assert (arb.state, sorted(arb.workers)) == (State.RUNNING, [101, 102])
    assert do(arb, Event.TERM) == told_quit(101) + told_quit(102)
    assert do(arb, Event.EXIT, 4242, 0) == []
    assert arb.state is State.DRAINING


def test_exit_reasons_are_classified_for_metrics() -> None:
    arb, port = running(3)  # pids 101-103
    feed(arb, Event.EXIT, 101, -signal.SIGKILL)  # -> 104 booting
    feed(arb, Event.EXIT, 104, 1)  # died before READY
    feed(arb, Event.EXIT, 102, 1)
    feed(arb, Event.TTOU)  # slot 2 (pid 103) is told to quit
    feed(arb, Event.EXIT, 103, 0)
    assert port.exits == [(101, "killed", -9), (104, "boot_failed", 1), (102, "crashed", 1),
                          (103, "scale_down", 0)]
    port.reload_to = arb.settings
    gen1 = set(arb.workers)
    feed(arb, Event.HUP)
    for pid in sorted(arb.workers):
        if arb.workers[pid].generation == 2:
            feed(arb, Event.READY, pid)
    assert port.reloads == [True]
    live = sorted(arb.workers)
    feed(arb, Event.TERM)
    for pid in live:
        feed(arb, Event.EXIT, pid, 0)
    reasons = {arb_gen: set() for arb_gen in (1, 2)}  # type: dict[int, set[str]]
    for pid, reason, _ in port.exits[4:]:
        reasons[1 if pid in gen1 else 2].add(reason)
    assert reasons == {1: {"reload"}, 2: {"shutdown"}}
    # first generation 3; respawned at once after the kill and the crash (the slot-0 boot
    # failure is backed off, not respawned in the same tick); the reload's generation of 2
    assert port.spawned == 3 + 2 + 2


def test_shutdown_delay_keeps_serving_then_drains() -> None:
    arb, port = running(2, shutdown_delay=5.0)
    assert do(arb, Event.TERM) == []  # nobody is told to stop yet
    assert arb.state is State.DELAYING
    port.now += 4.9
    assert do(arb, Event.TICK) == []
    assert do(arb, Event.EXIT, 101, -9) == [("spawn", 0, 1, 103)]  # still supervised while delaying
    port.now += 0.2
    acts = do(arb, Event.TICK)
    assert ("send", 102, b"Q") in acts and ("send", 103, b"Q") in acts
    assert arb.state is State.DRAINING


def test_second_term_skips_the_shutdown_delay() -> None:
    arb, _ = running(1, shutdown_delay=30.0)
    feed(arb, Event.TERM)
    assert arb.state is State.DELAYING
    assert ("send", 101, b"Q") in do(arb, Event.TERM)
    assert arb.state is State.DRAINING


# ------------------------------------------------------- settings a HUP cannot change

def test_a_hup_holds_settings_that_need_a_restart_and_says_what_applies_them(
        caplog: pytest.LogCaptureFixture) -> None:
    arb, port = running(1, user=None, preload=False)
    with caplog.at_level("WARNING", "greenfork.master"):
        assert hup(arb, port, workers=1, keep_alive=9.0, user="nobody", umask=0o027, daemon=True) == [
            ("reload",), ("spawn", 0, 2, 102)]
    new = port.settings_of[102]
    # the reloadable change applies; nothing is half-applied
    assert (new.keep_alive, new.user, new.umask, new.daemon) == (9.0, None, None, False)
    notes = [r.getMessage() for r in caplog.records]
    assert "Reload: user changed to 'nobody', which a HUP does not apply (only a restart or a binary " \
           "upgrade (USR2) does); keeping None" in notes
    assert any("umask changed to 0o027" in n and "USR2" in n for n in notes)
    assert any(n.startswith("Reload: daemon changed to True") and "(only a restart does)" in n for n in notes)
    assert not any("keep_alive" in n for n in notes)
    feed(arb, Event.READY, 102)
    assert (arb.settings.keep_alive, arb.settings.user) == (9.0, None)


def test_hold_unreloadable_keeps_the_running_value_and_its_source() -> None:
    current = defaults(backlog=100, sources=(("backlog", "command line --backlog"),))
    new = defaults(backlog=200, workers=3,
                   sources=(("backlog", "greenfork.toml"), ("workers", "greenfork.toml")))
    kept, notes = hold_unreloadable(current, new)
    assert (kept.backlog, kept.workers) == (100, 3)
    assert kept.source_of("backlog") == "command line --backlog"
    assert kept.source_of("workers") == "greenfork.toml"
    assert len(notes) == 1 and notes[0].startswith("backlog changed to 200")
    assert hold_unreloadable(current, current) == (current, ())


# ------------------------------------------------------------- notifications

def test_systemd_and_the_counters_hear_of_reloads_and_stops() -> None:
    arb, port = running(1)
    hup(arb, port, workers=2)
    assert port.notified == ["reloading"]
    feed(arb, Event.READY, 102)
    feed(arb, Event.READY, 103)
    assert port.notified == ["reloading", "reloaded"] and port.resized == [(1, 2)]
    ready = [c for c in port.commands if isinstance(c, Notify) and c.kind == "reloaded"]
    assert ready[0].status == "generation 2, 2/2 workers ready"
    port.reload_error = "bad"
    feed(arb, Event.HUP)
    assert port.notified[-2:] == ["reloading", "reload_failed"] and port.reloads == [True, False]
    feed(arb, Event.TTIN)
    assert port.resized == [(1, 2), (2, 3)]
    feed(arb, Event.TERM)
    assert port.notified[-1] == "stopping"
    for pid in list(arb.workers):
        feed(arb, Event.EXIT, pid, 0)
    assert isinstance(port.commands[-1], Exit) and port.exit_code == 0


def test_server_ready_comes_once_with_the_first_generations_status() -> None:
    _, port = running(2)
    ready = [c for c in port.commands if isinstance(c, ServerReady)]
    assert ready == [ServerReady(2, "generation 1, 2/2 workers ready")]


# ----------------------------------------------------------- same-turn edges

def test_a_worker_forked_in_the_turn_the_drain_starts_is_told_to_stop() -> None:
    """DELAYING's tick respawns a crashed slot and, in the same tick, the delay ends: the new
    worker is stopped with the others, by the pid its Spawn gave it."""
    arb, port = running(2, shutdown_delay=5.0)
    feed(arb, Event.TERM)
    port.now += 1.0
    feed(arb, Event.EXIT, 101, -9)  # replaced at once: 103
    port.now += 1.0
    feed(arb, Event.EXIT, 103, -9)  # backed off
    port.take()
    port.now += 10.0  # the back-off and the delay are both over
    actions = do(arb, Event.TICK)
    assert actions[0] == ("spawn", 0, 1, 104)
    assert set(actions[1:]) == set(told_quit(102) + told_quit(104))
    assert arb.state is State.DRAINING and arb.workers[104].state is WState.DRAINING


def test_an_answer_is_handled_before_the_rest_of_its_batch() -> None:
    handled: list[Event] = []
    executed: list[str] = []

    class Machine:
        def handle(self, event: Event, pid: int = 0, status: int = 0, detail: object = None) -> list[Command]:
            handled.append(event)
            if event is Event.TICK:
                return [ReopenLogs(), CloseRetired()]
            return [AbortReload()]

    def execute(cmd: Command) -> Input | None:
        executed.append(type(cmd).__name__)
        return Input(Event.MEMORY) if isinstance(cmd, ReopenLogs) else None

    run(Machine(), Input(Event.TICK), execute)
    assert handled == [Event.TICK, Event.MEMORY]
    assert executed == ["ReopenLogs", "AbortReload", "CloseRetired"]


def test_a_spawned_worker_is_registered_by_its_answer() -> None:
    arb, port = running(1)
    port.reload_to = defaults(workers=1, timeout=0.0)
    n = len(port.commands)
    feed(arb, Event.HUP)
    assert [type(c) for c in port.commands[n:]] == [Notify, PrepareReload, Spawn]
    assert arb.workers[102].state is WState.BOOTING and arb.pool.forking == []
    spawn = port.commands[-1]
    assert isinstance(spawn, Spawn) and spawn.worker is arb.workers[102] and spawn.settings.workers == 1

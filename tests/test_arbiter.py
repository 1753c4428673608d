"""The master's supervising state machine, driven through a fake OsPort.

Every test asserts the exact sequence of actions the arbiter asked of the OS.
The clock is the port's `now`, moved by the test; no processes, no sleeps.
"""

from __future__ import annotations

import signal

import pytest

from greenfork.master.arbiter import (
    FAIL_WINDOW,
    KILL_GRACE,
    QUICK_GRACE,
    QUIT,
    REOPEN,
    TERMINATE,
    WORKER_TABLE,
    Arbiter,
    Event,
    State,
    TransitionError,
    Worker,
    WState,
)
from greenfork.master.settings import SettingError, Settings, defaults

Action = tuple[object, ...]
START = 1000.0


class FakePort:
    def __init__(self) -> None:
        self.actions: list[Action] = []
        self.now = START
        self.last_pid = 100
        self.reload_to: Settings | None = None
        self.reload_error: str | None = None
        # lifecycle notifications, kept apart so the action sequences stay readable
        self.exits: list[tuple[int, str, int]] = []  # (pid, reason, status)
        self.reloads: list[bool] = []
        self.spawned = 0
        self.settings_of: dict[int, Settings] = {}  # pid -> the settings it was spawned with
        self.bind_error: str | None = None
        self.mem: dict[int, int] = {}
        self.execable = True
        self.exec_error: str | None = None

    def monotonic(self) -> float:
        return self.now

    def spawn(self, worker: Worker, settings: Settings) -> int:
        self.last_pid += 1
        self.settings_of[self.last_pid] = settings
        self.actions.append(("spawn", worker.slot, worker.generation, self.last_pid))
        return self.last_pid

    def send(self, worker: Worker, message: bytes) -> None:
        self.actions.append(("send", worker.pid, message))

    def kill(self, pid: int, sig: int) -> None:
        self.actions.append(("kill", pid, sig))

    def published(self, generation: int) -> None:
        self.actions.append(("published", generation))

    def ready(self) -> None:
        self.actions.append(("ready",))

    def reopen_logs(self) -> None:
        self.actions.append(("reopen",))

    def reload_settings(self) -> Settings:
        self.actions.append(("reload",))
        if self.reload_error is not None:
            raise SettingError(self.reload_error)
        assert self.reload_to is not None
        return self.reload_to

    def prepare_listeners(self, bind: tuple[str, ...]) -> None:
        self.actions.append(("bind", bind))
        if self.bind_error is not None:
            raise ValueError(self.bind_error)

    def commit_listeners(self) -> None:
        self.actions.append(("commit_listeners",))

    def abort_listeners(self) -> None:
        self.actions.append(("abort_listeners",))

    def close_retired(self) -> None:
        self.actions.append(("close_retired",))

    def memory(self, pid: int) -> int | None:
        return self.mem.get(pid)

    def can_exec(self) -> bool:
        return self.execable

    def exec_master(self, generation: int) -> int:
        if self.exec_error is not None:
            raise OSError(self.exec_error)
        self.last_pid += 1
        self.actions.append(("exec_master", generation, self.last_pid))
        return self.last_pid

    def pidfile_oldbin(self) -> None:
        self.actions.append(("oldbin",))

    def pidfile_restore(self) -> None:
        self.actions.append(("restore_pidfile",))

    def worker_spawned(self, worker: Worker) -> None:
        self.spawned += 1

    def worker_exited(self, worker: Worker, reason: str, status: int) -> None:
        self.exits.append((worker.pid, reason, status))

    def reloaded(self, ok: bool) -> None:
        self.reloads.append(ok)

    def take(self) -> list[Action]:
        out, self.actions = self.actions, []
        return out


def started(workers: int = 2, **overrides: object) -> tuple[Arbiter, FakePort]:
    """Started, no worker READY yet; pids are 101..100+workers in slot order."""
    port = FakePort()
    # No heartbeats arrive from a fake port: the hung check is off unless a test sets --timeout.
    overrides.setdefault("timeout", 0.0)
    arb = Arbiter(defaults(workers=workers, **overrides), port)
    arb.start()
    assert port.take() == [("spawn", slot, 1, 101 + slot) for slot in range(workers)]
    return arb, port


def running(workers: int = 2, **overrides: object) -> tuple[Arbiter, FakePort]:
    """Every worker READY."""
    arb, port = started(workers, **overrides)
    for pid in list(arb.workers):
        arb.handle(Event.READY, pid)
    assert arb.state is State.RUNNING
    assert port.take() == [("ready",)]
    return arb, port


def told_quit(pid: int) -> list[Action]:
    return [("send", pid, QUIT), ("kill", pid, signal.SIGTERM)]


def told_terminate(pid: int) -> list[Action]:
    return [("send", pid, TERMINATE), ("kill", pid, signal.SIGQUIT)]


def do(arb: Arbiter, event: Event, pid: int = 0, status: int = 0) -> list[Action]:
    """Handle one event; return the actions it caused."""
    arb.handle(event, pid, status)
    assert isinstance(arb.port, FakePort)
    return arb.port.take()


def due(arb: Arbiter) -> float:
    d = arb.next_deadline()
    assert d is not None
    return d


# ---------------------------------------------------------------- the tables

ALL_PAIRS = [(s, e) for s in State for e in Event]


def test_every_state_event_pair_is_in_the_table() -> None:
    arb = Arbiter(defaults(), FakePort())
    assert [p for p in ALL_PAIRS if p not in arb.table] == []
    assert len(arb.table) == len(ALL_PAIRS)


@pytest.mark.parametrize("pair", ALL_PAIRS, ids=[f"{s.value}-{e.value}" for s, e in ALL_PAIRS])
def test_a_pair_missing_from_the_table_raises(pair: tuple[State, Event]) -> None:
    port = FakePort()
    arb = Arbiter(defaults(), port)
    arb.state = pair[0]
    del arb.table[pair]
    with pytest.raises(TransitionError):
        arb.handle(pair[1], pid=101)
    assert arb.state is pair[0]
    assert port.actions == []


@pytest.mark.parametrize(("key", "after"), list(WORKER_TABLE.items()),
                         ids=[f"{s.value}-{w}" for s, w in WORKER_TABLE])
def test_worker_record_transitions(key: tuple[WState, str], after: WState) -> None:
    w = Worker(slot=0, generation=1, pid=7, state=key[0])
    w.move(key[1])
    assert w.state is after


def test_undefined_worker_record_transitions_raise() -> None:
    with pytest.raises(TransitionError):
        Worker(slot=0, generation=1, pid=7, state=WState.GONE).move("ready")
    for state in WState:
        for what in ("ready", "stop", "exit"):
            if (state, what) not in WORKER_TABLE:
                w = Worker(slot=0, generation=1, pid=7, state=state)
                with pytest.raises(TransitionError):
                    w.move(what)
                assert w.state is state


# --------------------------------------------------------------------- start

def test_start_spawns_generation_1_and_runs_after_the_last_ready() -> None:
    port = FakePort()
    arb = Arbiter(defaults(workers=3), port)
    arb.start()
    assert port.take() == [("spawn", 0, 1, 101), ("spawn", 1, 1, 102), ("spawn", 2, 1, 103)]
    assert do(arb, Event.READY, 102) == do(arb, Event.READY, 101) == []
    assert arb.state is State.STARTING
    assert do(arb, Event.READY, 103) == [("ready",)]
    assert arb.state is State.RUNNING
    arb.handle(Event.READY, 103)  # a repeated READY changes nothing
    assert do(arb, Event.TICK) == []
    assert arb.next_deadline() == START + arb.settings.timeout  # the heartbeat check


# ------------------------------------------------------------------- crashes

def test_crash_is_replaced_at_once_then_backs_off_growing() -> None:
    arb, port = running(2)
    assert do(arb, Event.EXIT, 101, -9) == [("spawn", 0, 1, 103)]  # same tick
    arb.handle(Event.READY, 103)

    port.now += 1.0
    assert do(arb, Event.EXIT, 103, -9) == []  # second crash within a minute: delayed
    first = due(arb) - port.now
    assert 0.08 - 1e-9 <= first <= 0.12 + 1e-9
    port.now = due(arb) - 0.01
    assert do(arb, Event.TICK) == []
    port.now = due(arb)
    assert do(arb, Event.TICK) == [("spawn", 0, 1, 104)]
    arb.handle(Event.READY, 104)

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
    arb.handle(Event.EXIT, 102, 0)
    assert do(arb, Event.EXIT, 103, -signal.SIGQUIT) == []
    assert (arb.state, arb.exit_code) == (State.STOPPED, status)


def test_boot_failure_after_another_worker_served_is_retried_not_fatal() -> None:
    arb, _ = started(2)
    arb.handle(Event.READY, 102)  # one worker serves: the app imports fine
    assert do(arb, Event.EXIT, 101, 4) == [("spawn", 0, 1, 103)]
    assert (arb.state, arb.exit_code) == (State.STARTING, 0)


def test_boot_failure_of_the_only_worker_stops_at_once() -> None:
    arb, _ = started(1)
    assert do(arb, Event.EXIT, 101, 4) == []
    assert (arb.state, arb.exit_code) == (State.STOPPED, 4)


def fail_until_paused(arb: Arbiter, port: FakePort) -> tuple[float, int]:
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
        arb.handle(Event.TICK)
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
    arb.handle(Event.READY, pid + 1)
    port.now += 30.0
    assert do(arb, Event.EXIT, pid + 1, -signal.SIGSEGV) == []
    assert due(arb) > port.now


def test_boot_failures_at_a_frozen_clock_never_spin() -> None:
    arb, port = running(1)
    arb.handle(Event.EXIT, 101, -9)
    for _ in range(1000):
        for pid in list(arb.workers):
            arb.handle(Event.EXIT, pid, 4)
        arb.handle(Event.TICK)
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
    arb.handle(Event.EXIT, 101, 0)
    port.now = START + 29.9
    assert do(arb, Event.TICK) == []
    port.now = START + 30.0
    assert do(arb, Event.TICK) == [("kill", 102, signal.SIGQUIT)]
    assert do(arb, Event.TICK) == []
    port.now = START + 30.0 + KILL_GRACE
    assert do(arb, Event.TICK) == [("kill", 102, signal.SIGKILL)]
    arb.handle(Event.EXIT, 102, -signal.SIGKILL)
    assert arb.state is State.STOPPED


def test_quick_stop_terminates_then_kills() -> None:
    arb, port = running(2)
    assert do(arb, Event.QUICK) == told_terminate(101) + told_terminate(102)
    assert arb.state is State.QUITTING
    assert do(arb, Event.QUICK) == do(arb, Event.TERM) == []
    assert arb.state is State.QUITTING
    port.now = START + QUICK_GRACE
    assert do(arb, Event.TICK) == [("kill", 101, signal.SIGKILL), ("kill", 102, signal.SIGKILL)]
    arb.handle(Event.EXIT, 101, -signal.SIGKILL)
    arb.handle(Event.EXIT, 102, -signal.SIGKILL)
    assert arb.state is State.STOPPED


def test_quick_during_a_drain_escalates() -> None:
    arb, port = running(2)
    arb.handle(Event.TERM)
    port.take()
    port.now += 5.0
    assert do(arb, Event.QUICK) == [("kill", 101, signal.SIGQUIT), ("kill", 102, signal.SIGQUIT)]
    assert arb.state is State.QUITTING
    assert due(arb) == START + 5.0 + QUICK_GRACE
    port.now = due(arb)
    assert do(arb, Event.TICK) == [("kill", 101, signal.SIGKILL), ("kill", 102, signal.SIGKILL)]


# -------------------------------------------------------------------- reload

def hup(arb: Arbiter, port: FakePort, **settings: object) -> list[Action]:
    settings.setdefault("timeout", 0.0)
    port.reload_to = defaults(**settings)  # type: ignore[arg-type]
    return do(arb, Event.HUP)


def test_hup_keeps_the_old_generation_until_the_whole_new_one_is_ready() -> None:
    arb, port = running(2)
    assert hup(arb, port, workers=2, keep_alive=10.0) == [
        ("reload",), ("spawn", 0, 2, 103), ("spawn", 1, 2, 104)]
    assert arb.state is State.RELOADING
    assert (arb.generation, arb.pending_gen) == (1, 2)
    assert port.settings_of[103].keep_alive == 10.0 and arb.settings.keep_alive == 75.0
    assert do(arb, Event.READY, 104) == []  # half a generation retires nothing
    assert do(arb, Event.READY, 103) == told_quit(101) + told_quit(102) + [("published", 2)]
    assert (arb.state, arb.generation, arb.settings.keep_alive) == (State.RUNNING, 2, 10.0)
    assert port.reloads == [True]
    arb.handle(Event.EXIT, 102, 0)
    arb.handle(Event.EXIT, 101, 0)
    assert do(arb, Event.TICK) == []
    assert sorted(arb.workers) == [103, 104]
    assert [r for _, r, _ in port.exits] == ["reload", "reload"]


def test_hup_while_starting_is_ignored() -> None:
    arb, port = started(2)
    assert hup(arb, port, workers=2) == []
    assert (arb.state, arb.generation) == (State.STARTING, 1)


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
    arb.handle(Event.EXIT, 101, 0)
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
    arb.handle(Event.READY, 104)
    assert do(arb, Event.READY, 105) == told_quit(101) + told_quit(102) + told_quit(103) + [("published", 2)]
    for pid in (101, 102, 103):
        arb.handle(Event.EXIT, pid, 0)
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
    assert (arb.state, arb.generation, arb.pending_gen, arb.exit_code) == (State.RUNNING, 1, 0, 0)
    assert port.reloads == [False]
    arb.handle(Event.EXIT, 104, 0)
    port.now += 120.0
    assert do(arb, Event.TICK) == []  # the old workers were never touched, nothing to respawn
    assert {pid: w.state for pid, w in arb.workers.items()} == {101: WState.READY, 102: WState.READY}
    assert port.exits == [(103, "boot_failed", 4), (104, "reload", 0)]
    # the next HUP gets a fresh generation number
    assert hup(arb, port, workers=2)[1:] == [("spawn", 0, 3, 105), ("spawn", 1, 3, 106)]


def test_a_new_worker_not_ready_within_the_boot_timeout_aborts_the_reload() -> None:
    arb, port = running(2)
    hup(arb, port, workers=2, boot_timeout=5.0)
    arb.handle(Event.READY, 103)
    port.now += 5.0
    assert do(arb, Event.TICK) == []
    port.now += 0.1
    assert do(arb, Event.TICK) == [("kill", 104, signal.SIGKILL), *told_quit(103)]
    assert (arb.state, arb.generation) == (State.RUNNING, 1)
    arb.handle(Event.EXIT, 104, -9)
    arb.handle(Event.EXIT, 103, 0)
    assert port.exits == [(104, "boot_failed", -9), (103, "reload", 0)]
    assert port.reloads == [False]


def test_hup_during_a_reload_is_coalesced_into_one_more_reload() -> None:
    arb, port = running(1)
    hup(arb, port, workers=1)
    assert hup(arb, port, workers=1) == []
    assert hup(arb, port, workers=1) == []  # still one more, not two
    assert arb.hup_again
    assert do(arb, Event.READY, 102) == [*told_quit(101), ("published", 2), ("reload",), ("spawn", 0, 3, 103)]
    assert arb.state is State.RELOADING
    assert do(arb, Event.READY, 103) == [*told_quit(102), ("published", 3)]
    assert (arb.state, arb.generation, arb.hup_again) == (State.RUNNING, 3, False)


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
    arb.handle(Event.READY, 103)
    # the commit retires the old generation, including its replacement still booting
    assert do(arb, Event.READY, 104) == told_quit(102) + told_quit(105) + [("published", 2)]


def test_a_new_worker_crashing_after_ready_during_the_reload_aborts_it() -> None:
    arb, port = running(2)
    hup(arb, port, workers=2)
    arb.handle(Event.READY, 103)
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
    assert arb.pending is None and not arb.hup_again
    arb.handle(Event.EXIT, 101, 0)
    arb.handle(Event.EXIT, 102, 0)
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
    arb.handle(Event.READY, 101)
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
    arb.handle(Event.EXIT, 101, -signal.SIGKILL)  # -> 104 booting
    arb.handle(Event.EXIT, 104, 1)  # died before READY
    arb.handle(Event.EXIT, 102, 1)
    arb.handle(Event.TTOU)  # slot 2 (pid 103) is told to quit
    arb.handle(Event.EXIT, 103, 0)
    assert port.exits == [(101, "killed", -9), (104, "boot_failed", 1), (102, "crashed", 1),
                          (103, "scale_down", 0)]
    port.reload_to = arb.settings
    gen1 = set(arb.workers)
    arb.handle(Event.HUP)
    for pid in sorted(arb.workers):
        if arb.workers[pid].generation == 2:
            arb.handle(Event.READY, pid)
    assert port.reloads == [True]
    live = sorted(arb.workers)
    arb.handle(Event.TERM)
    for pid in live:
        arb.handle(Event.EXIT, pid, 0)
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
    arb.handle(Event.TERM)
    assert arb.state is State.DELAYING
    assert ("send", 101, b"Q") in do(arb, Event.TERM)
    assert arb.state is State.DRAINING

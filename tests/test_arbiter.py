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

    def monotonic(self) -> float:
        return self.now

    def spawn(self, worker: Worker) -> int:
        self.last_pid += 1
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
    assert arb.next_deadline() is None


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

def test_hup_replaces_each_old_worker_only_when_its_successor_is_ready() -> None:
    arb, port = running(2)
    port.reload_to = defaults(workers=2, timeout=10.0)
    assert do(arb, Event.HUP) == [("reload",), ("spawn", 0, 2, 103), ("spawn", 1, 2, 104), ("published", 2)]
    assert (arb.generation, arb.settings.timeout) == (2, 10.0)
    assert do(arb, Event.READY, 104) == told_quit(102)
    assert do(arb, Event.READY, 103) == told_quit(101)
    arb.handle(Event.EXIT, 102, 0)
    arb.handle(Event.EXIT, 101, 0)
    assert do(arb, Event.TICK) == []
    assert (arb.state, sorted(arb.workers)) == (State.RUNNING, [103, 104])


def test_hup_while_starting_is_ignored() -> None:
    arb, port = started(2)
    port.reload_to = defaults(workers=2)
    assert do(arb, Event.HUP) == []
    assert (arb.state, arb.generation) == (State.STARTING, 1)


def test_reload_with_bad_settings_keeps_the_current_workers() -> None:
    arb, port = running(2)
    before = arb.settings
    port.reload_error = "workers: must be between 1 and 4096"
    assert do(arb, Event.HUP) == [("reload",)]
    assert (arb.state, arb.generation, arb.settings) == (State.RUNNING, 1, before)


def test_reload_cannot_change_bind() -> None:
    arb, port = running(1, bind=("http://127.0.0.1:8000",))
    port.reload_to = defaults(workers=1, bind=("http://127.0.0.1:9000",), keep_alive=5.0)
    assert do(arb, Event.HUP) == [("reload",), ("spawn", 0, 2, 102), ("published", 2)]
    assert arb.settings.bind == ("http://127.0.0.1:8000",)
    assert arb.settings.keep_alive == 5.0


def test_reload_with_fewer_workers_quits_the_extra_slots() -> None:
    arb, port = running(3)
    port.reload_to = defaults(workers=2)
    assert do(arb, Event.HUP) == [
        ("reload",), ("spawn", 0, 2, 104), ("spawn", 1, 2, 105), *told_quit(103), ("published", 2)]
    arb.handle(Event.READY, 104)
    assert do(arb, Event.READY, 105) == told_quit(101) + told_quit(102)
    for pid in (101, 102, 103):
        arb.handle(Event.EXIT, pid, 0)
    assert port.actions == []
    assert sorted(arb.workers) == [104, 105]


def test_new_worker_failing_to_boot_leaves_the_old_one_serving() -> None:
    arb, port = running(2)
    port.reload_to = defaults(workers=2)
    assert len(do(arb, Event.HUP)) == 4
    assert do(arb, Event.READY, 104) == told_quit(102)
    arb.handle(Event.EXIT, 103, 4)  # slot 0's new worker cannot import the app
    port.now += 120.0
    arb.handle(Event.TICK)
    assert (arb.state, arb.exit_code, arb.workers[101].state) == (State.RUNNING, 0, WState.READY)
    assert [a for a in port.actions if a[0] in ("send", "kill") and a[1] == 101] == []


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
    arb.handle(Event.HUP)
    assert port.reloads == [True]
    live = sorted(arb.workers)
    arb.handle(Event.TERM)
    for pid in live:
        arb.handle(Event.EXIT, pid, 0)
    assert {r for _, r, _ in port.exits[4:]} == {"shutdown"}
    # first generation 3; respawned at once after the kill and the crash (the slot-0 boot
    # failure is backed off, not respawned in the same tick); the reload's generation of 2
    assert port.spawned == 3 + 2 + 2

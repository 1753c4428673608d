"""The arbiter's lifecycle pairs against the command log: hung workers, recycling,
binary upgrade (USR2, WINCH, the new master's readiness and death), --preload reloads."""

from __future__ import annotations

import signal

import pytest

from greenfork.master.recycle import MEMORY_INTERVAL, MEMORY_STRIKES
from greenfork.master.states import Event, State, UpgradeState, WState
from tests.test_arbiter import START, do, feed, running, started, told_quit

MiB = 1024 * 1024


# ------------------------------------------------------------------ hung workers

def test_a_worker_without_heartbeat_gets_sigabrt_then_sigkill_after_the_grace() -> None:
    arb, port = running(2, timeout=10.0, abort_grace=3.0)
    port.now = START + 9.0
    arb.workers[102].heartbeat = port.now  # 102 beats, 101 does not
    assert arb.next_deadline() == START + 10.0
    port.now = START + 10.0
    assert do(arb, Event.TICK) == []  # exactly --timeout is not over it
    port.now = START + 10.5
    assert do(arb, Event.TICK) == [("kill", 101, signal.SIGABRT)]
    assert do(arb, Event.TICK) == []  # aborted once
    assert arb.next_deadline() == START + 13.5
    port.now = START + 13.5
    assert do(arb, Event.TICK) == [("kill", 101, signal.SIGKILL)]
    assert do(arb, Event.EXIT, 101, -signal.SIGKILL) == [("spawn", 0, 1, 103)]
    assert port.exits == [(101, "timeout", -signal.SIGKILL)]


def test_timeout_zero_disables_the_hung_check() -> None:
    arb, port = running(1, timeout=0.0)
    port.now += 3600
    assert do(arb, Event.TICK) == []


def test_a_booting_worker_is_not_hung_only_late() -> None:
    arb, port = started(1, timeout=5.0, boot_timeout=30.0)
    port.now += 20
    assert do(arb, Event.TICK) == []


def test_a_hung_worker_during_a_drain_is_aborted_too() -> None:
    arb, port = running(1, timeout=5.0, graceful_timeout=60.0)
    assert do(arb, Event.TERM) == told_quit(101)
    port.now += 6
    assert do(arb, Event.TICK) == [("kill", 101, signal.SIGABRT)]
    assert port.exits == []
    feed(arb, Event.EXIT, 101, 70)
    assert port.exits == [(101, "timeout", 70)]
    assert arb.state is State.STOPPED


# --------------------------------------------------------------------- recycling

def test_max_requests_replacement_ready_first_one_at_a_time() -> None:
    arb, port = running(2, max_requests=100)
    assert do(arb, Event.RECYCLE, 101) == do(arb, Event.RECYCLE, 102) == []
    assert do(arb, Event.TICK) == [("spawn", 0, 1, 103)]  # 101 first (older), 102 waits
    assert do(arb, Event.TICK) == []
    assert do(arb, Event.READY, 103) == told_quit(101)
    assert do(arb, Event.TICK) == [("spawn", 1, 1, 104)]
    assert do(arb, Event.EXIT, 101, 0) == []  # nothing respawned: slot 0 has 103
    assert do(arb, Event.READY, 104) == told_quit(102)
    feed(arb, Event.EXIT, 102, 0)
    assert port.exits == [(101, "max_requests", 0), (102, "max_requests", 0)]
    assert sorted(arb.workers) == [103, 104]


def test_a_replacement_that_fails_to_boot_leaves_the_old_worker_and_retries_later() -> None:
    arb, port = running(1, max_requests=10)
    feed(arb, Event.RECYCLE, 101)
    assert do(arb, Event.TICK) == [("spawn", 0, 1, 102)]
    port.now += 1
    assert do(arb, Event.EXIT, 102, 4) == []
    assert arb.workers[101].state is WState.READY
    assert do(arb, Event.TICK) == [("spawn", 0, 1, 103)]  # first failure: no back-off yet
    port.now += 1
    feed(arb, Event.EXIT, 103, 4)
    assert do(arb, Event.TICK) == []  # second: backed off
    port.now += 1
    assert do(arb, Event.TICK) == [("spawn", 0, 1, 104)]


def test_max_worker_lifetime() -> None:
    arb, port = running(1, max_worker_lifetime=60.0)
    assert arb.next_deadline() == START + 60.0
    port.now = START + 60.0
    assert do(arb, Event.TICK) == [("spawn", 0, 1, 102)]
    assert do(arb, Event.READY, 102) == told_quit(101)
    feed(arb, Event.EXIT, 101, 0)
    assert port.exits == [(101, "max_lifetime", 0)]
    assert arb.workers[102].expires_at == START + 120.0


def test_max_worker_lifetime_jitter_spreads_expiry() -> None:
    arb, _ = running(8, max_worker_lifetime=60.0, max_worker_lifetime_jitter=30.0)
    expiries = {w.expires_at for w in arb.workers.values()}
    assert all(START + 60 <= e <= START + 90 for e in expiries) and len(expiries) > 1


def test_max_worker_memory_needs_consecutive_samples_over_the_limit() -> None:
    arb, port = running(2, max_worker_memory=100 * MiB)
    port.mem = {101: 150 * MiB, 102: 50 * MiB}
    for _ in range(MEMORY_STRIKES - 1):
        assert do(arb, Event.TICK) == []
        port.now += MEMORY_INTERVAL
    port.mem[101] = 90 * MiB  # one sample under: the count starts again
    assert do(arb, Event.TICK) == []
    port.mem[101] = 150 * MiB
    for _ in range(MEMORY_STRIKES - 1):
        port.now += MEMORY_INTERVAL
        assert do(arb, Event.TICK) == []
    port.now += 0.5
    assert do(arb, Event.TICK) == []  # between samples nothing is read
    port.now += MEMORY_INTERVAL
    assert do(arb, Event.TICK) == [("spawn", 0, 1, 103)]
    assert do(arb, Event.READY, 103) == told_quit(101)
    feed(arb, Event.EXIT, 101, 0)
    assert port.exits == [(101, "max_memory", 0)]


def test_recycle_waits_while_reloading_and_is_moot_after() -> None:
    arb, port = running(1, max_requests=10)
    port.reload_to = arb.settings
    feed(arb, Event.HUP)
    port.take()
    assert do(arb, Event.RECYCLE, 101) == []
    assert do(arb, Event.TICK) == []
    assert do(arb, Event.READY, 102) == [*told_quit(101), ("published", 2)]
    assert do(arb, Event.TICK) == []
    assert port.exits == []


# ------------------------------------------------------------------ binary upgrade

def test_usr2_starts_a_new_master_and_both_serve() -> None:
    arb, _ = running(2)
    assert do(arb, Event.USR2) == [("exec_master", 2, 103), ("oldbin",)]
    assert do(arb, Event.CHILD_READY) == []  # logged: the operator decides
    assert arb.state is State.RUNNING and arb.upgrade.state is UpgradeState.READY
    assert do(arb, Event.USR2) == []  # a second upgrade is refused
    assert do(arb, Event.TERM) == told_quit(101) + told_quit(102)
    feed(arb, Event.EXIT, 101, 0)
    feed(arb, Event.EXIT, 102, 0)
    assert arb.state is State.STOPPED and arb.upgrade.child == 103  # the new master outlives us


def test_usr2_refused_while_starting_reloading_or_without_a_command_line() -> None:
    arb, port = started(1)
    assert do(arb, Event.USR2) == []
    arb, port = running(1)
    arb.can_exec = False
    assert do(arb, Event.USR2) == []
    arb.can_exec = True
    port.exec_error = "fork failed"
    assert do(arb, Event.USR2) == []
    assert arb.upgrade.child == 0


def test_winch_parks_and_hup_rolls_back() -> None:
    arb, port = running(2)
    feed(arb, Event.USR2)
    feed(arb, Event.CHILD_READY)
    port.take()
    assert do(arb, Event.WINCH) == told_quit(101) + told_quit(102)
    assert arb.state is State.PARKED
    for event in (Event.WINCH, Event.TTIN, Event.TTOU, Event.USR2, Event.TICK, Event.RELOAD_ASK):
        assert do(arb, event) == []
    feed(arb, Event.EXIT, 101, 0)
    feed(arb, Event.EXIT, 102, 0)
    assert arb.state is State.PARKED and not arb.workers
    # rollback: HUP brings the workers back (the new master is then TERMed by the operator)
    assert do(arb, Event.HUP) == [("spawn", 0, 1, 104), ("spawn", 1, 1, 105)]
    assert arb.state is State.RUNNING
    assert [r for _, r, _ in port.exits] == ["shutdown", "shutdown"]


def test_winch_without_an_upgrade_is_ignored() -> None:
    arb, _ = running(1)
    assert do(arb, Event.WINCH) == []
    assert arb.state is State.RUNNING


def test_new_master_dying_while_parked_restores_the_pidfile_and_respawns() -> None:
    arb, port = running(1)
    feed(arb, Event.USR2)
    feed(arb, Event.CHILD_READY)
    feed(arb, Event.WINCH)
    feed(arb, Event.EXIT, 101, 0)
    port.take()
    assert do(arb, Event.CHILD_EXIT, 102, -9) == [
        ("restore_pidfile",), ("published", 1), ("spawn", 0, 1, 103)]
    assert (arb.state, arb.upgrade.child) == (State.RUNNING, 0)
    assert do(arb, Event.USR2) == [("exec_master", 3, 104), ("oldbin",)]  # a new upgrade may start


def test_new_master_dying_before_ready_restores_the_pidfile() -> None:
    arb, port = running(1)
    feed(arb, Event.USR2)
    port.take()
    assert do(arb, Event.CHILD_EXIT, 102, 1) == [("restore_pidfile",), ("published", 1)]
    assert arb.state is State.RUNNING


def test_new_master_dying_while_the_old_drains_only_restores_the_pidfile() -> None:
    arb, port = running(1)
    feed(arb, Event.USR2)
    feed(arb, Event.TERM)
    port.take()
    assert do(arb, Event.CHILD_EXIT, 102, 1) == [("restore_pidfile",)]
    assert arb.state is State.DRAINING


def test_term_while_parked_stops_at_once_when_the_workers_are_gone() -> None:
    arb, port = running(1)
    feed(arb, Event.USR2)
    feed(arb, Event.WINCH)
    feed(arb, Event.EXIT, 101, 0)
    port.take()
    assert do(arb, Event.TERM) == []
    assert arb.state is State.STOPPED


def test_quick_while_parked_kills_the_draining_workers() -> None:
    arb, port = running(1)
    feed(arb, Event.USR2)
    feed(arb, Event.WINCH)
    port.take()
    assert do(arb, Event.QUICK) == [("kill", 101, signal.SIGQUIT)]
    assert arb.state is State.QUITTING


# -------------------------------------------------------------- --preload reloads

def test_hup_with_preload_reexecs_and_drains_once_the_new_master_is_ready() -> None:
    arb, port = running(2, preload=True)
    port.reload_to = arb.settings
    assert do(arb, Event.HUP) == [("reload",), ("exec_master", 2, 103), ("oldbin",)]
    assert arb.state is State.RUNNING and arb.upgrade.handover
    assert do(arb, Event.HUP) == [("reload",)]  # refused while the new master boots
    assert do(arb, Event.CHILD_READY) == told_quit(101) + told_quit(102)
    assert arb.state is State.DRAINING
    assert port.reloads == [True]


def test_hup_with_preload_whose_new_master_dies_keeps_this_one() -> None:
    arb, port = running(1, preload=True)
    port.reload_to = arb.settings
    feed(arb, Event.HUP)
    port.take()
    assert do(arb, Event.CHILD_EXIT, 102, 4) == [("restore_pidfile",), ("published", 1)]
    assert (arb.state, arb.upgrade.child, arb.upgrade.handover) == (State.RUNNING, 0, False)
    assert port.reloads == [False]


def test_hup_with_preload_and_a_bad_config_does_not_exec() -> None:
    arb, port = running(1, preload=True)
    port.reload_error = "bad"
    assert do(arb, Event.HUP) == [("reload",)]
    assert arb.upgrade.child == 0 and port.reloads == [False]


def test_hup_with_preload_under_the_python_api_reloads_by_generation() -> None:
    arb, port = running(1, preload=True)
    arb.can_exec = False
    port.reload_to = arb.settings
    assert do(arb, Event.HUP) == [("reload",), ("spawn", 0, 2, 102)]
    assert arb.state is State.RELOADING


@pytest.mark.parametrize("state", [State.DRAINING, State.QUITTING])
def test_late_events_while_stopping_are_ignored(state: State) -> None:
    arb, port = running(1)
    feed(arb, Event.TERM if state is State.DRAINING else Event.QUICK)
    port.take()
    for event in (Event.USR2, Event.WINCH, Event.RECYCLE, Event.RELOAD_ASK, Event.CHILD_READY):
        assert do(arb, event, 101) == []
    assert arb.state is state


def test_child_events_when_there_is_no_child_change_nothing() -> None:
    arb, _ = running(1)
    assert do(arb, Event.CHILD_READY) == []
    assert do(arb, Event.CHILD_EXIT, 4242, 0) == []
    assert arb.state is State.RUNNING


def test_no_deadline_stays_in_the_past_in_any_state() -> None:
    """A deadline that the current state never acts on would make the loop spin."""
    arb, port = running(2, timeout=5.0, max_worker_memory=MiB, max_worker_lifetime=10.0)
    port.mem = {101: 2 * MiB, 102: 2 * MiB}
    port.reload_to = arb.settings
    port.now += 20  # everything is due
    feed(arb, Event.HUP)  # RELOADING: no recycling, no memory samples
    for pid in list(arb.workers):
        arb.workers[pid].heartbeat = port.now
    feed(arb, Event.TICK)
    assert arb.state is State.RELOADING
    deadline = arb.next_deadline()
    assert deadline is None or deadline > port.now
    feed(arb, Event.QUICK)
    feed(arb, Event.TICK)
    deadline = arb.next_deadline()
    assert deadline is not None and deadline > port.now  # only the quick-stop deadline


@pytest.mark.parametrize("stop", [Event.TERM, Event.WINCH])
def test_a_crashed_slots_back_off_is_no_deadline_once_nothing_respawns(stop: Event) -> None:
    arb, port = running(1, graceful_timeout=30.0)
    feed(arb, Event.EXIT, 101, -9)  # replaced at once by 102
    port.now += 1
    feed(arb, Event.EXIT, 102, -9)  # backed off: a respawn deadline
    port.now = arb.next_deadline() or 0
    feed(arb, Event.TICK)  # 103
    feed(arb, Event.READY, 103)
    feed(arb, Event.USR2)
    feed(arb, stop)
    feed(arb, Event.EXIT, 103, 0)
    port.now += 5
    deadline = arb.next_deadline()
    assert deadline is None or deadline > port.now

"""The arbiter's reload transaction (HUP, --reload): actions of its state table.

Functions of the Arbiter, kept apart to keep each module small; the table that
maps (state, event) to them (bound with functools.partial) is in arbiter.py.
The serving generation keeps serving until the whole new generation is READY
(commit); any new worker that fails to boot, dies or misses --boot-timeout
aborts the reload, and the old generation is never touched.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

from greenfork.master import recycle, upgrading
from greenfork.master.records import QUIT, TERMINATE, State, WState, exit_description, exit_reason

if TYPE_CHECKING:
    from greenfork.master.arbiter import Arbiter

log = logging.getLogger("greenfork.master")


def ignore_hup(arb: Arbiter, pid: int, status: int) -> State | None:
    log.warning("HUP ignored: the server is still starting")
    return None


def reload_fail(arb: Arbiter, why: object) -> None:
    log.error("Reload failed, the current workers keep serving: %s", why)
    arb.port.reloaded(False)


def reload(arb: Arbiter, pid: int, status: int) -> State | None:
    """Start a new generation; the current one serves until all of it is READY (commit),
    or stays if any new worker fails to boot (abort)."""
    try:
        new = arb.port.reload_settings()
    except ValueError as e:
        reload_fail(arb, e)
        return None
    if arb.settings.preload and arb.port.can_exec():
        return upgrading.reexec(arb)
    if new.bind != arb.settings.bind:
        try:
            arb.port.prepare_listeners(new.bind)
        except ValueError as e:
            reload_fail(arb, e)
            return None
        arb.bind_changing = True
    arb.pending, arb.pending_gen = new, arb.next_gen
    arb.next_gen += 1
    log.info("Reloading: starting generation %d with %d worker(s)", arb.pending_gen, new.workers)
    for slot in range(new.workers):
        arb._spawn(slot, new, arb.pending_gen)
    return State.RELOADING


def reload_ask(arb: Arbiter, pid: int, status: int) -> State | None:
    w = arb.workers.get(pid)
    if w is None or w.generation != arb.generation:
        return None
    log.info("Worker %d saw a source file change (--reload); reloading", w.slot)
    return reload(arb, pid, status)


def coalesce_hup(arb: Arbiter, pid: int, status: int) -> State | None:
    if not arb.hup_again:
        log.info("HUP during a reload: one more reload will follow this one")
    arb.hup_again = True
    return None


def reloading_ready(arb: Arbiter, pid: int, status: int) -> State | None:
    w = arb.workers.get(pid)
    if w is None or w.state != WState.BOOTING:
        return None
    arb._mark_ready(w)
    assert arb.pending is not None
    new = [x for x in arb.live() if x.generation == arb.pending_gen]
    if len(new) >= arb.pending.workers and all(x.state == WState.READY for x in new):
        return commit(arb)
    return None


def commit(arb: Arbiter) -> State:
    assert arb.pending is not None
    arb.settings, arb.generation = arb.pending, arb.pending_gen
    arb.pending, arb.pending_gen = None, 0
    for w in list(arb.workers.values()):
        if w.generation < arb.generation and w.state in (WState.BOOTING, WState.READY):
            arb._stop(w, QUIT, "reload")
    if arb.bind_changing:
        arb.bind_changing, arb.retiring = False, True
        arb.port.commit_listeners()
    log.info("Reload complete: generation %d is serving", arb.generation)
    arb.port.published(arb.generation)
    arb.port.reloaded(True)
    return after_reload(arb)


def abort(arb: Arbiter, why: str) -> State:
    for w in list(arb.workers.values()):
        if w.generation == arb.pending_gen and w.state in (WState.BOOTING, WState.READY):
            arb._stop(w, QUIT if w.state == WState.READY else TERMINATE, "reload")
    if arb.bind_changing:
        arb.bind_changing = False
        arb.port.abort_listeners()
    arb.pending, arb.pending_gen = None, 0
    reload_fail(arb, why)
    return after_reload(arb)


def after_reload(arb: Arbiter) -> State:
    if arb.hup_again:
        arb.hup_again = False
        log.info("Reloading again for the HUP received during the reload")
        return reload(arb, 0, 0) or State.RUNNING
    return State.RUNNING


def reloading_exit(arb: Arbiter, pid: int, status: int) -> State | None:
    w = arb.workers.get(pid)
    if w is None or w.generation != arb.pending_gen:
        return arb._on_exit(pid, status)
    del arb.workers[pid]
    was = w.state
    w.move("exit")
    arb.port.worker_exited(w, exit_reason(w, was, status), status)
    what = "failed to boot" if was == WState.BOOTING else "died"
    return abort(arb, f"new worker {w.slot} (pid {pid}) {what}: {exit_description(status)}")


def reloading_tick(arb: Arbiter, pid: int, status: int) -> State | None:
    now = arb.port.monotonic()
    assert arb.pending is not None
    for w in list(arb.workers.values()):
        if w.generation == arb.pending_gen and w.state == WState.BOOTING and \
                now - w.spawned_at > arb.pending.boot_timeout:
            w.exit_reason = "boot_failed"
            w.move("stop")
            w.stop_sent = True
            arb.port.kill(w.pid, signal.SIGKILL)
            return abort(arb, f"new worker {w.slot} (pid {w.pid}) not ready after "
                               f"{arb.pending.boot_timeout:.0f} s (--boot-timeout)")
    arb._boot_timeouts(now)
    recycle.check_hung(arb, now)
    return arb._respawn_due()

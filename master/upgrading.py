"""The arbiter's binary-upgrade actions (USR2, WINCH, the new master's readiness and
exit, HUP with --preload): actions of its state table,
functions of the Arbiter (bound with functools.partial in its table).

The OS side (fork+exec with inherited sockets, the pidfile) is in upgrade.py.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from greenfork.master import recycle, reloading
from greenfork.master.records import QUIT, State, exit_description

if TYPE_CHECKING:
    from greenfork.master.arbiter import Arbiter

log = logging.getLogger("greenfork.master")


def refuse_usr2(arb: Arbiter, pid: int, status: int) -> State | None:
    if arb.child:
        log.warning("USR2 refused: an upgrade is already pending (new master pid %d)", arb.child)
    else:
        log.warning("USR2 refused while %s", arb.state.value)
    return None


def upgrade(arb: Arbiter, pid: int, status: int) -> State | None:
    if arb.child:
        return refuse_usr2(arb, pid, status)
    if not arb.port.can_exec():
        log.error("USR2 ignored: a binary upgrade needs the greenfork command, not the Python API")
        return None
    try:
        arb.child = arb.port.exec_master(arb.next_gen)
    except (OSError, ValueError) as e:
        log.error("Upgrade failed: cannot start a new master: %s", e)
        return None
    arb.next_gen += 1
    arb.child_ready = arb.handover = False
    arb.port.pidfile_oldbin()
    log.info("Upgrade: started a new master (pid %d) on the same sockets", arb.child)
    return None


def child_ready(arb: Arbiter, pid: int, status: int) -> State | None:
    if not arb.child or arb.child_ready:
        return None
    arb.child_ready = True
    if arb.handover and arb.state not in (State.DRAINING, State.QUITTING):
        arb.handover = False
        log.info("Reload: the new master (pid %d) is ready; this master stops gracefully", arb.child)
        arb.port.reloaded(True)
        return arb._begin_drain(0, 0) or State.DRAINING
    log.info("Upgrade: the new master (pid %d) is ready. TERM this master to finish, or WINCH it "
             "to stop its workers and keep it for a rollback", arb.child)
    return None


def child_exit(arb: Arbiter, pid: int, status: int) -> State | None:
    if pid != arb.child:
        return None
    ready, arb.child, arb.child_ready = arb.child_ready, 0, False
    log.error("The new master (pid %d) exited (%s); this master takes over again",
              pid, exit_description(status))
    arb.port.pidfile_restore()
    if arb.handover:
        arb.handover = False
        if not ready:
            reloading.reload_fail(arb, "the new master exited before its workers were ready")
    if arb.state in (State.DRAINING, State.QUITTING):
        return None
    arb.port.published(arb.generation)  # the addresses file is ours again
    if arb.state == State.PARKED:
        return unpark(arb, 0, 0)
    return None


def winch(arb: Arbiter, pid: int, status: int) -> State | None:
    if not arb.child:
        log.warning("WINCH ignored: no upgrade is pending")
        return None
    log.info("WINCH: stopping this master's workers; its sockets stay open (HUP brings them back)")
    for w in arb.live():
        arb._stop(w, QUIT, "shutdown")
    return State.PARKED


def unpark(arb: Arbiter, pid: int, status: int) -> State | None:
    log.info("Starting %d worker(s) again", arb.settings.workers)
    arb.health.clear()
    arb._respawn_due()
    return State.RUNNING


def parked_tick(arb: Arbiter, pid: int, status: int) -> State | None:
    recycle.check_hung(arb, arb.port.monotonic())
    return None


def reexec(arb: Arbiter) -> State | None:
    """--preload: the app lives in the master, so new code needs a new master image."""
    if arb.child:
        log.warning("HUP refused: an upgrade is pending (new master pid %d)", arb.child)
        return None
    try:
        arb.child = arb.port.exec_master(arb.next_gen)
    except (OSError, ValueError) as e:
        reloading.reload_fail(arb, f"cannot start a new master: {e}")
        return None
    arb.next_gen += 1
    arb.child_ready, arb.handover = False, True
    arb.port.pidfile_oldbin()
    log.info("Reloading (--preload): started a new master (pid %d); this one stops when its "
             "workers are ready", arb.child)
    return None

"""The binary upgrade's actions (USR2, WINCH, the new master's readiness and exit, HUP
with --preload): methods of the Arbiter.

Kept in their own module to keep each module small; they act only on the
Upgrade record (records.py), the worker table and the outbox. The transitions
are in states.py: UPGRADE_TABLE for the record, MASTER for when these run. The
OS side (fork+exec with inherited sockets, the pidfile) is in upgrade.py.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from greenfork.master.commands import (
    Command,
    ExecMaster,
    Input,
    Notify,
    PidfileOldbin,
    PidfileRestore,
    Publish,
)
from greenfork.master.control import QUIT
from greenfork.master.records import Reload, Upgrade, exit_description
from greenfork.master.states import Event, State, UpgradeState

if TYPE_CHECKING:
    from greenfork.master.pool import Pool
    from greenfork.master.settings import Settings

log = logging.getLogger("greenfork.master")
E = Event


class UpgradeActions:
    if TYPE_CHECKING:  # what the Arbiter provides
        settings: Settings
        state: State
        generation: int
        next_gen: int
        out: list[Command]
        pool: Pool
        reload: Reload
        upgrade: Upgrade

        def _follow_up(self, event: Event) -> None: ...
        def status(self) -> str: ...
        def _reload_failed(self, why: str) -> None: ...
        def is_child(self, inp: Input) -> bool: ...

    def refuse_reexec(self, inp: Input) -> None:
        self.reload.move("failed")
        log.warning("HUP refused: an upgrade is pending (new master pid %d)", self.upgrade.child)

    def reexec(self, inp: Input) -> None:
        self.reload.move("reexec")
        self.upgrade.move("exec")
        self.upgrade.handover = True
        self.out.append(ExecMaster(self.next_gen))

    def refuse_usr2(self, inp: Input) -> None:
        if self.upgrade.pending:
            log.warning("USR2 refused: an upgrade is already pending (new master pid %d)", self.upgrade.child)
        else:
            log.warning("USR2 refused while %s", self.state.value)

    def usr2_without_command(self, inp: Input) -> None:
        log.error("USR2 ignored: a binary upgrade needs the greenfork command, not the Python API")

    def begin_upgrade(self, inp: Input) -> None:
        self.upgrade.move("exec")
        self.out.append(ExecMaster(self.next_gen))

    def upgrade_started(self, inp: Input) -> None:
        up = self.upgrade
        up.move("started")
        up.child = inp.pid
        self.next_gen += 1
        self.out.append(PidfileOldbin())
        if up.handover:
            log.info("Reloading (--preload): started a new master (pid %d); this one stops when its "
                     "workers are ready", up.child)
        else:
            log.info("Upgrade: started a new master (pid %d) on the same sockets", up.child)

    def upgrade_failed(self, inp: Input) -> None:
        handover = self.upgrade.handover
        self.upgrade.move("failed")
        if handover:
            self._reload_failed(f"cannot start a new master: {inp.detail}")
        else:
            log.error("Upgrade failed: cannot start a new master: %s", inp.detail)

    def _child_now_ready(self) -> bool:
        up = self.upgrade
        if up.state is not UpgradeState.PENDING:
            return False
        up.move("ready")
        # systemd follows the new master from now on (the old one is still main: it may say so)
        self.out.append(Notify("mainpid", pid=up.child))
        return True

    def _upgrade_ready_log(self) -> None:
        log.info("Upgrade: the new master (pid %d) is ready. TERM this master to finish, or WINCH it "
                 "to stop its workers and keep it for a rollback", self.upgrade.child)

    def child_ready(self, inp: Input) -> None:
        if not self._child_now_ready():
            return
        if self.upgrade.handover:
            log.info("Reload: the new master (pid %d) is ready; this master stops gracefully",
                     self.upgrade.child)
            self.out.append(Notify("reloaded", self.status()))
            self._follow_up(E.HANDED_OVER)
        else:
            self._upgrade_ready_log()

    def child_ready_ending(self, inp: Input) -> None:
        if self._child_now_ready():
            self._upgrade_ready_log()

    def _child_gone(self, inp: Input) -> bool:
        if not self.is_child(inp):
            return False
        up = self.upgrade
        failed_handover = up.handover and up.state is UpgradeState.PENDING
        up.move("exit")
        log.error("The new master (pid %d) exited (%s); this master takes over again",
                  inp.pid, exit_description(inp.status))
        self.out.append(PidfileRestore())
        if failed_handover:
            self._reload_failed("the new master exited before its workers were ready")
        return True

    def child_exit(self, inp: Input) -> None:
        if self._child_gone(inp):
            self.out.append(Publish(self.generation))  # the addresses file is ours again

    def child_exit_ending(self, inp: Input) -> None:
        self._child_gone(inp)

    def child_exit_resume(self, inp: Input) -> None:
        self.child_exit(inp)
        self.unpark(inp)

    def park(self, inp: Input) -> None:
        log.info("WINCH: stopping this master's workers; its sockets stay open (HUP brings them back)")
        for w in self.pool.live():
            self.pool.stop(w, QUIT, "shutdown")

    def winch_without_upgrade(self, inp: Input) -> None:
        log.warning("WINCH ignored: no upgrade is pending")

    def refuse_winch(self, inp: Input) -> None:
        log.warning("WINCH ignored while %s", self.state.value)

    def unpark(self, inp: Input) -> None:
        log.info("Starting %d worker(s) again", self.settings.workers)
        self.pool.health.clear()
        self.pool.respawn_due(self.settings, self.generation)

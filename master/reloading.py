"""The reload transaction's actions (HUP, --reload): methods of the Arbiter.

Kept in their own module to keep each module small; they act only on the
Reload record (records.py), the worker table and the outbox. The transitions
are in states.py: RELOAD_TABLE for the record, MASTER for when these run.
The serving generation keeps serving until the whole new generation is READY
(commit); any new worker that fails to boot, dies or misses --boot-timeout
aborts the reload, and the old generation is never touched.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

from greenfork.master.commands import (
    AbortReload,
    Command,
    CommitReload,
    Input,
    Kill,
    Notify,
    Prepared,
    PrepareReload,
    Publish,
    WorkersChanged,
)
from greenfork.master.control import QUIT, TERMINATE
from greenfork.master.records import Reload, exit_description
from greenfork.master.states import Event, ReloadState, State, WState

if TYPE_CHECKING:
    from greenfork.master.pool import Pool
    from greenfork.master.records import Worker
    from greenfork.master.settings import Settings

log = logging.getLogger("greenfork.master")
E = Event


class ReloadActions:
    if TYPE_CHECKING:  # what the Arbiter provides
        settings: Settings
        state: State
        generation: int
        next_gen: int
        out: list[Command]
        pool: Pool
        reload: Reload

        def _follow_up(self, event: Event) -> None: ...
        def status(self) -> str: ...
        def _booting(self, pid: int) -> Worker | None: ...
        def _ready(self, w: Worker) -> None: ...
        def worker_exit(self, inp: Input) -> None: ...

    def queue_hup(self, inp: Input) -> None:
        if not self.reload.queued:
            if self.state is State.STARTING:
                log.info("HUP while starting: the reload runs once the server is ready")
            else:
                log.info("HUP during a reload: one more reload will follow this one")
        self.reload.queued = True

    def reload_ask(self, inp: Input) -> None:
        w = self.pool.workers.get(inp.pid)
        if w is not None and w.generation == self.generation:
            log.info("Worker %d saw a source file change (--reload); reloading", w.slot)
            self._follow_up(E.HUP)

    def begin_reload(self, inp: Input) -> None:
        self._prepare(reexec=False)

    def prepare_reexec(self, inp: Input) -> None:
        self._prepare(reexec=True)

    def _prepare(self, reexec: bool) -> None:
        tx = self.reload
        tx.queued = False
        tx.move("begin")
        tx.reexec = reexec
        self.out.append(Notify("reloading"))
        self.out.append(PrepareReload(self.settings, reexec=reexec))

    def spawn_generation(self, inp: Input) -> None:
        assert isinstance(inp.detail, Prepared)
        p, tx = inp.detail, self.reload
        tx.move("prepared")
        tx.settings, tx.staged, tx.generation = p.settings, p.staged, self.next_gen
        self.next_gen += 1
        for note in p.held:
            log.warning("Reload: %s", note)
        log.info("Reloading: starting generation %d with %d worker(s)", tx.generation, p.settings.workers)
        for slot in range(p.settings.workers):
            self.pool.spawn(slot, p.settings, tx.generation, staged=p.staged)

    def worker_ready_reloading(self, inp: Input) -> None:
        w = self._booting(inp.pid)
        if w is None:
            return
        self._ready(w)
        tx = self.reload
        assert tx.settings is not None
        new = self.pool.of_generation(tx.generation)
        if len(new) >= tx.settings.workers and all(x.state is WState.READY for x in new):
            self._follow_up(E.GENERATION_READY)

    def worker_exit_reloading(self, inp: Input) -> None:
        w = self.pool.workers.get(inp.pid)
        if w is None or w.generation != self.reload.generation:
            self.worker_exit(inp)
            return
        was = w.state
        self.pool.reaped(inp.pid, inp.status)
        what = "failed to boot" if was is WState.BOOTING else "died"
        self.reload.failure = f"new worker {w.slot} (pid {inp.pid}) {what}: {exit_description(inp.status)}"
        self._follow_up(E.GENERATION_FAILED)

    def commit(self, inp: Input) -> None:
        tx = self.reload
        assert tx.settings is not None
        old_count = self.settings.workers
        self.settings, self.generation = tx.settings, tx.generation
        for w in self.pool.live():
            if w.generation < self.generation:
                self.pool.stop(w, QUIT, "reload")
        if tx.staged:
            tx.retiring = True
            self.out.append(CommitReload())
        tx.move("commit")
        log.info("Reload complete: generation %d is serving", self.generation)
        self.out += [Publish(self.generation), Notify("reloaded", self.status())]
        if self.settings.workers != old_count:
            self.out.append(WorkersChanged(old_count, self.settings.workers))
        self._after_reload()

    def abort(self, inp: Input) -> None:
        tx = self.reload
        for w in self.pool.of_generation(tx.generation):
            self.pool.stop(w, QUIT if w.state is WState.READY else TERMINATE, "reload")
        if tx.staged:
            self.out.append(AbortReload())
        why = tx.failure
        tx.move("abort")
        self._reload_failed(why)

    def reload_failed(self, inp: Input) -> None:
        self.reload.move("failed")
        self._reload_failed(str(inp.detail))

    def _reload_failed(self, why: str) -> None:
        log.error("Reload failed, the current workers keep serving: %s", why)
        self.out.append(Notify("reload_failed"))
        self._after_reload()

    def _after_reload(self) -> None:
        if self.reload.queued:
            log.info("Reloading again for the HUP received during the reload")
            self._follow_up(E.HUP)

    def _check_new_boot(self, now: float) -> None:
        tx = self.reload
        for w in self.pool.of_generation(tx.generation):
            if w.state is WState.BOOTING and now > w.boot_deadline:
                w.exit_reason = "boot_failed"
                w.move("stop")
                w.stop_sent = True
                self.out.append(Kill(w, signal.SIGKILL))
                tx.failure = (f"new worker {w.slot} (pid {w.pid}) not ready after "
                              f"{w.boot_deadline - w.spawned_at:.0f} s (--boot-timeout)")
                self._follow_up(E.GENERATION_FAILED)
                return

    def _drop_reload(self) -> None:
        """A stop during a reload: its new generation stops with everything else."""
        tx = self.reload
        if tx.state is ReloadState.BOOTING:
            if tx.staged:
                self.out.append(AbortReload())
            tx.move("drop")
        tx.queued = False


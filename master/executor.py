"""Carries out the arbiter's commands on the real system: fork, kill, control sockets,
listeners, the pidfile, systemd, metrics, the addresses file.

It knows nothing of the loop that feeds it and nothing of the arbiter's states:
`execute(command)` does one thing and returns the answer (an Input) for the
commands that have one (commands.py).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenfork.master import logs, privileges, procenv, upgrade
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
    PrepareReload,
    Publish,
    ReopenLogs,
    SampleMemory,
    Send,
    ServerReady,
    Spawn,
    WorkerExited,
    WorkersChanged,
)
from greenfork.master.control import EXIT_BOOT
from greenfork.master.listeners import Listener
from greenfork.master.pidfile import Pidfile
from greenfork.master.prepare import PrepareFailed, Staging
from greenfork.master.records import Worker
from greenfork.master.sdnotify import Notifier
from greenfork.master.settings import Settings
from greenfork.master.states import Event
from greenfork.master.workerinfo import WorkerInfo

if TYPE_CHECKING:
    from greenfork.master.cachekeeper import CacheKeeper
    from greenfork.master.hooks import Hooks
    from greenfork.master.metricsd import MetricsService
    from greenfork.master.tls import TlsConfig
    from greenfork.metrics.slots import Slot

log = logging.getLogger("greenfork.master")

# What the master handles; a forked worker puts them back to their defaults first.
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
           signal.SIGUSR2, signal.SIGWINCH, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU)


def memory(pid: int) -> int | None:
    """Unique set size: the pages only this process has (what killing it frees)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            total = 0
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
            return total
    except (OSError, ValueError, IndexError):
        return None


class Executor:
    def __init__(self, staging: Staging, *, app: Callable[..., Any] | None,
                 identity: privileges.Identity | None, notify: Notifier,
                 metrics: MetricsService | None = None, metrics_listeners: list[Listener] | None = None,
                 pidfile: Pidfile | None = None, masters_own: list[socket.socket] | None = None,
                 on_ready: Callable[[], None] | None = None,
                 on_published: Callable[[int, tuple[str, ...]], None] | None = None,
                 hooks: Hooks | None = None, cache: CacheKeeper | None = None) -> None:
        self.staging = staging
        self.hooks = hooks  # gunicorn-style server hooks (hooks.py), run as commands are carried out
        self.app = app
        self.identity = identity
        self.notify = notify
        self.metrics = metrics
        self.metrics_listeners = metrics_listeners or []
        self.pidfile = pidfile
        self.masters_own = masters_own or []  # the loop's sockets: a worker closes them
        self.on_ready = on_ready
        self.on_published = on_published
        self.pid = os.getpid()
        self.controls: dict[int, socket.socket] = {}  # worker pid -> the master's end
        self.child = 0  # the new master of an upgrade
        self.upgrade_pipe = -1  # read end of its "ready" pipe
        self.exit_code: int | None = None  # set by Exit: the loop ends
        self.cache = cache  # the shared response cache (--response-cache): master/cachekeeper.py

    def execute(self, cmd: Command) -> Input | None:
        match cmd:
            case Spawn():
                return Input(Event.SPAWNED, self._spawn(cmd), detail=cmd.worker)
            case Send():
                self._send(cmd.worker, cmd.message)
            case Kill():
                self._kill(cmd.worker, cmd.sig)
            case WorkerExited():
                log.debug("Worker %d (pid %d) gone: %s", cmd.worker.slot, cmd.worker.pid, cmd.reason)
                if self.metrics:
                    self.metrics.lifecycle.exited(cmd.reason)
                if self.hooks is not None:
                    self.hooks.exited(cmd.worker)  # child_exit
                if self.cache is not None:  # the response cache drops a gone generation's entries
                    self.cache.reaped(cmd.worker.pid)
            case SampleMemory():
                return Input(Event.MEMORY, detail={pid: memory(pid) for pid in cmd.pids})
            case WorkersChanged():
                self.notify.status(f"{cmd.new} worker(s) configured (was {cmd.old})")
                if self.hooks is not None:
                    self.hooks.workers_changed(cmd.old, cmd.new)  # nworkers_changed
            case PrepareReload():
                try:
                    prepared = self.staging.prepare(cmd)
                except PrepareFailed as e:
                    return Input(Event.PREPARE_FAILED, detail=str(e))
                if self.hooks is not None:
                    self.hooks.reloading(prepared.settings, cmd.reexec)  # on_reload
                return Input(Event.PREPARED, detail=prepared)
            case CommitReload():
                for lst in self.staging.commit():
                    log.info("Now listening on: %s", lst.url)
            case AbortReload():
                self.staging.abort()
            case CloseRetired():
                for lst in self.staging.lset.close_retired():
                    log.info("No longer listening on: %s", lst.url)
            case ExecMaster():
                return self._exec_master(cmd.generation)
            case PidfileOldbin():
                if self.pidfile is not None:
                    self.pidfile.to_oldbin()
            case PidfileRestore():
                if self.pidfile is not None:
                    self.pidfile.restore()
            case Publish():
                if self.on_published is not None:
                    self.on_published(cmd.generation, self.staging.lset.addresses)
            case ServerReady():
                log.info("Booted %d worker(s)", cmd.workers)
                self.notify.ready(cmd.status)
                if self.on_ready is not None:
                    self.on_ready()
                if self.hooks is not None:
                    self.hooks.ready()  # when_ready
            case Notify():
                self._notify(cmd)
            case ReopenLogs():
                logs.reopen()
                log.info("Reopened log files (USR1)")  # the first line of the new file
            case Exit():
                if self.hooks is not None:
                    self.hooks.exiting()  # on_exit
                self.exit_code = cmd.code
        return None

    # ------------------------------------------------------------- workers
    def starting(self) -> None:
        """Before the START event (the loop calls this): on_starting."""
        if self.hooks is not None:
            self.hooks.starting()

    def _spawn(self, cmd: Spawn) -> int:
        worker = cmd.worker
        if self.hooks is not None:
            self.hooks.pre_fork(worker, cmd.settings)  # pre_fork; post_fork runs in the child
        parent, child = socket.socketpair()
        for h in logging.getLogger("greenfork").handlers:
            h.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        metrics = self.metrics
        slot = metrics.acquire(worker) if metrics else None  # mapped before the fork: the child inherits it
        # Frozen objects are never scanned by the child's collector, so their pages stay
        # shared with the master instead of being copied into every worker by a GC pass;
        # the master unfreezes at once and keeps collecting its own garbage.
        gc.freeze()
        if self.cache is not None:  # the child stores and finds its own generation's responses
            self.cache.forking(worker.generation)
        try:
            pid = os.fork()
        except BaseException:
            gc.unfreeze()
            if metrics and slot:
                metrics.release(slot)
            raise
        if pid == 0:  # pragma: no cover - runs in the child, measured by process tests
            self._child(worker, cmd.settings, self.staging.listeners(cmd.staged), parent, child, slot,
                        self.staging.tls_for(cmd.staged))
        gc.unfreeze()
        child.close()
        parent.setblocking(False)
        self.controls[pid] = parent
        worker.pid = pid  # later commands of the same batch may name this worker
        if self.hooks is not None:
            self.hooks.forked(worker, pid)
        if self.cache is not None:
            self.cache.forked(pid, worker.generation)
        if metrics:
            metrics.lifecycle.spawns += 1
            if slot:
                metrics.assign(slot, pid)
        return pid

    def _child(self, worker: Worker, settings: Settings, mine: list[Listener], parent: socket.socket,
               child: socket.socket, slot: Slot | None, tls: TlsConfig | None) -> None:
        code = EXIT_BOOT
        hooks = self.hooks.in_child(worker, settings) if self.hooks is not None else None
        try:
            signal.set_wakeup_fd(-1)
            for sig in HANDLED:
                signal.signal(sig, signal.SIG_DFL)
            # Close what belongs to the master, so that the master's death is
            # seen as EOF on the control socket and other workers' sockets close.
            for s in (*self.masters_own, parent, *self.controls.values()):
                s.close()
            if self.upgrade_pipe >= 0:
                os.close(self.upgrade_pipe)
            for lst in self.staging.lset.every():
                if lst not in mine:
                    # A removed (or not yet committed) address must refuse connections,
                    # not queue them in a socket this worker keeps open and never accepts on.
                    lst.sock.close()
            # Drop privileges before any app code runs (ports are bound already).
            privileges.drop(self.identity)
            procenv.apply_env(settings.env)  # --env (gunicorn's raw_env): this generation's values
            if self.metrics:
                self.metrics.child_cleanup()
            from greenfork.workers.boot import run  # imports gevent: only ever in a child

            code = run(WorkerInfo(
                slot=worker.slot, generation=worker.generation, settings=settings,
                listeners=mine, addresses=tuple(lst.url for lst in mine), control=child,
                master_pid=self.pid, app=self.app, metrics=slot, tls=tls, hooks=hooks,
                cache=self.cache.cache if self.cache is not None else None))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            log.exception("Worker %d failed to boot", worker.slot)
            code = EXIT_BOOT
        finally:
            if hooks is not None:
                hooks.worker_exit()
            for h in logging.getLogger("greenfork").handlers:
                h.flush()
            os._exit(code)

    def _send(self, worker: Worker, message: bytes) -> None:
        s = self.controls.get(worker.pid)
        if s is not None:
            try:
                s.send(message)
            except OSError:
                pass  # the worker is gone; the reaper will hear of it

    def _kill(self, worker: Worker, sig: int) -> None:
        if worker.pid <= 0:  # never 0 or -1: those would signal our group, or everyone
            log.error("Not sending signal %d to worker %d: it has no pid", sig, worker.slot)
            return
        try:
            os.kill(worker.pid, sig)
        except ProcessLookupError:
            pass

    def forget(self, pid: int) -> None:
        """A worker's control socket closed (it is exiting) or it was reaped."""
        s = self.controls.pop(pid, None)
        if s is not None:
            s.close()

    # ------------------------------------------------------------- upgrades
    def _exec_master(self, generation: int) -> Input:
        if self.hooks is not None:
            self.hooks.pre_exec()  # gunicorn: "called just before a new master process is forked"
        try:
            # the metrics socket goes along too; the new master knows it by its --metrics-bind text
            pid, ready = upgrade.exec_master(self.staging.lset.current + self.metrics_listeners, generation)
        except (OSError, ValueError) as e:
            return Input(Event.EXEC_FAILED, detail=str(e))
        self.close_upgrade_pipe()
        self.child, self.upgrade_pipe = pid, ready
        return Input(Event.EXEC_STARTED, pid)

    def close_upgrade_pipe(self) -> None:
        if self.upgrade_pipe >= 0:
            os.close(self.upgrade_pipe)
            self.upgrade_pipe = -1

    # ------------------------------------------------------------- the outside world
    def _notify(self, cmd: Notify) -> None:
        if self.hooks is not None and cmd.kind in ("reloaded", "reload_failed"):
            self.hooks.reload_ended(cmd.kind == "reloaded")  # server.cfg: the serving generation's
        if cmd.kind == "reloading":
            self.notify.reloading("reloading")
        elif cmd.kind == "stopping":
            self.notify.stopping("stopping")
        elif cmd.kind == "mainpid":
            self.notify.send(f"MAINPID={cmd.pid}", "STATUS=upgraded: a new master serves")
        else:
            ok = cmd.kind == "reloaded"
            self.notify.ready(cmd.status if ok else "reload failed; previous workers serving")
            if self.metrics:
                self.metrics.lifecycle.reloaded(ok)

    def close(self) -> None:
        for pid in list(self.controls):
            self.forget(pid)
        self.close_upgrade_pipe()

"""The master's event loop and the real OS port behind the arbiter.

Signal handlers do nothing: Python's C handler writes the signal number to
the wakeup socket, and the loop reads it, so no logging, forking or reaping
ever happens inside a handler. One select() waits on that socket and every
worker's control socket, bounded by the arbiter's next deadline.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenfork.master import logs, privileges, upgrade
from greenfork.master.arbiter import (
    EXIT_BOOT,
    HEARTBEAT,
    READY,
    RECYCLE_ME,
    RELOAD_ME,
    Arbiter,
    Event,
    State,
    Worker,
)
from greenfork.master.listeners import Listener
from greenfork.master.listenset import ListenerSet
from greenfork.master.pidfile import Pidfile
from greenfork.master.sdnotify import Notifier
from greenfork.master.settings import Settings
from greenfork.master.workerinfo import WorkerInfo

if TYPE_CHECKING:
    from greenfork.master.metricsd import MetricsService
    from greenfork.metrics.slots import Slot

log = logging.getLogger("greenfork.master")

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
           signal.SIGUSR2, signal.SIGWINCH, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU)
# Coalesced and handled in this order each turn: stop, reload, upgrade, resize, reopen.
ORDER = (signal.SIGQUIT, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2,
         signal.SIGWINCH, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1)
TO_EVENT = {signal.SIGQUIT: Event.QUICK, signal.SIGINT: Event.QUICK, signal.SIGTERM: Event.TERM,
            signal.SIGHUP: Event.HUP, signal.SIGUSR2: Event.USR2, signal.SIGWINCH: Event.WINCH,
            signal.SIGTTIN: Event.TTIN, signal.SIGTTOU: Event.TTOU, signal.SIGUSR1: Event.USR1}


def set_title(text: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(text)
    except ImportError:  # pragma: no cover - a declared dependency
        pass


def preload_shared_libraries() -> None:
    """Load, before the first fork, the C libraries that every worker loads anyway:
    OpenSSL (gevent's monkey-patching imports ssl) and llhttp (httptools). Loaded in
    each worker, their relocated pages and OpenSSL's start-up allocations are private
    to it; inherited, they stay shared copy-on-write (measured: Pss of the master and
    two workers after a load fell from 54 to 45 MiB). Neither is gevent, nor greenfork's
    own worker code, which every new worker still imports from disk."""
    import ssl  # noqa: F401

    import httptools  # noqa: F401


def _noop(signum: int, frame: Any) -> None:
    """The wakeup fd carries the signal; the handler only has to exist."""


class RealPort:
    """OsPort over fork/kill/waitpid; owns the control sockets."""

    def __init__(self, loop: MasterLoop) -> None:
        self.loop = loop
        self.controls: dict[int, socket.socket] = {}  # pid -> master's end

    def monotonic(self) -> float:
        return time.monotonic()

    def spawn(self, worker: Worker, settings: Settings) -> int:
        parent, child = socket.socketpair()
        for h in logging.getLogger("greenfork").handlers:
            h.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        metrics = self.loop.metrics
        slot = metrics.acquire(worker) if metrics else None  # mapped before the fork: the child inherits it
        # Frozen objects are never scanned by the child's collector, so their pages stay
        # shared with the master instead of being copied into every worker by a GC pass;
        # the master unfreezes at once and keeps collecting its own garbage.
        gc.freeze()
        try:
            pid = os.fork()
        except BaseException:
            gc.unfreeze()
            if metrics and slot:
                metrics.release(slot)
            raise
        if pid == 0:  # pragma: no cover - runs in the child, measured by process tests
            self._child(worker, settings, parent, child, slot)
        gc.unfreeze()
        child.close()
        parent.setblocking(False)
        self.controls[pid] = parent
        if metrics and slot:
            metrics.assign(slot, pid)
        return pid

    def _child(self, worker: Worker, settings: Settings, parent: socket.socket, child: socket.socket,
               slot: Slot | None) -> None:
        code = EXIT_BOOT
        try:
            signal.set_wakeup_fd(-1)
            for sig in HANDLED:
                signal.signal(sig, signal.SIG_DFL)
            # Close what belongs to the master, so that the master's death is
            # seen as EOF on the control socket and other workers' sockets close.
            self.loop.wake_r.close()
            self.loop.wake_w.close()
            parent.close()
            for s in self.controls.values():
                s.close()
            if self.loop.upgrade_pipe >= 0:
                os.close(self.loop.upgrade_pipe)
            mine = self.loop.listeners_for(worker)
            for lst in self.loop.lset.every():
                if lst not in mine:
                    # A removed (or not yet committed) address must refuse connections,
                    # not queue them in a socket this worker keeps open and never accepts on.
                    lst.sock.close()
            # Drop privileges before any app code runs (ports are bound already).
            privileges.drop(self.loop.identity)
            if self.loop.metrics:
                self.loop.metrics.child_cleanup()
            from greenfork.workers.boot import run  # imports gevent: only ever in a child

            code = run(WorkerInfo(
                slot=worker.slot, generation=worker.generation, settings=settings,
                listeners=mine, addresses=tuple(lst.url for lst in mine), control=child,
                master_pid=self.loop.pid, app=self.loop.app, metrics=slot))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            log.exception("Worker %d failed to boot", worker.slot)
            code = EXIT_BOOT
        finally:
            for h in logging.getLogger("greenfork").handlers:
                h.flush()
            os._exit(code)

    def send(self, worker: Worker, message: bytes) -> None:
        s = self.controls.get(worker.pid)
        if s is not None:
            try:
                s.send(message)
            except OSError:
                pass  # the worker is gone; the reaper will hear of it

    def kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def published(self, generation: int) -> None:
        self.loop.on_published(generation)

    def ready(self) -> None:
        self.loop.on_ready()

    def reopen_logs(self) -> None:
        logs.reopen()
        log.info("Reopened log files (USR1)")  # the first line of the new file

    def reload_settings(self) -> Settings:
        return self.loop.reload_settings()

    def prepare_listeners(self, bind: tuple[str, ...]) -> None:
        self.loop.lset.prepare(bind)

    def commit_listeners(self) -> None:
        for lst in self.loop.lset.commit():
            log.info("Now listening on: %s", lst.url)

    def abort_listeners(self) -> None:
        self.loop.lset.abort()

    def close_retired(self) -> None:
        for lst in self.loop.lset.close_retired():
            log.info("No longer listening on: %s", lst.url)

    def memory(self, pid: int) -> int | None:
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

    def can_exec(self) -> bool:
        return upgrade.can_exec()

    def exec_master(self, generation: int) -> int:
        # the metrics socket goes along too; the new master knows it by its --metrics-bind text
        pid, ready = upgrade.exec_master(self.loop.lset.current + self.loop.metrics_listeners, generation)
        self.loop.set_upgrade_pipe(ready)
        return pid

    def pidfile_oldbin(self) -> None:
        if self.loop.pidfile is not None:
            self.loop.pidfile.to_oldbin()

    def pidfile_restore(self) -> None:
        if self.loop.pidfile is not None:
            self.loop.pidfile.restore()

    def worker_spawned(self, worker: Worker) -> None:
        if self.loop.metrics:
            self.loop.metrics.lifecycle.spawns += 1

    def worker_exited(self, worker: Worker, reason: str, status: int) -> None:
        log.debug("Worker %d (pid %d) gone: %s", worker.slot, worker.pid, reason)
        if self.loop.metrics:
            self.loop.metrics.lifecycle.exited(reason)

    def reloaded(self, ok: bool) -> None:
        self.loop.on_reloaded(ok)
        if self.loop.metrics:
            self.loop.metrics.lifecycle.reloaded(ok)

    def forget(self, pid: int) -> None:
        s = self.controls.pop(pid, None)
        if s is not None:
            s.close()


class MasterLoop:
    def __init__(self, settings: Settings, lset: ListenerSet, *,
                 app: Callable[..., Any] | None = None, generation: int = 1,
                 reload_settings: Callable[[], Settings] | None = None,
                 on_ready: Callable[[], None] | None = None,
                 on_published: Callable[[int, tuple[str, ...]], None] | None = None,
                 metrics_listeners: list[Listener] | None = None,
                 pidfile: Pidfile | None = None) -> None:
        self.lset = lset
        self.metrics_listeners = metrics_listeners or []
        self.pidfile = pidfile
        self.app = app
        self.upgrade_pipe = -1  # read end of the new master's "ready" pipe during an upgrade
        self.title = ""
        self.pid = os.getpid()
        self._reload = reload_settings
        self._on_ready = on_ready
        self._on_published = on_published
        self.identity = privileges.resolve(settings.user, settings.group)
        self.notify = Notifier()
        self.wake_r, self.wake_w = socket.socketpair()
        self.port = RealPort(self)
        self.arbiter = Arbiter(settings, self.port, generation)
        self.metrics: MetricsService | None = None
        if metrics_listeners:
            # Imported only when asked for: prometheus_client and the collector cost every
            # process (the master's pages are shared into each worker) several MiB.
            from greenfork.master.metricsd import MetricsService
            from greenfork.metrics import appmetrics

            self.metrics = MetricsService(metrics_listeners, lset.current, lambda: self.arbiter,
                                          app_dir=appmetrics.create_dir() if settings.app_metrics else None)

    def listeners_for(self, worker: Worker) -> list[Listener]:
        """A new generation's workers get the reload's listener set, everyone else the current one."""
        a = self.arbiter
        if a.pending_gen and worker.generation == a.pending_gen and self.lset.pending is not None:
            return self.lset.pending
        return self.lset.current

    def set_upgrade_pipe(self, fd: int) -> None:
        self.close_upgrade_pipe()
        self.upgrade_pipe = fd

    def close_upgrade_pipe(self) -> None:
        if self.upgrade_pipe >= 0:
            os.close(self.upgrade_pipe)
            self.upgrade_pipe = -1

    def update_title(self) -> None:
        a = self.arbiter
        title = f"greenfork: master [{a.settings.app_label}] gen {a.generation}"
        if a.child:
            title += " (old)"
        if a.state in (State.DRAINING, State.QUITTING):
            title += " (draining)"
        if title != self.title:
            self.title = title
            set_title(title)

    def reload_settings(self) -> Settings:
        if self._reload is None:
            return self.arbiter.settings
        return self._reload()

    def on_ready(self) -> None:
        log.info("Booted %d worker(s)", self.arbiter.settings.workers)
        self.notify.ready(self._status())
        if self._on_ready is not None:
            self._on_ready()

    def _status(self) -> str:
        a = self.arbiter
        ready = sum(1 for w in a.workers.values() if w.state.value == "ready")
        return f"generation {a.generation}, {ready}/{a.settings.workers} workers ready"

    def on_reloaded(self, ok: bool) -> None:
        self.notify.ready(self._status() if ok else "reload failed; previous workers serving")

    def on_published(self, generation: int) -> None:
        if self._on_published is not None:
            self._on_published(generation, self.lset.addresses)

    def _install_signals(self) -> None:
        for s in (self.wake_r, self.wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for sig in HANDLED:
            signal.signal(sig, _noop)

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_DFL)

    def run(self) -> int:
        self._install_signals()
        preload_shared_libraries()
        try:
            self.arbiter.start()
            self._loop()
        finally:
            self._restore_signals()
            for pid in list(self.port.controls):
                self.port.forget(pid)
            self.wake_r.close()
            self.wake_w.close()
            self.notify.close()
            if self.metrics:
                self.metrics.close()
            self.close_upgrade_pipe()
        return self.arbiter.exit_code

    def _loop(self) -> None:
        arbiter = self.arbiter
        while arbiter.state != State.STOPPED:
            deadline = arbiter.next_deadline()
            if self.notify.next_ping and (deadline is None or self.notify.next_ping < deadline):
                deadline = self.notify.next_ping
            timeout = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            self.update_title()
            by_fd = {s.fileno(): (pid, s) for pid, s in self.port.controls.items()}
            extra = [self.upgrade_pipe] if self.upgrade_pipe >= 0 else []
            mr, mw = self.metrics.fds() if self.metrics else ([], [])
            readable, writable, _ = select.select([self.wake_r.fileno(), *by_fd, *extra, *mr], mw, [],
                                                  timeout)
            signals = self._drain_wakeup() if self.wake_r.fileno() in readable else set()
            if self.upgrade_pipe >= 0 and self.upgrade_pipe in readable:
                self._upgrade_message()
            self._reap()
            for fd in readable:
                if fd in by_fd:
                    self._control_message(*by_fd[fd])
            for sig in ORDER:
                if sig in signals:
                    log.debug("Got %s", signal.Signals(sig).name)
                    before = arbiter.state
                    if sig == signal.SIGHUP and before == State.RUNNING:
                        self.notify.reloading("reloading")
                    arbiter.handle(TO_EVENT[sig])
                    if arbiter.state in (State.DELAYING, State.DRAINING, State.QUITTING) and \
                            before != arbiter.state:
                        self.notify.stopping("stopping")
            arbiter.handle(Event.TICK)
            self.notify.watchdog_due(time.monotonic())
            if self.metrics:
                self.metrics.serve(readable, writable)

    def _upgrade_message(self) -> None:
        try:
            data = os.read(self.upgrade_pipe, 64)
        except OSError:
            data = b""
        if READY in data:
            child = self.arbiter.child
            self.arbiter.handle(Event.CHILD_READY)
            if child:
                # systemd follows the new master from now on (the old one is still main: it may say so)
                self.notify.send(f"MAINPID={child}", "STATUS=upgraded: a new master serves")
        if not data:
            self.close_upgrade_pipe()  # the new master exited; the reaper reports it

    def _drain_wakeup(self) -> set[int]:
        got: set[int] = set()
        while True:
            try:
                data = self.wake_r.recv(256)
            except BlockingIOError:
                return got
            if not data:
                return got
            got.update(data)

    def _reap(self) -> None:
        while True:
            try:
                pid, status, rusage = os.wait4(-1, os.WNOHANG)  # rusage: a dead worker's final CPU
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.metrics:
                from greenfork.master.metricsd import cpu_of

                self.metrics.reaped(pid, cpu_of(rusage))
            code = os.waitstatus_to_exitcode(status)
            if pid == self.arbiter.child:
                self.close_upgrade_pipe()
                self.arbiter.handle(Event.CHILD_EXIT, pid, code)
                continue
            self.port.forget(pid)
            self.arbiter.handle(Event.EXIT, pid, code)

    def _control_message(self, pid: int, sock: socket.socket) -> None:
        try:
            data = sock.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            # The worker closed its end: it is exiting; the reaper reports it.
            self.port.forget(pid)
            return
        w = self.arbiter.workers.get(pid)
        if w is not None and (HEARTBEAT in data or READY in data):
            w.heartbeat = time.monotonic()
        if READY in data:
            self.arbiter.handle(Event.READY, pid)
        if RECYCLE_ME in data:
            self.arbiter.handle(Event.RECYCLE, pid)
        if RELOAD_ME in data:
            self.arbiter.handle(Event.RELOAD_ASK, pid)

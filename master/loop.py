"""The master's event loop and the real OS port behind the arbiter.

Signal handlers do nothing: Python's C handler writes the signal number to
the wakeup socket, and the loop reads it, so no logging, forking or reaping
ever happens inside a handler. One select() waits on that socket and every
worker's control socket, bounded by the arbiter's next deadline.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from greenfork.master import logs, privileges
from greenfork.master.arbiter import EXIT_BOOT, HEARTBEAT, READY, Arbiter, Event, State, Worker
from greenfork.master.listeners import Listener
from greenfork.master.metricsd import MetricsService, cpu_of
from greenfork.master.sdnotify import Notifier
from greenfork.master.settings import Settings
from greenfork.master.workerinfo import WorkerInfo
from greenfork.metrics import appmetrics
from greenfork.metrics.slots import Slot

log = logging.getLogger("greenfork.master")

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
           signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU)
# Coalesced and handled in this order each turn: stop, reload, resize, reopen.
ORDER = (signal.SIGQUIT, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTTIN,
         signal.SIGTTOU, signal.SIGUSR1)
TO_EVENT = {signal.SIGQUIT: Event.QUICK, signal.SIGINT: Event.QUICK, signal.SIGTERM: Event.TERM,
            signal.SIGHUP: Event.HUP, signal.SIGTTIN: Event.TTIN, signal.SIGTTOU: Event.TTOU,
            signal.SIGUSR1: Event.USR1}


def _noop(signum: int, frame: Any) -> None:
    """The wakeup fd carries the signal; the handler only has to exist."""


class RealPort:
    """OsPort over fork/kill/waitpid; owns the control sockets."""

    def __init__(self, loop: MasterLoop) -> None:
        self.loop = loop
        self.controls: dict[int, socket.socket] = {}  # pid -> master's end

    def monotonic(self) -> float:
        return time.monotonic()

    def spawn(self, worker: Worker) -> int:
        parent, child = socket.socketpair()
        for h in logging.getLogger("greenfork").handlers:
            h.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        metrics = self.loop.metrics
        slot = metrics.acquire(worker) if metrics else None  # mapped before the fork: the child inherits it
        try:
            pid = os.fork()
        except BaseException:
            if metrics and slot:
                metrics.release(slot)
            raise
        if pid == 0:  # pragma: no cover - runs in the child, measured by process tests
            self._child(worker, parent, child, slot)
        child.close()
        parent.setblocking(False)
        self.controls[pid] = parent
        if metrics and slot:
            metrics.assign(slot, pid)
        return pid

    def _child(self, worker: Worker, parent: socket.socket, child: socket.socket, slot: Slot | None) -> None:
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
            # Drop privileges before any app code runs (ports are bound already).
            privileges.drop(self.loop.identity)
            if self.loop.metrics:
                self.loop.metrics.child_cleanup()
            from greenfork.workers.boot import run  # imports gevent: only ever in a child

            code = run(WorkerInfo(
                slot=worker.slot, generation=worker.generation, settings=self.loop.arbiter.settings,
                listeners=self.loop.listeners, addresses=self.loop.addresses, control=child,
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
    def __init__(self, settings: Settings, listeners: list[Listener], addresses: tuple[str, ...], *,
                 app: Callable[..., Any] | None = None,
                 reload_settings: Callable[[], Settings] | None = None,
                 on_ready: Callable[[], None] | None = None,
                 on_published: Callable[[int], None] | None = None,
                 metrics_listeners: list[Listener] | None = None) -> None:
        self.listeners = listeners
        self.addresses = addresses
        self.app = app
        self.pid = os.getpid()
        self._reload = reload_settings
        self._on_ready = on_ready
        self._on_published = on_published
        self.identity = privileges.resolve(settings.user, settings.group)
        self.notify = Notifier()
        self.wake_r, self.wake_w = socket.socketpair()
        self.port = RealPort(self)
        self.arbiter = Arbiter(settings, self.port)
        self.metrics: MetricsService | None = None
        if metrics_listeners:
            self.metrics = MetricsService(metrics_listeners, listeners, lambda: self.arbiter,
                                          app_dir=appmetrics.create_dir() if settings.app_metrics else None)

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
            self._on_published(generation)

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
        return self.arbiter.exit_code

    def _loop(self) -> None:
        arbiter = self.arbiter
        while arbiter.state != State.STOPPED:
            deadline = arbiter.next_deadline()
            if self.notify.next_ping and (deadline is None or self.notify.next_ping < deadline):
                deadline = self.notify.next_ping
            timeout = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            by_fd = {s.fileno(): (pid, s) for pid, s in self.port.controls.items()}
            mr, mw = self.metrics.fds() if self.metrics else ([], [])
            readable, writable, _ = select.select([self.wake_r.fileno(), *by_fd, *mr], mw, [], timeout)
            signals = self._drain_wakeup() if self.wake_r.fileno() in readable else set()
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
                    if arbiter.state in (State.DRAINING, State.QUITTING) and before != arbiter.state:
                        self.notify.stopping("stopping")
            arbiter.handle(Event.TICK)
            self.notify.watchdog_due(time.monotonic())
            if self.metrics:
                self.metrics.serve(readable, writable)

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
                self.metrics.reaped(pid, cpu_of(rusage))
            self.port.forget(pid)
            self.arbiter.handle(Event.EXIT, pid, os.waitstatus_to_exitcode(status))

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

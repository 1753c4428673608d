"""The master's event loop: turns signals, worker messages, exits and deadlines into
events for the arbiter, and hands the commands it returns to the executor.

Signal handlers do nothing: Python's C handler writes the signal number to
the wakeup socket, and the loop reads it, so no logging, forking or reaping
ever happens inside a handler. One select() waits on that socket, every
worker's control socket, the upgrade pipe and the metrics listener, bounded by
the arbiter's next deadline.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenfork.master import control, privileges, upgrade
from greenfork.master.arbiter import Arbiter
from greenfork.master.commands import Input, run
from greenfork.master.executor import HANDLED, Executor
from greenfork.master.hooks import Hooks
from greenfork.master.listeners import Listener
from greenfork.master.listenset import ListenerSet
from greenfork.master.pidfile import Pidfile
from greenfork.master.prepare import Staging, TlsLoader
from greenfork.master.sdnotify import Notifier
from greenfork.master.settings import Settings
from greenfork.master.states import Event, State, UpgradeState

if TYPE_CHECKING:
    from greenfork.master.cachekeeper import CacheKeeper
    from greenfork.master.metricsd import MetricsService
    from greenfork.master.tls import TlsConfig

log = logging.getLogger("greenfork.master")

# Coalesced and handled in this order each turn: stop, reload, upgrade, resize, reopen.
ORDER = (signal.SIGQUIT, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2,
         signal.SIGWINCH, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1)
TO_EVENT = {signal.SIGQUIT: Event.QUICK, signal.SIGINT: Event.QUICK, signal.SIGTERM: Event.TERM,
            signal.SIGHUP: Event.HUP, signal.SIGUSR2: Event.USR2, signal.SIGWINCH: Event.WINCH,
            signal.SIGTTIN: Event.TTIN, signal.SIGTTOU: Event.TTOU, signal.SIGUSR1: Event.USR1}
FROM_WORKER = {control.READY: Event.READY, control.HEARTBEAT: Event.HEARTBEAT,
               control.RECYCLE_ME: Event.RECYCLE, control.RELOAD_ME: Event.RELOAD_ASK}


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


class MasterLoop:
    def __init__(self, settings: Settings, lset: ListenerSet, *,
                 app: Callable[..., Any] | None = None, generation: int = 1,
                 reload_settings: Callable[[], Settings] | None = None,
                 on_ready: Callable[[], None] | None = None,
                 on_published: Callable[[int, tuple[str, ...]], None] | None = None,
                 metrics_listeners: list[Listener] | None = None,
                 pidfile: Pidfile | None = None, tls: TlsConfig | None = None,
                 load_tls: TlsLoader | None = None, metrics_shared: bool = False,
                 cache: CacheKeeper | None = None) -> None:
        self.title = ""
        self.metrics_shared = metrics_shared  # a new master of an upgrade, on the old one's listener
        self.wake_r, self.wake_w = socket.socketpair()
        self.arbiter = Arbiter(settings, generation=generation, can_exec=upgrade.can_exec())
        self.notify = Notifier()
        self.metrics: MetricsService | None = None
        if metrics_listeners:
            # Imported only when asked for: prometheus_client and the collector cost every
            # process (the master's pages are shared into each worker) several MiB.
            from greenfork.master.metricsd import MetricsService
            from greenfork.metrics import appmetrics

            self.metrics = MetricsService(metrics_listeners, lset.current, lambda: self.arbiter,
                                          app_dir=appmetrics.create_dir() if settings.app_metrics else None,
                                          certificates=self._certificates,
                                          # issue 17: delegated shown from zero, mounts in listener_info
                                          delegation_targets=[d.target for d in settings.delegate],
                                          mounts=[m.prefix for m in settings.mount],
                                          cache_stats=cache.stats if cache is not None else None)
        identity = privileges.resolve(settings.user, settings.group)
        self.staging = Staging(lset, reload_settings, tls=tls, load_tls=load_tls)
        hooks = Hooks(settings, listeners=lambda: [lst.sock for lst in self.staging.lset.current])
        self.executor = Executor(
            self.staging, app=app, identity=identity, notify=self.notify,
            metrics=self.metrics, metrics_listeners=metrics_listeners, pidfile=pidfile,
            masters_own=[self.wake_r, self.wake_w], on_ready=on_ready, on_published=on_published,
            hooks=hooks, cache=cache)

    def _certificates(self) -> list[tuple[str, float]]:
        """greenfork_tls_certificate_expiry_timestamp_seconds: the serving generation's."""
        tls = self.staging.tls
        return list(tls.expiry_by_server_name().items()) if tls is not None else []

    def dispatch(self, event: Event, pid: int = 0, status: int = 0) -> None:
        if self.executor.exit_code is None:  # after Exit, inputs of the same turn are dropped
            run(self.arbiter, Input(event, pid, status), self.executor.execute)

    def update_title(self) -> None:
        a = self.arbiter
        title = f"greenfork: master [{a.settings.app_label}] gen {a.generation}"
        if a.upgrade.pending:
            title += " (old)"
        if a.state in (State.DRAINING, State.QUITTING):
            title += " (draining)"
        if title != self.title:
            self.title = title
            set_title(title)

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
            self.executor.starting()  # on_starting, from the loop as every hook
            self.dispatch(Event.START)
            self._loop()
        finally:
            self._restore_signals()
            self.executor.close()
            self.wake_r.close()
            self.wake_w.close()
            self.notify.close()
            if self.metrics:
                self.metrics.close()
        return self.executor.exit_code or 0

    def _loop(self) -> None:
        ex = self.executor
        while ex.exit_code is None:
            deadline = self.arbiter.next_deadline()
            if self.notify.next_ping and (deadline is None or self.notify.next_ping < deadline):
                deadline = self.notify.next_ping
            timeout = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            self.update_title()
            by_fd = {s.fileno(): (pid, s) for pid, s in ex.controls.items()}
            extra = [ex.upgrade_pipe] if ex.upgrade_pipe >= 0 else []
            mr, mw = self.metrics.fds() if self.metrics else ([], [])
            if self.metrics and not self._answers_metrics():
                shared = {lst.sock.fileno() for lst in self.metrics.listeners}
                mr = [fd for fd in mr if fd not in shared]
            readable, writable, _ = select.select([self.wake_r.fileno(), *by_fd, *extra, *mr], mw, [],
                                                  timeout)
            signals = self._drain_wakeup() if self.wake_r.fileno() in readable else set()
            if ex.upgrade_pipe >= 0 and ex.upgrade_pipe in readable:
                self._upgrade_message()
            self._reap()
            for fd in readable:
                if fd in by_fd:
                    self._control_message(*by_fd[fd])
            for sig in ORDER:
                if sig in signals:
                    log.debug("Got %s", signal.Signals(sig).name)
                    self.dispatch(TO_EVENT[sig])
            self.dispatch(Event.TICK)
            self.notify.watchdog_due(time.monotonic())
            if self.metrics:
                self.metrics.serve(readable, writable)

    def _answers_metrics(self) -> bool:
        """During a binary upgrade both masters hold the metrics listener. One answers at a
        time, so a load balancer's check of /readyz and a scrape always reach the master that
        serves the host: the old one until its successor is ready, then the successor (the old
        one answers again if the successor exits), and not an old one that is stopping (TERM
        may come before its successor's readiness has reached it). Otherwise a check would meet
        a new master still booting, or an old one draining, and see 503 from a host that serves."""
        a = self.arbiter
        if a.upgrade.state is UpgradeState.READY:
            return False
        if a.upgrade.pending and a.state in (State.DELAYING, State.DRAINING, State.QUITTING):
            return False
        return not (self.metrics_shared and a.state is State.STARTING)

    def _upgrade_message(self) -> None:
        ex = self.executor
        try:
            data = os.read(ex.upgrade_pipe, 64)
        except OSError:
            data = b""
        if upgrade.READY in data:
            self.dispatch(Event.CHILD_READY, ex.child)
        if not data:
            ex.close_upgrade_pipe()  # the new master exited; the reaper reports it

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
        ex = self.executor
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
            if pid == ex.child:
                ex.child = 0
                ex.close_upgrade_pipe()
                self.dispatch(Event.CHILD_EXIT, pid, code)
                continue
            # What the worker said before it exited comes first: a READY still unread (sent, then
            # the worker killed by its first request within one turn of this loop) makes this a
            # death, not a failed boot. Bounded: a dead worker's socket holds its last words, then
            # EOF (unless a child of its own still holds it open).
            sock = ex.controls.get(pid)
            for _ in range(8):
                if sock is None or not self._control_message(pid, sock):
                    break
            ex.forget(pid)
            self.dispatch(Event.EXIT, pid, code)

    def _control_message(self, pid: int, sock: socket.socket) -> bool:
        """Read and dispatch what a worker sent; False when there was nothing (or EOF)."""
        try:
            data = sock.recv(64)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            # The worker closed its end: it is exiting; the reaper reports it.
            self.executor.forget(pid)
            return False
        for message in control.messages(data, control.TO_MASTER):
            self.dispatch(FROM_WORKER[message], pid)
        return True

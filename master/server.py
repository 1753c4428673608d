"""The embedding API and the CLI's engine: bind, publish, supervise.

    from greenfork.master import Server
    server = Server("app:app", bind=["http://127.0.0.1:0"], workers=2)
    server.start()            # binds here, forks the master, waits for READY workers
    print(server.addresses)   # ['http://127.0.0.1:43211']
    server.stop()

Server.run() is the foreground form the `greenfork` command uses.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

from greenfork.master import (
    apploader,
    config,
    listeners,
    mountapps,
    prefixes,
    report,
    rlimits,
    subreaper,
    upgrade,
)
from greenfork.master.addresses import parse_bind
from greenfork.master.cachekeeper import CacheKeeper, CacheSizeError
from greenfork.master.control import EXIT_APP_IMPORT, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE
from greenfork.master.listeners import BindError, Listener
from greenfork.master.listenset import ListenerSet, ordered
from greenfork.master.loop import MasterLoop, set_title
from greenfork.master.pidfile import Pidfile, PidfileBusy
from greenfork.master.prepare import log_tls
from greenfork.master.settings import BY_NAME, DEMO_APP, SettingError, Settings
from greenfork.master.tls import TlsConfig, TlsError

log = logging.getLogger("greenfork.master")


class Server:
    """A greenfork master. `app` is a spec string, a WSGI callable, or None for the demo."""

    def __init__(self, app: str | Callable[..., Any] | None = None, *, settings: Settings | None = None,
                 reload_settings: Callable[[], Settings] | None = None, tls_config: TlsConfig | None = None,
                 base_dir: str | None = None, **options: Any) -> None:
        self._app_obj: Callable[..., Any] | None = None
        self._tls = tls_config  # loaded by the CLI already (it checks the files before starting)
        self._base_dir = base_dir or os.getcwd()  # relative certificate paths are read from here
        if settings is None:
            values: dict[str, object] = dict(options)
            if isinstance(app, str):
                values["app"] = app
            if isinstance(values.get("bind"), str):
                values["bind"] = [values["bind"]]
            unknown = set(values) - set(BY_NAME)
            if unknown:
                raise TypeError(f"Server() got unknown settings: {', '.join(sorted(unknown))}")
            settings = config.build([config.Layer("Server()", values)])
        if app is not None and not isinstance(app, str):
            if not callable(app):
                raise TypeError("app must be a spec string like 'module:app' or a WSGI callable")
            self._app_obj = app
            label = getattr(app, "__name__", type(app).__name__)
            settings = settings.replace(app=f"<{label}>")
        self.settings = settings
        self._reload_settings = reload_settings
        self.listeners: list[Listener] = []
        self.metrics_listeners: list[Listener] = []  # --metrics-bind
        self._master_pid: int | None = None
        self._generation = 1
        self._upgrade_fd = -1  # set in a master started by a binary upgrade (upgrade.py)
        self._metrics_handed = False  # ... whose metrics listener the old master still serves

    # ------------------------------------------------------------- addresses
    @property
    def addresses(self) -> list[str]:
        """The URLs actually bound (real ports), in the form --bind accepts."""
        return [lst.url for lst in self.listeners]

    def bind(self) -> list[str]:
        if self.listeners:
            return self.addresses
        specs = [parse_bind(b) for b in self.settings.bind]
        handed = upgrade.inherited(os.environ)
        if handed is not None:
            return self._adopt_upgrade(*handed)
        inherited = listeners.systemd_fds(os.environ, os.getpid())
        adopted: list[Listener] = []
        for fd in inherited:
            adopted.append(listeners.adopt_fd(fd))
        listeners.defer_accept_on(adopted, self.settings.defer_accept)
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(key, None)  # children must not adopt them again
        if adopted and config.bind_is_implicit(self.settings):
            specs = []  # socket activation replaces the default address (and PORT's)
            if self.settings.source_of("bind") == config.PORT_SOURCE:
                log.info("PORT is set, but systemd passed listening sockets: serving on those only")
        elif specs and self.settings.source_of("bind") == config.PORT_SOURCE:
            log.info("No --bind given: listening on %s, from the PORT environment variable",
                     self.settings.bind[0])
        self.listeners = adopted + listeners.bind_all(
            specs, backlog=self.settings.backlog, unix_mode=self.settings.unix_socket_mode,
            defer_accept=self.settings.defer_accept)
        if self.settings.metrics_bind:
            try:
                self.metrics_listeners = listeners.bind_all(
                    [parse_bind(self.settings.metrics_bind)], backlog=64,
                    unix_mode=self.settings.unix_socket_mode)
            except BaseException:
                listeners.close_all(self.listeners)
                self.listeners = []
                raise
        return self.addresses

    @property
    def metrics_address(self) -> str | None:
        """The URL of /metrics' listener (real port), or None without --metrics-bind."""
        return self.metrics_listeners[0].url if self.metrics_listeners else None

    def _adopt_upgrade(self, handed: list[Listener], generation: int, ready_fd: int) -> list[str]:
        """A new master of a binary upgrade: keep the inherited sockets whose --bind text is
        still configured (all of them when bind is the default: they may be systemd's), close
        the others, bind what is new."""
        self._generation, self._upgrade_fd = generation, ready_fd
        bind = self.settings.bind
        if config.bind_is_implicit(self.settings):
            bind = tuple(dict.fromkeys(lst.spec.raw for lst in handed))
        metrics_bind = self.settings.metrics_bind
        self.metrics_listeners = [lst for lst in handed if metrics_bind and lst.spec.raw == metrics_bind]
        handed = [lst for lst in handed if lst not in self.metrics_listeners]
        self._metrics_handed = bool(self.metrics_listeners)
        if metrics_bind and not self.metrics_listeners:
            self.metrics_listeners = listeners.bind_all([parse_bind(metrics_bind)], backlog=64,
                                                        unix_mode=self.settings.unix_socket_mode)
        keep = [lst for lst in handed if lst.spec.raw in bind]
        for lst in handed:
            if lst not in keep:
                lst.sock.close()  # the old master still owns its file, if any
        listeners.defer_accept_on(keep, self.settings.defer_accept)  # the new master's setting wins
        have = {lst.spec.raw for lst in keep}
        fresh = listeners.bind_all([parse_bind(b) for b in bind if b not in have],
                                   backlog=self.settings.backlog, unix_mode=self.settings.unix_socket_mode,
                                   defer_accept=self.settings.defer_accept)
        self.listeners = ordered(keep + fresh, bind)
        return self.addresses

    # ------------------------------------------------------------ foreground
    def run(self, *, on_ready: Callable[[], None] | None = None) -> int:
        """Bind (if not yet), publish, supervise until stopped; returns the exit code."""
        s = self.settings
        rlimits.raise_nofile()
        subreaper.become()
        self.bind()
        pid = os.getpid()
        upgraded = self._upgrade_fd >= 0
        lset = ListenerSet(self.listeners, backlog=s.backlog, unix_mode=s.unix_socket_mode,
                           defer_accept=s.defer_accept)
        loop: MasterLoop | None = None
        cache: CacheKeeper | None = None
        pidfile = Pidfile(s.pidfile) if s.pidfile else None

        def ready() -> None:
            if upgraded:
                # The addresses file first: the old master exits once told, and whoever waited
                # for that exit reads the file next (it must name us by then). The old master is
                # told before PIDFILE moves, so that it hands the metrics listener over
                # (MasterLoop._answers_metrics) before anyone who waits for the pidfile can stop it.
                self._publish(self._generation, lset.addresses)
                upgrade.notify_ready(self._upgrade_fd)
                if pidfile is not None:
                    pidfile.acquire(pid)
            if on_ready is not None:
                on_ready()

        try:
            if pidfile is not None and not upgraded:
                # First: a second instance on the same pidfile stops before it says anything.
                pidfile.acquire(pid)
            set_title(f"greenfork: master [{s.app_label}] gen {self._generation}")
            # issue 17: each --mount's prefix URLs are published after the listeners' (HTTP.sys's
            # form), and each --delegate's destination is logged
            report.log_addresses(prefixes.published(self.addresses, s.mount))
            for line in prefixes.delegations(self.listeners, s.delegate):
                log.info("%s", line)
            self._log_proxy_protocol()
            if self.metrics_address:
                log.info("Metrics listening on: %s", self.metrics_address)
            elif s.app_metrics:
                log.warning("--app-metrics does nothing without --metrics-bind")
            if s.preload and self._app_obj is None:
                code = self._preload()
                if code:
                    return code
            tls_config = self._load_tls(s)
            cache = CacheKeeper.create(s)  # --response-cache: mapped before any fork, inherited by all
            if not upgraded:
                self._publish(self._generation, lset.addresses)
            loop = MasterLoop(s, lset, app=self._app_obj, generation=self._generation,
                              reload_settings=self._reload_settings, on_ready=ready,
                              on_published=self._publish, metrics_listeners=self.metrics_listeners,
                              pidfile=pidfile, tls=tls_config, load_tls=self._tls_loader,
                              metrics_shared=self._metrics_handed, cache=cache)
            code = loop.run()
        except PidfileBusy as e:
            log.error("%s", e)
            code = EXIT_USAGE
        except (TlsError, CacheSizeError) as e:
            log.error("%s", e)
            code = EXIT_USAGE
        except OSError as e:
            log.error("greenfork stopped: %s", e)
            code = EXIT_RUNTIME
        finally:
            if os.getpid() == pid:  # never clean up from a worker that unwound this far
                # A new master that outlives us (upgrade) serves on these sockets and owns the
                # files now: close our copies, remove nothing it took over.
                successor = loop is not None and loop.arbiter.upgrade.pending
                lset.close_all(unlink=not successor)
                listeners.close_all(self.metrics_listeners, unlink=not successor)
                self.listeners = []
                self.metrics_listeners = []
                if not successor:  # the new master has rewritten it (see ready() above)
                    report.remove_addresses_file(s.addresses_file, pid)
                if pidfile is not None:
                    pidfile.release()
                if cache is not None:
                    cache.close()
        if code == EXIT_OK:
            log.info("Shutdown complete")
        return code

    def _log_proxy_protocol(self) -> None:
        """Which listeners require a PROXY header (issue 14): a client that connects straight
        to one is closed unanswered, so say so where the operator looks first."""
        s = self.settings
        for lst in self.listeners + self.metrics_listeners:
            mode = lst.spec.proxy_protocol
            if mode is None and lst not in self.metrics_listeners and not lst.spec.handoff:
                mode = s.proxy_protocol
            if mode not in (None, "off"):
                log.info("%s requires a PROXY protocol header (%s) from %s", lst.url, mode,
                         s.proxy_allow_from or "nobody (--proxy-allow-from is empty)")

    def _load_tls(self, settings: Settings) -> TlsConfig | None:
        """The certificates and contexts, read here in the master before any worker drops
        its privileges (a key may be 0600 root's). TlsError: a configuration error."""
        config = self._tls if self._tls is not None else self._tls_loader(settings)
        log_tls(config)
        return config

    def _tls_loader(self, settings: Settings) -> TlsConfig | None:
        from greenfork.master import tls

        if not tls.configured(settings):
            return None
        return tls.load(settings, tls.alpn_protocols(settings), base_dir=self._base_dir)

    def _preload(self) -> int:
        """--preload: import the app here, once, so workers share its pages after fork.
        gc.freeze() moves everything to a generation the collector never scans, so the
        collector does not write to (and un-share) those pages in every worker."""
        import gc

        try:
            if not mountapps.no_main_app(self.settings):  # (issue 17: else the workers' 404)
                self._app_obj = apploader.load_app(self.settings)
        except Exception as e:
            log.error("Failed to load the application %s: %s", self.settings.app, e,
                      exc_info=not isinstance(e, apploader.AppImportError))
            return EXIT_APP_IMPORT
        try:
            mountapps.preload(self.settings.mount, self.settings.chdir)  # issue 17: --mount's apps
        except mountapps.MountImportError as e:
            mountapps.report(e)
            return EXIT_APP_IMPORT
        gc.freeze()
        return 0

    def _publish(self, generation: int, addresses: tuple[str, ...]) -> None:
        self._generation = generation
        if self.settings.addresses_file:
            report.write_addresses_file(self.settings.addresses_file, os.getpid(), generation,
                                        prefixes.published(addresses, self.settings.mount),  # issue 17
                                        self.metrics_address)

    # -------------------------------------------------------------- embedded
    def start(self, timeout: float | None = None) -> None:
        """Bind in this process, fork the master, and return once its workers are READY."""
        if self._master_pid is not None:
            raise RuntimeError("server already started")
        self.bind()
        timeout = self.settings.boot_timeout + 5 if timeout is None else timeout
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the master child, covered by process tests
            code = EXIT_RUNTIME
            try:
                os.close(r)
                os.setpgid(0, 0)  # its own group: the embedding process's Ctrl-C is its own business


                def ready() -> None:
                    os.write(w, b"1")

                code = self.run(on_ready=ready)
            finally:
                os._exit(code)
        os.close(w)
        self._master_pid = pid
        for lst in self.listeners + self.metrics_listeners:
            lst.sock.close()  # the master holds them now (and removes unix files on exit)
        try:
            readable, _, _ = select.select([r], [], [], timeout)
            ok = bool(readable) and os.read(r, 1) == b"1"
        finally:
            os.close(r)
        if not ok:
            code = self.stop(timeout=5)
            raise RuntimeError(f"greenfork did not become ready (exit code {code})")

    def stop(self, timeout: float | None = None) -> int:
        """TERM the master, wait for it (SIGKILL after the timeout); its exit code."""
        pid = self._master_pid
        if pid is None:
            return EXIT_OK
        timeout = self.settings.graceful_timeout + 5 if timeout is None else timeout
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.02)
        self._master_pid = None
        self.listeners = []
        self.metrics_listeners = []
        return os.waitstatus_to_exitcode(status)

    @property
    def pid(self) -> int | None:
        """The master's pid once started."""
        return self._master_pid

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["DEMO_APP", "BindError", "Server", "SettingError"]

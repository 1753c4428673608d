"""A worker process: load the app, accept on the shared sockets, serve, drain.

Runs after gevent's monkey-patching (boot.py). Talks to the master over its
control socket: READY once accepting; QUIT (graceful), TERMINATE (quick) and
REOPEN come back. EOF on that socket means the master died, so the worker
drains and exits rather than serving on as an orphan.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import sys
import time
from typing import Any

import gevent
import gevent.event
from gevent import socket as gsocket

from greenfork.master import apploader, logs
from greenfork.master.control import (
    EXIT_APP_IMPORT,
    EXIT_BOOT,
    HEARTBEAT,
    QUIT,
    READY,
    RECYCLE_ME,
    RELOAD_ME,
    REOPEN,
    TERMINATE,
)
from greenfork.master.listeners import Listener
from greenfork.master.prefixes import published
from greenfork.master.tls import TlsConfig
from greenfork.master.workerinfo import WorkerInfo
from greenfork.workers import cachefast, hookpoints, instrument, mounts, reloader, stackdump
from greenfork.workers.acceptor import Acceptor
from greenfork.workers.accesslog import AccessLog
from greenfork.workers.cachefast import FastHits
from greenfork.workers.conn import Connection
from greenfork.workers.delegation import Delegator, Step, steps
from greenfork.workers.delegation_inline import Inline
from greenfork.workers.front import ProxyFront, fronts
from greenfork.workers.http1 import Limits
from greenfork.workers.request import RequestStage
from greenfork.workers.shed import Shedder
from greenfork.workers.timers import Sweeper, Timed, Timeouts
from greenfork.workers.websocket import WebSockets, websocket_limits
from greenfork.workers.wsgi import Errors, FileWrapper

log = logging.getLogger("greenfork.worker")

HEARTBEAT_INTERVAL = 1.0
# While draining, an idle keep-alive connection gets this long to send one more request
# (answered with Connection: close) before it is closed: its client may already have
# sent it, and closing at once would reset that request. Longer than the shortest idle
# time a proxy's pool can be told to drop connections after (Apache's ttl=1), so that a
# proxy set so never sends a request on a connection as it is closed (docs/deployment.md).
DRAIN_IDLE_GRACE = 2.0


def _h2limits(s: Any) -> Any:
    if "h2" not in s.http_protocols or s.delegate:  # (a delegating front speaks HTTP/1.1: master/tls.py)
        return None
    from greenfork.workers.h2proto import H2Limits  # (imports h2 only when HTTP/2 is on)

    return H2Limits.from_settings(s)


def server_software() -> str:
    """SERVER_SOFTWARE (RFC 3875 4.1.17): apps and middleware branch on it."""
    from importlib import metadata

    try:
        return "greenfork/" + metadata.version("greenfork")
    except metadata.PackageNotFoundError:  # pragma: no cover - a bare checkout
        return "greenfork"


class ListenerContext:
    """What a connection needs to know about the socket it came in on."""

    def __init__(self, listener: Listener, base: dict[str, Any], index: int = 0,
                 tls: TlsConfig | None = None) -> None:
        self.index = index  # position in the listener list: the metrics' listener labels
        self.scheme = listener.spec.scheme
        self.unix = listener.transport == "unix"
        self.sendfile = True
        # the master's SSLContext for an https:// listener (built before the fork)
        self.ssl = tls.context_for(listener.spec) if tls is not None else None
        self.h2c = False  # cleartext HTTP/2 with prior knowledge (set by the worker from its settings)
        self.client_cert_user = tls.client_cert_user if tls is not None else "none"
        # issue 17: what a connection does before the HTTP loop: receive a hand-off, or be
        # handed over by a delegating front (workers/delegation.py); None on other listeners
        self.share: Step | None = None
        # issue 17: a delegating front's hand-over at accept time (delegation_inline.py), on
        # its listeners without TLS or a PROXY header; None elsewhere
        self.inline: Inline | None = None
        # issue 14: the PROXY header this listener requires, if any (set by the worker: front.py)
        self.proxy: ProxyFront | None = None
        name, port = self._server_name(listener)
        self.base_environ = dict(base, SERVER_NAME=name, SERVER_PORT=port)
        self.base_environ["wsgi.url_scheme"] = self.scheme

    @staticmethod
    def _server_name(listener: Listener) -> tuple[str, str]:
        if listener.transport == "unix":
            return "localhost", "80"  # replaced per request from Host (request.py)
        addr = listener.sock.getsockname()
        return str(addr[0]), str(addr[1])

    def remote(self, addr: Any) -> tuple[str, str]:
        if self.unix or not isinstance(addr, tuple):
            return "", ""
        return str(addr[0]), str(addr[1])

    def peer(self, addr: Any) -> str:
        host, port = self.remote(addr)
        return f"{host}:{port}" if host else "unix"


class WorkerServer:
    def __init__(self, info: WorkerInfo) -> None:
        s = info.settings
        self.info = info
        self.settings = s
        self.limits = Limits(max_request_line=s.max_request_line_size, max_headers=s.max_request_header_count,
                             max_header_bytes=s.max_request_headers_total_size,
                             max_body=s.max_request_body_size or None)
        self.keep_alive = s.keep_alive
        # whether responses may offer keep-alive: not while draining, not with --keep-alive 0
        self.keep_wish = s.keep_alive > 0
        self.server_header = s.server_header
        self.script_name = os.environ.get("SCRIPT_NAME", "").rstrip("/")
        self.draining = False
        self.connections: set[Connection] = set()
        self.watched: set[Timed] = set()  # what the sweeper times: each connection's transport
        self.sweeper = Sweeper(self.watched, Timeouts.from_settings(s))
        self.shedder = Shedder(info.slot, s.worker_connections)
        self.stopped = gevent.event.Event()
        self.hub = gevent.get_hub()
        self.acceptor = Acceptor(self)
        self.graceful = True
        self.app: Any = None
        self.access_log = AccessLog(s.access_logfile, s.access_logformat) if s.access_logfile else None
        self.acceptors: list[gevent.Greenlet] = []
        self.sockets: list[socket.socket] = []
        self.control: socket.socket | None = None
        self.metrics = instrument.attach(self)
        # HTTP/2's limits (workers/h2proto.py), None when --http-protocols leaves it out
        self.h2limits = _h2limits(s)
        self.metrics.announce(http2=self.h2limits is not None)
        # Whether a request's duration is wanted at all (reading the clock is not free)
        self.timed = self.access_log is not None or self.metrics is not instrument.NULL
        self.requests = 0
        self.request_timeout = s.request_timeout
        # --max-requests (+ jitter): drawn once, whichever application counts the request
        self.recycle_at = s.max_requests + random.randint(0, s.max_requests_jitter)
        self.stage = RequestStage(self)
        # the response cache's fast path for HTTP/1.1 hits (workers/cachefast.py): set in serve()
        # once the app, mounts and hooks are known; None when off
        self.fast: FastHits | None = None
        # WebSocket: every upgraded connection of this worker, its limits and its one timer
        self.websockets = WebSockets(websocket_limits(s), instrument.WebSocketMetrics(self.metrics))

    # --------------------------------------------------------------- startup
    def serve(self) -> int:
        info = self.info
        self._title()
        self._signals()
        stackdump.install(info.slot)
        try:
            # (issue 17: with --mount or --delegate and no APP, the main application is a 404)
            self.app = info.app if info.app is not None else \
                mounts.main_app(self.settings) or apploader.load_app(self.settings)
        except Exception as e:
            log.error("Failed to load the application %s: %s", self.settings.app, e,
                      exc_info=not isinstance(e, apploader.AppImportError))
            return EXIT_APP_IMPORT
        if self.settings.max_requests > 0:
            self.app = self._counted(self.app)
        if self.settings.mount:  # issue 17: each mount's application; one that fails names its mount
            try:
                self.stage.mounts = mounts.build(self.settings, self.app, self._counted)
            except mounts.MountImportError as e:
                mounts.report(e)
                return EXIT_APP_IMPORT
        if info.hooks is not None and not hookpoints.attach(self):  # server hooks (issue 16)
            return EXIT_BOOT
        self.fast = cachefast.attach(self)  # after mounts and hooks: either one turns it off
        if self.fast is not None:
            self.fast.start(self.hub.loop)
        base = self._base_environ()
        shares = steps(self)  # issue 17
        proxy_front = fronts(self.settings)  # issue 14: each listener's PROXY requirement
        for i, lst in enumerate(info.listeners):
            ctx = ListenerContext(lst, base, i, info.tls)
            ctx.share = shares.get(i)
            # a handoff: listener's connections come from a front that already read any PROXY
            # header (a unix socket of our own, never a proxy's)
            ctx.proxy = None if lst.spec.handoff else proxy_front(lst.spec)
            # cleartext HTTP/2 by prior knowledge; never on a handoff: listener, whose
            # connections come from a front that read an HTTP/1.1 head
            ctx.h2c = ctx.ssl is None and self.h2limits is not None and \
                self.settings.http2_cleartext == "prior-knowledge" and not lst.spec.handoff
            if isinstance(ctx.share, Delegator) and ctx.ssl is None and ctx.proxy is None:  # issue 17
                ctx.inline = Inline(ctx.share, ctx)
            # The worker takes its own gevent socket over the inherited descriptor.
            sock = gsocket.socket(lst.sock.family, lst.sock.type, lst.sock.proto, fileno=lst.sock.detach())
            self.sockets.append(sock)
            self.acceptors.append(gevent.spawn(self.acceptor.accept_loop, sock, ctx))
        if info.hooks is not None:
            hookpoints.listening(self)  # worker.sockets for the hooks (issue 16)
        self.sweeper.start()
        self.control = gsocket.socket(fileno=info.control.detach())
        gevent.spawn(self._control_loop)
        self._send(READY)
        gevent.spawn(self._heartbeat_loop)
        if self.settings.reload:
            where = os.path.abspath(self.settings.chdir or os.getcwd())
            gevent.spawn(reloader.watch, self.settings.reload_extra_file, where,
                         lambda: self._send(RELOAD_ME))
        self.stopped.wait()
        return self._finish()

    def _title(self, suffix: str = "") -> None:
        try:
            import setproctitle

            setproctitle.setproctitle(f"greenfork: worker {self.info.slot} [{self.settings.app_label}] "
                                      f"gen {self.info.generation}{suffix}")
        except ImportError:  # pragma: no cover
            pass

    def _counted(self, app: Any) -> Any:
        """--max-requests: count requests; at the limit (+ jitter) ask the master for a
        replacement. This worker serves on until the replacement is ready and it is told to QUIT."""
        limit = self.recycle_at

        def counted(environ: dict[str, Any], start_response: Any) -> Any:
            self.requests += 1
            if self.requests == limit:
                log.info("Worker %d served %d requests (--max-requests); asking for a replacement",
                         self.info.slot, limit)
                self._send(RECYCLE_ME)
            return app(environ, start_response)

        return counted

    def _base_environ(self) -> dict[str, Any]:
        errors = Errors(logging.getLogger("greenfork.app").error)
        return {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": errors,
            "wsgi.multithread": True,  # greenlets run requests concurrently
            "wsgi.multiprocess": self.settings.workers > 1,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
            "SCRIPT_NAME": self.script_name,
            "SERVER_SOFTWARE": server_software(),
            # issue 17: and each --mount's prefix URLs after the listeners' (master/prefixes.py)
            "greenfork.server_addresses": published(self.info.addresses, self.settings.mount),
            "greenfork.worker": self.info.slot,
            "greenfork.generation": self.info.generation,
        }

    def _signals(self) -> None:
        gevent.signal_handler(signal.SIGTERM, self.stop, True)
        gevent.signal_handler(signal.SIGINT, self.stop, False)
        gevent.signal_handler(signal.SIGQUIT, self.stop, False)
        gevent.signal_handler(signal.SIGUSR1, self.reopen)
        # HUP, TTIN and TTOU are the master's; a terminal's group-wide signal must not kill us.
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)

    # ------------------------------------------------------------- connections
    def connection_opened(self, conn: Connection) -> None:
        self.metrics.opened(conn)
        self.connections.add(conn)
        self.watched.add(conn.timed)

    def connection_done(self, conn: Connection) -> None:
        self.metrics.closed(conn)
        self.connections.discard(conn)
        self.watched.discard(conn.timed)
        if self.draining and not self.connections:
            self.stopped.set()

    # ------------------------------------------------------------- control
    def _control_loop(self) -> None:
        assert self.control is not None
        while True:
            try:
                data = self.control.recv(64)
            except OSError:
                data = b""
            if not data:
                if not self.draining:
                    log.warning("The master (pid %d) is gone; draining", self.info.master_pid)
                    self.stop(True)
                return
            if QUIT in data:
                self.stop(True)
            if TERMINATE in data:
                self.stop(False)
            if REOPEN in data:
                self.reopen()

    def _heartbeat_loop(self) -> None:
        # Sent from the hub's own loop: if a greenlet blocks the hub, the beats
        # stop and the master's --timeout check notices.
        timeout = self.settings.timeout
        while True:
            if timeout > 0:
                # the watchdog dumps half a second before the master's --timeout check
                # fires, while this process certainly still exists
                stackdump.arm(max(timeout - 0.5, HEARTBEAT_INTERVAL + 0.25))
            gevent.sleep(HEARTBEAT_INTERVAL)
            self._send(HEARTBEAT)

    def _send(self, message: bytes) -> None:
        try:
            if self.control is not None:
                self.control.sendall(message)
        except OSError:
            pass

    def reopen(self) -> None:
        logs.reopen()
        stackdump.install(self.info.slot)  # the dump must follow the log to its new file
        if self.access_log is not None:
            self.access_log.reopen()

    # -------------------------------------------------------------- stopping
    def stop(self, graceful: bool) -> None:
        if not graceful and self.info.hooks is not None:
            hookpoints.quick_stop(self)  # gunicorn's worker_int (issue 16)
        self.graceful = self.graceful and graceful
        if not graceful:
            self.stopped.set()
        if self.draining:
            return
        self.draining = True
        self.keep_wish = False
        self._title(" (draining)")
        for g in self.acceptors:
            g.kill(block=False)
        for sock in self.sockets:
            sock.close()
        if not self.connections:
            self.stopped.set()
        else:
            for conn in list(self.connections):
                if conn.h2 is not None:  # HTTP/2: GOAWAY in two steps (workers/h2conn.py)
                    conn.h2.go_away()
            self.sweeper.drain(DRAIN_IDLE_GRACE, time.monotonic())
            # WebSocket: each open one gets a 1001 close frame and --websocket-grace to finish
            # its close handshake, then is cut; its connection ends, and with the last one
            # the worker (connection_done). New upgrade requests are answered 503.
            gevent.spawn(self.websockets.going_away, self.settings.websocket_grace)

    def _finish(self) -> int:
        if self.graceful:
            log.info("Worker %d drained, exiting", self.info.slot)
        for h in logging.getLogger("greenfork").handlers:
            h.flush()
        sys.stdout.flush()
        return 0


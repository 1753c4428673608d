"""The master's metrics endpoint: /metrics, /livez, /readyz on --metrics-bind.

Served from the master's own select loop (no threads: the master forks), so
everything here is non-blocking and bounded: at most MAX_CLIENTS connections,
requests of at most MAX_REQUEST bytes, and CLIENT_TIMEOUT seconds per exchange;
one request per connection. It also owns the workers' metrics slots and the
lifecycle counters fed by the OS port's notifications.

A listener bound with ``?proxy-protocol=MODE`` (--metrics-bind) reads a PROXY header first,
from peers in --proxy-allow-from only, so that a load balancer that sends one on its health
checks (HAProxy's check-send-proxy) can ask /readyz; --proxy-protocol does not apply here.
"""

from __future__ import annotations

import gzip
import logging
import resource
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.exposition import choose_encoder, gzip_accepted

from greenfork.master.arbiter import Arbiter
from greenfork.master.listeners import Listener
from greenfork.master.prefixes import Prefix, prefix_urls
from greenfork.master.records import Worker
from greenfork.master.states import State, UpgradeState, WState
from greenfork.metrics import appmetrics
from greenfork.metrics import layout as L
from greenfork.metrics.collector import CacheStats, Collector, Lifecycle, ListenerView, MasterView, WorkerView
from greenfork.metrics.slots import Slot, SlotPool

log = logging.getLogger("greenfork.master")

MAX_CLIENTS = 16
MAX_REQUEST = 8192
CLIENT_TIMEOUT = 10.0
# /readyz answers 503 while every READY worker with a request queue limit has at least this
# share of it queued: a load balancer steers away before the workers start answering 503.
READY_QUEUE_FRACTION = 0.9
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


@dataclass(slots=True)
class _Client:
    sock: socket.socket
    deadline: float
    buf: bytearray
    out: memoryview | None = None
    proxy: Any = None  # a workers.proxyproto.ProxyParser while a PROXY header is awaited


def listener_view(lst: Listener, mounts: Sequence[Prefix] = ()) -> ListenerView:
    """mounts: --mount's prefixes, published as URLs of the listener (issue 17)."""
    urls = tuple(prefix_urls(lst.url, mounts))
    if lst.transport == "unix":
        # the socket's path (handoff:/path, issue 17, is a unix socket too)
        return ListenerView(lst.url, None, lst.url.split("unix:", 1)[-1].removeprefix("handoff:"), "", "unix",
                            urls)
    host, port = lst.sock.getsockname()[:2]
    return ListenerView(lst.url, lst.sock, str(host), str(port), "tcp", urls)


class MetricsService:
    """The master's sources for the front door's families (each optional; also settable later
    on `self.collector.frontdoor`): `certificates` returns (server_name, notAfter as Unix time)
    for every certificate served; `cache_stats` returns the shared response cache's
    CacheStats; `delegation_targets` are the --delegate prefixes, as workers report them."""

    def __init__(self, listeners: list[Listener], served: list[Listener], arbiter: Callable[[], Arbiter],
                 *, app_dir: str | None = None,
                 certificates: Callable[[], Iterable[tuple[str, float]]] | None = None,
                 cache_stats: Callable[[], CacheStats] | None = None,
                 delegation_targets: Sequence[str] = (), mounts: Sequence[Prefix] = ()) -> None:
        self.listeners = listeners
        self.arbiter = arbiter
        self.app_dir = app_dir
        self.pool = SlotPool(len(served))
        self.lifecycle = Lifecycle()
        self.by_pid: dict[int, Slot] = {}
        self.collector = Collector(self.pool, [listener_view(x, mounts) for x in served], self.lifecycle,
                                   self._view, app_dir=app_dir, certificates=certificates,
                                   cache_stats=cache_stats, delegation_targets=delegation_targets)
        self.clients: dict[int, _Client] = {}
        self._trust: tuple[str, Any] | None = None  # --proxy-allow-from, parsed
        if app_dir:
            log.info("Application metrics directory: %s", app_dir)
        for lst in listeners:
            lst.sock.setblocking(False)

    @property
    def url(self) -> str:
        return self.listeners[0].url

    # ---------------------------------------------------------- slots
    def acquire(self, worker: Worker) -> Slot:
        return self.pool.acquire(worker.generation, time.time())

    def assign(self, slot: Slot, pid: int) -> None:
        self.pool.assign(slot, pid)
        self.by_pid[pid] = slot

    def release(self, slot: Slot) -> None:
        """A fork that failed: the slot was never held."""
        self.pool.release(slot)

    def reaped(self, pid: int, cpu_seconds: float) -> None:
        slot = self.by_pid.pop(pid, None)
        if slot is None:
            return
        self.pool.release(slot, cpu_seconds)
        if self.app_dir:
            appmetrics.slot_gone(self.app_dir, slot.index)

    def child_cleanup(self) -> None:
        """In a forked worker: the metrics listener and clients are the master's."""
        for lst in self.listeners:
            lst.sock.close()
        for c in self.clients.values():
            c.sock.close()
        self.clients.clear()

    def _view(self) -> MasterView:
        arb = self.arbiter()
        now = time.monotonic()
        by_state = {s.value: 0 for s in (WState.BOOTING, WState.READY, WState.DRAINING)}
        workers = []
        for w in arb.workers.values():
            if w.state.value in by_state:
                by_state[w.state.value] += 1
            slot = self.by_pid.get(w.pid)
            if slot is not None:
                workers.append(WorkerView(slot.index, w.pid, now - w.heartbeat, slot.mv[L.H_START]))
        return MasterView(workers, by_state, arb.settings.workers)

    def ready(self) -> bool:
        arb = self.arbiter()
        if arb.upgrade.state is UpgradeState.READY:
            return True  # the new master of an upgrade serves this address (see MasterLoop._answers_metrics)
        # RELOADING: the current generation serves while the new one boots (a health check that
        # failed there would take a load balancer's server out on every HUP)
        return arb.state in (State.STARTING, State.RUNNING, State.RELOADING) and any(
            w.state == WState.READY for w in arb.workers.values()) and not self.saturated()

    def saturated(self) -> bool:
        """Every READY worker that has a request queue limit is nearly at it."""
        queues = []
        for w in self.arbiter().workers.values():
            slot = self.by_pid.get(w.pid)
            if w.state == WState.READY and slot is not None and slot.mv[L.H_QUEUE_LIMIT] > 0:
                queues.append((slot.mv[L.H_QUEUED], slot.mv[L.H_QUEUE_LIMIT]))
        return bool(queues) and all(n >= READY_QUEUE_FRACTION * limit for n, limit in queues)

    # ---------------------------------------------------------- serving
    def fds(self) -> tuple[list[int], list[int]]:
        """What the loop's select() should wait on for us: (readable, writable)."""
        r = [fd for fd, c in self.clients.items() if c.out is None]
        w = [fd for fd, c in self.clients.items() if c.out is not None]
        if len(self.clients) < MAX_CLIENTS:  # at the limit, new ones wait in the kernel queue
            r += [lst.sock.fileno() for lst in self.listeners]
        return r, w

    def serve(self, readable: list[int], writable: list[int]) -> None:
        """One non-blocking step; never raises into the master loop."""
        try:
            for lst in self.listeners:
                if lst.sock.fileno() in readable:
                    self._accept(lst.sock, lst.spec.proxy_protocol)
            for fd in readable:
                c = self.clients.get(fd)
                if c is not None and c.out is None:
                    self._read(fd, c)
            for fd in writable:
                c = self.clients.get(fd)
                if c is not None and c.out is not None:
                    self._write(fd, c)
            now = time.monotonic()
            for fd, c in list(self.clients.items()):
                if now > c.deadline:
                    self._close(fd)
        except Exception:
            log.exception("metrics endpoint error")

    def _accept(self, sock: socket.socket, proxy_mode: str | None = None) -> None:
        while len(self.clients) < MAX_CLIENTS:
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: try again next turn
                log.warning("metrics endpoint: accept failed: %s", e.strerror)
                return
            conn.setblocking(False)
            client = _Client(conn, time.monotonic() + CLIENT_TIMEOUT, bytearray())
            if proxy_mode is not None and proxy_mode != "off":
                client.proxy = self._proxy_parser(conn, addr, proxy_mode)
                if client.proxy is None:
                    continue
            self.clients[conn.fileno()] = client

    def _proxy_parser(self, conn: socket.socket, addr: Any, mode: str) -> Any:
        """A PROXY header parser for a client of a PROXY metrics listener; None (and the
        connection closed) when the peer may not send one."""
        from greenfork.master.trust import TrustList
        from greenfork.workers.proxyproto import ProxyParser

        spec = self.arbiter().settings.proxy_allow_from  # reloadable: read on each accept
        if self._trust is None or self._trust[0] != spec:
            self._trust = (spec, TrustList(spec))
        peer = str(addr[0]) if isinstance(addr, tuple) else ""
        if not self._trust[1].trusts(peer):
            log.debug("metrics endpoint: closed a connection from %s: not in --proxy-allow-from",
                      peer or "a unix socket")
            conn.close()
            return None
        return ProxyParser(mode)

    def _read(self, fd: int, c: _Client) -> None:
        try:
            data = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(fd)
            return
        if c.proxy is not None:
            data = self._after_proxy_header(fd, c, data)
            if not data:
                return
        c.buf += data
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(c.buf) > MAX_REQUEST:
                self._respond(fd, c, 431, b"request too large\n")
            return
        if end > MAX_REQUEST:
            self._respond(fd, c, 431, b"request too large\n")
            return
        self._dispatch(fd, c, bytes(c.buf[:end]))

    def _after_proxy_header(self, fd: int, c: _Client, data: bytes) -> bytes:
        """Feed the PROXY header parser; the bytes after a complete header (b"" while it is
        incomplete, or when the connection was closed for a bad one)."""
        from greenfork.workers.proxyproto import ProxyProtocolError

        try:
            header = c.proxy.feed(data)
        except ProxyProtocolError as e:
            log.debug("metrics endpoint: closed a connection: %s", e.detail)
            self._close(fd)
            return b""
        if header is None:
            return b""
        rest: bytes = c.proxy.rest
        c.proxy = None
        return rest

    def _dispatch(self, fd: int, c: _Client, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._respond(fd, c, 400, b"bad request\n")
            return
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/livez", "/readyz"):
            self._respond(fd, c, 404, b"not found\n")
        elif method != "GET":
            self._respond(fd, c, 405, b"method not allowed\n", extra=[("Allow", "GET")])
        elif path == "/livez":
            self._respond(fd, c, 200, b"ok\n")
        elif path == "/readyz":
            ok = self.ready()
            self._respond(fd, c, 200 if ok else 503, b"ready\n" if ok else b"not ready\n")
        else:
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            body = encoder(self.collector)
            self._respond(fd, c, 200, body, content_type=content_type,
                          gzipped=gzip_accepted(headers.get("accept-encoding", "")))

    def _respond(self, fd: int, c: _Client, status: int, body: bytes, *,
                 content_type: str = "text/plain; charset=utf-8", gzipped: bool = False,
                 extra: list[tuple[str, str]] | None = None) -> None:
        headers = [("Content-Type", content_type), *(extra or [])]
        if gzipped:
            body = gzip.compress(body, compresslevel=6)
            headers.append(("Content-Encoding", "gzip"))
        headers += [("Content-Length", str(len(body))), ("Connection", "close")]
        head = f"HTTP/1.1 {status} {_REASONS[status]}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        c.out = memoryview(head.encode("latin-1") + b"\r\n" + body)
        self._write(fd, c)

    def _write(self, fd: int, c: _Client) -> None:
        assert c.out is not None
        try:
            sent = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(fd)
            return
        c.out = c.out[sent:]
        if not len(c.out):
            self._close(fd)

    def _close(self, fd: int) -> None:
        c = self.clients.pop(fd, None)
        if c is not None:
            c.sock.close()

    def close(self) -> None:
        for fd in list(self.clients):
            self._close(fd)
        self.pool.close()
        if self.app_dir:
            appmetrics.remove_dir(self.app_dir)


def cpu_of(rusage: resource.struct_rusage) -> float:
    return float(rusage.ru_utime + rusage.ru_stime)

"""The catalogue of METRICS.md as prometheus_client metric families.

A custom Collector: exported value = what reaped workers left (Retired) + what
live slots hold now, plus the master's own view (worker states, lifecycle
counters, /proc, TCP_INFO). The master hands its state in as plain records so
this package imports neither the master nor the workers.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from greenfork.metrics import layout as L
from greenfork.metrics import procfs
from greenfork.metrics.frontdoor import CacheStats, FrontDoor
from greenfork.metrics.render import LISTENER_LABELS, Listeners, ListenerView, group
from greenfork.metrics.slots import SlotPool, Totals, add_cell, requests_in, totals

__all__ = ["CacheStats", "Collector", "Lifecycle", "ListenerView", "MasterView", "WorkerView"]

EXIT_REASONS = ("reload", "max_requests", "max_lifetime", "max_memory", "timeout", "crashed", "killed",
                "boot_failed", "scale_down", "shutdown")
WORKER_STATES = ("booting", "ready", "draining")


@dataclass
class WorkerView:
    index: int  # metrics slot: the `worker` label
    pid: int
    heartbeat_age: float
    start_time: float  # wall clock


@dataclass
class MasterView:
    workers: list[WorkerView]
    by_state: dict[str, int]
    configured: int


@dataclass
class Lifecycle:
    """Counters the master bumps from the arbiter's notifications."""

    spawns: float = 0.0
    exits: dict[str, float] = field(default_factory=lambda: dict.fromkeys(EXIT_REASONS, 0.0))
    reloads: dict[str, float] = field(default_factory=lambda: {"success": 0.0, "failure": 0.0})
    # The configuration loaded at start counts as the first successful load (as in Prometheus).
    last_reload_ok: bool = True
    last_reload_time: float = field(default_factory=time.time)
    last_success_time: float = 0.0

    def __post_init__(self) -> None:
        self.last_success_time = self.last_success_time or self.last_reload_time

    def exited(self, reason: str) -> None:
        self.exits[reason] = self.exits.get(reason, 0.0) + 1

    def reloaded(self, ok: bool) -> None:
        now = time.time()
        self.reloads["success" if ok else "failure"] += 1
        self.last_reload_ok = ok
        self.last_reload_time = now
        if ok:
            self.last_success_time = now


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # pragma: no cover - a declared dependency
        return "unknown"


class Collector:
    """`certificates`, `cache_stats` and `delegation_targets` are the master's own sources
    for the front door's families (frontdoor.py); each may also be set later as an attribute
    of `self.frontdoor`."""

    def __init__(self, pool: SlotPool, listeners: list[ListenerView], lifecycle: Lifecycle,
                 view: Callable[[], MasterView], app_dir: str | None = None, *,
                 certificates: Callable[[], Iterable[tuple[str, float]]] | None = None,
                 cache_stats: Callable[[], CacheStats] | None = None,
                 delegation_targets: Sequence[str] = ()) -> None:
        self.pool = pool
        self.listeners = listeners
        self.lst = Listeners(listeners)
        self.frontdoor = FrontDoor(pool, self.lst, certificates=certificates, cache_stats=cache_stats,
                                   delegation_targets=delegation_targets)
        self.lifecycle = lifecycle
        self.view = view
        self.app_dir = app_dir
        self.smaps = procfs.SmapsCache()
        self.process = ProcessCollector(registry=None)
        self.build = {"version": _version("greenfork"), "python_version": platform.python_version(),
                      "gevent_version": _version("gevent")}  # metadata only: the master never imports gevent

    def collect(self) -> Iterator[Metric]:
        view = self.view()
        t = totals(self.pool)
        yield from self._http(t)
        yield from self._listeners(t)
        yield from self.frontdoor.collect(t)
        yield from self._workers(view, t)
        yield from self.process.collect()
        yield from self._app()

    # ---------------------------------------------------------------- HTTP
    def _http(self, t: Totals) -> Iterator[Metric]:
        h = Metric("http_server_request_duration_seconds",
                   "Duration of HTTP server requests: request line parsed to response complete.",
                   "histogram")
        groups: dict[tuple[tuple[str, str], ...], list[float]] = {}
        routes = self.pool.routes
        for key, values in t.cells.items():
            family, _lst, method, status, scheme, version, err, _tls, route = L.unpack(key)
            if family != L.FAMILY_REQUEST:
                continue
            labels = {"http_request_method": L.METHODS[method]}
            if status != L.STATUS_NONE:
                labels["http_response_status_code"] = L.OTHER if status == L.STATUS_OTHER else str(status)
            labels["url_scheme"] = L.SCHEMES[scheme]
            labels["network_protocol_version"] = L.VERSIONS[version]
            if route:
                labels["http_route"] = routes.name(route)
            if err:
                labels["error_type"] = L.ERROR_TYPES[err]
            add_cell(groups, tuple(labels.items()), values)  # type: ignore[arg-type]
        yield group(h, groups, L.REQUEST_BUCKETS)
        active: dict[tuple[int, int], float] = {}
        for slot, _pid in t.live:
            base = slot.layout.active_requests
            n = len(L.SCHEMES)
            for i, v in enumerate(slot.mv[base:base + len(L.METHODS) * n].tolist()):
                if v:
                    active[divmod(i, n)] = active.get(divmod(i, n), 0.0) + v
        g = GaugeMetricFamily("http_server_active_requests", "HTTP requests in flight (sampled every second "
                              "by each worker).", labels=["http_request_method", "url_scheme"])
        schemes = {L.SCHEME_INDEX["http"]} | {s for _m, s in active}
        for m, s in sorted(set(active) | {(L.METHOD_INDEX["GET"], s) for s in schemes}):
            g.add_metric([L.METHODS[m], L.SCHEMES[s]], active.get((m, s), 0.0))
        yield g

    # ----------------------------------------------------------- listeners
    def _listeners(self, t: Totals) -> Iterator[Metric]:
        names = list(LISTENER_LABELS)
        fams = [
            (GaugeMetricFamily, "greenfork_active_connections", "Open client connections.", L.L_ACTIVE),
            (GaugeMetricFamily, "greenfork_keepalive_connections",
             "Connections idle between requests (sampled every second by each worker).", L.L_KEEPALIVE),
            (CounterMetricFamily, "greenfork_connections_accepted", "Accepted connections.", L.L_ACCEPTED),
            (CounterMetricFamily, "greenfork_rejected_connections",
             "Connections closed unserved at the connection limit.", L.L_REJECTED),
            (CounterMetricFamily, "greenfork_received_bytes", "Bytes received from clients.", L.L_RX),
            (CounterMetricFamily, "greenfork_sent_bytes", "Bytes sent to clients.", L.L_TX),
        ]
        for cls, name, doc, f in fams:
            fam = cls(name, doc, labels=names)
            for lv, fields in self.lst.rows(t.listeners, lambda _i, _fields: True):
                fam.add_metric(lv, max(0.0, fields[f]))
            yield fam
        qlen = GaugeMetricFamily("greenfork_listen_queue_length",
                                 "Connections waiting in the kernel's accept queue.", labels=names)
        qlim = GaugeMetricFamily("greenfork_listen_queue_limit", "Limit of the kernel's accept queue.",
                                 labels=names)
        for lst in self.listeners:
            q = procfs.listen_queue(lst.sock) if lst.sock is not None else None
            if q is not None:
                qlen.add_metric([lst.labels[k] for k in names], q[0])
                qlim.add_metric([lst.labels[k] for k in names], q[1])
        yield qlen
        yield qlim
        info = InfoMetricFamily("greenfork_listener", "A bound address (the addresses feature).",
                                labels=names)
        for lst in self.listeners:
            for url in (lst.url, *lst.prefixes):  # issue 17: a mount's prefixes are its addresses too
                info.add_metric([lst.labels[k] for k in names], {"url": url})
        yield info
        h = Metric("greenfork_connection_duration_seconds", "Client connection lifetime.", "histogram")
        groups: dict[tuple[tuple[str, str], ...], list[float]] = {}
        for key, values in t.cells.items():
            family, li, _m, _s, _sc, version, err, _tls, _route = L.unpack(key)
            if family != L.FAMILY_CONNECTION:
                continue
            labels = self.lst.labels(li)
            if version:
                labels["network_protocol_version"] = L.VERSIONS[version]
            if err:
                labels["error_type"] = L.ERROR_TYPES[err]
            add_cell(groups, tuple(labels.items()), values)  # type: ignore[arg-type]
        yield group(h, groups, L.CONNECTION_BUCKETS)

    # ------------------------------------------------------------- workers
    def _workers(self, view: MasterView, t: Totals) -> Iterator[Metric]:
        lc, retired = self.lifecycle, self.pool.retired
        g = GaugeMetricFamily("greenfork_workers", "Worker processes by state.", labels=["state"])
        for state in WORKER_STATES:
            g.add_metric([state], view.by_state.get(state, 0))
        yield g
        yield GaugeMetricFamily("greenfork_workers_configured", "Target worker count.", value=view.configured)
        yield CounterMetricFamily("greenfork_worker_spawns", "Workers forked.", value=lc.spawns)
        c = CounterMetricFamily("greenfork_worker_exits", "Worker exits by reason.", labels=["reason"])
        for reason, n in lc.exits.items():
            c.add_metric([reason], n)
        yield c
        c = CounterMetricFamily("greenfork_reloads", "Reload attempts (HUP) by result.", labels=["result"])
        for result, n in lc.reloads.items():
            c.add_metric([result], n)
        yield c
        yield GaugeMetricFamily("greenfork_last_reload_successful",
                                "Whether the last reload succeeded (1) or failed (0).",
                                value=1.0 if lc.last_reload_ok else 0.0)
        yield GaugeMetricFamily("greenfork_last_reload_timestamp_seconds",
                                "Time of the last reload attempt (the start, before any).",
                                value=lc.last_reload_time)
        yield GaugeMetricFamily("greenfork_last_reload_success_timestamp_seconds",
                                "Time of the last successful reload (the start, before any).",
                                value=lc.last_success_time)
        # Per slot: counters include every holder the slot ever had.
        requests = dict(retired.requests)
        for idx, cs in t.slot_cells.items():
            requests[idx] = requests.get(idx, 0.0) + requests_in(cs)
        cpu = dict(retired.cpu)
        rss, pss, uss, fds, hb, start = ([] for _ in range(6))
        pids = set()
        for w in sorted(view.workers, key=lambda w: w.index):
            label = [str(w.index)]
            pids.add(w.pid)
            used = procfs.cpu_seconds(w.pid)
            cpu[w.index] = cpu.get(w.index, 0.0) + (used or 0.0)
            hb.append((label, max(0.0, w.heartbeat_age)))
            start.append((label, w.start_time))
            r = procfs.rss_bytes(w.pid)
            if r is not None:
                rss.append((label, r))
            sm = self.smaps.get(w.pid)
            if sm is not None:
                pss.append((label, sm[0]))
                uss.append((label, sm[1]))
            f = procfs.open_fds(w.pid)
            if f is not None:
                fds.append((label, f))
        self.smaps.forget_except(pids)
        c = CounterMetricFamily("greenfork_worker_requests", "Requests served by all holders of the slot.",
                                labels=["worker"])
        for idx in sorted(requests):
            c.add_metric([str(idx)], requests[idx])
        yield c
        for name, doc, samples in (
            ("greenfork_worker_heartbeat_age_seconds", "Seconds since the worker's hub last reported.", hb),
            ("greenfork_worker_start_time_seconds", "Start time of the slot's current process.", start),
            ("greenfork_worker_resident_memory_bytes", "Resident set size (RSS).", rss),
            ("greenfork_worker_proportional_memory_bytes",
             "Proportional set size (PSS; refreshed at most every 15 s).", pss),
            ("greenfork_worker_unique_memory_bytes",
             "Unique set size (USS: private memory, freed when the worker exits; refreshed at most "
             "every 15 s).", uss),
            ("greenfork_worker_open_fds", "Open file descriptors.", fds),
        ):
            g = GaugeMetricFamily(name, doc, labels=["worker"])
            for label, v in samples:
                g.add_metric(label, v)
            yield g
        c = CounterMetricFamily("greenfork_worker_cpu_seconds", "CPU time (user + system) of all holders "
                                "of the slot.", labels=["worker"])
        for idx in sorted(cpu):
            c.add_metric([str(idx)], cpu[idx])
        yield c
        yield InfoMetricFamily("greenfork_build", "Versions greenfork runs with.", value=self.build)
        c = CounterMetricFamily("greenfork_metrics_label_overflow", "Observations folded into _OTHER "
                                "because a worker's table of label sets (or of one label's values, "
                                "`label`) was full.", labels=["metric"])
        for metric, f in (("http_server_request_duration_seconds", L.H_OVERFLOW_REQ),
                          ("greenfork_connection_duration_seconds", L.H_OVERFLOW_CONN),
                          ("greenfork_tls_handshake_duration_seconds", L.H_OVERFLOW_TLS)):
            c.add_metric([metric], t.header[f])
        for metric, name, f in (("http_server_request_duration_seconds", "http_route", L.H_OVERFLOW_ROUTE),
                                ("greenfork_delegated_connections_total", "target", L.H_OVERFLOW_TARGET)):
            c.add_sample(c.name + "_total", {"metric": metric, "label": name}, t.header[f])
        yield c

    # ---------------------------------------------------------------- apps
    def _app(self) -> Iterator[Metric]:
        if not self.app_dir:
            return
        from prometheus_client.multiprocess import MultiProcessCollector

        yield from MultiProcessCollector(None, path=self.app_dir).collect()  # type: ignore[no-untyped-call]


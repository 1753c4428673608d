"""The front door's families: TLS, HTTP/2, WebSocket, the response cache, delegation and
the request queue.

Workers feed most of them through their slots (recorder.py); the master feeds the rest
from sources it owns and passes in as callables: its certificates (expiry) and the shared
response cache (stores, evictions, bytes). A family with nothing to show is left out of
the scrape; series that an operator's rate() or alert needs from the start are shown
from zero once the feature is on (a TLS listener, a worker that announced HTTP/2 or
WebSocket, a configured cache or delegation target).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from greenfork.metrics import layout as L
from greenfork.metrics.render import LISTENER_LABELS, Listeners, group
from greenfork.metrics.slots import SlotPool, Totals, add_cell

log = logging.getLogger("greenfork.master.metrics")
T = TypeVar("T")


class CacheStats(NamedTuple):
    """What the shared response cache reports (a plain tuple in this order will do)."""

    stores: float  # entries written, since the cache was created
    evictions: float  # entries removed to make room (not expiries)
    bytes: float  # bytes held now
    capacity: float | None = None  # the configured size (--response-cache), if known
    entries: float | None = None  # entries held now, if known


class _Monotonic:
    """Counters read from a source that may start again from zero (a store created anew):
    a value lower than the last one is a restart, and the last one becomes the base."""

    def __init__(self, n: int) -> None:
        self.last = [0.0] * n
        self.base = [0.0] * n

    def update(self, values: Sequence[float]) -> list[float]:
        for i, v in enumerate(values):
            if v < self.last[i]:
                self.base[i] += self.last[i]
            self.last[i] = float(v)
        return self.current()

    def current(self) -> list[float]:
        return [b + v for b, v in zip(self.base, self.last, strict=True)]


class FrontDoor:
    def __init__(self, pool: SlotPool, listeners: Listeners, *,
                 certificates: Callable[[], Iterable[tuple[str, float]]] | None = None,
                 cache_stats: Callable[[], CacheStats] | None = None,
                 delegation_targets: Sequence[str] = ()) -> None:
        self.pool = pool
        self.lst = listeners
        # (server_name, notAfter as a Unix time) of every certificate the master serves
        self.certificates = certificates
        self.cache_stats = cache_stats
        # the prefixes of --delegate, exactly as workers pass them to Recorder.delegated
        self.delegation_targets = tuple(delegation_targets)
        self._cache = _Monotonic(2)
        self._failing: set[str] = set()

    def collect(self, t: Totals) -> Iterator[Metric]:
        for fam in (*self._tls(t), *self._http2(t), *self._websocket(t), *self._cache_families(t),
                    self._delegation(t), *self._queue(t)):
            if fam.samples:
                yield fam

    # ----------------------------------------------------------------- TLS
    def _tls(self, t: Totals) -> Iterator[Metric]:
        h = Metric("greenfork_tls_handshake_duration_seconds",
                   "TLS handshake duration, by result (error_type on failure).", "histogram")
        groups: dict[tuple[tuple[str, str], ...], list[float]] = {}
        for key, values in t.cells.items():
            family, li, _m, _s, _sc, _v, err, tls, _r = L.unpack(key)
            if family != L.FAMILY_TLS:
                continue
            labels = self.lst.labels(li)
            if tls:
                labels["tls_protocol_version"] = L.TLS_VERSIONS[tls]
            if err:
                labels["error_type"] = L.ERROR_TYPES[err]
            add_cell(groups, tuple(labels.items()), values)  # type: ignore[arg-type]
        yield group(h, groups, L.TLS_BUCKETS)
        g = GaugeMetricFamily("greenfork_active_tls_handshakes", "TLS handshakes in progress.",
                              labels=list(LISTENER_LABELS))
        for lv, fields in self.lst.rows(
                t.listeners, lambda i, f: self.lst.views[i].tls or bool(f[L.L_TLS_ACTIVE])):
            g.add_metric(lv, max(0.0, fields[L.L_TLS_ACTIVE]))
        yield g
        certificates = self.certificates
        if certificates is not None:
            g = GaugeMetricFamily("greenfork_tls_certificate_expiry_timestamp_seconds",
                                  "When the certificate served for a server name expires (notAfter, "
                                  "Unix time; the earliest if several).", labels=["server_name"])
            expiry: dict[str, float] = {}
            for name, not_after in self._source("certificates", lambda: list(certificates())) or ():
                name = name or "_default"
                expiry[name] = min(expiry.get(name, float("inf")), float(not_after))
            for name in sorted(expiry):
                g.add_metric([name], expiry[name])
            yield g

    # -------------------------------------------------------------- HTTP/2
    def _http2(self, t: Totals) -> Iterator[Metric]:
        on = bool(t.features & L.F_HTTP2)
        active = GaugeMetricFamily("greenfork_active_http2_streams",
                                   "HTTP/2 streams open (their requests in flight).",
                                   labels=list(LISTENER_LABELS))
        streams = Metric("greenfork_http2_streams", "HTTP/2 streams ended, with error_type when they "
                         "did not complete.", "counter")
        first, end = L.L_H2_STREAMS, L.L_H2_STREAMS + len(L.ERROR_TYPES)
        for labels, fields in self.lst.rows(
                t.listeners, lambda _i, f: on or bool(f[L.L_H2_ACTIVE]) or any(f[first:end])):
            active.add_metric(labels, max(0.0, fields[L.L_H2_ACTIVE]))
            base = dict(zip(LISTENER_LABELS, labels, strict=True))
            for e in range(len(L.ERROR_TYPES)):
                v = fields[first + e]
                if v or e == 0:
                    extra = {"error_type": L.ERROR_TYPES[e]} if e else {}
                    streams.add_sample("greenfork_http2_streams_total", {**base, **extra}, v)
        yield active
        yield streams

    # ----------------------------------------------------------- WebSocket
    def _websocket(self, t: Totals) -> Iterator[Metric]:
        hd = t.header
        msgs = (hd[L.H_WS_MSG_RX], hd[L.H_WS_MSG_TX])
        nbytes = (hd[L.H_WS_BYTES_RX], hd[L.H_WS_BYTES_TX])
        on = bool(t.features & L.F_WEBSOCKET) or any((*msgs, *nbytes, *t.ws_closes, hd[L.H_WS_ACTIVE]))
        g = GaugeMetricFamily("greenfork_active_websockets", "Open WebSocket connections.", labels=[])
        m = CounterMetricFamily("greenfork_websocket_messages", "WebSocket messages, by direction.",
                                labels=["direction"])
        b = CounterMetricFamily("greenfork_websocket_bytes", "WebSocket message payload bytes (after "
                                "decompression), by direction.", labels=["direction"])
        if on:
            g.add_metric([], max(0.0, hd[L.H_WS_ACTIVE]))
            for d, nm, nb in zip(L.WS_DIRECTIONS, msgs, nbytes, strict=True):
                m.add_metric([d], nm)
                b.add_metric([d], nb)
        c = CounterMetricFamily("greenfork_websocket_closes", "WebSockets closed, by close code (1006: "
                                "ended without a closing handshake).", labels=["code"])
        for i, v in enumerate(t.ws_closes):
            if v:
                c.add_metric([L.WS_CODES[i]], v)
        yield from (g, m, b, c)

    # ------------------------------------------------------ response cache
    def _cache_families(self, t: Totals) -> Iterator[Metric]:
        results = t.header[L.H_CACHE:L.H_CACHE + len(L.CACHE_RESULTS)]
        c = CounterMetricFamily("greenfork_response_cache_requests", "Requests looked up in the shared "
                                "response cache, by result (bypass: not cacheable).", labels=["result"])
        if self.cache_stats is not None or any(results):
            for r, v in zip(L.CACHE_RESULTS, results, strict=True):
                c.add_metric([r], v)
        yield c
        if self.cache_stats is None:
            return
        raw = self._source("cache_stats", self.cache_stats)
        stats = CacheStats(*raw) if raw is not None else None
        stores, evictions = self._cache.update(stats[:2]) if stats is not None else self._cache.current()
        yield CounterMetricFamily("greenfork_response_cache_stores", "Responses stored in the shared "
                                  "response cache.", value=stores)
        yield CounterMetricFamily("greenfork_response_cache_evictions", "Entries evicted from the shared "
                                  "response cache to make room.", value=evictions)
        if stats is None:
            return  # the gauges are left out rather than shown stale
        yield GaugeMetricFamily("greenfork_response_cache_bytes", "Bytes held by the shared response "
                                "cache.", value=stats.bytes)
        if stats.capacity is not None:
            yield GaugeMetricFamily("greenfork_response_cache_capacity_bytes", "Size of the shared "
                                    "response cache (--response-cache).", value=stats.capacity)
        if stats.entries is not None:
            yield GaugeMetricFamily("greenfork_response_cache_entries", "Entries held by the shared "
                                    "response cache.", value=stats.entries)

    # ---------------------------------------------------------- delegation
    def _delegation(self, t: Totals) -> Metric:
        names = self.pool.targets
        rows = dict(t.delegations)
        for target in self.delegation_targets:
            gid = names.id(target)
            for r in range(len(L.DELEGATION_RESULTS)):
                rows.setdefault((gid, r), 0.0)
        c = CounterMetricFamily("greenfork_delegated_connections", "Connections handed to another "
                                "server (--delegate), by target prefix and result.",
                                labels=["target", "result"])
        for (gid, r), v in sorted(rows.items(), key=lambda kv: (names.name(kv[0][0]), kv[0][1])):
            c.add_metric([names.name(gid), L.DELEGATION_RESULTS[r]], v)
        return c

    # ------------------------------------------------------- request queue
    def _queue(self, t: Totals) -> Iterator[Metric]:
        q = GaugeMetricFamily("greenfork_queued_requests", "Requests in flight in the worker, which "
                              "--max-queued-requests limits.", labels=["worker"])
        lim = GaugeMetricFamily("greenfork_queued_requests_limit", "The worker's request queue limit; "
                                "past it requests are answered 503 (error_type request_queue_full).",
                                labels=["worker"])
        for slot, _pid in t.live:
            n, limit = slot.mv[L.H_QUEUED], slot.mv[L.H_QUEUE_LIMIT]
            if n or limit:
                q.add_metric([str(slot.index)], max(0.0, n))
                lim.add_metric([str(slot.index)], limit)
        yield q
        yield lim

    def _source(self, name: str, fn: Callable[[], T]) -> T | None:
        """A master-side source; one that raises costs its samples, not the scrape (logged when
        it starts failing, and when it recovers)."""
        try:
            value = fn()
        except Exception:
            if name not in self._failing:
                log.exception("metrics: the %s source failed; its samples are left out", name)
                self._failing.add(name)
            return None
        if name in self._failing:
            self._failing.discard(name)
            log.info("metrics: the %s source works again", name)
        return value

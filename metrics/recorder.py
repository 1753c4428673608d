"""The worker's side of a metrics slot: plain stores into shared memory.

No locks (one writer per slot), no syscalls, no allocation once a label set has
its cell: a dict lookup, a bisect and a few float adds per request. Every hook
here is what a producer calls; label values outside the closed sets of layout.py
become `_OTHER`, never an error.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Literal

from greenfork.metrics import layout as L
from greenfork.metrics.slots import ROUTE_TABLE, TARGET_TABLE, Slot

# raw label values of a request: method, status, scheme, version, error type[, route]
_RawKey = tuple[str, int, str, str, str] | tuple[str, int, str, str, str, str]
_ConnKey = tuple[int, str, str]  # listener, version, error type
_TlsKey = tuple[int, str, str]  # listener, TLS version, error type
CacheResult = Literal["hit", "miss", "bypass"]
DelegationResult = Literal["success", "unavailable", "busy", "failed"]


class Recorder:
    __slots__ = ("_by_key", "_conn_cells", "_lay", "_lb", "_req_cells", "_routes", "_targets", "_tls_cells",
                 "mv", "slot")

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.mv = slot.mv
        self._lay = slot.layout
        # listener index -> offset of its block (indexes the layout was not made for share the
        # last block): a tuple index per hook instead of a call
        self._lb = tuple(self._lay.listener(i) for i in range(L.LISTENER_OTHER + 1))
        # raw label values -> offset of the cell's first bucket (workers/instrument.py
        # inlines the lookup in its per-request hook)
        self._req_cells: dict[_RawKey, int] = {}
        self._conn_cells: dict[_ConnKey, int] = {}
        self._tls_cells: dict[_TlsKey, int] = {}
        self._by_key: dict[int, int] = {}  # cell key -> offset of its first bucket
        self._routes: dict[str, int] = {}  # route -> route field of the cell key (2..)
        self._targets: dict[str, int] = {}  # target -> row of the delegation table (1..)
        self._adopt()

    # ------------------------------------------------------------- hot path
    def observe(self, method: str, status: int, scheme: str, version: str, err: str, duration: float,
                route: str = "") -> None:
        raw = (method, status, scheme, version, err, route)  # no listener labels on this histogram
        b = self._req_cells.get(raw)
        if b is None:
            b = self.request_cell(raw)
        mv = self.mv
        mv[b + bisect_left(L.REQUEST_BUCKETS, duration)] += 1.0
        mv[b + L.NBUCKETS] += duration

    def request_cell(self, raw: _RawKey) -> int:
        """The slow path of a label set seen for the first time. `raw` is (method, status,
        scheme, version, error type) or the same with the route (`http_route`; "" for none)."""
        method, status, scheme, version, err = raw[:5]
        route = raw[5] if len(raw) == 6 else ""
        cache: dict[_RawKey, int] | None = self._req_cells
        if method not in L.METHOD_INDEX:
            # A client's made-up methods share the _OTHER cell and are not cached one by one.
            raw = (L.OTHER, *raw[1:])
            b = self._req_cells.get(raw)
            if b is not None:
                return b
        r = L.ROUTE_NONE
        if route:
            r = self._routes.get(route) or self._name(self._routes, ROUTE_TABLE, route, 2, L.ROUTE_OTHER)
            if r == L.ROUTE_OTHER:
                cache = None  # every observation of a route that did not fit is counted (and not kept)
        key = L.pack(L.FAMILY_REQUEST, 0, L.index_of(L.METHOD_INDEX, raw[0]), L.status_code(status),
                     L.index_of(L.SCHEME_INDEX, scheme), L.index_of(L.VERSION_INDEX, version),
                     L.error_index(err), 0, r)
        b = self._cell(cache, raw, key, L.FAMILY_REQUEST)
        if r == L.ROUTE_OTHER and b != self._lay.cell(L.FAMILY_REQUEST) + 1:
            self.mv[L.H_OVERFLOW_ROUTE] += 1.0  # (in the overflow cell it counts as that overflow)
        return b

    # --------------------------------------------------------- connections
    def transferred(self, listener: int, rx: int, tx: int) -> None:
        lb = self._lb[listener]
        self.mv[lb + L.L_RX] += rx
        self.mv[lb + L.L_TX] += tx

    def conn_opened(self, listener: int) -> None:
        lb = self._lb[listener]
        self.mv[lb + L.L_ACCEPTED] += 1.0
        self.mv[lb + L.L_ACTIVE] += 1.0

    def rejected(self, listener: int) -> None:
        self.mv[self._lb[listener] + L.L_REJECTED] += 1.0

    def conn_closed(self, listener: int, version: str, err: str, duration: float, rx: int, tx: int) -> None:
        mv = self.mv
        lb = self._lb[listener]
        mv[lb + L.L_ACTIVE] -= 1.0
        mv[lb + L.L_RX] += rx
        mv[lb + L.L_TX] += tx
        raw = (listener, version, err)
        b = self._conn_cells.get(raw)
        if b is None:
            key = L.pack(L.FAMILY_CONNECTION, self._listener_label(listener), 0, 0, 0,
                         L.index_of(L.VERSION_INDEX, version), L.error_index(err))
            b = self._cell(self._conn_cells, raw, key, L.FAMILY_CONNECTION)
        mv[b + bisect_left(L.CONNECTION_BUCKETS, duration)] += 1.0
        mv[b + L.NBUCKETS] += duration

    # ----------------------------------------------------------------- TLS
    def tls_handshake_started(self, listener: int) -> None:
        self.mv[self._lb[listener] + L.L_TLS_ACTIVE] += 1.0

    def tls_handshake_done(self, listener: int, version: str, err: str, duration: float) -> None:
        """Once per started handshake, however it ended. `version`: "1.2", "1.3" or what
        ssl.SSLObject.version() says ("TLSv1.3"); "" when none was agreed. `err`: "" on
        success, else tls_handshake_failed, tls_handshake_timeout, tls_not_supported, io_error."""
        mv = self.mv
        mv[self._lb[listener] + L.L_TLS_ACTIVE] -= 1.0
        raw = (listener, version, err)
        b = self._tls_cells.get(raw)
        if b is None:
            key = L.pack(L.FAMILY_TLS, self._listener_label(listener), 0, 0, 0, 0, L.error_index(err),
                         L.tls_version_index(version) if version else 0)
            b = self._cell(self._tls_cells, raw, key, L.FAMILY_TLS)
        mv[b + bisect_left(L.TLS_BUCKETS, duration)] += 1.0
        mv[b + L.NBUCKETS] += duration

    # -------------------------------------------------------------- HTTP/2
    def http2_stream_opened(self, listener: int) -> None:
        self.mv[self._lb[listener] + L.L_H2_ACTIVE] += 1.0

    def http2_stream_closed(self, listener: int, err: str = "") -> None:
        """Once per opened stream when it ends: "" if it completed, else why not."""
        lb = self._lb[listener]
        self.mv[lb + L.L_H2_ACTIVE] -= 1.0
        self.mv[lb + L.L_H2_STREAMS + L.error_index(err)] += 1.0  # error_index("") is 0: completed

    def http2_stream_refused(self, listener: int) -> None:
        """A stream refused (REFUSED_STREAM) past SETTINGS_MAX_CONCURRENT_STREAMS: never opened."""
        self.mv[self._lb[listener] + L.L_H2_STREAMS + L.ERROR_INDEX["stream_refused"]] += 1.0

    # ----------------------------------------------------------- WebSocket
    def websocket_opened(self) -> None:
        self.mv[L.H_WS_ACTIVE] += 1.0

    def websocket_received(self, nbytes: int) -> None:
        """One whole message received, `nbytes` of payload (after decompression)."""
        mv = self.mv
        mv[L.H_WS_MSG_RX] += 1.0
        mv[L.H_WS_BYTES_RX] += nbytes

    def websocket_sent(self, nbytes: int) -> None:
        mv = self.mv
        mv[L.H_WS_MSG_TX] += 1.0
        mv[L.H_WS_BYTES_TX] += nbytes

    def websocket_closed(self, code: int) -> None:
        """Once per opened WebSocket: the code of the first close frame, sent or received;
        1006 when the connection ended without one."""
        mv = self.mv
        mv[L.H_WS_ACTIVE] -= 1.0
        mv[self._lay.ws_closes + L.WS_CODE_INDEX.get(code, 0)] += 1.0

    # ------------------------------------------- response cache, delegation
    def response_cache(self, result: CacheResult) -> None:
        """One request looked up in the shared response cache (bypass: not cacheable)."""
        self.mv[L.H_CACHE + L.CACHE_INDEX[result]] += 1.0

    def response_cache_field(self, result: CacheResult) -> int:
        """Where response_cache(result) adds in `mv`: for the request path's commonest count, the
        add without the call (workers/cachestage.py)."""
        return L.H_CACHE + L.CACHE_INDEX[result]

    def delegated(self, target: str, result: DelegationResult) -> None:
        """One connection handed (or not) to `target`, the prefix as configured (--delegate)."""
        row = self._targets.get(target) or self._name(self._targets, TARGET_TABLE, target, 1, 0)
        if not row:
            self.mv[L.H_OVERFLOW_TARGET] += 1.0
        self.mv[self._lay.delegation(row, L.DELEGATION_INDEX[result])] += 1.0

    # --------------------------------------------------------- request queue
    def queued_requests(self, n: int) -> None:
        """The number of requests now in flight in the worker (a gauge: call it when it changes)."""
        self.mv[L.H_QUEUED] = n

    # ------------------------------------------------------------- at start
    def announce(self, *, http2: bool = False, websocket: bool = False,
                 max_queued_requests: int | None = None) -> None:
        """What this worker can feed, so the master shows those families from zero (an
        operator's rate() and alerts need series before the first event). Each producer
        announces its own part at start: features add up, the queue limit is set when given."""
        mv = self.mv
        features = (L.F_HTTP2 if http2 else 0) | (L.F_WEBSOCKET if websocket else 0)
        mv[L.H_FEATURES] = int(mv[L.H_FEATURES]) | features
        if max_queued_requests is not None:
            mv[L.H_QUEUE_LIMIT] = max_queued_requests

    # ---------------------------------------------------- once a second
    def sample(self, keepalive: list[int], active: dict[tuple[str, str], int]) -> None:
        """Gauges sampled by the worker's hub once a second: idle keep-alive
        connections per listener, in-flight requests by (method, scheme)."""
        mv, lay = self.mv, self._lay
        for i, n in enumerate(keepalive):
            mv[lay.listener(i) + L.L_KEEPALIVE] = n
        counts = [0] * (len(L.METHODS) * len(L.SCHEMES))
        for (method, scheme), n in active.items():
            counts[L.METHOD_INDEX.get(method, 0) * len(L.SCHEMES) + L.SCHEME_INDEX.get(scheme, 0)] += n
        base = lay.active_requests
        mv[base:base + len(counts)] = _doubles(counts)

    # ------------------------------------------------------------- cells
    def _listener_label(self, listener: int) -> int:
        return listener if 0 <= listener < self._lay.nlisteners else L.LISTENER_OTHER

    def _cell(self, cache: dict[Any, int] | None, raw: Any, key: int, family: int) -> int:
        """The cell of `key` (made on first use), remembered under `raw` unless `cache` is None."""
        mv = self.mv
        b = self._by_key.get(key)  # different raw values can map to one key (unknown methods)
        if b is None:
            used = int(mv[L.H_USED])
            if used >= L.CELLS:
                mv[L.OVERFLOW_FIELD[family]] += 1.0
                # Not cached: each observation in the overflow cell is counted as an overflow.
                return self._lay.cell(family) + 1
            base = self._lay.cell(used)
            mv[base] = key
            mv[L.H_USED] = used + 1  # after the key: the master reads "used" first
            b = self._by_key[key] = base + 1
        if cache is not None:
            cache[raw] = b
        return b

    def _name(self, known: dict[str, int], table: int, name: str, first: int, other: int) -> int:
        """The slow path of a route or target seen for the first time: its entry in the slot's
        table (`first` + entry index), or `other` if the table is full or the name too long."""
        i = self.slot.write_name(table, name.encode("utf-8", "backslashreplace"))
        if i < 0:
            return other  # not remembered: the table is full for good, each use is counted
        known[name] = first + i
        return first + i

    def _adopt(self) -> None:
        """Pick up what the slot already holds, so that a second Recorder over the same slot
        adds to its cells and strings instead of repeating them."""
        mv, lay = self.mv, self._lay
        for i in range(L.FIRST_FREE_CELL, min(int(mv[L.H_USED]), L.CELLS)):
            key = int(mv[lay.cell(i)])
            if key:
                self._by_key.setdefault(key, lay.cell(i) + 1)
        for i, name in enumerate(self.slot.names(ROUTE_TABLE)):
            self._routes.setdefault(name, 2 + i)
        for i, name in enumerate(self.slot.names(TARGET_TABLE)):
            self._targets.setdefault(name, 1 + i)


# The hooks the front door's producers call on `server.metrics` (workers/instrument.py).
FRONT_DOOR_HOOKS = ("tls_handshake_started", "tls_handshake_done", "http2_stream_opened",
                    "http2_stream_closed", "http2_stream_refused", "websocket_opened", "websocket_received",
                    "websocket_sent", "websocket_closed", "response_cache", "delegated", "queued_requests",
                    "announce")


class NullFrontDoor:
    """The same hooks doing nothing, for a worker without metrics: workers/instrument.py's
    NullInstruments can inherit them, so a producer never checks whether metrics are on."""

    __slots__ = ()

    def tls_handshake_started(self, listener: int) -> None:
        pass

    def tls_handshake_done(self, listener: int, version: str, err: str, duration: float) -> None:
        pass

    def http2_stream_opened(self, listener: int) -> None:
        pass

    def http2_stream_closed(self, listener: int, err: str = "") -> None:
        pass

    def http2_stream_refused(self, listener: int) -> None:
        pass

    def websocket_opened(self) -> None:
        pass

    def websocket_received(self, nbytes: int) -> None:
        pass

    def websocket_sent(self, nbytes: int) -> None:
        pass

    def websocket_closed(self, code: int) -> None:
        pass

    def response_cache(self, result: CacheResult) -> None:
        pass

    def delegated(self, target: str, result: DelegationResult) -> None:
        pass

    def queued_requests(self, n: int) -> None:
        pass

    def announce(self, *, http2: bool = False, websocket: bool = False,
                 max_queued_requests: int | None = None) -> None:
        pass


def _doubles(values: list[int]) -> memoryview:
    import array

    return memoryview(array.array("d", values))

"""The worker's side of a metrics slot: plain stores into shared memory.

No locks (one writer per slot), no syscalls, no allocation once a label set has
its cell: a dict lookup, a bisect and a few float adds per request.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from greenfork.metrics import layout as L
from greenfork.metrics.slots import Slot

_RawKey = tuple[str, int, str, str, str]  # method, status, scheme, version, error type
_ConnKey = tuple[int, str, str]  # listener, version, error type


class Recorder:
    __slots__ = ("_conn_cells", "_lay", "_req_cells", "mv", "slot")

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.mv = slot.mv
        self._lay = slot.layout
        # raw label values -> offset of the cell's first bucket (workers/instrument.py
        # inlines the lookup in its per-request hook)
        self._req_cells: dict[_RawKey, int] = {}
        self._conn_cells: dict[_ConnKey, int] = {}

    # ------------------------------------------------------------- hot path
    def observe(self, method: str, status: int, scheme: str, version: str, err: str, duration: float) -> None:
        raw = (method, status, scheme, version, err)  # no listener labels on this histogram
        b = self._req_cells.get(raw)
        if b is None:
            b = self.request_cell(raw)
        mv = self.mv
        mv[b + bisect_left(L.REQUEST_BUCKETS, duration)] += 1.0
        mv[b + L.NBUCKETS] += duration

    def request_cell(self, raw: _RawKey) -> int:
        """The slow path of a label set seen for the first time."""
        method, status, scheme, version, err = raw
        if method not in L.METHOD_INDEX:
            # A client's made-up methods share the _OTHER cell and are not cached one by one.
            raw = (L.OTHER, status, scheme, version, err)
            b = self._req_cells.get(raw)
            if b is not None:
                return b
        key = L.pack(L.FAMILY_REQUEST, 0, L.index_of(L.METHOD_INDEX, raw[0]), L.status_code(status),
                     L.index_of(L.SCHEME_INDEX, scheme), L.index_of(L.VERSION_INDEX, version),
                     L.error_index(err))
        return self._new_cell(self._req_cells, raw, key, L.FAMILY_REQUEST)

    def transferred(self, listener: int, rx: int, tx: int) -> None:
        lb = self._lay.listener(listener)
        self.mv[lb + L.L_RX] += rx
        self.mv[lb + L.L_TX] += tx

    def conn_opened(self, listener: int) -> None:
        lb = self._lay.listener(listener)
        self.mv[lb + L.L_ACCEPTED] += 1.0
        self.mv[lb + L.L_ACTIVE] += 1.0

    def rejected(self, listener: int) -> None:
        self.mv[self._lay.listener(listener) + L.L_REJECTED] += 1.0

    def conn_closed(self, listener: int, version: str, err: str, duration: float, rx: int, tx: int) -> None:
        mv = self.mv
        lb = self._lay.listener(listener)
        mv[lb + L.L_ACTIVE] -= 1.0
        mv[lb + L.L_RX] += rx
        mv[lb + L.L_TX] += tx
        raw = (listener, version, err)
        b = self._conn_cells.get(raw)
        if b is None:
            key = L.pack(L.FAMILY_CONNECTION, listener, 0, 0, 0, L.index_of(L.VERSION_INDEX, version),
                         L.error_index(err))
            b = self._new_cell(self._conn_cells, raw, key, L.FAMILY_CONNECTION)
        mv[b + bisect_left(L.CONNECTION_BUCKETS, duration)] += 1.0
        mv[b + L.NBUCKETS] += duration

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
    def _new_cell(self, cells: dict[Any, int], raw: Any, key: int, family: int) -> int:
        mv = self.mv
        # Different raw values can map to one key (two unknown methods are both _OTHER).
        for b in cells.values():
            if int(mv[b - 1]) == key:
                cells[raw] = b
                return b
        used = int(mv[L.H_USED])
        if used >= L.CELLS:
            overflow = L.OVERFLOW_REQ_CELL if family == L.FAMILY_REQUEST else L.OVERFLOW_CONN_CELL
            mv[L.H_OVERFLOW_REQ if family == L.FAMILY_REQUEST else L.H_OVERFLOW_CONN] += 1.0
            # Not cached: each observation in the overflow cell is counted as an overflow.
            return self._lay.cell(overflow) + 1
        base = self._lay.cell(used)
        mv[base] = key
        mv[L.H_USED] = used + 1  # after the key: the master reads "used" first
        b = base + 1
        cells[raw] = b
        return b


def _doubles(values: list[int]) -> memoryview:
    import array

    return memoryview(array.array("d", values))

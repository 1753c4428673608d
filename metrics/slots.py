"""Per-worker shared-memory slots, the pool that reuses them, and the retired totals.

The master maps a slot (anonymous MAP_SHARED) before forking the worker that
will write it; the child inherits the mapping. A slot goes back to the pool
only after its holder has been reaped and its contents folded into `Retired`,
so exported counters (retired + live slots) never go backwards however a
worker dies.

Routes and delegation targets are strings in each slot's own tables (layout.py);
the master numbers them in `Names` (bounded, never renumbered) before adding
slots together, so one route met by two workers is one series.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from typing import cast

from greenfork.metrics import layout as L

ROUTE_TABLE, TARGET_TABLE = 0, 1
_TABLES = ((L.H_ROUTES, "routes", L.ROUTES), (L.H_TARGETS, "targets", L.TARGETS))


class Slot:
    """One worker's fields. `mv` (and `mm` for the string tables) is what the worker touches."""

    __slots__ = ("_names", "index", "layout", "mm", "mv")

    def __init__(self, index: int, lay: L.Layout) -> None:
        self.index = index
        self.layout = lay
        self.mm = mmap.mmap(-1, lay.nbytes, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.mv = memoryview(self.mm).cast("d")
        self._names: tuple[list[str], list[str]] = ([], [])
        self.reset()

    def reset(self, pid: int = 0, generation: int = 0, start: float = 0.0) -> None:
        self.mm[:] = bytes(len(self.mm))
        mv = self.mv
        mv[L.H_MAGIC] = L.MAGIC
        mv[L.H_PID] = pid
        mv[L.H_GENERATION] = generation
        mv[L.H_START] = start
        for family, key in enumerate(L.OVERFLOW_KEYS):  # cell index = family
            mv[self.layout.cell(family)] = key
        mv[L.H_USED] = L.FIRST_FREE_CELL
        self._names = ([], [])

    def cells(self) -> list[tuple[int, list[float]]]:
        """(key, [15 buckets..., sum]) of every used cell that has observations."""
        mv, lay = self.mv, self.layout
        used = min(int(mv[L.H_USED]), L.CELLS)
        out = []
        for i in range(used):
            base = lay.cell(i)
            values = cast(list[float], mv[base + 1:base + L.CELL].tolist())
            key = int(mv[base])
            if key and any(values[:L.NBUCKETS]):
                out.append((key, values))
        return out

    def listener_fields(self, index: int) -> list[float]:
        """Fields of listener `index`; index `nlisteners` is the block of unknown listeners."""
        base = self.layout.listeners + index * L.PER_LISTENER
        return cast(list[float], self.mv[base:base + L.PER_LISTENER].tolist())

    def names(self, table: int) -> list[str]:
        """The strings of a table (ROUTE_TABLE, TARGET_TABLE), entry i at position i.

        Entries below the table's "used" count are complete and never change while the
        slot is held (layout.py), so what was read once is kept until the next reset."""
        used_field, attr, cap = _TABLES[table]
        cache = self._names[table]
        used = min(int(self.mv[used_field]), cap)
        base = getattr(self.layout, attr)
        for i in range(len(cache), used):
            off = base + i * L.STR_FIELDS
            n = int(self.mv[off])
            start = (off + 1) * 8
            cache.append(self.mm[start:start + n].decode("utf-8", "replace")
                         if 0 < n <= L.STR_BYTES else L.OTHER)
        return cache

    def write_name(self, table: int, data: bytes) -> int:
        """Worker side: append `data` to a table; its entry index, or -1 when it is full."""
        used_field, attr, cap = _TABLES[table]
        mv = self.mv
        used = int(mv[used_field])
        if used >= cap or not 0 < len(data) <= L.STR_BYTES:
            return -1
        off = getattr(self.layout, attr) + used * L.STR_FIELDS
        start = (off + 1) * 8
        self.mm[start:start + len(data)] = data  # the bytes, then the length, then the count
        mv[off] = len(data)
        mv[used_field] = used + 1
        return used

    def close(self) -> None:
        self.mv.release()
        self.mm.close()


class Names:
    """The master's numbering of the strings found in slots: 0 none, 1 _OTHER, 2.. the
    strings in order of first sight. Bounded by `cap` (later strings are _OTHER) and never
    renumbered, so a series, once exported, keeps its label for the master's lifetime."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.ids: dict[str, int] = {}
        self.names: list[str] = []

    def id(self, name: str) -> int:
        i = self.ids.get(name)
        if i is None:
            if name == L.OTHER or len(self.names) >= self.cap:
                return L.ROUTE_OTHER
            i = 2 + len(self.names)
            self.names.append(name)
            self.ids[name] = i
        return i

    def name(self, i: int) -> str:
        return self.names[i - 2] if i >= 2 else L.OTHER


@dataclass
class Retired:
    """What reaped workers left behind: counters and histograms only (gauges are live-only)."""

    cells: dict[int, list[float]] = field(default_factory=dict)  # master-numbered keys
    listeners: dict[int, list[float]] = field(default_factory=dict)  # index -> per-listener fields
    header: list[float] = field(default_factory=lambda: [0.0] * L.HEADER)  # the HEADER_COUNTERS
    ws_closes: list[float] = field(default_factory=lambda: [0.0] * len(L.WS_CODES))
    delegations: dict[tuple[int, int], float] = field(default_factory=dict)  # (target id, result)
    requests: dict[int, float] = field(default_factory=dict)  # slot index -> requests
    cpu: dict[int, float] = field(default_factory=dict)  # slot index -> CPU seconds

    @property
    def overflow_req(self) -> float:
        return self.header[L.H_OVERFLOW_REQ]

    @property
    def overflow_conn(self) -> float:
        return self.header[L.H_OVERFLOW_CONN]

    def fold(self, slot: Slot, cpu_seconds: float, cells: list[tuple[int, list[float]]],
             delegations: dict[tuple[int, int], float]) -> None:
        """Add a reaped slot; `cells` and `delegations` are already in the master's numbering."""
        mv, lay = slot.mv, slot.layout
        for f in L.HEADER_COUNTERS:
            self.header[f] += mv[f]
        closes = cast(list[float], mv[lay.ws_closes:lay.ws_closes + len(L.WS_CODES)].tolist())
        for i, n in enumerate(closes):
            self.ws_closes[i] += n
        for i in range(lay.nlisteners + 1):
            fields = slot.listener_fields(i)
            if i == lay.nlisteners and not any(fields):
                continue
            acc = self.listeners.setdefault(i, [0.0] * L.PER_LISTENER)
            for f in L.LISTENER_COUNTERS:  # counters, not the gauges
                acc[f] += fields[f]
        for key, values in cells:
            add_cell(self.cells, key, values)
        for k, v in delegations.items():
            self.delegations[k] = self.delegations.get(k, 0.0) + v
        served = requests_in(cells)
        self.requests[slot.index] = self.requests.get(slot.index, 0.0) + served
        self.cpu[slot.index] = self.cpu.get(slot.index, 0.0) + cpu_seconds


def add_cell(into: dict[int, list[float]], key: int, values: list[float]) -> None:
    acc = into.get(key)
    if acc is None:
        into[key] = list(values)
    else:
        for i, v in enumerate(values):
            acc[i] += v


def requests_in(cells: list[tuple[int, list[float]]]) -> float:
    return sum(sum(v[:L.NBUCKETS]) for k, v in cells if L.family_of(k) == L.FAMILY_REQUEST)


class SlotPool:
    """Slots are mapped lazily (before the fork that needs one) and reused lowest index
    first, so the pool grows to the most workers ever alive at once (workers plus a
    draining generation) and the `worker` label's values stay small and bounded."""

    def __init__(self, nlisteners: int) -> None:
        self.layout = L.Layout(nlisteners)
        self.slots: list[Slot] = []
        self.holders: dict[int, int] = {}  # slot index -> pid (0 while forking)
        self.retired = Retired()
        self.routes = Names(L.MASTER_ROUTES)
        self.targets = Names(L.MASTER_TARGETS)

    def acquire(self, generation: int, start: float) -> Slot:
        for s in self.slots:
            if s.index not in self.holders:
                break
        else:
            s = Slot(len(self.slots), self.layout)
            self.slots.append(s)
        s.reset(0, generation, start)
        self.holders[s.index] = 0
        return s

    def assign(self, slot: Slot, pid: int) -> None:
        self.holders[slot.index] = pid
        slot.mv[L.H_PID] = pid

    def release(self, slot: Slot, cpu_seconds: float = 0.0) -> None:
        """The holder is reaped (or never started): fold what it counted, free the slot."""
        self.retired.fold(slot, cpu_seconds, self.cells_of(slot), self.delegations_of(slot))
        slot.reset()
        self.holders.pop(slot.index, None)

    def live(self) -> list[tuple[Slot, int]]:
        return [(self.slots[i], pid) for i, pid in sorted(self.holders.items()) if pid]

    def cells_of(self, slot: Slot) -> list[tuple[int, list[float]]]:
        """The slot's used cells with their route in the master's numbering (a key may repeat:
        two of the slot's routes can both be _OTHER here)."""
        out = []
        names: list[str] | None = None
        for key, values in slot.cells():
            r = L.route_of(key)
            if r > L.ROUTE_OTHER and L.family_of(key) == L.FAMILY_REQUEST:
                if names is None:
                    names = slot.names(ROUTE_TABLE)
                i = r - 2
                key = L.with_route(key, self.routes.id(names[i]) if i < len(names) else L.ROUTE_OTHER)
            out.append((key, values))
        return out

    def delegations_of(self, slot: Slot) -> dict[tuple[int, int], float]:
        """Delegated connections by (master target id, result index)."""
        lay, nres = slot.layout, len(L.DELEGATION_RESULTS)
        values = slot.mv[lay.delegations:lay.delegations + (L.TARGETS + 1) * nres].tolist()
        out: dict[tuple[int, int], float] = {}
        names: list[str] | None = None
        for i, v in enumerate(values):
            if not v:
                continue
            row, result = divmod(i, nres)
            gid = L.ROUTE_OTHER
            if row:
                if names is None:
                    names = slot.names(TARGET_TABLE)
                gid = self.targets.id(names[row - 1]) if row - 1 < len(names) else L.ROUTE_OTHER
            out[gid, result] = out.get((gid, result), 0.0) + v
        return out

    def close(self) -> None:
        for s in self.slots:
            s.close()
        self.slots.clear()
        self.holders.clear()


@dataclass
class Totals:
    """One scrape's sums: counters and histograms are retired + live slots, gauges live only."""

    live: list[tuple[Slot, int]]
    slot_cells: dict[int, list[tuple[int, list[float]]]]  # live slot index -> its cells
    cells: dict[int, list[float]]
    listeners: list[list[float]]  # per listener, and the block of unknown listeners last
    header: list[float]
    ws_closes: list[float]
    delegations: dict[tuple[int, int], float]
    features: int  # the F_* bits any live worker announced


def totals(pool: SlotPool) -> Totals:
    retired, n = pool.retired, pool.layout.nlisteners
    live = pool.live()
    slot_cells = {s.index: pool.cells_of(s) for s, _pid in live}
    cells = {k: list(v) for k, v in retired.cells.items()}
    for cs in slot_cells.values():
        for key, values in cs:
            add_cell(cells, key, values)
    listeners = [list(retired.listeners.get(i, [0.0] * L.PER_LISTENER)) for i in range(n + 1)]
    header = list(retired.header)
    ws_closes = list(retired.ws_closes)
    delegations = dict(retired.delegations)
    features = 0
    for slot, _pid in live:
        mv, lay = slot.mv, slot.layout
        for i in range(n + 1):
            for f, v in enumerate(slot.listener_fields(i)):
                listeners[i][f] += v
        for f in (*L.HEADER_COUNTERS, L.H_QUEUED, L.H_QUEUE_LIMIT, L.H_WS_ACTIVE):
            header[f] += mv[f]
        for i, v in enumerate(mv[lay.ws_closes:lay.ws_closes + len(L.WS_CODES)].tolist()):
            ws_closes[i] += v
        for k, v in pool.delegations_of(slot).items():
            delegations[k] = delegations.get(k, 0.0) + v
        features |= int(mv[L.H_FEATURES])
    return Totals(live, slot_cells, cells, listeners, header, ws_closes, delegations, features)

"""Per-worker shared-memory slots, the pool that reuses them, and the retired totals.

The master maps a slot (anonymous MAP_SHARED) before forking the worker that
will write it; the child inherits the mapping. A slot goes back to the pool
only after its holder has been reaped and its contents folded into `Retired`,
so exported counters (retired + live slots) never go backwards however a
worker dies.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from typing import cast

from greenfork.metrics import layout as L


class Slot:
    """One worker's fields. `mv` is the only thing the worker touches."""

    __slots__ = ("index", "layout", "mm", "mv")

    def __init__(self, index: int, lay: L.Layout) -> None:
        self.index = index
        self.layout = lay
        self.mm = mmap.mmap(-1, lay.nbytes, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.mv = memoryview(self.mm).cast("d")
        self.reset()

    def reset(self, pid: int = 0, generation: int = 0, start: float = 0.0) -> None:
        self.mm[:] = bytes(len(self.mm))
        mv = self.mv
        mv[L.H_MAGIC] = L.MAGIC
        mv[L.H_PID] = pid
        mv[L.H_GENERATION] = generation
        mv[L.H_START] = start
        mv[self.layout.cell(L.OVERFLOW_REQ_CELL)] = L.OVERFLOW_REQ_KEY
        mv[self.layout.cell(L.OVERFLOW_CONN_CELL)] = L.OVERFLOW_CONN_KEY
        mv[L.H_USED] = L.FIRST_FREE_CELL

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
        base = self.layout.listener(index)
        return cast(list[float], self.mv[base:base + L.PER_LISTENER].tolist())

    def close(self) -> None:
        self.mv.release()
        self.mm.close()


@dataclass
class Retired:
    """What reaped workers left behind: counters and histograms only (gauges are live-only)."""

    cells: dict[int, list[float]] = field(default_factory=dict)
    listeners: dict[int, list[float]] = field(default_factory=dict)  # index -> per-listener fields
    overflow_req: float = 0.0
    overflow_conn: float = 0.0
    requests: dict[int, float] = field(default_factory=dict)  # slot index -> requests
    cpu: dict[int, float] = field(default_factory=dict)  # slot index -> CPU seconds

    def fold(self, slot: Slot, cpu_seconds: float) -> None:
        mv = slot.mv
        self.overflow_req += mv[L.H_OVERFLOW_REQ]
        self.overflow_conn += mv[L.H_OVERFLOW_CONN]
        for i in range(slot.layout.nlisteners):
            acc = self.listeners.setdefault(i, [0.0] * L.PER_LISTENER)
            fields = slot.listener_fields(i)
            for f in (L.L_ACCEPTED, L.L_REJECTED, L.L_RX, L.L_TX):  # counters, not the gauges
                acc[f] += fields[f]
        cells = slot.cells()
        for key, values in cells:
            add_cell(self.cells, key, values)
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
    return sum(sum(v[:L.NBUCKETS]) for k, v in cells if L.unpack(k)[0] == L.FAMILY_REQUEST)


class SlotPool:
    """Slots are mapped lazily (before the fork that needs one) and reused lowest index
    first, so the pool grows to the most workers ever alive at once (workers plus a
    draining generation) and the `worker` label's values stay small and bounded."""

    def __init__(self, nlisteners: int) -> None:
        self.layout = L.Layout(nlisteners)
        self.slots: list[Slot] = []
        self.holders: dict[int, int] = {}  # slot index -> pid (0 while forking)
        self.retired = Retired()

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
        self.retired.fold(slot, cpu_seconds)
        slot.reset()
        self.holders.pop(slot.index, None)

    def live(self) -> list[tuple[Slot, int]]:
        return [(self.slots[i], pid) for i, pid in sorted(self.holders.items()) if pid]

    def close(self) -> None:
        for s in self.slots:
            s.close()
        self.slots.clear()
        self.holders.clear()

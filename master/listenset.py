"""The master's listening sockets across reloads: current, pending (a reload that
changes `bind`) and retired (removed addresses, closed once the old generation is gone).

A listener is identified by the `--bind` text it came from, so an unchanged
address keeps its socket (and its port, for port 0) across any number of reloads.
"""

from __future__ import annotations

from greenfork.master import listeners
from greenfork.master.addresses import parse_bind
from greenfork.master.listeners import BindError, Listener


def ordered(items: list[Listener], bind: tuple[str, ...]) -> list[Listener]:
    """Listeners in the order of the bind list (a bind text may have several sockets)."""
    return [lst for raw in bind for lst in items if lst.spec.raw == raw]


class ListenerSet:
    def __init__(self, current: list[Listener], *, backlog: int = 2048,
                 unix_mode: int | None = 0o660, defer_accept: int = 0) -> None:
        self.current = current
        self.pending: list[Listener] | None = None
        self.fresh: list[Listener] = []  # bound for the pending reload
        self.removed: list[Listener] = []  # current ones the pending reload drops
        self.retired: list[Listener] = []
        self.backlog = backlog
        self.unix_mode = unix_mode
        self.defer_accept = defer_accept

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(lst.url for lst in self.current)

    def prepare(self, bind: tuple[str, ...]) -> None:
        """Bind what is new in `bind`; raise ValueError (nothing changed) if a bind fails."""
        have = {lst.spec.raw for lst in self.current}
        try:
            self.fresh = listeners.bind_all([parse_bind(b) for b in bind if b not in have],
                                            backlog=self.backlog, unix_mode=self.unix_mode,
                                            defer_accept=self.defer_accept)
        except BindError as e:
            raise ValueError(str(e)) from None
        self.pending = ordered(self.current + self.fresh, bind)
        self.removed = [lst for lst in self.current if lst.spec.raw not in bind]

    def commit(self) -> list[Listener]:
        """The pending set becomes current; returns the newly bound listeners (to log)."""
        assert self.pending is not None
        fresh = self.fresh
        self.current, self.pending, self.fresh = self.pending, None, []
        self.retired += self.removed
        self.removed = []
        return fresh

    def abort(self) -> None:
        listeners.close_all(self.fresh)
        self.pending, self.fresh, self.removed = None, [], []

    def close_retired(self) -> list[Listener]:
        gone, self.retired = self.retired, []
        listeners.close_all(gone)
        return gone

    def every(self) -> list[Listener]:
        return self.current + self.fresh + self.retired

    def close_all(self, *, unlink: bool = True) -> None:
        listeners.close_all(self.every(), unlink=unlink)
        self.current, self.pending, self.fresh, self.removed, self.retired = [], None, [], [], []

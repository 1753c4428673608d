"""The reload transaction's prepare step, and its commit and rollback (the executor's side).

`Staging.prepare()` is the one step of a reload that can fail: it re-reads the
settings, holds back what a HUP must not change, and stages what the new
generation serves with: new listeners today (TLS contexts belong here too: build
them after the listeners, and on failure abort what is staged before raising).
It either returns a Prepared (then CommitReload or AbortReload follows) or
raises PrepareFailed with nothing left staged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from greenfork.master.commands import Prepared, PrepareReload
from greenfork.master.config import show_value
from greenfork.master.listeners import Listener
from greenfork.master.listenset import ListenerSet
from greenfork.master.settings import SETTINGS, Settings

if TYPE_CHECKING:
    from greenfork.master.tls import TlsConfig

log = logging.getLogger("greenfork.master")

# Settings a HUP cannot apply and that a binary upgrade cannot either: the re-executed master
# inherits its predecessor's detached state.
RESTART_ONLY = frozenset({"daemon"})


class PrepareFailed(Exception):
    """str() is the reason, logged as `Reload failed, ...: <reason>`."""


def hold_unreloadable(current: Settings, new: Settings) -> tuple[Settings, tuple[str, ...]]:
    """The new settings with every changed setting that is not `reloadable` kept at its
    running value, and one note per such setting saying what would apply it. Nothing is
    half-applied: a worker's identity, the master's files and sockets are fixed at start."""
    held: dict[str, object] = {}
    notes: list[str] = []
    for s in SETTINGS:
        old, wanted = getattr(current, s.name), getattr(new, s.name)
        if s.reloadable or old == wanted:
            continue
        held[s.name] = old
        applies = "a restart" if s.name in RESTART_ONLY else "a restart or a binary upgrade (USR2)"
        notes.append(f"{s.name} changed to {show_value(s, wanted)}, which a HUP does not apply "
                     f"(only {applies} does); keeping {show_value(s, old)}")
    if not held:
        return new, ()
    sources = dict(new.sources)
    sources.update((name, current.source_of(name)) for name in held)
    return new.replace(**held, sources=tuple(sources.items())), tuple(notes)


TlsLoader = Callable[[Settings], "TlsConfig | None"]


class Staging:
    """What generations serve with: the current listeners and TLS contexts, and a reload's
    staged ones."""

    def __init__(self, lset: ListenerSet, resolve: Callable[[], Settings] | None = None, *,
                 tls: TlsConfig | None = None, load_tls: TlsLoader | None = None) -> None:
        self.lset = lset
        self.resolve = resolve  # re-reads the configuration (the CLI's); None under the Python API
        self.tls = tls  # the serving generation's certificates and contexts
        self.pending_tls: TlsConfig | None = None  # a reload's, read anew from the files
        self.load_tls = load_tls  # settings -> TlsConfig (TlsError), or None without TLS

    def prepare(self, cmd: PrepareReload) -> Prepared:
        try:
            new = self.resolve() if self.resolve is not None else cmd.current
        except ValueError as e:
            raise PrepareFailed(str(e)) from None
        if cmd.reexec:
            return Prepared(new, staged=False)  # validated only: the new master applies everything
        new, held = hold_unreloadable(cmd.current, new)
        staged = False
        if new.bind != cmd.current.bind:
            try:
                self.lset.prepare(new.bind)
            except ValueError as e:
                raise PrepareFailed(str(e)) from None
            staged = True
        if self.load_tls is not None:
            # Certificates are read anew on every reload (renewed files, same settings); the
            # serving generation keeps its contexts until the new one commits.
            from greenfork.master.tls import TlsError

            try:
                self.pending_tls = self.load_tls(new)
            except TlsError as e:
                self.abort()
                raise PrepareFailed(str(e)) from None
            staged = True
        return Prepared(new, staged, held)

    def commit(self) -> list[Listener]:
        """The staged listeners and contexts become current; the newly bound listeners (to log)."""
        if self.pending_tls is not None:
            self.tls, self.pending_tls = self.pending_tls, None
            log_tls(self.tls)
        return self.lset.commit() if self.lset.pending is not None else []

    def abort(self) -> None:
        self.pending_tls = None
        self.lset.abort()

    def tls_for(self, staged: bool) -> TlsConfig | None:
        """The contexts a worker serves with: the staged ones for a reload's new generation."""
        if staged and self.pending_tls is not None:
            return self.pending_tls
        return self.tls

    def listeners(self, staged: bool) -> list[Listener]:
        """What a worker serves: the staged set for a reload's new generation."""
        if staged and self.lset.pending is not None:
            return self.lset.pending
        return self.lset.current


def log_tls(config: TlsConfig | None) -> None:
    """The configuration's warnings and the certificates' expiry, once per load (start, reload)."""
    if config is None:
        return
    for w in config.warnings:
        log.warning("%s", w)
    for level, line in config.expiry_report(time.time()):
        log.log(level, "%s", line)

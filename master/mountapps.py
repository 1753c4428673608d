"""The applications of `--mount PREFIX=APP`, imported by the workers or, with --preload, by
the master before it forks (issue 17).

A mount whose application cannot be imported is a boot failure that names the mount: the
worker exits 4 (EXIT_APP_IMPORT), so the master's first-start and back-off rules apply as
they do to the main application.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from greenfork.master import apploader
from greenfork.master.prefixes import Mount
from greenfork.master.settings import Settings

log = logging.getLogger("greenfork.master")

WSGIApp = Callable[..., Any]

# Filled in the master by --preload, before any fork: workers inherit the objects (a factory
# `mod:make()` is called once, there). Keyed by the mount's prefix as written.
PRELOADED: dict[str, WSGIApp] = {}


class MountImportError(Exception):
    """str() names the mount, its application and the reason."""


def load(mounts: Sequence[Mount], chdir: str | None) -> list[tuple[Mount, WSGIApp]]:
    """Each mount with its application, preloaded or imported now."""
    out = []
    for m in mounts:
        app = PRELOADED.get(str(m.prefix))
        if app is None:
            try:
                app = apploader.load(m.app, chdir)
            except Exception as e:
                raise MountImportError(f"Failed to load the application {m.app} of the mount {m.prefix}: "
                                       f"{e}") from e
        out.append((m, app))
    return out


def no_main_app(settings: Settings) -> bool:
    """Only mounts or delegations are configured, no APP: the main application is a 404."""
    return bool(settings.mount or settings.delegate) and settings.source_of("app") == "default"


def preload(mounts: Sequence[Mount], chdir: str | None) -> None:
    for m, app in load(mounts, chdir):
        PRELOADED[str(m.prefix)] = app


def report(e: MountImportError) -> None:
    """Log a failed import once, with the traceback when the import itself raised."""
    cause = e.__cause__
    log.error("%s", e, exc_info=cause if cause is not None and not isinstance(cause, apploader.AppImportError)
              else None)


def handoff_gid(group: str | None) -> int | None:
    """--handoff-socket-group as a gid (checked before anything is bound); ValueError if unknown."""
    if group is None:
        return None
    import grp

    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"--handoff-socket-group: no such group '{group}'") from None


def own_handoff_sockets(paths: Sequence[str], gid: int | None) -> None:
    """Give the handoff: socket files to --handoff-socket-group, so that a front running as
    another user in that group can connect. ValueError: not allowed."""
    if gid is None:
        return
    import os

    for path in paths:
        try:
            os.chown(path, -1, gid)
        except OSError as e:
            raise ValueError(f"--handoff-socket-group: cannot give {path} to group {gid}: "
                             f"{e.strerror}") from None

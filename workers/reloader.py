"""--reload: watch the app's source files and ask the master for a reload when one changes.

Runs as a greenlet in every worker. Polling mtimes once a second is portable and
cheap enough for development (a few thousand stat() calls). The files are those of
the imported modules outside the standard library and site-packages, plus the
--reload-extra-file globs. The worker only asks (RELOAD_ME); the master reloads as
for HUP, so a file that no longer imports fails the new generation's boot and the
current workers keep serving.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import sysconfig
from collections.abc import Callable, Iterable

import gevent

log = logging.getLogger("greenfork.worker")

INTERVAL = 1.0


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs)


def module_files(library: tuple[str, ...]) -> set[str]:
    files: set[str] = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not path.endswith(".py"):
            continue
        real = os.path.realpath(path)
        if not real.startswith(library):
            files.add(real)
    return files


def extra_files(patterns: Iterable[str], base: str) -> set[str]:
    out: set[str] = set()
    for pattern in patterns:
        for path in glob.glob(os.path.join(base, pattern), recursive=True):
            if os.path.isfile(path):
                out.add(os.path.realpath(path))
    return out


def snapshot(files: Iterable[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for path in files:
        try:
            out[path] = os.stat(path).st_mtime
        except OSError:
            out[path] = -1.0  # gone: a change too, once it was there
    return out


def watch(patterns: Iterable[str], base: str, ask: Callable[[], None]) -> None:
    library = _library_dirs()
    patterns = tuple(patterns)

    def files() -> set[str]:
        return module_files(library) | extra_files(patterns, base)

    seen = snapshot(files())
    while True:
        gevent.sleep(INTERVAL)
        now = snapshot(files() | set(seen))
        changed = sorted(p for p, m in now.items() if seen.get(p, m) != m or p not in seen)
        seen = now
        if changed:
            log.info("Changed: %s; asking the master to reload (--reload)", ", ".join(changed[:3]))
            ask()

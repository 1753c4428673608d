"""The process environment a deployment sets up: `--env NAME=VALUE` (gunicorn's raw_env) and
`--pythonpath` (directories first on sys.path).

The master applies both at start, before anything of the application is imported (hooks,
`--preload`); each worker applies its own generation's `--env` right after the fork, so a
HUP that changes a value reaches the new workers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable


def apply_env(entries: Iterable[str]) -> None:
    for entry in entries:
        name, _, value = entry.partition("=")
        os.environ[name] = value


def apply_pythonpath(paths: Iterable[str], base: str) -> None:
    """Relative directories are taken from `base` (where greenfork was started), as gunicorn
    takes them from its working directory; the first listed ends up first."""
    for path in reversed(list(paths)):
        full = os.path.abspath(os.path.join(base, path))
        if full in sys.path:
            sys.path.remove(full)
        sys.path.insert(0, full)

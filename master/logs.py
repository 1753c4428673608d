"""Error-log setup for the master (workers inherit it across fork)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S %z"


class ReopenableHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr or a file opened for append; reopen() is for logrotate (USR1)."""

    def __init__(self, target: str) -> None:
        self.target = target
        super().__init__(self._open())

    def _open(self) -> TextIO:
        if self.target == "-":
            return sys.stderr
        return open(self.target, "a", buffering=1, encoding="utf-8", errors="backslashreplace")

    def reopen(self) -> None:
        if self.target == "-":
            return
        self.acquire()
        try:
            old = self.stream
            self.stream = self._open()
            old.close()
        finally:
            self.release()


def setup(error_logfile: str, level: str) -> ReopenableHandler:
    handler = ReopenableHandler(error_logfile)
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    root = logging.getLogger("greenfork")
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close() if isinstance(h, ReopenableHandler) and h.target != "-" else None
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    return handler


def reopen() -> None:
    for h in logging.getLogger("greenfork").handlers:
        if isinstance(h, ReopenableHandler):
            h.reopen()

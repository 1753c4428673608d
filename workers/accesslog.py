"""The access log writer.

Lines go out with one os.write on an O_APPEND descriptor, so lines from
several worker processes never interleave mid-line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from greenfork.master.logformat import COMBINED, JSON, Record, compile_format, json_line


class AccessLog:
    def __init__(self, target: str, fmt: str = COMBINED) -> None:
        self.target = target
        self.fmt = fmt
        self.atoms = [] if fmt == JSON else compile_format(fmt)
        self.fd = self._open()

    def _open(self) -> int:
        if self.target == "-":
            return 1
        return os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def reopen(self) -> None:
        if self.target == "-":
            return
        old, self.fd = self.fd, self._open()
        os.close(old)

    def format(self, r: Record) -> str:
        if self.fmt == JSON:
            return json_line(r)
        return self.fmt % {key: fn(r) for key, fn in self.atoms}

    def log(self, env: Mapping[str, Any], status: int, headers: list[tuple[str, str]], body_bytes: int,
            duration: float) -> None:
        line = self.format(Record(env, status, headers, body_bytes, duration)) + "\n"
        try:
            os.write(self.fd, line.encode("utf-8", "backslashreplace"))
        except OSError:
            pass  # a full disk must not take requests down with it

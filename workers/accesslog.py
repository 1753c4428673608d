"""Access log in the combined log format, one write() per line.

Lines go out with os.write on an O_APPEND descriptor, so lines from several
worker processes never interleave mid-line.
"""

from __future__ import annotations

import os
import time
from typing import Any


def _quote(text: str) -> str:
    # Control bytes and quotes from the client must not forge log lines.
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(c if " " <= c < "\x7f" or c > "\xa0" else f"\\x{ord(c):02x}" for c in out)


class AccessLog:
    def __init__(self, target: str) -> None:
        self.target = target
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

    def log(self, env: dict[str, Any], status: int, peer: str, headers: list[tuple[str, str]],
            duration: float) -> None:
        length = "-"
        for name, value in headers:
            if name.lower() == "content-length":
                length = value
                break
        request = f"{env['REQUEST_METHOD']} {env.get('RAW_URI', '')} {env['SERVER_PROTOCOL']}"
        line = '%s - - [%s] "%s" %s %s "%s" "%s"\n' % (
            peer or "-", time.strftime("%d/%b/%Y:%H:%M:%S %z"), _quote(request), status or "-", length,
            _quote(env.get("HTTP_REFERER", "-")), _quote(env.get("HTTP_USER_AGENT", "-")))
        try:
            os.write(self.fd, line.encode("utf-8", "backslashreplace"))
        except OSError:
            pass  # a full disk must not take requests down with it

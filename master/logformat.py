"""Access-log formats: gunicorn's atoms, or one JSON object per line (pure).

It lives in the master package so --access-logformat is validated with the
rest of the configuration (exit 2), before any worker is forked; the workers
import it to format their lines. Only the atoms a format names are computed.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from greenfork.master.settings import COMBINED_LOG

COMBINED = COMBINED_LOG
JSON = "json"
_ATOM = re.compile(r"%\(([^)]+)\)s")
_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F]}
_ESCAPES[ord('"')] = '\\"'
_ESCAPES[ord("\\")] = "\\\\"


def escape(text: str) -> str:
    """Client-supplied text must not forge lines or fields: quotes, backslashes
    and control characters become escapes (as nginx does)."""
    return text.translate(_ESCAPES)


class Record:
    """What one request left behind, for the atoms to read."""

    __slots__ = ("body_bytes", "duration", "env", "headers", "status")

    def __init__(self, env: Mapping[str, Any], status: int, headers: list[tuple[str, str]],
                 body_bytes: int, duration: float) -> None:
        self.env = env
        self.status = status
        self.headers = headers
        self.body_bytes = body_bytes
        self.duration = duration

    def request_line(self) -> str:
        env = self.env
        return f"{env.get('REQUEST_METHOD', '-')} {env.get('RAW_URI', '')} {env.get('SERVER_PROTOCOL', '')}"

    def response_header(self, name: str) -> str:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return "-"


def _request_header(name: str) -> Callable[[Record], str]:
    key = "HTTP_" + name.upper().replace("-", "_")
    if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
        key = key[5:]
    return lambda r: escape(str(r.env.get(key, "-")))


def _response_header(name: str) -> Callable[[Record], str]:
    return lambda r: escape(r.response_header(name))


def _environ(name: str) -> Callable[[Record], str]:
    return lambda r: escape(str(r.env.get(name, r.env.get(name.upper(), "-"))))


ATOMS: dict[str, Callable[[Record], str]] = {
    "h": lambda r: r.env.get("REMOTE_ADDR") or "-",
    "l": lambda r: "-",
    "u": lambda r: escape(r.env.get("REMOTE_USER") or "-"),
    "t": lambda r: time.strftime("[%d/%b/%Y:%H:%M:%S %z]"),
    "r": lambda r: escape(r.request_line()),
    "m": lambda r: escape(r.env.get("REQUEST_METHOD", "-")),
    "U": lambda r: escape(r.env.get("PATH_INFO", "")),
    "q": lambda r: escape(r.env.get("QUERY_STRING", "")),
    "H": lambda r: r.env.get("SERVER_PROTOCOL", "-"),
    "s": lambda r: str(r.status or "-"),
    "B": lambda r: str(r.body_bytes),
    "b": lambda r: str(r.body_bytes) if r.body_bytes else "-",
    "f": lambda r: escape(r.env.get("HTTP_REFERER", "-")),
    "a": lambda r: escape(r.env.get("HTTP_USER_AGENT", "-")),
    "T": lambda r: str(int(r.duration)),
    "M": lambda r: str(int(r.duration * 1000)),
    "D": lambda r: str(int(r.duration * 1_000_000)),
    "L": lambda r: f"{r.duration:.6f}",
    "p": lambda r: f"<{os.getpid()}>",
}


def compile_format(fmt: str) -> list[tuple[str, Callable[[Record], str]]]:
    """The atoms a format uses, each with its function; ValueError for an unknown one."""
    found = []
    for key in dict.fromkeys(_ATOM.findall(fmt)):
        if key in ATOMS:
            found.append((key, ATOMS[key]))
        elif key.startswith("{") and key[-2:] in ("}i", "}o", "}e"):
            name, kind = key[1:-2], key[-1]
            if kind == "i":
                found.append((key, _request_header(name)))
            elif kind == "o":
                found.append((key, _response_header(name.lower())))
            else:
                found.append((key, _environ(name)))
        else:
            raise ValueError(f"unknown access log atom %({key})s")
    try:
        fmt % {k: "" for k, _ in found}
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"invalid access log format: {e}") from None
    return found


def check_format(fmt: str) -> None:
    """Validator for the access_logformat setting."""
    if fmt != JSON:
        compile_format(fmt)


def json_line(r: Record) -> str:
    env = r.env
    return json.dumps({
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "remote_addr": env.get("REMOTE_ADDR", ""),
        "method": env.get("REQUEST_METHOD", ""),
        "path": env.get("PATH_INFO", ""),
        "query": env.get("QUERY_STRING", ""),
        "protocol": env.get("SERVER_PROTOCOL", ""),
        "status": r.status,
        "bytes": r.body_bytes,
        "referer": env.get("HTTP_REFERER", ""),
        "user_agent": env.get("HTTP_USER_AGENT", ""),
        "duration_ms": round(r.duration * 1000, 3),
        "pid": os.getpid(),
    }, ensure_ascii=True)



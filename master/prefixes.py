"""URL prefixes for port sharing (issue 17): `--mount PREFIX=APP` and `--delegate PREFIX=unix:PATH`.

A prefix is what HTTP.sys calls a URL prefix without its scheme and port (those belong to
the listener): `/path`, `host`, `host/path`, with `*.example.com` as a host matching every
name under example.com (nginx's rule: `a.example.com` and `a.b.example.com`, not
`example.com`). Paths are written decoded, as PEP 3333's SCRIPT_NAME is, and match whole
segments only: `/api` matches `/api` and `/api/x`, never `/apix`.

Pure: parsing, validation and the published URLs, for the settings table and the master;
the matcher itself is workers/mounts.py's.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from greenfork.master.listeners import Listener

__all__ = ["Delegate", "Mount", "Prefix", "parse_delegates", "parse_mounts", "parse_prefix", "prefix_urls"]

_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOST_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_UNIX_PATH_MAX = 107  # sockaddr_un.sun_path less its NUL (listeners.py)


@dataclass(frozen=True, slots=True)
class Prefix:
    """host: "" (any host), a lower-case name or address, or ".example.com" for *.example.com
    (wildcard True); path: "" (no path) or "/a/b", without a trailing slash."""

    host: str = ""
    path: str = ""
    wildcard: bool = False

    def __str__(self) -> str:
        return ("*" if self.wildcard else "") + self.host + self.path

    @property
    def wsgi_path(self) -> str:
        """The path as a WSGI string (UTF-8 bytes read as latin-1), as PATH_INFO holds it."""
        return self.path.encode("utf-8").decode("latin-1")


@dataclass(frozen=True, slots=True, repr=False)
class Mount:
    """One `--mount PREFIX=APP`."""

    prefix: Prefix
    app: str

    def __str__(self) -> str:
        return f"{self.prefix}={self.app}"

    def __repr__(self) -> str:  # --check-config shows it as written
        return repr(str(self))


@dataclass(frozen=True, slots=True, repr=False)
class Delegate:
    """One `--delegate PREFIX=unix:PATH`: connections whose first request matches go to the
    greenfork listening on `handoff:PATH`."""

    prefix: Prefix
    path: str

    def __str__(self) -> str:
        return f"{self.prefix}=unix:{self.path}"

    def __repr__(self) -> str:
        return repr(str(self))

    @property
    def target(self) -> str:
        """The metrics' target label: the prefix as configured."""
        return str(self.prefix)


def parse_prefix(text: str) -> Prefix:
    """A prefix as the operator writes it; ValueError with the reason."""
    s = text.strip()
    if not s:
        raise ValueError("the prefix is empty")
    if "://" in s:
        raise ValueError(f"{text!r}: write the prefix without a scheme or port (the listener has them): "
                         "/path, host or host/path")
    if any(c in s for c in "?#") or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in s):
        raise ValueError(f"{text!r}: a prefix has no query, fragment, spaces or control characters")
    if s.startswith("/"):
        host, path = "", s
    else:
        host, slash, rest = s.partition("/")
        path = "/" + rest if slash else ""
    wildcard = False
    if host:
        host, wildcard = _host(text, host)
    path = _path(text, path)
    if not host and not path:
        raise ValueError(f"{text!r}: '/' is everything, which is the main application (APP)")
    return Prefix(host, path, wildcard)


def _host(text: str, host: str) -> tuple[str, bool]:
    name = host.lower().rstrip(".")
    if name.startswith("["):
        end = name.find("]")
        if end < 0 or end != len(name) - 1:
            raise ValueError(f"{text!r}: expected [IPv6] as the host, without a port")
        try:
            return "[" + str(ipaddress.IPv6Address(name[1:end])) + "]", False
        except ValueError:
            raise ValueError(f"{text!r}: {name} is not a valid IPv6 address") from None
    if ":" in name:
        raise ValueError(f"{text!r}: a prefix has no port: it applies on every listener "
                         "(bind one address per port to tell ports apart)")
    if not name.isascii():
        raise ValueError(f"{text!r}: write an internationalized name in its xn-- (IDNA) form")
    wildcard = name.startswith("*.")
    if wildcard:
        name = name[1:]  # ".example.com": a host matches when it ends with it
        if not _HOST_RE.fullmatch(name[1:]):
            raise ValueError(f"{text!r}: expected *.NAME with a valid host name after '*.'")
        return name, True
    if "*" in name:
        raise ValueError(f"{text!r}: a wildcard must be the whole leftmost label, as in *.example.com")
    if len(name) > 253 or not _HOST_RE.fullmatch(name):
        raise ValueError(f"{text!r}: {host!r} is not a valid host name")
    return name, wildcard


def _path(text: str, path: str) -> str:
    if not path:
        return ""
    if "%" in path:
        raise ValueError(f"{text!r}: write the path decoded (as it reaches PATH_INFO), without %-escapes")
    path = path[:-1] if path.endswith("/") else path  # "/api/" is "/api"; "/api//" has an empty segment
    if not path:
        return ""
    for seg in path[1:].split("/"):
        if seg in ("", ".", ".."):
            raise ValueError(f"{text!r}: a path has no empty, '.' or '..' segments")
    return path


def _entries(v: object, what: str) -> list[tuple[str, str]]:
    """PREFIX=VALUE items from a CLI list, an env string (comma-separated) or a TOML table."""
    if isinstance(v, str):
        items = [p.strip() for p in v.split(",") if p.strip()]
    elif isinstance(v, dict):
        return [(str(k), str(x)) for k, x in v.items()]
    elif isinstance(v, list | tuple) and all(isinstance(x, str | Mount | Delegate) for x in v):
        items = [str(x) for x in v]
    else:
        raise ValueError(f"expected a list of PREFIX={what} strings (or a table of PREFIX = \"{what}\")")
    out = []
    for item in items:
        prefix, eq, value = item.partition("=")
        if not eq or not prefix.strip() or not value.strip():
            raise ValueError(f"{item!r}: expected PREFIX={what}")
        out.append((prefix, value.strip()))
    return out


def _no_duplicates(prefixes: Sequence[Prefix]) -> None:
    seen: set[Prefix] = set()
    for p in prefixes:
        if p in seen:
            raise ValueError(f"the prefix {p} is given twice")
        seen.add(p)


def parse_mounts(v: object) -> tuple[Mount, ...]:
    from greenfork.master.apploader import parse_spec

    mounts = []
    for prefix, app in _entries(v, "APP"):
        p = parse_prefix(prefix)
        parse_spec(app)  # AppSpecError is a ValueError naming the spec
        mounts.append(Mount(p, app.strip()))
    _no_duplicates([m.prefix for m in mounts])
    return tuple(mounts)


def parse_delegates(v: object) -> tuple[Delegate, ...]:
    out = []
    for prefix, target in _entries(v, "unix:PATH"):
        p = parse_prefix(prefix)
        if not target.startswith("unix:") or not target[5:]:
            raise ValueError(f"{target!r}: a delegation target is unix:PATH, the handoff: socket of the "
                             "server that takes the connections")
        path = target[5:]
        if not path.startswith("/"):
            raise ValueError(f"{target!r}: give the hand-off socket's absolute path")
        if "\0" in path or len(path.encode()) > _UNIX_PATH_MAX:
            raise ValueError(f"{target!r}: not a usable unix socket path (at most {_UNIX_PATH_MAX} bytes)")
        out.append(Delegate(p, path))
    _no_duplicates([d.prefix for d in out])
    return tuple(out)


def prefix_urls(listener_url: str, prefixes: Sequence[Prefix]) -> list[str]:
    """The URLs a listener serves the prefixes at, as HTTP.sys publishes them: the listener's
    URL with the prefix's host (if any) and path, ending in "/" (http://127.0.0.1:8000/api/).
    A unix socket's in nginx's form (http://unix:/run/app.sock:/api/), path prefixes only:
    a socket file has no host name to put in the URL. A hand-off socket publishes none."""
    out = []
    for p in prefixes:
        tail = (p.path or "") + "/"
        if listener_url.startswith(("unix:", "https://unix:", "http://unix:")):
            if p.host:
                continue
            scheme = "https" if listener_url.startswith("https:") else "http"
            out.append(f"{scheme}://unix:{listener_url.split('unix:', 1)[1]}:{tail}")
        elif listener_url.startswith(("http://", "https://")):
            scheme, rest = listener_url.split("://", 1)
            port = rest.rsplit(":", 1)[1]
            host = ("*" + p.host if p.wildcard else p.host) if p.host else rest.rsplit(":", 1)[0]
            out.append(f"{scheme}://{host}:{port}{tail}")
    return out


def published(urls: Sequence[str], mounts: Sequence[Mount]) -> list[str]:
    """The addresses feature with mounts: the listeners' URLs, then each listener's prefix URLs."""
    if not mounts:
        return list(urls)
    prefixes = [m.prefix for m in mounts]
    return [*urls, *(u for url in urls for u in prefix_urls(url, prefixes))]


def delegations(listeners: Sequence[Listener], delegates: Sequence[Delegate]) -> list[str]:
    """A front's log lines: where each --delegate prefix goes, as URLs of its listeners."""
    urls = [lst.url for lst in listeners if not lst.spec.handoff]
    return [f"Delegating {', '.join(u for url in urls for u in prefix_urls(url, [d.prefix])) or d.prefix} "
            f"to unix:{d.path}" for d in delegates]

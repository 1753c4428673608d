"""Which prefix a request falls under (issue 17): the matcher of `--mount` and `--delegate`,
and the request stage's mount step.

Precedence, as docs/port-sharing.md states it: among prefixes with a path, the longest
path that matches whole segments wins (a host-specific one over a wildcard host over any
host, for the same path); then a host-only prefix (an exact name over a wildcard, a longer
wildcard over a shorter); then nothing (the main application). Paths are compared as
PATH_INFO holds them: percent-decoded WSGI strings.

A lookup is a few dict probes: one per `/` in the path, up to the longest prefix's length,
and one or two for the host. No regular expressions, nothing allocated but the slices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from greenfork.master import mountapps
from greenfork.master.mountapps import MountImportError, report
from greenfork.master.prefixes import Prefix

if TYPE_CHECKING:
    from greenfork.master.settings import Settings

T = TypeVar("T")

__all__ = ["MountImportError", "Mounts", "PrefixTable", "build", "main_app", "report", "request_host"]


class _Hosts(Generic[T]):
    """The entries of one path (or of no path), by host."""

    __slots__ = ("any", "exact", "wild")

    def __init__(self) -> None:
        self.exact: dict[str, T] = {}
        self.wild: list[tuple[str, T]] = []  # (".example.com", value), longest suffix first
        self.any: T | None = None

    def add(self, p: Prefix, value: T) -> None:
        if not p.host:
            self.any = value
        elif p.wildcard:
            self.wild.append((p.host, value))
            self.wild.sort(key=lambda e: -len(e[0]))
        else:
            self.exact[p.host] = value

    def pick(self, host: str) -> T | None:
        if host:
            v = self.exact.get(host)
            if v is not None:
                return v
            for suffix, w in self.wild:
                if host.endswith(suffix) and len(host) > len(suffix):  # one label at least before it
                    return w
        return self.any


class PrefixTable(Generic[T]):
    """Prefixes to values; match(host, path) -> (value, the matched path prefix) or None."""

    __slots__ = ("hosts", "maxlen", "paths")

    def __init__(self, entries: Sequence[tuple[Prefix, T]]) -> None:
        self.paths: dict[str, _Hosts[T]] = {}
        self.hosts: _Hosts[T] | None = None
        for p, value in entries:
            if p.path:
                self.paths.setdefault(p.wsgi_path, _Hosts()).add(p, value)
            else:
                if self.hosts is None:
                    self.hosts = _Hosts()
                self.hosts.add(p, value)
        self.maxlen = max((len(k) for k in self.paths), default=0)

    def match(self, host: str, path: str) -> tuple[T, str] | None:
        """host: lower case without port (request_host()); path: the decoded path."""
        paths = self.paths
        if paths:
            end = len(path)
            if end > self.maxlen:
                # the longest candidate within reach ends just before a "/"
                end = path.rfind("/", 0, self.maxlen + 1)
            while end > 0:
                hosts = paths.get(path[:end])
                if hosts is not None:
                    v = hosts.pick(host)
                    if v is not None:
                        return v, path[:end]
                end = path.rfind("/", 0, end)
        if self.hosts is not None:
            v = self.hosts.pick(host)
            if v is not None:
                return v, ""
        return None


def request_host(value: str) -> str:
    """A Host header (or an absolute-form target's authority) as prefixes compare it:
    lower case, without the port and a trailing dot; IPv6 literals keep their brackets."""
    if not value:
        return ""
    if value.startswith("["):
        end = value.find("]")
        return value[:end + 1].lower() if end > 0 else ""
    host = value.partition(":")[0]
    return host.rstrip(".").lower()


WSGIApp = Callable[..., Any]


class Mounts:
    """The request stage's step when --mount is set: the application for a request, with
    SCRIPT_NAME and PATH_INFO split at the mount's path (PEP 3333)."""

    __slots__ = ("main", "table")

    def __init__(self, mounted: Sequence[tuple[Prefix, WSGIApp]], main: WSGIApp) -> None:
        self.table: PrefixTable[tuple[WSGIApp, str]] = PrefixTable(
            [(p, (app, str(p))) for p, app in mounted])
        self.main = main

    def route(self, env: dict[str, Any]) -> WSGIApp:
        """The application; a mounted one finds its prefix as configured in
        environ["greenfork.route"] (the metrics' http_route), the main one none."""
        path = env["PATH_INFO"]
        hit = self.table.match(request_host(env.get("HTTP_HOST", "")), path)
        if hit is None:
            return self.main
        (app, route), matched = hit
        if matched:
            env["SCRIPT_NAME"] += matched
            env["PATH_INFO"] = path[len(matched):]
        env["greenfork.route"] = route
        return app


def not_found(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The main application when only mounts are given: what no mount matches is not here."""
    body = b"404 Not Found\n"
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def main_app(settings: Settings) -> WSGIApp | None:
    """The main application when it is not imported: a 404 when only mounts or delegations are
    configured (no APP given), else None."""
    return not_found if mountapps.no_main_app(settings) else None


def build(settings: Settings, main: WSGIApp, counted: Callable[[WSGIApp], WSGIApp] | None = None) -> Mounts:
    """The worker's Mounts: each application preloaded by the master or imported now
    (MountImportError names the mount that failed); `counted` wraps each for --max-requests."""
    apps = mountapps.load(settings.mount, settings.chdir)
    if counted is not None and settings.max_requests > 0:
        apps = [(m, counted(app)) for m, app in apps]
    return Mounts([(m.prefix, app) for m, app in apps], main)

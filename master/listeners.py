"""Listening sockets for BindSpecs: bound once in the master, inherited by forked workers.

Binding is all-or-nothing so a half-started server never serves on some addresses only.
Nothing here logs: every failure is a BindError whose text is the operator-facing message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import socket
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from greenfork.master.addresses import ANY, BindSpec, format_url

__all__ = ["BindError", "Listener", "adopt_fd", "bind_all", "close_all", "defer_accept_on", "systemd_fds"]

# sockaddr_un.sun_path is 108 bytes on Linux, one of which is the terminating NUL
_UNIX_PATH_MAX = 107
_LOCALHOST_ADDRS = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))
_PORT_RETRIES = 10
# errors meaning "this host has no such address family", as opposed to a real conflict
_NO_FAMILY = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})
# systemd passes sockets starting right after stdin/stdout/stderr (sd_listen_fds(3))
_SD_LISTEN_FDS_START = 3

# (address family, sockaddr) as getaddrinfo gives them
_Target = tuple[int, tuple[Any, ...]]


class BindError(Exception):
    """A listener could not be created; str() is the message to show the operator."""


@dataclass(slots=True)
class Listener:
    spec: BindSpec
    sock: socket.socket
    url: str
    transport: Literal["tcp", "unix"]
    unix_path: str = ""
    unix_ino: int = 0


def bind_all(
    specs: Sequence[BindSpec], *, backlog: int = 2048, unix_mode: int | None = 0o660,
    defer_accept: int = 0,
) -> list[Listener]:
    """defer_accept: TCP_DEFER_ACCEPT's seconds for TCP listeners (0: not set)."""
    listeners: list[Listener] = []
    try:
        for spec in specs:
            if spec.kind == "fd":
                listeners.append(adopt_fd(spec.fd, spec))
            elif spec.kind == "unix":
                listeners.append(_bind_unix(spec, backlog, unix_mode))
            else:
                listeners.extend(_bind_tcp(spec, backlog))
        defer_accept_on(listeners, defer_accept)
    except BaseException:
        close_all(listeners)
        raise
    return listeners


def close_all(listeners: Iterable[Listener], *, unlink: bool = True) -> None:
    for listener in listeners:
        listener.sock.close()
        if unlink and listener.unix_path:
            _unlink_if_ours(listener.unix_path, listener.unix_ino)


def adopt_fd(fd: int, spec: BindSpec | None = None) -> Listener:
    """Wrap an inherited listening socket. On failure the fd is left open for its owner."""
    if spec is None:
        spec = BindSpec(raw=f"fd://{fd}", kind="fd", fd=fd)

    def fail(reason: str) -> BindError:
        return BindError(f"Failed to use fd://{fd}: {reason}")

    if fd < 0:
        raise fail("not a valid file descriptor")
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise fail(_reason(exc)) from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        sock_type = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        if sock_type != socket.SOCK_STREAM or not listening:
            raise fail("not a listening stream socket")
        if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            raise fail("unsupported address family (expected IPv4, IPv6 or unix)")
        url = _published_url(sock, spec.scheme, spec.handoff)
        if sock.family != socket.AF_UNIX:
            # as _tcp_socket() does; connections the kernel completed before now do not inherit
            # it (workers/acceptor.py checks, and sets it on those). Best effort: the workers
            # set it on each connection if it cannot be inherited.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Its blocking mode is left as it is: O_NONBLOCK belongs to the open file, shared with
        # whoever else holds the socket. After a binary upgrade (USR2) the old master's workers
        # still accept on it, relying on it being non-blocking (workers/acceptor.py): making it
        # blocking here would leave each of them stuck in accept(), serving nothing, until told
        # to stop. (The master never accepts on a listener; its workers make theirs non-blocking.)
    except OSError as exc:
        sock.detach()
        raise fail(_reason(exc)) from None
    except BaseException:
        sock.detach()
        raise
    transport: Literal["tcp", "unix"] = "unix" if sock.family == socket.AF_UNIX else "tcp"
    # unix_path stays empty: the file belongs to whoever passed us the socket
    return Listener(spec=spec, sock=sock, url=url, transport=transport)


def defer_accept_on(items: Iterable[Listener], seconds: int) -> None:
    """TCP_DEFER_ACCEPT on the TCP listeners of items, bound or adopted (--defer-accept): a
    connection reaches the accept queue, and wakes a worker, with its first bytes. 0 leaves
    them as they are (an adopted socket keeps its owner's choice, systemd's DeferAcceptSec=).
    Set after listen(): a connection completed before then is merely not deferred."""
    if seconds:
        for lst in items:
            if lst.transport == "tcp":
                lst.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, seconds)


def systemd_fds(environ: Mapping[str, str], pid: int) -> list[int]:
    listen_pid = environ.get("LISTEN_PID")
    if listen_pid is None:
        return []
    if not re.fullmatch(r"[0-9]+", listen_pid.strip()):
        raise BindError(f"Invalid LISTEN_PID={listen_pid!r}: expected a process id")
    # the variables leak into children; fds meant for our parent are not ours to touch
    if int(listen_pid) != pid:
        return []
    listen_fds = environ.get("LISTEN_FDS")
    if listen_fds is None:
        raise BindError("LISTEN_PID is set for this process but LISTEN_FDS is missing")
    if not re.fullmatch(r"[0-9]+", listen_fds.strip()):
        raise BindError(f"Invalid LISTEN_FDS={listen_fds!r}: expected a number of sockets")
    count = int(listen_fds)
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit != resource.RLIM_INFINITY and _SD_LISTEN_FDS_START + count > limit:
        raise BindError(f"Invalid LISTEN_FDS={listen_fds!r}: more than the open-file limit ({limit})")
    return list(range(_SD_LISTEN_FDS_START, _SD_LISTEN_FDS_START + count))


def _failure(spec: BindSpec, reason: str, path: str = "") -> BindError:
    if spec.kind == "unix":
        where = _unix_url(path or spec.path, spec.scheme, spec.handoff)
    elif spec.kind == "fd":
        where = f"fd://{spec.fd}"
    else:
        where = format_url(spec.host, spec.port, spec.scheme)
    return BindError(f"Failed to bind to address {where}: {reason}")


def _reason(exc: OSError, port: int = 0) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno in (errno.EACCES, errno.EPERM):
        first = _unprivileged_port_start()
        if 0 < port < first:
            return (f"permission denied (ports below {first} need privileges: start greenfork as root "
                    "with --user to run the workers unprivileged, grant it the capability "
                    "CAP_NET_BIND_SERVICE, or let systemd pass the socket (socket activation))")
        return "permission denied"
    return (exc.strerror or str(exc)).lower()


def _unprivileged_port_start() -> int:
    """Linux's net.ipv4.ip_unprivileged_port_start (1024 unless changed)."""
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


def _published_url(sock: socket.socket, scheme: str, handoff: bool = False) -> str:
    name: Any = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(name, bytes):
            # Linux abstract namespace: "@name" is the conventional spelling of the leading NUL
            name = name.replace(b"\0", b"@", 1).decode("utf-8", "surrogateescape")
        return _unix_url(name, scheme, handoff)
    return format_url(name[0], name[1], scheme)


def _unix_url(path: str, scheme: str, handoff: bool = False) -> str:
    # A TLS unix socket is published in Kestrel's URL form, which --bind accepts back: a client
    # reading "unix:/path" would speak cleartext to it and fail in the handshake.
    if handoff:  # issue 17: not HTTP but hand-offs: published as the bind form that made it
        return f"handoff:{path}"
    return f"https://unix:{path}" if scheme == "https" else f"unix:{path}"


# --- TCP ---------------------------------------------------------------------------------


def _tcp_socket(family: int, sockaddr: tuple[Any, ...], backlog: int, *, v6only: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # lets a restarted server bind while old connections sit in TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(sockaddr)
        # Accepted sockets inherit TCP_NODELAY from their listener (workers/acceptor.py needs
        # no system call a connection for it), but only those completed after it is set: so
        # before listen(), when no client can have connected yet
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.listen(backlog)
        sock.setblocking(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _tcp_listener(spec: BindSpec, sock: socket.socket) -> Listener:
    return Listener(spec=spec, sock=sock, url=_published_url(sock, spec.scheme), transport="tcp")


def _bind_tcp(spec: BindSpec, backlog: int) -> list[Listener]:
    if spec.host == ANY:
        return [_tcp_listener(spec, _bind_any(spec, backlog))]
    targets: list[_Target]
    if spec.host == "localhost":
        # bound directly rather than resolved: /etc/hosts often lists only one family
        targets = [(family, (host, spec.port)) for family, host in _LOCALHOST_ADDRS]
    else:
        targets = _resolve(spec)
    return [_tcp_listener(spec, sock) for sock in _bind_addresses(spec, targets, backlog)]


def _bind_any(spec: BindSpec, backlog: int) -> socket.socket:
    try:
        return _tcp_socket(socket.AF_INET6, ("::", spec.port), backlog, v6only=False)
    except OSError as exc:
        if exc.errno not in _NO_FAMILY:
            raise _failure(spec, _reason(exc, spec.port)) from None
    try:
        return _tcp_socket(socket.AF_INET, ("0.0.0.0", spec.port), backlog, v6only=False)
    except OSError as exc:
        raise _failure(spec, _reason(exc, spec.port)) from None


def _resolve(spec: BindSpec) -> list[_Target]:
    try:
        infos = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        raise _failure(spec, "cannot resolve host") from None
    targets: list[_Target] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, sockaddr) not in targets:
            targets.append((family, sockaddr))
    if not targets:
        raise _failure(spec, "cannot resolve host")
    return targets


def _bind_addresses(spec: BindSpec, targets: list[_Target], backlog: int) -> list[socket.socket]:
    """Bind every target on one port; port 0 means "the first target's port, for all"."""
    for _attempt in range(_PORT_RETRIES):
        port = spec.port
        bound: list[socket.socket] = []
        errors: list[OSError] = []
        collided = False
        for family, sockaddr in targets:
            try:
                sock = _tcp_socket(family, (sockaddr[0], port, *sockaddr[2:]), backlog, v6only=True)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and spec.port == 0 and bound:
                    # the kernel's free v4 port is taken on another address: pick again
                    collided = True
                    break
                errors.append(exc)
                continue
            bound.append(sock)
            port = sock.getsockname()[1]
        if collided:
            _close_sockets(bound)
            continue
        in_use = next((e for e in errors if e.errno == errno.EADDRINUSE), None)
        if in_use is not None or not bound:
            _close_sockets(bound)
            raise _failure(spec, _reason(in_use or errors[0], spec.port))
        # a family the host lacks (no IPv6, say) is not a failure while another one works
        return bound
    raise _failure(spec, "address already in use (no free port common to all addresses)")


def _close_sockets(socks: Iterable[socket.socket]) -> None:
    for sock in socks:
        sock.close()


# --- unix --------------------------------------------------------------------------------


def _bind_unix(spec: BindSpec, backlog: int, mode: int | None) -> Listener:
    path = os.path.abspath(spec.path)
    size = len(os.fsencode(path))
    if size > _UNIX_PATH_MAX:
        raise _failure(spec, f"path too long ({size} bytes, the limit is {_UNIX_PATH_MAX})", path)
    _clear_stale(spec, path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    created = False
    try:
        with _umask_for(mode):
            sock.bind(path)
        created = True
        if mode is not None:
            os.chmod(path, mode)
        ino = os.lstat(path).st_ino
        sock.listen(backlog)
        sock.setblocking(True)
    except OSError as exc:
        sock.close()
        if created:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise _failure(spec, _reason(exc), path) from None
    except BaseException:
        sock.close()
        raise
    return Listener(spec=spec, sock=sock, url=_unix_url(path, spec.scheme, spec.handoff), transport="unix",
                    unix_path=path, unix_ino=ino)


@contextlib.contextmanager
def _umask_for(mode: int | None) -> Iterator[None]:
    # bind() creates the file with 0o777 & ~umask; chmod afterwards alone would leave a window
    # in which the socket is wider open than asked. The umask is process-wide, which is fine
    # while the master binds before starting any thread.
    if mode is None:
        yield
        return
    old = os.umask(0o777 & ~mode)
    try:
        yield
    finally:
        os.umask(old)


def _clear_stale(spec: BindSpec, path: str) -> None:
    """Remove a socket file left by a dead server; refuse to touch anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _failure(spec, _reason(exc), path) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise _failure(spec, "file exists and is not a socket", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except TimeoutError:
        # a full backlog blocks connect(): someone is alive there, just busy
        raise _failure(spec, "address already in use (another server is listening)", path) from None
    except OSError as exc:
        raise _failure(spec, _reason(exc), path) from None
    finally:
        probe.close()
    raise _failure(spec, "address already in use (another server is listening)", path)


def _unlink_if_ours(path: str, ino: int) -> None:
    # the path may since have been taken over by a newer server (or anything else):
    # only the exact file we created is ours to remove
    try:
        st = os.lstat(path)
        if st.st_ino == ino and stat.S_ISSOCK(st.st_mode):
            os.unlink(path)
    except OSError:
        pass

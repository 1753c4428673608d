"""Binary upgrade plumbing (USR2, and HUP with --preload): re-executing the master
with its listening sockets inherited, and the pidfile dance.

The old master forks; the child clears close-on-exec on the listening sockets and
on the write end of a "ready" pipe, and executes the same command line with:

    GREENFORK_FDS=5,6             the listening sockets, in the order of the addresses
    GREENFORK_FD_BINDS=[...]      the --bind text each socket came from (JSON), so that
                                  the new master keeps sockets whose address it still binds
    GREENFORK_GENERATION=N        the new master's first generation number
    GREENFORK_UPGRADE_FD=7        the new master writes READY (b"R") there once its workers are READY

The old master renames PIDFILE to PIDFILE.oldbin; the new master writes PIDFILE (and the
addresses file) once its workers are READY.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import MutableMapping

from greenfork.master import listeners
from greenfork.master.addresses import parse_bind
from greenfork.master.listeners import Listener

log = logging.getLogger("greenfork.master")

READY = b"R"  # what the new master writes to the ready pipe once its workers are READY
ENV_FDS, ENV_BINDS, ENV_GEN, ENV_READY = ("GREENFORK_FDS", "GREENFORK_FD_BINDS", "GREENFORK_GENERATION",
                                          "GREENFORK_UPGRADE_FD")

# The command line to re-execute and the directory it was started from (the CLI sets
# these; the Python API leaves them unset, and then there is nothing to re-execute).
_command: list[str] | None = None
_start_dir = ""


def remember_command(argv: list[str], cwd: str) -> None:
    global _command, _start_dir
    _command, _start_dir = list(argv), cwd


def can_exec() -> bool:
    return _command is not None


def exec_master(listen: list[Listener], generation: int) -> tuple[int, int]:
    """Fork and exec a new master on the same sockets; returns (pid, read end of its ready pipe)."""
    if _command is None:
        raise ValueError("a new master needs the greenfork command line (not the Python API)")
    fds = [lst.sock.fileno() for lst in listen]
    r, w = os.pipe()
    env = dict(os.environ)
    env.update({ENV_FDS: ",".join(map(str, fds)), ENV_BINDS: json.dumps([lst.spec.raw for lst in listen]),
                ENV_GEN: str(generation), ENV_READY: str(w)})
    for h in logging.getLogger("greenfork").handlers:
        h.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - replaced by exec; covered by the upgrade process tests
        try:
            os.close(r)
            for fd in (*fds, w):
                os.set_inheritable(fd, True)
            os.chdir(_start_dir)
            # sys.executable, not argv[0]: `python3 -m greenfork.master` has no path in argv[0]
            os.execve(sys.executable, _command, env)
        finally:
            os._exit(127)
    os.close(w)
    return pid, r


def inherited(environ: MutableMapping[str, str]) -> tuple[list[Listener], int, int] | None:
    """In a new master: (adopted listeners, first generation, ready fd), or None at a plain start.
    The variables are removed so that nothing started later inherits them."""
    if ENV_FDS not in environ:
        return None
    fds = [int(x) for x in environ.pop(ENV_FDS).split(",") if x]
    binds = json.loads(environ.pop(ENV_BINDS, "[]"))
    generation = int(environ.pop(ENV_GEN, "1"))
    ready = int(environ.pop(ENV_READY, "-1"))
    adopted: list[Listener] = []
    for fd, raw in zip(fds, binds, strict=True):
        spec = parse_bind(raw)
        lst = listeners.adopt_fd(fd, spec)
        lst.spec = spec
        if lst.transport == "unix" and spec.kind == "unix":
            # this master owns the file now: it removes it on exit (inode-checked)
            # the path the socket is bound to (not parsed back from a unix:, https://unix: or
            # handoff: URL; issue 17 added the last)
            name = lst.sock.getsockname()
            lst.unix_path = name if isinstance(name, str) else ""
            with contextlib.suppress(OSError):
                lst.unix_ino = os.lstat(lst.unix_path).st_ino
        adopted.append(lst)
    return adopted, generation, ready


def notify_ready(fd: int) -> None:
    """Tell the old master that this one serves; it may now be stopped."""
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        os.write(fd, READY)
    with contextlib.suppress(OSError):
        os.close(fd)

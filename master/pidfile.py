"""The pidfile: written atomically, locked while the master lives, removed on exit.

The lock (flock on the file's inode) is what says "running": a pidfile left by
a master that died is unlocked and simply replaced; a locked one belongs to a
live server and the start is refused. A rename (USR2's PIDFILE.oldbin) keeps
the inode, so the old master keeps its lock under the new name.
"""

from __future__ import annotations

import fcntl
import os


class PidfileBusy(Exception):
    """str() names the running server."""


class Pidfile:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.where = self.path  # PIDFILE, or PIDFILE.oldbin while an upgrade is pending
        self.fd = -1

    def acquire(self, pid: int) -> None:
        self.check()
        directory = os.path.dirname(self.path)
        tmp = os.path.join(directory, f".{os.path.basename(self.path)}.{pid}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{pid}\n".encode())
            os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self.fd = fd

    def check(self) -> None:
        """Raise PidfileBusy if a live server holds the pidfile."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
                raise PidfileBusy(f"greenfork is already running with pid {pid} (pidfile {self.path})") \
                    from None
        finally:
            os.close(fd)

    def _ours(self, path: str) -> bool:
        try:
            return self.fd >= 0 and os.stat(path).st_ino == os.fstat(self.fd).st_ino
        except FileNotFoundError:
            return False

    def to_oldbin(self) -> None:
        """USR2: PIDFILE becomes PIDFILE.oldbin for the new master. A rename keeps the
        inode, so this master keeps its lock under the new name."""
        if self._ours(self.where) and self.where == self.path:
            os.replace(self.path, self.path + ".oldbin")
            self.where = self.path + ".oldbin"

    def restore(self) -> None:
        """The new master died: PIDFILE is ours again (unless someone else took it)."""
        if self.where == self.path or not self._ours(self.where):
            return
        try:
            self.check()  # the dead master's PIDFILE is unlocked: stale
        except PidfileBusy:
            return  # a live master holds it
        os.replace(self.where, self.path)
        self.where = self.path

    def release(self) -> None:
        """Remove the file if it is still ours (same inode), then drop the lock."""
        if self.fd < 0:
            return
        if self._ours(self.where):
            try:
                os.unlink(self.where)
            except FileNotFoundError:
                pass
        os.close(self.fd)
        self.fd = -1

"""--user/--group/--umask: the master binds as root, workers run as the user.

Ports below 1024 are bound before any fork, so only the master needs the
privilege; each worker drops it right after fork, before importing the app.
Files the workers must reopen later (log files on USR1) and the unix sockets
the master created are handed to the user.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from dataclasses import dataclass

log = logging.getLogger("greenfork.master")


class PrivilegeError(ValueError):
    """A user or group that does not exist, or a drop that was refused."""


@dataclass(frozen=True, slots=True)
class Identity:
    uid: int
    gid: int
    name: str
    groups: tuple[int, ...]


def resolve(user: str | None, group: str | None) -> Identity | None:
    """The identity workers run as; None to keep the master's."""
    if user is None and group is None:
        return None
    try:
        pw = pwd.getpwuid(int(user)) if user and user.isdigit() else (
            pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid()))
    except KeyError:
        raise PrivilegeError(f"no such user '{user}'") from None
    gid = pw.pw_gid
    if group is not None:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"no such group '{group}'") from None
    groups = tuple(sorted({gid, *os.getgrouplist(pw.pw_name, gid)}))
    return Identity(pw.pw_uid, gid, pw.pw_name, groups)


def hand_over(paths: list[str], who: Identity | None) -> None:
    """chown files the workers must be able to reopen or the clients to connect to."""
    if who is None or os.getuid() != 0:
        return
    for path in paths:
        try:
            os.chown(path, who.uid, who.gid)
        except FileNotFoundError:
            pass


def drop(who: Identity | None) -> None:
    """In a freshly forked worker: become the user, irreversibly."""
    if who is None:
        return
    if os.getuid() == 0:
        os.setgroups(list(who.groups))
    os.setgid(who.gid)
    os.setuid(who.uid)
    if os.getuid() != who.uid or (who.uid != 0 and _can_regain_root()):
        raise PrivilegeError(f"could not drop privileges to {who.name}")
    os.environ["HOME"] = pwd.getpwuid(who.uid).pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = who.name


def _can_regain_root() -> bool:
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True

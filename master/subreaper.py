"""Reap what the app leaves behind: the master is its process tree's reaper.

As PID 1 in a container every orphan is reparented to the master anyway; elsewhere
PR_SET_CHILD_SUBREAPER gives it the same role for its own tree, so a grandchild the
app spawned and abandoned (a double-forked helper) is reaped by the master's loop
(wait4(-1), which ignores pids that are not its workers) instead of piling up as a
zombie under init, or under a process supervisor that is not expecting it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("greenfork.master")

PR_SET_CHILD_SUBREAPER = 36


def become() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        ok = bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.debug("could not become a child subreaper; orphans go to init")
    return ok

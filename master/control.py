"""The control protocol between the master and each worker, shared by both sides.

Each worker has a socketpair with the master. A message is one byte, so a
recv() that returns several bytes holds several whole messages and a message
can never be split. EOF means the other side is gone (a worker then drains; the
master waits for the reaper to report the exit).

Kept apart from the state machine so that a worker imports these bytes and
nothing of the master's logic.
"""

from __future__ import annotations

# Master -> worker.
QUIT = b"Q"  # graceful stop: stop accepting, finish in-flight requests (backed up by SIGTERM)
TERMINATE = b"T"  # quick stop: exit at once (backed up by SIGQUIT)
REOPEN = b"O"  # reopen the error and access log files (USR1)
TO_WORKER = (QUIT, TERMINATE, REOPEN)

# Worker -> master.
READY = b"R"  # the app is loaded and the worker is accepting
HEARTBEAT = b"H"  # sent once a second from the worker's hub: it is not blocked
RECYCLE_ME = b"M"  # reached --max-requests: please start my replacement
RELOAD_ME = b"L"  # --reload saw a source file change
TO_MASTER = (READY, HEARTBEAT, RECYCLE_ME, RELOAD_ME)

# Exit codes: a worker's tell the master why it could not boot; the master's own are the
# command's (docs/signals.md, "Exit codes").
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_BOOT, EXIT_APP_IMPORT = 0, 1, 2, 3, 4


def messages(data: bytes, known: tuple[bytes, ...]) -> list[bytes]:
    """The known messages in one read, each once, in the protocol's order (the order of
    `known`): repeats of a message between two reads mean nothing more than one."""
    return [m for m in known if m in data]

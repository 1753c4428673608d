"""A hung worker's last words: on SIGABRT from the master (no heartbeat for --timeout),
write the stack of every thread and every greenlet to the error log, then exit.

A plain Python handler (signal.signal, not gevent's: a gevent handler would wait for the
blocked hub) writes faulthandler's dump of every thread (the main thread's top frame is
the greenlet that blocks the hub, so the culprit's function is named) and gevent's run
info (every greenlet's stack), then exits.

A Python handler only runs between bytecodes, so a hub stuck inside one long C call would
never get there. For that case the heartbeat greenlet also arms faulthandler's watchdog
thread (`arm()` on every beat): if the hub misses beats for --timeout, that C thread dumps
every thread's stack by itself, even while the main thread is blocked.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TextIO

log = logging.getLogger("greenfork.worker")

EXIT_ABORTED = 70  # the master records these exits with the reason "timeout"
# gunicorn's worker_abort and worker_exit hooks, run after the dump (workers/hookpoints.py)
last_words: Callable[[], None] | None = None


def _log_stream() -> TextIO:
    for h in logging.getLogger("greenfork").handlers:
        stream = getattr(h, "stream", None)
        if stream is not None and hasattr(stream, "fileno"):
            return stream  # type: ignore[no-any-return]
    return sys.stderr


def install(slot: int) -> None:
    """(Re)install the handler; again after USR1 reopened the log file."""

    def on_abort(signum: int, frame: Any) -> None:
        try:
            stream = _log_stream()
            log.error("Worker %d (pid %d) aborted by the master (hung); stacks follow", slot, os.getpid())
            for h in logging.getLogger("greenfork").handlers:
                h.flush()
            faulthandler.dump_traceback(file=stream, all_threads=True)
            from gevent import util

            log.error("Worker %d greenlets:\n%s", slot, "\n".join(util.format_run_info()))
            for h in logging.getLogger("greenfork").handlers:
                h.flush()
        finally:
            try:
                if last_words is not None:
                    last_words()
                for h in logging.getLogger("greenfork").handlers:
                    h.flush()
            finally:
                os._exit(EXIT_ABORTED)

    signal.signal(signal.SIGABRT, on_abort)


def arm(timeout: float) -> None:
    """Re-arm the watchdog: dump all threads if the hub does not beat again within timeout."""
    if timeout <= 0:
        return
    try:
        faulthandler.dump_traceback_later(timeout, repeat=False, file=_log_stream(), exit=False)
    except (OSError, ValueError, AttributeError):  # pragma: no cover - a log without a file descriptor
        pass

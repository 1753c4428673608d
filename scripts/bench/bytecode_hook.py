"""A post_fork hook for scripts/bench/bytecodes.py: counts every Python bytecode the worker runs,
by function (by line too when $GF_BYTECODES_LINES is set), and writes the counts to
$GF_BYTECODES_OUT.N (N = 1, 2, ...) on each SIGPWR.

Tracing makes the worker several times slower; the counts do not depend on that, or on the
machine's load, only on what the worker was asked to do.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
from types import FrameType
from typing import Any

# (file name, function, first line, line run or 0) -> bytecodes run
counts: collections.Counter[tuple[str, str, int, int]] = collections.Counter()
dumps = 0
LINES = bool(os.environ.get("GF_BYTECODES_LINES"))


def _opcode(frame: FrameType, event: str, arg: Any) -> Any:
    if event == "opcode":
        code = frame.f_code
        counts[(code.co_filename.rsplit("/", 1)[-1], code.co_name, code.co_firstlineno,
                frame.f_lineno if LINES else 0)] += 1
    return _opcode


def _call(frame: FrameType, event: str, arg: Any) -> Any:
    frame.f_trace_opcodes = True
    return _opcode


def _dump(*args: Any) -> None:
    global dumps
    dumps += 1
    out = f"{os.environ['GF_BYTECODES_OUT']}.{dumps}"
    snapshot = counts.copy()  # (one call: the tracer cannot change it while it is written)
    sys.settrace(None)  # (what is called from here is not the worker's work)
    try:
        with open(out + ".tmp", "w") as f:
            json.dump([[list(k), v] for k, v in snapshot.items()], f)
        os.rename(out + ".tmp", out)  # whole or not there: the driver waits for the name
    finally:
        sys.settrace(_call)


def post_fork(server: Any, worker: Any) -> None:
    import gevent  # (the worker's: the handler runs in its loop, between requests)

    gevent.signal_handler(signal.SIGPWR, _dump)
    sys.settrace(_call)

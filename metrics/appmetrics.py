"""Applications' own prometheus_client metrics (--app-metrics), keyed by slot.

prometheus_client's multiprocess mode names its files after a process
identifier, os.getpid() by default (prometheus_client.values.MultiProcessValue),
so every worker restart leaves files behind and a scrape gets slower forever.
Workers here identify as their metrics slot ("w0", "w1", ...) instead: the next
holder of a slot reopens the same files (counters carry on from where the last
holder stopped), and the directory holds at most one set per slot.
"""

from __future__ import annotations

import os
import shutil
import tempfile

ENV = "PROMETHEUS_MULTIPROC_DIR"


def identity(slot: int) -> str:
    return f"w{slot}"


def create_dir() -> str:
    """A private, empty directory for this master; set in the environment workers inherit."""
    path = tempfile.mkdtemp(prefix="greenfork-app-metrics-")  # mode 0700, new and empty
    os.environ[ENV] = path
    return path


def use_slot_identity(slot: int) -> None:
    """In a worker, before the app is imported: make prometheus_client's metrics
    write to the shared directory under the slot's name."""
    from prometheus_client import values

    ident = identity(slot)
    values.ValueClass = values.MultiProcessValue(lambda: ident)  # type: ignore[no-untyped-call]


def slot_gone(path: str, slot: int) -> None:
    """The holder was reaped: its live* gauges must disappear from the scrape."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(identity(slot), path)  # type: ignore[no-untyped-call]


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(ENV) == path:
        del os.environ[ENV]

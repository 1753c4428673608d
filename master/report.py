"""The addresses feature's outputs: the log lines, the addresses file, the pidfile.

Files are written atomically (a temporary file in the same directory, fsync,
rename), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence

log = logging.getLogger("greenfork.master")


def atomic_write(path: str, data: str, mode: int = 0o644) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def log_addresses(urls: Sequence[str]) -> None:
    for url in urls:
        log.info("Now listening on: %s", url)


def addresses_document(pid: int, generation: int, urls: Sequence[str], metrics: str | None = None) -> str:
    doc: dict[str, object] = {"pid": pid, "generation": generation, "addresses": list(urls)}
    if metrics:
        doc["metrics"] = metrics  # only with --metrics-bind: readers of the old keys see no change
    return json.dumps(doc, indent=2) + "\n"


def write_addresses_file(path: str, pid: int, generation: int, urls: Sequence[str],
                         metrics: str | None = None) -> None:
    atomic_write(path, addresses_document(pid, generation, urls, metrics))


def remove_file(path: str | None, *, only_if_pid: int | None = None) -> None:
    """Remove our file; with only_if_pid, leave it if it names another process
    (a newer master may have taken it over)."""
    if not path:
        return
    try:
        if only_if_pid is not None:
            with open(path) as f:
                if f.read().strip() != str(only_if_pid):
                    return
        os.unlink(path)
    except (FileNotFoundError, ValueError):
        pass
    except OSError as e:
        log.warning("Could not remove %s: %s", path, e.strerror)


def remove_addresses_file(path: str | None, pid: int) -> None:
    """Remove the addresses file unless a newer master (binary upgrade) has rewritten it."""
    if not path:
        return
    try:
        with open(path) as f:
            owner = json.load(f).get("pid")
    except (OSError, ValueError, AttributeError):
        return
    if owner == pid:
        remove_file(path)

"""A worker's first moments: gevent's monkey-patching before anything else.

The master imports this module in the forked child only; it must stay tiny
so that nothing is imported before patch_all() except what the master had.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from greenfork.master.workerinfo import WorkerInfo


def run(info: WorkerInfo) -> int:
    from gevent import monkey

    monkey.patch_all()
    from greenfork.workers.worker import WorkerServer

    return WorkerServer(info).serve()

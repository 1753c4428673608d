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
    if info.hooks is not None:  # post_fork: after patching, before the app is imported
        from greenfork.master.control import EXIT_BOOT
        from greenfork.workers.hookpoints import after_fork

        if not after_fork(info.hooks):
            return EXIT_BOOT
    from greenfork.workers.worker import WorkerServer

    return WorkerServer(info).serve()

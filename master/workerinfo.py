"""What a forked worker is handed by the master (a plain record; no I/O)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenfork.master.listeners import Listener
from greenfork.master.settings import Settings
from greenfork.metrics.slots import Slot

if TYPE_CHECKING:
    from greenfork.master.hooks import WorkerHooks
    from greenfork.master.respcache import ResponseCache
    from greenfork.master.tls import TlsConfig


@dataclass(slots=True)
class WorkerInfo:
    slot: int
    generation: int
    settings: Settings
    listeners: list[Listener]
    addresses: tuple[str, ...]  # published URLs: environ["greenfork.server_addresses"]
    control: socket.socket  # the worker's end of its control socketpair
    master_pid: int
    app: Callable[..., Any] | None = None  # an embedded callable (Server(app=func)); else settings.app
    metrics: Slot | None = None  # this worker's metrics slot (--metrics-bind), written by it alone
    tls: TlsConfig | None = None  # the SSLContexts of its https:// listeners, built by the master
    hooks: WorkerHooks | None = None  # its gunicorn-style server hooks, if any (master/hooks.py)
    cache: ResponseCache | None = None  # the shared response cache (--response-cache), mapped by the master

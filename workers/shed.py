"""--worker-connections: what a full worker does with further connections.

A full worker closes them (as Kestrel does) rather than leaving them queued
with no answer for as long as it stays full. But every worker waits on the
same shared listening socket and all of them wake for a new connection, so a
full worker that accepted at once would take connections away from workers
with room. It therefore waits SHED_DELAY first: a worker with room accepts
within that time, and only a connection nobody took is accepted and closed
(nginx makes a nearly full worker step back from accepting the same way).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Final

import gevent
from gevent.socket import wait_read

log = logging.getLogger("greenfork.worker")

SHED_DELAY: Final = 0.05


class Shedder:
    def __init__(self, slot: int, limit: int) -> None:
        self.slot = slot
        self.limit = limit
        self.rejected = 0  # since the worker started (for metrics)
        self.episode = 0  # closed since the worker last had room

    def shed(self, sock: socket.socket, full: Callable[[], bool], counted: Callable[[], None]) -> None:
        """Wait for a connection on sock; close it and any others queued if this worker is
        still full after SHED_DELAY and no other worker took them."""
        wait_read(sock.fileno())
        gevent.sleep(SHED_DELAY)
        if not full():
            return
        timeout = sock.gettimeout()
        sock.settimeout(0.0)  # accept what is queued now, never wait
        try:
            while full():
                try:
                    client, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return  # EMFILE and the like: the accept loop reports those
                client.close()
                counted()  # greenfork_rejected_connections_total
                self.rejected += 1
                self.episode += 1
                if self.episode == 1:
                    log.warning("Worker %d is at --worker-connections (%d): closing new connections "
                                "(error_type max_concurrent_connections_exceeded)", self.slot, self.limit)
        finally:
            sock.settimeout(timeout)

    def room_again(self) -> None:
        """The worker accepts again: end the episode with one line saying how many were closed."""
        if self.episode:
            log.warning("Worker %d has room again; %d connection(s) were closed at the limit",
                        self.slot, self.episode)
            self.episode = 0

"""The fixed, versioned layout of a worker's metrics slot, and the closed label sets.

A slot is an array of 8-byte float fields (a `memoryview` cast to "d" over an
anonymous shared mmap). One worker writes it, the master reads it. Doubles hold
counts exactly up to 2**53, which is more requests than a worker will ever see.

    [0 .. HEADER)                      header: magic, pid, generation, start time, cells used,
                                       overflow counts
    [LISTENERS .. +n*PER_LISTENER)     per listener: accepted, rejected, received, sent bytes,
                                       active connections, keep-alive connections
    [active requests .. +M*S)          in-flight requests by (method, scheme)
    [cells .. +CELLS*CELL)             labelled histogram cells: key, 15 buckets, sum

A histogram cell stores non-cumulative bucket counts and no separate count: the
count is the sum of the buckets, so a scrape that races a write still shows a
histogram whose +Inf bucket equals its _count.
"""

from __future__ import annotations

from typing import Final

MAGIC: Final = float(0x67660001)  # "gf" + layout version 1; bump on any change below

# Header fields
H_MAGIC, H_PID, H_GENERATION, H_START, H_USED, H_OVERFLOW_REQ, H_OVERFLOW_CONN = range(7)
HEADER: Final = 8

# Per-listener block
L_ACCEPTED, L_REJECTED, L_RX, L_TX, L_ACTIVE, L_KEEPALIVE = range(6)
PER_LISTENER: Final = 6

# The OpenTelemetry / Kestrel bucket boundaries (METRICS.md): 14 finite bounds + Inf each.
REQUEST_BUCKETS: Final = (.005, .01, .025, .05, .075, .1, .25, .5, .75, 1.0, 2.5, 5.0, 7.5, 10.0)
CONNECTION_BUCKETS: Final = (.01, .02, .05, .1, .2, .5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
NBUCKETS: Final = 15
CELL: Final = 1 + NBUCKETS + 1  # key, buckets, sum
CELLS: Final = 256  # per slot; a new label set beyond this goes to the _OTHER cell
# Cells 0 and 1 are the overflow cells of the two histograms, keyed at slot reset.
OVERFLOW_REQ_CELL, OVERFLOW_CONN_CELL = 0, 1
FIRST_FREE_CELL: Final = 2

FAMILY_REQUEST, FAMILY_CONNECTION = 0, 1

OTHER: Final = "_OTHER"
# Index 0 is always _OTHER. RFC 9110 methods plus PATCH, case-sensitive.
METHODS: Final = (OTHER, "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
VERSIONS: Final = (OTHER, "1.0", "1.1")
SCHEMES: Final = (OTHER, "http", "https")
# Index 0 means "no error" (the label is left out); the rest is the closed list.
ERROR_TYPES: Final = ("", "keep_alive_timeout", "request_headers_timeout", "invalid_request_line",
                      "invalid_request_headers", "max_request_body_size_exceeded",
                      "unexpected_end_of_request_content", "io_error", "app_shutdown_timeout",
                      "error_after_starting_response", "max_concurrent_connections_exceeded",
                      # the timeouts of workers/timers.py, by Kestrel's names
                      "min_request_body_data_rate", "min_response_data_rate", "request_body_drain_timeout",
                      OTHER)
STATUS_NONE, STATUS_OTHER = 0, 1  # no response sent; outside 100-599
LISTENER_OTHER = 255

METHOD_INDEX: Final = {m: i for i, m in enumerate(METHODS)}
VERSION_INDEX: Final = {v: i for i, v in enumerate(VERSIONS)}
SCHEME_INDEX: Final = {s: i for i, s in enumerate(SCHEMES)}
ERROR_INDEX: Final = {e: i for i, e in enumerate(ERROR_TYPES)}


def index_of(table: dict[str, int], value: str) -> int:
    return table.get(value, 0)


def error_index(value: str) -> int:
    return ERROR_INDEX.get(value, len(ERROR_TYPES) - 1)  # anything unknown is _OTHER


def status_code(status: int) -> int:
    if status == 0:
        return STATUS_NONE
    return status if 100 <= status <= 599 else STATUS_OTHER


# A cell key packs the label indexes into one integer (< 2**53, exact as a double).
def pack(family: int, listener: int, method: int, status: int, scheme: int, version: int, err: int) -> int:
    return 1 + (family | listener << 1 | method << 9 | status << 13 | scheme << 23 | version << 26
                | err << 29)


def unpack(key: int) -> tuple[int, int, int, int, int, int, int]:
    k = key - 1
    return (k & 1, k >> 1 & 0xFF, k >> 9 & 0xF, k >> 13 & 0x3FF, k >> 23 & 0x7, k >> 26 & 0x7, k >> 29 & 0xF)


OVERFLOW_REQ_KEY: Final = pack(FAMILY_REQUEST, LISTENER_OTHER, 0, STATUS_OTHER, 0, 0, len(ERROR_TYPES) - 1)
OVERFLOW_CONN_KEY: Final = pack(FAMILY_CONNECTION, LISTENER_OTHER, 0, STATUS_OTHER, 0, 0,
                                len(ERROR_TYPES) - 1)


class Layout:
    """Offsets for a given number of listeners (fixed for the master's lifetime)."""

    __slots__ = ("active_requests", "cells", "listeners", "nlisteners", "size")

    def __init__(self, nlisteners: int) -> None:
        if not 0 <= nlisteners < LISTENER_OTHER:
            raise ValueError(f"at most {LISTENER_OTHER - 1} listeners are supported by metrics")
        self.nlisteners = nlisteners
        self.listeners = HEADER
        self.active_requests = self.listeners + nlisteners * PER_LISTENER
        self.cells = self.active_requests + len(METHODS) * len(SCHEMES)
        self.size = self.cells + CELLS * CELL  # in fields

    def listener(self, index: int) -> int:
        return self.listeners + index * PER_LISTENER

    def cell(self, index: int) -> int:
        return self.cells + index * CELL

    @property
    def nbytes(self) -> int:
        return self.size * 8

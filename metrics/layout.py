"""The fixed, versioned layout of a worker's metrics slot, and the closed label sets.

A slot is an array of 8-byte float fields (a `memoryview` cast to "d" over an
anonymous shared mmap). One worker writes it, the master reads it. Doubles hold
counts exactly up to 2**53, which is more requests than a worker will ever see.

    [0 .. HEADER)                      header: magic, pid, generation, start time, cells used,
                                       overflow counts, string tables used, feature flags,
                                       request queue, WebSocket and response-cache fields
    [ws_closes .. +len(WS_CODES))      WebSocket closes by close code
    [listeners .. +(n+1)*PER_LISTENER) per listener (the last block is _OTHER): accepted,
                                       rejected, received, sent bytes, active connections,
                                       keep-alive connections, active TLS handshakes, active
                                       HTTP/2 streams, HTTP/2 streams ended by error type
    [delegations .. +(TARGETS+1)*R)    delegated connections by (target, result); row 0 _OTHER
    [active requests .. +M*S)          in-flight requests by (method, scheme)
    [routes .. +ROUTES*STR_FIELDS)     the slot's http_route strings (see below)
    [targets .. +TARGETS*STR_FIELDS)   the slot's delegation target strings
    [cells .. +CELLS*CELL)             labelled histogram cells: key, 15 buckets, sum

A histogram cell stores non-cumulative bucket counts and no separate count: the
count is the sum of the buckets, so a scrape that races a write still shows a
histogram whose +Inf bucket equals its _count.

String tables (routes and delegation targets are not closed sets, so they cannot be
indexes into a table compiled in here): each entry is a length field followed by up
to STR_BYTES bytes of UTF-8. The worker appends: it writes the bytes, then the
length, then bumps the table's "used" count in the header; an entry never changes
while the slot is held. The master reads "used" first and then only entries below
it, so it never sees a half-written string. A cell key or a delegation row refers to
an entry by its position in the slot's own table; the master turns that into the
string, and into its own bounded numbering, before it adds slots together.
"""

from __future__ import annotations

from typing import Final

MAGIC: Final = float(0x67660002)  # "gf" + layout version 2; bump on any change below

# Header fields
H_MAGIC, H_PID, H_GENERATION, H_START, H_USED = range(5)
# observations folded into _OTHER: the three histograms' overflow cells, http_route, target
H_OVERFLOW_REQ, H_OVERFLOW_CONN, H_OVERFLOW_TLS, H_OVERFLOW_ROUTE, H_OVERFLOW_TARGET = range(5, 10)
H_ROUTES, H_TARGETS = 10, 11  # entries used in the two string tables
H_FEATURES = 12  # F_* bits the worker announces: which families it can feed
H_QUEUED, H_QUEUE_LIMIT = 13, 14  # requests in flight (--max-queued-requests counts them), the limit
H_WS_ACTIVE, H_WS_MSG_RX, H_WS_MSG_TX, H_WS_BYTES_RX, H_WS_BYTES_TX = range(15, 20)
H_CACHE = 20  # + CACHE_RESULTS index: response-cache lookups by result
HEADER: Final = 24
# Header fields that are counters: added into the retired totals when a holder is reaped.
HEADER_COUNTERS: Final = (H_OVERFLOW_REQ, H_OVERFLOW_CONN, H_OVERFLOW_TLS, H_OVERFLOW_ROUTE,
                          H_OVERFLOW_TARGET, H_WS_MSG_RX, H_WS_MSG_TX, H_WS_BYTES_RX, H_WS_BYTES_TX,
                          H_CACHE, H_CACHE + 1, H_CACHE + 2)

F_HTTP2, F_WEBSOCKET = 1, 2

OTHER: Final = "_OTHER"
# Index 0 means "no error" (the label is left out); the rest is the closed list.
ERROR_TYPES: Final = (
    "", "keep_alive_timeout", "request_headers_timeout", "invalid_request_line",
    "invalid_request_headers", "max_request_body_size_exceeded", "unexpected_end_of_request_content",
    "io_error", "app_shutdown_timeout", "error_after_starting_response",
    "max_concurrent_connections_exceeded",
    # the timeouts of workers/timers.py, by Kestrel's names
    "min_request_body_data_rate", "min_response_data_rate", "request_body_drain_timeout",
    # wave 2 (METRICS.md): TLS, proxies, hosts, overload, delegation
    "tls_handshake_failed", "tls_handshake_timeout", "tls_not_supported", "invalid_http_version",
    "proxy_protocol_invalid", "proxy_protocol_untrusted", "host_not_allowed", "request_queue_full",
    "delegation_failed",
    # wave 2: HTTP/2 abuse and protocol errors, WebSocket
    "stream_reset_flood", "continuation_flood", "hpack_decode_failed", "flow_control_window_exceeded",
    "max_frame_length_exceeded", "settings_flood", "ping_flood", "stream_id_exhausted",
    "websocket_protocol_error",
    # not in METRICS.md's list (proposed there): a PROXY header that does not arrive in time,
    # an HTTP/2 stream the client reset, one refused past SETTINGS_MAX_CONCURRENT_STREAMS
    "proxy_protocol_timeout", "stream_reset", "stream_refused",
    # HTTP/2 (workers/h2proto.py): floods without a name above, any other connection error the
    # RFC names (the GOAWAY's code says which), and an HPACK block that decodes past the bound
    # (Kestrel's name)
    "priority_flood", "empty_frames_flood", "window_update_flood", "http2_protocol_error",
    "max_request_headers_total_size_exceeded",
    # not in METRICS.md's list either: a request without --require-header's header (403)
    "required_header_missing",
    OTHER)

# Per-listener block
L_ACCEPTED, L_REJECTED, L_RX, L_TX, L_ACTIVE, L_KEEPALIVE, L_TLS_ACTIVE, L_H2_ACTIVE = range(8)
L_H2_STREAMS = 8  # + error index: HTTP/2 streams ended, by error type (0: no error)
PER_LISTENER: Final = L_H2_STREAMS + len(ERROR_TYPES)
LISTENER_COUNTERS: Final = (L_ACCEPTED, L_REJECTED, L_RX, L_TX,
                            *range(L_H2_STREAMS, L_H2_STREAMS + len(ERROR_TYPES)))
LISTENER_GAUGES: Final = (L_ACTIVE, L_KEEPALIVE, L_TLS_ACTIVE, L_H2_ACTIVE)

# The OpenTelemetry / Kestrel bucket boundaries (METRICS.md): 14 finite bounds + Inf each.
REQUEST_BUCKETS: Final = (.005, .01, .025, .05, .075, .1, .25, .5, .75, 1.0, 2.5, 5.0, 7.5, 10.0)
CONNECTION_BUCKETS: Final = (.01, .02, .05, .1, .2, .5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TLS_BUCKETS: Final = REQUEST_BUCKETS  # Kestrel's kestrel.tls_handshake.duration uses the same advice
NBUCKETS: Final = 15
CELL: Final = 1 + NBUCKETS + 1  # key, buckets, sum
CELLS: Final = 512  # per slot; a new label set beyond this goes to its family's _OTHER cell
FAMILY_REQUEST, FAMILY_CONNECTION, FAMILY_TLS = 0, 1, 2
# Cells 0..2 are the overflow cells of the three histograms (cell index = family), keyed at reset.
FIRST_FREE_CELL: Final = 3
OVERFLOW_FIELD: Final = {FAMILY_REQUEST: H_OVERFLOW_REQ, FAMILY_CONNECTION: H_OVERFLOW_CONN,
                         FAMILY_TLS: H_OVERFLOW_TLS}

# Index 0 is always _OTHER. RFC 9110 methods plus PATCH, case-sensitive.
METHODS: Final = (OTHER, "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
VERSIONS: Final = (OTHER, "1.0", "1.1", "2")
SCHEMES: Final = (OTHER, "http", "https")
# Index 0: left out (the handshake failed before a version was agreed); unknown ones are _OTHER.
TLS_VERSIONS: Final = ("", "1.0", "1.1", "1.2", "1.3", OTHER)
STATUS_NONE, STATUS_OTHER = 0, 1  # no response sent; outside 100-599
LISTENER_OTHER = 255

# RFC 6455 section 7.4.1 and the IANA registry (1012-1014); 1004 is reserved. 1005 and 1006
# never travel in a close frame: they are what a side records when none came (1006: the
# connection ended without a closing handshake). Application codes (3000-4999) are _OTHER.
WS_CODES: Final = (OTHER, "1000", "1001", "1002", "1003", "1005", "1006", "1007", "1008", "1009",
                   "1010", "1011", "1012", "1013", "1014", "1015")
WS_DIRECTIONS: Final = ("received", "sent")
CACHE_RESULTS: Final = ("hit", "miss", "bypass")
# How a delegation ended: handed over; the target's socket is missing or refuses (down);
# its hand-off queue is full; anything else that went wrong during the hand-off.
DELEGATION_RESULTS: Final = ("success", "unavailable", "busy", "failed")

# String tables (routes, delegation targets)
ROUTES: Final = 64  # per slot; more distinct routes are _OTHER
TARGETS: Final = 32  # per slot; more distinct targets are _OTHER
STR_BYTES: Final = 256  # longer strings are _OTHER
STR_FIELDS: Final = 1 + STR_BYTES // 8  # length, then the bytes
# The route field of a cell key: 0 = no route (label left out), 1 = _OTHER, 2 + i = entry i.
ROUTE_NONE, ROUTE_OTHER = 0, 1
# The master renumbers the slots' strings into its own tables, bounded too, so that what
# reaped workers left behind stays bounded however many distinct strings they met.
MASTER_ROUTES: Final = 512
MASTER_TARGETS: Final = 128

METHOD_INDEX: Final = {m: i for i, m in enumerate(METHODS)}
VERSION_INDEX: Final = {**{v: i for i, v in enumerate(VERSIONS)}, "2.0": VERSIONS.index("2")}
SCHEME_INDEX: Final = {s: i for i, s in enumerate(SCHEMES)}
ERROR_INDEX: Final = {e: i for i, e in enumerate(ERROR_TYPES)}
# ssl.SSLObject.version() names ("TLSv1.3") are accepted as well as the label values.
TLS_VERSION_INDEX: Final = {**{v: i for i, v in enumerate(TLS_VERSIONS) if v != OTHER},
                            "TLSv1": 1, "TLSv1.1": 2, "TLSv1.2": 3, "TLSv1.3": 4}
WS_CODE_INDEX: Final = {int(c): i for i, c in enumerate(WS_CODES) if c != OTHER}
CACHE_INDEX: Final = {r: i for i, r in enumerate(CACHE_RESULTS)}
DELEGATION_INDEX: Final = {r: i for i, r in enumerate(DELEGATION_RESULTS)}


def index_of(table: dict[str, int], value: str) -> int:
    return table.get(value, 0)


def error_index(value: str) -> int:
    return ERROR_INDEX.get(value, len(ERROR_TYPES) - 1)  # anything unknown is _OTHER


def tls_version_index(value: str) -> int:
    return TLS_VERSION_INDEX.get(value, len(TLS_VERSIONS) - 1)


def status_code(status: int) -> int:
    if status == 0:
        return STATUS_NONE
    return status if 100 <= status <= 599 else STATUS_OTHER


# A cell key packs the label indexes into one integer (< 2**53, exact as a double):
# family 2 bits, listener 8, method 4, status 10, scheme 3, version 3, error type 6,
# TLS version 3, route 10 (49 bits).
_ROUTE_MASK: Final = 0x3FF << 39


def pack(family: int, listener: int, method: int, status: int, scheme: int, version: int, err: int,
         tls: int = 0, route: int = 0) -> int:
    return 1 + (family | listener << 2 | method << 10 | status << 14 | scheme << 24 | version << 27
                | err << 30 | tls << 36 | route << 39)


def unpack(key: int) -> tuple[int, int, int, int, int, int, int, int, int]:
    k = key - 1
    return (k & 0x3, k >> 2 & 0xFF, k >> 10 & 0xF, k >> 14 & 0x3FF, k >> 24 & 0x7, k >> 27 & 0x7,
            k >> 30 & 0x3F, k >> 36 & 0x7, k >> 39 & 0x3FF)


def with_route(key: int, route: int) -> int:
    """The same key with another route field (the master's renumbering)."""
    return 1 + ((key - 1) & ~_ROUTE_MASK | route << 39)


def family_of(key: int) -> int:
    return (key - 1) & 0x3


def route_of(key: int) -> int:
    return (key - 1) >> 39 & 0x3FF


_ALL_OTHER_ERR = len(ERROR_TYPES) - 1
OVERFLOW_KEYS: Final = (
    pack(FAMILY_REQUEST, LISTENER_OTHER, 0, STATUS_OTHER, 0, 0, _ALL_OTHER_ERR),
    pack(FAMILY_CONNECTION, LISTENER_OTHER, 0, STATUS_OTHER, 0, 0, _ALL_OTHER_ERR),
    pack(FAMILY_TLS, LISTENER_OTHER, 0, 0, 0, 0, _ALL_OTHER_ERR, len(TLS_VERSIONS) - 1),
)
OVERFLOW_REQ_KEY, OVERFLOW_CONN_KEY, OVERFLOW_TLS_KEY = OVERFLOW_KEYS
assert max(MASTER_ROUTES, ROUTES) + 2 <= 0x3FF and len(ERROR_TYPES) <= 0x3F + 1 and len(VERSIONS) <= 8


class Layout:
    """Offsets for a given number of listeners (fixed for the master's lifetime)."""

    __slots__ = ("active_requests", "cells", "delegations", "listeners", "nlisteners", "routes", "size",
                 "targets", "ws_closes")

    def __init__(self, nlisteners: int) -> None:
        if not 0 <= nlisteners < LISTENER_OTHER:
            raise ValueError(f"at most {LISTENER_OTHER - 1} listeners are supported by metrics")
        self.nlisteners = nlisteners
        self.ws_closes = HEADER
        self.listeners = self.ws_closes + len(WS_CODES)
        # one more block than listeners: an index the layout was not made for lands there
        self.delegations = self.listeners + (nlisteners + 1) * PER_LISTENER
        self.active_requests = self.delegations + (TARGETS + 1) * len(DELEGATION_RESULTS)
        self.routes = self.active_requests + len(METHODS) * len(SCHEMES)
        self.targets = self.routes + ROUTES * STR_FIELDS
        self.cells = self.targets + TARGETS * STR_FIELDS
        self.size = self.cells + CELLS * CELL  # in fields

    def listener(self, index: int) -> int:
        return self.listeners + min(index, self.nlisteners) * PER_LISTENER

    def delegation(self, row: int, result: int) -> int:
        return self.delegations + row * len(DELEGATION_RESULTS) + result

    def cell(self, index: int) -> int:
        return self.cells + index * CELL

    @property
    def nbytes(self) -> int:
        return self.size * 8

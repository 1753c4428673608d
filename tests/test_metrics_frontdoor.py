"""The front door's metrics at the Slot / Recorder / Collector level: TLS, HTTP/2, WebSocket,
http_route, the response cache, delegation and the request queue; retirement after a reap,
overflow of every bounded table, and the rendering checked by promtool and the OpenMetrics
parser."""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from greenfork.metrics import layout as L
from greenfork.metrics.collector import CacheStats, Collector, Lifecycle, ListenerView, MasterView, WorkerView
from greenfork.metrics.recorder import FRONT_DOOR_HOOKS, NullFrontDoor, Recorder
from greenfork.metrics.slots import Names, Slot, SlotPool
from tests.metricsutil import Key, find, monotonic_violations, parse, total

HTTP = {"server_address": "127.0.0.1", "server_port": "8000", "network_transport": "tcp"}
HTTPS = {"server_address": "127.0.0.1", "server_port": "8443", "network_transport": "tcp"}
UNIX = {"server_address": "/tmp/x.sock", "server_port": "", "network_transport": "unix"}
OTHER_LISTENER = dict.fromkeys(HTTP, "_OTHER")
REQ = "http_server_request_duration_seconds_count"
TLS = "greenfork_tls_handshake_duration_seconds"
OVERFLOW = "greenfork_metrics_label_overflow_total"


class Sources:
    """The master-side callables, changeable by a test."""

    def __init__(self) -> None:
        self.certs: list[tuple[str, float]] = [("example.com", 1_900_000_000.0)]
        self.cache = CacheStats(stores=0, evictions=0, bytes=0, capacity=64 * 2**20, entries=0)
        self.fail = False

    def certificates(self) -> Iterable[tuple[str, float]]:
        if self.fail:
            raise OSError("certificate store unreadable")
        return iter(self.certs)

    def cache_stats(self) -> CacheStats:
        if self.fail:
            raise RuntimeError("cache store unmapped")
        return self.cache


def collector(pool: SlotPool, workers: list[WorkerView] | None = None, sources: Sources | None = None,
              targets: tuple[str, ...] = ()) -> Collector:
    listeners = [ListenerView("http://127.0.0.1:8000", None, "127.0.0.1", "8000", "tcp"),
                 ListenerView("https://127.0.0.1:8443", None, "127.0.0.1", "8443", "tcp"),
                 ListenerView("unix:/tmp/x.sock", None, "/tmp/x.sock", "", "unix")]
    view = MasterView(workers or [], {"ready": len(workers or [])}, 2)
    return Collector(pool, listeners, Lifecycle(), lambda: view,
                     certificates=sources.certificates if sources else None,
                     cache_stats=sources.cache_stats if sources else None, delegation_targets=targets)


def scrape(c: Collector) -> dict[Key, float]:
    return parse(generate_latest(c).decode())  # type: ignore[arg-type]


def worker(pool: SlotPool, pid: int) -> tuple[Slot, Recorder]:
    slot = pool.acquire(1, 1000.0)
    pool.assign(slot, pid)
    return slot, Recorder(slot)


def families(c: Collector) -> set[str]:
    return {m.name for m in c.collect()}


# ------------------------------------------------------------------- TLS
def test_tls_handshakes_by_listener_version_and_error() -> None:
    pool = SlotPool(3)
    _, rec = worker(pool, 11)
    for _ in range(4):
        rec.tls_handshake_started(1)
    rec.tls_handshake_done(1, "TLSv1.3", "", 0.004)  # ssl.SSLObject.version()'s spelling
    rec.tls_handshake_done(1, "1.3", "", 0.02)  # and the label's
    rec.tls_handshake_done(1, "", "tls_handshake_timeout", 10.0)
    s = scrape(collector(pool))
    assert total(s, TLS + "_count", tls_protocol_version="1.3", **HTTPS) == 2
    assert total(s, TLS + "_bucket", tls_protocol_version="1.3", le="0.005") == 1
    assert total(s, TLS + "_bucket", tls_protocol_version="1.3", le="0.025") == 2
    failed = [ls for ls, _ in find(s, TLS + "_count") if "error_type" in ls]
    assert failed == [{**HTTPS, "error_type": "tls_handshake_timeout"}]  # no version was agreed
    assert total(s, TLS + "_bucket", error_type="tls_handshake_timeout", le="10.0") == 1
    assert total(s, TLS + "_sum") == pytest.approx(10.024)
    # one still in progress; the TLS listener is shown from zero, cleartext ones are not
    active = {frozenset(ls.items()): v for ls, v in find(s, "greenfork_active_tls_handshakes")}
    assert active == {frozenset(HTTPS.items()): 1}
    rec.tls_handshake_started(0)
    rec.tls_handshake_done(0, "SSLv3", "made_up_error", 0.1)  # neither in the closed sets
    s = scrape(collector(pool))
    assert total(s, TLS + "_count", tls_protocol_version="_OTHER", error_type="_OTHER", **HTTP) == 1


def test_certificate_expiry_from_the_masters_callable(caplog: pytest.LogCaptureFixture) -> None:
    pool = SlotPool(3)
    src = Sources()
    src.certs = [("example.com", 1_900_000_000.0), ("*.example.com", 1_800_000_000.0),
                 ("example.com", 1_700_000_000.0), ("", 1_950_000_000.0)]  # two listeners share a name
    c = collector(pool, sources=src)
    s = scrape(c)
    expiry = {ls["server_name"]: v for ls, v in find(s, "greenfork_tls_certificate_expiry_timestamp_seconds")}
    assert expiry == {"example.com": 1_700_000_000.0, "*.example.com": 1_800_000_000.0,
                      "_default": 1_950_000_000.0}
    src.fail = True
    with caplog.at_level(logging.INFO, "greenfork.master.metrics"):
        s = scrape(c)  # a failing source costs its samples, not the scrape
        scrape(c)
    assert not find(s, "greenfork_tls_certificate_expiry_timestamp_seconds")
    assert total(s, "greenfork_workers_configured") == 2
    failures = [r for r in caplog.records if "certificates source failed" in r.getMessage()]
    assert len(failures) == 1  # logged when it starts failing, not on every scrape
    src.fail = False
    assert find(scrape(c), "greenfork_tls_certificate_expiry_timestamp_seconds")
    assert "greenfork_tls_certificate_expiry_timestamp_seconds" not in families(collector(pool))


# ---------------------------------------------------------------- HTTP/2
def test_http2_streams_and_protocol_version() -> None:
    pool = SlotPool(3)
    _, rec = worker(pool, 11)
    c = collector(pool)
    assert "greenfork_http2_streams" not in families(c)  # nothing announced, nothing counted
    rec.announce(http2=True)
    s = scrape(c)
    for lst in (HTTP, HTTPS, UNIX):  # from zero on every listener once a worker speaks HTTP/2
        assert s[("greenfork_http2_streams_total", frozenset(lst.items()))] == 0
        assert s[("greenfork_active_http2_streams", frozenset(lst.items()))] == 0
    for _ in range(5):
        rec.http2_stream_opened(1)
    rec.http2_stream_closed(1)
    rec.http2_stream_closed(1)
    rec.http2_stream_closed(1, "stream_reset")
    rec.http2_stream_closed(1, "something new")
    rec.http2_stream_refused(1)
    rec.observe("GET", 200, "https", "2", "", 0.01)
    rec.conn_closed(1, "2", "stream_reset_flood", 3.0, 100, 200)
    s = scrape(c)
    assert total(s, "greenfork_active_http2_streams", **HTTPS) == 1
    streams = {ls.get("error_type", ""): v for ls, v in find(s, "greenfork_http2_streams_total")
               if ls["server_port"] == "8443"}
    assert streams == {"": 2, "stream_reset": 1, "_OTHER": 1, "stream_refused": 1}
    assert total(s, REQ, network_protocol_version="2", url_scheme="https") == 1
    assert total(s, "greenfork_connection_duration_seconds_count", network_protocol_version="2",
                 error_type="stream_reset_flood", **HTTPS) == 1


# ------------------------------------------------------------- WebSocket
def test_websocket_messages_bytes_and_closes() -> None:
    pool = SlotPool(3)
    _, rec = worker(pool, 11)
    assert "greenfork_active_websockets" not in families(collector(pool))
    rec.announce(websocket=True)
    s = scrape(collector(pool))
    assert s[("greenfork_active_websockets", frozenset())] == 0
    assert total(s, "greenfork_websocket_messages_total", direction="received") == 0
    for _ in range(4):
        rec.websocket_opened()
    for n in (10, 20, 30):
        rec.websocket_received(n)
    rec.websocket_sent(1000)
    rec.websocket_closed(1000)
    rec.websocket_closed(1006)
    rec.websocket_closed(4001)  # an application's own code
    s = scrape(collector(pool))
    assert s[("greenfork_active_websockets", frozenset())] == 1
    assert total(s, "greenfork_websocket_messages_total", direction="received") == 3
    assert total(s, "greenfork_websocket_messages_total", direction="sent") == 1
    assert total(s, "greenfork_websocket_bytes_total", direction="received") == 60
    assert total(s, "greenfork_websocket_bytes_total", direction="sent") == 1000
    closes = {ls["code"]: v for ls, v in find(s, "greenfork_websocket_closes_total")}
    assert closes == {"1000": 1, "1006": 1, "_OTHER": 1}


# -------------------------------------------------------- response cache
def test_response_cache_results_and_the_shared_stores_figures() -> None:
    pool = SlotPool(3)
    _, rec = worker(pool, 11)
    assert "greenfork_response_cache_requests" not in families(collector(pool))
    src = Sources()
    c = collector(pool, sources=src)
    s = scrape(c)
    assert {ls["result"]: v for ls, v in find(s, "greenfork_response_cache_requests_total")} == {
        "hit": 0, "miss": 0, "bypass": 0}
    for result in ("hit", "hit", "hit", "miss", "bypass"):
        rec.response_cache(result)  # type: ignore[arg-type]
    src.cache = CacheStats(stores=10, evictions=3, bytes=4096, capacity=65536, entries=7)
    s = scrape(c)
    assert {ls["result"]: v for ls, v in find(s, "greenfork_response_cache_requests_total")} == {
        "hit": 3, "miss": 1, "bypass": 1}
    assert total(s, "greenfork_response_cache_stores_total") == 10
    assert total(s, "greenfork_response_cache_evictions_total") == 3
    assert total(s, "greenfork_response_cache_bytes") == 4096
    assert total(s, "greenfork_response_cache_capacity_bytes") == 65536
    assert total(s, "greenfork_response_cache_entries") == 7
    # the store is made anew (HUP empties it): its counters restart, the exported ones do not
    src.cache = CacheStats(2, 0, 100)  # a plain tuple's worth: capacity and entries unknown
    after = scrape(c)
    assert monotonic_violations(s, after) == []
    assert total(after, "greenfork_response_cache_stores_total") == 12
    assert total(after, "greenfork_response_cache_evictions_total") == 3
    assert not find(after, "greenfork_response_cache_entries")
    src.fail = True
    failing = scrape(c)
    assert total(failing, "greenfork_response_cache_stores_total") == 12  # the last known count
    assert not find(failing, "greenfork_response_cache_bytes")  # a gauge is not shown stale
    assert monotonic_violations(after, failing) == []


# ------------------------------------------------------------ delegation
def test_delegated_connections_by_target_and_result() -> None:
    pool = SlotPool(3)
    _, rec = worker(pool, 11)
    c = collector(pool, targets=("/api", "admin.example.com"))
    s = scrape(c)
    rows = {(ls["target"], ls["result"]): v for ls, v in find(s, "greenfork_delegated_connections_total")}
    assert rows == {(t, r): 0 for t in ("/api", "admin.example.com") for r in L.DELEGATION_RESULTS}
    for _ in range(3):
        rec.delegated("/api", "success")
    rec.delegated("/api", "busy")
    rec.delegated("admin.example.com", "unavailable")
    rec.delegated("/reloaded-in", "failed")  # a target the master was not told about still shows
    s = scrape(c)
    rows = {(ls["target"], ls["result"]): v for ls, v in find(s, "greenfork_delegated_connections_total")}
    assert rows[("/api", "success")] == 3 and rows[("/api", "busy")] == 1
    assert rows[("admin.example.com", "unavailable")] == 1 and rows[("/reloaded-in", "failed")] == 1
    assert sum(rows.values()) == 6


def test_delegation_targets_overflow_to_other_and_are_counted() -> None:
    pool = SlotPool(1)
    _, rec = worker(pool, 11)
    for i in range(L.TARGETS + 5):
        rec.delegated(f"/t{i}", "success")
    rec.delegated("/t0", "success")  # a known one stays itself
    rec.delegated("/" + "x" * L.STR_BYTES, "failed")  # too long for the table
    s = scrape(collector(pool))
    rows = {(ls["target"], ls["result"]): v for ls, v in find(s, "greenfork_delegated_connections_total")}
    assert rows[("/t0", "success")] == 2
    assert rows[("_OTHER", "success")] == 5 and rows[("_OTHER", "failed")] == 1
    assert total(s, OVERFLOW, metric="greenfork_delegated_connections_total", label="target") == 6


# --------------------------------------------------------- request queue
def test_request_queue_gauges_per_worker_and_queue_full_requests() -> None:
    pool = SlotPool(3)
    _, a = worker(pool, 11)
    _, b = worker(pool, 12)
    assert "greenfork_queued_requests" not in families(collector(pool))
    a.announce(max_queued_requests=100)
    b.announce(max_queued_requests=100)
    a.queued_requests(7)
    a.observe("GET", 503, "http", "1.1", "request_queue_full", 0.0001)
    s = scrape(collector(pool))
    assert {ls["worker"]: v for ls, v in find(s, "greenfork_queued_requests")} == {"0": 7, "1": 0}
    assert {ls["worker"]: v for ls, v in find(s, "greenfork_queued_requests_limit")} == {"0": 100, "1": 100}
    assert total(s, REQ, http_response_status_code="503", error_type="request_queue_full") == 1


# ------------------------------------------------------------ http_route
def test_http_route_is_opt_in_bounded_and_counted_when_it_overflows() -> None:
    pool = SlotPool(1)
    _, rec = worker(pool, 11)
    rec.observe("GET", 200, "http", "1.1", "", 0.01)  # no route: no label
    for i in range(L.ROUTES):
        rec.observe("GET", 200, "http", "1.1", "", 0.01, f"/r{i}/{{id}}")
    rec.observe("GET", 200, "http", "1.1", "", 0.01, "/r0/{id}")
    for _ in range(3):  # table full: _OTHER, each observation counted
        rec.observe("POST", 201, "http", "1.1", "", 0.01, "/late")
    rec.observe("GET", 200, "http", "1.1", "", 0.01, "/" + "y" * L.STR_BYTES)  # too long
    rec.observe("GET", 200, "http", "1.1", "", 0.01, "/ünïcode")  # table full as well
    s = scrape(collector(pool))
    assert [ls for ls, _ in find(s, REQ) if "http_route" not in ls] == [
        {"http_request_method": "GET", "http_response_status_code": "200", "url_scheme": "http",
         "network_protocol_version": "1.1"}]
    assert total(s, REQ, http_route="/r0/{id}") == 2
    assert total(s, REQ, http_route="/r63/{id}") == 1
    assert total(s, REQ, http_route="_OTHER", http_request_method="POST",
                 http_response_status_code="201") == 3
    assert total(s, REQ, http_route="_OTHER") == 5
    assert total(s, OVERFLOW, metric="http_server_request_duration_seconds", label="http_route") == 5
    assert total(s, REQ) == 1 + L.ROUTES + 1 + 5  # nothing lost


def test_routes_are_strings_the_master_merges_across_slots() -> None:
    pool = SlotPool(1)
    _, a = worker(pool, 11)
    _, b = worker(pool, 12)
    a.observe("GET", 200, "http", "1.1", "", 0.01, "/users/{id}")
    a.observe("GET", 200, "http", "1.1", "", 0.01, "/ünïcode/\"quoted\"\\")
    b.observe("GET", 200, "http", "1.1", "", 0.01, "/orders")  # entry 0 of b's table
    b.observe("GET", 200, "http", "1.1", "", 0.01, "/users/{id}")  # entry 1 of b's, 0 of a's
    s = scrape(collector(pool))
    assert total(s, REQ, http_route="/users/{id}") == 2
    assert total(s, REQ, http_route="/orders") == 1
    assert total(s, REQ, http_route="/ünïcode/\"quoted\"\\") == 1
    # a route the app named with a lone surrogate (a str that is not valid UTF-8) is kept, escaped
    a.observe("GET", 200, "http", "1.1", "", 0.01, "/bad\udcff")
    assert total(scrape(collector(pool)), REQ, http_route="/bad\\udcff") == 1


def test_the_workers_inlined_request_hook_shape_still_works() -> None:
    """workers/instrument.py builds the 5-tuple itself and calls request_cell on a miss; a
    producer that has a route adds it as a sixth item."""
    pool = SlotPool(1)
    _, rec = worker(pool, 11)
    for raw in [("GET", 200, "http", "1.1", ""), ("GET", 200, "http", "1.1", "", "/api"),
                ("GET", 200, "http", "1.1", ""), ("BREW", 418, "http", "1.1", "")]:
        b = rec._req_cells.get(raw)
        if b is None:
            b = rec.request_cell(raw)
        rec.mv[b] += 1.0
        rec.mv[b + L.NBUCKETS] += 0.001
    assert ("GET", 200, "http", "1.1", "") in rec._req_cells  # cached: the next one is one lookup
    assert ("BREW", 418, "http", "1.1", "") not in rec._req_cells  # made-up methods are not kept
    s = scrape(collector(pool))
    assert total(s, REQ, http_route="/api") == 1
    assert total(s, REQ, http_request_method="GET") == 3
    assert total(s, REQ, http_request_method="_OTHER") == 1


def test_the_masters_own_route_table_is_bounded_and_never_renumbered() -> None:
    pool = SlotPool(1)
    pool.routes = Names(2)
    _, rec = worker(pool, 11)
    for route in ("/a", "/b", "/c"):
        rec.observe("GET", 200, "http", "1.1", "", 0.01, route)
    c = collector(pool)
    before = scrape(c)
    assert {ls["http_route"] for ls, _ in find(before, REQ)} == {"/a", "/b", "_OTHER"}
    slot = pool.live()[0][0]
    pool.release(slot)  # reaped: folded under the master's numbering
    _, rec2 = worker(pool, 12)
    rec2.observe("GET", 200, "http", "1.1", "", 0.01, "/b")  # entry 0 of the new holder's table
    rec2.observe("GET", 200, "http", "1.1", "", 0.01, "/d")
    after = scrape(c)
    assert monotonic_violations(before, after) == []
    assert total(after, REQ, http_route="/a") == 1 and total(after, REQ, http_route="/b") == 2
    assert total(after, REQ, http_route="_OTHER") == 2


# ------------------------------------------------------ bounds, listeners
def test_tls_cells_overflow_into_their_own_other_cell() -> None:
    pool = SlotPool(1)
    _, rec = worker(pool, 11)
    free = L.CELLS - L.FIRST_FREE_CELL
    for status in range(free):  # fill the table with request cells
        rec.observe("GET", 100 + status % 500, "http", "1.1" if status < 500 else "1.0", "", 0.01)
    rec.tls_handshake_started(0)
    rec.tls_handshake_done(0, "1.3", "", 0.01)
    rec.tls_handshake_started(0)
    rec.tls_handshake_done(0, "1.3", "", 0.01)
    s = scrape(collector(pool))
    assert total(s, TLS + "_count") == 2
    assert total(s, TLS + "_count", error_type="_OTHER", tls_protocol_version="_OTHER", **OTHER_LISTENER) == 2
    assert total(s, OVERFLOW, metric=TLS) == 2
    assert total(s, REQ) == free


def test_an_unknown_listener_index_is_other_and_corrupts_nothing() -> None:
    """A listener added by a reload has an index the master's layout was not made for."""
    pool = SlotPool(3)
    _, rec = worker(pool, 11)
    rec.conn_opened(3)
    rec.tls_handshake_started(3)
    rec.tls_handshake_done(3, "1.3", "", 0.01)
    rec.http2_stream_opened(3)
    rec.conn_closed(3, "1.1", "", 1.0, 10, 20)
    s = scrape(collector(pool))
    assert total(s, "greenfork_connections_accepted_total", **OTHER_LISTENER) == 1
    assert total(s, "greenfork_connections_accepted_total", **HTTP) == 0
    assert total(s, "greenfork_active_http2_streams", **OTHER_LISTENER) == 1
    assert total(s, TLS + "_count", **OTHER_LISTENER) == 1
    assert total(s, "greenfork_connection_duration_seconds_count", **OTHER_LISTENER) == 1
    assert total(s, "greenfork_sent_bytes_total", **OTHER_LISTENER) == 20
    assert not find(s, "greenfork_delegated_connections_total")  # the next region is untouched


# ---------------------------------------------------------- retirement
def populate(rec: Recorder, route: str = "/api/{id}") -> None:
    """One of everything a worker can record."""
    rec.announce(http2=True, websocket=True, max_queued_requests=50)
    rec.conn_opened(1)
    rec.tls_handshake_started(1)
    rec.tls_handshake_done(1, "TLSv1.3", "", 0.003)
    rec.tls_handshake_started(1)
    rec.tls_handshake_done(1, "", "tls_handshake_failed", 0.001)
    rec.tls_handshake_started(1)  # still in progress
    rec.http2_stream_opened(1)
    rec.http2_stream_opened(1)
    rec.http2_stream_closed(1)
    rec.http2_stream_refused(1)
    rec.observe("GET", 200, "https", "2", "", 0.02, route)
    rec.observe("GET", 503, "http", "1.1", "request_queue_full", 0.0001)
    rec.observe("POST", 502, "http", "1.1", "delegation_failed", 0.5)
    rec.conn_closed(0, "", "proxy_protocol_invalid", 0.001, 5, 0)
    rec.conn_closed(0, "", "tls_not_supported", 0.001, 5, 0)
    rec.websocket_opened()
    rec.websocket_opened()
    rec.websocket_received(5)
    rec.websocket_sent(7)
    rec.websocket_closed(1001)
    rec.response_cache("hit")
    rec.response_cache("miss")
    rec.response_cache("bypass")
    rec.delegated("/api", "success")
    rec.delegated("/api", "busy")
    rec.queued_requests(3)
    rec.sample([0, 1, 0], {("GET", "https"): 1})


def test_counters_survive_a_reap_and_gauges_do_not() -> None:
    pool = SlotPool(3)
    slot, rec = worker(pool, 11)
    _, other = worker(pool, 12)
    other.announce(http2=True, websocket=True)
    populate(rec)
    src = Sources()
    workers = [WorkerView(0, 11, 0.1, 1.0), WorkerView(1, 12, 0.1, 1.0)]
    c = collector(pool, workers, src, targets=("/api",))
    before = scrape(c)
    assert total(before, "greenfork_active_tls_handshakes", **HTTPS) == 1
    assert total(before, "greenfork_active_http2_streams", **HTTPS) == 1
    assert total(before, "greenfork_active_websockets") == 1
    assert total(before, "greenfork_queued_requests", worker="0") == 3
    pool.release(slot, cpu_seconds=1.0)  # the worker was reaped (SIGKILL, crash, recycle ...)
    c.view = lambda: MasterView(workers[1:], {"ready": 1}, 2)
    after = scrape(c)
    assert monotonic_violations(before, after) == []
    # gauges: live slots only
    assert total(after, "greenfork_active_tls_handshakes") == 0
    assert total(after, "greenfork_active_http2_streams") == 0
    assert total(after, "greenfork_active_websockets") == 0
    assert not find(after, "greenfork_queued_requests")
    # counters and histograms: kept
    assert total(after, TLS + "_count") == 2
    assert total(after, "greenfork_http2_streams_total", error_type="stream_refused") == 1
    assert total(after, "greenfork_websocket_closes_total", code="1001") == 1
    assert total(after, "greenfork_websocket_bytes_total", direction="sent") == 7
    assert total(after, "greenfork_response_cache_requests_total", result="hit") == 1
    assert total(after, "greenfork_delegated_connections_total", target="/api", result="busy") == 1
    assert total(after, REQ, http_route="/api/{id}") == 1
    assert total(after, "greenfork_connection_duration_seconds_count",
                 error_type="proxy_protocol_invalid") == 1
    # the slot's next holder starts from zero and adds on top
    slot2, rec2 = worker(pool, 13)
    assert slot2.index == slot.index
    populate(rec2, route="/other")
    again = scrape(c)
    assert monotonic_violations(after, again) == []
    assert total(again, TLS + "_count") == 4
    assert total(again, REQ, http_route="/api/{id}") == 1 and total(again, REQ, http_route="/other") == 1
    assert total(again, "greenfork_delegated_connections_total", target="/api", result="success") == 2


def test_string_tables_are_never_read_half_written() -> None:
    """A forked writer appends routes and targets as fast as it can while the master scrapes:
    every scrape parses, and every route it shows is one the writer wrote, whole."""
    pool = SlotPool(1)
    slot = pool.acquire(1, 0.0)
    routes = [f"/route-{i:02d}/" + "z" * (i * 3) for i in range(L.ROUTES)]
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            rec = Recorder(slot)
            for _ in range(20):
                for r in routes:
                    rec.observe("GET", 200, "http", "1.1", "", 0.01, r)
                    rec.delegated(r, "success")
        finally:
            os._exit(0)
    try:
        pool.assign(slot, pid)
        c = collector(pool)
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            exited = os.waitpid(pid, os.WNOHANG)[0] == pid
            s = scrape(c)
            shown = {ls["http_route"] for ls, _ in find(s, REQ)}
            assert shown <= set(routes), shown - set(routes)
            targets = {ls["target"] for ls, _ in find(s, "greenfork_delegated_connections_total")}
            assert targets <= {*routes[:L.TARGETS], "_OTHER"}, targets
            seen |= shown
            if exited:
                pid = 0
                break
        assert pid == 0, "the writer did not finish in time"
        assert seen == set(routes)
        assert total(s, REQ) == 20 * len(routes)
        others = total(s, "greenfork_delegated_connections_total", target="_OTHER")
        assert others == 20 * (L.ROUTES - L.TARGETS)
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


# ------------------------------------------------------------- rendering
def everything() -> Collector:
    pool = SlotPool(3)
    _, rec = worker(pool, os.getpid())
    populate(rec)
    gone, rec2 = worker(pool, 99)
    populate(rec2, "/gone")
    rec2.websocket_closed(4000)
    pool.release(gone, 0.5)
    src = Sources()
    src.cache = CacheStats(4, 1, 2048, 4096, 2)
    return collector(pool, [WorkerView(0, os.getpid(), 0.2, 1.0)], src, targets=("/api", "/idle"))


FRONT_DOOR_FAMILIES = {
    "greenfork_tls_handshake_duration_seconds", "greenfork_active_tls_handshakes",
    "greenfork_tls_certificate_expiry_timestamp_seconds", "greenfork_active_http2_streams",
    "greenfork_http2_streams", "greenfork_active_websockets", "greenfork_websocket_messages",
    "greenfork_websocket_bytes", "greenfork_websocket_closes", "greenfork_response_cache_requests",
    "greenfork_response_cache_stores", "greenfork_response_cache_evictions", "greenfork_response_cache_bytes",
    "greenfork_response_cache_capacity_bytes", "greenfork_response_cache_entries",
    "greenfork_delegated_connections", "greenfork_queued_requests", "greenfork_queued_requests_limit"}


def test_every_family_populated_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is required (scripts/test installs Debian's prometheus package)")
    c = everything()
    assert families(c) >= FRONT_DOOR_FAMILIES
    text = generate_latest(c)  # type: ignore[arg-type]
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    s = parse(text.decode())
    assert total(s, "greenfork_websocket_closes_total", code="_OTHER") == 1
    assert total(s, REQ, http_route="/gone") == 1


def test_every_family_populated_parses_as_openmetrics() -> None:
    text = om_exposition.generate_latest(everything()).decode()  # type: ignore[arg-type]
    assert text.endswith("# EOF\n")
    fams = {f.name: f for f in om_parse(text)}
    assert set(fams) >= FRONT_DOOR_FAMILIES
    assert fams["greenfork_http2_streams"].type == "counter"
    assert fams["greenfork_tls_handshake_duration_seconds"].type == "histogram"
    overflow = {(s.labels["metric"], s.labels.get("label", ""))
                for s in fams["greenfork_metrics_label_overflow"].samples}
    assert ("http_server_request_duration_seconds", "http_route") in overflow
    assert ("greenfork_tls_handshake_duration_seconds", "") in overflow


def test_every_family_is_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    missing = [name for name in families(everything()) if f"`{name}" not in doc]
    assert not missing, f"in the scrape, not in docs/metrics.md: {missing}"


def test_the_null_hooks_match_the_real_ones() -> None:
    """A worker without metrics gets NullFrontDoor's hooks: same names, same signatures."""
    for name in FRONT_DOOR_HOOKS:
        null, real = getattr(NullFrontDoor, name), getattr(Recorder, name)
        assert inspect.signature(null) == inspect.signature(real), name
    public = {n for n in vars(NullFrontDoor) if not n.startswith("_")}
    assert public == set(FRONT_DOOR_HOOKS)
    null = NullFrontDoor()
    null.tls_handshake_done(0, "1.3", "", 0.1)
    null.announce(http2=True)

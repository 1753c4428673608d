"""The metrics package on its own: slot layout, recorder, pool, retired totals, collector, /proc."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from greenfork.metrics import layout as L
from greenfork.metrics import procfs
from greenfork.metrics.collector import Collector, Lifecycle, ListenerView, MasterView, WorkerView
from greenfork.metrics.recorder import Recorder
from greenfork.metrics.slots import SlotPool
from tests.metricsutil import find, monotonic_violations, parse, total

ROOT = Path(__file__).resolve().parent.parent


def _collector(pool: SlotPool, workers: list[WorkerView] | None = None,
               lifecycle: Lifecycle | None = None) -> Collector:
    listeners = [ListenerView("http://127.0.0.1:8000", None, "127.0.0.1", "8000", "tcp"),
                 ListenerView("unix:/tmp/x.sock", None, "/tmp/x.sock", "", "unix")]
    view = MasterView(workers or [], {"ready": len(workers or [])}, 2)
    return Collector(pool, listeners, lifecycle or Lifecycle(), lambda: view)


def _req(rec: Recorder, listener: int, method: str, status: int, scheme: str, version: str, err: str,
         duration: float, rx: int, tx: int) -> None:
    rec.observe(method, status, scheme, version, err, duration)
    rec.transferred(listener, rx, tx)


def _scrape(c: Collector) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return parse(generate_latest(c).decode())  # type: ignore[arg-type]


def test_cell_keys_round_trip_and_fit_a_double() -> None:
    biggest = (3, 255, 15, 1023, 7, 7, 63, 7, 1023)  # every field at its widest
    for args in [(0, 0, 0, 0, 0, 0, 0, 0, 0), (1, 254, 9, 599, 2, 3, len(L.ERROR_TYPES) - 1, 5, 577),
                 (2, 0, 0, 0, 0, 0, 11, 4, 0), biggest]:
        key = L.pack(*args)
        assert L.unpack(key) == args
        assert key < 2**53 and int(float(key)) == key
        assert L.family_of(key) == args[0] and L.route_of(key) == args[8]
        assert L.unpack(L.with_route(key, 5)) == (*args[:8], 5)
    # the closed sets fit their fields
    assert len(L.METHODS) <= 16 and len(L.VERSIONS) <= 8 and len(L.SCHEMES) <= 8
    assert len(L.ERROR_TYPES) <= 64 and len(L.TLS_VERSIONS) <= 8
    assert L.MASTER_ROUTES + 2 <= 1024 and L.ROUTES + 2 <= 1024


def test_layout_is_versioned_and_sized_for_its_listeners() -> None:
    pool = SlotPool(3)
    slot = pool.acquire(1, 123.0)
    assert slot.mv[L.H_MAGIC] == L.MAGIC and slot.mv[L.H_START] == 123.0
    assert len(slot.mm) == L.Layout(3).nbytes == 8 * L.Layout(3).size
    with pytest.raises(ValueError):
        L.Layout(255)


def test_recorder_counts_exactly_with_the_catalogue_labels() -> None:
    pool = SlotPool(2)
    slot = pool.acquire(1, 0.0)
    pool.assign(slot, os.getpid())
    rec = Recorder(slot)
    for _ in range(90):
        _req(rec, 0, "GET", 200, "http", "1.1", "", 0.003, 100, 200)
    for _ in range(10):
        _req(rec, 1, "GET", 404, "http", "1.1", "", 0.2, 10, 20)
    _req(rec, 0, "BREW", 418, "http", "1.0", "", 0.01, 0, 0)  # not an RFC 9110 method
    _req(rec, 0, "get", 200, "http", "1.1", "", 0.01, 0, 0)  # methods are case-sensitive
    _req(rec, 0, "POST", 0, "http", "1.1", "io_error", 0.5, 0, 0)  # client left, nothing sent
    _req(rec, 0, "PUT", 413, "http", "1.1", "max_request_body_size_exceeded", 0.5, 0, 0)
    _req(rec, 0, "GET", 500, "http", "1.1", "some new error", 0.5, 0, 0)  # not in the closed list
    s = _scrape(_collector(pool))
    name = "http_server_request_duration_seconds_count"
    assert total(s, name, http_response_status_code="200", http_request_method="GET") == 90
    assert total(s, name, http_response_status_code="404") == 10
    assert total(s, "http_server_request_duration_seconds_bucket", http_response_status_code="200",
                 le="0.005") == 90
    assert total(s, "http_server_request_duration_seconds_bucket", http_response_status_code="404",
                 le="0.1") == 0
    assert total(s, "http_server_request_duration_seconds_bucket", http_response_status_code="404",
                 le="0.25") == 10
    assert total(s, name, http_request_method="_OTHER") == 2
    methods = {ls["http_request_method"] for ls, _ in find(s, name)}
    assert methods == {"GET", "_OTHER", "POST", "PUT"}
    gone = [ls for ls, _ in find(s, name) if ls.get("error_type") == "io_error"]
    assert gone == [{"http_request_method": "POST", "url_scheme": "http",
                     "network_protocol_version": "1.1", "error_type": "io_error"}]
    assert total(s, name, error_type="_OTHER", http_response_status_code="500") == 1
    ok = [ls for ls, _ in find(s, name) if ls.get("http_response_status_code") == "200"]
    assert all("error_type" not in ls for ls in ok)
    for ls, _ in find(s, name):  # no path, host, client or pid labels, ever
        assert set(ls) <= {"http_request_method", "http_response_status_code", "url_scheme",
                           "network_protocol_version", "error_type"}
    lst = {"server_address": "127.0.0.1", "server_port": "8000", "network_transport": "tcp"}
    assert total(s, "greenfork_received_bytes_total", **lst) == 9000
    assert total(s, "greenfork_sent_bytes_total", **lst) == 18000
    assert total(s, "greenfork_sent_bytes_total", network_transport="unix") == 200
    assert total(s, "greenfork_worker_requests_total", worker="0") == 105


def test_histogram_count_is_the_inf_bucket_and_buckets_are_exact() -> None:
    pool = SlotPool(1)
    slot = pool.acquire(1, 0.0)
    pool.assign(slot, 1)
    rec = Recorder(slot)
    for d in (0.005, 0.0051, 10.0, 11.0):  # bounds are inclusive (le)
        _req(rec, 0, "GET", 200, "http", "1.1", "", d, 0, 0)
    s = _scrape(_collector(pool))
    b = "http_server_request_duration_seconds_bucket"
    assert total(s, b, le="0.005") == 1 and total(s, b, le="0.01") == 2
    assert total(s, b, le="10.0") == 3 and total(s, b, le="+Inf") == 4
    assert total(s, "http_server_request_duration_seconds_count") == 4
    assert total(s, "http_server_request_duration_seconds_sum") == pytest.approx(21.0101)
    les = [ls["le"] for ls, _ in find(s, b)]
    assert les == ["0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1.0",
                   "2.5", "5.0", "7.5", "10.0", "+Inf"]


def test_connections_and_sampled_gauges() -> None:
    pool = SlotPool(2)
    slot = pool.acquire(1, 0.0)
    pool.assign(slot, 1)
    rec = Recorder(slot)
    for _ in range(3):
        rec.conn_opened(0)
    rec.conn_opened(1)
    rec.conn_closed(0, "1.1", "", 0.015, 5, 6)
    rec.conn_closed(0, "", "invalid_request_line", 0.001, 7, 8)
    rec.sample([1, 0], {("GET", "http"): 2, ("BREW", "http"): 1})
    s = _scrape(_collector(pool))
    tcp = {"network_transport": "tcp"}
    assert total(s, "greenfork_connections_accepted_total", **tcp) == 3
    assert total(s, "greenfork_active_connections", **tcp) == 1
    assert total(s, "greenfork_active_connections", network_transport="unix") == 1
    assert total(s, "greenfork_keepalive_connections", **tcp) == 1
    assert total(s, "greenfork_received_bytes_total", **tcp) == 12
    assert total(s, "http_server_active_requests", http_request_method="GET") == 2
    assert total(s, "http_server_active_requests", http_request_method="_OTHER") == 1
    c = "greenfork_connection_duration_seconds_count"
    assert total(s, c, network_protocol_version="1.1") == 1
    bad = find(s, c)
    assert {"error_type": "invalid_request_line", "server_address": "127.0.0.1", "server_port": "8000",
            "network_transport": "tcp"} in [ls for ls, _ in bad]
    assert total(s, "greenfork_connection_duration_seconds_bucket", le="0.02") == 2


def test_label_table_overflow_goes_to_other_and_is_counted() -> None:
    pool = SlotPool(1)
    slot = pool.acquire(1, 0.0)
    pool.assign(slot, 1)
    rec = Recorder(slot)
    n = L.CELLS + 50
    for status in range(100, 100 + n):  # every status code is a new label set
        _req(rec, 0, "GET", status % 500 + 100, "http", "1.1" if status < 600 else "1.0", "", 0.001, 0, 0)
    s = _scrape(_collector(pool))
    name = "http_server_request_duration_seconds_count"
    assert total(s, name) == n  # nothing lost
    over = total(s, name, http_request_method="_OTHER", http_response_status_code="_OTHER")
    assert over == n - (L.CELLS - L.FIRST_FREE_CELL)
    assert total(s, "greenfork_metrics_label_overflow_total",
                 metric="http_server_request_duration_seconds") == over


def test_reaped_slots_fold_into_retired_totals_and_are_reused() -> None:
    pool = SlotPool(1)
    lc = Lifecycle()
    a, b = pool.acquire(1, 0.0), pool.acquire(1, 0.0)
    pool.assign(a, 11)
    pool.assign(b, 12)
    assert (a.index, b.index) == (0, 1)
    for slot, n in ((a, 5), (b, 7)):
        rec = Recorder(slot)
        rec.conn_opened(0)
        for _ in range(n):
            _req(rec, 0, "GET", 200, "http", "1.1", "", 0.01, 1, 1)
    workers = [WorkerView(0, 11, 0.1, 1.0), WorkerView(1, 12, 0.1, 1.0)]
    before = _scrape(_collector(pool, workers, lc))
    pool.release(a, cpu_seconds=2.5)  # reaped: folded, zeroed, free
    assert a.mv[L.H_USED] == L.FIRST_FREE_CELL and not any(a.mv[L.HEADER:a.layout.cells])
    after = _scrape(_collector(pool, workers[1:], lc))
    assert monotonic_violations(before, after) == []
    assert total(after, "http_server_request_duration_seconds_count") == 12
    assert total(after, "greenfork_worker_requests_total", worker="0") == 5
    assert total(after, "greenfork_worker_cpu_seconds_total", worker="0") == 2.5
    assert total(after, "greenfork_active_connections") == 1  # gauges: live slots only
    assert total(after, "greenfork_connections_accepted_total") == 2  # counters: retired too
    c = pool.acquire(2, 0.0)
    assert c.index == 0  # lowest free slot first: the pool stays as small as the peak
    pool.assign(c, 13)
    _req(Recorder(c), 0, "GET", 200, "http", "1.1", "", 0.01, 0, 0)
    assert total(_scrape(_collector(pool)), "greenfork_worker_requests_total", worker="0") == 6
    assert len(pool.slots) == 2


def test_lifecycle_counters_start_at_zero_for_every_reason() -> None:
    lc = Lifecycle()
    lc.exited("killed")
    lc.reloaded(False)
    s = _scrape(_collector(SlotPool(1), lifecycle=lc))
    exits = {ls["reason"]: v for ls, v in find(s, "greenfork_worker_exits_total")}
    assert exits == {"reload": 0, "max_requests": 0, "max_lifetime": 0, "max_memory": 0, "timeout": 0,
                     "crashed": 0, "killed": 1, "boot_failed": 0, "scale_down": 0, "shutdown": 0}
    assert total(s, "greenfork_reloads_total", result="failure") == 1
    assert total(s, "greenfork_last_reload_successful") == 0
    info = find(s, "greenfork_build_info")
    assert len(info) == 1 and set(info[0][0]) == {"version", "python_version", "gevent_version"}
    assert find(s, "greenfork_listener_info")[0][0]["url"] == "http://127.0.0.1:8000"


def test_openmetrics_output_parses() -> None:
    pool = SlotPool(2)
    slot = pool.acquire(1, 0.0)
    pool.assign(slot, os.getpid())
    rec = Recorder(slot)
    _req(rec, 0, "GET", 200, "http", "1.1", "", 0.01, 1, 1)
    rec.conn_closed(0, "1.1", "keep_alive_timeout", 75.0, 0, 0)
    text = om_exposition.generate_latest(_collector(pool, [WorkerView(0, os.getpid(), 0.5, 1.0)])).decode()
    assert text.endswith("# EOF\n")
    names = {f.name for f in om_parse(text)}
    assert {"http_server_request_duration_seconds", "greenfork_build", "greenfork_worker_exits",
            "greenfork_connection_duration_seconds", "process_cpu_seconds"} <= names


def test_procfs_readers_agree_with_the_kernel() -> None:
    pid = os.getpid()
    rss = procfs.rss_bytes(pid)
    status = Path(f"/proc/{pid}/status").read_text()
    vmrss = int(next(x for x in status.splitlines() if x.startswith("VmRSS:")).split()[1]) * 1024
    assert rss is not None and abs(rss - vmrss) < 4 * 1024 * 1024
    pss_uss = procfs.smaps_rollup(pid)
    assert pss_uss is not None and 0 < pss_uss[1] <= pss_uss[0] <= rss + 4 * 1024 * 1024
    assert procfs.open_fds(pid) == len(os.listdir(f"/proc/{pid}/fd"))
    t = os.times()
    cpu = procfs.cpu_seconds(pid)
    assert cpu is not None and abs(cpu - (t.user + t.system)) < 0.1
    assert procfs.rss_bytes(2**22 + 12345) is None  # no such process: no sample, no error


def test_smaps_cache_refreshes_at_most_every_15_seconds() -> None:
    cache = procfs.SmapsCache()
    first = cache.get(os.getpid(), now=100.0)
    junk = bytearray(32 * 1024 * 1024)  # grows USS
    junk[::4096] = b"x" * len(junk[::4096])
    assert cache.get(os.getpid(), now=114.0) == first
    later = cache.get(os.getpid(), now=115.0)
    assert later is not None and first is not None and later[1] > first[1] + 16 * 1024 * 1024


def test_listen_queue_from_tcp_info() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(7)
    clients = [socket.create_connection(srv.getsockname(), timeout=5) for _ in range(5)]
    try:
        assert procfs.listen_queue(srv) == (5, 7)
        srv.accept()[0].close()
        assert procfs.listen_queue(srv) == (4, 7)
    finally:
        for c in clients:
            c.close()
        srv.close()
    u = socket.socket(socket.AF_UNIX)
    assert procfs.listen_queue(u) is None
    u.close()


def test_metrics_imports_neither_master_nor_workers() -> None:
    for path in (ROOT / "metrics").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("greenfork.master", "greenfork.workers", "gevent")), \
                    f"{path.name} imports {name}"
    code = ("import sys, greenfork.metrics.collector, greenfork.metrics.recorder, "
            "greenfork.metrics.appmetrics\n"
            "bad = [m for m in sys.modules if m.startswith(('greenfork.master', 'greenfork.workers', "
            "'gevent'))]\nassert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_app_metrics_files_are_keyed_by_slot(tmp_path: Path) -> None:
    code = (f"import os\nos.environ['PROMETHEUS_MULTIPROC_DIR'] = {str(tmp_path)!r}\n"
            "from greenfork.metrics import appmetrics\nappmetrics.use_slot_identity(3)\n"
            "from prometheus_client import Counter, Gauge\n"
            "Counter('c', 'doc').inc(2)\nGauge('g', 'doc', multiprocess_mode='livesum').set(1)\n")
    for _ in range(2):  # two successive holders of slot 3
        subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_w3.db", "gauge_livesum_w3.db"]
    from prometheus_client.multiprocess import MultiProcessCollector

    samples = {s.name: s.value for f in MultiProcessCollector(None, path=str(tmp_path)).collect()
               for s in f.samples}
    assert samples["c_total"] == 4  # the second holder carried on from the first
    from greenfork.metrics import appmetrics

    appmetrics.slot_gone(str(tmp_path), 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_w3.db"]

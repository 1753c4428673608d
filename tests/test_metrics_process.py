"""Metrics end to end: real greenfork processes, real clients, real signals, promtool."""

from __future__ import annotations

import gzip
import itertools
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from greenfork.metrics import procfs
from tests.metricsutil import find, get, monotonic_violations, scrape, total
from tests.procs import Greenfork, Launcher, http_get, wait_for

pytestmark = pytest.mark.timeout(90)

METRICS = ["--metrics-bind", "http://127.0.0.1:0"]
COUNT = "http_server_request_duration_seconds_count"


def start(launcher: Launcher, *args: str, workers: int = 2) -> Greenfork:
    return launcher.start(["metricsapp:app", "-b", "http://127.0.0.1:0", *METRICS, *args], workers=workers)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is required (scripts/test installs Debian's prometheus package)")
    return path


def requests_seen(g: Greenfork) -> float:
    return total(scrape(g.info["metrics"]), COUNT)


def test_exact_counts_across_workers(launcher: Launcher) -> None:
    g = start(launcher)
    url = g.info["metrics"]
    assert url.startswith("http://127.0.0.1:") and f"Metrics listening on: {url}" in g.log()
    pids = set()
    for i in range(100):
        status, _, body = http_get(g.url(), "/status/404" if i % 10 == 9 else "/pid")
        assert status == (404 if i % 10 == 9 else 200)
        if status == 200:
            pids.add(int(body))
    s = scrape(url)
    assert total(s, COUNT, http_response_status_code="200") == 90
    assert total(s, COUNT, http_response_status_code="404") == 10
    assert total(s, COUNT) == 100
    assert sum(v for _, v in find(s, "greenfork_worker_requests_total")) == 100
    assert {ls["worker"] for ls, _ in find(s, "greenfork_worker_requests_total")} == {"0", "1"}
    labels = {frozenset(ls.items()) for ls, _ in find(s, COUNT)}
    assert labels == {frozenset({"http_request_method": "GET", "http_response_status_code": code,
                                 "url_scheme": "http", "network_protocol_version": "1.1"}.items())
                      for code in ("200", "404")}
    port = str(g.port())
    lst = {"server_address": "127.0.0.1", "server_port": port, "network_transport": "tcp"}
    assert total(s, "greenfork_listener_info", url=g.url(), **lst) == 1
    wait_for(lambda: total(scrape(url), "greenfork_connections_accepted_total", **lst) == 100, 5,
             "100 accepted connections")
    wait_for(lambda: total(scrape(url), "greenfork_connection_duration_seconds_count", **lst) == 100, 5,
             "100 closed connections")
    s = scrape(url)
    assert total(s, "greenfork_received_bytes_total", **lst) > 100 * 30
    assert total(s, "greenfork_sent_bytes_total", **lst) > 100 * 60
    assert total(s, "greenfork_workers", state="ready") == 2
    assert total(s, "greenfork_workers_configured") == 2
    assert total(s, "greenfork_worker_spawns_total") == 2
    assert total(s, "process_resident_memory_bytes") > 0  # the master's own process_* family


def test_no_counter_goes_down_across_kill_crash_and_hup(launcher: Launcher) -> None:
    g = start(launcher)
    url = g.info["metrics"]

    def load(n: int) -> None:
        for _ in range(n):
            assert http_get(g.url(), "/")[0] == 200

    load(20)
    scrapes = [scrape(url)]
    victim = g.workers()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: total(scrape(url), "greenfork_worker_exits_total", reason="killed") == 1, 10,
             "the kill to be counted")
    wait_for(lambda: len(g.workers()) == 2 and victim not in g.workers(), 10, "a replacement")
    scrapes.append(scrape(url))
    load(20)
    scrapes.append(scrape(url))
    try:
        http_get(g.url(), "/crash", timeout=5)
    except (ConnectionError, OSError):
        pass  # the worker died answering: the client sees the connection drop
    wait_for(lambda: total(scrape(url), "greenfork_worker_exits_total", reason="crashed") == 1, 10,
             "the crash to be counted")
    wait_for(lambda: len(g.workers()) == 2, 10, "a replacement")
    load(20)
    scrapes.append(scrape(url))
    old = set(g.workers())
    g.signal(signal.SIGHUP)
    wait_for(lambda: g.reload_info()["generation"] == 2, 10, "generation 2")
    wait_for(lambda: len(g.workers()) == 2 and not set(g.workers()) & old, 15, "old workers to retire")
    load(20)
    scrapes.append(scrape(url))
    for before, after in itertools.pairwise(scrapes):
        assert monotonic_violations(before, after) == []
    last = scrapes[-1]
    assert total(last, COUNT) == 80
    exits = {ls["reason"]: v for ls, v in find(last, "greenfork_worker_exits_total")}
    assert exits["killed"] == 1 and exits["crashed"] == 1 and exits["reload"] == 2
    assert sum(exits.values()) == 4
    assert total(last, "greenfork_reloads_total", result="success") == 1
    assert total(last, "greenfork_last_reload_successful") == 1
    assert total(last, "greenfork_worker_spawns_total") == 6
    # bounded slots: 2 workers + a draining generation of 2, whatever the churn
    assert len(find(last, "greenfork_worker_requests_total")) <= 4
    assert len(find(last, "greenfork_worker_resident_memory_bytes")) == 2


def test_memory_gauges_agree_with_proc(launcher: Launcher) -> None:
    g = start(launcher)
    s = scrape(g.info["metrics"])
    pids = g.workers()
    assert len(pids) == 2
    rss = sorted(v for _, v in find(s, "greenfork_worker_resident_memory_bytes"))
    real = sorted(float(procfs.rss_bytes(p) or 0) for p in pids)
    for got, want in zip(rss, real, strict=True):
        assert abs(got - want) < max(0.05 * want, 2 * 1024 * 1024)
    pss = sorted(v for _, v in find(s, "greenfork_worker_proportional_memory_bytes"))
    uss = sorted(v for _, v in find(s, "greenfork_worker_unique_memory_bytes"))
    real_pss = sorted(float((procfs.smaps_rollup(p) or (0, 0))[0]) for p in pids)
    for got, want in zip(pss, real_pss, strict=True):
        assert abs(got - want) < max(0.05 * want, 2 * 1024 * 1024)
    for u, p, r in zip(uss, pss, rss, strict=True):
        assert 0 < u <= p <= r * 1.05
    fds = sorted(v for _, v in find(s, "greenfork_worker_open_fds"))
    assert fds == sorted(float(len(os.listdir(f"/proc/{p}/fd"))) for p in pids)
    cpu = {ls["worker"]: v for ls, v in find(s, "greenfork_worker_cpu_seconds_total")}
    assert set(cpu) == {"0", "1"} and all(v > 0 for v in cpu.values())
    ages = [v for _, v in find(s, "greenfork_worker_heartbeat_age_seconds")]
    assert len(ages) == 2 and all(0 <= a < 3 for a in ages)
    starts = [v for _, v in find(s, "greenfork_worker_start_time_seconds")]
    import time

    assert all(time.time() - 60 < t <= time.time() for t in starts)


def test_filled_backlog_shows_in_the_listen_queue(launcher: Launcher) -> None:
    g = start(launcher, "--backlog", "8", workers=1)
    url = g.info["metrics"]
    lst = {"server_port": str(g.port())}
    assert total(scrape(url), "greenfork_listen_queue_limit", **lst) == 8
    worker = g.workers()[0]
    os.kill(worker, signal.SIGSTOP)  # accepts nothing: connections pile up in the kernel queue
    clients = []
    try:
        for _ in range(6):
            c = socket.create_connection(("127.0.0.1", g.port()), timeout=5)
            clients.append(c)
            # its first bytes: with --defer-accept (the default) a connection joins the accept
            # queue with them, not before
            c.sendall(b"GET / HTTP/1.1\r\n")
        s = scrape(url)
        assert total(s, "greenfork_listen_queue_length", **lst) == 6
        assert total(s, "greenfork_listen_queue_limit", **lst) == 8
    finally:
        os.kill(worker, signal.SIGCONT)
        for c in clients:
            c.close()
    wait_for(lambda: total(scrape(url), "greenfork_listen_queue_length", **lst) == 0, 10,
             "the worker to drain the queue")


def test_promtool_openmetrics_and_gzip(launcher: Launcher) -> None:
    g = start(launcher)
    for path in ("/", "/status/500", "/status/404"):
        http_get(g.url(), path)
    url = g.info["metrics"]
    status, headers, body = get(url)
    assert status == 200
    check = subprocess.run([promtool(), "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    # what a Prometheus server sends
    accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
              "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    status, headers, body = get(url, headers={"Accept": accept, "Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert headers["content-encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n")
    fams = {f.name: f for f in om_parse(text)}
    assert {"http_server_request_duration_seconds", "greenfork_worker_exits", "greenfork_build",
            "greenfork_listener", "process_cpu_seconds"} <= set(fams)
    req = fams["http_server_request_duration_seconds"]
    assert sum(s.value for s in req.samples if s.name.endswith("_count")) == 3
    status, headers, body = get(url, headers={"Accept": "text/html"})
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "content-encoding" not in headers


def test_readyz_and_livez_follow_the_master(launcher: Launcher, tmp_path: Path) -> None:
    g = start(launcher, workers=1)
    url = g.info["metrics"]
    assert get(url, "/livez")[0] == 200
    assert get(url, "/readyz")[0] == 200
    assert get(url, "/nothing")[0] == 404
    assert get(url, "/metrics", method="DELETE")[0] == 405
    mark = tmp_path / "in-app"
    import threading

    t = threading.Thread(target=lambda: http_get(g.url(), f"/sleep?s=3&mark={mark}", timeout=20))
    t.start()
    try:
        wait_for(mark.exists, 10, "the request to be in the app")
        g.signal(signal.SIGTERM)  # draining: a request is still in flight, the master loop runs on
        wait_for(lambda: get(url, "/readyz")[0] == 503, 5, "readyz to turn 503")
        assert get(url, "/livez")[0] == 200
        s = scrape(url)
        assert total(s, "greenfork_workers", state="draining") == 1
        assert total(s, "http_server_active_requests", http_request_method="GET") in (0, 1)
    finally:
        t.join(20)
    assert g.wait(20) == 0


def test_workers_do_not_hold_the_metrics_listener(launcher: Launcher) -> None:
    g = start(launcher)
    port = int(g.info["metrics"].rsplit(":", 1)[1])
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port and f[3] == "0A":
            inode = f[9]
    assert inode is not None

    def sockets(pid: int) -> set[str]:
        return {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}

    assert f"socket:[{inode}]" in sockets(g.pid)
    for w in g.workers():
        assert f"socket:[{inode}]" not in sockets(w)


def test_active_connections_and_keepalive_gauges(launcher: Launcher) -> None:
    g = start(launcher, workers=1)
    url = g.info["metrics"]
    conns = []
    try:
        for _ in range(3):
            c = socket.create_connection(("127.0.0.1", g.port()), timeout=5)
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
            conns.append(c)
        lst = {"server_port": str(g.port())}
        wait_for(lambda: total(scrape(url), "greenfork_active_connections", **lst) == 3, 5, "3 connections")
        wait_for(lambda: total(scrape(url), "greenfork_keepalive_connections", **lst) == 3, 5,
                 "3 idle keep-alive connections (sampled each second)")
    finally:
        for c in conns:
            c.close()
    wait_for(lambda: total(scrape(url), "greenfork_active_connections", **lst) == 0, 5, "all closed")


def test_app_metrics_merged_and_keyed_by_slot(launcher: Launcher) -> None:
    g = start(launcher, "--app-metrics")
    url = g.info["metrics"]
    for _ in range(20):
        assert http_get(g.url(), "/app/hit")[0] == 200
    s = scrape(url)
    assert total(s, "myapp_hits_total", kind="test") == 20
    assert total(s, "myapp_live_workers") == 2
    assert total(s, COUNT) == 20  # the server's own families are there too
    directory = g.log().split("Application metrics directory: ", 1)[1].split()[0]
    victim = g.workers()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(g.workers()) == 2 and victim not in g.workers(), 10, "a replacement")
    for _ in range(5):
        assert http_get(g.url(), "/app/hit")[0] == 200
    s = scrape(url)
    assert total(s, "myapp_hits_total", kind="test") == 25  # counters survive the kill
    wait_for(lambda: total(scrape(url), "myapp_live_workers") == 2, 5, "live gauges of live workers only")
    files = sorted(os.listdir(directory))
    assert files and all(f.rsplit("_", 1)[1] in ("w0.db", "w1.db") for f in files), files
    check = subprocess.run([promtool(), "check", "metrics"], input=get(url)[2], capture_output=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    g.signal(signal.SIGTERM)
    assert g.wait(20) == 0
    assert not os.path.exists(directory)  # private and removed with the master


def test_metrics_are_off_by_default(launcher: Launcher) -> None:
    g = launcher.start(["metricsapp:app", "-b", "http://127.0.0.1:0"])
    assert "metrics" not in g.info and "Metrics listening" not in g.log()
    assert http_get(g.url(), "/")[0] == 200


def _hello(environ: dict[str, object], start_response: object) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "2")])  # type: ignore[operator]
    return [b"ok"]


def test_python_api_reports_the_metrics_address() -> None:
    from greenfork.master import Server

    server = Server(_hello, bind=["http://127.0.0.1:0"], metrics_bind="http://127.0.0.1:0", workers=1,
                    error_logfile="/dev/null")
    server.start(timeout=30)
    try:
        url = server.metrics_address
        assert url is not None and url.startswith("http://127.0.0.1:")
        # the embedding process handed the socket to the master and kept no copy of it
        assert all(lst.sock.fileno() == -1 for lst in server.metrics_listeners)
        assert http_get(server.addresses[0], "/")[0] == 200
        assert total(scrape(url), COUNT, http_response_status_code="200") == 1
    finally:
        assert server.stop(timeout=20) == 0


def test_unix_listeners_and_a_unix_metrics_socket(launcher: Launcher, sock_dir: Path) -> None:
    app_sock, metrics_sock = sock_dir / "app.sock", sock_dir / "metrics.sock"
    g = launcher.start(["metricsapp:app", "-b", "http://127.0.0.1:0", "-b", f"unix:{app_sock}",
                        "--metrics-bind", f"unix:{metrics_sock}"])
    assert g.info["metrics"] == f"unix:{metrics_sock}"
    assert http_get(f"unix:{app_sock}", "/status/201")[0] == 201
    status, _, body = http_get(f"unix:{metrics_sock}", "/metrics")
    assert status == 200
    from tests.metricsutil import parse

    s = parse(body.decode())
    unix = {"network_transport": "unix", "server_address": str(app_sock), "server_port": ""}
    assert total(s, "greenfork_listener_info", url=f"unix:{app_sock}", **unix) == 1
    assert total(s, COUNT, http_response_status_code="201") == 1
    # TCP_INFO only exists for TCP: the unix listener has no queue samples, the TCP one has
    assert not [ls for ls, _ in find(s, "greenfork_listen_queue_limit") if ls["network_transport"] == "unix"]
    assert len(find(s, "greenfork_listen_queue_limit")) == 1


def test_app_metrics_without_metrics_bind_is_a_warning(launcher: Launcher) -> None:
    g = launcher.start(["metricsapp:app", "-b", "http://127.0.0.1:0", "--app-metrics"])
    assert "--app-metrics does nothing without --metrics-bind" in g.log()
    assert http_get(g.url(), "/app/hit")[0] == 200


def test_no_counter_goes_down_across_recycling(launcher: Launcher) -> None:
    """--max-requests recycles workers (replacement first); their counts stay in the totals."""
    g = start(launcher, "--max-requests", "15", "--max-requests-jitter", "0")
    url = g.info["metrics"]
    scrapes = [scrape(url)]
    sent = 0

    def serve(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            assert http_get(g.url(), "/")[0] == 200
        sent += n
        scrapes.append(scrape(url))

    for _ in range(3):
        serve(20)

    # A worker at its limit serves on until its replacement is ready, so no number of requests
    # sent up front is sure to make two of them reach it (one served at least 32 of 60 while its
    # replacement booted on a loaded machine; the other two shared the rest): requests go on until two
    # have been recycled. (Each recycle boots the replacement first, then drains the old worker.)
    def recycled_twice() -> bool:
        serve(5)
        return total(scrapes[-1], "greenfork_worker_exits_total", reason="max_requests") >= 2

    wait_for(recycled_twice, 60, "workers recycled for max_requests")
    for before, after in itertools.pairwise(scrapes):
        assert monotonic_violations(before, after) == []
    assert total(scrapes[-1], COUNT) == sent  # every request ever served, whoever served it

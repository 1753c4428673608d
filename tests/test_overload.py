"""--max-queued-requests in real greenfork processes (docs/overload.md): past N requests in
flight a worker answers 503 at once, and /readyz says so before that."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from pathlib import Path

import pytest
from hyperframe.frame import DataFrame

from tests.h2raw import Raw, request_headers
from tests.metricsutil import get, scrape, total
from tests.procs import Greenfork, Launcher, wait_for

pytestmark = pytest.mark.timeout(90)

LIMIT = 4
SLEEP = 2.0


def start(launcher: Launcher, *args: str, workers: int = 1) -> Greenfork:
    return launcher.start(["testapp:app", "-b", "http://127.0.0.1:0", "--metrics-bind", "http://127.0.0.1:0",
                           *args], workers=workers)


def request(url: str, path: str, timeout: float = 20) -> tuple[int, dict[str, str], bytes, float]:
    host, port = url.split("://")[1].rsplit(":", 1)
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, headers, resp.read(), time.monotonic() - started
    finally:
        conn.close()


def burst(url: str, path: str, n: int) -> list[tuple[int, dict[str, str], bytes, float]]:
    """n clients at once, each on its own connection."""
    results: list[tuple[int, dict[str, str], bytes, float]] = []
    gate = threading.Barrier(n)

    def client() -> None:
        gate.wait(10)
        results.append(request(url, path))

    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == n
    return results


def test_past_the_limit_requests_get_503_at_once(launcher: Launcher, tmp_path: Path) -> None:
    g = start(launcher, "--max-queued-requests", str(LIMIT))
    results = burst(g.url(), f"/sleep?s={SLEEP}", 2 * LIMIT)
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(ok) == LIMIT and len(refused) == LIMIT, [(r[0], round(r[3], 2)) for r in results]
    for _, headers, body, elapsed in refused:
        assert elapsed < 1.0  # answered at once, not after the slow requests
        assert headers["retry-after"] == "1"
        assert headers["connection"] == "close"
        assert headers["content-type"] == "text/plain"
        assert body == b"503 request queue full\n"
    for _, _, body, elapsed in ok:
        assert body == b"slept\n" and SLEEP - 0.1 < elapsed < SLEEP + 3  # none waited for a timeout
    s = scrape(g.info["metrics"])
    assert total(s, "http_server_request_duration_seconds_count", error_type="request_queue_full",
                 http_response_status_code="503") == LIMIT
    assert total(s, "greenfork_queued_requests_limit", worker="0") == LIMIT
    assert "has room again; 4 request(s) were answered 503 at the limit" in g.log()
    assert request(g.url(), "/sleep?s=0")[0] == 200  # room again


def test_readyz_reports_saturation_while_the_worker_is_full(launcher: Launcher) -> None:
    g = start(launcher, "--max-queued-requests", str(LIMIT))
    metrics = g.info["metrics"]
    assert get(metrics, "/readyz")[0] == 200
    threads = [threading.Thread(target=request, args=(g.url(), f"/sleep?s={SLEEP * 2}"))
               for _ in range(LIMIT)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: total(scrape(metrics), "greenfork_queued_requests", worker="0") == LIMIT, 10,
                 "the worker's queue to fill")
        assert get(metrics, "/readyz")[0] == 503  # a load balancer steers away before the 503s
        status, _, _, elapsed = request(g.url(), "/sleep?s=0")
        assert status == 503 and elapsed < 1.0
    finally:
        for t in threads:
            t.join(30)
    wait_for(lambda: get(metrics, "/readyz")[0] == 200, 10, "/readyz to recover")
    assert total(scrape(metrics), "greenfork_queued_requests", worker="0") == 0


def test_a_keep_alive_connection_is_closed_after_its_503(launcher: Launcher) -> None:
    g = start(launcher, "--max-queued-requests", "1")
    slow = threading.Thread(target=request, args=(g.url(), f"/sleep?s={SLEEP}"))
    slow.start()
    try:
        wait_for(lambda: total(scrape(g.info["metrics"]), "greenfork_queued_requests", worker="0") == 1, 10,
                 "the slow request to be in flight")
        host, port = g.url().split("://")[1].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            # a POST whose body the server never reads: the refusal still goes out whole
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"\r\nRetry-After: 1\r\n" in head and b"\r\nConnection: close\r\n" in head
        assert body == b"503 request queue full\n"
    finally:
        slow.join(30)


def test_cache_hits_are_answered_while_the_worker_is_full(launcher: Launcher, tmp_path: Path) -> None:
    """As HTTP.sys's kernel cache answers in front of its request queue."""
    g = launcher.start(["cacheapp:app", "-b", "http://127.0.0.1:0", "--metrics-bind", "http://127.0.0.1:0",
                        "--response-cache", "1MiB", "--max-queued-requests", "2"],
                       env={"CACHEAPP_LOG": str(tmp_path / "calls.log")})
    page = "/r?cc=public%2C%20max-age%3D60"
    assert request(g.url(), page)[0] == 200
    slow = [threading.Thread(target=request, args=(g.url(), f"/r?slow={SLEEP}&n={i}")) for i in range(2)]
    for t in slow:
        t.start()
    try:
        wait_for(lambda: total(scrape(g.info["metrics"]), "greenfork_queued_requests", worker="0") == 2, 10,
                 "the worker to fill")
        status, headers, _, elapsed = request(g.url(), page)
        assert status == 200 and "age" in headers and elapsed < 1.0
        assert request(g.url(), "/r?not-cached")[0] == 503
    finally:
        for t in slow:
            t.join(30)


def test_http2_streams_past_the_limit_get_503_at_once(launcher: Launcher) -> None:
    """Streams of one HTTP/2 connection are requests in flight like any other: past the limit
    each gets its 503 at once (no Connection field, which HTTP/2 forbids) and the connection
    carries on with the streams in flight and with new ones."""
    g = start(launcher, "--max-queued-requests", str(LIMIT))
    with Raw.connect(g.port()) as c:
        sids = [1 + 2 * i for i in range(2 * LIMIT)]
        started = time.monotonic()
        for sid in sids:
            c.request(sid, f"/sleep?s={SLEEP}")
        ended_at: dict[int, float] = {}
        deadline = started + SLEEP + 10
        while len(ended_at) < len(sids) and time.monotonic() < deadline:
            c.until(lambda f: f.stream_id in sids and "END_STREAM" in f.flags, deadline - time.monotonic())
            for sid in c.ended:
                ended_at.setdefault(sid, time.monotonic() - started)
        heads = {sid: c.heads[sid] for sid in sids}
        refused = [sid for sid in sids if heads[sid][":status"] == "503"]
        ok = [sid for sid in sids if heads[sid][":status"] == "200"]
        assert len(refused) == LIMIT and len(ok) == LIMIT, {sid: (h[":status"], ended_at[sid])
                                                            for sid, h in heads.items()}
        for sid in refused:
            assert ended_at[sid] < 1.0  # answered at once, not after the slow streams
            assert heads[sid]["retry-after"] == "1" and "connection" not in heads[sid]
            assert bytes(c.bodies[sid]) == b"503 request queue full\n"
        for sid in ok:
            assert bytes(c.bodies[sid]) == b"slept\n" and SLEEP - 0.1 < ended_at[sid] < SLEEP + 3
        c.request(101, "/sleep?s=0")
        head, body = c.response(101, timeout=10)
        assert head[":status"] == "200" and body == b"slept\n"  # room again, on the same connection
    s = scrape(g.info["metrics"])
    assert total(s, "http_server_request_duration_seconds_count", error_type="request_queue_full",
                 http_response_status_code="503") == LIMIT


def test_an_http2_upload_refused_mid_body_leaves_the_connection_working(launcher: Launcher) -> None:
    """An upload refused with 503 while its body is still coming (RFC 9113 8.1: a complete response
    before the whole request): the client's remaining DATA is discarded or its stream reset, and
    the connection keeps serving other streams."""
    g = start(launcher, "--max-queued-requests", "1")
    with Raw.connect(g.port()) as c:
        c.request(1, f"/sleep?s={SLEEP}")
        wait_for(lambda: total(scrape(g.info["metrics"]), "greenfork_queued_requests", worker="0") == 1, 10,
                 "the slow stream to be in flight")
        c.send(*c.header_frames(3, request_headers("/echo", "POST", extra=[("content-length", "200000")]),
                                end_stream=False))
        c.send(*[DataFrame(3, b"a" * 16000) for _ in range(3)])
        head, body = c.response(3)
        assert head[":status"] == "503" and body == b"503 request queue full\n"
        c.send(*[DataFrame(3, b"a" * 16000) for _ in range(9)],
               DataFrame(3, b"a" * 8000, flags=["END_STREAM"]))
        head, body = c.response(1)
        assert head[":status"] == "200" and body == b"slept\n"
        c.request(5, "/echo", method="POST", body=b"x" * 1000)
        head, body = c.response(5)
        assert head[":status"] == "200" and body == b"x" * 1000
        assert c.resets.get(3, 0) in (0, 5)  # NO_ERROR or STREAM_CLOSED, never a connection error


def test_the_gate_answers_first_and_the_503_names_the_forwarded_client(launcher: Launcher,
                                                                      tmp_path: Path) -> None:
    """Behind a proxy: a request the gate refuses (no --require-header secret) gets its 403 even
    when the worker is full; one that passes the gate gets the 503, logged with the client the
    proxy named in X-Forwarded-For."""
    access = tmp_path / "access.log"
    g = start(launcher, "--max-queued-requests", "1", "--require-header", "X-Proxy-Secret=s3",
              "--forwarded-allow-ips", "127.0.0.1", "--access-logfile", str(access),
              "--access-logformat", "%(h)s %(s)s %(U)s")
    secret = {"X-Proxy-Secret": "s3"}
    slow = threading.Thread(target=get, args=(g.url(), f"/sleep?s={SLEEP}"), kwargs={"headers": secret})
    slow.start()
    try:
        wait_for(lambda: total(scrape(g.info["metrics"]), "greenfork_queued_requests", worker="0") == 1, 10,
                 "the slow request to be in flight")
        assert get(g.url(), "/sleep?s=0")[0] == 403
        status, headers, body = get(g.url(), "/sleep?s=0",
                                    headers={**secret, "X-Forwarded-For": "203.0.113.7"})
        assert status == 503 and headers["retry-after"] == "1" and body == b"503 request queue full\n"
    finally:
        slow.join(30)
    wait_for(lambda: "203.0.113.7 503 /sleep" in access.read_text(), 10, "the 503's access log line")
    assert "127.0.0.1 403 /sleep" in access.read_text()


def test_off_by_default(launcher: Launcher) -> None:
    g = start(launcher)
    results = burst(g.url(), "/sleep?s=1", 12)
    assert [r[0] for r in results] == [200] * 12
    s = scrape(g.info["metrics"])
    assert total(s, "greenfork_queued_requests_limit") == 0

"""HTTP/2 with the clients people use: curl, nghttp and h2load (nghttp2), httpx; over TLS with
ALPN (the test certificates of tests/tlscerts.py) and over cleartext with prior knowledge.
Also: streams really run concurrently, the access log and the metrics cover HTTP/2, and
`--http-protocols h1` turns it off."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import tlscerts
from tests.conftest import curl
from tests.h2raw import Raw
from tests.metricsutil import scrape, total
from tests.procs import Greenfork, Launcher, wait_for
from tests.tlscerts import Certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return tlscerts.certs(tmp_path_factory)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Greenfork]:
    """One worker, a cleartext and a TLS listener, an access log and metrics."""
    tmp = tmp_path_factory.mktemp("h2clients")
    ln = Launcher(tmp)
    try:
        yield ln.start(["h2app:app", "-b", "127.0.0.1:0", "-b", "https://127.0.0.1:0",
                        "--certfile", str(certs.server.cert), "--keyfile", str(certs.server.key),
                        "--access-logfile", str(tmp / "access.log"), "--metrics-bind", "127.0.0.1:0"])
    finally:
        ln.cleanup()


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is required (scripts/test installs nghttp2-client)")
    return path


def run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def access_log(g: Greenfork) -> str:
    return (g.log_path.parent / "access.log").read_text()


# ----------------------------------------------------------------------- curl
def test_curl_prior_knowledge(server: Greenfork) -> None:
    r = run(curl(), "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version}", f"{server.url(0)}/env")
    body, version = r.stdout.rsplit("\n", 1)
    assert r.returncode == 0 and version == "2", r.stderr
    env = json.loads(body)
    assert env["SERVER_PROTOCOL"] == "HTTP/2" and env["wsgi.url_scheme"] == "http"


def test_curl_over_tls_negotiates_h2_by_alpn(server: Greenfork, certs: Certs) -> None:
    r = run(curl(), "-sS", "--http2", "--cacert", str(certs.ca), "-w", "\n%{http_version}",
            f"{server.url(1)}/headers")
    body, version = r.stdout.rsplit("\n", 1)
    assert r.returncode == 0 and version == "2", r.stderr
    env = json.loads(body)
    assert env["SERVER_PROTOCOL"] == "HTTP/2" and env["wsgi.url_scheme"] == "https"
    assert env["HTTPS"] == "on" and env["SSL_PROTOCOL"].startswith("TLSv1.")  # the TLS keys, as HTTP/1.1's


def test_curl_asking_for_http1_gets_http1_on_both(server: Greenfork, certs: Certs) -> None:
    for url in (server.url(0), server.url(1)):
        r = run(curl(), "-sS", "--http1.1", "--cacert", str(certs.ca), "-o", "/dev/null",
                "-w", "%{http_version}", f"{url}/")
        assert r.returncode == 0 and r.stdout == "1.1", r.stderr


def test_curl_uploads_a_large_body(server: Greenfork, tmp_path: Path) -> None:
    data = tmp_path / "up.bin"
    data.write_bytes(bytes(range(256)) * (5 * 4096))  # 5 MiB: several windows' worth
    out = tmp_path / "back.bin"
    r = run(curl(), "-sS", "--http2-prior-knowledge", "--data-binary", f"@{data}", "-o", str(out),
            "-H", "Content-Type: application/octet-stream", f"{server.url(0)}/echo")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data.read_bytes()
    r = run(curl(), "-sS", "--http2-prior-knowledge", "--data-binary", f"@{data}",
            f"{server.url(0)}/slowread?n=65536")
    assert r.returncode == 0 and r.stdout == str(5 << 20), r.stderr


def test_curl_downloads_and_the_body_is_intact(server: Greenfork, certs: Certs, tmp_path: Path) -> None:
    for url in (server.url(0), server.url(1)):
        out = tmp_path / "big.bin"
        how = "--http2-prior-knowledge" if url.startswith("http:") else "--http2"
        r = run(curl(), "-sS", how, "--cacert", str(certs.ca), "-o", str(out), f"{url}/big?n={3 << 20}")
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == b"x" * (3 << 20)


# ------------------------------------------------------------------ nghttp2
def test_nghttp_runs_ten_streams_at_once(server: Greenfork) -> None:
    """nghttp sends its URIs as concurrent streams of one connection."""
    urls = [f"{server.url(0)}/sleep?s=0.5&n={i}" for i in range(10)]
    started = time.monotonic()
    r = run(tool("nghttp"), "-n", "--stat", *urls)
    elapsed = time.monotonic() - started
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("200") >= 10 or "responseEnd" in r.stdout
    assert elapsed < 2.0, f"ten 0.5 s streams took {elapsed:.2f} s"


def test_ten_streams_sleeping_finish_together(server: Greenfork) -> None:
    with Raw.connect(server.port(0)) as c:
        started = time.monotonic()
        for i in range(10):
            c.request(1 + 2 * i, "/sleep?s=0.5")
        for i in range(10):
            headers, body = c.response(1 + 2 * i)
            assert headers[":status"] == "200" and body == b"slept\n"
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 1.2, f"ten 0.5 s streams took {elapsed:.2f} s"


def test_a_slow_stream_does_not_hold_up_the_others(server: Greenfork) -> None:
    with Raw.connect(server.port(0)) as c:
        c.request(1, "/sleep?s=2")
        started = time.monotonic()
        for sid in (3, 5, 7):
            c.request(sid, "/")
            c.response(sid)
        assert time.monotonic() - started < 1.0
        c.response(1)


@pytest.mark.parametrize("which", [0, 1])
def test_h2load(server: Greenfork, which: int) -> None:
    url = server.url(which)
    r = run(tool("h2load"), "-n", "3000", "-c", "4", "-m", "10", *(["--npn-list", "h2"] if which else []),
            f"{url}/")
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "3000 succeeded, 0 failed, 0 errored" in out and "3000 2xx" in out, out
    if which:
        assert "Application protocol: h2" in out


def test_h2load_uploads(server: Greenfork, tmp_path: Path) -> None:
    data = tmp_path / "16k.bin"
    data.write_bytes(b"z" * 16384)
    r = run(tool("h2load"), "-n", "500", "-c", "2", "-m", "8", "-d", str(data), f"{server.url(0)}/echo")
    assert "500 succeeded, 0 failed" in r.stdout, r.stdout + r.stderr


# --------------------------------------------------------------------- httpx
def test_httpx_over_tls(server: Greenfork, certs: Certs) -> None:
    import httpx

    with httpx.Client(http2=True, verify=tlscerts.client_context(certs)) as client:
        responses = [client.get(f"{server.url(1)}/headers?i={i}") for i in range(5)]
        posted = client.post(f"{server.url(1)}/echo", content=b"q" * 100000)
    assert all(r.http_version == "HTTP/2" and r.status_code == 200 for r in responses)
    assert json.loads(responses[0].content)["SERVER_PROTOCOL"] == "HTTP/2"
    assert posted.http_version == "HTTP/2" and posted.content == b"q" * 100000


def test_httpx_concurrent_streams_on_one_connection(server: Greenfork, certs: Certs) -> None:
    import asyncio

    import httpx

    async def main() -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(http2=True, verify=tlscerts.client_context(certs)) as client:
            await client.get(f"{server.url(1)}/")  # the connection, once
            started = time.monotonic()
            rs = await asyncio.gather(*(client.get(f"{server.url(1)}/sleep?s=0.5&i={i}") for i in range(10)))
            return list(rs), time.monotonic() - started

    rs, elapsed = asyncio.run(main())
    assert all(r.status_code == 200 and r.http_version == "HTTP/2" for r in rs)
    assert elapsed < 2.0


# ------------------------------------------------------- access log, metrics
def test_access_log_and_metrics_cover_http2(server: Greenfork) -> None:
    with Raw.connect(server.port(0)) as c:
        c.request(1, "/pid")
        c.response(1)
        c.request(3, "/sleep?s=1.5")
        metrics = server.info["metrics"]

        def active() -> bool:
            return total(scrape(metrics), "greenfork_active_http2_streams") >= 1 and \
                total(scrape(metrics), "http_server_active_requests", http_request_method="GET") >= 1
        wait_for(active, 5, "an active stream in the metrics")
        c.response(3)
    wait_for(lambda: '"GET /pid HTTP/2" 200' in access_log(server), 5, "the access log line")
    samples = scrape(metrics)

    def done() -> bool:
        s = scrape(metrics)
        return total(s, "http_server_request_duration_seconds_count", network_protocol_version="2") >= 2
    wait_for(done, 5, "HTTP/2 requests in the metrics")
    samples = scrape(metrics)
    assert total(samples, "greenfork_http2_streams_total") >= 2
    assert total(samples, "greenfork_connection_duration_seconds_count", network_protocol_version="2") >= 1


def test_http1_only_turns_http2_off(launcher: Launcher, certs: Certs) -> None:
    g = launcher.start(["h2app:app", "-b", "127.0.0.1:0", "-b", "https://127.0.0.1:0",
                        "--http-protocols", "h1",
                        "--certfile", str(certs.server.cert), "--keyfile", str(certs.server.key)])
    r = run(curl(), "-sS", "--http2", "--cacert", str(certs.ca), "-o", "/dev/null", "-w", "%{http_version}",
            f"{g.url(1)}/")
    assert r.returncode == 0 and r.stdout == "1.1"  # ALPN offers no h2
    r = run(curl(), "-sS", "--http2-prior-knowledge", f"{g.url(0)}/")
    assert r.returncode != 0  # the preface is no HTTP/1.1 request


def test_http2_alone_offers_only_h2_by_alpn(launcher: Launcher, certs: Certs) -> None:
    """--http-protocols h2: ALPN offers h2 alone; a client that insists on http/1.1 gets no ALPN
    and is still answered in HTTP/1.1 (TLS cannot refuse it politely), as on cleartext."""
    g = launcher.start(["h2app:app", "-b", "127.0.0.1:0", "-b", "https://127.0.0.1:0",
                        "--http-protocols", "h2",
                        "--certfile", str(certs.server.cert), "--keyfile", str(certs.server.key)])
    with socket.create_connection(("127.0.0.1", g.port(1)), timeout=10) as raw, \
            tlscerts.client_context(certs, alpn=["http/1.1"]).wrap_socket(raw) as s:
        assert s.selected_alpn_protocol() is None
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(12) == b"HTTP/1.1 200"
    for how, url, want in (("--http2", g.url(1), "2"), ("--http2-prior-knowledge", g.url(0), "2"),
                           ("--http1.1", g.url(0), "1.1")):
        r = run(curl(), "-sS", how, "--cacert", str(certs.ca), "-o", "/dev/null", "-w", "%{http_version}",
                f"{url}/")
        assert r.returncode == 0 and r.stdout == want, (how, url, r.stdout, r.stderr)


def test_cleartext_off_keeps_tls_h2(launcher: Launcher, certs: Certs) -> None:
    g = launcher.start(["h2app:app", "-b", "127.0.0.1:0", "-b", "https://127.0.0.1:0",
                        "--http2-cleartext", "off",
                        "--certfile", str(certs.server.cert), "--keyfile", str(certs.server.key)])
    r = run(curl(), "-sS", "--http2-prior-knowledge", f"{g.url(0)}/")
    assert r.returncode != 0
    r = run(curl(), "-sS", "--http2", "--cacert", str(certs.ca), "-o", "/dev/null", "-w", "%{http_version}",
            f"{g.url(1)}/")
    assert r.returncode == 0 and r.stdout == "2"


# ------------------------------------------- the HTTP/1.1 limits, per stream
def test_request_timeout_is_per_stream(launcher: Launcher) -> None:
    g = launcher.start(["h2app:app", "-b", "127.0.0.1:0", "--request-timeout", "1"])
    with Raw.connect(g.port()) as c:
        c.request(1, "/sleep?s=3")
        started = time.monotonic()
        for sid in (3, 5):
            c.request(sid, "/")
            assert c.response(sid)[1] == b"hello\n"
        headers, _ = c.response(1)
        assert headers[":status"] == "504" and time.monotonic() - started < 3
        c.request(7, "/")
        assert c.response(7)[1] == b"hello\n"


def test_body_limits_and_rate_are_per_stream(launcher: Launcher) -> None:
    from hyperframe.frame import DataFrame

    from tests.h2raw import request_headers

    g = launcher.start(["h2app:app", "-b", "127.0.0.1:0", "--max-request-body-size", "1000",
                        "--request-body-grace-period", "1", "--min-request-body-data-rate", "1000"])
    with Raw.connect(g.port()) as c:
        c.send(c.headers_frame(1, request_headers("/echo", "POST", extra=[("content-length", "5000")]),
                               end_stream=False))
        assert c.response(1)[0][":status"] == "413"  # by its content-length
        c.send(c.headers_frame(3, request_headers("/echo", "POST"), end_stream=False),
               DataFrame(3, b"x" * 800), DataFrame(3, b"x" * 800))
        assert c.response(3)[0][":status"] == "413"  # as it arrives
        c.send(c.headers_frame(5, request_headers("/echo", "POST"), end_stream=False), DataFrame(5, b"slow"))
        started = time.monotonic()
        assert c.response(5)[0][":status"] == "408"  # under 1000 B/s once the grace second is over
        assert time.monotonic() - started < 4
        c.request(7, "/")
        assert c.response(7)[1] == b"hello\n"  # the connection was never at fault


def test_keep_alive_pings(launcher: Launcher) -> None:
    from hyperframe.frame import PingFrame

    g = launcher.start(["h2app:app", "-b", "127.0.0.1:0", "--http2-keep-alive-ping-delay", "0.5",
                        "--http2-keep-alive-ping-timeout", "1"])
    with Raw.connect(g.port()) as good, Raw.connect(g.port()) as silent:
        silent.answer_pings = False
        for c in (good, silent):
            c.request(1, "/")
            c.response(1)
        import threading

        def answer_for_three_seconds() -> None:
            with contextlib.suppress(TimeoutError):
                good.until(lambda f: False, timeout=3)  # (reading answers each PING at once)

        t = threading.Thread(target=answer_for_three_seconds)
        t.start()
        started = time.monotonic()
        silent.eof(timeout=10)  # a PING after 0.5 s of silence, no answer for 1 s: closed
        assert 1.0 < time.monotonic() - started < 4
        assert any(isinstance(f, PingFrame) and "ACK" not in f.flags for f in silent.frames)
        t.join(10)
        assert any(isinstance(f, PingFrame) and "ACK" not in f.flags for f in good.frames)  # asked too
        good.request(3, "/")
        assert good.response(3)[1] == b"hello\n"  # and answered, so it lives on


def test_a_tls12_cipher_rfc9113_forbids_is_refused_with_inadequate_security(launcher: Launcher,
                                                                             certs: Certs) -> None:
    import ssl

    from h2.errors import ErrorCodes

    g = launcher.start(["h2app:app", "-b", "https://127.0.0.1:0", "--ciphers", "AES128-GCM-SHA256",
                        "--certfile", str(certs.server.cert), "--keyfile", str(certs.server.key)])
    ctx = tlscerts.client_context(certs, alpn=["h2"], max_version=ssl.TLSVersion.TLSv1_2,
                                  ciphers="AES128-GCM-SHA256")
    with Raw.connect(g.port(), tls=ctx) as c:
        assert c.goaway().error_code == ErrorCodes.INADEQUATE_SECURITY
    assert "block list" in g.log()


def test_no_reference_cycle_per_stream(launcher: Launcher) -> None:
    """Each stream's objects are freed by reference counting alone (tests/apps/gcapp.py turns
    the collector off and reports what it would find)."""
    from hyperframe.frame import DataFrame

    from tests.h2raw import request_headers

    g = launcher.start(["gcapp:app", "-b", "127.0.0.1:0"])
    with Raw.connect(g.port()) as c:
        c.request(1, "/gc")  # what start-up (and this connection's own objects) left
        c.response(1)
        for i in range(300):
            sid = 3 + 2 * i
            if i % 3:
                c.send(c.headers_frame(sid, request_headers("/", "POST"), end_stream=False),
                       DataFrame(sid, b"x" * (i % 7 + 1), flags=["END_STREAM"]))
            else:
                c.request(sid, "/")
            c.response(sid)
        c.request(1001, "/gc")
        _, body = c.response(1001)
    assert int(body) == 0, f"the collector found {int(body)} objects after 300 streams"

"""HTTP/1.1 and WSGI end to end: a real server, real clients."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from wsgiref.validate import validator

import pytest

from greenfork.master import Server
from tests.conftest import curl
from tests.procs import APPS, Greenfork, Launcher, http_get, raw, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> object:
    ln = Launcher(tmp_path_factory.mktemp("served"))
    try:
        yield ln.start(["testapp:validated", "-b", "127.0.0.1:0", "--access-logfile",
                        str(ln.tmp / "access.log")], workers=2)
    finally:
        ln.cleanup()


def run_curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([curl(), "-s", "--max-time", "10", *args], capture_output=True, timeout=20)


def test_environ_over_the_wire(served: Greenfork) -> None:
    status, headers, body = http_get(served.url(), "/env?x=1&y=%20", headers={"X-Thing": "a"})
    env = json.loads(body)
    assert status == 200
    assert env["REQUEST_METHOD"] == "GET" and env["PATH_INFO"] == "/env"
    assert env["QUERY_STRING"] == "x=1&y=%20" and env["RAW_URI"] == "/env?x=1&y=%20"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1" and env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(served.port())
    assert env["greenfork.server_addresses"] == served.addresses
    assert headers["date"] and headers["server"] == "greenfork"


def test_percent_decoded_path_info(served: Greenfork) -> None:
    out = raw(served.url(), b"GET /a%20b%E9?q HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")
    out = raw(served.url(), b"GET /env/%2F%41 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")


def test_chunked_upload_and_expect_continue_with_curl(served: Greenfork) -> None:
    data = os.urandom(200_000)
    r = subprocess.run([curl(), "-s", "--max-time", "10", "-H", "Transfer-Encoding: chunked",
                        "--data-binary", "@-", f"{served.url()}/echo"], input=data, capture_output=True,
                       timeout=20)
    assert r.stdout == data
    # curl sends Expect: 100-continue for large bodies and waits for the interim response
    r = subprocess.run([curl(), "-s", "-v", "--max-time", "10", "--expect100-timeout", "8",
                        "-H", "Expect: 100-continue",
                        "--data-binary", "@-", f"{served.url()}/echo"],
                       input=data, capture_output=True, timeout=20)
    assert r.stdout == data
    assert b"HTTP/1.1 100 Continue" in r.stderr


def test_keepalive_and_pipelining_answer_in_order(served: Greenfork) -> None:
    reqs = b"".join(b"GET /env?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    reqs += b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    reqs += b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = raw(served.url(), reqs)
    assert out.count(b"HTTP/1.1 200 OK") == 7
    positions = [out.index(b'"QUERY_STRING": "n=%d"' % i) for i in range(5)]
    assert positions == sorted(positions)
    assert out.index(b"\r\n\r\nabc") > positions[-1]


def test_http10_with_and_without_keepalive(served: Greenfork) -> None:
    out = raw(served.url(), b"GET /stream HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and b"Connection: close" in out
    assert b"Transfer-Encoding" not in out and out.endswith(b"chunk4\n")
    with socket.create_connection(("127.0.0.1", served.port()), timeout=10) as s:
        s.sendall(b"GET /pid HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = s.recv(65536)
        assert b"Connection: keep-alive" in first
        s.sendall(b"GET /pid HTTP/1.0\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_head_has_no_body_and_streaming_is_chunked(served: Greenfork) -> None:
    out = raw(served.url(), b"HEAD /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Content-Length:" in head and body == b""
    out = raw(served.url(), b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in out and out.endswith(b"0\r\n\r\n")
    r = run_curl(f"{served.url()}/stream")
    assert r.stdout == b"".join(b"chunk%d\n" % i for i in range(5))
    r = run_curl(f"{served.url()}/write")
    assert r.stdout == b"helloworld"


def test_file_wrapper_sends_the_file(served: Greenfork) -> None:
    r = run_curl(f"{served.url()}/file")
    assert r.stdout == (APPS / "data.bin").read_bytes()


def test_app_exception_is_a_500_without_traceback(served: Greenfork) -> None:
    status, _, body = http_get(served.url(), "/boom")
    assert status == 500
    assert b"secret" not in body and b"Traceback" not in body
    assert served.log().count("RuntimeError: secret-detail-that-must-not-leak") == 1  # logged once
    # after the head went out: the connection is cut, the client sees a short body
    r = run_curl(f"{served.url()}/boom-late")
    assert r.returncode != 0 and b"partial" in r.stdout


def test_a_list_body_with_a_piece_that_is_not_bytes_is_a_500(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0"])  # (not validated: the list itself)
    status, _, body = http_get(g.url(), "/str-piece")
    assert status == 500 and b"hello" not in body
    assert "the application returned str, not bytes" in g.log()


def test_an_app_content_length_that_is_not_digits_is_a_500(served: Greenfork) -> None:
    status, _, body = http_get(served.url(), "/bad-length")
    assert status == 500 and b"hello" not in body
    assert "invalid Content-Length '1_3' from the application" in served.log()


def test_malformed_request_gets_400_and_close(served: Greenfork) -> None:
    out = raw(served.url(), b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
    assert out.startswith(b"HTTP/1.1 400") and b"Connection: close" in out
    assert out.count(b"HTTP/1.1") == 1


def test_access_log_in_combined_format(served: Greenfork) -> None:
    http_get(served.url(), "/pid?al=1", headers={"User-Agent": 'evil"agent', "Referer": "http://r/"})
    log = Path(served.log_path).parent / "access.log"
    # the line is written just after the response is sent: await it
    line = wait_for(lambda: [x for x in log.read_text().splitlines() if "/pid?al=1" in x], 5)[-1]
    assert line.startswith("127.0.0.1 - - [")
    assert '"GET /pid?al=1 HTTP/1.1" 200' in line and '"http://r/" "evil\\"agent"' in line


def test_flask_app(launcher: Launcher) -> None:
    g = launcher.start(["flask_app:validated", "-b", "127.0.0.1:0"])
    assert run_curl(f"{g.url()}/").stdout == b"flask ok"
    r = run_curl("-H", "Content-Type: application/json", "-d", '{"a": 1}', f"{g.url()}/json")
    assert json.loads(r.stdout) == {"got": {"a": 1}, "addresses": g.addresses}
    assert run_curl(f"{g.url()}/stream").stdout == b"line 0\nline 1\nline 2\n"
    assert http_get(g.url(), "/missing")[0] == 404


def test_django_app(launcher: Launcher) -> None:
    g = launcher.start(["django_app:validated", "-b", "127.0.0.1:0"])
    assert run_curl(f"{g.url()}/").stdout == b"django ok"
    r = run_curl("--data-binary", "x" * 5000, f"{g.url()}/upload")
    assert json.loads(r.stdout) == {"size": 5000, "method": "POST", "host": f"127.0.0.1:{g.port()}"}


def test_factory_spec(launcher: Launcher) -> None:
    g = launcher.start(["testapp:factory()", "-b", "127.0.0.1:0"])
    assert http_get(g.url(), "/pid")[0] == 200


def _embedded_app(environ: dict[str, object], start_response: object) -> list[bytes]:
    body = json.dumps(environ["greenfork.server_addresses"]).encode()
    start_response("200 OK", [("Content-Type", "application/json"),  # type: ignore[operator]
                              ("Content-Length", str(len(body)))])
    return [body]


def test_python_api_embeds_a_callable() -> None:
    server = Server(validator(_embedded_app), bind=["http://127.0.0.1:0"], workers=2,
                    error_logfile="/dev/null")
    server.start(timeout=30)
    try:
        assert len(server.addresses) == 1 and server.addresses[0].startswith("http://127.0.0.1:")
        status, _, body = http_get(server.addresses[0], "/")
        assert status == 200 and json.loads(body) == server.addresses
    finally:
        assert server.stop(timeout=20) == 0


def test_builtin_demo_app_is_valid_wsgi(launcher: Launcher) -> None:
    g = launcher.start(["greenfork.workers.demo:app", "-b", "127.0.0.1:0"])
    assert b"greenfork is running" in http_get(g.url(), "/")[2]
    from wsgiref.util import setup_testing_defaults

    from greenfork.workers import demo

    for path, status in (("/", "200 OK"), ("/info.json", "200 OK"), ("/nope", "404 Not Found")):
        env: dict[str, object] = {"PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
                                  "greenfork.server_addresses": ["x"]}
        setup_testing_defaults(env)
        seen: list[str] = []

        def start_response(status: str, headers: object, exc_info: object = None,
                           seen: list[str] = seen) -> None:
            seen.append(status)

        result = validator(demo.app)(env, start_response)
        body = b"".join(result)
        result.close()
        assert seen == [status] and body


def test_scripts_serve_starts_the_demo(launcher: Launcher, tmp_path: Path) -> None:
    """The README's first command, with an ephemeral port so the test never collides."""
    root = Path(__file__).resolve().parent.parent
    addr = tmp_path / "serve.json"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(root / "scripts" / "serve"), "-b", "http://127.0.0.1:0",
                                 "--addresses-file", str(addr)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=launcher.env())
    try:
        wait_for(lambda: addr.exists() and "Booted" in log.read_text(), 120, "scripts/serve to boot")
        url = json.loads(addr.read_text())["addresses"][0]
        assert f"Now listening on: {url}" in log.read_text()
        r = run_curl(url + "/")
        assert b"greenfork is running" in r.stdout
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(10)


def test_error_logfile(launcher: Launcher, tmp_path: Path) -> None:
    errlog = tmp_path / "error.log"
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "--error-logfile", str(errlog)], boot_log=errlog)
    assert "Now listening on" in errlog.read_text()
    http_get(g.url(), "/boom")
    assert "RuntimeError: secret-detail-that-must-not-leak" in errlog.read_text()
    assert g.log() == ""  # nothing on stderr


def test_keep_alive_zero_serves_a_slow_first_request_then_closes(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "--keep-alive", "0"])
    with socket.create_connection(("127.0.0.1", g.port()), timeout=10) as s:
        time.sleep(0.3)  # the stimulus: a client that is slow to send its first request
        s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 200") and b"Connection: close" in out


def test_broken_chunked_body_is_a_400_whether_or_not_the_app_reads_it(served: Greenfork) -> None:
    bad = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
    app_errors = served.log().count("Error handling request")
    out = raw(served.url(), bad)
    assert out.startswith(b"HTTP/1.1 400") and b"Connection: close" in out
    # /pid never reads the body: its answer goes out, then the connection closes
    out = raw(served.url(), bad.replace(b"/echo", b"/pid") + b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.count(b"HTTP/1.1 ") == 1
    assert served.log().count("Error handling request") == app_errors  # not the app's fault


def test_large_response_to_a_slow_reader_arrives_intact(served: Greenfork) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # forces many partial sends
        s.settimeout(20)
        s.connect(("127.0.0.1", served.port()))
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert b"Content-Length: 4194304" in head
    assert body == bytes(range(256)) * (4 * 4096)


def test_no_reference_cycle_per_connection(launcher: Launcher) -> None:
    """Each HTTP/1.1 connection's objects are freed by reference counting alone, however it
    ends (tests/apps/gcapp.py turns the collector off and reports what it would find): a
    cycle per connection made the collector cost a tenth of a new-connection-per-request load."""
    g = launcher.start(["gcapp:app", "-b", "127.0.0.1:0"])
    url = g.url()
    assert http_get(url, "/gc")[0] == 200  # what start-up left
    for _ in range(20):  # keep-alive, and the client closes first (the others give its EOF time)
        with socket.create_connection(("127.0.0.1", g.port()), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while not got.endswith(b"hello"):
                chunk = s.recv(4096)
                assert chunk, got
                got += chunk
    endings = [
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",  # malformed: 400 and close
    ]
    for i in range(80):
        got = raw(url, endings[i % len(endings)])
        assert got.startswith(b"HTTP/1.1 "), got[:80]
    status, _, body = http_get(url, "/gc")
    assert status == 200 and int(body) == 0, f"the collector found {int(body)} objects after 100 connections"

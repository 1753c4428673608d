"""The raw-bytes cases of test_http1.py, sent over real sockets to greenfork and to
gunicorn with its gevent worker, both serving tests/apps/testapp.py.

greenfork's answers must equal the expected ones below. Both servers' answers are
rendered as the case table of docs/conformance.md, and the test fails when the
committed table differs, so the document can never drift from what the two
servers do. Regenerate it with:

    GREENFORK_WRITE_CONFORMANCE=1 .venv/bin/python -m pytest tests/test_conformance.py
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests import test_http1 as h1
from tests.procs import APPS, Greenfork, Launcher, wait_for

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "conformance.md"
BEGIN = "<!-- BEGIN GENERATED CASES: tests/test_conformance.py -->"
END_MARK = "<!-- END GENERATED CASES -->"
SILENCE = 0.5  # a server that sends nothing for this long is keeping the connection open


class Case:
    def __init__(self, id: str, data: bytes, expected: str) -> None:
        self.id = id
        self.data = data
        self.expected = expected

    @property
    def rfc(self) -> str:
        m = re.search(r"(rfc\d+)-([\d.]+)", self.id)
        return f"{m.group(1).upper()} {m.group(2)}" if m else ""


# Wire outcomes for the VALID parser cases that are not a single "200 open".
VALID_WIRE = {
    "http10-closes-by-default-rfc9112-9.3": "200 close",
    "http10-transfer-encoding-closes-rfc9112-6.1": "200 close",
    "http11-connection-close-rfc9112-9.6": "200 close",
    "pipelined-rfc9112-9.3.2": "200,200,200,200 open",
    # "/" never reads the body it did not invite: the server closes rather than read it
    "expect-100-continue-rfc9110-10.1.1": "200 close",
    "expect-100-continue-ignored-on-1.0-rfc9110-10.1.1": "200 close",
    "connect-authority-form-rfc9112-3.2.3": "405 close",
}

# Cases only the wire can show (what the server does, not what the parser reports).
WIRE_ONLY = [
    Case("options-asterisk-answered-by-server-rfc9110-9.3.7",
         b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "200 open"),
    # a protocol we do not speak: the server may ignore the Upgrade (RFC 9110 7.8); bytes after it
    # are not HTTP any more, so the connection closes after the response
    Case("upgrade-served-then-closed-rfc9110-7.8",
         b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: example/1\r\n\r\n"
         b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "200 close"),
    # WebSocket is spoken (docs/websocket.md): a handshake without Sec-WebSocket-Version is refused
    Case("websocket-upgrade-without-version-rfc6455-4.4",
         b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", "426 close"),
    Case("smuggled-request-after-cl-te-not-read-rfc9112-6.3",
         b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 36\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"0\r\n\r\nGET /pid HTTP/1.1\r\nHost: a\r\n\r\n", "400 close"),
    Case("good-request-then-bad-one-rfc9112-9.3.2",
         b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n", "200,400 close"),
    Case("body-over-limit-checked-against-content-length-rfc9110-15.5.14",
         b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 30000001\r\n\r\n", "413 close"),
    Case("two-spaces-after-method-rfc9112-3",
         b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "200 open"),
]


def _values(p: Any) -> tuple[Any, ...]:
    return tuple(p.values)


def cases() -> list[Case]:
    out: list[Case] = []
    for p in h1.VALID:
        data, _ = _values(p)
        out.append(Case(p.id, data, VALID_WIRE.get(p.id, "200 open")))
    for p in h1.ERRORS:
        data, status = _values(p)
        out.append(Case(p.id, data, f"{status} close"))
    for p in h1.BODY_ERRORS:
        data, limits, status = _values(p)
        if limits is not None:
            continue  # needs a non-default limit; covered in test_hostile.py
        # /echo reads the body, so the error is found while the app waits for it
        out.append(Case(p.id, data.replace(b"POST / ", b"POST /echo ", 1), f"{status} close"))
    return out + WIRE_ONLY


CASES = cases()


# ------------------------------------------------------------------ the client side
def _responses(data: bytes) -> list[int]:
    """Status codes of the complete or partial responses in data, in order."""
    statuses: list[int] = []
    pos = 0
    while pos < len(data):
        m = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r\n").match(data, pos)
        if not m:
            break
        statuses.append(int(m.group(1)))
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        head = data[pos:end].lower()
        pos = end + 4
        cl = re.search(rb"\r\ncontent-length: *(\d+)", head)
        if int(m.group(1)) < 200 or int(m.group(1)) in (204, 304):
            continue
        if cl:
            pos += int(cl.group(1))
        elif b"transfer-encoding: chunked" in head:
            while True:
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    return statuses
                size = int(data[pos:line_end].split(b";")[0] or b"0", 16)
                pos = line_end + 2 + size + 2
                if size == 0:
                    break
        else:
            break  # close-delimited: the rest is body
    return statuses


def exchange(port: int, data: bytes) -> str:
    """Send data, read until the server closes or stays silent: "400 close", "200 open", "— close"."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may close before taking it all; what it answered is still readable
        s.settimeout(SILENCE)
        got = b""
        closed = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
    statuses = _responses(got)
    shown = ",".join(map(str, statuses)) if statuses else "—"
    return f"{shown} {'close' if closed else 'open'}"


def run_all(port: int) -> dict[str, str]:
    with ThreadPoolExecutor(16) as pool:
        results = pool.map(lambda c: exchange(port, c.data), CASES)
        return {c.id: r for c, r in zip(CASES, results, strict=True)}


# ------------------------------------------------------------------ the servers
@pytest.fixture(scope="module")
def greenfork(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Greenfork]:
    ln = Launcher(tmp_path_factory.mktemp("conformance"))
    try:
        yield ln.start(["testapp:app", "-b", "127.0.0.1:0"])
    finally:
        ln.cleanup()


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-k", "gevent", "-b", "127.0.0.1:0",
                                 "--no-control-socket", "--chdir", str(APPS), "testapp:app"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=APPS)
    try:
        def port() -> int:
            if proc.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{log.read_text()}")
            text = log.read_text()
            m = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", text)
            return int(m.group(1)) if m and "Booting worker" in text else 0

        yield wait_for(port, 30, "gunicorn to boot")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the master and its worker
        except ProcessLookupError:
            pass
        proc.wait(10)


def gunicorn_version() -> str:
    from importlib.metadata import version

    return version("gunicorn")


# ------------------------------------------------------------------ the document
def render(ours: dict[str, str], theirs: dict[str, str]) -> str:
    lines = [BEGIN,
             f"Generated by tests/test_conformance.py against gunicorn {gunicorn_version()} "
             "(`-k gevent`). Each cell is the status of every response the server sent, "
             "then whether it closed the connection (`close`) or kept it open (`open`); "
             "`—` means no response.",
             "",
             "| Case | RFC | greenfork | gunicorn | |",
             "|---|---|---|---|---|"]
    for c in CASES:
        a, b = ours[c.id], theirs[c.id]
        same = "" if a == b else ("**differs**" if a.split()[0] != b.split()[0] else "close differs")
        lines.append(f"| `{c.id}` | {c.rfc} | {a} | {b} | {same} |")
    lines.append(END_MARK)
    return "\n".join(lines)


def test_conformance(greenfork: Greenfork, gunicorn: int) -> None:
    ours = run_all(greenfork.port())
    theirs = run_all(gunicorn)
    wrong = {c.id: (ours[c.id], c.expected) for c in CASES if ours[c.id] != c.expected}
    assert not wrong, f"greenfork answered (got, expected): {wrong}"
    table = render(ours, theirs)
    text = DOC.read_text(encoding="utf-8")
    start, end = text.find(BEGIN), text.find(END_MARK)
    assert 0 <= start < end, f"{DOC} lacks the {BEGIN} ... {END_MARK} markers"
    current = text[start:end + len(END_MARK)]
    if current != table and os.environ.get("GREENFORK_WRITE_CONFORMANCE"):
        DOC.write_text(text[:start] + table + text[end + len(END_MARK):], encoding="utf-8")
        current = table
    assert current == table, (
        "docs/conformance.md is out of date with what the servers answer; regenerate it with\n"
        "    GREENFORK_WRITE_CONFORMANCE=1 .venv/bin/python -m pytest tests/test_conformance.py\n"
        "and review the differences it records.")


def test_response_splitter() -> None:
    two = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nHTTP/1.1 999 x" + \
          b"HTTP/1.1 100 Continue\r\n\r\n" + \
          b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert _responses(two) == [200, 100, 200]
    assert _responses(b"") == []

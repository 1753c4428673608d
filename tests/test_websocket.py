"""WebSocket over real loopback sockets: the hand-off (workers/websocket.py) driven by a
stand-in pipeline under gevent (tests/apps/ws_harness.py), with raw RFC 6455 frames, the
`websockets` client, timers, limits and going_away on SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.procs import wait_for
from tests.test_websocket_protocol import BINARY, CLOSE, CONT, PING, PONG, TEXT, close_payload, frame

ROOT = Path(__file__).resolve().parent.parent
GWS = "tests.apps.ws_geventwebsocket:app"


@dataclass
class Harness:
    proc: subprocess.Popen[bytes]
    out: Path
    port: int

    def url(self, path: str = "/echo") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/__stats", timeout=10) as r:
            return dict(json.load(r))

    def wait_closed(self, n: int, timeout: float = 10) -> dict[str, Any]:
        """Stats once n connections have been closed (closes are counted when they end)."""
        def done() -> dict[str, Any] | None:
            s = self.stats()
            return s if sum(s["closed"].values()) >= n else None

        return dict(wait_for(done, timeout, f"{n} WebSocket closes"))


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    yield from harnesses(tmp_path)


def harnesses(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """start(app, limits=, grace=, hide=) runs a harness; all are killed (process group) at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(app: str = GWS, *, limits: dict[str, Any] | None = None, grace: float = 5.0,
              hide: tuple[str, ...] = ()) -> Harness:
        out = tmp_path / f"harness-{len(started)}.out"
        cmd = [sys.executable, "-m", "tests.apps.ws_harness", app, "--limits", json.dumps(limits or {}),
               "--grace", str(grace)]
        for name in hide:
            cmd += ["--hide", name]
        with open(out, "wb") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        started.append(proc)

        def listening() -> int | None:
            if proc.poll() is not None:
                raise AssertionError(f"harness exited with {proc.returncode}:\n{out.read_text()}")
            for line in out.read_text().splitlines():
                if line.startswith("LISTENING "):
                    return int(line.split()[1])
            return None

        return Harness(proc, out, wait_for(listening, 30, "the harness to listen"))

    try:
        yield start
    finally:
        for proc in started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)


# ---------------------------------------------------------------- a raw client
class RawClient:
    """A client that writes RFC 6455 frames by hand (tests.test_websocket_protocol.frame)."""

    def __init__(self, port: int, path: str = "/echo", *, extra: bytes = b"",
                 headers: dict[str, str] | None = None, version: str = "HTTP/1.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        fields = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
                  "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                  "Sec-WebSocket-Version": "13"}
        fields.update(headers or {})
        lines = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v)
        request = f"GET {path} {version}\r\n{lines}\r\n"
        self.sock.sendall(request.encode() + extra)
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                break
            self.buf += data
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1]) if head else 0
        self.head = head.decode("latin-1")

    def body(self) -> bytes:
        while True:
            data = self.sock.recv(65536)
            if not data:
                return self.buf
            self.buf += data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _need(self, n: int) -> bool:
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                return False
            self.buf += data
        return True

    def frame(self) -> tuple[int, bytes] | None:
        """The next (opcode, payload) from the server, or None at EOF."""
        if not self._need(2):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        assert b1 & 0x80 == 0, "server frames are not masked"
        n, i = b1 & 0x7F, 2
        if n == 126:
            assert self._need(4)
            n, i = int.from_bytes(self.buf[2:4], "big"), 4
        elif n == 127:
            assert self._need(10)
            n, i = int.from_bytes(self.buf[2:10], "big"), 10
        assert self._need(i + n)
        payload, self.buf = self.buf[i:i + n], self.buf[i + n:]
        assert b0 & 0x80, "this server sends whole messages"
        return b0 & 0x0F, payload

    def frames_until_eof(self) -> list[tuple[int, bytes]]:
        out = []
        while (f := self.frame()) is not None:
            out.append(f)
        return out

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- raw frames over the wire
def test_echo_over_raw_frames_and_close_handshake(harness: Callable[..., Harness]) -> None:
    h = harness()
    c = RawClient(h.port, extra=frame(TEXT, b"in the same packet as the head"))
    assert c.status == 101 and "Sec-WebSocket-Accept" in c.head
    assert c.frame() == (TEXT, b"in the same packet as the head")
    c.send(frame(BINARY, b"\x00\x01\x02"))
    assert c.frame() == (BINARY, b"\x00\x01\x02")
    # fragmentation, with a ping and a pong between the fragments
    c.send(frame(TEXT, b"frag", fin=False) + frame(PING, b"p1") + frame(CONT, b"men", fin=False)
           + frame(PONG, b"x") + frame(CONT, b"ted"))
    assert c.frame() == (PONG, b"p1")
    assert c.frame() == (TEXT, b"fragmented")
    # the close handshake: the server echoes the code and closes TCP first
    c.send(frame(CLOSE, close_payload(1000, b"done")))
    assert c.frames_until_eof() == [(CLOSE, close_payload(1000))]
    stats = h.wait_closed(1)
    assert stats["closed"] == {"1000": 1} and stats["opened"] == 1 and stats["open"] == 0
    assert stats["received"] == 3 and stats["sent"] == 3


@pytest.mark.parametrize("data,code", [
    (frame(TEXT, b"unmasked", mask=False), 1002),
    (frame(TEXT, b"bad \xff utf-8"), 1007),
    (frame(TEXT, b"ok", fin=False) + frame(CONT, b"\xed\xa0\x80"), 1007),  # a surrogate, in a fragment
    (frame(TEXT, b"x", rsv=4), 1002),
    (frame(PING, b"p" * 126), 1002),
    (frame(CLOSE, close_payload(1005)), 1002),
    (frame(CLOSE, close_payload(999)), 1002),
    (frame(CLOSE, close_payload(5000)), 1002),
    (frame(CONT, b"no start"), 1002),
], ids=["unmasked", "utf8", "utf8-fragment", "rsv1", "big-control", "close-1005", "close-999",
        "close-5000", "lone-continuation"])
def test_protocol_errors_close_with_their_code(harness: Callable[..., Harness], data: bytes,
                                              code: int) -> None:
    h = harness()
    c = RawClient(h.port)
    c.send(data)
    frames = c.frames_until_eof()
    assert frames and frames[-1][0] == CLOSE and frames[-1][1][:2] == code.to_bytes(2, "big"), frames
    assert h.wait_closed(1)["closed"] == {str(code): 1}


def test_message_over_the_limit_is_1009(harness: Callable[..., Harness]) -> None:
    h = harness(limits={"max_message_size": 1000, "max_frame_size": 600})
    c = RawClient(h.port)
    c.send(frame(TEXT, b"a" * 500, fin=False) + frame(CONT, b"a" * 500))  # at both limits
    assert c.frame() == (TEXT, b"a" * 1000)
    c.send(frame(TEXT, b"a" * 500, fin=False) + frame(CONT, b"a" * 501))
    frames = c.frames_until_eof()
    assert frames[-1][0] == CLOSE and frames[-1][1][:2] == (1009).to_bytes(2, "big")
    c2 = RawClient(h.port)
    c2.send(frame(BINARY, b"b" * 601))
    assert c2.frames_until_eof()[-1][1][:2] == (1009).to_bytes(2, "big")


def test_refused_upgrades_never_reach_the_app(harness: Callable[..., Harness]) -> None:
    h = harness()
    old = RawClient(h.port, version="HTTP/1.0")
    assert old.status == 400 and "Connection: close" in old.head
    bad_key = RawClient(h.port, headers={"Sec-WebSocket-Key": "c2hvcnQ="})
    assert bad_key.status == 400
    version = RawClient(h.port, headers={"Sec-WebSocket-Version": "8"})
    assert version.status == 426 and "Sec-WebSocket-Version: 13" in version.head
    # no Connection: upgrade: a plain request, which the app answers itself
    plain = RawClient(h.port, headers={"Connection": "keep-alive"})
    assert plain.status == 200 and plain.body() == b"plain http\n"
    # an app that never touches wsgi.websocket answers with HTTP: the upgrade never happened
    reject = RawClient(h.port, "/reject")
    assert reject.status == 403 and reject.body() == b"not you\n"
    assert h.stats()["opened"] == 0


def test_app_close_and_app_crash(harness: Callable[..., Harness]) -> None:
    h = harness()
    c = RawClient(h.port, "/close")
    c.send(frame(TEXT, b"go"))
    assert c.frame() == (CLOSE, close_payload(4000, b"app closed"))
    c.send(frame(CLOSE, close_payload(4000)))
    assert c.frames_until_eof() == []
    crash = RawClient(h.port, "/crash")
    crash.send(frame(TEXT, b"go"))
    assert crash.frame() == (CLOSE, close_payload(1011))
    crash.send(frame(CLOSE, close_payload(1011)))
    assert crash.frames_until_eof() == []
    assert h.wait_closed(2)["closed"] == {"4000": 1, "1011": 1}
    assert "WebSocket application error on /crash" in h.output() and "the app failed" in h.output()


def test_close_timeout_cuts_a_peer_that_never_answers(harness: Callable[..., Harness]) -> None:
    h = harness(limits={"close_timeout": 0.5})
    c = RawClient(h.port, "/push?1")
    t0 = time.monotonic()
    assert c.frame() == (TEXT, b"push 0")
    assert c.frame() == (CLOSE, close_payload(1000, b"pushed"))
    assert c.frames_until_eof() == []  # we never answered: EOF after close_timeout
    assert 0.4 < time.monotonic() - t0 < 5
    assert h.wait_closed(1)["closed"] == {"1000": 1}


# ---------------------------------------------------------------- timers
def test_keepalive_pings_and_pong_timeout(harness: Callable[..., Harness]) -> None:
    h = harness(limits={"ping_interval": 0.3, "ping_timeout": 0.6})
    # a client that answers pings (websockets does) stays connected across many intervals
    with connect(h.url(), ping_interval=None) as ws:
        time.sleep(2)
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
    # a client that never reads nor answers is cut: ping, then nothing for ping_timeout
    c = RawClient(h.port)
    t0 = time.monotonic()
    frames = c.frames_until_eof()
    assert (PING, b"") in frames and 0.6 < time.monotonic() - t0 < 5
    assert h.wait_closed(2)["closed"] == {"1000": 1, "1011": 1}


def test_idle_timeout_closes_with_1001(harness: Callable[..., Harness]) -> None:
    h = harness(limits={"idle_timeout": 0.5, "ping_interval": 0})
    with connect(h.url(), ping_interval=None) as ws:
        for _ in range(4):  # messages keep it open
            time.sleep(0.25)
            ws.send("x")
            assert ws.recv(timeout=5) == "x"
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        rcvd = info.value.rcvd
        assert rcvd is not None and (rcvd.code, rcvd.reason) == (1001, "idle timeout")


# ---------------------------------------------------------------- real clients
def test_websockets_client_with_compression_and_a_4mib_message(harness: Callable[..., Harness]) -> None:
    h = harness()
    with connect(h.url(), max_size=8 << 20) as ws:
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        big = os.urandom(4 << 20)
        ws.send(big)
        assert ws.recv(timeout=60) == big
        text = "é" * (2 << 20)  # 4 MiB of UTF-8
        ws.send(text)
        assert ws.recv(timeout=60) == text
    with connect(h.url(), compression=None) as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        ws.send(b"plain")
        assert ws.recv(timeout=10) == b"plain"
    stats = h.wait_closed(2)
    assert stats["received_bytes"] == stats["sent_bytes"] == 5 + (8 << 20) + 5


def test_200_concurrent_connections_echo(harness: Callable[..., Harness]) -> None:
    from websockets.asyncio.client import connect as aconnect

    h = harness()
    n, rounds = 200, 5

    async def one(i: int) -> int:
        async with aconnect(h.url(), open_timeout=30, ping_interval=None) as ws:
            for r in range(rounds):
                msg = f"client {i} round {r}"
                await ws.send(msg)
                assert await ws.recv() == msg
        return i

    async def run() -> list[int]:
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 90)

    assert sorted(asyncio.run(run())) == list(range(n))
    stats = h.wait_closed(n, 30)
    assert stats["opened"] == n and stats["closed"] == {"1000": n}
    assert stats["received"] == stats["sent"] == n * rounds


def test_going_away_sends_1001_and_waits_for_the_handshake(harness: Callable[..., Harness]) -> None:
    h = harness(grace=3)
    stack = contextlib.ExitStack()
    clients = [stack.enter_context(connect(h.url(), ping_interval=None)) for _ in range(3)]
    for ws in clients:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
    stubborn = RawClient(h.port)  # reads the 1001 but never answers it
    stubborn.send(frame(TEXT, b"x"))
    assert stubborn.frame() == (TEXT, b"x")
    t0 = time.monotonic()
    h.proc.send_signal(signal.SIGTERM)
    for ws in clients:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    stack.close()
    assert stubborn.frame() == (CLOSE, close_payload(1001, b"server going away"))
    assert stubborn.frames_until_eof() == []  # cut when the grace period ends
    assert 2.5 < time.monotonic() - t0 < 10
    assert h.proc.wait(15) == 0
    out = h.output()
    assert "GONE 1" in out, out
    stats = json.loads(out.split("STATS ", 1)[1].splitlines()[0])
    assert stats["closed"] == {"1001": 4}
    # a new upgrade during the drain is refused (the harness stopped accepting: checked in units)

"""WebSocket on the real server: greenfork processes (tests/procs.py) serving
tests/apps/ws_geventwebsocket.py, driven with raw RFC 6455 frames and the `websockets` client,
over TCP and TLS; the WebSocket settings, --worker-connections, --request-timeout, TERM, HUP
and --max-requests recycling; every count read from the master's real /metrics."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests import tlscerts
from tests.metricsutil import find, scrape, total
from tests.procs import Greenfork, Launcher, alive, http_get, wait_for
from tests.test_websocket_protocol import BINARY, CLOSE, CONT, PING, PONG, TEXT, close_payload, frame
from tests.tlscerts import Certs
from tests.wsclients import TlsClient

GWS = "ws_geventwebsocket:app"
ACTIVE = "greenfork_active_websockets"
CLOSES = "greenfork_websocket_closes_total"
MESSAGES = "greenfork_websocket_messages_total"
BYTES = "greenfork_websocket_bytes_total"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return tlscerts.certs(tmp_path_factory)


@dataclass
class Server:
    """One greenfork serving a WebSocket app, with its metrics listener."""

    g: Greenfork
    client_ssl: ssl.SSLContext | None

    @property
    def port(self) -> int:
        return self.g.port()

    def url(self, path: str = "/echo") -> str:
        return f"{'wss' if self.client_ssl else 'ws'}://127.0.0.1:{self.port}{path}"

    def connect(self, path: str = "/echo", **kw: Any) -> Any:
        """The `websockets` sync client (ClientConnection), or over TLS a TlsClient."""
        if self.client_ssl is not None:
            return TlsClient(self.url(path), self.client_ssl, **kw)
        kw.setdefault("ping_interval", None)
        return connect(self.url(path), open_timeout=10, **kw)

    def raw(self, path: str = "/echo", **kw: Any) -> RawClient:
        return RawClient(self.port, path, context=self.client_ssl, **kw)

    def metrics(self) -> dict[Any, float]:
        return scrape(self.g.info["metrics"])

    def stats(self) -> dict[str, Any]:
        """The WebSocket figures of /metrics, summed over workers (and the workers gone)."""
        m = self.metrics()
        closed = {labels["code"]: int(v) for labels, v in find(m, CLOSES) if v}
        active = int(total(m, ACTIVE))
        return {"open": active, "opened": active + sum(closed.values()), "closed": closed,
                "received": int(total(m, MESSAGES, direction="received")),
                "sent": int(total(m, MESSAGES, direction="sent")),
                "received_bytes": int(total(m, BYTES, direction="received")),
                "sent_bytes": int(total(m, BYTES, direction="sent"))}

    def wait_closed(self, n: int, timeout: float = 10) -> dict[str, Any]:
        """The stats once n WebSockets have closed (a close is counted when it ends)."""
        def done() -> dict[str, Any] | None:
            s = self.stats()
            return s if sum(s["closed"].values()) >= n else None

        return dict(wait_for(done, timeout, f"{n} WebSocket closes"))


def start(launcher: Launcher, app: str = GWS, *args: str, certs: Certs | None = None,
          workers: int = 1) -> Server:
    bind = "https://127.0.0.1:0" if certs else "http://127.0.0.1:0"
    tls = ["--certfile", str(certs.server.cert), "--keyfile", str(certs.server.key)] if certs else []
    g = launcher.start([app, "-b", bind, "--metrics-bind", "http://127.0.0.1:0", *tls, *args],
                       workers=workers)
    return Server(g, tlscerts.client_context(certs) if certs else None)


@pytest.fixture
def serve(launcher: Launcher) -> Callable[..., Server]:
    def run(app: str = GWS, *args: str, certs: Certs | None = None, workers: int = 1) -> Server:
        return start(launcher, app, *args, certs=certs, workers=workers)

    return run


# ---------------------------------------------------------------- a raw client
class RawClient:
    """A client that writes RFC 6455 frames by hand (tests.test_websocket_protocol.frame)."""

    def __init__(self, port: int, path: str = "/echo", *, extra: bytes = b"",
                 headers: dict[str, str] | None = None, version: str = "HTTP/1.1",
                 context: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = context.wrap_socket(sock, server_hostname="127.0.0.1") if context else sock
        fields = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
                  "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                  "Sec-WebSocket-Version": "13"}
        fields.update(headers or {})
        lines = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v)
        request = f"GET {path} {version}\r\n{lines}\r\n"
        self.sock.sendall(request.encode() + extra)
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            data = self._recv()
            if not data:
                break
            self.buf += data
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1]) if head else 0
        self.head = head.decode("latin-1")

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            return b""

    def body(self) -> bytes:
        while True:
            data = self._recv()
            if not data:
                return self.buf
            self.buf += data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _need(self, n: int) -> bool:
        while len(self.buf) < n:
            data = self._recv()
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


def expect_close(ws: ClientConnection | TlsClient, code: int, timeout: float = 10) -> str:
    """Wait for the server's close frame on a `websockets` connection; returns its reason."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=timeout)
    rcvd = info.value.rcvd
    assert rcvd is not None and rcvd.code == code, info.value
    return rcvd.reason


# ---------------------------------------------------------------- raw frames over the wire
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_echo_over_raw_frames_and_close_handshake(serve: Callable[..., Server], certs: Certs,
                                                  tls: bool) -> None:
    s = serve(certs=certs if tls else None)
    c = s.raw(extra=frame(TEXT, b"in the same packet as the head"))
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
    stats = s.wait_closed(1)
    assert stats["closed"] == {"1000": 1} and stats["opened"] == 1 and stats["open"] == 0
    assert stats["received"] == 3 and stats["sent"] == 3
    # the worker serves on: another WebSocket
    again = s.raw()
    again.send(frame(TEXT, b"again"))
    assert again.frame() == (TEXT, b"again")


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
def test_protocol_errors_close_with_their_code(serve: Callable[..., Server], data: bytes, code: int) -> None:
    s = serve()
    c = s.raw()
    c.send(data)
    frames = c.frames_until_eof()
    assert frames and frames[-1][0] == CLOSE and frames[-1][1][:2] == code.to_bytes(2, "big"), frames
    assert s.wait_closed(1)["closed"] == {str(code): 1}
    # the connection is counted as ended by the peer's protocol error
    assert wait_for(lambda: total(s.metrics(), "greenfork_connection_duration_seconds_count",
                                  error_type="websocket_protocol_error") == 1, 10, "the connection's end")
    m = s.metrics()
    assert total(m, "http_server_request_duration_seconds_count", http_response_status_code="101") == 1


def test_message_and_frame_limits_are_settings(serve: Callable[..., Server]) -> None:
    s = serve(GWS, "--websocket-max-message-size", "1000", "--websocket-max-frame-size", "600")
    c = s.raw()
    c.send(frame(TEXT, b"a" * 500, fin=False) + frame(CONT, b"a" * 500))  # at both limits
    assert c.frame() == (TEXT, b"a" * 1000)
    c.send(frame(TEXT, b"a" * 500, fin=False) + frame(CONT, b"a" * 501))
    frames = c.frames_until_eof()
    assert frames[-1][0] == CLOSE and frames[-1][1][:2] == (1009).to_bytes(2, "big")
    c2 = s.raw()
    c2.send(frame(BINARY, b"b" * 601))
    assert c2.frames_until_eof()[-1][1][:2] == (1009).to_bytes(2, "big")
    assert s.wait_closed(2)["closed"] == {"1009": 2}


def test_refused_upgrades_never_reach_the_app(serve: Callable[..., Server]) -> None:
    s = serve()
    old = s.raw(version="HTTP/1.0")
    assert old.status == 400 and "Connection: close" in old.head
    assert old.body().endswith(b"\n")  # then the server closes
    bad_key = s.raw(headers={"Sec-WebSocket-Key": "c2hvcnQ="})
    assert bad_key.status == 400
    version = s.raw(headers={"Sec-WebSocket-Version": "8"})
    assert version.status == 426 and "Sec-WebSocket-Version: 13" in version.head
    # no Connection: upgrade: a plain request, which the app answers itself
    plain = s.raw(headers={"Connection": "keep-alive"})
    assert plain.status == 200
    # an app that never touches wsgi.websocket answers with HTTP: the upgrade never happened
    reject = s.raw("/reject")
    assert reject.status == 403 and b"not you\n" in reject.body()
    m = s.metrics()
    assert total(m, ACTIVE) == 0 and not [v for _, v in find(m, CLOSES) if v]
    statuses: dict[str, float] = {}
    for labels, v in find(m, "http_server_request_duration_seconds_count"):
        if v:
            code = labels["http_response_status_code"]
            statuses[code] = statuses.get(code, 0) + v
    # the refusals are the server's own answers; the app answered 200 and 403
    assert statuses == {"400": 2, "426": 1, "200": 1, "403": 1}, statuses


def test_app_close_and_app_crash(serve: Callable[..., Server]) -> None:
    s = serve()
    c = s.raw("/close")
    c.send(frame(TEXT, b"go"))
    assert c.frame() == (CLOSE, close_payload(4000, b"app closed"))
    c.send(frame(CLOSE, close_payload(4000)))
    assert c.frames_until_eof() == []
    crash = s.raw("/crash")
    crash.send(frame(TEXT, b"go"))
    assert crash.frame() == (CLOSE, close_payload(1011))
    crash.send(frame(CLOSE, close_payload(1011)))
    assert crash.frames_until_eof() == []
    assert s.wait_closed(2)["closed"] == {"_OTHER": 1, "1011": 1}  # 4000 is an application's code
    log = s.g.log()
    assert "WebSocket application error on /crash" in log and "the app failed" in log
    assert "Error handling request" not in log  # no HTTP 500 path for a WebSocket


def test_close_timeout_cuts_a_peer_that_never_answers(serve: Callable[..., Server]) -> None:
    s = serve(GWS, "--websocket-close-timeout", "0.5")
    c = s.raw("/push?1")
    t0 = time.monotonic()
    assert c.frame() == (TEXT, b"push 0")
    assert c.frame() == (CLOSE, close_payload(1000, b"pushed"))
    assert c.frames_until_eof() == []  # we never answered: EOF after the close timeout
    assert 0.4 < time.monotonic() - t0 < 5
    assert s.wait_closed(1)["closed"] == {"1000": 1}


# ---------------------------------------------------------------- timers
def test_keepalive_pings_and_pong_timeout(serve: Callable[..., Server]) -> None:
    s = serve(GWS, "--websocket-ping-interval", "0.3", "--websocket-ping-timeout", "0.6")
    # a client that answers pings (websockets does) stays connected across many intervals
    with s.connect() as ws:
        time.sleep(2)
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
    # a client that reads but never answers is cut: a ping, then nothing for the ping timeout
    c = s.raw()
    t0 = time.monotonic()
    frames = c.frames_until_eof()
    assert (PING, b"") in frames and 0.6 < time.monotonic() - t0 < 5
    assert s.wait_closed(2)["closed"] == {"1000": 1, "1011": 1}


def test_idle_timeout_closes_with_1001(serve: Callable[..., Server]) -> None:
    s = serve(GWS, "--websocket-idle-timeout", "0.5", "--websocket-ping-interval", "0")
    with s.connect() as ws:
        for _ in range(4):  # messages keep it open
            time.sleep(0.25)
            ws.send("x")
            assert ws.recv(timeout=5) == "x"
        assert expect_close(ws, 1001) == "idle timeout"


def test_an_app_that_only_sends_still_hears_the_client(serve: Callable[..., Server]) -> None:
    # After its first message the app never calls receive(): greenfork's own reader answers
    # the client's pings (within the sweeper's second) and completes its close handshake.
    s = serve()
    with s.connect("/ticker", ping_interval=0.3, ping_timeout=2.5) as ws:
        ws.send("go")
        ticks = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            ticks.append(ws.recv(timeout=5))
        assert ticks[:3] == ["tick 0", "tick 1", "tick 2"] and len(ticks) > 20
        ws.ping(b"are you there").wait(timeout=3)  # answered while the app only sends
        t0 = time.monotonic()
        ws.close(1000, "enough")
        assert ws.close_code == 1000 and time.monotonic() - t0 < 3
    assert s.wait_closed(1)["closed"] == {"1000": 1}


def test_a_websocket_outlives_the_request_timeout(serve: Callable[..., Server]) -> None:
    s = serve(GWS, "--request-timeout", "0.5")
    with s.connect() as ws:
        for i in range(8):  # 2 s: four times the request timeout
            time.sleep(0.25)
            ws.send(f"message {i}")
            assert ws.recv(timeout=5) == f"message {i}"
    assert s.wait_closed(1)["closed"] == {"1000": 1}
    assert "exceeded --request-timeout" not in s.g.log()


def test_a_client_that_stops_reading_is_cut_after_the_send_timeout(serve: Callable[..., Server]) -> None:
    s = serve(GWS, "--send-timeout", "0.5")
    c = s.raw("/flood")  # reads the 101, then nothing more
    assert c.status == 101
    t0 = time.monotonic()
    st = s.wait_closed(1, timeout=20)
    assert st["closed"] == {"1006": 1} and 0.4 < time.monotonic() - t0 < 15
    assert wait_for(lambda: total(s.metrics(), "greenfork_connection_duration_seconds_count",
                                  error_type="min_response_data_rate") == 1, 10, "the connection's end")
    with s.connect() as ws:  # the worker serves on
        ws.send("after")
        assert ws.recv(timeout=5) == "after"
    c.close()


def test_websockets_count_against_worker_connections(serve: Callable[..., Server]) -> None:
    s = serve(GWS, "--worker-connections", "3")
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(s.connect()) for _ in range(3)]
        for ws in clients:
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
        # the worker is full: a fourth connection is closed unserved
        with pytest.raises((ConnectionError, OSError)):
            http_get(f"http://127.0.0.1:{s.port}", "/", timeout=5)
        assert total(s.metrics(), "greenfork_rejected_connections_total") >= 1
        clients[0].close()
        wait_for(lambda: total(s.metrics(), ACTIVE) == 2, 10, "a WebSocket to close")

        def served() -> bool:
            try:
                return http_get(f"http://127.0.0.1:{s.port}", "/", timeout=5)[2] == b"plain http\n"
            except OSError:
                return False

        assert wait_for(served, 10, "room for a connection")
        for ws in clients[1:]:
            ws.send("still here")
            assert ws.recv(timeout=5) == "still here"


# ---------------------------------------------------------------- real clients, TLS
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_websockets_client_with_compression_and_a_4mib_message(serve: Callable[..., Server], certs: Certs,
                                                               tls: bool) -> None:
    s = serve(certs=certs if tls else None)
    with s.connect(max_size=8 << 20) as ws:
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        big = os.urandom(4 << 20)
        ws.send(big)
        assert ws.recv(timeout=60) == big
        text = "é" * (2 << 20)  # 4 MiB of UTF-8
        ws.send(text)
        assert ws.recv(timeout=60) == text
    with s.connect(compression=None) as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        ws.send(b"plain")
        assert ws.recv(timeout=10) == b"plain"
    stats = s.wait_closed(2)
    assert stats["received_bytes"] == stats["sent_bytes"] == 5 + (8 << 20) + 5


def test_compression_off_is_a_setting(serve: Callable[..., Server]) -> None:
    s = serve(GWS, "--no-websocket-compression")
    with s.connect() as ws:  # websockets offers permessage-deflate
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        ws.send("x" * 1000)
        assert ws.recv(timeout=10) == "x" * 1000


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_200_concurrent_connections_echo(serve: Callable[..., Server], certs: Certs, tls: bool) -> None:
    s = serve(certs=certs if tls else None)
    n, rounds = 200, 5

    async def one(i: int) -> int:
        async with aconnect(s.url(), open_timeout=60, ping_interval=None, ssl=s.client_ssl) as ws:
            for r in range(rounds):
                msg = f"client {i} round {r}"
                await ws.send(msg)
                assert await ws.recv() == msg
        return i

    async def run() -> list[int]:
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 120)

    assert sorted(asyncio.run(run())) == list(range(n))
    stats = s.wait_closed(n, 30)
    assert stats["opened"] == n and stats["closed"] == {"1000": n}
    assert stats["received"] == stats["sent"] == n * rounds


# ---------------------------------------------------------------- metrics
def test_metrics_from_the_real_endpoint(serve: Callable[..., Server]) -> None:
    s = serve()
    m = s.metrics()
    # shown from zero before any WebSocket (the worker announced the feature)
    assert total(m, ACTIVE) == 0 and ({labels["direction"] for labels, _ in find(m, MESSAGES)}
                                      == {"received", "sent"})
    with s.connect() as a, s.connect() as b:
        wait_for(lambda: total(s.metrics(), ACTIVE) == 2, 10, "two open WebSockets")
        a.send("12345")
        assert a.recv(timeout=5) == "12345"
        b.send(b"\x00" * 1000)
        assert b.recv(timeout=5) == b"\x00" * 1000
        b.send("é")  # 2 bytes of UTF-8
        assert b.recv(timeout=5) == "é"
        a.close()
        st = s.wait_closed(1)
        assert st["open"] == 1 and st["closed"] == {"1000": 1}
        assert (st["received"], st["sent"]) == (3, 3)
        assert st["received_bytes"] == st["sent_bytes"] == 5 + 1000 + 2
        # a client that goes away without a close frame: 1006
        b.socket.shutdown(socket.SHUT_RDWR)
        st = s.wait_closed(2)
        assert st["open"] == 0 and st["closed"] == {"1000": 1, "1006": 1}
    m = s.metrics()
    assert total(m, "http_server_request_duration_seconds_count", http_response_status_code="101") == 2
    assert total(m, "greenfork_active_connections") == 0


# ---------------------------------------------------------------- TERM, HUP, recycling
def test_term_sends_1001_and_waits_the_grace_for_the_handshakes(serve: Callable[..., Server]) -> None:
    s = serve(GWS, "--websocket-grace", "2")
    stack = contextlib.ExitStack()
    clients = [stack.enter_context(s.connect()) for _ in range(3)]
    for ws in clients:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
    stubborn = s.raw()  # reads the 1001 but never answers it
    stubborn.send(frame(TEXT, b"x"))
    assert stubborn.frame() == (TEXT, b"x")
    keepalive = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    keepalive.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert keepalive.recv(65536).startswith(b"HTTP/1.1 200")
    worker = s.g.workers()[0]
    t0 = time.monotonic()
    s.g.signal(signal.SIGTERM)
    for ws in clients:
        assert expect_close(ws, 1001) == "server going away"
    assert time.monotonic() - t0 < 2  # at once, not after the grace
    # a WebSocket asked for on a kept-alive connection while the worker goes away: 503
    keepalive.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    answer = keepalive.recv(65536)
    assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer, answer
    keepalive.close()
    stack.close()
    assert stubborn.frame() == (CLOSE, close_payload(1001, b"server going away"))
    assert alive(worker)  # the stubborn client holds the worker for the grace period
    assert stubborn.frames_until_eof() == []  # cut when the grace period ends
    assert 1.5 < time.monotonic() - t0 < 8
    assert s.g.wait(15) == 0
    assert not alive(worker) and "Worker 0 drained, exiting" in s.g.log()


def test_hup_closes_with_1001_and_clients_reconnect_to_the_new_generation(serve: Callable[..., Server],
                                                                        ) -> None:
    s = serve(GWS, "--websocket-grace", "1.5")
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(s.connect("/whoami")) for _ in range(2)]
        before = [json.loads(str(ws.recv(timeout=5))) for ws in clients]
        assert {b["generation"] for b in before} == {1}
        old = before[0]["pid"]
        stubborn = s.raw("/whoami")
        assert json.loads(stubborn.frame()[1])["pid"] == old  # type: ignore[index]
        s.g.signal(signal.SIGHUP)
        for ws in clients:
            assert expect_close(ws, 1001, timeout=30) == "server going away"
        t0 = time.monotonic()
        assert stubborn.frame() == (CLOSE, close_payload(1001, b"server going away"))
        assert stubborn.frames_until_eof() == []
        assert time.monotonic() - t0 < 5
        wait_for(lambda: not alive(old), 10, "the old worker to exit")
    with s.connect("/whoami") as ws:
        now = json.loads(str(ws.recv(timeout=5)))
        assert now["generation"] == 2 and now["pid"] != old
    # counters survive the old worker
    closed = s.wait_closed(4)["closed"]
    assert closed == {"1001": 3, "1000": 1}, closed


def test_max_requests_recycling_closes_with_1001(serve: Callable[..., Server]) -> None:
    s = serve(GWS, "--max-requests", "3")
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(s.connect("/whoami")) for _ in range(2)]  # requests 1 and 2
        old = {json.loads(str(ws.recv(timeout=5)))["pid"] for ws in clients}
        assert len(old) == 1
        assert http_get(f"http://127.0.0.1:{s.port}", "/")[0] == 200  # request 3: the limit
        for ws in clients:
            assert expect_close(ws, 1001, timeout=30) == "server going away"
    wait_for(lambda: not alive(next(iter(old))), 15, "the recycled worker to exit")
    with s.connect("/whoami") as ws:
        assert json.loads(str(ws.recv(timeout=5)))["pid"] not in old


def test_max_worker_lifetime_recycling_closes_with_1001(serve: Callable[..., Server]) -> None:
    # The master replaces the worker (its replacement ready first); the old one goes away
    s = serve(GWS, "--max-worker-lifetime", "3")
    with s.connect("/whoami") as ws:
        old = json.loads(str(ws.recv(timeout=5)))["pid"]
        assert expect_close(ws, 1001, timeout=30) == "server going away"
    wait_for(lambda: not alive(old), 15, "the recycled worker to exit")
    with s.connect("/whoami") as ws:
        assert json.loads(str(ws.recv(timeout=5)))["pid"] != old
    assert s.wait_closed(2)["closed"].get("1001", 0) >= 1


def test_settings_reach_the_help_and_refuse_bad_values(launcher: Launcher, tmp_path: Path) -> None:
    g = launcher.spawn([GWS, "--websocket-ping-timeout", "0"])
    assert g.wait(20) != 0
    assert "websocket-ping-timeout" in g.log() and "must be more than 0" in g.log()

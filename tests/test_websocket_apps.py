"""Real apps with real clients: flask-sock, Flask-SocketIO (both python-engineio gevent
drivers: gevent-websocket's wsgi.websocket and simple-websocket's raw socket) with
python-socketio's client, a gevent-websocket app, and node's `ws` client."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import socketio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.procs import wait_for
from tests.test_websocket import GWS, Harness, RawClient, harnesses
from tests.test_websocket_protocol import CLOSE, TEXT, frame

FLASK_SOCK = "tests.apps.ws_flask_sock:app"
SOCKETIO = "tests.apps.ws_socketio:app"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    yield from harnesses(tmp_path)


# ---------------------------------------------------------------- flask-sock
@pytest.mark.parametrize("app", [FLASK_SOCK, "tests.apps.ws_flask_sock:app_ping"], ids=["plain", "pinging"])
def test_flask_sock_echo(harness: Callable[..., Harness], app: str) -> None:
    h = harness(app)
    with connect(h.url(), ping_interval=None) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=5) == b"\x00\x01"
        if app.endswith("ping"):
            time.sleep(1.2)  # simple-websocket pings every 0.5 s, polling fileno() with a selector
        big = "x" * 300_000
        ws.send(big)
        assert ws.recv(timeout=10) == big
        ws.send("bye")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is not None and (info.value.rcvd.code, info.value.rcvd.reason) == (1000, "bye")
    stats = h.wait_closed(1)
    assert stats["opened"] == 1 and stats["closed"] == {"1000": 1}
    if app == FLASK_SOCK:
        from tests.procs import http_get

        assert http_get(f"http://127.0.0.1:{h.port}", "/")[2] == b"flask ok"  # plain Flask routes still work


def test_flask_sock_frames_in_the_head_packet(harness: Callable[..., Harness]) -> None:
    # bytes that arrive with the request head reach simple-websocket first, through the raw socket
    h = harness(FLASK_SOCK)
    c = RawClient(h.port, extra=frame(TEXT, b"early"))
    assert c.status == 101
    assert c.frame() == (TEXT, b"early")
    c.send(frame(TEXT, b"bye"))
    assert c.frame() == (CLOSE, (1000).to_bytes(2, "big") + b"bye")


def test_going_away_reaches_flask_sock_and_gevent_websocket_alike(harness: Callable[..., Harness]) -> None:
    h1, h2 = harness(FLASK_SOCK, grace=5), harness(GWS, grace=5)
    with connect(h1.url(), ping_interval=None) as a, connect(h2.url(), ping_interval=None) as b:
        for ws in (a, b):
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
        t0 = time.monotonic()
        h1.proc.send_signal(signal.SIGTERM)
        h2.proc.send_signal(signal.SIGTERM)
        for ws in (a, b):
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    for h in (h1, h2):
        assert h.proc.wait(15) == 0
        assert "GONE 0" in h.output(), h.output()
        assert json.loads(h.output().split("STATS ", 1)[1].splitlines()[0])["closed"] == {"1001": 1}
    assert time.monotonic() - t0 < 4  # the handshakes completed: nobody waited for the grace period


# ---------------------------------------------------------------- Flask-SocketIO
@pytest.mark.parametrize("hide", [(), ("geventwebsocket",)], ids=["gevent-websocket", "simple-websocket"])
@pytest.mark.parametrize("transports", [["websocket"], None], ids=["websocket-only", "polling-upgrade"])
def test_flask_socketio(harness: Callable[..., Harness], hide: tuple[str, ...], transports: list[str] | None,
                        ) -> None:
    h = harness(SOCKETIO, hide=hide)
    clients = [socketio.Client(), socketio.Client()]
    got: list[list[object]] = [[], []]
    for i, sio in enumerate(clients):
        sio.on("echo", lambda data, i=i: got[i].append(("echo", data)))
        sio.on("shout", lambda data, i=i: got[i].append(("shout", data)))
        sio.connect(f"http://127.0.0.1:{h.port}", transports=transports, wait_timeout=10)
    try:
        for sio in clients:
            wait_for(lambda sio=sio: sio.transport() == "websocket", 10, "the websocket transport")
        clients[0].emit("echo", {"n": 1})
        assert clients[0].call("ack", [1, "two"], timeout=10) == {"acked": [1, "two"]}
        wait_for(lambda: ("echo", {"n": 1}) in got[0], 10, "the echo")
        clients[1].emit("shout", "to everyone")
        wait_for(lambda: all(("shout", "to everyone") in g for g in got), 10, "the broadcast")
    finally:
        for sio in clients:
            sio.disconnect()
    stats = h.wait_closed(2)
    assert stats["opened"] == 2 and stats["closed"] == {"1000": 2}
    if not hide:  # through wsgi.websocket the messages are ours to count
        assert stats["received"] >= 4 and stats["sent"] >= 4


# ---------------------------------------------------------------- gevent-websocket
def test_gevent_websocket_chat_and_attributes(harness: Callable[..., Harness]) -> None:
    h = harness()
    with connect(h.url("/info"), origin="http://example.test", subprotocols=["chat"],  # type: ignore[list-item]
                 ping_interval=None) as ws:
        info = json.loads(ws.recv(timeout=5))
        assert info["path"] == "/info" and info["origin"] == "http://example.test"
        assert info["protocol"] == "chat" and info["version"] == "13" and info["version_key"] == "13"
        assert info["client"][0] == "127.0.0.1" and info["client"][1] > 0
        assert ws.subprotocol is None  # like gevent-websocket: no app_protocol(), no subprotocol chosen
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(connect(h.url("/chat"), ping_interval=None)) for _ in range(3)]
        for ws in clients:  # the app's first touch of ws put each in ws.handler.server.clients
            ws.send("join")
        for ws in clients:
            assert ws.recv(timeout=5) == "join"
        clients[0].send("hi all")
        for ws in clients:
            msgs = []
            while "hi all" not in msgs:  # after the other clients' joins
                msgs.append(ws.recv(timeout=5))
            assert set(msgs) <= {"join", "hi all"}
    assert h.wait_closed(4)["closed"] == {"1000": 4}


# ---------------------------------------------------------------- node's ws
NODE_CLIENT = r"""
const WebSocket = require('ws');
const ws = new WebSocket(process.argv[2], {perMessageDeflate: true});
const r = {};
let step = 0;
ws.on('open', () => { r.extensions = ws.extensions; ws.send('hello node'); });
ws.on('message', (data, isBinary) => {
  if (step === 0) { r.text = data.toString(); r.textIsBinary = isBinary; ws.send(Buffer.from([1, 2, 3])); }
  else if (step === 1) { r.binary = [...data]; r.binaryIsBinary = isBinary; ws.send('x'.repeat(100000)); }
  else if (step === 2) { r.bigLength = data.length; ws.ping('p'); }
  step++;
});
ws.on('pong', (d) => { r.pong = d.toString(); ws.close(1000, 'node done'); });
ws.on('close', (code) => { r.close = code; console.log(JSON.stringify(r)); process.exit(0); });
ws.on('error', (e) => { console.log(JSON.stringify({error: String(e)})); process.exit(1); });
setTimeout(() => { console.log(JSON.stringify({timeout: true, r})); process.exit(2); }, 20000);
"""


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """node's `ws` package, installed once per machine from the npm registry."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are required (Debian's nodejs and npm packages)")
    target = Path("/tmp/greenfork-node-ws")
    if not (target / "node_modules" / "ws" / "package.json").exists():
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix",
                        str(target), "ws@8"], check=True, timeout=300, stdout=subprocess.DEVNULL)
    return target / "node_modules"


@pytest.mark.parametrize("app", [GWS, FLASK_SOCK], ids=["gevent-websocket", "flask-sock"])
def test_node_ws_client(harness: Callable[..., Harness], node_modules: Path, tmp_path: Path,
                        app: str) -> None:
    h = harness(app)
    script = tmp_path / "client.js"
    script.write_text(NODE_CLIENT)
    env = {"NODE_PATH": str(node_modules), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["node", str(script), h.url()], env=env, capture_output=True, text=True, timeout=60)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert r["extensions"].startswith("permessage-deflate")
    assert (r["text"], r["textIsBinary"]) == ("hello node", False)
    assert (r["binary"], r["binaryIsBinary"]) == ([1, 2, 3], True)
    assert r["bigLength"] == 100000 and r["pong"] == "p" and r["close"] == 1000

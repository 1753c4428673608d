"""Real apps with real clients, on the real server: flask-sock, Flask-SocketIO (both
python-engineio gevent drivers: gevent-websocket's wsgi.websocket and simple-websocket's raw
socket) with python-socketio's client, a gevent-websocket app, and node's `ws` client; over
TCP and TLS."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import socketio

from tests import tlscerts
from tests.procs import Launcher, alive, http_get, wait_for
from tests.test_websocket import GWS, Server, expect_close, start
from tests.test_websocket_protocol import CLOSE, TEXT, frame
from tests.tlscerts import Certs

FLASK_SOCK = "ws_flask_sock:app"
SOCKETIO = "ws_socketio:app"
SOCKETIO_SIMPLE = "ws_socketio_simple:app"  # the same app where gevent-websocket is not installed


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return tlscerts.certs(tmp_path_factory)


@pytest.fixture
def serve(launcher: Launcher) -> Callable[..., Server]:
    def run(app: str = GWS, *args: str, certs: Certs | None = None) -> Server:
        return start(launcher, app, *args, certs=certs)

    return run


# ---------------------------------------------------------------- flask-sock
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("app", [FLASK_SOCK, "ws_flask_sock:app_ping"], ids=["plain", "pinging"])
def test_flask_sock_echo(serve: Callable[..., Server], certs: Certs, app: str, tls: bool) -> None:
    s = serve(app, certs=certs if tls else None)
    with s.connect() as ws:
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
        assert expect_close(ws, 1000, timeout=5) == "bye"
    stats = s.wait_closed(1)
    assert stats["opened"] == 1 and stats["closed"] == {"1000": 1}
    if app == FLASK_SOCK and not tls:
        assert http_get(f"http://127.0.0.1:{s.port}", "/")[2] == b"flask ok"  # plain Flask routes still work


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_flask_sock_frames_in_the_head_packet(serve: Callable[..., Server], certs: Certs, tls: bool) -> None:
    # bytes that arrive with the request head reach simple-websocket first, through the raw socket
    s = serve(FLASK_SOCK, certs=certs if tls else None)
    c = s.raw(extra=frame(TEXT, b"early"))
    assert c.status == 101
    assert c.frame() == (TEXT, b"early")
    c.send(frame(TEXT, b"bye"))
    assert c.frame() == (CLOSE, (1000).to_bytes(2, "big") + b"bye")


def test_term_reaches_flask_sock_and_gevent_websocket_alike(serve: Callable[..., Server]) -> None:
    s1, s2 = serve(FLASK_SOCK, "--websocket-grace", "5"), serve(GWS, "--websocket-grace", "5")
    with s1.connect() as a, s2.connect() as b:
        for ws in (a, b):
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
        t0 = time.monotonic()
        s1.g.signal(signal.SIGTERM)
        s2.g.signal(signal.SIGTERM)
        for ws in (a, b):
            assert expect_close(ws, 1001) == "server going away"
    for s in (s1, s2):
        assert s.g.wait(15) == 0
    assert time.monotonic() - t0 < 4  # the handshakes completed: nobody waited for the grace period


def test_hup_reaches_flask_sock_and_is_counted(serve: Callable[..., Server]) -> None:
    s = serve(FLASK_SOCK, "--websocket-grace", "5")
    worker = s.g.workers()[0]
    with s.connect() as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
        s.g.signal(signal.SIGHUP)
        assert expect_close(ws, 1001, timeout=30) == "server going away"
    wait_for(lambda: not alive(worker), 10, "the old worker to exit")
    assert s.wait_closed(1)["closed"] == {"1001": 1}


# ---------------------------------------------------------------- Flask-SocketIO
@pytest.mark.parametrize("app", [SOCKETIO, SOCKETIO_SIMPLE], ids=["gevent-websocket", "simple-websocket"])
@pytest.mark.parametrize("transports", [["websocket"], None], ids=["websocket-only", "polling-upgrade"])
def test_flask_socketio(serve: Callable[..., Server], app: str, transports: list[str] | None) -> None:
    s = serve(app)
    clients = [socketio.Client(), socketio.Client()]
    got: list[list[object]] = [[], []]
    try:
        for i, sio in enumerate(clients):
            sio.on("echo", lambda data, i=i: got[i].append(("echo", data)))
            sio.on("shout", lambda data, i=i: got[i].append(("shout", data)))
            sio.connect(f"http://127.0.0.1:{s.port}", transports=transports, wait_timeout=10)
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
    stats = s.wait_closed(2)
    assert stats["opened"] == 2 and stats["closed"] == {"1000": 2}
    if app == SOCKETIO:  # through wsgi.websocket the messages are ours to count
        assert stats["received"] >= 4 and stats["sent"] >= 4
    else:  # simple-websocket frames them itself
        assert stats["received"] == stats["sent"] == 0


# ---------------------------------------------------------------- gevent-websocket
def test_gevent_websocket_chat_and_attributes(serve: Callable[..., Server]) -> None:
    s = serve()
    with s.connect("/info", origin="http://example.test", subprotocols=["chat"]) as ws:
        info = json.loads(ws.recv(timeout=5))
        assert info["path"] == "/info" and info["origin"] == "http://example.test"
        assert info["protocol"] == "chat" and info["version"] == "13" and info["version_key"] == "13"
        assert info["client"][0] == "127.0.0.1" and info["client"][1] > 0
        assert ws.subprotocol is None  # like gevent-websocket: no app_protocol(), no subprotocol chosen
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(s.connect("/chat")) for _ in range(3)]
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
    assert s.wait_closed(4)["closed"] == {"1000": 4}


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


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("app", [GWS, FLASK_SOCK], ids=["gevent-websocket", "flask-sock"])
def test_node_ws_client(serve: Callable[..., Server], certs: Certs, node_modules: Path, tmp_path: Path,
                        app: str, tls: bool) -> None:
    s = serve(app, certs=certs if tls else None)
    script = tmp_path / "client.js"
    script.write_text(NODE_CLIENT)
    env = {"NODE_PATH": str(node_modules), "PATH": "/usr/bin:/bin", "NODE_EXTRA_CA_CERTS": str(certs.ca)}
    out = subprocess.run(["node", str(script), s.url()], env=env, capture_output=True, text=True, timeout=60)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert r["extensions"].startswith("permessage-deflate")
    assert (r["text"], r["textIsBinary"]) == ("hello node", False)
    assert (r["binary"], r["binaryIsBinary"]) == ([1, 2, 3], True)
    assert r["bigLength"] == 100000 and r["pong"] == "p" and r["close"] == 1000

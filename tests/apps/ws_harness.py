"""A stand-in for greenfork's connection pipeline, for the WebSocket tests.

    python -m tests.apps.ws_harness MODULE:APP [--limits JSON] [--grace S] [--hide MODULE]

Under gevent's monkey patching (as in a greenfork worker) it accepts on 127.0.0.1, reads one
request head per connection, builds a WSGI environ, and makes the hand-off the pipeline will
make: WebSockets.prepare() before the app, Upgrade.finish() after it. Its stream is the
minimal one the pipeline's transport stands for: recv(), send(), close() and `pending`
over a gevent socket. Requests that are not upgrades get the app's response with
Connection: close. It prints "LISTENING <port>" when ready. GET /__stats answers the
observer's counts as JSON. On SIGTERM it calls going_away(--grace), prints
"GONE <cut>" and the final stats, and exits.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.server  # noqa: E402


class GeventStream:
    """The pipeline's stream: the client's bytes in and out, `pending` first."""

    def __init__(self, sock: Any, pending: bytes) -> None:
        self.sock = sock
        self.pending = pending

    def recv(self) -> bytes:
        return bytes(self.sock.recv(65536))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


class Counting:
    """An observer (greenfork.workers.websocket.Observer) that counts, for the tests."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed: Counter[int] = Counter()
        self.received = self.received_bytes = self.sent = self.sent_bytes = 0

    def stats(self) -> dict[str, Any]:
        return {"opened": self.opened, "closed": {str(k): v for k, v in self.closed.items()},
                "received": self.received, "received_bytes": self.received_bytes,
                "sent": self.sent, "sent_bytes": self.sent_bytes}


def make_observer(counts: Counting) -> Any:
    from greenfork.workers.websocket import Observer

    class Obs(Observer):
        def opened(self) -> None:
            counts.opened += 1

        def received(self, size: int) -> None:
            counts.received += 1
            counts.received_bytes += size

        def sent(self, size: int) -> None:
            counts.sent += 1
            counts.sent_bytes += size

        def closed(self, code: int) -> None:
            counts.closed[code] += 1

    return Obs()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("app")
    ap.add_argument("--limits", default="{}")
    ap.add_argument("--grace", type=float, default=5.0)
    ap.add_argument("--hide", action="append", default=[], help="make `import MODULE` fail in the app")
    args = ap.parse_args()
    for name in args.hide:
        sys.modules[name] = None  # type: ignore[assignment]

    from greenfork.workers.websocket import Limits, Refusal, Upgrade, WebSockets

    counts = Counting()
    websockets = WebSockets(Limits(**json.loads(args.limits)), make_observer(counts))
    module, _, attr = args.app.partition(":")
    app = getattr(importlib.import_module(module), attr or "app")

    def respond(sock: Any, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers]
        if not any(k.lower() == "content-length" for k, _ in headers):
            lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: close")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def handle(sock: Any, addr: tuple[str, int]) -> None:
        try:
            serve(sock, addr)
        except OSError:
            pass
        finally:
            sock.close()

    def serve(sock: Any, addr: tuple[str, int]) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data or len(buf) > 65536:
                return
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, target, version = lines[0].decode("latin-1").split(" ")
        headers = [(n.strip(), v.strip()) for n, v in (line.split(b":", 1) for line in lines[1:])]
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": query,
            "SERVER_PROTOCOL": version, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(sock.getsockname()[1]),
            "REMOTE_ADDR": addr[0], "REMOTE_PORT": str(addr[1]), "SERVER_SOFTWARE": "greenfork-test",
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        }
        length = 0
        for name, value in headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            if key == "CONTENT_LENGTH":
                length = int(text)
                environ[key] = text
            elif key == "CONTENT_TYPE":
                environ[key] = text
            else:
                key = "HTTP_" + key
                environ[key] = environ[key] + "," + text if key in environ else text
        if path == "/__stats":
            respond(sock, "200 OK", [("Content-Type", "application/json")],
                    json.dumps(dict(counts.stats(), open=websockets.count)).encode())
            return
        body = rest
        while len(body) < length:
            data = sock.recv(65536)
            if not data:
                return
            body += data
        environ["wsgi.input"] = io.BytesIO(body[:length])
        ws = websockets.prepare(environ, headers, GeventStream(sock, rest if not length else b""), app)
        if isinstance(ws, Refusal):
            respond(sock, *ws.response())
            return
        started: list[Any] = []

        def start_response(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, hdrs]
            return lambda data: None

        error: BaseException | None = None
        chunks: list[bytes] = []
        try:
            result = app(environ, start_response)
            try:
                chunks = [bytes(c) for c in result]
            finally:
                if hasattr(result, "close"):
                    result.close()
        except Exception as e:  # StopIteration included: flask-sock's gunicorn path
            error = e
        if isinstance(ws, Upgrade) and ws.finish(error):
            return  # the app took the connection over: finish() closed it
        if error is not None:
            respond(sock, "500 Internal Server Error", [], b"error\n")
        elif started:
            respond(sock, started[0], started[1], b"".join(chunks))

    server = gevent.server.StreamServer(("127.0.0.1", 0), handle)
    server.start()

    term = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, term.set)
    print(f"LISTENING {server.server_port}", flush=True)
    term.wait()
    server.stop_accepting()
    cut = websockets.going_away(args.grace)
    print(f"GONE {cut}", flush=True)
    print("STATS " + json.dumps(counts.stats()), flush=True)
    server.stop(timeout=1)


if __name__ == "__main__":
    main()

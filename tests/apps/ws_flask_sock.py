"""flask-sock apps, unchanged: simple-websocket finds the connection's socket in
environ["gunicorn.socket"] and does its own handshake and framing over it.

    greenfork tests.apps.ws_flask_sock:app
"""

from __future__ import annotations

from flask import Flask
from flask_sock import Sock

app = Flask(__name__)
sock = Sock(app)


@app.get("/")
def index() -> str:
    return "flask ok"


def echo(ws) -> None:  # type: ignore[no-untyped-def]
    while True:
        message = ws.receive()
        if message == "bye":
            ws.close(reason=1000, message="bye")
            break
        ws.send(message)


sock.route("/echo")(echo)


# The same echo with simple-websocket's own keep-alive pings: it then polls the socket's
# fileno() with a selector.
app_ping = Flask(__name__)
app_ping.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 0.5}
Sock(app_ping).route("/echo")(echo)

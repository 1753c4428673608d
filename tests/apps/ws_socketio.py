"""A Flask-SocketIO app with async_mode="gevent", unchanged. python-engineio's gevent driver
takes environ["wsgi.websocket"] when gevent-websocket is installed, and simple-websocket over
environ["gunicorn.socket"] when it is not; both work.

    greenfork tests.apps.ws_socketio:app
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_socketio import SocketIO, emit

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent")


@socketio.on("echo")
def on_echo(data: Any) -> None:
    emit("echo", data)


@socketio.on("shout")
def on_shout(data: Any) -> None:
    emit("shout", data, broadcast=True)


@socketio.on("ack")
def on_ack(data: Any) -> Any:
    return {"acked": data}

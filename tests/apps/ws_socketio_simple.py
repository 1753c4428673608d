"""tests/apps/ws_socketio.py as it runs where gevent-websocket is not installed: python-engineio's
gevent driver then takes simple-websocket over environ["gunicorn.socket"] instead of
environ["wsgi.websocket"].

    greenfork ws_socketio_simple:app
"""

from __future__ import annotations

import sys

# As if gevent-websocket were not installed: `import geventwebsocket` now raises ImportError.
sys.modules["geventwebsocket"] = None  # type: ignore[assignment]

from ws_socketio import app  # noqa: E402

__all__ = ["app"]

"""greenfork master: settings, listeners, the supervising arbiter. Never imports gevent."""

from greenfork.master.server import Server

__all__ = ["Server"]

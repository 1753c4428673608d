"""greenfork workers: gevent processes that serve HTTP/1.1 to a WSGI app."""

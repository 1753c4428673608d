"""The edge service: tells who it served and how."""

import json


def app(environ, start_response):
    body = json.dumps({
        "remote_addr": environ.get("REMOTE_ADDR"),
        "scheme": environ.get("wsgi.url_scheme"),
        "protocol": environ.get("SERVER_PROTOCOL"),
        "ssl_protocol": environ.get("SSL_PROTOCOL"),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

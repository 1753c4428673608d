"""Apps for the port-sharing tests (issue 17): each says who it is and what it was given."""

from __future__ import annotations

import json
import os

from flask import Flask, url_for

KEYS = ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "REMOTE_ADDR",
        "REMOTE_PORT", "wsgi.url_scheme", "HTTPS", "SSL_PROTOCOL", "greenfork.server_addresses")


def _named(name: str):
    def app(environ, start_response):
        if environ["PATH_INFO"].endswith("/body"):
            data = environ["wsgi.input"].read()
            body = json.dumps({"app": name, "got": len(data)}).encode()
        else:
            body = json.dumps({"app": name, "pid": os.getpid(), "uid": os.getuid(),
                               **{k: environ.get(k) for k in KEYS}}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    app.__name__ = name
    return app


main = _named("main")
api = _named("api")
admin = _named("admin")
shop = _named("shop")
wild = _named("wild")
v1 = _named("v1")
one = _named("one")
two = _named("two")

# A Flask app mounted under a prefix builds its URLs from SCRIPT_NAME (PEP 3333)
flask = Flask(__name__)


@flask.get("/")
def index():
    return {"self": url_for("index"), "item": url_for("item", n=3), "abs": url_for("item", n=3, _external=True),
            "script_name": flask_request().environ["SCRIPT_NAME"], "path": flask_request().path}


@flask.get("/items/<int:n>")
def item(n: int):
    return {"n": n, "self": url_for("item", n=n), "script_name": flask_request().environ["SCRIPT_NAME"]}


def flask_request():
    from flask import request

    return request


def broken():
    raise RuntimeError("this factory always fails")

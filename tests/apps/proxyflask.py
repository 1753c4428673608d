"""A Flask app behind a proxy: the URLs it builds and the client it sees (forwarded headers
applied by greenfork, so no ProxyFix middleware)."""

from __future__ import annotations

from flask import Flask, jsonify, request, url_for

app = Flask(__name__)


@app.get("/where")
def where():
    return jsonify(url=url_for("where", _external=True), remote=request.remote_addr, scheme=request.scheme,
                   host=request.host, script_root=request.script_root)

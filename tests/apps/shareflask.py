"""A Flask app mounted under a prefix builds its URLs from SCRIPT_NAME (PEP 3333)."""

from __future__ import annotations

from flask import Flask, request, url_for

app = Flask(__name__)


@app.get("/")
def index():
    return {"self": url_for("index"), "item": url_for("item", n=3),
            "abs": url_for("item", n=3, _external=True), "script_name": request.environ["SCRIPT_NAME"],
            "path": request.path}


@app.get("/items/<int:n>")
def item(n: int):
    return {"n": n, "self": url_for("item", n=n), "script_name": request.environ["SCRIPT_NAME"]}

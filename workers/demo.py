"""The built-in app served when greenfork is started without an APP.

It shows what the addresses feature publishes and which worker answered,
so a newcomer sees the pre-fork model at work by reloading the page.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

DOCS = "https://github.com/greenfork/greenfork/tree/main/docs"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>greenfork is running</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem}}
code{{background:#f3f3f3;padding:.1rem .3rem}}</style></head>
<body><h1>greenfork is running</h1>
<p>This page comes from the built-in demo app. Start your own with
<code>greenfork module:app</code>.</p>
<h2>Listening on</h2><ul>{addresses}</ul>
<h2>This request</h2><ul>
<li>served by worker {worker} (pid {pid}), generation {generation}</li>
<li>{method} {path} over {protocol}</li></ul>
<p>Reload to see other workers answer. Documentation: <a href="{docs}">{docs}</a>.
Machine-readable: <a href="/info.json">/info.json</a>.</p>
</body></html>
"""


def info(environ: dict[str, Any]) -> dict[str, Any]:
    return {
        "addresses": environ.get("greenfork.server_addresses", []),
        "worker": environ.get("greenfork.worker"),
        "pid": os.getpid(),
        "generation": environ.get("greenfork.generation"),
    }


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    data = info(environ)
    if path == "/info.json":
        body = json.dumps(data).encode()
        ctype = "application/json"
    elif path == "/":
        body = PAGE.format(
            addresses="".join(f"<li><code>{html.escape(a)}</code></li>" for a in data["addresses"]),
            worker=data["worker"], pid=data["pid"], generation=data["generation"],
            method=html.escape(environ["REQUEST_METHOD"]), path=html.escape(path),
            protocol=html.escape(environ["SERVER_PROTOCOL"]), docs=DOCS).encode()
        ctype = "text/html; charset=utf-8"
    else:
        body = b"Not Found\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]

"""tests/apps/cacheapp.py's app, with a probe on the response cache's fast path
(tests/test_cache_fastpath.py): FastHits.answer() is wrapped, in the worker that imports this app,
to count the requests it answered, and GET /fastcount (never cacheable) returns that count. The
wrapper changes nothing of what answer() does: it tells the tests which path answered a hit."""

from __future__ import annotations

from typing import Any

from cacheapp import app as cache_app

from greenfork.workers.cachefast import FastHits

_answer = FastHits.answer
answered = 0


def _counting(self: FastHits, conn: Any, req: Any, scheme: str) -> str | None:
    global answered
    action = _answer(self, conn, req, scheme)
    if action is not None:
        answered += 1
    return action


FastHits.answer = _counting  # type: ignore[method-assign]


def app(environ: dict[str, Any], start_response: Any) -> Any:
    if environ["PATH_INFO"] == "/fastcount":
        body = str(answered).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return cache_app(environ, start_response)

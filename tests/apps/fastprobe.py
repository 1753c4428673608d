"""tests/apps/cacheapp.py's app, with a probe on the response cache's fast path
(tests/test_cache_fastpath.py): FastHits.answer() and FastHits.replay() are wrapped, in the worker
that imports this app, to count the requests they answered; GET /fastcount, or /fastcount/ANY
(never cacheable), returns both counts, the request stage's CacheStage.before() calls and the
store keys it made (CacheStage._key), "ANSWERED REPLAYED BEFORE KEYS".
The wrappers change nothing of what they wrap: they tell the tests which path answered a hit, or
decided to go past the cache."""

from __future__ import annotations

from typing import Any

from cacheapp import app as cache_app

from greenfork.workers.cachefast import FastHits
from greenfork.workers.cachestage import CacheStage

_answer = FastHits.answer
_replay = FastHits.replay
_before = CacheStage.before
_key = CacheStage._key
answered = 0
replayed = 0
befores = 0
keys = 0


def _counting(self: FastHits, conn: Any, req: Any, scheme: str) -> str | None:
    global answered
    action = _answer(self, conn, req, scheme)
    if action is not None:
        answered += 1
    return action


def _counting_replays(self: FastHits, conn: Any, r: Any, scheme: str) -> bool:
    global replayed
    done = _replay(self, conn, r, scheme)
    if done:
        replayed += 1
    return done


def _counting_befores(self: CacheStage, *args: Any) -> Any:
    global befores
    befores += 1
    return _before(self, *args)


def _counting_keys(self: CacheStage, *args: Any) -> Any:
    global keys
    keys += 1
    return _key(self, *args)


FastHits.answer = _counting  # type: ignore[method-assign]
CacheStage._key = _counting_keys  # type: ignore[method-assign]
CacheStage.before = _counting_befores  # type: ignore[method-assign]
FastHits.replay = _counting_replays  # type: ignore[method-assign]


def app(environ: dict[str, Any], start_response: Any) -> Any:
    if environ["PATH_INFO"].startswith("/fastcount"):
        body = f"{answered} {replayed} {befores} {keys}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return cache_app(environ, start_response)

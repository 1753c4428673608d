"""A miss of the shared response cache on its way to being stored (--response-cache;
docs/caching.md): the app's response passed through unchanged while its body is kept, then acted
on once complete (Fill.after): stored by the response's own headers (cachepolicy.py's rules,
CacheStage.store_response), the URL passed a while when it cannot be (CacheStage.passed), or, for
an unsafe method, the target's entries dropped (RFC 9111 4.4).

cachestage.CacheStage.before() makes the Fill; request.py runs the app through it and calls
after(). Whatever after() meets, the response has gone out already: a failure here is logged,
never the request's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from greenfork.workers import cachepolicy as cp
from greenfork.workers.wsgi import FileWrapper

if TYPE_CHECKING:
    from greenfork.workers.cachestage import CacheStage, Url
    from greenfork.workers.http1 import Request
    from greenfork.workers.request import Exchange

log = logging.getLogger("greenfork.worker")

STORE: Final = 0  # a Fill's kinds: store the response...
INVALIDATE: Final = 1  # ...or drop the target's entries (an unsafe method)


class Capture:
    """The app's iterable passed through unchanged, with its pieces kept up to `limit` bytes."""

    __slots__ = ("_close", "_it", "complete", "pieces", "size", "limit")

    def __init__(self, result: Iterable[bytes], limit: int) -> None:
        self._close: Callable[[], None] | None = getattr(result, "close", None)
        try:
            self._it = iter(result)
        except BaseException:
            self.close()
            raise
        self.pieces: list[bytes] | None = []
        self.size = 0
        self.limit = limit
        self.complete = False

    def __iter__(self) -> Capture:
        return self

    def __next__(self) -> bytes:
        try:
            data = next(self._it)
        except StopIteration:
            self.complete = True
            raise
        pieces = self.pieces
        if pieces is not None:
            self.size += len(data)
            if self.size > self.limit or type(data) is not bytes:
                self.pieces = None  # too big to store (or not bytes: request.py fails the response)
            else:
                pieces.append(data)
        return data

    def close(self) -> None:
        if self._close is not None:
            self._close()



def _declared_length(headers: list[tuple[str, str]]) -> str | None:
    for name, value in headers:
        if name.lower() == "content-length":
            return value
    return None


def _may_cache(headers: list[tuple[str, str]]) -> bool:
    """Cache-Control is required for storing (public or s-maxage): most responses fail here."""
    for name, _ in headers:  # noqa: SIM110 (any() over a generator costs twice as much)
        if name.lower() == "cache-control":
            return True
    return False


class Fill:
    """A miss that may be stored (or an unsafe request that may invalidate): the app runs through
    __call__, and after() acts on the complete response."""

    __slots__ = ("app", "code", "env", "key", "kind", "req", "request_time", "stage", "url")

    def __init__(self, stage: CacheStage, kind: int, key: bytes | None, env: dict[str, Any],
                 request_time: float, url: Url | None, req: Request) -> None:
        self.stage = stage
        self.kind = kind
        self.key = key  # None: not made yet (made when the response is stored)
        self.req = req
        self.env = env
        self.request_time = request_time
        self.url = url
        self.app: Callable[..., Any] | None = None
        self.code = 0

    def wrap(self, app: Callable[..., Any]) -> Callable[..., Any]:
        if self.kind != STORE:
            return app
        self.app = app
        return self

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        assert self.app is not None
        result = self.app(environ, start_response)
        if type(result) is list or type(result) is tuple or isinstance(result, FileWrapper):
            return result
        return Capture(result, self.stage.limit)

    def after(self, ex: Exchange, status: str | None, headers: list[tuple[str, str]], result: Any,
              err: str) -> None:
        """The response is complete, or failed (err, a status that is not the app's): store it,
        drop the target's entries, or leave it."""
        self.app = None  # no cycle left behind (the stage keeps no Fill)
        stage = self.stage
        if err or status is None:
            return
        code = self.code = ex.status
        try:
            if int(status[:3]) != code:
                return  # replaced by an error answer (504 after --request-timeout, say)
            if self.kind == INVALIDATE:
                if 200 <= code < 400 and self.key is not None:  # RFC 9111 4.4: a non-error response
                    stage.store.remove(self.key)
                return
            stored = False
            if code in cp.CACHEABLE_STATUS and _may_cache(headers):
                body = _body(result)
                if body is not None and len(body) == ex.body_bytes():
                    declared = _declared_length(headers)
                    if declared is None or declared == str(len(body)):
                        stored = stage.store_response(self, status, headers, body)
            if not stored:
                stage.passed(self.url, self.env, self.request_time, self.req)
        except Exception:  # the response is out: a cache fill must never fail the request
            log.exception("Response cache: could not store %s", self.req.target[:200])


def _body(result: Any) -> bytes | None:
    """The whole body the app produced, or None (a file, an iterable too big or cut short)."""
    pieces: list[Any] | tuple[Any, ...] | None = None
    if type(result) is list or type(result) is tuple:
        pieces = result
    elif type(result) is Capture and result.complete:
        pieces = result.pieces
    if pieces is None:
        return None
    if len(pieces) == 1 and type(pieces[0]) is bytes:
        return pieces[0]
    if not all(type(p) is bytes for p in pieces):
        return None
    return b"".join(pieces)

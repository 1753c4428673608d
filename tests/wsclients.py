"""Test clients for wss:// whose TLS runs on one thread (see TlsClient)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection as AsyncClient
from websockets.asyncio.client import connect as aconnect

T = TypeVar("T")


class TlsClient:
    """A wss:// client whose TLS runs on one thread: websockets' asyncio client on an event loop
    in a thread of its own (which answers pings while the test does something else), called
    through run_coroutine_threadsafe. websockets' sync client reads in one thread while the
    caller writes in another, and OpenSSL's SSL objects are not safe for that: TLS 1.3's session
    tickets, read in one thread while the request is written in the other, lose the request now
    and then (python/cpython issue 137583, python-engineio issue 461). Plain ws:// connections
    use the sync client."""

    def __init__(self, url: str, ctx: ssl.SSLContext, sock: socket.socket | None = None, **kw: Any) -> None:
        if sock is not None:
            kw.setdefault("server_hostname", "localhost")
        kw.setdefault("ping_interval", None)
        kw.setdefault("open_timeout", 10)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def opening() -> AsyncClient:
            return await aconnect(url, sock=sock, ssl=ctx, **kw)

        try:
            self.ws = self._call(opening(), 30)
        except BaseException:
            if sock is not None:
                sock.close()
            self._stop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def response(self) -> Any:
        return self.ws.response

    def send(self, message: str | bytes) -> None:
        self._call(self.ws.send(message), 60)

    def recv(self, timeout: float = 10) -> str | bytes:
        return self._call(asyncio.wait_for(self.ws.recv(), timeout), timeout + 5)

    def __enter__(self) -> TlsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._call(self.ws.close(), 30)
        finally:
            self._stop()

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    def ping(self, timeout: float = 10) -> float:
        """A ping and its pong: the round trip's seconds (TimeoutError without a pong)."""
        async def pinging() -> float:
            return await asyncio.wait_for(await self.ws.ping(), timeout)

        return self._call(pinging(), timeout + 5)

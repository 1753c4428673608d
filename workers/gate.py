"""The request stage's front-door checks, once per request, before the application.

In this order, each only when configured:

1. ``--require-header NAME=VALUE``: a request without the header, or with another value,
   is answered 403 (error_type ``required_header_missing``); the header is removed from
   the environ either way, so the secret never reaches the application or its logs.
2. Forwarded headers (workers/forwarded.py): applied from the peer the transport
   established (the connection's, or the client a PROXY header named), which is the
   environ's REMOTE_ADDR at this point. A request that carries none of the honoured
   headers costs a dictionary lookup per honoured header and nothing else.
3. ``--allowed-hosts`` (workers/hosts.py): the Host that results is checked; any other is
   answered 400 (error_type ``host_not_allowed``).

A refusal is an ordinary small response through the request stage (access log, metrics,
keep-alive as usual); the application never sees the request. With none of the three
configured the worker has no Gate and the request stage tests one attribute.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

from greenfork.master.trust import TrustList
from greenfork.workers.forwarded import HONOURABLE, Forwarding
from greenfork.workers.hosts import AllowedHosts

log = logging.getLogger("greenfork.worker")

HOST_NOT_ALLOWED: Final = "host_not_allowed"
REQUIRED_HEADER: Final = "required_header_missing"

App = Callable[..., Any]


def _refusal(status: str, body: bytes) -> App:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]

    def refuse(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, list(headers))
        return [body]

    return refuse


# The bodies say what failed, never the value that did (a Host is the client's text).
REFUSE_HOST: Final = _refusal("400 Bad Request", b"400 Bad Request: this server does not serve that host\n")
REFUSE_SECRET: Final = _refusal("403 Forbidden", b"403 Forbidden\n")


def environ_key(header: str) -> str:
    """The environ key a header arrives under: HTTP_X_FORWARDED_FOR for X-Forwarded-For."""
    return "HTTP_" + header.upper().replace("-", "_")


class Gate:
    """The checks one worker runs on each request (built from its settings by `build`)."""

    __slots__ = ("_fw_keys", "forwarding", "hosts", "secret_key", "secret_value")

    def __init__(self, forwarding: Forwarding | None = None, hosts: AllowedHosts | None = None,
                 require: str | None = None) -> None:
        self.forwarding = forwarding
        # the honoured headers' environ keys: a request without any of them skips the walk
        self._fw_keys: tuple[str, ...] = () if forwarding is None else tuple(
            environ_key(n) for n in HONOURABLE if n in forwarding.honoured)
        self.hosts = hosts
        self.secret_key: str | None = None
        self.secret_value = b""
        if require is not None:
            name, _, value = require.partition("=")
            self.secret_key = environ_key(name)
            self.secret_value = value.encode("latin-1")

    def __bool__(self) -> bool:
        return self.forwarding is not None or self.hosts is not None or self.secret_key is not None

    def check(self, env: dict[str, Any], headers: Sequence[tuple[bytes, bytes]], app: App) -> tuple[App, str]:
        """The application to run for this request and the error_type: `app` and "" when
        the request passes, else a refusal. Applies forwarded headers to env in place."""
        key = self.secret_key
        if key is not None:
            given = env.pop(key, None)
            # compare_digest: the time taken says nothing about how much of a guess was right
            if given is None or not hmac.compare_digest(given.encode("latin-1"), self.secret_value):
                log.debug("refused %s %s from %s: no valid --require-header", env["REQUEST_METHOD"],
                          env["RAW_URI"], env.get("REMOTE_ADDR") or "a unix socket")
                return REFUSE_SECRET, REQUIRED_HEADER
        forwarding = self.forwarding
        if forwarding is not None:
            for k in self._fw_keys:
                if k in env:
                    problems = forwarding.apply(env, headers)
                    if problems:
                        log.debug("forwarded headers of %s %s from %s, ignored: %s", env["REQUEST_METHOD"],
                                  env["RAW_URI"], env.get("greenfork.peer_addr", env.get("REMOTE_ADDR")),
                                  "; ".join(problems))
                    break
        hosts = self.hosts
        if hosts is not None and not hosts.allows(env.get("HTTP_HOST")):
            log.debug("refused %s %s from %s: Host %r is not in --allowed-hosts", env["REQUEST_METHOD"],
                      env["RAW_URI"], env.get("REMOTE_ADDR") or "a unix socket", env.get("HTTP_HOST"))
            return REFUSE_HOST, HOST_NOT_ALLOWED
        return app, ""


def build(settings: Any) -> Gate | None:
    """The worker's Gate, or None when nothing is configured."""
    forwarding: Forwarding | None = Forwarding(TrustList(settings.forwarded_allow_ips),
                                               settings.forwarded_headers)
    if not forwarding:
        forwarding = None
    hosts: AllowedHosts | None = AllowedHosts(settings.allowed_hosts)
    if hosts is not None and hosts.allow_all:
        hosts = None
    gate = Gate(forwarding, hosts, settings.require_header)
    return gate if gate else None

"""The PROXY protocol step of a connection: the first thing read, before TLS and HTTP.

A listener whose mode is not ``off`` (``--proxy-protocol``, or the listener's own
``?proxy-protocol=MODE``) requires every connection to start with a PROXY header
(workers/proxyproto.py parses it, sans-IO). Here the connection's transport feeds it:

- a peer outside ``--proxy-allow-from`` is closed before anything is read
  (error_type ``proxy_protocol_untrusted``): it could name any client it likes;
- the header must be complete within ``--proxy-protocol-timeout`` (the sweeper's PROXY
  phase; error_type ``proxy_protocol_timeout``), and be well formed and of an accepted
  version (error_type ``proxy_protocol_invalid``); a failure is closed without a byte
  written, since the peer is a proxy and an HTTP answer would reach its client as garbage;
- the bytes read after the header go back to the transport (Transport.unread), so the
  TLS handshake or the HTTP/1.1 parser reads them first, as if nothing had come before;
- the client address it names becomes the connection's `remote` (REMOTE_ADDR and
  REMOTE_PORT of every request, and the peer the forwarded-header trust is checked
  against); its other environ keys (proxyproto.ProxyHeader.environ) become the
  connection's `extra`. A LOCAL header (a health check of the proxy's own) and an
  UNKNOWN/UNSPEC one keep the real endpoints.

Nothing here runs for a listener without PROXY: the connection tests one attribute.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Protocol

from greenfork.master.addresses import BindSpec
from greenfork.master.trust import TrustList
from greenfork.workers.proxyproto import ProxyParser, ProxyProtocolError
from greenfork.workers.timers import FRESH, PROXY, Expired
from greenfork.workers.transport import Transport

log = logging.getLogger("greenfork.worker")

UNTRUSTED: Final = "proxy_protocol_untrusted"


class ProxyFront:
    """A listener's PROXY requirement: the accepted versions and who may send them."""

    __slots__ = ("mode", "trust")

    def __init__(self, mode: str, trust: TrustList) -> None:
        self.mode = mode  # "v1", "v2" or "any"
        self.trust = trust

    def __repr__(self) -> str:
        return f"ProxyFront({self.mode!r}, {self.trust!r})"


def fronts(settings: Any) -> Any:
    """A function from a listener's BindSpec (None: a socket systemd passed) to its
    ProxyFront, or None when the listener takes no PROXY header. One trust list (and its
    cache) is shared by the worker's listeners."""
    trust = TrustList(settings.proxy_allow_from)
    default = settings.proxy_protocol

    def front(spec: BindSpec | None) -> ProxyFront | None:
        mode = spec.proxy_protocol if spec is not None and spec.proxy_protocol is not None else default
        return None if mode == "off" else ProxyFront(mode, trust)

    return front


class _Conn(Protocol):
    """What the step needs of a connection (conn.Connection; an HTTP/2 one alike)."""

    t: Transport
    remote: tuple[str, str]
    extra: dict[str, Any]
    error_type: str

    def peer(self) -> str: ...


def accept(conn: _Conn, front: ProxyFront) -> bool:
    """Read the connection's PROXY header; False when the connection must be closed
    (conn.error_type then says why)."""
    t = conn.t
    peer = conn.remote
    if not front.trust.trusts(peer[0]):
        conn.error_type = UNTRUSTED
        log.debug("closed a connection from %s: a PROXY listener, and the peer is not in "
                  "--proxy-allow-from (%s)", conn.peer(), front.trust)
        return False
    parser = ProxyParser(front.mode)
    t.enter(PROXY)
    try:
        header = None
        while header is None:
            header = parser.feed(t.recv_raw())  # below TLS: the header precedes the handshake
    except Expired as e:
        conn.error_type = e.reason
        log.debug("closed a connection from %s: no complete PROXY header in time", conn.peer())
        return False
    except ProxyProtocolError as e:
        conn.error_type = e.error_type  # also a peer that sent nothing (a TCP check, a scan)
        log.debug("closed a connection from %s: %s", conn.peer(), e.detail)
        return False
    # the request-head timeout starts now, as if the connection had just been accepted
    t.enter(FRESH)
    if parser.rest:
        t.unread(parser.rest)
    env = header.environ(peer)
    addr = env.pop("REMOTE_ADDR", None)
    port = env.pop("REMOTE_PORT", None)
    if addr is not None and port is not None:
        conn.remote = (addr, port)
    conn.extra = env
    return True


def with_tls(proxy_env: dict[str, Any], tls_env: dict[str, Any]) -> dict[str, Any]:
    """A PROXY header followed by our own TLS handshake: the handshake describes the
    connection we serve, so its keys win and the header's TLS keys (the client's hop to the
    proxy, if it used TLS there too) are left out rather than mixed with ours."""
    env = {k: v for k, v in proxy_env.items() if not k.startswith("SSL_")}
    env.update(tls_env)
    return env

"""Delegation from an https:// listener (issue 17): the front terminates TLS and relays.

A file descriptor cannot carry TLS state (the keys and sequence numbers live in this
process's OpenSSL), so a TLS connection cannot be handed over as it is. The front keeps the
client and hands the target one end of a socketpair instead, with the plaintext it read and
the connection's TLS environ (HTTPS, SSL_*, wsgi.url_scheme https); then it copies bytes
both ways until either side closes. The target serves the socketpair like any handed-over
connection; the front spends the TLS work and a copy per byte on it, as a proxy would.

Two greenlets: this connection's own copies the target's bytes to the client (its sends
are timed by the sweeper's SEND phase, as every response is), a second one the client's to
the target. The target's timeouts end idle connections: its close ends the relay.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

import gevent
from gevent import GreenletExit

from greenfork.master.prefixes import Delegate
from greenfork.workers.handoff import Handoff, HandoffError, encode, portable
from greenfork.workers.transport import ClientGone, Transport

if TYPE_CHECKING:
    from greenfork.workers.conn import Connection
    from greenfork.workers.delegation import Delegator

log = logging.getLogger("greenfork.worker")

_READ, _WRITE = 1, 2
CHUNK = 65536


def relay_through(dl: Delegator, conn: Connection, d: Delegate, data: bytes, started: float) -> None:
    t = conn.t
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    mine.setblocking(False)
    theirs.setblocking(False)
    extra = portable(conn.extra)  # (a copy)
    extra["wsgi.url_scheme"] = "https"
    try:
        result, why, ours = dl.send(d, encode(Handoff(data, conn.remote, extra, str(d.prefix))),
                                    theirs.fileno(), t)
    except HandoffError as e:  # (a NUL in a field the TLS environ holds: never, but not a crash)
        result, why, ours = "failed", str(e), True
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()  # the target holds its own copy once it took it
    dl.settle(conn, d, result, why, ours, started)
    if result != "success" and ours:
        mine.close()
        return
    relay(t, mine, dl.server.hub)


def relay(t: Transport, mine: socket.socket, hub: Any) -> None:
    """Copy until the target closes (or the client goes): this greenlet target -> client."""
    up = gevent.spawn(_client_to_target, t, mine, hub)
    w = hub.loop.io(mine.fileno(), _READ)
    try:
        while True:
            try:
                data = mine.recv(CHUNK)
            except BlockingIOError:
                hub.wait(w)
                continue
            except OSError:
                break
            if not data:
                break
            t.out.append(data)
            t.flush()
    except ClientGone:
        pass
    finally:
        up.kill(block=False)
        w.close()
        mine.close()


def _client_to_target(t: Transport, mine: socket.socket, hub: Any) -> None:
    w = hub.loop.io(mine.fileno(), _WRITE)
    try:
        while True:
            data = t.recv()
            if not data:
                break
            view = memoryview(data)
            while view:
                try:
                    view = view[mine.send(view):]
                except BlockingIOError:
                    hub.wait(w)
        mine.shutdown(socket.SHUT_WR)  # the client is done sending: the target sees its EOF
    except GreenletExit:
        raise
    except BaseException as e:  # the client reset, the target left: the other side ends the relay
        log.debug("relay from %s ended: %s", t.describe(), e)
        try:
            mine.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    finally:
        w.close()

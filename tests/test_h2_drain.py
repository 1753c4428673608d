"""Graceful drain of HTTP/2 connections (RFC 9113 6.8): on TERM, HUP and recycling a worker
sends GOAWAY with the largest stream id and a PING; after the PING's ACK (or a second), GOAWAY
with the last stream it takes. Streams up to it complete, later ones are refused, and the
connection closes when the last one ends; /readyz says not ready meanwhile."""

from __future__ import annotations

import signal
import time

from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, PingFrame, RstStreamFrame

from tests.h2raw import Raw
from tests.metricsutil import get
from tests.procs import Launcher, alive, cmdline, http_get, wait_for

MAX_ID = 2**31 - 1


def goaways(c: Raw) -> list[tuple[int, int]]:
    return [(f.last_stream_id, f.error_code) for f in c.frames if isinstance(f, GoAwayFrame)]


def test_term_drains_in_two_steps_and_in_flight_streams_finish(launcher: Launcher) -> None:
    g = launcher.start(["h2app:app", "-b", "127.0.0.1:0"])
    with Raw.connect(g.port()) as c:
        for sid in (1, 3, 5):
            c.request(sid, "/sleep?s=1.5")
        c.ping()  # the three streams are the server's now
        g.signal(signal.SIGTERM)
        first = c.goaway()
        assert (first.last_stream_id, first.error_code) == (MAX_ID, ErrorCodes.NO_ERROR)
        c.request(7, "/")  # after the first GOAWAY, before the second: still taken
        second = c.until(lambda f: isinstance(f, GoAwayFrame) and f.last_stream_id != MAX_ID)
        assert (second.last_stream_id, second.error_code) == (7, ErrorCodes.NO_ERROR)
        assert any(isinstance(f, PingFrame) and "ACK" not in f.flags for f in c.frames)  # the round trip
        c.request(9, "/")  # past the last stream id
        assert c.rst(9).error_code == ErrorCodes.REFUSED_STREAM
        for sid in (1, 3, 5):
            headers, body = c.response(sid)
            assert headers[":status"] == "200" and body == b"slept\n"
        c.response(7)
        c.eof()  # the server closes once its streams are done
    assert g.wait(20) == 0


def test_a_peer_that_does_not_answer_the_ping_gets_the_second_goaway_anyway(launcher: Launcher) -> None:
    g = launcher.start(["h2app:app", "-b", "127.0.0.1:0"])
    with Raw.connect(g.port()) as c:
        c.answer_pings = False
        c.request(1, "/sleep?s=2")
        c.ping()
        started = time.monotonic()
        g.signal(signal.SIGTERM)
        c.until(lambda f: isinstance(f, GoAwayFrame) and f.last_stream_id == 1, timeout=5)
        assert time.monotonic() - started < 3
        _, body = c.response(1)
        assert body == b"slept\n"
        c.eof()
    assert g.wait(20) == 0


def test_an_idle_connection_is_closed_quickly(launcher: Launcher) -> None:
    g = launcher.start(["h2app:app", "-b", "127.0.0.1:0"])
    with Raw.connect(g.port()) as c:
        c.request(1, "/")
        c.response(1)
        started = time.monotonic()
        g.signal(signal.SIGTERM)
        c.eof(timeout=10)
        assert time.monotonic() - started < 3
        assert goaways(c) == [(MAX_ID, ErrorCodes.NO_ERROR), (1, ErrorCodes.NO_ERROR)]
    assert g.wait(20) == 0


def test_hup_hands_new_streams_to_the_new_generation(launcher: Launcher) -> None:
    g = launcher.start(["h2app:app", "-b", "127.0.0.1:0"])
    old = g.workers()[0]
    with Raw.connect(g.port()) as c:
        c.request(1, "/pid")
        _, body = c.response(1)
        assert int(body) == old
        c.request(3, "/sleep?s=2")
        c.ping()
        g.signal(signal.SIGHUP)
        wait_for(lambda: cmdline(old).endswith("(draining)"), 15, "the old worker to drain")
        c.goaway()
        _, body = c.response(3)  # in flight on the old worker: completes
        assert body == b"slept\n"
        c.eof()
    assert int(http_get(g.url(), "/pid")[2]) != old  # a new connection: the new generation
    with Raw.connect(g.port()) as c2:
        c2.request(1, "/pid")
        _, body = c2.response(1)
        assert int(body) != old
    wait_for(lambda: not alive(old), 15, "the old worker to exit")


def test_recycling_drains_http2_like_term(launcher: Launcher) -> None:
    g = launcher.start(["h2app:app", "-b", "127.0.0.1:0", "--max-requests", "3"])
    first = g.workers()[0]
    with Raw.connect(g.port()) as c:
        for sid in (1, 3, 5):  # the third asks the master for a replacement
            c.request(sid, "/pid" if sid < 5 else "/sleep?s=1")
        c.response(1)
        c.response(3)
        c.goaway(timeout=15)  # the master QUITs the old worker once the new one is ready
        _, body = c.response(5)
        assert body == b"slept\n"
        c.eof()
    wait_for(lambda: first not in g.workers(), 15, "the recycled worker to exit")


def test_readyz_says_not_ready_while_http2_is_still_served(launcher: Launcher) -> None:
    g = launcher.start(["h2app:app", "-b", "127.0.0.1:0", "--metrics-bind", "127.0.0.1:0",
                        "--shutdown-delay", "2"])
    metrics = g.info["metrics"]
    assert get(metrics, "/readyz")[0] == 200
    with Raw.connect(g.port()) as c:
        c.request(1, "/")
        c.response(1)
        g.signal(signal.SIGTERM)
        wait_for(lambda: get(metrics, "/readyz")[0] == 503, 5, "/readyz to say not ready")
        c.request(3, "/")  # --shutdown-delay: still served, on the same connection
        _, body = c.response(3)
        assert body == b"hello\n"
        c.eof(timeout=10)
        assert goaways(c)[-1][1] == ErrorCodes.NO_ERROR
    assert g.wait(20) == 0


def test_streams_longer_than_the_graceful_timeout_are_cut(launcher: Launcher) -> None:
    g = launcher.start(["h2app:app", "-b", "127.0.0.1:0", "--graceful-timeout", "1"])
    with Raw.connect(g.port()) as c:
        c.request(1, "/sleep?s=30")
        c.ping()
        started = time.monotonic()
        g.signal(signal.SIGTERM)
        c.goaway()
        frames = c.eof(timeout=15)
        assert not any(isinstance(f, RstStreamFrame) and f.error_code == ErrorCodes.NO_ERROR for f in frames)
        assert time.monotonic() - started < 6
    g.wait(20)

"""The server side of one HTTP/1.1 connection, sans-IO: every connection-level rule.

Bytes from the client go in (receive_data) and come out as events (next_event:
Request, body bytes, END, NEED_DATA, CLOSED, ProtocolError, as http1.py's
parser gives them); a response goes in as calls (head, data, end, error) and
comes out as bytes to send. Nothing here touches a socket, a clock or gevent:
the Date value is handed in, and the caller (workers/conn.py) does the I/O.

The rules kept here, and nowhere else:
- keep-alive: the request's wish (version, Connection), the server's (draining,
  --keep-alive 0), the response's (its Connection: close, framing that only a
  close can end, a body shorter or longer than its Content-Length), a client that
  still waits for "100 Continue", and an upgrade;
- "100 Continue": owed to a client that expects it, sent before the first read of
  the body, and never once the response has started;
- whether the response has started, and which calls are valid when;
- after a response: reuse the connection, drain an unread body first, or close;
  and whether the close must linger (the client may still be sending).

Our side of the connection moves through this table; a pair that is not in it
is a bug in the caller and raises LocalProtocolError (h11's rule):

    state           event         next
    IDLE            REQUEST       SEND_RESPONSE   a request head was handed out
    IDLE            ERROR         MUST_CLOSE      malformed input answered with its error
    SEND_RESPONSE   HEAD          SEND_BODY
    SEND_RESPONSE   ERROR         MUST_CLOSE      the request failed: an error answer instead
    SEND_RESPONSE   ABORT         CLOSED          nothing can be sent (the client left)
    SEND_BODY       END_KEEP      DONE
    SEND_BODY       END_CLOSE     MUST_CLOSE      the framing or a wish ends the connection
    SEND_BODY       ERROR         MUST_CLOSE      an unsent response replaced by an error answer
    SEND_BODY       ABORT         CLOSED          failed mid-body: the close tells the client
    DONE            NEXT          IDLE            request body complete: the next request
    DONE            ERROR         MUST_CLOSE      a complete response not yet sent, replaced (the
                                                  body the app did not read is over the limit)
    DONE            ABORT         CLOSED          the unread body could not be drained
    MUST_CLOSE      ABORT         CLOSED
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NoReturn

from greenfork.workers.http1 import CLOSED, END, NEED_DATA, Limits, ProtocolError, Request, RequestParser
from greenfork.workers.response import CONTINUE, ResponseFramer, error_response, response_head

IDLE, SEND_RESPONSE, SEND_BODY, DONE, MUST_CLOSE, CLOSED_STATE = range(6)
STATE_NAMES: Final = ("IDLE", "SEND_RESPONSE", "SEND_BODY", "DONE", "MUST_CLOSE", "CLOSED")
REQUEST, HEAD, END_KEEP, END_CLOSE, ERROR, ABORT, NEXT = range(7)
EVENT_NAMES: Final = ("REQUEST", "HEAD", "END_KEEP", "END_CLOSE", "ERROR", "ABORT", "NEXT")

TRANSITIONS: Final = {
    (IDLE, REQUEST): SEND_RESPONSE,
    (IDLE, ERROR): MUST_CLOSE,
    (SEND_RESPONSE, HEAD): SEND_BODY,
    (SEND_RESPONSE, ERROR): MUST_CLOSE,
    (SEND_RESPONSE, ABORT): CLOSED_STATE,
    (SEND_BODY, END_KEEP): DONE,
    (SEND_BODY, END_CLOSE): MUST_CLOSE,
    (SEND_BODY, ERROR): MUST_CLOSE,
    (SEND_BODY, ABORT): CLOSED_STATE,
    (DONE, NEXT): IDLE,  # (after_response() makes this move inline: it is the hot path)
    (DONE, ERROR): MUST_CLOSE,
    (DONE, ABORT): CLOSED_STATE,
    (MUST_CLOSE, ABORT): CLOSED_STATE,
}
# The same table as rows for the hot path: _TABLE[state][event], -1 where the pair is missing.
_TABLE: Final = [[TRANSITIONS.get((s, e), -1) for e in range(len(EVENT_NAMES))]
                  for s in range(len(STATE_NAMES))]


class LocalProtocolError(RuntimeError):
    """The caller did something the table does not allow (a bug, never the client's fault)."""


# What to do once a response is complete (after_response()).
KEEP: Final = "keep"  # serve the next request on this connection
DRAIN: Final = "drain"  # read and discard the rest of the request body first, then ask again
CLOSE: Final = "close"
LINGER: Final = "linger"  # close, but read and discard what the client still sends first


class H1Server(RequestParser):
    """One HTTP/1.1 connection, server side: the request parser (bytes in, events out)
    with the response side and the connection's rules added."""

    __slots__ = ("_continue", "_frame", "_framer", "errored", "send_data", "state")

    def __init__(self, limits: Limits) -> None:
        RequestParser.__init__(self, limits)
        self.state = IDLE
        self._framer = ResponseFramer(False, 0, True, False)  # reset by each response's head
        self._frame = self._framer.frame
        self._continue = False  # "100 Continue" is owed (asked for, not yet sent or made moot)
        self.errored = False  # malformed input was answered: the byte stream is no longer trusted
        # frames a piece of the response body: the framer's, between a head and its end
        self.send_data: Callable[[bytes], bytes] = _no_body_yet

    def _bad(self, event: int) -> NoReturn:
        raise LocalProtocolError(f"{EVENT_NAMES[event]} while {STATE_NAMES[self.state]}")

    def _move(self, event: int) -> None:
        nxt = _TABLE[self.state][event]
        if nxt < 0:
            self._bad(event)
        self.state = nxt

    # ------------------------------------------------------------ input side
    def _handed_out(self, req: Request) -> None:
        nxt = _TABLE[self.state][REQUEST]
        if nxt < 0:
            self._bad(REQUEST)
        self.state = nxt
        self._framer.body_bytes = 0
        self._continue = req.expect_continue

    @property
    def their_done(self) -> bool:
        """The current request's body was delivered to its end."""
        return self._their_done

    def start_body(self, limit: int | None) -> bytes:
        """Before the first read of the request body: apply this request's body limit
        (raises the 413 ProtocolError when Content-Length is over it) and return the
        "100 Continue" to send if the client waits for it."""
        err = self.set_body_limit(limit)
        if err is not None:
            self._continue = False  # a final answer instead (RFC 9110 10.1.1)
            raise err
        if self._continue and self.state == SEND_RESPONSE:
            self._continue = False
            return CONTINUE
        return b""

    # ----------------------------------------------------------- output side
    def head(self, status: str, headers: list[tuple[str, str]], *, date: bytes, server: bool,
             keep_alive: bool) -> bytes:
        """The response head. keep_alive is the server's wish (False while draining or
        with --keep-alive 0); the request, the headers and the framing can only turn it off.
        send_data() frames the body from now on."""
        nxt = _TABLE[self.state][HEAD]
        if nxt < 0:
            self._bad(HEAD)
        self.state = nxt
        req = self._delivering
        assert req is not None
        # A client still waiting for "100 Continue" has not sent the body the app did not
        # read: rather than wait for it, say the connection closes (RFC 9110 10.1.1).
        if self._continue:
            self._continue = False
            keep_alive = False
        head, _ = response_head(req, status, headers, keep_alive=keep_alive, date=date, server=server,
                                framer=self._framer)
        self.send_data = self._frame
        return head

    def respond(self, status: str, headers: list[tuple[str, str]], body: list[bytes] | tuple[bytes, ...],
                out: list[bytes], *, date: bytes, server: bool, keep_alive: bool) -> None:
        """A whole response at once, appended to out: head(), each piece (bytes) through the
        framer and end(), in one call (an app that returns a list, the common case)."""
        out.append(self.head(status, headers, date=date, server=server, keep_alive=keep_alive))
        frame = self._frame
        for data in body:
            if data:
                out.append(frame(data))
        tail = self.end()
        if tail:
            out.append(tail)

    def whole(self, code: int, length: int, keep_alive: bool) -> bool:
        """A complete response with a Content-Length that the caller serializes itself (the
        response cache's fast path, workers/cachefast.py): the moves head() and end() would
        make, the same persistence rules; `length` body bytes (none for HEAD). Returns whether
        the connection stays open, for the head's Connection field. Not while "100 Continue"
        is owed: head() would turn keep-alive off for it, so the caller takes head() instead."""
        if self._continue:
            raise LocalProtocolError("whole() while 100 Continue is owed")
        self._move(HEAD)
        req = self._delivering
        assert req is not None
        keep_alive = keep_alive and req.keep_alive
        head_only = req.method == "HEAD"
        self._framer.reset(False, 0, head_only, keep_alive, code)
        if not head_only:
            self._framer.body_bytes = length
        self._move(END_KEEP if keep_alive else END_CLOSE)
        return keep_alive

    def end(self) -> bytes:
        framer = self._framer
        out = framer.end()
        nxt = _TABLE[self.state][END_KEEP if framer.keep_alive else END_CLOSE]
        if nxt < 0:
            self._bad(END_KEEP)
        self.state = nxt
        self.send_data = _no_body_yet
        return out

    @property
    def status(self) -> int:
        """The current response's status code."""
        return self._framer.status

    @property
    def body_bytes(self) -> int:
        """Body bytes of the current response so far (the access log's %(B)s)."""
        return self._framer.body_bytes

    def file_span(self) -> int | None:
        """How many body bytes a file may send by itself (os.sendfile): the Content-Length
        still owed, or None when the framing needs our hands (chunked, no body, no length)."""
        framer = self._framer
        if self.state != SEND_BODY or framer.chunked or framer.no_body:
            return None
        return framer.remaining

    def file_sent(self, count: int) -> None:
        """`count` body bytes went out by os.sendfile; fewer than owed ends the connection."""
        framer = self._framer
        assert framer.remaining is not None
        framer.body_bytes += count
        framer.remaining -= count
        if framer.remaining:
            framer.keep_alive = False

    def error(self, status: int, *, date: bytes, server: bool) -> bytes:
        """An error answer instead of a request's unsent response (status 0: nothing to
        send); the connection closes after it."""
        self._move(ERROR)
        self._continue = False
        self.send_data = _no_body_yet
        return error_response(status, date, server) if status else b""

    def reject(self, err: ProtocolError, *, date: bytes, server: bool) -> bytes:
        """Malformed input between or inside requests: its error answer, and close."""
        self.errored = True
        if self.state == IDLE or self.state == SEND_RESPONSE:
            self._move(ERROR)
        elif self.state != MUST_CLOSE:
            self._move(ABORT)
            return b""
        return error_response(err.status, date, server) if err.status else b""

    def abort(self) -> None:
        """The response cannot be completed (client gone, failure mid-body, undrainable body)."""
        if self.state != CLOSED_STATE:
            self._move(ABORT)
        self.send_data = _no_body_yet

    # ----------------------------------------------------------------- cycle
    def after_response(self) -> str:
        """What the connection does now that the response is complete (or failed)."""
        if not self._their_done:
            events = self._events
            if events and events[0] is END:  # a request without a body: its END came with the head
                events.popleft()
                self._their_done = True
        if self.state == DONE:
            if not self._their_done:
                return DRAIN
            self.state = IDLE  # (DONE, NEXT)
            return KEEP
        return LINGER if self.must_linger() else CLOSE

    def must_linger(self) -> bool:
        """Closing now could reset the connection under our last response: the client may
        still be sending (an unread body, input we refused, requests pipelined behind)."""
        return (self.errored or not self._their_done or self.pending or self.failed
                or not self.between_requests)


def _no_body_yet(data: bytes) -> bytes:
    raise LocalProtocolError("response body before its head")


__all__ = ["CLOSE", "CLOSED", "DRAIN", "END", "KEEP", "LINGER", "MUST_CLOSE", "NEED_DATA", "H1Server",
           "LocalProtocolError", "ProtocolError", "Request"]

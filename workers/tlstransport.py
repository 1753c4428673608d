"""TLS on the OS socket: ssl.SSLObject over two MemoryBIOs, sans-IO inside the transport.

OpenSSL never touches the socket: ciphertext is read and written by the plain
transport's own non-blocking reads and gathered writes, and the waits stay the
hub's (and the sweeper's). So a TLS connection costs no gevent socket, its
handshake is one more phase the sweeper times (HANDSHAKE, --tls-handshake-timeout),
and bytes read before TLS starts (a PROXY header's leftovers) can be handed in.

The SSLContext comes from the master (master/tls.py), built before the fork: every
worker shares its session-ticket keys, so a client resumes its session on any worker.
"""

from __future__ import annotations

import _socket
import logging
import ssl
from typing import Any, Final

from greenfork.workers.timers import HANDSHAKE, NONE, Expired
from greenfork.workers.transport import SEND_EXPIRED, ClientGone, Transport

log = logging.getLogger("greenfork.worker")

_RECORD: Final = 16384 * 4  # plaintext asked of OpenSSL per read


class HandshakeFailed(Exception):
    """The TLS handshake did not complete; reason is the metrics' error_type."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class TlsTransport(Transport):
    """A Transport whose recv() and flush() decrypt and encrypt."""

    __slots__ = ("_in", "_obj", "_out", "_sending", "version")

    def __init__(self, sock: _socket.socket, hub: Any, context: ssl.SSLContext) -> None:
        Transport.__init__(self, sock, hub)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=True)
        self.version = ""  # the negotiated protocol version ("TLSv1.3"), after the handshake
        self._sending = False  # a greenlet is blocked sending ciphertext (see _send_raw)

    @property
    def sslobj(self) -> ssl.SSLObject:
        return self._obj

    @property
    def alpn(self) -> str | None:
        return self._obj.selected_alpn_protocol()

    @property
    def can_sendfile(self) -> bool:
        return False  # the kernel would send the file's bytes unencrypted

    # ------------------------------------------------------------- handshake
    def handshake(self) -> None:
        """Complete the server side of the handshake, in the HANDSHAKE phase. Raises
        HandshakeFailed (the reason is the error_type: failed, timeout, not TLS)."""
        obj = self._obj
        self.enter(HANDSHAKE)
        first = True
        try:
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pass
                self._send_ciphertext()
                data = Transport.recv(self)
                if not data:
                    raise HandshakeFailed("tls_handshake_failed", "the client closed during the handshake")
                if first and data[0] != 0x16:  # not a TLS handshake record
                    self._in.write(data)
                    raise HandshakeFailed("tls_not_supported", "not TLS: " + _printable(data[:16]))
                first = False
                self._in.write(data)
        except Expired:
            raise HandshakeFailed("tls_handshake_timeout", "handshake not complete in time") from None
        except ssl.SSLError as e:
            raise HandshakeFailed("tls_handshake_failed", e.reason or str(e)) from None
        except (ClientGone, OSError) as e:
            raise HandshakeFailed("tls_handshake_failed", str(e) or type(e).__name__) from None
        finally:
            self.enter(NONE)
        # TLS 1.3 sends session tickets after the handshake: they go out now, not with
        # the first response (a client that closes first would never resume).
        self._send_ciphertext()
        self.version = obj.version() or ""

    def _send_ciphertext(self) -> None:
        if self._sending:
            return  # queued behind the blocked send, which sends it when its own bytes are out
        data = self._out.read()
        if data:
            self.tx += len(data)
            self._send_raw(data)

    def _send_raw(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ClientGone() from e
        if sent < len(data):
            # An upgraded connection (a WebSocket) reads in one greenlet while another sends,
            # and reading can make ciphertext (a TLS 1.3 KeyUpdate answer): whatever either
            # adds while this one waits for room goes out after these bytes, never into them.
            self._sending = True
            try:
                self._send_rest([data], sent)
                while more := self._out.read():
                    self.tx += len(more)
                    self._send_rest([more], 0)
            finally:
                self._sending = False

    # ---------------------------------------------------------------- reading
    def recv(self) -> bytes:
        """The next plaintext from the client (b"" at its EOF or close_notify)."""
        obj = self._obj
        while True:
            # Nothing buffered (the usual case between requests): read the socket first
            # rather than have OpenSSL fail, so no exception is raised per request.
            if obj.pending() or self._in.pending:
                data = self._read()
                if data is not None:
                    return data
            self._send_ciphertext()  # a key update or a ticket may be waiting to go out
            raw = Transport.recv(self)
            if not raw:
                self._in.write_eof()
                try:
                    return obj.read(_RECORD)
                except ssl.SSLError:
                    return b""  # a close without close_notify: an EOF all the same
            self._in.write(raw)
            data = self._read()
            if data is not None:
                return data

    def _read(self) -> bytes | None:
        """Plaintext from what the BIO holds; None when a record is not complete yet."""
        try:
            return self._obj.read(_RECORD)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:
            return b""  # close_notify
        except ssl.SSLError as e:
            raise ClientGone("io_error") from e

    def recv_nowait(self) -> bytes | None:
        """The plaintext already here (b"" at EOF or close_notify), or None if it would wait
        (recv() without the wait, for HTTP/2's driver)."""
        obj = self._obj
        while True:
            if obj.pending() or self._in.pending:
                data = self._read()
                if data is not None:
                    return data
            self._send_ciphertext()
            raw = Transport.recv_nowait(self)
            if raw is None:
                return None
            if not raw:
                self._in.write_eof()
                try:
                    return obj.read(_RECORD)
                except ssl.SSLError:
                    return b""
            self._in.write(raw)
            data = self._read()
            if data is not None:
                return data

    def wait_readable(self) -> None:
        if self._obj.pending() or self._in.pending:
            return  # decrypted bytes (or whole records) are already here
        Transport.wait_readable(self)

    def pending_input(self) -> bool:
        return bool(self._obj.pending() or self._in.pending) or Transport.pending_input(self)

    # ---------------------------------------------------------------- writing
    def flush(self, flags: int = 0) -> None:
        """(flags: ignored; the records go out at once)"""
        out = self.out
        if not out:
            return
        if self.expired == SEND_EXPIRED:
            raise ClientGone(SEND_EXPIRED)
        self.flushes += 1
        obj = self._obj
        try:
            if len(out) == 1:
                obj.write(out[0])
            elif sum(map(len, out)) <= _RECORD:
                obj.write(b"".join(out))  # one record for a small response, not one per part
            else:
                for part in out:
                    obj.write(part)
        except ssl.SSLError as e:
            raise ClientGone() from e
        out.clear()
        self._send_ciphertext()

    def flush_later(self) -> None:
        self.flush()  # (at once: the hub's send of ciphertext is not done for TLS)

    # ---------------------------------------------------------------- closing
    def finish(self) -> None:
        self.flush()  # (close() adds the close_notify)

    def end_writing(self) -> None:
        self._close_notify()
        self._send_ciphertext()

    def _close_notify(self) -> None:
        try:
            self._obj.unwrap()  # queues our close_notify; the peer's is not waited for
        except ssl.SSLError:
            pass

    def close(self) -> None:
        # close_notify, so that the client knows the response ended here (OpenSSL 3 clients
        # report a bare close as "unexpected eof"). Best effort: one non-blocking send.
        self._close_notify()
        try:
            data = self._out.read()
            if data:
                self.sock.send(data)
        except OSError:
            pass
        Transport.close(self)


def _printable(data: bytes) -> str:
    return repr(data)[2:-1]

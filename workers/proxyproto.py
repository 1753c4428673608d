"""The PROXY protocol, versions 1 and 2 (HAProxy's doc/proxy-protocol.txt), sans-IO.

A proxy in front of greenfork (HAProxy, nginx's stream module, AWS/GCP/Azure load balancers)
sends one header at the very start of each connection saying who the client is. Feed the
first bytes of a connection to a `ProxyParser`; `feed()` returns None while it needs more,
then a `ProxyHeader` (the bytes after the header are in `parser.rest`, for the next stage), or
raises `ProxyProtocolError` (metrics error_type ``proxy_protocol_invalid``), after which the
connection must be closed. Nothing here reads a socket or a clock: the caller bounds the wait.

Rules kept (the spec's MUSTs, and what HAProxy's own receiver enforces):
- A header is required in every mode (``v1``, ``v2``, ``any``); it is never guessed: bytes
  that cannot start a header of an accepted version fail at once, so a misconfigured client
  is told early (the spec: "abort the connection as soon as possible").
- v1: one line of at most 107 bytes ending in CRLF (a bare CR or LF fails); ``TCP4`` and
  ``TCP6`` with canonical addresses (no leading zeros) and ports 0-65535 without leading
  zeros; ``UNKNOWN`` ignores the rest of its line and keeps the real endpoints.
- v2: the 12-byte signature, version 2, command LOCAL (0) or PROXY (1), family UNSPEC, INET,
  INET6 or UNIX with transport UNSPEC, STREAM or DGRAM; the length is at most
  ``max_v2_length`` (2048 by default; the spec's headers fit in 536 bytes, TLVs add a little).
  LOCAL (a health check from the proxy itself) and UNSPEC keep the real endpoints.
- TLVs must tile the rest of the header exactly; a known TLV may appear once. ALPN,
  AUTHORITY (UTF-8, at most 255 bytes), UNIQUE_ID (at most 128 bytes), CRC32C (4 bytes,
  verified over the whole header with the field zeroed: a mismatch fails), NOOP (skipped),
  SSL (client flags, verify result, and sub-TLVs version, CN, cipher, signature and key
  algorithm), NETNS (ASCII). Other types (the custom ranges cloud load balancers use, such as
  AWS's 0xEA) are kept raw in `ProxyHeader.tlvs`.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any, Final

import google_crc32c

ERROR_TYPE: Final = "proxy_protocol_invalid"
MODES: Final = ("v1", "v2", "any")
V1_MAX: Final = 107  # "PROXY UNKNOWN ffff:...:ffff ffff:...:ffff 65535 65535\r\n"
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX_LENGTH: Final = 2048
_V1_PREFIX = b"PROXY "

# TLV types (spec 2.2) and SSL sub-types (2.2.6)
PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
PP2_SUBTYPE_SSL_VERSION: Final = 0x21
PP2_SUBTYPE_SSL_CN: Final = 0x22
PP2_SUBTYPE_SSL_CIPHER: Final = 0x23
PP2_SUBTYPE_SSL_SIG_ALG: Final = 0x24
PP2_SUBTYPE_SSL_KEY_ALG: Final = 0x25
PP2_TYPE_NETNS: Final = 0x30
PP2_CLIENT_SSL: Final = 0x01
PP2_CLIENT_CERT_CONN: Final = 0x02
PP2_CLIENT_CERT_SESS: Final = 0x04

_FAMILIES = {0: ("unspec", 0), 1: ("inet", 12), 2: ("inet6", 36), 3: ("unix", 216)}
_TRANSPORTS = {0: "unspec", 1: "stream", 2: "dgram"}
_KNOWN = frozenset({PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_UNIQUE_ID, PP2_TYPE_SSL,
                    PP2_TYPE_NETNS})
_V2_FIXED = struct.Struct("!12sBBH")
_INET = struct.Struct("!4s4sHH")
_INET6 = struct.Struct("!16s16sHH")

Address = tuple[str, int]


class ProxyProtocolError(ValueError):
    """A missing, malformed or over-long header: close the connection and count error_type.

    received is how many bytes had arrived; 0 with an end of input means the peer closed
    before sending anything (a TCP health check or a port scan rather than a bad header)."""

    error_type: Final = ERROR_TYPE

    def __init__(self, detail: str, received: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.received = received


@dataclass(frozen=True, slots=True)
class SSLInfo:
    """The PP2_TYPE_SSL TLV: what the proxy knows about the client's TLS connection."""

    client: int  # PP2_CLIENT_* bits
    verify: int  # 0: the client's certificate was verified; else the proxy's verify result
    version: str | None = None  # "TLSv1.3"
    cn: str | None = None  # the client certificate's subject Common Name
    cipher: str | None = None  # "TLS_AES_256_GCM_SHA384"
    sig_alg: str | None = None  # of the certificate the proxy presented: "RSA-SHA256"
    key_alg: str | None = None  # of that certificate's key: "RSA2048"
    other: tuple[tuple[int, bytes], ...] = ()  # sub-TLVs of unknown types, raw

    @property
    def client_ssl(self) -> bool:
        """The client connected to the proxy over TLS."""
        return bool(self.client & PP2_CLIENT_SSL)

    @property
    def client_cert(self) -> bool:
        """The client presented a certificate, on this connection or earlier in its TLS session."""
        return bool(self.client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS))

    @property
    def client_verify(self) -> str:
        """mod_ssl's SSL_CLIENT_VERIFY: NONE (no certificate), SUCCESS or FAILED:<verify result>."""
        if not self.client_cert:
            return "NONE"
        return "SUCCESS" if self.verify == 0 else f"FAILED:{self.verify}"


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One parsed header. source and destination are None when the real endpoints stand
    (v2 LOCAL, UNKNOWN/UNSPEC); for the unix family they are (path, 0)."""

    version: int  # 1 or 2
    command: str  # "PROXY" or "LOCAL" (v1 has only PROXY)
    family: str  # "inet", "inet6", "unix" or "unspec"
    transport: str  # "stream", "dgram" or "unspec"
    source: Address | None
    destination: Address | None
    length: int  # bytes the header took on the wire
    alpn: bytes | None = None
    authority: str | None = None
    unique_id: bytes | None = None
    crc32c: int | None = None  # present and verified
    netns: str | None = None
    ssl: SSLInfo | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()  # TLVs of types this module does not know, raw

    def environ(self, peer: tuple[str, str] | None = None) -> dict[str, Any]:
        """The WSGI environ entries this header implies, computed once per connection and
        applied to each of its requests. peer: the connection's own (REMOTE_ADDR, REMOTE_PORT),
        kept as greenfork.peer_addr/peer_port when the header replaces them.

        ==========================  ==============================================================
        key                         value
        ==========================  ==============================================================
        REMOTE_ADDR, REMOTE_PORT    the client (PROXY command, INET/INET6); ``""`` and ``""`` for
                                    the unix family, as for a client on a unix-socket listener
        SERVER_NAME, SERVER_PORT    the address and port the client connected to (on the proxy);
                                    for the unix family the socket path and ``""``
        greenfork.peer_addr,        the proxy's own address and port: the connection's peer, when
        greenfork.peer_port         the two above were replaced and peer was given
        wsgi.url_scheme, HTTPS      ``https`` and ``on`` when the SSL TLV says the client connected
                                    to the proxy over TLS
        SSL_PROTOCOL                the TLS version (SSL TLV, sub-TLV VERSION): ``TLSv1.3``
        SSL_CIPHER                  the cipher (sub-TLV CIPHER)
        SSL_CLIENT_VERIFY           ``NONE``, ``SUCCESS`` or ``FAILED:<code>`` (mod_ssl's values)
        SSL_CLIENT_S_DN_CN          the client certificate's Common Name (sub-TLV CN)
        SSL_SERVER_A_SIG,           the signature and key algorithm of the certificate the proxy
        SSL_SERVER_A_KEY            presented (sub-TLVs SIG_ALG, KEY_ALG)
        SSL_TLS_SNI                 the server name the client asked for (AUTHORITY, over TLS)
        greenfork.proxy_protocol    a dict: ``version`` (1, 2), ``command`` (``PROXY``,
                                    ``LOCAL``), ``alpn``, ``authority``, ``unique_id``, ``netns``
                                    (str or None; ALPN and unique ID decoded as Latin-1, byte for
                                    byte) and ``tlvs`` ({type: raw bytes} for unknown TLVs, the
                                    last one of a repeated type); one dict per connection, shared
                                    by its requests: read-only
        ==========================  ==============================================================

        Only a PROXY command sets anything but greenfork.proxy_protocol: a LOCAL connection is the
        proxy's own (a health check) and keeps its real endpoints and scheme. SSL keys are set
        only when the client connected over TLS, and each only when the proxy sent its sub-TLV.
        """
        env: dict[str, Any] = {
            "greenfork.proxy_protocol": {
                "version": self.version,
                "command": self.command,
                "alpn": None if self.alpn is None else self.alpn.decode("latin-1"),
                "authority": self.authority,
                "unique_id": None if self.unique_id is None else self.unique_id.decode("latin-1"),
                "netns": self.netns,
                "tlvs": dict(self.tlvs),
            }
        }
        if self.command != "PROXY":
            return env
        src, dst = self.source, self.destination
        if src is not None and dst is not None:
            if self.family == "unix":
                env["REMOTE_ADDR"] = env["REMOTE_PORT"] = ""
                env["SERVER_NAME"], env["SERVER_PORT"] = dst[0], ""
            else:
                env["REMOTE_ADDR"], env["REMOTE_PORT"] = src[0], str(src[1])
                env["SERVER_NAME"], env["SERVER_PORT"] = dst[0], str(dst[1])
            if peer is not None:
                env["greenfork.peer_addr"], env["greenfork.peer_port"] = peer
        ssl = self.ssl
        if ssl is not None and ssl.client_ssl:
            env["wsgi.url_scheme"] = "https"
            env["HTTPS"] = "on"
            if ssl.version is not None:
                env["SSL_PROTOCOL"] = ssl.version
            if ssl.cipher is not None:
                env["SSL_CIPHER"] = ssl.cipher
            env["SSL_CLIENT_VERIFY"] = ssl.client_verify
            if ssl.cn is not None:
                env["SSL_CLIENT_S_DN_CN"] = ssl.cn
            if ssl.sig_alg is not None:
                env["SSL_SERVER_A_SIG"] = ssl.sig_alg
            if ssl.key_alg is not None:
                env["SSL_SERVER_A_KEY"] = ssl.key_alg
            if self.authority is not None:
                env["SSL_TLS_SNI"] = self.authority
        return env


class ProxyParser:
    """Reads one PROXY header from the start of a connection.

    feed(data) -> ProxyHeader once the header is complete (then `rest` holds the bytes after it),
    None while more is needed; raises ProxyProtocolError. feed(b"") is the peer's end of input.
    An error is final: feeding again raises it again."""

    __slots__ = ("_buf", "_error", "_version", "header", "max_v2_length", "mode", "rest")

    def __init__(self, mode: str = "any", max_v2_length: int = V2_MAX_LENGTH) -> None:
        if mode not in MODES:
            raise ValueError(f"PROXY protocol mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.max_v2_length = max_v2_length
        self._buf = b""
        self._version = 0  # 1 or 2 once the first byte told
        self._error: ProxyProtocolError | None = None
        self.header: ProxyHeader | None = None
        self.rest = b""

    def feed(self, data: bytes) -> ProxyHeader | None:
        if self._error is not None:
            raise self._error
        if self.header is not None:
            raise RuntimeError("the PROXY header is complete; its rest belongs to the next stage")
        try:
            if not data:
                raise self._fail(f"connection closed after {len(self._buf)} bytes of a PROXY header"
                                 if self._buf else "connection closed before a PROXY header")
            self._buf = buf = self._buf + data if self._buf else data
            if not self._version:
                self._version = self._which(buf[0])
            header = self._v1(buf) if self._version == 1 else self._v2(buf)
        except ProxyProtocolError as e:
            self._error = e
            raise
        if header is not None:
            self.header = header
            self.rest = buf[header.length:]
            self._buf = b""
        return header

    # ------------------------------------------------------------------ internals
    def _fail(self, detail: str) -> ProxyProtocolError:
        return ProxyProtocolError(detail, len(self._buf))

    def _missing(self, buf: bytes) -> ProxyProtocolError:
        return self._fail(f"no PROXY protocol header (mode {self.mode}): the connection starts with "
                          f"{buf[:16]!r}")

    def _which(self, first: int) -> int:
        if first == 0x50 and self.mode != "v2":  # "P"
            return 1
        if first == 0x0D and self.mode != "v1":  # "\r"
            return 2
        raise self._missing(self._buf)

    def _v1(self, buf: bytes) -> ProxyHeader | None:
        n = len(_V1_PREFIX)
        if buf[:n] != _V1_PREFIX[:len(buf)]:
            raise self._missing(buf)
        lf = buf.find(b"\n", 0, V1_MAX)
        cr = buf.find(b"\r", 0, V1_MAX if lf < 0 else lf)
        if lf < 0:
            if len(buf) >= V1_MAX:
                raise self._fail(f"v1 header: no CRLF within {V1_MAX} bytes")
            if cr >= 0 and cr + 1 < len(buf):
                raise self._fail("v1 header: a CR not followed by LF")
            return None
        if cr != lf - 1:
            raise self._fail("v1 header: the line does not end in CRLF" if cr < 0 else
                             "v1 header: a CR not followed by LF")
        line = buf[:cr]
        parts = line.split(b" ")
        proto = parts[1] if len(parts) > 1 else b""
        if proto == b"UNKNOWN":
            return ProxyHeader(1, "PROXY", "unspec", "unspec", None, None, lf + 1)
        if proto not in (b"TCP4", b"TCP6"):
            raise self._fail(f"v1 header: unknown protocol {proto[:16]!r} (TCP4, TCP6 or UNKNOWN)")
        if len(parts) != 6:
            raise self._fail("v1 header: expected 'PROXY TCPx <src> <dst> <sport> <dport>' with "
                             "single spaces")
        version = 4 if proto == b"TCP4" else 6
        src = self._v1_addr(parts[2], version)
        dst = self._v1_addr(parts[3], version)
        sport, dport = self._v1_port(parts[4]), self._v1_port(parts[5])
        family = "inet" if version == 4 else "inet6"
        return ProxyHeader(1, "PROXY", family, "stream", (src, sport), (dst, dport), lf + 1)

    def _v1_addr(self, raw: bytes, version: int) -> str:
        """The address in the form the kernel gives a direct peer (inet_ntop), so REMOTE_ADDR
        reads the same with or without a proxy: "2001:db8::1", "::ffff:192.0.2.1"."""
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        try:
            # glibc's inet_pton is strict: no leading zeros, no zone, exactly 4 or 8 parts
            return socket.inet_ntop(family, socket.inet_pton(family, raw.decode("ascii")))
        except (OSError, ValueError):
            raise self._fail(f"v1 header: {raw[:45]!r} is not an IPv{version} address") from None

    def _v1_port(self, raw: bytes) -> int:
        if not raw.isdigit() or len(raw) > 5 or (raw[:1] == b"0" and raw != b"0") or int(raw) > 65535:
            raise self._fail(f"v1 header: {raw[:8]!r} is not a port (0-65535, no leading zeros)")
        return int(raw)

    def _v2(self, buf: bytes) -> ProxyHeader | None:
        n = min(len(buf), 12)
        if buf[:n] != V2_SIGNATURE[:n]:
            raise self._missing(buf)
        if len(buf) >= 13 and buf[12] >> 4 != 2:
            raise self._fail(f"v2 header: version {buf[12] >> 4} (only 2 exists)")
        if len(buf) >= 13 and buf[12] & 0x0F > 1:
            raise self._fail(f"v2 header: command {buf[12] & 0x0F} (LOCAL 0 or PROXY 1)")
        if len(buf) >= 14 and (buf[13] >> 4 not in _FAMILIES or buf[13] & 0x0F not in _TRANSPORTS):
            raise self._fail(f"v2 header: address family and transport byte 0x{buf[13]:02x} is invalid")
        if len(buf) < 16:
            return None
        _sig, ver_cmd, fam, length = _V2_FIXED.unpack_from(buf)
        if length > self.max_v2_length:
            raise self._fail(f"v2 header: length {length} is over the limit of {self.max_v2_length}")
        total = 16 + length
        if len(buf) < total:
            return None
        return self._v2_body(buf[:total], ver_cmd & 0x0F, fam)

    def _v2_body(self, header: bytes, cmd: int, fam: int) -> ProxyHeader:
        family, addr_len = _FAMILIES[fam >> 4]
        transport = _TRANSPORTS[fam & 0x0F]
        command = "PROXY" if cmd == 1 else "LOCAL"
        body_len = len(header) - 16
        usable = cmd == 1 and family != "unspec" and transport != "unspec"
        src: Address | None = None
        dst: Address | None = None
        if body_len < addr_len:
            if usable:
                raise self._fail(f"v2 header: {family} addresses need {addr_len} bytes, the header "
                                 f"has {body_len}")
            # LOCAL or UNSPEC: the spec says to skip the block, whatever it holds
            return ProxyHeader(2, command, family, transport, None, None, len(header))
        if usable:
            src, dst = self._v2_addresses(header, family)
        fields: dict[int, Any] = {}
        unknown: list[tuple[int, bytes]] = []
        crc_at = -1
        for tlv_type, start, end in self._tlvs(header, 16 + addr_len, len(header), "TLV"):
            value = header[start:end]
            if tlv_type == PP2_TYPE_NOOP:
                continue
            if tlv_type not in _KNOWN:
                unknown.append((tlv_type, value))
                continue
            if tlv_type in fields:
                raise self._fail(f"v2 header: TLV 0x{tlv_type:02x} appears twice")
            if tlv_type == PP2_TYPE_CRC32C:
                if len(value) != 4:
                    raise self._fail(f"v2 header: CRC32C TLV of {len(value)} bytes (4)")
                crc_at = start
                fields[tlv_type] = int.from_bytes(value, "big")
            elif tlv_type == PP2_TYPE_SSL:
                fields[tlv_type] = self._ssl(header, start, end)
            elif tlv_type == PP2_TYPE_AUTHORITY:
                if len(value) > 255:
                    raise self._fail(f"v2 header: AUTHORITY of {len(value)} bytes (at most 255)")
                fields[tlv_type] = self._text(value, "utf-8", "AUTHORITY")
            elif tlv_type == PP2_TYPE_UNIQUE_ID:
                if len(value) > 128:
                    raise self._fail(f"v2 header: UNIQUE_ID of {len(value)} bytes (at most 128)")
                fields[tlv_type] = value
            elif tlv_type == PP2_TYPE_NETNS:
                fields[tlv_type] = self._text(value, "ascii", "NETNS")
            else:  # ALPN: the protocol's name, as bytes
                fields[tlv_type] = value
        if crc_at >= 0:
            zeroed = header[:crc_at] + b"\0\0\0\0" + header[crc_at + 4:]
            if google_crc32c.value(zeroed) != fields[PP2_TYPE_CRC32C]:
                raise self._fail("v2 header: CRC32C mismatch (the header was altered or cut)")
        return ProxyHeader(
            2, command, family, transport, src, dst, len(header),
            alpn=fields.get(PP2_TYPE_ALPN), authority=fields.get(PP2_TYPE_AUTHORITY),
            unique_id=fields.get(PP2_TYPE_UNIQUE_ID), crc32c=fields.get(PP2_TYPE_CRC32C),
            netns=fields.get(PP2_TYPE_NETNS), ssl=fields.get(PP2_TYPE_SSL), tlvs=tuple(unknown))

    def _v2_addresses(self, header: bytes, family: str) -> tuple[Address, Address]:
        if family == "inet":
            s, d, sp, dp = _INET.unpack_from(header, 16)
            return (socket.inet_ntop(socket.AF_INET, s), sp), (socket.inet_ntop(socket.AF_INET, d), dp)
        if family == "inet6":
            s, d, sp, dp = _INET6.unpack_from(header, 16)
            return (socket.inet_ntop(socket.AF_INET6, s), sp), (socket.inet_ntop(socket.AF_INET6, d), dp)
        return (_unix_path(header[16:124]), 0), (_unix_path(header[124:232]), 0)

    def _tlvs(self, data: bytes, pos: int, end: int, what: str) -> list[tuple[int, int, int]]:
        """(type, value start, value end) of each TLV in data[pos:end], which they must tile."""
        out: list[tuple[int, int, int]] = []
        while pos < end:
            if end - pos < 3:
                raise self._fail(f"v2 header: {end - pos} stray bytes where a {what} should start")
            length = int.from_bytes(data[pos + 1:pos + 3], "big")
            if pos + 3 + length > end:
                raise self._fail(f"v2 header: {what} 0x{data[pos]:02x} of {length} bytes runs past "
                                 f"the end of its block")
            out.append((data[pos], pos + 3, pos + 3 + length))
            pos += 3 + length
        return out

    def _ssl(self, header: bytes, start: int, end: int) -> SSLInfo:
        if end - start < 5:
            raise self._fail(f"v2 header: SSL TLV of {end - start} bytes (at least 5)")
        client = header[start]
        verify = int.from_bytes(header[start + 1:start + 5], "big")
        subs: dict[int, str] = {}
        other: list[tuple[int, bytes]] = []
        for sub, s, e in self._tlvs(header, start + 5, end, "SSL sub-TLV"):
            value = header[s:e]
            if sub not in _SSL_SUBS:
                other.append((sub, value))
                continue
            if sub in subs:
                raise self._fail(f"v2 header: SSL sub-TLV 0x{sub:02x} appears twice")
            subs[sub] = self._text(value, "utf-8" if sub == PP2_SUBTYPE_SSL_CN else "ascii", _SSL_SUBS[sub])
        return SSLInfo(client, verify, version=subs.get(PP2_SUBTYPE_SSL_VERSION),
                       cn=subs.get(PP2_SUBTYPE_SSL_CN), cipher=subs.get(PP2_SUBTYPE_SSL_CIPHER),
                       sig_alg=subs.get(PP2_SUBTYPE_SSL_SIG_ALG), key_alg=subs.get(PP2_SUBTYPE_SSL_KEY_ALG),
                       other=tuple(other))

    def _text(self, value: bytes, encoding: str, what: str) -> str:
        try:
            return value.decode(encoding)
        except UnicodeDecodeError:
            raise self._fail(f"v2 header: {what} is not {encoding.upper()} text") from None


def _unix_path(raw: bytes) -> str:
    """A sockaddr_un path: NUL-terminated, or abstract (leading NUL, shown as "@name")."""
    if raw[:1] == b"\0":
        return "@" + raw[1:].rstrip(b"\0").decode("utf-8", "backslashreplace")
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


_SSL_SUBS = {PP2_SUBTYPE_SSL_VERSION: "SSL version", PP2_SUBTYPE_SSL_CN: "SSL CN",
             PP2_SUBTYPE_SSL_CIPHER: "SSL cipher", PP2_SUBTYPE_SSL_SIG_ALG: "SSL signature algorithm",
             PP2_SUBTYPE_SSL_KEY_ALG: "SSL key algorithm"}

"""workers/proxyproto.py: PROXY protocol v1/v2 headers fed whole, byte by byte and fuzzed,
and the headers a real HAProxy sends (send-proxy, send-proxy-v2 with TLVs, health checks).

GREENFORK_FUZZ_EXAMPLES sets the examples per property test (5,000 by default).
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenfork.workers.proxyproto import (
    ERROR_TYPE,
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyParser,
    ProxyProtocolError,
    SSLInfo,
)
from tests.procs import wait_for

EXAMPLES = int(os.environ.get("GREENFORK_FUZZ_EXAMPLES", "5000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------ building headers
def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def ssl_tlv(client: int, verify: int, *subs: tuple[int, bytes]) -> bytes:
    return tlv(0x20, struct.pack("!BI", client, verify) + b"".join(tlv(t, v) for t, v in subs))


def inet4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!HH", sport, dport))


def unix(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


def v2(cmd: int = 1, fam: int = 0x11, addr: bytes | None = None, tlvs: bytes = b"", crc: bool = False,
       ver: int = 2) -> bytes:
    """A v2 header (TCP over IPv4 from 192.0.2.1:1 to 192.0.2.2:2 unless told otherwise);
    with crc, a CRC32C TLV is appended and filled in."""
    if addr is None:
        addr = inet4("192.0.2.1", "192.0.2.2", 1, 2) if fam == 0x11 else b""
    body = addr + tlvs + (tlv(0x03, b"\0\0\0\0") if crc else b"")
    header = V2_SIGNATURE + bytes([ver << 4 | cmd, fam]) + struct.pack("!H", len(body)) + body
    if crc:
        header = header[:-4] + google_crc32c.value(header).to_bytes(4, "big")
    return header


def parse(data: bytes, mode: str = "any") -> tuple[ProxyHeader, bytes]:
    p = ProxyParser(mode)
    header = p.feed(data)
    assert header is not None, "the header is incomplete"
    return header, p.rest


def parse_bytewise(data: bytes, mode: str = "any") -> tuple[ProxyHeader, bytes]:
    """One byte at a time: None until the header's last byte, then the header; the rest is
    whatever follows in the same feed (nothing here)."""
    p = ProxyParser(mode)
    for i in range(len(data)):
        header = p.feed(data[i:i + 1])
        if header is not None:
            assert header.length == i + 1 and p.rest == b""
            return header, data[i + 1:]
    raise AssertionError("the header never completed")


def both(data: bytes, mode: str = "any") -> tuple[ProxyHeader, bytes]:
    whole = parse(data, mode)
    assert parse_bytewise(data, mode) == whole
    return whole


def fails(data: bytes, mode: str = "any", match: str = "") -> ProxyProtocolError:
    """data must fail, fed whole and fed byte by byte, and not later than its last byte."""
    p = ProxyParser(mode)
    with pytest.raises(ProxyProtocolError) as whole:
        p.feed(data)
    assert match in whole.value.detail, whole.value.detail
    assert whole.value.error_type == ERROR_TYPE == "proxy_protocol_invalid"
    with pytest.raises(ProxyProtocolError) as again:
        p.feed(b"more")  # an error is final
    assert again.value is whole.value
    p = ProxyParser(mode)
    with pytest.raises(ProxyProtocolError) as bytewise:
        for i in range(len(data)):
            assert p.feed(data[i:i + 1]) is None
    # the same reason (what the connection started with is shown as far as it had arrived)
    assert bytewise.value.detail.split(" starts with")[0] == whole.value.detail.split(" starts with")[0]
    return whole.value


# ------------------------------------------------------------------ version 1
def test_v1_tcp4() -> None:
    h, rest = both(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n\r\n")
    assert (h.version, h.command, h.family, h.transport) == (1, "PROXY", "inet", "stream")
    assert h.source == ("192.168.0.1", 56324) and h.destination == ("192.168.0.11", 443)
    assert h.length == 47 and rest == b"GET / HTTP/1.1\r\n\r\n"
    assert h.ssl is None and h.tlvs == ()


def test_v1_tcp6_and_canonical_addresses() -> None:
    h, _ = both(b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 65535 0\r\n")
    assert h.family == "inet6" and h.source == ("2001:db8::1", 65535) and h.destination == ("::1", 0)
    h, _ = both(b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n")  # what inet_ntop gives a mapped address
    assert h.source == ("::ffff:192.0.2.1", 1)  # as a dual-stack socket reports it


def test_v1_unknown_keeps_the_real_endpoints() -> None:
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN whatever follows is ignored\r\n",
                 b"PROXY UNKNOWN " + b"f" * (V1_MAX - 16) + b"\r\n"):
        h, rest = both(line + b"x")
        assert (h.family, h.source, h.destination, rest) == ("unspec", None, None, b"x")
        assert h.environ() == {"greenfork.proxy_protocol": {
            "version": 1, "command": "PROXY", "alpn": None, "authority": None, "unique_id": None,
            "netns": None, "tlvs": {}}}
    assert len(b"PROXY UNKNOWN " + b"f" * (V1_MAX - 16) + b"\r\n") == V1_MAX


def test_v1_the_longest_line_fits_and_one_more_byte_fails() -> None:
    longest = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff " \
              b"65535 65535\r\n"
    assert len(longest) == 104
    both(longest)
    fails(b"PROXY UNKNOWN " + b"f" * (V1_MAX - 15) + b"\r\n", match="no CRLF within 107 bytes")


@pytest.mark.parametrize(("line", "match"), [
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "does not end in CRLF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "a CR not followed by LF"),
    (b"PROXY TCP4 1.2.3.4\r 5.6.7.8 1 2\r\n", "a CR not followed by LF"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "single spaces"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "single spaces"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "single spaces"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "is not an IPv4 address"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "is not an IPv4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "is not an IPv6 address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "is not an IPv6 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xd9\xa8\r\n", "is not a port"),
    (b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n", "is not an IPv4 address"),
    (b"PROXY \r\n", "unknown protocol"),
    (b"PROXX TCP4", "no PROXY protocol header"),
    (b"proxy TCP4", "no PROXY protocol header (mode any)"),
])
def test_v1_malformed(line: bytes, match: str) -> None:
    fails(line, match=match)


def test_wrong_or_missing_header_fails_on_the_first_byte() -> None:
    for data, mode in ((b"GET / HTTP/1.1\r\n", "any"), (b"\x16\x03\x01", "any"), (V2_SIGNATURE, "v1"),
                       (b"PROXY TCP4 ", "v2"), (b"\x00", "v2")):
        p = ProxyParser(mode)
        with pytest.raises(ProxyProtocolError, match="starts with"):
            p.feed(data[:1])


def test_end_of_input() -> None:
    p = ProxyParser()
    with pytest.raises(ProxyProtocolError) as e:
        p.feed(b"")
    assert e.value.received == 0 and "before a PROXY header" in e.value.detail
    p = ProxyParser()
    assert p.feed(b"PROXY TCP4 1.2") is None
    with pytest.raises(ProxyProtocolError) as e:
        p.feed(b"")
    assert e.value.received == 14 and "after 14 bytes" in e.value.detail


def test_modes() -> None:
    line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
    assert both(line, "v1")[0].version == 1
    assert both(v2(), "v2")[0].version == 2
    with pytest.raises(ValueError, match="one of v1, v2, any, not 'off'"):
        ProxyParser("off")
    p = ProxyParser()
    p.feed(line)
    with pytest.raises(RuntimeError):
        p.feed(b"x")


# ------------------------------------------------------------------ version 2
def test_v2_inet_with_rest() -> None:
    data = v2(addr=inet4("203.0.113.7", "192.0.2.1", 51000, 443)) + b"GET / HTTP/1.1\r\n"
    h, rest = both(data, "v2")
    assert (h.version, h.command, h.family, h.transport) == (2, "PROXY", "inet", "stream")
    assert h.source == ("203.0.113.7", 51000) and h.destination == ("192.0.2.1", 443)
    assert rest == b"GET / HTTP/1.1\r\n" and h.length == 28


def test_v2_inet6_unix_dgram() -> None:
    h, _ = both(v2(fam=0x21, addr=inet6("2001:db8::1", "::1", 1, 2)))
    assert h.family == "inet6" and h.source == ("2001:db8::1", 1) and h.destination == ("::1", 2)
    h, _ = both(v2(fam=0x21, addr=inet6("::ffff:192.0.2.1", "::1", 1, 2)))
    assert h.source == ("::ffff:192.0.2.1", 1)
    h, _ = both(v2(fam=0x31, addr=unix(b"/run/client.sock", b"\0abstract")))
    assert h.family == "unix" and h.source == ("/run/client.sock", 0) and h.destination == ("@abstract", 0)
    env = h.environ(("127.0.0.1", "5"))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("", "")  # as for a client on a unix socket
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("@abstract", "")
    h, _ = both(v2(fam=0x12, addr=inet4("1.2.3.4", "5.6.7.8", 53, 53)))
    assert h.transport == "dgram" and h.source == ("1.2.3.4", 53)


def test_v2_local_and_unspec_keep_the_real_endpoints() -> None:
    # what HAProxy sends for health checks and for clients on unix sockets
    h, rest = both(V2_SIGNATURE + b"\x20\x00\x00\x00" + b"x")
    assert (h.command, h.family, h.source, h.destination, rest) == ("LOCAL", "unspec", None, None, b"x")
    # LOCAL with addresses: they are skipped, TLVs still read
    h, _ = both(v2(cmd=0, addr=inet4("1.2.3.4", "5.6.7.8", 1, 2), tlvs=tlv(0x05, b"id"), crc=True))
    assert h.command == "LOCAL" and h.source is None and h.unique_id == b"id" and h.crc32c is not None
    env = h.environ(("10.0.0.1", "9"))
    assert set(env) == {"greenfork.proxy_protocol"} and env["greenfork.proxy_protocol"]["command"] == "LOCAL"
    # LOCAL with a block too short for its family: skipped whole
    h, _ = both(v2(cmd=0, fam=0x21, addr=b"\x01\x02\x03"))
    assert h.source is None and h.length == 19
    # PROXY with UNSPEC family or transport
    for fam in (0x00, 0x10, 0x01):
        h, _ = both(v2(fam=fam, addr=b"\0" * (12 if fam == 0x10 else 0)))
        assert h.command == "PROXY" and h.source is None
        assert "REMOTE_ADDR" not in h.environ()


@pytest.mark.parametrize(("data", "match"), [
    (V2_SIGNATURE + b"\x11\x11\x00\x00", "version 1 (only 2 exists)"),
    (V2_SIGNATURE + b"\x32\x11\x00\x00", "version 3"),
    (V2_SIGNATURE + b"\x22\x11\x00\x00", "command 2"),
    (V2_SIGNATURE + b"\x21\x41\x00\x00", "byte 0x41 is invalid"),
    (V2_SIGNATURE + b"\x21\x13\x00\x00", "byte 0x13 is invalid"),
    (V2_SIGNATURE + b"\x21\x11\x08\x01", "length 2049 is over the limit of 2048"),
    (V2_SIGNATURE + b"\x21\x11\x00\x0b" + b"\0" * 11, "inet addresses need 12 bytes, the header has 11"),
    (V2_SIGNATURE + b"\x21\x21\x00\x0c" + b"\0" * 12, "inet6 addresses need 36 bytes"),
    (V2_SIGNATURE + b"\x21\x31\x00\x00", "unix addresses need 216 bytes"),
    (V2_SIGNATURE[:11] + b"X", "no PROXY protocol header"),
    (v2(addr=inet4("1.2.3.4", "5.6.7.8", 1, 2), tlvs=b"\x05\x00"), "2 stray bytes"),
    (v2(addr=inet4("1.2.3.4", "5.6.7.8", 1, 2), tlvs=b"\x05\x00\x05ab"), "of 5 bytes runs past"),
    (v2(addr=inet4("1.2.3.4", "5.6.7.8", 1, 2), tlvs=tlv(1, b"h2") + tlv(1, b"h2")), "0x01 appears twice"),
    (v2(tlvs=tlv(0x03, b"\0\0\0")), "CRC32C TLV of 3 bytes"),
    (v2(tlvs=tlv(0x02, b"a" * 256)), "AUTHORITY of 256 bytes"),
    (v2(tlvs=tlv(0x02, b"\xff")), "AUTHORITY is not UTF-8"),
    (v2(tlvs=tlv(0x05, b"a" * 129)), "UNIQUE_ID of 129 bytes"),
    (v2(tlvs=tlv(0x30, "nëtns".encode())), "NETNS is not ASCII"),
    (v2(tlvs=tlv(0x20, b"\x01\0\0\0")), "SSL TLV of 4 bytes"),
    (v2(tlvs=ssl_tlv(1, 0) + b"\x21\x00"), "2 stray bytes"),
    (v2(tlvs=tlv(0x20, struct.pack("!BI", 1, 0) + b"\x21\x00\x09TLSv1.3")), "SSL sub-TLV 0x21 of 9 bytes"),
    (v2(tlvs=ssl_tlv(1, 0, (0x21, b"TLSv1.3"), (0x21, b"TLSv1.2"))), "SSL sub-TLV 0x21 appears twice"),
    (v2(tlvs=ssl_tlv(1, 0, (0x22, b"\xc3"))), "SSL CN is not UTF-8"),
    (v2(tlvs=ssl_tlv(1, 0, (0x23, "é".encode()))), "SSL cipher is not ASCII"),
])
def test_v2_malformed(data: bytes, match: str) -> None:
    fails(data, "v2", match=match)
    fails(data, "any", match=match)


def test_v2_length_limit_is_settable() -> None:
    data = v2(tlvs=tlv(0xE0, b"x" * 3000))
    header = ProxyParser("v2", max_v2_length=4096).feed(data)
    assert header is not None and header.tlvs == ((0xE0, b"x" * 3000),)
    fails(data, "v2", match="over the limit of 2048")


def test_v2_tlvs() -> None:
    tlvs = (tlv(0x01, b"h2") + tlv(0x02, "bücher.example".encode()) + tlv(0x04, b"\0\0\0")
            + tlv(0x05, b"\x01id\xff") + tlv(0x30, b"blue") + tlv(0xEA, b"\x01vpce-0abc") + tlv(0xF8, b"")
            + ssl_tlv(0x07, 0, (0x21, b"TLSv1.3"), (0x22, "José".encode()), (0x23, b"TLS_AES_128_GCM_SHA256"),
                      (0x24, b"RSA-SHA256"), (0x25, b"RSA2048"), (0x29, b"future")))
    data = v2(addr=inet4("203.0.113.7", "192.0.2.1", 51000, 443), tlvs=tlvs, crc=True)
    h, _ = both(data)
    assert h.alpn == b"h2" and h.authority == "bücher.example" and h.unique_id == b"\x01id\xff"
    assert h.netns == "blue" and h.crc32c == int.from_bytes(data[-4:], "big")
    assert h.tlvs == ((0xEA, b"\x01vpce-0abc"), (0xF8, b""))  # NOOP is skipped, unknown kept in order
    assert h.ssl == SSLInfo(client=7, verify=0, version="TLSv1.3", cn="José", cipher="TLS_AES_128_GCM_SHA256",
                            sig_alg="RSA-SHA256", key_alg="RSA2048", other=((0x29, b"future"),))
    assert h.ssl.client_ssl and h.ssl.client_cert and h.ssl.client_verify == "SUCCESS"
    env = h.environ(("127.0.0.1", "40000"))
    assert env == {
        "REMOTE_ADDR": "203.0.113.7", "REMOTE_PORT": "51000",
        "SERVER_NAME": "192.0.2.1", "SERVER_PORT": "443",
        "greenfork.peer_addr": "127.0.0.1", "greenfork.peer_port": "40000",
        "wsgi.url_scheme": "https", "HTTPS": "on", "SSL_PROTOCOL": "TLSv1.3",
        "SSL_CIPHER": "TLS_AES_128_GCM_SHA256", "SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_S_DN_CN": "José",
        "SSL_SERVER_A_SIG": "RSA-SHA256", "SSL_SERVER_A_KEY": "RSA2048", "SSL_TLS_SNI": "bücher.example",
        "greenfork.proxy_protocol": {"version": 2, "command": "PROXY", "alpn": "h2",
                                     "authority": "bücher.example", "unique_id": "\x01id\xff",
                                     "netns": "blue", "tlvs": {0xEA: b"\x01vpce-0abc", 0xF8: b""}}}
    assert "greenfork.peer_addr" not in h.environ()


def test_docs_name_every_environ_key() -> None:
    data = v2(fam=0x31, addr=unix(b"/a", b"/b"), tlvs=tlv(0x02, b"a.example") + ssl_tlv(
        7, 0, *((t, b"x") for t in range(0x21, 0x26))))
    keys = set(parse(data)[0].environ(("127.0.0.1", "1"))) | set(both(v2(tlvs=tlv(0x01, b"h2")))[0].environ())
    docs = (Path(__file__).resolve().parent.parent / "docs" / "proxies.md").read_text()
    assert len(keys) == 16 and [k for k in keys if f"`{k}`" not in docs] == []
    for word in ("alpn", "authority", "unique_id", "netns", "tlvs"):
        assert f"`{word}`" in docs


def test_ssl_client_verify_values() -> None:
    assert SSLInfo(client=1, verify=0).client_verify == "NONE"  # TLS, no certificate
    assert SSLInfo(client=1 | 2, verify=0).client_verify == "SUCCESS"
    assert SSLInfo(client=1 | 4, verify=0).client_verify == "SUCCESS"
    assert SSLInfo(client=1 | 2, verify=20).client_verify == "FAILED:20"
    # the proxy sent the TLV but the client did not use TLS: nothing about TLS applies
    h, _ = both(v2(addr=inet4("1.2.3.4", "5.6.7.8", 1, 2), tlvs=ssl_tlv(0, 1)))
    assert h.ssl is not None and not h.ssl.client_ssl
    assert not {"HTTPS", "wsgi.url_scheme", "SSL_CLIENT_VERIFY"} & h.environ().keys()


def test_v2_crc_mismatch_fails() -> None:
    data = bytearray(v2(addr=inet4("1.2.3.4", "5.6.7.8", 1, 2), tlvs=tlv(0x01, b"h2"), crc=True))
    data[17] ^= 0x01  # the source address
    fails(bytes(data), match="CRC32C mismatch")
    data = bytearray(v2(addr=inet4("1.2.3.4", "5.6.7.8", 1, 2), crc=True))
    data[-1] ^= 0x80  # the checksum itself
    fails(bytes(data), match="CRC32C mismatch")


# ------------------------------------------------------------------ properties
ip4 = st.integers(0, 2**32 - 1).map(lambda n: socket.inet_ntoa(n.to_bytes(4, "big")))
ip6 = st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(socket.AF_INET6, b))
port = st.integers(0, 65535)
any_tlv = st.one_of(
    st.tuples(st.sampled_from([0x01, 0x04]), st.binary(max_size=20)),
    st.tuples(st.just(0x02), st.text(max_size=30).map(str.encode)),
    st.tuples(st.just(0x05), st.binary(max_size=128)),
    st.tuples(st.just(0x30), st.text("abcdefghij-_.", max_size=10).map(str.encode)),
    st.tuples(st.integers(0x06, 0xFF).filter(lambda t: t not in (0x20, 0x30)), st.binary(max_size=20)),
    st.tuples(st.just(0x20), st.tuples(st.integers(0, 7), st.integers(0, 2**32 - 1),
                                       st.lists(st.sampled_from([0x21, 0x22, 0x23, 0x24, 0x25, 0x2A]),
                                                unique=True, max_size=6))
              .map(lambda t: struct.pack("!BI", t[0], t[1]) + b"".join(tlv(s, b"v%d" % s) for s in t[2]))))


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """A valid header of either version and what it must parse to."""
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["TCP4", "TCP6", "UNKNOWN"]))
        if kind == "UNKNOWN":
            return b"PROXY UNKNOWN\r\n", {"version": 1, "source": None}
        a, b = (draw(ip4), draw(ip4)) if kind == "TCP4" else (draw(ip6), draw(ip6))
        sp, dp = draw(port), draw(port)
        return f"PROXY {kind} {a} {b} {sp} {dp}\r\n".encode(), {"version": 1, "source": (a, sp)}
    fam = draw(st.sampled_from([0x11, 0x21, 0x00, 0x31]))
    cmd = draw(st.sampled_from([0, 1]))
    a, sp, dp = draw(ip6 if fam == 0x21 else ip4), draw(port), draw(port)
    addr = {0x11: lambda: inet4(a, "10.0.0.1", sp, dp), 0x21: lambda: inet6(a, "::1", sp, dp),
            0x00: lambda: b"", 0x31: lambda: unix(b"/a", b"/b")}[fam]()
    # a known type may appear once; NOOP and unknown ones any number of times
    chosen = draw(st.lists(any_tlv, max_size=6, unique_by=lambda t: t[0] if t[0] in (1, 2, 5, 0x20, 0x30)
                           else (t[0], t[1])))
    crc = draw(st.booleans())
    data = v2(cmd, fam, addr, b"".join(tlv(t, v) for t, v in chosen), crc=crc)
    source = None if cmd == 0 or fam == 0 else ((a, sp) if fam != 0x31 else ("/a", 0))
    return data, {"version": 2, "source": source, "crc": crc}


def cut(data: bytes, points: bytes) -> list[bytes]:
    numbers = (int.from_bytes(points[i:i + 2], "big") for i in range(0, len(points), 2))
    cuts = sorted({n % (len(data) + 1) for n in numbers})
    return [p for p in (data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)) if p]


@FUZZ
@given(headers(), st.binary(max_size=40), st.binary(max_size=16))
def test_valid_headers_parse_the_same_under_any_split(case: tuple[bytes, dict[str, Any]], rest: bytes,
                                                      points: bytes) -> None:
    data, want = case
    header, got_rest = parse(data + rest, "any")
    assert header.version == want["version"] and header.source == want["source"]
    assert header.length == len(data) and got_rest == rest
    assert (header.crc32c is not None) is want.get("crc", False)
    p = ProxyParser(f"v{want['version']}")
    pieces = cut(data + rest, points)
    for i, piece in enumerate(pieces):
        result = p.feed(piece)
        if result is not None:
            assert result == header
            assert p.rest + b"".join(pieces[i + 1:]) == rest  # the rest goes to the next stage
            break
    else:
        raise AssertionError("the header never completed")
    header.environ(("127.0.0.1", "1"))  # never raises


def feed_hostile(data: bytes, points: bytes, mode: str) -> ProxyHeader | ProxyProtocolError | None:
    p = ProxyParser(mode)
    for piece in [*cut(data, points), b""]:
        try:
            header = p.feed(piece)
        except ProxyProtocolError as e:
            assert e.error_type == ERROR_TYPE and e.detail
            with pytest.raises(ProxyProtocolError):
                p.feed(b"x")
            return e
        if header is not None:
            assert header.length <= len(data) and p.rest == data[header.length:][:len(p.rest)]
            limit = V1_MAX if header.version == 1 else 16 + 2048
            assert header.length <= limit
            header.environ(("127.0.0.1", "1"))
            return header
    raise AssertionError("end of input must finish the parse")


@FUZZ
@given(st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", V2_SIGNATURE,
                        V2_SIGNATURE + b"\x21", V2_SIGNATURE + b"\x21\x11\x00", V2_SIGNATURE + b"\x20\x00"]),
       st.binary(max_size=200), st.binary(max_size=16), st.sampled_from(["v1", "v2", "any"]))
def test_random_bytes_never_raise_anything_else(prefix: bytes, data: bytes, points: bytes, mode: str) -> None:
    whole = feed_hostile(prefix + data, b"", mode)
    split = feed_hostile(prefix + data, points, mode)
    # where the stream is cut changes nothing
    assert type(whole) is type(split)
    if isinstance(whole, ProxyHeader):
        assert whole == split


@FUZZ
@given(headers(), st.integers(0, 10_000), st.integers(1, 255))
def test_mutated_crc_headers_are_caught(case: tuple[bytes, dict[str, Any]], where: int, flip: int) -> None:
    data, want = case
    if want["version"] != 2 or not want.get("crc"):
        return
    mutated = bytearray(data)
    i = where % len(data)
    mutated[i] ^= flip
    result = feed_hostile(bytes(mutated), b"", "any")
    if isinstance(result, ProxyHeader):
        # The checksum does not cover its own framing: a changed length or TLV type can make the
        # CRC32C TLV vanish and leave a valid, unchecked header. A header that still carries a
        # (verified) checksum is never one that was altered.
        assert result.crc32c is None


# ------------------------------------------------------------------ a real HAProxy
def free_port(family: socket.AddressFamily = socket.AF_INET) -> int:
    with socket.socket(family) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return int(s.getsockname()[1])


class Capture:
    """A plain socket server that keeps the first bytes of each connection: up to and
    including the client's b"ping\\n", or all of them until the peer closes."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            self.sock = socket.create_server(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        else:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.bind(str(path))
            self.sock.listen(8)
            self.address = f"unix@{path}"
        self.sock.settimeout(0.1)
        self.got: queue.Queue[bytes] = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.2)
                data = b""
                deadline = time.monotonic() + 5
                while b"ping\n" not in data and time.monotonic() < deadline and len(data) < 8192:
                    try:
                        chunk = conn.recv(4096)
                    except TimeoutError:
                        continue
                    except ConnectionError:
                        break
                    if not chunk:
                        break
                    data += chunk
                self.got.put(data)

    def next(self, timeout: float = 10) -> bytes:
        return self.got.get(timeout=timeout)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, timeout=30, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA, a server certificate for HAProxy and a client certificate (CN client.example)."""
    d = tmp_path_factory.mktemp("certs")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=greenfork test CA", cwd=d)
    for name, cn in (("server", "localhost"), ("client", "client.example")):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", cwd=d)
    (d / "server-full.pem").write_text((d / "server.pem").read_text() + (d / "server.key").read_text())
    return d


class HAProxy:
    def __init__(self, tmp: Path, certs: Path, sock_dir: Path) -> None:
        self.caps = {name: Capture() for name in ("v1", "v1_6", "v2_tls", "v2_full", "v2_6", "check",
                                                  "v1_unix", "v2_unix")}
        self.caps["to_unix"] = Capture(sock_dir / "capture.sock")
        self.ports = {name: free_port() for name in ("ready", "v1", "v2_tls", "v2_full", "to_unix")}
        self.ports.update({name: free_port(socket.AF_INET6) for name in ("v1_6", "v2_6")})
        self.socks = {name: sock_dir / f"{name}.sock" for name in ("v1_unix", "v2_unix")}
        crt, ca = certs / "server-full.pem", certs / "ca.pem"
        v2opts = "send-proxy-v2 proxy-v2-options"
        every = "ssl,cert-cn,ssl-cipher,cert-sig,cert-key,authority,unique-id,crc32c"
        c, p, s = self.caps, self.ports, self.socks
        self.config = tmp / "haproxy.cfg"
        self.log = tmp / "haproxy.log"
        self.config.write_text(f"""
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 10s
    timeout server 10s
    timeout check 5s
frontend ready
    bind 127.0.0.1:{p['ready']}
    tcp-request connection reject
frontend v1
    bind 127.0.0.1:{p['v1']}
    default_backend v1
frontend v1_6
    bind [::1]:{p['v1_6']}
    default_backend v1_6
frontend v2_tls
    bind 127.0.0.1:{p['v2_tls']} ssl crt {crt} alpn h2,http/1.1
    unique-id-format %ci:%cp
    default_backend v2_tls
frontend v2_full
    bind 127.0.0.1:{p['v2_full']} ssl crt {crt} ca-file {ca} verify optional
    unique-id-format %ci:%cp
    default_backend v2_full
frontend v2_6
    bind [::1]:{p['v2_6']}
    default_backend v2_6
frontend v1_unix
    bind unix@{s['v1_unix']}
    default_backend v1_unix
frontend v2_unix
    bind unix@{s['v2_unix']}
    default_backend v2_unix
frontend to_unix
    bind 127.0.0.1:{p['to_unix']}
    default_backend to_unix
backend v1
    server s {c['v1'].address} send-proxy
backend v1_6
    server s {c['v1_6'].address} send-proxy
backend v2_tls
    server s {c['v2_tls'].address} {v2opts} ssl,authority,unique-id,crc32c
backend v2_full
    server s {c['v2_full'].address} {v2opts} {every}
backend v2_6
    server s {c['v2_6'].address} {v2opts} crc32c
backend v1_unix
    server s {c['v1_unix'].address} send-proxy
backend v2_unix
    server s {c['v2_unix'].address} send-proxy-v2
backend to_unix
    server s {c['to_unix'].address} {v2opts} crc32c
backend check
    server s {c['check'].address} send-proxy-v2 check check-send-proxy inter 60s
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(haproxy).exists():
            pytest.fail("haproxy is required (scripts/test installs Debian's haproxy)")
        check = subprocess.run([haproxy, "-c", "-f", str(self.config)], capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr.decode(errors="replace")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([haproxy, "-db", "-f", str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._ready, 10, "haproxy to listen")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"haproxy exited: {self.log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", self.ports["ready"]), timeout=1).close()
            return all(path.exists() for path in self.socks.values())
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # by pid: it is ours alone
            self.proc.wait(10)
        for cap in self.caps.values():
            cap.close()


@pytest.fixture(scope="module")
def haproxy(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HAProxy]:
    import tempfile

    sock_dir = Path(tempfile.mkdtemp(prefix="gf-pp-", dir="/tmp"))  # unix paths are short
    hap = HAProxy(tmp_path_factory.mktemp("haproxy"), certs, sock_dir)
    try:
        hap.start()
        yield hap
    finally:
        hap.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


def send(hap: HAProxy, name: str, *, tls: bool = False, cert: Path | None = None, sni: str | None = None,
         unix_path: Path | None = None, v6: bool = False) -> tuple[bytes, tuple[str, int], Any]:
    """Connect through HAProxy's frontend name, send b"ping\\n"; the bytes the backend saw,
    our address, and the TLS details (version, cipher) when tls."""
    if unix_path is not None:
        raw = socket.socket(socket.AF_UNIX)
        raw.settimeout(10)
        raw.connect(str(unix_path))
        local: tuple[str, int] = ("", 0)
    else:
        raw = socket.create_connection(("::1" if v6 else "127.0.0.1", hap.ports[name]), timeout=10)
        local = raw.getsockname()[:2]
    details = None
    with raw:
        sock: Any = raw
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # HAProxy's certificate is not what is under test
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            if cert is not None:
                ctx.load_cert_chain(str(cert.with_suffix(".pem")), str(cert.with_suffix(".key")))
            sock = ctx.wrap_socket(raw, server_hostname=sni)
            details = (sock.version(), sock.cipher()[0])
        sock.sendall(b"ping\n")
        data = hap.caps[name].next()
    return data, local, details


def check_all_ways(data: bytes, mode: str) -> ProxyHeader:
    """What HAProxy sent parses the same whole, byte by byte and in its version's own mode."""
    header, rest = both(data, "any")
    assert rest in (b"ping\n", b"")
    assert parse(data, mode) == (header, rest)
    return header


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_haproxy_send_proxy_v1(haproxy: HAProxy) -> None:
    data, local, _ = send(haproxy, "v1")
    h = check_all_ways(data, "v1")
    assert data.startswith(b"PROXY TCP4 ")
    assert (h.version, h.family) == (1, "inet")
    assert h.source == local and h.destination == ("127.0.0.1", haproxy.ports["v1"])
    data, local, _ = send(haproxy, "v1_6", v6=True)
    h = check_all_ways(data, "v1")
    assert data.startswith(b"PROXY TCP6 ") and h.family == "inet6"
    assert h.source == local and h.destination == ("::1", haproxy.ports["v1_6"])
    env = h.environ(("127.0.0.1", "1"))
    assert env["REMOTE_ADDR"] == "::1" and env["REMOTE_PORT"] == str(local[1])


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_haproxy_send_proxy_v2_tls(haproxy: HAProxy) -> None:
    """proxy-v2-options ssl,authority,unique-id,crc32c, as the issue names them."""
    data, local, (version, _cipher) = send(haproxy, "v2_tls", tls=True, sni="app.example")
    h = check_all_ways(data, "v2")
    assert (h.version, h.command, h.family, h.transport) == (2, "PROXY", "inet", "stream")
    assert h.source == local and h.destination == ("127.0.0.1", haproxy.ports["v2_tls"])
    assert h.alpn == b"h2" and h.authority == "app.example"
    assert h.unique_id == f"127.0.0.1:{local[1]}".encode()
    assert h.crc32c is not None  # and verified, or the parse would have failed
    assert h.ssl is not None and h.ssl.client_ssl and h.ssl.version == version and not h.ssl.client_cert
    env = h.environ(("127.0.0.1", "9"))
    assert env["wsgi.url_scheme"] == "https" and env["HTTPS"] == "on"
    assert env["SSL_PROTOCOL"] == version and env["SSL_CLIENT_VERIFY"] == "NONE"
    assert env["SSL_TLS_SNI"] == "app.example"
    assert env["greenfork.proxy_protocol"]["unique_id"] == f"127.0.0.1:{local[1]}"
    # tampering with what HAProxy sent is caught by its checksum
    tampered = bytearray(data)
    tampered[h.length - 1] ^= 0x01  # the last byte: "TLSv1.3" becomes "TLSv1.2"
    fails(bytes(tampered[:h.length]), match="CRC32C mismatch")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_haproxy_send_proxy_v2_client_certificate(haproxy: HAProxy, certs: Path) -> None:
    data, local, (version, cipher) = send(haproxy, "v2_full", tls=True, cert=certs / "client",
                                          sni="app.example")
    h = check_all_ways(data, "v2")
    assert h.source == local and h.ssl is not None
    assert h.ssl.client_cert and h.ssl.verify == 0 and h.ssl.cn == "client.example"
    assert (h.ssl.version, h.ssl.cipher) == (version, cipher)
    assert h.ssl.sig_alg and h.ssl.key_alg  # of HAProxy's own certificate: "ecdsa-with-SHA256", "EC256"
    env = h.environ()
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS" and env["SSL_CLIENT_S_DN_CN"] == "client.example"
    assert env["SSL_CIPHER"] == cipher and env["SSL_SERVER_A_KEY"] == h.ssl.key_alg
    # without a certificate: verify says NONE and there is no CN
    data, _, _ = send(haproxy, "v2_full", tls=True)
    h = check_all_ways(data, "v2")
    assert h.ssl is not None and h.ssl.cn is None and h.environ()["SSL_CLIENT_VERIFY"] == "NONE"
    assert h.authority is None  # no SNI sent


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_haproxy_v2_ipv6_unix_and_health_checks(haproxy: HAProxy) -> None:
    data, local, _ = send(haproxy, "v2_6", v6=True)
    h = check_all_ways(data, "v2")
    assert h.family == "inet6" and h.source == local and h.crc32c is not None and h.ssl is None
    # a client on HAProxy's unix socket: v2 LOCAL/UNSPEC, v1 UNKNOWN (the real endpoints stand)
    data, _, _ = send(haproxy, "v2_unix", unix_path=haproxy.socks["v2_unix"])
    h = check_all_ways(data, "v2")
    assert (h.command, h.family, h.source) == ("LOCAL", "unspec", None)
    data, _, _ = send(haproxy, "v1_unix", unix_path=haproxy.socks["v1_unix"])
    h = check_all_ways(data, "v1")
    assert data.startswith(b"PROXY UNKNOWN") and h.source is None
    # HAProxy sending to a unix-socket server
    data, local, _ = send(haproxy, "to_unix")
    h = check_all_ways(data, "v2")
    assert h.source == local
    # check-send-proxy: the health check says LOCAL and sends nothing after the header
    data = haproxy.caps["check"].next()
    h = check_all_ways(data, "v2")
    assert (h.command, h.source, h.destination) == ("LOCAL", None, None)
    assert set(h.environ(("127.0.0.1", "1"))) == {"greenfork.proxy_protocol"}

"""Forwarded headers from trusted proxies: who the client is, and which URL it asked for.

A `Forwarding` (built once per worker from the trust list and the honoured header names)
looks at a request's raw headers and returns the environ changes they imply, or None. Sans-IO
and total: malformed input never raises, it is left unapplied and reported in
`Changes.problems` (for a debug log line and a counter). From a peer that is not trusted
nothing is applied and the headers reach the application as ordinary ``HTTP_`` keys; they
always do, applied or not, so an application can still read them itself.

Hops. Each proxy appends what it saw to the right, so the values are read as hops from the
right: hop 0 is vouched for by the connection's peer, hop 1 by hop 0's client address if that
is trusted, and so on (Kestrel's model; gunicorn applies only its scheme headers). Hop i takes
the i-th entry from the right of each honoured header: X-Forwarded-For (its client address),
-Proto, -Host, -Port, -Prefix, or, when ``forwarded`` is honoured and an RFC 7239 Forwarded
header is present, that element's for=, proto= and host= in place of the first three. The walk
stops at the first hop whose address is not trusted (that address is the client), is
obfuscated (``_hidden``, ``unknown``: the hop's other values apply, the address stays the
nearest known one), is missing, or is garbage (that hop is not applied at all). The outermost
applied hop's value wins for each field.

Applied (only from a trusted peer, only the honoured headers):

  ===================  ====================================================================
  X-Forwarded-For      REMOTE_ADDR (as inet_ntop writes it); REMOTE_PORT from an entry's port
                       (``1.2.3.4:5678``, ``[2001:db8::1]:4711``), else ``""``. Entries are
                       IPv4, IPv6 (bare or in brackets), optionally with a port; several
                       headers combine in order
  X-Forwarded-Proto    wsgi.url_scheme and HTTPS (``on``/``off``); only ``http`` and ``https``
                       (any case), anything else is ignored
  X-Forwarded-Host     HTTP_HOST, SERVER_NAME and SERVER_PORT (the host's port, else the
                       scheme's default); validated like a Host header
  X-Forwarded-Port     SERVER_PORT, and the port in HTTP_HOST (left out when it is the
                       scheme's default); 1-65535, digits only
  X-Forwarded-Prefix   SCRIPT_NAME (replaced; PATH_INFO is untouched): a path starting with
                       ``/``, no ``//``, only RFC 3986 path characters; percent-escapes are
                       decoded as for PATH_INFO (to bytes, then Latin-1) and the result may
                       hold no control characters and no ``.``/``..`` segment; a trailing
                       ``/`` is dropped (``/`` alone is the root, ``""``)
  Forwarded            for= as X-Forwarded-For (quoted IPv6 with port,
                       ``for="[2001:db8::1]:4711"``), proto= and host= as -Proto and -Host;
                       by= and extensions are checked for syntax only. Elements and headers
                       combine in order; a malformed element is a garbage hop
  ===================  ====================================================================

What an applied change replaces is kept, once (a PROXY header may have set the first two
already; the connection's own values win): greenfork.peer_addr and greenfork.peer_port (the
connection's REMOTE_ADDR/REMOTE_PORT), greenfork.original_scheme, greenfork.original_host
(HTTP_HOST, None if there was none), greenfork.original_server_name,
greenfork.original_server_port, greenfork.original_script_name.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from greenfork.master.trust import TrustList
from greenfork.workers.hosts import default_port, parse_host

HONOURABLE: Final = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
                     "x-forwarded-prefix", "forwarded")
# What every common proxy sends and what Kestrel's proxy integration enables: the client's
# address and scheme. Host, Port and Prefix change how URLs are built and which virtual host
# answers, and Forwarded is sent by few proxies: each is an opt-in, once the proxy is known to
# set (not pass through) it.
DEFAULT_HONOURED: Final = ("x-forwarded-for", "x-forwarded-proto")
_FOR, _PROTO, _HOST, _PORT, _PREFIX, _FORWARDED = range(6)
_MAX_HOPS = 32  # hops applied at most: bounds the work a long header can cause
_CACHE_MAX = 1024  # walk outcomes remembered per worker
_MAX_RECOVERIES = 8  # unterminated quotes skipped per Forwarded line before the rest is dropped

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED = re.compile(r'"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*)"')
_UNESCAPE = re.compile(r"\\(.)")
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._\-]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_UNKNOWN = "unknown"
_NAMES: dict[bytes, int] = {}  # raw header name -> index in HONOURABLE, or -1


def parse_honoured(spec: str | Iterable[str]) -> frozenset[str]:
    """The honoured header names from a setting ("x-forwarded-for,forwarded"; "" or "none":
    none), or ValueError naming the unknown one."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = {t.strip().lower() for item in items for t in str(item).split(",") if t.strip()}
    names.discard("none")
    for name in sorted(names):
        if name not in HONOURABLE:
            raise ValueError(f"{name!r} is not a forwarded header greenfork applies; choose from "
                             f"{', '.join(HONOURABLE)} (or none)")
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class Changes:
    """What a request's forwarded headers imply: environ updates and what was ignored."""

    environ: dict[str, Any]
    problems: tuple[str, ...]  # one short line per ignored value, for a debug log and a counter


class _Node:
    """A for= value or an X-Forwarded-For entry."""

    __slots__ = ("addr", "kind", "port")

    def __init__(self, kind: int, addr: str = "", port: str = "") -> None:
        self.kind = kind  # _IP, _OBFUSCATED_NODE or _GARBAGE
        self.addr = addr
        self.port = port


_IP, _OBFUSCATED_NODE, _GARBAGE = 0, 1, 2


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What a walk decided: the outermost value applied for each field (None: none)."""

    addr: _Node | None
    scheme: str | None
    host: str | None
    port: str | None
    prefix: str | None
    problems: tuple[str, ...]


class Forwarding:
    """Forwarded-header handling for one worker: a trust list and the honoured headers."""

    __slots__ = ("_cache", "_on", "honoured", "trust")

    def __init__(self, trust: TrustList, honoured: str | Iterable[str] = DEFAULT_HONOURED) -> None:
        self.trust = trust
        self.honoured = parse_honoured(honoured)
        self._on = tuple(name in self.honoured for name in HONOURABLE)
        self._cache: dict[tuple[tuple[int, bytes], ...], _Outcome] = {}

    def __bool__(self) -> bool:
        """False when nothing can ever be applied: the caller can skip the call altogether."""
        return bool(self.trust) and any(self._on)

    def apply(self, env: dict[str, Any], headers: Sequence[tuple[bytes, bytes]]) -> tuple[str, ...]:
        """changes() for env's REMOTE_ADDR, applied to env; returns the problems."""
        ch = self.changes(headers, env.get("REMOTE_ADDR", ""), env)
        if ch is None:
            return ()
        env.update(ch.environ)
        return ch.problems

    def changes(self, headers: Sequence[tuple[bytes, bytes]], peer: str,
                env: Mapping[str, Any]) -> Changes | None:
        """The environ changes the headers imply for a request from peer (its REMOTE_ADDR;
        "" for a unix socket), or None when there are none to consider (peer not trusted, no
        honoured header). env is read for the values being replaced, not written."""
        if not self.trust.trusts(peer):
            return None
        on = self._on
        found: list[tuple[int, bytes]] = []
        for name, value in headers:
            i = _NAMES.get(name)
            if i is None:
                i = _name_index(name)
            if i >= 0 and on[i]:
                found.append((i, value))
        if not found:
            return None
        # A proxy repeats the same values on each request of a client's connection: the walk's
        # outcome depends on them alone (the peer is trusted and hop 0 is the peer's), so it is
        # remembered, boundedly.
        key = tuple(found)
        outcome = self._cache.get(key)
        if outcome is None:
            outcome = _Walk(self.trust, found).run()
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = outcome
        return Changes(_environ(outcome, env), outcome.problems)


def _name_index(name: bytes) -> int:
    try:
        i = HONOURABLE.index(name.decode("latin-1").lower())
    except ValueError:
        i = -1
    if len(_NAMES) < 1024:
        _NAMES[name] = i
    return i


class _Walk:
    """One request's hop walk (see the module docstring)."""

    def __init__(self, trust: TrustList, found: list[tuple[int, bytes]]) -> None:
        self.trust = trust
        self.problems: list[str] = []
        by_header: list[list[bytes]] = [[], [], [], [], [], []]
        for i, value in found:
            by_header[i].append(value)
        lists: list[list[str]] = [_split(values) for values in by_header[:_FORWARDED]]
        if by_header[_FORWARDED]:
            fors, protos, hosts = self._forwarded(by_header[_FORWARDED])
            lists[_FOR], lists[_PROTO], lists[_HOST] = fors, protos, hosts
        self.lists = lists

    def run(self) -> _Outcome:
        lists = self.lists
        trust = self.trust
        addr: _Node | None = None
        scheme = host = port = prefix = None
        hops = min(max(len(values) for values in lists), _MAX_HOPS)
        for i in range(max(hops, 1)):
            raw_for = _at(lists[_FOR], i)
            node = None if raw_for is None else _node(raw_for, bare_ipv6=True)
            if node is not None and node.kind == _GARBAGE:
                self.problems.append(f"for: {_show(raw_for)} is not an address; the walk stops there")
                break
            value = _at(lists[_PROTO], i)
            if value is not None:
                if value.lower() in ("http", "https"):
                    scheme = value.lower()
                else:
                    self.problems.append(f"proto: {_show(value)} is not http or https")
            value = _at(lists[_HOST], i)
            if value is not None:
                parsed = parse_host(value)
                if parsed is not None and parsed[0]:
                    host = value
                else:
                    self.problems.append(f"host: {_show(value)} is not a valid Host")
            value = _at(lists[_PORT], i)
            if value is not None:
                if value.isascii() and value.isdigit() and len(value) <= 5 and 0 < int(value) <= 65535:
                    port = str(int(value))
                else:
                    self.problems.append(f"port: {_show(value)} is not a port")
            value = _at(lists[_PREFIX], i)
            if value is not None:
                decoded = _prefix(value)
                if decoded is not None:
                    prefix = decoded
                else:
                    self.problems.append(f"prefix: {_show(value)} is not a usable path prefix")
            if node is None or node.kind == _OBFUSCATED_NODE:
                break
            addr = node
            if not trust.trusts(node.addr):
                break
        return _Outcome(addr, scheme, host, port, prefix, tuple(self.problems))

    # ------------------------------------------------------------------ RFC 7239
    def _forwarded(self, lines: list[bytes]) -> tuple[list[str], list[str], list[str]]:
        """for=, proto= and host= of each element, in order. A malformed element gives a
        for= that is garbage (stopping the walk there) and nothing else."""
        fors: list[str] = []
        protos: list[str] = []
        hosts: list[str] = []
        for raw in lines:
            for element in _elements(raw.decode("latin-1")):
                if element is None:
                    self.problems.append("forwarded: a malformed element")
                    fors.append("\0malformed")
                    protos.append("\0none")
                    hosts.append("\0none")
                    continue
                fors.append(element.get("for", "\0none"))
                protos.append(element.get("proto", "\0none"))
                hosts.append(element.get("host", "\0none"))
        # Placeholders keep the columns aligned; _at() reads "\0none" as absent.
        return fors, protos, hosts


def _environ(outcome: _Outcome, env: Mapping[str, Any]) -> dict[str, Any]:
    """The environ updates for an outcome, keeping (once) what they replace."""
    addr, scheme, host, port, prefix = (outcome.addr, outcome.scheme, outcome.host, outcome.port,
                                        outcome.prefix)
    out: dict[str, Any] = {}

    def keep(key: str, value: Any) -> None:
        if key not in env:
            out[key] = value

    if addr is not None:
        keep("greenfork.peer_addr", env.get("REMOTE_ADDR", ""))
        keep("greenfork.peer_port", env.get("REMOTE_PORT", ""))
        out["REMOTE_ADDR"], out["REMOTE_PORT"] = addr.addr, addr.port
    if scheme is not None:
        keep("greenfork.original_scheme", env.get("wsgi.url_scheme", "http"))
        out["wsgi.url_scheme"] = scheme
        out["HTTPS"] = "on" if scheme == "https" else "off"
    final_scheme = scheme or env.get("wsgi.url_scheme", "http")
    if host is not None or port is not None:
        keep("greenfork.original_host", env.get("HTTP_HOST"))
        keep("greenfork.original_server_port", env.get("SERVER_PORT", ""))
    if host is not None:
        keep("greenfork.original_server_name", env.get("SERVER_NAME", ""))
        name, host_port = parse_host(host) or ("", "")
        out["HTTP_HOST"] = host
        out["SERVER_NAME"] = name[1:-1] if name.startswith("[") else name
        out["SERVER_PORT"] = host_port or default_port(final_scheme) or env.get("SERVER_PORT", "")
    if port is not None:
        out["SERVER_PORT"] = port
        current = out.get("HTTP_HOST", env.get("HTTP_HOST"))
        parsed = parse_host(current) if current else None
        if parsed is not None and parsed[0]:
            name = parsed[0]
            out["HTTP_HOST"] = name if port == default_port(final_scheme) else f"{name}:{port}"
    if prefix is not None:
        keep("greenfork.original_script_name", env.get("SCRIPT_NAME", ""))
        out["SCRIPT_NAME"] = prefix
    return out


def _split(values: list[bytes]) -> list[str]:
    """The comma-separated entries of several header lines, in order, with OWS removed."""
    out: list[str] = []
    for value in values:
        out.extend(part.strip(" \t") for part in value.decode("latin-1").split(","))
    return out


def _at(values: list[str], i: int) -> str | None:
    """The i-th value from the right, None when there is none."""
    if i >= len(values):
        return None
    value = values[-1 - i]
    return None if value == "\0none" else value


def _show(value: str | None) -> str:
    text = repr(value)
    return text if len(text) <= 50 else text[:47] + "..."


def _node(text: str, bare_ipv6: bool) -> _Node:
    """An RFC 7239 node (IPv4, "[IPv6]", "unknown" or "_obfuscated", each with an optional
    ":port" or ":_obfport"); with bare_ipv6, also an IPv6 address without brackets (as
    X-Forwarded-For carries it)."""
    port = ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return _Node(_GARBAGE)
        name, rest = text[1:end], text[end + 1:]
        if rest:
            if rest[0] != ":" or not _port_ok(rest[1:]):
                return _Node(_GARBAGE)
            port = rest[1:]
        return _ip(name, port, 6)
    if bare_ipv6 and text.count(":") > 1:
        return _ip(text, "", 6)
    name, colon, port = text.partition(":")
    if colon and not _port_ok(port):
        return _Node(_GARBAGE)
    if name.lower() == _UNKNOWN or _OBFUSCATED.fullmatch(name):
        return _Node(_OBFUSCATED_NODE)
    return _ip(name, port, 4)


def _port_ok(port: str) -> bool:
    if _OBFUSCATED.fullmatch(port):
        return True
    return port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535


def _ip(text: str, port: str, version: int) -> _Node:
    """An address in the form the kernel gives a direct peer (inet_ntop): REMOTE_ADDR reads
    the same however a proxy spelt it ("2001:DB8:0::1" is "2001:db8::1")."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    try:
        # glibc's inet_pton is strict: no leading zeros, no zone, exactly 4 or 8 parts
        addr = socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError, UnicodeEncodeError):
        return _Node(_GARBAGE)
    return _Node(_IP, addr, "" if port.startswith("_") else port)


def _prefix(text: str) -> str | None:
    """An X-Forwarded-Prefix as SCRIPT_NAME, or None when it is not a usable path."""
    if not text.startswith("/") or "//" in text or not _PATH.fullmatch(text):
        return None
    if "%" in text:
        parts = text.split("%")
        if not all(len(p) >= 2 and all(c in "0123456789abcdefABCDEF" for c in p[:2]) for p in parts[1:]):
            return None
        decoded = unquote_to_bytes(text).decode("latin-1")
    else:
        decoded = text
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded) or "//" in decoded:
        return None
    segments = decoded.split("/")
    if "." in segments or ".." in segments:
        return None
    return decoded.rstrip("/")


def _elements(line: str) -> list[dict[str, str] | None]:
    """The forwarded-elements of one Forwarded field line; None for a malformed one.

    Parsed left to right; after a malformed element the parser resumes after the next comma,
    so an element a proxy appended stays readable after a client's garbage. An unterminated
    quote resumes right after the quote (at most _MAX_RECOVERIES times per line, which bounds
    the work); names are case-insensitive and may not repeat within an element."""
    out: list[dict[str, str] | None] = []
    n = len(line)
    pos = 0
    recoveries = 0
    while pos <= n:
        element: dict[str, str] = {}
        i = _ows(line, pos)
        bad_at = -1
        invalid = False
        while i < n and line[i] != ",":
            if line[i] == ";":
                i = _ows(line, i + 1)
                continue
            m = _TOKEN.match(line, i)
            if m is None or m.end() >= n or line[m.end()] != "=":
                bad_at = i
                break
            name = m.group().lower()
            i = m.end() + 1
            if i < n and line[i] == '"':
                q = _QUOTED.match(line, i)
                if q is None:
                    bad_at = i + 1 if recoveries < _MAX_RECOVERIES else n
                    recoveries += 1
                    break
                value = _UNESCAPE.sub(r"\1", q.group(1))
                i = q.end()
            else:
                t = _TOKEN.match(line, i)
                if t is None:
                    bad_at = i
                    break
                value = t.group()
                i = t.end()
            if name in element or not _value_ok(name, value):
                invalid = True  # well-formed, so its end is known: parsing goes on to it
            element[name] = value
            i = _ows(line, i)
            if i < n and line[i] not in ";,":
                bad_at = i
                break
        if bad_at >= 0:
            out.append(None)
            comma = line.find(",", bad_at)
            pos = n + 1 if comma < 0 else comma + 1
            continue
        if invalid:
            out.append(None)
        elif element:  # an empty one ("a=b,,c=d") is skipped, as RFC 9110 5.6.1 asks
            out.append(element)
        pos = i + 1
    return out


def _ows(line: str, i: int) -> int:
    n = len(line)
    while i < n and line[i] in " \t":
        i += 1
    return i


def _value_ok(name: str, value: str) -> bool:
    if name in ("for", "by"):
        return _node(value, bare_ipv6=False).kind != _GARBAGE
    if name == "proto":
        return _SCHEME.fullmatch(value) is not None
    if name == "host":
        parsed = parse_host(value)
        return parsed is not None and bool(parsed[0])
    return True

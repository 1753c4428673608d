"""Allowed hosts (Kestrel's host filtering): is this request's Host one we serve?

Without a check, an application that builds absolute URLs from Host (password-reset links,
redirects, caches keyed on it) can be made to build them for an attacker's name. Patterns:

  =========================  ==============================================================
  ``example.com``            that name, on any port
  ``*.example.com``          any name under example.com (``a.example.com``,
                             ``a.b.example.com``), but not ``example.com`` itself: list both
  ``127.0.0.1``              an IPv4 address, on any port
  ``[::1]``                  an IPv6 address (in brackets, as in a Host); any spelling of the
                             same address matches (``[0:0::1]``)
  ``name:8000``              any of the above with ``:port``: only a Host with that port
  ``*``                      every Host (the same as no list)
  =========================  ==============================================================

Matching ignores case and one trailing dot (``Example.COM.`` is ``example.com``). A pattern
without a port matches every port, including none; one with a port matches only a Host that
carries exactly that port (a client leaves the scheme's default port out, so list
``example.com`` rather than ``example.com:443``). An empty or missing Host (HTTP/1.0) is
refused whenever a list is set, unless allow_empty. Names are ASCII: give an international
name in its ``xn--`` form, as clients send it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

_CACHE_MAX = 1024
# RFC 3986 reg-name: unreserved / pct-encoded / sub-delims
_REG_NAME = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=%]*")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_\-]*[a-z0-9_])?")
_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}


def parse_host(value: str) -> tuple[str, str] | None:
    """A Host value (RFC 9110 7.2: uri-host [":" port]) split as written: the host (an IPv6
    literal keeps its brackets) and the port ("" when absent or empty); None when invalid.
    "" gives ("", "")."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[:end + 1], value[end + 1:]
        inner = host[1:-1]
        if "%" in inner or "[" in inner:
            return None
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return None
        if rest and rest[0] != ":":
            return None
        port = rest[1:]
    else:
        host, _, port = value.partition(":")
        if not _REG_NAME.fullmatch(host) or (not host and port):
            return None
        if "%" in host and not _pct_ok(host):
            return None
    if port and (not port.isascii() or not port.isdigit() or len(port) > 5 or int(port) > 65535):
        return None
    return host, port


def _pct_ok(text: str) -> bool:
    parts = text.split("%")
    return all(len(p) >= 2 and all(c in "0123456789abcdefABCDEF" for c in p[:2]) for p in parts[1:])


def normalize_host(host: str) -> str:
    """The form hosts are compared in: lower case, one trailing dot dropped, IPv6 canonical."""
    if host.startswith("["):
        return f"[{ipaddress.IPv6Address(host[1:-1])}]"
    host = host.lower()
    return host[:-1] if host.endswith(".") else host


def default_port(scheme: str) -> str:
    return _DEFAULT_PORTS.get(scheme, "")


def _pattern(text: str) -> tuple[bool, str, str]:
    """(wildcard, host or suffix, port) of one pattern, or ValueError naming it."""
    raw = text
    if "://" in text or "/" in text:
        raise ValueError(f"{raw!r}: an allowed host is a host name or address, not a URL or path")
    if not text.isascii():
        raise ValueError(f"{raw!r}: give an international name in its ASCII (xn--...) form")
    wildcard = text.startswith("*.")
    if wildcard:
        text = text[2:]
    if "*" in text:
        raise ValueError(f"{raw!r}: '*' stands alone or as the first label ('*.example.com')")
    parsed = parse_host(text)
    if parsed is None or not parsed[0]:
        raise ValueError(f"{raw!r} is not a host pattern (name, IPv4, [IPv6], each with an optional "
                         f":port)")
    host, port = parsed
    if text.endswith(":") and not port:
        raise ValueError(f"{raw!r}: the port after ':' is missing")
    if host.startswith("["):
        if wildcard:
            raise ValueError(f"{raw!r}: a wildcard applies to names, not to addresses")
        return False, normalize_host(host), port
    name = normalize_host(host)
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{raw!r}: {host!r} is not a valid host name (letters, digits, '-', '_' "
                         f"between dots)")
    return wildcard, name, port


class AllowedHosts:
    """A precompiled allowed-hosts list; allows(host) answers from a cache after the first ask."""

    __slots__ = ("_cache", "_exact", "_wild", "allow_all", "allow_empty", "patterns")

    def __init__(self, patterns: str | Iterable[str], allow_empty: bool = False) -> None:
        """patterns: separated by commas, or an iterable of them. An empty list allows every
        host (no filtering). Raises ValueError naming the first bad pattern."""
        items = patterns.split(",") if isinstance(patterns, str) else list(patterns)
        texts = [t.strip() for item in items for t in str(item).split(",") if t.strip()]
        self.patterns = tuple(dict.fromkeys(texts))
        self.allow_all = not texts or "*" in texts
        self.allow_empty = allow_empty
        self._exact: set[tuple[str, str]] = set()
        wild: list[tuple[str, str]] = []
        for text in texts:
            if text == "*":
                continue
            wildcard, host, port = _pattern(text)
            if wildcard:
                wild.append(("." + host, port))
            else:
                self._exact.add((host, port))
        self._wild = tuple(dict.fromkeys(wild))
        self._cache: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"AllowedHosts({','.join(self.patterns)!r})"

    def allows(self, host: str | None) -> bool:
        """Whether a request with this Host (HTTP_HOST, after forwarding; None when absent) is served."""
        if self.allow_all:
            return True
        if not host:
            return self.allow_empty
        hit = self._cache.get(host)
        if hit is not None:
            return hit
        answer = self._decide(host)
        cache = self._cache
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[host] = answer
        return answer

    def _decide(self, value: str) -> bool:
        parsed = parse_host(value)
        if parsed is None or not parsed[0]:
            return False
        host, port = parsed
        if host.startswith(".") or ".." in host:  # an empty label names nothing
            return False
        host = normalize_host(host)
        exact = self._exact
        if (host, "") in exact or (port and (host, port) in exact):
            return True
        return any(host.endswith(suffix) and (not want or want == port) for suffix, want in self._wild)


def validate(patterns: str | Iterable[str]) -> str:
    """For settings validators: the canonical text of an allowed-hosts list, or ValueError."""
    return ",".join(AllowedHosts(patterns).patterns)

"""Bind addresses as the operator writes them, parsed into BindSpec values.

Kestrel-style URLs (``http://127.0.0.1:8000``, ``http://unix:/run/app.sock``, and the same
with ``https://`` for TLS: BindSpec.scheme is then "https") and
gunicorn's shorthand (``127.0.0.1:8000``, ``:8000``, ``unix:app.sock``, ``fd://3``) are
accepted. Every form may end in listener options written as a URL query,
``?proxy-protocol=v2`` (the listener's PROXY protocol mode; the one option today).
Nothing here touches the network or the filesystem: names are resolved and
paths made absolute by ``listeners``, so parsing can run (and fail) before any I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["ANY", "PROXY_MODES", "AddressError", "BindSpec", "format_url", "parse_bind", "parse_proxy_mode"]

ANY = "*"
# gunicorn binds port 8000 when no port is given; a URL without port means the scheme's default
DEFAULT_PORT = 8000
HTTP_PORT = 80
HTTPS_PORT = 443

# "+" is Kestrel's spelling and "::" the IPv6 one: listeners binds all of them dual-stack
_ANY_HOSTS = frozenset({"*", "+", "0.0.0.0", "::"})
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
# a scheme word followed by ":" but no "//" is a typo, not a host called "http"
_BROKEN_SCHEME_RE = re.compile(r"(https?|fd|tcp):(?!//)", re.IGNORECASE)
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")
_IPV4ISH_RE = re.compile(r"[0-9.]+")
_FD_MAX = 2**31 - 1
# Listener options: "?name=value&name=value" at the very end. For a unix path, whose file name
# may hold a "?", only a tail in this shape is read as options (so "unix:/tmp/a?b" stays a path).
_OPTIONS_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*=[^&?#]*(?:&[A-Za-z][A-Za-z0-9_-]*=[^&?#]*)*")
# The PROXY protocol modes (gunicorn's --proxy-protocol): off, or which header versions are
# required. gunicorn spells "any" "auto", and its old boolean form meant the same.
PROXY_MODES = ("off", "v1", "v2", "any")
_PROXY_ALIASES = {"auto": "any", "true": "any", "false": "off", "none": "off"}


class AddressError(ValueError):
    """A bind address that cannot be parsed; the message is a complete sentence naming it."""


@dataclass(frozen=True, slots=True)
class BindSpec:
    raw: str
    kind: Literal["tcp", "unix", "fd"]
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1
    scheme: str = "http"  # "https": the listener speaks TLS (master/tls.py gives its context)
    # ?proxy-protocol=MODE: this listener's PROXY protocol mode; None: --proxy-protocol's
    proxy_protocol: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


def format_url(host: str, port: int, scheme: str = "http") -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def parse_proxy_mode(value: str) -> str:
    """off, v1, v2 or any (also gunicorn's auto, true, false); ValueError otherwise."""
    mode = value.strip().lower()
    mode = _PROXY_ALIASES.get(mode, mode)
    if mode not in PROXY_MODES:
        raise ValueError(f"{value!r} is not a PROXY protocol mode (off, v1, v2 or any)")
    return mode


def parse_bind(text: str) -> BindSpec:
    s = text.strip()
    if not s:
        raise _error(s, "the address is empty")
    body, proxy_mode = _split_options(s)
    spec = _parse_address(text, body)
    if proxy_mode is None:
        return spec
    return dataclasses.replace(spec, proxy_protocol=proxy_mode)


def _split_options(s: str) -> tuple[str, str | None]:
    """The address without its trailing options, and the proxy-protocol option's mode."""
    q = s.rfind("?")
    if q < 0 or not _OPTIONS_RE.fullmatch(s[q + 1:]):
        return s, None
    mode: str | None = None
    for item in s[q + 1:].split("&"):
        name, _, value = item.partition("=")
        if name.lower().replace("_", "-") != "proxy-protocol":
            raise _error(s, f"unknown listener option {name!r} (the options: proxy-protocol=off|v1|v2|any)")
        if mode is not None:
            raise _error(s, f"the option {name!r} is given twice")
        try:
            mode = parse_proxy_mode(value)
        except ValueError as e:
            raise _error(s, str(e)) from None
    return s[:q], mode


def _parse_address(text: str, s: str) -> BindSpec:
    lower = s.lower()
    if lower.startswith("unix:"):
        return _parse_unix(text, s, s[5:])
    m = _SCHEME_RE.fullmatch(s)
    if m is None:
        if _BROKEN_SCHEME_RE.match(s):
            scheme = s.split(":", 1)[0].lower()
            raise _error(s, f"malformed scheme, write '{scheme}://'")
        if s.startswith(("/", "./", "../", "~")):
            raise _error(s, f"this looks like a file path; write 'unix:{s}' to bind a unix socket")
        return _parse_tcp(text, s, s, DEFAULT_PORT)
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme in ("http", "https"):
        if rest.lower().startswith("unix:"):
            return _parse_unix(text, s, rest[5:], scheme)
        return _parse_tcp(text, s, rest, HTTP_PORT if scheme == "http" else HTTPS_PORT, scheme)
    if scheme == "fd":
        return _parse_fd(text, s, rest)
    raise _error(s, f"unknown scheme {scheme!r} (use http://, https://, unix: or fd://)")


def _error(s: str, reason: str) -> AddressError:
    return AddressError(f"Invalid address {s!r}: {reason}")


def _parse_unix(raw: str, s: str, rest: str, scheme: str = "http") -> BindSpec:
    if rest.startswith("//"):
        # unix:///abs is the URL spelling of /abs; with exactly two slashes the first path
        # segment would be a URL host, which no reader expects for a file path
        if not rest.startswith("///"):
            raise _error(s, "two slashes are ambiguous: write unix:/path or unix:///path for absolute paths")
        rest = rest[2:]
    if not rest:
        raise _error(s, "the unix socket path is missing")
    if "\0" in rest:
        raise _error(s, "a unix socket path cannot contain a NUL character")
    return BindSpec(raw=raw, kind="unix", path=rest, scheme=scheme)


def _parse_fd(raw: str, s: str, rest: str) -> BindSpec:
    if not re.fullmatch(r"[0-9]+", rest) or int(rest) > _FD_MAX:
        raise _error(s, f"fd:// needs a non-negative file descriptor number, got {rest!r}")
    return BindSpec(raw=raw, kind="fd", fd=int(rest))


def _parse_tcp(raw: str, s: str, rest: str, default_port: int, scheme: str = "http") -> BindSpec:
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=-1)
    if cut >= 0:
        tail = rest[cut:]
        rest = rest[:cut]
        path = re.split(r"[?#]", tail, maxsplit=1)[0]
        if path not in ("", "/"):
            raise _error(s, "a path is not allowed in a bind address")
        if "?" in tail:
            raise _error(s, "a query is not allowed in a bind address (the one that is, listener "
                            "options, goes last: ?proxy-protocol=MODE)")
        if "#" in tail:
            raise _error(s, "a fragment is not allowed in a bind address")
    if "@" in rest:
        raise _error(s, "user information (user@) is not allowed in a bind address")
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise _error(s, "missing ']' after the IPv6 address")
        host, after = rest[1:end], rest[end + 1 :]
        if after and not after.startswith(":"):
            raise _error(s, f"unexpected {after!r} after ']' (expected ':port')")
        port = _parse_port(s, after[1:]) if after else default_port
        return BindSpec(raw=raw, kind="tcp", host=_ipv6_host(s, host), port=port, scheme=scheme)
    if rest.count(":") >= 2:
        return BindSpec(raw=raw, kind="tcp", host=_bare_ipv6(s, rest), port=default_port, scheme=scheme)
    host, sep, port_text = rest.partition(":")
    port = _parse_port(s, port_text) if sep else default_port
    if not host:
        if not sep:
            raise _error(s, "the host is missing")
        # gunicorn reads ":8000" as every interface
        return BindSpec(raw=raw, kind="tcp", host=ANY, port=port, scheme=scheme)
    return BindSpec(raw=raw, kind="tcp", host=_tcp_host(s, host, bare=not sep), port=port, scheme=scheme)


def _parse_port(s: str, text: str) -> int:
    if not text:
        raise _error(s, "the port is missing after ':'")
    if not re.fullmatch(r"[0-9]+", text):
        raise _error(s, f"the port {text!r} is not a number")
    port = int(text)
    if port > 65535:
        raise _error(s, f"the port {port} is out of range (0-65535)")
    return port


def _tcp_host(s: str, host: str, *, bare: bool) -> str:
    if host in _ANY_HOSTS:
        return ANY
    if _IPV4ISH_RE.fullmatch(host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            if bare and host.isdigit():
                raise _error(s, f"a bare number is not a host; write ':{host}' to use that port") from None
            raise _error(s, f"{host!r} is not a valid IPv4 address") from None
    name = host.lower()
    if len(name) > 253 or not _HOSTNAME_RE.fullmatch(name):
        raise _error(s, f"{host!r} is not a valid host name")
    return name


def _ipv6_host(s: str, host: str) -> str:
    try:
        text = str(ipaddress.IPv6Address(host))
    except ValueError:
        raise _error(s, f"{host!r} is not a valid IPv6 address") from None
    return ANY if text == "::" else text


def _bare_ipv6(s: str, text: str) -> str:
    # "1::2:3" is both an address and [1::2]:3; refuse to guess rather than bind the wrong thing
    head, _, tail = text.rpartition(":")
    if tail.isdigit() and _is_ipv6(head):
        raise _error(s, f"an IPv6 address with a port must use brackets, e.g. '[{head}]:{tail}'")
    if not _is_ipv6(text):
        raise _error(s, f"{text!r} is not a valid IPv6 address (write IPv6 with a port as '[::1]:8000')")
    return _ipv6_host(s, text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True

"""Trust lists: which peers may tell us who the client is (PROXY headers, forwarded headers).

Pure and small: the master validates settings with parse errors from here, the workers ask
`TrustList.trusts(addr)` once per connection or request. Entries:

  ==================  =====================================================================
  ``127.0.0.1``       one IPv4 address
  ``10.0.0.0/8``      an IPv4 network (host bits must be zero: ``10.0.0.1/8`` is refused)
  ``::1``             one IPv6 address (a zone, ``fe80::1%eth0``, is refused: zones are local)
  ``fd00::/8``        an IPv6 network
  ``*``               every peer, unix sockets included
  ``unix``            peers on unix-socket listeners (their REMOTE_ADDR is ``""``)
  ==================  =====================================================================

An IPv4-mapped IPv6 peer (``::ffff:10.1.2.3``, what a dual-stack socket reports for an IPv4
client) is matched against the IPv4 entries as well. Host names are refused: a name would need
DNS at every check, and DNS can be made to answer what an attacker likes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

UNIX_PEER: Final = ""  # the REMOTE_ADDR greenfork gives a peer on a unix socket
_CACHE_MAX = 4096


def _split(spec: str | Iterable[str]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"trust list entries are strings, not {item!r}")
        out.extend(p.strip() for p in item.split(",") if p.strip())
    return out


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One address or CIDR entry, or ValueError naming it."""
    if "%" in entry:
        raise ValueError(f"{entry!r}: a zone (%...) is local to one host; give the address without it")
    text = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        if "/" in text:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                pass
            else:
                raise ValueError(f"{entry!r} has host bits set; did you mean {loose}?") from None
            address, _, prefix = text.partition("/")
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP network: {address!r} is no IP address") from None
            raise ValueError(f"{entry!r} is not an IP network: bad prefix length {prefix!r}") from None
        if any(c.isalpha() for c in text) and ":" not in text:
            raise ValueError(f"{entry!r} is a host name; a trust list takes IP addresses and networks "
                             f"(CIDR), '*' or 'unix'") from None
        raise ValueError(f"{entry!r} is not an IP address or network") from e


class TrustList:
    """A parsed trust list. `trusts(addr)` answers from a per-address cache after the first ask."""

    __slots__ = ("_cache", "_v4", "_v6", "entries", "trust_all", "trust_unix")

    def __init__(self, spec: str | Iterable[str]) -> None:
        """spec: entries separated by commas, or an iterable of them; raises ValueError naming
        the first bad entry."""
        self.entries: tuple[str, ...] = ()
        self.trust_all = False
        self.trust_unix = False
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        entries: list[str] = []
        for entry in _split(spec):
            low = entry.lower()
            if low == "*":
                self.trust_all = True
                entries.append("*")
            elif low == "unix":
                self.trust_unix = True
                entries.append("unix")
            else:
                net = _network(entry)
                mask = int(net.netmask)
                (v4 if net.version == 4 else v6).append((int(net.network_address), mask))
                entries.append(str(net) if net.num_addresses > 1 else str(net.network_address))
        self.entries = tuple(dict.fromkeys(entries))
        self._v4 = tuple(dict.fromkeys(v4))
        self._v6 = tuple(dict.fromkeys(v6))
        self._cache: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"TrustList({','.join(self.entries)!r})"

    def __str__(self) -> str:
        return ",".join(self.entries) or "(nobody)"

    def __bool__(self) -> bool:
        """False when the list trusts nobody: callers skip the whole feature."""
        return bool(self.entries)

    def trusts(self, addr: str) -> bool:
        """Whether a peer with this REMOTE_ADDR-style address is trusted. "" is a unix-socket
        peer. Anything that is not an IP address (garbage from a header) is not trusted."""
        if self.trust_all:
            return True
        hit = self._cache.get(addr)
        if hit is not None:
            return hit
        answer = self._decide(addr)
        cache = self._cache
        if len(cache) >= _CACHE_MAX:
            cache.clear()  # crude, bounded: peers behind one proxy are a handful of addresses
        cache[addr] = answer
        return answer

    def _decide(self, addr: str) -> bool:
        if addr == UNIX_PEER:
            return self.trust_unix
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        if ip.version == 6:
            assert isinstance(ip, ipaddress.IPv6Address)
            if ip.scope_id is not None:
                ip = ipaddress.IPv6Address(addr.partition("%")[0])
            mapped = ip.ipv4_mapped
            if mapped is not None and self._match(int(mapped), self._v4):
                return True
            return self._match(int(ip), self._v6)
        return self._match(int(ip), self._v4)

    @staticmethod
    def _match(value: int, nets: tuple[tuple[int, int], ...]) -> bool:
        return any(value & mask == network for network, mask in nets)


def validate(spec: str | Iterable[str]) -> str:
    """For settings validators: the canonical text of a trust list, or ValueError."""
    return ",".join(TrustList(spec).entries)

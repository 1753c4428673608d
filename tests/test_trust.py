"""master/trust.py: trust lists parse, refuse bad entries by name, and answer like ipaddress does."""

from __future__ import annotations

import ipaddress
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenfork.master.trust import UNIX_PEER, TrustList, validate

EXAMPLES = int(os.environ.get("GREENFORK_FUZZ_EXAMPLES", "5000"))
FUZZ = settings(max_examples=EXAMPLES // 5, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_entries_and_answers() -> None:
    t = TrustList("127.0.0.1, 10.0.0.0/8,::1 , fd00::/8,unix")
    assert t.entries == ("127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8", "unix")
    assert str(t) == "127.0.0.1,10.0.0.0/8,::1,fd00::/8,unix" and bool(t)
    yes = ["127.0.0.1", "10.0.0.0", "10.255.255.255", "::1", "fd00::1", "fdff:ffff::1", UNIX_PEER,
           "::ffff:10.1.2.3", "::ffff:127.0.0.1"]
    no = ["127.0.0.2", "11.0.0.1", "9.255.255.255", "::2", "fe00::1", "::ffff:11.0.0.1", "garbage",
          "unix", "*", "10.0.0.1/8", "2001:db8::1"]
    for _ in range(2):  # the second round answers from the cache
        assert [a for a in yes if not t.trusts(a)] == []
        assert [a for a in no if t.trusts(a)] == []


def test_star_trusts_everyone_and_unix_is_explicit() -> None:
    star = TrustList("*")
    assert star.trust_all and all(star.trusts(a) for a in ("1.2.3.4", "::1", "", "not an address"))
    loop = TrustList(["127.0.0.1", "::1"])
    assert not loop.trusts(UNIX_PEER) and loop.trusts("127.0.0.1")
    assert TrustList("UNIX").trusts(UNIX_PEER) and not TrustList("UNIX").trusts("127.0.0.1")


def test_empty_list_trusts_nobody() -> None:
    for spec in ("", " , ", []):
        t = TrustList(spec)
        assert not t and str(t) == "(nobody)"
        assert not t.trusts("127.0.0.1") and not t.trusts(UNIX_PEER)


def test_brackets_zones_and_duplicates() -> None:
    t = TrustList("[::1],::1,127.0.0.1,127.0.0.1/32,fd00::/8")
    assert t.entries == ("::1", "127.0.0.1", "fd00::/8")
    # a peer with a zone (link-local, from getpeername) matches its address
    assert TrustList("fe80::/10").trusts("fe80::1%eth0")
    assert not TrustList("::1").trusts("fe80::1%eth0")


@pytest.mark.parametrize(("spec", "message"), [
    ("10.0.0.1/8", "'10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?"),
    ("127.0.0.1,localhost", "'localhost' is a host name"),
    ("1.2.3.4/33", "bad prefix length '33'"),
    ("fd00::/129", "bad prefix length '129'"),
    ("nope/3", "'nope' is no IP address"),
    ("1.2.3", "'1.2.3' is not an IP address or network"),
    ("01.2.3.4", "'01.2.3.4' is not an IP address or network"),
    ("fe80::1%eth0", "a zone (%...) is local to one host"),
    ("::1::2", "'::1::2' is not an IP address or network"),
])
def test_bad_entries_are_named(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        TrustList(spec)
    assert message in str(e.value)
    with pytest.raises(ValueError):
        validate(spec)


def test_validate_gives_the_canonical_text() -> None:
    assert validate(" 127.0.0.1 ,::1,UNIX,*") == "127.0.0.1,::1,unix,*"
    with pytest.raises(ValueError, match="entries are strings"):
        TrustList(["127.0.0.1", 5])  # type: ignore[list-item]


def test_cache_is_bounded() -> None:
    t = TrustList("10.0.0.0/8")
    for i in range(10_000):
        t.trusts(f"10.{i // 256 % 256}.{i % 256}.1")
    assert len(t._cache) <= 4096


# ------------------------------------------------------------------ against ipaddress
v4 = st.integers(0, 2**32 - 1).map(lambda n: ipaddress.IPv4Address(n))
v6 = st.integers(0, 2**128 - 1).map(lambda n: ipaddress.IPv6Address(n))


@st.composite
def networks(draw: st.DrawFn) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if draw(st.booleans()):
        return ipaddress.ip_network((draw(v4), draw(st.integers(0, 32))), strict=False)
    return ipaddress.ip_network((draw(v6), draw(st.integers(0, 128))), strict=False)


@FUZZ
@given(st.lists(networks(), max_size=6), st.lists(st.one_of(v4, v6), min_size=1, max_size=8))
def test_answers_match_ipaddress(nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
                                 addrs: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
    # also probe addresses inside each network, which random ones rarely are
    probes = [*addrs, *(n.network_address for n in nets), *(n.broadcast_address for n in nets)]
    t = TrustList([str(n) for n in nets])
    for a in probes:
        mapped = a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) else None
        want = any(a in n for n in nets) or (mapped is not None and any(mapped in n for n in nets))
        assert t.trusts(str(a)) is want, (a, nets)
        assert t.trusts(str(a)) is want  # cached


@FUZZ
@given(st.text(max_size=40))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        t = TrustList(text)
    except ValueError as e:
        assert str(e)
    else:
        assert TrustList(str(t) if t else "").entries == t.entries  # canonical text round-trips
        assert t.trusts(text) in (True, False)

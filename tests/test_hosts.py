"""workers/hosts.py: Host syntax and the allowed-hosts matcher."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenfork.workers.hosts import AllowedHosts, normalize_host, parse_host, validate

EXAMPLES = int(os.environ.get("GREENFORK_FUZZ_EXAMPLES", "5000"))
FUZZ = settings(max_examples=EXAMPLES // 5, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(("value", "parsed"), [
    ("example.com", ("example.com", "")),
    ("Example.COM:8080", ("Example.COM", "8080")),
    ("example.com:", ("example.com", "")),
    ("127.0.0.1:80", ("127.0.0.1", "80")),
    ("[::1]", ("[::1]", "")),
    ("[2001:db8::1]:443", ("[2001:db8::1]", "443")),
    ("", ("", "")),
    ("a-b_c.example.", ("a-b_c.example.", "")),
    ("ex%41mple.com", ("ex%41mple.com", "")),
    ("[::1]:", ("[::1]", "")),  # an empty port is allowed, as in RFC 3986
])
def test_parse_host_valid(value: str, parsed: tuple[str, str]) -> None:
    assert parse_host(value) == parsed


@pytest.mark.parametrize("value", [
    "example.com:80:80", "example.com:http", "example.com:65536", "example.com:123456", ":80",
    "[::1", "[::1]x", "[not-v6]", "[::1%eth0]", "[v1.fe]", "exa mple.com", "exa/mple",
    "a@b", "ex%4", "ex%zzmple", "example.com:٨٠", "[[::1]]", "[::1]:8:8",
])
def test_parse_host_invalid(value: str) -> None:
    assert parse_host(value) is None


def test_normalize() -> None:
    assert normalize_host("Example.COM.") == "example.com"
    assert normalize_host("[0:0:0::1]") == "[::1]"
    assert normalize_host("[2001:DB8::1]") == "[2001:db8::1]"


def test_names_wildcards_ports_and_addresses() -> None:
    a = AllowedHosts("example.com, *.example.com, [::1], 127.0.0.1:8000, api.test:8443")
    allowed = ["example.com", "EXAMPLE.com.", "example.com:1234", "a.example.com", "A.b.Example.com:9",
               "[::1]", "[0::1]:80", "127.0.0.1:8000", "api.test:8443"]
    refused = ["", None, "example.org", "badexample.com", "example.com.evil", ".example.com",
               "a..example.com", "127.0.0.1", "127.0.0.1:8001", "api.test", "api.test:443", "[::2]",
               "example.com:99999", "exa mple.com", "[::1", "example.com..", "sub.api.test:8443"]
    for _ in range(2):  # the second round answers from the cache
        assert [h for h in allowed if not a.allows(h)] == []
        assert [h for h in refused if a.allows(h)] == []


def test_wildcard_with_port() -> None:
    a = AllowedHosts(["*.example.com:8443"])
    assert a.allows("x.example.com:8443")
    assert not a.allows("x.example.com") and not a.allows("x.example.com:443")
    assert not a.allows("example.com:8443")


def test_star_and_empty_list_allow_everything() -> None:
    for spec in ("*", "example.com,*", "", []):
        a = AllowedHosts(spec)
        assert a.allow_all
        assert a.allows("anything.example") and a.allows("") and a.allows(None)


def test_empty_host_refused_unless_allowed() -> None:
    assert not AllowedHosts("example.com").allows("")
    assert not AllowedHosts("example.com").allows(None)
    assert AllowedHosts("example.com", allow_empty=True).allows("")
    assert AllowedHosts("example.com", allow_empty=True).allows(None)


@pytest.mark.parametrize(("pattern", "message"), [
    ("http://example.com", "not a URL or path"),
    ("example.com/app", "not a URL or path"),
    ("ex*.com", "'*' stands alone or as the first label"),
    ("*.*.example.com", "'*' stands alone or as the first label"),
    ("*example.com", "'*' stands alone or as the first label"),
    ("bücher.example", "xn--"),
    ("*.[::1]", "a wildcard applies to names"),
    ("example.com:", "the port after ':' is missing"),
    ("example.com:http", "is not a host pattern"),
    ("exa mple.com", "is not a host pattern"),
    ("-bad.example", "is not a valid host name"),
    ("a..b", "is not a valid host name"),
    ("ex%41mple.com", "is not a valid host name"),
    ("[::1", "is not a host pattern"),
])
def test_bad_patterns_are_named(pattern: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        AllowedHosts(f"good.example,{pattern}")
    assert repr(pattern) in str(e.value) and message in str(e.value)


def test_validate_and_repr() -> None:
    assert validate(" example.com ,*.example.com,example.com") == "example.com,*.example.com"
    assert repr(AllowedHosts("a.test")) == "AllowedHosts('a.test')"


def test_cache_is_bounded() -> None:
    a = AllowedHosts("*.example.com")
    for i in range(5000):
        a.allows(f"h{i}.example.com")
    assert len(a._cache) <= 1024


# ------------------------------------------------------------------ properties
labels = st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,8}[a-z0-9])?", fullmatch=True)
names = st.lists(labels, min_size=1, max_size=4).map(".".join)
ports = st.one_of(st.just(""), st.integers(1, 65535).map(str))


@FUZZ
@given(names, ports, ports, st.booleans(), st.booleans())
def test_listed_names_match_in_any_case_and_trailing_dot(name: str, pattern_port: str, port: str,
                                                         upper: bool, dot: bool) -> None:
    pattern = name + (f":{pattern_port}" if pattern_port else "")
    a = AllowedHosts(pattern)
    host = (name.upper() if upper else name) + ("." if dot else "") + (f":{port}" if port else "")
    assert a.allows(host) is (not pattern_port or pattern_port == port)
    assert not a.allows("x" + host)  # another name
    sub = AllowedHosts("*." + pattern)
    assert not sub.allows(host)  # a wildcard never matches its own apex
    assert sub.allows("www." + host) is (not pattern_port or pattern_port == port)


@FUZZ
@given(st.text(max_size=30))
def test_any_host_value_is_answered(value: str) -> None:
    a = AllowedHosts("example.com,*.example.com,[::1]")
    answer = a.allows(value)
    parsed = parse_host(value)
    if answer:
        assert parsed is not None and parsed[0]
        assert normalize_host(parsed[0]) in ("example.com", "[::1]") or \
            normalize_host(parsed[0]).endswith(".example.com")


@FUZZ
@given(st.text(max_size=30))
def test_any_pattern_parses_or_raises_value_error(text: str) -> None:
    try:
        AllowedHosts(text)
    except ValueError as e:
        assert str(e)

"""workers/forwarded.py: forwarded headers applied only from trusted peers, walked as hops."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenfork.master.trust import TrustList
from greenfork.workers.forwarded import DEFAULT_HONOURED, HONOURABLE, Forwarding, _elements, parse_honoured

EXAMPLES = int(os.environ.get("GREENFORK_FUZZ_EXAMPLES", "5000"))
FUZZ = settings(max_examples=EXAMPLES // 5, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TRUST = TrustList("127.0.0.1,::1,10.0.0.0/8,fd00::/8,unix")
ALL = ",".join(HONOURABLE)
H = list[tuple[bytes, bytes]]


def env_for(peer: str = "127.0.0.1", **extra: Any) -> dict[str, Any]:
    env: dict[str, Any] = {"REMOTE_ADDR": peer, "REMOTE_PORT": "" if peer == "" else "40000",
                           "wsgi.url_scheme": "http", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
                           "SCRIPT_NAME": "", "HTTP_HOST": "backend:8000"}
    env.update(extra)
    return env


def run(headers: H, peer: str = "127.0.0.1", honoured: str = ALL,
        **extra: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    env = env_for(peer, **extra)
    before = dict(env)
    problems = Forwarding(TRUST, honoured).apply(env, headers)
    changed = {k: v for k, v in env.items() if before.get(k, object()) != v}
    return changed, problems


def h(*pairs: str) -> H:
    return [(pairs[i].encode("latin-1"), pairs[i + 1].encode("latin-1")) for i in range(0, len(pairs), 2)]


# ------------------------------------------------------------------ the fast path
def test_untrusted_peer_or_no_header_changes_nothing() -> None:
    f = Forwarding(TRUST, ALL)
    xff = h("X-Forwarded-For", "1.2.3.4", "X-Forwarded-Proto", "https")
    assert f.changes(xff, "203.0.113.9", env_for()) is None  # untrusted
    assert f.changes(xff, "", env_for()) is not None  # unix is in TRUST
    assert Forwarding(TrustList("127.0.0.1"), ALL).changes(xff, "", env_for()) is None
    assert f.changes(h("Host", "a", "Accept", "*/*"), "127.0.0.1", env_for()) is None
    assert f.changes([], "127.0.0.1", env_for()) is None
    # only honoured headers count
    assert Forwarding(TRUST, "x-forwarded-proto").changes(h("X-Forwarded-For", "1.2.3.4"), "127.0.0.1",
                                                          env_for()) is None
    env = env_for("203.0.113.9")
    assert f.apply(env, xff) == () and env == env_for("203.0.113.9")


def test_bool_says_whether_anything_can_apply() -> None:
    assert Forwarding(TRUST)
    assert not Forwarding(TrustList(""))
    assert not Forwarding(TRUST, "none")
    assert not Forwarding(TRUST, "")


def test_repeated_values_answer_from_the_cache_per_request() -> None:
    f = Forwarding(TRUST, ALL)
    headers = h("X-Forwarded-For", "203.0.113.7", "X-Forwarded-Host", "example.com",
                "X-Forwarded-Port", "8443")
    first = f.changes(headers, "127.0.0.1", env_for())
    # the same values on another request: the remembered walk, with this request's originals
    second = f.changes(headers, "::1", env_for("::1", HTTP_HOST="other:1", SERVER_PORT="9"))
    assert first is not None and second is not None and len(f._cache) == 1
    assert first.environ["REMOTE_ADDR"] == second.environ["REMOTE_ADDR"] == "203.0.113.7"
    assert first.environ["greenfork.peer_addr"] == "127.0.0.1"
    assert second.environ["greenfork.peer_addr"] == "::1"
    assert second.environ["greenfork.original_host"] == "other:1"
    assert second.environ["greenfork.original_server_port"] == "9"
    assert second.environ == Forwarding(TRUST, ALL).changes(headers, "::1", env_for(
        "::1", HTTP_HOST="other:1", SERVER_PORT="9")).environ  # type: ignore[union-attr]
    for i in range(3000):
        f.changes(h("X-Forwarded-For", f"203.0.{i // 256}.{i % 256}"), "127.0.0.1", env_for())
    assert len(f._cache) <= 1024


def test_honoured_names() -> None:
    assert parse_honoured("X-Forwarded-For, forwarded") == {"x-forwarded-for", "forwarded"}
    assert parse_honoured(["x-forwarded-host,x-forwarded-port"]) == {"x-forwarded-host", "x-forwarded-port"}
    assert parse_honoured("none") == frozenset() == parse_honoured("")
    assert Forwarding(TRUST).honoured == set(DEFAULT_HONOURED) == {"x-forwarded-for", "x-forwarded-proto"}
    with pytest.raises(ValueError, match="'x-real-ip' is not a forwarded header greenfork applies"):
        parse_honoured("x-forwarded-for,X-Real-IP")


# ------------------------------------------------------------------ X-Forwarded-For
@pytest.mark.parametrize(("xff", "addr", "port"), [
    ("203.0.113.7", "203.0.113.7", ""),
    ("203.0.113.7, 10.0.0.2", "203.0.113.7", ""),  # 10.0.0.2 is a trusted hop
    ("198.51.100.1, 203.0.113.7, 10.0.0.2", "203.0.113.7", ""),  # the first untrusted from the right
    ("10.0.0.3,10.0.0.2", "10.0.0.3", ""),  # all trusted: the leftmost
    ("  203.0.113.7 ,\t10.0.0.2  ", "203.0.113.7", ""),
    ("203.0.113.7:5678", "203.0.113.7", "5678"),
    ("2001:db8::1", "2001:db8::1", ""),
    ("2001:DB8:0:0::1", "2001:db8::1", ""),  # the form a direct peer would have
    ("::ffff:192.0.2.1", "::ffff:192.0.2.1", ""),
    ("[2001:db8::1]", "2001:db8::1", ""),
    ("[2001:db8::1]:4711", "2001:db8::1", "4711"),
    ("garbage, 10.0.0.2", "10.0.0.2", ""),  # garbage stops the walk at the last address reached
    ("1.2.3.4, nonsense", None, None),  # garbage in hop 0: nothing at all
    ("unknown, 10.0.0.2", "10.0.0.2", ""),  # an obfuscated hop stops the walk, keeping the nearest
    ("203.0.113.7, _hidden", None, None),
    ("203.0.113.7, , 10.0.0.2", "10.0.0.2", ""),  # an empty entry is garbage
    ("01.2.3.4", None, None),  # leading zeros are no IPv4 address
    ("1.2.3.4:99999", None, None),
    ("fe80::1%eth0", None, None),
    ("[2001:db8::1]:x", None, None),
])
def test_x_forwarded_for(xff: str, addr: str | None, port: str | None) -> None:
    changed, problems = run(h("X-Forwarded-For", xff))
    if addr is None:
        assert "REMOTE_ADDR" not in changed
    else:
        assert changed["REMOTE_ADDR"] == addr and changed["REMOTE_PORT"] == port
        assert changed["greenfork.peer_addr"] == "127.0.0.1" and changed["greenfork.peer_port"] == "40000"
    garbage = any(w in xff for w in ("garbage", "nonsense", ", ,", "01.", "99999", "%", ":x"))
    assert bool(problems) is garbage, problems


def test_several_x_forwarded_for_headers_combine_in_order() -> None:
    one, _ = run(h("X-Forwarded-For", "198.51.100.1, 203.0.113.7, 10.0.0.2"))
    two, _ = run(h("X-Forwarded-For", "198.51.100.1", "Accept", "*/*",
                   "x-forwarded-for", "203.0.113.7, 10.0.0.2"))
    assert one == two and one["REMOTE_ADDR"] == "203.0.113.7"


def test_peer_addr_set_by_a_proxy_header_is_kept() -> None:
    changed, _ = run(h("X-Forwarded-For", "203.0.113.7"), **{"greenfork.peer_addr": "192.0.2.1",
                                                              "greenfork.peer_port": "1"})
    assert "greenfork.peer_addr" not in changed and changed["REMOTE_ADDR"] == "203.0.113.7"


def test_ipv6_and_unix_peers() -> None:
    assert run(h("X-Forwarded-For", "203.0.113.7"), peer="::1")[0]["REMOTE_ADDR"] == "203.0.113.7"
    changed, _ = run(h("X-Forwarded-For", "203.0.113.7"), peer="")
    assert changed["REMOTE_ADDR"] == "203.0.113.7" and changed["greenfork.peer_addr"] == ""
    assert run(h("X-Forwarded-For", "203.0.113.7, fd00::5"), peer="::ffff:10.9.9.9")[0]["REMOTE_ADDR"] \
        == "203.0.113.7"


# ------------------------------------------------------------------ -Proto, -Host, -Port, -Prefix
def test_proto() -> None:
    changed, problems = run(h("X-Forwarded-Proto", "HTTPS"))
    assert changed == {"wsgi.url_scheme": "https", "HTTPS": "on", "greenfork.original_scheme": "http"}
    assert problems == ()
    changed, _ = run(h("X-Forwarded-Proto", "http"), **{"wsgi.url_scheme": "https", "HTTPS": "on"})
    assert changed == {"wsgi.url_scheme": "http", "HTTPS": "off", "greenfork.original_scheme": "https"}
    for bad in ("ftp", "https, ftp", "", "ws"):
        changed, problems = run(h("X-Forwarded-Proto", bad))
        assert "wsgi.url_scheme" not in changed and len(problems) == 1 and "not http or https" in problems[0]


def test_proto_aligns_with_the_hops() -> None:
    # hop 0 (the peer's) says http, hop 1 (vouched by trusted 10.0.0.2) says https: the outermost wins
    changed, _ = run(h("X-Forwarded-For", "203.0.113.7, 10.0.0.2", "X-Forwarded-Proto", "https, http"))
    assert changed["wsgi.url_scheme"] == "https" and changed["REMOTE_ADDR"] == "203.0.113.7"
    # but a hop an untrusted address vouches for is not applied
    changed, _ = run(h("X-Forwarded-For", "203.0.113.7, 198.51.100.1", "X-Forwarded-Proto", "https, http"))
    assert changed["HTTPS"] == "off" and changed["REMOTE_ADDR"] == "198.51.100.1"  # scheme stays http
    # without X-Forwarded-For only the peer's own hop applies
    changed, _ = run(h("X-Forwarded-Proto", "https, http"))
    assert changed == {"HTTPS": "off", "greenfork.original_scheme": "http"}


def test_host() -> None:
    changed, problems = run(h("X-Forwarded-Host", "Example.com", "X-Forwarded-Proto", "https"))
    assert problems == ()
    assert changed["HTTP_HOST"] == "Example.com" and changed["SERVER_NAME"] == "Example.com"
    assert changed["SERVER_PORT"] == "443"
    assert changed["greenfork.original_host"] == "backend:8000"
    assert changed["greenfork.original_server_name"] == "127.0.0.1"
    assert changed["greenfork.original_server_port"] == "8000"
    changed, _ = run(h("X-Forwarded-Host", "[2001:db8::1]:8443"))
    assert (changed["HTTP_HOST"], changed["SERVER_NAME"], changed["SERVER_PORT"]) == \
        ("[2001:db8::1]:8443", "2001:db8::1", "8443")
    changed, _ = run(h("X-Forwarded-Host", "example.com"))
    assert changed["SERVER_PORT"] == "80"
    env = env_for()
    del env["HTTP_HOST"]
    Forwarding(TRUST, ALL).apply(env, h("X-Forwarded-Host", "example.com"))
    assert env["HTTP_HOST"] == "example.com" and env["greenfork.original_host"] is None
    for bad in ("exa mple.com", "example.com:x", "a/b", "", "[::1", "example.com, "):
        changed, problems = run(h("X-Forwarded-Host", bad))
        assert "HTTP_HOST" not in changed and problems and "not a valid Host" in problems[0], bad


def test_port() -> None:
    changed, _ = run(h("X-Forwarded-Port", "8443"))
    assert changed["SERVER_PORT"] == "8443" and changed["HTTP_HOST"] == "backend:8443"
    changed, _ = run(h("X-Forwarded-Port", "443", "X-Forwarded-Proto", "https",
                       "X-Forwarded-Host", "example.com:8080"))
    assert changed["SERVER_PORT"] == "443" and changed["HTTP_HOST"] == "example.com"  # default: left out
    for bad in ("0", "65536", "80a", "-1", "+80", " ", "8\xb2"):  # "8²".isdigit() is true
        changed, problems = run(h("X-Forwarded-Port", bad))
        assert "SERVER_PORT" not in changed and problems, bad


@pytest.mark.parametrize(("prefix", "script_name"), [
    ("/app", "/app"),
    ("/app/", "/app"),
    ("/", ""),
    ("/a/b%20c", "/a/b c"),
    ("/caf%C3%A9", "/caf\u00c3\u00a9"),  # bytes as Latin-1, like PATH_INFO
    ("/a:b@c", "/a:b@c"),
    ("app", None),
    ("//evil.example", None),
    ("/a//b", None),
    ("http://evil.example/app", None),
    ("/a/../b", None),
    ("/a/./b", None),
    ("/a/%2e%2e/b", None),
    ("/a%2F/b", None),
    ("/a%00", None),
    ("/a%zz", None),
    ("/a b", None),
    ("/a?b", None),
    ("/a#b", None),
    ("/caf\u00e9", None),
])
def test_prefix(prefix: str, script_name: str | None) -> None:
    changed, problems = run(h("X-Forwarded-Prefix", prefix), SCRIPT_NAME="/mount")
    if script_name is None:
        assert "SCRIPT_NAME" not in changed and problems
    else:
        assert changed["SCRIPT_NAME"] == script_name and changed["greenfork.original_script_name"] == "/mount"
        assert problems == ()


def test_only_honoured_headers_apply() -> None:
    headers = h("X-Forwarded-For", "203.0.113.7", "X-Forwarded-Proto", "https", "X-Forwarded-Host", "e.com",
                "X-Forwarded-Port", "8443", "X-Forwarded-Prefix", "/p", "Forwarded", "for=198.51.100.1")
    changed, _ = run(headers, honoured="x-forwarded-for,x-forwarded-proto")
    assert changed["REMOTE_ADDR"] == "203.0.113.7" and changed["wsgi.url_scheme"] == "https"
    assert not {"HTTP_HOST", "SERVER_PORT", "SCRIPT_NAME"} & changed.keys()
    changed, _ = run(headers, honoured="x-forwarded-prefix")
    assert set(changed) == {"SCRIPT_NAME", "greenfork.original_script_name"}
    changed, _ = run(headers, honoured="forwarded,x-forwarded-for")
    assert changed["REMOTE_ADDR"] == "198.51.100.1"  # Forwarded wins over X-Forwarded-For
    # headers with underscores are not the dashed ones (as in the environ)
    assert run(h("X_Forwarded_For", "203.0.113.7"))[0] == {}


def test_docs_name_every_environ_key() -> None:
    env = env_for()
    Forwarding(TRUST, ALL).apply(env, h("X-Forwarded-For", "203.0.113.7", "X-Forwarded-Proto", "https",
                                        "X-Forwarded-Host", "e.com", "X-Forwarded-Port", "8443",
                                        "X-Forwarded-Prefix", "/p"))
    keys = set(env)  # what a request starts with, and every key forwarding adds
    docs = (Path(__file__).resolve().parent.parent / "docs" / "proxies.md").read_text()
    assert len(keys) == 15 and [k for k in keys if f"`{k}`" not in docs] == []
    for name in HONOURABLE:
        assert f"`{name}`" in docs


# ------------------------------------------------------------------ RFC 7239 Forwarded
@pytest.mark.parametrize(("value", "expected"), [
    ('for="[2001:db8:cafe::17]:4711"', ("2001:db8:cafe::17", "4711", None, None)),
    ("for=192.0.2.60;proto=http;by=203.0.113.43", ("192.0.2.60", "", "http", None)),
    ('For="192.0.2.60:80";PROTO=HTTPS;Host="example.com:8443"',
     ("192.0.2.60", "80", "https", "example.com:8443")),
    ("for=192.0.2.43, for=198.51.100.17", ("198.51.100.17", "", None, None)),
    ("for=192.0.2.43, for=10.0.0.2", ("192.0.2.43", "", None, None)),  # walked through 10.0.0.2
    ("for=192.0.2.43;proto=https, for=10.0.0.2;proto=http", ("192.0.2.43", "", "https", None)),
    ("for=_hidden;proto=https", (None, None, "https", None)),  # obfuscated: its hop's proto applies
    ("for=unknown, for=10.0.0.2", ("10.0.0.2", "", None, None)),
    ('for="_gazonk:_port"', (None, None, None, None)),
    ('for="192.0.2.1:_port"', ("192.0.2.1", "", None, None)),  # an obfuscated port is unknown
    ("for = 192.0.2.1", (None, None, None, None)),  # no spaces around "="
    ("for=192.0.2.1;for=192.0.2.2", (None, None, None, None)),  # a repeated parameter
    ("for=2001:db8::1", (None, None, None, None)),  # IPv6 must be quoted
    ('for="2001:db8::1"', (None, None, None, None)),  # ... and bracketed
    ('for="[2001:db8::1"', (None, None, None, None)),
    ("for=192.0.2.1;proto=ftp", ("192.0.2.1", "", None, None)),
    ("for=192.0.2.1;host=", (None, None, None, None)),
    ('for=192.0.2.1;ext="x;y,z"', ("192.0.2.1", "", None, None)),  # extensions are skipped
    ('for=192.0.2.1 ; proto=https ;', ("192.0.2.1", "", "https", None)),
    ("for=192.0.2.1,,", ("192.0.2.1", "", None, None)),  # empty elements are skipped
    ('for="\\1\\9\\2.0.2.1"', ("192.0.2.1", "", None, None)),  # quoted-pairs
    ('for="x, for=198.51.100.1', ("198.51.100.1", "", None, None)),  # a client's stray quote
    ('for="x", for=198.51.100.1', ("198.51.100.1", "", None, None)),
    ("for=198.51.100.1 junk", (None, None, None, None)),
    ('by="[::1]";for=192.0.2.9', ("192.0.2.9", "", None, None)),
    ("by=nonsense-node!;for=192.0.2.9", (None, None, None, None)),
])
def test_forwarded(value: str, expected: tuple[str | None, str | None, str | None, str | None]) -> None:
    addr, port, proto, host = expected
    env = env_for()
    Forwarding(TRUST, "forwarded").apply(env, h("Forwarded", value))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ((addr, port) if addr else ("127.0.0.1", "40000"))
    assert env["wsgi.url_scheme"] == proto or (proto is None and env["wsgi.url_scheme"] == "http")
    assert ("HTTPS" in env) is (proto is not None)
    assert env["HTTP_HOST"] == (host or "backend:8000")


def test_forwarded_several_headers_and_a_clients_garbage() -> None:
    # A proxy that adds its own line keeps it readable whatever the client sent before.
    changed, problems = run(h("Forwarded", 'for="\\', "Forwarded", "for=198.51.100.1;proto=https"),
                            honoured="forwarded")
    assert changed["REMOTE_ADDR"] == "198.51.100.1" and changed["wsgi.url_scheme"] == "https"
    changed, problems = run(h("Forwarded", "for=203.0.113.5", "Forwarded", "for=10.0.0.9, for=10.0.0.2"),
                            honoured="forwarded")
    assert changed["REMOTE_ADDR"] == "203.0.113.5" and problems == ()
    # a malformed element between trusted hops stops the walk there
    changed, problems = run(h("Forwarded", "for=203.0.113.5, for=@@, for=10.0.0.2"), honoured="forwarded")
    assert changed["REMOTE_ADDR"] == "10.0.0.2" and problems


def test_forwarded_elements_parser() -> None:
    assert _elements("") == []
    assert _elements(" , ,") == []
    assert _elements('for=a;x=";,", for=b') == [None, None]  # "a" and "b" are no nodes
    assert _elements('for="_a";x=";,", for=_b') == [{"for": "_a", "x": ";,"}, {"for": "_b"}]
    many = '"' * 41 + ",for=_x"
    assert _elements(many)[-1] in (None, {"for": "_x"})  # bounded, whatever it decides


# ------------------------------------------------------------------ properties
ip4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
# in the form inet_ntop gives, which is what REMOTE_ADDR carries ("::0.1.0.0", not "::1:0")
ip6 = st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(socket.AF_INET6, b))
trusted = st.sampled_from(["10.0.0.1", "10.200.3.4", "127.0.0.1", "::1", "fd00::7"])
untrusted = st.sampled_from(["203.0.113.7", "198.51.100.2", "2001:db8::5", "8.8.8.8"])


@FUZZ
@given(st.lists(st.one_of(trusted, untrusted, ip4, ip6), min_size=1, max_size=8), st.data())
def test_x_forwarded_for_walk_matches_the_model(chain: list[str], data: st.DataObject) -> None:
    # model: from the right, move left while the current address is trusted
    expected = chain[-1]
    for addr in reversed(chain[:-1]):
        if not TRUST.trusts(expected):
            break
        expected = addr
    # any split into header lines, with any OWS
    ows = data.draw(st.lists(st.sampled_from(["", " ", "\t", "  "]), min_size=2 * len(chain),
                             max_size=2 * len(chain)))
    entries = [ows[2 * i] + (f"[{a}]" if ":" in a and data.draw(st.booleans()) else a) + ows[2 * i + 1]
               for i, a in enumerate(chain)]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(chain)), max_size=3))))
    lines = [",".join(entries[a:b]) for a, b in zip([0, *cuts], [*cuts, len(chain)], strict=False) if a < b]
    changed, problems = run([(b"X-Forwarded-For", line.encode()) for line in lines])
    assert problems == ()
    assert changed.get("REMOTE_ADDR", "127.0.0.1") == expected


node = st.one_of(ip4.map(lambda a: (a, a)), ip6.map(lambda a: (f'"[{a}]"', a)),
                 st.tuples(ip4, st.integers(0, 65535)).map(lambda t: (f'"{t[0]}:{t[1]}"', t[0])),
                 st.sampled_from([("_hidden", None), ("unknown", None), ('"_x.y-z"', None)]))


@FUZZ
@given(st.lists(st.tuples(node, st.sampled_from(["", "http", "https", "HTTPS"])), min_size=1, max_size=6))
def test_forwarded_elements_round_trip(elements: list[tuple[tuple[str, str | None], str]]) -> None:
    text = ", ".join(f"for={n[0]}" + (f";proto={p}" if p else "") for n, p in elements)
    parsed = _elements(text)
    assert len(parsed) == len(elements)
    for got, ((wire, _addr), proto) in zip(parsed, elements, strict=True):
        assert got is not None
        assert got["for"] == wire.strip('"')
        assert got.get("proto") == (proto or None)


header_names = st.sampled_from([b"X-Forwarded-For", b"x-forwarded-proto", b"X-FORWARDED-HOST",
                                b"X-Forwarded-Port", b"X-Forwarded-Prefix", b"Forwarded", b"Host",
                                b"X-Other"])
alphabet = b'0123456789abcdef.:[]_,;="\\ \t/%-xunknowhtps'


@FUZZ
@given(st.lists(st.tuples(header_names, st.one_of(
    st.binary(max_size=60),
    st.lists(st.sampled_from(list(alphabet)), max_size=60).map(bytes))), max_size=6),
    st.sampled_from(["127.0.0.1", "10.1.1.1", "203.0.113.9", ""]))
def test_any_headers_never_raise(headers: H, peer: str) -> None:
    env = env_for(peer)
    before = dict(env)
    f = Forwarding(TrustList("127.0.0.1,10.0.0.0/8"), ALL)
    problems = f.apply(env, headers)
    assert all(isinstance(p, str) and p for p in problems)
    if not TrustList("127.0.0.1,10.0.0.0/8").trusts(peer):
        assert env == before and problems == ()
        return
    if env["REMOTE_ADDR"] != peer:
        ipaddress.ip_address(env["REMOTE_ADDR"])  # only ever a real address
        assert env["greenfork.peer_addr"] == peer
    assert env["wsgi.url_scheme"] in ("http", "https")
    assert env["SERVER_PORT"].isdigit()
    assert env["SCRIPT_NAME"] == "" or env["SCRIPT_NAME"].startswith("/")
    assert "//" not in env["SCRIPT_NAME"]

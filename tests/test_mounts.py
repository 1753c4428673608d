"""Port sharing's pure parts (issue 17): prefixes, the matcher, the published URLs, the
hand-off message. The process tests are test_port_sharing.py and test_delegation.py."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenfork.master import config
from greenfork.master.prefixes import (
    Prefix,
    parse_delegates,
    parse_mounts,
    parse_prefix,
    prefix_urls,
    published,
)
from greenfork.master.settings import SettingError
from greenfork.workers.handoff import ACK, MAX_DATA, Decoder, Handoff, HandoffError, encode
from greenfork.workers.mounts import Mounts, PrefixTable, request_host

# ------------------------------------------------------------------ prefixes


@pytest.mark.parametrize(("text", "want"), [
    ("/api", Prefix("", "/api")),
    ("/api/", Prefix("", "/api")),
    ("/api/v1//", None),
    ("/a/b/c", Prefix("", "/a/b/c")),
    ("Example.COM", Prefix("example.com", "")),
    ("example.com.", Prefix("example.com", "")),
    ("example.com/", Prefix("example.com", "")),
    ("api.example.com/v1", Prefix("api.example.com", "/v1")),
    ("*.example.com", Prefix(".example.com", "", True)),
    ("*.Example.com/v1/", Prefix(".example.com", "/v1", True)),
    ("127.0.0.1/x", Prefix("127.0.0.1", "/x")),
    ("[::1]/x", Prefix("[::1]", "/x")),
    ("/caf\u00e9", Prefix("", "/caf\u00e9")),
])
def test_prefixes_parse_and_normalize(text: str, want: Prefix | None) -> None:
    if want is None:
        with pytest.raises(ValueError, match="empty"):
            parse_prefix(text)
    else:
        assert parse_prefix(text) == want
        assert parse_prefix(str(want)) == want  # what str() shows parses back to the same


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("/", "main application"),
    ("http://x/api", "without a scheme"),
    ("example.com:8000/api", "no port"),
    ("/api?x=1", "no query"),
    ("/api#x", "no query"),
    ("/a b", "spaces"),
    ("/a/../b", "'..'"),
    ("/a/./b", "'.'"),
    ("/a%2Fb", "decoded"),
    ("a.*.example.com", "leftmost label"),
    ("*example.com", "leftmost label"),
    ("*.", "leftmost label"),
    ("*.-x.com", "valid host name after"),
    ("ex_ample..com", "not a valid host"),
    ("b\u00fccher.de", "IDNA"),
    ("[::1", "IPv6"),
    ("[zz::1]/a", "not a valid IPv6"),
])
def test_bad_prefixes_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace("?", r"\?")):
        parse_prefix(text)


def test_mount_and_delegate_settings_from_every_layer() -> None:
    s = config.build([
        config.Layer("greenfork.toml", {"mount": {"/api": "api:app", "admin.example.com": "adm"}}),
        config.Layer("env", {"delegate": "/a=unix:/run/a.sock, b.example.com=unix:/run/b.sock"})])
    assert [str(m) for m in s.mount] == ["/api=api:app", "admin.example.com=adm"]
    assert [(str(d.prefix), d.path) for d in s.delegate] == [("/a", "/run/a.sock"),
                                                             ("b.example.com", "/run/b.sock")]
    assert config.show_value(config.BY_NAME["mount"], s.mount) == "('/api=api:app', 'admin.example.com=adm')"
    # values the parser gave are accepted back (Server(settings=...).replace, reloads)
    assert parse_mounts(list(s.mount)) == s.mount and parse_delegates(list(s.delegate)) == s.delegate


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("mount", ["/api"], "expected PREFIX=APP"),
    ("mount", ["/api=not a spec"], "not a Python identifier"),
    ("mount", ["/api=a:b", "/api/=c:d"], "given twice"),
    ("mount", ["/=a:b"], "main application"),
    ("mount", 3, "expected a list"),
    ("delegate", ["/a=/run/a.sock"], "unix:PATH"),
    ("delegate", ["/a=unix:run/a.sock"], "absolute path"),
    ("delegate", ["/a=unix:/" + "x" * 120], "at most 107 bytes"),
    ("delegate", ["/a=unix:/a", "/a=unix:/b"], "given twice"),
])
def test_bad_settings_are_config_errors(key: str, value: Any, reason: str) -> None:
    with pytest.raises(SettingError, match=reason):
        config.build([config.Layer("command line", {key: value})])


# ------------------------------------------------------------------ matching


def table(*prefixes: str) -> PrefixTable[str]:
    return PrefixTable([(parse_prefix(p), p) for p in prefixes])


def hit(t: PrefixTable[str], host: str, path: str) -> tuple[str, str] | None:
    return t.match(host, path)


def test_whole_segments_only() -> None:
    t = table("/api")
    assert hit(t, "", "/api") == ("/api", "/api")
    assert hit(t, "", "/api/") == ("/api", "/api")
    assert hit(t, "", "/api/x/y") == ("/api", "/api")
    for miss in ("/apix", "/ap", "/", "", "*", "/x/api", "//api", "/API"):
        assert hit(t, "", miss) is None, miss


def test_longest_path_wins_then_host_specificity_then_host_only() -> None:
    t = table("/a", "/a/b", "x.example.com/a", "*.example.com/a", "*.b.example.com/a", "x.example.com",
              "*.example.com", "/a/b/c/d")
    assert hit(t, "", "/a/b/c") == ("/a/b", "/a/b")
    assert hit(t, "x.example.com", "/a/b/c") == ("/a/b", "/a/b")  # a longer path beats a host
    assert hit(t, "x.example.com", "/a/z") == ("x.example.com/a", "/a")
    assert hit(t, "y.example.com", "/a/z") == ("*.example.com/a", "/a")
    assert hit(t, "y.b.example.com", "/a") == ("*.b.example.com/a", "/a")  # the longer wildcard
    assert hit(t, "other.org", "/a") == ("/a", "/a")
    assert hit(t, "x.example.com", "/z") == ("x.example.com", "")
    assert hit(t, "deep.y.example.com", "/z") == ("*.example.com", "")
    assert hit(t, "example.com", "/z") is None  # *.example.com needs a label before it
    assert hit(t, "", "/a/b/c/d/e") == ("/a/b/c/d", "/a/b/c/d")
    assert hit(t, "", "/a/b/c/dd") == ("/a/b", "/a/b")


def test_host_only_paths_need_that_host() -> None:
    t = table("x.org/api")
    assert hit(t, "x.org", "/api/1") == ("x.org/api", "/api")
    assert hit(t, "y.org", "/api/1") is None
    assert hit(t, "", "/api/1") is None


def test_request_host() -> None:
    assert request_host("Example.COM:8080") == "example.com"
    assert request_host("example.com.") == "example.com"
    assert request_host("[::1]:80") == "[::1]"
    assert request_host("[::1") == ""
    assert request_host("") == ""


def test_paths_compare_as_wsgi_strings() -> None:
    # PATH_INFO holds UTF-8 bytes as latin-1 characters; a prefix is written as text
    t = table("/caf\u00e9")
    assert hit(t, "", "/caf\u00e9".encode().decode("latin-1") + "/x") == ("/caf\u00e9", "/caf\u00c3\u00a9")


def route(m: Mounts, path: str, host: str = "h", script: str = "") -> tuple[str, str, str, str]:
    env = {"PATH_INFO": path, "SCRIPT_NAME": script, "HTTP_HOST": host}
    app = m.route(env)
    return app.__name__, env.get("greenfork.route", ""), env["SCRIPT_NAME"], env["PATH_INFO"]


def _app(name: str) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return []

    app.__name__ = name
    return app


def test_route_splits_script_name_and_path_info_as_pep3333_says() -> None:
    m = Mounts([(parse_prefix("/api"), _app("api")), (parse_prefix("admin.example.com"), _app("admin")),
                (parse_prefix("*.example.com/v1"), _app("v1"))], _app("main"))
    assert route(m, "/api") == ("api", "/api", "/api", "")
    assert route(m, "/api/") == ("api", "/api", "/api", "/")
    assert route(m, "/api/x/y") == ("api", "/api", "/api", "/x/y")
    assert route(m, "/api/x", script="/base") == ("api", "/api", "/base/api", "/x")
    assert route(m, "/apix") == ("main", "", "", "/apix")
    assert route(m, "/x", host="ADMIN.example.com:80") == ("admin", "admin.example.com", "", "/x")
    assert route(m, "/v1/q", host="a.example.com") == ("v1", "*.example.com/v1", "/v1", "/q")
    assert route(m, "/v1/q", host="example.com") == ("main", "", "", "/v1/q")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["/a", "/a/b", "/b", "/a/b/c", "x.org", "x.org/a", "*.org", "*.org/b/c"]),
                unique=True, min_size=1),
       st.lists(st.sampled_from(["a", "b", "c", "", "ab"]), max_size=5),
       st.sampled_from(["", "x.org", "y.org"]))
def test_matcher_agrees_with_the_rule_written_out(prefixes: list[str], segs: list[str], host: str) -> None:
    """The table's answer is the one the documented precedence gives, found by brute force."""
    path = "/" + "/".join(segs) if segs else ""
    parsed = [parse_prefix(p) for p in prefixes]

    def host_rank(p: Prefix) -> int | None:
        if not p.host:
            return 0
        if p.wildcard:
            return len(p.host) if host.endswith(p.host) and len(host) > len(p.host) else None
        return 1000 if host == p.host else None

    def path_ok(p: Prefix) -> bool:
        return bool(p.path) and (path == p.path or path.startswith(p.path + "/"))

    with_path = [(len(p.path), host_rank(p), str(p)) for p in parsed
                 if path_ok(p) and host_rank(p) is not None]
    host_only = [(host_rank(p), str(p)) for p in parsed if not p.path and p.host and host_rank(p) is not None]
    if with_path:
        want: str | None = max(with_path)[2]  # type: ignore[type-var]
    elif host_only:
        want = max(host_only)[1]  # type: ignore[type-var]
    else:
        want = None
    got = table(*prefixes).match(host, path)
    assert (got[0] if got else None) == want


# ------------------------------------------------------------------ published


def test_prefix_urls_as_http_sys_publishes_them() -> None:
    ps = [parse_prefix(p) for p in ("/api", "admin.example.com", "*.example.com/v1")]
    assert prefix_urls("http://127.0.0.1:8000", ps) == [
        "http://127.0.0.1:8000/api/", "http://admin.example.com:8000/", "http://*.example.com:8000/v1/"]
    assert prefix_urls("https://[::1]:8443", ps[:1]) == ["https://[::1]:8443/api/"]
    assert prefix_urls("unix:/run/app.sock", ps) == ["http://unix:/run/app.sock:/api/"]
    assert prefix_urls("https://unix:/run/app.sock", ps[:1]) == ["https://unix:/run/app.sock:/api/"]
    assert prefix_urls("handoff:/run/app.sock", ps) == []
    mounts = parse_mounts(["/api=a:b"])
    assert published(["http://127.0.0.1:1", "unix:/s"], mounts) == [
        "http://127.0.0.1:1", "unix:/s", "http://127.0.0.1:1/api/", "http://unix:/s:/api/"]
    assert published(["http://127.0.0.1:1"], ()) == ["http://127.0.0.1:1"]


# ------------------------------------------------------------------ the hand-off message


def test_handoff_message_whole_and_one_byte_at_a_time() -> None:
    h = Handoff(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", ("10.0.0.1", "5555"),
                {"HTTPS": "on", "wsgi.url_scheme": "https", "SSL_PROTOCOL": "TLSv1.3"}, "/x")
    msg = encode(h)
    assert Decoder().feed(msg) == h
    d = Decoder()
    got = [d.feed(msg[i:i + 1]) for i in range(len(msg))]
    assert got[:-1] == [None] * (len(msg) - 1) and got[-1] == h
    assert len(ACK) == 1


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda m: b"XXXX" + m[4:], "bad magic"),
    (lambda m: m + b"!", "bytes after"),
    (lambda m: m[:12] + b"x" + m[13:], "not an address and a port"),
    (lambda m: m[:14] + b"\0" + m[15:], "key-value pairs"),
])
def test_bad_handoff_messages(mutate: Any, reason: str) -> None:
    msg = encode(Handoff(b"GET / HTTP/1.1\r\n\r\n", ("a", "1"), {}, "/"))
    with pytest.raises(HandoffError, match=reason):
        Decoder().feed(mutate(msg))


@pytest.mark.parametrize("extra", [{"wsgi.input": "x"}, {"greenfork.worker": "1"}, {"HTTP_HOST": "evil"},
                                   {"REMOTE_ADDR": "1.2.3.4"}, {"PATH_INFO": "/admin"},
                                   {"wsgi.url_scheme": "gopher"}, {"bad key": "x"}])
def test_a_front_may_not_set_what_the_request_decides(extra: dict[str, str]) -> None:
    with pytest.raises(HandoffError):
        Decoder().feed(encode(Handoff(b"x", ("", ""), extra, "/")))


def test_oversized_handoffs_are_refused_before_they_are_read() -> None:
    import struct

    with pytest.raises(HandoffError, match="too large"):
        Decoder().feed(struct.pack(">4sHI", b"GFH1", 10, MAX_DATA + 1))
    with pytest.raises(HandoffError, match="too large"):
        encode(Handoff(b"x" * (MAX_DATA + 1)))


def _framed(header: bytes, data: bytes) -> bytes:
    import struct

    return struct.pack(">4sHI", b"GFH1", len(header), len(data)) + header + data


_fields = st.lists(st.sampled_from(["", "127.0.0.1", "80", "x", "/a", "HTTPS", "on", "wsgi.url_scheme",
                                     "https", "HTTP_HOST", "\u00e9"]) | st.text(max_size=6), max_size=9)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.builds(lambda f, data: _framed("\0".join(f).encode(), data), _fields,
                           st.binary(max_size=30)),
                 st.builds(_framed, st.binary(max_size=40), st.binary(max_size=30))),
       st.integers(1, 50))
def test_decoder_fuzz_never_raises_anything_else(data: bytes, step: int) -> None:
    d = Decoder()
    try:
        for i in range(0, len(data), step):
            got = d.feed(data[i:i + step])
            if got is not None:
                assert isinstance(got.data, bytes) and all(isinstance(x, str) for x in got.peer)
    except HandoffError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("/.*-_:[]%?# aAzZ09\u00e9\x00\t"), max_size=24))
def test_prefix_parser_fuzz_refuses_with_a_reason_or_round_trips(text: str) -> None:
    try:
        p = parse_prefix(text)
    except ValueError as e:
        assert str(e)
        return
    assert parse_prefix(str(p)) == p
    assert p.host or p.path
    assert not p.path or (p.path.startswith("/") and not p.path.endswith("/") and "//" not in p.path)

from __future__ import annotations

import pytest

from greenfork.master.addresses import ANY, AddressError, BindSpec, format_url, parse_bind


def tcp(raw: str, host: str, port: int) -> BindSpec:
    return BindSpec(raw=raw, kind="tcp", host=host, port=port)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1", 8000),
        ("127.0.0.1:8000", "127.0.0.1", 8000),
        ("http://127.0.0.1:8000/", "127.0.0.1", 8000),
        ("127.0.0.1:8000/", "127.0.0.1", 8000),
        (":8000", ANY, 8000),
        ("http://:8000", ANY, 8000),
        ("[::1]:8000", "::1", 8000),
        ("http://[::1]:0", "::1", 0),
        ("http://[0:0:0:0:0:0:0:1]:1", "::1", 1),
        ("http://localhost:5000", "localhost", 5000),
        ("localhost:5000", "localhost", 5000),
        ("localhost", "localhost", 8000),
        ("http://localhost", "localhost", 80),
        ("http://example.internal", "example.internal", 80),
        ("example.internal:9000", "example.internal", 9000),
        ("my_host-1.svc.", "my_host-1.svc.", 8000),
        ("http://*:80", ANY, 80),
        ("http://+:80", ANY, 80),
        ("http://0.0.0.0:80", ANY, 80),
        ("0.0.0.0:80", ANY, 80),
        ("*:0", ANY, 0),
        ("http://[::]:80", ANY, 80),
        ("[::]:80", ANY, 80),
        ("::", ANY, 8000),
        ("::1", "::1", 8000),
        ("fe80::1", "fe80::1", 8000),
        ("2001:db8::1", "2001:db8::1", 8000),
        ("http://::1", "::1", 80),
        ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
        ("http://127.0.0.1:65535", "127.0.0.1", 65535),
    ],
)
def test_tcp_forms(text: str, host: str, port: int) -> None:
    assert parse_bind(text) == tcp(text, host, port)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("HTTP://LocalHost:5000", "localhost", 5000),
        ("Http://Example.Internal", "example.internal", 80),
        ("hTtP://[::1]:1", "::1", 1),
    ],
)
def test_scheme_and_host_are_case_insensitive(text: str, host: str, port: int) -> None:
    assert parse_bind(text) == tcp(text, host, port)


def test_whitespace_is_stripped_but_raw_kept() -> None:
    spec = parse_bind("  http://127.0.0.1:9\n")
    assert (spec.kind, spec.host, spec.port, spec.raw) == ("tcp", "127.0.0.1", 9, "  http://127.0.0.1:9\n")


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("unix:/run/app.sock", "/run/app.sock"),
        ("unix:relative.sock", "relative.sock"),
        ("unix:./dir/x.sock", "./dir/x.sock"),
        ("unix:///run/app.sock", "/run/app.sock"),
        ("UNIX:/run/app.sock", "/run/app.sock"),
        ("http://unix:/run/app.sock", "/run/app.sock"),
        ("HTTP://UNIX:/run/App.sock", "/run/App.sock"),
    ],
)
def test_unix_forms(text: str, path: str) -> None:
    assert parse_bind(text) == BindSpec(raw=text, kind="unix", path=path)


@pytest.mark.parametrize(("text", "fd"), [("fd://3", 3), ("fd://0", 0), ("FD://12", 12)])
def test_fd_forms(text: str, fd: int) -> None:
    assert parse_bind(text) == BindSpec(raw=text, kind="fd", fd=fd)


def test_defaults() -> None:
    spec = parse_bind("127.0.0.1:1")
    assert (spec.scheme, spec.path, spec.fd, spec.tls) == ("http", "", -1, False)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("https://127.0.0.1:8443", "127.0.0.1", 8443),
        ("https://[::1]:0", "::1", 0),
        ("https://localhost:8443", "localhost", 8443),
        ("https://*:443", ANY, 443),
        ("https://+:443", ANY, 443),
        ("https://0.0.0.0:1", ANY, 1),
        ("https://[::]:1", ANY, 1),
        ("https://:8443", ANY, 8443),
        ("https://example.internal", "example.internal", 443),
        ("https://[::1]", "::1", 443),
        ("HTTPS://LocalHost:1/", "localhost", 1),
    ],
)
def test_https_tcp_forms(text: str, host: str, port: int) -> None:
    spec = parse_bind(text)
    assert spec == BindSpec(raw=text, kind="tcp", host=host, port=port, scheme="https")
    assert spec.tls


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("https://unix:/run/app.sock", "/run/app.sock"),
        ("https://unix:///run/app.sock", "/run/app.sock"),
        ("HTTPS://UNIX:rel.sock", "rel.sock"),
    ],
)
def test_https_unix_forms(text: str, path: str) -> None:
    spec = parse_bind(text)
    assert spec == BindSpec(raw=text, kind="unix", path=path, scheme="https")
    assert spec.tls


def test_plain_unix_stays_cleartext() -> None:
    assert not parse_bind("unix:/run/app.sock").tls
    assert not parse_bind("http://unix:/run/app.sock").tls


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", ANY])
def test_https_url_round_trips(host: str) -> None:
    spec = parse_bind(format_url(host, 4321, "https"))
    assert (spec.kind, spec.host, spec.port, spec.scheme) == ("tcp", host, 4321, "https")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the address is empty"),
        ("   ", "the address is empty"),
        ("http://x:1/api", "a path is not allowed in a bind address"),
        ("x:1/api", "a path is not allowed in a bind address"),
        ("http://x:1//", "a path is not allowed in a bind address"),
        ("http://x:1/?a=1", "unknown listener option 'a' (the options: proxy-protocol=off|v1|v2|any)"),
        ("http://x:1?a=1", "unknown listener option 'a' (the options: proxy-protocol=off|v1|v2|any)"),
        ("http://x:1?a", "a query is not allowed in a bind address (the one that is, listener options, "
                         "goes last: ?proxy-protocol=MODE)"),
        ("http://x:1#top", "a fragment is not allowed in a bind address"),
        ("http://user@x:1", "user information (user@) is not allowed in a bind address"),
        ("ftp://x", "unknown scheme 'ftp' (use http://, https://, unix: or fd://)"),
        ("FTP://x", "unknown scheme 'ftp' (use http://, https://, unix: or fd://)"),
        ("tcp://x:1", "unknown scheme 'tcp' (use http://, https://, unix: or fd://)"),
        ("https://x:1/api", "a path is not allowed in a bind address"),
        ("https:8443", "malformed scheme, write 'https://'"),
        ("https://", "the host is missing"),
        ("https://unix:", "the unix socket path is missing"),
        ("https://[::1]:99999", "the port 99999 is out of range (0-65535)"),
        ("http:8000", "malformed scheme, write 'http://'"),
        ("x:65536", "the port 65536 is out of range (0-65535)"),
        ("x:999999999999", "the port 999999999999 is out of range (0-65535)"),
        ("x:abc", "the port 'abc' is not a number"),
        ("x:-1", "the port '-1' is not a number"),
        ("x:+1", "the port '+1' is not a number"),
        ("x:", "the port is missing after ':'"),
        ("[::1]:", "the port is missing after ':'"),
        ("http://", "the host is missing"),
        ("::1:8000", "an IPv6 address with a port must use brackets, e.g. '[::1]:8000'"),
        ("2001:db8::1:80", "an IPv6 address with a port must use brackets, e.g. '[2001:db8::1]:80'"),
        ("fe80::zz", "'fe80::zz' is not a valid IPv6 address (write IPv6 with a port as '[::1]:8000')"),
        ("[zz]:1", "'zz' is not a valid IPv6 address"),
        ("[127.0.0.1]:1", "'127.0.0.1' is not a valid IPv6 address"),
        ("[::1", "missing ']' after the IPv6 address"),
        ("[::1]80", "unexpected '80' after ']' (expected ':port')"),
        ("999.1.1.1:80", "'999.1.1.1' is not a valid IPv4 address"),
        ("1.2.3:80", "'1.2.3' is not a valid IPv4 address"),
        ("ex ample:1", "'ex ample' is not a valid host name"),
        ("-bad.host:1", "'-bad.host' is not a valid host name"),
        ("a..b:1", "'a..b' is not a valid host name"),
        ("8000", "a bare number is not a host; write ':8000' to use that port"),
        ("/run/app.sock", "this looks like a file path; write 'unix:/run/app.sock' to bind a unix socket"),
        ("unix:", "the unix socket path is missing"),
        ("http://unix:", "the unix socket path is missing"),
        (
            "unix://run/app.sock",
            "two slashes are ambiguous: write unix:/path or unix:///path for absolute paths",
        ),
        ("unix:/a\0b", "a unix socket path cannot contain a NUL character"),
        ("fd://", "fd:// needs a non-negative file descriptor number, got ''"),
        ("fd://-1", "fd:// needs a non-negative file descriptor number, got '-1'"),
        ("fd://x", "fd:// needs a non-negative file descriptor number, got 'x'"),
        ("fd://3/", "fd:// needs a non-negative file descriptor number, got '3/'"),
        ("fd://99999999999", "fd:// needs a non-negative file descriptor number, got '99999999999'"),
    ],
)
def test_errors_name_the_address(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_bind(text)
    assert str(info.value) == f"Invalid address {text.strip()!r}: {reason}"


def test_address_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"^Invalid address 'ftp://x': "):
        parse_bind("ftp://x")


@pytest.mark.parametrize(
    ("host", "port", "scheme", "url"),
    [
        ("127.0.0.1", 8000, "http", "http://127.0.0.1:8000"),
        ("::1", 8000, "http", "http://[::1]:8000"),
        ("::", 0, "http", "http://[::]:0"),
        ("localhost", 5000, "http", "http://localhost:5000"),
        (ANY, 80, "http", "http://*:80"),
        ("127.0.0.1", 1, "https", "https://127.0.0.1:1"),
    ],
)
def test_format_url(host: str, port: int, scheme: str, url: str) -> None:
    assert format_url(host, port, scheme) == url


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", ANY, "example.internal", "fe80::1%eth0"])
def test_format_url_round_trips(host: str) -> None:
    spec = parse_bind(format_url(host, 4321))
    assert (spec.kind, spec.host, spec.port) == ("tcp", host, 4321)


# ---------------------------------------------------------------- listener options
@pytest.mark.parametrize(
    ("text", "kind", "where", "mode"),
    [
        ("http://127.0.0.1:8000?proxy-protocol=v2", "tcp", "127.0.0.1", "v2"),
        ("127.0.0.1:8000?proxy-protocol=v1", "tcp", "127.0.0.1", "v1"),
        ("http://127.0.0.1:8000/?proxy-protocol=any", "tcp", "127.0.0.1", "any"),
        (":8000?proxy-protocol=off", "tcp", ANY, "off"),
        ("https://[::1]:0?proxy-protocol=v2", "tcp", "::1", "v2"),
        ("http://localhost?PROXY_PROTOCOL=V1", "tcp", "localhost", "v1"),
        ("unix:/run/app.sock?proxy-protocol=v2", "unix", "/run/app.sock", "v2"),
        ("https://unix:/run/app.sock?proxy-protocol=any", "unix", "/run/app.sock", "any"),
        ("unix:///run/app.sock?proxy_protocol=v1", "unix", "/run/app.sock", "v1"),
        ("fd://3?proxy-protocol=v2", "fd", "3", "v2"),
        # gunicorn's spellings of "any" and "off"
        ("http://127.0.0.1:1?proxy-protocol=auto", "tcp", "127.0.0.1", "any"),
        ("http://127.0.0.1:1?proxy-protocol=true", "tcp", "127.0.0.1", "any"),
        ("http://127.0.0.1:1?proxy-protocol=false", "tcp", "127.0.0.1", "off"),
    ],
)
def test_listener_option_proxy_protocol(text: str, kind: str, where: str, mode: str) -> None:
    spec = parse_bind(text)
    assert spec.raw == text  # the listener is still known by the whole text (HUP keeps it)
    assert spec.kind == kind and spec.proxy_protocol == mode
    assert where == {"tcp": spec.host, "unix": spec.path, "fd": str(spec.fd)}[kind]


def test_without_options_the_mode_is_the_global_one() -> None:
    assert parse_bind("http://127.0.0.1:1").proxy_protocol is None
    assert parse_bind("unix:/run/app.sock").proxy_protocol is None


@pytest.mark.parametrize("path", ["/tmp/a?b", "/tmp/what?", "/tmp/x?y=1=2#"])
def test_a_unix_path_with_a_question_mark_stays_a_path(path: str) -> None:
    spec = parse_bind(f"unix:{path}")
    assert spec.path == path and spec.proxy_protocol is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("http://x:1?proxy-protocol=v3", "'v3' is not a PROXY protocol mode (off, v1, v2 or any)"),
        ("http://x:1?proxy-protocol=", "'' is not a PROXY protocol mode (off, v1, v2 or any)"),
        ("http://x:1?proxy-protocol=v1&proxy-protocol=v2", "the option 'proxy-protocol' is given twice"),
        ("unix:/tmp/x?y=z", "unknown listener option 'y' (the options: proxy-protocol=off|v1|v2|any)"),
        ("fd://3?mode=v2", "unknown listener option 'mode' (the options: proxy-protocol=off|v1|v2|any)"),
    ],
)
def test_bad_listener_options(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_bind(text)
    assert str(info.value) == f"Invalid address {text!r}: {reason}"

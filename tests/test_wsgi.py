"""PEP 3333 pieces without a socket: the environ from a parsed request, wsgi.input
over a body source, start_response, wsgi.errors and wsgi.file_wrapper."""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.validate import validator

import pytest

from greenfork.workers.http1 import Request, RequestParser
from greenfork.workers.wsgi import Errors, FileWrapper, Input, StartResponse, build_environ, header_key

BASE: dict[str, Any] = {"SERVER_NAME": "localhost", "SERVER_PORT": "8000", "wsgi.url_scheme": "http"}


def parse(data: bytes) -> Request:
    conn = RequestParser()
    conn.receive_data(data)
    req = conn.next_event()
    assert type(req) is Request, req
    return req


def environ(data: bytes, script_name: str = "") -> dict[str, Any]:
    return build_environ(BASE, parse(data), script_name)


# ------------------------------------------------------------------ build_environ
def test_request_line_keys() -> None:
    env = environ(b"GET /a%20b%E9?x=%20&y HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/a b\xe9"  # percent-decoded bytes, read as latin-1 (PEP 3333)
    assert env["QUERY_STRING"] == "x=%20&y"  # left encoded
    assert env["RAW_URI"] == env["REQUEST_URI"] == "/a%20b%E9?x=%20&y"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SCRIPT_NAME"] == ""
    assert env["HTTP_HOST"] == "example.com"
    assert env["SERVER_NAME"] == "localhost" and env["wsgi.url_scheme"] == "http"
    assert all(type(v) is str for k, v in env.items() if "." not in k)


def test_base_is_copied_not_changed() -> None:
    base = dict(BASE)
    env = build_environ(base, parse(b"GET / HTTP/1.0\r\nX-A: 1\r\n\r\n"), "")
    assert base == BASE and env is not base
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0" and env["QUERY_STRING"] == ""


def test_non_ascii_query_is_latin1() -> None:
    env = environ(b"GET /%2Fx?q=%C3%A9 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert env["PATH_INFO"] == "//x"
    assert env["QUERY_STRING"] == "q=%C3%A9"


@pytest.mark.parametrize(("path", "script", "path_info"), [
    ("/app/x/y", "/app", "/x/y"),
    ("/app", "/app", ""),
    ("/app/", "/app", "/"),
    ("/apple", "/app", "/apple"),  # "/app" is not a path prefix of "/apple"
    ("/other", "/app", "/other"),
    ("/app%2Fx", "/app", "/x"),
    ("/x", "", "/x"),
])
def test_script_name_prefix(path: str, script: str, path_info: str) -> None:
    env = environ(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path.encode(), script)
    assert env["SCRIPT_NAME"] == script and env["PATH_INFO"] == path_info
    assert env["PATH_INFO"] == "" or env["PATH_INFO"].startswith("/")


def test_content_type_and_length_have_no_http_prefix() -> None:
    env = environ(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc")
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "3"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env


def test_repeated_fields_are_joined() -> None:
    """RFC 9110 5.3 joins with commas; Cookie joins with "; " (RFC 6265 5.4)."""
    env = environ(b"GET / HTTP/1.1\r\nHost: h\r\nAccept: a/b\r\nCookie: a=1\r\naccept: c/d\r\n"
                  b"Cookie: b=2\r\nX-Multi: 1\r\nX-Multi: 2\r\nX-Multi: 3\r\n\r\n")
    assert env["HTTP_ACCEPT"] == "a/b,c/d"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["HTTP_X_MULTI"] == "1,2,3"


def test_underscore_names_are_dropped() -> None:
    env = environ(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nX_Forwarded_For: 6.6.6.6\r\n"
                  b"X_Other: 1\r\n\r\n")
    assert env["HTTP_X_FORWARDED_FOR"] == "1.1.1.1"
    assert "HTTP_X_OTHER" not in env
    assert header_key(b"X_Other") is None
    assert header_key(b"x-dashed-name") == "HTTP_X_DASHED_NAME"
    assert header_key(b"content-type") == "CONTENT_TYPE" and header_key(b"Content-Length") == "CONTENT_LENGTH"


def test_absolute_form_host_wins() -> None:
    """RFC 9112 3.2.2: the authority in an absolute-form target replaces Host."""
    env = environ(b"GET http://real.example:81/p?q HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert env["HTTP_HOST"] == "real.example:81"
    assert env["PATH_INFO"] == "/p" and env["QUERY_STRING"] == "q"
    assert env["RAW_URI"] == "http://real.example:81/p?q"


def test_chunked_has_no_content_length() -> None:
    env = environ(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert "CONTENT_LENGTH" not in env and env["HTTP_TRANSFER_ENCODING"] == "chunked"
    req = Request()  # the parser refuses both, but build_environ must not trust that
    req.target = req.path = b"/"
    req.headers = [(b"Content-Length", b"5")]
    req.chunked = True
    assert "CONTENT_LENGTH" not in build_environ(BASE, req, "")


def test_latin1_header_values() -> None:
    env = environ(b"GET / HTTP/1.1\r\nHost: h\r\nX-Name: caf\xe9\r\n\r\n")
    assert env["HTTP_X_NAME"] == "caf\xe9"


# ------------------------------------------------------------------ wsgi.input
class Pull:
    """A body source: read_body() over given chunks, then b"" once (a call after that is
    a bug); start_body() logs "continue" when asked to (where a protocol would send it)."""

    def __init__(self, *chunks: bytes, log: list[str] | None = None, announce: bool = False) -> None:
        self.chunks = list(chunks)
        self.calls = 0
        self.ended = False
        self.log = log
        self.announce = announce

    def start_body(self, limit: int | None) -> None:
        if self.announce and self.log is not None:
            self.log.append("continue")

    def read_body(self) -> bytes:
        assert not self.ended, "pull() called after it returned b''"
        self.calls += 1
        if self.log is not None:
            self.log.append("pull")
        if self.chunks:
            return self.chunks.pop(0)
        self.ended = True
        return b""


def test_read_all() -> None:
    pull = Pull(b"ab", b"cde", b"f")
    inp = Input(pull)
    assert inp.read() == b"abcdef"
    assert pull.ended and pull.calls == 4
    assert inp.read() == b"" and inp.read(5) == b"" and inp.readline() == b"" and inp.read1() == b""
    assert pull.calls == 4 and inp.consumed == 6 and inp.finished


def test_read_none_is_all() -> None:
    assert Input(Pull(b"ab", b"c")).read(None) == b"abc"


def test_read_sizes_across_chunks() -> None:
    pull = Pull(b"ab", b"cde", b"f")
    inp = Input(pull)
    assert inp.read(0) == b"" and pull.calls == 0
    assert inp.read(4) == b"abcd" and pull.calls == 2
    assert inp.read(1) == b"e" and pull.calls == 2  # served from the buffer
    assert inp.read(5) == b"f" and pull.ended
    assert inp.read(3) == b""
    assert inp.consumed == 6


def test_readline() -> None:
    inp = Input(Pull(b"li", b"ne1\nline2\n", b"ta", b"il"))
    assert inp.readline() == b"line1\n"
    assert inp.readline() == b"line2\n"
    assert inp.readline() == b"tail"
    assert inp.readline() == b""


def test_readline_with_size() -> None:
    inp = Input(Pull(b"line1\nli", b"ne2\n"))
    assert inp.readline(3) == b"lin"
    assert inp.readline(-1) == b"e1\n"
    assert inp.readline(10) == b"line2\n"
    assert inp.readline(0) == b""
    assert inp.readline(None) == b""


def test_readline_size_waits_only_for_what_it_needs() -> None:
    pull = Pull(b"abc", b"def\n")
    inp = Input(pull)
    assert inp.readline(2) == b"ab" and pull.calls == 1
    assert inp.readline(1) == b"c" and pull.calls == 1


def test_readlines() -> None:
    lines = [b"12345\n", b"67890\n", b"abcde\n", b"end"]
    assert Input(Pull(b"".join(lines))).readlines() == lines
    inp = Input(Pull(*lines))
    assert inp.readlines(7) == lines[:2]  # stop once hint bytes are read
    assert inp.readlines(1) == lines[2:3]
    assert inp.readlines(0) == lines[3:]
    assert inp.readlines() == []


def test_iteration() -> None:
    inp = Input(Pull(b"a\nb", b"\n", b"c"))
    assert iter(inp) is inp
    assert list(inp) == [b"a\n", b"b\n", b"c"]
    assert list(inp) == []


def test_read1() -> None:
    pull = Pull(b"abc", b"def")
    inp = Input(pull)
    assert inp.read1() == b"abc" and pull.calls == 1  # one pull at most
    assert inp.read1(2) == b"de" and pull.calls == 2
    assert inp.read1() == b"f" and pull.calls == 2
    assert inp.read1() == b"" and pull.ended
    assert inp.read1(5) == b"" and pull.calls == 3


def test_on_first_read_once_before_first_pull() -> None:
    log: list[str] = []
    pull = Pull(b"ab", b"cd", log=log, announce=True)
    inp = Input(pull)
    assert inp.read(0) == b"" and log == []  # nothing asked for: no 100 Continue yet
    assert inp.read(1) == b"a"
    assert log == ["continue", "pull"]
    assert inp.read() == b"bcd"
    assert log == ["continue", "pull", "pull", "pull"]


def test_on_first_read_with_empty_body() -> None:
    log: list[str] = []
    inp = Input(Pull(log=log, announce=True))
    assert inp.readline() == b""
    assert log == ["continue", "pull"]
    assert inp.read() == b"" and log == ["continue", "pull"]


def test_drain() -> None:
    pull = Pull(b"abc", b"defg", b"hij")
    inp = Input(pull)
    assert inp.drain(10) and pull.ended and inp.finished  # exactly the limit fits

    pull = Pull(b"abc", b"defg", b"hij")
    inp = Input(pull)
    assert not inp.drain(9)
    assert not pull.ended and not inp.finished  # gave up: the connection will be closed

    pull = Pull(b"abc", b"defg", b"hij")
    inp = Input(pull)
    assert inp.read(2) == b"ab"
    assert inp.drain(8) and pull.ended  # counts what was buffered but unread, not what was read


def test_drain_when_already_done() -> None:
    pull = Pull(b"abc")
    inp = Input(pull)
    assert inp.read() == b"abc"
    assert inp.drain(0) and pull.calls == 2


def test_finished() -> None:
    inp = Input(Pull(b"abc"))
    assert not inp.finished
    assert inp.read(3) == b"abc"
    assert not inp.finished  # the end has not been seen yet
    assert inp.read(1) == b""
    assert inp.finished


# ------------------------------------------------------------------ start_response
class Sink:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.sent = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def head_sent(self) -> bool:
        return self.sent


def writer() -> tuple[StartResponse, list[bytes]]:
    sink = Sink()
    return StartResponse(sink), sink.out


def test_start_response_returns_write() -> None:
    sr, out = writer()
    write = sr("200 OK", [("Content-Type", "text/plain")])
    write(b"x")
    assert out == [b"x"]
    assert sr.status == "200 OK" and sr.headers == [("Content-Type", "text/plain")]


def test_start_response_twice_without_exc_info() -> None:
    sr, _ = writer()
    sr("200 OK", [])
    with pytest.raises(AssertionError):
        sr("500 Internal Server Error", [])
    assert sr.status == "200 OK"


def error_info() -> Any:
    try:
        raise KeyError("boom")
    except KeyError:
        return sys.exc_info()


def test_exc_info_before_head_sent_replaces() -> None:
    sr, _ = writer()
    sr("200 OK", [("Content-Type", "text/html")])
    sr("500 Internal Server Error", [("Content-Type", "text/plain")], error_info())
    assert sr.status == "500 Internal Server Error" and sr.headers == [("Content-Type", "text/plain")]


def test_exc_info_first_call_is_allowed() -> None:
    sr, _ = writer()
    sr("500 Internal Server Error", [], error_info())
    assert sr.status == "500 Internal Server Error"


def test_exc_info_after_head_sent_reraises() -> None:
    sr, _ = writer()
    sr("200 OK", [])
    sr.sink.sent = True  # type: ignore[attr-defined]
    info = error_info()
    with pytest.raises(KeyError) as caught:
        sr("500 Internal Server Error", [], info)
    assert caught.value is info[1]
    assert caught.value.__traceback__ is not None
    assert sr.status == "200 OK"


@pytest.mark.parametrize("status", ["200", 200, "OK 200", "20 OK", "200OK", "2000 OK", b"200 OK", ""])
def test_bad_status(status: Any) -> None:
    sr, _ = writer()
    with pytest.raises(ValueError):
        sr(status, [])
    assert sr.status is None


@pytest.mark.parametrize("headers", [
    [["Content-Type", "text/plain"]],
    [("Content-Type",)],
    [("Content-Type", "text/plain", "x")],
    [("Content-Length", 5)],
    [(b"Content-Type", "text/plain")],
    [("Content-Type", b"text/plain")],
    ["Content-Type: text/plain"],
])
def test_bad_header_types(headers: Any) -> None:
    sr, _ = writer()
    with pytest.raises(TypeError):
        sr("200 OK", headers)


@pytest.mark.parametrize("header", [("X-A", "a\nb"), ("X-A", "a\r\nInjected: 1"), ("X-A", "a\rb"),
                                    ("X-A\n", "v"), ("X-A: b", "v")])
def test_header_injection(header: tuple[str, str]) -> None:
    sr, _ = writer()
    with pytest.raises(ValueError):
        sr("200 OK", [header])
    assert sr.status is None


# ------------------------------------------------------------------ wsgi.errors
def test_errors_lines() -> None:
    lines: list[str] = []
    err = Errors(lines.append)
    assert err.write("par") == 3
    err.write("tial")
    assert lines == []
    err.write(" line\nnext\nand ")
    assert lines == ["partial line", "next"]
    err.writelines(["more", "\n"])
    assert lines == ["partial line", "next", "and more"]
    err.write("rest")
    err.flush()
    assert lines[-1] == "rest"
    err.flush()
    assert lines == ["partial line", "next", "and more", "rest"]  # nothing left to flush


# ------------------------------------------------------------------ wsgi.file_wrapper
def test_file_wrapper() -> None:
    f = io.BytesIO(b"0123456789")
    fw = FileWrapper(f, 4)
    assert list(fw) == [b"0123", b"4567", b"89"]
    assert fw.filelike is f and fw.blksize == 4
    fw.close()
    assert f.closed


def test_file_wrapper_default_block() -> None:
    assert list(FileWrapper(io.BytesIO(b"x" * 70000))) == [b"x" * 65536, b"x" * (70000 - 65536)]


# ------------------------------------------------------------------ the whole, under wsgiref.validate
def test_validator_accepts_our_environ_and_start_response() -> None:
    body = b"name=value&other=1"
    data = b"POST /app/submit?x=1 HTTP/1.1\r\nHost: example.com\r\n"
    data += b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n" % len(body)
    data += b"Cookie: a=1\r\nCookie: b=2\r\n\r\n" + body
    conn = RequestParser()
    conn.receive_data(data[:60])
    conn.receive_data(data[60:])
    req = conn.next_event()
    assert type(req) is Request

    class Source:
        def start_body(self, limit: int | None) -> None:
            assert conn.set_body_limit(limit) is None

        def read_body(self) -> bytes:
            ev = conn.next_event()
            return ev if type(ev) is bytes else b""

    pull = Source()

    base = {"wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
            "SERVER_NAME": "localhost", "SERVER_PORT": "8000"}
    env = build_environ(base, req, "/app")
    env["wsgi.input"] = Input(pull)
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen["body"] = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        seen["rest"] = environ["wsgi.input"].read(10)
        seen["path"] = (environ["SCRIPT_NAME"], environ["PATH_INFO"], environ["QUERY_STRING"])
        seen["cookie"] = environ["HTTP_COOKIE"]
        answer = b"got " + seen["body"]
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(answer)))]
        write = start_response("200 OK", headers)
        write(b"")
        return [answer]

    sink = Sink()
    out = sink.out
    sr = StartResponse(sink)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = validator(app)(env, sr)  # type: ignore[arg-type]  # typeshed also admits (None, None, None)
        chunks = list(result)
        result.close()  # type: ignore[attr-defined]
    assert chunks == [b"got " + body]
    assert seen == {"body": body, "rest": b"", "path": ("/app", "/submit", "x=1"), "cookie": "a=1; b=2"}
    assert sr.status == "200 OK" and ("Content-Length", "22") in sr.headers
    assert out == [b""]


def test_a_header_checked_once_does_not_excuse_a_bad_one() -> None:
    """start_response remembers good header items; a bad one after them still raises."""
    good = ("X-A", "fine")
    for _ in range(2):
        sr, _ = writer()
        sr("200 OK", [good])
    sr, _ = writer()
    with pytest.raises(ValueError):
        sr("200 OK", [good, ("X-A", "bad\r\nInjected: 1")])
    sr, _ = writer()
    with pytest.raises(TypeError):
        sr("200 OK", [good, ("X-B", ["unhashable"])])  # type: ignore[list-item]

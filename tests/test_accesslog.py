"""Access-log formats: atoms, escaping, JSON; and the real log of a running server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from greenfork.master.logformat import COMBINED, Record, compile_format, escape, json_line
from greenfork.workers.accesslog import AccessLog
from tests.procs import Launcher, http_get, wait_for

ENV = {"REQUEST_METHOD": "GET", "RAW_URI": "/p?q=1", "PATH_INFO": "/p", "QUERY_STRING": "q=1",
       "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.0.0.1", "HTTP_USER_AGENT": 'ua "x"\n',
       "HTTP_X_REQUEST_ID": "abc", "CONTENT_TYPE": "text/plain"}


def line(fmt: str, **kw: object) -> str:
    log = AccessLog("/dev/null", fmt)
    rec = Record(ENV, kw.get("status", 200), [("Content-Type", "text/html"), ("X-Cache", "HIT")],  # type: ignore[arg-type]
                 kw.get("body", 1234), kw.get("duration", 0.0125))  # type: ignore[arg-type]
    return log.format(rec)


def test_combined_default() -> None:
    out = line(COMBINED)
    assert out.startswith("10.0.0.1 - - [")
    assert out.endswith('"GET /p?q=1 HTTP/1.1" 200 1234 "-" "ua \\"x\\"\\x0a"')


@pytest.mark.parametrize(("fmt", "want"), [
    ("%(m)s %(U)s %(q)s %(H)s", "GET /p q=1 HTTP/1.1"),
    ("%(s)s %(B)s %(b)s", "200 1234 1234"),
    ("%(T)s %(M)s %(D)s %(L)s", "0 12 12500 0.012500"),
    ("%({x-request-id}i)s %({content-type}i)s %({x-cache}o)s %({missing}o)s", "abc text/plain HIT -"),
    ("%({remote_addr}e)s", "10.0.0.1"),
])
def test_atoms(fmt: str, want: str) -> None:
    assert line(fmt) == want


def test_b_is_dash_for_an_empty_body_and_p_is_the_pid() -> None:
    assert line("%(b)s %(B)s", body=0) == "- 0"
    assert line("%(p)s") == f"<{os.getpid()}>"


@pytest.mark.parametrize("bad", ["%(zz)s", "%(h)s %(", "%({x}q)s"])
def test_unknown_atoms_and_bad_formats_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        compile_format(bad)


def test_escape_control_bytes_and_quotes() -> None:
    assert escape('a"b\\c\x00\x1b\x7f') == 'a\\"b\\\\c\\x00\\x1b\\x7f'


def test_json_lines_escape_everything() -> None:
    out = json.loads(json_line(Record(ENV, 404, [], 0, 0.5)))
    assert out["status"] == 404 and out["user_agent"] == 'ua "x"\n' and out["duration_ms"] == 500.0
    assert "\n" not in json_line(Record(ENV, 404, [], 0, 0.5))


def test_server_writes_json_access_log(launcher: Launcher, tmp_path: Path) -> None:
    log = tmp_path / "access.json"
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "--access-logfile", str(log),
                        "--access-logformat", "json"], workers=2)
    for _ in range(3):
        http_get(g.url(), "/pid", headers={"User-Agent": "t\"q"})
    lines = wait_for(lambda: (ls := log.read_text().splitlines()) and len(ls) == 3 and ls, 5)
    records = [json.loads(x) for x in lines]
    assert [r["status"] for r in records] == [200, 200, 200]
    assert all(r["path"] == "/pid" and r["bytes"] > 0 and r["user_agent"] == "t\"q" for r in records)


def test_bad_format_is_a_config_error(launcher: Launcher) -> None:
    g = launcher.spawn(["--access-logformat", "%(nope)s"], addresses_file=False)
    assert g.wait(20) == 2
    assert "unknown access log atom %(nope)s" in g.log()

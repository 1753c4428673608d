"""gunicorn's configuration read as gunicorn reads it (issue 16): the table against gunicorn's
own settings, Python config files, GUNICORN_CMD_ARGS, gunicorn's flags, the precedence of the
layers, app factories with literal arguments, hook values and the objects hooks receive."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from greenfork.master import apploader, cli, config, gunicornconf, gunicornmap, hooks, hookspec
from greenfork.master.records import Worker
from greenfork.master.settings import BY_NAME, SettingError, Settings, defaults

gconfig = pytest.importorskip("gunicorn.config")

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"


def resolve(tmp: Path, argv: list[str] | None = None, env: dict[str, str] | None = None) -> config.Resolved:
    ns, values = cli.parse_args(argv or [])
    return config.resolve_all(values, env or {}, config=ns.config, profile=ns.profile, cwd=str(tmp),
                              build_parser=cli.build_parser)


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ the table


def test_the_table_has_every_gunicorn_setting_with_its_flags() -> None:
    theirs = {s.name: s for s in gconfig.KNOWN_SETTINGS}
    ours = gunicornmap.BY_GUNICORN_NAME
    assert set(ours) == set(theirs), f"missing {set(theirs) - set(ours)}, unknown {set(ours) - set(theirs)}"
    actions = {None: "store", "store_true": "store_true", "append": "append", "store_const": "store_const"}
    for name, s in theirs.items():
        g = ours[name]
        assert g.flags == tuple(s.cli or ()), name
        want = "optional" if s.nargs == "?" else actions[s.action]
        assert g.action == want, name
        if g.action in ("store_const", "optional"):
            assert g.const == s.const, name


def test_the_table_knows_gunicorn_defaults() -> None:
    env_dependent = {"chdir", "user", "group", "workers", "bind", "forwarded_allow_ips", "control_socket",
                     "syslog_addr", "cert_reqs", "ssl_version", "config", "default_proc_name"}
    for s in gconfig.KNOWN_SETTINGS:
        g = gunicornmap.BY_GUNICORN_NAME[s.name]
        if g.kind == gunicornmap.HOOK or s.name in env_dependent or callable(s.default):
            continue
        theirs = s.default
        if isinstance(theirs, str) and g.value in (gunicornmap.g_int, gunicornmap.g_auto_int):
            theirs = g.value(theirs)
        assert g.default == theirs or (g.value(g.default) if g.default is not None else None) == \
            s.validator(s.default), s.name


def test_every_mapped_target_is_a_greenfork_setting() -> None:
    for g in gunicornmap.TABLE:
        if g.kind in (gunicornmap.SAME, gunicornmap.HOOK) or (g.kind == gunicornmap.CONVERT and g.to):
            assert g.to in BY_NAME, g.name
        if g.kind == gunicornmap.WARN:
            assert g.note, g.name


def test_hooks_match_gunicorn_signatures() -> None:
    for h in hookspec.HOOK_DEFS:
        setting = next(s for s in gconfig.KNOWN_SETTINGS if s.name == h.name)
        default = setting.default
        import inspect

        assert len(inspect.signature(default).parameters) == h.arities[0], h.name


# ------------------------------------------------------------------ Python config files


def test_a_python_config_is_read_as_gunicorn_reads_it(tmp_path: Path) -> None:
    write(tmp_path, "gunicorn.conf.py", """
import multiprocessing
import os

bind = ["127.0.0.1:9001", "unix:///tmp/gf-x.sock", "tcp://[::1]:9002"]
workers = 3
worker_class = "gevent"
keepalive = 7
timeout = 45
graceful_timeout = 12
max_requests = 100
max_requests_jitter = 10
limit_request_line = 4094
limit_request_fields = 50
raw_env = ["A=1", "B=two=2"]
umask = 0o027
user = 65534
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s'
loglevel = "WARNING"
proc_name = "shop"
preload_app = True
reload_extra_files = ["templates/*.html"]
cert_reqs = 2
max_worker_memory = "1G"     # greenfork's own name works too
helper = os.path.join("a", "b")  # not a setting: ignored
""")
    r = resolve(tmp_path)
    s = r.settings
    assert s.bind == ("127.0.0.1:9001", "unix:/tmp/gf-x.sock", "[::1]:9002")
    assert (s.workers, s.keep_alive, s.timeout, s.graceful_timeout) == (3, 7.0, 45.0, 12.0)
    assert (s.max_requests, s.max_requests_jitter) == (100, 10)
    assert s.max_request_line_size == 4096 and s.max_request_header_count == 50
    assert s.env == ("A=1", "B=two=2")
    assert s.unix_socket_mode == 0o750 and s.umask is None  # gunicorn's umask is the sockets'
    assert s.user == "65534"
    assert (s.access_logfile, s.access_logformat, s.log_level) == ("-", '%(h)s "%(r)s" %(s)s', "warning")
    assert (s.proc_name, s.preload, s.reload_extra_file, s.cert_reqs) == \
        ("shop", True, ("templates/*.html",), "required")
    assert s.max_worker_memory == 1 << 30
    assert s.source_of("keep_alive") == "gunicorn.conf.py (keepalive)"
    assert s.source_of("max_worker_memory") == "gunicorn.conf.py"
    assert r.warnings == [] and r.notes == []


def test_values_greenfork_does_not_use_are_warned_once_each_and_defaults_are_quiet(tmp_path: Path) -> None:
    write(tmp_path, "gunicorn.conf.py", """
threads = 1
spew = False
statsd_host = None
worker_tmp_dir = None
tmp_upload_dir = None
sendfile = None
initgroups = True
# what gunicorn's example_config.py sets, at its defaults
backlog = 2048
worker_connections = 1000
daemon = False
pidfile = None
umask = 0
user = None
group = None
errorlog = "-"
proc_name = None
""")
    r = resolve(tmp_path)
    assert r.warnings == [] and r.notes == []
    write(tmp_path, "gunicorn.conf.py", """
threads = 8
statsd_host = "localhost:8125"
reuse_port = True
logconfig_dict = {"version": 1}
dirty_workers = 2
permit_obsolete_folding = True
worker = 2
""")
    r = resolve(tmp_path)
    joined = "\n".join(r.warnings)
    assert len(r.warnings) == 7, joined
    assert "gunicorn.conf.py: threads = 8: greenfork runs each request in its own greenlet" in joined
    assert "gunicorn.conf.py: statsd_host = 'localhost:8125' is ignored: greenfork has no StatsD" in joined
    assert "reuse_port = True is ignored" in joined
    for name in ("logconfig_dict = {'version': 1} is ignored", "dirty_workers = 2 is ignored",
                 "permit_obsolete_folding = True is ignored: greenfork's HTTP/1.1 parser"):
        assert name in joined
    assert "worker is not a setting and is ignored (did you mean workers?)" in joined


def test_the_kind_of_config_file_is_told_by_extension_then_content(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", "workers = 2\n")
    write(tmp_path, "a.py", "workers = 2\n")
    write(tmp_path, "plain", 'workers = 2\nbind = ["127.0.0.1:0"]\n')  # TOML with greenfork's names
    write(tmp_path, "gunicorn.conf", "keepalive = 5\nworkers = 2\n")  # TOML-valid, gunicorn's names
    write(tmp_path, "python", "import os\nworkers = int(os.environ.get('W', 2))\n")  # not TOML
    cwd = str(tmp_path)
    assert not gunicornconf.is_python_config("a.toml", cwd)
    assert gunicornconf.is_python_config("a.py", cwd)
    assert not gunicornconf.is_python_config("plain", cwd)
    assert gunicornconf.is_python_config("gunicorn.conf", cwd)
    assert gunicornconf.is_python_config("python", cwd)
    assert gunicornconf.is_python_config("file:plain", cwd)
    assert gunicornconf.is_python_config("python:pkg.mod", cwd)
    assert resolve(tmp_path, ["-c", "gunicorn.conf"]).settings.keep_alive == 5.0
    assert resolve(tmp_path, ["-c", "file:a.py"]).settings.workers == 2


def test_default_config_greenfork_toml_first_then_gunicorn_conf_py(tmp_path: Path) -> None:
    write(tmp_path, "gunicorn.conf.py", "workers = 3\n")
    r = resolve(tmp_path)
    assert r.settings.workers == 3 and r.settings.source_of("workers") == "gunicorn.conf.py (workers)"
    write(tmp_path, "greenfork.toml", "workers = 4\n")
    r = resolve(tmp_path)
    assert r.settings.workers == 4
    assert r.warnings == ["gunicorn.conf.py is not read: greenfork.toml is (name one with -c)"]
    assert resolve(tmp_path, ["-c", "gunicorn.conf.py"]).settings.workers == 3


def test_python_module_config_is_imported_from_the_working_directory(tmp_path: Path) -> None:
    pkg = tmp_path / "deploy_cfg_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "prod.py").write_text("workers = 5\nkeepalive = 9\n")
    r = resolve(tmp_path, ["-c", "python:deploy_cfg_pkg.prod"])
    assert (r.settings.workers, r.settings.keep_alive) == (5, 9.0)
    assert r.settings.source_of("workers") == "python:deploy_cfg_pkg.prod (workers)"
    (pkg / "prod.py").write_text("workers = 6\n")  # a HUP reads it again
    assert resolve(tmp_path, ["-c", "python:deploy_cfg_pkg.prod"]).settings.workers == 6
    with pytest.raises(SettingError, match="config module no_such_cfg_mod not found"):
        resolve(tmp_path, ["-c", "python:no_such_cfg_mod"])


def test_a_config_that_fails_names_its_line(tmp_path: Path) -> None:
    write(tmp_path, "gunicorn.conf.py", "workers = 2\n\nbind = undefined_name\n")
    with pytest.raises(SettingError, match=r"config file .*gunicorn.conf.py, line 3: NameError: .*undefined"):
        resolve(tmp_path)
    write(tmp_path, "gunicorn.conf.py", "workers = (\n")
    with pytest.raises(SettingError, match=r"config file .*gunicorn.conf.py, line 1: SyntaxError"):
        resolve(tmp_path)
    write(tmp_path, "gunicorn.conf.py", "workers = 'many'\n")
    with pytest.raises(SettingError, match=r"invalid value 'many' for workers \(from gunicorn\.conf\.py"):
        resolve(tmp_path)
    with pytest.raises(SettingError, match=r"config file .*missing\.py not found"):
        resolve(tmp_path, ["-c", "missing.py"])


def test_profile_needs_a_toml_file(tmp_path: Path) -> None:
    write(tmp_path, "gunicorn.conf.py", "workers = 2\n")
    with pytest.raises(SettingError, match="is a Python config file"):
        resolve(tmp_path, ["--profile", "dev"])


# ------------------------------------------------------------------ precedence and GUNICORN_CMD_ARGS


def test_precedence_cli_env_cmd_args_file_web_concurrency(tmp_path: Path) -> None:
    write(tmp_path, "gunicorn.conf.py", "workers = 2\ntimeout = 40\nkeepalive = 3\ngraceful_timeout = 9\n")
    env = {"WEB_CONCURRENCY": "7", "GUNICORN_CMD_ARGS": "--workers=3 --timeout 50 --keep-alive 4",
           "GREENFORK_TIMEOUT": "60", "GREENFORK_KEEP_ALIVE": "6"}
    r = resolve(tmp_path, ["--keep-alive", "8"], env)
    s = r.settings
    assert (s.workers, s.timeout, s.keep_alive, s.graceful_timeout) == (3, 60.0, 8.0, 9.0)
    assert s.source_of("workers") == "env GUNICORN_CMD_ARGS --workers"
    assert s.source_of("timeout") == "env GREENFORK_TIMEOUT"
    assert s.source_of("keep_alive") == "command line --keep-alive"
    assert s.source_of("graceful_timeout") == "gunicorn.conf.py (graceful_timeout)"
    assert any("using GUNICORN_CMD_ARGS='--workers=3" in n for n in r.notes)
    # WEB_CONCURRENCY is gunicorn's default for workers: below everything else
    assert resolve(tmp_path, [], {"WEB_CONCURRENCY": "7"}).settings.workers == 2
    (tmp_path / "gunicorn.conf.py").unlink()
    s = resolve(tmp_path, [], {"WEB_CONCURRENCY": "7"}).settings
    assert s.workers == 7 and s.source_of("workers") == "env WEB_CONCURRENCY"


def test_cmd_args_gunicorn_flags_config_and_errors(tmp_path: Path) -> None:
    write(tmp_path, "other.py", "workers = 4\n")
    args = "-c other.py --threads 3 -k gevent --limit-request-fields 20 ignored:app"
    r = resolve(tmp_path, [], {"GUNICORN_CMD_ARGS": args})
    assert r.settings.workers == 4 and r.settings.max_request_header_count == 20
    assert r.settings.source_of("max_request_header_count") == "env GUNICORN_CMD_ARGS --limit-request-fields"
    assert r.settings.app == BY_NAME["app"].default
    assert any("the application named there is ignored" in w for w in r.warnings)
    assert any("env GUNICORN_CMD_ARGS --threads 3: greenfork runs each request" in w for w in r.warnings)
    # the command line's -c wins over GUNICORN_CMD_ARGS's, as in gunicorn
    write(tmp_path, "mine.py", "workers = 5\n")
    assert resolve(tmp_path, ["-c", "mine.py"], {"GUNICORN_CMD_ARGS": "-c other.py"}).settings.workers == 5
    with pytest.raises(SettingError, match=r"GUNICORN_CMD_ARGS=.*unrecognized arguments: --no-such"):
        resolve(tmp_path, [], {"GUNICORN_CMD_ARGS": "--no-such-flag"})
    with pytest.raises(SettingError, match="invalid value '0' for workers"):
        resolve(tmp_path, [], {"GUNICORN_CMD_ARGS": "-w 0"})
    assert resolve(tmp_path, [], {"GUNICORN_CMD_ARGS": "--print-config"}).check_config
    r = resolve(tmp_path, [], {"GUNICORN_CMD_ARGS": "--check-config --print-config --hook on_exit=m:f"})
    assert r.check_config and r.settings.on_exit == hookspec.Hook("on_exit", "m:f")
    assert r.settings.source_of("on_exit") == "env GUNICORN_CMD_ARGS --hook on_exit"


# ------------------------------------------------------------------ gunicorn's flags


@pytest.mark.parametrize("cls", ["gevent", "gevent_wsgi", "gevent_pywsgi", "egg:gunicorn#gevent",
                                 "gunicorn.workers.ggevent.GeventWorker",
                                 "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"])
def test_gevent_worker_classes_are_accepted_quietly(tmp_path: Path, cls: str) -> None:
    r = resolve(tmp_path, ["-k", cls])
    assert r.warnings == []
    assert resolve(tmp_path, ["--worker-class", cls]).warnings == []


@pytest.mark.parametrize("cls", ["sync", "gthread", "gunicorn.workers.sync.SyncWorker"])
def test_blocking_worker_classes_are_warned(tmp_path: Path, cls: str) -> None:
    (w,) = resolve(tmp_path, ["-k", cls]).warnings
    assert f"command line --worker-class {cls}: greenfork runs the application in gevent workers" in w


@pytest.mark.parametrize(("cls", "why"), [
    ("uvicorn.workers.UvicornWorker", "serves ASGI applications"),
    ("asgi", "serves ASGI applications"),
    ("eventlet", "needs its own event loop"),
    ("tornado", "needs its own event loop"),
    ("myproject.workers.Custom", "is not supported"),
])
def test_unsupported_worker_classes_are_errors(tmp_path: Path, cls: str, why: str) -> None:
    with pytest.raises(SettingError, match=f"for worker_class .*{why}"):
        resolve(tmp_path, ["-k", cls])


def test_limits_env_pid_umask_and_other_flags(tmp_path: Path) -> None:
    s = resolve(tmp_path, ["--limit-request-line", "0", "--limit-request-fields", "0",
                           "--limit-request-field_size", "65536", "-e", "X=1", "--env", "Y=2",
                           "--pid", "/tmp/x.pid", "-m", "007", "--pythonpath", "src,lib",
                           "--paste-global", "a=b"]).settings
    assert s.max_request_line_size == 1 << 20 and s.max_request_header_count == 10_000
    assert s.max_request_headers_total_size == 65540
    assert s.env == ("X=1", "Y=2") and s.pidfile == "/tmp/x.pid" and s.unix_socket_mode == 0o770
    assert s.pythonpath == ("src", "lib") and s.paste_global == ("a=b",)
    assert s.source_of("unix_socket_mode") == "command line -m"
    assert resolve(tmp_path, ["--limit-request-line", "9000"]).settings.max_request_line_size == 8192
    # gunicorn reads -m 18 as decimal (0o22), --umask is greenfork's process umask (octal)
    assert resolve(tmp_path, ["-m", "18"]).settings.unix_socket_mode == 0o755
    assert resolve(tmp_path, ["--umask", "022"]).settings.umask == 0o022
    s = resolve(tmp_path, [], {"GUNICORN_CMD_ARGS": "--umask 18"}).settings  # gunicorn's, there
    assert (s.umask, s.unix_socket_mode) == (None, 0o755)
    with pytest.raises(SettingError, match="greenfork speaks HTTP only"):
        resolve(tmp_path, ["--protocol", "uwsgi"])


def test_tls_http2_and_proxy_settings_map_to_greenforks(tmp_path: Path) -> None:
    """The front-door settings gunicorn has (TLS, HTTP/2, PROXY protocol, forwarded headers) set
    greenfork's, from a config file, gunicorn's flags and GUNICORN_CMD_ARGS, without a warning."""
    write(tmp_path, "gunicorn.conf.py", """
certfile = "/etc/ssl/app.pem"
keyfile = "/etc/ssl/app.key"
ca_certs = "/etc/ssl/ca.pem"
cert_reqs = 2
ciphers = "ECDHE+AESGCM"
http_protocols = "h2,h1"
http2_cleartext = True
http2_max_concurrent_streams = 50
http2_initial_window_size = 131072
http2_max_frame_size = 32768
http2_max_header_list_size = 131072
proxy_protocol = True
proxy_allow_ips = "10.0.0.0/8"
forwarded_allow_ips = ["10.1.2.3", "192.168.0.0/16"]
websocket_max_message_size = 1048576
""")
    r = resolve(tmp_path)
    s = r.settings
    assert not r.warnings, r.warnings
    assert (s.certfile, s.keyfile, s.ca_certs, s.cert_reqs, s.ciphers) == (
        "/etc/ssl/app.pem", "/etc/ssl/app.key", "/etc/ssl/ca.pem", "required", "ECDHE+AESGCM")
    assert s.http_protocols == ("h2", "h1") and s.http2_cleartext == "prior-knowledge"
    assert (s.http2_max_concurrent_streams, s.http2_initial_window_size, s.http2_max_frame_size) == (
        50, 131072, 32768)
    assert s.max_request_headers_total_size == 131072
    assert s.proxy_protocol == "any" and s.websocket_max_message_size == 1 << 20
    # gunicorn trusts unix-socket peers whatever its lists say: greenfork's lists say `unix`
    assert s.proxy_allow_from == "10.0.0.0/8,unix"
    assert s.forwarded_allow_ips == "10.1.2.3,192.168.0.0/16,unix"
    assert s.source_of("forwarded_allow_ips") == "gunicorn.conf.py (forwarded_allow_ips)"
    assert s.source_of("max_request_headers_total_size") == "gunicorn.conf.py (http2_max_header_list_size)"
    (tmp_path / "gunicorn.conf.py").unlink()

    # gunicorn's command line: the bare --proxy-protocol is `any`; `*` stays everyone
    argv = ["--proxy-protocol", "--proxy-allow-from", "*", "--forwarded-allow-ips", "10.0.0.1",
            "--http-protocols", "h1", "--http2-max-header-list-size", "0", "--limit-request-field_size",
            "40000"]
    r = resolve(tmp_path, argv)
    s = r.settings
    assert (s.proxy_protocol, s.proxy_allow_from, s.http_protocols) == ("any", "*", ("h1",))
    assert not r.warnings
    # greenfork's own flag on the command line, with greenfork's meaning (documented)
    assert s.forwarded_allow_ips == "10.0.0.1"
    assert s.max_request_headers_total_size == 1 << 24  # the larger of the two limits
    s = resolve(tmp_path, ["--limit-request-field_size", "40000", "--http2-max-header-list-size",
                           "1000"]).settings
    assert s.max_request_headers_total_size == 40004
    cmd_args = ("--proxy-protocol v2 --http2-max-frame-size 65536 --forwarded-allow-ips 10.0.0.2 "
                "--proxy-allow-from 10.0.0.3")
    r = resolve(tmp_path, [], {"GUNICORN_CMD_ARGS": cmd_args})
    assert (r.settings.proxy_protocol, r.settings.http2_max_frame_size) == ("v2", 65536)
    assert (r.settings.forwarded_allow_ips, r.settings.proxy_allow_from) == ("10.0.0.2,unix", "10.0.0.3,unix")
    assert r.settings.source_of("proxy_allow_from") == "env GUNICORN_CMD_ARGS --proxy-allow-from"
    assert r.settings.source_of("proxy_protocol") == "env GUNICORN_CMD_ARGS --proxy-protocol"
    s = resolve(tmp_path, [], {"FORWARDED_ALLOW_IPS": "10.9.9.9"}).settings
    assert s.forwarded_allow_ips == "10.9.9.9,unix" and s.source_of("forwarded_allow_ips") == \
        "env FORWARDED_ALLOW_IPS"


@pytest.mark.parametrize(("value", "warned"), [
    ({"X-FORWARDED-PROTOCOL": "ssl", "X-FORWARDED-PROTO": "https", "X-FORWARDED-SSL": "on"}, False),
    ({"X-Forwarded-Proto": "HTTPS"}, False), ({"X-FORWARDED-PROTO": "https"}, False),
    ({"CloudFront-Forwarded-Proto": "https"}, True), ({}, True)])
def test_secure_scheme_headers_other_than_x_forwarded_proto_are_warned(tmp_path: Path, value: object,
                                                                       warned: bool) -> None:
    write(tmp_path, "gunicorn.conf.py", f"secure_scheme_headers = {value!r}\n")
    warnings = resolve(tmp_path).warnings
    assert [w.split(" is ignored: ")[1] for w in warnings] == ([
        "greenfork reads the scheme from X-Forwarded-Proto (https or http) only, sent by "
        "--forwarded-allow-ips peers; --forwarded-headers chooses the headers applied (docs/proxies.md)"]
        if warned else [])


def test_a_gunicorn_certfile_makes_every_address_tls(tmp_path: Path) -> None:
    cert = "/etc/ssl/app.pem"
    write(tmp_path, "gunicorn.conf.py", f"certfile = {cert!r}\nbind = ['0.0.0.0:443', 'unix:/run/a.sock']\n")
    r = resolve(tmp_path)
    assert r.settings.bind == ("https://0.0.0.0:443", "https://unix:/run/a.sock")
    assert r.settings.source_of("bind") == "gunicorn.conf.py (bind)"
    assert any("https://0.0.0.0:443, https://unix:/run/a.sock serve TLS, as gunicorn" in n for n in r.notes)
    # greenfork's own spellings keep their meaning: http:// is cleartext, fd:// cannot be TLS,
    # and an https:// address anywhere means the operator chose
    s = resolve(tmp_path, ["-b", "http://127.0.0.1:80", "-b", ":8443", "-b", "fd://3"]).settings
    assert s.bind == ("http://127.0.0.1:80", "https://:8443", "fd://3")
    s = resolve(tmp_path, ["-b", "https://127.0.0.1:443", "-b", "127.0.0.1:80"]).settings
    assert s.bind == ("https://127.0.0.1:443", "127.0.0.1:80")
    # the default address and PORT's, which gunicorn would serve with TLS too, stay implicit
    write(tmp_path, "gunicorn.conf.py", f"certfile = {cert!r}\n")
    s = resolve(tmp_path).settings
    assert s.bind == ("https://127.0.0.1:8000",) and config.bind_is_implicit(s)
    s = resolve(tmp_path, [], {"PORT": "5000"}).settings
    assert s.bind == ("https://0.0.0.0:5000",) and config.bind_is_implicit(s)
    # GUNICORN_CMD_ARGS and gunicorn's own flags are gunicorn deployments too
    (tmp_path / "gunicorn.conf.py").unlink()
    s = resolve(tmp_path, [], {"GUNICORN_CMD_ARGS": f"--certfile {cert} -b 0.0.0.0:443"}).settings
    assert s.bind == ("https://0.0.0.0:443",)
    assert resolve(tmp_path, ["-k", "gevent", "--certfile", cert]).settings.bind == ("https://127.0.0.1:8000",)
    # greenfork's own command line: only https:// serves TLS (tls.py warns about the certificate)
    s = resolve(tmp_path, ["--certfile", cert, "-b", "0.0.0.0:443"]).settings
    assert s.bind == ("0.0.0.0:443",)


def test_the_edge_example_reads_as_its_greenfork_toml_in_the_docs(tmp_path: Path) -> None:
    """docs/migrating-from-gunicorn.md shows tests/gunicorn/edge/gunicorn.conf.py and the same
    deployment in greenfork.toml: both resolve to the same settings."""
    from greenfork.master.settings import SETTINGS

    doc = (ROOT / "docs" / "migrating-from-gunicorn.md").read_text()
    section = doc.split("## TLS, HTTP/2 and the PROXY protocol: an example", 1)[1]
    match = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert match is not None
    write(tmp_path, "greenfork.toml", match.group(1))
    mine = resolve(tmp_path)
    theirs = resolve(ROOT / "tests" / "gunicorn" / "edge")
    assert not mine.warnings and not theirs.warnings
    differ = [s.name for s in SETTINGS if getattr(mine.settings, s.name) != getattr(theirs.settings, s.name)]
    assert differ == []
    assert theirs.settings.source_of("bind") == "gunicorn.conf.py (bind)"
    assert any("https://0.0.0.0:8443 serves TLS, as gunicorn serves every address" in n for n in theirs.notes)


@pytest.mark.parametrize(("value", "mode", "warned"), [
    ("off", "off", False), (False, "off", False), ("prior-knowledge", "prior-knowledge", False),
    (True, "prior-knowledge", False), ("both", "prior-knowledge", True), ("upgrade", "off", True)])
def test_http2_cleartext_modes(tmp_path: Path, value: object, mode: str, warned: bool) -> None:
    write(tmp_path, "gunicorn.conf.py", f"http_protocols = 'h1,h2'\nhttp2_cleartext = {value!r}\n")
    r = resolve(tmp_path)
    assert r.settings.http2_cleartext == mode
    assert [w for w in r.warnings if "Upgrade to h2c" in w] == ([
        f"gunicorn.conf.py: http2_cleartext = {value!r}: greenfork does not offer the HTTP/1.1 Upgrade "
        f"to h2c (RFC 9113 deprecates it): an Upgrade: h2c request is answered in HTTP/1.1; "
        f"http2_cleartext = {mode}"] if warned else [])
    (tmp_path / "gunicorn.conf.py").unlink()
    if isinstance(value, str):  # GUNICORN_CMD_ARGS reads it as gunicorn does, the command line as greenfork
        r = resolve(tmp_path, [], {"GUNICORN_CMD_ARGS": f"--http2-cleartext {value}"})
        assert r.settings.http2_cleartext == mode and any("Upgrade to h2c" in w for w in r.warnings) == warned
        if warned:
            with pytest.raises(SettingError, match="deprecated by RFC 9113"):
                resolve(tmp_path, ["--http2-cleartext", value])
    write(tmp_path, "gunicorn.conf.py", "http2_cleartext = 'sometimes'\n")
    with pytest.raises(SettingError, match="invalid value 'sometimes' for http2_cleartext"):
        resolve(tmp_path)


def test_hook_option_and_hook_values(tmp_path: Path) -> None:
    argv = ["--hook", "post_fork=myhooks:post_fork", "--hook", "when_ready=myhooks.when_ready"]
    s = resolve(tmp_path, argv).settings
    assert s.post_fork == hookspec.Hook("post_fork", "myhooks:post_fork")
    assert s.when_ready is not None and s.when_ready.target == "myhooks:when_ready"
    assert s.source_of("post_fork") == "command line --hook post_fork"
    with pytest.raises(SystemExit):
        cli.parse_args(["--hook", "post_fok=a:b"])
    with pytest.raises(ValueError, match="did you mean post_fork"):
        hookspec.split_option("post_fok=a:b")
    with pytest.raises(ValueError, match="expected NAME=MODULE:FUNCTION"):
        hookspec.split_option("post_fork")
    s = resolve(tmp_path, [], {"GREENFORK_ON_EXIT": "myhooks:bye"}).settings
    assert s.on_exit is not None and s.source_of("on_exit") == "env GREENFORK_ON_EXIT"
    write(tmp_path, "greenfork.toml", 'pre_request = "myhooks:timing"\n')
    assert resolve(tmp_path).settings.pre_request == hookspec.Hook("pre_request", "myhooks:timing")


def test_hook_signatures_are_checked(tmp_path: Path) -> None:
    write(tmp_path, "gunicorn.conf.py", "def post_fork(server):\n    pass\n")
    with pytest.raises(SettingError, match=r"post_fork .*must take 2 positional argument\(s\), as "
                                           r"post_fork\(server, worker\)"):
        resolve(tmp_path)
    write(tmp_path, "gunicorn.conf.py", "def post_request(worker, req):\n    pass\n"
                                        "def pre_request(*args):\n    pass\n")
    s = resolve(tmp_path).settings
    assert s.post_request is not None and s.post_request.nargs == 2
    assert s.pre_request is not None and s.pre_request.nargs == 2
    assert s.post_request.target == "gunicorn.conf.py:post_request"
    write(tmp_path, "gunicorn.conf.py", "post_fork = 42\n")
    with pytest.raises(SettingError, match="not callable"):
        resolve(tmp_path)


def test_hooks_given_as_text_are_imported_where_they_run(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "gf_hooks_mod.py", "def ready(server):\n    pass\ndef bad(a, b, c, d, e):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    s = defaults(when_ready=hookspec.Hook("when_ready", "gf_hooks_mod:ready"),
                 on_exit=hookspec.Hook("on_exit", "gf_hooks_mod:bad"),
                 post_fork=hookspec.Hook("post_fork", "not_imported_in_the_master:f"))
    with pytest.raises(hookspec.HookError, match="hook on_exit must take 1 positional"):
        hooks.resolve_hooks(s)
    s = s.replace(on_exit=None)
    resolved = hooks.resolve_hooks(s)
    assert resolved.when_ready is not None and resolved.when_ready.func is not None
    assert resolved.post_fork == s.post_fork  # a worker hook: imported in the worker
    with pytest.raises(hookspec.HookError, match="cannot import not_imported_in_the_master"):
        hooks.resolve_hooks(s, hookspec.WORKER_HOOKS)


# ------------------------------------------------------------------ apps with literal arguments


@pytest.mark.parametrize(("spec", "want"), [
    ("gunicornapps", apploader.AppSpec("gunicornapps", "application")),
    ("gunicornapps:app", apploader.AppSpec("gunicornapps", "app")),
    ("gunicornapps:create_app()", apploader.AppSpec("gunicornapps", "create_app", True)),
    ("gunicornapps:create_app('prod')", apploader.AppSpec("gunicornapps", "create_app", True, ("prod",))),
    ("gunicornapps:create_app('prod', debug=True, options={'a': [1, 2.5, None]})",
     apploader.AppSpec("gunicornapps", "create_app", True, ("prod",),
                       {"debug": True, "options": {"a": [1, 2.5, None]}})),
    ("pkg.mod:obj.make(-1, b'x', (1, 2))",
     apploader.AppSpec("pkg.mod", "obj.make", True, (-1, b"x", (1, 2)))),
])
def test_app_specs(spec: str, want: apploader.AppSpec) -> None:
    assert apploader.parse_app(spec) == want


@pytest.mark.parametrize(("spec", "why"), [
    ("m:create_app(os.environ)", "must be Python literals"),
    ("m:create_app(__import__('os').system('touch /tmp/pwned'))", "must be Python literals"),
    ("m:create_app(*args)", "must be Python literals"),
    ("m:create_app(**kw)", "must be Python literals"),
    ("m:(lambda: 1)()", "the factory must be named"),
    ("m:1 + 2", "neither a name nor a call"),
    ("m:create_app(", "neither a name nor a call"),
    ("bad mod:app", "not a Python identifier"),
    ("m:", "expected module:callable"),
])
def test_bad_app_specs(spec: str, why: str) -> None:
    with pytest.raises(apploader.AppSpecError, match=why):
        apploader.parse_app(spec)


def test_factories_are_called_with_their_literal_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(APPS))
    app = apploader.load("gunicornapps:create_app('prod', debug=True, region='eu')")
    body: list[bytes] = app({}, lambda status, headers: None)
    assert b'"env": "prod", "debug": true, "options": {"region": "eu"}' in body[0]
    with pytest.raises(apploader.AppImportError, match="create_app cannot be called so"):
        apploader.load("gunicornapps:create_app(1, 2, 3)")
    with pytest.raises(apploader.AppImportError, match="did you mean 'gunicornapps:app'"):
        apploader.load("gunicornapps.py:app", str(APPS))


# ------------------------------------------------------------------ what hooks receive


def test_server_cfg_reads_gunicorn_names() -> None:
    s = defaults(bind=("127.0.0.1:0",), workers=3, keep_alive=5.0, env=("A=1",), proc_name="shop",
                 max_request_line_size=4096, unix_socket_mode=0o770, preload=True)
    cfg = hooks.ConfigView(s)
    assert (cfg.workers, cfg.keepalive, cfg.bind) == (3, 5.0, ["127.0.0.1:0"])
    assert (cfg.env, cfg.raw_env) == ({"A": "1"}, ["A=1"])
    assert (cfg.proc_name, cfg.limit_request_line, cfg.umask, cfg.preload_app) == ("shop", 4094, 0o007, True)
    assert (cfg.worker_class, cfg.worker_class_str) == ("gevent", "gevent")
    assert (cfg.threads, cfg.statsd_host) == (1, None)
    assert cfg.uid == os.geteuid() and cfg.is_ssl is False
    assert cfg.max_worker_memory == 0  # greenfork's own names work too
    assert cfg.settings["workers"].value == 3 and cfg.settings["keepalive"].get() == 5.0
    assert callable(cfg.post_fork)  # an unset hook: gunicorn's no-op
    with pytest.raises(AttributeError, match="No configuration setting for: nope"):
        _ = cfg.nope


def test_hook_calls_log_failures_with_the_hook_name(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Any] = []

    def pre_fork(server: Any, worker: Any) -> None:
        seen.append((server.pid, worker.pid, worker.age, server.num_workers, server.cfg.workers))

    def child_exit(server: Any, worker: Any) -> None:
        raise ValueError("broken hook")

    s = defaults(workers=2, pre_fork=hookspec.of_callable("pre_fork", pre_fork, "conf:pre_fork"),
                 child_exit=hookspec.of_callable("child_exit", child_exit, "conf:child_exit"))
    runner = hooks.Hooks(s)
    w = Worker(slot=0, generation=1)
    view = runner.pre_fork(w, s)
    assert seen == [(os.getpid(), None, 1, 2, 2)] and view.age == 1
    runner.forked(w, 4242)
    assert {4242: view} == runner.server.WORKERS
    with caplog.at_level("ERROR", logger="greenfork.master"):
        runner.exited(w)
    assert "Error in hook child_exit (conf:child_exit)" in caplog.text and "broken hook" in caplog.text
    assert runner.server.WORKERS == {}


# ------------------------------------------------------------------ the command itself


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("GREENFORK_", "GUNICORN_"))}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "greenfork.master", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=60)


def test_print_config_shows_every_setting_and_where_it_came_from(tmp_path: Path) -> None:
    write(tmp_path, "gunicorn.conf.py", "keepalive = 4\nthreads = 2\ndef when_ready(server):\n    pass\n")
    out = run(["--print-config", "-k", "gevent", "--limit-request-line", "100", "gunicornapps:app"], tmp_path,
              {"GUNICORN_CMD_ARGS": "--workers 2"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(BY_NAME)
    assert "keep_alive = 5.0" not in out.stdout
    assert "keep_alive = 4.0  (gunicorn.conf.py (keepalive))" in lines
    assert "workers = 2  (env GUNICORN_CMD_ARGS --workers)" in lines
    assert "max_request_line_size = 102  (command line --limit-request-line)" in lines
    assert "when_ready = 'gunicorn.conf.py:when_ready'  (gunicorn.conf.py (when_ready))" in lines
    assert "backlog = 2048  (default)" in lines
    assert "greenfork: warning: gunicorn.conf.py: threads = 2: greenfork runs each request" in out.stderr
    assert "greenfork: note: using GUNICORN_CMD_ARGS='--workers 2'" in out.stderr


def test_config_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    for args, message in [
        (["-k", "uvicorn.workers.UvicornWorker", "x:app"], "uvicorn.workers.UvicornWorker serves ASGI"),
        (["m:create_app(os.getcwd())"], "a factory's arguments must be Python literals"),
        (["--hook", "when_ready=no_such_hooks_module:f"], "hook when_ready: cannot import no_such_hooks"),
        (["--check-config", "--hook", "post_fork=no_such_hooks_module:f"], "hook post_fork: cannot import"),
        (["--paste", "x.ini", "gunicornapps:app"], "give either an application"),
    ]:
        out = run(args, tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_help_lists_gunicorn_flags_in_their_own_group() -> None:
    text = cli.build_parser().format_help()
    assert "gunicorn's flags:" in text
    for flag in ("-k", "--threads", "--limit-request-line", "--limit-request-field_size", "--pid", "-m",
                 "--hook", "--paste", "-e", "--print-config"):
        assert flag in text, flag
    assert "--statsd-host" not in text  # accepted, but a warning only: not advertised
    parser = cli.build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    ns = parser.parse_args(["--statsd-host", "x:1", "--proxy-protocol"])
    assert vars(ns)["gunicorn.statsd_host"] == "x:1"
    # gunicorn's bare --proxy-protocol is greenfork's own flag given alone: a header of either version
    assert vars(ns)["proxy_protocol"] == "any"


def test_settings_typing_is_complete() -> None:
    fields = set(Settings.__dataclass_fields__)
    for h in hookspec.HOOK_DEFS:
        assert h.name in fields


def test_the_migration_guide_is_generated_from_the_table() -> None:
    from greenfork.master import migratedoc

    doc = (ROOT / migratedoc.DOC_PATH).read_text(encoding="utf-8")
    assert migratedoc.fill(doc, ROOT) == doc, "run: python -m greenfork.master.docsgen --write"
    for g in gunicornmap.TABLE:
        assert f"| `{g.name}` |" in doc, g.name
    for h in hookspec.HOOK_DEFS:
        assert f"| `{h.signature}` |" in doc, h.name
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/migrating-from-gunicorn.md" in readme


def test_a_helper_variable_named_like_a_greenfork_setting_is_not_an_error(tmp_path: Path) -> None:
    write(tmp_path, "gunicorn.conf.py", 'env = "staging"\nworkers = 4 if env == "production" else 2\n'
                                        'keep_alive = 5\n')
    r = resolve(tmp_path)
    assert r.settings.workers == 2 and r.settings.env == () and r.settings.keep_alive == 5.0
    (w,) = r.warnings
    assert "gunicorn.conf.py: env = 'staging' is ignored: it is not a value for greenfork's setting env" in w


def test_monkey_patching_the_master_in_a_config_is_warned(tmp_path: Path) -> None:
    write(tmp_path, "gunicorn.conf.py", "from gevent import monkey\nmonkey.patch_all()\nworkers = 2\n")
    script = ("from greenfork.master import gunicornconf;"
              f"print(gunicornconf.python_layer('gunicorn.conf.py', {str(tmp_path)!r})[1])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "monkey-patched the master with gevent" in out.stdout, out.stderr


def test_req_and_resp_read_as_gunicorns() -> None:
    from greenfork.workers.hookpoints import RequestView, ResponseView
    from greenfork.workers.http1 import Request

    r = Request()
    r.method, r.target, r.path, r.query, r.version = "POST", b"/a%20b?x=1", b"/a%20b", b"x=1", "1.0"
    r.headers = [(b"Host", b"example.com"), (b"x-request-id", b"abc")]
    view = RequestView(r, {"wsgi.url_scheme": "https", "REMOTE_ADDR": "10.0.0.1"})
    assert (view.method, view.uri, view.path, view.query, view.version) == ("POST", "/a%20b?x=1", "/a%20b",
                                                                             "x=1", (1, 0))
    assert view.headers == [("HOST", "example.com"), ("X-REQUEST-ID", "abc")]
    assert (view.scheme, view.remote_addr, view.fragment) == ("https", "10.0.0.1", "")
    view.started = 1.5  # hooks keep their own state on it, as on gunicorn's Request
    assert view.started == 1.5
    assert ResponseView(200, "200 OK", [], 5).status == "200 OK"
    assert ResponseView(500, "200 OK", [], 0).status == "500 Internal Server Error"  # sent instead
    assert ResponseView(504, None, [], 0).status == "504 Gateway Timeout"
    assert ResponseView(499, None, [], 0).status == "499"  # the client left first

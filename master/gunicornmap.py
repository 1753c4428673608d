"""Every gunicorn setting, as data: its flags, its default, and what greenfork makes of it.

One entry per setting of gunicorn 27 (`gunicorn/config.py` is the truth: tests/
test_gunicorn_config.py compares this table with it, so a setting gunicorn adds is noticed).
Each entry is of one kind:

- SAME: the greenfork setting `to` takes the value as it is (gunicorn's name may differ:
  `keepalive` is `keep_alive`);
- CONVERT: `convert` turns gunicorn's value into greenfork settings (`umask` becomes the mode
  of unix sockets, `limit_request_line` counts the CRLF, `-k` is checked);
- HOOK: the server hook of the same name (hookspec.py);
- WARN: greenfork has no counterpart; a value other than gunicorn's default (or one of
  `fine`) is answered with one warning line, `note`, saying what greenfork does instead;
- CLI: meaningful on the command line only (`--config`, `--check-config`).

Translating is gunicornconf.py's job, the converters are gunicornvalues.py's; this module is the table.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from greenfork.master.gunicornvalues import (
    Convert,
    Out,
    check_protocol,
    check_threads,
    check_worker_class,
    g_any,
    g_auto_int,
    g_bool,
    g_csv,
    g_header_dict,
    g_int,
    g_list,
    g_str,
    http2_max_header_list_size,
    joined,
    limit_request_field_size,
    limit_request_fields,
    limit_request_line,
    optional,
    to_bind,
    to_cert_reqs,
    to_http2_cleartext,
    to_http_protocols,
    to_log_level,
    to_proxy_protocol,
    to_trust,
    to_user,
    umask_to_socket_mode,
)

__all__ = ["BY_GUNICORN_NAME", "CLI", "CONVERT", "HOOK", "SAME", "TABLE", "WARN", "G", "Out",
           "g_auto_int", "g_bool", "g_csv", "g_int", "g_list", "g_str"]

SAME, CONVERT, HOOK, WARN, CLI = "same", "convert", "hook", "warn", "cli"


# ------------------------------------------------------------------ the table

@dataclass(frozen=True, slots=True)
class G:
    name: str  # gunicorn's setting
    kind: str
    flags: tuple[str, ...] = ()  # gunicorn's command-line flags
    action: str = "store"  # of gunicorn's flag: store, store_true, append, store_const, optional
    to: str = ""  # SAME/CONVERT: the greenfork setting set
    convert: Convert | None = None
    value: Callable[[Any], Any] = g_any  # gunicorn's reading of the value
    default: Any = None  # gunicorn's default (after its validator)
    fine: tuple[Any, ...] = ()  # WARN: values that mean what greenfork does anyway
    note: str = ""  # WARN: what greenfork does instead; others: the difference, for the docs
    const: Any = None  # store_const and optional flags
    shown: str = ""  # the docs' greenfork column, where no setting names it


NO_STATSD = "greenfork has no StatsD client: the master serves Prometheus metrics (--metrics-bind)"
NO_SYSLOG = ("greenfork logs to stderr or --error-logfile, not to syslog: under systemd, stderr goes to "
             "the journal")
NO_LOGCONFIG = ("greenfork writes its own log lines to --error-logfile (and requests to "
                "--access-logfile); configure your application's loggers in the application")
ASGI_ONLY = "greenfork serves WSGI applications; this is an ASGI worker setting"
NO_DIRTY = ("greenfork has no dirty-worker pool: run long tasks in a task queue or in a separate "
            "greenfork with its own workers")
NO_DIRTY_HOOK = "greenfork has no dirty-worker pool, so this hook never runs"
NO_CONTROL = ("greenfork is controlled by signals (docs/signals.md) and observed on --metrics-bind "
              "(/metrics, /livez, /readyz); there is no control socket")
STRICT_HTTP = ("greenfork's HTTP/1.1 parser (llhttp) is strict and not configurable: such requests "
               "get 400 (docs/http.md)")
HTTP2 = "needs greenfork's HTTP/2 support (docs/http2.md)"


def _warn(name: str, flags: tuple[str, ...], default: Any, note: str, *, action: str = "store",
          value: Callable[[Any], Any] = g_any, fine: tuple[Any, ...] = (), const: Any = None) -> G:
    return G(name, WARN, flags, action, default=default, note=note, value=value, fine=fine, const=const)


def _hook(name: str) -> G:
    return G(name, HOOK, to=name, note="")


TABLE: tuple[G, ...] = (
    # ------------------------------------------------------------ config file
    G("config", CLI, ("-c", "--config"), default="./gunicorn.conf.py",
      note="a Python file (gunicorn.conf.py, file:PATH, python:MODULE) or greenfork.toml"),
    G("wsgi_app", SAME, to="app", value=g_str, note="the APP argument"),
    # ---------------------------------------------------------- server socket
    G("bind", CONVERT, ("-b", "--bind"), "append", to="bind", convert=to_bind, value=g_list,
      default=["127.0.0.1:8000"], note="the same forms; `tcp://` is dropped and `unix://` read as `unix:`"),
    G("backlog", SAME, ("--backlog",), to="backlog", value=g_int, default=2048),
    # -------------------------------------------------------- worker processes
    G("workers", SAME, ("-w", "--workers"), to="workers", value=g_int, default=1,
      note="WEB_CONCURRENCY in the environment is the default, as in gunicorn"),
    G("worker_class", CONVERT, ("-k", "--worker-class"), convert=check_worker_class, default="sync",
      shown="gevent workers, always",
      note="gevent classes (gevent, gevent_wsgi, gevent_pywsgi, gevent-websocket's) are accepted; "
           "sync and gthread are warned (the app runs in gevent workers); others are an error"),
    G("threads", CONVERT, ("--threads",), convert=check_threads, value=g_int, default=1,
      shown="none: a greenlet per request",
      note="warned above 1: each request runs in its own greenlet"),
    G("worker_connections", SAME, ("--worker-connections",), to="worker_connections", value=g_int,
      default=1000),
    G("max_requests", SAME, ("--max-requests",), to="max_requests", value=g_int, default=0,
      note="the worker's replacement is ready before it stops"),
    G("max_requests_jitter", SAME, ("--max-requests-jitter",), to="max_requests_jitter", value=g_int,
      default=0),
    G("timeout", SAME, ("-t", "--timeout"), to="timeout", value=g_int, default=30,
      note="a worker whose event loop misses its heartbeat this long is aborted (its stacks are logged), "
           "as with gunicorn's gevent worker"),
    G("graceful_timeout", SAME, ("--graceful-timeout",), to="graceful_timeout", value=g_int, default=30),
    G("keepalive", SAME, ("--keep-alive",), to="keep_alive", value=g_int, default=2,
      note="greenfork's default is 75 s (longer than load balancers' 60 s idle timeout)"),
    # ------------------------------------------------------------------ security
    G("limit_request_line", CONVERT, ("--limit-request-line",), to="max_request_line_size",
      convert=limit_request_line, value=g_int, default=4094,
      note="N + 2 (greenfork counts the CRLF); 0 is 1 MiB, as gunicorn reads it"),
    G("limit_request_fields", CONVERT, ("--limit-request-fields",), to="max_request_header_count",
      convert=limit_request_fields, value=g_int, default=100, note="at most 10000"),
    G("limit_request_field_size", CONVERT, ("--limit-request-field_size",),
      to="max_request_headers_total_size", convert=limit_request_field_size, value=g_int, default=8190,
      note="greenfork limits the whole header section: it is raised so that one field of this size "
           "fits (at least 32768)"),
    # ----------------------------------------------------------------- debugging
    G("reload", SAME, ("--reload",), "store_true", to="reload", value=g_bool, default=False),
    _warn("reload_engine", ("--reload-engine",), "auto",
          "greenfork's workers poll the imported modules' files once a second; there is no engine to "
          "choose", fine=("auto", "poll")),
    G("reload_extra_files", SAME, ("--reload-extra-file",), "append", to="reload_extra_file",
      value=g_list, default=[], note="globs are kept and re-expanded, as in gunicorn"),
    _warn("spew", ("--spew",), False, "greenfork has no line tracer; use a debugger or py-spy",
          action="store_true", value=g_bool),
    G("check_config", CLI, ("--check-config",), "store_true", default=False,
      note="greenfork prints every resolved setting with its source; it does not import the app"),
    G("print_config", CLI, ("--print-config",), "store_true", default=False,
      note="the same as --check-config"),
    # --------------------------------------------------------- server mechanics
    G("preload_app", SAME, ("--preload",), "store_true", to="preload", value=g_bool, default=False,
      note="a HUP re-executes the master to load new code (docs/signals.md)"),
    _warn("sendfile", ("--no-sendfile",), None,
          "greenfork always uses sendfile() for wsgi.file_wrapper on plain TCP and unix listeners "
          "(never under TLS); it cannot be turned off", action="store_const", const=False,
          fine=(True,)),
    _warn("reuse_port", ("--reuse-port",), False,
          "every worker accepts on the master's one socket per address (a reload keeps it), so "
          "SO_REUSEPORT is not used", action="store_true", value=g_bool),
    G("chdir", SAME, ("--chdir",), to="chdir", value=g_str, default=os.getcwd()),
    G("daemon", SAME, ("-D", "--daemon"), "store_true", to="daemon", value=g_bool, default=False,
      note="the command returns once the workers are ready, or fails with the reason"),
    G("raw_env", SAME, ("-e", "--env"), "append", to="env", value=g_list, default=[]),
    G("pidfile", SAME, ("-p", "--pid"), to="pidfile", value=g_str,
      note="the file is locked while the master runs; --pidfile is greenfork's long name"),
    _warn("worker_tmp_dir", ("--worker-tmp-dir",), None,
          "a worker's heartbeat is a byte on its control socket, not a temporary file"),
    G("user", CONVERT, ("-u", "--user"), to="user", convert=to_user("user")),
    G("group", CONVERT, ("-g", "--group"), to="group", convert=to_user("group")),
    G("umask", CONVERT, ("-m", "--umask"), to="unix_socket_mode", convert=umask_to_socket_mode,
      value=g_auto_int, default=0,
      note="as in gunicorn, the mask of the unix sockets' mode: unix_socket_mode = 777 & ~umask "
           "(greenfork's own --umask sets the processes' umask)"),
    _warn("initgroups", ("--initgroups",), False,
          "greenfork always gives workers the user's supplementary groups (as initgroups does)",
          action="store_true", value=g_bool, fine=(True,)),
    _warn("tmp_upload_dir", (), None,
          "unused (as in gunicorn): request bodies are streamed to the application"),
    _warn("secure_scheme_headers", (), {"X-FORWARDED-PROTOCOL": "ssl", "X-FORWARDED-PROTO": "https",
                                        "X-FORWARDED-SSL": "on"},
          "greenfork reads the scheme from X-Forwarded-Proto (https or http) only, sent by "
          "--forwarded-allow-ips peers; --forwarded-headers chooses the headers applied (docs/proxies.md)",
          value=g_header_dict, fine=({"X-FORWARDED-PROTO": "https"},)),
    G("forwarded_allow_ips", CONVERT, ("--forwarded-allow-ips",), to="forwarded_allow_ips",
      convert=to_trust("forwarded_allow_ips"), value=joined, default="127.0.0.1,::1",
      note="FORWARDED_ALLOW_IPS in the environment is the default, as in gunicorn; `unix` is added "
           "(gunicorn trusts unix-socket peers always) from a config file or GUNICORN_CMD_ARGS; on the "
           "command line the flag is greenfork's own: add `unix` yourself. Which headers are applied: "
           "--forwarded-headers (docs/proxies.md)"),
    # -------------------------------------------------------------------- logging
    G("accesslog", SAME, ("--access-logfile",), to="access_logfile", value=g_str),
    _warn("disable_redirect_access_to_syslog", ("--disable-redirect-access-to-syslog",), False, NO_SYSLOG,
          action="store_true", value=g_bool, fine=(True,)),
    G("access_log_format", SAME, ("--access-logformat",), to="access_logformat", value=g_str,
      default='%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
      note="gunicorn's atoms, and `json`"),
    G("errorlog", SAME, ("--error-logfile", "--log-file"), to="error_logfile", value=g_str, default="-"),
    G("loglevel", CONVERT, ("--log-level",), to="log_level", convert=to_log_level, default="info"),
    _warn("capture_output", ("--capture-output",), False,
          "the application's stdout and stderr are the master's (the terminal or the journal), "
          "not redirected to --error-logfile", action="store_true", value=g_bool),
    _warn("logger_class", ("--logger-class",), "gunicorn.glogging.Logger", NO_LOGCONFIG,
          value=g_any, fine=("simple",)),
    _warn("logconfig", ("--log-config",), None, NO_LOGCONFIG),
    _warn("logconfig_dict", (), {}, NO_LOGCONFIG),
    _warn("logconfig_json", ("--log-config-json",), None, NO_LOGCONFIG),
    _warn("syslog_addr", ("--log-syslog-to",), None, NO_SYSLOG,
          fine=("udp://localhost:514", "unix:///var/run/syslog", "unix:///var/run/log")),
    _warn("syslog", ("--log-syslog",), False, NO_SYSLOG, action="store_true", value=g_bool),
    _warn("syslog_prefix", ("--log-syslog-prefix",), None, NO_SYSLOG),
    _warn("syslog_facility", ("--log-syslog-facility",), "user", NO_SYSLOG),
    _warn("enable_stdio_inheritance", ("-R", "--enable-stdio-inheritance"), False,
          "with -D greenfork's stdio goes to /dev/null once it has started; use --error-logfile",
          action="store_true", value=g_bool),
    _warn("statsd_host", ("--statsd-host",), None, NO_STATSD),
    _warn("dogstatsd_tags", ("--dogstatsd-tags",), "", NO_STATSD),
    _warn("statsd_prefix", ("--statsd-prefix",), "", NO_STATSD),
    _warn("enable_backlog_metric", ("--enable-backlog-metric",), False,
          "with --metrics-bind greenfork always exports each listener's accept queue "
          "(greenfork_listen_queue_length)", action="store_true", value=g_bool, fine=(True,)),
    # ------------------------------------------------------------ process naming
    G("proc_name", SAME, ("-n", "--name"), to="proc_name", value=g_str,
      note="titles read `greenfork: master [NAME]`, `greenfork: worker N [NAME]`"),
    G("default_proc_name", CLI, (), default="gunicorn", note="internal to gunicorn"),
    G("pythonpath", SAME, ("--pythonpath",), to="pythonpath", value=g_csv),
    G("paste", SAME, ("--paste", "--paster"), to="paste", value=g_str,
      note="its [loggers] configure Python logging in the workers, as in gunicorn"),
    # -------------------------------------------------------------- server hooks
    *(_hook(n) for n in ("on_starting", "on_reload", "when_ready", "pre_fork", "post_fork",
                         "post_worker_init", "worker_int", "worker_abort", "pre_exec", "pre_request",
                         "post_request", "child_exit", "worker_exit", "nworkers_changed", "on_exit")),
    _warn("ssl_context", (), None,
          "greenfork builds the TLS contexts in the master from --certfile, --keyfile, --ciphers, "
          "--tls-min-version and --sni (docs/tls.md); this hook is not called"),
    # ---------------------------------------------------------------- proxies
    G("proxy_protocol", SAME, ("--proxy-protocol",), "optional", to="proxy_protocol",
      value=to_proxy_protocol, default="off", const="auto",
      note="auto (or a bare --proxy-protocol) is greenfork's any: a header of either version is required"),
    G("proxy_allow_ips", CONVERT, ("--proxy-allow-from",), to="proxy_allow_from",
      convert=to_trust("proxy_allow_from"), value=joined, default="127.0.0.1,::1",
      note="`unix` is added from a config file or GUNICORN_CMD_ARGS (gunicorn accepts PROXY headers "
           "from unix-socket peers always); on the command line the flag is greenfork's own"),
    G("protocol", CONVERT, ("--protocol",), convert=check_protocol, default="http", shown="HTTP only",
      note="http only: the uwsgi protocol is an error"),
    _warn("uwsgi_allow_ips", ("--uwsgi-allow-from",), "127.0.0.1,::1",
          "greenfork does not speak the uwsgi protocol"),
    # -------------------------------------------------------------------- ssl
    G("keyfile", SAME, ("--keyfile",), to="keyfile", value=g_str),
    G("certfile", SAME, ("--certfile",), to="certfile", value=g_str,
      note="as in gunicorn, it makes every address TLS when the deployment is gunicorn's (a Python "
           "config, GUNICORN_CMD_ARGS or one of gunicorn's own flags): HOST:PORT and unix:PATH become "
           "https://; otherwise only https:// addresses serve TLS (docs/tls.md)"),
    _warn("ssl_version", ("--ssl-version",), 2,
          "deprecated in gunicorn too: greenfork accepts TLS 1.2 and 1.3 (--tls-min-version)",
          fine=("TLS", "TLS_SERVER", "PROTOCOL_TLS", "PROTOCOL_TLS_SERVER", 16, 17)),
    G("cert_reqs", CONVERT, ("--cert-reqs",), to="cert_reqs", convert=to_cert_reqs, default=0,
      note="0, 1, 2 or none, optional, required"),
    G("ca_certs", SAME, ("--ca-certs",), to="ca_certs", value=g_str),
    _warn("suppress_ragged_eofs", ("--suppress-ragged-eofs",), True,
          "a TLS connection closed without close_notify simply ends (as gunicorn's default does)",
          action="store_true", value=g_bool),
    _warn("do_handshake_on_connect", ("--do-handshake-on-connect",), False,
          "greenfork completes the TLS handshake before reading a request, within "
          "--tls-handshake-timeout", action="store_true", value=g_bool, fine=(True,)),
    G("ciphers", CONVERT, ("--ciphers",), to="ciphers", convert=optional("ciphers"), value=g_str,
      note="greenfork's default is Mozilla's intermediate list (gunicorn's is OpenSSL's)"),
    # ------------------------------------------------------------------ http/2
    G("http_protocols", SAME, ("--http-protocols",), to="http_protocols", value=to_http_protocols,
      default="h1", note="greenfork's default is h1,h2: set h1 to serve HTTP/1.1 only, as gunicorn's "
                         "default does"),
    G("http2_cleartext", CONVERT, ("--http2-cleartext",), to="http2_cleartext",
      convert=to_http2_cleartext, default="off",
      note="greenfork's default is prior-knowledge (only with h2 in --http-protocols); upgrade and "
           "both are warned: the HTTP/1.1 Upgrade to h2c is not offered (RFC 9113 deprecates it)"),
    G("http2_max_concurrent_streams", SAME, ("--http2-max-concurrent-streams",),
      to="http2_max_concurrent_streams", value=g_int, default=100),
    G("http2_initial_window_size", SAME, ("--http2-initial-window-size",), to="http2_initial_window_size",
      value=g_int, default=65535, note="greenfork's default is 786432 (768 KiB)"),
    G("http2_max_frame_size", SAME, ("--http2-max-frame-size",), to="http2_max_frame_size",
      value=g_int, default=16384),
    G("http2_max_header_list_size", CONVERT, ("--http2-max-header-list-size",),
      to="max_request_headers_total_size", convert=http2_max_header_list_size, value=g_int,
      default=65536,
      note="greenfork bounds HTTP/2 header lists and HTTP/1.1 header sections by one limit, announced "
           "as SETTINGS_MAX_HEADER_LIST_SIZE; 0 (unlimited) is greenfork's ceiling, 16 MiB"),
    G("raw_paste_global_conf", SAME, ("--paste-global",), "append", to="paste_global", value=g_list,
      default=[]),
    # ------------------------------------------------------- http parsing policy
    _warn("permit_obsolete_folding", ("--permit-obsolete-folding",), False, STRICT_HTTP,
          action="store_true", value=g_bool),
    _warn("strip_header_spaces", ("--strip-header-spaces",), False, STRICT_HTTP,
          action="store_true", value=g_bool),
    _warn("permit_unconventional_http_method", ("--permit-unconventional-http-method",), False,
          STRICT_HTTP, action="store_true", value=g_bool),
    _warn("permit_unconventional_http_version", ("--permit-unconventional-http-version",), False,
          STRICT_HTTP, action="store_true", value=g_bool),
    _warn("casefold_http_method", ("--casefold-http-method",), False, STRICT_HTTP,
          action="store_true", value=g_bool),
    _warn("forwarder_headers", ("--forwarder-headers",), "SCRIPT_NAME,PATH_INFO",
          "greenfork sets SCRIPT_NAME from X-Forwarded-Prefix when --forwarded-headers includes "
          "x-forwarded-prefix; header fields named with an underscore (SCRIPT_NAME) are dropped "
          "(docs/proxies.md)"),
    _warn("header_map", ("--header-map",), "drop",
          "greenfork drops header fields whose names contain an underscore from the environ, as "
          "gunicorn's default `drop` does"),
    # ---------------------------------------------------------------------- asgi
    _warn("asgi_loop", ("--asgi-loop",), "auto", ASGI_ONLY),
    _warn("asgi_lifespan", ("--asgi-lifespan",), "auto", ASGI_ONLY),
    _warn("asgi_disconnect_grace_period", ("--asgi-disconnect-grace-period",), 3, ASGI_ONLY,
          value=g_int),
    G("websocket_max_message_size", SAME, ("--websocket-max-message-size",),
      to="websocket_max_message_size", value=g_int, default=16777216,
      note="gunicorn's applies to its ASGI worker; greenfork's WebSocket limits: docs/websocket.md"),
    _warn("http_parser", ("--http-parser",), "auto",
          "greenfork always parses with llhttp (httptools)", fine=("fast",)),
    _warn("root_path", ("--root-path",), "", ASGI_ONLY + " (SCRIPT_NAME in the environment sets "
          "greenfork's)"),
    # ----------------------------------------------------------- dirty arbiters
    _warn("dirty_apps", ("--dirty-app",), [], NO_DIRTY, action="append", value=g_list),
    _warn("dirty_workers", ("--dirty-workers",), 0, NO_DIRTY, value=g_int),
    _warn("dirty_timeout", ("--dirty-timeout",), 300, NO_DIRTY, value=g_int),
    _warn("dirty_threads", ("--dirty-threads",), 1, NO_DIRTY, value=g_int),
    _warn("dirty_graceful_timeout", ("--dirty-graceful-timeout",), 30, NO_DIRTY, value=g_int),
    _warn("on_dirty_starting", (), None, NO_DIRTY_HOOK),
    _warn("dirty_post_fork", (), None, NO_DIRTY_HOOK),
    _warn("dirty_worker_init", (), None, NO_DIRTY_HOOK),
    _warn("dirty_worker_exit", (), None, NO_DIRTY_HOOK),
    # ------------------------------------------------------------------ control
    _warn("control_socket", ("--control-socket",), None, NO_CONTROL),
    _warn("control_socket_mode", ("--control-socket-mode",), 0o600, NO_CONTROL, value=g_auto_int),
    _warn("control_socket_disable", ("--no-control-socket",), False, NO_CONTROL, action="store_true",
          value=g_bool, fine=(True,)),
)

BY_GUNICORN_NAME: dict[str, G] = {g.name: g for g in TABLE}

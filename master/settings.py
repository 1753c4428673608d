"""Every setting, defined once as data.

The CLI (cli.py), the GREENFORK_* environment, greenfork.toml with its profiles
(config.py) and docs/settings.md (docsgen.py) are all generated from SETTINGS,
so a flag can never exist in one place and be missing in another.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "GREENFORK_"
DEMO_APP = "greenfork.workers.demo:app"
COMBINED_LOG = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


class SettingError(ValueError):
    """A value that does not fit its setting; str() is the operator-facing line."""


# ------------------------------------------------------------------ parsers
# Each parser takes what a layer gives (a CLI/env string, or a TOML value) and
# returns the typed value or raises ValueError with a short reason.


def _int(v: object) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v.strip().replace("_", ""), 10)
        except ValueError:
            pass
    raise ValueError("expected an integer")


def _float(v: object) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number of seconds")
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            pass
    raise ValueError("expected a number of seconds")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(v: object) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise ValueError("expected true or false")


def _str(v: object) -> str:
    if isinstance(v, str):
        return v
    raise ValueError("expected a string")


def _opt_str(v: object) -> str | None:
    if v is None:
        return None
    s = _str(v)
    return s or None


def _str_list(v: object) -> tuple[str, ...]:
    # env and CLI give one string; a comma-separated env value is the usual way
    # to pass several addresses through a single variable.
    if isinstance(v, str):
        return tuple(p.strip() for p in v.split(",") if p.strip())
    if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise ValueError("expected a list of strings")


def _octal(v: object) -> int:
    if isinstance(v, bool) or v is None:
        raise ValueError("expected an octal mode such as 660")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v.strip().removeprefix("0o"), 8)
        except ValueError:
            pass
    raise ValueError("expected an octal mode such as 660")


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2,
               "mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3}


def _size(v: object) -> int:
    """Bytes from 536870912, "512MiB", "512M" (binary) or "500MB" (decimal)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", v)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError("expected a size such as 512MiB, 1G or a number of bytes")


def _choice(*options: str) -> Callable[[object], str]:
    def parse(v: object) -> str:
        s = _str(v).strip().lower()
        if s not in options:
            raise ValueError("expected one of " + ", ".join(options))
        return s

    return parse


# ---------------------------------------------------------------------- tls

# Mozilla's "intermediate" TLS 1.2 suites without the DHE ones (the stdlib ssl sets no DH
# parameters, so OpenSSL would never pick them): forward secrecy and AEAD only, AES-GCM first
# because most servers have AES instructions, ChaCha20 for clients that do not.
DEFAULT_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                   "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                   "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
_CERT_REQS = {"0": "none", "1": "optional", "2": "required",
              "none": "none", "optional": "optional", "required": "required",
              "cert_none": "none", "cert_optional": "optional", "cert_required": "required"}
_TLS_VERSIONS = {"1.2": "1.2", "1.3": "1.3"}
_OLD_TLS = {"1.0", "1.1", "1", "ssl3", "3.0"}
_SNI_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_SNI_NAME_RE = re.compile(rf"(\*\.)?{_SNI_LABEL}(\.{_SNI_LABEL})*")


@dataclass(frozen=True, slots=True)
class SniCertificate:
    """One `--sni NAME=CERTFILE[,KEYFILE]`: the certificate served to clients asking for NAME."""

    server_name: str  # lower case, no trailing dot; "*.example.com" matches exactly one label
    certfile: str
    keyfile: str | None = None

    def __str__(self) -> str:
        tail = f",{self.keyfile}" if self.keyfile else ""
        return f"{self.server_name}={self.certfile}{tail}"


def _cert_reqs(v: object) -> str:
    # gunicorn's --cert-reqs takes the ssl module's numbers: 0 none, 1 optional, 2 required
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if isinstance(v, str) and v.strip().lower() in _CERT_REQS:
        return _CERT_REQS[v.strip().lower()]
    raise ValueError("expected none, optional or required (or gunicorn's 0, 1, 2)")


def _tls_version(v: object) -> str:
    if isinstance(v, float | int) and not isinstance(v, bool):
        v = f"{float(v):.1f}"
    if not isinstance(v, str):
        raise ValueError("expected 1.2 or 1.3")
    s = v.strip().lower()
    for prefix in ("tlsv", "tls"):
        s = s.removeprefix(prefix)
    if s in _TLS_VERSIONS:
        return _TLS_VERSIONS[s]
    if s in _OLD_TLS or s.startswith(("ssl", "1.0", "1.1")):
        raise ValueError("TLS 1.0 and 1.1 are refused: RFC 8996 deprecates them (weak hashes, no "
                         "AEAD ciphers) and current browsers and OpenSSL builds no longer accept them; "
                         "use 1.2 or 1.3")
    raise ValueError("expected 1.2 or 1.3")


def _sni_name(name: str) -> str:
    host = name.strip().lower().rstrip(".")
    if not host:
        raise ValueError("the server name is missing before '='")
    try:
        import ipaddress

        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        raise ValueError(f"{name!r} is an IP address: clients send only host names in SNI "
                         "(RFC 6066); a client connecting by address gets the default certificate")
    if not host.isascii():
        raise ValueError(f"{name!r}: write an internationalized name in its xn-- (IDNA) form")
    if ("*" in host and not host.startswith("*.")) or host.count("*") > 1:
        raise ValueError(f"{name!r}: a wildcard must be the whole leftmost label, as in *.example.com")
    if len(host) > 253 or not _SNI_NAME_RE.fullmatch(host):
        raise ValueError(f"{name!r} is not a valid host name")
    return host


def _sni_entry(text: str) -> SniCertificate:
    name, eq, files = text.partition("=")
    if not eq:
        raise ValueError(f"{text!r}: expected HOSTNAME=CERTFILE,KEYFILE")
    host = _sni_name(name)
    cert, _, key = files.partition(",")
    if not cert.strip():
        raise ValueError(f"{text!r}: the certificate file is missing after '='")
    if "," in key:
        raise ValueError(f"{text!r}: expected one certificate file and one key file")
    return SniCertificate(host, cert.strip(), key.strip() or None)


def _sni(v: object) -> tuple[SniCertificate, ...]:
    # The environment gives one string: entries separated by spaces, since the comma is taken
    # by CERTFILE,KEYFILE. The command line and the file give one entry per item.
    if isinstance(v, str):
        items: list[str] = v.split()
    elif isinstance(v, list | tuple) and all(isinstance(x, str | SniCertificate) for x in v):
        items = [str(x) for x in v]
    else:
        raise ValueError("expected a list of HOSTNAME=CERTFILE,KEYFILE strings")
    entries = tuple(_sni_entry(x) for x in items)
    seen: set[str] = set()
    for e in entries:
        if e.server_name in seen:
            raise ValueError(f"{e.server_name} is given twice")
        seen.add(e.server_name)
    return entries


# --------------------------------------------------------------- validators


def _at_least(n: float) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if v < n:
            raise ValueError(f"must be at least {n:g}")

    return check


def _between(lo: int, hi: int) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}")

    return check


def _non_empty(v: Any) -> None:
    if not v:
        raise ValueError("must not be empty")


def _mode(v: Any) -> None:
    if v is not None and not 0 <= v <= 0o777:
        raise ValueError("must be a file mode between 000 and 777")


def _log_format(v: Any) -> None:
    from greenfork.master.logformat import check_format

    check_format(v)


def _addresses(v: Any) -> None:
    from greenfork.master.addresses import parse_bind

    for raw in v:
        parse_bind(raw)  # AddressError is a ValueError with the full reason


def _ciphers(v: Any) -> None:
    import ssl

    if not v.strip():
        raise ValueError("must not be empty")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(v)
    except ssl.SSLError:
        raise ValueError("OpenSSL selects no cipher from this string (see `openssl ciphers -v 'STRING'`)") \
            from None


def _cache_size(v: Any) -> None:
    if v and v < 64 * 1024:  # respcache.MIN_SIZE: the index and the log need room
        raise ValueError("must be 0 (off) or at least 64KiB")


def _metrics_address(v: Any) -> None:
    if v is None:
        return
    from greenfork.master.addresses import parse_bind

    spec = parse_bind(v)
    if spec.kind == "fd" or spec.scheme != "http":
        raise ValueError("expected an http:// or unix: address")


@dataclass(frozen=True, slots=True)
class Setting:
    name: str  # config-file key and Settings attribute
    parse: Callable[[object], Any]
    default: Any
    flags: tuple[str, ...]
    help: str
    section: str
    validate: Callable[[Any], None] | None = None
    metavar: str = ""
    type_doc: str = "string"
    default_doc: str = ""  # when repr(default) is not what a reader should see
    reloadable: bool = True  # whether a HUP may change it
    is_flag: bool = False  # --x / --no-x on the command line
    multiple: bool = False  # -b may be given several times
    positional: bool = False

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()


_S = Setting

SETTINGS: tuple[Setting, ...] = (
    # ------------------------------------------------------------- application
    _S("app", _str, DEMO_APP, (), section="Application", positional=True, metavar="APP",
       help="The WSGI application as `module:callable` or `module:factory()`; "
            "without it greenfork serves its built-in demo page.",
       default_doc="the built-in demo app"),
    _S("chdir", _opt_str, None, ("--chdir",), section="Application", metavar="DIR",
       help="Change to this directory before importing the app (it is put first on sys.path).",
       reloadable=False, default_doc="the current directory"),
    # ---------------------------------------------------------------- listening
    _S("bind", _str_list, ("http://127.0.0.1:8000",), ("-b", "--bind"), section="Listening",
       validate=_addresses, metavar="ADDRESS", multiple=True, type_doc="list of addresses",
       help="Address to listen on; repeat for several (a HUP keeps the sockets of unchanged "
            "addresses). Forms: `http://HOST:PORT`, `HOST:PORT`, "
            "`:PORT` (all interfaces), `[::1]:PORT`, `http://localhost:PORT` (both loopbacks), "
            "`http://*:PORT` (dual-stack), port 0 (any free port, published), `unix:/path`, `fd://N`; "
            "TLS with `https://` in every form but `fd://` (`https://HOST:PORT`, `https://unix:/path`), "
            "which needs --certfile (see docs/tls.md). "
            "With systemd socket activation (LISTEN_FDS) and no explicit bind, only the passed "
            "sockets are used. In the environment, separate addresses with commas."),
    _S("backlog", _int, 2048, ("--backlog",), section="Listening", validate=_between(1, 65535),
       metavar="N", type_doc="integer", reloadable=False,
       help="Length of the kernel's accept queue for each listening socket "
            "(capped by net.core.somaxconn)."),
    _S("unix_socket_mode", _octal, 0o660, ("--unix-socket-mode",), section="Listening",
       validate=_mode, metavar="MODE", type_doc="octal mode", default_doc="660",
       reloadable=False,
       help="File mode of unix sockets greenfork creates (octal, e.g. 666 to let any user connect)."),
    _S("addresses_file", _opt_str, None, ("--addresses-file",), section="Listening", metavar="PATH",
       reloadable=False,
       help="Write the bound addresses as JSON `{\"pid\", \"generation\", \"addresses\"}` to this file "
            "(atomically, rewritten whenever they change; removed on exit).",
       default_doc="none"),
    # ---------------------------------------------------------------------- tls
    _S("certfile", _opt_str, None, ("--certfile",), section="TLS", metavar="PATH", default_doc="none",
       help="PEM file with the server certificate, followed by its intermediate CA certificates "
            "(the chain clients need), and the private key too when --keyfile is not given. Needed "
            "by every `https://` address; read by the master before it drops privileges."),
    _S("keyfile", _opt_str, None, ("--keyfile",), section="TLS", metavar="PATH",
       default_doc="the key in --certfile",
       help="PEM file with the certificate's private key. It may be mode 600 and owned by root: "
            "the master reads it before workers drop privileges. A key readable by group or others "
            "is served, with a warning."),
    _S("keyfile_password_file", _opt_str, None, ("--keyfile-password-file",), section="TLS",
       metavar="PATH", default_doc="none",
       help="File whose first line is the password of encrypted private keys (--keyfile and --sni's). "
            "A file rather than a value, so the password is in neither `ps` output nor the "
            "environment the application inherits."),
    _S("ca_certs", _opt_str, None, ("--ca-certs",), section="TLS", metavar="PATH", default_doc="none",
       help="PEM file with the CA certificates that client certificates must chain to "
            "(used with --cert-reqs optional or required)."),
    _S("cert_reqs", _cert_reqs, "none", ("--cert-reqs",), section="TLS", metavar="MODE",
       type_doc="none|optional|required",
       help="Client certificates: `none` (not asked for), `optional` (asked for; a client without "
            "one is served, one that fails verification is refused), `required` (a client without a "
            "valid one is refused in the handshake). gunicorn's 0, 1 and 2 mean the same."),
    _S("ciphers", _str, DEFAULT_CIPHERS, ("--ciphers",), section="TLS", validate=_ciphers,
       metavar="CIPHERS", default_doc="ECDHE with AES-GCM or ChaCha20 (Mozilla intermediate)",
       help="TLS 1.2 cipher suites in OpenSSL's syntax (`openssl ciphers -v 'STRING'` lists what a "
            "string selects); the server's order is preferred. OpenSSL's security level 2 applies "
            "unless the string sets its own `@SECLEVEL`. TLS 1.3's suites are OpenSSL's and not "
            "changed by this."),
    _S("tls_min_version", _tls_version, "1.2", ("--tls-min-version",), section="TLS", metavar="VERSION",
       type_doc="1.2|1.3",
       help="Oldest TLS version accepted. TLS 1.0 and 1.1 are refused (RFC 8996)."),
    _S("sni", _sni, (), ("--sni",), section="TLS", metavar="HOSTNAME=CERTFILE,KEYFILE", multiple=True,
       type_doc="list of HOSTNAME=CERTFILE,KEYFILE", default_doc="none",
       help="Serve another certificate to clients that ask for HOSTNAME (TLS SNI); repeat for several. "
            "`*.example.com` matches one label (`a.example.com`, not `a.b.example.com`); an exact "
            "name wins over a wildcard; other clients get --certfile. KEYFILE may be left out when "
            "CERTFILE holds the key. In the environment separate entries with spaces."),
    _S("tls_handshake_timeout", _float, 10.0, ("--tls-handshake-timeout",), section="TLS",
       validate=_at_least(0.1), metavar="SECONDS", type_doc="seconds",
       help="Close a connection whose TLS handshake is not complete after this long (Kestrel's "
            "default), so a stalled or cleartext client cannot hold a connection slot."),
    _S("client_cert_user", _choice("none", "cn", "dn"), "none", ("--client-cert-user",), section="TLS",
       metavar="FIELD", type_doc="none|cn|dn",
       help="Set `REMOTE_USER` from the verified client certificate's subject: its common name "
            "(`cn`) or its whole distinguished name in RFC 4514 form (`dn`). Needs --cert-reqs "
            "optional or required."),
    # ------------------------------------------------------------------ workers
    _S("workers", _int, 1, ("-w", "--workers"), section="Workers", validate=_between(1, 4096),
       metavar="N", type_doc="integer",
       help="Number of worker processes. Each serves many connections concurrently (gevent); "
            "one or two per CPU core is typical."),
    _S("worker_connections", _int, 1000, ("--worker-connections",), section="Workers",
       validate=_at_least(1), metavar="N", type_doc="integer",
       help="Maximum concurrent connections per worker; at the limit a worker closes further "
            "connections (after giving workers with room 50 ms to take them)."),
    _S("timeout", _float, 30.0, ("-t", "--timeout"), section="Workers", validate=_at_least(0),
       metavar="SECONDS", type_doc="seconds",
       help="A worker whose event loop has not reported for this long is considered hung "
            "and restarted (0 disables)."),
    _S("graceful_timeout", _float, 30.0, ("--graceful-timeout",), section="Workers",
       validate=_at_least(0), metavar="SECONDS", type_doc="seconds",
       help="On TERM, how long in-flight requests may take to finish before their workers are killed."),
    _S("shutdown_delay", _float, 0.0, ("--shutdown-delay",), section="Workers", validate=_at_least(0),
       metavar="SECONDS", type_doc="seconds",
       help="On TERM, keep serving this long with /readyz answering 503 before draining, so a load "
            "balancer or Kubernetes removes the instance first. A second TERM drains at once."),
    _S("boot_timeout", _float, 30.0, ("--boot-timeout",), section="Workers", validate=_at_least(1),
       metavar="SECONDS", type_doc="seconds",
       help="How long a new worker may take to import the app and report ready."),
    # --------------------------------------------------------------------- http
    _S("keep_alive", _float, 75.0, ("--keep-alive",), section="HTTP", validate=_at_least(0),
       metavar="SECONDS", type_doc="seconds",
       help="Close a keep-alive connection idle for this long (longer than the 60 s idle timeout "
            "of common load balancers, so they close first). 0 disables keep-alive."),
    _S("request_headers_timeout", _float, 30.0, ("--request-headers-timeout",), section="HTTP",
       validate=_at_least(0.1), metavar="SECONDS", type_doc="seconds",
       help="How long a client may take to send a whole request head, counted from the connection's "
            "start or the first byte of the request. Then greenfork answers 408 and closes "
            "(a new connection that sent nothing is closed silently)."),
    _S("min_request_body_data_rate", _float, 240.0, ("--min-request-body-data-rate",), section="HTTP",
       validate=_at_least(0), metavar="BYTES_PER_SECOND", type_doc="bytes per second",
       help="A request body must arrive at least this fast, measured over the time the application "
            "waits for it, once the grace period is over; a slower one is answered with 408 (or "
            "the connection is closed if the response has started). 0 disables the check."),
    _S("request_body_grace_period", _float, 5.0, ("--request-body-grace-period",), section="HTTP",
       validate=_at_least(0), metavar="SECONDS", type_doc="seconds",
       help="How long a request body may be slower than `min_request_body_data_rate` before the "
            "rate is enforced."),
    _S("send_timeout", _float, 60.0, ("--send-timeout",), section="HTTP", validate=_at_least(0.1),
       metavar="SECONDS", type_doc="seconds",
       help="Close a connection whose client takes no response bytes for this long (the time "
            "between two successful writes, not for the whole response)."),
    _S("max_request_line_size", _int, 8192, ("--max-request-line-size",), section="HTTP",
       validate=_between(64, 1 << 20), metavar="BYTES", type_doc="integer",
       help="Longest request line (method, target, version and CRLF); longer gets 414."),
    _S("max_request_header_count", _int, 100, ("--max-request-header-count",), section="HTTP",
       validate=_between(1, 10_000), metavar="N", type_doc="integer",
       help="Most header fields in a request; more gets 431."),
    _S("max_request_headers_total_size", _int, 32768, ("--max-request-headers-total-size",),
       section="HTTP", validate=_between(256, 1 << 24), metavar="BYTES", type_doc="integer",
       help="Largest header section (each field counted as name, value and 4 bytes for `: ` and "
            "CRLF); larger gets 431. Also bounds a chunked body's trailer section."),
    _S("max_request_body_size", _int, 30_000_000, ("--max-request-body-size",), section="HTTP",
       validate=_at_least(0), metavar="BYTES", type_doc="integer",
       help="Largest request body; larger gets 413 (checked against Content-Length when the "
            "application first reads the body, and while a chunked body is read). An application "
            "may change it for one request, before its first read of the body, by calling the "
            "callable in its environ under `greenfork.set_max_request_body_size` with a byte "
            "count (or None: no limit). 0 disables the limit. gunicorn has no such limit: "
            "to accept what it accepted, raise this one (or set 0) and limit uploads in the app "
            "or the proxy in front."),
    _S("server_header", _bool, True, ("--server-header",), section="HTTP", is_flag=True,
       type_doc="boolean", help="Send `Server: greenfork` in responses."),
    # ----------------------------------------------------------- response cache
    # (issue 18: master/respcache.py, workers/cachepolicy.py, workers/cachestage.py)
    _S("response_cache", _size, 0, ("--response-cache",), section="Response cache",
       validate=_cache_size, metavar="SIZE", type_doc="size", default_doc="0 (off)", reloadable=False,
       help="Answer cacheable responses (`Cache-Control: public` with `max-age` or `s-maxage`, see "
            "docs/caching.md) from memory shared by every worker, without calling the app. SIZE is "
            "the whole shared segment, e.g. `64MiB` (at least 64KiB), created by the master at "
            "start. 0 disables it."),
    _S("response_cache_max_entry", _size, 256 * 1024, ("--response-cache-max-entry",),
       section="Response cache", validate=_between(1, 1 << 30), metavar="BYTES", type_doc="size",
       default_doc="256KiB", reloadable=False,
       help="Largest response body the cache stores (HTTP.sys's default); at most a quarter of "
            "--response-cache, less 4KiB (left at its default, it shrinks to fit a small cache). "
            "Larger responses are served, not stored."),
    # ----------------------------------------------------------------- overload
    # (issue 18: workers/overload.py)
    _S("max_queued_requests", _int, 0, ("--max-queued-requests",), section="Overload",
       validate=_at_least(0), metavar="N", type_doc="integer", default_doc="0 (off)",
       help="Requests a worker holds at once, from a request's head to the end of its response "
            "(WebSocket sessions not counted); beyond N it answers 503 with `Retry-After: 1` at once "
            "(error_type request_queue_full) and `/readyz` reports saturation at 90% in every worker. "
            "0 disables the limit. See docs/overload.md for choosing N."),
    # ------------------------------------------------------------------ metrics
    _S("metrics_bind", _opt_str, None, ("--metrics-bind",), section="Metrics", validate=_metrics_address,
       metavar="ADDRESS", reloadable=False, default_doc="off",
       help="Serve Prometheus metrics (`/metrics`), `/livez` and `/readyz` from the master on this "
            "address, e.g. `http://127.0.0.1:9110` (port 0 picks a free port, published like --bind's)."),
    _S("app_metrics", _bool, False, ("--app-metrics",), section="Metrics", is_flag=True,
       type_doc="boolean", reloadable=False,
       help="Also serve the application's own prometheus_client metrics on `/metrics` (multiprocess "
            "mode in a private directory, one set of files per worker slot). Needs --metrics-bind."),
    # ------------------------------------------------------------------ logging
    _S("error_logfile", _str, "-", ("--error-logfile", "--log-file"), section="Logging",
       validate=_non_empty, metavar="PATH",
       reloadable=False,
       help="Where the error log goes: `-` for stderr, or a file path (appended to)."),
    _S("access_logfile", _opt_str, None, ("--access-logfile",), section="Logging", metavar="PATH",
       help="Write an access log in the combined log format: `-` for stdout, or a file path.",
       default_doc="off"),
    _S("access_logformat", _str, COMBINED_LOG, ("--access-logformat",), section="Logging",
       validate=_log_format, metavar="FORMAT", default_doc="the combined log format",
       help="Access log line format with gunicorn's atoms: h remote address, l `-`, u user, t time, "
            "r request line, m method, U path, q query, H protocol, s status, B body bytes, b body "
            "bytes or `-`, f referer, a user agent, T/M/D/L duration in s/ms/us/decimal s, p pid, "
            "`{name}i` request header, `{name}o` response header, `{name}e` WSGI environ key, written "
            "as `%(a)s`. Or `json` for one JSON object per line."),
    _S("log_level", _choice("debug", "info", "warning", "error", "critical"), "info",
       ("--log-level",), section="Logging", metavar="LEVEL", type_doc="debug|info|warning|error|critical",
       reloadable=False,
       help="Minimum level of the error log."),
    # ------------------------------------------------------------------ process
    _S("pidfile", _opt_str, None, ("-p", "--pidfile"), section="Process", metavar="PATH",
       help="Write the master's pid to this file (atomically); removed on exit.",
       reloadable=False, default_doc="none"),
    _S("daemon", _bool, False, ("-D", "--daemon"), section="Process", is_flag=True, type_doc="boolean",
       reloadable=False,
       help="Detach and run in the background. The command returns 0 once the server is bound and "
            "its first workers are ready, or prints the reason and returns non-zero. Set "
            "--error-logfile: stderr goes to /dev/null once started."),
    _S("user", _opt_str, None, ("-u", "--user"), section="Process", metavar="USER", reloadable=False,
       help="Run workers as this user (name or uid); the master keeps its privileges to bind "
            "ports below 1024. Unix sockets and log files are handed to the user.",
       default_doc="the master's user"),
    _S("group", _opt_str, None, ("-g", "--group"), section="Process", metavar="GROUP", reloadable=False,
       help="Run workers with this group (name or gid).", default_doc="the user's primary group"),
    _S("umask", _octal, None, ("--umask",), section="Process", validate=_mode, metavar="MODE",
       type_doc="octal mode", reloadable=False,
       help="File mode creation mask of the master and workers (e.g. 027).", default_doc="inherited"),
    _S("proc_name", _opt_str, None, ("-n", "--name"), section="Process", metavar="NAME",
       help="Name shown in process titles (`greenfork: master [NAME]`).", default_doc="the app spec"),
    # ---------------------------------------------------------------- lifecycle
    _S("preload", _bool, False, ("--preload",), section="Lifecycle", is_flag=True, type_doc="boolean",
       reloadable=False,
       help="Import the app in the master before forking (workers share its memory; `gc.freeze()` "
            "keeps it shared). HUP then re-executes the master to load new code (see docs/signals.md)."),
    _S("abort_grace", _float, 3.0, ("--abort-grace",), section="Lifecycle", validate=_at_least(0),
       metavar="SECONDS", type_doc="seconds",
       help="After SIGABRT to a hung worker (it writes its stacks to the error log), how long "
            "before SIGKILL."),
    _S("request_timeout", _float, 0.0, ("--request-timeout",), section="Lifecycle",
       validate=_at_least(0), metavar="SECONDS", type_doc="seconds", default_doc="0 (off)",
       help="Bound one request's handling: 504 if no response has started, else the connection is "
            "closed. The worker and its other connections carry on. 0 disables."),
    _S("max_requests", _int, 0, ("--max-requests",), section="Lifecycle", validate=_at_least(0),
       metavar="N", type_doc="integer", default_doc="0 (off)",
       help="Replace a worker after it has served this many requests (its replacement is ready "
            "first). 0 disables."),
    _S("max_requests_jitter", _int, 0, ("--max-requests-jitter",), section="Lifecycle",
       validate=_at_least(0), metavar="N", type_doc="integer",
       help="Add a random 0..N to each worker's --max-requests, so workers do not recycle together."),
    _S("max_worker_lifetime", _float, 0.0, ("--max-worker-lifetime",), section="Lifecycle",
       validate=_at_least(0), metavar="SECONDS", type_doc="seconds", default_doc="0 (off)",
       help="Replace a worker after it has run this long (its replacement is ready first). 0 disables."),
    _S("max_worker_lifetime_jitter", _float, 0.0, ("--max-worker-lifetime-jitter",), section="Lifecycle",
       validate=_at_least(0), metavar="SECONDS", type_doc="seconds",
       help="Add a random 0..SECONDS to each worker's --max-worker-lifetime."),
    _S("max_worker_memory", _size, 0, ("--max-worker-memory",), section="Lifecycle",
       validate=_at_least(0), metavar="SIZE", type_doc="size", default_doc="0 (off)",
       help="Replace a worker whose unique memory (USS: private pages, from /proc) is above SIZE on "
            "3 samples in a row, taken every 2 s. SIZE: bytes, or with K/M/G, KiB/MiB/GiB (1024) or "
            "KB/MB/GB (1000). 0 disables."),
    _S("reload", _bool, False, ("--reload",), section="Lifecycle", is_flag=True, type_doc="boolean",
       help="Development: reload (like HUP) when a source file of the app changes. Workers poll the "
            "imported modules' files once a second."),
    _S("reload_extra_file", _str_list, (), ("--reload-extra-file",), section="Lifecycle",
       metavar="GLOB", multiple=True, type_doc="list of globs", default_doc="none",
       help="With --reload, also watch files matching this glob (repeat for several; `**` recurses)."),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


@dataclass(frozen=True, slots=True)
class Settings:
    """The resolved, validated configuration; built by config.resolve().

    Only the types live here (for mypy); defaults live in SETTINGS alone.
    """

    app: str
    chdir: str | None
    bind: tuple[str, ...]
    backlog: int
    unix_socket_mode: int
    addresses_file: str | None
    certfile: str | None
    keyfile: str | None
    keyfile_password_file: str | None
    ca_certs: str | None
    cert_reqs: str
    ciphers: str
    tls_min_version: str
    sni: tuple[SniCertificate, ...]
    tls_handshake_timeout: float
    client_cert_user: str
    workers: int
    worker_connections: int
    timeout: float
    graceful_timeout: float
    shutdown_delay: float
    boot_timeout: float
    keep_alive: float
    request_headers_timeout: float
    min_request_body_data_rate: float
    request_body_grace_period: float
    send_timeout: float
    max_request_line_size: int
    max_request_header_count: int
    max_request_headers_total_size: int
    max_request_body_size: int
    server_header: bool
    response_cache: int  # bytes of the shared segment; 0: off
    response_cache_max_entry: int
    max_queued_requests: int  # 0: off
    metrics_bind: str | None
    app_metrics: bool
    error_logfile: str
    access_logfile: str | None
    access_logformat: str
    log_level: str
    pidfile: str | None
    daemon: bool
    user: str | None
    group: str | None
    umask: int | None
    proc_name: str | None
    preload: bool
    abort_grace: float
    request_timeout: float
    max_requests: int
    max_requests_jitter: int
    max_worker_lifetime: float
    max_worker_lifetime_jitter: float
    max_worker_memory: int
    reload: bool
    reload_extra_file: tuple[str, ...]
    # where each value came from ("default", "env GREENFORK_X", ...): for error messages
    sources: tuple[tuple[str, str], ...] = ()

    @property
    def app_label(self) -> str:
        if self.proc_name:
            return self.proc_name
        return "demo" if self.app == DEMO_APP else self.app

    def source_of(self, name: str) -> str:
        return dict(self.sources).get(name, "default")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def defaults(**overrides: Any) -> Settings:
    """Settings from the table's defaults, with overrides (validated by config.build)."""
    values = {s.name: s.default for s in SETTINGS}
    values.update(overrides)
    return Settings(**values)


def check_table(settings: Sequence[Setting] = SETTINGS) -> None:
    """The table and the Settings dataclass must name the same settings; a test calls this."""
    fields = set(Settings.__dataclass_fields__) - {"sources"}
    names = {s.name for s in settings}
    if fields != names:
        raise AssertionError(f"Settings fields and SETTINGS differ: {sorted(fields ^ names)}")

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

from greenfork.master import hookspec
from greenfork.master.hookspec import Hook
from greenfork.master.prefixes import Delegate, Mount, parse_delegates, parse_mounts

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


def _cache_paths(v: object) -> tuple[str, ...]:
    """--response-cache-path: absolute paths, without a trailing slash (but `/` itself)."""
    out = []
    for p in _str_list(v):
        if not p.startswith("/") or any(c in p for c in "?#\0 ") or not p.isascii():
            raise ValueError(f"{p!r} is not a path prefix: an ASCII path starting with /, "
                             "without ?, #, spaces or NUL")
        out.append(p.rstrip("/") or "/")
    return tuple(out)


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


# -------------------------------------------------------------------- http/2

_PROTOCOLS = {"h1": "h1", "http/1.1": "h1", "h2": "h2"}


def _protocols(v: object) -> tuple[str, ...]:
    """gunicorn's --http-protocols: "h1,h2" (any order: see the help text)."""
    items = _str_list(v)
    out: list[str] = []
    for item in items:
        name = _PROTOCOLS.get(item.strip().lower())
        if name is None:
            raise ValueError(f"unknown protocol {item!r}: expected h1, h2 or both (h1,h2)")
        if name in out:
            raise ValueError(f"{item!r} is given twice")
        out.append(name)
    if not out:
        raise ValueError("expected h1, h2 or both (h1,h2)")
    return tuple(out)


def _h2c(v: object) -> str:
    s = _str(v).strip().lower()
    if s in ("upgrade", "both"):
        raise ValueError("the HTTP/1.1 Upgrade to h2c is deprecated by RFC 9113 (section 3.1) and not "
                         "offered; clients speak h2c with prior knowledge (curl --http2-prior-knowledge)")
    if s not in ("off", "prior-knowledge"):
        raise ValueError("expected off or prior-knowledge")
    return s
# ------------------------------------------------------------------ proxies
# (issue 14: the PROXY protocol, forwarded headers, allowed hosts, a required header)

# The trust lists' default: the loopback addresses, as gunicorn's, and peers on unix-socket
# listeners, which gunicorn trusts unconditionally; here it is an entry that can be left out.
# A unix socket (mode 660 by default) is no easier to reach than loopback, which any local
# process can connect to.
DEFAULT_TRUST = "127.0.0.1,::1,unix"
# workers/forwarded.py's DEFAULT_HONOURED (a test checks they agree): the master does not
# import worker modules for its defaults.
DEFAULT_FORWARDED_HEADERS = ("x-forwarded-for", "x-forwarded-proto")


def _proxy_mode(v: object) -> str:
    from greenfork.master.addresses import parse_proxy_mode

    if isinstance(v, bool):  # gunicorn's old boolean form (TOML true/false)
        return "any" if v else "off"
    return parse_proxy_mode(_str(v))


def _trust_list(v: object) -> str:
    """A trust list as its canonical text; "" trusts nobody."""
    from greenfork.master import trust

    if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
        return trust.validate(v)
    return trust.validate(_str(v))


def _forwarded_headers(v: object) -> tuple[str, ...]:
    from greenfork.workers.forwarded import HONOURABLE, parse_honoured

    if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
        names = parse_honoured(v)
    else:
        names = parse_honoured(_str(v))
    return tuple(n for n in HONOURABLE if n in names)


def _allowed_hosts(v: object) -> tuple[str, ...]:
    from greenfork.workers.hosts import AllowedHosts

    return AllowedHosts(_str_list(v)).patterns


_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers that frame or route the request: a secret in one of them would be consumed (or
# rewritten) on the way, and removing it from the environ would break the request.
_NOT_A_SECRET = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection",
                           "upgrade", "te", "trailer", "keep-alive", "expect", "proxy-connection"})


def _require_header(v: object) -> str | None:
    """NAME=VALUE, or None (off)."""
    text = _opt_str(v)
    if text is None:
        return None
    name, eq, value = text.partition("=")
    name = name.strip()
    if not eq or not name:
        raise ValueError("expected NAME=VALUE, such as X-Proxy-Secret=s3cr3t")
    if not _TOKEN_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a header name")
    if "_" in name:
        raise ValueError(f"{name!r}: headers with '_' never reach the environ (they could pose as "
                         "dashed ones); use '-'")
    if name.lower() in _NOT_A_SECRET:
        raise ValueError(f"{name!r} frames or routes the request; choose a header of your own")
    if not value or value != value.strip(" \t") or not all(0x21 <= ord(c) <= 0x7E for c in value):
        raise ValueError("the value must be visible ASCII, without spaces around it")
    return f"{name}={value}"


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


def _above(n: float) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if v <= n:
            raise ValueError(f"must be more than {n:g}")

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
    if spec.kind == "fd" or spec.scheme != "http" or spec.handoff:
        raise ValueError("expected an http:// or unix: address")


# ------------------------------------------- the gunicorn drop-in (issue 16)
# Parsers of the settings a gunicorn deployment expects (raw_env, pythonpath, --paste,
# server hooks); the mapping of gunicorn's own names lives in gunicornmap.py.
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_entries(v: object) -> tuple[str, ...]:
    """NAME=VALUE entries (gunicorn's raw_env). In GREENFORK_ENV one entry per line, since a
    value may hold commas and spaces."""
    if isinstance(v, str):
        items = [line.strip() for line in v.splitlines() if line.strip()]
    elif isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
        items = [x.strip() for x in v]
    else:
        raise ValueError("expected a list of NAME=VALUE strings")
    for item in items:
        name, eq, _ = item.partition("=")
        if not eq or not _ENV_NAME_RE.fullmatch(name):
            raise ValueError(f"{item!r}: expected NAME=VALUE with NAME a variable name")
    return tuple(items)


def _paths(v: object) -> tuple[str, ...]:
    """Directories, comma-separated as gunicorn's --pythonpath takes them, or repeated."""
    if isinstance(v, str):
        v = [v]
    if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
        return tuple(p.strip() for x in v for p in x.split(",") if p.strip())
    raise ValueError("expected a comma-separated list of directories")


def _paste_globals(v: object) -> tuple[str, ...]:
    """KEY=VALUE entries for PasteDeploy's global_conf (`\\=` is a literal `=` in KEY)."""
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list | tuple) or not all(isinstance(x, str) for x in items):
        raise ValueError("expected a list of KEY=VALUE strings")
    for item in items:
        if not re.search(r"(?<!\\)=", item):
            raise ValueError(f"{item!r}: expected KEY=VALUE")
    return tuple(items)


def _paste(v: object) -> str | None:
    s = _opt_str(v)
    if s is not None and not s.split("#", 1)[0].strip():
        raise ValueError("expected the path of a PasteDeploy .ini file, optionally with #APP_NAME")
    return s


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
    bare: str | None = None  # the value of the flag given without one (gunicorn's bare --proxy-protocol)

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()


_S = Setting

SETTINGS: tuple[Setting, ...] = (
    # ------------------------------------------------------------- application
    _S("app", _str, DEMO_APP, (), section="Application", positional=True, metavar="APP",
       help="The WSGI application as `module:callable` or `module:factory()`, whose arguments may "
            "be Python literals (`module:create_app('prod', debug=True)`: read, never evaluated); "
            "`module` alone means `module:application`. Without it greenfork serves its built-in "
            "demo page.",
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
            "A listener takes options as a URL query at the end: `?proxy-protocol=v2` sets its PROXY "
            "protocol mode (see proxy_protocol). "
            "With systemd socket activation (LISTEN_FDS) and no explicit bind, only the passed "
            "sockets are used. Else, with no bind given anywhere, `PORT` in the environment means "
            "`http://0.0.0.0:$PORT` (Heroku's, Cloud Run's and Render's convention, as in gunicorn). "
            "In the environment, separate addresses with commas."),
    _S("backlog", _int, 2048, ("--backlog",), section="Listening", validate=_between(1, 65535),
       metavar="N", type_doc="integer", reloadable=False,
       help="Length of the kernel's accept queue for each listening socket "
            "(capped by net.core.somaxconn)."),
    _S("defer_accept", _int, 1, ("--defer-accept",), section="Listening", validate=_between(0, 600),
       metavar="SECONDS", type_doc="seconds (integer)", reloadable=False,
       help="TCP listeners hand a connection to a worker only once its first bytes have arrived "
            "(Linux's TCP_DEFER_ACCEPT, as Apache's and uWSGI's defaults do): a worker wakes once a "
            "connection, with the request already there, instead of once for the connection and "
            "again for its request, and connections that never send (port scans, TCP health "
            "checks) never reach a worker. One that has sent nothing after about this long is "
            "handed over anyway (the kernel rounds it up to its SYN-ACK retransmissions: 1, 3, "
            "7 s...), and greenfork's own timeouts take it from there. Set on adopted sockets "
            "(`fd://`, systemd) too. 0 leaves the option alone (off on sockets greenfork binds). "
            "See docs/http.md."),
    _S("unix_socket_mode", _octal, 0o660, ("--unix-socket-mode",), section="Listening",
       validate=_mode, metavar="MODE", type_doc="octal mode", default_doc="660",
       reloadable=False,
       help="File mode of unix sockets greenfork creates (octal, e.g. 666 to let any user connect)."),
    _S("addresses_file", _opt_str, None, ("--addresses-file",), section="Listening", metavar="PATH",
       reloadable=False,
       help="Write the bound addresses as JSON `{\"pid\", \"generation\", \"addresses\"}` to this file "
            "(atomically, rewritten whenever they change; removed on exit).",
       default_doc="none"),
    # ------------------------------------------------------------ port sharing
    # issue 17 (docs/port-sharing.md): several apps on one listener, and whole connections
    # handed to other greenfork servers; the prefixes are parsed in master/prefixes.py.
    _S("mount", parse_mounts, (), ("--mount",), section="Port sharing", metavar="PREFIX=APP",
       multiple=True, type_doc="list of PREFIX=APP", default_doc="none", reloadable=False,
       help="Serve APP (`module:callable`, as the main APP) under PREFIX on every listener: `/path`, "
            "`host`, `host/path`, or `*.example.com` for every name under example.com. The longest "
            "matching path wins (whole segments only: `/api` matches `/api/x`, not `/apix`), then a "
            "host-only prefix, then the main APP, or 404 when no APP is given. The app sees the "
            "prefix's path in SCRIPT_NAME and the rest in PATH_INFO. Repeat for several; in the "
            "environment separate them with commas; in greenfork.toml a list or a table "
            "`mount = {\"/api\" = \"api:app\"}`. Changed by a restart or a binary upgrade (USR2)."),
    _S("delegate", parse_delegates, (), ("--delegate",), section="Port sharing",
       metavar="PREFIX=unix:PATH", multiple=True, type_doc="list of PREFIX=unix:PATH", default_doc="none",
       help="Hand every connection whose first request matches PREFIX (as in --mount) to the greenfork "
            "server listening on `handoff:PATH` (its own user, virtualenv, code and lifecycle): the "
            "client socket and the bytes read so far go over the unix socket (SCM_RIGHTS), and that "
            "server serves the connection from then on, keep-alive requests included. Repeat for "
            "several."),
    _S("delegate_wait", _float, 1.0, ("--delegate-wait",), section="Port sharing", validate=_at_least(0),
       metavar="SECONDS", type_doc="seconds",
       help="How long a front keeps trying a target that is down or whose hand-off queue is full, "
            "before it answers 503 with Retry-After (a reload or upgrade of the target keeps its "
            "socket: nothing waits then)."),
    _S("handoff_socket_group", _opt_str, None, ("--handoff-socket-group",), section="Port sharing",
       metavar="GROUP", reloadable=False, default_doc="the workers' group",
       help="Group owning the `handoff:` socket files this server creates, so that a front running as "
            "another user in that group may connect (with --unix-socket-mode 660)."),
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
    # ------------------------------------------------------------------- http/2
    _S("http_protocols", _protocols, ("h1", "h2"), ("--http-protocols",), section="HTTP/2",
       metavar="PROTOCOLS", type_doc="list of h1, h2", default_doc="h1,h2",
       help="The HTTP versions served, comma-separated (gunicorn's name): `h1` is HTTP/1.1, `h2` "
            "HTTP/2, over TLS when the client picks `h2` by ALPN and on cleartext listeners when it "
            "opens with the HTTP/2 preface (prior knowledge, see --http2-cleartext). `h1` alone turns "
            "HTTP/2 off, and so does --delegate (a delegating front hands over HTTP/1.1 connections). "
            "The order does not matter: a TLS client offering both gets HTTP/2. With `h2` "
            "alone only `h2` is offered by ALPN; a client that does not pick it is still answered in "
            "HTTP/1.1, as there is no way to refuse it politely."),
    _S("http2_cleartext", _h2c, "prior-knowledge", ("--http2-cleartext",), section="HTTP/2",
       metavar="MODE", type_doc="off|prior-knowledge",
       help="Cleartext HTTP/2 (h2c) on http:// and unix: listeners: `prior-knowledge` serves a "
            "connection that opens with the HTTP/2 connection preface (RFC 9113 3.3), `off` serves "
            "those listeners HTTP/1.1 only. The HTTP/1.1 `Upgrade: h2c` is not offered (RFC 9113 "
            "deprecates it). Only with `h2` in --http-protocols."),
    _S("http2_max_concurrent_streams", _int, 100, ("--http2-max-concurrent-streams",), section="HTTP/2",
       validate=_between(1, 2**31 - 1), metavar="N", type_doc="integer",
       help="Streams (requests) one HTTP/2 connection may have in progress, announced as "
            "SETTINGS_MAX_CONCURRENT_STREAMS; a stream past it is refused with REFUSED_STREAM (the "
            "client may retry it) and the connection carries on. A stream counts until its "
            "application call has returned, even when the client reset it (Kestrel's "
            "MaxStreamsPerConnection)."),
    _S("http2_header_table_size", _int, 4096, ("--http2-header-table-size",), section="HTTP/2",
       validate=_between(0, 1 << 20), metavar="BYTES", type_doc="integer",
       help="Size of the HPACK dynamic table the server's decoder keeps per connection, announced "
            "as SETTINGS_HEADER_TABLE_SIZE (Kestrel's HeaderTableSize)."),
    _S("http2_max_frame_size", _int, 16384, ("--http2-max-frame-size",), section="HTTP/2",
       validate=_between(16384, 16777215), metavar="BYTES", type_doc="integer",
       help="Largest frame payload the server accepts, announced as SETTINGS_MAX_FRAME_SIZE; a "
            "larger frame is a FRAME_SIZE_ERROR (Kestrel's MaxFrameSize)."),
    _S("http2_max_request_header_field_size", _int, 16384, ("--http2-max-request-header-field-size",),
       section="HTTP/2", validate=_between(64, 1 << 24), metavar="BYTES", type_doc="integer",
       help="Longest name or value of one request header field after HPACK decoding; a longer one is "
            "answered 431 on its stream (Kestrel's MaxRequestHeaderFieldSize). The whole header "
            "section is bounded by --max-request-headers-total-size and --max-request-header-count, "
            "as in HTTP/1.1, and announced as SETTINGS_MAX_HEADER_LIST_SIZE."),
    _S("http2_initial_window_size", _int, 768 * 1024, ("--http2-initial-window-size",), section="HTTP/2",
       validate=_between(65535, 2**31 - 1), metavar="BYTES", type_doc="integer",
       help="Request body bytes a client may send on one stream before the application reads them, "
            "announced as SETTINGS_INITIAL_WINDOW_SIZE (Kestrel's InitialStreamWindowSize; gunicorn's "
            "name). The window reopens as the application reads wsgi.input."),
    _S("http2_initial_connection_window_size", _int, 1 << 20, ("--http2-initial-connection-window-size",),
       section="HTTP/2", validate=_between(65535, 2**31 - 1), metavar="BYTES", type_doc="integer",
       help="Request body bytes a client may send on all streams of a connection together before "
            "applications read them (Kestrel's InitialConnectionWindowSize): it bounds the memory one "
            "connection's unread bodies take."),
    _S("http2_keep_alive_ping_delay", _float, 0.0, ("--http2-keep-alive-ping-delay",), section="HTTP/2",
       validate=_at_least(0), metavar="SECONDS", type_doc="seconds", default_doc="0 (off)",
       help="Send a PING on an HTTP/2 connection that has received nothing for this long, to find "
            "peers that vanished without a close (Kestrel's KeepAlivePingDelay). 0 disables."),
    _S("http2_keep_alive_ping_timeout", _float, 20.0, ("--http2-keep-alive-ping-timeout",),
       section="HTTP/2", validate=_at_least(0.1), metavar="SECONDS", type_doc="seconds",
       help="Close the connection when nothing arrives this long after such a PING (Kestrel's "
            "KeepAlivePingTimeout)."),
    # ------------------------------------------------------------------ proxies
    # (issue 14; docs/proxies.md)
    _S("proxy_protocol", _proxy_mode, "off", ("--proxy-protocol",), section="Proxies", metavar="MODE",
       type_doc="off|v1|v2|any", bare="any",
       help="Require a PROXY protocol header (HAProxy's; sent by HAProxy, nginx's stream module, cloud "
            "load balancers) at the start of every connection to a --bind listener: `v1` (text), `v2` "
            "(binary), `any` (either; still required: never guessed). The header's client address "
            "becomes REMOTE_ADDR. A listener's own `?proxy-protocol=MODE` option wins over this; "
            "the --metrics-bind listener takes only its own. gunicorn's `auto`, and the flag "
            "alone as gunicorn takes it, mean `any`."),
    _S("proxy_allow_from", _trust_list, DEFAULT_TRUST, ("--proxy-allow-from",), section="Proxies",
       metavar="LIST", type_doc="trust list",
       help="Peers allowed to send PROXY headers: IP addresses and CIDR networks separated by commas, "
            "`unix` (peers on unix-socket listeners) or `*` (everyone). A connection from anyone else "
            "to a PROXY listener is closed unanswered (error_type proxy_protocol_untrusted). Empty: "
            "nobody."),
    _S("proxy_protocol_timeout", _float, 10.0, ("--proxy-protocol-timeout",), section="Proxies",
       validate=_at_least(0.1), metavar="SECONDS", type_doc="seconds",
       help="Close a connection to a PROXY listener whose header is not complete this long after it "
            "was accepted (error_type proxy_protocol_timeout). The request-head timeout starts "
            "after the header."),
    _S("forwarded_allow_ips", _trust_list, DEFAULT_TRUST, ("--forwarded-allow-ips",), section="Proxies",
       metavar="LIST", type_doc="trust list",
       help="Peers whose forwarded headers (see forwarded_headers) are applied: a list like "
            "proxy_allow_from's. The peer is the connection's, or the client a PROXY header named. "
            "From anyone else the headers reach the application unapplied. Empty: nobody. Without "
            "this setting anywhere, `FORWARDED_ALLOW_IPS` in the environment is read, as gunicorn does."),
    _S("forwarded_headers", _forwarded_headers, DEFAULT_FORWARDED_HEADERS, ("--forwarded-headers",),
       section="Proxies", metavar="NAMES", type_doc="list of header names",
       default_doc="x-forwarded-for,x-forwarded-proto",
       help="Which forwarded headers are applied, from trusted peers: any of x-forwarded-for, "
            "x-forwarded-proto, x-forwarded-host, x-forwarded-port, x-forwarded-prefix and forwarded "
            "(RFC 7239), separated by commas, or `none`. Honour Host, Port and Prefix only if your "
            "proxy sets them (overwriting what the client sent). Not gunicorn's --forwarder-headers."),
    _S("allowed_hosts", _allowed_hosts, (), ("--allowed-hosts",), section="Proxies", metavar="HOSTS",
       type_doc="list of host patterns", default_doc="every host",
       help="Serve only requests whose Host (after forwarded headers) matches: `example.com`, "
            "`*.example.com` (names under it), `[::1]`, each with an optional `:port`, separated by "
            "commas. Anything else, a missing Host included, is answered 400 before the application "
            "(error_type host_not_allowed)."),
    _S("require_header", _require_header, None, ("--require-header",), section="Proxies",
       metavar="NAME=VALUE", default_doc="none",
       help="Answer 403 before the application to every request without this header and value, a "
            "secret the front proxy adds, so only the proxy can reach the application (what the "
            "ASP.NET Core Module's token does for Kestrel); the header is removed from the environ. "
            "Give it in the environment or greenfork.toml rather than on the command line, "
            "which `ps` shows."),
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
    _S("response_cache_path", _cache_paths, (), ("--response-cache-path",), section="Response cache",
       metavar="PREFIX", multiple=True, type_doc="list of paths", default_doc="every path",
       help="Consult the cache only for request paths under PREFIX (`/static` matches `/static` and "
            "`/static/x`, not `/staticx`; the path as the request gives it, before --mount), as "
            "nginx's proxy_cache is set per location: every other request costs one prefix test "
            "instead of the cache's tests (a few bytecodes for a URL the cache has sent past it before; "
            "docs/caching.md), and is not counted in the cache's metrics. Repeat for "
            "several; in the environment separate them with commas."),
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
            "address, e.g. `http://127.0.0.1:9110` (port 0 picks a free port, published like --bind's). "
            "With `?proxy-protocol=MODE` it reads a PROXY header first (from --proxy-allow-from "
            "peers), for load balancers whose health checks send one (HAProxy's check-send-proxy)."),
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
    # ---------------------------------------------------------------- websocket
    # (docs/websocket.md; workers/websocket.py's Limits and going_away)
    _S("websocket_max_message_size", _size, 16 << 20, ("--websocket-max-message-size",), section="WebSocket",
       validate=_at_least(1), metavar="SIZE", type_doc="size", default_doc="16MiB",
       help="Largest WebSocket message a client may send (after decompression); larger closes the "
            "WebSocket with 1009. SIZE as for --max-worker-memory."),
    _S("websocket_max_frame_size", _size, 16 << 20, ("--websocket-max-frame-size",), section="WebSocket",
       validate=_at_least(1), metavar="SIZE", type_doc="size", default_doc="16MiB",
       help="Largest WebSocket frame payload (after decompression); larger closes with 1009 before "
            "the frame is read whole."),
    _S("websocket_ping_interval", _float, 20.0, ("--websocket-ping-interval",), section="WebSocket",
       validate=_at_least(0), metavar="SECONDS", type_doc="seconds",
       help="Ping a WebSocket client after this long without a byte from it (0: never)."),
    _S("websocket_ping_timeout", _float, 20.0, ("--websocket-ping-timeout",), section="WebSocket",
       validate=_above(0), metavar="SECONDS", type_doc="seconds",
       help="A WebSocket client that sends nothing (its pong included) this long after a ping is "
            "gone: the connection is cut."),
    _S("websocket_idle_timeout", _float, 0.0, ("--websocket-idle-timeout",), section="WebSocket",
       validate=_at_least(0), metavar="SECONDS", type_doc="seconds", default_doc="0 (off)",
       help="Close a WebSocket with 1001 after this long without a message either way (pings do "
            "not count). 0 disables."),
    _S("websocket_close_timeout", _float, 5.0, ("--websocket-close-timeout",), section="WebSocket",
       validate=_at_least(0.1), metavar="SECONDS", type_doc="seconds",
       help="After the server's close frame, how long the client's is awaited before the "
            "connection is cut."),
    _S("websocket_grace", _float, 5.0, ("--websocket-grace",), section="WebSocket",
       validate=_at_least(0), metavar="SECONDS", type_doc="seconds",
       help="On TERM, HUP and worker recycling, open WebSockets get a 1001 (going away) close frame "
            "at once and this long to complete the close handshake; then they are cut. Keep it "
            "under --graceful-timeout."),
    _S("websocket_compression", _bool, True, ("--websocket-compression",), section="WebSocket",
       is_flag=True, type_doc="boolean",
       help="Accept permessage-deflate (RFC 7692) when a WebSocket client offers it."),
    # ------------------------------------------- the gunicorn drop-in (issue 16)
    _S("env", _env_entries, (), ("-e", "--env"), section="Application", metavar="NAME=VALUE",
       multiple=True, type_doc="list of NAME=VALUE", default_doc="none",
       help="Set an environment variable for the application (gunicorn's raw_env); repeat for "
            "several. Set in the master before anything is imported (so `--preload` and hooks see "
            "it) and in every worker; a HUP applies changed values to the new workers. In "
            "GREENFORK_ENV put one NAME=VALUE per line."),
    _S("pythonpath", _paths, (), ("--pythonpath",), section="Application", metavar="DIRS",
       multiple=True, type_doc="list of directories", default_doc="none", reloadable=False,
       help="Directories put first on sys.path before the app (and hooks) are imported; "
            "comma-separated as in gunicorn, or repeated."),
    _S("paste", _paste, None, ("--paste", "--paster"), section="Application", metavar="INI[#NAME]",
       default_doc="none",
       help="Load the application from a PasteDeploy configuration file (Pyramid, TurboGears), "
            "instead of APP: its `[app:main]` section, or `[app:NAME]` with `#NAME`. Its `[loggers]` "
            "sections, if any, configure Python logging in the workers."),
    _S("paste_global", _paste_globals, (), ("--paste-global",), section="Application",
       metavar="KEY=VALUE", multiple=True, type_doc="list of KEY=VALUE", default_doc="none",
       help="A PasteDeploy global variable (its `global_conf`), as `%(KEY)s` in the .ini; "
            "repeat for several."),
    *(_S(h.name, hookspec.parser(h.name), None, (), section="Server hooks", metavar="MODULE:FUNCTION",
         type_doc="hook: MODULE:FUNCTION (a function in a Python config file)", default_doc="none",
         help=f"`{h.signature}`, gunicorn's hook. {h.when}")
      for h in hookspec.HOOK_DEFS),
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
    defer_accept: int
    unix_socket_mode: int
    addresses_file: str | None
    mount: tuple[Mount, ...]  # issue 17: port sharing
    delegate: tuple[Delegate, ...]
    delegate_wait: float
    handoff_socket_group: str | None
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
    http_protocols: tuple[str, ...]
    http2_cleartext: str
    http2_max_concurrent_streams: int
    http2_header_table_size: int
    http2_max_frame_size: int
    http2_max_request_header_field_size: int
    http2_initial_window_size: int
    http2_initial_connection_window_size: int
    http2_keep_alive_ping_delay: float
    http2_keep_alive_ping_timeout: float
    # proxies (issue 14)
    proxy_protocol: str
    proxy_allow_from: str
    proxy_protocol_timeout: float
    forwarded_allow_ips: str
    forwarded_headers: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    require_header: str | None
    response_cache: int  # bytes of the shared segment; 0: off
    response_cache_max_entry: int
    response_cache_path: tuple[str, ...]  # empty: every path
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
    # WebSocket
    websocket_max_message_size: int
    websocket_max_frame_size: int
    websocket_ping_interval: float
    websocket_ping_timeout: float
    websocket_idle_timeout: float
    websocket_close_timeout: float
    websocket_grace: float
    websocket_compression: bool
    # the gunicorn drop-in (issue 16)
    env: tuple[str, ...]
    pythonpath: tuple[str, ...]
    paste: str | None
    paste_global: tuple[str, ...]
    on_starting: Hook | None
    on_reload: Hook | None
    when_ready: Hook | None
    pre_fork: Hook | None
    post_fork: Hook | None
    post_worker_init: Hook | None
    worker_int: Hook | None
    worker_abort: Hook | None
    pre_exec: Hook | None
    pre_request: Hook | None
    post_request: Hook | None
    child_exit: Hook | None
    worker_exit: Hook | None
    nworkers_changed: Hook | None
    on_exit: Hook | None
    # where each value came from ("default", "env GREENFORK_X", ...): for error messages
    sources: tuple[tuple[str, str], ...] = ()

    @property
    def app_label(self) -> str:
        if self.proc_name:
            return self.proc_name
        if self.paste:  # a PasteDeploy app is named by its .ini, as in gunicorn
            return self.paste
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

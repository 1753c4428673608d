"""How gunicorn reads a setting's value, and the conversions of gunicorn's values into greenfork's
settings that gunicornmap.TABLE names. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


class Out:
    """What translating one gunicorn value produced: greenfork raw values and message lines."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.warnings: list[str] = []  # a value greenfork ignores or cannot honour as given
        self.notes: list[str] = []  # mapped, with a difference worth saying

    def set(self, name: str, value: object) -> None:
        self.values[name] = value


Convert = Callable[[Any, Out], None]


# --------------------------------------------------------- gunicorn's value types
# As gunicorn's validators read them: a config file gives Python values, the command line
# and GUNICORN_CMD_ARGS give strings.

def g_int(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        n = v
    elif isinstance(v, str):
        n = int(v.strip(), 0)
    else:
        raise ValueError(f"expected an integer, got {v!r}")
    if n < 0:
        raise ValueError(f"must be positive: {n}")
    return n


def g_auto_int(v: Any) -> int:
    """gunicorn's umask: `022` and `0o22` are octal, `18` decimal, `0x12` hexadecimal."""
    if isinstance(v, str) and re.match(r"0\d", v.strip()):
        v = v.strip().replace("0", "0o", 1)
    return g_int(v)


def g_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise ValueError(f"expected True or False, got {v!r}")


def g_str(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {v!r}")
    return v.strip()


def g_list(v: Any) -> list[str]:
    if not v:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"expected a list of strings, got {v!r}")
    return [x.strip() for x in v]


def g_csv(v: Any) -> list[str]:
    """gunicorn's comma-separated strings (forwarded_allow_ips...); a list is taken as is."""
    if isinstance(v, list | tuple):
        return [str(x).strip() for x in v if str(x).strip()]
    s = g_str(v)
    return [p.strip() for p in s.split(",") if p.strip()] if s else []


def g_header_dict(v: Any) -> dict[str, str]:
    """secure_scheme_headers: gunicorn compares names in upper case."""
    if not isinstance(v, dict):
        raise ValueError(f"expected a dict of header names and values, got {v!r}")
    return {str(k).strip().upper(): str(x).strip().lower() for k, x in v.items()}


def g_any(v: Any) -> Any:
    return v


# ------------------------------------------------------------------ converters

def to_bind(v: Any, out: Out) -> None:
    """gunicorn's forms are greenfork's, but for `tcp://` and `unix://` spellings."""
    binds = []
    for b in g_list(v):
        if b.startswith("tcp://"):
            b = b[len("tcp://"):]
        m = re.match(r"unix:(//)?", b)
        if m:
            b = "unix:" + b[m.end():]
        binds.append(b)
    out.set("bind", binds)


# -k: what gunicorn accepts for gevent, for blocking workers, and for apps greenfork cannot serve
GEVENT_CLASSES = frozenset({
    "gevent", "gevent_wsgi", "gevent_pywsgi",
    "egg:gunicorn#gevent", "egg:gunicorn#gevent_wsgi", "egg:gunicorn#gevent_pywsgi",
    "gunicorn.workers.ggevent.GeventWorker", "gunicorn.workers.ggevent.GeventPyWSGIWorker",
    # gevent-websocket's and flask-sockets' workers: greenfork serves wsgi.websocket itself
    "geventwebsocket.gunicorn.workers.GeventWebSocketWorker", "flask_sockets.worker",
})
BLOCKING_CLASSES = frozenset({
    "sync", "gthread", "egg:gunicorn#sync", "egg:gunicorn#gthread",
    "gunicorn.workers.sync.SyncWorker", "gunicorn.workers.gthread.ThreadWorker",
})
ASGI_CLASSES = frozenset({
    "asgi", "egg:gunicorn#asgi", "gunicorn.workers.gasgi.ASGIWorker",
    "uvicorn.workers.UvicornWorker", "uvicorn.workers.UvicornH11Worker",
    "uvicorn_worker.UvicornWorker", "uvicorn_worker.UvicornH11Worker",
    "aiohttp.GunicornWebWorker", "aiohttp.GunicornUVLoopWebWorker", "aiohttp.worker.GunicornWebWorker",
    "aiohttp.worker.GunicornUVLoopWebWorker",
})


def worker_class_name(v: Any) -> str:
    if isinstance(v, type):
        return f"{v.__module__}.{v.__qualname__}"
    if callable(v):  # gunicorn calls a function to get the class
        return worker_class_name(v())
    s = g_str(v)
    return s or "sync"


def check_worker_class(v: Any, out: Out) -> None:
    name = worker_class_name(v)
    if name in GEVENT_CLASSES:
        return
    if name in BLOCKING_CLASSES:
        out.warnings.append(
            f"greenfork runs the application in gevent workers (monkey-patched), not {name}'s "
            "blocking ones: each request runs in a greenlet and blocking calls must be gevent-"
            "friendly (pure-Python drivers are; see docs/migrating-from-gunicorn.md)")
        return
    if name in ASGI_CLASSES:
        raise ValueError(f"worker class {name} serves ASGI applications; greenfork serves WSGI "
                         "applications with gevent workers only")
    if "eventlet" in name or "tornado" in name:
        raise ValueError(f"worker class {name} needs its own event loop; greenfork serves WSGI "
                         "applications with gevent workers only (use -k gevent)")
    raise ValueError(f"worker class {name} is not supported: greenfork's workers are gevent's "
                     "(-k gevent, or leave -k out)")


def check_threads(v: Any, out: Out) -> None:
    if g_int(v) > 1:
        out.warnings.append("greenfork runs each request in its own greenlet, so a worker serves up to "
                            "--worker-connections requests at once; there are no threads to set")


MAX_REQUEST_LINE = 8190  # gunicorn's ceiling for limit_request_line
GF_MAX_HEADER_COUNT = 10_000  # greenfork's ceiling for max_request_header_count
GF_DEFAULT_HEADERS_TOTAL = 32768


def limit_request_line(v: Any, out: Out) -> None:
    # gunicorn counts the line without its CRLF, greenfork with it; 0 is gunicorn's "1 MiB"
    n = g_int(v)
    if n == 0:
        out.set("max_request_line_size", 1 << 20)
        return
    out.set("max_request_line_size", min(n, MAX_REQUEST_LINE) + 2)


def limit_request_fields(v: Any, out: Out) -> None:
    n = g_int(v)
    if n == 0 or n > GF_MAX_HEADER_COUNT:
        out.notes.append(f"greenfork's ceiling is {GF_MAX_HEADER_COUNT} header fields")
        n = GF_MAX_HEADER_COUNT
    out.set("max_request_header_count", n)


def limit_request_field_size(v: Any, out: Out) -> None:
    n = g_int(v) or 8190  # gunicorn reads 0 as its default
    total = max(n + 4, GF_DEFAULT_HEADERS_TOTAL)  # one field of n bytes, ": " and CRLF, must fit
    out.set("max_request_headers_total_size", total)
    out.notes.append(f"greenfork limits the whole header section, not each field: "
                     f"max_request_headers_total_size = {total}, so one field of {n} bytes fits")


def to_user(setting: str) -> Convert:
    def convert(v: Any, out: Out) -> None:
        if v is None or isinstance(v, str):
            out.set(setting, g_str(v) or None)
        elif isinstance(v, int) and not isinstance(v, bool):
            out.set(setting, str(v))
        else:
            raise ValueError(f"expected a name or an id, got {v!r}")

    return convert


def umask_to_socket_mode(v: Any, out: Out) -> None:
    # gunicorn's umask applies to the unix sockets it creates (and its worker temporary files),
    # not to the processes: greenfork's counterpart is the sockets' mode.
    mask = g_auto_int(v)
    if mask > 0o777:
        raise ValueError(f"{mask:#o} is not a file mode mask")
    out.set("unix_socket_mode", 0o777 & ~mask)


def to_log_level(v: Any, out: Out) -> None:
    level = (g_str(v) or "info").lower()
    level = {"warn": "warning", "fatal": "critical"}.get(level, level)
    if level not in ("debug", "info", "warning", "error", "critical"):
        out.warnings.append(f"unknown log level {level!r}: greenfork uses info, as gunicorn does")
        level = "info"
    out.set("log_level", level)


def to_cert_reqs(v: Any, out: Out) -> None:
    out.set("cert_reqs", str(int(v)) if isinstance(v, int) else v)


def optional(setting: str) -> Convert:
    """A value gunicorn allows to be None (its default): None leaves greenfork's default."""

    def convert(v: Any, out: Out) -> None:
        if v is not None:
            out.set(setting, v)

    return convert


def joined(v: Any) -> str:
    return ",".join(g_csv(v))


def to_trust(setting: str) -> Convert:
    """gunicorn's forwarded_allow_ips and proxy_allow_ips: its lists name IP peers only, and it
    trusts unix-socket peers unconditionally; greenfork trusts them when the list says `unix`."""

    def convert(v: Any, out: Out) -> None:
        items = g_csv(v)
        if "*" not in items and "unix" not in items:
            items.append("unix")
        out.set(setting, ",".join(items))

    return convert


def to_http_protocols(v: Any) -> str:
    return joined(v) or "h1"  # gunicorn reads an empty list as h1


def to_http2_cleartext(v: Any, out: Out) -> None:
    # gunicorn reads True as prior-knowledge
    mode = str(v).strip().lower() if isinstance(v, str) else ("prior-knowledge" if v else "off")
    if mode in ("upgrade", "both"):
        kept = "off" if mode == "upgrade" else "prior-knowledge"
        out.warnings.append(f"greenfork does not offer the HTTP/1.1 Upgrade to h2c (RFC 9113 deprecates "
                            f"it): an Upgrade: h2c request is answered in HTTP/1.1; http2_cleartext = "
                            f"{kept}")
        mode = kept
    if mode not in ("off", "prior-knowledge"):
        raise ValueError("expected off, prior-knowledge, upgrade or both")
    out.set("http2_cleartext", mode)


GF_MAX_HEADERS_TOTAL = 1 << 24  # greenfork's ceiling for max_request_headers_total_size


def http2_max_header_list_size(v: Any, out: Out) -> None:
    # greenfork bounds an HTTP/2 header list by the same limit as an HTTP/1.1 header section,
    # and announces it as SETTINGS_MAX_HEADER_LIST_SIZE
    n = g_int(v)
    if n == 0:  # gunicorn: unlimited
        n = GF_MAX_HEADERS_TOTAL
        out.notes.append(f"greenfork's ceiling is {n} bytes")
    n = min(max(n, 256), GF_MAX_HEADERS_TOTAL)
    out.set("max_request_headers_total_size", n)
    out.notes.append(f"max_request_headers_total_size = {n}: greenfork's limit bounds HTTP/1.1 header "
                     "sections too")


def to_proxy_protocol(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return "any" if v else "off"
    s = str(v).strip().lower()
    mapping = {"false": "off", "off": "off", "0": "off", "none": "off",
               "true": "any", "auto": "any", "1": "any", "v1": "v1", "v2": "v2"}
    if s not in mapping:
        raise ValueError("expected off, v1, v2 or auto")
    return mapping[s]


def check_protocol(v: Any, out: Out) -> None:
    if (g_str(v) or "http").lower() != "http":
        raise ValueError("greenfork speaks HTTP only (no uwsgi protocol): point nginx at it with "
                         "proxy_pass instead of uwsgi_pass")

"""gunicorn's configuration, read as gunicorn reads it, translated into greenfork's layers.

- A Python config file (`-c gunicorn.conf.py`, `-c file:PATH`, `-c python:package.module`, or
  ./gunicorn.conf.py when there is no greenfork.toml): it is executed, and its module-level
  names that are settings become one layer, like greenfork.toml's. gunicorn's names are
  translated through gunicornmap.TABLE; greenfork's own names are taken as they are; other
  names (imports, helpers) are ignored, as gunicorn ignores them.
- GUNICORN_CMD_ARGS: parsed by greenfork's own command-line parser (which knows gunicorn's
  flags too) into a layer between the config file and GREENFORK_* variables.
- gunicorn's flags on the command line (`-k`, `--threads`, `--limit-request-line` ...):
  translated into the command line's layer.
- WEB_CONCURRENCY and FORWARDED_ALLOW_IPS, which gunicorn reads as defaults.

Every value greenfork cannot honour as given is answered with one warning line; values mapped
with a difference worth knowing, with a note. Both are returned, never printed here.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.machinery
import importlib.util
import os
import shlex
import sys
import tomllib
import traceback
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from greenfork.master import gunicornmap, gunicornvalues, hookspec
from greenfork.master.config import Layer
from greenfork.master.gunicornmap import BY_GUNICORN_NAME, CLI, HOOK, SAME, WARN, G, Out
from greenfork.master.settings import BY_NAME, SETTINGS, SettingError, Settings

DEFAULT_PY_CONFIG = "gunicorn.conf.py"
CMD_ARGS = "GUNICORN_CMD_ARGS"
DEST = "gunicorn."  # argparse dests of gunicorn's flags that greenfork's parser lacks
_added: dict[str, str] = {}  # gunicorn setting -> the flag add_arguments() gave it (for messages)


@dataclass
class Translated:
    values: dict[str, object] = field(default_factory=dict)  # greenfork setting -> raw value
    origins: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def layer(self, origin: str, base: Mapping[str, object] | None = None) -> Layer:
        values = dict(base or {})
        values.update(self.values)
        return Layer(origin, values, dict(self.origins))


# ------------------------------------------------------------ the kind of -c


def is_python_config(location: str, cwd: str) -> bool:
    """By extension, then by content: `.toml` is TOML, `.py`, `file:` and `python:` are Python.
    Any other file is TOML if it parses as TOML naming only greenfork's settings, else Python
    (gunicorn reads any file as Python)."""
    if location.startswith(("python:", "file:")):
        return True
    ext = os.path.splitext(location)[1].lower()
    if ext in (".py", ".pyc"):
        return True
    if ext == ".toml":
        return False
    try:
        with open(os.path.join(cwd, location), "rb") as f:
            data = tomllib.load(f)
    except OSError:
        return False  # the TOML reader says what is wrong with the path
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return True
    return not all(k in BY_NAME or k == "profiles" for k in data)


def default_config(cwd: str, toml_name: str) -> tuple[str | None, list[str]]:
    """Without -c: greenfork.toml, else gunicorn.conf.py (gunicorn's default), in cwd."""
    toml = os.path.join(cwd, toml_name)
    py = os.path.join(cwd, DEFAULT_PY_CONFIG)
    if os.path.exists(toml):
        warnings = [f"{DEFAULT_PY_CONFIG} is not read: {toml_name} is (name one with -c)"] \
            if os.path.exists(py) else []
        return toml, warnings
    if os.path.exists(py):
        return py, []
    return None, []


# ------------------------------------------------------------ Python config files


def _failure(location: str, path: str | None, e: BaseException) -> SettingError:
    where = ""
    if isinstance(e, SyntaxError) and e.lineno:
        where = f", line {e.lineno}"
    else:
        frames = [fr for fr in traceback.extract_tb(e.__traceback__) if path and fr.filename == path]
        if frames:
            where = f", line {frames[-1].lineno}"
    return SettingError(f"config file {location}{where}: {type(e).__name__}: {e}")


def load_python(location: str, cwd: str) -> tuple[dict[str, Any], str]:
    """Execute a Python config; (its namespace, the origin to name in messages). As gunicorn
    does, the directory it is read from goes on sys.path first, so it may import project code."""
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if location.startswith("python:"):
        name = location[len("python:"):].strip()
        try:
            loaded = sys.modules.get(name)
            # read anew on every start and HUP (gunicorn would keep the first import)
            mod = importlib.reload(loaded) if loaded is not None else importlib.import_module(name)
        except ModuleNotFoundError as e:
            raise SettingError(f"config module {name} not found ({e})") from None
        except Exception as e:
            raise _failure(location, getattr(sys.modules.get(name), "__file__", None), e) from None
        return dict(vars(mod)), location
    path = os.path.join(cwd, location.removeprefix("file:"))
    if not os.path.isfile(path):
        raise SettingError(f"config file {path} not found")
    name = "__config__"  # gunicorn's module name for it
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        loader.exec_module(mod)
    except Exception as e:
        raise _failure(location, path, e) from None
    return dict(vars(mod)), os.path.basename(path)


def _patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_anything_patched())


def python_layer(location: str, cwd: str) -> tuple[Layer, list[str], list[str]]:
    """The config's settings as one layer; (layer, warnings, notes)."""
    patched = _patched()
    namespace, origin = load_python(location, cwd)
    names = {k: v for k, v in namespace.items() if not k.startswith("_")}
    t = translate(names, origin, config_file=True)
    if _patched() and not patched:
        t.warnings.append(f"{origin} monkey-patched the master with gevent: greenfork's master does not "
                          "use gevent, and each worker patches itself before it imports the "
                          "application (--preload included); remove the patching from the config")
    return t.layer(origin), t.warnings, t.notes


# ------------------------------------------------------------ translation


def _ignorable(v: object) -> bool:
    return isinstance(v, types.ModuleType | type | types.FunctionType | types.BuiltinFunctionType)


def _shown(v: object) -> str:
    text = getattr(v, "__qualname__", None) if callable(v) else None
    return f"{text}()" if text else repr(v)


def _shown_flag(v: object) -> str:
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    return "" if v is True else str(v)


def translate(values: Mapping[str, object], origin: str, *, config_file: bool = False,
              flags: Mapping[str, str] | None = None) -> Translated:
    """gunicorn's settings (and, from a config file, greenfork's own names) as greenfork values.
    `flags` names the flag each value came in by, for messages (command line)."""
    t = Translated()
    flags = flags or {}
    for name, raw in values.items():
        g = BY_GUNICORN_NAME.get(name)
        where = f"{origin} {flags[name]}" if name in flags else f"{origin} ({name})"
        label = (f"{origin} {flags[name]} {_shown_flag(raw)}".rstrip() if name in flags
                 else f"{origin}: {name} = {_shown(raw)}")
        if g is None:
            if name in BY_NAME and not BY_NAME[name].positional:
                _greenfork_name(name, raw, origin, t)
            elif config_file and not _ignorable(raw):
                close = difflib.get_close_matches(name, [*BY_GUNICORN_NAME, *BY_NAME], n=1, cutoff=0.85)
                if close:
                    t.warnings.append(f"{origin}: {name} is not a setting and is ignored "
                                      f"(did you mean {close[0]}?)")
            continue
        try:
            _translate_one(g, raw, where, label, t, config_file)
        except (ValueError, TypeError) as e:
            raise SettingError(f"invalid value {_shown(raw)} for {name} (from {where}): {e}") from None
    return t


def _greenfork_name(name: str, raw: object, origin: str, t: Translated) -> None:
    """One of greenfork's own settings in a Python config. gunicorn ignores names it does not
    know, so a gunicorn.conf.py may use one as a helper (`env = os.getenv("APP_ENV")`): a value
    the setting cannot take is then ignored with a warning rather than refused."""
    from greenfork.master.config import parse_value

    try:
        parse_value(BY_NAME[name], raw, origin)
    except SettingError as e:
        t.warnings.append(f"{origin}: {name} = {_shown(raw)} is ignored: it is not a value for "
                          f"greenfork's setting {name} ({str(e).rsplit(': ', 1)[-1]}); "
                          "a helper variable of that name may be renamed to silence this")
        return
    t.values[name] = raw
    t.origins[name] = origin


# greenfork settings two gunicorn settings convert into (limit_request_field_size and
# http2_max_header_list_size): the larger value serves both
_LARGEST = frozenset({"max_request_headers_total_size"})


def _translate_one(g: G, raw: object, where: str, label: str, t: Translated, config_file: bool) -> None:
    if g.kind == HOOK:
        hook = _hook_value(g.name, raw, where)
        if hook is not None:
            t.values[g.name] = hook
            t.origins[g.name] = where
        return
    if g.kind == CLI:
        if config_file and g.name in ("check_config", "print_config") and raw:
            t.warnings.append(f"{label} is ignored: give --check-config on the command line")
        return
    if g.kind == WARN:
        value = g.value(raw)
        if value != g.default and value not in g.fine and value is not None:
            t.warnings.append(f"{label} is ignored: {g.note}")
        return
    out = Out()
    if g.kind == SAME:
        out.set(g.to, g.value(raw))
    else:
        assert g.convert is not None
        g.convert(raw, out)
    for name, value in out.values.items():
        before = t.values.get(name)
        if name in _LARGEST and isinstance(before, int) and isinstance(value, int):
            value = max(value, before)
        t.values[name] = value
        t.origins[name] = where
    t.warnings += [f"{label}: {w}" for w in out.warnings]
    t.notes += [f"{label}: {n}" for n in out.notes]


def _hook_value(name: str, raw: object, where: str) -> hookspec.Hook | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return hookspec.parse_target(name, raw)
    target = f"{where.split(' ', 1)[0]}:{getattr(raw, '__qualname__', name)}"
    try:
        return hookspec.of_callable(name, raw, target)
    except hookspec.HookError as e:
        raise ValueError(str(e)) from None


# ------------------------------------------------------------ command lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """gunicorn's flags that greenfork's parser does not have already, so that a gunicorn command
    line parses; their values are translated (translate()) like a config file's."""
    taken = set(parser._option_string_actions)
    group = parser.add_argument_group(
        "gunicorn's flags", "Accepted so that a gunicorn command line works unchanged; each is mapped "
        "to greenfork's setting or answered with a warning (docs/migrating-from-gunicorn.md).")
    for g in gunicornmap.TABLE:
        free = [f for f in g.flags if f not in taken]
        if not free or g.kind == CLI:
            continue
        shown = g.kind != WARN
        kw: dict[str, Any] = {"dest": DEST + g.name,
                              "help": _help(g) if shown else argparse.SUPPRESS}
        if g.action == "store_true":
            kw["action"] = "store_true"
        elif g.action == "store_const":
            kw.update(action="store_const", const=g.const)
        elif g.action == "append":
            kw.update(action="append", metavar="VALUE")
        elif g.action == "optional":
            kw.update(nargs="?", const=g.const, metavar="VALUE")
        else:
            kw["metavar"] = "VALUE"
        group.add_argument(*free, **kw)
        _added[g.name] = free[-1]


def _help(g: G) -> str:
    target = f" = greenfork's {g.to}" if g.to and g.to != g.name else ""
    note = f": {g.note}" if g.note else ""
    return f"gunicorn's {g.name}{target}{note}".replace("%", "%%")


def split_cli(cli: Mapping[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """(greenfork's values, gunicorn's values by gunicorn name) from parsed command-line values."""
    own = {k: v for k, v in cli.items() if not k.startswith(DEST)}
    theirs = {k[len(DEST):]: v for k, v in cli.items() if k.startswith(DEST)}
    return own, theirs


def flag_of(name: str) -> str:
    if name in _added:
        return _added[name]
    g = BY_GUNICORN_NAME[name]
    return g.flags[-1] if g.flags else name


@dataclass
class CmdArgs:
    """GUNICORN_CMD_ARGS, parsed."""

    text: str
    layer: Layer
    config: str | None  # its -c, used when the command line has none
    check_config: bool
    warnings: list[str]
    notes: list[str]


class _Refused(Exception):
    pass


def cmd_args(environ: Mapping[str, str],
             build_parser: Callable[[], argparse.ArgumentParser]) -> CmdArgs | None:
    text = environ.get(CMD_ARGS, "").strip()
    if not text:
        return None
    parser = build_parser()

    def refuse(message: str) -> Any:
        raise _Refused(message)

    parser.error = refuse  # type: ignore[method-assign]  # an error is a SettingError, not an exit
    try:
        ns = parser.parse_args(shlex.split(text))
    except (_Refused, ValueError) as e:
        raise SettingError(f"{CMD_ARGS}={text!r}: {e}") from None
    values = {k: v for k, v in vars(ns).items() if v is not None}
    warnings: list[str] = []
    if values.pop("app", None) is not None:
        warnings.append(f"{CMD_ARGS}: the application named there is ignored, as gunicorn ignores it; "
                        "give it on the command line")
    config = values.pop("config", None)
    check = any([values.pop("check_config", False), values.pop("print_config", False)])
    values.pop("profile", None)
    for text in values.pop("hook", None) or ():
        try:
            name, target = hookspec.split_option(text)
        except ValueError as e:
            raise SettingError(f"{CMD_ARGS}={text!r}: {e}") from None
        values[name] = target
    own, theirs = split_cli(values)
    # flags both have, read here with gunicorn's meaning: --umask is the unix sockets' mask (not
    # the processes'), the trust lists trust unix-socket peers too, and --http2-cleartext's
    # upgrade and both are warned rather than refused
    for mine, gunicorns in (("umask", "umask"), ("forwarded_allow_ips", "forwarded_allow_ips"),
                            ("proxy_allow_from", "proxy_allow_ips"), ("http2_cleartext", "http2_cleartext")):
        if mine in own:
            theirs[gunicorns] = own.pop(mine)
    origin = f"env {CMD_ARGS}"
    t = translate(theirs, origin, flags={n: flag_of(n) for n in theirs})
    layer = t.layer(origin, own)
    by_flag = {s.name: (s.flags[-1] if s.flags else f"--hook {s.name}") for s in SETTINGS}
    origins = dict(layer.origins)
    origins.update({k: f"{origin} {by_flag[k]}" for k in own})
    notes = [f"using {CMD_ARGS}={text!r}, below the command line and GREENFORK_* variables", *t.notes]
    return CmdArgs(text, Layer(origin, layer.values, origins), config, check, warnings + t.warnings, notes)


# ------------------------------------------------------------ gunicorn's TLS rule


def tls_binds(settings: Settings) -> tuple[Layer, str] | None:
    """gunicorn serves TLS on every address once certfile is set; greenfork on its https://
    addresses. For a gunicorn deployment (a Python config, GUNICORN_CMD_ARGS or gunicorn's own
    flags) with a certificate and no https:// address: (the layer that makes its addresses
    https://, a note saying so). Explicit http:// addresses stay cleartext (greenfork's spelling)
    and fd:// ones cannot be TLS (the TLS check says so)."""
    from greenfork.master.config import PORT_SOURCE

    binds = [b.strip() for b in settings.bind]
    if not settings.certfile or any(b.lower().startswith("https://") for b in binds):
        return None
    source = settings.source_of("bind")
    implicit = source in ("default", PORT_SOURCE)  # greenfork's spelling of gunicorn's defaults
    out = []
    for b in binds:
        low = b.lower()
        if low.startswith("fd://") or (low.startswith("http://") and not implicit):
            out.append(b)
        else:
            out.append("https://" + (b[len("http://"):] if low.startswith("http://") else b))
    if out == binds:
        return None
    # the same origin: with systemd's sockets an implicit address is still replaced by them
    layer = Layer("gunicorn's TLS rule", {"bind": out}, {"bind": source})
    changed = [o for o, b in zip(out, binds, strict=True) if o != b]
    return layer, (f"certfile is set, so {', '.join(changed)} serve{'s' if len(changed) == 1 else ''} "
                   "TLS, as gunicorn serves every address (greenfork's own spelling: https://HOST:PORT)")


# ------------------------------------------------------------ environment defaults


def environment_defaults(environ: Mapping[str, str]) -> Layer | None:
    """What gunicorn reads from the environment as defaults: WEB_CONCURRENCY (workers, the
    convention of Heroku and others) and FORWARDED_ALLOW_IPS (read as gunicorn's
    forwarded_allow_ips: unix-socket peers are trusted too)."""
    values: dict[str, object] = {}
    origins: dict[str, str] = {}
    if environ.get("WEB_CONCURRENCY", "").strip():
        values["workers"] = environ["WEB_CONCURRENCY"].strip()
        origins["workers"] = "env WEB_CONCURRENCY"
    if environ.get("FORWARDED_ALLOW_IPS", "").strip():
        out = Out()
        gunicornvalues.to_trust("forwarded_allow_ips")(environ["FORWARDED_ALLOW_IPS"], out)
        values.update(out.values)
        origins["forwarded_allow_ips"] = "env FORWARDED_ALLOW_IPS"
    return Layer("environment defaults", values, origins) if values else None

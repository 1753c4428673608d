"""Resolve the layers into one frozen Settings: CLI > env > profile > file > defaults.

Every value is parsed and validated by its Setting; the first bad one raises a
SettingError naming the setting, the value and where it came from, which the
CLI prints as one line before exiting 2.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from greenfork.master.settings import BY_NAME, ENV_PREFIX, SETTINGS, Setting, SettingError, Settings

DEFAULT_CONFIG = "greenfork.toml"
# GREENFORK_* variables that are not settings: set by greenfork itself or naming the config.
# GREENFORK_FDS, _FD_BINDS, _GENERATION and _UPGRADE_FD pass a binary upgrade's state (upgrade.py).
ENV_NOT_SETTINGS = frozenset({"GREENFORK_CONFIG", "GREENFORK_PROFILE", "GREENFORK_FDS",
                              "GREENFORK_WORKER", "GREENFORK_BIND_PORT", "GREENFORK_FD_BINDS",
                              "GREENFORK_GENERATION", "GREENFORK_UPGRADE_FD"})


@dataclass(frozen=True, slots=True)
class Layer:
    """Raw values from one source, not yet parsed."""

    origin: str  # "command line", "env", "greenfork.toml", "greenfork.toml [profiles.dev]"
    values: Mapping[str, object]
    # where a value came from when the origin alone would not say (a gunicorn name it was
    # translated from: "gunicorn.conf.py (keepalive)", "command line --limit-request-line")
    origins: Mapping[str, str] = field(default_factory=dict)

    def where(self, s: Setting) -> str:
        if s.name in self.origins:
            return self.origins[s.name]
        if self.origin == "env":
            return f"env {s.env_var}"
        if self.origin == "command line":
            if not s.flags and not s.positional:  # the server hooks: given as --hook NAME=...
                return f"command line --hook {s.name}"
            return "command line " + (s.flags[-1] if s.flags else s.metavar)
        return self.origin


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def env_layer(environ: Mapping[str, str]) -> tuple[Layer, list[str]]:
    """GREENFORK_* variables; unknown ones are returned as warnings, not errors,
    because an environment is shared with other tools and versions."""
    values: dict[str, object] = {}
    warnings: list[str] = []
    known = {s.env_var: s.name for s in SETTINGS if not s.positional}
    known[ENV_PREFIX + "APP"] = "app"
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in ENV_NOT_SETTINGS:
            continue
        if key in known:
            values[known[key]] = raw
        else:
            warnings.append(f"ignoring unknown environment variable {key}" + _suggest(key, list(known)))
    return Layer("env", values), warnings


def file_layers(path: str, profile: str | None) -> list[Layer]:
    """The file's top-level keys, then the chosen [profiles.NAME] table over them."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SettingError(f"config file {path} not found") from None
    except OSError as e:
        raise SettingError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingError(f"config file {path} is not valid TOML: {e}") from None
    profiles = data.pop("profiles", {})
    if not isinstance(profiles, dict):
        raise SettingError(f"config file {path}: 'profiles' must be a table of [profiles.NAME] tables")
    name = os.path.basename(path)
    layers = [Layer(name, _checked_keys(data, name))]
    if profile is not None:
        if profile not in profiles:
            have = ", ".join(sorted(profiles)) or "none"
            raise SettingError(f"profile '{profile}' not found in {path} (profiles: {have})")
        table = profiles[profile]
        if not isinstance(table, dict):
            raise SettingError(f"config file {path}: [profiles.{profile}] must be a table")
        origin = f"{name} [profiles.{profile}]"
        layers.append(Layer(origin, _checked_keys(table, origin)))
    return layers


def _checked_keys(table: dict[str, Any], origin: str) -> dict[str, Any]:
    for key in table:
        if key not in BY_NAME:
            raise SettingError(f"unknown setting '{key}' in {origin}" + _suggest(key, list(BY_NAME)))
    return table


def build(layers: list[Layer]) -> Settings:
    """Later layers win. Each value is parsed and validated where it came from."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in SETTINGS:
        values[s.name] = s.default
        sources[s.name] = "default"
    for layer in layers:
        for name, raw in layer.values.items():
            s = BY_NAME[name]
            where = layer.where(s)
            values[name] = parse_value(s, raw, where)
            sources[name] = where
    return Settings(**values, sources=tuple(sources.items()))


def show_value(s: Setting, value: object) -> str:
    """A value as an operator writes it: modes in octal (`0o022`, not 18)."""
    if s.type_doc == "octal mode" and isinstance(value, int) and not isinstance(value, bool):
        return f"0o{value:03o}"
    if s.name == "require_header" and isinstance(value, str):
        return repr(value.partition("=")[0] + "=(hidden)")  # a secret: --check-config prints this
    return repr(value)


def parse_value(s: Setting, raw: object, where: str) -> Any:
    def fail(shown: object, e: ValueError) -> SettingError:
        return SettingError(f"invalid value '{shown}' for {s.name} (from {where}): {e}")

    try:
        value = s.parse(raw)
    except ValueError as e:
        raise fail(raw if isinstance(raw, str) else repr(raw), e) from None
    if s.validate is None:
        return value
    if s.multiple and isinstance(value, tuple):
        # name the one bad item of a list (a bind list), not the whole list
        for item in value:
            try:
                s.validate((item,))
            except ValueError as e:
                raise fail(item, e) from None
    try:
        s.validate(value)
    except ValueError as e:
        raise fail(raw if isinstance(raw, str) else repr(raw), e) from None
    return value


# Variables of other tools' conventions, read only when the setting is given nowhere else (the
# lowest layer above the defaults): PORT, which platforms (Heroku, Cloud Run, Render) set for
# the process to listen on, and gunicorn's FORWARDED_ALLOW_IPS.
PORT_SOURCE = "env PORT"
_CONVENTIONS = (("bind", "PORT", lambda v: [f"http://0.0.0.0:{v.strip()}"]),
                ("forwarded_allow_ips", "FORWARDED_ALLOW_IPS", lambda v: v))


def conventions(layers: list[Layer], environ: Mapping[str, str]) -> list[Layer]:
    """One layer per convention variable whose setting no layer gives."""
    out: list[Layer] = []
    for name, var, value in _CONVENTIONS:
        if var in environ and not any(name in layer.values for layer in layers):
            out.append(Layer(f"env {var}", {name: value(environ[var])}))
    return out


def bind_is_implicit(settings: Settings) -> bool:
    """No bind was given: the default address, or PORT's. systemd's sockets replace either."""
    return settings.source_of("bind") in ("default", PORT_SOURCE)


@dataclass
class Resolved:
    settings: Settings
    warnings: list[str]  # values ignored or not honoured as given: logged as warnings
    notes: list[str]  # what the operator should know (GUNICORN_CMD_ARGS was read ...): logged as info
    check_config: bool = False  # GUNICORN_CMD_ARGS holds --check-config or --print-config


def resolve_all(cli: Mapping[str, object], environ: Mapping[str, str], *, config: str | None,
                profile: str | None, cwd: str,
                build_parser: Callable[[], argparse.ArgumentParser] | None = None) -> Resolved:
    """All layers for one start or one reload, lowest first: gunicorn's environment defaults
    (WEB_CONCURRENCY), the config file (greenfork.toml and its profile, or a Python config read
    as gunicorn reads it), GUNICORN_CMD_ARGS (parsed by `build_parser`), GREENFORK_*, the
    command line (gunicorn's flags in it translated: gunicornconf.py)."""
    from greenfork.master import gunicornconf

    env, warnings = env_layer(environ)
    notes: list[str] = []
    own, theirs = gunicornconf.split_cli(cli)
    cli_layer = Layer("command line", own)
    if theirs:
        t = gunicornconf.translate(theirs, "command line",
                                   flags={n: gunicornconf.flag_of(n) for n in theirs})
        cli_layer = t.layer("command line", own)
        warnings += t.warnings
        notes += t.notes
    cmd_args = gunicornconf.cmd_args(environ, build_parser) if build_parser is not None else None
    # gunicorn: a config named on the command line wins over one named in GUNICORN_CMD_ARGS
    config = config or environ.get("GREENFORK_CONFIG") or (cmd_args.config if cmd_args else None)
    profile = profile or environ.get("GREENFORK_PROFILE")
    layers: list[Layer] = []
    env_defaults = gunicornconf.environment_defaults(environ)
    if env_defaults is not None:
        layers.append(env_defaults)
    if config is None:
        config, more = gunicornconf.default_config(cwd, DEFAULT_CONFIG)
        warnings += more
    gunicorns = bool(theirs) or cmd_args is not None
    if config is not None and gunicornconf.is_python_config(config, cwd):
        gunicorns = True
        if profile is not None:
            raise SettingError(f"--profile {profile} selects a [profiles.NAME] table of greenfork.toml; "
                               f"{config} is a Python config file")
        layer, more, more_notes = gunicornconf.python_layer(config, cwd)
        layers.append(layer)
        warnings += more
        notes += more_notes
    elif config is not None:
        layers.extend(file_layers(os.path.join(cwd, config), profile))
    elif profile is not None:
        raise SettingError(f"--profile {profile} needs a config file (-c greenfork.toml)")
    if cmd_args is not None:
        layers.append(cmd_args.layer)
        warnings += cmd_args.warnings
        notes += cmd_args.notes
    layers.append(env)
    layers.append(cli_layer)
    check = cmd_args.check_config if cmd_args else False
    settings = build(conventions(layers, environ) + layers)
    if gunicorns:  # a gunicorn deployment: its certfile makes every address TLS
        tls = gunicornconf.tls_binds(settings)
        if tls is not None:
            settings = build(conventions(layers, environ) + layers + [tls[0]])
            notes.append(tls[1])
    return Resolved(settings, warnings, notes, check)


def resolve(cli: Mapping[str, object], environ: Mapping[str, str], *, config: str | None,
            profile: str | None, cwd: str) -> tuple[Settings, list[str]]:
    """All layers for one start or one reload. Returns the settings and warnings to log."""
    r = resolve_all(cli, environ, config=config, profile=profile, cwd=cwd)
    return r.settings, r.warnings + r.notes

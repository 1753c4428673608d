"""`greenfork [OPTIONS] [APP]`: the command line, generated from the settings table."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from greenfork.master import logs, upgrade
from greenfork.master.addresses import AddressError
from greenfork.master.apploader import AppSpecError, parse_spec
from greenfork.master.arbiter import EXIT_USAGE
from greenfork.master.listeners import BindError
from greenfork.master.settings import SETTINGS, SettingError, Settings

EPILOG = """\
Every option can also be set as an environment variable GREENFORK_<NAME> (e.g.
GREENFORK_WORKERS=4) or as a key in greenfork.toml (read from the current
directory, or -c PATH), with [profiles.NAME] tables selected by --profile.
Precedence: command line > environment > profile > file > defaults.
Signals: TERM graceful stop, INT/QUIT quick stop, HUP reload, USR2 binary upgrade
(then WINCH or TERM the old master), TTIN/TTOU add/remove a worker, USR1 reopen logs.
Full reference: docs/settings.md, docs/signals.md.
"""


def version() -> str:
    try:
        return metadata.version("greenfork")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="greenfork", description="A pre-fork gevent WSGI server.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS)
    p.add_argument("-c", "--config", metavar="PATH", default=None,
                   help="Configuration file (TOML). Default: ./greenfork.toml if it exists.")
    p.add_argument("--profile", metavar="NAME", default=None,
                   help="Apply the [profiles.NAME] table of the configuration file.")
    p.add_argument("--check-config", action="store_true", default=False,
                   help="Validate the configuration, print the resolved settings and exit.")
    p.add_argument("--version", action="version", version=f"greenfork {version()}")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for s in SETTINGS:
        g = groups.get(s.section) or groups.setdefault(s.section, p.add_argument_group(s.section))
        help_text = s.help.replace("%", "%%") + f" [env {s.env_var}]"
        if s.positional:
            g.add_argument(s.name, nargs="?", metavar=s.metavar, help=help_text)
        elif s.is_flag:
            g.add_argument(*s.flags, dest=s.name, action=argparse.BooleanOptionalAction, help=help_text)
        elif s.multiple:
            g.add_argument(*s.flags, dest=s.name, action="append", metavar=s.metavar, help=help_text)
        else:
            g.add_argument(*s.flags, dest=s.name, metavar=s.metavar, help=help_text)
    return p


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, object]]:
    ns = build_parser().parse_args(list(argv))
    extras = {"config", "profile", "check_config"}
    cli = {k: v for k, v in vars(ns).items() if k not in extras and v is not None}
    return ns, cli


def _fail(message: str) -> int:
    print(f"greenfork: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ns, cli = parse_args(argv)
    from greenfork.master import config
    from greenfork.master.server import Server

    # Reloads re-read the same files even after --chdir moved us.
    start_dir = os.getcwd()

    def resolve() -> Settings:
        settings, warnings = config.resolve(cli, os.environ, config=ns.config, profile=ns.profile,
                                            cwd=start_dir)
        parse_spec(settings.app)
        for w in warnings:
            print(f"greenfork: warning: {w}", file=sys.stderr)
        return settings

    try:
        settings = resolve()
    except (SettingError, AppSpecError, AddressError) as e:
        return _fail(str(e))
    if ns.check_config:
        for s in SETTINGS:
            print(f"{s.name} = {getattr(settings, s.name)!r}  ({settings.source_of(s.name)})")
        return 0
    if settings.chdir:
        try:
            os.chdir(settings.chdir)
        except OSError as e:
            return _fail(f"cannot change to directory {settings.chdir}: {e.strerror}")
    try:
        logs.setup(settings.error_logfile, settings.log_level)
    except OSError as e:
        return _fail(f"cannot open error log {settings.error_logfile}: {e.strerror}")
    # A binary upgrade (USR2, HUP with --preload) re-executes this same command from there.
    upgrade.remember_command(list(sys.orig_argv), start_dir)
    server = Server(settings=settings, reload_settings=resolve)
    try:
        server.bind()
    except BindError as e:
        return _fail(str(e))
    return server.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

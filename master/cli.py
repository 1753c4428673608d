"""`greenfork [OPTIONS] [APP]`: the command line, generated from the settings table."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING

from greenfork.master import daemon, logs, privileges, upgrade
from greenfork.master.addresses import AddressError
from greenfork.master.apploader import AppSpecError, parse_spec
from greenfork.master.control import EXIT_USAGE
from greenfork.master.listeners import BindError
from greenfork.master.pidfile import Pidfile, PidfileBusy
from greenfork.master.settings import SETTINGS, SettingError, Settings

if TYPE_CHECKING:
    from greenfork.master.tls import TlsConfig

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
    # TLS files are read here, before anything starts (and before --chdir), so that
    # --check-config checks them and a bad one is exit 2; the Server serves with this load.
    from greenfork.master import tls

    tls_config = None
    if tls.configured(settings):
        try:
            tls_config = tls.load(settings, tls.ALPN_HTTP1, base_dir=start_dir)
        except tls.TlsError as e:
            return _fail(str(e))
        if ns.check_config:
            for level, line in [(30, w) for w in tls_config.warnings] + tls_config.expiry_report(time.time()):
                print(f"greenfork: {'error' if level >= 40 else 'warning'}: {line}", file=sys.stderr)
    from greenfork.master.cachekeeper import CacheKeeper, CacheSizeError

    try:  # issue 18: the two cache sizes must fit together (checked before -D detaches)
        CacheKeeper.check(settings)
    except CacheSizeError as e:
        return _fail(str(e))
    if ns.check_config:
        for s in SETTINGS:
            value = config.show_value(s, getattr(settings, s.name))
            print(f"{s.name} = {value}  ({settings.source_of(s.name)})")
        return 0
    # A master re-executed by an upgrade is already detached (its parent is the old daemon);
    # forking again would look to the old master like the new one dying.
    detached = daemon.daemonize() if settings.daemon and upgrade.ENV_FDS not in os.environ else None
    code = _serve(settings, resolve, detached, start_dir, tls_config)
    if detached is not None:
        detached.exited(code)
    return code


def _serve(settings: Settings, resolve: Callable[[], Settings], detached: daemon.Detached | None,
           start_dir: str, tls_config: TlsConfig | None) -> int:
    from greenfork.master.server import Server

    if settings.umask is not None:
        os.umask(settings.umask)
    if settings.chdir:
        try:
            os.chdir(settings.chdir)
        except OSError as e:
            return _fail(f"cannot change to directory {settings.chdir}: {e.strerror}")
    try:
        identity = privileges.resolve(settings.user, settings.group)
    except privileges.PrivilegeError as e:
        return _fail(str(e))
    try:
        logs.setup(settings.error_logfile, settings.log_level)
    except OSError as e:
        return _fail(f"cannot open error log {settings.error_logfile}: {e.strerror}")
    if detached is not None and settings.error_logfile != "-":
        detached.echo_errors()  # the starting command shows why a start fails, not only the file
    if settings.pidfile and upgrade.ENV_FDS not in os.environ:
        try:  # before binding: a second instance says so, not "address already in use"
            Pidfile(settings.pidfile).check()
        except PidfileBusy as e:
            return _fail(str(e))
    # A binary upgrade (USR2, HUP with --preload) re-executes this same command from there.
    upgrade.remember_command(list(sys.orig_argv), start_dir)
    server = Server(settings=settings, reload_settings=resolve, tls_config=tls_config, base_dir=start_dir)
    try:
        server.bind()
    except BindError as e:
        return _fail(str(e))
    if identity is None and os.getuid() == 0:
        logging.getLogger("greenfork.master").warning(
            "Workers will run as root: use --user to run the application unprivileged")
    if settings.access_logfile and settings.access_logfile != "-":
        try:  # created by the master, so a worker running as --user can append to it
            os.close(os.open(settings.access_logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
        except OSError as e:
            return _fail(f"cannot open access log {settings.access_logfile}: {e.strerror}")
    owned = [lst.unix_path for lst in server.listeners if lst.unix_path]
    owned += [p for p in (settings.error_logfile, settings.access_logfile) if p and p != "-"]
    privileges.hand_over(owned, identity)
    return server.run(on_ready=detached.ready if detached is not None else None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

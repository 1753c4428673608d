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

from greenfork.master import (
    daemon,
    gunicornconf,
    hooks,
    hookspec,
    listeners,
    logs,
    mountapps,
    privileges,
    procenv,
    upgrade,
)
from greenfork.master.addresses import AddressError
from greenfork.master.apploader import AppSpecError, parse_spec
from greenfork.master.control import EXIT_USAGE
from greenfork.master.listeners import BindError
from greenfork.master.pidfile import Pidfile, PidfileBusy
from greenfork.master.settings import ENV_PREFIX, SETTINGS, SettingError, Settings

if TYPE_CHECKING:
    from greenfork.master.tls import TlsConfig

EPILOG = """\
Every option can also be set as an environment variable GREENFORK_<NAME> (e.g.
GREENFORK_WORKERS=4) or as a key in greenfork.toml (read from the current
directory, or -c PATH), with [profiles.NAME] tables selected by --profile.
Precedence: command line > environment > GUNICORN_CMD_ARGS > profile > file >
defaults. A gunicorn deployment runs as it is: its gunicorn.conf.py (or -c
python:MODULE), GUNICORN_CMD_ARGS and flags are read as gunicorn reads them
(docs/migrating-from-gunicorn.md).
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
                   help="Configuration file: greenfork.toml, or gunicorn's Python config (gunicorn.conf.py, "
                        "file:PATH, python:MODULE); a file with neither .toml nor .py is TOML if it parses "
                        "as TOML with greenfork's setting names, else Python. Default: ./greenfork.toml, "
                        "else ./gunicorn.conf.py.")
    p.add_argument("--profile", metavar="NAME", default=None,
                   help="Apply the [profiles.NAME] table of the configuration file.")
    p.add_argument("--check-config", action="store_true", default=False,
                   help="Validate the configuration (hooks imported), print every resolved setting with "
                        "where it came from, and exit.")
    p.add_argument("--print-config", action="store_true", default=False,
                   help="The same as --check-config (gunicorn's name).")
    p.add_argument("-v", "--version", action="version", version=f"greenfork {version()}")
    groups: dict[str, argparse._ArgumentGroup] = {}
    hooks_help = ", ".join(f"{h.name} [env {ENV_PREFIX}{h.name.upper()}]" for h in hookspec.HOOK_DEFS)
    for s in SETTINGS:
        g = groups.get(s.section) or groups.setdefault(s.section, p.add_argument_group(s.section))
        if not s.flags and not s.positional:  # the server hooks, all set with --hook
            if s.name == hookspec.HOOK_DEFS[0].name:
                g.add_argument("--hook", dest="hook", action="append", default=None,
                               metavar="NAME=MODULE:FUNCTION",
                               help="Run MODULE:FUNCTION as server hook NAME, with gunicorn's names and "
                                    "signatures (docs/migrating-from-gunicorn.md); repeat for several. "
                                    f"NAME: {hooks_help}.")
            continue
        help_text = s.help.replace("%", "%%") + f" [env {s.env_var}]"
        if s.positional:
            g.add_argument(s.name, nargs="?", metavar=s.metavar, help=help_text)
        elif s.is_flag:
            g.add_argument(*s.flags, dest=s.name, action=argparse.BooleanOptionalAction, help=help_text)
        elif s.multiple:
            g.add_argument(*s.flags, dest=s.name, action="append", metavar=s.metavar, help=help_text)
        elif s.bare is not None:
            g.add_argument(*s.flags, dest=s.name, metavar=s.metavar, nargs="?", const=s.bare, help=help_text)
        else:
            g.add_argument(*s.flags, dest=s.name, metavar=s.metavar, help=help_text)
    gunicornconf.add_arguments(p)
    return p


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, object]]:
    parser = build_parser()
    ns = parser.parse_args(list(argv))
    extras = {"config", "profile", "check_config", "print_config", "hook"}
    cli = {k: v for k, v in vars(ns).items() if k not in extras and v is not None}
    for text in ns.hook or ():
        try:
            name, target = hookspec.split_option(text)
        except ValueError as e:
            parser.error(str(e))
        cli[name] = target
    return ns, cli


class Messages:
    """Warnings and notes from reading the configuration: printed on stderr at start (before
    logging exists), copied into the error log once it is a file, and logged on every reload."""

    def __init__(self) -> None:
        self.logging = False
        self.first: list[tuple[int, str]] = []

    def report(self, warnings: list[str], notes: list[str]) -> None:
        lines = [(logging.WARNING, w) for w in warnings] + [(logging.INFO, n) for n in notes]
        if self.logging:
            for level, line in lines:
                logging.getLogger("greenfork.master").log(level, "%s", line)
            return
        for level, line in lines:
            print(f"greenfork: {'warning' if level >= logging.WARNING else 'note'}: {line}", file=sys.stderr)
        self.first += lines

    def logging_ready(self, to_file: bool) -> None:
        self.logging = True
        if to_file:
            for level, line in self.first:
                logging.getLogger("greenfork.master").log(level, "%s", line)


def _fail(message: str) -> int:
    print(f"greenfork: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _paste_checked(settings: Settings, start_dir: str) -> Settings:
    """--paste INI is read from where greenfork was started (gunicorn takes its absolute path
    before --chdir), and must exist: a missing file is a configuration error, as in gunicorn."""
    if settings.source_of("app") != "default":
        raise SettingError(f"give either an application ({settings.app}, from "
                           f"{settings.source_of('app')}) or --paste {settings.paste}, not both")
    assert settings.paste is not None
    path, sep, name = settings.paste.partition("#")
    path = os.path.abspath(os.path.join(start_dir, path.strip()))
    if not os.path.isfile(path):
        raise SettingError(f"PasteDeploy file {path} not found (--paste, from {settings.source_of('paste')})")
    return settings.replace(paste=path + sep + name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ns, cli = parse_args(argv)
    from greenfork.master import config

    # Reloads re-read the same files even after --chdir moved us.
    start_dir = os.getcwd()
    messages = Messages()
    asked_check = [False]  # GUNICORN_CMD_ARGS may hold --check-config too

    def resolve() -> Settings:
        r = config.resolve_all(cli, os.environ, config=ns.config, profile=ns.profile, cwd=start_dir,
                               build_parser=build_parser)
        settings = r.settings
        parse_spec(settings.app)
        if settings.paste:
            settings = _paste_checked(settings, start_dir)
        asked_check[0] = r.check_config
        # before the master's hooks are imported: their modules may live there
        procenv.apply_pythonpath(settings.pythonpath, os.path.join(start_dir, settings.chdir or ""))
        settings = hooks.resolve_hooks(settings)  # the master's: a bad one is a configuration error
        messages.report(r.warnings, r.notes)
        return settings

    try:
        settings = resolve()
        check = ns.check_config or ns.print_config or asked_check[0]
        if check:  # the workers' hooks too (greenfork imports them in each worker)
            settings = hooks.resolve_hooks(settings, hookspec.WORKER_HOOKS)
    except (SettingError, AppSpecError, AddressError, hookspec.HookError) as e:
        return _fail(str(e))
    procenv.apply_env(settings.env)  # gunicorn sets raw_env in the master too (hooks, --preload)
    # TLS files are read here, before anything starts (and before --chdir), so that
    # --check-config checks them and a bad one is exit 2; the Server serves with this load.
    from greenfork.master import tls

    tls_config = None
    if tls.configured(settings):
        try:
            tls_config = tls.load(settings, tls.alpn_protocols(settings), base_dir=start_dir)
        except tls.TlsError as e:
            return _fail(str(e))
        if check:
            for level, line in [(30, w) for w in tls_config.warnings] + tls_config.expiry_report(time.time()):
                print(f"greenfork: {'error' if level >= 40 else 'warning'}: {line}", file=sys.stderr)
    from greenfork.master.cachekeeper import CacheKeeper, CacheSizeError

    try:  # issue 18: the two cache sizes must fit together (checked before -D detaches)
        CacheKeeper.check(settings)
    except CacheSizeError as e:
        return _fail(str(e))
    if check:
        for s in SETTINGS:
            value = config.show_value(s, getattr(settings, s.name))
            print(f"{s.name} = {value}  ({settings.source_of(s.name)})")
        return 0
    # A master re-executed by an upgrade is already detached (its parent is the old daemon);
    # forking again would look to the old master like the new one dying.
    detached = daemon.daemonize() if settings.daemon and upgrade.ENV_FDS not in os.environ else None
    code = _serve(settings, resolve, detached, start_dir, tls_config, messages)
    if detached is not None:
        detached.exited(code)
    return code


def _serve(settings: Settings, resolve: Callable[[], Settings], detached: daemon.Detached | None,
           start_dir: str, tls_config: TlsConfig | None, messages: Messages) -> int:
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
        handoff_gid = mountapps.handoff_gid(settings.handoff_socket_group)  # issue 17
    except (privileges.PrivilegeError, ValueError) as e:
        return _fail(str(e))
    try:
        logs.setup(settings.error_logfile, settings.log_level)
    except OSError as e:
        return _fail(f"cannot open error log {settings.error_logfile}: {e.strerror}")
    messages.logging_ready(to_file=settings.error_logfile != "-")
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
    try:  # issue 17: a front running as another user connects through the group
        mountapps.own_handoff_sockets([lst.unix_path for lst in server.listeners
                                       if lst.spec.handoff and lst.unix_path], handoff_gid)
    except ValueError as e:
        listeners.close_all(server.listeners)
        return _fail(str(e))
    return server.run(on_ready=detached.ready if detached is not None else None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

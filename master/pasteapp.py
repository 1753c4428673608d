"""`--paste INI[#NAME]`: a PasteDeploy application (Pyramid, TurboGears), loaded as gunicorn
loads it: `loadapp("config:/abs/path.ini", name=NAME, relative_to=cwd, global_conf=...)`, with
the file's `[loggers]` configuration applied first (as gunicorn and pserve apply it).

Runs where the application is imported: in each worker after monkey-patching, or in the
master with --preload.
"""

from __future__ import annotations

import configparser
import logging.config
import os
import re
import sys
from collections.abc import Iterable
from typing import Any

from greenfork.master.apploader import AppImportError, WSGIApp


def global_conf(entries: Iterable[str]) -> dict[str, str]:
    """--paste-global KEY=VALUE entries; `\\=` is a literal `=` (gunicorn's reading)."""
    out: dict[str, str] = {}
    for entry in entries:
        key, value = re.split(r"(?<!\\)=", entry, maxsplit=1)
        out[key.replace("\\=", "=")] = value.replace("\\=", "=")
    return out


def has_logging_config(path: str) -> bool:
    parser = configparser.ConfigParser()
    try:
        parser.read([path])
    except configparser.Error:
        return False
    return parser.has_section("loggers")


def load(paste: str, globals_: Iterable[str], chdir: str | None) -> WSGIApp:
    base = os.path.abspath(chdir) if chdir else os.getcwd()
    file_part, _, name = paste.partition("#")
    path = os.path.join(base, file_part.strip())
    if not os.path.isfile(path):
        raise AppImportError(f"PasteDeploy file {path} not found (--paste)")
    try:
        from paste.deploy import loadapp  # type: ignore[import-untyped]
    except ImportError:
        raise AppImportError("--paste needs PasteDeploy: pip install PasteDeploy") from None
    if base not in sys.path:
        sys.path.insert(0, base)
    if has_logging_config(path):
        # the application's loggers; greenfork's own (propagate=False) keep their handler
        logging.config.fileConfig(path, {"__file__": path, "here": os.path.dirname(path)},
                                  disable_existing_loggers=False)
    try:
        app: Any = loadapp(f"config:{path}", name=name.strip() or None, relative_to=base,
                           global_conf=global_conf(globals_))
    except LookupError as e:  # no such [app:NAME] section, an unknown egg or entry point
        raise AppImportError(f"PasteDeploy could not load {paste}: {e}") from None
    if not callable(app):
        raise AppImportError(f"PasteDeploy's {paste} is not a WSGI application "
                             f"(got {type(app).__name__})")
    return app  # type: ignore[no-any-return]

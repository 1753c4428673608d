"""Turn an app spec (`module:callable`, `module:factory()`, `module`) into a WSGI callable.

Pure apart from the import itself; the workers call it after monkey-patching,
and the master only with --preload (later) so it stays free of the app's imports.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

WSGIApp = Callable[..., Any]


class AppSpecError(ValueError):
    """The spec itself is malformed (a config error, exit 2)."""


class AppImportError(Exception):
    """The app could not be imported or found (exit 4); str() is the reason."""


def parse_spec(spec: str) -> tuple[str, str, bool]:
    """Return (module, attribute, call). `mod` means `mod:application` as in gunicorn."""
    spec = spec.strip()
    module, sep, attr = spec.partition(":")
    if not module or (sep and not attr):
        raise AppSpecError(f"invalid app '{spec}': expected module:callable or module:factory()")
    attr = attr or "application"
    call = False
    if attr.endswith(")"):
        name, paren, args = attr.partition("(")
        if not paren or args.strip() != ")":
            # arguments would need evaluating user text; a factory takes none here
            raise AppSpecError(f"invalid app '{spec}': a factory is called without arguments, as name()")
        attr, call = name.strip(), True
    for part in module.split(".") + attr.split("."):
        if not part.isidentifier():
            raise AppSpecError(f"invalid app '{spec}': '{part}' is not a Python identifier")
    try:
        ast.parse(attr, mode="eval")
    except SyntaxError:
        raise AppSpecError(f"invalid app '{spec}'") from None
    return module, attr, call


def load(spec: str, chdir: str | None = None) -> WSGIApp:
    module_name, attr, call = parse_spec(spec)
    # The working directory goes first on sys.path so `greenfork app:app` finds
    # ./app.py the way `python -c 'import app'` would.
    path = os.path.abspath(chdir) if chdir else os.getcwd()
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise AppImportError(f"cannot import module '{module_name}': no module named '{e.name}' "
                                 f"(looked in {path} and sys.path)") from e
        raise
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppImportError(f"module '{module_name}' has no attribute '{attr}'") from None
    if call:
        obj = obj()
    if not callable(obj):
        raise AppImportError(f"'{spec}' is not callable (got {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]

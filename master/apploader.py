"""Turn an app spec (`module:callable`, `module:factory()`, `module:create_app('prod')`, `module`)
into a WSGI callable.

A factory's arguments are Python literals (strings, numbers, tuples, lists, dicts, True, None),
read with ast.literal_eval and never evaluated as code, as gunicorn reads them. Pure apart from
the import itself; the workers call it after monkey-patching, and the master only with --preload
so it stays free of the app's imports.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greenfork.master.settings import Settings

WSGIApp = Callable[..., Any]


class AppSpecError(ValueError):
    """The spec itself is malformed (a config error, exit 2)."""


class AppImportError(Exception):
    """The app could not be imported or found (exit 4); str() is the reason."""


@dataclass(frozen=True, slots=True)
class AppSpec:
    module: str
    attr: str  # a name, or a dotted path of attributes
    call: bool = False  # a factory: call it (with args and kwargs) to get the app
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def parse_app(spec: str) -> AppSpec:
    """`mod` means `mod:application` as in gunicorn."""
    spec = spec.strip()
    module, sep, attr = spec.partition(":")
    if not module or (sep and not attr.strip()):
        raise AppSpecError(f"invalid app '{spec}': expected module:callable or module:factory()")
    attr = attr.strip() or "application"
    for part in module.split("."):
        if not part.isidentifier():
            raise AppSpecError(f"invalid app '{spec}': '{part}' is not a Python identifier")
    try:
        expr = ast.parse(attr, mode="eval").body
    except SyntaxError:
        raise AppSpecError(f"invalid app '{spec}': '{attr}' is neither a name nor a call "
                           "such as create_app('prod')") from None
    if not isinstance(expr, ast.Call):
        name = _dotted(expr)
        if name is None:
            raise AppSpecError(f"invalid app '{spec}': '{attr}' is neither a name nor a call "
                               "such as create_app('prod')")
        return AppSpec(module, name)
    name = _dotted(expr.func)
    if name is None:
        raise AppSpecError(f"invalid app '{spec}': the factory must be named, as in create_app()")
    try:
        args = tuple(ast.literal_eval(a) for a in expr.args)
        kwargs: dict[str, Any] = {}
        for kw in expr.keywords:
            if kw.arg is None:
                raise ValueError("**")
            kwargs[kw.arg] = ast.literal_eval(kw.value)
    except ValueError:
        raise AppSpecError(f"invalid app '{spec}': a factory's arguments must be Python literals "
                           "(strings, numbers, True, None, lists, dicts); they are never evaluated") \
            from None
    return AppSpec(module, name, True, args, kwargs)


def parse_spec(spec: str) -> tuple[str, str, bool]:
    """(module, attribute, call): the spec checked (AppSpecError)."""
    p = parse_app(spec)
    return p.module, p.attr, p.call


def load_app(settings: Settings) -> WSGIApp:
    """The application the settings name: a PasteDeploy .ini (--paste) or APP."""
    if settings.paste:
        from greenfork.master import pasteapp

        return pasteapp.load(settings.paste, settings.paste_global, settings.chdir)
    return load(settings.app, settings.chdir)


def load(spec: str, chdir: str | None = None) -> WSGIApp:
    p = parse_app(spec)
    # The working directory goes first on sys.path so `greenfork app:app` finds
    # ./app.py the way `python -c 'import app'` would.
    path = os.path.abspath(chdir) if chdir else os.getcwd()
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(p.module)
    except ModuleNotFoundError as e:
        if e.name and p.module.startswith(e.name):
            hint = ""
            if p.module.endswith(".py") and os.path.exists(os.path.join(path, p.module)):
                hint = f" (did you mean '{p.module.removesuffix('.py')}:{p.attr}'?)"
            raise AppImportError(f"cannot import module '{p.module}': no module named '{e.name}' "
                                 f"(looked in {path} and sys.path){hint}") from e
        raise
    obj: Any = module
    for part in p.attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppImportError(f"module '{p.module}' has no attribute '{p.attr}'") from None
    if p.call:
        try:
            inspect.signature(obj).bind(*p.args, **p.kwargs)
        except TypeError as e:
            raise AppImportError(f"'{spec}': {p.attr} cannot be called so: {e}") from None
        except ValueError:  # no signature to check (a builtin): the call will tell
            pass
        obj = obj(*p.args, **p.kwargs)
    if not callable(obj):
        raise AppImportError(f"'{spec}' is not callable (got {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]

"""Server hooks as setting values: gunicorn's fifteen names, their signatures, and the value
a hook setting holds (no I/O but the import of a `module:function` hook, when asked).

A hook comes from a gunicorn.conf.py (a function: `def post_fork(server, worker): ...`), from
greenfork.toml or `GREENFORK_POST_FORK` (`"myapp.hooks:post_fork"`), or from
`--hook post_fork=myapp.hooks:post_fork`. Text is imported where the hook runs: master hooks
by the master before it starts (a bad one is a configuration error), worker hooks in the worker
after gevent's monkey-patching, so that a hook module importing the application never imports
it unpatched in the master.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

HookFunc = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class HookDef:
    name: str
    side: Literal["master", "worker"]  # the process it runs in
    signature: str  # as gunicorn documents it
    arities: tuple[int, ...]  # accepted numbers of positional arguments, most first
    when: str  # for the docs: the moment it runs in greenfork


HOOK_DEFS: tuple[HookDef, ...] = (
    HookDef("on_starting", "master", "on_starting(server)", (1,),
            "In the master, once, before the first worker is forked (after the sockets are bound)."),
    HookDef("on_reload", "master", "on_reload(server)", (1,),
            "In the master, on HUP, once the new configuration is read and its listeners are bound, "
            "before the new generation forks; `server.cfg` is the new configuration."),
    HookDef("when_ready", "master", "when_ready(server)", (1,),
            "In the master, once every worker of the first generation is ready "
            "(gunicorn calls it before forking them)."),
    HookDef("pre_fork", "master", "pre_fork(server, worker)", (2,),
            "In the master, just before each worker is forked (`worker.pid` is None)."),
    HookDef("post_fork", "worker", "post_fork(server, worker)", (2,),
            "In the new worker, after privileges are dropped and gevent has monkey-patched, before "
            "the application is imported. A failure is a boot failure."),
    HookDef("post_worker_init", "worker", "post_worker_init(worker)", (1,),
            "In the worker, after the application is loaded, before it reports ready and accepts. "
            "A failure is a boot failure."),
    HookDef("worker_int", "worker", "worker_int(worker)", (1,),
            "In the worker, when it is told to stop at once: INT or QUIT to the master "
            "(or to the worker itself)."),
    HookDef("worker_abort", "worker", "worker_abort(worker)", (1,),
            "In the worker, on SIGABRT from the master (no heartbeat for `--timeout`), after its "
            "stacks are written to the error log, before it exits."),
    HookDef("pre_exec", "master", "pre_exec(server)", (1,),
            "In the master, just before it forks and executes a new master (USR2, or HUP with "
            "`--preload`)."),
    HookDef("pre_request", "worker", "pre_request(worker, req)", (2,),
            "In the worker, before the application is called for a request."),
    HookDef("post_request", "worker", "post_request(worker, req, environ, resp)", (4, 3, 2),
            "In the worker, after the response is complete (or has failed); two or three arguments "
            "work as in gunicorn."),
    HookDef("child_exit", "master", "child_exit(server, worker)", (2,),
            "In the master, after a worker is reaped, whatever the reason."),
    HookDef("worker_exit", "worker", "worker_exit(server, worker)", (2,),
            "In the worker, as it exits (drained, stopped, aborted or failed to boot)."),
    HookDef("nworkers_changed", "master", "nworkers_changed(server, new_value, old_value)", (3,),
            "In the master, at start (`old_value` None), on TTIN and TTOU, and when a reload changes "
            "`workers`."),
    HookDef("on_exit", "master", "on_exit(server)", (1,),
            "In the master, just before it exits."),
)
HOOKS: dict[str, HookDef] = {h.name: h for h in HOOK_DEFS}
MASTER_HOOKS = tuple(h.name for h in HOOK_DEFS if h.side == "master")
WORKER_HOOKS = tuple(h.name for h in HOOK_DEFS if h.side == "worker")


class HookError(ValueError):
    """A hook that cannot be used: not importable, not callable, or the wrong signature."""


@dataclass(frozen=True, slots=True, eq=False)
class Hook:
    """One hook setting's value. `func` is None until a `module:function` text is imported."""

    name: str
    target: str  # "myapp.hooks:post_fork", or "gunicorn.conf.py:post_fork" for a config's function
    func: HookFunc | None = None
    nargs: int = 0  # how many positional arguments func takes (post_request: 2, 3 or 4)

    def __repr__(self) -> str:
        return repr(self.target)

    def __eq__(self, other: object) -> bool:
        # the same text is the same hook; functions (a re-read gunicorn.conf.py) by identity
        if not isinstance(other, Hook):
            return NotImplemented
        return (self.name, self.target, self.func) == (other.name, other.target, other.func)

    def __hash__(self) -> int:
        return hash((self.name, self.target))

    def resolved(self) -> Hook:
        """This hook with its function imported and checked (HookError)."""
        if self.func is not None:
            return self
        module_name, _, attr = self.target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as e:
            raise HookError(f"hook {self.name}: cannot import {module_name} ({e})") from None
        except Exception as e:  # the module itself failed: name its error, not ours
            raise HookError(f"hook {self.name}: importing {module_name} failed: "
                            f"{type(e).__name__}: {e}") from None
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise HookError(f"hook {self.name}: {module_name} has no attribute {attr}") from None
        return of_callable(self.name, obj, self.target)


def arity(name: str, func: object) -> int:
    """How many of the hook's arguments `func` takes; HookError if it cannot take any we offer."""
    if not callable(func):
        raise HookError(f"hook {name}: {func!r} is not callable")
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):  # some builtins have none: offer the full signature
        return HOOKS[name].arities[0]
    for n in HOOKS[name].arities:
        try:
            sig.bind(*range(n))
        except TypeError:
            continue
        return n
    want = " or ".join(str(n) for n in HOOKS[name].arities)
    raise HookError(f"hook {name} must take {want} positional argument(s), as "
                    f"{HOOKS[name].signature}; {getattr(func, '__qualname__', func)!s} takes {sig}")


def of_callable(name: str, func: object, target: str | None = None) -> Hook:
    n = arity(name, func)
    if target is None:
        target = f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', type(func).__name__)}"
    return Hook(name, target, func, n)  # type: ignore[arg-type]  # arity() checked callable


def parse_target(name: str, text: str) -> Hook:
    """`module:function` (greenfork's form) or `module.function` (gunicorn's string form)."""
    t = text.strip()
    if ":" in t:
        module_name, _, attr = t.partition(":")
    else:
        module_name, _, attr = t.rpartition(".")
    parts = module_name.split(".") + attr.split(".")
    if not module_name or not attr or not all(p.isidentifier() for p in parts):
        raise ValueError(f"expected MODULE:FUNCTION for hook {name}, e.g. myapp.hooks:{name}")
    return Hook(name, f"{module_name}:{attr}")


def parser(name: str) -> Callable[[object], Hook | None]:
    """The Setting parser of hook `name`: text, a callable (a Python config, Server()), or a Hook."""

    def parse(v: object) -> Hook | None:
        if v is None or v == "":
            return None
        if isinstance(v, Hook):
            if v.name != name:
                raise ValueError(f"a {v.name} hook given as {name}")
            return v
        if isinstance(v, str):
            return parse_target(name, v)
        try:
            return of_callable(name, v)
        except HookError as e:
            raise ValueError(str(e).removeprefix(f"hook {name}: ")) from None

    return parse


def split_option(text: str) -> tuple[str, str]:
    """`--hook NAME=MODULE:FUNCTION` -> (NAME, MODULE:FUNCTION); ValueError naming what is wrong."""
    name, eq, target = text.partition("=")
    name = name.strip()
    if not eq or not target.strip():
        raise ValueError(f"--hook {text!r}: expected NAME=MODULE:FUNCTION, e.g. "
                         "post_fork=myapp.hooks:post_fork")
    if name not in HOOKS:
        import difflib

        close = difflib.get_close_matches(name, list(HOOKS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"--hook {text!r}: {name} is not a server hook{hint}; hooks: {', '.join(HOOKS)}")
    return name, target.strip()

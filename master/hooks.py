"""Running gunicorn-style server hooks: the `server`, `worker` and `cfg` objects they are given,
and the calls, each of which logs a failing hook with its name and carries on.

The master's executor calls the master hooks while it carries out commands (never from a
signal handler: the loop runs the executor): on_starting and nworkers_changed before START,
pre_fork around Spawn, child_exit for WorkerExited, nworkers_changed for WorkersChanged,
on_reload in PrepareReload, when_ready in ServerReady, pre_exec in ExecMaster, on_exit in Exit.
A forked worker gets a WorkerHooks (WorkerInfo.hooks) for the worker hooks; workers/
hookpoints.py calls them at their points (the worker side imports gevent, this module never).
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import sys
from collections.abc import Callable
from typing import Any

from greenfork.master import gunicornmap
from greenfork.master.hookspec import MASTER_HOOKS, WORKER_HOOKS, Hook, HookError
from greenfork.master.records import Worker
from greenfork.master.settings import BY_NAME, SETTINGS, Settings

log = logging.getLogger("greenfork.master")
worker_log = logging.getLogger("greenfork.worker")


def resolve_hooks(settings: Settings, names: tuple[str, ...] = MASTER_HOOKS) -> Settings:
    """The settings with these hooks imported (`module:function` text); HookError names the
    hook that cannot be. The master resolves its own before it starts (a configuration error)."""
    changes: dict[str, Hook] = {}
    for name in names:
        hook: Hook | None = getattr(settings, name)
        if hook is not None and hook.func is None:
            changes[name] = hook.resolved()
    return settings.replace(**changes) if changes else settings


class HookLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """`server.log` and `worker.log`: a logger with what hooks call on gunicorn's Logger."""

    def warn(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.warning(msg, *args, **kwargs)

    def reopen_files(self) -> None:
        """greenfork reopens its logs on USR1."""

    def close_on_exec(self) -> None:
        """greenfork's log files are close-on-exec already."""


# ------------------------------------------------------------------ cfg


class _SettingView:
    def __init__(self, name: str, value: object) -> None:
        self.name = name
        self.value = value

    def get(self) -> object:
        return self.value


def _uid(user: str | None) -> int:
    if user is None:
        return os.geteuid()
    return int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid


def _gid(settings: Settings) -> int:
    if settings.group is not None:
        g = settings.group
        return int(g) if g.isdigit() else grp.getgrnam(g).gr_gid
    if settings.user is not None:
        return pwd.getpwuid(_uid(settings.user)).pw_gid
    return os.getegid()


# gunicorn's names whose greenfork value reads differently
_READ_BACK: dict[str, Callable[[Settings], object]] = {
    "bind": lambda s: list(s.bind),
    "limit_request_line": lambda s: s.max_request_line_size - 2,
    "umask": lambda s: 0o777 & ~s.unix_socket_mode,
    "worker_class": lambda s: "gevent",
    "user": lambda s: _uid(s.user),
    "group": _gid,
    "raw_env": lambda s: list(s.env),
    "reload_extra_files": lambda s: list(s.reload_extra_file),
    "raw_paste_global_conf": lambda s: list(s.paste_global),
    "pythonpath": lambda s: ",".join(s.pythonpath) or None,
    "chdir": lambda s: os.path.abspath(s.chdir or os.getcwd()),
}


class ConfigView:
    """`server.cfg` and `worker.cfg`: gunicorn's Config, read from greenfork's settings. A gunicorn
    name gives gunicorn's reading of the value (or gunicorn's default where greenfork has no
    counterpart); greenfork's names work too."""

    def __init__(self, settings: Settings) -> None:
        self._s = settings

    def __getattr__(self, name: str) -> Any:
        s = self._s
        g = gunicornmap.BY_GUNICORN_NAME.get(name)
        if g is not None:
            if name in _READ_BACK:
                return _READ_BACK[name](s)
            if g.kind == gunicornmap.HOOK:
                hook: Hook | None = getattr(s, name)
                return hook.func if hook is not None and hook.func is not None else _noop
            if g.kind in (gunicornmap.SAME, gunicornmap.CONVERT) and g.to in BY_NAME:
                return getattr(s, g.to)
            return g.default
        if name in BY_NAME:
            return getattr(s, name)
        raise AttributeError(f"No configuration setting for: {name}")

    # gunicorn Config's own properties
    @property
    def env(self) -> dict[str, str]:
        return dict(e.split("=", 1) for e in self._s.env)

    @property
    def proc_name(self) -> str:
        return self._s.app_label

    @property
    def uid(self) -> int:
        return _uid(self._s.user)

    @property
    def gid(self) -> int:
        return _gid(self._s)

    @property
    def is_ssl(self) -> bool:
        return bool(self._s.certfile or self._s.keyfile)

    @property
    def worker_class_str(self) -> str:
        return "gevent"

    @property
    def address(self) -> list[str]:
        return list(self._s.bind)

    @property
    def settings(self) -> dict[str, _SettingView]:
        names = [g.name for g in gunicornmap.TABLE] + [s.name for s in SETTINGS]
        return {n: _SettingView(n, getattr(self, n)) for n in dict.fromkeys(names)}


def _noop(*args: object) -> None:
    """What an unset hook is in gunicorn's Config: a function that does nothing."""


# ------------------------------------------------------------------ server, worker


class WorkerView:
    """The `worker` gunicorn hooks receive. In the master (pre_fork, child_exit) a record of the
    process; in the worker itself, also its live state (`alive`, `nr`, `wsgi`, `sockets`)."""

    def __init__(self, age: int, record: Worker, settings: Settings, ppid: int) -> None:
        self.age = age  # spawn sequence number in this master, as gunicorn's worker.age
        self.slot = record.slot
        self.generation = record.generation
        self.pid: int | None = None  # set once forked
        self.ppid = ppid
        self.cfg = ConfigView(settings)
        self.log = HookLog(worker_log, {})
        self.timeout = settings.timeout
        self.max_requests = settings.max_requests or sys.maxsize
        self.booted = False
        self.alive = True
        self.aborted = False
        self.nr = 0  # requests served (counted when a request hook is set or --max-requests is)
        self.wsgi: Any = None  # the application, once loaded
        self.sockets: list[Any] = []

    def notify(self) -> None:
        """gunicorn's heartbeat: greenfork's event loop beats by itself."""

    def __repr__(self) -> str:
        return f"<greenfork worker {self.slot} pid={self.pid} age={self.age} gen={self.generation}>"


class ServerView:
    """The `server` gunicorn hooks receive (gunicorn's Arbiter)."""

    master_name = "Master"
    reexec_pid = 0

    def __init__(self, runner: Hooks) -> None:
        self._runner = runner
        self.pid = runner.master_pid
        self.log = HookLog(log, {})

    @property
    def cfg(self) -> ConfigView:
        return ConfigView(self._runner.current)

    @property
    def num_workers(self) -> int:
        return self._runner.num_workers

    @property
    def WORKERS(self) -> dict[int, WorkerView]:  # gunicorn's name
        return {v.pid: v for v in self._runner.views.values() if v.pid}

    @property
    def LISTENERS(self) -> list[Any]:  # gunicorn's name
        return self._runner.listeners()

    @property
    def proc_name(self) -> str:
        return self._runner.current.app_label


# ------------------------------------------------------------------ running them


def call(settings: Settings, name: str, args: tuple[object, ...], logger: logging.Logger) -> bool:
    """Run hook `name` of these settings if it is set; False if it failed (logged with its name)."""
    hook: Hook | None = getattr(settings, name)
    if hook is None:
        return True
    try:
        hook = hook.resolved()
        assert hook.func is not None
        hook.func(*args[:hook.nargs])
    except HookError as e:
        logger.error("Error in hook %s: %s", name, e)
        return False
    except Exception:
        logger.exception("Error in hook %s (%s)", name, hook.target)
        return False
    return True


class Hooks:
    """The master's side: one per master, owned by its executor."""

    def __init__(self, settings: Settings, *, listeners: Callable[[], list[Any]] | None = None) -> None:
        self.settings = settings  # the serving generation's
        self.pending: Settings | None = None  # a reload's, from its prepare step until it ends
        self.num_workers = settings.workers
        self.master_pid = os.getpid()
        self.listeners = listeners or list
        self.age = 0
        self.views: dict[int, WorkerView] = {}  # by id() of the worker record
        self.server = ServerView(self)

    @property
    def current(self) -> Settings:
        return self.pending or self.settings

    def _call(self, name: str, *args: object, settings: Settings | None = None) -> bool:
        return call(settings or self.current, name, args, log)

    def starting(self) -> None:
        """Before START: gunicorn calls nworkers_changed(server, N, None) as it sets up, then on_starting."""
        self._call("nworkers_changed", self.server, self.num_workers, None)
        self._call("on_starting", self.server)

    def pre_fork(self, record: Worker, settings: Settings) -> WorkerView:
        self.age += 1
        view = WorkerView(self.age, record, settings, self.master_pid)
        self.views[id(record)] = view
        self._call("pre_fork", self.server, view, settings=settings)
        return view

    def forked(self, record: Worker, pid: int) -> None:
        view = self.views.get(id(record))
        if view is not None:
            view.pid = pid

    def in_child(self, record: Worker, settings: Settings) -> WorkerHooks | None:
        """In the forked worker: its hooks, or None when it has none (nothing to call)."""
        view = self.views.get(id(record))
        if view is None or not any(getattr(settings, n) is not None for n in WORKER_HOOKS):
            return None
        view.pid = os.getpid()
        return WorkerHooks(self.server, view, settings)

    def exited(self, record: Worker) -> None:
        view = self.views.pop(id(record), None)
        if view is not None:
            view.alive = False
            self._call("child_exit", self.server, view)

    def workers_changed(self, old: int, new: int) -> None:
        self.num_workers = new
        self._call("nworkers_changed", self.server, new, old)

    def reloading(self, settings: Settings, reexec: bool) -> None:
        """The prepare step read these settings: on_reload sees them as server.cfg."""
        self.pending = settings
        self._call("on_reload", self.server)
        if reexec:  # a new master applies them, not this one
            self.pending = None

    def reload_ended(self, committed: bool) -> None:
        if committed and self.pending is not None:
            self.settings = self.pending
        self.pending = None

    def ready(self) -> None:
        self._call("when_ready", self.server)

    def pre_exec(self) -> None:
        self._call("pre_exec", self.server)

    def exiting(self) -> None:
        self._call("on_exit", self.server)


class WorkerHooks:
    """A worker's side: handed to it through WorkerInfo; workers/hookpoints.py calls these."""

    def __init__(self, server: ServerView, view: WorkerView, settings: Settings) -> None:
        self.server = server
        self.worker = view
        self.settings = settings
        self.interrupted = False

    def has(self, name: str) -> bool:
        return getattr(self.settings, name) is not None

    def _call(self, name: str, *args: object) -> bool:
        return call(self.settings, name, args, worker_log)

    def prepare(self) -> bool:
        """Import every `module:function` worker hook, after monkey-patching; False (logged) if
        one cannot be: the worker then fails to boot, as a broken app would."""
        try:
            self.settings = resolve_hooks(self.settings, WORKER_HOOKS)
        except HookError as e:
            worker_log.error("Worker %d cannot load its hooks: %s", self.worker.slot, e)
            return False
        return True

    def post_fork(self) -> bool:
        return self._call("post_fork", self.server, self.worker)

    def post_worker_init(self) -> bool:
        ok = self._call("post_worker_init", self.worker)
        self.worker.booted = ok
        return ok

    def worker_int(self) -> None:
        if not self.interrupted:  # TERMINATE and its backup SIGQUIT both arrive: once
            self.interrupted = True
            self.worker.alive = False
            self._call("worker_int", self.worker)

    def worker_abort(self) -> None:
        self.worker.alive = False
        self.worker.aborted = True
        self._call("worker_abort", self.worker)

    def worker_exit(self) -> None:
        self.worker.alive = False
        self._call("worker_exit", self.server, self.worker)

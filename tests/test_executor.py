"""The executor's side of commands, on real sockets and files: the reload's prepare step
with its commit and rollback, the pidfile across an upgrade, the control protocol, and
the guard that keeps a kill from ever reaching a process group."""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from greenfork.master import control, listeners
from greenfork.master.addresses import parse_bind
from greenfork.master.commands import (
    AbortReload,
    CommitReload,
    Input,
    Kill,
    Notify,
    Prepared,
    PrepareReload,
    SampleMemory,
)
from greenfork.master.executor import Executor
from greenfork.master.listenset import ListenerSet
from greenfork.master.pidfile import Pidfile, PidfileBusy
from greenfork.master.prepare import Staging
from greenfork.master.records import Worker
from greenfork.master.sdnotify import Notifier
from greenfork.master.settings import SettingError, Settings, defaults
from greenfork.master.states import Event


def refused(url: str) -> bool:
    host, port = url.split("://")[1].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


class Config:
    """The re-read configuration: what the next resolve() returns, or the error it raises."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.error = ""

    def resolve(self) -> Settings:
        if self.error:
            raise SettingError(self.error)
        return self.settings


@pytest.fixture
def world() -> Iterator[tuple[Executor, Config, Settings]]:
    current = defaults(bind=("http://127.0.0.1:0",), workers=1)
    lset = ListenerSet(listeners.bind_all([parse_bind(b) for b in current.bind]))
    config = Config(current)
    ex = Executor(Staging(lset, config.resolve), app=None, identity=None, notify=Notifier({}))
    try:
        yield ex, config, current
    finally:
        ex.close()
        lset.close_all()


def prepared(answer: Input | None) -> Prepared:
    assert answer is not None and answer.event is Event.PREPARED and isinstance(answer.detail, Prepared)
    return answer.detail


def test_prepare_stages_new_listeners_and_commit_makes_them_current(
        world: tuple[Executor, Config, Settings], sock_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    ex, config, current = world
    unix = f"unix:{sock_dir / 'p.sock'}"
    config.settings = current.replace(bind=(*current.bind, unix), keep_alive=5.0)
    p = prepared(ex.execute(PrepareReload(current)))
    assert p.staged and p.held == () and p.settings.keep_alive == 5.0
    lset = ex.staging.lset
    assert [lst.url for lst in ex.staging.listeners(staged=True)] == [lset.current[0].url, unix]
    assert ex.staging.listeners(staged=False) == lset.current  # the serving generation's set is untouched
    with caplog.at_level(logging.INFO, "greenfork.master"):
        ex.execute(CommitReload())
    assert lset.addresses[1] == unix and f"Now listening on: {unix}" in caplog.text


def test_a_prepare_that_fails_leaves_nothing_staged(world: tuple[Executor, Config, Settings],
                                                    sock_dir: Path) -> None:
    ex, config, current = world
    config.error = "invalid value 'many' for workers (from greenfork.toml): expected an integer"
    answer = ex.execute(PrepareReload(current))
    assert answer == Input(Event.PREPARE_FAILED, detail=config.error)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        config.error = ""
        config.settings = current.replace(bind=(*current.bind, f"unix:{sock_dir / 'f.sock'}",
                                                f"http://127.0.0.1:{blocker.getsockname()[1]}"))
        answer = ex.execute(PrepareReload(current))
        assert answer is not None and answer.event is Event.PREPARE_FAILED
        assert "address already in use" in str(answer.detail)
        assert ex.staging.lset.pending is None and not (sock_dir / "f.sock").exists()
    finally:
        blocker.close()


def test_an_aborted_reload_closes_what_it_bound(world: tuple[Executor, Config, Settings]) -> None:
    ex, config, current = world
    config.settings = current.replace(bind=(*current.bind, "127.0.0.1:0"))  # another bind text
    p = prepared(ex.execute(PrepareReload(current)))
    assert p.staged
    fresh = ex.staging.lset.fresh[0].url
    assert not refused(fresh)
    ex.execute(AbortReload())
    assert refused(fresh) and ex.staging.lset.pending is None


def test_an_unchanged_bind_stages_nothing_and_a_reexec_only_reads_the_settings(
        world: tuple[Executor, Config, Settings]) -> None:
    ex, config, current = world
    config.settings = current.replace(workers=3, user="nobody")
    p = prepared(ex.execute(PrepareReload(current)))
    assert not p.staged and p.settings.workers == 3 and p.settings.user is None and len(p.held) == 1
    p = prepared(ex.execute(PrepareReload(current, reexec=True)))
    assert not p.staged and p.settings.user == "nobody"  # the new master applies it


def test_memory_samples_and_a_kill_never_reach_a_process_group(
        world: tuple[Executor, Config, Settings]) -> None:
    ex, _, _ = world
    answer = ex.execute(SampleMemory((os.getpid(), 999_999_999)))
    assert answer is not None and answer.event is Event.MEMORY and isinstance(answer.detail, dict)
    mine = answer.detail[os.getpid()]
    assert mine is not None and mine > 0 and answer.detail[999_999_999] is None
    got: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        got.append(signum)

    old = signal.signal(signal.SIGURG, handler)
    try:
        ex.execute(Kill(Worker(slot=0, generation=1), signal.SIGURG))  # pid 0 would be our group
        os.kill(os.getpid(), signal.SIGURG)  # the handler works: the check above can fail
    finally:
        signal.signal(signal.SIGURG, old)
    assert got == [signal.SIGURG]


def test_notifications_reach_systemd(world: tuple[Executor, Config, Settings], sock_dir: Path) -> None:
    ex, _, _ = world
    path = sock_dir / "notify"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    ex.notify = Notifier({"NOTIFY_SOCKET": str(path)})
    try:
        ex.execute(Notify("reloading"))
        assert server.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        ex.execute(Notify("reloaded", "generation 2, 1/1 workers ready"))
        assert b"READY=1\nSTATUS=generation 2, 1/1 workers ready" in server.recv(4096)
        ex.execute(Notify("reload_failed"))
        assert b"STATUS=reload failed; previous workers serving" in server.recv(4096)
        ex.execute(Notify("mainpid", pid=4242))
        assert server.recv(4096).startswith(b"MAINPID=4242\n")
        ex.execute(Notify("stopping"))
        assert server.recv(4096).startswith(b"STOPPING=1")
    finally:
        ex.notify.close()
        server.close()


def test_the_control_protocol_reads_each_message_once_in_order() -> None:
    data = control.HEARTBEAT * 3 + control.RELOAD_ME + control.READY + b"?"
    assert control.messages(data, control.TO_MASTER) == [control.READY, control.HEARTBEAT, control.RELOAD_ME]
    assert control.messages(b"", control.TO_MASTER) == []
    both = control.QUIT + control.REOPEN
    assert control.messages(both, control.TO_WORKER) == [control.QUIT, control.REOPEN]
    every = control.TO_WORKER + control.TO_MASTER
    assert len(set(every)) == len(every) and all(len(m) == 1 for m in every)


def test_the_pidfile_moves_to_oldbin_with_its_lock_and_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    old = Pidfile(str(path))
    old.acquire(100)
    old.to_oldbin()
    oldbin = tmp_path / "app.pid.oldbin"
    assert not path.exists() and oldbin.read_text() == "100\n"
    with pytest.raises(PidfileBusy, match="already running with pid 100"):
        Pidfile(str(oldbin)).check()  # the lock went along with the rename
    new = Pidfile(str(path))
    new.acquire(200)  # the new master, once ready
    old.restore()  # a live master holds PIDFILE: left alone
    assert path.read_text() == "200\n" and oldbin.exists()
    os.close(new.fd)  # the new master dies (its lock goes with it)
    new.fd = -1
    old.restore()
    assert path.read_text() == "100\n" and not oldbin.exists()
    old.release()
    assert not path.exists()

"""Listener reconciliation across reloads, and the upgrade plumbing's file and env handling."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from greenfork.master import listeners, report, upgrade
from greenfork.master.addresses import parse_bind
from greenfork.master.listenset import ListenerSet


def bound(*binds: str) -> ListenerSet:
    return ListenerSet(listeners.bind_all([parse_bind(b) for b in binds]))


def refused(url: str) -> bool:
    host, port = url.split("://")[1].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_unchanged_addresses_keep_their_socket_new_ones_are_bound_removed_ones_retire(
        sock_dir: Path) -> None:
    ls = bound("http://127.0.0.1:0", "127.0.0.1:0")
    kept, dropped = ls.current
    unix = f"unix:{sock_dir / 'n.sock'}"
    ls.prepare(("http://127.0.0.1:0", unix))
    assert ls.pending is not None and ls.pending[0] is kept and ls.pending[1].url == unix
    assert ls.current == [kept, dropped]  # nothing changes before the commit
    fresh = ls.commit()
    assert [lst.url for lst in fresh] == [unix] and ls.addresses == (kept.url, unix)
    assert not refused(dropped.url)  # still open while the old generation drains
    assert ls.close_retired() == [dropped]
    assert refused(dropped.url)
    ls.close_all()
    assert not (sock_dir / "n.sock").exists()


def test_a_failed_bind_changes_nothing_and_an_abort_closes_what_was_bound(sock_dir: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    ls = bound("http://127.0.0.1:0")
    try:
        with pytest.raises(ValueError, match="address already in use"):
            ls.prepare(("http://127.0.0.1:0", f"unix:{sock_dir / 'a.sock'}",
                        f"http://127.0.0.1:{blocker.getsockname()[1]}"))
        assert ls.pending is None and not (sock_dir / "a.sock").exists()
        ls.prepare(("http://127.0.0.1:0", f"unix:{sock_dir / 'b.sock'}"))
        assert (sock_dir / "b.sock").exists()
        ls.abort()
        assert not (sock_dir / "b.sock").exists() and ls.pending is None and len(ls.current) == 1
    finally:
        ls.close_all()
        blocker.close()


def test_inherited_sockets_are_adopted_with_their_bind_text(sock_dir: Path) -> None:
    ls = bound("http://127.0.0.1:0", f"unix:{sock_dir / 'u.sock'}")
    fds = [os.dup(lst.sock.fileno()) for lst in ls.current]
    env = {upgrade.ENV_FDS: ",".join(map(str, fds)),
           upgrade.ENV_BINDS: json.dumps([lst.spec.raw for lst in ls.current]),
           upgrade.ENV_GEN: "7", upgrade.ENV_READY: "-1", "OTHER": "x"}
    got = upgrade.inherited(env)
    assert got is not None
    adopted, generation, ready = got
    assert (generation, ready) == (7, -1) and env == {"OTHER": "x"}  # nothing left to inherit
    assert [lst.url for lst in adopted] == list(ls.addresses)
    assert [lst.spec.raw for lst in adopted] == [lst.spec.raw for lst in ls.current]
    assert adopted[1].unix_path == str(sock_dir / "u.sock") and adopted[1].unix_ino
    assert upgrade.inherited({}) is None
    listeners.close_all(adopted, unlink=False)
    ls.close_all()


def test_the_addresses_file_is_removed_only_by_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "addr.json"
    report.write_addresses_file(str(path), 200, 2, ["http://127.0.0.1:1"])
    report.remove_addresses_file(str(path), 100)
    assert path.exists()
    report.remove_addresses_file(str(path), 200)
    assert not path.exists()
    report.remove_addresses_file(str(path), 200)  # already gone: fine


def test_exec_needs_a_command_line() -> None:
    saved = upgrade._command
    upgrade._command = None
    try:
        assert not upgrade.can_exec()
        with pytest.raises(ValueError, match="command line"):
            upgrade.exec_master([], 2)
    finally:
        upgrade._command = saved

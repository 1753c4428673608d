"""systemd integration with real peers: a notify socket, and systemd-socket-activate."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import APPS, Launcher, children, http_get, kill_tree, wait_for

pytestmark = pytest.mark.timeout(60)


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def pump(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.splitlines()))

    def seen(self, key: str, value: str | None = None) -> bool:
        return any(key in m and (value is None or m[key] == value) for m in self.pump())


def test_notify_ready_reloading_stopping_and_watchdog(launcher: Launcher, sock_dir: Path) -> None:
    ns = NotifySocket(sock_dir / "notify")
    env = {"NOTIFY_SOCKET": str(sock_dir / "notify"), "WATCHDOG_USEC": "400000"}
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0"], workers=2, env=env)
    wait_for(lambda: ns.seen("READY", "1"), 10, "READY=1")
    ready = next(m for m in ns.messages if m.get("READY") == "1")
    assert ready["MAINPID"] == str(g.pid) and ready["STATUS"] == "generation 1, 2/2 workers ready"
    wait_for(lambda: sum("WATCHDOG" in m for m in ns.pump()) >= 3, 5, "watchdog pings")
    count = len(ns.messages)
    g.signal(signal.SIGHUP)
    wait_for(lambda: any(m.get("READY") == "1" for m in ns.pump()[count:]), 10, "READY=1 after the reload")
    after = ns.messages[count:]
    reloading = next(i for i, m in enumerate(after) if m.get("RELOADING") == "1")
    assert int(after[reloading]["MONOTONIC_USEC"]) > 0
    assert reloading < next(i for i, m in enumerate(after) if m.get("READY") == "1")
    g.signal(signal.SIGTERM)
    assert g.wait(15) == 0
    assert ns.seen("STOPPING", "1")


def test_systemd_socket_activate_serves(launcher: Launcher, tmp_path: Path) -> None:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.fail("systemd-socket-activate is required (scripts/test installs Debian's systemd)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "activate.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([tool, "-l", f"127.0.0.1:{port}", sys.executable, "-m", "greenfork.master",
                                 "testapp:app", "-w", "2"], cwd=APPS, env=launcher.env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # the tool listens at once and starts greenfork on the first connection
        wait_for(lambda: f":{port}" in subprocess.run(["ss", "-ltn"], capture_output=True,
                                                       text=True).stdout, 10, "the activation socket")
        status, _, body = http_get(f"http://127.0.0.1:{port}", "/pid", timeout=20)
        assert status == 200 and int(body) in children(proc.pid) + [
            c for p in children(proc.pid) for c in children(p)]
        assert f"Now listening on: http://127.0.0.1:{port}" in log.read_text()
    finally:
        kill_tree(proc)

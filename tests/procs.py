"""Helpers for tests that run real greenfork processes.

Every process is started in its own session, waited on by condition with a
deadline, and killed by pid (its whole process group) at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APPS = Path(__file__).parent / "apps"


class Timeout(AssertionError):
    pass


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll cond until it returns something truthy, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a process started outside the launcher, its children and grandchildren (a
    master, its workers, and what systemd-socket-activate started), by pid; then reap it."""
    pids = [proc.pid, *children(proc.pid)]
    pids += [c for p in pids[1:] for c in children(p)]
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: reaped while we read
        return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


@dataclass
class Greenfork:
    proc: subprocess.Popen[bytes]
    log_path: Path
    addr_file: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def addresses(self) -> list[str]:
        return list(self.info["addresses"])

    def url(self, i: int = 0) -> str:
        return self.addresses[i]

    def port(self, i: int = 0) -> int:
        return int(self.url(i).rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        return [p for p in children(self.pid) if alive(p)]

    def reload_info(self) -> dict[str, Any]:
        self.info = json.loads(self.addr_file.read_text())
        return self.info

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout)

    def kill_all(self) -> None:
        pids = [self.pid, *children(self.pid)]
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


class Launcher:
    """pytest fixture object: start(...) servers, all killed at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Greenfork] = []
        self.count = 0

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENFORK_", "LISTEN_"))}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def spawn(self, args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
              addresses_file: bool = True, python: str = sys.executable, **popen: Any) -> Greenfork:
        self.count += 1
        log = self.tmp / f"greenfork-{self.count}.log"
        addr = self.tmp / f"addresses-{self.count}.json"
        cmd = [python, "-m", "greenfork.master", *args]
        if addresses_file:
            cmd += ["--addresses-file", str(addr)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=cwd or APPS, env=self.env(env), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, **popen)
        g = Greenfork(proc, log, addr)
        self.started.append(g)
        return g

    def start(self, args: list[str], *, workers: int = 1, timeout: float = 20, boot_log: Path | None = None,
              **kw: Any) -> Greenfork:
        """Start and wait until the addresses file is written and all workers are ready
        (the master logs "Booted" to stderr, or to boot_log with --error-logfile)."""
        if not any(a in ("-w", "--workers") for a in args):
            args = [*args, "-w", str(workers)]
        g = self.spawn(args, **kw)

        def ready() -> bool:
            if g.proc.poll() is not None:
                raise AssertionError(f"greenfork exited with {g.proc.returncode}:\n{g.log()}")
            return g.addr_file.exists() and "Booted" in (boot_log.read_text() if boot_log else g.log())

        wait_for(ready, timeout, "greenfork to boot")
        g.reload_info()
        return g

    def cleanup(self) -> None:
        for g in self.started:
            g.kill_all()


def pid_in(pidfile: Path) -> int:
    """The pid a pidfile names, 0 while there is none: during a USR2 upgrade the old master renames
    its file and the new one writes its own, so the file may vanish between a test and a read."""
    try:
        return int(pidfile.read_text() or 0)
    except FileNotFoundError:
        return 0


def http_get(url: str, path: str = "/", headers: dict[str, str] | None = None,
             timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request with a fresh connection (http.client; for unix: URLs too)."""
    import http.client

    conn: http.client.HTTPConnection
    if url.startswith("unix:"):
        conn = UnixHTTPConnection(url[5:], timeout=timeout)
    else:
        host_port = url.split("://", 1)[1]
        conn = http.client.HTTPConnection(host_port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class UnixHTTPConnection:
    def __new__(cls, path: str, timeout: float = 10) -> Any:
        import http.client

        class _Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(timeout)
                s.connect(path)
                self.sock = s

        return _Conn("localhost", timeout=timeout)


def raw(url: str, data: bytes, timeout: float = 10, read_until_close: bool = True) -> bytes:
    """Send raw bytes on a new TCP connection and read until the server closes."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                if read_until_close:
                    raise
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

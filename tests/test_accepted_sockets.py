"""What a worker's accepted sockets carry: TCP_NODELAY (our answers go out whole; Nagle would
hold back the second small write of a streamed or pipelined answer until the client's delayed
ACK). The master sets it on the listening socket and Linux's accepted sockets inherit it
(master/listeners.py, workers/acceptor.py), which saves a system call per connection; these
tests look at the sockets themselves, from outside: pidfd_getfd(2) copies the worker's
descriptor into the test (root, Linux 5.6 or later), and getsockopt reads the option there;
strace counts the worker's setsockopt calls."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.procs import Launcher, http_get, wait_for

SYS_PIDFD_GETFD = 438  # (x86_64 and aarch64 alike)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                                reason="pidfd_getfd needs Linux and ptrace rights over the worker")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


@contextmanager
def copied(pid: int, fd: int) -> Iterator[socket.socket]:
    """The socket behind descriptor `fd` of process `pid`, copied into this process."""
    pidfd = os.pidfd_open(pid)
    try:
        mine = _libc().syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if mine < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd({pid}, {fd}): {os.strerror(err)}")
    finally:
        os.close(pidfd)
    s = socket.socket(fileno=mine)
    try:
        yield s
    finally:
        s.close()


def socket_fds(pid: int) -> list[int]:
    out = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                out.append(int(name))
        except OSError:
            pass  # closed meanwhile
    return out


def require_pidfd_getfd(pid: int) -> None:
    """Skip when this kernel or sandbox refuses pidfd_getfd (ENOSYS: before 5.6; EPERM: a
    seccomp filter or no ptrace rights): the test cannot look then."""
    fds = socket_fds(pid)
    assert fds, "the worker has no socket"
    try:
        with copied(pid, fds[0]):
            pass
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EPERM):
            pytest.skip(f"pidfd_getfd unavailable here: {e}")
        raise


def accepted_by(pid: int, client: socket.socket) -> dict[str, int] | None:
    """TCP_NODELAY of the worker's socket whose peer is `client`, and of the listener it came
    from; None while the worker has not accepted it yet."""
    found: dict[str, int] = {}
    for fd in socket_fds(pid):
        try:
            with copied(pid, fd) as s:
                if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
                    continue
                nodelay = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                if s.getsockname() == client.getpeername() and s.getsockopt(socket.SOL_SOCKET,
                                                                            socket.SO_ACCEPTCONN):
                    found["listener"] = nodelay
                else:
                    try:
                        if s.getpeername() == client.getsockname():
                            found["accepted"] = nodelay
                    except OSError:
                        pass  # not connected
        except OSError:
            continue  # closed meanwhile
    return found if "accepted" in found else None


def test_accepted_connections_have_tcp_nodelay(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0"])
    (worker,) = g.workers()
    require_pidfd_getfd(worker)
    port = g.port()
    # several connections, each kept open while it is looked at: the first one tells the worker
    # whether the accepted sockets inherit the option, the others take that way
    for i in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.recv(4096).startswith(b"HTTP/1.1 200 OK")  # accepted and answered: kept alive
            seen = wait_for(lambda: accepted_by(worker, c), 10, f"connection {i} in the worker")
            assert seen["accepted"] == 1, seen
            assert seen["listener"] == 1, seen  # set where they inherit it from


def test_ipv6_connections_too(launcher: Launcher) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 here")
    g = launcher.start(["testapp:app", "-b", "[::1]:0"])
    (worker,) = g.workers()
    require_pidfd_getfd(worker)
    with socket.create_connection(("::1", g.port()), timeout=10) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.recv(4096).startswith(b"HTTP/1.1 200 OK")
        seen = wait_for(lambda: accepted_by(worker, c), 10, "the connection in the worker")
        assert seen["accepted"] == 1, seen


def test_an_early_client_does_not_cost_every_connection_a_system_call(launcher: Launcher,
                                                                     tmp_path: Path) -> None:
    """A client that connected before the listener had TCP_NODELAY (here an inherited fd://
    socket, as systemd or an old master passes it, with a client in its backlog) did not inherit
    it: the worker sets it on that one, and the later connections, which inherit it, pay no call.
    (Until this was found, the first connection alone decided, and a probe that connected
    during the boot made the worker set the option on every connection for its whole life.)"""
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is required (scripts/test installs Debian's strace package)")
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(16)
        port = lst.getsockname()[1]
        assert not lst.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        early = socket.create_connection(("127.0.0.1", port), timeout=10)  # completed, not accepted
        fd = os.dup(lst.fileno())
    try:
        g = launcher.start(["testapp:app", "-b", f"fd://{fd}"], pass_fds=(fd,))
    finally:
        os.close(fd)
    with early:
        early.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert early.recv(4096).startswith(b"HTTP/1.1 200 OK")
        (worker,) = g.workers()
        require_pidfd_getfd(worker)
        seen = wait_for(lambda: accepted_by(worker, early), 10, "the early connection in the worker")
        assert seen == {"accepted": 1, "listener": 1}, seen  # given it by the worker, and by the master
    out = tmp_path / "strace.txt"
    tracer = subprocess.Popen([strace, "-f", "-e", "trace=setsockopt", "-o", str(out), "-p", str(worker)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert tracer.stderr is not None
        line = tracer.stderr.readline()  # "strace: Process N attached" once it traces
        assert b"attached" in line, line
        for i in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert c.recv(4096).startswith(b"HTTP/1.1 200 OK"), i
    finally:
        tracer.send_signal(signal.SIGINT)  # detaches from the worker, which keeps running
        try:
            tracer.wait(10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait(10)
    calls = [c for c in out.read_text().splitlines() if "setsockopt" in c]
    assert calls == [], calls  # no TCP_NODELAY call for the 20 connections that inherited it
    assert http_get(g.url())[0] == 200  # and the worker serves on after strace left

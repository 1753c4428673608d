"""--defer-accept: a TCP connection reaches a worker only once its first bytes have arrived
(TCP_DEFER_ACCEPT on the listener, master/listeners.py). Looked at from outside: `ss` shows
the server's side of a connection that has sent nothing still in SYN-RECV (the kernel holds
it; no worker has it), and pidfd_getfd(2) copies the worker's listening socket into the test
to read the option (tests/test_accepted_sockets.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from tests.procs import Greenfork, Launcher, http_get, wait_for
from tests.test_accepted_sockets import accepted_by, copied, require_pidfd_getfd, socket_fds

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pidfd_getfd needs ptrace rights over the worker")

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def server_side_state(port: int, client: socket.socket) -> str:
    """The TCP state of the server's end of `client`'s connection, as ss(8) shows it."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.fail("ss is required (Debian's iproute2 package, which scripts/test installs)")
    cport = client.getsockname()[1]
    out = subprocess.run([ss, "-Htan", f"( sport = :{port} and dport = :{cport} )"], capture_output=True,
                         text=True, timeout=10, check=True).stdout.split()
    return out[0] if out else ""


def listener_option(worker: int, port: int) -> int:
    """TCP_DEFER_ACCEPT of the worker's listening socket on `port` (the kernel reports whole
    seconds of its SYN-ACK retransmission schedule: 1, 3, 7...)."""
    for fd in socket_fds(worker):
        with copied(worker, fd) as s:
            if s.family == socket.AF_INET and s.type == socket.SOCK_STREAM and \
                    s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and s.getsockname()[1] == port:
                return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)
    raise AssertionError(f"worker {worker} has no listener on port {port}")


def start(launcher: Launcher, *args: str) -> tuple[Greenfork, int, int]:
    """A one-worker server: (it, its worker's pid, its port)."""
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", *args])
    (worker,) = g.workers()
    require_pidfd_getfd(worker)
    return g, worker, g.port()


def test_a_silent_connection_stays_with_the_kernel_until_it_sends(launcher: Launcher) -> None:
    _, worker, port = start(launcher, "--defer-accept", "10")
    assert listener_option(worker, port) > 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        # complete for the client; the server's end waits in the kernel for the first bytes
        # (10 s, which the kernel rounds up to 15: its 4th SYN-ACK retransmission)
        assert server_side_state(port, c) == "SYN-RECV"
        assert accepted_by(worker, c) is None
        c.sendall(REQUEST)
        assert c.recv(4096).startswith(b"HTTP/1.1 200 OK")  # accepted with its request, answered


def test_a_connection_that_never_sends_is_handed_over_and_timed_out(launcher: Launcher) -> None:
    """The default (1 s): a client that sends nothing reaches a worker after about a second, and
    the request head timeout closes it (nothing is held forever, in the kernel or in a worker)."""
    g, worker, port = start(launcher, "--request-headers-timeout", "1")
    assert listener_option(worker, port) == 1
    with socket.create_connection(("127.0.0.1", port), timeout=15) as c:
        started = time.monotonic()
        wait_for(lambda: server_side_state(port, c) in ("ESTAB", "FIN-WAIT-1", "FIN-WAIT-2", "TIME-WAIT"), 10,
                 "the kernel to hand the silent connection over")
        assert c.recv(4096) == b""  # closed by the worker, silently (it never sent a byte)
        assert time.monotonic() - started < 12
    assert http_get(g.url())[0] == 200


def test_zero_turns_it_off(launcher: Launcher) -> None:
    _, worker, port = start(launcher, "--defer-accept", "0")
    assert listener_option(worker, port) == 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        assert server_side_state(port, c) == "ESTAB"  # in the accept queue at once
        seen = wait_for(lambda: accepted_by(worker, c), 10, "the worker to accept a silent connection")
        assert seen["accepted"] == 1  # (TCP_NODELAY, inherited)
        c.sendall(REQUEST)
        assert c.recv(4096).startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize(("flag", "expected"), [("2", "set"), ("0", "kept")])
def test_an_adopted_socket(launcher: Launcher, flag: str, expected: str) -> None:
    """fd:// (systemd's sockets, an old master's): the setting is applied; 0 leaves what the
    socket's owner chose (here 30 s, as systemd's DeferAcceptSec=30 would)."""
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 30)
        lst.listen(16)
        owners = lst.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)
        fd = os.dup(lst.fileno())
        try:
            g = launcher.start(["testapp:app", "-b", f"fd://{fd}", "--defer-accept", flag], pass_fds=(fd,))
        finally:
            os.close(fd)
        now = lst.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)  # the same socket
        assert now == (owners if expected == "kept" else 3), (owners, now)  # 2 s: rounded up to 1 + 2
    assert http_get(g.url())[0] == 200


def test_a_bad_value_is_a_configuration_error(launcher: Launcher) -> None:
    g = launcher.spawn(["testapp:app", "-b", "127.0.0.1:0", "--defer-accept", "-1"])
    assert g.wait(20) == 2
    assert "defer" in g.log()

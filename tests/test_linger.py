"""Lingering close (issue 11.4), where it shows: over a link with delay.

On loopback a client always reads the error before the close reaches it. Over a real
network, a server that closes a socket with unread input makes the kernel send a reset,
and a client still sending its body gets the reset instead of the 413 already on its way.
The test makes a network namespace with a veth pair and `tc netem` delay (root only),
serves on the host side and runs the client inside the namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.procs import Launcher

CLIENT = textwrap.dedent('''
    # As most clients upload: the whole body first, then the answer. A reset while it
    # sends is what a client without the server's lingering close gets.
    import socket, sys
    host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.create_connection((host, port), timeout=20)
    try:
        s.sendall(b"POST /echo HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: %d\\r\\n\\r\\n" % size)
        s.sendall(b"x" * size)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    except OSError as e:
        print("FAILED", type(e).__name__, e)
        sys.exit(3)
    print(got.split(b"\\r\\n", 1)[0].decode())
''')


@dataclass
class Link:
    ns: str
    host_ip: str
    ns_ip: str


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30)


@pytest.fixture
def link() -> Iterator[Link]:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("needs root, ip and tc (iproute2) to make a network namespace")
    tag = f"{os.getpid() % 10000}"
    ns, veth, peer = f"gfl{tag}", f"gfl{tag}a", f"gfl{tag}b"
    octet = os.getpid() % 200 + 20
    host_ip, ns_ip = f"10.211.{octet}.1", f"10.211.{octet}.2"
    made = _run("ip", "netns", "add", ns)
    if made.returncode != 0:
        pytest.skip(f"the kernel refuses network namespaces here: {made.stderr.strip()}")
    try:
        for cmd in (["ip", "link", "add", veth, "type", "veth", "peer", "name", peer],
                    ["ip", "link", "set", peer, "netns", ns],
                    ["ip", "addr", "add", f"{host_ip}/24", "dev", veth],
                    ["ip", "link", "set", veth, "up"],
                    ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/24", "dev", peer],
                    ["ip", "netns", "exec", ns, "ip", "link", "set", peer, "up"],
                    ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
                    # A slow link each way (this kernel has tbf, not netem): the client's body and
                    # the server's answer are in flight, queued, when the server closes.
                    ["tc", "qdisc", "add", "dev", veth, "root", "tbf", "rate", "100mbit", "burst", "64kb",
                     "latency", "50ms"],
                    ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", peer, "root", "tbf", "rate",
                     "100mbit", "burst", "64kb", "latency", "50ms"]):
            r = _run(*cmd)
            assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
        yield Link(ns, host_ip, ns_ip)
    finally:
        _run("ip", "link", "del", veth)
        _run("ip", "netns", "del", ns)


def _client(link: Link, port: int, size: int, tmp: Path) -> subprocess.CompletedProcess[str]:
    script = tmp / "client.py"
    script.write_text(CLIENT)
    return subprocess.run(["ip", "netns", "exec", link.ns, sys.executable, str(script), link.host_ip,
                           str(port), str(size)], capture_output=True, text=True, timeout=30)


def test_the_413_reaches_a_client_that_is_still_sending(launcher: Launcher, link: Link,
                                                        tmp_path: Path) -> None:
    g = launcher.start(["testapp:app", "-b", f"{link.host_ip}:0", "--max-request-body-size", "100000"])
    for _ in range(3):
        r = _client(link, g.port(), 8 << 20, tmp_path)
        assert r.returncode == 0, f"the client got a reset instead of the answer: {r.stdout} {r.stderr}"
        assert r.stdout.strip() == "HTTP/1.1 413 Content Too Large"


def test_a_400_in_a_pipeline_reaches_the_client(launcher: Launcher, link: Link, tmp_path: Path) -> None:
    """A bad request followed by more data the client keeps sending: the 400 arrives whole."""
    g = launcher.start(["testapp:app", "-b", f"{link.host_ip}:0"])
    script = tmp_path / "pipe.py"
    script.write_text(textwrap.dedent('''
        import socket, sys, time
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
        got = b""
        try:  # a bad request, then 8 MiB of requests pipelined behind it, then the answers
            bad = b"GET / HTTP/1.1\\r\\nHost: a b\\r\\n\\r\\n"
            s.sendall(bad + b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" * 300000)
            while chunk := s.recv(65536):
                got += chunk
        except OSError as e:
            print("FAILED", type(e).__name__, e); sys.exit(3)
        print(got.split(b"\\r\\n", 1)[0].decode())
    '''))
    r = subprocess.run(["ip", "netns", "exec", link.ns, sys.executable, str(script), link.host_ip,
                        str(g.port())], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"the client got a reset instead of the answer: {r.stdout} {r.stderr}"
    assert r.stdout.strip() == "HTTP/1.1 400 Bad Request"

"""How a connection's end goes out (workers/transport.py, finish()): an answer the server closes
after goes out with its FIN in the same segment, not in a segment of its own; seen on the
loopback with tcpdump. And the FIN leaves before close(): input the server never read (which
makes close() send a reset) does not keep the answer from the client."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

from tests.procs import Launcher, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tcpdump needs root to capture")

# "IP 127.0.0.1.8000 > 127.0.0.1.51234: Flags [FP.], seq 1:157, ack 1, ..., length 156"
SEGMENT = re.compile(r"IP [\d.]+\.(\d+) > [\d.]+\.(\d+): Flags \[([A-Z.]+)\].*length (\d+)")
SEQ = re.compile(r", seq (\d+)(?::(\d+))?,")  # (relative: the answer's first byte is 1)


class Capture:
    """The segments the server at `port` sends, as (client port, flags, length), as tcpdump
    reports them (a thread reads its lines)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.segments: list[tuple[int, str, int]] = []
        self.fin_seqs: dict[int, list[int]] = {}  # client port -> where each FIN sits in the stream
        self.spans: dict[int, list[tuple[int, int]]] = {}  # client port -> each data segment's bytes
        self.lock = threading.Lock()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            m = SEGMENT.search(line)
            if m:
                with self.lock:
                    self.segments.append((int(m.group(2)), m.group(3), int(m.group(4))))
                    seq = SEQ.search(line)
                    if seq is not None and seq.group(2) is not None:
                        self.spans.setdefault(int(m.group(2)), []).append(
                            (int(seq.group(1)), int(seq.group(2))))
                    if "F" in m.group(3) and seq is not None:
                        # a FIN comes after the segment's data: at its end, or at its start if bare
                        at = int(seq.group(2) or seq.group(1))
                        self.fin_seqs.setdefault(int(m.group(2)), []).append(at)

    def of(self, client_port: int) -> list[tuple[str, int]]:
        with self.lock:
            return [(flags, n) for p, flags, n in self.segments if p == client_port]

    def fin_seen(self, client_port: int) -> bool:
        return any("F" in flags for flags, _ in self.of(client_port))

    def covered(self, client_port: int) -> list[tuple[int, int]]:
        """The stream's byte ranges the captured segments carried, merged: a segment sent again
        (a retransmission, which a busy loopback sees now and then) counts once."""
        with self.lock:
            spans = sorted(self.spans.get(client_port, []))
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged


@contextmanager
def capture(port: int) -> Iterator[Capture]:
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        pytest.fail("tcpdump is required (scripts/test installs Debian's tcpdump package)")
    cap = Capture(port)
    proc = subprocess.Popen([tcpdump, "-i", "lo", "-nn", "-l", "-U", "-B", "8192", f"tcp src port {port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    reader = None
    try:
        assert proc.stderr is not None and proc.stdout is not None
        line = proc.stderr.readline()  # "...verbose output suppressed..." then "listening on lo"
        while line and "listening on" not in line:
            line = proc.stderr.readline()
        assert "listening on" in line, line
        reader = threading.Thread(target=cap._read, args=(proc.stdout,), daemon=True)
        reader.start()
        yield cap
    finally:
        proc.kill()
        proc.wait(10)
        if reader is not None:
            reader.join(10)


def read_all(c: socket.socket) -> bytes:
    got = b""
    while True:
        try:
            data = c.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        got += data
    return got


def exchange(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(request)
        return c.getsockname()[1], read_all(c)


def test_an_answer_and_its_fin_share_a_segment(launcher: Launcher) -> None:
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0"])
    port = g.port()
    with capture(port) as cap:
        cport, answer = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        # (segments are captured in order: once the FIN is in, all that went before it is)
        wait_for(lambda: cap.fin_seen(cport), 10, "the server's FIN in the capture")
        # and a kept connection's answer, for contrast: no FIN with it
        with socket.create_connection(("127.0.0.1", port), timeout=10) as kept:
            kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert kept.recv(65536).startswith(b"HTTP/1.1 200 OK")
            kept_port = kept.getsockname()[1]
            kept_data = wait_for(lambda: [s for s in cap.of(kept_port) if s[1] > 0], 10,
                                 "the kept connection's answer in the capture")
        mine = cap.of(cport)
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in answer
    data = [(flags, n) for flags, n in mine if n > 0]
    assert len(data) == 1 and data[0][1] == len(answer) and "F" in data[0][0], mine  # one segment, FIN on it
    assert sum("F" in flags for flags, _ in mine) == 1, mine  # no bare FIN of its own
    assert all("F" not in flags for flags, _ in kept_data), kept_data


def test_a_large_answer_arrives_whole_with_one_fin(launcher: Launcher) -> None:
    """A 200 KiB answer goes out in several segments, the kernel sending as the client's ACKs
    open its window; an ACK may push the held tail before the FIN is added (MSG_MORE holds it
    against our own sends, not against the ACK clock), so the FIN rides on the last segment or
    follows it: either way the answer arrives whole, and there is one FIN, after the last byte.
    (Where it sits is read from its sequence number: tcpdump has listed a bare FIN before the
    answer's last segment, about one run in fifteen on a loaded 2-CPU machine, with every byte
    captured once; and a busy loopback has sent a segment again after the FIN: the test counts
    the stream's bytes by their sequence numbers, each once.)"""
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0"])
    port = g.port()
    with capture(port) as cap:
        body = bytes(range(256)) * 800  # 200 KiB: a few segments (tcpdump would drop some of thousands)
        cport, answer = exchange(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: cap.fin_seen(cport), 10, "the server's FIN in the capture")
        mine = [(flags, n) for flags, n in cap.of(cport) if n > 0 or "F" in flags]
    head, _, echoed = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and echoed == body
    # every byte of the answer went out, and nothing else (a retransmitted segment counts once)
    assert cap.covered(cport) == [(1, len(answer) + 1)], (cap.covered(cport), mine)
    # one FIN, after the answer's last byte (a retransmitted FIN sits where the first did)
    assert set(cap.fin_seqs[cport]) == {len(answer) + 1}, (cap.fin_seqs, mine)


def test_unread_input_does_not_cost_the_answer(launcher: Launcher, tmp_path: Path) -> None:
    """The client sends more after its `Connection: close` request, while the app runs: the
    server never reads it, so its close() resets the connection; the answer and its FIN went
    out before that (held back for the FIN by MSG_MORE, they would have gone with the reset)."""
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0"])
    mark = tmp_path / "inside"
    with socket.create_connection(("127.0.0.1", g.port()), timeout=10) as c:
        c.sendall(f"GET /sleep?s=0.5&mark={mark} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        wait_for(mark.exists, 10, "the request to reach the app")
        c.sendall(b"more bytes the server never reads\r\n" * 10)
        answer = read_all(c)
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"slept\n"), answer

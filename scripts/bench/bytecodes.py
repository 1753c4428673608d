#!/usr/bin/env python3
"""Python bytecodes per request of one greenfork worker, by function, for two settings side by side.

    scripts/bench/bytecodes [--path /] [--post BYTES] [--close | --unique | --pipeline N] [--top 25]
                            [--lines] [--base "GREENFORK ARGS"] [--with "GREENFORK ARGS"]
    e.g. scripts/bench/bytecodes --with "--response-cache 64MiB"          # what the cache adds
         scripts/bench/bytecodes --close --with "--response-cache 64MiB"  # ... to a new connection
         scripts/bench/bytecodes --post 16384 --path /echo                # bench.py's echo16k
         scripts/bench/bytecodes --lines --close --with "--response-cache 64MiB"  # by source line
         scripts/bench/bytecodes --unique --with "--response-cache 64MiB"  # cache_bench's /?q=N
         scripts/bench/bytecodes --pipeline 16 --with "--response-cache 64MiB"  # ... pipeline16

Each setting gets a fresh 1-worker server of scripts/bench/apps.py:paths whose worker counts every
bytecode it runs (bytecode_hook.py, a post_fork hook); the load is 2,000 requests, then 6,000 more
(h2load over 16 kept connections, with --pipeline N requests in flight on each; with --close one
connection per request from this process, each sending `Connection: close`; with --unique one
kept connection from this process, each request for the path with a new query string `?q=N`),
and the figures are the second load's counts divided by 6,000, so start-up cancels out. Exact
for the same build and load, whatever the machine is doing: for changes of a few bytecodes,
which no timed run can show. (scripts/bench/instructions counts machine instructions instead,
C included.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIRST, SECOND = 2000, 6000
asked = 0  # --unique: the query strings used so far (every URL is new, across loads and servers)
Key = tuple[str, str, int, int]  # file, function, its first line, the line run (0 without --lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def load(port: int, n: int, args: argparse.Namespace, body: Path | None) -> None:
    if args.unique:
        unique(port, n, args.path)
        return
    url = f"http://127.0.0.1:{port}{args.path}"
    if not args.close:
        cmd = ["h2load", "--h1", "-n", str(n), "-c", "16", "-m", str(args.pipeline),
               *(["-d", str(body)] if body else []), url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout
        if f"{n} succeeded" not in out:
            raise SystemExit(f"h2load: not all {n} requests succeeded:\n{out}")
        return
    head = f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(head)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
            if not got.startswith(b"HTTP/1.1 200 "):
                raise SystemExit(f"unexpected answer: {got[:80]!r}")


def unique(port: int, n: int, path: str) -> None:
    """n requests on one kept connection, one at a time, each for a URL never asked before."""
    global asked
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for _ in range(n):
            asked += 1
            s.sendall(f"GET {path}?q={asked} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = s.recv(65536)
                if not chunk:
                    raise SystemExit("the server closed the connection")
                got += chunk
            head, _, body = got.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200 "):
                raise SystemExit(f"unexpected answer: {got[:80]!r}")
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if m is None:
                raise SystemExit(f"no Content-Length: {head!r}")
            length = int(m.group(1))
            while len(body) < length:
                chunk = s.recv(65536)
                if not chunk:
                    raise SystemExit("the server closed the connection")
                body += chunk


def counted(extra: list[str], args: argparse.Namespace, tmp: Path, name: str) -> dict[Key, float]:
    """Bytecodes per request by function, for a server with these extra arguments."""
    out = tmp / name
    body = None
    if args.post:
        body = tmp / "body"
        body.write_bytes(b"x" * args.post)
    port = free_port()
    env = dict(os.environ, GF_BYTECODES_OUT=str(out), PYTHONPATH=str(HERE))
    if args.lines:
        env["GF_BYTECODES_LINES"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "greenfork.master", "apps:paths", "-w", "1",
                             "-b", f"127.0.0.1:{port}", "--log-level", "warning",
                             "--hook", "post_fork=bytecode_hook:post_fork", *extra],
                            cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")

        def ready() -> bool:
            if proc.poll() is not None:
                return True  # (reported below)
            if not kids.read_text().split():
                return False  # (the master binds before it forks: the worker answers)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                    return s.recv(16).startswith(b"HTTP/1.1 200")
            except OSError:
                return False

        wait_for(ready, "the server")
        if proc.poll() is not None:
            raise SystemExit("greenfork did not start")
        (worker,) = (int(p) for p in kids.read_text().split())
        dumps = []
        for n, i in ((FIRST, 1), (SECOND, 2)):
            load(port, n, args, body)
            os.kill(worker, signal.SIGPWR)
            path = Path(f"{out}.{i}")
            wait_for(path.exists, "the worker's counts")
            dumps.append({tuple(k): v for k, v in json.loads(path.read_text())})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    a, b = dumps
    return {k: (b.get(k, 0) - a.get(k, 0)) / SECOND for k in set(a) | set(b)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", default="/")
    ap.add_argument("--post", type=int, default=0, metavar="BYTES", help="each request a POST of BYTES")
    ap.add_argument("--close", action="store_true", help="a new connection per request")
    ap.add_argument("--pipeline", type=int, default=1, metavar="N",
                    help="N requests in flight on each kept connection (h2load -m: HTTP/1.1 pipelining)")
    ap.add_argument("--unique", action="store_true",
                    help="a new query string every request, on one kept connection")
    ap.add_argument("--top", type=int, default=25, help="functions (or lines) listed")
    ap.add_argument("--lines", action="store_true", help="by source line, not by function")
    ap.add_argument("--base", default="", help="the first server's extra greenfork arguments")
    ap.add_argument("--with", dest="other", default="", help="the second server's extra greenfork arguments")
    args = ap.parse_args()
    if (args.close or args.unique) and args.post:
        ap.error("--close and --unique send GETs")
    if args.close and args.unique:
        ap.error("--close or --unique, not both")
    with tempfile.TemporaryDirectory() as d:
        base = counted(shlex.split(args.base), args, Path(d), "base")
        other = counted(shlex.split(args.other), args, Path(d), "with")
    a, b = sum(base.values()), sum(other.values())
    print(f"bytecodes per request: base {a:,.1f}, with {b:,.1f} ({b - a:+,.1f}, {(b / a - 1) * 100:+.1f}%)")
    keys = sorted(set(base) | set(other), key=lambda k: -abs(other.get(k, 0) - base.get(k, 0)))
    print(f"{'change':>8} {'base':>8} {'with':>8}  function")
    for k in keys[:args.top]:
        change = other.get(k, 0) - base.get(k, 0)
        if abs(change) >= 0.5:
            where = f"line {k[3]} of {k[1]}" if k[3] else f"{k[1]} (line {k[2]})"
            print(f"{change:+8.1f} {base.get(k, 0):8.1f} {other.get(k, 0):8.1f}  {k[0]}:{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

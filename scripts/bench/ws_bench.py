#!/usr/bin/env python3
"""WebSocket echo: greenfork against gunicorn with gevent-websocket's worker, interleaved.

    .venv/bin/python scripts/bench/ws_bench.py                 # 3 rounds of 10 s, 100 connections
    .venv/bin/python scripts/bench/ws_bench.py --rounds 5 --duration 10 --connections 100

Each round starts each server in turn with one worker pinned to CPU 0, serving
tests/apps/ws_geventwebsocket.py (path /echo), and drives it from CPU 1 with
scripts/bench/ws_echo_client.c (compiled here with cc): N connections, each sending a
32-byte text message and waiting for its echo, for the duration. A C client, so that the
server is what is measured (the Python client in ws_echo.py saturates its core first).
Per server and round: round trips per second, errors, and the worker's CPU time per round
trip (user + system, from /proc: robust to a busy machine, where round trips per second
are not). Prints one JSON line per run and a summary: the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
APPS = ROOT / "tests" / "apps"
BIN = Path(sys.executable).parent
APP = "ws_geventwebsocket:app"
SERVERS = {
    "greenfork": [str(BIN / "greenfork"), APP, "--workers", "1", "--bind", "127.0.0.1:{port}"],
    "gunicorn-geventwebsocket": [str(BIN / "gunicorn"), "-k",
                                 "geventwebsocket.gunicorn.workers.GeventWebSocketWorker",
                                 "-w", "1", "-b", "127.0.0.1:{port}", APP],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_client(out: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("a C compiler (cc) is needed for the load generator")
    subprocess.run([cc, "-O2", "-o", str(out), str(Path(__file__).with_name("ws_echo_client.c"))], check=True)
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


def worker_of(pid: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = f.read().split()
        except FileNotFoundError:
            kids = []
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    raise RuntimeError("the server started no worker")


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                if s.recv(16).startswith(b"HTTP/1."):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not become ready")


def one(name: str, client: Path, connections: int, duration: float, size: int) -> dict[str, object]:
    port = free_port()
    cmd = [a.format(port=port) for a in SERVERS[name]]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(["taskset", "-c", "0", *cmd], cwd=APPS, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_ready(port, proc)
            worker = worker_of(proc.pid)
            os.sched_setaffinity(worker, {0})
            # warm up, then measure
            subprocess.run(["taskset", "-c", "1", str(client), "127.0.0.1", str(port), "/echo",
                            str(connections), "2", str(size)], capture_output=True, timeout=60)
            c0 = cpu_seconds(worker)
            out = subprocess.run(["taskset", "-c", "1", str(client), "127.0.0.1", str(port), "/echo",
                                  str(connections), str(duration), str(size)],
                                 capture_output=True, text=True, timeout=duration + 60)
            c1 = cpu_seconds(worker)
            r = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    rt = max(int(r["round_trips"]), 1)
    user, system = c1[0] - c0[0], c1[1] - c0[1]
    return {"server": name, "round_trips_per_s": r["round_trips_per_s"], "errors": r["errors"],
            "opened": r["opened"], "cpu_us_per_round_trip": round((user + system) / rt * 1e6, 2),
            "user_us": round(user / rt * 1e6, 2), "system_us": round(system / rt * 1e6, 2),
            "worker_cpu_share": round((user + system) / float(r["seconds"]), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--size", type=int, default=32, help="message bytes (1 to 65535)")
    a = ap.parse_args()
    print("uptime:", os.getloadavg(), file=sys.stderr)
    with tempfile.TemporaryDirectory() as d:
        client = build_client(Path(d) / "ws_echo_client")
        results: dict[str, list[dict[str, object]]] = {name: [] for name in SERVERS}
        for _ in range(a.rounds):
            for name in SERVERS:
                r = one(name, client, a.connections, a.duration, a.size)
                print(json.dumps(r), flush=True)
                results[name].append(r)
    med = {name: {k: statistics.median(float(str(r[k])) for r in rs)
                  for k in ("round_trips_per_s", "cpu_us_per_round_trip")} for name, rs in results.items()}
    errors = sum(int(str(r["errors"])) for rs in results.values() for r in rs)
    gf, gu = med["greenfork"], med["gunicorn-geventwebsocket"]
    print(json.dumps({"median": med, "errors": errors,
                      "ratio_round_trips": round(gf["round_trips_per_s"] / gu["round_trips_per_s"], 2),
                      "ratio_cpu_per_round_trip": round(gu["cpu_us_per_round_trip"]
                                                        / gf["cpu_us_per_round_trip"], 2),
                      "load_after": os.getloadavg()}))


if __name__ == "__main__":
    main()

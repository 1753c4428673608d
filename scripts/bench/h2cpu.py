#!/usr/bin/env python3
"""CPU microseconds per HTTP/2 request of one worker: greenfork against gunicorn's gevent worker.

    python3 scripts/bench/h2cpu.py h2_hello,h2c_hello,h2_big,h2_echo16k 3

Each (round, workload) starts each server with one worker, pins the worker to CPU 0, runs
h2load (-c 8 -m 8) on CPU 1, and reads the worker's user+system time from /proc around the
measured run. Requests per CPU-second is what an HTTP/2 server on a busy core delivers, and
it is far less disturbed by other load on the machine than requests per second. Needs the
shared harness's venv (gunicorn[http2]) and its certificate (../shared/bench, setup.sh).
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "bench")
CERT, KEY = os.path.join(SHARED, "certs", "cert.pem"), os.path.join(SHARED, "certs", "key.pem")
GREENFORK = os.path.join(ROOT, ".venv", "bin", "greenfork")
GUNICORN = os.path.join(SHARED, "venv", "bin", "gunicorn")
WORKLOADS = {"h2_hello": ("h2", "hello"), "h2c_hello": ("h2c", "hello"), "h2_big": ("h2", "big"),
             "h2c_big": ("h2c", "big"), "h2_echo16k": ("h2", "echo"), "h2c_echo16k": ("h2c", "echo")}


def ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def command(server: str, kind: str, app: str, port: int) -> list[str]:
    if server == "greenfork":
        bind = ["-b", f"https://127.0.0.1:{port}", "--certfile", CERT, "--keyfile", KEY] if kind == "h2" \
            else ["-b", f"127.0.0.1:{port}"]
        return [GREENFORK, app, "--workers", "1", *bind]
    cmd = [GUNICORN, "--no-control-socket", "-w", "1", "-k", "gevent", "--worker-connections", "1000",
           "-b", f"127.0.0.1:{port}", "--http-protocols", "h2,h1"]
    if kind == "h2":
        cmd += ["--certfile", CERT, "--keyfile", KEY]
    else:
        cmd += ["--http2-cleartext", "prior-knowledge"]
    return [*cmd, app]


def one(server: str, workload: str, port: int) -> tuple[float, int]:
    kind, app = WORKLOADS[workload]
    m = subprocess.Popen(command(server, kind, "apps:" + app, port), cwd=SHARED, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(2.5)
        with open(f"/proc/{m.pid}/task/{m.pid}/children") as f:
            worker = int(f.read().split()[0])
        os.sched_setaffinity(worker, {0})
        url = f"{'https' if kind == 'h2' else 'http'}://127.0.0.1:{port}/"
        extra = (["-d", os.path.join(SHARED, "data", "16k.bin")] if app == "echo" else []) + \
            (["--npn-list", "h2"] if kind == "h2" else [])
        n = 800 if app == "big" else 6000
        base = ["taskset", "-c", "1", "h2load", "-c8", "-m8", "-N2", *extra, url]
        subprocess.run([*base, "-n", str(n // 4)], capture_output=True, timeout=120)  # warm-up
        before = ticks(worker)
        out = subprocess.run([*base, "-n", str(n)], capture_output=True, text=True, timeout=300).stdout
        used = ticks(worker) - before
        m2 = re.search(r"(\d+) succeeded", out)
        ok = int(m2.group(1)) if m2 else 0
        return used / os.sysconf("SC_CLK_TCK") / max(ok, 1) * 1e6, ok
    finally:
        os.killpg(m.pid, signal.SIGTERM)
        m.wait(15)


def main() -> int:
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(WORKLOADS)
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    results: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for r in range(rounds):
        for w in names:
            for server in ("greenfork", "gunicorn-gevent"):
                results.setdefault((w, server), []).append(one(server, w, 18400 + r))
    for w in names:
        g = [x[0] for x in results[(w, "greenfork")]]
        u = [x[0] for x in results[(w, "gunicorn-gevent")]]
        print(f"{w}: greenfork {sorted(round(x) for x in g)} us/request, "
              f"gunicorn {sorted(round(x) for x in u)}; "
              f"ratio {statistics.median(u) / statistics.median(g):.2f}x "
              f"(answered: {[x[1] for x in results[(w, 'greenfork')]]} / "
              f"{[x[1] for x in results[(w, 'gunicorn-gevent')]]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

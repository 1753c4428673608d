"""A front's CPU per delegated request against nginx proxying to the same two servers (issue 17).

    scripts/bench/delegation [--rounds 3] [--duration 6] [--workloads keepalive,close]

Two target servers (greenfork, apps:hello, one worker each) listen on a handoff: socket and
on a unix HTTP socket. A front greenfork (one worker) delegates /one and /two to the handoff
sockets; nginx (one worker, keep-alive upstream connections) proxies /one and /two to the
HTTP sockets. The front and nginx are pinned to CPU 0, wrk and the targets to CPU 1, and they
take turns within each round. Two wrk processes (one per prefix) load the front or nginx;
the CPU time (user + system, from /proc/PID/stat of each of its processes) the front or
nginx spent during the run is divided by the requests wrk completed. The two targets' CPU
per request is reported beside it, behind each: behind the front they serve whole client
connections (and end them), behind nginx keep-alive requests from nginx.

Workloads: `keepalive` (64 connections: the front hands each over once, nginx proxies every
request) and `close` (Connection: close: one hand-off, or one proxied connection, per
request). Not a test: run it by hand when `uptime` shows the machine quiet, and record the
result in docs/port-sharing.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FRONT_CPU, REST_CPU = "0", "1"
WORKLOADS = {"keepalive": [], "close": ["-H", "Connection: close"]}

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    upstream one {{ server unix:{tmp}/one.http; keepalive 64; }}
    upstream two {{ server unix:{tmp}/two.http; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        location /one/ {{ proxy_pass http://one; proxy_http_version 1.1; proxy_set_header Connection ""; }}
        location /two/ {{ proxy_pass http://two; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def tree(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        kids = []
    return [pid, *(p for k in kids for p in tree(k))]


def cpu(pids: list[int]) -> int:
    return sum(ticks(p) for p in pids)


def answers(port: int, path: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
            return s.recv(16).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def wait(cond, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def spawn(cmd: list[str], cpu_list: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(["taskset", "-c", cpu_list, *cmd], cwd=HERE, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def run_wrk(port: int, seconds: int, extra: list[str]) -> tuple[int, int]:
    """(requests, errors) of two wrk processes, one per prefix, 32 connections each."""
    procs = [subprocess.Popen(["taskset", "-c", REST_CPU, "wrk", "-t1", "-c32", f"-d{seconds}s", *extra,
                               f"http://127.0.0.1:{port}/{name}/"], stdout=subprocess.PIPE, text=True)
             for name in ("one", "two")]
    total = errors = 0
    for p in procs:
        out = p.communicate(timeout=seconds + 60)[0]
        total += int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        errors += sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors += int(m.group(1)) if m else 0
    return total, errors


def measure(pids: list[int], port: int, seconds: int, extra: list[str],
            targets: list[int] | None = None) -> tuple[float, int, int, float]:
    """(CPU microseconds per request of pids, requests, errors, CPU microseconds per request
    of the targets' processes)."""
    run_wrk(port, 1, extra)  # warm-up
    targets = targets or []
    before, tbefore = cpu(pids), cpu(targets)
    n, errors = run_wrk(port, seconds, extra)
    used, tused = cpu(pids) - before, cpu(targets) - tbefore
    per = 1e6 / os.sysconf("SC_CLK_TCK") / max(n, 1)
    return used * per, n, errors, tused * per


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    a = ap.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None and not Path("/usr/sbin/" + tool).exists():
            print(f"{tool} is required", file=sys.stderr)
            return 2
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    tmp = Path(tempfile.mkdtemp(prefix="gf-deleg-"))
    tmp.chmod(0o755)  # nginx's worker (www-data) reaches the sockets through it
    gf = [sys.executable, "-m", "greenfork.master", "--log-level", "warning", "--backlog", "4096"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("one", "two"):  # (their CPU is reported too: behind the front they end the connections)
            procs.append(spawn([*gf, "apps:hello", "-w", "1", "-b", f"handoff:{tmp}/{name}.sock", "-b",
                                f"unix:{tmp}/{name}.http", "--unix-socket-mode", "666"], REST_CPU,
                               tmp / "targets.log"))
        fport, nport = free_port(), free_port()
        front = spawn([*gf, "-w", "1", "-b", f"127.0.0.1:{fport}", "--delegate", f"/one=unix:{tmp}/one.sock",
                       "--delegate", f"/two=unix:{tmp}/two.sock"], FRONT_CPU, tmp / "front.log")
        procs.append(front)
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=nport))
        ngx = spawn([nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e",
                     str(tmp / "nginx-stderr.log")], FRONT_CPU, tmp / "nginx.log")
        procs.append(ngx)
        for port in (fport, nport):
            for path in ("/one/", "/two/"):
                wait(lambda port=port, path=path: answers(port, path), f"{port}{path}")
        targets = [p for proc in procs[:2] for p in tree(proc.pid)]  # (their workers are up by now)
        results: dict[tuple[str, str], list[tuple[float, int, int, float]]] = {}
        names = [w for w in a.workloads.split(",") if w]
        for rnd in range(1, a.rounds + 1):
            for w in names:
                order = [("front", front, fport), ("nginx", ngx, nport)]
                if rnd % 2 == 0:
                    order.reverse()  # drift hits both alike
                for label, proc, port in order:
                    r = measure(tree(proc.pid), port, a.duration, WORKLOADS[w], targets)
                    results.setdefault((label, w), []).append(r)
                    print(f"round {rnd} {w:9} {label:5} {r[0]:7.1f} us/request  "
                          f"{r[1] / a.duration:>9,.0f} rps  errors {r[2]}  targets {r[3]:.1f} us/request",
                          file=sys.stderr, flush=True)
        print("\n| workload | front CPU us/request | nginx CPU us/request | front / nginx | front rps "
              "| nginx rps | targets behind the front | targets behind nginx |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for w in names:
            f, n = results[("front", w)], results[("nginx", w)]
            fu, nu = statistics.median(x[0] for x in f), statistics.median(x[0] for x in n)
            frps = statistics.median(x[1] for x in f) / a.duration
            nrps = statistics.median(x[1] for x in n) / a.duration
            ft, nt = statistics.median(x[3] for x in f), statistics.median(x[3] for x in n)
            print(f"| {w} | {fu:.1f} | {nu:.1f} | {fu / nu:.2f} | {frps:,.0f} | {nrps:,.0f} "
                  f"| {ft:.1f} | {nt:.1f} |")
    except BaseException:
        for log in sorted(tmp.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
        raise
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

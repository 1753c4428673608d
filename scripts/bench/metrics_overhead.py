"""Throughput with metrics on vs off: two servers, one wrk run at a time, interleaved.

Both servers run the same hello-world app with the same workers; only one has
--metrics-bind. Rounds alternate which goes first, so drift (thermal, noisy
neighbours) hits both alike; the result is the median of the per-round ratios.
The metrics server is scraped during its runs (every 15 s by default), as Prometheus would.
Not a test: run it by hand (scripts/bench/metrics_overhead) and record the result
in docs/metrics.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


SERVER_CPU, CLIENT_CPU = "0", "1"  # with --pin: server and wrk never compete for a core


def start(tmp: Path, name: str, workers: int, metrics: bool,
          pin: bool) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    addr = tmp / f"{name}.json"
    cmd = ["taskset", "-c", SERVER_CPU] if pin else []
    cmd += [sys.executable, "-m", "greenfork.master", "hello:app", "-b", "http://127.0.0.1:0",
            "-w", str(workers),
           "--addresses-file", str(addr), "--log-level", "warning"]
    if metrics:
        cmd += ["--metrics-bind", "http://127.0.0.1:0"]
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed right after Popen
    proc = subprocess.Popen(cmd, cwd=HERE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 30
    while not addr.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{name} server did not start: {(tmp / f'{name}.log').read_text()}")
        time.sleep(0.05)
    time.sleep(1.0)  # workers READY after the file is written; give them a moment
    return proc, json.loads(addr.read_text())


def wrk(url: str, duration: float, connections: int, threads: int, pin: bool) -> tuple[float, int]:
    """(requests per second, requests completed)."""
    cmd = [*(["taskset", "-c", CLIENT_CPU] if pin else []), "wrk", "-t", str(threads), "-c", str(connections),
           "-d", f"{duration:g}s", url + "/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    n = re.search(r"([0-9]+) requests in", out)
    if m is None or n is None:
        raise SystemExit(f"cannot parse wrk output:\n{out}")
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  warning: wrk saw errors:\n{out}", file=sys.stderr)
    return float(m.group(1)), int(n.group(1))


def workers_cpu(master: int) -> float:
    """CPU seconds (user + system) of the master's children: the workers."""
    total = 0.0
    with open(f"/proc/{master}/task/{master}/children") as f:
        for pid in f.read().split():
            with open(f"/proc/{pid}/stat") as s:
                fields = s.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def scraper(url: str, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            r.read()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--scrape-every", type=float, default=15.0, help="scrape /metrics this often while loaded")
    p.add_argument("--control", action="store_true",
                   help="A/A run: the 'on' server runs without metrics too (the noise floor)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the servers to CPU 0 and wrk to CPU 1")
    args = p.parse_args()
    args.pin = args.pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required (Debian package wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="gf-bench-"))
    procs = []
    try:
        off_proc, off = start(tmp, "off", args.workers, metrics=False, pin=args.pin)
        procs.append(off_proc)
        on_proc, on = start(tmp, "on", args.workers, metrics=not args.control, pin=args.pin)
        procs.append(on_proc)
        for info in (off, on):  # warm-up
            wrk(info["addresses"][0], 2, args.connections, args.threads, args.pin)
        rps: dict[str, list[float]] = {"off": [], "on": []}
        cpu_us: dict[str, list[float]] = {"off": [], "on": []}  # worker CPU per request
        rps_ratios, cpu_ratios = [], []
        for r in range(args.rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            for mode in order:
                info, proc = (off, off_proc) if mode == "off" else (on, on_proc)
                stop = threading.Event()
                t = None
                if mode == "on" and not args.control:
                    t = threading.Thread(target=scraper, args=(on["metrics"], stop, args.scrape_every))
                    t.start()
                try:
                    before = workers_cpu(proc.pid)
                    rate, n = wrk(info["addresses"][0], args.duration, args.connections, args.threads,
                                  args.pin)
                    used = workers_cpu(proc.pid) - before
                finally:
                    stop.set()
                    if t is not None:
                        t.join()
                rps[mode].append(rate)
                cpu_us[mode].append(1e6 * used / max(n, 1))
            rps_ratios.append(rps["on"][-1] / rps["off"][-1])
            cpu_ratios.append(cpu_us["on"][-1] / cpu_us["off"][-1])
            print(f"round {r + 1:2}: off {rps['off'][-1]:7.0f} req/s {cpu_us['off'][-1]:5.1f} us/req   "
                  f"on {rps['on'][-1]:7.0f} req/s {cpu_us['on'][-1]:5.1f} us/req   "
                  f"on/off {rps_ratios[-1]:.3f} (CPU {cpu_ratios[-1]:.3f})", flush=True)
        served = 0.0
        if not args.control:
            with urllib.request.urlopen(on["metrics"] + "/metrics", timeout=5) as resp:
                text = resp.read().decode()
            served = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("http_server_request_duration_seconds_count"))
        med = statistics.median
        ratio, cpu_ratio = med(rps_ratios), med(cpu_ratios)
        if args.control:
            print("\nCONTROL (A/A): both servers run without metrics; any difference is noise")
        print(f"\n{args.rounds} rounds x {args.duration:g} s, {args.workers} worker(s), "
              f"wrk -t{args.threads} -c{args.connections}, {os.cpu_count()} CPUs"
              f"{', server on CPU 0 and wrk on CPU 1' if args.pin else ''}")
        print(f"throughput: off {med(rps['off']):.0f} req/s, on {med(rps['on']):.0f} req/s (medians); "
              f"median paired on/off {ratio:.3f} -> overhead {100 * (1 - ratio):.1f}%")
        print(f"worker CPU per request: off {med(cpu_us['off']):.1f} us, on {med(cpu_us['on']):.1f} us "
              f"(medians); median paired on/off {cpu_ratio:.3f} -> overhead {100 * (cpu_ratio - 1):.1f}%")
        print(f"the metrics server counted {served:.0f} requests")
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

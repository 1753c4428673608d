#!/usr/bin/env python3
"""The response cache side by side: hits against the app, and its cost to what it does not cache.

    scripts/bench/cache [--rounds 5] [--duration 5] [--connections 64] [--size 64MiB]
                        [--cache-path PREFIX]... [--workloads /,/page,...] [--no-fresh] [--control]
                        [--seed N]
                        # (runs this file)

Two servers of the same build, each one worker pinned to CPU 0 (wrk runs on CPU 1), serving
scripts/bench/apps.py:paths: `/` hello world, `/page` a 4 KiB page the app renders every time,
`/cached` the same page with `Cache-Control: public` (a hit after the first request), and `/?q=N`
hello with a new query string on every request (unique.lua: every URL new, as search pages or
API calls with ids are; the cache's whole miss path each time); and scripts/bench's other uncached
workloads on the same server: `pipeline16` (hello, 16 requests a read), `hello_close` (a new
connection per request) and `echo16k` (a 16 KiB POST to /echo, which the cache must consider for
invalidation, RFC 9111 4.4). Server `off` runs without the cache, server `on` with
--response-cache 64MiB (--size); a new pair starts every round (--no-fresh: one pair for all
rounds, whose own bias then shifts the whole run); both servers of a pair run with one
PYTHONHASHSEED, a new one each round (--seed N: the first round's, to repeat a run's). Each
round measures every path on both servers back to back (the order alternates between rounds),
a pair per path and round. Each run reports
requests/s from wrk and the worker's CPU microseconds per request (user + system, from /proc),
the figure that does not depend on wrk keeping up. The table gives the medians and the ratios the
issue asks about:

- hits against hello on the same server (`on /cached` vs `on /`), and against the page rendered;
- what the cache costs the requests it does not answer (`on` vs `off` for every workload but
  `/cached`).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import LUA_PIPELINE, LUA_POST  # noqa: E402 (scripts/bench/bench.py's, the same requests)

SERVERS = {"off": [], "on": ["--response-cache", "64MiB"]}  # (--size sets on's SIZE)
# name: (path, extra wrk arguments, lua script text)
WORKLOADS = {
    "/": ("/", [], ""),
    "/page": ("/page", [], ""),
    "/cached": ("/cached", [], ""),
    "/?q=N": ("/", [], (HERE / "unique.lua").read_text()),  # a new query string each request
    "pipeline16": ("/", [], LUA_PIPELINE),
    "hello_close": ("/", ["-H", "Connection: close"], ""),
    "echo16k": ("/echo", [], LUA_POST),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def start(extra: list[str], seed: int) -> tuple[subprocess.Popen[bytes], int, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "greenfork.master", "apps:paths", "-w", "1",
                             "-b", f"127.0.0.1:{port}", "--log-level", "warning", *extra], cwd=HERE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHONHASHSEED": str(seed)})
    deadline = time.monotonic() + 30
    while True:
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        if kids:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                    if s.recv(16).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("greenfork did not start")
        time.sleep(0.05)
    # (read again: under load the first child seen may not be the worker that answered)
    kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    worker = int(kids[-1])
    os.sched_setaffinity(worker, {0})
    return proc, port, worker


def stop(servers: dict[str, tuple[subprocess.Popen[bytes], int, int]]) -> None:
    for proc, _, _ in servers.values():
        os.killpg(proc.pid, signal.SIGTERM)
    for proc, _, _ in servers.values():
        proc.wait(15)


def wrk(port: int, workload: str, seconds: int, conns: int) -> int:
    path, extra, lua = WORKLOADS[workload]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(lua)
        script.flush()
        out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", *extra,
                              *(["-s", script.name] if lua else []), f"http://127.0.0.1:{port}{path}"],
                             capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"(\d+) requests in", out)
    if m is None or "Non-2xx" in out:
        raise SystemExit(f"wrk failed:\n{out}")
    return int(m.group(1))


def paired(off: list[float], on: list[float]) -> str:
    """The change from off to on, from each round's pair of runs (back to back, so the machine's
    drift between rounds cancels): the mean of the pairs' changes and its standard error; with
    the medians' change, which the noise of single runs moves by a few percent; and the median
    of the pairs' changes, which one pair far off (a process a few percent slower than its twin
    for reasons of its own: --control shows such pairs) moves less than it moves the mean."""
    changes = [(b / a - 1) * 100 for a, b in zip(off, on, strict=True)]
    mean = statistics.fmean(changes)
    se = statistics.stdev(changes) / len(changes) ** 0.5 if len(changes) > 1 else float("nan")
    medians = (statistics.median(on) / statistics.median(off) - 1) * 100
    return (f"{mean:+.1f}% CPU per request (mean of {len(changes)} pairs, standard error {se:.1f}%: "
            f"95% under {mean + 2 * se:+.1f}%); median of the pairs {statistics.median(changes):+.1f}%; "
            f"medians {medians:+.1f}%")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--size", default="64MiB", help="the `on` server's --response-cache SIZE")
    ap.add_argument("--cache-path", action="append", default=[], metavar="PREFIX",
                    help="the `on` server's --response-cache-path (e.g. /cached: the other paths "
                         "then measure what a request outside the cache's scope costs)")
    ap.add_argument("--control", action="store_true",
                    help="run `on` without the cache too: the pairs' changes are then the bench's "
                         "own noise and bias (two processes of one build), to read the others against")
    ap.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=True,
                    help="a new pair of servers every round (the default): a process's own bias (its "
                         "memory layout, hash seed, which CPU cache lines its code shares) then varies "
                         "between pairs and shows in the standard error; with --no-fresh one pair "
                         "serves every round and its bias shifts the whole run")
    ap.add_argument("--seed", type=int, help="the first round's PYTHONHASHSEED (default: random)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated, of {', '.join(WORKLOADS)} (/ and /cached always run)")
    a = ap.parse_args()
    chosen = [w for w in WORKLOADS if w in {"/", "/cached", *a.workloads.split(",")}]
    unknown = set(a.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    SERVERS["on"] = [] if a.control else ["--response-cache", a.size]
    for prefix in a.cache_path:
        SERVERS["on"] += ["--response-cache-path", prefix]
    hz = os.sysconf("SC_CLK_TCK")
    cpu: dict[tuple[str, str], list[float]] = {}
    rps: dict[tuple[str, str], list[float]] = {}
    # Both servers of a pair run with one hash seed, a new one each round (--no-fresh: one for the
    # run): the seed sets the dicts' layouts, which move a worker's instructions per request by up
    # to 0.5% (callgrind), so a pair differs by the build alone and the rounds still sample seeds.
    seed = a.seed if a.seed is not None else random.randrange(1, 2**32 - a.rounds)
    print(f"hash seeds {seed}..{seed + a.rounds - 1} (--seed {seed} repeats them)", file=sys.stderr)
    servers = {name: start(extra, seed) for name, extra in SERVERS.items()}  # both live, one loaded at a time
    try:
        for rnd in range(a.rounds):
            if a.fresh and rnd:
                stop(servers)
                servers = {name: start(extra, seed + rnd) for name, extra in SERVERS.items()}
            order = list(SERVERS) if rnd % 2 == 0 else list(reversed(SERVERS))
            for path in chosen:
                for name in order:  # (each workload's two runs back to back: a pair)
                    _, port, worker = servers[name]
                    wrk(port, path, 1, a.connections)  # warm-up (and the cache's first store)
                    t0 = ticks(worker)
                    n = wrk(port, path, a.duration, a.connections)
                    us = (ticks(worker) - t0) / hz / n * 1e6
                    cpu.setdefault((name, path), []).append(us)
                    rps.setdefault((name, path), []).append(n / a.duration)
                    print(f"round {rnd + 1} {name:3} {path:11} {n / a.duration:>9,.0f} rps {us:6.2f} us/req",
                          file=sys.stderr, flush=True)
    finally:
        stop(servers)
    med = {k: statistics.median(v) for k, v in cpu.items()}
    mrps = {k: statistics.median(v) for k, v in rps.items()}
    print("\n| server | workload | requests/s | CPU us/request |")
    print("|---|---|---:|---:|")
    for (name, path), us in med.items():
        print(f"| {name} | {path} | {mrps[name, path]:,.0f} | {us:.2f} |")
    print()
    print(f"hits vs hello, same server (CPU per request): {med['on', '/'] / med['on', '/cached']:.2f}x; "
          f"by requests/s: {mrps['on', '/cached'] / mrps['on', '/']:.2f}x")
    if "/page" in chosen:
        print(f"hits vs the page rendered, same server: {med['on', '/page'] / med['on', '/cached']:.2f}x")
    for path in chosen:
        if path != "/cached":
            print(f"cache on vs off, {path}: {paired(cpu['off', path], cpu['on', path])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

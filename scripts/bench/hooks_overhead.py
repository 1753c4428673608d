"""What gunicorn's pre_request and post_request hooks cost: nothing when they are not set.

    scripts/bench/hooks_overhead                                # hello and pipeline16, 10 rounds
    scripts/bench/hooks_overhead --workloads hello --rounds 20 --duration 5

Three greenfork servers run the same hello-world app with one worker each, started from a
gunicorn.conf.py written at run time:

- `none`: a config without hooks;
- `other`: post_fork, when_ready and worker_exit set, not the request hooks: the worker's hook
  machinery is there, the request stage's `hooks` stays None (the case issue 16 promises costs
  nothing per request);
- `request`: pre_request and post_request set to functions that do nothing (what the request
  hooks cost when set: building `req` and `resp`, two calls).

Each round runs wrk against each server in turn (the order rotates), with the worker pinned to
CPU 0 and wrk to CPU 1, and reads the worker's user+system CPU time from /proc around the run.
The result is the median, over rounds, of each server's CPU microseconds per request and of its
ratio to `none` in the same round: absolute numbers on a shared machine are noise, paired
ratios much less so. `other`/`none` should be 1.00 within the noise (see it with --control,
which adds a second `none` server). Not a test: run it by hand and record the result in
docs/migrating-from-gunicorn.md ("What pre_request and post_request cost").
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVER_CPU, CLIENT_CPU = 0, 1

CONFIGS = {
    "none": "",
    "other": """
def post_fork(server, worker):
    pass


def when_ready(server):
    pass


def worker_exit(server, worker):
    pass
""",
    "request": """
def pre_request(worker, req):
    pass


def post_request(worker, req, environ, resp):
    pass
""",
}
LUA_PIPELINE = """
init = function(args)
  local r = {}
  for i = 1, 16 do r[i] = wrk.format(nil, nil) end
  req = table.concat(r)
end
request = function() return req end
"""
WORKLOADS = {"hello": "", "pipeline16": LUA_PIPELINE}


class Server:
    def __init__(self, tmp: Path, name: str, config: str) -> None:
        self.name = name
        conf = tmp / f"{name}.conf.py"
        conf.write_text("workers = 1\nworker_class = 'gevent'\nloglevel = 'warning'\n" + config)
        addr = tmp / f"{name}.json"
        self.log_path = tmp / f"{name}.log"
        cmd = [sys.executable, "-m", "greenfork.master", "-c", str(conf), "hello:app",
               "-b", "http://127.0.0.1:0", "--addresses-file", str(addr)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=HERE, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 30
        while not addr.exists() or not self.children():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} server did not start: {self.log_path.read_text()}")
            time.sleep(0.05)
        self.url = json.loads(addr.read_text())["addresses"][0]
        # the worker may be replaced only by a crash; re-read it before each run anyway
        time.sleep(1.0)

    def children(self) -> list[int]:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return [int(p) for p in f.read().split()]

    def worker(self, pin: bool) -> int:
        (pid,) = self.children()
        if pin:
            os.sched_setaffinity(pid, {SERVER_CPU})
        return pid

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, duration: float, connections: int, script: Path | None, pin: bool) -> int:
    """Requests completed."""
    cmd = [*(["taskset", "-c", str(CLIENT_CPU)] if pin else []), "wrk", "-t1", "-c", str(connections),
           "-d", f"{duration:g}s", *(["-s", str(script)] if script else []), url + "/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    n = re.search(r"([0-9]+) requests in", out)
    if n is None:
        raise SystemExit(f"cannot parse wrk output:\n{out}")
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  warning: wrk saw errors:\n{out}", file=sys.stderr)
    return int(n.group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="hello,pipeline16", help=f"of {', '.join(WORKLOADS)}")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--control", action="store_true", help="add a second `none` server: the noise floor")
    p.add_argument("--no-pin", dest="pin", action="store_false")
    args = p.parse_args()
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}")
    args.pin = args.pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required (Debian package wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="gf-hooks-bench-"))
    configs = dict(CONFIGS)
    if args.control:
        configs["none-b"] = ""
    servers: list[Server] = []
    try:
        for name, config in configs.items():
            servers.append(Server(tmp, name, config))
        for workload in workloads:
            script = None
            if WORKLOADS[workload]:
                script = tmp / f"{workload}.lua"
                script.write_text(WORKLOADS[workload])
            for s in servers:  # warm-up
                s.worker(args.pin)
                wrk(s.url, 2, args.connections, script, args.pin)
            us: dict[str, list[float]] = {s.name: [] for s in servers}
            ratios: dict[str, list[float]] = {s.name: [] for s in servers}
            for r in range(args.rounds):
                k = r % len(servers)
                for s in servers[k:] + servers[:k]:
                    pid = s.worker(args.pin)
                    before = cpu_seconds(pid)
                    n = wrk(s.url, args.duration, args.connections, script, args.pin)
                    us[s.name].append(1e6 * (cpu_seconds(pid) - before) / max(n, 1))
                base = us["none"][-1]
                for s in servers:
                    ratios[s.name].append(us[s.name][-1] / base)
                print(f"{workload} round {r + 1:2}: " + "   ".join(
                    f"{s.name} {us[s.name][-1]:5.2f} us/req" for s in servers), flush=True)
            med = statistics.median
            print(f"\n{workload}: {args.rounds} rounds x {args.duration:g} s, 1 worker, wrk -t1 "
                  f"-c{args.connections}{', worker on CPU 0 and wrk on CPU 1' if args.pin else ''}")
            for s in servers:
                print(f"  {s.name:8} {med(us[s.name]):6.2f} us/req (median)   "
                      f"paired ratio to none {med(ratios[s.name]):.3f}")
            print()
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""greenfork against gunicorn's gevent worker, interleaved, as ratios.

    scripts/bench/run                 # 3 rounds of every HTTP/1.1 workload (about 6 minutes)
    scripts/bench/run --quick         # 1 round, short runs (about 1 minute)
    scripts/bench/run --workloads hello,sleep --rounds 5
    scripts/bench/run --workloads h2_hello,h2c_hello,h2_big,h2c_big,h2_echo16k,h2c_echo16k

HTTP/2 workloads (h2_* over TLS with ALPN h2, h2c_* cleartext with prior knowledge) run h2load
with 8 connections of 8 streams each (64 in flight); gunicorn serves them with
--http-protocols h2,h1 (and --http2-cleartext prior-knowledge for h2c). A warm-up run sizes the
request count to --duration seconds (h2load -n: a server that stalls a stream cannot hang the
run, -N2 turns a silent connection into errors).

Each (round, workload) starts both servers in turn with 2 workers, pinned to
CPU 0 while wrk runs on CPU 1 (on a 2-core machine this measures per-core
efficiency), warms up, runs wrk, and stops the server by pid. The result is the
median over rounds of greenfork rps / gunicorn rps measured in the same round:
absolute numbers on a shared machine are noise, ratios are not.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)

SERVERS = {
    "greenfork": "{bin}/greenfork {app} --workers 2 --bind 127.0.0.1:{port}",
    "gunicorn-gevent": "{bin}/gunicorn -k gevent --worker-connections 1000 -w 2 -b 127.0.0.1:{port} {app}",
}
# The same servers over TLS, with one ECDSA P-256 certificate made at run time (as peers.py does).
TLS_SERVERS = {
    "greenfork": "{bin}/greenfork {app} --workers 2 --bind https://127.0.0.1:{port} "
                 "--certfile {certfile} --keyfile {keyfile}",
    "gunicorn-gevent": "{bin}/gunicorn -k gevent --worker-connections 1000 -w 2 -b 127.0.0.1:{port} "
                       "--certfile {certfile} --keyfile {keyfile} {app}",
}
LUA_PIPELINE = """
init = function(args)
  local r = {}
  for i = 1, 16 do r[i] = wrk.format(nil, nil) end
  req = table.concat(r)
end
request = function() return req end
"""
LUA_POST = 'wrk.method = "POST"\nwrk.body = string.rep("a", 16384)\n'
# name: (app, connections, extra wrk args, lua)
WORKLOADS = {
    "hello": ("hello", 64, [], ""),
    "hello_close": ("hello", 64, ["-H", "Connection: close"], ""),
    "pipeline16": ("hello", 64, [], LUA_PIPELINE),
    "big": ("big", 64, [], ""),
    "file": ("file", 64, [], ""),
    "echo16k": ("echo", 64, [], LUA_POST),
    "sleep": ("sleep", 1000, [], ""),
    # TLS: keep-alive (the record layer per request), and a full handshake per request
    "tls_hello": ("hello", 64, [], ""),
    "tls_hello_close": ("hello", 64, ["-H", "Connection: close"], ""),
    "cached": ("cached", 64, [], ""),  # greenfork with --response-cache (GF_ARGS); gunicorn has no cache
}
# HTTP/2 variants (kind: "h2" over TLS, "h2c" cleartext)
H2_SERVERS = {
    ("greenfork", "h2"): TLS_SERVERS["greenfork"],
    ("greenfork", "h2c"): SERVERS["greenfork"],
    ("gunicorn-gevent", "h2"): "{bin}/gunicorn -k gevent --worker-connections 1000 -w 2 -b 127.0.0.1:{port} "
                               "--certfile {certfile} --keyfile {keyfile} --http-protocols h2,h1 {app}",
    ("gunicorn-gevent", "h2c"): "{bin}/gunicorn -k gevent --worker-connections 1000 -w 2 -b 127.0.0.1:{port} "
                                "--http-protocols h2,h1 --http2-cleartext prior-knowledge {app}",
}
# name: (app, kind, extra h2load args); all with -c 8 -m 8
H2_WORKLOADS = {
    "h2_hello": ("hello", "h2", []),
    "h2c_hello": ("hello", "h2c", []),
    "h2_big": ("big", "h2", []),
    "h2c_big": ("big", "h2c", []),
    "h2_echo16k": ("echo", "h2", ["-d", "{post16k}"]),
    "h2c_echo16k": ("echo", "h2c", ["-d", "{post16k}"]),
}
GF_ARGS = {"cached": ["--response-cache", "64MiB"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30, tls: bool = False) -> bool:
    deadline = time.monotonic() + timeout
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                s = ctx.wrap_socket(raw) if tls else raw
                s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                if s.recv(16).startswith(b"HTTP/1."):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def make_certificate() -> tuple[str, str]:
    """An ECDSA P-256 pair for 127.0.0.1 in a temporary directory (never committed)."""
    d = tempfile.mkdtemp(prefix="gf-bench-cert-")
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-keyout", key, "-out", cert, "-days", "7", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def wrk(port: int, conns: int, seconds: int, extra: list[str], lua: str,
        scheme: str = "http") -> tuple[float, int, float]:
    """(requests/s, socket errors + non-2xx, p99 ms) from one wrk run pinned to CPU 1."""
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "2s",
           "--latency", *extra]
    script = None
    if lua:
        fd, script = tempfile.mkstemp(suffix=".lua")
        with os.fdopen(fd, "w") as f:
            f.write(lua)
        cmd += ["-s", script]
    cmd.append(f"{scheme}://127.0.0.1:{port}/")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    finally:
        if script:
            os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(m.group(1)) if m else 0
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return rps, errors, float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")


CERT: tuple[str, str] | None = None
POST16K = ""


def h2load(port: int, kind: str, n: int, extra: list[str]) -> tuple[float, int, float]:
    """(requests/s, failed + errored + timed out, mean ms) from one h2load run pinned to CPU 1."""
    scheme = "https" if kind == "h2" else "http"
    cmd = ["taskset", "-c", "1", "h2load", "-c8", "-m8", "-n", str(n), "-N2",
           *(["--npn-list", "h2"] if kind == "h2" else []), *[x.format(post16k=POST16K) for x in extra],
           f"{scheme}://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if m is None:
        raise RuntimeError(f"h2load: no summary: {out[-400:]}")
    counts = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    assert counts is not None
    ok = int(counts.group(1))
    errors = int(counts.group(2)) + int(counts.group(3)) + int(counts.group(4))
    errors += max(0, n - ok - errors)  # requests never answered
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return float(m.group(1)), errors, float(mean.group(1)) * scale[mean.group(2)] if mean else float("nan")


def run_h2(server: str, workload: str, seconds: int) -> tuple[float, int, float]:
    global CERT, POST16K
    app, kind, extra = H2_WORKLOADS[workload]
    if CERT is None:
        CERT = make_certificate()
    if not POST16K:
        POST16K = os.path.join(os.path.dirname(CERT[0]), "16k.bin")
        with open(POST16K, "wb") as f:
            f.write(b"a" * 16384)
    port = free_port()
    cmd = shlex.split(H2_SERVERS[(server, kind)].format(bin=BIN, app="apps:" + app, port=port,
                                                        certfile=CERT[0], keyfile=CERT[1]))
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], cwd=HERE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:  # ready once it answers over HTTP/2
            try:
                if h2load(port, kind, 200, extra)[1] == 0:
                    break
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{server} did not serve {kind}")
            time.sleep(0.2)
        sized = h2load(port, kind, 2000, extra)  # warm-up, and the request count for `seconds`
        return h2load(port, kind, max(2000, int(sized[0] * seconds)), extra)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def run_one(server: str, workload: str, seconds: int) -> tuple[float, int, float]:
    global CERT
    if workload in H2_WORKLOADS:
        return run_h2(server, workload, seconds)
    app, conns, extra, lua = WORKLOADS[workload]
    port = free_port()
    tls = workload.startswith("tls_")
    if tls and CERT is None:
        CERT = make_certificate()
    template = (TLS_SERVERS if tls else SERVERS)[server]
    certfile, keyfile = CERT or ("", "")
    cmd = shlex.split(template.format(bin=BIN, app="apps:" + app, port=port, certfile=certfile,
                                      keyfile=keyfile))
    if server == "greenfork":
        cmd += GF_ARGS.get(workload, [])
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], cwd=HERE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    scheme = "https" if tls else "http"
    try:
        if not wait_ready(port, proc, tls=tls):
            raise RuntimeError(f"{server} did not start")
        wrk(port, min(conns, 16), 1, extra, lua, scheme)  # warm-up
        return wrk(port, conns, seconds, extra, lua, scheme)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s runs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help="comma-separated: " + ", ".join([*WORKLOADS, *H2_WORKLOADS]))
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.duration = 1, 3
    names = [w for w in a.workloads.split(",") if w]
    results: dict[tuple[str, str], list[tuple[float, int, float]]] = {}
    for rnd in range(1, a.rounds + 1):
        for w in names:
            for server in SERVERS:
                r = run_one(server, w, a.duration)
                results.setdefault((server, w), []).append(r)
                print(f"round {rnd} {w:12} {server:16} {r[0]:>10,.0f} rps  p99 {r[2]:7.1f} ms  "
                      f"errors {r[1]}", file=sys.stderr, flush=True)
    print("\n| workload | greenfork rps | gunicorn-gevent rps | ratio (median) | greenfork p99 ms "
          "(h2: mean) | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for w in names:
        g, u = results[("greenfork", w)], results[("gunicorn-gevent", w)]
        ratio = statistics.median(x[0] / y[0] for x, y in zip(g, u, strict=True))
        g_rps, u_rps = statistics.median(x[0] for x in g), statistics.median(x[0] for x in u)
        print(f"| {w} | {g_rps:,.0f} | {u_rps:,.0f} | {ratio:.2f}x | "
              f"{statistics.median(x[2] for x in g):.1f} | {sum(x[1] for x in g)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

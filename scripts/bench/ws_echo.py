#!/usr/bin/env python3
"""WebSocket echo benchmark client: N connections, small messages, round trips per second.

    .venv/bin/python scripts/bench/ws_echo.py ws://127.0.0.1:8000/echo -c 100 -d 10 -p 2

Each connection sends a message, waits for its echo, and repeats, for --duration seconds
after all connections are open. Any ws:// URL whose server echoes works: greenfork with
tests/apps/ws_geventwebsocket.py (path /echo), or gunicorn with gevent-websocket's worker
serving the same app:

    gunicorn -k geventwebsocket.gunicorn.workers.GeventWebSocketWorker -w 1 -b 127.0.0.1:8001 \\
        tests.apps.ws_geventwebsocket:app

The client is the `websockets` package on asyncio; one Python process tops out long before a
gevent worker does, so --processes splits the connections over several (the machine's
cores are shared with the server under test: say how many in the results). Prints one JSON
line: connections, round trips, round trips per second, errors, latency percentiles.
Every loop is bounded by --duration and the open and receive timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from typing import Any


async def _connection(url: str, message: str, start: float, stop: float, timeout: float,
                      lat: list[float], counts: dict[str, int]) -> None:
    from websockets.asyncio.client import connect

    try:
        async with connect(url, open_timeout=timeout, ping_interval=None, compression=None,
                           max_size=1 << 20) as ws:
            await asyncio.sleep(max(0.0, start - time.monotonic()))  # all connected before timing
            while (now := time.monotonic()) < stop:
                await ws.send(message)
                reply = await asyncio.wait_for(ws.recv(), timeout)
                if reply != message:
                    counts["errors"] += 1
                    counts["mismatch"] += 1
                    return
                lat.append(time.monotonic() - now)
                counts["round_trips"] += 1
    except Exception as e:  # counted, not raised: the run goes on with the others
        counts["errors"] += 1
        key = type(e).__name__
        counts[key] = counts.get(key, 0) + 1


async def _run(url: str, connections: int, duration: float, size: int, timeout: float, ramp: float,
               ) -> dict[str, Any]:
    message = "x" * size
    start = time.monotonic() + ramp
    stop = start + duration
    lat: list[float] = []
    counts = {"round_trips": 0, "errors": 0, "mismatch": 0}
    await asyncio.wait_for(
        asyncio.gather(*(_connection(url, message, start, stop, timeout, lat, counts)
                         for _ in range(connections))),
        ramp + duration + 2 * timeout + 5)
    return {"counts": counts, "latencies": lat}


def _worker(args: tuple[str, int, float, int, float, float]) -> dict[str, Any]:
    return asyncio.run(_run(*args))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="a ws:// URL that echoes messages")
    ap.add_argument("-c", "--connections", type=int, default=100)
    ap.add_argument("-d", "--duration", type=float, default=10.0, help="seconds of measurement")
    ap.add_argument("-s", "--size", type=int, default=32, help="message size in bytes (text)")
    ap.add_argument("-p", "--processes", type=int, default=1, help="client processes")
    ap.add_argument("--timeout", type=float, default=10.0, help="open and per-message timeout")
    ap.add_argument("--ramp", type=float, default=2.0, help="seconds allowed to open the connections")
    a = ap.parse_args()
    if not a.url.startswith(("ws://", "wss://")):
        ap.error("the URL must be ws:// or wss://")
    procs = max(1, min(a.processes, a.connections))
    shares = [a.connections // procs + (1 if i < a.connections % procs else 0) for i in range(procs)]
    jobs = [(a.url, n, a.duration, a.size, a.timeout, a.ramp) for n in shares]
    if procs == 1:
        results = [_worker(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            results = pool.map(_worker, jobs)
    counts: dict[str, int] = {}
    lat: list[float] = []
    for r in results:
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
        lat += r["latencies"]
    lat.sort()

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else None

    out = {"url": a.url, "connections": a.connections, "processes": procs, "duration_s": a.duration,
           "message_bytes": a.size, "round_trips": counts.pop("round_trips"),
           "round_trips_per_s": round(len(lat) / a.duration, 1), "errors": counts.pop("errors"),
           "error_kinds": {k: v for k, v in counts.items() if v},
           "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)}}
    print(json.dumps(out))
    sys.exit(1 if out["errors"] else 0)


if __name__ == "__main__":
    main()

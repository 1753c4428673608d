#!/usr/bin/env python3
"""The request stage alone, with the response cache off and on: CPU microseconds per request.

    .venv/bin/python scripts/bench/cache_path.py [--rounds 5] [--requests 30000]

RequestStage.serve() over an in-memory HTTP/1.1 exchange (the real protocol object, no socket,
no event loop), for scripts/bench/apps.py:paths: `/` hello world, `/page` a 4 KiB page the app
renders, `/cached` the same page with `Cache-Control: public` (a hit after the first request).
It isolates what the cache adds to the request path, which a whole server's figures bury in
system-call and scheduling noise: the cost of a miss that the cache passes on, and of a hit
next to an app call. Process CPU time, best of `--repeat` runs, median over rounds.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import timeit
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import apps

from greenfork.master.respcache import ResponseCache
from greenfork.master.settings import defaults
from greenfork.workers.h1proto import H1Server
from greenfork.workers.http1 import Limits
from greenfork.workers.instrument import NULL
from greenfork.workers.request import RequestStage, http_date


class Context:
    unix = False
    scheme = "http"
    base_environ: dict[str, Any] = {
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": None, "wsgi.multithread": True,
        "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.input_terminated": True,
        "wsgi.file_wrapper": None, "SCRIPT_NAME": "", "SERVER_SOFTWARE": "greenfork",
        "greenfork.server_addresses": [], "greenfork.worker": 0, "greenfork.generation": 1,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000"}


class Exchange:
    """The HTTP/1.1 exchange's output side (workers/conn.py), gathering into a list."""

    def __init__(self) -> None:
        self.p = H1Server(Limits())
        self.out: list[bytes] = []
        self.ctx = Context()
        self.extra: dict[str, str] = {}
        self.status = 0
        self.inp = self.sr = None
        self.headed = False
        self.body_error = None
        self.version = ""
        self.timed = None

    def send_head(self, status: str, headers: list[tuple[str, str]]) -> None:
        self.out.append(self.p.head(status, headers, date=http_date(), server=True, keep_alive=True))
        self.status = self.p.status

    def send_data(self, data: bytes) -> None:
        self.out.append(self.p.send_data(data))

    def end(self) -> None:
        end = self.p.end()
        if end:
            self.out.append(end)

    def respond(self, status: str, headers: list[tuple[str, str]],
                body: list[bytes] | tuple[bytes, ...]) -> None:
        self.p.respond(status, headers, body, self.out, date=http_date(), server=True, keep_alive=True)
        self.status = self.p.status

    def write(self, data: bytes) -> None:
        self.send_data(data)

    def flush(self) -> None:
        pass

    def body_bytes(self) -> int:
        return self.p.body_bytes

    def head_sent(self) -> bool:
        return False

    def answer_instead(self, status: int) -> bool:
        raise SystemExit(f"the app failed: {status}")

    def abort(self) -> None:
        raise SystemExit("aborted")


def stage(cache: ResponseCache | None) -> RequestStage:
    server = types.SimpleNamespace(
        script_name="", limits=types.SimpleNamespace(max_body=None), request_timeout=0, timed=False,
        metrics=NULL, access_log=None, settings=defaults(), app=apps.paths,
        info=types.SimpleNamespace(cache=cache, slot=0))
    return RequestStage(server)  # type: ignore[arg-type]


def per_request(cache: ResponseCache | None, path: str, n: int, repeat: int) -> float:
    st = stage(cache)
    ex = Exchange()
    p = ex.p
    raw = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n" % path.encode()
    remote = ("127.0.0.1", "5555")

    def one() -> None:
        p.receive_data(raw)
        st.serve(ex, p.next_event(), remote)  # type: ignore[arg-type]
        p.after_response()
        ex.out.clear()

    for _ in range(100):
        one()
    return min(timeit.repeat(one, number=n, repeat=repeat, timer=time.process_time)) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=30000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    gc.disable()  # as in a worker between collections: no pause lands in one variant's timing
    cache = ResponseCache.create(64 << 20)
    res: dict[tuple[str, str], list[float]] = {}
    for _ in range(a.rounds):
        for path in ("/", "/page", "/cached"):
            for name, c in (("off", None), ("on", cache)):
                res.setdefault((path, name), []).append(per_request(c, path, a.requests, a.repeat))
    print("| path | cache off, us | cache on, us | difference |")
    print("|---|---:|---:|---:|")
    for path in ("/", "/page", "/cached"):
        off, on = statistics.median(res[path, "off"]), statistics.median(res[path, "on"])
        print(f"| {path} | {off:.2f} | {on:.2f} | {on - off:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Micro-benchmark of the shared response cache in one process: store, lookup (hit and miss) and
the whole hit path of the request stage (fields, rules, key, lookup, answer), per entry size.

Not a test: run it by hand and record the result in docs/caching.md.

    .venv/bin/python scripts/bench/cache_store.py                 # 4 KiB entries
    .venv/bin/python scripts/bench/cache_store.py --sizes 4096,65536,262144
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from greenfork.master.respcache import ResponseCache
from greenfork.workers import cachepolicy as cp

REQUEST = [(b"Host", b"example.com"), (b"User-Agent", b"wrk"), (b"Accept", b"*/*"),
           (b"Accept-Encoding", b"gzip")]
HEADERS = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "public, max-age=300"),
           ("ETag", '"abc123"'), ("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")]


def best(fn: Callable[[], int], rounds: int) -> float:
    """Seconds per operation, best of `rounds` (the least disturbed by other processes)."""
    out = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        n = fn()
        out = min(out, (time.perf_counter() - t0) / n)
    return out


def run(size: int, cache_bytes: int, rounds: int) -> list[tuple[str, float]]:
    cache = ResponseCache.create(cache_bytes, max(size, 256 * 1024))
    nkeys = max(16, min(4096, cache.stats().capacity // (size + 512) // 2))  # half the log: no eviction
    now = time.time()
    paths = [b"/page/%d" % i for i in range(nkeys)]
    keys = [cp.primary_key("http", b"example.com", p, b"") or b"" for p in paths]
    body = random.Random(0).randbytes(size)
    ok = cp.Storable(True, "", 300.0, 0.0, ())
    entries = [cp.make_entries(k, {}, "200 OK", HEADERS, body, ok, now)[0][1] for k in keys]
    order = list(range(nkeys))
    random.Random(1).shuffle(order)

    def stores() -> int:
        for i in order:
            cache.store(keys[i], entries[i])
        return nkeys

    def hits() -> int:
        for i in order:
            cache.lookup(keys[i], now)
        return nkeys

    def misses() -> int:
        for i in order:
            cache.lookup(b"missing" + keys[i], now)
        return nkeys

    def hit_path() -> int:
        for i in order:
            fields = cp.request_fields(REQUEST)
            rule = cp.request_rule("GET", fields)
            key = cp.primary_key("http", fields["host"].encode("latin-1"), paths[i], b"")
            assert rule.lookup and key is not None
            e = cp.find(cache.lookup, key, fields, now)
            assert e is not None and cp.usable(e, rule, now)
            cp.answer(e, "GET", fields, now)
        return nkeys

    out = [("store", best(stores, rounds))]
    assert cache.lookup(keys[0], now) is not None
    out += [("lookup hit", best(hits, rounds)), ("lookup miss", best(misses, rounds)),
            ("hit path (rules + lookup + answer)", best(hit_path, rounds))]
    cache.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4096", help="comma-separated body sizes in bytes")
    ap.add_argument("--cache", type=int, default=64 << 20, help="cache size in bytes (default 64 MiB)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"{'body':>8}  {'operation':<36} {'us/op':>8} {'ops/s':>10}")
    for size in (int(s) for s in args.sizes.split(",")):
        for name, sec in run(size, args.cache, args.rounds):
            print(f"{size:>8}  {name:<36} {sec * 1e6:8.2f} {1 / sec:10.0f}")


if __name__ == "__main__":
    main()

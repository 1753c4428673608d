"""Scraping helpers for the metrics tests."""

from __future__ import annotations

import http.client
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, frozenset[tuple[str, str]]]
MONOTONIC_SUFFIXES = ("_total", "_count", "_sum", "_bucket")


def get(url: str, path: str = "/metrics", headers: dict[str, str] | None = None, method: str = "GET",
        timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(url.split("://", 1)[1], timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def parse(text: str) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def scrape(url: str) -> dict[Key, float]:
    status, headers, body = get(url)
    assert status == 200, body
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(body.decode())


def total(samples: dict[Key, float], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def find(samples: dict[Key, float], name: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(ls), v) for (n, ls), v in samples.items() if n == name]


def monotonic_violations(before: dict[Key, float], after: dict[Key, float],
                         skip: Iterable[str] = ()) -> list[str]:
    """Every counter-like sample of `before` must still exist in `after`, no lower."""
    bad = []
    for key, v in before.items():
        name = key[0]
        if not name.endswith(MONOTONIC_SUFFIXES) or name in skip:
            continue
        if key not in after:
            bad.append(f"{name}{dict(key[1])} disappeared (was {v})")
        elif after[key] < v:
            bad.append(f"{name}{dict(key[1])} went down: {v} -> {after[key]}")
    return bad

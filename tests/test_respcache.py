"""The shared response store (master/respcache.py): its bookkeeping in one process, then real
processes forked after create() writing and reading the same keys, and writers stopped or
SIGKILLed in the middle of a store.

Every body a test stores embeds its key and a BLAKE2 digest of itself, so a reader can tell a torn
or misplaced body from a good one without trusting the store's own CRC.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from greenfork.master.respcache import DEFAULT_MAX_ENTRY, Entry, ResponseCache
from tests.procs import wait_for

NOW = 1_800_000_000.0


def make_body(key: bytes, size: int, rng: random.Random) -> bytes:
    head = key + b"|%d|" % rng.getrandbits(32)
    filler = rng.randbytes(min(64, size)) * (size // 64 + 1)
    body = head + filler[:max(0, size - len(head))]
    return body + hashlib.blake2b(body, digest_size=16).digest()


def body_ok(key: bytes, body: bytes) -> bool:
    return body.startswith(key + b"|") and hashlib.blake2b(body[:-16], digest_size=16).digest() == body[-16:]


def entry(key: bytes, body: bytes, stored_at: float = NOW, lifetime: float = 600.0) -> Entry:
    return Entry("200 OK", (("X-Key", key.decode()), ("Content-Length", str(len(body)))), body, stored_at,
                 lifetime)


@pytest.fixture
def cache() -> Iterator[ResponseCache]:
    c = ResponseCache.create(1 << 20, 64 * 1024)
    yield c
    c.close()


class Children:
    """Forked helpers: each runs fn(cache) and reports a JSON dict; all killed by pid at teardown."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def fork(self, fn: Callable[[], dict[str, Any]]) -> tuple[int, int]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            code = 1
            try:
                os.close(r)
                result = fn()
                os.write(w, json.dumps(result).encode())
                code = 0
            except BaseException as e:
                os.write(w, json.dumps({"error": repr(e)}).encode())
            finally:
                os._exit(code)
        os.close(w)
        self.pids.append(pid)
        return pid, r

    def result(self, pid: int, r: int, timeout: float = 30.0) -> dict[str, Any]:
        data = b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"child {pid} did not report within {timeout} s")
            if select.select([r], [], [], left)[0]:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        self.pids.remove(pid)
        out: dict[str, Any] = json.loads(data or b"{}")
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
        return out

    def kill_all(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.pids.clear()


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.kill_all()


# -- one process ----------------------------------------------------------------------------------

def test_the_store_imports_no_gevent() -> None:
    """The master creates the cache, and the master never imports gevent."""
    code = "import sys, greenfork.master.respcache\nassert 'gevent' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_create_refuses_sizes_it_cannot_honour() -> None:
    with pytest.raises(ValueError, match="below the minimum"):
        ResponseCache.create(1000)
    with pytest.raises(ValueError, match="a quarter of the cache"):
        ResponseCache.create(1 << 20, 512 * 1024)
    c = ResponseCache.create(64 << 20)
    s = c.stats()
    assert c.max_entry == DEFAULT_MAX_ENTRY and s.size == 64 << 20 and 0.9 * s.size < s.capacity < s.size
    c.close()


def test_every_field_round_trips(cache: ResponseCache) -> None:
    e = Entry("404 Not Found", (("Content-Type", "text/html; charset=latin-1"), ("X-É", "café ÿ"),
                                ("X-Empty", "")), b"\x00body\xff" * 100, NOW, 90.5, 3.25, 'W/"tag"',
              "Sun, 06 Nov 1994 08:49:37 GMT",
              (("accept-encoding", "gzip"), ("x-absent", None), ("x-empty", "")))
    assert cache.store(b"k", e)
    assert cache.lookup(b"k", NOW + 1) == e
    stub = Entry("", (), b"", NOW, 60.0, vary=(("accept-encoding", None),), stub=True)
    assert cache.store(b"s", stub) and cache.lookup(b"s", NOW) == stub
    s = cache.stats()
    assert (s.stores, s.entries, s.evictions) == (2, 2, 0) and cache.audit() == (s.entries, s.bytes_used)


def test_a_lookup_misses_unknown_and_stale_entries(cache: ResponseCache) -> None:
    assert cache.lookup(b"nothing", NOW) is None
    assert cache.store(b"k", Entry("200 OK", (), b"x", NOW, 60.0, initial_age=10.0))
    assert cache.lookup(b"k", NOW + 49.9) is not None
    assert cache.lookup(b"k", NOW + 50.0) is None  # age 10 + 50 reaches the 60 s lifetime


def test_storing_a_key_again_replaces_it(cache: ResponseCache) -> None:
    rng = random.Random(1)
    cache.store(b"k", entry(b"k", make_body(b"k", 1000, rng)))
    newer = make_body(b"k", 3000, rng)
    assert cache.store(b"k", entry(b"k", newer))
    hit = cache.lookup(b"k", NOW)
    assert hit is not None and hit.body == newer
    s = cache.stats()
    assert s.entries == 1 and s.stores == 2 and s.evictions == 0 and cache.audit() == (1, s.bytes_used)


def test_entries_over_max_entry_are_refused(cache: ResponseCache) -> None:
    assert cache.store(b"max", entry(b"max", b"x" * cache.max_entry))
    assert not cache.store(b"over", entry(b"over", b"x" * (cache.max_entry + 1)))
    assert cache.lookup(b"over", NOW) is None and cache.stats().stores == 1


@pytest.mark.parametrize("bad", [Entry("200 OK", (("X", "a\0b"),), b"", NOW, 60.0),
                                 Entry("200 OK", (("X", "snow ☃"),), b"", NOW, 60.0),
                                 Entry("200\0OK", (), b"", NOW, 60.0)])
def test_fields_that_cannot_be_stored_are_refused(cache: ResponseCache, bad: Entry) -> None:
    """A NUL (never valid in HTTP) or a non-latin-1 character (never valid in WSGI) is refused."""
    assert not cache.store(b"k", bad) and cache.lookup(b"k", NOW) is None and cache.stats().stores == 0


def test_generations_do_not_see_each_other_and_purge_drops_the_old(cache: ResponseCache) -> None:
    """A HUP's new generation starts empty while the old one keeps its entries; purge() drops the
    old generation's entries once it has exited."""
    cache.generation = 1
    assert cache.store(b"k", entry(b"k", b"old code")) and cache.store(b"only-old", entry(b"only-old", b"x"))
    cache.generation = 2
    assert cache.lookup(b"k", NOW) is None
    assert cache.store(b"k", entry(b"k", b"new code"))
    hit = cache.lookup(b"k", NOW)
    assert hit is not None and hit.body == b"new code" and cache.stats().entries == 3
    cache.generation = 1
    hit = cache.lookup(b"k", NOW)
    assert hit is not None and hit.body == b"old code"
    assert cache.purge(keep_generation=2)
    assert cache.lookup(b"k", NOW) is None and cache.lookup(b"only-old", NOW) is None
    cache.generation = 2
    assert cache.lookup(b"k", NOW) is not None
    s = cache.stats()
    assert s.entries == 1 and cache.audit() == (1, s.bytes_used)


def test_the_path_filter_knows_every_stored_path(cache: ResponseCache) -> None:
    """may_hold_path() is never 0 for a path with an entry (any host, query, variant key or
    generation); 0 for the others (bar a CRC collision, which these paths avoid); clear() empties
    it and purge() rebuilds it from the entries it keeps."""
    primary = b"http\0h.example\0/a/page\0q=1"
    variant = b"https\0other.example\0/b\0\0vary\0accept-encoding=gzip"  # (a longer key keeps the path)
    never = [b"/a", b"/a/page/", b"/b/", b"/c", b"/a/pag"]
    assert not any(cache.may_hold_path(p) for p in [b"/a/page", b"/b", *never])
    def plain(body: bytes) -> Entry:  # (entry() puts the key in a field: these have NULs)
        return Entry("200 OK", (("Content-Length", str(len(body))),), body, NOW, 600.0)

    cache.generation = 1
    assert cache.store(primary, plain(b"x"))
    assert cache.may_hold_path(b"/a/page") and not cache.may_hold_path(b"/b")
    cache.generation = 2
    assert cache.store(variant, plain(b"y"))
    assert cache.may_hold_path(b"/a/page") and cache.may_hold_path(b"/b")
    assert not any(cache.may_hold_path(p) for p in never)
    assert cache.purge(keep_generation=2)  # /a/page was generation 1's only
    assert not cache.may_hold_path(b"/a/page") and cache.may_hold_path(b"/b")
    assert cache.clear()
    assert not cache.may_hold_path(b"/b")


def test_remove_drops_a_key_in_every_generation(cache: ResponseCache) -> None:
    for gen in (1, 2):
        cache.generation = gen
        cache.store(b"k", entry(b"k", b"x"))
    cache.store(b"other", entry(b"other", b"y"))
    assert cache.remove(b"k") and cache.lookup(b"k", NOW) is None
    cache.generation = 1
    assert cache.lookup(b"k", NOW) is None
    cache.generation = 2
    assert cache.lookup(b"other", NOW) is not None and cache.audit() == (1, cache.stats().bytes_used)


def test_clear_empties_everything_and_the_cache_keeps_working(cache: ResponseCache) -> None:
    for i in range(50):
        cache.store(b"k%d" % i, entry(b"k%d" % i, b"x" * 500))
    assert cache.clear()
    s = cache.stats()
    assert (s.entries, s.bytes_used) == (0, 0)
    assert all(cache.lookup(b"k%d" % i, NOW) is None for i in range(50))
    assert cache.store(b"k1", entry(b"k1", b"again")) and cache.lookup(b"k1", NOW) is not None


def test_eviction_keeps_the_size_bound() -> None:
    """Ten times the capacity stored: bytes stay under it, the newest entries are hits, every
    dropped entry is counted, and the books match the index."""
    c = ResponseCache.create(256 * 1024, 16 * 1024)
    rng = random.Random(2)
    keys = [b"key-%d" % i for i in range(600)]
    bodies = {k: make_body(k, rng.randrange(100, 8000), rng) for k in keys}
    written = 0
    for k in keys:
        assert c.store(k, entry(k, bodies[k], NOW))
        written += len(bodies[k])
        s = c.stats()
        assert s.bytes_used <= s.capacity
    s = c.stats()
    assert written > 5 * s.capacity
    assert s.evictions == s.stores - s.entries and c.audit() == (s.entries, s.bytes_used)
    for k in keys[-10:]:
        hit = c.lookup(k, NOW)
        assert hit is not None and hit.body == bodies[k]
    assert c.lookup(keys[0], NOW) is None
    c.close()


def test_clock_gives_entries_hit_since_stored_a_second_chance() -> None:
    """CLOCK: an entry hit between laps survives eviction; one never hit goes in its first lap."""
    c = ResponseCache.create(256 * 1024, 16 * 1024)
    c.store(b"hot", entry(b"hot", b"h" * 4000))
    c.store(b"cold", entry(b"cold", b"c" * 4000))
    for i in range(400):  # about seven laps of 4 KiB entries
        c.store(b"f%d" % i, entry(b"f%d" % i, b"f" * 4000))
        assert c.lookup(b"hot", NOW) is not None, f"the hot entry was evicted after {i} stores"
    assert c.lookup(b"cold", NOW) is None
    s = c.stats()
    assert c.audit() == (s.entries, s.bytes_used)
    c.close()


def test_a_stale_or_unreferenced_entry_gets_no_second_chance() -> None:
    c = ResponseCache.create(256 * 1024, 16 * 1024)
    c.store(b"short", entry(b"short", b"s" * 4000, lifetime=5.0))
    assert c.lookup(b"short", NOW) is not None  # referenced, but stale by the time the tail comes
    for i in range(100):
        c.store(b"f%d" % i, entry(b"f%d" % i, b"f" * 4000, stored_at=NOW + 10))
    assert c.lookup(b"short", NOW) is None
    c.close()


def test_a_full_index_group_drops_its_oldest_way() -> None:
    """With tiny entries the index fills before the log: each group evicts its oldest way, and the
    newest key of each group stays."""
    c = ResponseCache.create(64 * 1024, 1024)
    keys = [b"t%d" % i for i in range(c._groups * 8 * 3)]
    for k in keys:
        assert c.store(k, entry(k, b"x"))
    s = c.stats()
    assert s.entries <= c._groups * 8 and s.evictions == s.stores - s.entries
    assert c.audit() == (s.entries, s.bytes_used) and c.lookup(keys[-1], NOW) is not None
    c.close()


def test_a_copy_overtaken_by_a_writer_is_dropped(cache: ResponseCache) -> None:
    """The seqlock: a writer that claims the bytes a reader is copying makes it drop the copy."""
    rng = random.Random(3)
    body = make_body(b"victim", 30_000, rng)
    cache.store(b"victim", entry(b"victim", body))

    def overwrite(step: str) -> None:
        if step == "copied":
            cache._hook = None
            for i in range(60):  # more than a lap of 30 KB entries over a 1 MiB log
                cache.store(b"w%d" % i, entry(b"w%d" % i, b"w" * 30_000))
    cache._hook = overwrite
    assert cache.lookup(b"victim", NOW) is None and cache.races == 1
    cache._hook = None
    assert cache.lookup(b"victim", NOW) is None  # gone from the index too


def test_the_crc_catches_a_torn_copy(cache: ResponseCache) -> None:
    """The second guard: a copy that passed the claim check but differs from what was written."""
    cache.store(b"k", entry(b"k", b"A" * 5000))
    way = next(w for w, t in enumerate(cache._tags.tolist()) if t)
    pos = cache._data + cache._offs[way] % cache._D
    cache._mm[pos + 3000] ^= 0xFF  # a body byte
    assert cache.lookup(b"k", NOW) is None and cache.corrupt == 1


# -- several processes ----------------------------------------------------------------------------

def test_an_entry_stored_by_one_process_is_a_hit_in_another(cache: ResponseCache, children: Children) -> None:
    cache.store(b"from-parent", entry(b"from-parent", b"p" * 100))

    def child() -> dict[str, Any]:
        hit = cache.lookup(b"from-parent", NOW)
        return {"seen": hit is not None and hit.body == b"p" * 100,
                "stored": cache.store(b"from-child", entry(b"from-child", b"c" * 100))}
    assert children.result(*children.fork(child)) == {"seen": True, "stored": True}
    hit = cache.lookup(b"from-child", NOW)
    assert hit is not None and hit.body == b"c" * 100


def _uss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean", "Private_Dirty")))


def test_cache_pages_are_not_a_workers_own_memory(children: Children) -> None:
    """The master pre-faults the segment, so a worker filling it grows no private memory (USS, the
    figure --max-worker-memory watches)."""
    c = ResponseCache.create(32 << 20)

    def child() -> dict[str, Any]:
        before = _uss_kib(os.getpid())
        for i in range(200):  # 200 x 160 KB: the whole log at least once
            c.store(b"k%d" % i, entry(b"k%d" % i, b"z" * 160_000))
        return {"before": before, "after": _uss_kib(os.getpid()), "bytes": c.stats().bytes_used}
    out = children.result(*children.fork(child))
    assert out["bytes"] > 16 << 20
    assert out["after"] - out["before"] < 8 * 1024, out  # KiB: far less than the 16+ MiB written
    c.close()


def _mix(cache: ResponseCache, seed: int, keys: list[bytes], seconds: float, max_body: int) -> dict[str, Any]:
    """One process's share of the load: stores and lookups of shared keys, every hit verified."""
    rng = random.Random(seed)
    counts = {"stores": 0, "stored": 0, "hits": 0, "misses": 0, "bad": 0}
    deadline = time.monotonic() + seconds
    n = 0
    while n % 64 or time.monotonic() < deadline:
        n += 1
        k = rng.choice(keys)
        if rng.random() < 0.3:
            counts["stores"] += 1
            counts["stored"] += cache.store(k, entry(k, make_body(k, rng.randrange(16, max_body), rng),
                                                     time.time()))
        else:
            hit = cache.lookup(k, time.time())
            if hit is None:
                counts["misses"] += 1
            elif not body_ok(k, hit.body) or hit.headers[0] != ("X-Key", k.decode()) \
                    or hit.headers[1][1] != str(len(hit.body)):
                counts["bad"] += 1
            else:
                counts["hits"] += 1
    return {**counts, "races": cache.races, "corrupt": cache.corrupt, "errors": cache.errors}


@pytest.mark.slow
@pytest.mark.parametrize("guard", ["both", "crc-only"])
def test_concurrent_writers_and_readers_never_see_a_torn_entry(children: Children, guard: str) -> None:
    """Three processes forked after create() store and look up the same 24 keys for 3 s over a log
    that wraps every few milliseconds; the parent samples stats() meanwhile. No hit is ever torn
    or another key's, the snapshots stay within bounds, and the books match the index afterwards.
    With "crc-only" the seqlock check is off, to show that the CRC alone still catches what the
    load tears."""
    cache = ResponseCache.create(1 << 20, 64 * 1024)
    cache._check_claim = guard == "both"
    keys = [b"/page/%d" % i for i in range(24)]
    procs = [children.fork(lambda seed=seed: _mix(cache, seed, keys, 3.0, 60_000)) for seed in range(3)]
    snapshots = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        s = cache.stats()
        assert s.bytes_used <= s.capacity and s.evictions <= s.stores, s
        assert (s.entries == 0) == (s.bytes_used == 0), s
        snapshots += 1
        time.sleep(0.005)
    results = [children.result(pid, r) for pid, r in procs]
    total = {k: sum(r[k] for r in results) for k in results[0]}
    print("load:", total, "stats:", cache.stats(), "snapshots:", snapshots)
    assert total["bad"] == 0 and total["errors"] == 0
    assert total["hits"] > 1000 and total["stored"] > 1000
    s = cache.stats()
    assert s.stores == total["stored"] and s.recoveries == 0 and s.evictions > 100
    assert cache.audit() == (s.entries, s.bytes_used)
    if guard == "both":
        assert total["corrupt"] == 0  # x86's ordering: the seqlock alone catches every overlap
    cache.close()


# -- a writer stopped, then killed, in the middle of a store --------------------------------------

def _stopped(pid: int) -> bool:
    got, status = os.waitpid(pid, os.WUNTRACED | os.WNOHANG)
    return got == pid and os.WIFSTOPPED(status)


@pytest.mark.parametrize(("step", "second_chance"), [("locked", False), ("reserved", False), ("half", False),
                                                     ("written", False), ("indexed", False), ("half", True)])
def test_a_writer_killed_mid_store_neither_poisons_nor_blocks(children: Children, step: str,
                                                             second_chance: bool) -> None:
    """A worker stops at `step` of a store (a test hook SIGSTOPs it there, holding the lock): other
    writers skip at once instead of waiting, readers keep reading. SIGKILLed there, it leaves a
    store that the next writer repairs: no torn entry is ever served, the books match the index,
    and other processes store and read as before. With second_chance, it dies while moving a
    referenced entry from the tail to the head."""
    c = ResponseCache.create(256 * 1024, 32 * 1024)
    rng = random.Random(4)
    keys = [b"old-%d" % i for i in range(60)]
    bodies = {k: make_body(k, 3500, rng) for k in keys}
    for k in keys:
        c.store(k, entry(k, bodies[k]))
    if second_chance:  # the tail's entry is referenced: the next store moves it first
        assert c.lookup(keys[0], NOW) is not None
    victim = make_body(b"victim", 30_000, rng)

    def writer() -> dict[str, Any]:
        def stop(name: str) -> None:
            if name == step:
                os.kill(os.getpid(), signal.SIGSTOP)
        c._hook = stop
        c.store(b"victim", entry(b"victim", victim))
        return {}
    pid, r = children.fork(writer)
    wait_for(lambda: _stopped(pid), 10, f"the writer to stop at {step!r}")

    t0 = time.monotonic()
    assert not c.store(b"while-stopped", entry(b"while-stopped", b"x" * 100))  # busy: skipped
    assert time.monotonic() - t0 < 0.05
    hits = 0
    for k in keys:  # readers never wait for a writer
        e = c.lookup(k, NOW)
        assert e is None or e.body == bodies[k]
        hits += e is not None
    assert hits > 30
    t0 = time.monotonic()
    s = c.stats()  # the master's scrape: best effort while a writer is inside, never a hang
    assert time.monotonic() - t0 < 0.1 and s.bytes_used <= s.capacity

    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    children.pids.remove(pid)
    os.close(r)

    assert c.store(b"after", entry(b"after", b"a" * 100))  # the lock died with its holder
    s = c.stats()
    assert s.recoveries == 1 and c.audit() == (s.entries, s.bytes_used)
    v = c.lookup(b"victim", NOW)
    assert v is None or v.body == victim
    assert (v is not None) == (step == "indexed")
    for k in keys:
        e = c.lookup(k, NOW)
        assert e is None or e.body == bodies[k]

    def another() -> dict[str, Any]:
        ok = c.store(b"next", entry(b"next", b"n" * 2000))
        e = c.lookup(b"after", NOW)
        return {"stored": ok, "read": e is not None and e.body == b"a" * 100}
    assert children.result(*children.fork(another)) == {"stored": True, "read": True}
    e = c.lookup(b"next", NOW)
    assert e is not None and e.body == b"n" * 2000
    c.close()

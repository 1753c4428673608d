"""Units of the response cache's integration: the store's locate/current/holds/layout, the Vary
epochs, the worker's cache stage pieces (key, environ fields, capture, copies), and the master's
keeper (sizes, generations, purges). The whole path runs in tests/test_cache_process.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from greenfork.master import respcache
from greenfork.master.cachekeeper import CacheKeeper, CacheSizeError
from greenfork.master.config import Layer, build
from greenfork.master.respcache import Entry, ResponseCache
from greenfork.workers import cachepolicy as cp
from greenfork.workers.cachefill import Capture, _body
from greenfork.workers.cachestage import EnvFields, Known, env_key, primary_key

NOW = 1_800_000_000.0


def entry(body: bytes = b"hello", lifetime: float = 60.0, stored_at: float = NOW, **kw: Any) -> Entry:
    return Entry("200 OK", (("Content-Type", "text/plain"), ("Content-Length", str(len(body)))), body,
                 stored_at, lifetime, **kw)


@pytest.fixture
def cache() -> Iterator[ResponseCache]:
    c = ResponseCache.create(256 * 1024, 16 * 1024)
    c.generation = 1
    try:
        yield c
    finally:
        c.close()


# ---------------------------------------------------------------- the store
def test_locate_then_current_until_replaced(cache: ResponseCache) -> None:
    assert cache.store(b"k", entry(b"one"))
    found = cache.locate(b"k", NOW)
    assert found is not None
    e, way, tag, off = found
    assert e.body == b"one"
    assert cache.current(way, tag, off)
    assert cache.store(b"k", entry(b"two"))  # a new entry at a new offset
    assert not cache.current(way, tag, off)
    e2, way2, tag2, off2 = cache.locate(b"k", NOW) or (None, 0, 0, 0)
    assert e2 is not None and e2.body == b"two" and off2 != off and cache.current(way2, tag2, off2)


@pytest.mark.parametrize("how", ["remove", "clear", "purge"])
def test_current_is_false_once_the_entry_is_gone(cache: ResponseCache, how: str) -> None:
    cache.store(b"k", entry())
    _, way, tag, off = cache.locate(b"k", NOW) or (None, 0, 0, 0)
    {"remove": lambda: cache.remove(b"k"), "clear": cache.clear, "purge": lambda: cache.purge(2)}[how]()
    assert not cache.current(way, tag, off)
    assert cache.locate(b"k", NOW) is None


def test_current_marks_the_entry_referenced(cache: ResponseCache) -> None:
    cache.store(b"k", entry())
    _, way, tag, off = cache.locate(b"k", NOW) or (None, 0, 0, 0)
    cache._ref[way] = 0
    assert cache.current(way, tag, off)
    assert cache._ref[way] == 1


def test_current_after_eviction_under_pressure(cache: ResponseCache) -> None:
    cache.store(b"first", entry(b"x" * 10_000))
    _, way, tag, off = cache.locate(b"first", NOW) or (None, 0, 0, 0)
    cache._ref[way] = 0  # never hit since: no second chance
    for i in range(40):
        cache.store(b"k%d" % i, entry(b"y" * 10_000))
    assert cache.stats().evictions > 0
    assert not cache.current(way, tag, off)


def test_holds_answers_without_the_lock(cache: ResponseCache) -> None:
    assert not cache.holds(b"k")
    cache.store(b"k", entry())
    assert cache.holds(b"k")
    cache.generation = 2  # any generation's entry counts: an invalidation drops them all
    assert cache.holds(b"k")
    cache.remove(b"k")
    assert not cache.holds(b"k")


def test_layout_is_create_without_mapping() -> None:
    _, data, capacity = ResponseCache.layout(1 << 20, 1000)
    c = ResponseCache.create(1 << 20, 1000)
    try:
        assert c.stats().capacity == capacity and c.stats().size == data + capacity
    finally:
        c.close()
    with pytest.raises(ValueError, match="a quarter of the cache"):
        ResponseCache.layout(1 << 20, 1 << 19)
    with pytest.raises(ValueError, match="below the minimum"):
        ResponseCache.layout(1000)


# ---------------------------------------------------------------- Vary epochs
def test_variants_live_under_their_stubs_epoch(cache: ResponseCache) -> None:
    ok = cp.Storable(True, "", 60.0, 0.0, ("accept-encoding",))
    headers = [("Cache-Control", "public, max-age=60"), ("Vary", "Accept-Encoding")]
    first = cp.make_entries(b"p", {"accept-encoding": "gzip"}, "200 OK", headers, b"gz", ok, NOW, "e1")
    for k, e in first:
        cache.store(k, e)
    stub = cache.lookup(b"p", NOW)
    assert stub is not None and stub.stub and stub.etag == "e1"
    assert cp.stub_epoch(stub, ["accept-encoding"]) == "e1"  # the next variant joins it...
    assert cp.stub_epoch(stub, ["accept-language"]) is None  # ...unless the app varies on others
    assert cp.stub_epoch(None, ["accept-encoding"]) is None
    second = cp.make_entries(b"p", {}, "200 OK", headers, b"plain", ok, NOW, "e1")
    for k, e in second:
        cache.store(k, e)
    hit = cp.find(cache.lookup, b"p", {"accept-encoding": "gzip"}, NOW)
    assert hit is not None and hit.body == b"gz"
    assert (cp.find(cache.lookup, b"p", {}, NOW) or entry()).body == b"plain"
    cache.remove(b"p")  # an invalidation drops the stub: every variant is unreachable
    third = cp.make_entries(b"p", {}, "200 OK", headers, b"new", ok, NOW, "e2")
    for k, e in third:
        cache.store(k, e)
    assert cp.find(cache.lookup, b"p", {"accept-encoding": "gzip"}, NOW) is None  # not the old gz
    assert (cp.find(cache.lookup, b"p", {}, NOW) or entry()).body == b"new"


def test_no_epoch_keeps_the_old_keys() -> None:
    assert cp.variant_key(b"k", [("x", "1")]) == cp.variant_key(b"k", [("x", "1")], "")
    assert cp.variant_key(b"k", [("x", "1")], "e") != cp.variant_key(b"k", [("x", "1")])


# ---------------------------------------------------------------- the worker's stage
hosts = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=30)
paths = st.binary(max_size=30)


@given(st.sampled_from(["http", "https", "ws"]), hosts, paths, paths)
def test_primary_key_is_cachepolicys(scheme: str, host: str, path: bytes, query: bytes) -> None:
    want = cp.primary_key(scheme, host.encode("latin-1"), path, query)
    assert primary_key(scheme, host, path, query) == want


def test_primary_key_refuses_what_latin_1_cannot_carry() -> None:
    assert primary_key("http", "h\u0100st", b"/", b"") is None
    assert primary_key("https", "Example.COM:443", b"/a", b"b=1") == b"https\0example.com\0/a\0b=1"


def test_environ_fields_read_like_cachepolicys() -> None:
    env = {"HTTP_CACHE_CONTROL": "max-age=0", "CONTENT_LENGTH": "0", "CONTENT_TYPE": "text/plain",
           "HTTP_ACCEPT_ENCODING": "gzip,br", "wsgi.input": object(), "REQUEST_METHOD": "GET"}
    f = EnvFields(env)
    assert f["cache-control"] == "max-age=0" and f.get("content-length") == "0"
    assert "authorization" not in f and f.get("x_with_underscore") is None
    assert sorted(f) == ["accept-encoding", "cache-control", "content-length", "content-type"]
    assert len(f) == 4
    rule = cp.request_rule("GET", f)
    assert rule.store and rule.lookup and rule.max_age == 0  # (usable() then refuses any age above 0)
    assert cp.vary_values(["accept-encoding"], f) == (("accept-encoding", "gzip,br"),)
    assert env_key("if-none-match") == "HTTP_IF_NONE_MATCH" and env_key("content-type") == "CONTENT_TYPE"


class Closing:
    def __init__(self, pieces: list[Any]) -> None:
        self.pieces = pieces
        self.closed = 0

    def __iter__(self) -> Iterator[Any]:
        return iter(self.pieces)

    def close(self) -> None:
        self.closed += 1


def test_capture_passes_pieces_through_and_keeps_them() -> None:
    src = Closing([b"ab", b"", b"cd"])
    cap = Capture(src, 10)
    assert list(cap) == [b"ab", b"", b"cd"]
    assert cap.complete and _body(cap) == b"abcd"
    cap.close()
    assert src.closed == 1


def test_capture_gives_up_past_the_limit_or_on_a_non_bytes_piece() -> None:
    big = Capture([b"12345", b"67890", b"x"], 10)
    assert list(big) == [b"12345", b"67890", b"x"]
    assert big.complete and _body(big) is None
    odd = Capture(["text"], 10)
    assert list(odd) == ["text"]
    assert _body(odd) is None


def test_capture_of_an_unfinished_iterable_is_not_a_body() -> None:
    cap = Capture([b"a", b"b"], 10)
    next(cap)
    assert not cap.complete and _body(cap) is None


def test_capture_closes_an_iterable_whose_iter_fails() -> None:
    class Broken(Closing):
        def __iter__(self) -> Iterator[Any]:
            raise RuntimeError("no")

    src = Broken([])
    with pytest.raises(RuntimeError):
        Capture(src, 10)
    assert src.closed == 1


def test_body_of_lists_tuples_and_others() -> None:
    assert _body([b"only"]) == b"only"
    assert _body((b"a", b"b")) == b"ab"
    assert _body([]) == b""
    assert _body([b"a", "b"]) is None
    assert _body(iter([b"a"])) is None  # a file or another iterable: not captured


def test_known_head_adds_age_once_per_second() -> None:
    k = Known(b"k", entry(initial_age=5.0), 0, 0, 0)
    h1 = k.head(NOW + 0.2)
    assert h1[-1] == ("Age", "5") and k.head(NOW + 0.9) == h1
    h1.append(("X-Changed", "by a protocol"))
    assert k.head(NOW + 0.9)[-1] == ("Age", "5")  # each answer has its own list
    assert k.head(NOW + 1.1)[-1] == ("Age", "6")
    assert k.expires == NOW + 60.0 - 5.0
    k.drop()  # out of the worker's copies: a URL memo pointing here finds it expired
    assert k.expires == 0.0 and k.entry.body == b""


# ---------------------------------------------------------------- the master's keeper
def settings(**values: Any) -> Any:
    return build([Layer("test", values)])


def test_keeper_is_off_without_a_size() -> None:
    assert CacheKeeper.create(settings()) is None
    CacheKeeper.check(settings())


def test_default_max_entry_shrinks_to_fit_but_an_explicit_one_must_fit() -> None:
    small = settings(response_cache=256 * 1024)
    assert CacheKeeper.max_entry(small) < respcache.DEFAULT_MAX_ENTRY
    keeper = CacheKeeper.create(small)
    assert keeper is not None
    try:
        assert keeper.cache.max_entry == CacheKeeper.max_entry(small)
    finally:
        keeper.close()
    with pytest.raises(CacheSizeError, match="--response-cache-max-entry 131072"):
        CacheKeeper.check(settings(response_cache=256 * 1024, response_cache_max_entry=128 * 1024))
    assert CacheKeeper.max_entry(settings(response_cache=64 << 20)) == respcache.DEFAULT_MAX_ENTRY


def test_keeper_stamps_generations_and_purges_when_one_is_left() -> None:
    keeper = CacheKeeper.create(settings(response_cache=1 << 20))
    assert keeper is not None
    c = keeper.cache
    try:
        keeper.forking(1)
        keeper.forked(101, 1)
        c.store(b"old", entry())  # (as worker 101 would, in generation 1)
        keeper.forking(2)  # a reload's new worker
        keeper.forked(201, 2)
        assert c.generation == 2
        c.store(b"new", entry())
        keeper.reaped(999)  # not one of ours: nothing happens
        assert c.stats().entries == 2
        keeper.reaped(101)  # the old generation is gone
        assert c.stats().entries == 1 and c.lookup(b"new", NOW) is not None
        keeper.forking(3)  # a reload that fails: its worker dies, generation 2 stays
        keeper.forked(301, 3)
        c.store(b"failed", entry())
        keeper.reaped(301)
        assert c.stats().entries == 1
        stats = keeper.stats()
        assert stats.entries == 1 and stats.capacity == c.stats().size and stats.stores == 3
    finally:
        keeper.close()

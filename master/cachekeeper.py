"""The master's side of the shared response cache (--response-cache; docs/caching.md).

The master maps the segment once, before the first fork (every worker inherits it, like the
metrics slots), stamps each fork with its generation (a worker stores and finds only its own
generation's entries, so the code a HUP loads starts with an empty cache while the old workers
drain on theirs), and drops a generation's entries once the last of its workers is reaped: after
a reload's commit, when the old generation has drained; after a failed reload, when the new one
has stopped. A binary upgrade's new master makes its own segment (the memfd is close-on-exec).

No gevent here; the master never reads or writes entries, it only purges and reads the counters.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from greenfork.master.respcache import ResponseCache
from greenfork.master.settings import Settings

if TYPE_CHECKING:
    from greenfork.metrics.frontdoor import CacheStats

log = logging.getLogger("greenfork.master")


class CacheSizeError(ValueError):
    """--response-cache and --response-cache-max-entry do not fit together (str(): the reason)."""


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n / 1024:g} KiB"


class CacheKeeper:
    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache
        self.live: dict[int, int] = {}  # pid -> generation of every forked worker not yet reaped
        self.stored: set[int] = set()  # generations that may have entries (forked since the last purge)

    @staticmethod
    def max_entry(settings: Settings) -> int:
        """--response-cache-max-entry, or, left at its default in a cache too small for it, the
        largest that fits (a quarter of the log, less headers). CacheSizeError when the sizes do
        not fit."""
        size, max_entry = settings.response_cache, settings.response_cache_max_entry
        try:
            _, _, capacity = ResponseCache.layout(size, 1)
            if settings.source_of("response_cache_max_entry") == "default":
                max_entry = max(1, min(max_entry, capacity // 4 - 4096))
            ResponseCache.layout(size, max_entry)
        except ValueError as e:
            raise CacheSizeError(f"--response-cache {size} with --response-cache-max-entry {max_entry}: "
                                 f"{e}") from None
        return max_entry

    @classmethod
    def check(cls, settings: Settings) -> None:
        """CacheSizeError when --response-cache and --response-cache-max-entry do not fit."""
        if settings.response_cache:
            cls.max_entry(settings)

    @classmethod
    def create(cls, settings: Settings) -> CacheKeeper | None:
        """The segment for these settings, or None when the cache is off. CacheSizeError when the
        sizes do not fit; OSError when the memory cannot be had."""
        if not settings.response_cache:
            return None
        max_entry = cls.max_entry(settings)
        try:
            cache = ResponseCache.create(settings.response_cache, max_entry)
        except OSError as e:
            raise OSError(e.errno, f"cannot map the response cache ({_mib(settings.response_cache)}): "
                                   f"{e.strerror}") from None
        st = cache.stats()
        log.info("Response cache: %s shared by every worker, responses up to %s", _mib(st.size),
                 _mib(cache.max_entry))
        return cls(cache)

    # ------------------------------------------------------------- the executor's calls
    def forking(self, generation: int) -> None:
        """Right before a fork: the child inherits this generation."""
        self.cache.generation = generation
        self.stored.add(generation)

    def forked(self, pid: int, generation: int) -> None:
        self.live[pid] = generation

    def reaped(self, pid: int) -> None:
        """A worker was reaped. Once only one generation is left, drop the others' entries."""
        if self.live.pop(pid, None) is None:
            return
        left = set(self.live.values())
        if len(left) != 1 or not self.stored - left:
            return
        (keep,) = left
        before = self.cache.stats().entries
        if self.cache.purge(keep):
            self.stored = left
            dropped = before - self.cache.stats().entries
            log.info("Response cache: generation %d alone serves; dropped %d entries of older "
                     "generations", keep, max(0, dropped))
        else:
            # A worker held the lock for a whole second (stopped by SIGSTOP?). The old entries
            # are invisible to this generation and CLOCK evicts them first; the next exit retries.
            log.warning("Response cache: could not drop the entries of generations other than %d "
                        "(the cache stayed locked); they are evicted as space is needed", keep)

    def stats(self) -> CacheStats:
        """For the metrics' front door: stores, evictions, bytes held, capacity (the segment's
        size), entries. (Called by the metrics service only, which has imported prometheus_client.)"""
        from greenfork.metrics.frontdoor import CacheStats

        st = self.cache.stats()
        return CacheStats(float(st.stores), float(st.evictions), float(st.bytes_used), float(st.size),
                          float(st.entries))

    def close(self) -> None:
        self.cache.close()

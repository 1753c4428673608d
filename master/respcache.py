"""The shared response cache's store: one shared-memory segment for every worker of a host.

CONCURRENCY RULE. Writers take an exclusive fcntl lock on the segment and never wait for it (a
store that finds it busy is skipped); readers take no lock: they copy an entry out of a circular
log and keep the copy only if the log's claim pointer shows that no writer began to overwrite it
meanwhile (a seqlock over the whole log), and its CRC-32 matches (the second guard).

Why this shape:
- The segment is a memfd the master maps (MAP_SHARED, pre-faulted) before forking, so every
  worker inherits it, like the metrics slots. Its pages are mapped by the master, hence counted as
  shared, never as a worker's own memory (USS), which --max-worker-memory watches.
- Entries are appended to a circular log of `capacity` bytes at ever-growing 64-bit log offsets
  (position = DATA + offset % capacity); an entry never straddles the end, the gap is a skip
  record. Before a writer touches bytes at log offset x + capacity (overwriting offset x) it moves
  `reserved` past them. A reader copies the entry at offset `off` and then re-reads `reserved`:
  if `reserved > off + capacity`, the copy may be torn and is dropped (a miss). Offsets are never
  reused, so a stale index slot can only point to a record whose stamp differs: dropped too.
- Eviction is CLOCK in its FIFO-with-reinsertion form: the writer evicts at the log's tail; an
  entry hit since it was written (its referenced byte, set by readers) and still fresh is copied to
  the head once instead (bounded per store), so hot entries survive a lap.
- The fcntl (POSIX record) lock belongs to a process: the kernel drops it when its holder dies, so
  a worker SIGKILLed mid-store cannot deadlock anyone. It leaves `dirty` (its pid) set; the next
  lock holder sees it, turns the half-written claim into a skip record, drops every index slot that
  no longer validates and recounts entries and bytes. A stopped holder (SIGSTOP) only makes other
  stores skip: no worker's hub ever blocks on the lock. The lock is held for one copy (at most
  max_entry plus a few second-chance copies), tens of microseconds.
- HUP: entries carry the generation of the worker that stored them and lookups only see their own
  generation, so the new code starts empty while the old generation keeps serving (and filling)
  its own entries; `purge(keep)` drops the old ones once it is gone. `clear()` drops everything.

The index is a table of 8-way groups (tag, log offset, length; a referenced byte per way) chosen by
the CRC-32 of the key; a full group drops its oldest way. No gevent here: the master imports it.

The path filter (after the index: a byte per slot, four slots per index way, a power of two) has
the slot of the CRC-32 of every request path that an entry was stored under set, of any generation
and host: a path whose slot is clear has no entry, so the request stage skips making the key and
looking it up (a URL seen the first time, and every POST, which would otherwise look for entries
to invalidate).
Writers set slots (under the lock) before the entry is indexed, so a reader that can find an entry
sees its slot; slots are never cleared under a live entry: purge() rebuilds the filter from the
entries it keeps, clear() empties it. Between those, slots of evicted entries stay set (a lookup
that finds nothing, as without the filter). A byte, not a bit, per slot: the reader's test is one
index, without a bit's shifts and masks (every uncached POST and new URL tests it: docs/caching.md),
for up to 6 more bytes per way than eight bits took.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import time
import zlib
from collections.abc import Callable
from typing import Final, NamedTuple

DEFAULT_MAX_ENTRY: Final = 256 * 1024  # HTTP.sys's default largest cached response
MAX_ENTRY_LIMIT: Final = 1 << 30  # a record's length is a 32-bit field
MIN_SIZE: Final = 64 * 1024
MAGIC: Final = 0x67665243_00000003  # "gfRC", layout version 3 (the path filter, a byte per slot)
WAYS: Final = 8
BYTES_PER_WAY: Final = 512  # one index way per 512 bytes of log: entries are rarely smaller
SECOND_CHANCES: Final = 8  # at most this many reinsertions per store bound the lock hold time
HEADER: Final = 4096
_ALIGN = 16
_SKIP = 1 << 63
_TAG = 1 << 63  # a used way's tag is never 0

# Header fields (uint64 each)
(H_MAGIC, H_SIZE, H_CAPACITY, H_GROUPS, H_MAX_ENTRY, H_RESERVED, H_HEAD, H_TAIL, H_DIRTY, H_SEQ,
 H_STORES, H_EVICTIONS, H_ENTRIES, H_BYTES, H_RECOVERIES) = range(15)

# A record: stamp (its log offset), crc of everything from `length` to the body's end, length,
# generation, flags, key/meta/body lengths, header and vary counts, stored_at, lifetime,
# initial_age; then the key, the meta (latin-1, NUL-separated: status, etag, last-modified, header
# names and values, vary pairs) and the body, padded to 16 bytes.
_REC = struct.Struct("<QIIIIIIIIIddd")
_REC_SIZE = _REC.size  # 72
_CRC_FROM = 12
_QQ = struct.Struct("<QQ")
_Q = struct.Struct("<Q")
FLAG_STUB: Final = 1


class Entry(NamedTuple):
    """One cached response. Header names and values are latin-1 str, as WSGI has them."""

    status: str  # the WSGI status line, "200 OK"
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float  # wall clock (time.time()) when stored
    lifetime: float  # freshness lifetime in seconds (RFC 9111 4.2.1)
    initial_age: float = 0.0  # its age when stored (corrected_initial_age, RFC 9111 4.2.3)
    etag: str | None = None
    last_modified: str | None = None
    vary: tuple[tuple[str, str | None], ...] = ()  # request-header name -> normalised value (None: absent)
    stub: bool = False  # only names the Vary headers of the variants stored under other keys

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.stored_at)

    def fresh(self, now: float) -> bool:
        return self.lifetime > self.age(now)


class CacheStats(NamedTuple):
    stores: int
    evictions: int
    entries: int
    bytes_used: int  # bytes of the live entries' records
    capacity: int  # bytes of log
    size: int  # bytes of the whole segment
    recoveries: int  # writers found dead inside the lock and cleaned up after


class CacheBusy(Exception):
    pass


class _Record(NamedTuple):
    pieces: tuple[bytes | bytearray, ...]  # written back to back at the record's offset
    length: int  # with the padding to 16 bytes


def _align(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


def _filter_bytes(nways: int) -> int:
    """Bytes of the path filter: four one-byte slots per index way, rounded up to a power of two
    (a mask)."""
    return 1 << (4 * nways - 1).bit_length()


def _tag(key: bytes) -> tuple[int, int]:
    crc = zlib.crc32(key)
    return _TAG | (len(key) & 0x7FFFFFFF) << 32 | crc, crc


class ResponseCache:
    """The store. Make one with create() in the master before forking; workers use the copy they
    inherit. `generation` is the master's generation at fork time (set it before forking)."""

    def __init__(self, fd: int, mm: mmap.mmap) -> None:
        self._fd = fd
        self._mm = mm
        self._h = memoryview(mm)[:HEADER].cast("Q")
        h = self._h
        if h[H_MAGIC] != MAGIC:
            raise ValueError("not a greenfork response cache segment")
        self._D = h[H_CAPACITY]
        self._groups = h[H_GROUPS]
        nways = self._groups * WAYS
        t0 = HEADER
        self._tags = memoryview(mm)[t0:t0 + 8 * nways].cast("Q")
        self._offs = memoryview(mm)[t0 + 8 * nways:t0 + 16 * nways].cast("Q")
        self._lens = memoryview(mm)[t0 + 16 * nways:t0 + 24 * nways].cast("Q")
        self._ref = memoryview(mm)[t0 + 24 * nways:t0 + 25 * nways]
        self._tags_at = t0
        self._ref_at = t0 + 24 * nways
        fbytes = _filter_bytes(nways)
        self._filter_at = t0 + 25 * nways
        self._filter = memoryview(mm)[self._filter_at:self._filter_at + fbytes]
        self._fmask = fbytes - 1
        self._data = h[H_SIZE] - self._D
        self.max_entry = h[H_MAX_ENTRY]
        self._max_record = min(self._D // 4, MAX_ENTRY_LIMIT + (1 << 20))
        self.generation = 0
        self.races = 0  # copies dropped because a writer reached them (this process)
        self.corrupt = 0  # copies that passed the claim check but failed the CRC (this process)
        self.errors = 0  # stores abandoned on an unexpected error (this process)
        self._hook: Callable[[str], None] | None = None  # tests: called at each step of a store
        self._check_claim = True  # tests: False shows that the CRC alone catches torn copies

    @staticmethod
    def layout(size_bytes: int, max_entry: int = DEFAULT_MAX_ENTRY) -> tuple[int, int, int]:
        """(index ways, log offset, log capacity) of a segment of size_bytes; ValueError when the
        sizes do not fit. Pure: the configuration check runs it before anything is mapped."""
        if size_bytes < MIN_SIZE:
            raise ValueError(f"response cache size {size_bytes} is below the minimum {MIN_SIZE} bytes")
        # per way: 25 bytes of index, up to 8 of path filter (_filter_bytes)
        nways = max(WAYS, (size_bytes - HEADER) // (BYTES_PER_WAY + 33) // WAYS * WAYS)
        data = (HEADER + 25 * nways + _filter_bytes(nways) + 4095) & ~4095
        capacity = (size_bytes - data) & ~(_ALIGN - 1)
        if not 0 < max_entry <= min(capacity // 4 - 4096, MAX_ENTRY_LIMIT):
            raise ValueError(f"response cache max entry {max_entry} must be between 1 and "
                             f"{max(0, min(capacity // 4 - 4096, MAX_ENTRY_LIMIT))} bytes "
                             "(a quarter of the cache, less headers)")
        return nways, data, capacity

    @classmethod
    def create(cls, size_bytes: int, max_entry: int = DEFAULT_MAX_ENTRY) -> ResponseCache:
        """Map a new segment of size_bytes (header, index and log together), pages pre-faulted."""
        nways, data, capacity = cls.layout(size_bytes, max_entry)
        total = data + capacity
        fd = os.memfd_create("greenfork-respcache", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, total)
            try:  # nobody can shrink it under a reader (SIGBUS)
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            except OSError:
                pass
            mm = mmap.mmap(fd, total, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        except BaseException:
            os.close(fd)
            raise
        h = memoryview(mm)[:HEADER].cast("Q")
        h[H_SIZE], h[H_CAPACITY], h[H_GROUPS], h[H_MAX_ENTRY] = total, capacity, nways // WAYS, max_entry
        h[H_MAGIC] = MAGIC
        h.release()
        return cls(fd, mm)

    # -- readers --------------------------------------------------------------------------------

    def lookup(self, key: bytes, now: float) -> Entry | None:
        """The fresh entry this generation stored under key, or None. Never blocks, never raises."""
        found = self.locate(key, now)
        return found[0] if found is not None else None

    def locate(self, key: bytes, now: float) -> tuple[Entry, int, int, int] | None:
        """lookup(), with where the entry was found: (entry, way, tag, offset). With those,
        current() later tells in two loads whether it is still the live entry of its key, so a
        worker can answer again from its own copy (workers/cachestage.py keeps a few)."""
        tag, crc = _tag(key)
        base = crc % self._groups * WAYS
        tags = self._tags[base:base + WAYS].tolist()
        if tag not in tags:
            return None
        for i, t in enumerate(tags):
            if t == tag:
                w = base + i
                off = self._offs[w]
                e = self._read(w, off, key, now)
                if e is not None:
                    return e, w, tag, off
        return None

    def may_hold_path(self, path: bytes) -> int:
        """Non-zero if an entry may be stored under request path `path` (some host, query, variant
        or generation); 0: certainly none. One CRC and one load, no lock."""
        return self._filter[zlib.crc32(path) & self._fmask]

    def path_filter(self) -> tuple[memoryview, int]:
        """The path filter's bytes and its mask, for a caller that inlines may_hold_path()."""
        return self._filter, self._fmask

    def holds(self, key: bytes) -> bool:
        """Whether an entry of some generation may be stored under key (its tag is in the index):
        a test without the lock before remove(). A tag collision can say yes wrongly, never no."""
        tag, crc = _tag(key)
        base = crc % self._groups * WAYS
        return tag in self._tags[base:base + WAYS].tolist()

    def current(self, way: int, tag: int, off: int) -> bool:
        """Is the entry that locate() found at (way, tag, off) still its key's live entry? Offsets
        are never reused, and a writer changes a way's offset only after clearing its tag (a new
        entry) or to move the same entry (a second chance). So with the tag read first, then the
        offset, a yes means the entry was live at the first load. Marks it referenced, as a hit
        in lookup() does (CLOCK)."""
        if self._tags[way] != tag or self._offs[way] != off:
            return False
        if not self._ref[way]:
            self._ref[way] = 1
        return True

    def _read(self, w: int, off: int, key: bytes, now: float) -> Entry | None:
        ln, h, D, mm = self._lens[w], self._h, self._D, self._mm
        if not _REC_SIZE <= ln <= self._max_record or off + D < h[H_RESERVED] or off + ln > h[H_HEAD]:
            return None
        pos = self._data + off % D
        # three copies (header; key and meta; body) so that the body is copied once, into the
        # object the caller sends: a second large allocation would cost more than the copy
        hdr = mm[pos:pos + _REC_SIZE]
        if len(hdr) != _REC_SIZE:
            return None
        (stamp, crc, length, gen, flags, klen, mlen, blen, nh, nv, stored_at, lifetime,
         initial_age) = _REC.unpack_from(hdr)
        if stamp != off or length != ln or gen != self.generation or klen != len(key) \
                or _REC_SIZE + klen + mlen + blen > ln:
            return None
        m0 = pos + _REC_SIZE
        km = mm[m0:m0 + klen + mlen]
        body = mm[m0 + klen + mlen:m0 + klen + mlen + blen]
        if self._hook is not None:
            self._hook("copied")
        if self._check_claim and off + D < h[H_RESERVED]:
            self.races += 1
            return None
        if not km.startswith(key):
            return None
        if zlib.crc32(body, zlib.crc32(km, zlib.crc32(memoryview(hdr)[_CRC_FROM:]))) != crc:
            self.corrupt += 1
            return None
        if not lifetime > initial_age + max(0.0, now - stored_at):
            return None
        parts = km[klen:].decode("latin-1").split("\0")
        if len(parts) != 3 + 2 * nh + 2 * nv:
            return None
        hv = parts[3:3 + 2 * nh]
        vary: tuple[tuple[str, str | None], ...] = ()
        if nv:
            vv = parts[3 + 2 * nh:]
            vary = tuple((n, v[1:] if v[:1] == "=" else None) for n, v in zip(vv[::2], vv[1::2], strict=True))
        if not self._ref[w]:
            self._ref[w] = 1
        return Entry._make((parts[0], tuple(zip(hv[::2], hv[1::2], strict=True)), body, stored_at, lifetime,
                            initial_age, parts[1] or None, parts[2] or None, vary, bool(flags & FLAG_STUB)))

    def stats(self) -> CacheStats:
        """A consistent snapshot when writers come and go; best effort if one died inside."""
        h = self._h
        deadline = time.monotonic() + 0.01
        while True:
            seq = h[H_SEQ]
            values = (h[H_STORES], h[H_EVICTIONS], h[H_ENTRIES], h[H_BYTES], self._D, h[H_SIZE],
                      h[H_RECOVERIES])
            if (seq % 2 == 0 and h[H_SEQ] == seq) or time.monotonic() > deadline:
                return CacheStats(*values)

    # -- writers --------------------------------------------------------------------------------

    def store(self, key: bytes, entry: Entry) -> bool:
        """Store entry under key for this generation, replacing any older one. False (nothing
        stored) when the body is over max_entry, a field cannot be stored, or another writer
        holds the lock: a cache fill is best effort and a worker never waits for one."""
        rec = self._encode(key, entry)
        if rec is None or not self._lock(0.0):
            return False
        try:
            self._begin()
            try:
                self._step("locked")
                off = self._append(rec, entry.stored_at)
                self._mark_path(key, self._filter)  # before the entry can be found (see above)
                self._index_put(key, off, rec.length)
                self._step("indexed")
                self._h[H_STORES] += 1
            except Exception:
                # a bug must not fail the request that tried to fill the cache: repair the segment
                # as after a dead writer (if even that fails, `dirty` stays set for the next one)
                self.errors += 1
                try:
                    self._recover()
                    self._end()
                except Exception:
                    pass
                return False
            self._end()
            return True
        finally:
            self._unlock()

    def remove(self, key: bytes, wait: float = 0.05) -> bool:
        """Drop key in every generation (RFC 9111 4.4 invalidation). False if the lock stayed busy."""
        if not self._lock(wait):
            return False
        try:
            self._begin()
            tag, crc = _tag(key)
            base = crc % self._groups * WAYS
            for w in range(base, base + WAYS):
                if self._tags[w] == tag and self._key_at(self._offs[w]) == key:
                    self._unindex(w)
            self._end()
            return True
        finally:
            self._unlock()

    def clear(self, wait: float = 1.0) -> bool:
        """Drop every entry of every generation. False if the lock stayed busy for `wait` s."""
        if not self._lock(wait):
            return False
        try:
            self._begin()
            n = len(self._tags)
            self._mm[self._tags_at:self._tags_at + 8 * n] = bytes(8 * n)
            self._mm[self._ref_at:self._ref_at + n] = bytes(n)
            self._mm[self._filter_at:self._filter_at + len(self._filter)] = bytes(len(self._filter))
            h = self._h
            h[H_ENTRIES] = h[H_BYTES] = 0
            h[H_TAIL] = h[H_HEAD]
            self._end()
            return True
        finally:
            self._unlock()

    def purge(self, keep_generation: int, wait: float = 1.0) -> bool:
        """Drop the entries of every generation but keep_generation (after a reload's old
        generation has exited). False if the lock stayed busy for `wait` s."""
        if not self._lock(wait):
            return False
        try:
            self._begin()
            fresh = bytearray(len(self._filter))  # the path filter of the entries kept
            for w, t in enumerate(self._tags.tolist()):
                if t:
                    if self._gen_at(self._offs[w]) != keep_generation:
                        self._unindex(w)
                    else:
                        self._mark_path(self._key_at(self._offs[w]), fresh)
            # byte by byte, each byte goes from the old bits to a subset that keeps every kept
            # entry's: a reader never misses a live entry meanwhile
            self._mm[self._filter_at:self._filter_at + len(fresh)] = fresh
            self._end()
            return True
        finally:
            self._unlock()

    def audit(self, wait: float = 1.0) -> tuple[int, int]:
        """(entries, bytes) recounted from the index, every way validated against its record:
        equals stats() when the store is consistent. For tests and debugging; holds the lock."""
        if not self._lock(wait):
            raise CacheBusy("the response cache lock stayed busy")
        try:
            self._begin()  # a writer that died inside is recovered first
            entries = nbytes = 0
            bad = []
            for w, t in enumerate(self._tags.tolist()):
                if t:
                    if not self._valid_way(w):
                        bad.append(w)
                    entries += 1
                    nbytes += self._lens[w]
            self._end()
            if bad:
                raise AssertionError(f"index ways {bad} do not match their records")
            return entries, nbytes
        finally:
            self._unlock()

    def close(self) -> None:
        for v in (self._h, self._tags, self._offs, self._lens, self._ref, self._filter):
            v.release()
        self._mm.close()
        os.close(self._fd)

    # -- internals (all below run with the lock held) -------------------------------------------

    def _encode(self, key: bytes, e: Entry) -> _Record | None:
        """The record's pieces and CRC, made before taking the lock (the body is not copied here:
        it goes once, from the caller's bytes into the log)."""
        if len(e.body) > self.max_entry:
            return None
        parts = [e.status, e.etag or "", e.last_modified or ""]
        for name, value in e.headers:
            parts += (name, value)
        for name, v in e.vary:
            parts += (name, "!" if v is None else "=" + v)
        meta_text = "\0".join(parts)
        if meta_text.count("\0") != len(parts) - 1:  # a NUL inside a field (never valid in HTTP)
            return None
        try:
            km = key + meta_text.encode("latin-1")
        except UnicodeEncodeError:
            return None
        length = _align(_REC_SIZE + len(km) + len(e.body))
        if length > self._max_record:
            return None
        hdr = bytearray(_REC_SIZE)
        _REC.pack_into(hdr, 0, 0, 0, length, self.generation, FLAG_STUB if e.stub else 0, len(key),
                       len(km) - len(key), len(e.body), len(e.headers), len(e.vary), e.stored_at, e.lifetime,
                       e.initial_age)
        crc = zlib.crc32(e.body, zlib.crc32(km, zlib.crc32(memoryview(hdr)[_CRC_FROM:])))
        struct.pack_into("<I", hdr, 8, crc)
        return _Record((hdr, km, e.body), length)

    def _lock(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
                return True
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.ENOLCK):
                    self.errors += 1  # a closed or broken segment: no store, no exception
                    return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.0005)  # in a worker, gevent's sleep: the hub keeps running

    def _unlock(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, 0)

    def _begin(self) -> None:
        h = self._h
        if h[H_DIRTY]:
            self._recover()
        h[H_DIRTY] = os.getpid()
        h[H_SEQ] += 1 if h[H_SEQ] % 2 == 0 else 2  # odd while inside (a dead writer left it odd)

    def _end(self) -> None:
        h = self._h
        h[H_SEQ] += 1
        h[H_DIRTY] = 0

    def _step(self, name: str) -> None:
        if self._hook is not None:
            self._hook(name)

    def _recover(self) -> None:
        """The last lock holder died (or failed) inside: make the log and the index whole again."""
        h = self._h
        h[H_RECOVERIES] += 1
        head, reserved = h[H_HEAD], h[H_RESERVED]
        if reserved > head:  # a claim never finished: skip it
            _QQ.pack_into(self._mm, self._data + head % self._D, head | _SKIP, reserved - head)
            h[H_HEAD] = reserved
        entries = nbytes = 0
        for w, t in enumerate(self._tags.tolist()):
            if t:
                if self._valid_way(w):
                    entries += 1
                    nbytes += self._lens[w]
                else:
                    self._tags[w] = 0
        h[H_ENTRIES], h[H_BYTES] = entries, nbytes

    def _valid_way(self, w: int) -> bool:
        h, off, ln = self._h, self._offs[w], self._lens[w]
        if not (h[H_TAIL] <= off and off + ln <= h[H_HEAD] and _REC_SIZE <= ln <= self._max_record):
            return False
        pos = self._data + off % self._D
        stamp, _, length, _, _, klen = _REC.unpack_from(self._mm, pos)[:6]
        if stamp != off or length != ln or _REC_SIZE + klen > ln:
            return False
        return _tag(self._mm[pos + _REC_SIZE:pos + _REC_SIZE + klen])[0] == self._tags[w]

    def _key_at(self, off: int) -> bytes:
        pos = self._data + off % self._D
        klen = _REC.unpack_from(self._mm, pos)[5]
        return self._mm[pos + _REC_SIZE:pos + _REC_SIZE + klen]

    def _gen_at(self, off: int) -> int:
        return int(_REC.unpack_from(self._mm, self._data + off % self._D)[3])

    def _place(self, need: int) -> int:
        """Where a record of `need` bytes goes: the head, or the next lap if it would straddle."""
        head = self._h[H_HEAD]
        rem = self._D - head % self._D
        return head + rem if rem < need else head

    def _append(self, rec: _Record, now: float) -> int:
        need, D, h = rec.length, self._D, self._h
        chances = SECOND_CHANCES
        while True:
            off = self._place(need)
            if off + need <= h[H_TAIL] + D:
                break
            chances -= self._evict_tail(now, chances > 0)
        self._write(off, rec)
        return off

    def _write(self, off: int, rec: _Record) -> None:
        h, n, mm = self._h, rec.length, self._mm
        head = h[H_HEAD]
        h[H_RESERVED] = off + n  # claim first: readers of what lies there now will drop their copy
        if off != head:
            _QQ.pack_into(mm, self._data + head % self._D, head | _SKIP, off - head)
        self._step("reserved")
        pos = self._data + off % self._D
        if self._hook is None:
            for piece in rec.pieces:
                mm[pos:pos + len(piece)] = piece
                pos += len(piece)
        else:
            whole = b"".join(rec.pieces)
            half = len(whole) // 2
            mm[pos:pos + half] = whole[:half]
            self._step("half")
            mm[pos + half:pos + len(whole)] = whole[half:]
        _Q.pack_into(mm, self._data + off % self._D, off)
        self._step("written")
        h[H_HEAD] = off + n

    def _evict_tail(self, now: float, second_chance: bool) -> int:
        """Retire the record at the tail; returns 1 if it was given a second chance instead."""
        h, D, mm = self._h, self._D, self._mm
        t = h[H_TAIL]
        pos = self._data + t % D
        stamp, second = _QQ.unpack_from(mm, pos)
        if stamp == t | _SKIP:
            h[H_TAIL] = t + second
            return 0
        if stamp != t or t >= h[H_HEAD]:  # cannot happen while the invariants hold: start over
            h[H_TAIL] = h[H_HEAD]
            self._recover()
            return 0
        (_, _, length, gen, _, klen, _, _, _, _, stored_at, lifetime,
         initial_age) = _REC.unpack_from(mm, pos)
        tag = _tag(mm[pos + _REC_SIZE:pos + _REC_SIZE + klen])[0]
        base = (tag & 0xFFFFFFFF) % self._groups * WAYS
        w = next((i for i in range(base, base + WAYS) if self._tags[i] == tag and self._offs[i] == t), -1)
        if w < 0:  # replaced or removed earlier: its bytes are already off the books
            h[H_TAIL] = t + length
            return 0
        fresh = lifetime > initial_age + max(0.0, now - stored_at)
        if second_chance and self._ref[w] and fresh and gen == self.generation:
            self._ref[w] = 0
            rec = _Record((mm[pos:pos + length],), length)
            h[H_TAIL] = t + length
            off = self._place(length)
            if off + length <= h[H_TAIL] + D:
                self._write(off, rec)
                self._offs[w] = off
                return 1
            self._unindex(w, eviction=True)
            return 1
        self._unindex(w, eviction=True)
        h[H_TAIL] = t + length
        return 0

    def _mark_path(self, key: bytes, bits: memoryview | bytearray) -> None:
        """Set the path filter's slot of the request path in key (cachestage.primary_key's second
        field, which variant and prefix keys keep; a key of another shape stands for itself)."""
        parts = key.split(b"\0", 3)
        bits[zlib.crc32(parts[2] if len(parts) == 4 else key) & self._fmask] = 1

    def _index_put(self, key: bytes, off: int, length: int) -> None:
        tag, crc = _tag(key)
        base = crc % self._groups * WAYS
        h, tags, offs = self._h, self._tags, self._offs
        free = oldest = -1
        for w in range(base, base + WAYS):
            t = tags[w]
            if t == tag and self._key_at(offs[w]) == key and self._gen_at(offs[w]) == self.generation:
                h[H_BYTES] -= self._lens[w]
                h[H_ENTRIES] -= 1
                free = w
                break
            if t == 0:
                if free < 0:
                    free = w
            elif oldest < 0 or offs[w] < offs[oldest]:
                oldest = w
        if free < 0:  # a full group: its oldest way goes
            free = oldest
            self._unindex(free, eviction=True)
        tags[free] = 0
        offs[free], self._lens[free], self._ref[free] = off, length, 0
        tags[free] = tag
        h[H_ENTRIES] += 1
        h[H_BYTES] += length

    def _unindex(self, w: int, eviction: bool = False) -> None:
        h = self._h
        self._tags[w] = 0
        h[H_ENTRIES] -= 1
        h[H_BYTES] -= self._lens[w]
        if eviction:
            h[H_EVICTIONS] += 1

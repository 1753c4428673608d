"""HPACK with memos: a header block that leaves the dynamic table alone is decoded (and a header
list encoded) once per table state, not once per stream.

A client repeats itself: h2load, browsers and gRPC stubs send stream after stream whose header
block is the same bytes (every field indexed once the first request put it in the table), and a
server answers with the same few fields. hpack decodes and encodes field by field in Python, the
largest part of a small HTTP/2 request's CPU. Given the same dynamic table, the same block decodes
to the same fields, and the same fields encode to the same block; a block that adds nothing to the
table leaves it as it was. So each coder keeps a small memo, keyed by the block (or the field list)
and valid for the table's `version`, which every change of the table (an entry added, a size
changed) moves on. Blocks that change the table are never remembered, and the memo is bounded in
entries and in the size of what it keeps (see MEMO_ENTRIES).
"""

from __future__ import annotations

from typing import Any, Final

from hpack import Decoder, Encoder
from hpack.table import HeaderTable

# Per connection and direction, at most MEMO_ENTRIES blocks of MEMO_BLOCK bytes (and what they
# decode from or to): a client that sends distinct blocks on purpose makes the memo cost a few KiB
# a connection, no more. A repeated block is a few bytes (its fields indexed).
MEMO_ENTRIES: Final = 16  # emptied when full
MEMO_BLOCK: Final = 256  # bytes: a larger header block is coded every time


class VersionedTable(HeaderTable):
    """hpack's dynamic table, counting its changes: equal versions, equal tables."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.version += 1
        HeaderTable.add(self, name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.version += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class MemoEncoder(Encoder):
    """hpack's Encoder; a field list already encoded under the current table is not encoded again."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = VersionedTable()
        self._memo: dict[Any, tuple[int, bytes]] = {}

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        table = self.header_table
        if type(headers) is not list or table.resized:  # (a size update is a change of its own)
            return Encoder.encode(self, headers, huffman)
        key = (tuple(headers), huffman)
        memo = self._memo
        hit = memo.get(key)
        version = table.version  # type: ignore[attr-defined]
        if hit is not None and hit[0] == version:
            return hit[1]
        block = Encoder.encode(self, headers, huffman)
        # nothing added to the table: repeatable
        if table.version == version and len(block) <= MEMO_BLOCK:  # type: ignore[attr-defined]
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            memo[key] = (version, block)
        return block


class MemoDecoder(Decoder):
    """hpack's Decoder; a block already decoded under the current table is not decoded again (raw
    decoding only: the bytes tuples h2 is given)."""

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size)
        self.header_table = VersionedTable()
        self._memo: dict[bytes, tuple[int, int, tuple[Any, ...]]] = {}

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if not raw or len(data) > MEMO_BLOCK:
            return Decoder.decode(self, data, raw)
        table = self.header_table
        version = table.version  # type: ignore[attr-defined]
        memo = self._memo
        hit = memo.get(data)
        # (the same table and the same limit on its size: the checks the block passed still hold)
        if hit is not None and hit[0] == version and hit[1] == self.max_allowed_table_size:
            return list(hit[2])
        headers = Decoder.decode(self, data, True)
        if table.version == version:  # type: ignore[attr-defined]
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            memo[bytes(data)] = (version, self.max_allowed_table_size, tuple(headers))
        return headers

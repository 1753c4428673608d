"""HPACK memos (workers/h2hpack.py): a remembered block or field list is only ever reused under the
table state it was made in. Checked against hpack's own coders on both sides of a conversation in
which header lists repeat, the dynamic table fills, evicts and changes size."""

from __future__ import annotations

import random

from hpack import Decoder, Encoder

from greenfork.workers.h2hpack import MEMO_BLOCK, MemoDecoder, MemoEncoder

Fields = list[tuple[bytes, bytes]]


def conversation(seed: int, n: int = 600) -> list[Fields]:
    """Header lists as a client or server sends them: a few that repeat, a Date-like value that
    changes now and then, and some one-off values that push entries through the table."""
    rnd = random.Random(seed)
    common: list[Fields] = [
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")],
        [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/up"), (b":authority", b"a"),
         (b"content-type", b"text/plain")],
        [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"13")],
    ]
    out: list[Fields] = []
    date = 0
    for _ in range(n):
        fields = list(rnd.choice(common))
        r = rnd.random()
        if r < 0.1:
            date += 1
        fields.append((b"date", b"Sun, 29 Nov 2026 %02d:00:00 GMT" % (date % 60)))
        if r > 0.9:
            fields.append((b"x-once", b"v" * rnd.randint(1, 300)))  # fills and evicts the table
        out.append(fields)
    return out


def test_the_memo_decoder_agrees_with_hpack_and_skips_repeats() -> None:
    for seed in range(3):
        enc = Encoder()
        memo, plain = MemoDecoder(65536), Decoder(65536)
        hits = 0
        for i, fields in enumerate(conversation(seed)):
            if i == 300:
                enc.header_table_size = 256  # a size update in the next block
                memo.max_allowed_table_size = plain.max_allowed_table_size = 4096
            block = enc.encode(fields)
            hits += block in memo._memo and memo._memo[block][0] == memo.header_table.version
            got = memo.decode(block, raw=True)
            assert got == plain.decode(block, raw=True) == fields, (seed, i)
            assert list(memo.header_table.dynamic_entries) == list(plain.header_table.dynamic_entries)
        assert hits > 150, hits  # blocks repeat under an unchanged table (the memo is used)


def test_a_remembered_block_means_something_else_once_the_table_changed() -> None:
    memo = MemoDecoder(65536)
    first = Encoder()
    setup = first.encode([(b"x-a", b"1")])  # literal with indexing: x-a: 1 becomes index 62
    indexed = first.encode([(b"x-a", b"1")])  # the same field, now one byte: index 62
    assert len(indexed) == 1
    memo.decode(setup, raw=True)
    assert memo.decode(indexed, raw=True) == [(b"x-a", b"1")]
    assert memo.decode(indexed, raw=True) == [(b"x-a", b"1")]  # (from the memo)
    memo.decode(Encoder().encode([(b"x-b", b"2")]), raw=True)  # a new entry takes index 62
    assert memo.decode(indexed, raw=True) == [(b"x-b", b"2")]


def test_the_memo_encoder_agrees_with_hpack_on_the_other_side() -> None:
    for seed in range(3):
        memo, plain_dec = MemoEncoder(), Decoder(65536)
        reused = 0
        for i, fields in enumerate(conversation(seed + 10)):
            if i == 200:
                memo.header_table_size = 512
            version = memo.header_table.version
            key = (tuple(fields), True)
            reused += key in memo._memo and memo._memo[key][0] == version and not memo.header_table.resized
            block = memo.encode(list(fields))
            assert plain_dec.decode(block, raw=True) == fields, (seed, i)
        assert reused > 150, reused


def test_big_blocks_and_text_decoding_are_not_remembered() -> None:
    memo = MemoDecoder(1 << 20)
    big = Encoder().encode([(b"x-big", b"y" * (MEMO_BLOCK * 2))])
    assert memo.decode(big, raw=True)[0][0] == b"x-big"
    small = Encoder().encode([(b":method", b"GET")])
    assert memo.decode(small) == [(":method", "GET")]
    assert memo._memo == {}


def test_distinct_blocks_never_grow_the_memo_past_its_bound() -> None:
    """A client sending a new block each time (fields that are never indexed, so the table stays
    as it is and every block may be remembered) keeps at most MEMO_ENTRIES of them."""
    from greenfork.workers.h2hpack import MEMO_ENTRIES

    memo = MemoDecoder(65536)
    enc = Encoder()
    sizes = []
    for i in range(200):
        block = enc.encode([(b"x-n", b"%d" % i, True)])  # (sensitive: never indexed)
        assert memo.decode(block, raw=True) == [(b"x-n", b"%d" % i)]
        sizes.append(len(memo._memo))
    assert max(sizes) <= MEMO_ENTRIES and memo.header_table.version == 0

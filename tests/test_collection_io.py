"""File content I/O: FileReader, FileWriter, packing, and atomic replacement.

Why these matter:
* ``FileReader`` serves GET with Range: any offset/length must map to the
  right block bytes across segment and block boundaries, sequential
  downloads of big blocks must stream (``read_chunks``, one chunk of memory)
  while random access goes through ``get`` (the block cache), and a corrupt
  block must surface as ``StorageFailure`` -- never as wrong bytes.
* ``FileWriter`` builds a *detached* file, so an aborted upload or a block
  store failure in the background leaves the old content in place.
* ``ChangeSet.flush`` failing must leave a tree that ``rollback`` restores.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Iterator

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from davcoll.collection import (
    BufferBlock,
    ByteBudget,
    ChangeSet,
    FileReader,
    FileWriter,
    StorageFailure,
)
from davcoll.collection.io import STREAM_THRESHOLD
from davcoll.collection.segments import size_of
from davcoll.collection.buffers import pack_and_store
from davcoll.manifest import MAX_BLOCK_SIZE, parse_manifest
from davcoll.storage.blocks import BlockCorrupt, BlockNotFound, BlockStoreUnavailable, bare_locator
from davcoll.storage.memory_blocks import MemoryBlockStore
from davcoll.testing.flaky_blocks import FlakyBlockStore
from tree_helpers import buffers_of, open_read
from test_collection_tree import FLUSHER, build_manifest, commit, contents, make_tree, read_all


class StreamingStore(MemoryBlockStore):
    """A memory store whose ``read_chunks`` really streams, keeping the
    contract: the last piece is yielded only after the md5 checked out."""

    def read_chunks(self, locator: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        key = bare_locator(locator)
        with self._lock:
            data = self._blocks.get(key)
        if data is None:
            raise BlockNotFound(key)
        h = hashlib.md5()
        for i in range(0, len(data), chunk_size):
            piece = data[i : i + chunk_size]
            h.update(piece)
            if i + chunk_size >= len(data) and f"{h.hexdigest()}+{len(data)}" != key:
                raise BlockCorrupt(key)
            yield piece


def rand(n: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (fast for MiB sizes)."""
    out = bytearray()
    block = hashlib.sha512(b"%d" % seed).digest()
    while len(out) < n:
        block = hashlib.sha512(block).digest()
        out += block * 64
    return bytes(out[:n])


# ------------------------------------------------------------ random access


@st.composite
def segment_files(draw):
    """Blocks of assorted sizes and a file made of slices of them (some
    still in memory, some packed), plus the bytes the file must read as."""
    store = MemoryBlockStore()
    blocks = [os.urandom(draw(st.integers(1, 300))) for _ in range(draw(st.integers(1, 4)))]
    locs = [store.put(b) for b in blocks]
    segs: list[tuple] = []
    expected = bytearray()
    for _ in range(draw(st.integers(0, 8))):
        i = draw(st.integers(0, len(blocks) - 1))
        a = draw(st.integers(0, len(blocks[i]) - 1))
        b = draw(st.integers(a + 1, len(blocks[i])))
        kind = draw(st.sampled_from(["loc", "buffer", "packed"]))
        if kind == "loc":
            segs.append((locs[i], a, b - a))
        else:
            buf = BufferBlock(None, blocks[i])
            if kind == "packed":
                pack_and_store([BufferBlock(None, b"pad" * draw(st.integers(0, 5))), buf], store, FLUSHER)
            segs.append((buf, a, b - a))
        expected += blocks[i][a:b]
    return store, tuple(segs), bytes(expected)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=segment_files(),
    ops=st.lists(
        st.tuples(st.sampled_from([io.SEEK_SET, io.SEEK_CUR, io.SEEK_END]), st.integers(-400, 400), st.integers(-1, 500)),
        max_size=12,
    ),
)
def test_random_access_matches_a_bytes_model(case, ops):
    store, segs, expected = case
    reader = FileReader(segs, store)
    model = io.BytesIO(expected)
    assert reader.size == len(expected) and reader.seekable() and reader.readable()
    for whence, off, n in ops:
        target = {io.SEEK_SET: 0, io.SEEK_CUR: model.tell(), io.SEEK_END: len(expected)}[whence] + off
        if target < 0:
            with pytest.raises(ValueError):
                reader.seek(off, whence)
            continue
        assert reader.seek(off, whence) == model.seek(off, whence)
        assert reader.read(n) == model.read(n)
        assert reader.tell() == model.tell()
    reader.seek(0)
    assert reader.read() == expected
    assert reader.read(10) == b""


def test_reader_through_buffered_io():
    store = MemoryBlockStore()
    blocks = [rand(5000, i) for i in range(3)]
    segs = tuple((store.put(b), 100, 4000) for b in blocks)
    expected = b"".join(b[100:4100] for b in blocks)
    with io.BufferedReader(FileReader(segs, store), buffer_size=777) as r:
        assert r.read(4500) == expected[:4500]
        r.seek(3999)
        assert r.read(2) == expected[3999:4001]
        assert r.read() == expected[4001:]


def test_empty_file_reads_empty():
    r = FileReader((), MemoryBlockStore())
    assert r.size == 0 and r.read() == b"" and r.read(5) == b""
    r.seek(100)
    assert r.read() == b""


def test_buffered_segments_do_not_touch_the_store():
    store = MemoryBlockStore()
    buf = BufferBlock(None, b"in memory only")
    r = FileReader(((buf, 3, 6),), store)
    assert r.read() == b"memory"
    assert store.gets == 0


# ---------------------------------------------------- streaming vs get path


@pytest.fixture(scope="module")
def big_blocks() -> tuple[FlakyBlockStore, StreamingStore, list[str], list[bytes]]:
    """Three whole 8 MiB+ blocks (the streaming threshold) and a small one."""
    inner = StreamingStore()
    sizes = [STREAM_THRESHOLD, STREAM_THRESHOLD + 12345, STREAM_THRESHOLD + 1]
    blocks = [rand(n, i) for i, n in enumerate(sizes)] + [b"small tail block"]
    locs = [inner.put(b) for b in blocks]
    return FlakyBlockStore(inner), inner, locs, blocks


def test_sequential_reads_stream_whole_blocks(big_blocks):
    store, _, locs, blocks = big_blocks
    segs = tuple((loc, 0, len(b)) for loc, b in zip(locs, blocks))
    expected = b"".join(blocks)
    before = dict(store.calls)
    r = FileReader(segs, store)
    got = bytearray()
    while True:
        piece = r.read(1 << 20)
        if not piece:
            break
        got += piece
    assert got == expected
    assert store.calls["read_chunks"] - before["read_chunks"] == 3  # one stream per big block
    assert store.calls["get"] - before["get"] == 1  # the small block only


def test_random_reads_use_get_and_stream_restarts_only_at_block_start(big_blocks):
    store, _, locs, blocks = big_blocks
    segs = tuple((loc, 0, len(b)) for loc, b in zip(locs[:2], blocks[:2]))
    expected = blocks[0] + blocks[1]
    r = FileReader(segs, store)
    before = dict(store.calls)
    r.seek(5_000_000)  # into the middle of a block, no stream open
    assert r.read(1000) == expected[5_000_000:5_001_000]
    assert store.calls["get"] - before["get"] == 1
    assert store.calls["read_chunks"] == before["read_chunks"]
    r.seek(12)  # same block again: served from the reader's held block
    assert r.read(10) == expected[12:22]
    assert store.calls["get"] - before["get"] == 1

    # Start at offset 0 of the second block: streaming; forward seeks keep
    # the same stream; a seek back starts a new one.
    r.seek(len(blocks[0]))
    assert r.read(100) == blocks[1][:100]
    r.seek(3 << 20, io.SEEK_CUR)
    assert r.read(100) == blocks[1][(3 << 20) + 100 : (3 << 20) + 200]
    assert store.calls["read_chunks"] - before["read_chunks"] == 1
    r.seek(len(blocks[0]))
    assert r.read(5) == blocks[1][:5]
    assert store.calls["read_chunks"] - before["read_chunks"] == 2


def test_partial_block_segments_never_stream(big_blocks):
    store, _, locs, blocks = big_blocks
    segs = ((locs[1], 1, len(blocks[1]) - 1),)
    before = dict(store.calls)
    assert FileReader(segs, store).read() == blocks[1][1:]
    assert store.calls["read_chunks"] == before["read_chunks"]
    assert store.calls["get"] - before["get"] == 1


def test_stream_threshold_is_a_parameter():
    store = FlakyBlockStore(StreamingStore())
    data = rand(3000)
    loc = store.put(data)
    assert FileReader(((loc, 0, 3000),), store, stream_threshold=1000).read() == data
    assert store.calls["read_chunks"] == 1 and store.calls["get"] == 0


# ------------------------------------------------------------ failures on read


def test_corrupt_block_is_a_storage_failure_not_wrong_bytes():
    inner = StreamingStore()
    big = rand(STREAM_THRESHOLD + 5, 7)
    small = b"small and corrupt"
    big_loc, small_loc = inner.put(big), inner.put(small)
    inner.corrupt(big_loc)
    inner.corrupt(small_loc)
    # Random-access path (get verifies).
    with pytest.raises(StorageFailure):
        FileReader(((small_loc, 0, len(small)),), inner).read()
    # Streaming path: the stream aborts before its last (unverified) piece.
    r = FileReader(((big_loc, 0, len(big)),), inner)
    with pytest.raises(StorageFailure):
        r.read()
    r = FileReader(((big_loc, 0, len(big)),), inner)
    got = bytearray()
    with pytest.raises(StorageFailure):
        while True:
            piece = r.read(1 << 20)
            if not piece:
                break
            got += piece
    assert len(got) < len(big)  # truncated, never completed with bad data


def test_store_errors_and_broken_streams_are_storage_failures(big_blocks):
    _, inner, locs, blocks = big_blocks
    store = FlakyBlockStore(inner)
    store.fail_next("get", error=BlockStoreUnavailable)
    with pytest.raises(StorageFailure):
        FileReader(((locs[3], 0, len(blocks[3])),), store).read()
    store.break_streams(after_bytes=2 << 20)
    with pytest.raises(StorageFailure):
        FileReader(((locs[0], 0, len(blocks[0])),), store).read()
    assert FileReader(((locs[0], 0, len(blocks[0])),), store).read() == blocks[0]


def test_short_block_is_a_storage_failure_not_a_hang():
    class Liar(MemoryBlockStore):
        def get(self, locator: str) -> bytes:
            return b"short"

    r = FileReader((("0" * 32 + "+100", 0, 100),), Liar())
    with pytest.raises(StorageFailure):
        r.read()


# ----------------------------------------------------------------- FileWriter


def test_writer_splits_blocks_stores_in_background_and_returns_segments():
    store = MemoryBlockStore()
    budget = ByteBudget(1 << 20)
    data = rand(10_000, 3)
    w = FileWriter(store, FLUSHER, budget, block_size=1024)
    for i in range(0, len(data), 333):
        assert w.write(data[i : i + 333]) == len(data[i : i + 333])
    assert w.bytes_written == len(data)
    segs = w.close()
    assert size_of(segs) == len(data)
    # Larger than one block: it streamed, so nothing is left in memory and
    # the short last block is stored too (9 full blocks + the tail).
    assert buffers_of(segs) == []
    assert store.puts == 10
    assert budget.used == 0
    assert FileReader(segs, store).read() == data
    with pytest.raises(ValueError):
        w.close()
    with pytest.raises(ValueError):
        w.write(b"more")


def test_small_file_stays_buffered_for_packing():
    store = MemoryBlockStore()
    budget = ByteBudget(1 << 20)
    w = FileWriter(store, FLUSHER, budget, block_size=1024)
    w.write(b"a" * 600)
    w.write(b"b" * 400)
    segs = w.close()
    assert len(buffers_of(segs)) == 1 and store.puts == 0
    assert budget.used == 1000
    pack_and_store(buffers_of(segs), store, FLUSHER)
    assert budget.used == 0 and store.puts == 1
    assert FileReader(segs, store).read() == b"a" * 600 + b"b" * 400


def test_writer_of_nothing_is_an_empty_file():
    budget = ByteBudget(100)
    w = FileWriter(MemoryBlockStore(), FLUSHER, budget)
    assert w.close() == ()
    assert budget.used == 0


def test_pack_and_store_packs_small_buffers_and_stores_big_ones_alone():
    store = MemoryBlockStore()
    third = MAX_BLOCK_SIZE // 3  # three of these do not fit one block
    half = MAX_BLOCK_SIZE // 2  # stored alone
    bufs = [BufferBlock(None, bytes([i]) * n) for i, n in enumerate([third, third, third, half, 10, 20])]
    expected = [bytes(b.data) for b in bufs]
    pack_and_store(bufs, store, FLUSHER)
    assert store.puts == 3
    locs = {b.locator for b in bufs}
    assert len(locs) == 3
    for b, data in zip(bufs, expected):
        assert b.data is None and b.locator
        assert FileReader(((b, 0, len(data)),), store).read() == data


# ----------------------------------------------------- atomic replacement


@pytest.fixture
def tree_with_file():
    store = FlakyBlockStore(MemoryBlockStore())
    text = build_manifest(store.inner, {"f": b"old content", "d/g": b"g"})  # type: ignore[arg-type]
    budget = ByteBudget(64 << 10)
    return make_tree(text, store=store, budget=budget), text, store, budget  # type: ignore[arg-type]


def test_aborted_writer_leaves_old_content(tree_with_file):
    tree, text, store, budget = tree_with_file
    w = FileWriter(store, FLUSHER, budget, block_size=4096)
    w.write(rand(50_000))
    w.abort()
    assert budget.used == 0
    assert read_all(tree, "f") == b"old content" and tree.marshal() == text
    w2 = tree.new_writer()
    w2.write(b"partial")
    w2.abort()
    assert budget.used == 0 and read_all(tree, "f") == b"old content"


def test_background_put_failure_leaves_old_content(tree_with_file):
    tree, text, store, budget = tree_with_file
    store.fail_next("put")
    w = FileWriter(store, FLUSHER, budget, block_size=4096)
    with pytest.raises(StorageFailure):
        for i in range(40):
            w.write(rand(1000, i))  # the failure surfaces during write ...
        w.close()  # ... or at the latest here
    w.abort()
    assert budget.used == 0
    assert read_all(tree, "f") == b"old content" and tree.marshal() == text


def test_failure_at_close_aborts_the_writer(tree_with_file):
    tree, _, store, budget = tree_with_file
    store.set_latency("put", 0.05)
    store.fail_next("put")
    w = FileWriter(store, FLUSHER, budget, block_size=4096)
    w.write(rand(4096))  # one block in flight, fails after the write returned
    with pytest.raises(StorageFailure):
        w.close()
    store.reset()
    assert budget.used == 0
    assert read_all(tree, "f") == b"old content"


@pytest.mark.parametrize("mode", ["fail_next", "fail_after", "second_put"])
def test_flush_failure_is_a_storage_failure_and_rollback_restores(tree_with_file, mode, monkeypatch):
    tree, text, store, budget = tree_with_file
    before = contents(tree)
    ch = ChangeSet()
    tree.write_at(ch, "f", 0, b"NEW")
    tree.write_at(ch, "d/new", 0, b"new file")
    tree.write_at(ch, "big", 0, bytes(MAX_BLOCK_SIZE // 2))  # its own block, stored first
    tree.rename(ch, "d/g", "g2")
    if mode == "fail_next":
        store.fail_next("put")
    elif mode == "fail_after":
        store.fail_after("put")  # stored, but the answer was lost
    else:
        # The big block is stored, then the pack of small ones fails.
        real_put = store.inner.put
        calls: list[int] = []

        def second_fails(data):
            calls.append(1)
            if len(calls) == 2:
                raise BlockStoreUnavailable("second put")
            return real_put(data)

        monkeypatch.setattr(store.inner, "put", second_fails)
    with pytest.raises(StorageFailure):
        ch.flush()
    ch.rollback()
    ch.release()
    store.reset()
    monkeypatch.undo()
    assert contents(tree) == before
    assert tree.marshal() == text
    # The same change succeeds once the store is healthy again.
    ch = ChangeSet()
    tree.write_at(ch, "f", 0, b"NEW")
    text2 = commit(tree, ch, text)
    assert read_all(make_tree(text2, store=store.inner), "f") == b"NEW content"  # type: ignore[arg-type]


def test_reader_of_a_snapshot_is_not_disturbed_by_an_overwrite(tree_with_file):
    tree, text, store, budget = tree_with_file
    r = open_read(tree, "f")
    assert r.read(4) == b"old "
    ch = ChangeSet()
    w = tree.new_writer()
    w.write(b"brand new bytes")
    segs = w.close()
    pack_and_store(buffers_of(segs), store, FLUSHER)
    tree.put_file(ch, "f", segs)
    commit(tree, ch, text)
    assert r.read() == b"content"
    assert read_all(tree, "f") == b"brand new bytes"
    assert budget.used == 0


def test_manifest_after_commit_references_only_stored_blocks(tree_with_file):
    tree, text, store, _ = tree_with_file
    ch = ChangeSet()
    w = FileWriter(store, FLUSHER, tree.budget, block_size=1000)
    w.write(rand(3500))
    tree.put_file(ch, "multi", w.close())  # tail left for flush to store
    text2 = commit(tree, ch, text)
    for _, segs in parse_manifest(text2).files():
        for loc, _, _ in segs:
            assert store.inner.exists(loc)  # type: ignore[attr-defined]


def test_writer_gives_up_when_the_budget_stays_full():
    """Uploads never hang forever behind others' buffers: after
    ``budget_wait`` they fail with a retryable BusyError (503)."""
    from davcoll.collection import BusyError

    budget = ByteBudget(1000)
    budget.acquire(1000)  # someone else holds everything
    w = FileWriter(MemoryBlockStore(), FLUSHER, budget, block_size=4096)
    w.budget_wait = 0.2
    with pytest.raises(BusyError):
        w.write(b"x" * 100)
    w.abort()
    budget.release(1000)
    assert budget.used == 0

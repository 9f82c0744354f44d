"""Streaming block writers: the local one writes while hashing; the buffered
default serves stores that need the whole block first (Keep)."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from davcoll.storage.blocks import BlockCache, BlockStoreUnavailable, BlockTooLarge, MAX_BLOCK_SIZE
from davcoll.storage.local_blocks import LocalBlockStore
from davcoll.storage.memory_blocks import MemoryBlockStore


def _stream(writer, data: bytes, chunk: int = 1 << 20) -> str:
    mv = memoryview(data)
    for i in range(0, len(data), chunk):
        writer.write(mv[i : i + chunk])
    return writer.finish()


@pytest.mark.parametrize("size", [0, 1, (1 << 20) + 7, 5 << 20])
def test_local_writer_stores_exact_bytes(tmp_path, size):
    store = LocalBlockStore(tmp_path)
    data = os.urandom(size)
    released = []
    loc = _stream(store.open_writer(released.append), data)
    assert loc == f"{hashlib.md5(data).hexdigest()}+{size}"
    assert store.get(loc) == data
    assert sum(released) == size
    assert not [n for n in os.listdir(tmp_path / "blocks" / "tmp")]


def test_local_writer_duplicate_and_abort(tmp_path):
    store = LocalBlockStore(tmp_path)
    data = os.urandom(3000)
    a = _stream(store.open_writer(), data)
    b = _stream(store.open_writer(), data)
    assert a == b and store.get(a) == data
    w = store.open_writer()
    w.write(b"partial")
    w.abort()
    assert os.listdir(tmp_path / "blocks" / "tmp") == []
    assert [loc for loc, _, _ in store.iter_blocks()] == [a]


def test_local_writer_refuses_oversize(tmp_path):
    store = LocalBlockStore(tmp_path, fsync=False)
    w = store.open_writer()
    w.write(bytes(MAX_BLOCK_SIZE))
    with pytest.raises(BlockTooLarge):
        w.write(b"x")
    w.abort()


def test_local_writer_disk_error_is_unavailable_and_cleans_up(tmp_path, monkeypatch):
    store = LocalBlockStore(tmp_path)
    w = store.open_writer()
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    w.write(b"x" * 1000)
    with pytest.raises(BlockStoreUnavailable):
        w.finish()
    monkeypatch.setattr(os, "write", real_write)
    assert os.listdir(tmp_path / "blocks" / "tmp") == []


def test_buffered_writer_via_cache_view():
    mem = MemoryBlockStore()
    view = BlockCache(MemoryBlockStore()).view(mem)
    released = []
    data = os.urandom(5000)
    loc = _stream(view.open_writer(released.append), data, chunk=1000)
    assert mem.get(loc) == data and released == [5000]

"""Block stores: the shared cache, the local directory store, the flaky wrapper."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from davcoll.storage import local_blocks
from davcoll.storage.blocks import (
    EMPTY_BLOCK,
    MAX_BLOCK_SIZE,
    BlockCache,
    BlockCorrupt,
    BlockNotFound,
    BlockStore,
    BlockStoreUnavailable,
    BlockTooLarge,
)
from davcoll.storage.local_blocks import LocalBlockStore
from davcoll.storage.memory_blocks import MemoryBlockStore
from davcoll.testing.flaky_blocks import FlakyBlockStore


def loc_of(data: bytes) -> str:
    return f"{hashlib.md5(data).hexdigest()}+{len(data)}"


def wait_until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


class GatedStore(BlockStore):
    """A store whose ``get`` blocks until released: makes "many readers
    arrive during one fetch" deterministic."""

    def __init__(self, inner: BlockStore, error: Exception | None = None) -> None:
        self.inner = inner
        self.error = error
        self.release = threading.Event()
        self.gets = 0
        self.lock = threading.Lock()

    def put(self, data):
        return self.inner.put(data)

    def get(self, locator):
        with self.lock:
            self.gets += 1
        assert self.release.wait(10)
        if self.error is not None:
            raise self.error
        return self.inner.get(locator)

    def exists(self, locator):
        return self.inner.exists(locator)


# ---------------------------------------------------------------------------
# BlockCache


@pytest.fixture
def mem() -> MemoryBlockStore:
    return MemoryBlockStore()


def test_cache_hit_after_miss(mem):
    loc = mem.put(b"abc" * 1000)
    cache = BlockCache(mem)
    assert cache.get(loc) == b"abc" * 1000
    assert cache.get(loc + "+Asig@12345678") == b"abc" * 1000  # hints ignored
    assert mem.gets == 1
    st = cache.stats()
    assert (st["hits"], st["misses"], st["fetches"], st["bytes_cached"]) == (1, 1, 1, 3000)


def test_cache_empty_block_needs_no_fetch(mem):
    cache = BlockCache(mem)
    assert cache.get(EMPTY_BLOCK) == b""
    assert mem.gets == 0


def test_cache_lru_eviction_order_and_byte_bound(mem):
    blocks = [bytes([i]) * 100 for i in range(5)]
    locs = [mem.put(b) for b in blocks]
    cache = BlockCache(mem, max_bytes=300)
    for loc in locs[:3]:
        cache.get(loc)
    cache.get(locs[0])  # 0 becomes most recent; 1 is now the LRU
    cache.get(locs[3])  # evicts 1
    assert cache.stats()["evictions"] == 1
    before = mem.gets
    cache.get(locs[0])
    cache.get(locs[2])
    cache.get(locs[3])
    assert mem.gets == before  # all still cached
    cache.get(locs[1])  # miss: was evicted; evicts 0 (LRU now)
    assert mem.gets == before + 1
    st = cache.stats()
    assert st["bytes_cached"] == 300 and st["blocks_cached"] == 3
    assert st["evictions"] == 2


def test_cache_evicts_several_for_a_big_block(mem):
    small = [mem.put(bytes([i]) * 100) for i in range(3)]
    big = mem.put(b"B" * 250)
    cache = BlockCache(mem, max_bytes=300)
    for loc in small:
        cache.get(loc)
    cache.get(big)
    st = cache.stats()
    assert st["evictions"] == 3 and st["bytes_cached"] == 250


def test_cache_block_larger_than_budget_is_returned_not_cached(mem):
    keep = mem.put(b"k" * 50)
    loc = mem.put(b"x" * 500)
    cache = BlockCache(mem, max_bytes=100)
    cache.get(keep)
    assert cache.get(loc) == b"x" * 500
    assert cache.get(loc) == b"x" * 500
    st = cache.stats()
    assert st["fetches"] == 3 and st["bytes_cached"] == 50 and st["evictions"] == 0


def test_cache_single_flight_many_threads(mem):
    data = os.urandom(100_000)
    loc = mem.put(data)
    gated = GatedStore(mem)
    cache = BlockCache(gated)
    n = 24
    results: list = [None] * n

    def reader(i: int) -> None:
        results[i] = cache.get(loc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    wait_until(lambda: cache.stats()["misses"] == n)
    gated.release.set()
    for t in threads:
        t.join(10)
    assert gated.gets == 1
    assert all(r is results[0] for r in results) and results[0] == data
    st = cache.stats()
    assert st["fetches"] == 1 and st["joined"] == n - 1


def test_cache_single_flight_shares_the_error_and_does_not_cache_it(mem):
    loc = mem.put(b"payload")
    boom = BlockStoreUnavailable("keep is down")
    gated = GatedStore(mem, error=boom)
    cache = BlockCache(gated)
    n = 10
    errors: list = [None] * n

    def reader(i: int) -> None:
        try:
            cache.get(loc)
        except BlockStoreUnavailable as exc:
            errors[i] = exc

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    wait_until(lambda: cache.stats()["misses"] == n)
    gated.release.set()
    for t in threads:
        t.join(10)
    assert gated.gets == 1
    assert all(e is boom for e in errors)
    st = cache.stats()
    assert st["bytes_cached"] == 0 and st["fetch_errors"] == 1
    gated.error = None  # the store recovers: the next get fetches again
    assert cache.get(loc) == b"payload"
    assert gated.gets == 2


def test_cache_failed_fetch_not_cached(mem):
    loc = mem.put(b"data")
    flaky = FlakyBlockStore(mem)
    cache = BlockCache(flaky)
    flaky.fail_next("get", 1, BlockCorrupt)
    with pytest.raises(BlockCorrupt):
        cache.get(loc)
    assert cache.get(loc) == b"data"
    assert flaky.calls["get"] == 2


def test_cache_interrupted_fetch_releases_joiners(mem):
    loc = mem.put(b"data")

    class Interrupting(GatedStore):
        def get(self, locator):
            super().get(locator)
            raise KeyboardInterrupt

    gated = Interrupting(mem)
    cache = BlockCache(gated)
    outcome: dict = {}

    def leader() -> None:
        try:
            cache.get(loc)
        except KeyboardInterrupt:
            outcome["leader"] = "interrupted"

    def joiner() -> None:
        try:
            cache.get(loc)
        except BlockStoreUnavailable:
            outcome["joiner"] = "unavailable"

    t1 = threading.Thread(target=leader)
    t1.start()
    wait_until(lambda: gated.gets == 1)
    t2 = threading.Thread(target=joiner)
    t2.start()
    wait_until(lambda: cache.stats()["joined"] == 1)
    gated.release.set()
    t1.join(10)
    t2.join(10)
    assert outcome == {"leader": "interrupted", "joiner": "unavailable"}


def test_cache_put_caches_only_small_blocks(mem):
    cache = BlockCache(mem)
    buf = bytearray(b"s" * 1000)
    small = cache.put(buf)
    buf[:] = b"X" * 1000  # the caller reuses its buffer
    large = cache.put(b"L" * ((1 << 20) + 1))
    assert cache.get(small) == b"s" * 1000
    assert mem.gets == 0
    cache.get(large)
    assert mem.gets == 1
    assert cache.stats()["bytes_cached"] == 1000 + (1 << 20) + 1


def test_cache_read_chunks_hit_slices_miss_streams_uncached(mem):
    data = os.urandom(10_000)
    loc = mem.put(data)
    cache = BlockCache(mem)
    assert b"".join(cache.read_chunks(loc, 3000)) == data
    st = cache.stats()
    assert st["streamed"] == 1 and st["bytes_cached"] == 0
    cache.get(loc)
    gets = mem.gets
    pieces = list(cache.read_chunks(loc, 3000))
    assert [len(p) for p in pieces] == [3000, 3000, 3000, 1000]
    assert b"".join(pieces) == data and mem.gets == gets
    assert cache.get_range(loc, 9990, 100) == data[9990:]


def test_cache_exists_passes_through(mem):
    loc = mem.put(b"here")
    cache = BlockCache(mem)
    assert cache.exists(loc)
    assert not cache.exists(loc_of(b"nowhere"))


def test_cache_concurrent_mixed_load_stays_within_budget(mem):
    locs = [mem.put(bytes([i]) * (100 + i)) for i in range(40)]
    cache = BlockCache(mem, max_bytes=1000)
    over = []

    def worker(seed: int) -> None:
        import random

        rng = random.Random(seed)
        for _ in range(300):
            loc = rng.choice(locs)
            assert cache.get(loc)[0] == locs.index(loc)
            if cache.stats()["bytes_cached"] > 1000:
                over.append(1)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    st = cache.stats()
    assert not over
    assert st["bytes_cached"] == sum(len(v) for v in cache._entries.values())
    assert st["misses"] == st["fetches"] + st["joined"] + st["streamed"]
    assert st["hits"] + st["misses"] == 8 * 300


def test_cache_clear_and_discard(mem):
    a, b = mem.put(b"a" * 10), mem.put(b"b" * 20)
    cache = BlockCache(mem)
    cache.get(a)
    cache.get(b)
    cache.discard(a)
    assert cache.stats()["bytes_cached"] == 20
    cache.clear()
    assert cache.stats()["bytes_cached"] == 0 and cache.stats()["blocks_cached"] == 0


# ---------------------------------------------------------------------------
# LocalBlockStore


@pytest.fixture
def local(tmp_path: Path) -> LocalBlockStore:
    return LocalBlockStore(tmp_path / "data")


def all_files(store: LocalBlockStore) -> list[str]:
    return sorted(p.name for p in store.blocks_dir.rglob("*") if p.is_file())


def test_local_roundtrip_and_layout(local):
    data = os.urandom(300_000)
    loc = local.put(data)
    assert loc == loc_of(data)
    path = local.blocks_dir / loc[:2] / loc
    assert path.read_bytes() == data
    assert local.get(loc) == data
    assert local.get(loc + "+Afff@00000000") == data
    assert local.exists(loc)
    assert local.get_range(loc, 1000, 10) == data[1000:1010]
    assert b"".join(local.read_chunks(loc, 65536)) == data


def test_local_put_accepts_buffers(local):
    data = os.urandom(5000)
    assert local.put(memoryview(data)) == loc_of(data)
    assert local.put(bytearray(data)) == loc_of(data)
    assert local.put(memoryview(data)[100:200]) == loc_of(data[100:200])
    assert local.get(loc_of(data[100:200])) == data[100:200]


def test_local_empty_block_always_available(local):
    assert local.put(b"") == EMPTY_BLOCK
    assert local.get(EMPTY_BLOCK) == b""
    assert list(local.read_chunks(EMPTY_BLOCK)) == []
    assert local.exists(EMPTY_BLOCK)
    assert all_files(local) == []


def test_local_put_too_large(local):
    with pytest.raises(BlockTooLarge):
        local.put(bytes(MAX_BLOCK_SIZE + 1))
    assert all_files(local) == []


def test_local_missing_block(local):
    loc = loc_of(b"never stored")
    with pytest.raises(BlockNotFound):
        local.get(loc)
    with pytest.raises(BlockNotFound):
        local.read_chunks(loc)  # raised at call time, before any iteration
    assert not local.exists(loc)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "0" * 32 + "+1/../x", "ABCDEF" * 6 + "+1", ""])
def test_local_malformed_locators_never_touch_paths(local, bad):
    with pytest.raises(BlockNotFound):
        local.get(bad)
    assert not local.exists(bad)


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("offset", [0, 150_000, 299_999])
def test_local_corrupt_byte_detected(local, offset):
    data = os.urandom(300_000)
    loc = local.put(data)
    flip_byte(local.path_for(loc), offset)
    with pytest.raises(BlockCorrupt):
        local.get(loc)
    got = []
    with pytest.raises(BlockCorrupt):
        for piece in local.read_chunks(loc, 100_000):
            got.append(piece)
    # Only the pieces before the last ever come out: never a complete body.
    assert [len(p) for p in got] == [100_000, 100_000]
    assert sum(map(len, got)) < len(data)


def test_local_read_chunks_single_chunk_corrupt_yields_nothing(local):
    loc = local.put(b"tiny block")
    flip_byte(local.path_for(loc), 3)
    stream = local.read_chunks(loc, 1 << 20)
    with pytest.raises(BlockCorrupt):
        next(stream)


def test_local_truncated_file(local):
    loc = local.put(os.urandom(10_000))
    path = local.path_for(loc)
    path.write_bytes(path.read_bytes()[:9_000])
    with pytest.raises(BlockCorrupt):
        local.get(loc)
    with pytest.raises(BlockCorrupt):
        local.read_chunks(loc)
    assert not local.exists(loc)


def test_local_file_grown_while_streaming_is_corrupt(local):
    data = os.urandom(5000)
    loc = local.put(data)
    stream = local.read_chunks(loc, 1000)
    first = next(stream)
    with open(local.path_for(loc), "ab") as f:
        f.write(b"extra")
    with pytest.raises(BlockCorrupt):
        list(stream)
    assert first == data[:1000]


def test_local_put_repairs_corrupt_copy(local):
    data = os.urandom(20_000)
    loc = local.put(data)
    flip_byte(local.path_for(loc), 10)
    assert local.put(data) == loc
    assert local.get(loc) == data
    path = local.path_for(loc)
    path.write_bytes(data[:100])  # truncated copy is replaced too
    local.put(data)
    assert local.get(loc) == data


def test_local_duplicate_put_skips_write_and_refreshes_mtime(local, monkeypatch):
    data = os.urandom(20_000)
    loc = local.put(data)
    path = local.path_for(loc)
    os.utime(path, (1_000_000, 1_000_000))
    inode = path.stat().st_ino
    writes = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, b: writes.append(1) or real_write(fd, b))
    assert local.put(data) == loc
    assert not writes
    assert path.stat().st_ino == inode
    assert path.stat().st_mtime > 1_000_000


def test_local_disk_full_leaves_no_partial_file(local, monkeypatch):
    def full(fd, buf):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(BlockStoreUnavailable, match="No space left"):
        local.put(os.urandom(50_000))
    assert all_files(local) == []


def test_local_partial_write_then_full_disk(local, monkeypatch):
    real_write = os.write
    calls = []

    def half_then_full(fd, buf):
        calls.append(1)
        if len(calls) == 1:
            return real_write(fd, bytes(buf)[: len(buf) // 2])
        raise OSError(errno.ENOSPC, "full")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(BlockStoreUnavailable):
        local.put(os.urandom(50_000))
    assert all_files(local) == []


def test_local_fsync_error_is_unavailable(local, monkeypatch):
    def eio(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(BlockStoreUnavailable, match="Input/output error"):
        local.put(b"x" * 100)
    assert all_files(local) == []


def test_local_short_writes_are_completed(local, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, buf: real_write(fd, bytes(buf)[:777]))
    data = os.urandom(10_000)
    loc = local.put(data)
    monkeypatch.undo()
    assert local.get(loc) == data


def test_local_read_errors_are_unavailable(local, monkeypatch):
    loc = local.put(b"secret")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(local_blocks, "open", denied, raising=False)
    with pytest.raises(BlockStoreUnavailable, match="Permission denied"):
        local.get(loc)
    with pytest.raises(BlockStoreUnavailable):
        local.read_chunks(loc)


def test_local_unwritable_root_is_unavailable(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "denied")

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(BlockStoreUnavailable):
        LocalBlockStore(tmp_path / "nope")


def test_local_iter_blocks_and_delete(local):
    datas = [os.urandom(100 + i) for i in range(5)]
    locs = sorted(local.put(d) for d in datas)
    # Stray files that are not blocks are ignored.
    (local.blocks_dir / locs[0][:2] / f".tmp-{locs[0]}-dead").write_bytes(b"junk")
    (local.blocks_dir / "zz").mkdir()
    (local.blocks_dir / "zz" / "notes.txt").write_bytes(b"hi")
    listed = list(local.iter_blocks())
    assert sorted(l for l, _, _ in listed) == locs
    assert all(size == int(l.split("+")[1]) for l, size, _ in listed)
    assert local.delete(locs[0])
    assert not local.delete(locs[0])
    assert not local.exists(locs[0])
    assert sorted(l for l, _, _ in local.iter_blocks()) == locs[1:]


def test_local_delete_keeps_recently_used_blocks(local):
    data = os.urandom(1000)
    loc = local.put(data)
    path = local.path_for(loc)
    os.utime(path, (1000, 1000))
    cutoff = 5000.0
    local.put(data)  # a writer reuses the block: mtime refreshed to now
    assert not local.delete(loc, unless_newer_than=cutoff)
    assert local.get(loc) == data
    os.utime(path, (1000, 1000))
    assert local.delete(loc, unless_newer_than=cutoff)
    assert not local.exists(loc)
    assert all_files(local) == []


def test_local_remove_stale_temps(local):
    loc = local.put(b"z" * 10)
    sub = local.blocks_dir / loc[:2]
    old = sub / f".tmp-{loc}-old"
    young = sub / f".tmp-{loc}-young"
    old.write_bytes(b"1")
    young.write_bytes(b"2")
    os.utime(old, (1000, 1000))
    assert local.remove_stale_temps(older_than=time.time() - 3600) == 1
    assert young.exists() and not old.exists() and local.exists(loc)


def test_local_concurrent_puts_of_same_block(local):
    data = os.urandom(200_000)
    errors = []

    def writer() -> None:
        try:
            assert local.put(data) == loc_of(data)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert local.get(loc_of(data)) == data
    assert all_files(local) == [loc_of(data)]


def test_local_behind_cache(local):
    data = os.urandom(2 << 20)
    cache = BlockCache(local, max_bytes=8 << 20)
    loc = cache.put(data)
    assert cache.get(loc) == data
    assert cache.get(loc) == data
    assert cache.stats()["hits"] == 1


# ---------------------------------------------------------------------------
# FlakyBlockStore


def test_flaky_fail_next_counts(mem):
    flaky = FlakyBlockStore(mem)
    flaky.fail_next("put", 2)
    for _ in range(2):
        with pytest.raises(BlockStoreUnavailable):
            flaky.put(b"a")
    assert mem.puts == 0  # failed before reaching the store
    loc = flaky.put(b"a")
    assert flaky.calls["put"] == 3 and flaky.injected["put"] == 2
    flaky.fail_next("*", 1, BlockNotFound)
    with pytest.raises(BlockNotFound):
        flaky.get(loc)
    with pytest.raises(BlockNotFound):
        flaky.exists(loc)
    with pytest.raises(BlockNotFound):
        flaky.read_chunks(loc)
    with pytest.raises(BlockNotFound):
        flaky.put(b"b")
    assert flaky.get(loc) == b"a"


def test_flaky_error_specs(mem):
    flaky = FlakyBlockStore(mem)
    err = BlockStoreUnavailable("exact")
    flaky.fail_next("get", 1, err)
    flaky.fail_next("get", 1, lambda: BlockCorrupt("made"))
    with pytest.raises(BlockStoreUnavailable) as info:
        flaky.get(EMPTY_BLOCK)
    assert info.value is err
    with pytest.raises(BlockCorrupt, match="made"):
        flaky.get(EMPTY_BLOCK)
    with pytest.raises(ValueError):
        flaky.fail_next("delete")


def test_flaky_fail_after_stores_then_raises(mem):
    flaky = FlakyBlockStore(mem)
    flaky.fail_after("put")
    with pytest.raises(BlockStoreUnavailable):
        flaky.put(b"lost reply")
    assert mem.exists(loc_of(b"lost reply"))


def test_flaky_random_failures_are_seeded(mem):
    def pattern(seed: int) -> list[bool]:
        flaky = FlakyBlockStore(mem, seed=seed)
        flaky.fail_randomly("exists", 0.3)
        out = []
        for _ in range(200):
            try:
                flaky.exists(EMPTY_BLOCK)
                out.append(True)
            except BlockStoreUnavailable:
                out.append(False)
        return out

    first = pattern(7)
    assert first == pattern(7)
    assert 30 < first.count(False) < 90
    flaky = FlakyBlockStore(mem)
    flaky.fail_randomly("get", 1.0)
    flaky.fail_randomly("get", 0.0)
    assert flaky.get(EMPTY_BLOCK) == b""


def test_flaky_latency(mem):
    flaky = FlakyBlockStore(mem)
    flaky.set_latency("put", 0.05)
    start = time.monotonic()
    flaky.put(b"slow")
    assert time.monotonic() - start >= 0.04
    flaky.reset()
    flaky.put(b"fast")


def test_flaky_break_streams_mid_read(local):
    data = os.urandom(10_000)
    loc = local.put(data)
    flaky = FlakyBlockStore(local)
    flaky.break_streams(after_bytes=4000)
    got = []
    with pytest.raises(BlockStoreUnavailable):
        for piece in flaky.read_chunks(loc, 3000):
            got.append(piece)
    assert sum(map(len, got)) == 6000
    assert b"".join(flaky.read_chunks(loc, 3000)) == data  # only the next stream
    flaky.break_streams(after_bytes=0)
    with pytest.raises(BlockStoreUnavailable):
        next(iter(flaky.read_chunks(loc, 3000)))


def test_flaky_is_thread_safe(mem):
    flaky = FlakyBlockStore(mem)
    flaky.fail_next("get", 50)
    failures = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(100):
            try:
                flaky.get(EMPTY_BLOCK)
            except BlockStoreUnavailable:
                with lock:
                    failures.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(failures) == 50
    assert flaky.calls["get"] == 800 and flaky.injected["get"] == 50

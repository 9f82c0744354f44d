"""Concurrency of the collection filesystem.

What must hold under threads (the server runs one thread per request):
* readers streaming a file's snapshot see exactly one complete version even
  while writers keep replacing the file;
* two change sets on one tree serialize on its writer lock (the second
  waits, or gets BusyError after its timeout), whichever threads they run in;
* ``lock_trees`` takes several trees' locks in one global order, so two
  requests locking the same pair in opposite argument order never deadlock;
* the byte budget bounds buffered upload data across concurrent writers
  streaming through a slow store, and every writer finishes even when all
  of them hold a partly filled block;
* lazy loading under concurrent lookups parses each directory once.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time

import pytest

from davcoll import manifest as M
from davcoll.collection import BusyError, ByteBudget, ChangeSet, FileWriter
from davcoll.collection.segments import size_of
from davcoll.collection.buffers import pack_and_store
from davcoll.manifest import Manifest
from davcoll.storage.blocks import BlockStore
from davcoll.storage.memory_blocks import MemoryBlockStore
from davcoll.testing.flaky_blocks import FlakyBlockStore
from tree_helpers import buffers_of, open_read
from test_collection_tree import FLUSHER, apply_batches, build_manifest, make_tree, read_all


def run_threads(targets, timeout: float = 60.0) -> None:
    """Run callables in threads; re-raise the first failure; fail on hangs."""
    errors: list[BaseException] = []

    def wrap(fn):
        def inner():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        return inner

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads hung (deadlock?)"
    if errors:
        raise errors[0]


# --------------------------------------------------- readers vs. writers


def version_bytes(k: int) -> bytes:
    """Version ``k`` of the file: its number in every 8-byte word, and a
    length that differs between versions."""
    words = 40_000 + (k % 7) * 1000
    return struct.pack(">Q", k) * words


def test_readers_see_one_complete_version_while_writers_replace():
    store = MemoryBlockStore()
    text = build_manifest(store, {"f": version_bytes(0), "other/x": b"x"})
    tree = make_tree(text, store=store, uuid="u-rw")
    catalog = [text]
    stop = threading.Event()
    seen: list[set[int]] = []
    next_version = iter(range(1, 10_000))
    vlock = threading.Lock()

    def writer() -> None:
        while not stop.is_set():
            with vlock:
                k = next(next_version)
            w = FileWriter(store, FLUSHER, tree.budget, block_size=64 << 10)  # many blocks per version
            data = version_bytes(k)
            for i in range(0, len(data), 50_000):
                w.write(data[i : i + 50_000])
            segs = w.close()
            pack_and_store(buffers_of(segs), store, FLUSHER)
            ch = ChangeSet(lock_timeout=30)
            tree.put_file(ch, "f", segs)
            if k % 5 == 0:
                ch.rollback()  # some replacements are undone again
                ch.release()
                continue
            ch.flush()
            after = apply_batches(catalog[0], ch.batches(tree))
            catalog[0] = Manifest(after).to_text()
            ch.committed(tree, version=k)
            ch.release()

    def reader() -> None:
        mine: set[int] = set()
        while not stop.is_set():
            with open_read(tree, "f") as r:
                parts = []
                while True:
                    piece = r.read(37_000)  # not aligned with blocks or words
                    if not piece:
                        break
                    parts.append(piece)
                    time.sleep(0)  # let writers interleave
            data = b"".join(parts)
            k = struct.unpack(">Q", data[:8])[0]
            assert data == version_bytes(k), f"torn read of version {k}"
            mine.add(k)
            tree.listdir("")
            tree.stat("other/x")
        seen.append(mine)

    def timer() -> None:
        time.sleep(2.0)
        stop.set()

    run_threads([writer, writer] + [reader] * 6 + [timer])
    assert len(seen) == 6
    assert len(set().union(*seen)) > 3, "readers should have observed several versions"
    # The committed tree and the catalog agree at the end.
    assert M.normalize_manifest(tree.marshal()) == catalog[0]


def test_lazy_loading_under_concurrent_lookups_parses_each_dir_once(monkeypatch):
    store = MemoryBlockStore()
    files = {f"d{i}/f{j}": b"%d-%d" % (i, j) for i in range(20) for j in range(30)}
    tree = make_tree(build_manifest(store, files), store=store)
    calls: list[str] = []
    real = M._parse_line
    monkeypatch.setattr(M, "_parse_line", lambda t, n: calls.append(t.split(" ", 1)[0]) or real(t, n))
    barrier = threading.Barrier(8)

    def lookups(seed: int) -> None:
        barrier.wait()
        for k in range(200):
            i, j = (seed * 7 + k) % 20, (seed + k * 3) % 30
            assert tree.stat(f"d{i}/f{j}").size == len(b"%d-%d" % (i, j))
            assert len(tree.names(f"d{(i + 1) % 20}")) == 30

    run_threads([lambda s=s: lookups(s) for s in range(8)])
    assert sorted(calls) == sorted({f"./d{i}" for i in range(20)})


# -------------------------------------------------------------- writer lock


def test_two_change_sets_serialize_on_the_writer_lock():
    tree = make_tree(uuid="u-lock")
    first = ChangeSet()
    tree.mkdir(first, "a")
    order: list[str] = []
    started = threading.Event()

    def second() -> None:
        ch = ChangeSet(lock_timeout=10)
        started.set()
        tree.mkdir(ch, "b")  # blocks until `first` is released
        order.append("second mutated")
        assert tree.exists("a")  # first's change was committed before
        ch.rollback()
        ch.release()

    t = threading.Thread(target=second, daemon=True)
    t.start()
    started.wait()
    time.sleep(0.3)
    assert order == [] and t.is_alive()
    assert not tree.exists("b")
    order.append("first released")
    first.flush()
    first.committed(tree, version=1)
    first.release()
    t.join(10)
    assert order == ["first released", "second mutated"]


def test_busy_error_after_timeout_and_no_side_effects():
    tree = make_tree(uuid="u-busy")
    holder = ChangeSet()
    tree.mkdir(holder, "held")
    out: list[BaseException] = []

    def other() -> None:
        ch = ChangeSet(lock_timeout=0.2)
        try:
            tree.mkdir(ch, "blocked")
        except BusyError as e:
            out.append(e)
        assert ch.trees == [] and not ch
        ch.release()

    t0 = time.monotonic()
    run_threads([other])
    assert len(out) == 1 and 0.15 < time.monotonic() - t0 < 5
    assert not tree.exists("blocked")
    # Same thread, second change set: excluded as well (not re-entrant).
    same = ChangeSet(lock_timeout=0.1)
    with pytest.raises(BusyError):
        tree.mkdir(same, "also blocked")
    same.release()
    holder.rollback()
    holder.release()
    ch = ChangeSet(lock_timeout=0.1)
    tree.mkdir(ch, "now free")
    ch.rollback()
    ch.release()


def test_change_set_can_be_released_from_another_thread():
    """WSGI servers may finish a response (and release) in another thread."""
    tree = make_tree(uuid="u-x")
    ch = ChangeSet()
    tree.mkdir(ch, "d")
    ch.committed(tree, version=1)
    run_threads([ch.release])
    ch2 = ChangeSet(lock_timeout=1)
    tree.mkdir(ch2, "e")
    ch2.release()


def test_lock_trees_order_avoids_deadlock():
    t1 = make_tree(uuid="zzzzz-4zz18-aaaaaaaaaaaaaaa")
    t2 = make_tree(uuid="zzzzz-4zz18-bbbbbbbbbbbbbbb")
    rounds = 150
    barrier = threading.Barrier(2)
    counts = {"x": 0, "y": 0}

    def worker(name: str, first, second) -> None:
        for i in range(rounds):
            barrier.wait()
            ch = ChangeSet(lock_timeout=10)
            ch.lock_trees(first, second)
            first.mkdir(ch, f"{name}{i}")
            second.mkdir(ch, f"{name}{i}")
            if i % 2:
                ch.rollback()  # takes both trees' _lock, in the same order
            else:
                ch.committed(first, version=i)
                ch.committed(second, version=i)
            ch.release()
            counts[name] += 1

    run_threads([lambda: worker("x", t1, t2), lambda: worker("y", t2, t1)], timeout=60)
    assert counts == {"x": rounds, "y": rounds}
    assert len(t1.names("")) == len(t2.names("")) == rounds  # the committed half


def test_opposite_order_without_lock_trees_would_deadlock():
    """The hazard lock_trees exists for: acquiring in argument order with
    opposite orders deadlocks (here turned into BusyError by the timeout)."""
    t1, t2 = make_tree(uuid="u1"), make_tree(uuid="u2")
    barrier = threading.Barrier(2)
    busy: list[str] = []

    def worker(name, first, second) -> None:
        ch = ChangeSet(lock_timeout=0.5)
        ch.acquire(first)
        barrier.wait()
        try:
            ch.acquire(second)
        except BusyError:
            busy.append(name)
        ch.release()

    run_threads([lambda: worker("x", t1, t2), lambda: worker("y", t2, t1)])
    assert busy  # at least one (usually both) timed out


# ------------------------------------------------------------- byte budget


class SlowDiscardingStore(BlockStore):
    """Hashes like a real store but keeps only locators (so hundreds of MiB
    can stream through a test); each put takes ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.stored: set[str] = set()
        self._lock = threading.Lock()

    def put(self, data) -> str:
        time.sleep(self.delay)
        loc = f"{hashlib.md5(data).hexdigest()}+{len(data)}"
        with self._lock:
            self.stored.add(loc)
        return loc

    def get(self, locator: str) -> bytes:  # pragma: no cover - never read
        raise NotImplementedError

    def exists(self, locator: str) -> bool:
        return locator in self.stored


def _stream_writers(store, budget, writers: int, per_writer: int, chunk: int, first: int = 0, gate=None, timeout: float = 30) -> tuple[list[tuple], int]:
    """Run ``writers`` concurrent FileWriters (1 MiB blocks) streaming
    ``per_writer`` bytes each; sample ``budget.used`` throughout.  Returns
    the segment tuples and the peak of buffered bytes seen."""
    payload = bytes(range(256)) * (chunk // 256 + 1)
    done = threading.Event()
    peak = [0]
    results: list[tuple] = []

    def sampler() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], budget.used)
            time.sleep(0.0005)

    def writer(seed: int) -> None:
        w = FileWriter(store, FLUSHER, budget, block_size=1 << 20)
        head = bytes([seed]) * (first or 1000)  # distinct content per writer
        w.write(head)
        if gate is not None:
            gate()
        sent = len(head)
        while sent < per_writer:
            piece = payload[: min(chunk, per_writer - sent)]
            w.write(piece)
            sent += len(piece)
        segs = w.close()
        pack_and_store(buffers_of(segs), store, FLUSHER)  # as end_write does
        results.append(segs)

    s = threading.Thread(target=sampler, daemon=True)
    s.start()
    try:
        run_threads([lambda i=i: writer(i) for i in range(writers)], timeout=timeout)
    finally:
        done.set()
        s.join()
    assert len(results) == writers
    for segs in results:
        assert size_of(segs) == per_writer
        assert all(type(seg[0]) is str or seg[0].locator in store.stored for seg in segs)
        assert all(seg[2] <= 1 << 20 for seg in segs)
    return results, peak[0]


def test_budget_bounds_buffered_bytes_of_concurrent_writers():
    """8 MiB budget, 1 MiB blocks, six writers of 50 MiB through a store
    that takes 10 ms per put: buffered bytes never exceed the budget."""
    store = SlowDiscardingStore(delay=0.01)
    budget = ByteBudget(8 << 20)
    _, peak = _stream_writers(store, budget, writers=6, per_writer=50 << 20, chunk=256 << 10)
    assert 0 < peak <= 8 << 20
    assert budget.used == 0


def test_no_deadlock_when_every_writer_holds_a_partial_block():
    """Six writers each hold 650 KiB of an unfinished 1 MiB block: together
    3900 KiB of a 4 MiB budget, with nothing in flight to free room.  Two
    more writers wait for room, and the six need more for their next chunk.
    Progress depends on a waiting writer sending its partial block early
    (a shorter block is fine); without that this would hang forever."""
    store = SlowDiscardingStore(delay=0.02)
    limit = 4 << 20
    first = 650 << 10
    budget = ByteBudget(limit)

    def gate() -> None:
        # Hold on to the partial block until six of them fill the budget.
        deadline = time.monotonic() + 5
        while budget.used < 6 * first and time.monotonic() < deadline:
            time.sleep(0.001)

    results, peak = _stream_writers(store, budget, writers=8, per_writer=20 << 20, chunk=first, first=first, gate=gate)
    assert peak <= limit
    assert budget.used == 0
    early = sum(1 for segs in results for seg in segs[:-1] if seg[2] < 1 << 20)
    assert early > 0  # the scenario really happened


def test_budget_waits_instead_of_failing():
    budget = ByteBudget(100)
    assert budget.acquire(80)
    assert not budget.acquire(30, timeout=0.05)
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(budget.acquire(30)))
    t.start()
    time.sleep(0.1)
    assert got == []
    budget.release(80)
    t.join(5)
    assert got == [True] and budget.used == 30
    # Bigger than the whole limit: admitted once nothing else is buffered.
    assert not budget.acquire(500, timeout=0.05)
    budget.release(30)
    assert budget.acquire(500, timeout=0.05) and budget.used == 500
    budget.release(500)
    assert budget.used == 0


def test_background_failure_under_concurrency_releases_budget():
    inner = MemoryBlockStore()
    store = FlakyBlockStore(inner, seed=3)
    store.fail_randomly("put", 0.3)
    budget = ByteBudget(2 << 20)
    outcomes: list[str] = []

    def writer(i: int) -> None:
        w = FileWriter(store, FLUSHER, budget, block_size=128 << 10)
        try:
            for _ in range(20):
                w.write(bytes([i]) * (100 << 10))
            w.close()
            outcomes.append("ok")
        except Exception:
            w.abort()
            outcomes.append("failed")

    run_threads([lambda i=i: writer(i) for i in range(6)])
    assert len(outcomes) == 6 and "failed" in outcomes
    import gc

    gc.collect()
    # Only the successful writers' unstored tails may still hold budget.
    assert budget.used <= outcomes.count("ok") * (128 << 10)


def test_snapshot_read_during_rollback_is_consistent():
    store = MemoryBlockStore()
    text = build_manifest(store, {"f": b"v0" * 5000})
    tree = make_tree(text, store=store)
    stop = threading.Event()

    def flipper() -> None:
        n = 0
        while not stop.is_set():
            ch = ChangeSet()
            tree.write_at(ch, "f", 0, b"v1" * 5000)
            ch.rollback()
            ch.release()
            n += 1

    def reader() -> None:
        for _ in range(300):
            data = read_all(tree, "f")
            assert data in (b"v0" * 5000, b"v1" * 5000)

    def stopper() -> None:
        time.sleep(1.0)
        stop.set()

    run_threads([flipper, reader, reader, stopper])
    assert read_all(tree, "f") == b"v0" * 5000


def test_buffer_reservation_is_returned_exactly_once():
    """The flusher thread (stored) and the request thread (abort) may
    release the same buffer at once; the budget must not count it twice."""
    import sys

    from davcoll.collection import BufferBlock

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave threads finely to expose races
    try:
        _release_races(BufferBlock)
    finally:
        sys.setswitchinterval(interval)


def _release_races(BufferBlock) -> None:
    # The race window is a few bytecodes: each round catches the old
    # read-then-clear release with a small probability, so run many.
    for _ in range(1000):
        budget = ByteBudget(1 << 20)
        assert budget.acquire(1000)  # someone else's bytes
        buf = BufferBlock(budget)
        assert budget.acquire(500)
        buf.append(b"x" * 500, 500)
        barrier = threading.Barrier(3)

        def release() -> None:
            barrier.wait()
            buf.release()

        run_threads([release, release, lambda: (barrier.wait(), buf.stored("0" * 32 + "+500"))])
        assert budget.used == 1000 and buf.reserved == 0

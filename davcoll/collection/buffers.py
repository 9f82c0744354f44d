"""Buffered file data: byte budget, buffer blocks, the background flusher
and the packing of small buffers into shared blocks at commit.

Why this exists: uploads must stream.  A writer keeps at most one partly
filled block per file in memory; each full 64 MiB block is handed to a small
server-wide pool that hashes and stores it while the upload continues.  A
single byte budget (default 256 MiB) covers every buffered byte in the
process, so many concurrent uploads make writers *wait* instead of growing
memory.

Locks: ``ByteBudget._cond`` guards ``ByteBudget._used`` and every
``BufferBlock.reserved`` of that budget (a buffer's reservation can be given
back by the flusher thread that stored it and, at the same time, by the
request thread aborting the upload; it must be returned exactly once).
``BufferBlock`` has no lock of its own: its bytes are append-only while a
single writer owns it and frozen afterwards; ``locator`` is assigned once
(before ``data`` is dropped), so a reader that takes ``data`` first and falls
back to ``locator`` is always safe.
"""

from __future__ import annotations

import threading
from typing import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from ..manifest import MAX_BLOCK_SIZE
from ..storage.blocks import BlockStore, BlockStoreError
from .errors import StorageFailure


class ByteBudget:
    """A counting limit on buffered bytes; ``acquire`` waits for room."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    def acquire(self, n: int, timeout: float | None = None) -> bool:
        """Reserve ``n`` bytes, waiting while the budget is exhausted.

        Returns False if ``timeout`` passed first.  A request larger than the
        whole limit is admitted once nothing else is buffered, so an
        oversized reservation cannot wait forever.
        """
        with self._cond:
            ok = self._cond.wait_for(lambda: self._used + n <= self.limit or self._used == 0, timeout)
            if ok:
                self._used += n
            return ok

    def release(self, n: int) -> None:
        if n <= 0:
            return
        with self._cond:
            self._used -= n
            if self._used < 0:  # pragma: no cover - accounting bug guard
                self._used = 0
            self._cond.notify_all()

    def take_reservation(self, buf: "BufferBlock") -> int:
        """Clear ``buf``'s reservation without returning it (its bytes now
        belong to someone else's reservation, e.g. a block writer's) and
        return how many bytes it was.  Under the budget's lock, like
        ``release_buffer``, so the two can never both count them."""
        with self._cond:
            n, buf.reserved = buf.reserved, 0
            return n

    def release_buffer(self, buf: "BufferBlock") -> None:
        """Give back ``buf``'s whole reservation, exactly once.

        The read-and-clear of ``buf.reserved`` happens under the budget's
        lock, so two threads releasing the same buffer cannot both return
        its bytes (which would let the budget over-admit afterwards).
        """
        with self._cond:
            n = buf.reserved
            if n <= 0:
                return
            buf.reserved = 0
            self._used -= n
            if self._used < 0:  # pragma: no cover - accounting bug guard
                self._used = 0
            self._cond.notify_all()


class BufferBlock:
    """Bytes of one future block, not yet (or just) stored.

    Segments of buffered files point at a BufferBlock instead of a locator
    string.  Once the block is stored, ``locator`` is set and the bytes can
    be dropped; segment tuples are rewritten to plain locators at commit.
    """

    __slots__ = ("data", "locator", "base", "budget", "reserved", "__weakref__")

    def __init__(self, budget: ByteBudget | None = None, data: bytes | bytearray | None = None) -> None:
        self.data: bytearray | None = bytearray(data) if data is not None else bytearray()
        self.locator: str | None = None
        # Offset of these bytes inside the stored block (non-zero when the
        # buffer was packed together with others into one block).
        self.base = 0
        self.budget = budget
        self.reserved = 0

    def __len__(self) -> int:
        d = self.data
        return len(d) if d is not None else 0

    def append(self, chunk: bytes | memoryview, reserved: int) -> None:
        """Append bytes whose budget (``reserved`` bytes) the caller acquired."""
        assert self.data is not None
        self.data += chunk
        self.reserved += reserved

    def stored(self, locator: str, base: int = 0) -> None:
        """Record where the bytes went and free them (and their budget)."""
        self.base = base
        self.locator = locator
        self.data = None
        self.release()

    def discard(self) -> None:
        """Drop unstored bytes whose change failed (and their budget) now,
        rather than whenever the last reference to this object goes away."""
        if self.locator is None:
            self.data = None
        self.release()

    def release(self) -> None:
        """Return this buffer's reservation to its budget (idempotent)."""
        if self.budget is not None and self.reserved:
            self.budget.release_buffer(self)

    def __del__(self) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<BufferBlock {self.locator or len(self)}>"


class Flusher:
    """A bounded pool that stores full blocks in the background.

    One pool serves the whole process (block stores differ per token on
    Arvados, so the store is passed per call).  At most ``workers`` puts run
    at once (default 4, as in the Go SDK).
    ``submit`` returns a Future resolving to the locator; block-store errors
    come back as ``StorageFailure`` so callers handle one type.
    """

    def __init__(self, workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="davcoll-flush")

    @staticmethod
    def store_now(buf: BufferBlock, store: BlockStore) -> str:
        """Store ``buf`` synchronously (used for final, partial blocks)."""
        data = buf.data
        if data is None:
            assert buf.locator is not None
            return buf.locator
        try:
            loc = store.put(memoryview(data))
        except BlockStoreError as e:
            raise StorageFailure(f"block store failed: {e}") from e
        buf.stored(loc)
        return loc

    def submit(self, buf: BufferBlock, store: BlockStore) -> "Future[str]":
        return self._pool.submit(self.store_now, buf, store)

    def submit_call(self, finish: "Callable[[], str]") -> "Future[str]":
        """Run a block writer's ``finish`` in the pool (errors as StorageFailure)."""
        return self._pool.submit(self._call, finish)

    @staticmethod
    def _call(finish: "Callable[[], str]") -> str:
        try:
            return finish()
        except BlockStoreError as e:
            raise StorageFailure(f"block store failed: {e}") from e

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


def pack_and_store(buffers: list[BufferBlock], store: BlockStore, flusher: Flusher) -> None:
    """Store buffers, packing small ones together into shared blocks.

    A buffer of half a block (32 MiB) or more is stored on its own; smaller
    ones are packed first-fit, biggest first, into blocks of up to 64 MiB.
    """
    pack_limit = MAX_BLOCK_SIZE
    big = [b for b in buffers if len(b) >= pack_limit // 2]
    small = sorted((b for b in buffers if len(b) < pack_limit // 2), key=len, reverse=True)
    for b in big:
        flusher.store_now(b, store)
    packs: list[list[BufferBlock]] = []
    sizes: list[int] = []
    for b in small:
        for i, s in enumerate(sizes):
            if s + len(b) <= pack_limit:
                packs[i].append(b)
                sizes[i] += len(b)
                break
        else:
            packs.append([b])
            sizes.append(len(b))
    for pack in packs:
        if len(pack) == 1:
            flusher.store_now(pack[0], store)
            continue
        combined = BufferBlock(None)
        bases = []
        for b in pack:
            bases.append(len(combined))
            assert b.data is not None and combined.data is not None
            combined.data += b.data
        loc = flusher.store_now(combined, store)
        for b, base in zip(pack, bases):
            b.stored(loc, base)


def zero_segments(n: int) -> list[tuple]:
    """Segments of ``n`` zero bytes, sharing one buffered zero block."""
    if n <= 0:
        return []
    chunk = min(n, 1 << 20)
    zeros = BufferBlock(None, bytes(chunk))
    out = []
    while n > 0:
        k = min(n, chunk)
        out.append((zeros, 0, k))
        n -= k
    return out

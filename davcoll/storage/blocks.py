"""Block store interface, its error types, and the shared block cache.

A block store keeps content-addressed blocks (at most 64 MiB) under their
``md5+size`` locator.  The collection filesystem talks only to this
interface; the embedded directory store (``local_blocks``) and the Keep
client (``keep``) implement it.

Contract every implementation keeps:
- ``put`` computes the md5 itself (so hashing happens once, in whichever
  thread calls ``put``) and returns the locator to write into manifests
  (bare ``md5+size`` locally, ``+A``-signed for Keep).
- ``get`` returns the whole block and has verified its md5; a mismatch is a
  ``BlockCorrupt`` error, never wrong bytes.
- ``read_chunks`` streams a block in pieces without holding it whole; it
  yields the final piece only after the md5 has been verified, so a corrupt
  block can only ever truncate a response, never complete it with bad data.
"""

from __future__ import annotations

import abc
import threading
from collections import OrderedDict
from typing import Callable, Iterator

from ..manifest import EMPTY_BLOCK, MAX_BLOCK_SIZE, bare_locator

__all__ = [
    "BlockStoreError",
    "BlockNotFound",
    "BlockCorrupt",
    "BlockPermissionDenied",
    "BlockStoreUnavailable",
    "BlockTooLarge",
    "BlockStore",
    "BlockWriter",
    "BufferedBlockWriter",
    "BlockCache",
    "CacheView",
    "MAX_BLOCK_SIZE",
    "EMPTY_BLOCK",
    "bare_locator",
]


class BlockStoreError(Exception):
    """Base class of every block-store failure (maps to 502/503 upstream)."""


class BlockNotFound(BlockStoreError):
    """No service has the block (or none would admit to having it)."""


class BlockCorrupt(BlockStoreError):
    """The stored bytes do not hash to the locator's md5/size."""


class BlockPermissionDenied(BlockStoreError):
    """The locator's signature was rejected (missing, expired or foreign)."""


class BlockStoreUnavailable(BlockStoreError):
    """Temporary trouble (timeouts, 5xx, full disks) that outlasted the retries."""


class BlockTooLarge(BlockStoreError):
    """A put of more than 64 MiB."""


class BlockWriter(abc.ABC):
    """Takes one block's bytes incrementally; ``finish`` stores it.

    ``on_released(n)`` (if given) is called as bytes stop occupying memory,
    so a caller can account buffered bytes against a budget.
    """

    size = 0

    @abc.abstractmethod
    def write(self, data: bytes | memoryview) -> None:
        """Append bytes (must be immutable: ``bytes`` or a view of ``bytes``)."""

    @abc.abstractmethod
    def finish(self) -> str:
        """Store the block; return its locator."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything written so far."""


class BufferedBlockWriter(BlockWriter):
    """Collects the block in memory, then ``put``s it (Keep needs the md5 in
    the URL before the body, so it cannot stream)."""

    def __init__(self, store: "BlockStore", on_released: Callable[[int], None] | None = None) -> None:
        self._store = store
        self._buf = bytearray()
        self._on_released = on_released
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        if self.size + len(data) > MAX_BLOCK_SIZE:
            raise BlockTooLarge("block would exceed 64 MiB")
        self._buf += data
        self.size += len(data)

    def finish(self) -> str:
        try:
            return self._store.put(self._buf)
        finally:
            self._release()

    def abort(self) -> None:
        self._release()

    def _release(self) -> None:
        n, self._buf = len(self._buf), bytearray()
        if self._on_released is not None and n:
            self._on_released(n)


class BlockStore(abc.ABC):
    """Content-addressed block storage."""

    def open_writer(self, on_released: Callable[[int], None] | None = None) -> BlockWriter:
        """A writer for one new block (streaming where the store allows)."""
        return BufferedBlockWriter(self, on_released)

    @abc.abstractmethod
    def put(self, data: bytes | bytearray | memoryview) -> str:
        """Store ``data`` (≤ 64 MiB); return the locator for manifests."""

    @abc.abstractmethod
    def get(self, locator: str) -> bytes:
        """The whole block, md5-verified."""

    @abc.abstractmethod
    def exists(self, locator: str) -> bool:
        """Whether the block is stored (HEAD)."""

    def read_chunks(self, locator: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the block in pieces; the last piece follows verification.

        The default holds the block once (via ``get``); stores that can read
        incrementally override it to keep memory at one chunk.
        """
        data = memoryview(self.get(locator))
        for i in range(0, len(data), chunk_size):
            yield bytes(data[i : i + chunk_size])

    def get_range(self, locator: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of a block (verified as a whole)."""
        data = self.get(locator)
        return data[offset : offset + length]

    def close(self) -> None:
        """Release connections and threads."""


# ---------------------------------------------------------------------------
# The shared block cache


class _Fetch:
    """One in-progress ``get`` of a block that other readers may join.

    The fetching thread fills in ``data`` or ``error`` and then sets ``done``;
    joiners wait on ``done`` and read whichever was set.  Both fields are
    written exactly once, before ``done`` is set, so readers need no lock.
    """

    __slots__ = ("done", "data", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None

    def result(self) -> bytes:
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return self.data


class BlockCache(BlockStore):
    """A byte-bounded LRU of whole blocks in front of any ``BlockStore``.

    Why whole blocks: Keep has no range reads, so a Range request into a
    64 MiB block costs the whole block; keeping it lets the next range (or
    the next reader) skip the fetch.  Why single-flight: a popular file
    opened by many clients at once would otherwise fetch every block once
    per client.

    Entries are keyed by the *bare* locator (``md5+size``): the content is
    the same whatever the permission hint, and the caller only ever holds a
    locator it got from a manifest its own token could read.  Bytes in the
    cache were verified by the wrapped store when they were fetched, or are
    the very bytes just handed to ``put``.

    Large sequential downloads go through ``read_chunks``, which never adds
    to the cache: streaming a 10 GB file must neither evict the working set
    nor hold 64 MiB per reader.
    """

    #: ``put`` data up to this size is kept: freshly packed small-file blocks
    #: are typically read back soon (PROPFIND-then-GET clients, thumbnails).
    PUT_CACHE_LIMIT = 1 << 20

    def __init__(self, store: BlockStore, max_bytes: int = 256 << 20) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.store = store
        self.max_bytes = max_bytes
        # _lock guards _entries, _bytes, _fetches and every counter below.
        # It is never held while calling the wrapped store, so a slow or
        # hung fetch cannot stall hits on other blocks.
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, bytes] = OrderedDict()  # LRU first
        self._bytes = 0
        self._fetches: dict[str, _Fetch] = {}
        self._hits = 0
        self._misses = 0
        self._joined = 0
        self._fetch_count = 0
        self._fetch_errors = 0
        self._evictions = 0
        self._streamed = 0

    # -- BlockStore API ----------------------------------------------------

    def get(self, locator: str) -> bytes:
        """The block from the cache, or fetched once however many ask."""
        return self._get_via(self.store, locator)

    def view(self, store: BlockStore) -> "CacheView":
        """This cache in front of another store (same entries, same budget).

        On Arvados each caller has its own Keep client (locators are signed
        per token) but one byte budget must cover every caller's cached
        blocks, so callers get views of one cache.
        """
        return CacheView(self, store)

    def _get_via(self, store: BlockStore, locator: str) -> bytes:
        key = bare_locator(locator)
        if key == EMPTY_BLOCK:
            return b""
        with self._lock:
            data = self._lookup(key)
            if data is not None:
                return data
            self._misses += 1
            fetch = self._fetches.get(key)
            if fetch is not None:
                self._joined += 1
                leader = False
            else:
                fetch = self._fetches[key] = _Fetch()
                self._fetch_count += 1
                leader = True
        # Outside the lock from here on: fetching (or waiting) may be slow.
        if leader:
            return self._fetch(key, locator, fetch, store)
        return fetch.result()

    def put(self, data: bytes | bytearray | memoryview) -> str:
        return self._put_via(self.store, data)

    def _put_via(self, store: BlockStore, data: bytes | bytearray | memoryview) -> str:
        """Store through ``store``; keep small blocks for read-back.

        Small data is copied to immutable ``bytes`` first and that copy is
        both stored and cached, so a caller reusing its buffer afterwards
        cannot change what the cache serves.
        """
        view = memoryview(data)
        if view.nbytes > self.PUT_CACHE_LIMIT:
            return store.put(data)
        frozen = data if isinstance(data, bytes) else view.tobytes()
        locator = store.put(frozen)
        with self._lock:
            self._insert(bare_locator(locator), frozen)
        return locator

    def open_writer(self, on_released: Callable[[int], None] | None = None) -> BlockWriter:
        """The wrapped store's writer (large blocks are not cached on write)."""
        return self.store.open_writer(on_released)

    def exists(self, locator: str) -> bool:
        """Always asks the wrapped store: a cached block may since have been
        garbage-collected there, and ``exists`` is how callers find out."""
        return self.store.exists(locator)

    def read_chunks(self, locator: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Slices of a cached block, or the wrapped store's stream (uncached)."""
        return self._read_chunks_via(self.store, locator, chunk_size)

    def _read_chunks_via(self, store: BlockStore, locator: str, chunk_size: int) -> Iterator[bytes]:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        key = bare_locator(locator)
        with self._lock:
            data = self._lookup(key)
            if data is None:
                self._misses += 1
                self._streamed += 1
        if data is None:
            return store.read_chunks(locator, chunk_size)
        return _slices(data, chunk_size)

    def close(self) -> None:
        """Drop every entry and close the wrapped store."""
        self.clear()
        self.store.close()

    # -- cache management --------------------------------------------------

    def clear(self) -> None:
        """Forget every cached block (in-flight fetches still complete)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def discard(self, locator: str) -> None:
        """Forget one block, e.g. after the store reported it deleted."""
        with self._lock:
            data = self._entries.pop(bare_locator(locator), None)
            if data is not None:
                self._bytes -= len(data)

    def stats(self) -> dict[str, int]:
        """Counters for metrics.

        ``hits``/``misses`` count ``get`` and ``read_chunks`` lookups.  A miss
        is either a ``fetch`` (the wrapped store's ``get`` ran), ``joined``
        (shared another reader's fetch) or ``streamed`` (an uncached
        ``read_chunks``), so ``misses == fetches + joined + streamed``.
        """
        with self._lock:
            return {
                "hits": self._hits,
                "misses": self._misses,
                "joined": self._joined,
                "fetches": self._fetch_count,
                "fetch_errors": self._fetch_errors,
                "streamed": self._streamed,
                "evictions": self._evictions,
                "bytes_cached": self._bytes,
                "blocks_cached": len(self._entries),
                "max_bytes": self.max_bytes,
            }

    # -- internals -----------------------------------------------------------

    def _fetch(self, key: str, locator: str, fetch: _Fetch, store: BlockStore) -> bytes:
        """Run the wrapped ``get`` for every reader waiting on ``fetch``.

        The outcome is published to joiners in all cases — including
        ``KeyboardInterrupt`` and friends, which joiners see as a temporary
        failure — so nobody waits forever on an abandoned fetch.
        """
        try:
            data = store.get(locator)
        except Exception as exc:
            self._finish(key, fetch, None, exc)
            raise
        except BaseException:
            self._finish(key, fetch, None, BlockStoreUnavailable(f"fetch of {key} was interrupted"))
            raise
        self._finish(key, fetch, data, None)
        return data

    def _finish(self, key: str, fetch: _Fetch, data: bytes | None, error: BaseException | None) -> None:
        """Publish a fetch's outcome; cache the bytes if it succeeded."""
        fetch.data, fetch.error = data, error
        with self._lock:
            if self._fetches.get(key) is fetch:
                del self._fetches[key]
            if data is not None:
                self._insert(key, data)
            else:
                self._fetch_errors += 1
        fetch.done.set()

    def _lookup(self, key: str) -> bytes | None:
        """A cached block, marked most recently used.  Caller holds _lock."""
        data = self._entries.get(key)
        if data is not None:
            self._entries.move_to_end(key)
            self._hits += 1
        return data

    def _insert(self, key: str, data: bytes) -> None:
        """Add a block, evicting least-recently-used ones to stay within
        ``max_bytes``.  A block bigger than the whole budget is skipped
        rather than emptying the cache for it.  Caller holds _lock."""
        size = len(data)
        if size > self.max_bytes or key in self._entries:
            return
        while self._bytes + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= len(old)
            self._evictions += 1
        self._entries[key] = data
        self._bytes += size


class CacheView(BlockStore):
    """A shared ``BlockCache`` in front of one caller's store (see ``view``)."""

    def __init__(self, cache: BlockCache, store: BlockStore) -> None:
        self.cache = cache
        self.store = store

    def get(self, locator: str) -> bytes:
        return self.cache._get_via(self.store, locator)

    def put(self, data: bytes | bytearray | memoryview) -> str:
        return self.cache._put_via(self.store, data)

    def exists(self, locator: str) -> bool:
        return self.store.exists(locator)

    def open_writer(self, on_released: Callable[[int], None] | None = None) -> BlockWriter:
        return self.store.open_writer(on_released)

    def read_chunks(self, locator: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        return self.cache._read_chunks_via(self.store, locator, chunk_size)

    def close(self) -> None:
        self.store.close()


def _slices(data: bytes, chunk_size: int) -> Iterator[bytes]:
    """``data`` in ``chunk_size`` pieces (already verified, so no hold-back)."""
    view = memoryview(data)
    for i in range(0, len(view), chunk_size):
        yield view[i : i + chunk_size].tobytes()

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
from typing import Iterator

from ..manifest import EMPTY_BLOCK, MAX_BLOCK_SIZE, bare_locator

__all__ = [
    "BlockStoreError",
    "BlockNotFound",
    "BlockCorrupt",
    "BlockPermissionDenied",
    "BlockStoreUnavailable",
    "BlockTooLarge",
    "BlockStore",
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


class BlockStore(abc.ABC):
    """Content-addressed block storage."""

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

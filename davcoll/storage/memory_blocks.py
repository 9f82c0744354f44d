"""An in-memory block store: the collection filesystem's unit-test backend.

It keeps the full contract of ``BlockStore`` (md5 computed on put, checked
on get) so tests exercise the same code paths as the real stores.  It also
counts calls, which tests use to prove that COPY/MOVE never touch bytes.
"""

from __future__ import annotations

import hashlib
import threading

from .blocks import BlockCorrupt, BlockNotFound, BlockStore, BlockTooLarge, MAX_BLOCK_SIZE, bare_locator


class MemoryBlockStore(BlockStore):
    def __init__(self) -> None:
        # _lock guards _blocks and the counters.
        self._lock = threading.Lock()
        self._blocks: dict[str, bytes] = {}
        self.puts = 0
        self.gets = 0
        self.bytes_put = 0

    def put(self, data: bytes | bytearray | memoryview) -> str:
        data = bytes(data)
        if len(data) > MAX_BLOCK_SIZE:
            raise BlockTooLarge(f"block of {len(data)} bytes exceeds 64 MiB")
        loc = f"{hashlib.md5(data).hexdigest()}+{len(data)}"
        with self._lock:
            self._blocks[loc] = data
            self.puts += 1
            self.bytes_put += len(data)
        return loc

    def get(self, locator: str) -> bytes:
        key = bare_locator(locator)
        with self._lock:
            self.gets += 1
            data = self._blocks.get(key)
        if data is None:
            if key == "d41d8cd98f00b204e9800998ecf8427e+0":
                return b""
            raise BlockNotFound(key)
        if f"{hashlib.md5(data).hexdigest()}+{len(data)}" != key:
            raise BlockCorrupt(key)
        return data

    def exists(self, locator: str) -> bool:
        with self._lock:
            return bare_locator(locator) in self._blocks

    def corrupt(self, locator: str) -> None:
        """Flip a byte of a stored block (tests of the corruption path)."""
        key = bare_locator(locator)
        with self._lock:
            b = bytearray(self._blocks[key])
            b[0] ^= 0xFF
            self._blocks[key] = bytes(b)

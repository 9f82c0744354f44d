"""Streaming readers and writers of file content.

``FileReader`` reads a *snapshot* (an immutable segment tuple), so a GET that
streams after its handler returned is never disturbed by a concurrent
overwrite.  Whole-block segments read sequentially are streamed through
``read_chunks`` (memory: one chunk, bytes verified before the last piece is
released); everything else goes through the block cache.

``FileWriter`` builds a *detached* file: nothing in the tree changes until the
caller swaps the finished segments in, so an aborted or short upload leaves
the old content untouched.  Full blocks go to the background flusher while
the upload continues; the byte budget makes writers wait rather than grow
memory.
"""

from __future__ import annotations

import io
from bisect import bisect_right
from concurrent.futures import Future
from typing import Iterator

from ..manifest import MAX_BLOCK_SIZE, locator_size
from ..storage.blocks import BlockStore, BlockStoreError
from .buffers import BufferBlock, ByteBudget, Flusher
from .errors import StorageFailure
from .segments import Segments, merge, offsets_of

STREAM_THRESHOLD = 8 << 20


class FileReader(io.RawIOBase):
    """Random-access reader over a segment snapshot."""

    def __init__(self, segs: Segments, store: BlockStore, *, stream_threshold: int = STREAM_THRESHOLD) -> None:
        super().__init__()
        self._segs = segs
        self._starts = offsets_of(segs)
        self._size = self._starts[-1] + segs[-1][2] if segs else 0
        self._store = store
        self._pos = 0
        self._stream_threshold = stream_threshold
        # Current streamed block: locator, chunk iterator, held chunk and
        # the block offset where that chunk starts.
        self._s_loc: str | None = None
        self._s_iter: Iterator[bytes] | None = None
        self._s_chunk = b""
        self._s_start = 0
        # Last whole block fetched through the cache (for small reads).
        self._b_loc: str | None = None
        self._b_data: bytes = b""

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError("bad whence")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._size - self._pos
        end = min(self._size, self._pos + n)
        pieces: list[bytes] = []
        try:
            while self._pos < end:
                piece = self._read_piece(end)
                if not piece:
                    # A block shorter than its segments claim: stop with an
                    # error rather than spin forever or return short data.
                    raise StorageFailure("block data ended before the segment did")
                pieces.append(piece)
                self._pos += len(piece)
        except BlockStoreError as e:
            raise StorageFailure(f"reading block failed: {e}") from e
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)

    def readinto(self, b) -> int:  # pragma: no cover - io.RawIOBase protocol
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def _read_piece(self, end: int) -> bytes:
        pos = self._pos
        i = bisect_right(self._starts, pos) - 1
        seg_start = self._starts[i]
        src, off, ln = self._segs[i]
        delta = pos - seg_start
        take = min(end, seg_start + ln) - pos
        if type(src) is not str:
            data = src.data
            if data is not None:
                return bytes(data[off + delta : off + delta + take])
            src, off = src.locator, src.base + off
        block_off = off + delta
        if (
            ln >= self._stream_threshold
            and off == 0
            and ln == locator_size(src)
            and (delta == 0 or (self._s_loc == src and self._s_start <= block_off))
        ):
            return self._stream_piece(src, block_off, take)
        if self._b_loc != src:
            self._b_data = self._store.get(src)
            self._b_loc = src
        return self._b_data[block_off : block_off + take]

    def _stream_piece(self, loc: str, block_off: int, take: int) -> bytes:
        if self._s_loc != loc or block_off < self._s_start:
            self._s_loc = loc
            self._s_iter = iter(self._store.read_chunks(loc))
            self._s_chunk = b""
            self._s_start = 0
        assert self._s_iter is not None
        while block_off >= self._s_start + len(self._s_chunk):
            self._s_start += len(self._s_chunk)
            self._s_chunk = next(self._s_iter, b"")
            if not self._s_chunk:
                raise StorageFailure(f"block {loc} ended early")
        a = block_off - self._s_start
        return self._s_chunk[a : a + take]

    def close(self) -> None:
        self._s_iter = None
        self._s_chunk = b""
        self._b_data = b""
        super().close()


class FileWriter:
    """Streams bytes into a new, detached file (see module docstring)."""

    def __init__(self, store: BlockStore, flusher: Flusher, budget: ByteBudget, *, block_size: int = MAX_BLOCK_SIZE) -> None:
        self._store = store
        self._flusher = flusher
        self._budget = budget
        self._block_size = block_size
        self._cur = BufferBlock(budget)
        self._segs: list[tuple] = []
        self._futures: list[Future] = []
        self._buffers: list[BufferBlock] = []
        self.bytes_written = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.closed:
            raise ValueError("write to a closed or aborted FileWriter")
        mv = memoryview(data)
        n = len(mv)
        while mv:
            room = self._block_size - len(self._cur)
            piece = mv[:room]
            k = len(piece)
            if not self._budget.acquire(k, timeout=0.05):
                # Everyone's buffers are full: send our partial block now (a
                # shorter block is fine) so progress never depends on others.
                if len(self._cur):
                    self._submit_current()
                self._budget.acquire(k)
            self._cur.append(piece, k)
            mv = mv[k:]
            if len(self._cur) >= self._block_size:
                self._submit_current()
        self.bytes_written += n
        return n

    def writelines(self, chunks) -> None:
        for c in chunks:
            self.write(c)

    def _submit_current(self) -> None:
        cur = self._cur
        self._segs.append((cur, 0, len(cur)))
        self._buffers.append(cur)
        self._futures.append(self._flusher.submit(cur, self._store))
        self._cur = BufferBlock(self._budget)
        # Surface background failures early instead of at close.
        for f in self._futures:
            if f.done() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]

    def close(self) -> Segments:
        """Wait for background stores; return the finished segment tuple.

        The last partial block stays buffered: at commit it is stored, packed
        together with other small buffered files of the same commit.
        """
        if self.closed:
            raise ValueError("writer already closed")
        self.closed = True
        if len(self._cur):
            self._segs.append((self._cur, 0, len(self._cur)))
            self._buffers.append(self._cur)
        try:
            for f in self._futures:
                f.result()
        except BaseException:
            self.abort()
            raise
        return merge(self._segs)

    def abort(self) -> None:
        """Drop everything; blocks already stored become unreferenced."""
        self.closed = True
        for f in self._futures:
            f.cancel()
        for buf in self._buffers + [self._cur]:
            if buf.locator is None:
                buf.data = None
            buf.release()
        self._segs = []

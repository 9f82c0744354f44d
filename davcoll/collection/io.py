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
from ..storage.blocks import BlockStore, BlockStoreError, BlockWriter
from .buffers import BufferBlock, ByteBudget, Flusher
from .errors import BusyError, StorageFailure
from .segments import Segments, merge, offsets_of

STREAM_THRESHOLD = 8 << 20
#: Files up to this size stay in memory until commit, to be packed together.
SMALL_FILE_LIMIT = 4 << 20


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
    """Streams bytes into a new, detached file (see module docstring).

    A file stays in one in-memory buffer while it is small (up to
    ``small_limit``, at most one block): at commit it is packed together
    with other small files into a shared block.  Past that it streams into
    the store's block writer (for the embedded store: hashed and written to
    disk in a helper thread as it arrives, so memory holds only a short
    queue of chunks); each full block is finished in the background by the
    flusher pool while the upload continues.  Every buffered byte counts
    against the process-wide budget, and a writer that finds the budget
    exhausted finishes its partial block early rather than wait on others.
    """

    def __init__(self, store: BlockStore, flusher: Flusher, budget: ByteBudget, *, block_size: int = MAX_BLOCK_SIZE,
                 small_limit: int = SMALL_FILE_LIMIT) -> None:
        self._store = store
        self._flusher = flusher
        self._budget = budget
        self._block_size = block_size
        self._small_limit = min(small_limit, block_size)
        self._small: BufferBlock | None = BufferBlock(budget)
        self._bw: BlockWriter | None = None
        # Finished (or finishing) blocks in file order: (future, size, writer).
        self._blocks: list[tuple[Future, int, BlockWriter]] = []
        self.bytes_written = 0
        self.closed = False

    #: Longest wait for buffer space before an upload gives up (seconds).
    budget_wait = 120.0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.closed:
            raise ValueError("write to a closed or aborted FileWriter")
        mv = memoryview(data)
        n = len(mv)
        if isinstance(data, (bytearray, memoryview)) and self._small is None:
            mv = memoryview(bytes(mv))  # block writers keep references: freeze
        while mv:
            small = self._small
            if small is not None and len(small) + len(mv) < self._small_limit:
                k = len(mv)
                self._reserve(k)
                small.append(mv, k)
                break
            if small is not None:
                self._start_streaming()
                if not isinstance(data, bytes):
                    mv = memoryview(bytes(mv))
            if self._bw is None:
                self._bw = self._store.open_writer(self._budget.release)
            bw = self._bw
            piece = mv[: self._block_size - bw.size]
            k = len(piece)
            if not self._budget.acquire(k, timeout=0.05):
                # Everyone's buffers are full: finish our partial block now (a
                # shorter block is fine) so progress never depends on others.
                if bw.size:
                    self._finish_block()
                self._reserve(k)
                bw = self._bw = self._bw or self._store.open_writer(self._budget.release)
            try:
                bw.write(piece)
            except BlockStoreError as e:
                self._budget.release(k)
                raise StorageFailure(f"block store failed: {e}") from e
            mv = mv[k:]
            if bw.size >= self._block_size:
                self._finish_block()
        self.bytes_written += n
        return n

    def writelines(self, chunks) -> None:
        for c in chunks:
            self.write(c)

    def _reserve(self, n: int) -> None:
        """Wait for budget room, but not forever: if other uploads keep the
        budget full (e.g. stalled clients holding small files in memory),
        this upload fails with a retryable error instead of hanging."""
        if not self._budget.acquire(n, timeout=self.budget_wait):
            raise BusyError("upload buffers are full; try again")

    def _start_streaming(self) -> None:
        """The file outgrew the small buffer: move its bytes to a block writer."""
        small, self._small = self._small, None
        assert small is not None
        self._bw = self._store.open_writer(self._budget.release)
        if small.data:
            data = bytes(small.data)
            # The block writer now owns these bytes' reservation.
            self._budget.take_reservation(small)
            small.data = None
            self._bw.write(data)
        else:
            small.release()

    def _finish_block(self) -> None:
        bw, self._bw = self._bw, None
        assert bw is not None
        self._blocks.append((self._flusher.submit_call(bw.finish), bw.size, bw))
        # Surface background failures early instead of at close.
        for f, _, _ in self._blocks:
            if f.done() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]

    def close(self) -> Segments:
        """Wait for background stores; return the finished segment tuple.

        A small file comes back as one buffered segment: at commit it is
        stored, packed together with other small files of the same commit.
        """
        if self.closed:
            raise ValueError("writer already closed")
        self.closed = True
        if self._small is not None:
            small = self._small
            return ((small, 0, len(small)),) if len(small) else ()
        if self._bw is not None and self._bw.size:
            self._finish_block()
        elif self._bw is not None:
            self._bw.abort()
            self._bw = None
        segs = []
        try:
            for f, size, _ in self._blocks:
                segs.append((f.result(), 0, size))
        except BaseException:
            self.abort()
            raise
        return merge(segs)

    def abort(self) -> None:
        """Drop everything; blocks already stored become unreferenced."""
        self.closed = True
        if self._bw is not None:
            try:
                self._bw.abort()
            except BlockStoreError:
                pass
            self._bw = None
        for f, _, bw in self._blocks:
            if f.cancel():
                bw.abort()  # never started: give its bytes (and budget) back
        # Blocks being stored right now release their bytes when they end;
        # wait, so an aborted upload holds no budget once abort returns.
        for f, _, _ in self._blocks:
            if not f.cancelled():
                try:
                    f.result()
                except BaseException:  # noqa: BLE001 - the upload is abandoned anyway
                    pass
        if self._small is not None:
            self._small.data = None
            self._small.release()

"""A block store view for one collection whose signatures can be renewed.

Why: a cached collection tree holds ``+A`` signed locators that Keep stops
accepting once they expire.  Trees are reloaded before half the signature
TTL has passed, but a tree can still meet a refusal (a read that started
just before the reload was due, a clock jump, a cluster whose signing key
changed).  On the first refusal of a signed locator this view asks the
catalog for the collection's manifest again (spec 4.5: fresh signatures
for the same ``md5+size``), retries once with the new locator, and tells
the owner, which then reloads the tree at its next use.  Later reads of the
same blocks through this view use the fresh signatures directly.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator, Mapping

from ..manifest import bare_locator
from . import signatures as sg
from .blocks import BlockPermissionDenied, BlockStore, BlockWriter

__all__ = ["ResigningStore"]

#: A refresh within this many seconds is reused instead of asking again
#: (concurrent readers of one collection all hit the same expired tree).
REUSE_SECONDS = 2.0


class ResigningStore(BlockStore):
    """``store`` for one collection; ``refresh`` returns ``{md5+size: signed locator}``."""

    def __init__(self, store: BlockStore, refresh: Callable[[], Mapping[str, str]],
                 on_refresh: Callable[[], None] | None = None) -> None:
        self.store = store
        self._refresh = refresh
        self.on_refresh = on_refresh
        # _lock guards _fresh and _refreshed_at; never held during I/O.
        self._lock = threading.Lock()
        self._fresh: dict[str, str] = {}
        self._refreshed_at = float("-inf")

    # ------------------------------------------------------------------

    def _current(self, locator: str) -> str:
        """The freshest locator known for this block."""
        if not self._fresh:
            return locator
        with self._lock:
            return self._fresh.get(bare_locator(locator), locator)

    def _renewed(self, locator: str) -> str | None:
        """A newly signed locator for a refused one, or None."""
        if sg.permission_hint(locator) is None:
            return None  # not a signature problem we can fix
        bare = bare_locator(locator)
        with self._lock:
            recent = time.monotonic() - self._refreshed_at < REUSE_SECONDS
            known = self._fresh.get(bare)
        if not (recent and known is not None):
            fresh = dict(self._refresh())
            with self._lock:
                self._fresh = fresh
                self._refreshed_at = time.monotonic()
            known = fresh.get(bare)
            if self.on_refresh is not None:
                self.on_refresh()
        return known if known is not None and known != locator else None

    # ------------------------------------------------------------------ BlockStore

    def get(self, locator: str) -> bytes:
        loc = self._current(locator)
        try:
            return self.store.get(loc)
        except BlockPermissionDenied:
            new = self._renewed(loc)
            if new is None:
                raise
            return self.store.get(new)

    def read_chunks(self, locator: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        loc = self._current(locator)
        it = iter(self.store.read_chunks(loc, chunk_size))
        try:
            first = next(it, None)
        except BlockPermissionDenied:
            new = self._renewed(loc)
            if new is None:
                raise
            it = iter(self.store.read_chunks(new, chunk_size))
            first = next(it, None)
        if first is None:
            return
        yield first
        yield from it

    def exists(self, locator: str) -> bool:
        loc = self._current(locator)
        try:
            return self.store.exists(loc)
        except BlockPermissionDenied:
            new = self._renewed(loc)
            if new is None:
                raise
            return self.store.exists(new)

    def put(self, data: bytes | bytearray | memoryview) -> str:
        return self.store.put(data)

    def open_writer(self, on_released: Callable[[int], None] | None = None) -> BlockWriter:
        return self.store.open_writer(on_released)

    def get_range(self, locator: str, offset: int, length: int) -> bytes:
        return self.get(locator)[offset : offset + length]

    def close(self) -> None:
        """The underlying store belongs to the session: nothing to close here."""

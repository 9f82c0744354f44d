"""Small blocks stored in the catalog database, in the commit's own transaction.

Why: a durable small PUT used to cost three sync points -- the block file's
fsync, its directory's fsync after the rename, and the catalog's SQLite
commit -- and those took most of a 4 KiB PUT's time.  A block below
``threshold`` (1 MiB) is instead *staged* in memory by ``LocalBlockStore.put``
and written as a row of ``small_blocks`` inside the next catalog write
transaction (``LocalCatalog.update_many`` / ``create``), which is the one
sync point: the commit that makes a manifest reference the block makes the
block durable too.  Measured on this project's disk: see bench scenario 3
and the commit message.

Invariants:
- Staging happens only while a catalog is attached (``attach``), i.e. in a
  server process whose every manifest write goes through that catalog.  A
  standalone block store (tests, tools) writes files as before: its ``put``
  must be durable on return.
- A staged block stays staged until a transaction that wrote it commits;
  every catalog write transaction writes *all* staged blocks (a manifest in
  it may reference any of them), so no committed manifest references a
  block that is not durable.  A failed transaction leaves them staged.
- Readers see both homes: staged blocks, rows, and block files
  (``LocalBlockStore.get``); ``iter_blocks``/``delete`` (gc) cover the rows.
  ``mtime`` of a row is refreshed by a new put of the same content, so gc's
  "unless newer than" check works as it does for files.

Memory: staged bytes are capped (``MAX_STAGED_BYTES``); past the cap a put
writes a block file, as a standalone store does.

Locks: ``_lock`` guards ``_staged`` and ``_staged_bytes``; no I/O under it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator

from .local_catalog.schema import open_catalog_db
from .local_sqlite import Database

SMALL_BLOCK_LIMIT = 1 << 20  # blocks below this size live in the database
#: Bytes that may wait staged.  Past it (catalog commits keep failing, e.g.
#: a full disk) small blocks are written as files again, so memory stays
#: bounded whatever happens to the catalog.
MAX_STAGED_BYTES = 64 << 20


class SmallBlocks:
    """The ``small_blocks`` table of one data directory, plus staged blocks."""

    def __init__(self, db_path: str | Path, *, threshold: int = SMALL_BLOCK_LIMIT) -> None:
        self.db_path = Path(db_path)
        self.threshold = threshold
        self._db: Database | None = None
        self._lock = threading.Lock()
        self._staged: dict[str, tuple[bytes, bytes]] = {}  # locator -> (data, xxh3 digest)
        self._staged_bytes = 0
        self.max_staged_bytes = MAX_STAGED_BYTES
        self.attached = False

    # -- wiring ------------------------------------------------------------

    def attach(self) -> None:
        """A catalog will write staged blocks in its transactions: stage from now on."""
        self.attached = True

    def _database(self) -> Database | None:
        if self._db is None:
            if not self.attached and not self.db_path.exists():
                return None  # a block store without a catalog database: files only
            self._db = open_catalog_db(self.db_path, label="block database")
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    # -- staging (the write path) -------------------------------------------

    def accepts(self, size: int) -> bool:
        return self.attached and 0 < size < self.threshold and self._staged_bytes + size <= self.max_staged_bytes

    def stage(self, locator: str, data: bytes, xxh3: bytes) -> None:
        with self._lock:
            if locator not in self._staged:
                self._staged_bytes += len(data)
            self._staged[locator] = (data, xxh3)

    def write_staged(self, conn: sqlite3.Connection) -> list[str]:
        """Write every staged block inside the caller's write transaction;
        returns their locators (for ``committed``)."""
        with self._lock:
            items = list(self._staged.items())
        if not items:
            return []
        now = time.time()
        conn.executemany(
            "INSERT INTO small_blocks (locator, data, xxh3, mtime) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(locator) DO UPDATE SET mtime = excluded.mtime",
            [(loc, data, digest, now) for loc, (data, digest) in items],
        )
        return [loc for loc, _ in items]

    def committed(self, locators: list[str]) -> None:
        """The transaction that wrote these blocks committed: unstage them."""
        if not locators:
            return
        with self._lock:
            for loc in locators:
                hit = self._staged.pop(loc, None)
                if hit is not None:
                    self._staged_bytes -= len(hit[0])

    # -- reads and gc ------------------------------------------------------

    def get(self, locator: str) -> tuple[bytes, bytes] | None:
        """``(data, xxh3 digest)`` of a staged or stored small block, or None."""
        with self._lock:
            hit = self._staged.get(locator)
        if hit is not None:
            return hit
        db = self._database()
        if db is None:
            return None
        with db.read() as conn:
            row = conn.execute("SELECT data, xxh3 FROM small_blocks WHERE locator = ?", (locator,)).fetchone()
        return (bytes(row[0]), bytes(row[1])) if row is not None else None

    def exists(self, locator: str) -> bool:
        with self._lock:
            if locator in self._staged:
                return True
        db = self._database()
        if db is None:
            return False
        with db.read() as conn:
            return conn.execute("SELECT 1 FROM small_blocks WHERE locator = ?", (locator,)).fetchone() is not None

    def iter_blocks(self) -> Iterator[tuple[str, int, float]]:
        """``(locator, size, mtime)`` of every stored row."""
        db = self._database()
        if db is None:
            return
        with db.read() as conn:
            rows = conn.execute("SELECT locator, length(data), mtime FROM small_blocks").fetchall()
        yield from rows

    def delete(self, locator: str, *, unless_newer_than: float | None = None) -> bool:
        db = self._database()
        if db is None:
            return False
        with db.write() as conn:
            if unless_newer_than is None:
                cur = conn.execute("DELETE FROM small_blocks WHERE locator = ?", (locator,))
            else:
                cur = conn.execute("DELETE FROM small_blocks WHERE locator = ? AND mtime <= ?",
                                   (locator, unless_newer_than))
            return cur.rowcount > 0

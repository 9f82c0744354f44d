"""The one SQLite layer of the data directory's database files.

The catalog, the token store, the dead-property store (``catalog.sqlite3``
or ``dead-props.sqlite3``) and the lock store (``locks.sqlite3``) all reach
SQLite through :class:`Database`, so the rules below hold for each of them
and are written down once:

* **One connection per thread**, and per process: a connection is never
  used by two threads (sqlite3 connections are not safe to share), and a
  forked child opens its own instead of using the parent's (SQLite forbids
  carrying a connection across ``fork``).  The parent's connections are
  kept, unused and unclosed, in the child: closing them there would drop
  POSIX locks the child's own connections hold on the same file.
* **Autocommit mode** (``isolation_level=None``): a transaction is exactly
  a :meth:`Database.read` (``BEGIN DEFERRED``: a WAL snapshot) or
  :meth:`Database.write` (``BEGIN IMMEDIATE``: SQLite's write lock, which
  serializes writers across threads *and* processes); a statement outside
  them commits on its own.
* **WAL** so readers never wait for a writer; ``synchronous`` per database
  (FULL: a commit is durable before the caller answers); a **busy timeout**
  so a second writer waits for the first instead of failing.
* Connections of threads that have ended are closed when the next thread
  opens one (a worker pool that grows and shrinks does not leak them), and
  :meth:`Database.close` closes every connection of this process.

Schemas are versioned by :func:`migrate` from an ordered migration list per
database kind (``PRAGMA user_version`` = how many migrations ran).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

__all__ = ["Database", "Migration", "migrate", "BUSY_TIMEOUT_MS", "SYNCHRONOUS_MODES"]

BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another one
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


class _Held:
    """A thread's connection with what is needed to tell when it is stale."""

    __slots__ = ("conn", "pid", "thread")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.pid = os.getpid()
        self.thread = threading.current_thread()


class Database:
    """One SQLite file: per-thread connections and transactions.

    ``unavailable`` builds the exception raised when a transaction cannot
    start or commit (the database is busy past the timeout, the disk is
    full, ...): each store raises its own error type, which the layers above
    map to 503.  ``label`` names the database in those messages.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        label: str = "database",
        unavailable: Callable[[str], Exception] = sqlite3.OperationalError,
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"bad synchronous setting {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = busy_timeout_ms
        self.label = label
        self._unavailable = unavailable
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _open and _inherited
        self._open: list[_Held] = []  # every connection this process opened
        self._inherited: list[_Held] = []  # a parent process's: never used, never closed

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread is off only so close() and the pruning of ended
        # threads may close a connection from another thread; otherwise each
        # connection stays in its thread.
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000
        )
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and held.pid == os.getpid():
            return held.conn
        conn = self._connect()
        self._local.held = _Held(conn)
        with self._lock:
            self._sweep()
            self._open.append(self._local.held)
        return conn

    def _sweep(self) -> None:
        """Close connections of ended threads; set aside a parent's (after
        fork).  Caller holds ``_lock``."""
        pid = os.getpid()
        keep: list[_Held] = []
        for held in self._open:
            if held.pid != pid:
                self._inherited.append(held)
            elif held.thread.is_alive():
                keep.append(held)
            else:
                with contextlib.suppress(sqlite3.Error):
                    held.conn.close()
        self._open = keep

    def close(self) -> None:
        """Close every connection this process opened (any thread's)."""
        pid = os.getpid()
        with self._lock:
            conns, self._open = self._open, []
            self._inherited += [h for h in conns if h.pid != pid]
        for held in conns:
            if held.pid == pid:
                with contextlib.suppress(sqlite3.Error):
                    held.conn.close()
        self._local = threading.local()

    # -- transactions ----------------------------------------------------

    def read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """``BEGIN DEFERRED`` ... ``COMMIT``: a consistent snapshot."""
        return self._transaction("DEFERRED", None)

    def write(
        self, *, busy_timeout_ms: int | None = None, join: bool = False
    ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception.

        ``busy_timeout_ms``: wait at most this long for the write lock (for
        best-effort writes that must not queue behind a long writer).
        ``join``: if this thread is already inside a transaction, run inside
        it (the outer one commits or rolls back) instead of failing.
        """
        return self._transaction("IMMEDIATE", busy_timeout_ms, join=join)

    @contextlib.contextmanager
    def _transaction(self, mode: str, busy_timeout_ms: int | None, *, join: bool = False) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        if join and conn.in_transaction:
            yield conn
            return
        if busy_timeout_ms is not None:
            conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        try:
            try:
                conn.execute(f"BEGIN {mode}")
            except sqlite3.Error as e:
                raise self._unavailable(f"{self.label} busy: {e}") from e
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise self._unavailable(f"{self.label} commit failed: {e}") from e
        finally:
            if busy_timeout_ms is not None:
                conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")


# ---------------------------------------------------------------------------
# Schema versions


@dataclass(frozen=True)
class Migration:
    """One step of a database's schema history.

    ``version`` is the ``user_version`` a database has once ``apply`` ran
    (steps are numbered 1, 2, ... in order).  A step is history: once
    released it is never edited (a database at that version exists
    somewhere); a change is a new step at the end.
    """

    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None]


def migrate(db: Database, migrations: Sequence[Migration]) -> int:
    """Bring ``db`` to the last of ``migrations``; return the version.

    The steps run in one IMMEDIATE transaction, so two processes opening the
    same new database cannot both migrate it, and a failing step leaves the
    database as it was.  An up-to-date database costs one PRAGMA read and
    takes no lock.  A database newer than the list is refused: this davcoll
    does not know its tables.
    """
    latest = len(migrations)
    if [m.version for m in migrations] != list(range(1, latest + 1)):
        raise ValueError("migrations must be numbered 1, 2, ... in order")

    def current(conn: sqlite3.Connection) -> int:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > latest:
            raise RuntimeError(f"{db.path}: schema version {version} is newer than this davcoll ({latest})")
        return version

    if current(db.connection()) == latest:
        return latest
    with db.write() as conn:
        for step in migrations[current(conn) :]:
            step.apply(conn)
        conn.execute(f"PRAGMA user_version = {latest}")
    return latest

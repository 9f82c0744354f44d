"""WebDAV locks in SQLite in the data directory (``locks.sqlite3``).

Why not WsgiDAV's in-memory storage: a restart dropped every lock and a
second process on the same data directory never saw the first one's locks,
so a client's PUT through another process overwrote a locked file.  Here
every process on the directory reads the same table, and ``exclusive()``
is an SQLite write transaction (``BEGIN IMMEDIATE``), so "check conflicts,
then create" is atomic across processes as well as threads.

Expired rows are ignored by every query and deleted when a lock is created.
Descendants of a root are a key range (``[root + "/", root + "0")``: "0"
follows "/"), answered by the index without a scan.  Connections and
transactions: ``local_sqlite.Database`` (with synchronous=NORMAL); a
thread inside ``exclusive()`` runs its other calls inside that transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

from .local_sqlite import Database
from .locks import LockStore, SharedStateUnavailable, child_prefix, map_store_errors, normalize_root

_mapped = map_store_errors(sqlite3.Error)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dav_locks (
    token TEXT PRIMARY KEY,
    root TEXT NOT NULL,
    principal TEXT NOT NULL,
    type TEXT NOT NULL,
    scope TEXT NOT NULL,
    depth TEXT NOT NULL,
    owner BLOB NOT NULL,
    timeout REAL NOT NULL,
    expire REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dav_locks_root ON dav_locks(root);
CREATE INDEX IF NOT EXISTS dav_locks_principal ON dav_locks(principal);
"""
_COLS = ("token", "root", "principal", "type", "scope", "depth", "owner", "timeout", "expire")
_SELECT = f"SELECT {', '.join(_COLS)} FROM dav_locks"
_LIVE = "(expire < 0 OR expire >= ?)"


def _row(r: tuple) -> dict[str, Any]:
    d = dict(zip(_COLS, r))
    d["owner"] = bytes(d["owner"])
    return d


class LocalLockStore(LockStore):
    def __init__(self, db_path: str | Path) -> None:
        self.db_path = str(db_path)
        self._db = Database(db_path, synchronous="NORMAL", label="lock table", unavailable=SharedStateUnavailable)
        self._conn().executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"LocalLockStore({self.db_path!r})"

    def _conn(self) -> sqlite3.Connection:
        return self._db.connection()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._db.write(join=True):
            yield

    def close(self) -> None:
        self._db.close()

    @_mapped
    def cleanup(self) -> None:
        self._conn().execute("DELETE FROM dav_locks WHERE expire >= 0 AND expire < ?", (time.time(),))

    @_mapped
    def clear(self) -> None:
        self._conn().execute("DELETE FROM dav_locks")

    @_mapped
    def get(self, token: str) -> dict[str, Any] | None:
        r = self._conn().execute(f"{_SELECT} WHERE token=? AND {_LIVE}", (token, time.time())).fetchone()
        return _row(r) if r else None

    create = _mapped(LockStore.create)
    refresh = _mapped(LockStore.refresh)

    def _insert(self, lock: dict[str, Any]) -> None:
        self._conn().execute(
            f"INSERT INTO dav_locks({', '.join(_COLS)}) VALUES({', '.join('?' * len(_COLS))})",
            tuple(lock[k] for k in _COLS),
        )

    def _save_expiry(self, lock: dict[str, Any]) -> None:
        self._conn().execute("UPDATE dav_locks SET timeout=?, expire=? WHERE token=?",
                             (lock["timeout"], lock["expire"], lock["token"]))

    @_mapped
    def delete(self, token: str) -> bool:
        return self._conn().execute("DELETE FROM dav_locks WHERE token=?", (token,)).rowcount > 0

    @_mapped
    def get_lock_list(self, path: str, *, include_root: bool, include_children: bool, token_only: bool) -> list:
        root = normalize_root(path)
        now = time.time()
        c = self._conn()
        rows: list[tuple] = []
        if include_root:
            rows += c.execute(f"{_SELECT} WHERE root=? AND {_LIVE}", (root, now)).fetchall()
        if include_children:
            lo = child_prefix(root)
            hi = lo[:-1] + "0"
            rows += c.execute(f"{_SELECT} WHERE root >= ? AND root < ? AND root != ? AND {_LIVE}", (lo, hi, root, now)).fetchall()
        locks = [_row(r) for r in rows]
        return [lk["token"] for lk in locks] if token_only else locks

    @_mapped
    def locks_on(self, roots: list[str], *, below: str | None = None) -> list[dict[str, Any]]:
        """Live locks rooted at any of ``roots`` (and, with ``below``, strictly
        below that root), in one query: the write-conflict check asks for a
        URL and all its ancestors at once (dav/locks.py)."""
        now = time.time()
        keys = list(dict.fromkeys(normalize_root(r) for r in roots))
        sql = f"{_SELECT} WHERE root IN ({', '.join('?' * len(keys))}) AND {_LIVE}"
        args: list[Any] = [*keys, now]
        if below is not None:
            lo = child_prefix(normalize_root(below))
            sql += f" UNION ALL {_SELECT} WHERE root >= ? AND root < ? AND root != ? AND {_LIVE}"
            args += [lo, lo[:-1] + "0", normalize_root(below), now]
        return [_row(r) for r in self._conn().execute(sql, args).fetchall()]

    @_mapped
    def count_for(self, principal: str) -> int:
        r = self._conn().execute(f"SELECT COUNT(*) FROM dav_locks WHERE principal=? AND {_LIVE}", (principal, time.time())).fetchone()
        return int(r[0])

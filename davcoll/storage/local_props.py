"""Dead WebDAV properties in SQLite (embedded backend; survives restarts).

One table keyed by (resource key, property name).  Subtree operations use a
range on the key: descendants of ``k`` are keys in ``[k + "/", k + "0")``
("0" is the character after "/"), which an index answers without a scan.
Each connection is used by one thread only (``threading.local``).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from .props import PropertyStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_props (
    res_key TEXT NOT NULL,
    name TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (res_key, name)
) WITHOUT ROWID;
"""


class LocalPropertyStore(PropertyStore):
    def __init__(self, db_path: str | Path) -> None:
        self.db_path = str(db_path)
        self._local = threading.local()
        with self._conn() as c:
            c.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            self._local.conn = c
        return c

    def names(self, key: str) -> list[str]:
        rows = self._conn().execute("SELECT name FROM dead_props WHERE res_key=? ORDER BY name", (key,))
        return [r[0] for r in rows]

    def get(self, key: str, name: str) -> bytes | None:
        row = self._conn().execute("SELECT value FROM dead_props WHERE res_key=? AND name=?", (key, name)).fetchone()
        return bytes(row[0]) if row else None

    def set(self, key: str, name: str, value: bytes) -> None:
        self._conn().execute(
            "INSERT INTO dead_props(res_key, name, value) VALUES(?,?,?) "
            "ON CONFLICT(res_key, name) DO UPDATE SET value=excluded.value",
            (key, name, value),
        )

    def remove(self, key: str, name: str) -> None:
        self._conn().execute("DELETE FROM dead_props WHERE res_key=? AND name=?", (key, name))

    @staticmethod
    def _subtree(key: str) -> tuple[str, tuple[str, str, str]]:
        k = key.rstrip("/")
        return "(res_key = ? OR (res_key >= ? AND res_key < ?))", (k, k + "/", k + "0")

    def remove_tree(self, key: str) -> None:
        where, args = self._subtree(key)
        self._conn().execute(f"DELETE FROM dead_props WHERE {where}", args)

    def copy_tree(self, src: str, dst: str) -> None:
        self._rekey(src, dst, move=False)

    def move_tree(self, src: str, dst: str) -> None:
        self._rekey(src, dst, move=True)

    def _rekey(self, src: str, dst: str, *, move: bool) -> None:
        s, d = src.rstrip("/"), dst.rstrip("/")
        where, args = self._subtree(s)
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            rows = c.execute(f"SELECT res_key, name, value FROM dead_props WHERE {where}", args).fetchall()
            if move:
                c.execute(f"DELETE FROM dead_props WHERE {where}", args)
            c.executemany(
                "INSERT OR REPLACE INTO dead_props(res_key, name, value) VALUES(?,?,?)",
                [(d + k[len(s):], n, v) for k, n, v in rows],
            )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

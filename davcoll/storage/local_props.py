"""Dead WebDAV properties in SQLite (embedded backend; survives restarts).

One table keyed by (resource key, property name).  Subtree operations use a
range on the key: descendants of ``k`` are keys in ``[k + "/", k + "0")``
("0" is the character after "/"), which an index answers without a scan.
The ``parent`` column (``parent_key(res_key)``, indexed) lets a folder
listing read its children's properties in one query without touching
deeper levels.  The table is part of the catalog database's schema
(``local_catalog.schema``: created and upgraded there, also when the file
is the Arvados backend's ``dead-props.sqlite3``); connections and
transactions: ``local_sqlite.Database``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .local_catalog.schema import open_catalog_db
from .catalog import Unavailable
from .props import PropertyStore, parent_key


class LocalPropertyStore(PropertyStore):
    def __init__(self, db_path: str | Path) -> None:
        self.db_path = str(db_path)
        # Unavailable: a store failure maps to 503 like the catalog's.
        self._db = open_catalog_db(db_path, label="dead property table", unavailable=Unavailable)

    def _conn(self) -> sqlite3.Connection:
        return self._db.connection()

    def names(self, key: str) -> list[str]:
        rows = self._conn().execute("SELECT name FROM dead_props WHERE res_key=? ORDER BY name", (key,))
        return [r[0] for r in rows]

    def get(self, key: str, name: str) -> bytes | None:
        row = self._conn().execute("SELECT value FROM dead_props WHERE res_key=? AND name=?", (key, name)).fetchone()
        return bytes(row[0]) if row else None

    def get_all(self, key: str) -> dict[str, bytes]:
        rows = self._conn().execute("SELECT name, value FROM dead_props WHERE res_key=?", (key,))
        return {n: bytes(v) for n, v in rows}

    def get_children(self, parent: str, max_bytes: int) -> dict[str, dict[str, bytes]] | None:
        rows = self._conn().execute("SELECT res_key, name, value FROM dead_props WHERE parent=?", (parent,))
        out: dict[str, dict[str, bytes]] = {}
        size = 0
        for k, n, v in rows:
            size += len(k) + len(n) + len(v)
            if size > max_bytes:
                return None
            out.setdefault(k, {})[n] = bytes(v)
        return out

    def set(self, key: str, name: str, value: bytes) -> None:
        self._conn().execute(
            "INSERT INTO dead_props(res_key, name, value, parent) VALUES(?,?,?,?) "
            "ON CONFLICT(res_key, name) DO UPDATE SET value=excluded.value",
            (key, name, value, parent_key(key)),
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
        with self._db.write() as c:
            rows = c.execute(f"SELECT res_key, name, value FROM dead_props WHERE {where}", args).fetchall()
            if move:
                c.execute(f"DELETE FROM dead_props WHERE {where}", args)
            c.executemany(
                "INSERT OR REPLACE INTO dead_props(res_key, name, value, parent) VALUES(?,?,?,?)",
                [(d + k[len(s):], n, v, parent_key(d + k[len(s):])) for k, n, v in rows],
            )

    def close(self) -> None:
        self._db.close()

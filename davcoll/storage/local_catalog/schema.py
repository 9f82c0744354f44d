"""The tables of ``catalog.sqlite3`` and how older databases are upgraded."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ...manifest import parse_stream
from ..local_sqlite import Database
from .lines import has_files
from .rows import APPROX_SQL, encode_segs, split_path

DB_FILENAME = "catalog.sqlite3"
_SCHEMA_VERSION = 2

_SCHEMA = (
    # ``id`` is the compact key the tree tables use instead of the UUID.
    """CREATE TABLE IF NOT EXISTS collections (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        owner_uuid TEXT NOT NULL,
        created_at TEXT NOT NULL,
        modified_at TEXT NOT NULL,
        version INTEGER NOT NULL,
        properties TEXT NOT NULL,
        is_trashed INTEGER NOT NULL DEFAULT 0,
        trashed_at TEXT
    )""",
    # Names are unique among live collections only (trash frees a name).
    """CREATE UNIQUE INDEX IF NOT EXISTS collections_live_name ON collections(name) WHERE is_trashed = 0""",
    # One row per version: what the collection record looked like then.
    # approx_chars estimates the manifest's length (to decide whether a PDH
    # is cheap), and pdh is filled in lazily.
    """CREATE TABLE IF NOT EXISTS versions (
        uuid TEXT NOT NULL,
        version INTEGER NOT NULL,
        name TEXT NOT NULL,
        properties TEXT NOT NULL,
        modified_at TEXT NOT NULL,
        approx_chars INTEGER NOT NULL,
        pdh TEXT,
        PRIMARY KEY (uuid, version)
    ) WITHOUT ROWID""",
    """CREATE INDEX IF NOT EXISTS versions_pdh ON versions(pdh) WHERE pdh IS NOT NULL""",
    # One row per entry per range of versions [v_from, v_to) (see above).
    """CREATE TABLE IF NOT EXISTS entries (
        cid INTEGER NOT NULL,
        parent TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        segs TEXT,
        v_from INTEGER NOT NULL,
        v_to INTEGER,
        PRIMARY KEY (cid, parent, name, v_from)
    ) WITHOUT ROWID""",
    """CREATE UNIQUE INDEX IF NOT EXISTS entries_current ON entries(cid, parent, name) WHERE v_to IS NULL""",
    # The line cache of current directories (NULL line = to be rendered).
    """CREATE TABLE IF NOT EXISTS dir_lines (
        cid INTEGER NOT NULL,
        path TEXT NOT NULL,
        line TEXT,
        PRIMARY KEY (cid, path)
    )""",
)


def db_path_for(data_dir: str | os.PathLike[str]) -> Path:
    """Where the catalog (and the token table) live inside a data directory."""
    return Path(data_dir) / DB_FILENAME


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Rewrite a schema-1 database in place (inside the caller's transaction).

    Each old row (a directory's line over ``[v_from, v_to)``) becomes a
    directory row plus one row per file of that line over the same range:
    the history stays exact, merely more fragmented than new updates make
    it.  Current lines become the line cache as they are (same rendering).
    """
    # The collections table gains its integer key.  Its name index moves
    # with the renamed table and is dropped with it; the caller's pass over
    # _SCHEMA recreates it on the new table.
    conn.execute("ALTER TABLE collections RENAME TO collections_v1")
    conn.execute(_SCHEMA[0])  # collections
    conn.execute(
        "INSERT INTO collections (uuid, name, owner_uuid, created_at, modified_at, version, properties, is_trashed,"
        " trashed_at) SELECT uuid, name, owner_uuid, created_at, modified_at, version, properties, is_trashed,"
        " trashed_at FROM collections_v1 ORDER BY created_at, uuid"
    )
    conn.execute("DROP TABLE collections_v1")  # drops its name index too; recreated from _SCHEMA
    conn.execute("ALTER TABLE versions RENAME COLUMN text_chars TO approx_chars")
    for statement in _SCHEMA[4:]:  # entries, entries_current, dir_lines
        conn.execute(statement)
    cids = dict(conn.execute("SELECT uuid, id FROM collections"))
    insert = "INSERT INTO entries (cid, parent, name, kind, segs, v_from, v_to) VALUES (?, ?, ?, ?, ?, ?, ?)"
    for uuid, path, line, v_from, v_to in conn.execute("SELECT uuid, path, line, v_from, v_to FROM dirs").fetchall():
        cid = cids[uuid]
        rows = []
        if path:
            parent, name = split_path(path)
            rows.append((cid, parent, name, "d", None, v_from, v_to))
        if has_files(line):
            _, files = parse_stream(line[:-1])
            rows += [(cid, path, name, "f", encode_segs(segs) if segs else "", v_from, v_to) for name, segs in files]
        conn.executemany(insert, rows)
        if v_to is None:
            conn.execute("INSERT INTO dir_lines (cid, path, line) VALUES (?, ?, ?)", (cid, path, line))
    conn.execute("DROP TABLE dirs")
    # approx_chars is now an estimate from entry rows; the exact lengths of
    # schema 1 would drift from it as rows are added and closed.
    conn.execute(
        f"UPDATE versions SET approx_chars = (SELECT {APPROX_SQL} FROM entries"
        " WHERE cid = (SELECT id FROM collections c WHERE c.uuid = versions.uuid) AND v_to IS NULL)"
        " WHERE version = (SELECT version FROM collections c WHERE c.uuid = versions.uuid)"
    )


def init_schema(db: Database) -> None:
    """Create or upgrade the schema; one IMMEDIATE transaction, so two
    processes opening the same new database cannot both migrate it."""
    with db.write() as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > _SCHEMA_VERSION:
            raise RuntimeError(f"{db.path}: schema version {version} is newer than this davcoll")
        if version == 1:
            _migrate_v1(conn)
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

"""The tables of the catalog database and their history: one ordered list
of migrations.

``catalog.sqlite3`` holds the catalog's tables (``collections``,
``versions``, ``entries``, ``dir_lines``: see the package docstring), the
token store's (``tokens``), the dead-property store's (``dead_props``) and
the block store's small blocks (``small_blocks``).
Whichever of the three stores opens the file first brings every table up
to date (``open_catalog_db``): ``PRAGMA user_version`` is the number of
migrations applied, and the missing ones run in order, in one IMMEDIATE
transaction.  The Arvados backend's ``dead-props.sqlite3`` is opened the
same way, so it carries the (empty) other tables too: one schema for every
such file is simpler than a schema per store.

Each migration is history: it is never edited once released (databases
at every version exist), so each writes its SQL out in full rather than
sharing statements with later ones; a change to any table is a new
migration at the end of ``MIGRATIONS``.  Versions 1 and 2 are the
catalog's own two layouts from before this list existed (a database still
at 1 is converted by 2; a new one passes through both).  Versions 3 and 4
adopt the token and dead-property tables, which were created
unversioned: a database may already hold them (dead_props with or without
its ``parent`` column), so those steps create only what is missing.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Callable

from ...manifest import parse_stream
from ..local_sqlite import Database, Migration, migrate
from ..props import parent_key
from .lines import has_files
from .rows import APPROX_SQL, encode_segs, split_path

DB_FILENAME = "catalog.sqlite3"


def db_path_for(data_dir: str | os.PathLike[str]) -> Path:
    """Where the catalog (and the token table) live inside a data directory."""
    return Path(data_dir) / DB_FILENAME


def open_catalog_db(
    path: str | os.PathLike[str],
    *,
    synchronous: str = "FULL",
    label: str = "catalog database",
    unavailable: Callable[[str], Exception] = sqlite3.OperationalError,
) -> Database:
    """The database at ``path``, with every migration applied."""
    db = Database(path, synchronous=synchronous, label=label, unavailable=unavailable)
    try:
        migrate(db, MIGRATIONS)
    except BaseException:
        db.close()
        raise
    return db


# ---------------------------------------------------------------------------
# 1: the first catalog layout (one row per directory line, keyed by UUID)


def _v1_directory_lines(conn: sqlite3.Connection) -> None:
    """Schema 1: collections keyed by UUID; ``dirs`` holds each directory's
    rendered line over a range of versions ``[v_from, v_to)``."""
    for statement in (
        """CREATE TABLE collections (uuid TEXT PRIMARY KEY, name TEXT NOT NULL, owner_uuid TEXT NOT NULL,
            created_at TEXT NOT NULL, modified_at TEXT NOT NULL, version INTEGER NOT NULL, properties TEXT NOT NULL,
            is_trashed INTEGER NOT NULL DEFAULT 0, trashed_at TEXT)""",
        "CREATE UNIQUE INDEX collections_live_name ON collections(name) WHERE is_trashed = 0",
        """CREATE TABLE versions (uuid TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,
            properties TEXT NOT NULL, modified_at TEXT NOT NULL, text_chars INTEGER NOT NULL, pdh TEXT,
            PRIMARY KEY (uuid, version)) WITHOUT ROWID""",
        "CREATE INDEX versions_pdh ON versions(pdh) WHERE pdh IS NOT NULL",
        """CREATE TABLE dirs (uuid TEXT NOT NULL, path TEXT NOT NULL, line TEXT NOT NULL, v_from INTEGER NOT NULL,
            v_to INTEGER)""",
        "CREATE UNIQUE INDEX dirs_current ON dirs(uuid, path) WHERE v_to IS NULL",
        "CREATE INDEX dirs_history ON dirs(uuid, path, v_from)",
    ):
        conn.execute(statement)


# ---------------------------------------------------------------------------
# 2: entry rows and the line cache (see the package docstring)

# ``id`` is the compact key the tree tables use instead of the UUID.
_V2_COLLECTIONS = """CREATE TABLE collections (
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
    )"""
# Names are unique among live collections only (trash frees a name).
_V2_LIVE_NAME = "CREATE UNIQUE INDEX collections_live_name ON collections(name) WHERE is_trashed = 0"
# ``versions`` keeps its schema-1 shape but for one renamed column: one row
# per version, what the collection record looked like then; approx_chars
# estimates the manifest's length (to decide whether a PDH is cheap), and
# pdh is filled in lazily (indexed by ``versions_pdh``).
_V2_TREE = (
    # One row per entry per range of versions [v_from, v_to).
    """CREATE TABLE entries (
        cid INTEGER NOT NULL,
        parent TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        segs TEXT,
        v_from INTEGER NOT NULL,
        v_to INTEGER,
        PRIMARY KEY (cid, parent, name, v_from)
    ) WITHOUT ROWID""",
    "CREATE UNIQUE INDEX entries_current ON entries(cid, parent, name) WHERE v_to IS NULL",
    # The line cache of current directories (NULL line = to be rendered).
    """CREATE TABLE dir_lines (
        cid INTEGER NOT NULL,
        path TEXT NOT NULL,
        line TEXT,
        PRIMARY KEY (cid, path)
    )""",
)


def _v2_entry_rows(conn: sqlite3.Connection) -> None:
    """Schema 2: one row per entry per range of versions, plus the line cache.

    Rewrites the schema-1 tables in place.

    Each old row (a directory's line over ``[v_from, v_to)``) becomes a
    directory row plus one row per file of that line over the same range:
    the history stays exact, merely more fragmented than new updates make
    it.  Current lines become the line cache as they are (same rendering).
    """
    # The collections table gains its integer key.  Its name index moves
    # with the renamed table and is dropped with it, then made anew.
    conn.execute("ALTER TABLE collections RENAME TO collections_v1")
    conn.execute(_V2_COLLECTIONS)
    conn.execute(
        "INSERT INTO collections (uuid, name, owner_uuid, created_at, modified_at, version, properties, is_trashed,"
        " trashed_at) SELECT uuid, name, owner_uuid, created_at, modified_at, version, properties, is_trashed,"
        " trashed_at FROM collections_v1 ORDER BY created_at, uuid"
    )
    conn.execute("DROP TABLE collections_v1")
    conn.execute(_V2_LIVE_NAME)
    conn.execute("ALTER TABLE versions RENAME COLUMN text_chars TO approx_chars")
    for statement in _V2_TREE:
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


# ---------------------------------------------------------------------------
# 3, 4: the token and dead-property tables (created unversioned before)


def _v3_tokens(conn: sqlite3.Connection) -> None:
    """The token store's table: SHA-256 digests of tokens (local_tokens)."""
    conn.execute(
        """CREATE TABLE IF NOT EXISTS tokens (
            token_sha256 TEXT PRIMARY KEY,
            read_only INTEGER NOT NULL,
            label TEXT NOT NULL,
            created_at TEXT NOT NULL
        ) WITHOUT ROWID"""
    )


def _v4_dead_props(conn: sqlite3.Connection) -> None:
    """Dead WebDAV properties (local_props), with the indexed ``parent``
    key that lets a folder listing read its children's properties at once.
    A table from before that column gets it, filled in."""
    conn.execute(
        """CREATE TABLE IF NOT EXISTS dead_props (
            res_key TEXT NOT NULL,
            name TEXT NOT NULL,
            value BLOB NOT NULL,
            parent TEXT,
            PRIMARY KEY (res_key, name)
        ) WITHOUT ROWID"""
    )
    if "parent" not in {r[1] for r in conn.execute("PRAGMA table_info(dead_props)")}:
        conn.execute("ALTER TABLE dead_props ADD COLUMN parent TEXT")
    conn.create_function("davcoll_parent_key", 1, parent_key, deterministic=True)
    conn.execute("UPDATE dead_props SET parent = davcoll_parent_key(res_key) WHERE parent IS NULL")
    conn.execute("CREATE INDEX IF NOT EXISTS dead_props_parent ON dead_props(parent)")


def _v5_small_blocks(conn: sqlite3.Connection) -> None:
    """Blocks under 1 MiB, written in the same transaction as the manifest
    update that references them (local_small_blocks): one sync point per
    durable small write instead of three."""
    conn.execute(
        """CREATE TABLE IF NOT EXISTS small_blocks (
            locator TEXT PRIMARY KEY,
            data BLOB NOT NULL,
            xxh3 BLOB NOT NULL,
            mtime REAL NOT NULL
        )"""
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "catalog: directory lines", _v1_directory_lines),
    Migration(2, "catalog: entry rows and line cache", _v2_entry_rows),
    Migration(3, "tokens", _v3_tokens),
    Migration(4, "dead_props with parent", _v4_dead_props),
    Migration(5, "small blocks", _v5_small_blocks),
)

"""Reading a collection's rows at its current version or an older one, and
its versions' portable data hashes.

Every function runs on the caller's connection, inside the caller's
transaction (that is what makes what it reads one consistent version).
"""

from __future__ import annotations

import sqlite3

from ...manifest import Dir, portable_data_hash
from .lines import assemble_current, store_lines
from .rows import CUR, Row, decode_segs, join_path, split_path, subtree_bounds


def current_entry(conn: sqlite3.Connection, cid: int, path: str) -> tuple[str, str | None, int] | None:
    """``(kind, segs, v_from)`` of the current row at a non-root ``path``."""
    parent, name = split_path(path)
    return conn.execute(
        f"SELECT kind, segs, v_from FROM {CUR} WHERE cid = ? AND parent = ? AND name = ? AND v_to IS NULL",
        (cid, parent, name),
    ).fetchone()


def entry_at(conn: sqlite3.Connection, cid: int, path: str, version: int) -> tuple[str, str | None] | None:
    """``(kind, segs)`` of the row at a non-root ``path`` in ``version``.

    The newest row starting at or before ``version`` is the only candidate
    (row ranges of one path never overlap); it counts if still open then.
    """
    parent, name = split_path(path)
    row = conn.execute(
        "SELECT kind, segs, v_to FROM entries WHERE cid = ? AND parent = ? AND name = ? AND v_from <= ?"
        " ORDER BY v_from DESC LIMIT 1",
        (cid, parent, name, version),
    ).fetchone()
    if row is None or (row[2] is not None and row[2] <= version):
        return None
    return row[0], row[1]


def tree_at(conn: sqlite3.Connection, cid: int, version: int) -> Dir:
    """The whole tree of ``version``, built from the rows valid then."""
    root = Dir()
    dirs: dict[str, Dir] = {"": root}

    def dir_of(path: str) -> Dir:
        d = dirs.get(path)
        if d is None:  # rows come parents-first (key order); this is a fallback
            # Iterative: climb to the nearest known ancestor, then create down.
            missing = [path]
            parent, _ = split_path(path)
            while parent not in dirs:
                missing.append(parent)
                parent, _ = split_path(parent)
            d = dirs[parent]
            for p in reversed(missing):
                d = dirs[p] = d.setdefault(split_path(p)[1], Dir())
        return d

    for parent, name, kind, segs in conn.execute(
        "SELECT parent, name, kind, segs FROM entries WHERE cid = ? AND v_from <= ? AND (v_to IS NULL OR v_to > ?)",
        (cid, version, version),
    ):
        if kind == "d":
            dir_of(join_path(parent, name))
        else:
            dir_of(parent)[name] = decode_segs(segs)
    return root


def subtree_rows(conn: sqlite3.Connection, cid: int, top: str, version: int | None) -> list[Row]:
    """Rows strictly below directory ``top``: current ones, or those valid
    at ``version``.  Two index ranges: children of ``top``, and rows whose
    parent lies below it."""
    if version is None:
        sql = f"SELECT parent, name, kind, segs FROM {CUR} WHERE cid = ? AND v_to IS NULL"
        extra: tuple = ()
    else:
        sql = "SELECT parent, name, kind, segs FROM entries WHERE cid = ? AND v_from <= ? AND (v_to IS NULL OR v_to > ?)"
        extra = (version, version)
    if not top:
        return conn.execute(sql, (cid, *extra)).fetchall()
    lo, hi = subtree_bounds(top)
    rows = conn.execute(sql + " AND parent = ?", (cid, *extra, top)).fetchall()
    rows += conn.execute(sql + " AND parent >= ? AND parent < ?", (cid, *extra, lo, hi)).fetchall()
    return rows


# ---------------------------------------------------------------------------
# Portable data hashes of versions (computed lazily, cached in ``versions``)

# Live collections whose current version has no PDH yet.
MISSING_PDHS = (
    "SELECT c.uuid, c.version, c.id FROM collections c"
    " JOIN versions v ON v.uuid = c.uuid AND v.version = c.version"
    " WHERE c.is_trashed = 0 AND v.pdh IS NULL"
)


def cached_pdh(conn: sqlite3.Connection, uuid: str, version: int) -> str | None:
    row = conn.execute("SELECT pdh FROM versions WHERE uuid = ? AND version = ?", (uuid, version)).fetchone()
    return row[0] if row else None


def find_pdh(conn: sqlite3.Connection, pdh: str) -> tuple[str, int] | None:
    """(uuid, version) of a live collection version with this PDH,
    preferring a current version, then the newest."""
    return conn.execute(
        "SELECT v.uuid, v.version FROM versions v JOIN collections c ON c.uuid = v.uuid"
        " WHERE v.pdh = ? AND c.is_trashed = 0"
        " ORDER BY v.version = c.version DESC, v.modified_at DESC LIMIT 1",
        (pdh,),
    ).fetchone()


def backfill_pdhs(conn: sqlite3.Connection) -> None:
    """Compute the missing PDHs of current versions, under the caller's
    write lock (only a ``replace_files`` with a PDH source that missed:
    a writer's own request; reads use ``LocalCatalog.index_pdhs`` instead).

    Costs a manifest assembly per collection whose PDH was never needed,
    once: the result is cached, and so are the lines it rendered (the
    caller's write transaction holds the lock for this very version).
    Older versions are found by PDH only if their PDH was computed while
    they were read.
    """
    for uuid, version, cid in conn.execute(MISSING_PDHS).fetchall():
        text, rendered = assemble_current(conn, cid)
        store_lines(conn, cid, rendered)
        conn.execute("UPDATE versions SET pdh = ? WHERE uuid = ? AND version = ?", (portable_data_hash(text), uuid, version))

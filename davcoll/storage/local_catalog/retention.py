"""Retention (``davcoll gc``): which stored versions keep which blocks alive,
and dropping expired trash and old versions.

Nothing here runs on the request path.  Trash and old versions keep
their blocks alive until a retention pass removes them: a collection
trashed before ``trashed_before`` is purged with all its versions; an
old version whose successor was written before ``superseded_before``
(so it has not been current since then) is dropped, except the newest
``keep`` versions.  Timestamps are RFC 3339 strings as stored (they
compare as text).  Each collection is changed in its own short write
transaction, so a live server's commits wait for one collection at most.
"""

from __future__ import annotations

import sqlite3

from ...manifest import bare_locator
from ..local_sqlite import Database

USAGE_KINDS = ("live", "versions", "trash", "versions_expired", "trash_expired")


def referenced_blocks(db: Database) -> set[str]:
    """Bare locators used by any version of any collection (trashed too).

    For garbage collection: a block outside this set is not needed to
    read any stored version.  Read from every entry row's segments (the
    line cache holds nothing the rows do not).
    """
    out: set[str] = set()
    with db.read() as conn:
        for (segs,) in conn.execute("SELECT segs FROM entries WHERE kind = 'f' AND segs != ''"):
            out.update(map(bare_locator, segs.split(" ")[::3]))
    return out


def expired_upto(conn: sqlite3.Connection, uuid: str, version: int, superseded_before: str, keep: int) -> int:
    """The newest version of ``uuid`` (at ``version``) that retention
    drops, or 0.  A version ``v`` expires when ``v + 1`` was written
    before the cutoff and ``v`` is not among the newest ``keep``."""
    (last,) = conn.execute(
        "SELECT MAX(version) FROM versions WHERE uuid = ? AND version <= ? AND modified_at < ?",
        (uuid, version - max(1, keep) + 1, superseded_before),
    ).fetchone()
    return max(0, (last or 0) - 1)


def retention_plan(
    conn: sqlite3.Connection, trashed_before: str | None, superseded_before: str | None, keep: int
) -> dict[int, tuple[bool, int]]:
    """cid -> (purged with its trash, newest version dropped) for every
    collection retention would change."""
    plan: dict[int, tuple[bool, int]] = {}
    for cid, uuid, version, trashed, trashed_at in conn.execute(
        "SELECT id, uuid, version, is_trashed, trashed_at FROM collections"
    ).fetchall():
        purge = bool(trashed) and trashed_before is not None and bool(trashed_at) and trashed_at < trashed_before
        upto = 0
        if superseded_before is not None and not purge:
            upto = expired_upto(conn, uuid, version, superseded_before, keep)
        if purge or upto:
            plan[cid] = (purge, upto)
    return plan


def block_usage(
    db: Database, *, trashed_before: str | None = None, superseded_before: str | None = None, keep: int = 1
) -> dict[str, str]:
    """Every referenced bare locator -> what keeps it alive (one of
    USAGE_KINDS, the first that applies): a current version of a live
    collection, an old version retention keeps, a trashed collection
    retention keeps, or -- freed by the retention pass with these
    cutoffs -- only expired old versions, only expired trash."""
    rank = {kind: i for i, kind in enumerate(USAGE_KINDS)}
    out: dict[str, str] = {}
    with db.read() as conn:
        plan = retention_plan(conn, trashed_before, superseded_before, keep)
        trashed = {cid for (cid,) in conn.execute("SELECT id FROM collections WHERE is_trashed = 1")}
        for cid, v_to, segs in conn.execute("SELECT cid, v_to, segs FROM entries WHERE kind = 'f' AND segs != ''"):
            purge, upto = plan.get(cid, (False, 0))
            if purge:
                kind = "trash_expired"
            elif v_to is not None and v_to <= upto + 1:
                kind = "versions_expired"
            elif cid in trashed:
                kind = "trash"
            elif v_to is None:
                kind = "live"
            else:
                kind = "versions"
            for loc in map(bare_locator, segs.split(" ")[::3]):
                old = out.get(loc)
                if old is None or rank[kind] < rank[old]:
                    out[loc] = kind
    return out


def purge_trash(db: Database, trashed_before: str) -> list[str]:
    """Delete for good every collection trashed before ``trashed_before``,
    with all its versions and rows; returns their UUIDs.  Their blocks
    become garbage for ``davcoll gc``."""
    with db.read() as conn:
        candidates = conn.execute(
            "SELECT id, uuid FROM collections WHERE is_trashed = 1 AND trashed_at < ?", (trashed_before,)
        ).fetchall()
    purged: list[str] = []
    for cid, uuid in candidates:
        with db.write() as conn:
            # Re-checked under the write lock: it may have been untrashed.
            if conn.execute(
                "SELECT 1 FROM collections WHERE id = ? AND is_trashed = 1 AND trashed_at < ?", (cid, trashed_before)
            ).fetchone() is None:
                continue
            conn.execute("DELETE FROM entries WHERE cid = ?", (cid,))
            conn.execute("DELETE FROM dir_lines WHERE cid = ?", (cid,))
            conn.execute("DELETE FROM versions WHERE uuid = ?", (uuid,))
            conn.execute("DELETE FROM collections WHERE id = ?", (cid,))
        purged.append(uuid)
    return purged


def prune_versions(db: Database, superseded_before: str, keep: int = 1) -> int:
    """Drop the old versions retention no longer keeps (see above), with
    the entry rows only they used; returns how many versions went.  The
    current version is never dropped, so no reader or writer working on
    it notices."""
    with db.read() as conn:
        plan = retention_plan(conn, None, superseded_before, keep)
    removed = 0
    for cid in plan:
        with db.write() as conn:
            row = conn.execute("SELECT uuid, version FROM collections WHERE id = ?", (cid,)).fetchone()
            if row is None:
                continue
            upto = expired_upto(conn, row[0], row[1], superseded_before, keep)
            if not upto:
                continue
            # A row belongs to versions [v_from, v_to): gone when v_to - 1 <= upto.
            conn.execute("DELETE FROM entries WHERE cid = ? AND v_to IS NOT NULL AND v_to <= ?", (cid, upto + 1))
            removed += conn.execute("DELETE FROM versions WHERE uuid = ? AND version <= ?", (row[0], upto)).rowcount
    return removed

"""Sources of ``replace_files``: a file or a directory subtree, read from
stored rows (of the current or an older version) or from a request's tree.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from typing import Sequence, Union

from ...manifest import Dir
from ..catalog import BadRequest, CatalogError, NotFound
from ..replace_files import CURRENT, DELETE, MANIFEST_TEXT, ReplaceOp, lookup
from .history import backfill_pdhs, current_entry, entry_at, find_pdh, subtree_rows
from .lines import tree_parts
from .rows import Row, encode_segs, join_path, relative_path, subtree_bounds


@dataclass
class FileSource:
    segs: str  # encoded, as stored


@dataclass
class DirSource:
    """A directory subtree, relative to its top.

    ``rows`` are ``(rel_parent, name, kind, segs)`` with ``rel_parent`` ''
    for the top's children; ``lines`` maps every directory of the subtree
    (``''`` = the top) to its cached line, or None when unknown.
    """

    rows: list[Row]
    lines: dict[str, str | None] = field(default_factory=dict)


def stored_source(conn: sqlite3.Connection, cid: int, path: str, version: int | None) -> FileSource | DirSource | None:
    """The entry at ``path`` of a stored version (None = current, which also
    brings its cached lines); None if absent."""
    if path:
        top = current_entry(conn, cid, path) if version is None else entry_at(conn, cid, path, version)
        if top is None:
            return None
        if top[0] == "f":
            return FileSource(top[1] or "")
    rows = [(relative_path(p, path), n, k, s) for p, n, k, s in subtree_rows(conn, cid, path, version)]
    lines: dict[str, str | None] = {"": None}
    for rp, n, k, _s in rows:
        if k == "d":
            lines[join_path(rp, n)] = None
    if version is None:
        if path:
            lo, hi = subtree_bounds(path)
            cached = conn.execute("SELECT path, line FROM dir_lines WHERE cid = ? AND path = ?", (cid, path)).fetchall()
            cached += conn.execute(
                "SELECT path, line FROM dir_lines WHERE cid = ? AND path >= ? AND path < ?", (cid, lo, hi)
            ).fetchall()
        else:
            cached = conn.execute("SELECT path, line FROM dir_lines WHERE cid = ?", (cid,)).fetchall()
        for p, line in cached:
            rel = relative_path(p, path)
            if rel in lines:
                lines[rel] = line
    return DirSource(rows, lines)


def tree_source(root: Dir, path: str) -> FileSource | DirSource | None:
    node = lookup(root, path.split("/") if path else ())
    if node is None:
        return None
    if type(node) is tuple:
        return FileSource(encode_segs(node) if node else "")
    rows, lines = tree_parts(node)
    return DirSource(rows, dict(lines))


# A resolved source: found, missing (None), or the error to raise at its turn.
Resolved = Union[FileSource, DirSource, CatalogError, None]


def source_name(op: ReplaceOp) -> str:
    return f"{op.source_pdh or op.kind}/{op.source_path}"


def pdh_source(conn: sqlite3.Connection, op: ReplaceOp, cid: int, old: int) -> FileSource | DirSource | None:
    """The ``<PDH>/path`` source of ``op`` (called before any edit).

    A version that is current is read through the current-tree index
    (with its cached lines).  The collection being updated already
    carries its new version number, but until every source is read its
    rows are still those of ``old``.
    """
    assert op.source_pdh is not None
    found = find_pdh(conn, op.source_pdh)
    if found is None:
        backfill_pdhs(conn)
        found = find_pdh(conn, op.source_pdh)
    if found is None:
        raise NotFound(f"replace_files: no collection with portable data hash {op.source_pdh}")
    src_cid, src_version = conn.execute("SELECT id, version FROM collections WHERE uuid = ?", (found[0],)).fetchone()
    current = found[1] == (old if src_cid == cid else src_version)
    return stored_source(conn, src_cid, op.source_path, None if current else found[1])


def resolve_sources(
    conn: sqlite3.Connection, cid: int, old: int, ops: Sequence[ReplaceOp], new_tree: Dir | None
) -> dict[int, Resolved]:
    """The source of every step of a plan but deletions, by step index,
    read from the rows as they are before any edit (inside the write txn).

    That is the controller's "take all current/ snapshots first" (so swaps
    work), and it lets each source use the current-tree index and cached
    lines.  ``current/`` sources are checked first, as the controller does
    (a missing one raises here); any other source's error is returned, to
    be raised at its turn in the plan, so the first failing step reports,
    as it would if sources were resolved one by one.  When ``/`` is a
    target the controller starts from an empty collection, and ``current/``
    then sees that empty collection too.
    """
    replacing_root = any(op.target == "/" for op in ops)
    resolved: dict[int, Resolved] = {}
    for i, op in enumerate(ops):
        if op.kind != CURRENT:
            continue
        if replacing_root:
            src = tree_source(Dir(), op.source_path)
        else:
            src = stored_source(conn, cid, op.source_path, None)
        if src is None:
            raise BadRequest(f"replace_files: nonexistent source {source_name(op)!r}")
        resolved[i] = src
    for i, op in enumerate(ops):
        if op.kind == MANIFEST_TEXT:
            resolved[i] = tree_source(new_tree if new_tree is not None else Dir(), op.source_path)
        elif op.kind != CURRENT and op.kind != DELETE:
            try:
                resolved[i] = pdh_source(conn, op, cid, old)
            except CatalogError as e:
                resolved[i] = e
    return resolved

"""Building a new version of one collection inside a write transaction."""

from __future__ import annotations

import sqlite3
from typing import Sequence

from ...manifest import Dir
from ..catalog import BadRequest, CatalogError
from ..replace_files import DELETE, ReplaceOp
from .history import current_entry
from .lines import MARKER_TAIL, assemble, has_files, rebase, tree_parts
from .rows import APPROX_SQL, CUR, Row, entry_chars, place_under, split_path, subtree_bounds
from .sources import DirSource, FileSource, resolve_sources, source_name


class VersionWriter:
    """Turns the current rows of one collection into version ``new``.

    Must be used inside the write transaction that also bumps the
    collection's version; that transaction is what makes the edit atomic.
    Every primitive touches only the rows it changes.  Directories whose
    cached line may have changed are collected and invalidated once, in
    ``finish()``; nothing is rendered here.
    """

    def __init__(self, conn: sqlite3.Connection, cid: int, new: int):
        self.conn = conn
        self.cid = cid
        self.new = new
        self.delta_chars = 0  # change of approx_chars
        self._files_changed: set[str] = set()  # directories whose direct files changed
        self._dirs_changed: set[str] = set()  # ... whose direct subdirectories changed

    # -- row primitives ----------------------------------------------------

    def _close_one(self, parent: str, name: str, segs: str | None, v_from: int) -> None:
        """End one current row.  A row created by this same update is deleted
        outright (it belongs to no committed version); older ones keep their
        history."""
        key = (self.cid, parent, name, v_from)
        if v_from == self.new:
            self.conn.execute("DELETE FROM entries WHERE cid = ? AND parent = ? AND name = ? AND v_from = ?", key)
        else:
            self.conn.execute(
                "UPDATE entries SET v_to = ? WHERE cid = ? AND parent = ? AND name = ? AND v_from = ?", (self.new, *key)
            )
        self.delta_chars -= entry_chars(parent, name, segs)

    def _close_where(self, where: str, args: tuple) -> None:
        """End every current row matching ``where`` (see ``_close_one``)."""
        base = f"cid = ? AND v_to IS NULL AND {where}"
        (chars,) = self.conn.execute(f"SELECT {APPROX_SQL} FROM {CUR} WHERE {base}", (self.cid, *args)).fetchone()
        self.delta_chars -= chars
        self.conn.execute(f"DELETE FROM {CUR} WHERE {base} AND v_from = ?", (self.cid, *args, self.new))
        self.conn.execute(f"UPDATE {CUR} SET v_to = ? WHERE {base}", (self.new, self.cid, *args))

    def _close_below(self, path: str) -> None:
        """End every current row strictly below directory ``path`` and drop
        the cached lines of ``path`` and of every directory below it."""
        if not path:
            self._close_where("1", ())
            self.conn.execute("DELETE FROM dir_lines WHERE cid = ?", (self.cid,))
            return
        lo, hi = subtree_bounds(path)
        # Two statements rather than one OR: each is a single index range.
        self._close_where("parent = ?", (path,))
        self._close_where("parent >= ? AND parent < ?", (lo, hi))
        self.conn.execute("DELETE FROM dir_lines WHERE cid = ? AND path = ?", (self.cid, path))
        self.conn.execute("DELETE FROM dir_lines WHERE cid = ? AND path >= ? AND path < ?", (self.cid, lo, hi))

    def _insert(self, rows: list[Row]) -> None:
        self.conn.executemany(
            "INSERT INTO entries (cid, parent, name, kind, segs, v_from) VALUES (?, ?, ?, ?, ?, ?)",
            [(self.cid, p, n, k, s, self.new) for p, n, k, s in rows],
        )
        self.delta_chars += sum(entry_chars(p, n, s) for p, n, _k, s in rows)

    def _put_lines(self, lines: list[tuple[str, str | None]]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO dir_lines (cid, path, line) VALUES (?, ?, ?)",
            [(self.cid, p, line) for p, line in lines],
        )

    # -- tree edits --------------------------------------------------------

    def _mkdir_p(self, path: str, target: str) -> None:
        """Create ``path`` and its missing ancestors (mkdir -p), top down."""
        if not path:
            return
        cur = current_entry(self.conn, self.cid, path)
        if cur is not None and cur[0] == "d":
            return  # the usual case: one probe
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            cur = current_entry(self.conn, self.cid, sub)
            if cur is None:
                parent, name = split_path(sub)
                self._insert([(parent, name, "d", None)])
                self._put_lines([(sub, None)])
                self._dirs_changed.add(parent)
            elif cur[0] != "d":
                raise BadRequest(f"replace_files: cannot create parent directory of {target!r}: {sub!r} is a file")

    def remove(self, path: str) -> None:
        """Remove a file or a whole directory; a missing path is a no-op."""
        if not path:
            self._close_below("")
            self._put_lines([("", None)])
            return
        cur = current_entry(self.conn, self.cid, path)
        if cur is None:
            return
        kind, segs, v_from = cur
        parent, name = split_path(path)
        if kind == "d":
            self._close_below(path)
            self._dirs_changed.add(parent)
        else:
            self._files_changed.add(parent)
        self._close_one(parent, name, segs, v_from)

    def place(self, path: str, source: FileSource | DirSource, target: str) -> None:
        """Replace ``path`` wholesale with ``source``, creating parents."""
        if not path:
            if isinstance(source, FileSource):
                raise BadRequest("replace_files: target '/' needs a directory source, got a file")
            self.remove("")
            self._place_dir("", source)
            return
        parent, name = split_path(path)
        self._mkdir_p(parent, target)
        self.remove(path)
        if isinstance(source, FileSource):
            self._insert([(parent, name, "f", source.segs)])
            self._files_changed.add(parent)
        else:
            self._insert([(parent, name, "d", None)])
            self._place_dir(path, source)
            self._dirs_changed.add(parent)

    def _place_dir(self, top: str, source: DirSource) -> None:
        """Insert a subtree's rows and cached lines below directory ``top``.

        Lines of directories below the top are position-independent apart
        from their stream token, so known ones are re-based rather than
        re-rendered.  The top's own line is kept only if it lists files: a
        file-less top may change between '' and the marker (the root of a
        source never has a marker; a target at the root never gets one).
        """
        self._insert([(place_under(top, rp), n, k, s) for rp, n, k, s in source.rows])
        lines: list[tuple[str, str | None]] = []
        for rel, line in source.lines.items():
            path = place_under(top, rel)
            if not rel and not has_files(line):
                line = None
            lines.append((path, rebase(line, path) if line else line))
        self._put_lines(lines)

    def replace_all(self, root: Dir) -> str:
        """Make ``root`` the whole tree; returns its full text.

        Unchanged entries keep their rows (so repeated whole-manifest saves
        of a big collection do not grow its history); the line cache is
        rebuilt from the rendering that the text needs anyway.
        """
        rows, lines = tree_parts(root)
        new = {(p, n): (k, s) for p, n, k, s in rows}
        closing: list[tuple[str, str, str | None, int]] = []
        for p, n, k, s, v_from in self.conn.execute(
            f"SELECT parent, name, kind, segs, v_from FROM {CUR} WHERE cid = ? AND v_to IS NULL", (self.cid,)
        ).fetchall():
            if new.get((p, n)) == (k, s):
                del new[(p, n)]  # unchanged: keep the row
            else:
                closing.append((p, n, s, v_from))
        for p, n, s, v_from in closing:
            self._close_one(p, n, s, v_from)
        self._insert([(p, n, k, s) for (p, n), (k, s) in new.items()])
        self.conn.execute("DELETE FROM dir_lines WHERE cid = ?", (self.cid,))
        self._put_lines(lines)  # type: ignore[arg-type]
        return assemble(lines)

    def finish(self) -> None:
        """Invalidate the cached lines this version changed.

        A line depends on the directory's direct files, and -- only when it
        has none -- on whether it has subdirectories (marker or ''); a root
        line never has a marker.  Directories that no longer exist have no
        cache row, so their UPDATE is a no-op.
        """
        for path in self._files_changed:
            self.conn.execute("UPDATE dir_lines SET line = NULL WHERE cid = ? AND path = ?", (self.cid, path))
        for path in self._dirs_changed - self._files_changed:
            if path:
                self.conn.execute(
                    "UPDATE dir_lines SET line = NULL WHERE cid = ? AND path = ? AND (line = '' OR substr(line, ?) = ?)",
                    (self.cid, path, -len(MARKER_TAIL), MARKER_TAIL),
                )


def apply_replace_files(
    conn: sqlite3.Connection, writer: VersionWriter, cid: int, old: int, ops: Sequence[ReplaceOp], new_tree: Dir | None
) -> None:
    """Apply a plan in the controller's order (inside the write txn).

    Every source is read first, before any edit (``resolve_sources``); then
    the steps run in order, and the first one whose source failed raises.
    """
    resolved = resolve_sources(conn, cid, old, ops, new_tree)
    if any(op.target == "/" for op in ops):
        writer.remove("")
    for i, op in enumerate(ops):
        path = op.target[1:]
        if op.kind == DELETE:
            writer.remove(path)
            continue
        source = resolved[i]
        if isinstance(source, CatalogError):
            raise source
        if source is None:
            raise BadRequest(f"replace_files: nonexistent source {source_name(op)!r} for {op.target!r}")
        writer.place(path, source, op.target)
    writer.finish()

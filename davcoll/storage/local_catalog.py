"""The embedded catalog: collections in one SQLite file (spec 8).

Why the storage looks like this
-------------------------------
A collection may hold a million files, yet a WebDAV PUT changes one, and a
directory may hold many thousands of files, yet a PUT into it adds one.  So
an update must cost -- in CPU and in stored bytes -- the size of the change,
not the size of the collection nor of the directory it touches.  Two tables
carry the tree:

``entries``: the history, one row per entry per range of versions.
    ``(cid, parent, name, kind, segs, v_from, v_to)``: ``kind`` is ``'f'``
    (file) or ``'d'`` (directory); ``segs`` is a file's segments as text,
    ``"locator offset length"`` triples joined by spaces (``''`` for an
    empty file, NULL for a directory).  Every directory has its own row --
    empty ones, and every parent implied by a deeper path -- so empty
    directories persist and ``mkdir -p`` is explicit; the root is implicit.
    A row belongs to every version ``v`` with ``v_from <= v < v_to``
    (``v_to`` NULL = still current).  An update to version ``N`` closes the
    rows it replaces (``v_to = N``) and inserts the new ones (``v_from =
    N``): O(changed entries), never a rewrite of a directory.

``dir_lines``: a cache of the *current* version only.
    ``(cid, path, line)``: each current directory's rendered normalized
    stream line (``render_stream`` output, the empty-directory marker line,
    or ``''`` for a directory holding only subdirectories and for a root
    without files).  There is exactly one row per current directory (root
    included); ``line`` NULL means "stale".  An update sets the line of each
    directory whose direct *files* changed to NULL (and of a file-less
    directory whose subdirectories changed, since marker vs ``''`` depends on
    them) -- it never renders anything itself.  Reading the full manifest
    renders the stale lines from the entry rows, concatenates all lines in
    depth-first order, and stores the rendered lines back in a short
    separate transaction.  So a warm read of a million files is a read of
    ~10k cached strings, and a read after an update re-renders only the
    directories that update touched.

Refinements of the obvious layout, and why:

* ``cid`` is a small integer (``collections.id``) rather than the 27-char
  UUID, and a path is stored as ``(parent, name)`` rather than as path plus
  parent plus name: at a million rows, each repeated string in the table
  and in its index costs tens of MB.  ``(cid, parent, name, v_from)`` is
  the primary key of a ``WITHOUT ROWID`` table, so the table itself is the
  history index ("row at path P at version v" is one descent).
* The current state has its own partial index ``entries_current`` on
  ``(cid, parent, name) WHERE v_to IS NULL``; it answers "current row at
  path P" (one probe), "current children of directory X" (one range, in
  name order -- byte order of UTF-8 is code-point order, which is what the
  normalized layout sorts by) and "current rows under X": those whose
  parent is X, or starts with ``X/``, i.e. ``parent >= X/ AND parent < X0``
  (``0`` is the character after ``/``; names such as ``a-b``, ``a.b``,
  ``a0`` sort outside that range).  Queries on the current tree name the
  index (``INDEXED BY``): without statistics the planner may prefer the
  primary key and walk every historical row.
* Rows valid at an old version ``v`` are found by scanning the collection's
  rows in primary-key order and filtering on ``v_from``/``v_to``; no single
  index range can select an interval-containment, and reading an old
  version is allowed to cost O(collection history).  Old versions are
  rendered from a tree built out of those rows (``Manifest.to_text``),
  which produces the same bytes as the cached lines did when that version
  was current.

Locators are stored as the collection stores them: ``+A`` signatures are
stripped on the way in (spec 8), other hints stay, so the manifest text is
exactly what the previous design returned (and normally the locators are
bare ``md5+size``).  ``referenced_blocks`` reduces them to ``md5+size``.

The portable data hash needs the whole text, so it is computed lazily: when
a manifest is read, when a change replaces the whole text anyway, or when
the collection is small; it is cached per version.  "Small" is judged by
``versions.approx_chars``, an estimate of the text size kept up to date from
the rows an update inserts and closes (exact sizes would need the rendered
lines, which updates deliberately do not produce).  A lookup *by* PDH is one
indexed read that never takes the write lock: a miss answers NotFound at
once and nudges a background pass (``pdh_indexer``) that computes missing
PDHs in read snapshots, so the PDH of a collection changed and not read
since resolves once that pass has run (about ``pdh_pass_interval`` later).

Concurrency and transactions
----------------------------
Every change runs in one ``BEGIN IMMEDIATE`` transaction: SQLite's write
lock then serializes writers across threads *and* processes sharing the data
directory, and the update reads the stored version inside the same
transaction, so two ``replace_files`` updates to different paths never lose
each other's edits.  The sources of a ``replace_files`` request are read at
the start of that transaction, before any edit, so ``current/`` sees the
pre-request tree (swaps work).  Reads run in a deferred transaction (a WAL
snapshot), so a manifest is assembled from one consistent version.  Lines
and a PDH computed by a read are written back afterwards in a *separate*
short IMMEDIATE transaction that waits at most ``_CACHE_WAIT_MS`` for the
lock (an update never waits long behind it; a busy database only costs a
re-render later) and that only stores them if the collection is still at
the version they were computed for.  Each thread uses its own connection
(``local_sqlite.Database``); a connection is never shared between threads.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..manifest import (
    Dir,
    Manifest,
    ManifestError,
    bare_locator,
    escape_name,
    is_portable_data_hash,
    parse_manifest,
    parse_stream,
    portable_data_hash,
    render_empty_dir,
    render_stream,
)
from .catalog import (
    BadRequest,
    Catalog,
    CatalogUpdate,
    CatalogError,
    CollectionRecord,
    Conflict,
    InvalidManifest,
    NotFound,
    Unavailable,
    UpdateResult,
)
from .local_sqlite import Database
from .pdh_indexer import PdhIndexer
from .replace_files import CURRENT, DELETE, MANIFEST_TEXT, ReplaceOp, lookup, plan_replace_files
from .signatures import strip_manifest_signatures

__all__ = ["LocalCatalog", "DB_FILENAME", "db_path_for", "rfc3339_now"]

DB_FILENAME = "catalog.sqlite3"
_UUID_RE = re.compile(r"[a-z0-9]{5}-4zz18-[a-z0-9]{15}")
_CLUSTER_RE = re.compile(r"[a-z0-9]{5}")
_UUID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_SCHEMA_VERSION = 2
_CACHE_WAIT_MS = 200  # how long a read that only wants to cache lines or a PDH waits for the write lock
_MARKER_TAIL = " 0:0:\\056\n"  # how every empty-directory marker line ends
_ROW_OVERHEAD = 8  # approx_chars: separators and positions per entry

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

# Current-tree queries name the partial index (see the module docstring).
_CUR = "entries INDEXED BY entries_current"


def db_path_for(data_dir: str | os.PathLike[str]) -> Path:
    """Where the catalog (and the token table) live inside a data directory."""
    return Path(data_dir) / DB_FILENAME


def rfc3339_now() -> str:
    """RFC 3339 UTC with microseconds, as Arvados timestamps look."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------
# Paths, segments and lines


def stream_name(path: str) -> str:
    """Escaped stream token of a decoded directory path ('' -> '.')."""
    if not path:
        return "."
    # Names never contain "/" and escape_name leaves "/" alone, so the whole
    # path escapes in one call (deep trees have thousands of components).
    return "./" + escape_name(path)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _under(top: str, rel: str) -> str:
    """``rel`` (relative, '' = the top itself) placed below ``top``."""
    if not rel:
        return top
    return f"{top}/{rel}" if top else rel


def _split(path: str) -> tuple[str, str]:
    """``(parent, name)`` of a non-root path."""
    parent, _, name = path.rpartition("/")
    return parent, name


def _subtree_bounds(path: str) -> tuple[str, str]:
    """``[lo, hi)`` of the strings that start with ``path + '/'`` (non-root)."""
    return path + "/", path + "0"


def encode_segs(segs: tuple) -> str:
    """A file's segments as stored: ``"loc off len"`` triples, space-joined.

    Space is safe as the separator: locators, offsets and lengths never
    contain one.
    """
    if len(segs) == 1:
        loc, off, ln = segs[0]
        return f"{loc} {off} {ln}"
    return " ".join(f"{loc} {off} {ln}" for loc, off, ln in segs)


def decode_segs(text: str) -> tuple:
    """Inverse of :func:`encode_segs`."""
    if not text:
        return ()
    t = text.split(" ")
    if len(t) == 3:
        return ((t[0], int(t[1]), int(t[2])),)
    return tuple((t[i], int(t[i + 1]), int(t[i + 2])) for i in range(0, len(t), 3))


def _approx(parent: str, name: str, segs: str | None) -> int:
    """An entry's contribution to ``approx_chars`` (the same formula as SQL's
    ``_APPROX_SQL``: both count characters)."""
    return len(parent) + len(name) + (len(segs) if segs else 0) + _ROW_OVERHEAD


_APPROX_SQL = f"COALESCE(SUM(LENGTH(parent) + LENGTH(name) + IFNULL(LENGTH(segs), 0) + {_ROW_OVERHEAD}), 0)"


def _dir_line(path: str, files: Sequence[tuple[str, tuple]], has_subdirs: bool) -> str:
    """The normalized line of a directory given its (sorted) files."""
    if files:
        return render_stream(stream_name(path), files)
    if has_subdirs or not path:
        return ""  # only subdirectories, or the root: no line (spec 2.7, 2.9)
    return render_empty_dir(stream_name(path))


def _has_files(line: str | None) -> bool:
    """True if a line lists files (it is neither '' nor a marker).

    A marker line is recognised by its last token: a file literally named
    ``.`` cannot exist, and a file named ``\\056`` is escaped as ``\\134056``.
    """
    return bool(line) and not line.endswith(_MARKER_TAIL)  # type: ignore[union-attr]


def _rebase(line: str, new_path: str) -> str:
    """A line moved to another directory: only its stream token changes."""
    if not line:
        return line
    return stream_name(new_path) + line[line.index(" ") :]


def assemble(rows: Iterable[tuple[str, str]]) -> str:
    """Full normalized manifest from every directory's ``(path, line)``.

    Sorting by the tuple of decoded components gives the depth-first order
    of spec 2.9 (``a``, ``a/c``, ``a-b``), which plain string order does not.
    """
    ordered = sorted(rows, key=lambda r: r[0].split("/"))
    return "".join(line for _, line in ordered)


Row = tuple  # (parent, name, kind, segs): one entry, relative or absolute


def _row_key(row: Row) -> tuple[str, str]:
    return row[0], row[1]


def tree_parts(root: Dir, base: str = "") -> tuple[list[Row], list[tuple[str, str]]]:
    """Entry rows and directory lines of an in-memory tree placed at ``base``.

    ``base`` itself gets a line but no row (the caller adds it, if it is not
    the root).  Iterative, so arbitrarily deep trees cannot hit the
    recursion limit.
    """
    rows: list[Row] = []
    lines: list[tuple[str, str]] = []
    stack: list[tuple[str, Dir]] = [(base, root)]
    while stack:
        path, d = stack.pop()
        files = []
        has_subdirs = False
        for name in sorted(d):
            v = d[name]
            if type(v) is tuple:
                files.append((name, v))
                rows.append((path, name, "f", encode_segs(v)))
            else:
                has_subdirs = True
                rows.append((path, name, "d", None))
                stack.append((_join(path, name), v))
        lines.append((path, _dir_line(path, files, has_subdirs)))
    return rows, lines


def _parse_incoming(manifest_text: str | None) -> Dir:
    """Validate a manifest sent by a client; +A hints are not stored (spec 8)."""
    if not manifest_text:
        return Dir()
    if not isinstance(manifest_text, str):
        raise BadRequest("manifest_text must be a string")
    try:
        return parse_manifest(strip_manifest_signatures(manifest_text)).root
    except ManifestError as e:
        raise InvalidManifest(str(e)) from e


# ---------------------------------------------------------------------------
# Reading the tree (any connection, inside a transaction for consistency)


def _current_entry(conn: sqlite3.Connection, cid: int, path: str) -> tuple[str, str | None, int] | None:
    """``(kind, segs, v_from)`` of the current row at a non-root ``path``."""
    parent, name = _split(path)
    return conn.execute(
        f"SELECT kind, segs, v_from FROM {_CUR} WHERE cid = ? AND parent = ? AND name = ? AND v_to IS NULL",
        (cid, parent, name),
    ).fetchone()


def _entry_at(conn: sqlite3.Connection, cid: int, path: str, version: int) -> tuple[str, str | None] | None:
    """``(kind, segs)`` of the row at a non-root ``path`` in ``version``.

    The newest row starting at or before ``version`` is the only candidate
    (row ranges of one path never overlap); it counts if still open then.
    """
    parent, name = _split(path)
    row = conn.execute(
        "SELECT kind, segs, v_to FROM entries WHERE cid = ? AND parent = ? AND name = ? AND v_from <= ?"
        " ORDER BY v_from DESC LIMIT 1",
        (cid, parent, name, version),
    ).fetchone()
    if row is None or (row[2] is not None and row[2] <= version):
        return None
    return row[0], row[1]


def _render_dir(conn: sqlite3.Connection, cid: int, path: str) -> str:
    """The current line of directory ``path``, from its current entry rows.

    Costs the directory's direct files (one index range, already in name
    order), never its subtree.
    """
    files = [
        (name, decode_segs(segs))
        for name, segs in conn.execute(
            f"SELECT name, segs FROM {_CUR} WHERE cid = ? AND parent = ? AND v_to IS NULL AND kind = 'f' ORDER BY name",
            (cid, path),
        )
    ]
    if files or not path:
        return _dir_line(path, files, False)
    # No files: any current child is a subdirectory.
    child = conn.execute(
        f"SELECT 1 FROM {_CUR} WHERE cid = ? AND parent = ? AND v_to IS NULL LIMIT 1", (cid, path)
    ).fetchone()
    return _dir_line(path, (), child is not None)


def _assemble_current(conn: sqlite3.Connection, cid: int) -> tuple[str, dict[str, str]]:
    """The current manifest from the line cache, rendering stale lines.

    Returns ``(text, rendered)``; ``rendered`` holds the lines that were
    stale, for the caller to store back.
    """
    rendered: dict[str, str] = {}
    rows = conn.execute("SELECT path, line FROM dir_lines WHERE cid = ?", (cid,)).fetchall()
    for i, (path, line) in enumerate(rows):
        if line is None:
            line = rendered[path] = _render_dir(conn, cid, path)
            rows[i] = (path, line)
    return assemble(rows), rendered


def _store_lines(conn: sqlite3.Connection, cid: int, rendered: Mapping[str, str]) -> None:
    """Fill stale cache rows (caller holds the write lock for the version
    the lines were rendered from)."""
    conn.executemany(
        "UPDATE dir_lines SET line = ? WHERE cid = ? AND path = ? AND line IS NULL",
        [(line, cid, path) for path, line in rendered.items()],
    )


def _tree_at(conn: sqlite3.Connection, cid: int, version: int) -> Dir:
    """The whole tree of ``version``, built from the rows valid then."""
    root = Dir()
    dirs: dict[str, Dir] = {"": root}

    def dir_of(path: str) -> Dir:
        d = dirs.get(path)
        if d is None:  # rows come parents-first (key order); this is a fallback
            # Iterative: climb to the nearest known ancestor, then create down.
            missing = [path]
            parent, _ = _split(path)
            while parent not in dirs:
                missing.append(parent)
                parent, _ = _split(parent)
            d = dirs[parent]
            for p in reversed(missing):
                d = dirs[p] = d.setdefault(_split(p)[1], Dir())
        return d

    for parent, name, kind, segs in conn.execute(
        "SELECT parent, name, kind, segs FROM entries WHERE cid = ? AND v_from <= ? AND (v_to IS NULL OR v_to > ?)",
        (cid, version, version),
    ):
        if kind == "d":
            dir_of(_join(parent, name))
        else:
            dir_of(parent)[name] = decode_segs(segs)
    return root


# ---------------------------------------------------------------------------
# Sources of replace_files, resolved against stored rows or a request tree


@dataclass
class _FileSource:
    segs: str  # encoded, as stored


@dataclass
class _DirSource:
    """A directory subtree, relative to its top.

    ``rows`` are ``(rel_parent, name, kind, segs)`` with ``rel_parent`` ''
    for the top's children; ``lines`` maps every directory of the subtree
    (``''`` = the top) to its cached line, or None when unknown.
    """

    rows: list[Row]
    lines: dict[str, str | None] = field(default_factory=dict)


def _relative(path: str, top: str) -> str:
    if not top:
        return path
    return "" if path == top else path[len(top) + 1 :]


def _subtree_rows(conn: sqlite3.Connection, cid: int, top: str, version: int | None) -> list[Row]:
    """Rows strictly below directory ``top``: current ones, or those valid
    at ``version``.  Two index ranges: children of ``top``, and rows whose
    parent lies below it."""
    if version is None:
        sql = f"SELECT parent, name, kind, segs FROM {_CUR} WHERE cid = ? AND v_to IS NULL"
        extra: tuple = ()
    else:
        sql = "SELECT parent, name, kind, segs FROM entries WHERE cid = ? AND v_from <= ? AND (v_to IS NULL OR v_to > ?)"
        extra = (version, version)
    if not top:
        return conn.execute(sql, (cid, *extra)).fetchall()
    lo, hi = _subtree_bounds(top)
    rows = conn.execute(sql + " AND parent = ?", (cid, *extra, top)).fetchall()
    rows += conn.execute(sql + " AND parent >= ? AND parent < ?", (cid, *extra, lo, hi)).fetchall()
    return rows


def _stored_source(conn: sqlite3.Connection, cid: int, path: str, version: int | None) -> _FileSource | _DirSource | None:
    """The entry at ``path`` of a stored version (None = current, which also
    brings its cached lines); None if absent."""
    if path:
        top = _current_entry(conn, cid, path) if version is None else _entry_at(conn, cid, path, version)
        if top is None:
            return None
        if top[0] == "f":
            return _FileSource(top[1] or "")
    rows = [(_relative(p, path), n, k, s) for p, n, k, s in _subtree_rows(conn, cid, path, version)]
    lines: dict[str, str | None] = {"": None}
    for rp, n, k, _s in rows:
        if k == "d":
            lines[_join(rp, n)] = None
    if version is None:
        if path:
            lo, hi = _subtree_bounds(path)
            cached = conn.execute("SELECT path, line FROM dir_lines WHERE cid = ? AND path = ?", (cid, path)).fetchall()
            cached += conn.execute(
                "SELECT path, line FROM dir_lines WHERE cid = ? AND path >= ? AND path < ?", (cid, lo, hi)
            ).fetchall()
        else:
            cached = conn.execute("SELECT path, line FROM dir_lines WHERE cid = ?", (cid,)).fetchall()
        for p, line in cached:
            rel = _relative(p, path)
            if rel in lines:
                lines[rel] = line
    return _DirSource(rows, lines)


def _tree_source(root: Dir, path: str) -> _FileSource | _DirSource | None:
    node = lookup(root, path.split("/") if path else ())
    if node is None:
        return None
    if type(node) is tuple:
        return _FileSource(encode_segs(node) if node else "")
    rows, lines = tree_parts(node)
    return _DirSource(rows, dict(lines))


# ---------------------------------------------------------------------------
# Building a new version inside a write transaction


class _VersionWriter:
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
        self.delta_chars -= _approx(parent, name, segs)

    def _close_where(self, where: str, args: tuple) -> None:
        """End every current row matching ``where`` (see ``_close_one``)."""
        base = f"cid = ? AND v_to IS NULL AND {where}"
        (chars,) = self.conn.execute(f"SELECT {_APPROX_SQL} FROM {_CUR} WHERE {base}", (self.cid, *args)).fetchone()
        self.delta_chars -= chars
        self.conn.execute(f"DELETE FROM {_CUR} WHERE {base} AND v_from = ?", (self.cid, *args, self.new))
        self.conn.execute(f"UPDATE {_CUR} SET v_to = ? WHERE {base}", (self.new, self.cid, *args))

    def _close_below(self, path: str) -> None:
        """End every current row strictly below directory ``path`` and drop
        the cached lines of ``path`` and of every directory below it."""
        if not path:
            self._close_where("1", ())
            self.conn.execute("DELETE FROM dir_lines WHERE cid = ?", (self.cid,))
            return
        lo, hi = _subtree_bounds(path)
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
        self.delta_chars += sum(_approx(p, n, s) for p, n, _k, s in rows)

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
        cur = _current_entry(self.conn, self.cid, path)
        if cur is not None and cur[0] == "d":
            return  # the usual case: one probe
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            cur = _current_entry(self.conn, self.cid, sub)
            if cur is None:
                parent, name = _split(sub)
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
        cur = _current_entry(self.conn, self.cid, path)
        if cur is None:
            return
        kind, segs, v_from = cur
        parent, name = _split(path)
        if kind == "d":
            self._close_below(path)
            self._dirs_changed.add(parent)
        else:
            self._files_changed.add(parent)
        self._close_one(parent, name, segs, v_from)

    def place(self, path: str, source: _FileSource | _DirSource, target: str) -> None:
        """Replace ``path`` wholesale with ``source``, creating parents."""
        if not path:
            if isinstance(source, _FileSource):
                raise BadRequest("replace_files: target '/' needs a directory source, got a file")
            self.remove("")
            self._place_dir("", source)
            return
        parent, name = _split(path)
        self._mkdir_p(parent, target)
        self.remove(path)
        if isinstance(source, _FileSource):
            self._insert([(parent, name, "f", source.segs)])
            self._files_changed.add(parent)
        else:
            self._insert([(parent, name, "d", None)])
            self._place_dir(path, source)
            self._dirs_changed.add(parent)

    def _place_dir(self, top: str, source: _DirSource) -> None:
        """Insert a subtree's rows and cached lines below directory ``top``.

        Lines of directories below the top are position-independent apart
        from their stream token, so known ones are re-based rather than
        re-rendered.  The top's own line is kept only if it lists files: a
        file-less top may change between '' and the marker (the root of a
        source never has a marker; a target at the root never gets one).
        """
        self._insert([(_under(top, rp), n, k, s) for rp, n, k, s in source.rows])
        lines: list[tuple[str, str | None]] = []
        for rel, line in source.lines.items():
            path = _under(top, rel)
            if not rel and not _has_files(line):
                line = None
            lines.append((path, _rebase(line, path) if line else line))
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
            f"SELECT parent, name, kind, segs, v_from FROM {_CUR} WHERE cid = ? AND v_to IS NULL", (self.cid,)
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
                    (self.cid, path, -len(_MARKER_TAIL), _MARKER_TAIL),
                )


# ---------------------------------------------------------------------------
# Migration from schema 1 (one row per directory line, keyed by UUID)


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
            parent, name = _split(path)
            rows.append((cid, parent, name, "d", None, v_from, v_to))
        if _has_files(line):
            _, files = parse_stream(line[:-1])
            rows += [(cid, path, name, "f", encode_segs(segs) if segs else "", v_from, v_to) for name, segs in files]
        conn.executemany(insert, rows)
        if v_to is None:
            conn.execute("INSERT INTO dir_lines (cid, path, line) VALUES (?, ?, ?)", (cid, path, line))
    conn.execute("DROP TABLE dirs")
    # approx_chars is now an estimate from entry rows; the exact lengths of
    # schema 1 would drift from it as rows are added and closed.
    conn.execute(
        f"UPDATE versions SET approx_chars = (SELECT {_APPROX_SQL} FROM entries"
        " WHERE cid = (SELECT id FROM collections c WHERE c.uuid = versions.uuid) AND v_to IS NULL)"
        " WHERE version = (SELECT version FROM collections c WHERE c.uuid = versions.uuid)"
    )


# ---------------------------------------------------------------------------
# The catalog


_COLUMNS = ("uuid", "name", "owner_uuid", "created_at", "modified_at", "version", "properties", "is_trashed")
_COLLECTION_COLUMNS = ", ".join(_COLUMNS)
_ROW_COLUMNS = _COLLECTION_COLUMNS + ", id"  # _collection_row: the record's columns, then the tree key


def _record(row: tuple, *, pdh: str | None = None, manifest_text: str | None = None) -> CollectionRecord:
    uuid, name, owner, created, modified, version, props, trashed = row[:8]
    return CollectionRecord(
        uuid=uuid,
        name=name,
        portable_data_hash=pdh,
        manifest_text=manifest_text,
        properties=json.loads(props),
        modified_at=modified,
        created_at=created,
        version=version,
        owner_uuid=owner,
        is_trashed=bool(trashed),
    )


def _check_name(name: object) -> str:
    """Collection names are path components at the WebDAV root, so, as on
    Arvados, they may not contain '/' nor be '.' or '..' (or empty)."""
    if not isinstance(name, str):
        raise BadRequest("name must be a string")
    if name in ("", ".", "..") or "/" in name:
        raise BadRequest(f"invalid collection name {name!r}")
    return name


def _properties_json(properties: Mapping[str, Any] | None) -> str:
    if properties is None:
        return "{}"
    if not isinstance(properties, Mapping):
        raise BadRequest("properties must be an object")
    try:
        return json.dumps(dict(properties), sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise BadRequest(f"properties are not JSON-serializable: {e}") from e


@dataclass
class _Computed:
    """What a read computed and would like cached (after its transaction)."""

    uuid: str
    cid: int
    version: int
    pdh: str | None  # a newly computed PDH, or None
    lines: dict[str, str]  # newly rendered current lines (empty for old versions)


class LocalCatalog(Catalog):
    """Collections, their versions and trees in ``db_path`` (SQLite).

    ``cluster_id`` is the 5-character prefix of generated UUIDs.
    ``cheap_pdh_chars``: an update computes the PDH right away when the
    new manifest is estimated to be at most this long (otherwise the record
    carries None until a read computes it).  ``synchronous`` is SQLite's
    durability setting; FULL makes every commit durable before the caller
    answers.  ``pdh_pass_interval``: the background pass that computes
    missing PDHs after a lookup miss starts at most this often (seconds;
    see ``pdh_indexer``).
    """

    atomic_update_many = True  # update_many is one SQLite transaction

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        cluster_id: str = "dvcol",
        owner_uuid: str = "",
        cheap_pdh_chars: int = 32 * 1024,
        synchronous: str = "FULL",
        pdh_pass_interval: float = 1.0,
    ):
        if not _CLUSTER_RE.fullmatch(cluster_id):
            raise ValueError(f"cluster_id must be 5 characters [a-z0-9], got {cluster_id!r}")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad synchronous setting {synchronous!r}")
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.cluster_id = cluster_id
        self.owner_uuid = owner_uuid
        self.cheap_pdh_chars = cheap_pdh_chars
        self._db = Database(self.path, synchronous=synchronous, label="catalog database", unavailable=Unavailable)
        self._init_schema()
        self._pdh_indexer = PdhIndexer(self.index_pdhs, min_interval=pdh_pass_interval)

    def _init_schema(self) -> None:
        """Create or upgrade the schema; one IMMEDIATE transaction, so two
        processes opening the same new database cannot both migrate it."""
        with self._db.write() as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > _SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: schema version {version} is newer than this davcoll")
            if version == 1:
                _migrate_v1(conn)
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def close(self) -> None:
        self._pdh_indexer.close()
        self._db.close()

    # -- transactions ------------------------------------------------------

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.read()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.write()

    def _new_uuid(self) -> str:
        tail = "".join(secrets.choice(_UUID_ALPHABET) for _ in range(15))
        return f"{self.cluster_id}-4zz18-{tail}"

    # -- reads -------------------------------------------------------------

    @staticmethod
    def _collection_row(conn: sqlite3.Connection, uuid: str, *, include_trash: bool = False) -> tuple:
        """The record's 8 columns followed by the tree key ``id``."""
        row = conn.execute(f"SELECT {_ROW_COLUMNS} FROM collections WHERE uuid = ?", (uuid,)).fetchone()
        if row is None or (row[7] and not include_trash):
            raise NotFound(f"collection {uuid} not found")
        return row

    @staticmethod
    def _cached_pdh(conn: sqlite3.Connection, uuid: str, version: int) -> str | None:
        row = conn.execute("SELECT pdh FROM versions WHERE uuid = ? AND version = ?", (uuid, version)).fetchone()
        return row[0] if row else None

    def _remember(self, computed: _Computed | None) -> None:
        """Cache what a read computed: rendered lines and a PDH.

        Its own short IMMEDIATE transaction, after the read's: best effort,
        with a short lock wait, because a busy database only costs a
        re-render later, so a read never waits long for (or fails because
        of) this write, and an update never queues long behind it.  Lines
        are stored only if the collection is still at the version they were
        rendered from (a later update may have changed those directories).
        """
        if computed is None:
            return
        try:
            with self._db.write(busy_timeout_ms=_CACHE_WAIT_MS) as conn:
                if computed.pdh is not None:
                    conn.execute(
                        "UPDATE versions SET pdh = ? WHERE uuid = ? AND version = ? AND pdh IS NULL",
                        (computed.pdh, computed.uuid, computed.version),
                    )
                if computed.lines:
                    row = conn.execute("SELECT version FROM collections WHERE id = ?", (computed.cid,)).fetchone()
                    if row is not None and row[0] == computed.version:
                        _store_lines(conn, computed.cid, computed.lines)
        except (sqlite3.Error, Unavailable):
            pass

    def get(self, uuid_or_pdh: str, *, with_manifest: bool = True, include_trash: bool = False) -> CollectionRecord:
        """By UUID: the current version (trashed ones only with
        ``include_trash``).  By PDH: the version with that PDH, preferring
        a current one (see ``_backfill_pdhs`` for which versions are found).
        With the manifest the PDH is always filled in (computed if needed)."""
        if is_portable_data_hash(uuid_or_pdh):
            return self._get_by_pdh(uuid_or_pdh, with_manifest=with_manifest)
        if not isinstance(uuid_or_pdh, str) or not _UUID_RE.fullmatch(uuid_or_pdh):
            raise NotFound(f"collection {uuid_or_pdh!r} not found")
        with self._read() as conn:
            row = self._collection_row(conn, uuid_or_pdh, include_trash=include_trash)
            rec, computed = self._snapshot(conn, row, row[5], with_manifest=with_manifest, current=True)
        self._remember(computed)
        return rec

    def get_version(self, uuid: str, version: int, *, with_manifest: bool = True) -> CollectionRecord:
        """A collection as it was at ``version`` (name, properties, tree)."""
        with self._read() as conn:
            row = self._collection_row(conn, uuid)
            ver = conn.execute(
                "SELECT name, properties, modified_at FROM versions WHERE uuid = ? AND version = ?", (uuid, version)
            ).fetchone()
            if ver is None:
                raise NotFound(f"collection {uuid} has no version {version}")
            current = version == row[5]
            row = (row[0], ver[0], row[2], row[3], ver[2], version, ver[1], row[7], row[8])
            rec, computed = self._snapshot(conn, row, version, with_manifest=with_manifest, current=current)
        self._remember(computed)
        return rec

    def _snapshot(
        self, conn: sqlite3.Connection, row: tuple, version: int, *, with_manifest: bool, current: bool
    ) -> tuple[CollectionRecord, _Computed | None]:
        """Record of ``row`` at ``version``, with the manifest when asked.

        Runs inside the caller's read transaction, so rows and record belong
        to one version.  The current version is assembled from the line
        cache; an older one from the entry rows valid then.  Whatever was
        computed is returned for the caller to cache once the read
        transaction is over.
        """
        uuid, cid = row[0], row[8]
        pdh = self._cached_pdh(conn, uuid, version)
        if not with_manifest:
            return _record(row, pdh=pdh), None
        rendered: dict[str, str] = {}
        if current:
            text, rendered = _assemble_current(conn, cid)
        else:
            text = Manifest(_tree_at(conn, cid, version)).to_text()
        new_pdh = None
        if pdh is None:
            pdh = new_pdh = portable_data_hash(text)
        computed = _Computed(uuid, cid, version, new_pdh, rendered) if new_pdh or rendered else None
        return _record(row, pdh=pdh, manifest_text=text), computed

    def _get_by_pdh(self, pdh: str, *, with_manifest: bool) -> CollectionRecord:
        """One indexed read; a miss is NotFound at once (issue 11 §4).

        A PDH is known once computed: when the version's manifest was read
        (``get`` with the manifest), when an update computed it, or by the
        background pass a miss starts (``index_pdhs``).  So a lookup of the
        PDH of a collection changed moments ago and never read since may
        answer 404 until that pass has run (about ``pdh_pass_interval``
        seconds later); no lookup ever takes the write lock or renders a
        collection."""
        found = self._find_pdh(pdh)
        if found is None:
            self._pdh_indexer.nudge()
            raise NotFound(f"no collection with portable data hash {pdh}")
        return self.get_version(found[0], found[1], with_manifest=with_manifest)

    def index_pdhs(self) -> int:
        """Compute the missing PDHs of current versions; return how many.

        Each collection is rendered in its own read transaction (a WAL
        snapshot: commits proceed meanwhile) and its PDH and rendered lines
        are stored by ``_remember``'s short, bounded write, which keeps them
        only for the version they were computed from.  The background
        indexer runs this after lookup misses; tools and tests may call it
        directly.
        """
        sql = (
            "SELECT c.uuid, c.id FROM collections c"
            " JOIN versions v ON v.uuid = c.uuid AND v.version = c.version"
            " WHERE c.is_trashed = 0 AND v.pdh IS NULL"
        )
        with self._read() as conn:
            todo = conn.execute(sql).fetchall()
        done = 0
        for uuid, cid in todo:
            with self._read() as conn:
                row = conn.execute("SELECT version FROM collections WHERE id = ?", (cid,)).fetchone()
                if row is None or self._cached_pdh(conn, uuid, row[0]) is not None:
                    continue
                text, rendered = _assemble_current(conn, cid)
            self._remember(_Computed(uuid, cid, row[0], portable_data_hash(text), rendered))
            done += 1
        return done

    def wait_pdh_index(self, timeout: float | None = None) -> bool:
        """Wait for the background PDH pass that earlier misses started."""
        return self._pdh_indexer.wait_idle(timeout)

    def _find_pdh(self, pdh: str, conn: sqlite3.Connection | None = None) -> tuple[str, int] | None:
        """(uuid, version) of a live collection version with this PDH,
        preferring a current version, then the newest."""
        sql = (
            "SELECT v.uuid, v.version FROM versions v JOIN collections c ON c.uuid = v.uuid"
            " WHERE v.pdh = ? AND c.is_trashed = 0"
            " ORDER BY v.version = c.version DESC, v.modified_at DESC LIMIT 1"
        )
        if conn is not None:
            return conn.execute(sql, (pdh,)).fetchone()
        with self._read() as c:
            return c.execute(sql, (pdh,)).fetchone()

    def _backfill_pdhs(self, conn: sqlite3.Connection | None = None) -> None:
        """Compute the missing PDHs of current versions, under the caller's
        write lock (only a ``replace_files`` with a PDH source that missed:
        a writer's own request; reads use ``index_pdhs`` instead).

        Costs a manifest assembly per collection whose PDH was never needed,
        once: the result is cached, and so are the lines it rendered (the
        caller's write transaction holds the lock for this very version).
        Older versions are found by PDH only if their PDH was computed while
        they were read.
        """
        sql = (
            "SELECT c.uuid, c.version, c.id FROM collections c"
            " JOIN versions v ON v.uuid = c.uuid AND v.version = c.version"
            " WHERE c.is_trashed = 0 AND v.pdh IS NULL"
        )
        if conn is not None:
            for uuid, version, cid in conn.execute(sql).fetchall():
                text, rendered = _assemble_current(conn, cid)
                _store_lines(conn, cid, rendered)
                conn.execute(
                    "UPDATE versions SET pdh = ? WHERE uuid = ? AND version = ?", (portable_data_hash(text), uuid, version)
                )
            return
        with self._write() as c:
            self._backfill_pdhs(c)

    def list(self) -> list[CollectionRecord]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {', '.join('c.' + col for col in _COLUMNS)}, v.pdh"
                " FROM collections c LEFT JOIN versions v ON v.uuid = c.uuid AND v.version = c.version"
                " WHERE c.is_trashed = 0 ORDER BY c.name"
            ).fetchall()
        return [_record(r[:8], pdh=r[8]) for r in rows]

    def find_by_name(self, name: str) -> CollectionRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE name = ? AND is_trashed = 0", (name,)
            ).fetchone()
            if row is None:
                return None
            return _record(row, pdh=self._cached_pdh(conn, row[0], row[5]))

    def revision(self, uuid: str) -> tuple[str, int]:
        """``(modified_at, version)``: one primary-key lookup.

        Always modified_at, never the PDH: the PDH may only become known
        later, and a key that changes spelling would look like a change.
        """
        with self._read() as conn:
            row = conn.execute(
                "SELECT modified_at, version FROM collections WHERE uuid = ? AND is_trashed = 0", (uuid,)
            ).fetchone()
        if row is None:
            raise NotFound(f"collection {uuid} not found")
        return row[0], row[1]

    # -- writes ------------------------------------------------------------

    def create(self, name: str, manifest_text: str = "", properties: Mapping[str, Any] | None = None) -> CollectionRecord:
        _check_name(name)
        props = _properties_json(properties)
        rows, lines = tree_parts(_parse_incoming(manifest_text))
        # Key order: the table and its index are then filled by appending,
        # which is faster and packs pages full (random order leaves ~1/3 free).
        rows.sort(key=_row_key)
        text = assemble(lines)
        pdh = portable_data_hash(text)  # the whole text was sent: hashing it costs no more
        approx = sum(_approx(p, n, s) for p, n, _k, s in rows)
        now = rfc3339_now()
        uuid = self._new_uuid()
        # One write transaction: the collection, its first version, its
        # entries and its (fully rendered) line cache appear together.
        with self._write() as conn:
            try:
                cur = conn.execute(
                    f"INSERT INTO collections ({_COLLECTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, 1, ?, 0)",
                    (uuid, name, self.owner_uuid, now, now, props),
                )
            except sqlite3.IntegrityError as e:
                raise Conflict(f"a collection named {name!r} already exists") from e
            cid = cur.lastrowid
            conn.execute(
                "INSERT INTO versions (uuid, version, name, properties, modified_at, approx_chars, pdh)"
                " VALUES (?, 1, ?, ?, ?, ?, ?)",
                (uuid, name, props, now, approx, pdh),
            )
            conn.executemany(
                "INSERT INTO entries (cid, parent, name, kind, segs, v_from) VALUES (?, ?, ?, ?, ?, 1)",
                [(cid, p, n, k, s) for p, n, k, s in rows],
            )
            conn.executemany(
                "INSERT INTO dir_lines (cid, path, line) VALUES (?, ?, ?)", [(cid, p, line) for p, line in lines]
            )
        return CollectionRecord(
            uuid=uuid,
            name=name,
            portable_data_hash=pdh,
            properties=json.loads(props),
            modified_at=now,
            created_at=now,
            version=1,
            owner_uuid=self.owner_uuid,
        )

    def update(
        self,
        uuid: str,
        *,
        replace_files: Mapping[str, str] | None = None,
        manifest_text: str | None = None,
        properties: Mapping[str, Any] | None = None,
        name: str | None = None,
        base_version: int | None = None,
    ) -> UpdateResult:
        upd = CatalogUpdate(uuid, replace_files=replace_files, manifest_text=manifest_text,
                            properties=properties, name=name, base_version=base_version)
        return self.update_many([upd])[0]

    def update_many(self, updates: Sequence[CatalogUpdate]) -> list[UpdateResult]:
        """Apply several updates (of one or several collections) in ONE
        transaction: all of them, in order, or none (see Catalog.update_many)."""
        # Everything that needs no stored state is checked before the write
        # lock is taken, so a bad request never holds up other writers.
        prepared = [self._prepare_update(u) for u in updates]
        with self._write() as conn:
            # The IMMEDIATE transaction holds SQLite's write lock from here to
            # COMMIT: the stored versions read now are the ones we build on,
            # and every row change below commits (or rolls back) as one.
            return [self._update_in(conn, u, *p) for u, p in zip(updates, prepared)]

    @staticmethod
    def _prepare_update(u: CatalogUpdate) -> tuple:
        ops = None
        if u.replace_files:
            ops = plan_replace_files(u.replace_files, manifest_text_supplied=bool(u.manifest_text))
        new_tree = _parse_incoming(u.manifest_text) if u.manifest_text is not None else None
        props = _properties_json(u.properties) if u.properties is not None else None
        if u.name is not None:
            _check_name(u.name)
        return ops, new_tree, props

    def _update_in(self, conn: sqlite3.Connection, u: CatalogUpdate, ops, new_tree, props) -> UpdateResult:
        """One update inside the caller's write transaction."""
        uuid, name, base_version = u.uuid, u.name, u.base_version
        if u.properties_patch is not None:
            props = self._patched_properties(conn, uuid, u.properties_patch)
        row = self._collection_row(conn, uuid)
        cid = row[8]
        old = row[5]
        new = old + 1
        now = rfc3339_now()
        new_name = row[1] if name is None else name
        new_props = row[6] if props is None else props
        try:
            conn.execute(
                "UPDATE collections SET name = ?, properties = ?, modified_at = ?, version = ? WHERE id = ?",
                (new_name, new_props, now, new, cid),
            )
        except sqlite3.IntegrityError as e:
            raise Conflict(f"a collection named {new_name!r} already exists") from e

        (approx,) = conn.execute(
            "SELECT approx_chars FROM versions WHERE uuid = ? AND version = ?", (uuid, old)
        ).fetchone()
        pdh = None
        if ops is not None:
            writer = _VersionWriter(conn, cid, new)
            self._apply_replace_files(conn, writer, cid, old, ops, new_tree)
            approx = max(0, approx + writer.delta_chars)
            if approx <= self.cheap_pdh_chars:
                # Small collection: assembling it costs little, and the
                # lines rendered now are this version's (we hold the lock).
                text, rendered = _assemble_current(conn, cid)
                _store_lines(conn, cid, rendered)
                pdh = portable_data_hash(text)
        elif new_tree is not None:
            writer = _VersionWriter(conn, cid, new)
            pdh = portable_data_hash(writer.replace_all(new_tree))
            approx = max(0, approx + writer.delta_chars)
        else:
            pdh = self._cached_pdh(conn, uuid, old)  # tree unchanged
        conn.execute(
            "INSERT INTO versions (uuid, version, name, properties, modified_at, approx_chars, pdh)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (uuid, new, new_name, new_props, now, approx, pdh),
        )
        record = _record((uuid, new_name, row[2], row[3], now, new, new_props, 0), pdh=pdh)
        return UpdateResult(record=record, applied_on_base=base_version is not None and base_version == old)

    def update_properties(self, uuid: str, patch: Mapping[str, Any]) -> UpdateResult:
        return self.update_many([CatalogUpdate(uuid, properties_patch=patch)])[0]

    def _patched_properties(self, conn: sqlite3.Connection, uuid: str, patch: Mapping[str, Any]) -> str:
        """The stored properties with ``patch`` applied (None values delete
        keys), read inside the write transaction: no lost updates."""
        row = self._collection_row(conn, uuid)
        current = json.loads(row[6] or "{}")
        for key, value in patch.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        return _properties_json(current)

    def _resolve_pdh_source(
        self, conn: sqlite3.Connection, op: ReplaceOp, cid: int, old: int
    ) -> _FileSource | _DirSource | None:
        """The ``<PDH>/path`` source of ``op`` (called before any edit).

        A version that is current is read through the current-tree index
        (with its cached lines).  The collection being updated already
        carries its new version number, but until every source is read its
        rows are still those of ``old``.
        """
        assert op.source_pdh is not None
        found = self._find_pdh(op.source_pdh, conn)
        if found is None:
            self._backfill_pdhs(conn)
            found = self._find_pdh(op.source_pdh, conn)
        if found is None:
            raise NotFound(f"replace_files: no collection with portable data hash {op.source_pdh}")
        src_cid, src_version = conn.execute("SELECT id, version FROM collections WHERE uuid = ?", (found[0],)).fetchone()
        current = found[1] == (old if src_cid == cid else src_version)
        return _stored_source(conn, src_cid, op.source_path, None if current else found[1])

    def _apply_replace_files(
        self,
        conn: sqlite3.Connection,
        writer: _VersionWriter,
        cid: int,
        old: int,
        ops: Sequence[ReplaceOp],
        new_tree: Dir | None,
    ) -> None:
        """Apply a plan in the controller's order (inside the write txn).

        Every source is read first, from the rows as they are before any
        edit: that is the controller's "take all current/ snapshots first"
        (so swaps work), and it lets each source use the current-tree index
        and cached lines.  ``current/`` sources are checked first, as the
        controller does; any other source's error is raised at its turn in
        the plan, so the first failing step reports, as it would if sources
        were resolved one by one.  When ``/`` is a target the controller
        starts from an empty collection, and ``current/`` then sees that
        empty collection too.
        """
        replacing_root = any(op.target == "/" for op in ops)

        def source_name(op: ReplaceOp) -> str:
            return f"{op.source_pdh or op.kind}/{op.source_path}"

        resolved: dict[int, _FileSource | _DirSource | CatalogError | None] = {}
        for i, op in enumerate(ops):
            if op.kind != CURRENT:
                continue
            if replacing_root:
                src = _tree_source(Dir(), op.source_path)
            else:
                src = _stored_source(conn, cid, op.source_path, None)
            if src is None:
                raise BadRequest(f"replace_files: nonexistent source {source_name(op)!r}")
            resolved[i] = src
        for i, op in enumerate(ops):
            if op.kind == MANIFEST_TEXT:
                resolved[i] = _tree_source(new_tree if new_tree is not None else Dir(), op.source_path)
            elif op.kind != CURRENT and op.kind != DELETE:
                try:
                    resolved[i] = self._resolve_pdh_source(conn, op, cid, old)
                except CatalogError as e:
                    resolved[i] = e

        if replacing_root:
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

    def referenced_blocks(self) -> set[str]:
        """Bare locators used by any version of any collection (trashed too).

        For garbage collection: a block outside this set is not needed to
        read any stored version.  Read from every entry row's segments (the
        line cache holds nothing the rows do not).
        """
        out: set[str] = set()
        with self._read() as conn:
            for (segs,) in conn.execute("SELECT segs FROM entries WHERE kind = 'f' AND segs != ''"):
                out.update(map(bare_locator, segs.split(" ")[::3]))
        return out

    # -- retention (``davcoll gc``) ------------------------------------------
    #
    # Nothing here runs on the request path.  Trash and old versions keep
    # their blocks alive until a retention pass removes them: a collection
    # trashed before ``trashed_before`` is purged with all its versions; an
    # old version whose successor was written before ``superseded_before``
    # (so it has not been current since then) is dropped, except the newest
    # ``keep`` versions.  Timestamps are RFC 3339 strings as stored (they
    # compare as text).  Each collection is changed in its own short write
    # transaction, so a live server's commits wait for one collection at most.

    USAGE_KINDS = ("live", "versions", "trash", "versions_expired", "trash_expired")

    @staticmethod
    def _expired_upto(conn: sqlite3.Connection, uuid: str, version: int, superseded_before: str, keep: int) -> int:
        """The newest version of ``uuid`` (at ``version``) that retention
        drops, or 0.  A version ``v`` expires when ``v + 1`` was written
        before the cutoff and ``v`` is not among the newest ``keep``."""
        (last,) = conn.execute(
            "SELECT MAX(version) FROM versions WHERE uuid = ? AND version <= ? AND modified_at < ?",
            (uuid, version - max(1, keep) + 1, superseded_before),
        ).fetchone()
        return max(0, (last or 0) - 1)

    def _retention_plan(
        self, conn: sqlite3.Connection, trashed_before: str | None, superseded_before: str | None, keep: int
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
                upto = self._expired_upto(conn, uuid, version, superseded_before, keep)
            if purge or upto:
                plan[cid] = (purge, upto)
        return plan

    def block_usage(
        self, *, trashed_before: str | None = None, superseded_before: str | None = None, keep: int = 1
    ) -> dict[str, str]:
        """Every referenced bare locator -> what keeps it alive (one of
        USAGE_KINDS, the first that applies): a current version of a live
        collection, an old version retention keeps, a trashed collection
        retention keeps, or -- freed by the retention pass with these
        cutoffs -- only expired old versions, only expired trash."""
        rank = {kind: i for i, kind in enumerate(self.USAGE_KINDS)}
        out: dict[str, str] = {}
        with self._read() as conn:
            plan = self._retention_plan(conn, trashed_before, superseded_before, keep)
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

    def purge_trash(self, trashed_before: str) -> list[str]:
        """Delete for good every collection trashed before ``trashed_before``,
        with all its versions and rows; returns their UUIDs.  Their blocks
        become garbage for ``davcoll gc``."""
        with self._read() as conn:
            candidates = conn.execute(
                "SELECT id, uuid FROM collections WHERE is_trashed = 1 AND trashed_at < ?", (trashed_before,)
            ).fetchall()
        purged: list[str] = []
        for cid, uuid in candidates:
            with self._write() as conn:
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

    def prune_versions(self, superseded_before: str, keep: int = 1) -> int:
        """Drop the old versions retention no longer keeps (see above), with
        the entry rows only they used; returns how many versions went.  The
        current version is never dropped, so no reader or writer working on
        it notices."""
        with self._read() as conn:
            plan = self._retention_plan(conn, None, superseded_before, keep)
        removed = 0
        for cid in plan:
            with self._write() as conn:
                row = conn.execute("SELECT uuid, version FROM collections WHERE id = ?", (cid,)).fetchone()
                if row is None:
                    continue
                upto = self._expired_upto(conn, row[0], row[1], superseded_before, keep)
                if not upto:
                    continue
                # A row belongs to versions [v_from, v_to): gone when v_to - 1 <= upto.
                conn.execute("DELETE FROM entries WHERE cid = ? AND v_to IS NOT NULL AND v_to <= ?", (cid, upto + 1))
                removed += conn.execute("DELETE FROM versions WHERE uuid = ? AND version <= ?", (row[0], upto)).rowcount
        return removed

    def trash(self, uuid: str) -> None:
        """Hide the collection (and free its name); its rows are kept."""
        with self._write() as conn:
            self._collection_row(conn, uuid, include_trash=True)
            conn.execute(
                "UPDATE collections SET is_trashed = 1, trashed_at = ? WHERE uuid = ? AND is_trashed = 0", (rfc3339_now(), uuid)
            )

    def untrash(self, uuid: str) -> CollectionRecord:
        """Bring a trashed collection back; Conflict if its name was reused."""
        with self._write() as conn:
            self._collection_row(conn, uuid, include_trash=True)
            try:
                conn.execute("UPDATE collections SET is_trashed = 0, trashed_at = NULL WHERE uuid = ?", (uuid,))
            except sqlite3.IntegrityError as e:
                raise Conflict("another collection now has this name") from e
        return self.get(uuid, with_manifest=False)

"""The embedded catalog: collections in one SQLite file (spec 8).

Why the storage looks like this
-------------------------------
A collection may hold a million files, yet a WebDAV PUT changes one.  So the
tree is not stored as one manifest blob but as **one row per directory**
holding that directory's normalized stream line (``render_stream`` output,
the empty-directory marker line, or ``''`` for a directory that only holds
subdirectories; the root has path ``''``).  An update re-renders only the
directories it touches, so its cost follows the size of the change.  The full
manifest is assembled on demand by sorting a version's rows depth-first and
concatenating them, which yields the Python SDK's normalized layout (2.9).

Versions are kept with row ranges: a row is part of every version ``v`` with
``v_from <= v < v_to`` (``v_to`` NULL = still current).  An update to version
``N`` closes the rows it replaces (``v_to = N``) and inserts new ones
(``v_from = N``), so every older version stays readable, and -- usefully --
"the collection as it was before this request" (what ``current/`` sources
of ``replace_files`` read) is simply the previous version, even halfway
through the update.

The portable data hash needs the whole text, so it is computed lazily: when
a manifest is read, when a change replaces the whole text anyway, or when
the collection is small (``cheap_pdh_chars``); it is cached per version.

Concurrency
-----------
Every change runs in one ``BEGIN IMMEDIATE`` transaction: SQLite's write
lock then serializes writers across threads *and* processes sharing the data
directory, and the update reads the stored version inside the same
transaction, so two ``replace_files`` updates to different paths never lose
each other's edits.  Reads run in a deferred transaction (a WAL snapshot), so
a manifest is assembled from one consistent version.  Each thread uses its
own connection (``ThreadConnections``); a connection is never shared between
threads.

Paths are stored decoded (``a/b``), compared byte-wise by SQLite.  The rows
under directory ``p`` are exactly those with ``p/ <= path < p0`` (``0`` is
the character after ``/``), which is how subtrees are selected by range.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import threading
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..manifest import (
    bare_locator,
    Dir,
    ManifestError,
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
    CollectionRecord,
    Conflict,
    InvalidManifest,
    NotFound,
    Unavailable,
    UpdateResult,
)
from .replace_files import CURRENT, DELETE, MANIFEST_TEXT, ReplaceOp, lookup, plan_replace_files
from .signatures import strip_manifest_signatures

__all__ = ["LocalCatalog", "DB_FILENAME", "db_path_for", "ThreadConnections"]

DB_FILENAME = "catalog.sqlite3"
_UUID_RE = re.compile(r"[a-z0-9]{5}-4zz18-[a-z0-9]{15}")
_CLUSTER_RE = re.compile(r"[a-z0-9]{5}")
_UUID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_SCHEMA_VERSION = 1
_BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another one
_PDH_CACHE_WAIT_MS = 200  # ... and a read that only wants to cache a PDH

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS collections (
        uuid TEXT PRIMARY KEY,
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
    # text_chars is the length of the assembled manifest (to decide whether a
    # PDH is cheap), and pdh is filled in lazily.
    """CREATE TABLE IF NOT EXISTS versions (
        uuid TEXT NOT NULL,
        version INTEGER NOT NULL,
        name TEXT NOT NULL,
        properties TEXT NOT NULL,
        modified_at TEXT NOT NULL,
        text_chars INTEGER NOT NULL,
        pdh TEXT,
        PRIMARY KEY (uuid, version)
    ) WITHOUT ROWID""",
    """CREATE INDEX IF NOT EXISTS versions_pdh ON versions(pdh) WHERE pdh IS NOT NULL""",
    # One row per directory per range of versions [v_from, v_to).
    """CREATE TABLE IF NOT EXISTS dirs (
        uuid TEXT NOT NULL,
        path TEXT NOT NULL,
        line TEXT NOT NULL,
        v_from INTEGER NOT NULL,
        v_to INTEGER
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS dirs_current ON dirs(uuid, path) WHERE v_to IS NULL""",
    """CREATE INDEX IF NOT EXISTS dirs_history ON dirs(uuid, path, v_from)""",
)


def db_path_for(data_dir: str | os.PathLike[str]) -> Path:
    """Where the catalog (and the token table) live inside a data directory."""
    return Path(data_dir) / DB_FILENAME


def rfc3339_now() -> str:
    """RFC 3339 UTC with microseconds, as Arvados timestamps look."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------
# Connections and transactions


def open_connection(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection with the settings every catalog connection needs.

    Autocommit mode (``isolation_level=None``) so transactions are exactly
    the explicit BEGIN/COMMIT pairs below.  WAL lets readers proceed while
    a writer works; ``busy_timeout`` makes a second writer wait instead of
    failing.  ``check_same_thread`` is off only so ``close()`` may close it
    from another thread; otherwise each connection stays in its thread.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


class ThreadConnections:
    """One SQLite connection per thread (and per process, after a fork)."""

    def __init__(self, path: Path, synchronous: str = "FULL"):
        self._path = path
        self._synchronous = synchronous
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _all
        self._all: list[sqlite3.Connection] = []

    def get(self) -> sqlite3.Connection:
        held = getattr(self._local, "conn", None)
        if held is not None and held[0] == os.getpid():
            return held[1]
        conn = open_connection(self._path, self._synchronous)
        self._local.conn = (os.getpid(), conn)
        with self._lock:
            self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()


def _begin(conn: sqlite3.Connection, mode: str) -> None:
    try:
        conn.execute(f"BEGIN {mode}")
    except sqlite3.OperationalError as e:
        raise Unavailable(f"catalog database busy: {e}") from e


@contextmanager
def _transaction(conn: sqlite3.Connection, mode: str) -> Iterator[sqlite3.Connection]:
    """BEGIN ``mode`` ... COMMIT, rolled back on any exception."""
    _begin(conn, mode)
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.OperationalError as e:
        conn.execute("ROLLBACK")
        raise Unavailable(f"catalog commit failed: {e}") from e


# ---------------------------------------------------------------------------
# Directory rows <-> text


def stream_name(path: str) -> str:
    """Escaped stream token of a decoded directory path ('' -> '.')."""
    if not path:
        return "."
    return "./" + "/".join(escape_name(p) for p in path.split("/"))


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _parent(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent, name


def _subtree_bounds(path: str) -> tuple[str, str]:
    """``[lo, hi)`` covering the strict descendants of a non-root path."""
    return path + "/", path + "0"


def _dir_line(path: str, files: Sequence[tuple[str, tuple]], has_subdirs: bool) -> str:
    """The stored line of a directory given its (sorted) files."""
    if files:
        return render_stream(stream_name(path), files)
    if has_subdirs or not path:
        return ""  # only subdirectories, or the root: no line (spec 2.7, 2.9)
    return render_empty_dir(stream_name(path))


def _has_files(line: str) -> bool:
    """True if a stored line lists files (it is neither '' nor a marker)."""
    return bool(line) and not line.endswith(" 0:0:\\056\n")


def _line_files(line: str) -> dict[str, tuple]:
    """Files of one stored (normalized, single-directory) line."""
    if not _has_files(line):
        return {}
    _, entries = parse_stream(line[:-1])
    return dict(entries)


def _rebase(line: str, new_path: str) -> str:
    """A stored line moved to another directory: only its stream token changes."""
    if not line:
        return line
    return stream_name(new_path) + line[line.index(" ") :]


def tree_rows(root: Dir, base: str = "") -> Iterator[tuple[str, str]]:
    """Stored rows ``(path, line)`` of an in-memory tree placed at ``base``.

    Iterative, so arbitrarily deep trees cannot hit the recursion limit.
    """
    stack: list[tuple[str, Dir]] = [(base, root)]
    while stack:
        path, d = stack.pop()
        files = []
        subdirs = []
        for name in sorted(d):
            v = d[name]
            if type(v) is tuple:
                files.append((name, v))
            else:
                subdirs.append((_join(path, name), v))
        yield path, _dir_line(path, files, bool(subdirs))
        stack.extend(subdirs)


def assemble(rows: Iterable[tuple[str, str]]) -> str:
    """Full normalized manifest from one version's rows.

    Sorting by the tuple of decoded components gives the depth-first order
    of spec 2.9 (``a``, ``a/c``, ``a-b``), which plain string order does not.
    """
    ordered = sorted(rows, key=lambda r: r[0].split("/"))
    return "".join(line for _, line in ordered)


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
# Reading rows (any connection, inside a transaction for consistency)


# Queries on the current tree name the partial index explicitly: without
# statistics the planner would pick dirs_history and walk every old row.
_CURRENT = "dirs INDEXED BY dirs_current"


def _current_rows(conn: sqlite3.Connection, uuid: str) -> list[tuple[str, str]]:
    return conn.execute(f"SELECT path, line FROM {_CURRENT} WHERE uuid = ? AND v_to IS NULL", (uuid,)).fetchall()


def _rows_at(conn: sqlite3.Connection, uuid: str, version: int) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT path, line FROM dirs WHERE uuid = ? AND v_from <= ? AND (v_to IS NULL OR v_to > ?)",
        (uuid, version, version),
    ).fetchall()


def _line_at(conn: sqlite3.Connection, uuid: str, path: str, version: int) -> str | None:
    """A directory's line in a version, or None if it did not exist then.

    The newest row starting at or before ``version`` is the only candidate
    (row ranges of one path never overlap); it counts if still open then.
    """
    row = conn.execute(
        "SELECT line, v_to FROM dirs WHERE uuid = ? AND path = ? AND v_from <= ? ORDER BY v_from DESC LIMIT 1",
        (uuid, path, version),
    ).fetchone()
    if row is None or (row[1] is not None and row[1] <= version):
        return None
    return row[0]


def _subtree_at(conn: sqlite3.Connection, uuid: str, path: str, version: int) -> list[tuple[str, str]]:
    """Rows of directory ``path`` and everything below it, in a version."""
    if not path:
        return _rows_at(conn, uuid, version)
    line = _line_at(conn, uuid, path, version)
    if line is None:
        return []
    lo, hi = _subtree_bounds(path)
    below = conn.execute(
        "SELECT path, line FROM dirs WHERE uuid = ? AND path >= ? AND path < ?"
        " AND v_from <= ? AND (v_to IS NULL OR v_to > ?)",
        (uuid, lo, hi, version, version),
    ).fetchall()
    return [(path, line)] + below


# ---------------------------------------------------------------------------
# Sources of replace_files, resolved against stored rows or a request tree


@dataclass
class _FileSource:
    segments: tuple


@dataclass
class _DirSource:
    """A directory subtree: rows relative to its top ('' = the top itself)."""

    rows: list[tuple[str, str]]

    def placed_at(self, target: str) -> list[tuple[str, str]]:
        """The rows moved under ``target`` (stream tokens rewritten)."""
        out = []
        for rel, line in self.rows:
            path = _join(target, rel) if rel else target
            out.append((path, _rebase(line, path)))
        return out


def _relative(rows: list[tuple[str, str]], top: str) -> list[tuple[str, str]]:
    cut = len(top) + 1 if top else 0
    return [("" if p == top else p[cut:], line) for p, line in rows]


def _stored_source(conn: sqlite3.Connection, uuid: str, version: int, path: str) -> _FileSource | _DirSource | None:
    """The entry at ``path`` of a stored version (None if absent)."""
    rows = _subtree_at(conn, uuid, path, version)
    if rows:
        return _DirSource(_relative(rows, path))
    parent, name = _parent(path)
    line = _line_at(conn, uuid, parent, version)
    if line is None:
        return None
    segments = _line_files(line).get(name)
    return None if segments is None else _FileSource(segments)


def _tree_source(root: Dir, path: str) -> _FileSource | _DirSource | None:
    node = lookup(root, path.split("/") if path else ())
    if node is None:
        return None
    if type(node) is tuple:
        return _FileSource(node)
    return _DirSource(list(tree_rows(node)))


# ---------------------------------------------------------------------------
# Building a new version inside a write transaction


class _VersionWriter:
    """Turns the current rows of one collection into version ``new``.

    Must be used inside the write transaction that also bumps the
    collection's version; that transaction is what makes the edit atomic.
    Directory file lists touched by single-file edits are kept in
    ``_files`` and rendered once at ``finish()``, so 50 files put into one
    directory in one request re-render it once.
    """

    def __init__(self, conn: sqlite3.Connection, uuid: str, new: int):
        self.conn = conn
        self.uuid = uuid
        self.new = new
        self.delta_chars = 0
        self._files: dict[str, dict[str, tuple]] = {}
        self._touched: set[str] = set()

    # -- row primitives ----------------------------------------------------

    def _current(self, path: str) -> tuple[int, str, int] | None:
        return self.conn.execute(
            f"SELECT rowid, line, v_from FROM {_CURRENT} WHERE uuid = ? AND path = ? AND v_to IS NULL",
            (self.uuid, path),
        ).fetchone()

    def is_dir(self, path: str) -> bool:
        return path in self._files or self._current(path) is not None

    def put_row(self, path: str, line: str) -> None:
        """Make ``line`` the current line of ``path`` in the new version."""
        cur = self._current(path)
        if cur is not None:
            rowid, old, v_from = cur
            if old == line:
                return
            self.delta_chars -= len(old)
            if v_from == self.new:
                self.conn.execute("UPDATE dirs SET line = ? WHERE rowid = ?", (line, rowid))
                self.delta_chars += len(line)
                return
            self.conn.execute("UPDATE dirs SET v_to = ? WHERE rowid = ?", (self.new, rowid))
        self.conn.execute(
            "INSERT INTO dirs (uuid, path, line, v_from) VALUES (?, ?, ?, ?)", (self.uuid, path, line, self.new)
        )
        self.delta_chars += len(line)

    def drop_row(self, path: str) -> None:
        """End one directory's row (not its subtree)."""
        self._close_rows("path = ?", (path,))

    def _close_rows(self, where: str, args: tuple) -> None:
        """End current rows matching ``where`` at the new version.

        Rows created by this same update are deleted outright (they belong
        to no committed version); older ones keep their history.
        """
        base = f"uuid = ? AND v_to IS NULL AND ({where})"
        (chars,) = self.conn.execute(
            f"SELECT COALESCE(SUM(LENGTH(line)), 0) FROM {_CURRENT} WHERE {base}", (self.uuid, *args)
        ).fetchone()
        self.delta_chars -= chars
        self.conn.execute(f"DELETE FROM {_CURRENT} WHERE {base} AND v_from = ?", (self.uuid, *args, self.new))
        self.conn.execute(f"UPDATE {_CURRENT} SET v_to = ? WHERE {base}", (self.new, self.uuid, *args))

    def _drop_subtree(self, path: str) -> None:
        if not path:
            self._close_rows("1", ())
            self._files.clear()
            self._touched.clear()
            return
        lo, hi = _subtree_bounds(path)
        # Two statements rather than one OR: each is a single index range.
        self._close_rows("path = ?", (path,))
        self._close_rows("path >= ? AND path < ?", (lo, hi))
        for p in [p for p in self._files if p == path or lo <= p < hi]:
            del self._files[p]

    def _insert_rows(self, rows: list[tuple[str, str]]) -> None:
        self.conn.executemany(
            "INSERT INTO dirs (uuid, path, line, v_from) VALUES (?, ?, ?, ?)",
            [(self.uuid, p, line, self.new) for p, line in rows],
        )
        self.delta_chars += sum(len(line) for _, line in rows)

    def _has_subdirs(self, path: str) -> bool:
        if not path:
            sql, args = "path > ''", ()
        else:
            sql, args = "path >= ? AND path < ?", _subtree_bounds(path)
        row = self.conn.execute(
            f"SELECT 1 FROM {_CURRENT} WHERE uuid = ? AND v_to IS NULL AND {sql} LIMIT 1", (self.uuid, *args)
        ).fetchone()
        return row is not None

    # -- directory-level edits --------------------------------------------

    def _files_of(self, path: str) -> dict[str, tuple]:
        files = self._files.get(path)
        if files is None:
            cur = self._current(path)
            files = self._files[path] = _line_files(cur[1]) if cur else {}
        return files

    def _mkdir_p(self, path: str, target: str) -> None:
        """Create ``path`` and its missing ancestors (mkdir -p), top down."""
        if not path or self.is_dir(path):
            return
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            if self.is_dir(sub):
                continue
            parent, name = _parent(sub)
            if name in self._files_of(parent):
                raise BadRequest(f"replace_files: cannot create parent directory of {target!r}: {sub!r} is a file")
            self.put_row(sub, "")
            self._files[sub] = {}
            self._touched.update((sub, parent))

    def remove(self, path: str) -> None:
        """Remove a file or a whole directory; a missing path is a no-op."""
        if not path:
            self._drop_subtree("")
            self.put_row("", "")
            self._files[""] = {}
            return
        if self.is_dir(path):
            self._drop_subtree(path)
            self._touched.add(_parent(path)[0])
            return
        parent, name = _parent(path)
        if self.is_dir(parent):
            files = self._files_of(parent)
            if files.pop(name, None) is not None:
                self._touched.add(parent)

    def place(self, path: str, source: _FileSource | _DirSource, target: str) -> None:
        """Replace ``path`` wholesale with ``source``, creating parents."""
        if not path:
            if isinstance(source, _FileSource):
                raise BadRequest("replace_files: target '/' needs a directory source, got a file")
            self._drop_subtree("")
            self._insert_rows(source.placed_at(""))
            self._touched.add("")
            return
        parent, name = _parent(path)
        self._mkdir_p(parent, target)
        self.remove(path)
        if isinstance(source, _FileSource):
            self._files_of(parent)[name] = source.segments
        else:
            self._insert_rows(source.placed_at(path))
            self._touched.add(path)
        self._touched.add(parent)

    def replace_all(self, rows: Iterable[tuple[str, str]]) -> None:
        """Make ``rows`` the whole tree, keeping rows that did not change."""
        new = dict(rows)
        for path, _line in _current_rows(self.conn, self.uuid):
            if path not in new:
                self.drop_row(path)
        for path, line in new.items():
            self.put_row(path, line)

    def finish(self) -> None:
        """Write the lines of every touched directory that still exists.

        A directory's line also depends on whether it has subdirectories
        (empty-directory marker or not), which is why parents of added or
        removed directories are touched too.
        """
        for path in self._touched:
            files = self._files.get(path)
            if files is None:
                cur = self._current(path)
                if cur is None or _has_files(cur[1]):
                    continue  # gone, or its own files (hence its line) are unchanged
                files = {}
            line = _dir_line(path, sorted(files.items()), bool(path) and not files and self._has_subdirs(path))
            self.put_row(path, line)


# ---------------------------------------------------------------------------
# The catalog


_COLUMNS = ("uuid", "name", "owner_uuid", "created_at", "modified_at", "version", "properties", "is_trashed")
_COLLECTION_COLUMNS = ", ".join(_COLUMNS)


def _record(row: tuple, *, pdh: str | None = None, manifest_text: str | None = None) -> CollectionRecord:
    uuid, name, owner, created, modified, version, props, trashed = row
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


class LocalCatalog(Catalog):
    """Collections, their versions and trees in ``db_path`` (SQLite).

    ``cluster_id`` is the 5-character prefix of generated UUIDs.
    ``cheap_pdh_chars``: an update computes the PDH right away when the
    new manifest is at most this long (otherwise the record carries None
    until a read computes it).  ``synchronous`` is SQLite's durability
    setting; FULL makes every commit durable before the caller answers.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        cluster_id: str = "dvcol",
        owner_uuid: str = "",
        cheap_pdh_chars: int = 32 * 1024,
        synchronous: str = "FULL",
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
        self._conns = ThreadConnections(self.path, synchronous.upper())
        self._init_schema()

    def _init_schema(self) -> None:
        conn = self._conns.get()
        with _transaction(conn, "IMMEDIATE"):
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > _SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: schema version {version} is newer than this davcoll")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def close(self) -> None:
        self._conns.close()

    # -- transactions ------------------------------------------------------

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return _transaction(self._conns.get(), "DEFERRED")

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return _transaction(self._conns.get(), "IMMEDIATE")

    def _new_uuid(self) -> str:
        tail = "".join(secrets.choice(_UUID_ALPHABET) for _ in range(15))
        return f"{self.cluster_id}-4zz18-{tail}"

    # -- reads -------------------------------------------------------------

    @staticmethod
    def _collection_row(conn: sqlite3.Connection, uuid: str, *, include_trash: bool = False) -> tuple:
        row = conn.execute(f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE uuid = ?", (uuid,)).fetchone()
        if row is None or (row[7] and not include_trash):
            raise NotFound(f"collection {uuid} not found")
        return row

    @staticmethod
    def _cached_pdh(conn: sqlite3.Connection, uuid: str, version: int) -> str | None:
        row = conn.execute("SELECT pdh FROM versions WHERE uuid = ? AND version = ?", (uuid, version)).fetchone()
        return row[0] if row else None

    def _remember_pdh(self, uuid: str, version: int, pdh: str) -> None:
        """Cache a computed PDH.  Best effort, with a short lock wait: a busy
        database only costs a recomputation later, so a read never waits
        long for, or fails because of, this write."""
        conn = self._conns.get()
        conn.execute(f"PRAGMA busy_timeout = {_PDH_CACHE_WAIT_MS}")
        try:
            with _transaction(conn, "IMMEDIATE"):
                conn.execute(
                    "UPDATE versions SET pdh = ? WHERE uuid = ? AND version = ? AND pdh IS NULL", (pdh, uuid, version)
                )
        except (sqlite3.Error, Unavailable):
            pass
        finally:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")

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
        return self._cache_computed(rec, computed)

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
            row = (row[0], ver[0], row[2], row[3], ver[2], version, ver[1], row[7])
            rec, computed = self._snapshot(conn, row, version, with_manifest=with_manifest, current=current)
        return self._cache_computed(rec, computed)

    def _snapshot(
        self, conn: sqlite3.Connection, row: tuple, version: int, *, with_manifest: bool, current: bool
    ) -> tuple[CollectionRecord, bool]:
        """Record of ``row`` at ``version``, with the manifest when asked.

        Runs inside the caller's read transaction, so rows and record belong
        to one version.  Returns ``(record, pdh_was_computed)``: a computed
        PDH is cached by the caller once the read transaction is over.
        """
        uuid = row[0]
        pdh = self._cached_pdh(conn, uuid, version)
        if not with_manifest:
            return _record(row, pdh=pdh), False
        text = assemble(_current_rows(conn, uuid) if current else _rows_at(conn, uuid, version))
        if pdh is not None:
            return _record(row, pdh=pdh, manifest_text=text), False
        return _record(row, pdh=portable_data_hash(text), manifest_text=text), True

    def _cache_computed(self, rec: CollectionRecord, computed: bool) -> CollectionRecord:
        if computed and rec.portable_data_hash is not None:
            self._remember_pdh(rec.uuid, rec.version, rec.portable_data_hash)
        return rec

    def _get_by_pdh(self, pdh: str, *, with_manifest: bool) -> CollectionRecord:
        found = self._find_pdh(pdh)
        if found is None:
            self._backfill_pdhs()
            found = self._find_pdh(pdh)
        if found is None:
            raise NotFound(f"no collection with portable data hash {pdh}")
        return self.get_version(found[0], found[1], with_manifest=with_manifest)

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
        """Compute the missing PDHs of current versions (a PDH lookup miss).

        Costs a manifest assembly per collection whose PDH was never needed,
        once: the result is cached.  Older versions are found by PDH only if
        their PDH was computed while they were read.
        """
        sql = (
            "SELECT c.uuid, c.version FROM collections c JOIN versions v ON v.uuid = c.uuid AND v.version = c.version"
            " WHERE c.is_trashed = 0 AND v.pdh IS NULL"
        )
        if conn is not None:
            for uuid, version in conn.execute(sql).fetchall():
                text = assemble(_current_rows(conn, uuid))
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
        rows = list(tree_rows(_parse_incoming(manifest_text)))
        text = assemble(rows)
        pdh = portable_data_hash(text)  # the whole text was sent: hashing it costs no more
        now = rfc3339_now()
        uuid = self._new_uuid()
        with self._write() as conn:
            try:
                conn.execute(
                    f"INSERT INTO collections ({_COLLECTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, 1, ?, 0)",
                    (uuid, name, self.owner_uuid, now, now, props),
                )
            except sqlite3.IntegrityError as e:
                raise Conflict(f"a collection named {name!r} already exists") from e
            conn.execute(
                "INSERT INTO versions (uuid, version, name, properties, modified_at, text_chars, pdh)"
                " VALUES (?, 1, ?, ?, ?, ?, ?)",
                (uuid, name, props, now, len(text), pdh),
            )
            conn.executemany(
                "INSERT INTO dirs (uuid, path, line, v_from) VALUES (?, ?, ?, 1)", [(uuid, p, line) for p, line in rows]
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
        # Everything that needs no stored state is checked before the write
        # lock is taken, so a bad request never holds up other writers.
        ops = None
        if replace_files:
            ops = plan_replace_files(replace_files, manifest_text_supplied=bool(manifest_text))
        new_tree = _parse_incoming(manifest_text) if manifest_text is not None else None
        props = _properties_json(properties) if properties is not None else None
        if name is not None:
            _check_name(name)

        with self._write() as conn:
            # The IMMEDIATE transaction holds SQLite's write lock from here to
            # COMMIT: the stored version read now is the one we build on.
            row = self._collection_row(conn, uuid)
            old = row[5]
            new = old + 1
            now = rfc3339_now()
            new_name = row[1] if name is None else name
            new_props = row[6] if props is None else props
            try:
                conn.execute(
                    "UPDATE collections SET name = ?, properties = ?, modified_at = ?, version = ? WHERE uuid = ?",
                    (new_name, new_props, now, new, uuid),
                )
            except sqlite3.IntegrityError as e:
                raise Conflict(f"a collection named {new_name!r} already exists") from e

            (old_chars,) = conn.execute(
                "SELECT text_chars FROM versions WHERE uuid = ? AND version = ?", (uuid, old)
            ).fetchone()
            writer = _VersionWriter(conn, uuid, new)
            whole_text_known = False
            if ops is not None:
                self._apply_replace_files(conn, writer, uuid, old, ops, new_tree)
            elif new_tree is not None:
                writer.replace_all(tree_rows(new_tree))
                whole_text_known = True
            chars = old_chars + writer.delta_chars

            pdh = None
            if ops is None and new_tree is None:
                pdh = self._cached_pdh(conn, uuid, old)  # tree unchanged
            elif whole_text_known or chars <= self.cheap_pdh_chars:
                pdh = portable_data_hash(assemble(_current_rows(conn, uuid)))
            conn.execute(
                "INSERT INTO versions (uuid, version, name, properties, modified_at, text_chars, pdh)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (uuid, new, new_name, new_props, now, chars, pdh),
            )
        record = _record((uuid, new_name, row[2], row[3], now, new, new_props, 0), pdh=pdh)
        return UpdateResult(record=record, applied_on_base=base_version is not None and base_version == old)

    def _apply_replace_files(
        self,
        conn: sqlite3.Connection,
        writer: _VersionWriter,
        uuid: str,
        old: int,
        ops: Sequence[ReplaceOp],
        new_tree: Dir | None,
    ) -> None:
        """Apply a plan in the controller's order (inside the write txn).

        ``current/`` sources read version ``old``, which no edit below can
        change (edits only close rows at ``old + 1`` or add newer ones), so
        swaps see the pre-request tree without taking a snapshot.  When
        ``/`` is a target the controller starts from an empty collection,
        and ``current/`` then sees that empty collection too.
        """
        replacing_root = any(op.target == "/" for op in ops)
        empty = Dir()

        def resolve(op: ReplaceOp) -> _FileSource | _DirSource | None:
            if op.kind == CURRENT:
                if replacing_root:
                    return _tree_source(empty, op.source_path)
                return _stored_source(conn, uuid, old, op.source_path)
            if op.kind == MANIFEST_TEXT:
                return _tree_source(new_tree if new_tree is not None else empty, op.source_path)
            assert op.source_pdh is not None
            found = self._find_pdh(op.source_pdh, conn)
            if found is None:
                self._backfill_pdhs(conn)
                found = self._find_pdh(op.source_pdh, conn)
            if found is None:
                raise NotFound(f"replace_files: no collection with portable data hash {op.source_pdh}")
            return _stored_source(conn, found[0], found[1], op.source_path)

        def source_name(op: ReplaceOp) -> str:
            return f"{op.source_pdh or op.kind}/{op.source_path}"

        # The controller checks every current/ source before changing anything.
        for op in ops:
            if op.kind == CURRENT and resolve(op) is None:
                raise BadRequest(f"replace_files: nonexistent source {source_name(op)!r}")
        if replacing_root:
            writer.remove("")
        for op in ops:
            path = op.target[1:]
            if op.kind == DELETE:
                writer.remove(path)
                continue
            source = resolve(op)
            if source is None:
                raise BadRequest(f"replace_files: nonexistent source {source_name(op)!r} for {op.target!r}")
            writer.place(path, source, op.target)
        writer.finish()

    def referenced_blocks(self) -> set[str]:
        """Bare locators used by any version of any collection (trashed too).

        For garbage collection: a block outside this set is not needed to
        read any stored version.  Locators are read from each stored stream
        line's locator list, never by parsing file tokens.
        """
        out: set[str] = set()
        with self._read() as conn:
            for (line,) in conn.execute("SELECT line FROM dirs WHERE line != ''"):
                for tok in line.split(" ")[1:]:
                    if ":" in tok:
                        break
                    out.add(bare_locator(tok))
        return out

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

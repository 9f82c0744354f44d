"""The in-memory collection tree: every WebDAV method becomes an operation here.

Model
-----
A directory is a ``DirNode``; a file is an immutable tuple of segments (see
``segments.py``).  Directories load lazily from the manifest's stream index:
a ``DirNode`` whose ``children`` is None has not been parsed yet, and only
directories that are touched ever are.

Changes
-------
Mutations happen inside a ``ChangeSet`` (one per request).  The first
mutation takes the collection's writer lock; the change set records an undo
entry for every mutation and an *operation* (put, mkdir, delete, copy, move,
import) that compiles to the catalog's ``replace_files`` delta.  The session
either commits the delta directly (``committed()``, or ``rollback()``
restores the tree exactly), or -- the usual path -- queues the change on
the tree's ``CommitQueue`` (``commits.py``), which releases the writer lock
and commits concurrent requests together.  The writer lock gives all writers
of one collection a single order; the commit queue keeps it, so the local
tree and the catalog apply changes in the same order.

Lock order (outer to inner).  No block I/O happens under any of them, except
the commit under ``writer``:
  1. ``CollectionTree.writer`` -- one per opened collection; held by a
     ChangeSet from its first mutation until it is queued for commit
     (``detach``), committed directly, or rolled back.  Only a direct commit
     (requests touching two collections) does I/O under it.  It is a plain ``Lock``, not an ``RLock``: ownership belongs
     to the ChangeSet, not to a thread, so two change sets in one thread
     still exclude each other and a change set may be released from another
     thread.  A request that changes two collections takes both writer locks
     in UUID order (``ChangeSet.lock_trees``) before its first mutation.
  2. ``CollectionTree._lock`` -- guards the node structure (children dicts,
     caches, ``version``/``record``).  Short critical sections only; never
     held while waiting for a writer lock.  ``ChangeSet.rollback`` takes the
     ``_lock`` of several trees, in the same UUID order.
  3. ``CommitQueue._cond`` (commits.py), taken while holding ``writer``
     to queue a change; the committing leader holds no tree lock.
  4. ``ByteBudget._cond`` (buffers.py).
Readers take only ``_lock``, briefly, to resolve a path and snapshot a
segment tuple; streaming then happens without any lock.  The one reader
that may wait for ``writer`` is ``record_json`` (while another request's
change holds unstored bytes); it releases ``_lock`` before waiting.
``FileWriter`` streams and waits for ``ByteBudget`` room holding no tree
lock at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from typing import Any, Callable, Iterator

from ..manifest import (
    MAX_BLOCK_SIZE,
    Dir,
    Manifest,
    ManifestError,
    StreamIndex,
    escape_name,
    index_streams,
    render_empty_dir,
    render_stream,
    strip_manifest,
)
from ..storage.blocks import BlockStore
from .buffers import BufferBlock, ByteBudget, Flusher
from .errors import (
    AlreadyExists,
    BusyError,
    CorruptManifest,
    InvalidMove,
    InvalidName,
    IsADirectory,
    NotADirectory,
    NotFound,
    ParentNotFound,
    LimitExceeded,
    ReadOnly,
    TooDeep,
)
from .commits import CommitQueue
from .limits import UNSTORED_LOCATOR_LEN, TreeLimits, file_cost, text_entries
from .names import check_name, check_new_name, find_spelling, spelling_for_new, split_path
from .io import FileReader, FileWriter
from .segments import NotStored, Segments, etag_of, is_stored, merge, resolve_all, size_of, slice_segments

VIRTUAL_RECORD_NAME = ".arvados#collection"
WRITER_LOCK_TIMEOUT = 120.0
#: How long ``record_json`` waits for an in-flight change to commit when the
#: tree holds bytes that are not stored yet (they have no locator to show).
RECORD_WAIT_TIMEOUT = 10.0
_RECORD_KEYS = ("uuid", "name", "portable_data_hash", "manifest_text", "properties", "modified_at", "version")


#: ``DirNode.tail`` value meaning "the own-files line of ``src`` in the
#: stream index is still exact": the line is reused by reference, so a loaded
#: directory costs no second copy of its manifest text.
_UNKNOWN: Any = object()
FROM_INDEX: Any = type("_FromIndex", (), {"__repr__": lambda self: "FROM_INDEX", "__slots__": ()})()


class DirNode:
    """A directory.  ``children`` is None until loaded from ``src``."""

    __slots__ = ("children", "src", "tail", "mtimes")

    def __init__(self, children: dict | None = None, src: str | None = None) -> None:
        self.children: dict[str, Any] | None = children
        # Directory path in the source StreamIndex this node loads from (and,
        # once loaded, whose line ``tail == FROM_INDEX`` refers to).
        self.src = src
        # Cached stream line of this directory's own files *without* the
        # stream name (" <locators> <tokens>\n"), '' when it has no files,
        # FROM_INDEX (see there), or None when it must be rendered again.
        self.tail: Any = None
        # Modification times of entries changed in this process.
        self.mtimes: dict[str, float] | None = None


class Stat:
    __slots__ = ("is_dir", "size", "mtime", "etag")

    def __init__(self, is_dir: bool, size: int, mtime: float, etag: str | None) -> None:
        self.is_dir = is_dir
        self.size = size
        self.mtime = mtime
        self.etag = etag

    def __repr__(self) -> str:
        return f"Stat(is_dir={self.is_dir}, size={self.size}, etag={self.etag})"


class CollectionTree:
    """One opened collection (see module docstring)."""

    def __init__(
        self,
        manifest_text: str = "",
        *,
        store: BlockStore,
        flusher: Flusher,
        budget: ByteBudget,
        readonly: bool = False,
        trusted_normalized: bool = False,
        uuid: str = "",
        version: int = 0,
        mtime: float | None = None,
        record: dict[str, Any] | None = None,
        limits: TreeLimits | None = None,
    ) -> None:
        try:
            self._index: StreamIndex = index_streams(manifest_text)
        except ManifestError as e:
            raise CorruptManifest(str(e)) from e
        self.limits = limits or TreeLimits()
        # Running totals for the caps (see limits.py): set from the stored
        # text once, then moved by each mutation (and its undo).
        text = manifest_text if isinstance(manifest_text, str) else bytes(manifest_text).decode("utf-8", "replace")
        self.entries = text_entries(text) + len(self._index.children) - 1
        self.manifest_bytes = len(text)
        # An upper bound of the depth of any path in the tree (never lowered).
        self.depth_bound = max((k.count("/") + 2 for k in self._index.children if k), default=1)
        self.store = store
        self.flusher = flusher
        self.budget = budget
        self.readonly = readonly
        self.uuid = uuid
        self.version = version
        self.mtime = mtime if mtime is not None else time.time()
        self.record: dict[str, Any] = dict(record or {})
        # True when the stored manifest is known to be in our normalized
        # layout, so untouched directories' lines can be reused verbatim.
        self._trusted = trusted_normalized
        # src -> _trusted_line verdict (the line itself, '' or None).
        self._line_ok: dict[str, str | None] = {}
        self.root = DirNode(src="")
        self._lock = threading.RLock()
        # See the lock order in the module docstring (why a plain Lock).
        self.writer = threading.Lock()
        # Thread that took ``writer`` (informational: lets record_json tell
        # "my own change holds unstored bytes" from "another request's").
        self._writer_thread: int | None = None
        # Bumped by every structural change (and undo); keys record_json's cache.
        self._gen = 0
        self._record_cache: tuple[tuple, tuple] | None = None
        # Set when the catalog may hold changes this tree has not seen.
        self.stale = False
        # Set when a commit failed after later changes were queued on top:
        # this tree no longer matches the catalog and must be reloaded.
        self.invalid = False
        self.commits = CommitQueue(self)
        self.loaded_at = time.monotonic()

    # ------------------------------------------------------------------ loading

    def _load(self, node: DirNode) -> dict[str, Any]:
        """Children of ``node``, parsing its stream lines on first use."""
        ch = node.children
        if ch is not None:
            return ch
        src = node.src or ""
        try:
            files = self._index.load_dir(src)
        except ManifestError as e:
            raise CorruptManifest(str(e)) from e
        ch = dict(files)
        for sub in self._index.children.get(src, ()):
            ch[sub] = DirNode(src=f"{src}/{sub}" if src else sub)
        line = self._trusted_line(src)
        node.tail = None if line is None else (FROM_INDEX if line else "")
        node.children = ch
        return ch

    def _trusted_line(self, src: str) -> str | None:
        """The stored own-files line of directory ``src`` if it can be reused
        verbatim: '' when the directory has no files (no line, or only an
        empty-directory marker), None when it must be rendered (the catalog
        does not vouch for our layout, or the line is not in it)."""
        if not self._trusted:
            return None
        lines = self._index.lines.get(src)
        if not lines:
            return ""
        if len(lines) != 1:
            return None
        # The index never changes, so the verdict is cached: the scans below
        # are most of the cost of an incremental marshal otherwise.
        cached = self._line_ok.get(src, _UNKNOWN)
        if cached is not _UNKNOWN:
            return cached
        text = lines[0][1]
        sp = text.find(" ")
        # A token reaching into a subdirectory ("0:3:sub/f") makes the index
        # register that subdirectory and list the line under it too.  So a
        # directory without children whose line is its own (stream name
        # spelled as ours) cannot hold such a token: nearly all directories
        # are leaves, and they skip scanning their (long) line.
        sname = "." if not src else "./" + "/".join(map(escape_name, src.split("/")))
        own_leaf = sp == len(sname) and text.startswith(sname) and not self._index.children.get(src)
        if not own_leaf and (text.find("/", sp) >= 0 or text.find("\\057", sp) >= 0):
            verdict = None  # tokens reaching into subdirectories: not our layout
        elif text.endswith(" 0:0:\\056") and text.count(":") == 2:
            verdict = ""  # an empty-directory marker line
        else:
            verdict = text
        self._line_ok[src] = verdict
        return verdict

    def _walk(self, parts: list[str], resolved: list[str] | None = None) -> Any:
        """Entry at ``parts`` (DirNode or segment tuple); caller holds _lock.

        Each component is looked up by its exact spelling first, then by
        its canonically equivalent one (``names.find_spelling``); the
        spellings actually found are appended to ``resolved``.
        """
        node: Any = self.root
        for i, part in enumerate(parts):
            if type(node) is not DirNode:
                raise NotADirectory("/".join(parts[:i]))
            ch = self._load(node)
            node = ch.get(part)
            if node is None:
                found = find_spelling(ch, part)
                if found is None:
                    raise NotFound("/".join(parts[: i + 1]))
                part = found
                node = ch[found]
            if resolved is not None:
                resolved.append(part)
        return node

    def _parent(self, parts: list[str]) -> tuple[DirNode, dict[str, Any], str, list[str]]:
        """Parent directory node, its children, the spelling of the last
        name to act on (an existing entry's, else NFC) and the whole
        resolved path."""
        if not parts:
            raise InvalidName("the collection root has no parent")
        resolved: list[str] = []
        try:
            parent = self._walk(parts[:-1], resolved)
        except NotFound as e:
            raise ParentNotFound(str(e)) from e
        if type(parent) is not DirNode:
            raise NotADirectory("/".join(parts[:-1]))
        ch = self._load(parent)
        name = spelling_for_new(ch, parts[-1])
        resolved.append(name)
        return parent, ch, name, resolved

    def resolve(self, path: str) -> str:
        """The stored spelling of an existing ``path`` (raises NotFound)."""
        parts = split_path(path)
        resolved: list[str] = []
        with self._lock:
            self._walk(parts, resolved)
        return "/".join(resolved)

    # ------------------------------------------------------------------ reading

    def _is_virtual(self, parts: list[str]) -> bool:
        return len(parts) == 1 and parts[0] == VIRTUAL_RECORD_NAME

    def record_json(self) -> bytes:
        """Content of the virtual ``.arvados#collection`` file, whole.

        For small records and tests; the WebDAV layer streams
        ``record_body()`` instead, which never holds a big manifest's text.
        """
        body = self.record_body()
        return body.data if body.data is not None else b"".join(body)

    def record_body(self) -> "RecordBody":
        """The virtual ``.arvados#collection`` file: length and ETag known,
        content rendered in chunks as it is read (see ``RecordBody``).

        Length, ETag and the lazily computed PDH are cached until the tree
        or the record changes, because WebDAV clients stat the file before
        reading it.  A tree that holds bytes not stored yet (another
        request's change between mutation and commit) cannot be rendered:
        we wait for that change to finish, or raise BusyError if it is our
        own thread's.
        """
        try:
            return self._record_body_now()
        except NotStored:
            pass
        if self._writer_thread == threading.get_ident():
            raise BusyError("the collection has uncommitted changes in this request")
        if not self.writer.acquire(timeout=RECORD_WAIT_TIMEOUT):
            raise BusyError("collection is busy; try again")
        try:
            # Queued changes store their bytes when their group commits.
            if not self.commits.drain(RECORD_WAIT_TIMEOUT):
                raise BusyError("collection is busy; try again")
            return self._record_body_now()
        except NotStored as e:  # pragma: no cover - a change set leaked its buffers
            raise BusyError("the collection has uncommitted changes") from e
        finally:
            self.writer.release()

    def _record_body_now(self) -> "RecordBody":
        with self._lock:
            rec = {k: self.record.get(k) for k in _RECORD_KEYS if k != "manifest_text"}
            key = (self._gen, json.dumps(rec, sort_keys=True, default=str))
            cached = self._record_cache
            if cached is not None and cached[0] == key and cached[1][3] is not None:
                length, etag, pdh, data = cached[1]
                return RecordBody(self, [], b"", b"", length, etag, data)
            # Pieces of the text: mostly references to stored lines, plus
            # unloaded subtrees to be rendered later (no copy of the text).
            pieces = list(self._marshal_iter(False, defer=True))
        if cached is not None and cached[0] == key:
            length, etag, pdh, _ = cached[1]
            prefix, suffix = _record_frame(rec, pdh)
            return RecordBody(self, pieces, prefix, suffix, length, etag, None)
        # First pass: length, ETag and (if the catalog has none yet) the
        # PDH, computed chunk by chunk without keeping the text.
        need_pdh = rec.get("portable_data_hash") is None and self._trusted
        pdh = rec.get("portable_data_hash")
        md5 = hashlib.md5()
        pdh_md5 = hashlib.md5()
        pdh_len = 0
        n = 0
        small: list[bytes] | None = []
        mid_line = False
        for chunk in _chunks(self._expand(pieces)):
            esc = json.dumps(chunk)[1:-1].encode()
            n += len(esc)
            md5.update(esc)
            if small is not None:
                small.append(esc)
                if n > SMALL_RECORD:
                    small = None
            if need_pdh:
                # The catalog computes PDHs lazily; a trusted tree renders
                # the very text the catalog stores, so its hash is the PDH.
                # A chunk that starts mid-line gets its space back, so a
                # locator at its start is still recognised.
                stripped = strip_manifest(" " + chunk)[1:] if mid_line else strip_manifest(chunk)
                sb = stripped.encode()
                pdh_md5.update(sb)
                pdh_len += len(sb)
            mid_line = chunk.endswith(" ")
        if need_pdh:
            pdh = f"{pdh_md5.hexdigest()}+{pdh_len}"
        prefix, suffix = _record_frame(rec, pdh)
        length = len(prefix) + n + len(suffix)
        etag = hashlib.md5(prefix + md5.hexdigest().encode() + suffix).hexdigest()
        data = prefix + b"".join(small) + suffix if small is not None else None
        with self._lock:
            if self._gen == key[0]:
                self._record_cache = (key, (length, etag, pdh, data))
        return RecordBody(self, pieces, prefix, suffix, length, etag, data)

    def _expand(self, pieces: list[Any]) -> Iterator[str]:
        """Snapshot pieces as text; ``_Deferred`` subtrees rendered now from
        the immutable stream index (no lock: they touch no shared node)."""
        for p in pieces:
            if type(p) is str:
                yield p
            else:
                yield from self._marshal_iter(False, start=p)

    def stat(self, path: str) -> Stat:
        parts = [p for p in path.split("/") if p]
        if self._is_virtual(parts):
            return Stat(False, self.record_body().length, self.mtime, None)
        split_path(path)
        with self._lock:
            node = self._walk(parts)
            return self._stat_entry(node, parts[-1] if parts else "", self._mtime_of(parts))

    def _mtime_of(self, parts: list[str]) -> float:
        if not parts:
            return self.mtime
        try:
            parent = self._walk(parts[:-1])
        except (NotFound, NotADirectory):
            return self.mtime
        mt = parent.mtimes
        if not mt:
            return self.mtime
        name = find_spelling(mt, parts[-1])
        return mt[name] if name is not None else self.mtime

    def _stat_entry(self, node: Any, name: str, mtime: float) -> Stat:
        if type(node) is DirNode:
            return Stat(True, 0, mtime, None)
        return Stat(False, size_of(node), mtime, etag_of(node))

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except (NotFound, NotADirectory, InvalidName):
            return False

    def listdir(self, path: str) -> list[tuple[str, Stat]]:
        """Entries of a directory with their stats (sorted by name)."""
        parts = split_path(path)
        with self._lock:
            node = self._walk(parts)
            if type(node) is not DirNode:
                raise NotADirectory(path)
            ch = self._load(node)
            mt = node.mtimes or {}
            default = self.mtime
            out = []
            for name in sorted(ch):
                v = ch[name]
                if type(v) is DirNode:
                    out.append((name, Stat(True, 0, mt.get(name, default), None)))
                else:
                    out.append((name, Stat(False, size_of(v), mt.get(name, default), etag_of(v))))
            return out

    def names(self, path: str) -> list[str]:
        parts = split_path(path)
        with self._lock:
            node = self._walk(parts)
            if type(node) is not DirNode:
                raise NotADirectory(path)
            return sorted(self._load(node))

    def snapshot(self, path: str) -> Segments:
        """The segment tuple of a file (immutable; safe to read unlocked)."""
        parts = split_path(path)
        with self._lock:
            node = self._walk(parts)
        if type(node) is DirNode:
            raise IsADirectory(path)
        return node

    def open_read(self, path: str) -> FileReader | Any:
        parts = [p for p in path.split("/") if p]
        if self._is_virtual(parts):
            return self.record_body().reader()
        return FileReader(self.snapshot(path), self.store)

    def new_writer(self) -> FileWriter:
        if self.readonly:
            raise ReadOnly("collection snapshot is read-only")
        return FileWriter(self.store, self.flusher, self.budget)

    # ------------------------------------------------------------------ mutations

    def _check_writable(self, parts: list[str]) -> None:
        if self.readonly:
            raise ReadOnly("collection snapshot is read-only")
        if self._is_virtual(parts):
            raise ReadOnly(f"{VIRTUAL_RECORD_NAME} is read-only")

    def _set(self, change: "ChangeSet", parent: DirNode, ch: dict, name: str, value: Any,
             delta: tuple[int, int] = (0, 0)) -> None:
        """Set or delete (value None) one entry, recording undo information.

        ``delta`` is what the change adds to the running entry count and
        manifest size (see ``limits.py``); the undo takes it back.
        """
        old = ch.get(name)
        old_mtime = parent.mtimes.get(name) if parent.mtimes else None
        change._undo.append((self, parent, name, old, old_mtime, parent.tail, delta))
        self._gen += 1
        self.entries += delta[0]
        self.manifest_bytes += delta[1]
        if value is None:
            ch.pop(name, None)
            if parent.mtimes:
                parent.mtimes.pop(name, None)
        else:
            ch[name] = value
            if parent.mtimes is None:
                parent.mtimes = {}
            parent.mtimes[name] = time.time()
        if type(old) is tuple or type(value) is tuple:
            parent.tail = None  # own-files line changed

    def put_file(self, change: "ChangeSet", path: str, segs: Segments) -> bool:
        """Install finished content at ``path``; returns True if it was new."""
        parts = split_path(path)
        self._check_writable(parts)
        change.acquire(self)
        with self._lock:
            parent, ch, name, resolved = self._parent(parts)
            old = ch.get(name)
            if type(old) is DirNode:
                raise IsADirectory(path)
            if old is None:
                check_new_name(name)
                self._check_depth(len(resolved))
                delta = (1, file_cost(name, segs))
            elif old == segs:
                return False
            else:
                delta = (0, file_cost(name, segs) - file_cost(name, old))
            self._check_growth(delta)
            self._set(change, parent, ch, name, segs, delta)
            self.depth_bound = max(self.depth_bound, len(resolved))
        change._ops.append(("put", self, "/".join(resolved), segs))
        return old is None

    def mkdir(self, change: "ChangeSet", path: str) -> None:
        parts = split_path(path)
        self._check_writable(parts)
        change.acquire(self)
        with self._lock:
            parent, ch, name, resolved = self._parent(parts)
            if name in ch:
                raise AlreadyExists(path)
            check_new_name(name)
            self._check_depth(len(resolved))
            delta = (1, _sname_len(resolved) + 45)
            self._check_growth(delta)
            self._set(change, parent, ch, name, DirNode(children={}), delta)
            self.depth_bound = max(self.depth_bound, len(resolved))
        change._ops.append(("mkdir", self, "/".join(resolved), None))

    def remove(self, change: "ChangeSet", path: str) -> None:
        """Delete a file, or a directory recursively."""
        parts = split_path(path)
        self._check_writable(parts)
        if not parts:
            raise InvalidMove("cannot delete the collection root here")
        change.acquire(self)
        with self._lock:
            parent, ch, name, resolved = self._parent(parts)
            if name not in ch:
                raise NotFound(path)
            gone = self._measure(ch[name], name, _sname_len(resolved))
            self._set(change, parent, ch, name, None, (-gone[0], -gone[1]))
        change._ops.append(("delete", self, "/".join(resolved), None))

    # ------------------------------------------------------------------ limits

    def _check_depth(self, depth: int) -> None:
        """Refuse to create a path ``depth`` components deep past max_depth."""
        limit = self.limits.max_depth
        if depth > limit:
            raise TooDeep(f"the result would be {depth} levels deep; the limit is {limit} levels")

    def _check_growth(self, delta: tuple[int, int]) -> None:
        """Refuse a change that grows the collection past a cap (limits.py).

        Only growth is refused: a change that shrinks (or keeps) the totals
        is allowed even in a collection that is over a cap already.
        """
        lim = self.limits
        entries, size = delta[0], delta[1]
        if entries > 0 and self.entries + entries > lim.max_entries:
            raise LimitExceeded(
                f"the collection would hold {self.entries + entries} files and folders; "
                f"the limit is {lim.max_entries}"
            )
        if size > 0 and self.manifest_bytes + size > lim.max_manifest_bytes:
            raise LimitExceeded(
                f"the collection's manifest would grow to about {self.manifest_bytes + size} bytes; "
                f"the limit is {lim.max_manifest_bytes}"
            )

    def _measure(self, entry: Any, name: str, sname_len: int) -> tuple[int, int, int]:
        """``(entries, manifest bytes, height)`` of ``entry`` placed under
        the name ``name`` with a stream name ``sname_len`` long.

        Height: how many levels the deepest path inside reaches below
        ``entry`` (0 for a file or an empty folder).  Walks the subtree
        iteratively; unloaded directories are measured from their stored
        lines without parsing them (see limits.py).  Caller holds _lock.
        """
        if type(entry) is not DirNode:
            return 1, file_cost(name, entry), 0
        index = self._index
        entries = 1
        size = 0
        height = 0
        stack: list[tuple[Any, str, int, int]] = [(entry, "", sname_len, 0)]
        while stack:
            node, src, slen, depth = stack.pop()
            if depth > height:
                height = depth
            if node is not None and node.children is None:
                node, src = None, node.src or ""
            if node is None:
                lines = index.lines.get(src, ())
                kids = index.children.get(src, ())
                for _n, text in lines:
                    entries += text_entries(text)
                    size += len(text) + 1 + slen - text.find(" ")
                if lines and depth + 1 > height:
                    height = depth + 1
                elif not lines and not kids:
                    size += slen + 45
                prefix = src + "/" if src else ""
                for k in kids:
                    entries += 1
                    stack.append((None, prefix + k, slen + 1 + len(k), depth + 1))
                continue
            ch = node.children
            locs: set = set()
            files = 0
            for k, v in ch.items():
                entries += 1
                if type(v) is DirNode:
                    stack.append((v, "", slen + 1 + len(k), depth + 1))
                else:
                    files += 1
                    size += len(k) + 24
                    for seg in v:
                        locs.add(seg[0])
            if files:
                size += slen + 2 + sum(len(x) + 1 if type(x) is str else UNSTORED_LOCATOR_LEN for x in locs)
                if depth + 1 > height:
                    height = depth + 1
            elif not ch:
                size += slen + 45
        return entries, size, height

    def _copy_entry(self, entry: Any) -> Any:
        """A structurally independent copy (segment tuples are shared).

        Iterative: the subtree may be deeper than Python's recursion limit.
        """
        if type(entry) is not DirNode:
            return entry

        def clone(node: DirNode) -> DirNode:
            if node.children is None:
                return DirNode(src=node.src)
            # ``src`` goes along: a FROM_INDEX tail refers to the line of src.
            new = DirNode(children={}, src=node.src)
            new.tail = node.tail
            stack.append((node, new))
            return new

        stack: list[tuple[DirNode, DirNode]] = []
        top = clone(entry)
        while stack:
            old, new = stack.pop()
            out = new.children
            for k, v in old.children.items():  # type: ignore[union-attr]
                out[k] = clone(v) if type(v) is DirNode else v  # type: ignore[index]
        return top

    def rename(self, change: "ChangeSet", src: str, dst: str, *, overwrite: bool = True) -> bool:
        """Move an entry (segment references only).  Returns True if dst was new."""
        return self._move_or_copy(change, src, dst, overwrite=overwrite, move=True)

    def copy(self, change: "ChangeSet", src: str, dst: str, *, overwrite: bool = True, recursive: bool = True) -> bool:
        """Copy an entry (segment references only).  ``recursive=False``
        copies a directory without its members (WebDAV COPY Depth: 0)."""
        return self._move_or_copy(change, src, dst, overwrite=overwrite, move=False, recursive=recursive)

    def _move_or_copy(self, change: "ChangeSet", src: str, dst: str, *, overwrite: bool, move: bool, recursive: bool = True) -> bool:
        sp = split_path(src)
        dp = split_path(dst)
        self._check_writable(sp if move else dp)
        self._check_writable(dp)
        if not sp or not dp:
            raise InvalidMove("cannot move or copy the collection root")
        if dp[: len(sp)] == sp:
            # Spelled the same (the resolved spellings are compared below too).
            raise InvalidMove("source and destination are the same" if sp == dp else "cannot move or copy a directory into itself")
        change.acquire(self)
        with self._lock:
            sres: list[str] = []
            entry = self._walk(sp, sres)
            dparent, dch, dname, dres = self._parent(dp)
            # Compared by the spellings found: an NFD request path naming an
            # NFC entry is the same entry.
            if sres == dres:
                raise InvalidMove("source and destination are the same")
            if dres[: len(sres)] == sres:
                raise InvalidMove("cannot move or copy a directory into itself")
            existing = dch.get(dname)
            if existing is not None and not overwrite:
                raise AlreadyExists(dst)
            if existing is None:
                check_new_name(dname)
            dslen = _sname_len(dres)
            gone = (0, 0, 0) if existing is None else self._measure(existing, dname, dslen)
            if type(entry) is DirNode and not recursive:
                self._check_depth(len(dres))
                added: tuple[int, int, int] = (1, dslen + 45, 0)
            elif move:
                # Entries stay the same; only a move that goes deeper than
                # the depth bound allows needs the subtree's height.
                height = self.depth_bound - len(sres)
                if len(dres) > len(sres) and len(dres) + height > self.limits.max_depth:
                    height = self._measure(entry, dname, dslen)[2]
                    self._check_depth(len(dres) + height)
                added = (0, 0, height)
            else:
                added = self._measure(entry, dname, dslen)
                self._check_depth(len(dres) + added[2])
            delta = (added[0] - gone[0], added[1] - gone[1])
            self._check_growth(delta)
            if type(entry) is DirNode and not recursive:
                value: Any = DirNode(children={})
                kind = "mkdir"
            else:
                value = self._copy_entry(entry) if not move else entry
                kind = "move" if move else "copy"
            if move:
                sparent, sch, sname, _ = self._parent(sres)
                self._set(change, sparent, sch, sname, None)
            self._set(change, dparent, dch, dname, value, delta)
            self.depth_bound = max(self.depth_bound, len(dres) + added[2])
        src_path, dst_path = "/".join(sres), "/".join(dres)
        change._ops.append((kind, self, dst_path, src_path if kind != "mkdir" else None))
        return existing is None

    def import_entry(self, change: "ChangeSet", src_tree: "CollectionTree", src: str, dst: str, *, overwrite: bool = True, recursive: bool = True) -> bool:
        """Copy an entry from another collection tree (references only)."""
        sp = split_path(src)
        dp = split_path(dst)
        self._check_writable(dp)
        if not dp:
            raise InvalidMove("cannot replace the collection root")
        # Writer lock first (it is the outer lock): the limits are checked
        # against totals that no other writer can move until we are done.
        change.acquire(self)
        with src_tree._lock:
            entry = src_tree._walk(sp) if sp else src_tree.root
        with self._lock:
            _, dch, dname, dres = self._parent(dp)
            dslen = _sname_len(dres)
            existing = dch.get(dname)
            gone = (0, 0, 0) if existing is None else self._measure(existing, dname, dslen)
        with src_tree._lock:
            if type(entry) is DirNode and not recursive:
                added: tuple[int, int, int] = (1, dslen + 45, 0)
            else:
                # Measured before anything is copied: a refused copy of a
                # huge subtree costs a walk, not a materialized copy.
                added = src_tree._measure(entry, dname, dslen)
            self._check_depth(len(dres) + added[2])
            self._check_growth((added[0] - gone[0], added[1] - gone[1]))
            if type(entry) is DirNode:
                content: Any = src_tree._materialize(entry) if recursive else Dir()
            else:
                content = entry
        with self._lock:
            dparent, dch, dname, dres = self._parent(dp)
            existing = dch.get(dname)
            if existing is not None and not overwrite:
                raise AlreadyExists(dst)
            if existing is None:
                check_new_name(dname)
            gone = (0, 0, 0) if existing is None else self._measure(existing, dname, dslen)
            delta = (added[0] - gone[0], added[1] - gone[1])
            self._check_growth(delta)
            value = self._from_dir(content) if isinstance(content, Dir) else content
            self._set(change, dparent, dch, dname, value, delta)
            self.depth_bound = max(self.depth_bound, len(dres) + added[2])
        change._ops.append(("import", self, "/".join(dres), content))
        return existing is None

    def _materialize(self, node: DirNode) -> Dir:
        """A fully loaded ``manifest.Dir`` copy of a subtree (caller holds
        _lock).  Iterative, like every walk here."""
        top = Dir()
        stack: list[tuple[DirNode, Dir]] = [(node, top)]
        while stack:
            n, out = stack.pop()
            for name, v in self._load(n).items():
                if type(v) is DirNode:
                    sub = out[name] = Dir()
                    stack.append((v, sub))
                else:
                    out[name] = v
        return top

    def _from_dir(self, d: Dir) -> DirNode:
        """A loaded DirNode subtree holding the content of ``d`` (iterative)."""
        top = DirNode(children={})
        stack: list[tuple[Dir, DirNode]] = [(d, top)]
        while stack:
            src, node = stack.pop()
            ch = node.children
            for k, v in src.items():
                if isinstance(v, Dir):
                    sub = ch[k] = DirNode(children={})  # type: ignore[index]
                    stack.append((v, sub))
                else:
                    ch[k] = v  # type: ignore[index]
        return top

    def truncate(self, change: "ChangeSet", path: str, size: int) -> None:
        """Shrink or grow (with zero bytes) a file.

        The writer lock is taken *before* the current content is read: this
        is a read-modify-write, and reading first would let a concurrent
        change slip in between and be overwritten with stale content.
        """
        if size < 0:
            raise ValueError("negative size")
        parts = split_path(path)
        self._check_writable(parts)
        change.acquire(self)
        with self._lock:
            segs = self._walk(parts)
        if type(segs) is DirNode:
            raise IsADirectory(path)
        cur = size_of(segs)
        if size <= cur:
            new = merge(slice_segments(segs, 0, size))
        else:
            new = merge(list(segs) + _zero_segments(size - cur, self.budget))
        self.put_file(change, path, new)

    def write_at(self, change: "ChangeSet", path: str, offset: int, data: bytes) -> None:
        """Random-access write; creates the file if missing, zero-fills gaps.

        Like ``truncate``, takes the writer lock before reading the old
        content.  The new bytes stay buffered (outside the byte budget: they
        are already in memory, and waiting for budget while holding the
        writer lock could stall every writer of the collection) until
        ``ChangeSet.flush`` packs them; data over 64 MiB is cut into several
        buffers so that no block exceeds the Keep limit.
        """
        if offset < 0:
            raise ValueError("negative offset")
        parts = split_path(path)
        self._check_writable(parts)
        change.acquire(self)
        with self._lock:
            try:
                segs = self._walk(parts)
            except NotFound:
                segs = ()
        if type(segs) is DirNode:
            raise IsADirectory(path)
        cur = size_of(segs)
        new: list[tuple] = list(slice_segments(segs, 0, min(offset, cur)))
        if offset > cur:
            new += _zero_segments(offset - cur, self.budget)
        mv = memoryview(data)
        for i in range(0, len(mv), MAX_BLOCK_SIZE):
            piece = mv[i : i + MAX_BLOCK_SIZE]
            new.append((BufferBlock(None, piece), 0, len(piece)))
        new += slice_segments(segs, offset + len(data), cur)
        self.put_file(change, path, merge(new))

    # ------------------------------------------------------------------ marshal

    def marshal(self, *, strip: bool = False) -> str:
        """Full manifest text in the normalized layout.

        Cost is proportional to what changed, not to the collection, when
        the catalog vouches for the stored layout (``trusted_normalized``):
        untouched directories -- loaded or not -- are emitted as their stored
        lines, by reference, and a changed directory's rendered line is
        cached until it changes again.  Without that promise unloaded
        directories are parsed and rendered each time, but not kept loaded
        (a marshal must not make a big tree resident).

        Every segment must be stored (``ChangeSet.flush`` does that);
        otherwise ``segments.NotStored`` (a ValueError) is raised.
        """
        with self._lock:
            return "".join(self._marshal_iter(strip))

    def _marshal_iter(self, strip: bool, start: Any = None, defer: bool = False) -> Iterator[Any]:
        """The pieces of the manifest text, in order (see ``marshal``).

        Iterative -- an explicit stack of directories still to emit -- since
        trees written by other clients may nest deeper than Python's
        recursion limit.  ``start`` is a ``_Deferred`` to render only that
        unloaded subtree.  With ``defer``, an unloaded subtree that would
        have to be parsed and rendered is yielded as a ``_Deferred`` instead
        of its text (``record_body`` renders it later, without the lock,
        from the immutable stream index).  Caller holds ``_lock``, except
        when rendering a ``_Deferred`` (which touches no shared node).
        """
        # Items: (node, sname), node None meaning "unloaded directory src".
        stack: list[tuple[Any, str, str]] = (
            [(self.root, "", ".")] if start is None else [(None, start.src, start.sname)]
        )
        while stack:
            node, src, sname = stack.pop()
            if node is not None and node.children is None:
                node, src = None, node.src or ""
            if node is None:
                line = None if strip else self._trusted_line(src)
                if line is None:
                    if defer:
                        yield _Deferred(src, sname)
                        continue
                    # Render from a throwaway load: marshal must not keep it resident.
                    node = DirNode(src=src)
                    self._load(node)
                else:
                    kids = self._index.children.get(src)
                    if line:
                        n = len(sname)
                        if line.startswith(sname) and line[n] == " ":
                            yield line  # by reference: no copy of the stored line
                            yield "\n"
                        else:
                            yield sname + line[line.index(" ") :] + "\n"
                    elif not kids and sname != ".":
                        yield render_empty_dir(sname)
                    if kids:
                        prefix = src + "/" if src else ""
                        for sub in sorted(kids, reverse=True):
                            stack.append((None, prefix + sub, sname + "/" + escape_name(sub)))
                    continue
            ch = node.children
            files = []
            subdirs = []
            for name in sorted(ch):
                v = ch[name]
                if type(v) is DirNode:
                    subdirs.append((name, v))
                else:
                    files.append((name, v))
            tail = None if strip else node.tail
            if tail is FROM_INDEX:
                text = self._index.lines[node.src or ""][0][1]
                n = len(sname)
                if text.startswith(sname) and text[n] == " ":
                    yield text
                    yield "\n"
                else:
                    yield sname + text[text.index(" ") :] + "\n"
            else:
                if tail is None:
                    if files:
                        line = render_stream(sname, [(n, resolve_all(s)) for n, s in files], strip=strip)
                        tail = line[len(sname) :]
                    else:
                        tail = ""
                    if not strip and all(is_stored(s) for _, s in files):
                        node.tail = tail
                if tail:
                    yield sname + tail
                elif not ch and sname != ".":
                    yield render_empty_dir(sname)
            for name, sub in reversed(subdirs):
                stack.append((sub, "", sname + "/" + escape_name(name)))

    def walk_files(self, path: str = "") -> Iterator[tuple[str, Segments]]:
        """Every file under ``path`` (loads the subtree)."""
        parts = split_path(path)
        # Collect under the lock, yield without it: a generator suspended at
        # a yield inside ``with self._lock`` would hold the lock for as long
        # as its consumer pleases (or forever, if abandoned).
        with self._lock:
            node = self._walk(parts)
            if type(node) is not DirNode:
                items = [("/".join(parts), node)]
            else:
                items = list(self._materialize_items(node, "/".join(parts)))
        yield from items

    def _materialize_items(self, node: DirNode, prefix: str) -> Iterator[tuple[str, Segments]]:
        """Files of a subtree in sorted depth-first order (iterative)."""
        stack: list[tuple[str, Iterator[str], DirNode]] = [(prefix, iter(sorted(self._load(node))), node)]
        while stack:
            pre, it, d = stack[-1]
            for name in it:
                v = d.children[name]  # type: ignore[index]
                p = f"{pre}/{name}" if pre else name
                if type(v) is DirNode:
                    stack.append((p, iter(sorted(self._load(v))), v))
                    break
                yield p, v
            else:
                stack.pop()


class _Deferred:
    """An unloaded subtree whose text ``record_body`` renders on demand."""

    __slots__ = ("src", "sname")

    def __init__(self, src: str, sname: str) -> None:
        self.src = src
        self.sname = sname


#: Records up to this many bytes are kept whole in the cache (and served
#: with ranges); bigger ones are rendered anew, chunk by chunk, per read.
SMALL_RECORD = 1 << 18
_CHUNK = 1 << 16
_PLACEHOLDER = "\x00davcoll-manifest-text\x00"


def _record_frame(rec: dict[str, Any], pdh: str | None) -> tuple[bytes, bytes]:
    """The record's JSON before and after the manifest text (quotes included).

    Keys are sorted, so this is byte-identical to dumping the whole record.
    """
    rec = dict(rec, manifest_text=_PLACEHOLDER, portable_data_hash=pdh)
    text = json.dumps(rec, indent=2, sort_keys=True, default=str) + "\n"
    marker = json.dumps(_PLACEHOLDER)
    i = text.index(marker)  # "manifest_text" sorts before every other key
    return (text[:i] + '"').encode(), ('"' + text[i + len(marker) :]).encode()


def _chunks(pieces: Iterator[str], size: int | None = None) -> Iterator[str]:
    """Pieces of manifest text regrouped into chunks of about ``size``
    characters, each ending just after a newline or a space (the last one
    wherever the text ends), so that no chunk is ever the whole text of a
    big manifest and each can be JSON-escaped (and stripped) on its own."""
    if size is None:
        size = _CHUNK
    buf: list[str] = []
    n = 0
    for p in pieces:
        if len(p) <= size:
            buf.append(p)
            n += len(p)
            if n >= size and (p.endswith("\n") or p.endswith(" ")):
                yield "".join(buf)
                buf, n = [], 0
            continue
        i = 0
        while len(p) - i > size:
            cut = p.rfind(" ", i, i + size)
            if cut < i:
                cut = p.find(" ", i + size)
                if cut < 0:
                    break
            buf.append(p[i : cut + 1])
            yield "".join(buf)
            buf, n = [], 0
            i = cut + 1
        rest = p[i:]
        buf.append(rest)
        n += len(rest)
    if buf:
        yield "".join(buf)


class RecordBody:
    """A snapshot of ``.arvados#collection``: ``length`` and ``etag`` are
    known up front; iterating renders the JSON chunk by chunk (manifest
    text pieces escaped one by one), so even a million-file record is never
    held whole in memory.  Small records carry their bytes in ``data``."""

    def __init__(self, tree: CollectionTree, pieces: list[Any], prefix: bytes, suffix: bytes,
                 length: int, etag: str, data: bytes | None) -> None:
        self.tree = tree
        self.pieces = pieces
        self.prefix = prefix
        self.suffix = suffix
        self.length = length
        self.etag = etag
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        yield self.prefix
        for chunk in _chunks(self.tree._expand(self.pieces)):
            yield json.dumps(chunk)[1:-1].encode()
        yield self.suffix

    def reader(self) -> "_IterReader":
        """A read-only file object over the content."""
        return _IterReader(iter(self))


class _IterReader(io.RawIOBase):
    """``read(n)`` over an iterator of byte chunks (no seeking)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if n is None or n < 0:
            data = self._buf + b"".join(self._chunks)
            self._buf = b""
            return data
        while len(self._buf) < n:
            nxt = next(self._chunks, None)
            if nxt is None:
                break
            self._buf += nxt
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _sname_len(parts: list[str]) -> int:
    """Approximate length of the stream name ``./a/b`` of a path."""
    return 1 + sum(len(p) + 1 for p in parts)


def _zero_segments(n: int, budget: ByteBudget) -> list[tuple]:
    """Segments of ``n`` zero bytes, sharing one buffered zero block."""
    if n <= 0:
        return []
    chunk = min(n, 1 << 20)
    zeros = BufferBlock(None, bytes(chunk))
    out = []
    while n > 0:
        k = min(n, chunk)
        out.append((zeros, 0, k))
        n -= k
    return out


# ---------------------------------------------------------------------- changes


class ChangeSet:
    """The mutations of one request, their undo log and their catalog delta."""

    def __init__(self, lock_timeout: float = WRITER_LOCK_TIMEOUT) -> None:
        self._locked: list[CollectionTree] = []
        self._undo: list[tuple] = []
        self._ops: list[tuple] = []
        self._lock_timeout = lock_timeout
        # Side-store changes (dead properties, locks, metadata files) that
        # must happen only once the catalog holds this change.
        self._on_commit: list[Callable[[], None]] = []

    def on_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` after this change is committed (never if it fails)."""
        self._on_commit.append(action)

    def take_commit_actions(self) -> list[Callable[[], None]]:
        """The registered after-commit actions (emptied: they run once)."""
        actions, self._on_commit = self._on_commit, []
        return actions

    def only_removes(self, tree: CollectionTree) -> bool:
        """Whether this change only deletes from ``tree`` (such updates go
        last in a multi-collection commit: a failure then leaves a copy,
        never a loss)."""
        return all(op[0] == "delete" for op in self.ops_for(tree))

    @property
    def trees(self) -> list[CollectionTree]:
        return list(self._locked)

    def __bool__(self) -> bool:
        return bool(self._ops)

    def acquire(self, tree: CollectionTree) -> None:
        """Take ``tree``'s writer lock for the rest of this change."""
        if any(t is tree for t in self._locked):
            return
        if not tree.writer.acquire(timeout=self._lock_timeout):
            raise BusyError("collection is busy; try again")
        tree._writer_thread = threading.get_ident()
        self._locked.append(tree)

    def lock_trees(self, *trees: CollectionTree) -> None:
        """Take several writer locks in a deadlock-free (UUID) order.

        Call it before the change's first mutation: two requests locking the
        same pair of collections then always wait in the same direction.
        (Locks this change already holds are kept, not re-ordered; if that
        breaks the order, the acquire timeout turns a deadlock into a
        BusyError rather than a hang.)
        """
        for t in sorted(trees, key=lambda t: (t.uuid, id(t))):
            self.acquire(t)

    def ops_for(self, tree: CollectionTree) -> list[tuple]:
        return [op for op in self._ops if op[1] is tree]

    def flush(self) -> None:
        """Store every still-buffered byte this change references.

        Small buffers are packed together into shared blocks (up to 64 MiB);
        a buffer of 32 MiB or more is stored on its own.  Each tree's
        buffers go to that tree's block store (stores are per token).
        """
        for tree in self._locked:
            buffers = pending_buffers(self.ops_for(tree))
            if buffers:
                pack_and_store(buffers, tree.store, tree.flusher)

    def batches(self, tree: CollectionTree) -> list[tuple[dict[str, str], str]]:
        """This change's operations on ``tree`` as catalog updates (see
        ``compile_batches``)."""
        return compile_batches(self.ops_for(tree))

    def detach(self, tree: CollectionTree) -> None:
        """Hand ``tree``'s part of this change to its commit queue.

        Releases the writer lock and gives up the undo log for ``tree``
        (later writers build on these mutations, so they can no longer be
        undone locally; a failed commit invalidates the tree instead).  The
        operations stay until the queue's leader commits them.
        """
        self._undo = [u for u in self._undo if u[0] is not tree]
        if any(t is tree for t in self._locked):
            self._locked = [t for t in self._locked if t is not tree]
            tree._writer_thread = None
            tree.writer.release()

    def forget(self, tree: CollectionTree) -> None:
        """Drop ``tree``'s operations once the catalog holds them."""
        self._ops = [op for op in self._ops if op[1] is not tree]

    def committed(self, tree: CollectionTree, *, version: int, record: dict[str, Any] | None = None, fresh: bool = True) -> None:
        """The catalog accepted this change's updates for ``tree``."""
        with tree._lock:
            tree.version = version
            if record:
                tree.record.update(record)
            if not fresh:
                tree.stale = True
        self._ops = [op for op in self._ops if op[1] is not tree]
        # The change is durable for this tree: a later rollback (another tree
        # of the same request failed) must not undo it locally.
        self._undo = [u for u in self._undo if u[0] is not tree]

    def rollback(self) -> None:
        """Undo every mutation, newest first, and forget the operations."""
        trees = sorted(self._locked, key=lambda t: (t.uuid, id(t)))
        for t in trees:
            t._lock.acquire()
        try:
            self._undo_all()
        finally:
            for t in reversed(trees):
                t._lock.release()
        self._ops.clear()

    def _undo_all(self) -> None:
        for tree, parent, name, old, old_mtime, old_tail, delta in reversed(self._undo):
            tree._gen += 1
            tree.entries -= delta[0]
            tree.manifest_bytes -= delta[1]
            ch = parent.children
            if ch is None:
                continue
            if old is None:
                ch.pop(name, None)
            else:
                ch[name] = old
            if parent.mtimes is not None:
                if old_mtime is None:
                    parent.mtimes.pop(name, None)
                else:
                    parent.mtimes[name] = old_mtime
            parent.tail = old_tail
        self._undo.clear()

    def release(self) -> None:
        """Drop the writer locks (after commit or rollback).

        Anything neither committed nor rolled back by then is rolled back
        first: the catalog never saw it, so keeping it would make the cached
        tree disagree with the catalog while looking clean.
        """
        if self._undo:
            self.rollback()
        self._ops.clear()
        self._on_commit.clear()
        while self._locked:
            tree = self._locked.pop()
            tree._writer_thread = None
            tree.writer.release()


def pending_buffers(ops: list[tuple]) -> list[BufferBlock]:
    """Distinct BufferBlocks that operations reference and nobody stored yet."""
    pending: dict[int, BufferBlock] = {}
    for kind, _tree, _path, arg in ops:
        for segs in _segment_lists(kind, arg):
            for seg in segs:
                src = seg[0]
                if type(src) is not str and src.locator is None:
                    pending[id(src)] = src
    return list(pending.values())


def compile_batches(ops: list[tuple]) -> list[tuple[dict[str, str], str]]:
    """Operations (of one tree, in order) as catalog updates.

    Consecutive operations share one ``replace_files`` map while none of
    their paths overlap; an overlap starts a new batch, because a
    ``current/`` source always reads the catalog's state *before* the
    update.  Returns ``[(replace_files, manifest_text), ...]``; every
    segment must be stored.
    """
    out: list[tuple[dict[str, str], str]] = []
    rf: dict[str, str] = {}
    content = Dir()
    used: list[str] = []

    def overlaps(p: str) -> bool:
        return any(p == u or p.startswith(u + "/") or u.startswith(p + "/") for u in used)

    def close_batch() -> None:
        nonlocal rf, content, used
        if rf:
            out.append((rf, Manifest(content).to_text()))
        rf, content, used = {}, Dir(), []

    for kind, _tree, path, arg in ops:
        paths = [path] + ([arg] if kind in ("copy", "move") else [])
        if any(overlaps(p) for p in paths):
            close_batch()
        used.extend(paths)
        target = "/" + path
        if kind == "delete":
            rf[target] = ""
        elif kind in ("copy", "move"):
            rf[target] = "current/" + arg
            if kind == "move" and not arg.startswith(path + "/"):
                # Moving a/b onto its ancestor a: replacing a already
                # drops a/b, and a delete target nested in a non-empty
                # target would be rejected by the catalog.
                rf["/" + arg] = ""
        else:
            rf[target] = "manifest_text/" + path
            _place_content(content, path, kind, arg)
    close_batch()
    return out


def _op_paths(op: tuple) -> list[str]:
    kind, _tree, path, arg = op
    return [path] + ([arg] if kind in ("copy", "move") else [])


def compile_group(per_request: list[list[tuple]]) -> list[tuple[dict[str, str], str, int]]:
    """The operations of several requests (in queue order) as catalog updates.

    Like ``compile_batches``, but a new update starts only *between*
    requests, so one request's change is one catalog update and a failed
    update never leaves a request half applied.  Each item is
    ``(replace_files, manifest_text, done)``: once this update is applied,
    requests ``0..done`` are completely in the catalog (``done`` is -1 when
    none is).  A request whose own operations overlap each other (none of
    the WebDAV methods makes such a change) is split as before.
    """
    out: list[tuple[dict[str, str], str, int]] = []
    chunk: list[tuple] = []
    used: list[str] = []
    complete = -1  # last request completely in the updates emitted so far

    def overlaps(p: str) -> bool:
        return any(p == u or p.startswith(u + "/") or u.startswith(p + "/") for u in used)

    def emit(last: int) -> None:
        nonlocal complete
        batches = compile_batches(chunk)
        for i, (rf, mt) in enumerate(batches):
            out.append((rf, mt, last if i == len(batches) - 1 else complete))
        if batches:
            complete = last

    last_in_chunk = -1
    for i, ops in enumerate(per_request):
        paths = [p for op in ops for p in _op_paths(op)]
        if chunk and any(overlaps(p) for p in paths):
            emit(last_in_chunk)
            chunk, used = [], []
        chunk.extend(ops)
        used.extend(paths)
        last_in_chunk = i
    if chunk:
        emit(last_in_chunk)
    return out


def pack_and_store(buffers: list[BufferBlock], store: BlockStore, flusher: Flusher) -> None:
    """Store buffers, packing small ones together into shared blocks."""
    pack_limit = MAX_BLOCK_SIZE
    big = [b for b in buffers if len(b) >= pack_limit // 2]
    small = sorted((b for b in buffers if len(b) < pack_limit // 2), key=len, reverse=True)
    for b in big:
        flusher.store_now(b, store)
    packs: list[list[BufferBlock]] = []
    sizes: list[int] = []
    for b in small:
        for i, s in enumerate(sizes):
            if s + len(b) <= pack_limit:
                packs[i].append(b)
                sizes[i] += len(b)
                break
        else:
            packs.append([b])
            sizes.append(len(b))
    for pack in packs:
        if len(pack) == 1:
            flusher.store_now(pack[0], store)
            continue
        combined = BufferBlock(None)
        bases = []
        for b in pack:
            bases.append(len(combined))
            assert b.data is not None and combined.data is not None
            combined.data += b.data
        loc = flusher.store_now(combined, store)
        for b, base in zip(pack, bases):
            b.stored(loc, base)


def _segment_lists(kind: str, arg: Any) -> Iterator[Segments]:
    if kind == "put":
        yield arg
    elif kind == "import":
        if isinstance(arg, Dir):
            stack = [arg]
            while stack:
                d = stack.pop()
                for v in d.values():
                    if isinstance(v, Dir):
                        stack.append(v)
                    else:
                        yield v
        else:
            yield arg


def _place_content(content: Dir, path: str, kind: str, arg: Any) -> None:
    """Put a put/mkdir/import operation's content at ``path`` in ``content``."""
    parts = path.split("/")
    d = content
    for p in parts[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, Dir):
            nxt = d[p] = Dir()
        d = nxt
    if kind == "mkdir":
        d[parts[-1]] = Dir()
    elif kind == "put":
        d[parts[-1]] = resolve_all(arg)
    else:
        d[parts[-1]] = _resolve_dir(arg) if isinstance(arg, Dir) else resolve_all(arg)


def _resolve_dir(d: Dir) -> Dir:
    """A copy of ``d`` with every segment resolved to its locator (iterative)."""
    top = Dir()
    stack: list[tuple[Dir, Dir]] = [(d, top)]
    while stack:
        src, out = stack.pop()
        for k, v in src.items():
            if isinstance(v, Dir):
                sub = out[k] = Dir()
                stack.append((v, sub))
            else:
                out[k] = resolve_all(v)
    return top

"""The in-memory collection tree: every WebDAV method becomes an operation here.

This module holds ``CollectionTree``: lazy loading of directories from the
stored manifest, reads (stat, listdir, snapshot, the record file), mutations
with their limit checks, and marshal.  Its neighbours:

* ``nodes.py`` -- the node model (``DirNode``, file segment tuples, ``Stat``);
* ``changes.py`` -- ``ChangeSet`` (one per request): the writer locks it
  owns, the typed ``Op``/``Undo`` records every mutation here hands it, and
  their compilation to catalog ``replace_files`` updates;
* ``commits.py`` -- the group-commit queue of a tree;
* ``record.py`` -- the streamed ``.arvados#collection`` file;
* ``buffers.py`` -- buffered bytes and their packing into blocks at commit;
* ``locking.py`` -- the lock order of the whole process.

A commit's result reaches the tree in one place, ``apply_commit``; a
rollback in one place, ``undo``.

Locks (see ``locking.py``): ``writer`` (owned by a ChangeSet from its first
mutation of this tree until it is queued, committed or rolled back) before
``_lock`` (the node structure, ``version``, ``mtime``, ``record``; short
sections, no I/O, never two trees' at once).  ``writer`` is a plain
``Lock``, not an ``RLock``: ownership belongs to the ChangeSet, not to a
thread, so two change sets in one thread still exclude each other and a
change set may be released from another thread.  Readers take only
``_lock``, briefly, to resolve a path and snapshot a segment tuple;
streaming then happens without any lock.  The one reader that may wait for
``writer`` is ``record_body`` (while another request's change holds unstored
bytes); it releases ``_lock`` before waiting.  ``FileWriter`` streams and
waits for ``ByteBudget`` room holding no tree lock at all.  Functions that
require a lock say so and check it in debug mode (``locking.caller_holds``).
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..manifest import (
    MAX_BLOCK_SIZE,
    Dir,
    ManifestError,
    StreamIndex,
    escape_name,
    index_streams,
    render_empty_dir,
    render_stream,
)
from ..storage.blocks import BlockStore
from .buffers import BufferBlock, ByteBudget, Flusher, zero_segments
from .changes import Op, Undo
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
from .locking import DEBUG, caller_holds, requires
from .limits import UNSTORED_LOCATOR_LEN, TreeLimits, file_cost, text_entries
from .names import check_new_name, find_spelling, spelling_for_new, split_path
from .io import FileWriter
from .nodes import FROM_INDEX, DirNode, Stat, sname_len
from .record import RECORD_KEYS, RecordBody, measure_record, record_frame
from .segments import NotStored, Segments, etag_of, is_stored, merge, resolve_all, size_of, slice_segments

if TYPE_CHECKING:
    from .changes import ChangeSet

VIRTUAL_RECORD_NAME = ".arvados#collection"
#: How long ``record_body`` waits for an in-flight change to commit when the
#: tree holds bytes that are not stored yet (they have no locator to show).
RECORD_WAIT_TIMEOUT = 10.0


#: ``_line_ok`` marker for "no verdict cached yet".
_UNKNOWN: Any = object()


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
        # Thread that took ``writer`` (informational: lets record_body tell
        # "my own change holds unstored bytes" from "another request's").
        self._writer_thread: int | None = None
        # Bumped by every structural change (and undo); keys record_body's cache.
        self._gen = 0
        self._record_cache: tuple[tuple, tuple] | None = None
        # Set when the catalog may hold changes this tree has not seen.
        self.stale = False
        # Set when a commit failed after later changes were queued on top:
        # this tree no longer matches the catalog and must be reloaded.
        self.invalid = False
        self.commits = CommitQueue(self)
        self.loaded_at = time.monotonic()

    # ------------------------------------------------------- writer lock, commits

    def lock_writer(self, timeout: float) -> bool:
        """Take ``writer`` for a change set (``ChangeSet.acquire``); False
        if ``timeout`` passed first."""
        if not self.writer.acquire(timeout=timeout):
            return False
        self._writer_thread = threading.get_ident()
        return True

    def unlock_writer(self) -> None:
        """Give ``writer`` back (the change set holding it is done with it)."""
        if DEBUG:
            requires(self.writer.locked(), "the tree's writer lock")
        self._writer_thread = None
        self.writer.release()

    def apply_commit(
        self,
        *,
        version: int,
        on_base: bool = True,
        mtime: float | None = None,
        record: dict[str, Any] | None = None,
    ) -> None:
        """Bring the tree to the catalog's state after one of our updates.

        The one place a commit's result reaches a tree: the session calls
        it with each catalog record it gets back (``record``: fields to
        merge into ``self.record``; ``mtime``: the collection's new
        modification time).  ``on_base``: the update was applied on the
        version this tree had; if not, someone else committed in between,
        and the tree is marked ``stale`` (reloaded when due).  Takes
        ``_lock``.
        """
        with self._lock:
            self.version = version
            if mtime is not None:
                self.mtime = mtime
            if record:
                self.record.update(record)
            if not on_base:
                self.stale = True

    def undo(self, entries: list[Undo]) -> None:
        """Undo node changes of this tree (``ChangeSet.rollback``), newest
        (last) first.  The caller's change holds ``writer``; takes ``_lock``."""
        if DEBUG:
            requires(self.writer.locked(), "the tree's writer lock (held by the change undone)")
        with self._lock:
            for u in reversed(entries):
                self._gen += 1
                self.entries -= u.delta[0]
                self.manifest_bytes -= u.delta[1]
                parent, name = u.parent, u.name
                ch = parent.children
                if ch is None:
                    continue
                if u.old is None:
                    ch.pop(name, None)
                else:
                    ch[name] = u.old
                if parent.mtimes is not None:
                    if u.old_mtime is None:
                        parent.mtimes.pop(name, None)
                    else:
                        parent.mtimes[name] = u.old_mtime
                parent.tail = u.old_tail

    # ------------------------------------------------------------------ loading

    def _load(self, node: DirNode) -> dict[str, Any]:
        """Children of ``node``, parsing its stream lines on first use.
        Caller holds ``_lock`` (the node may be shared)."""
        if DEBUG:
            caller_holds(self._lock, "CollectionTree._lock")
        return self._parse(node)

    def _parse(self, node: DirNode) -> dict[str, Any]:
        """``_load`` without the lock check: for shared nodes under
        ``_lock``, or for a private throwaway node (``_marshal_iter``)."""
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
        if DEBUG:
            caller_holds(self._lock, "CollectionTree._lock")
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
        resolved path.  Caller holds ``_lock``."""
        if DEBUG:
            caller_holds(self._lock, "CollectionTree._lock")
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
            rec = {k: self.record.get(k) for k in RECORD_KEYS if k != "manifest_text"}
            key = (self._gen, json.dumps(rec, sort_keys=True, default=str))
            cached = self._record_cache
            if cached is not None and cached[0] == key and cached[1][3] is not None:
                length, etag, pdh, data = cached[1]
                return RecordBody(self.expand, [], b"", b"", length, etag, data)
            # Pieces of the text: mostly references to stored lines, plus
            # unloaded subtrees to be rendered later (no copy of the text).
            pieces = list(self._marshal_iter(False, defer=True))
        if cached is not None and cached[0] == key:
            length, etag, pdh, _ = cached[1]
            prefix, suffix = record_frame(rec, pdh)
            return RecordBody(self.expand, pieces, prefix, suffix, length, etag, None)
        # First pass: length, ETag and (if the catalog has none yet) the
        # PDH, computed chunk by chunk without keeping the text.
        need_pdh = rec.get("portable_data_hash") is None and self._trusted
        length, etag, pdh, data = measure_record(rec, self.expand(pieces), need_pdh=need_pdh)
        prefix, suffix = record_frame(rec, pdh)
        with self._lock:
            if self._gen == key[0]:
                self._record_cache = (key, (length, etag, pdh, data))
        return RecordBody(self.expand, pieces, prefix, suffix, length, etag, data)

    def expand(self, pieces: list[Any]) -> Iterator[str]:
        """Snapshot pieces (``_marshal_iter(defer=True)``) as text;
        ``_Deferred`` subtrees rendered now from the immutable stream index
        (no lock needed: they touch no shared node)."""
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
        """When the entry at ``parts`` changed.  Caller holds ``_lock``."""
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
        manifest size (see ``limits.py``); the undo takes it back.  Caller
        holds ``_lock``, and ``change`` holds this tree's ``writer``.
        """
        if DEBUG:
            caller_holds(self._lock, "CollectionTree._lock")
            requires(change.holds(self), "the tree's writer lock (held by the change)")
        old = ch.get(name)
        old_mtime = parent.mtimes.get(name) if parent.mtimes else None
        change.record_undo(Undo(self, parent, name, old, old_mtime, parent.tail, delta))
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
        change.record_op(Op("put", self, "/".join(resolved), segs))
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
            delta = (1, sname_len(resolved) + 45)
            self._check_growth(delta)
            self._set(change, parent, ch, name, DirNode(children={}), delta)
            self.depth_bound = max(self.depth_bound, len(resolved))
        change.record_op(Op("mkdir", self, "/".join(resolved), None))

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
            gone = self._measure(ch[name], name, sname_len(resolved))
            self._set(change, parent, ch, name, None, (-gone[0], -gone[1]))
        change.record_op(Op("delete", self, "/".join(resolved), None))

    # ------------------------------------------------------------------ limits

    def _check_depth(self, depth: int) -> None:
        """Refuse to create a path ``depth`` components deep past max_depth."""
        limit = self.limits.max_depth
        if depth > limit:
            raise TooDeep(f"the result would be {depth} levels deep; the limit is {limit} levels")

    def _check_growth(self, delta: tuple[int, int]) -> None:
        """Refuse a change that grows the collection past a cap (limits.py).

        Only growth is refused: a change that shrinks (or keeps) the totals
        is allowed even in a collection that is over a cap already.  The
        caller's change holds ``writer`` (no other writer moves the totals).
        """
        if DEBUG:
            requires(self.writer.locked(), "the tree's writer lock")
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
        if DEBUG:
            caller_holds(self._lock, "CollectionTree._lock")
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
        Caller holds ``_lock``.
        """
        if DEBUG:
            caller_holds(self._lock, "CollectionTree._lock")
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
            dslen = sname_len(dres)
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
        change.record_op(Op(kind, self, dst_path, src_path if kind != "mkdir" else None))
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
        src_tree.resolve(src)  # a missing source is reported first
        with self._lock:
            _, dch, dname, dres = self._parent(dp)
            dslen = sname_len(dres)
            existing = dch.get(dname)
            gone = (0, 0, 0) if existing is None else self._measure(existing, dname, dslen)

        def check(added: tuple[int, int, int]) -> None:
            self._check_depth(len(dres) + added[2])
            self._check_growth((added[0] - gone[0], added[1] - gone[1]))

        added, content = src_tree.export("/".join(sp), dname, dslen, recursive=recursive, check=check)
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
        change.record_op(Op("import", self, "/".join(dres), content))
        return existing is None

    def export(
        self, path: str, name: str, sname_len: int, *, recursive: bool,
        check: Callable[[tuple[int, int, int]], None],
    ) -> tuple[tuple[int, int, int], Any]:
        """The entry at ``path``, for another tree's ``import_entry``.

        Returns its measure placed under ``name`` with a stream name
        ``sname_len`` long (see ``_measure``) and its content: a
        ``manifest.Dir`` (empty unless ``recursive``) or the segment tuple.
        ``check`` may refuse the measure (by raising) before anything is
        copied: a refused copy of a huge subtree costs a walk, not a
        materialized copy.  Takes ``_lock``; ``check`` runs under it.
        """
        with self._lock:
            entry = self._walk(split_path(path))
            if type(entry) is DirNode and not recursive:
                added: tuple[int, int, int] = (1, sname_len + 45, 0)
            else:
                added = self._measure(entry, name, sname_len)
            check(added)
            if type(entry) is DirNode:
                content: Any = self._materialize(entry) if recursive else Dir()
            else:
                content = entry
        return added, content

    def _materialize(self, node: DirNode) -> Dir:
        """A fully loaded ``manifest.Dir`` copy of a subtree (caller holds
        _lock).  Iterative, like every walk here."""
        if DEBUG:
            caller_holds(self._lock, "CollectionTree._lock")
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

    def write_at(self, change: "ChangeSet", path: str, offset: int, data: bytes) -> None:
        """Random-access write; creates the file if missing, zero-fills gaps.

        The writer lock is taken *before* the old content is read: this is
        a read-modify-write, and reading first would let a concurrent change
        slip in between and be overwritten with stale content.  The new bytes stay buffered (outside the byte budget: they
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
            new += zero_segments(offset - cur)
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
        if DEBUG and start is None:
            caller_holds(self._lock, "CollectionTree._lock")
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
                    self._parse(node)
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
        """Files of a subtree in sorted depth-first order (iterative).
        Caller holds ``_lock`` while consuming it."""
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

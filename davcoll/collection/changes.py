"""Change sets: the mutations of one request, their undo log and their
catalog delta.

Mutations happen inside a ``ChangeSet`` (one per request).  The first
mutation of a tree takes that tree's writer lock for the change set; the
tree then records an ``Undo`` entry for every node it changes and an ``Op``
(put, mkdir, delete, copy, move, import) that compiles to the catalog's
``replace_files`` delta (``compile_batches``, ``compile_group``).  The
session either commits the delta directly (``committed()``; on failure
``rollback()`` restores the trees exactly), or -- the usual path -- queues
the change on the tree's ``CommitQueue`` (``commits.py``), which releases
the writer lock and commits concurrent requests together.

Locks: a ChangeSet is used by one request thread at a time and has no lock
of its own.  It owns the writer locks it took (``CollectionTree.writer``)
until ``detach``, ``release`` or (through ``release``) ``rollback``; it
never takes a tree's ``_lock`` itself (``CollectionTree.undo`` does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple

from ..manifest import Dir, Manifest
from .buffers import BufferBlock, pack_and_store
from .errors import BusyError
from .locking import DEBUG, requires
from .segments import Segments, resolve_all

if TYPE_CHECKING:
    from .nodes import DirNode
    from .tree import CollectionTree

__all__ = [
    "WRITER_LOCK_TIMEOUT", "ChangeSet", "Op", "Undo", "compile_batches", "compile_group", "pending_buffers",
]

WRITER_LOCK_TIMEOUT = 120.0


class Op(NamedTuple):
    """One catalog-level operation of a change, in the order it happened.

    ``arg`` depends on ``kind``: the new segments (``put``), the source path
    (``copy``, ``move``), the copied content -- a ``manifest.Dir`` or a
    segment tuple -- (``import``), None (``mkdir``, ``delete``).
    """

    kind: str  # put | mkdir | delete | copy | move | import
    tree: "CollectionTree"
    path: str
    arg: Any

    def paths(self) -> list[str]:
        """Every path this operation touches (target, and source if any)."""
        return [self.path, self.arg] if self.kind in ("copy", "move") else [self.path]


class Undo(NamedTuple):
    """What one ``CollectionTree._set`` changed, to put it back exactly."""

    tree: "CollectionTree"
    parent: "DirNode"
    name: str
    old: Any  # the previous entry, None if there was none
    old_mtime: float | None
    old_tail: Any  # the parent's cached own-files line before the change
    delta: tuple[int, int]  # what the change added to (entries, manifest bytes)


class ChangeSet:
    """The mutations of one request, their undo log and their catalog delta."""

    def __init__(self, lock_timeout: float = WRITER_LOCK_TIMEOUT) -> None:
        self._locked: list[CollectionTree] = []
        self._undo: list[Undo] = []
        self._ops: list[Op] = []
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
        return all(op.kind == "delete" for op in self.ops_for(tree))

    @property
    def trees(self) -> list[CollectionTree]:
        return list(self._locked)

    def __bool__(self) -> bool:
        return bool(self._ops)

    # ------------------------------------------------------------ writer locks

    def holds(self, tree: CollectionTree) -> bool:
        """Whether this change holds ``tree``'s writer lock."""
        return any(t is tree for t in self._locked)

    def acquire(self, tree: CollectionTree) -> None:
        """Take ``tree``'s writer lock for the rest of this change."""
        if self.holds(tree):
            return
        if not tree.lock_writer(self._lock_timeout):
            raise BusyError("collection is busy; try again")
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

    # ------------------------------------------------------------ recording

    def record_undo(self, entry: Undo) -> None:
        """Log how to undo one node change (``CollectionTree._set``; the
        change holds ``entry.tree``'s writer lock)."""
        if DEBUG:
            requires(self.holds(entry.tree), "the tree's writer lock (held by this change)")
        self._undo.append(entry)

    def record_op(self, op: Op) -> None:
        """Log one operation for the catalog delta (after its mutation; this
        change holds ``op.tree``'s writer lock)."""
        if DEBUG:
            requires(self.holds(op.tree), "the tree's writer lock (held by this change)")
        self._ops.append(op)

    def ops_for(self, tree: CollectionTree) -> list[Op]:
        return [op for op in self._ops if op.tree is tree]

    # ------------------------------------------------------------ committing

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
        self._undo = [u for u in self._undo if u.tree is not tree]
        if self.holds(tree):
            self._locked = [t for t in self._locked if t is not tree]
            tree.unlock_writer()

    def forget(self, tree: CollectionTree) -> None:
        """Drop ``tree``'s operations once the catalog holds them."""
        self._ops = [op for op in self._ops if op.tree is not tree]

    def committed(self, tree: CollectionTree, *, version: int | None = None,
                  record: dict[str, Any] | None = None, fresh: bool = True) -> None:
        """The catalog accepted this change's updates for ``tree``.

        With ``version``, also bring the tree to that catalog version and
        ``record`` (see ``CollectionTree.apply_commit``; the session applies
        each catalog record itself as its update returns, and passes none).
        """
        if version is not None:
            tree.apply_commit(version=version, on_base=fresh, record=record)
        self.forget(tree)
        # The change is durable for this tree: a later rollback (another tree
        # of the same request failed) must not undo it locally.
        self._undo = [u for u in self._undo if u.tree is not tree]

    def rollback(self) -> None:
        """Undo every mutation, newest first, and forget the operations.

        Each tree undoes its own entries under its own ``_lock``
        (``CollectionTree.undo``); entries of different trees touch
        different nodes, so the order between trees does not matter.
        """
        undo, self._undo = self._undo, []
        trees = {id(u.tree): u.tree for u in undo}
        for tree in sorted(trees.values(), key=lambda t: (t.uuid, id(t))):
            tree.undo([u for u in undo if u.tree is tree])
        self._ops.clear()

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
            self._locked.pop().unlock_writer()


# ---------------------------------------------------------------- the delta


def pending_buffers(ops: list[Op]) -> list[BufferBlock]:
    """Distinct BufferBlocks that operations reference and nobody stored yet."""
    pending: dict[int, BufferBlock] = {}
    for op in ops:
        for segs in _segment_lists(op.kind, op.arg):
            for seg in segs:
                src = seg[0]
                if type(src) is not str and src.locator is None:
                    pending[id(src)] = src
    return list(pending.values())


def compile_batches(ops: list[Op]) -> list[tuple[dict[str, str], str]]:
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

    for op in ops:
        kind, path, arg = op.kind, op.path, op.arg
        paths = op.paths()
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


def compile_group(per_request: list[list[Op]]) -> list[tuple[dict[str, str], str, int]]:
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
    chunk: list[Op] = []
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
        paths = [p for op in ops for p in op.paths()]
        if chunk and any(overlaps(p) for p in paths):
            emit(last_in_chunk)
            chunk, used = [], []
        chunk.extend(ops)
        used.extend(paths)
        last_in_chunk = i
    if chunk:
        emit(last_in_chunk)
    return out


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

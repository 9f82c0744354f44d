"""Domain operations: what a write request does, knowing nothing of HTTP.

Each WebDAV verb that changes something becomes one call here, the way
WsgiDAV's filesystem provider turns each verb into one OS call:

    DELETE -> delete        MKCOL -> mkdir / create_collection
    COPY   -> copy          MOVE  -> move        PUT -> put

An ``Operations`` object serves one request.  It owns the rules that span
more than one tree call:

- which tree operation a COPY/MOVE is (within one collection, between two,
  a whole collection at the top level, Finder/Windows metadata files);
- tree locking: the change set takes each collection's writer lock, two
  collections in a deadlock-free order (``ChangeSet.lock_trees``);
- commit order: ``Session.commit`` commits one change per request, several
  collections all-or-nothing where the catalog can, additions before
  removals where it cannot;
- the side stores (dead properties, locks, metadata files) change only
  after the commit succeeded (``ChangeSet.on_commit``), so a failed request
  leaves them as they were.

Callers describe where an operation acts with ``Place`` (the WebDAV layer
builds it from a URL); errors are the collection filesystem's typed errors
(``collection.errors``), which the WebDAV layer maps to statuses in one
table.

Locks: none of its own.  Every method may take tree writer locks through
the request's ChangeSet (released by ``Session.commit`` or on rollback);
the caller holds no tree lock when calling.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Protocol

from .collection import ChangeSet, CollectionTree
from .collection.errors import OverwritesSource, ReadOnly, Refused
from .collection.segments import Segments
from .session import Session

__all__ = ["Operations", "Place", "SideStores"]


@dataclass
class Place:
    """Where an operation acts.

    ``tree`` is the opened collection (None for the top level and for names
    that are not collections yet); ``path`` is inside it ('' for its root).
    ``ref`` keys the side stores (the same whatever URL named the place).
    """

    tree: CollectionTree | None
    path: str
    ref: str
    coll_key: str = ""
    name: str = ""
    top_level: bool = False  # a slot at the top level: /<name>
    is_top: bool = False  # the top level itself: /
    snapshot: bool = False  # addressed by portable data hash: read-only
    junk: bool = False  # a Finder/Windows metadata name (never stored)

    @property
    def is_collection_root(self) -> bool:
        return self.tree is not None and self.path == "" and not self.is_top


class JunkFiles(Protocol):
    """Finder/Windows metadata files, kept out of collections."""

    def is_junk(self, name: str) -> bool: ...
    def copy(self, src_coll: str, src_path: str, dst_coll: str, dst_path: str, *, move: bool) -> bool: ...
    def delete(self, coll: str, path: str) -> bool: ...
    def drop_tree(self, coll: str, dir_path: str = "") -> None: ...


class SideStores(Protocol):
    """Dead properties, locks and metadata files of one request's caller."""

    junk: JunkFiles

    def remove_properties(self, ref: str) -> None: ...
    def move_properties(self, src_ref: str, dst_ref: str) -> None: ...
    def copy_properties(self, src_ref: str, dst_ref: str) -> None: ...
    def remove_locks(self, ref: str) -> None: ...


class Operations:
    """The write operations of one request (see the module docstring)."""

    def __init__(self, session: Session, change: ChangeSet, sides: SideStores) -> None:
        self.session = session
        self.change = change
        self.sides = sides

    # ------------------------------------------------------------ files and folders

    def put(self, target: Place, segs: Segments) -> bool:
        """Install finished content; True if the name is new."""
        tree = self._writable(target)
        return tree.put_file(self.change, target.path, segs)

    def mkdir(self, target: Place) -> None:
        if target.junk:
            raise Refused("system metadata names cannot be folders")
        tree = self._writable(target)
        tree.mkdir(self.change, target.path)

    def create_collection(self, name: str) -> None:
        """MKCOL at the top level (``name`` checked by the caller's URL space)."""
        self.session.create_collection(unicodedata.normalize("NFC", name))

    def delete(self, target: Place) -> None:
        """DELETE a file, a folder (recursively) or a whole collection."""
        sides, ref = self.sides, target.ref
        if target.is_collection_root:
            if target.snapshot:
                raise ReadOnly("collection snapshot is read-only")
            assert target.tree is not None
            self.session.trash_collection(target.tree.uuid)
            sides.junk.drop_tree(target.coll_key)
        elif target.junk:
            if not sides.junk.delete(target.coll_key, target.path):
                raise Refused("no such metadata file")
        else:
            tree = self._writable(target)
            tree.remove(self.change, target.path)
            coll_key, path = target.coll_key, target.path
            self.change.on_commit(lambda: sides.junk.drop_tree(coll_key, path))

        def side_stores() -> None:
            sides.remove_properties(ref)
            sides.remove_locks(ref)

        self.change.on_commit(side_stores)

    # ------------------------------------------------------------ copy and move

    def copy(self, src: Place, dst: Place, *, recursive: bool, dest_exists: bool) -> None:
        self._copy_or_move(src, dst, move=False, recursive=recursive, dest_exists=dest_exists)

    def move(self, src: Place, dst: Place, *, dest_exists: bool) -> None:
        self._copy_or_move(src, dst, move=True, recursive=True, dest_exists=dest_exists)

    def _copy_or_move(self, src: Place, dst: Place, *, move: bool, recursive: bool, dest_exists: bool) -> None:
        if src.junk or dst.junk:
            # Metadata names, in a collection or at the top level: junk <-> junk only.
            self._junk_copy(src, dst, move=move, dest_exists=dest_exists)
            return
        if src.is_collection_root and (dst.top_level or dst.is_top):
            self._collection_level(src, dst, move=move, dest_exists=dest_exists)
            return
        if dst.tree is None or dst.is_collection_root or dst.is_top:
            raise Refused("only folders (collections) can be created at the top level")
        if src.tree is None:
            raise Refused("cannot copy or move this resource")
        if move and src.snapshot:
            raise ReadOnly("collection snapshot is read-only")
        change = self.change
        if src.tree is dst.tree:
            if move and dst.path and src.path.startswith(dst.path + "/"):
                # Overwriting the destination would delete the source.
                raise OverwritesSource(f"{dst.path} contains {src.path}")
            change.acquire(src.tree)
            if move:
                src.tree.rename(change, src.path, dst.path, overwrite=True)
            else:
                src.tree.copy(change, src.path, dst.path, overwrite=True, recursive=recursive)
        else:
            if move and src.is_collection_root:
                raise Refused("move a collection to the top level to rename it")
            change.lock_trees(src.tree, dst.tree)
            dst.tree.import_entry(change, src.tree, src.path, dst.path, overwrite=True, recursive=recursive)
            if move:
                src.tree.remove(change, src.path)
        self._side_stores_follow(src, dst, move=move, dest_exists=dest_exists)

    def _side_stores_follow(self, src: Place, dst: Place, *, move: bool, dest_exists: bool) -> None:
        """Dead properties and locks follow the data, once it is committed."""
        sides = self.sides

        def side_stores() -> None:
            if dest_exists:
                sides.remove_properties(dst.ref)
            if move:
                sides.move_properties(src.ref, dst.ref)
                sides.remove_locks(src.ref)
            else:
                sides.copy_properties(src.ref, dst.ref)

        self.change.on_commit(side_stores)

    def _junk_copy(self, src: Place, dst: Place, *, move: bool, dest_exists: bool) -> None:
        """Copy/move between metadata names (kept in memory, never stored);
        their dead properties (Windows' Win32* times) follow them."""
        junk = self.sides.junk
        if not (src.junk and dst.junk):
            raise Refused("system metadata files cannot become regular files or vice versa")
        if not junk.copy(src.coll_key, src.path, dst.coll_key, dst.path, move=move):
            raise Refused("no such metadata file")
        self._side_stores_follow(src, dst, move=move, dest_exists=dest_exists)

    def _collection_level(self, src: Place, dst: Place, *, move: bool, dest_exists: bool) -> None:
        """MOVE /a/ -> /b/ renames a collection; COPY makes a new one.  Onto
        an existing collection: see ``Session.replace_collection``."""
        if not dst.top_level:
            raise Refused("collections can only be moved or copied at the top level")
        if src.snapshot:
            raise ReadOnly("collection snapshot is read-only")
        assert src.tree is not None
        if dest_exists and dst.tree is not None and dst.tree.uuid == src.tree.uuid:
            raise Refused("source and destination are the same")
        sess = self.session
        target = sess.find_collection(dst.name, fresh=True) if dest_exists else None
        if target is not None:
            sess.replace_collection(src.tree.uuid, target.uuid, move=move)
        elif move:
            sess.rename_collection(src.tree.uuid, unicodedata.normalize("NFC", dst.name))
        else:
            sess.copy_collection(src.tree.uuid, unicodedata.normalize("NFC", dst.name))

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _writable(target: Place) -> CollectionTree:
        if target.tree is None:
            raise Refused("only folders (collections) can be created at the top level")
        if target.snapshot or target.tree.readonly:
            raise ReadOnly("collection snapshot is read-only")
        return target.tree

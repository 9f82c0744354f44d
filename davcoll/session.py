"""Sessions: who the caller is, which catalog and block store serve them,
the cache of opened collection trees, and the single commit path.

The WebDAV layer turns a credential into a ``Session`` and asks it for
collection trees; every write request ends in ``Session.commit``, which
stores buffered data, sends the delta to the catalog and only then lets the
response go out.

Locks (their place in the process-wide order: ``collection/locking.py``):
``TreeCache._lock`` guards the cache's dict and byte count (never held
during catalog calls).  ``Session._list_lock`` guards the short-lived
listing memo.  ``SessionManager._open_locks`` serialise loading one
collection.  ``commit`` runs with the change's writer locks held.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .collection import BusyError, ByteBudget, ChangeSet, CollectionTree, Flusher
from .collection.limits import TreeLimits
from .collection.locking import caller_holds
from .collection.names import find_spelling
from .manifest import is_portable_data_hash
from .storage.blocks import BlockStore
from .storage.resigning import ResigningStore
from .storage.catalog import (Catalog, CatalogError, CatalogUpdate, CollectionRecord, NotFound, PartiallyApplied,
                              UpdateResult, revision_key)

log = logging.getLogger("davcoll.session")

UUID_RE_INFIX = "-4zz18-"


@dataclass
class Principal:
    """An authenticated caller.  ``token`` is secret: never log it."""

    user_id: str
    token: str = field(repr=False)
    can_write: bool = True
    label: str = ""

    @property
    def token_key(self) -> str:
        return token_key(self.token)


def token_key(token: str) -> str:
    """A non-reversible key for caches (tokens themselves are never keys)."""
    return hashlib.sha256(token.encode()).hexdigest()


class Backend(abc.ABC):
    """Process-wide storage wiring for one backend kind."""

    #: Whether stored manifests are in our normalized layout (lets trees
    #: reuse untouched directories' lines verbatim).
    trusted_normalized = False
    #: Whether trees may be shared by every caller (single-tenant catalog).
    shared_trees = False
    #: Reload a cached tree after this many seconds even if unchanged (None:
    #: never).  Backends with block signatures also reload before half of
    #: ``signature_ttl()`` has passed.
    max_tree_age: float | None = None
    #: Whether a token's access to a PDH snapshot is re-checked at every
    #: revalidation (multi-tenant catalogs: access can be revoked).
    pdh_access_checks = False

    def signature_ttl(self) -> float | None:
        """Seconds a block signature stays valid (None: blocks are not signed)."""
        return None

    @abc.abstractmethod
    def authenticate(self, token: str | None) -> Principal | None:
        """The principal for a token (None: anonymous), or None if refused."""

    @abc.abstractmethod
    def catalog(self, principal: Principal) -> Catalog:
        """The catalog as seen by this caller."""

    @abc.abstractmethod
    def block_store(self, principal: Principal) -> BlockStore:
        """The block store (with the shared cache in front) for this caller."""

    def cache_stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


def record_dict(rec: CollectionRecord) -> dict[str, Any]:
    """The fields of a catalog record that trees and listings show."""
    return {
        "uuid": rec.uuid,
        "name": rec.name,
        "portable_data_hash": rec.portable_data_hash,
        "properties": dict(rec.properties or {}),
        "modified_at": rec.modified_at,
        "version": rec.version,
    }


def parse_time(text: str) -> float:
    """Epoch seconds of an RFC 3339 timestamp ('' → now)."""
    if not text:
        return time.time()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


class TreeCache:
    """Byte-bounded LRU of opened collection trees.

    The byte estimate is the manifest length times a factor: the in-memory
    tree of a loaded collection is a few times larger than its text.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: "OrderedDict[Any, tuple[CollectionTree, int, float]]" = OrderedDict()
        self._bytes = 0

    def get(self, key: Any) -> tuple[CollectionTree, float] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0], item[2]

    def put(self, key: Any, tree: CollectionTree, size: int, validated_at: float) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (tree, size, validated_at)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, (_, sz, _) = self._items.popitem(last=False)
                self._bytes -= sz

    def touch(self, key: Any, validated_at: float) -> None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items[key] = (item[0], item[1], validated_at)

    def drop(self, key: Any) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class SessionConfig:
    revalidate_seconds: float = 2.0
    list_cache_seconds: float = 1.0
    # Per-collection caps every opened tree enforces (collection/limits.py).
    tree_limits: TreeLimits = field(default_factory=TreeLimits)


class SessionManager:
    """Creates sessions per principal and owns the process-wide tree cache."""

    def __init__(self, backend: Backend, *, tree_cache_bytes: int = 512 << 20, buffer_bytes: int = 256 << 20,
                 flush_workers: int = 4, config: SessionConfig | None = None) -> None:
        self.backend = backend
        self.trees = TreeCache(tree_cache_bytes)
        self.budget = ByteBudget(buffer_bytes)
        self.flusher = Flusher(flush_workers)
        self.config = config or SessionConfig()
        self._sessions: "OrderedDict[str, Session]" = OrderedDict()
        self._lock = threading.Lock()
        self.max_sessions = 256
        # Striped locks serialising the loading/revalidation of one
        # collection: without them, concurrent first requests each loaded
        # their own tree, wrote into their own copy, and the copy cached last
        # lacked the others' changes until the next revalidation.
        self._open_locks = [threading.Lock() for _ in range(64)]

    def open_lock(self, key: Any) -> threading.Lock:
        return self._open_locks[hash(key) % len(self._open_locks)]

    def authenticate(self, token: str | None) -> Principal | None:
        return self.backend.authenticate(token)

    def session(self, principal: Principal) -> "Session":
        key = principal.token_key
        with self._lock:
            s = self._sessions.get(key)
            if s is not None:
                self._sessions.move_to_end(key)
                return s
        s = Session(self, principal)
        with self._lock:
            self._sessions[key] = s
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return s

    def close(self) -> None:
        self.flusher.shutdown()
        self.backend.close()


class Session:
    """One caller's view: catalog, block store and opened collections."""

    def __init__(self, manager: SessionManager, principal: Principal) -> None:
        self.manager = manager
        self.principal = principal
        self.catalog: Catalog = manager.backend.catalog(principal)
        self.store: BlockStore = manager.backend.block_store(principal)
        self._list_lock = threading.Lock()
        self._list_memo: tuple[float, list[CollectionRecord]] | None = None

    # --------------------------------------------------------------- listing

    def list_collections(self, *, fresh: bool = False) -> list[CollectionRecord]:
        now = time.monotonic()
        with self._list_lock:
            memo = self._list_memo
        if memo is not None and not fresh and now - memo[0] < self.manager.config.list_cache_seconds:
            return memo[1]
        recs = self.catalog.list()
        with self._list_lock:
            self._list_memo = (now, recs)
        return recs

    def forget_listing(self) -> None:
        with self._list_lock:
            self._list_memo = None

    def find_collection(self, name: str, *, fresh: bool = False) -> CollectionRecord | None:
        """The collection a top-level name refers to: the exact spelling
        first, else its NFC/NFD equivalent (see ``collection.names``)."""
        by_name = {rec.name: rec for rec in self.list_collections(fresh=fresh)}
        if name in by_name:
            return by_name[name]
        if not fresh and not name.isascii():
            # Fall back to an equivalent spelling only if the exact one does
            # not exist *now*: the memo may predate its creation.
            by_name = {rec.name: rec for rec in self.list_collections(fresh=True)}
        found = find_spelling(by_name, name)
        return by_name[found] if found is not None else None

    # --------------------------------------------------------------- trees

    def _tree_key(self, ident: str) -> tuple:
        if self.manager.backend.shared_trees:
            return ("tree", ident)
        return ("tree", self.principal.token_key, ident)

    def open_tree(self, ident: str, *, no_cache: bool = False) -> CollectionTree:
        """The collection tree for a UUID (writable) or PDH (read-only snapshot).

        A cached tree is revalidated with a cheap revision check at most every
        ``revalidate_seconds`` (at once with ``no_cache``).  A tree whose own
        commit the catalog could not vouch for (``stale``) is reloaded at its
        next revalidation, so staleness stays bounded without reloading after
        every write; an ``invalid`` tree (a commit failed under queued
        changes) is reloaded at once.
        """
        key = self._tree_key(ident)
        with self.manager.open_lock(key):
            return self._open_locked(key, ident, no_cache)

    def _open_locked(self, key: tuple, ident: str, no_cache: bool) -> CollectionTree:
        caller_holds(self.manager.open_lock(key), "the collection's open lock")
        cached = self.manager.trees.get(key)
        pdh = is_portable_data_hash(ident)
        now = time.monotonic()
        backend = self.manager.backend
        max_age = backend.max_tree_age
        ttl = backend.signature_ttl()
        if ttl is not None:
            # Reload while the tree's signatures have half their life left,
            # so whatever a request reads from it is still accepted by Keep.
            max_age = ttl / 2 if max_age is None else min(max_age, ttl / 2)
        if cached is not None and (cached[0].invalid or (max_age is not None and now - cached[0].loaded_at > max_age)):
            cached = None  # reload (for max_age: fresh block signatures)
        if cached is not None:
            tree, validated = cached
            if pdh and not backend.pdh_access_checks:
                return tree  # content-addressed and single-tenant: never changes
            due = no_cache or now - validated >= self.manager.config.revalidate_seconds
            if not due:
                return tree
            if pdh or not tree.stale:
                try:
                    rev = self.catalog.revision(ident)  # for a PDH: the access check
                except NotFound:
                    self.manager.trees.drop(key)  # gone, or no longer readable by this token
                    raise
                if pdh or rev == tree.record.get("_revision"):
                    self.manager.trees.touch(key, now)
                    return tree
        return self._reload(key, ident, now)

    def _reload(self, key: tuple, ident: str, now: float) -> CollectionTree:
        """Fetch and cache a fresh tree (caller holds the open lock)."""
        caller_holds(self.manager.open_lock(key), "the collection's open lock")
        rec = self.catalog.get(ident, with_manifest=True)
        tree = self._build_tree(rec, readonly=is_portable_data_hash(ident))
        text_len = len(rec.manifest_text or "")
        self.manager.trees.put(key, tree, 64 * 1024 + 4 * text_len, now)
        return tree

    def revalidate_after_miss(self, ident: str, tree: CollectionTree, *, min_age: float = 0.5) -> CollectionTree:
        """Re-check a collection after a path was not found in it.

        Another instance may have created the path moments ago; checking
        now (at most every ``min_age`` seconds per collection) turns such a
        404/409 into a hit without waiting for the revalidation interval.
        Only a changed revision reloads (even for a ``stale`` tree: that one
        is reloaded on the regular schedule, not on every miss).  Returns
        the tree to use (the same one if nothing changed).
        """
        if tree.readonly or is_portable_data_hash(ident):
            return tree
        key = self._tree_key(ident)
        with self.manager.open_lock(key):
            cached = self.manager.trees.get(key)
            now = time.monotonic()
            if cached is None or cached[0] is not tree or now - cached[1] < min_age:
                return tree
            if self.catalog.revision(ident) == tree.record.get("_revision"):
                # A stale tree's revision vouches for nothing: touching it
                # would postpone its due reload for as long as misses come.
                if not tree.stale:
                    self.manager.trees.touch(key, now)
                return tree
            return self._reload(key, ident, now)

    def _build_tree(self, rec: CollectionRecord, *, readonly: bool) -> CollectionTree:
        m = self.manager
        record = record_dict(rec)
        record["_revision"] = revision_key(rec)
        store: BlockStore = self.store
        resigning = None
        if m.backend.signature_ttl() is not None:
            ident = rec.portable_data_hash if readonly and rec.portable_data_hash else rec.uuid
            # A read refused for its signature re-fetches them once (storage/resigning.py).
            store = resigning = ResigningStore(self.store, lambda: self.catalog.refresh_signatures(ident))
        tree = CollectionTree(
            rec.manifest_text or "",
            store=store,
            flusher=m.flusher,
            budget=m.budget,
            readonly=readonly,
            trusted_normalized=m.backend.trusted_normalized,
            uuid=rec.uuid if not readonly else (rec.portable_data_hash or ""),
            version=rec.version,
            mtime=parse_time(rec.modified_at),
            record=record,
            limits=m.config.tree_limits,
        )
        if resigning is not None:
            def reload_soon() -> None:
                tree.loaded_at = float("-inf")  # its signatures are old: reload at the next open

            resigning.on_refresh = reload_soon
        return tree

    def drop_tree(self, ident: str) -> None:
        self.manager.trees.drop(self._tree_key(ident))

    def _forget_tree(self, tree: CollectionTree, *, unless_same: bool = False) -> None:
        """Drop the cached tree of ``tree``'s collection.

        ``unless_same``: keep it if it is this very object (used after a
        successful commit: only a *different* object, cached by a reload
        that raced with the commit, may lack the change).
        """
        if not tree.uuid or tree.readonly:
            return
        key = self._tree_key(tree.uuid)
        with self.manager.open_lock(key):
            cached = self.manager.trees.get(key)
            if cached is None:
                return
            if (cached[0] is tree) != unless_same:
                self.manager.trees.drop(key)

    # --------------------------------------------------------------- collections

    def create_collection(self, name: str) -> CollectionRecord:
        rec = self.catalog.create(name)
        self.forget_listing()
        return rec

    def copy_collection(self, src_uuid: str, name: str) -> CollectionRecord:
        tree = self.open_tree(src_uuid)
        rec = self.catalog.create(name, tree.marshal(), tree.record.get("properties") or {})
        self.forget_listing()
        return rec

    def rename_collection(self, uuid: str, name: str) -> None:
        self.catalog.rename(uuid, name)
        self.forget_listing()
        self.drop_tree(uuid)

    def trash_collection(self, uuid: str) -> None:
        self.catalog.trash(uuid)
        self.forget_listing()
        self.drop_tree(uuid)

    def replace_collection(self, src_uuid: str, target_uuid: str, *, move: bool) -> None:
        """MOVE (rename) or COPY collection ``src_uuid`` onto the name of an
        existing collection ``target_uuid``.

        The target goes to the trash first (names are unique among live
        collections); if the rename/copy then fails it comes back out, so a
        failed request leaves both collections as they were.
        """
        target = self.catalog.get(target_uuid, with_manifest=False)
        self.trash_collection(target_uuid)
        try:
            if move:
                self.rename_collection(src_uuid, target.name)
            else:
                self.copy_collection(src_uuid, target.name)
        except BaseException:
            try:
                self.catalog.untrash(target_uuid)
            except CatalogError:
                log.error("collection %s stays in the trash after a failed replace", target_uuid)
            self.forget_listing()
            raise

    def patch_properties(self, tree: CollectionTree, patch: dict[str, Any]) -> None:
        """Set (or, for None values, delete) only the named collection
        properties, on the properties stored now (see
        ``Catalog.update_properties``): keys another instance or the SDK set
        meanwhile survive."""
        res = self.catalog.update_properties(tree.uuid, patch)
        # The files are untouched; the tree is current if nobody else
        # committed in between (the version moved by exactly our update).
        self._after_update(tree, res.record, res.record.version == tree.version + 1,
                           properties=dict(res.record.properties or {}))
        # Collection records at "/" come from the listing memo.
        self.forget_listing()

    # --------------------------------------------------------------- commit

    def commit(self, change: ChangeSet) -> None:
        """Make a request's changes durable before its status goes out.

        One collection (the usual case): the change joins the tree's commit
        queue, which stores buffered data (packing small files of concurrent
        requests together) and sends queued changes as few ``replace_files``
        updates as possible, one request never split over two updates
        (``collection/commits.py``).  Two collections (cross-collection
        COPY/MOVE): see ``_commit_trees``.  Raises the storage or catalog
        error; the writer locks are always released, and a tree that may
        disagree with the catalog is dropped.  The change's after-commit
        actions (side stores) run only once everything is durable.
        """
        trees = change.trees
        try:
            if change:
                if len(trees) == 1:
                    tree = trees[0]
                    tree.commits.submit(change, lambda rf, mt: self._apply(tree, rf, mt))
                else:
                    for tree in trees:
                        if not tree.commits.drain(timeout=120):
                            raise BusyError("collection is busy; try again")
                    change.flush()
                    self._commit_trees(change, trees)
                self.forget_listing()
            actions = change.take_commit_actions()
        except BaseException:
            change.rollback()
            for tree in trees:
                tree.stale = True  # the catalog may hold part of the change
                self._forget_tree(tree)
            raise
        finally:
            change.release()
        for tree in trees:
            self._forget_tree(tree, unless_same=True)
        for action in actions:
            try:
                action()
            except Exception:  # noqa: BLE001 - the data change is durable; say so in the log
                log.exception("after-commit side-store update failed")

    def _commit_trees(self, change: ChangeSet, trees: list[CollectionTree]) -> None:
        """Commit one change to several collections (caller holds their
        writer locks; their queues are drained and buffers stored).

        Embedded catalog: one transaction, all or nothing.  Arvados: one
        update per collection, collections that gain content first and the
        ones that only lose content (a MOVE's source) last, so a failure
        after the first update leaves a copy at the destination, never a
        loss; ``PartiallyApplied`` then reports what was saved.
        """
        ordered = sorted(trees, key=change.only_removes)
        updates: list[CatalogUpdate] = []
        owners: list[CollectionTree] = []
        for tree in ordered:
            for i, (replace_files, manifest_text) in enumerate(change.batches(tree)):
                updates.append(CatalogUpdate(tree.uuid, replace_files=replace_files,
                                             manifest_text=manifest_text or None,
                                             base_version=tree.version if i == 0 else None))
                owners.append(tree)
        try:
            results = self.catalog.update_many(updates)
        except PartiallyApplied as e:
            self._record_results(change, owners, e.applied)
            raise
        self._record_results(change, owners, results)

    def _record_results(self, change: ChangeSet, owners: list[CollectionTree], results: list[UpdateResult]) -> None:
        """Bring trees up to the catalog's versions after (some) updates."""
        first: dict[int, bool] = {}
        for tree, res in zip(owners, results):
            on_base = first.setdefault(id(tree), res.applied_on_base)
            self._after_update(tree, res.record, on_base)
        # A tree is committed when none of its updates is among those not applied.
        pending = owners[len(results):]
        for tree in dict.fromkeys(owners[: len(results)]):
            if not any(t is tree for t in pending):
                change.committed(tree)

    def _apply(self, tree: CollectionTree, replace_files: dict[str, str], manifest_text: str) -> None:
        res = self.catalog.update(
            tree.uuid,
            replace_files=replace_files,
            manifest_text=manifest_text or None,
            base_version=tree.version,
        )
        self._after_update(tree, res.record, res.applied_on_base)

    def _after_update(self, tree: CollectionTree, rec: CollectionRecord, applied_on_base: bool,
                      properties: dict[str, Any] | None = None) -> None:
        """Apply the catalog record an update of ours returned to ``tree``."""
        fields: dict[str, Any] = {
            "modified_at": rec.modified_at,
            "version": rec.version,
            "portable_data_hash": rec.portable_data_hash,
            "_revision": (rec.modified_at, rec.version),
        }
        if properties is not None:
            fields["properties"] = properties
        tree.apply_commit(
            version=rec.version,
            on_base=applied_on_base,
            mtime=parse_time(rec.modified_at) if rec.modified_at else time.time(),
            record=fields,
        )


__all__ = [
    "Backend",
    "CatalogError",
    "NotFound",
    "Principal",
    "Session",
    "SessionConfig",
    "SessionManager",
    "TreeCache",
    "parse_time",
    "record_dict",
    "token_key",
]

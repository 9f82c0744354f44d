"""Every lock in a davcoll process, in the one order they may nest.

Outer locks come first; a thread holding a lock may only take locks listed
*after* it.  "I/O" means disk or network; no lock that readers need is held
across it (the exceptions are named).

Request level (davcoll/dav/, davcoll/operations.py)
  1. ``LockStore.exclusive()`` (storage/locks.py; SQLite BEGIN IMMEDIATE on
     locks.sqlite3, or a Redis lock key): the cross-process critical section
     of a WebDAV LOCK (conflict check + create).  Taken by
     ``dav/locks.ScopedLockManager`` only, with no tree lock held; does store
     I/O by nature.  WsgiDAV's own ``LockManager._lock`` (an RLock) may be
     taken inside it.

Collection level (davcoll/session.py, davcoll/collection/)
  2. ``SessionManager._open_locks[i]`` -- 64 striped locks serialising the
     load and revalidation of one collection.  Held across the catalog read
     of that collection (I/O: the point is that concurrent first requests
     wait for one load instead of each loading).  Never held while taking a
     tree's ``writer``.
  3. ``CollectionTree.writer`` (collection/tree.py) -- one per opened
     collection; owned by a ``ChangeSet`` (collection/changes.py; not a
     thread) from the change's first mutation until it is queued for commit,
     committed directly or rolled back (``ChangeSet.holds`` tells).  Two
     trees are taken in UUID order (``ChangeSet.lock_trees``).  I/O under
     it: only the direct commit of a change to several collections, after
     their commit queues were drained.
  4. ``CollectionTree._lock`` (RLock) -- the node structure
     (collection/nodes.py), ``version``, ``mtime`` and ``record``.  Short
     sections, no I/O, never two trees' at once: ``ChangeSet.rollback``
     undoes tree by tree (``CollectionTree.undo``), and a cross-collection
     copy reads the source under the source's lock (``export``), then
     changes the destination under its own.
  5. ``CommitQueue._cond`` (collection/commits.py) -- the queue, its leader
     flag and each pending entry's outcome.  Taken while holding ``writer``
     to enqueue; the leader holds *no* tree lock while it stores blocks and
     calls the catalog.
  6. ``ByteBudget._cond`` (collection/buffers.py) -- buffered bytes.
     ``FileWriter`` waits on it holding no tree lock.

Caches and registries (each a leaf: nothing is taken while holding it, and
no I/O happens under it)
  7. ``TreeCache._lock``, ``SessionManager._lock`` (sessions),
     ``Session._list_lock`` (listing memo) -- session.py.
  8. ``JunkStore._lock`` (dav/junk.py), ``BlockCache._lock``
     (storage/blocks.py; a fetch in flight is waited for on its Event with
     the lock released), ``ResigningStore._lock`` (storage/resigning.py),
     ``KeepClient._lock`` and the signature cache's ``_lock``
     (storage/keep.py), ``ClusterFacts.lock``, ``ArvadosClient._lock`` and
     ``_VERSION_LOCK`` (storage/arvados_api.py), ``ArvadosBackend._lock``
     and ``LocalBackend._count_lock`` (backends.py), ``PdhIndexer._cond``
     (storage/pdh_indexer.py), the connection registry lock of
     ``local_catalog`` and ``manifest._gc_lock``.
  9. ``httpd`` server's ``_lock`` (connection counts) -- process layer.

Databases
 10. SQLite's write lock on catalog.sqlite3 (``BEGIN IMMEDIATE`` in
     ``LocalCatalog``): always innermost; taken by the commit path (the
     group-commit leader, holding no tree lock, or a direct two-collection
     commit under both ``writer`` locks) and by ``davcoll gc``.  Reads use
     WAL snapshots and never wait for it.

Debug check: with ``DAVCOLL_DEBUG_LOCKS=1`` in the environment (the test
suite sets it) ``caller_holds`` (and ``requires``, for ownership only the
caller can state) raises ``LockOrderError`` when a function that requires a
lock is called without it.  Checked today: ``CollectionTree._lock`` by
``_load``, ``_walk``, ``_parent``, ``_set``, ``_measure``, ``_copy_entry``,
``_materialize`` and ``_marshal_iter``; the writer lock by ``_set``,
``_check_growth``, ``undo``, ``unlock_writer``, ``ChangeSet.record_op`` /
``record_undo`` and ``CommitQueue.submit``; ``SessionManager._open_locks``
by the session's tree loading.  Outside debug mode a check costs one global
lookup (``if DEBUG: ...``).
"""

from __future__ import annotations

import os
import threading
from typing import Any

DEBUG = os.environ.get("DAVCOLL_DEBUG_LOCKS") == "1"

__all__ = ["DEBUG", "LockOrderError", "caller_holds", "requires"]


class LockOrderError(AssertionError):
    """A function that requires a lock was called without it (debug mode)."""


def _held(lock: Any) -> bool:
    is_owned = getattr(lock, "_is_owned", None)  # RLock and Condition
    if is_owned is not None:
        return bool(is_owned())
    return bool(lock.locked())  # a plain Lock cannot name its owner


def caller_holds(lock: Any, what: str) -> None:
    """Assert (in debug mode) that ``lock`` is held; ``what`` names it.

    On hot paths call it as ``if DEBUG: caller_holds(...)``, so that outside
    debug mode the check costs one global lookup.
    """
    if DEBUG and not _held(lock):
        raise LockOrderError(f"caller must hold {what} (thread {threading.current_thread().name})")


def requires(ok: bool, what: str) -> None:
    """Like ``caller_holds`` for a precondition only the caller can state,
    e.g. "this change set owns the tree's writer lock" (``ChangeSet.holds``)."""
    if DEBUG and not ok:
        raise LockOrderError(f"caller must hold {what} (thread {threading.current_thread().name})")

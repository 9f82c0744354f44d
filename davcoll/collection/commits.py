"""Group commit: one catalog update for many concurrent requests.

Why: every commit is a durable catalog transaction (an fsync locally, an API
round trip on Arvados).  If each request held the collection's writer lock
from its mutation through its own commit, concurrent writers of one
collection would commit one at a time.  Instead a request mutates the tree
under the writer lock, *queues* its change, releases the lock and waits.  One
waiting request (the leader) commits everything queued so far: it stores the
queued changes' small buffered files packed together into shared blocks, then
sends their operations, in queue order, as few ``replace_files`` updates as
overlapping paths allow.  Queue order is writer-lock order, which is the
order the local tree applied the changes, so the catalog applies them in the
same order.

Failure: if a group's storage or catalog update fails, every change in the
group fails, and so does every change queued after it (it may build on the
failed ones); the tree is marked ``invalid`` and the session drops it, so the
next request reloads what the catalog really holds.  No local rollback is
attempted: later changes may already sit on top of the failed ones.

Locks: ``CommitQueue._cond`` guards ``_queue``, ``_leader`` and the outcome
of every pending entry.  Order: ``CollectionTree.writer`` before ``_cond``
(``submit`` enqueues while the caller still holds the writer lock).  The
leader holds no tree lock while it stores blocks or calls the catalog.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

from .buffers import pack_and_store
from .changes import compile_group, pending_buffers
from .errors import BusyError
from .locking import DEBUG, requires

if TYPE_CHECKING:
    from .changes import ChangeSet
    from .tree import CollectionTree

ApplyBatch = Callable[[dict, str], None]


class _Pending:
    __slots__ = ("change", "done", "error")

    def __init__(self, change: "ChangeSet") -> None:
        self.change = change
        self.done = False
        self.error: BaseException | None = None


class CommitQueue:
    """The commit queue of one collection tree (see module docstring)."""

    def __init__(self, tree: "CollectionTree") -> None:
        self.tree = tree
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._leader = False
        self.groups = 0  # groups committed (observability and tests)

    def submit(self, change: "ChangeSet", apply_batch: ApplyBatch) -> None:
        """Queue ``change`` and return once the catalog holds it.

        The caller's change holds this tree's writer lock; it is released
        here, after queueing, so the next writer can go ahead.  Raises the
        failure of the group that contained ``change``.
        """
        if DEBUG:
            requires(change.holds(self.tree), "the tree's writer lock (held by the change)")
        pending = _Pending(change)
        with self._cond:
            self._queue.append(pending)
        change.detach(self.tree)
        with self._cond:
            while not pending.done and self._leader:
                self._cond.wait()
            if not pending.done:
                self._leader = True
        if not pending.done:
            self._lead(pending, apply_batch)
        if pending.error is not None:
            raise pending.error

    def _lead(self, mine: _Pending, apply_batch: ApplyBatch) -> None:
        """Commit groups until ours is done, then hand leadership over."""
        try:
            while not mine.done:
                with self._cond:
                    group, self._queue = self._queue, []
                if not group:  # pragma: no cover - ours is always queued
                    break
                self._commit_group(group, apply_batch)
                with self._cond:
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._leader = False
                self._cond.notify_all()

    def _commit_group(self, group: list[_Pending], apply_batch: ApplyBatch) -> None:
        tree = self.tree
        error: BaseException | None = None
        per_request = [p.change.ops_for(tree) for p in group]
        buffers = pending_buffers([op for ops in per_request for op in ops])
        # Requests 0..done are completely in the catalog.  Updates are cut
        # between requests (compile_group), so when update k fails, the
        # requests of updates before k are durable and acknowledged, and
        # the others fail without having changed anything.
        done = -1
        if tree.invalid:
            error = BusyError("the collection changed while this request was queued; try again")
        else:
            try:
                if buffers:
                    pack_and_store(buffers, tree.store, tree.flusher)
                for replace_files, manifest_text, complete in compile_group(per_request):
                    apply_batch(replace_files, manifest_text)
                    done = complete
            except BaseException as e:  # noqa: BLE001 - every waiter must learn the outcome
                tree.invalid = True
                error = _without_tracebacks(e)
        if error is not None:
            # The failed uploads' bytes will never be stored: free them (and
            # their budget) now, not when the last reference goes away.
            for b in buffers:
                b.discard()
        with self._cond:
            for i, p in enumerate(group):
                if error is None or i <= done:
                    p.change.forget(tree)
                    p.error = None
                else:
                    p.error = error
                p.done = True
            self.groups += 1

    def queued(self) -> int:
        """How many changes wait for the next group (observability, tests)."""
        with self._cond:
            return len(self._queue)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or being committed."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._leader, timeout)


def _without_tracebacks(exc: BaseException) -> BaseException:
    """Drop the traceback of an error and of everything it chains to.

    The error is re-raised in several request threads; its tracebacks would
    keep the leader's frames alive, and with them the upload buffers they
    reference (a failed block put holds a view of the whole block).
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        cur.__traceback__ = None
        cur = cur.__cause__ or cur.__context__
    return exc

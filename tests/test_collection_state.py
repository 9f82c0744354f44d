"""Randomized model check of the collection tree (Hypothesis state machine).

A plain model -- ``{path: bytes}`` plus a set of directory paths -- is
driven side by side with a ``CollectionTree``.  Every mutation must either
change both the same way or raise the *same error type* the model predicts
(the dav layer turns error types into statuses, so the type is part of the
contract).  After every step the tree, read through its public API and
``FileReader``, must equal the model.

Commits are checked end to end, the way the session does them: ``flush``
stores buffered bytes, ``batches`` compiles the delta, and a catalog model
applies it with the same ``plan_replace_files``/``apply_to_tree`` code the
local catalog and the fake Arvados cluster use.  Then the key invariant
must hold -- (old catalog manifest + delta) == ``tree.marshal()`` -- and the
marshalled manifest, reopened as a new tree, must read back every byte of
the model from the block store.  Rollbacks must restore the last committed
model exactly.  ``reopen`` replaces the tree by a fresh one over the
catalog's text with ``trusted_normalized=True``, so line reuse and lazy
loading are exercised under random edits too.
"""

from __future__ import annotations

import gc

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from davcoll.collection import (
    AlreadyExists,
    ByteBudget,
    ChangeSet,
    CollectionTree,
    FileWriter,
    FsError,
    InvalidMove,
    IsADirectory,
    NotADirectory,
    NotFound,
    ParentNotFound,
)
from davcoll.collection.buffers import pack_and_store
from davcoll.manifest import Manifest, normalize_manifest, parse_manifest
from davcoll.storage.memory_blocks import MemoryBlockStore
from tree_helpers import buffers_of, truncate
from test_collection_tree import FLUSHER, apply_batches, build_manifest, contents

PATHS = ["f", "g", "d", "e", "d/f", "d/g", "d/d", "d/d/f", "e/f", "e/d", "e/d/g", "x/y"]
paths = st.sampled_from(PATHS)
data = st.binary(max_size=48)

BASE_FILES = {"f": b"base f", "d/f": b"base d/f", "d/d/f": b"base deep", "e/d/g": b""}
BASE_DIRS = {"d", "d/d", "e", "e/d"}
OTHER_FILES = {"o": b"other o", "od/o": b"other od/o", "od/p": b"p"}
OTHER_DIRS = {"od", "od/empty"}


def join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


class Model:
    """The expected state: files and (non-root) directories by path."""

    def __init__(self, files: dict[str, bytes], dirs: set[str]) -> None:
        self.files = dict(files)
        self.dirs = set(dirs)

    def copy(self) -> "Model":
        return Model(self.files, self.dirs)

    def kind(self, p: str) -> str | None:
        if p == "" or p in self.dirs:
            return "dir"
        if p in self.files:
            return "file"
        return None

    # Error precedence mirrors CollectionTree._walk / _parent exactly.
    def walk(self, p: str) -> str:
        cur = ""
        for part in p.split("/") if p else []:
            if self.kind(cur) == "file":
                raise NotADirectory(cur)
            cur = join(cur, part)
            if self.kind(cur) is None:
                raise NotFound(cur)
        return self.kind(cur)  # type: ignore[return-value]

    def check_parent(self, p: str) -> None:
        parent = p.rpartition("/")[0]
        try:
            k = self.walk(parent)
        except NotFound as e:
            raise ParentNotFound(str(e)) from None
        if k == "file":
            raise NotADirectory(parent)

    def extract(self, p: str, recursive: bool = True) -> tuple[str, dict[str, bytes], set[str]]:
        """Kind and content (relative paths) of the entry at ``p``."""
        if self.kind(p) == "file":
            return "file", {"": self.files[p]}, set()
        if not recursive:
            return "dir", {}, set()
        pre = p + "/"
        return (
            "dir",
            {k[len(pre) :]: v for k, v in self.files.items() if k.startswith(pre)},
            {d[len(pre) :] for d in self.dirs if d.startswith(pre)},
        )

    def delete(self, p: str) -> None:
        pre = p + "/"
        self.files = {k: v for k, v in self.files.items() if k != p and not k.startswith(pre)}
        self.dirs = {d for d in self.dirs if d != p and not d.startswith(pre)}

    def place(self, p: str, entry: tuple[str, dict[str, bytes], set[str]]) -> None:
        kind, files, dirs = entry
        self.delete(p)
        if kind == "file":
            self.files[p] = files[""]
            return
        self.dirs.add(p)
        self.dirs |= {join(p, d) for d in dirs}
        self.files.update({join(p, k): v for k, v in files.items()})


class CollectionMachine(RuleBasedStateMachine):
    @initialize(trusted=st.booleans())
    def setup(self, trusted: bool) -> None:
        self.store = MemoryBlockStore()
        self.budget = ByteBudget(1 << 20)
        self.catalog_text = build_manifest(self.store, BASE_FILES, tuple(BASE_DIRS))
        self.tree = self._open(self.catalog_text, trusted)
        self.model = Model(BASE_FILES, BASE_DIRS)
        self.committed_model = self.model.copy()
        self.other = self._open(build_manifest(self.store, OTHER_FILES, tuple(OTHER_DIRS)), False)
        self.other_model = Model(OTHER_FILES, OTHER_DIRS)
        self.change: ChangeSet | None = None
        self.version = 0

    def _open(self, text: str, trusted: bool) -> CollectionTree:
        return CollectionTree(
            text, store=self.store, flusher=FLUSHER, budget=self.budget, trusted_normalized=trusted, uuid="zzzzz-4zz18-statemachine001"
        )

    def _ch(self) -> ChangeSet:
        if self.change is None:
            self.change = ChangeSet(lock_timeout=5)
        return self.change

    def _same(self, expected: type[BaseException] | None, action) -> bool:
        """Run ``action``; it must raise ``expected`` exactly (or succeed if None)."""
        try:
            action()
        except FsError as e:
            assert expected is not None, f"tree raised {e!r}, model expected success"
            assert type(e) is expected, f"tree raised {type(e).__name__}, model expected {expected.__name__}"
            return False
        assert expected is None, f"tree succeeded, model expected {expected.__name__}"
        return True

    # ----------------------------------------------------------------- rules

    @rule(p=paths, body=data, block_size=st.sampled_from([3, 16, 1 << 20]), chunk=st.integers(1, 20), store_tail=st.booleans())
    def put_new(self, p: str, body: bytes, block_size: int, chunk: int, store_tail: bool) -> None:
        """A PUT: stream into a detached writer, then swap it in."""
        w = FileWriter(self.store, FLUSHER, self.budget, block_size=block_size)
        for i in range(0, len(body), chunk):
            w.write(body[i : i + chunk])
        segs = w.close()
        if store_tail:  # as dav's end_write does; else ChangeSet.flush packs it
            pack_and_store(buffers_of(segs), self.store, FLUSHER)
        try:
            self.model.check_parent(p)
            expected = IsADirectory if self.model.kind(p) == "dir" else None
        except FsError as e:
            expected = type(e)
        if self._same(expected, lambda: self.tree.put_file(self._ch(), p, segs)):
            self.model.files[p] = body
        else:
            w.abort()

    @rule(p=paths, body=data)
    def put_aborted(self, p: str, body: bytes) -> None:
        """An upload that fails halfway leaves the old content alone."""
        w = self.tree.new_writer()
        w.write(body)
        w.abort()

    @rule(p=paths, offset=st.integers(0, 60), body=data)
    def write_at(self, p: str, offset: int, body: bytes) -> None:
        m = self.model
        try:
            try:
                k = m.walk(p)
            except NotFound:
                k = None
            if k == "dir":
                raise IsADirectory(p)
            m.check_parent(p)
            expected = None
        except FsError as e:
            expected = type(e)
        if self._same(expected, lambda: self.tree.write_at(self._ch(), p, offset, body)):
            old = m.files.get(p, b"")
            if offset > len(old):
                old += bytes(offset - len(old))
            m.files[p] = old[:offset] + body + old[offset + len(body) :]

    @rule(p=paths, size=st.integers(0, 70))
    def truncate(self, p: str, size: int) -> None:
        m = self.model
        try:
            if m.walk(p) == "dir":
                raise IsADirectory(p)
            expected = None
        except FsError as e:
            expected = type(e)
        if self._same(expected, lambda: truncate(self.tree, self._ch(), p, size)):
            old = m.files[p]
            m.files[p] = old[:size] + bytes(max(0, size - len(old)))

    @rule(p=paths)
    def mkdir(self, p: str) -> None:
        m = self.model
        try:
            m.check_parent(p)
            expected = AlreadyExists if m.kind(p) else None
        except FsError as e:
            expected = type(e)
        if self._same(expected, lambda: self.tree.mkdir(self._ch(), p)):
            m.dirs.add(p)

    @rule(p=paths)
    def remove(self, p: str) -> None:
        m = self.model
        try:
            m.check_parent(p)
            expected = None if m.kind(p) else NotFound
        except FsError as e:
            expected = type(e)
        if self._same(expected, lambda: self.tree.remove(self._ch(), p)):
            m.delete(p)

    def _move_or_copy_expected(self, src: str, dst: str, overwrite: bool) -> type[BaseException] | None:
        m = self.model
        try:
            if src == dst or dst.startswith(src + "/"):
                raise InvalidMove(dst)
            m.walk(src)
            m.check_parent(dst)
            if m.kind(dst) and not overwrite:
                raise AlreadyExists(dst)
        except FsError as e:
            return type(e)
        return None

    @rule(src=paths, dst=paths, overwrite=st.booleans())
    def rename(self, src: str, dst: str, overwrite: bool) -> None:
        expected = self._move_or_copy_expected(src, dst, overwrite)
        if self._same(expected, lambda: self.tree.rename(self._ch(), src, dst, overwrite=overwrite)):
            entry = self.model.extract(src)
            self.model.delete(src)
            self.model.place(dst, entry)

    @rule(src=paths, dst=paths, overwrite=st.booleans(), recursive=st.booleans())
    def copy(self, src: str, dst: str, overwrite: bool, recursive: bool) -> None:
        expected = self._move_or_copy_expected(src, dst, overwrite)
        if self._same(expected, lambda: self.tree.copy(self._ch(), src, dst, overwrite=overwrite, recursive=recursive)):
            self.model.place(dst, self.model.extract(src, recursive))

    @rule(src=st.sampled_from(["", "o", "od", "od/o", "od/empty", "nope"]), dst=paths, overwrite=st.booleans(), recursive=st.booleans())
    def import_from_other(self, src: str, dst: str, overwrite: bool, recursive: bool) -> None:
        om, m = self.other_model, self.model
        try:
            om.walk(src)
            m.check_parent(dst)
            if m.kind(dst) and not overwrite:
                raise AlreadyExists(dst)
            expected = None
        except FsError as e:
            expected = type(e)
        action = lambda: self.tree.import_entry(self._ch(), self.other, src, dst, overwrite=overwrite, recursive=recursive)  # noqa: E731
        if self._same(expected, action):
            if src == "":
                entry = ("dir", dict(om.files), set(om.dirs)) if recursive else ("dir", {}, set())
            else:
                entry = om.extract(src, recursive)
            m.place(dst, entry)

    @rule()
    def commit(self) -> None:
        ch = self.change
        self.change = None
        if ch is None:
            return
        ch.flush()
        after = apply_batches(self.catalog_text, ch.batches(self.tree))
        self.version += 1
        ch.committed(self.tree, version=self.version)
        ch.release()
        text = self.tree.marshal()
        # The key invariant: (old + delta) == new.
        assert parse_manifest(text).root == after
        assert normalize_manifest(text) == text
        self.catalog_text = Manifest(after).to_text()
        assert text == self.catalog_text
        # Every byte comes back from the block store via the manifest alone.
        fresh = self._open(text, True)
        assert contents(fresh) == (self.model.files, self.model.dirs)
        for path in self.model.files:
            assert fresh.stat(path).etag == self.tree.stat(path).etag
        self.committed_model = self.model.copy()
        self._check_budget()

    @rule()
    def rollback(self) -> None:
        ch = self.change
        self.change = None
        if ch is None:
            return
        ch.rollback()
        ch.release()
        self.model = self.committed_model.copy()
        assert normalize_manifest(self.tree.marshal()) == self.catalog_text
        self._check_budget()

    @precondition(lambda self: self.change is None)
    @rule()
    def reopen(self) -> None:
        """Drop the cached tree; open the catalog's (normalized) text."""
        self.tree = self._open(self.catalog_text, True)

    def _check_budget(self) -> None:
        """No buffered byte outlives its change (no budget leak)."""
        if self.budget.used:
            gc.collect()
        assert self.budget.used == 0

    # ------------------------------------------------------------ invariants

    @invariant()
    def tree_matches_model(self) -> None:
        if not hasattr(self, "tree"):
            return
        assert contents(self.tree) == (self.model.files, self.model.dirs)

    def teardown(self) -> None:
        if getattr(self, "change", None) is not None:
            self.change.rollback()
            self.change.release()


TestCollectionMachine = CollectionMachine.TestCase
TestCollectionMachine.settings = settings(
    max_examples=500,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

"""Group commit (collection/commits.py): concurrent changes to one tree are
committed together, in writer-lock order, and a failed group invalidates the
tree without losing or half-applying anything."""

from __future__ import annotations

import threading
import time

import pytest

from davcoll.collection import BusyError, ByteBudget, ChangeSet, CollectionTree, Flusher
from davcoll.manifest import Manifest, parse_manifest
from davcoll.storage.catalog import Unavailable
from davcoll.storage.memory_blocks import MemoryBlockStore
from davcoll.storage.replace_files import apply_to_tree, plan_replace_files
from tree_helpers import open_read, record_json


class ModelCatalog:
    """replace_files applied to an in-memory tree, with an optional delay
    (so concurrent requests pile up behind a commit) and injected failures."""

    def __init__(self, delay: float = 0.0) -> None:
        self.root = parse_manifest("").root
        self.calls = 0
        self.delay = delay
        self.fail_next = 0
        self.lock = threading.Lock()

    def apply(self, replace_files: dict, manifest_text: str) -> None:
        with self.lock:
            self.calls += 1
            if self.fail_next:
                self.fail_next -= 1
                raise Unavailable("injected")
            ops = plan_replace_files(replace_files, manifest_text_supplied=bool(manifest_text))
            new = parse_manifest(manifest_text).root if manifest_text else None
            self.root = apply_to_tree(self.root, ops, new_content=new, load_pdh=lambda pdh: None)
        time.sleep(self.delay)

    def text(self) -> str:
        return Manifest(self.root).to_text()


@pytest.fixture
def env():
    store = MemoryBlockStore()
    budget = ByteBudget(64 << 20)
    tree = CollectionTree("", store=store, flusher=Flusher(), budget=budget, uuid="zzzzz-4zz18-000000000000000")
    return tree, store, budget


def put(tree: CollectionTree, path: str, data: bytes, catalog: ModelCatalog) -> None:
    w = tree.new_writer()
    w.write(data)
    segs = w.close()
    change = ChangeSet()
    try:
        tree.put_file(change, path, segs)
        tree.commits.submit(change, catalog.apply)
    finally:
        change.release()


def read(tree: CollectionTree, path: str) -> bytes:
    return open_read(tree, path).read()


def test_concurrent_puts_share_commits_and_blocks(env):
    tree, store, budget = env
    cat = ModelCatalog(delay=0.02)
    n = 40
    threads = [threading.Thread(target=put, args=(tree, f"f{i}", b"%d" % i * 100, cat)) for i in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert cat.calls < n  # several requests per catalog update
    assert store.puts < n  # small files packed into shared blocks
    assert tree.commits.groups == cat.calls
    # The catalog holds exactly what the tree shows, byte for byte.
    assert cat.text() == tree.marshal()
    for i in range(n):
        assert read(tree, f"f{i}") == b"%d" % i * 100
    assert budget.used == 0


def test_queue_order_is_lock_order_even_for_dependent_changes(env):
    tree, store, budget = env
    cat = ModelCatalog(delay=0.05)
    put(tree, "seed", b"0", cat)  # the next group forms while this one commits
    gate = threading.Event()
    results = []

    def slow_first():
        put(tree, "a", b"first", cat)
        gate.set()

    t1 = threading.Thread(target=slow_first)
    t1.start()
    gate.wait(5)

    def move():
        change = ChangeSet()
        try:
            tree.rename(change, "a", "b")
            tree.commits.submit(change, cat.apply)
            results.append("ok")
        finally:
            change.release()

    t2 = threading.Thread(target=move)
    t2.start()
    t1.join()
    t2.join()
    assert results == ["ok"]
    assert cat.text() == tree.marshal()
    assert read(tree, "b") == b"first"


def test_failed_group_invalidates_tree_and_frees_buffers(env):
    tree, store, budget = env
    cat = ModelCatalog()
    put(tree, "kept", b"kept", cat)
    cat.fail_next = 1
    with pytest.raises(Unavailable):
        put(tree, "lost", b"x" * 100000, cat)
    assert tree.invalid
    assert budget.used == 0
    # Nothing of the failed change reached the catalog.
    assert "lost" not in cat.text() and "kept" in cat.text()
    # Later changes on the invalid tree are refused, not half-applied.
    with pytest.raises(BusyError):
        put(tree, "later", b"later", cat)
    assert "later" not in cat.text()


def test_record_json_waits_for_queued_commits(env):
    tree, store, budget = env
    cat = ModelCatalog(delay=0.2)
    t = threading.Thread(target=put, args=(tree, "slow", b"slow bytes", cat))
    t.start()
    time.sleep(0.05)
    data = record_json(tree)  # must not fail on the queued change's unstored tail
    t.join()
    assert b"manifest_text" in data


def test_failed_second_update_of_a_group_fails_only_the_requests_it_holds(env):
    """Issue 10 §3: a group [PUT b, MOVE a->b] needs two updates (the paths
    overlap).  With the second one failing, the PUT was applied and must be
    acknowledged (not reported failed), and the MOVE must have changed
    nothing: no file in both places, nothing lost."""
    tree, store, budget = env
    cat = ModelCatalog()
    put(tree, "a", b"AAA", cat)
    gate, entered = threading.Event(), threading.Event()
    plan = {"calls": 0, "fail_call": None}

    def apply(rf, mt):
        if "/blocker" in rf:
            entered.set()
            gate.wait(10)
        plan["calls"] += 1
        if plan["calls"] == plan["fail_call"]:
            raise Unavailable("injected: second update of the group")
        return cat.apply(rf, mt)

    results: dict[str, BaseException | None] = {}

    def run(name, fn):
        try:
            fn()
            results[name] = None
        except BaseException as e:  # noqa: BLE001
            results[name] = e

    def move():
        change = ChangeSet()
        try:
            tree.rename(change, "a", "b")
            tree.commits.submit(change, apply)
        finally:
            change.release()

    threads = [threading.Thread(target=run, args=("blocker", lambda: put_with(tree, "blocker", b"x", apply)))]
    threads[0].start()
    assert entered.wait(10)
    threads.append(threading.Thread(target=run, args=("put", lambda: put_with(tree, "b", b"BBB", apply))))
    threads[1].start()
    wait_queued(tree, 1)
    threads.append(threading.Thread(target=run, args=("move", move)))
    threads[2].start()
    wait_queued(tree, 2)
    plan["fail_call"] = 3  # blocker = 1, the group's PUT = 2, its MOVE = 3
    gate.set()
    for t in threads:
        t.join(10)
    assert results["blocker"] is None
    assert results["put"] is None, results["put"]  # durable, so acknowledged
    assert isinstance(results["move"], Unavailable)
    files = {p for p, _ in parse_manifest(cat.text()).files()}
    assert files == {"a", "b", "blocker"}  # the MOVE changed nothing: a is still there


def put_with(tree: CollectionTree, path: str, data: bytes, apply) -> None:
    w = tree.new_writer()
    w.write(data)
    segs = w.close()
    change = ChangeSet()
    try:
        tree.put_file(change, path, segs)
        tree.commits.submit(change, lambda rf, mt: apply(rf, mt))
    finally:
        change.release()


def wait_queued(tree: CollectionTree, n: int) -> None:
    """Wait until ``n`` changes wait behind the running commit."""
    deadline = time.monotonic() + 10
    while tree.commits.queued() < n:
        assert time.monotonic() < deadline, "changes were not queued"
        time.sleep(0.005)

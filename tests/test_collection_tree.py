"""Unit tests of the collection filesystem tree (issue 3).

What is proved here, and why it matters to the WebDAV layer above:

* lazy loading: opening a huge collection parses no file tokens, and a
  request parses only the directories on its path;
* every error type is raised for the situation it names (the dav layer maps
  each to one HTTP status, so a wrong type is a wrong status);
* COPY/MOVE/import are reference operations: the block store is never
  asked for a byte (``MemoryBlockStore`` counts puts and gets);
* the key invariant -- (old manifest + compiled delta) == new tree -- for
  hand-picked tricky sequences (the state machine in
  ``test_collection_state.py`` covers random ones);
* marshal is byte-exact for normalized manifests and reuses untouched
  directories' lines when the catalog vouches for the layout.

The helpers at the top are shared with the other ``test_collection_*``
modules (imported by module name; pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import json

import pytest

from davcoll import manifest as M
from davcoll.collection import (
    AlreadyExists,
    BusyError,
    ByteBudget,
    ChangeSet,
    CollectionTree,
    CorruptManifest,
    Flusher,
    InvalidMove,
    InvalidName,
    IsADirectory,
    NotADirectory,
    NotFound,
    ParentNotFound,
    ReadOnly,
    VIRTUAL_RECORD_NAME,
    check_name,
)
from davcoll.collection import tree as tree_mod
from davcoll.collection.buffers import BufferBlock
from davcoll.collection.segments import etag_of
from davcoll.manifest import Dir, Manifest, normalize_manifest, parse_manifest
from davcoll.storage.catalog import NotFound as CatalogNotFound
from davcoll.storage.memory_blocks import MemoryBlockStore
from davcoll.storage.replace_files import apply_to_tree, plan_replace_files
from tree_helpers import open_read, record_json, truncate
from tests.conftest import load_vectors

# One pool for every test in the process, as the server shares one.
FLUSHER = Flusher(4)

SIG = "+A" + "0123456789abcdef" * 2 + "01234567@7fffffff"


# --------------------------------------------------------------------- helpers


def make_tree(text: str = "", *, store: MemoryBlockStore | None = None, budget: ByteBudget | None = None, **kw) -> CollectionTree:
    """A tree over ``text`` backed by an in-memory store."""
    return CollectionTree(
        text,
        store=store if store is not None else MemoryBlockStore(),
        flusher=kw.pop("flusher", FLUSHER),
        budget=budget if budget is not None else ByteBudget(256 << 20),
        **kw,
    )


def build_manifest(store: MemoryBlockStore, files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> str:
    """A normalized manifest with one stored block per non-empty file."""
    root = Dir()
    for d in dirs:
        node = root
        for part in d.split("/"):
            node = node.setdefault(part, Dir())
    for path, data in files.items():
        node = root
        *parents, name = path.split("/")
        for part in parents:
            node = node.setdefault(part, Dir())
        node[name] = ((store.put(data), 0, len(data)),) if data else ()
    return Manifest(root).to_text()


def _no_pdh(pdh: str) -> Dir:
    raise CatalogNotFound(pdh)


def apply_batches(base_text: str, batches: list[tuple[dict[str, str], str]]) -> Dir:
    """What the catalog holds after applying ``batches`` to ``base_text``."""
    root = parse_manifest(base_text).root
    for rf, mt in batches:
        ops = plan_replace_files(rf, manifest_text_supplied=bool(mt))
        new_content = parse_manifest(mt).root if mt else None
        root = apply_to_tree(root, ops, new_content=new_content, load_pdh=_no_pdh)
    return root


def commit(tree: CollectionTree, change: ChangeSet, base_text: str) -> str:
    """Commit ``change`` like the session does, against a catalog holding
    ``base_text``; check (old + delta) == new tree; return the new text."""
    change.flush()
    after = apply_batches(base_text, change.batches(tree))
    change.committed(tree, version=tree.version + 1)
    change.release()
    new_text = Manifest(after).to_text()
    assert normalize_manifest(tree.marshal()) == new_text
    return new_text


def read_all(tree: CollectionTree, path: str) -> bytes:
    with open_read(tree, path) as r:
        return r.read()


def contents(tree: CollectionTree, path: str = "") -> tuple[dict[str, bytes], set[str]]:
    """Every file's bytes and every directory under ``path``, via the public API."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()

    def rec(p: str) -> None:
        for name, st in tree.listdir(p):
            q = f"{p}/{name}" if p else name
            if st.is_dir:
                dirs.add(q)
                rec(q)
            else:
                files[q] = read_all(tree, q)
                assert st.size == len(files[q])

    rec(path)
    return files, dirs


def loaded_dirs(tree: CollectionTree) -> set[str]:
    """Paths of directories whose entries have been parsed."""
    out: set[str] = set()

    def rec(node, p: str) -> None:
        if node.children is None:
            return
        out.add(p)
        for name, v in node.children.items():
            if type(v) is tree_mod.DirNode:
                rec(v, f"{p}/{name}" if p else name)

    rec(tree.root, "")
    return out


@pytest.fixture
def store() -> MemoryBlockStore:
    return MemoryBlockStore()


@pytest.fixture
def parse_count(monkeypatch) -> list[str]:
    """Records the stream line of every file-token parse."""
    calls: list[str] = []
    real = M._parse_line

    def counting(line_text, line):
        calls.append(line_text.split(" ", 1)[0])
        return real(line_text, line)

    monkeypatch.setattr(M, "_parse_line", counting)
    return calls


BASIC = {
    "top.txt": b"top level",
    "a/f1": b"hello",
    "a/f2": b"world!",
    "a/c/deep": b"deep file",
    "b/g": b"gg",
    "b/empty": b"",
}


@pytest.fixture
def basic(store) -> tuple[CollectionTree, str]:
    text = build_manifest(store, BASIC, dirs=("e",))
    return make_tree(text, store=store, uuid="zzzzz-4zz18-000000000000001"), text


# ----------------------------------------------------------------- lazy loading


def test_opening_parses_no_file_tokens_and_access_parses_only_the_path(store, parse_count):
    files = {f"d{i}/sub{j}/f{k}": b"x%d" % k for i in range(5) for j in range(4) for k in range(3)}
    files["rootfile"] = b"r"
    text = build_manifest(store, files)
    tree = make_tree(text, store=store)
    assert parse_count == []
    assert loaded_dirs(tree) == set()

    st = tree.stat("d3/sub2/f1")
    assert st.size == 2 and not st.is_dir
    assert loaded_dirs(tree) == {"", "d3", "d3/sub2"}
    # Only the stream lines of those directories were parsed (d3 has no
    # files of its own, so it has no line).
    assert sorted(parse_count) == [".", "./d3/sub2"]

    parse_count.clear()
    tree.listdir("d3/sub2")
    tree.stat("d3/sub2/f0")
    assert parse_count == []  # parsed once, cached

    tree.names("d1")
    assert loaded_dirs(tree) == {"", "d1", "d3", "d3/sub2"}
    assert parse_count == []  # d1 has no own line
    # Metadata never needs block data.
    tree.listdir("d4/sub0")
    assert store.gets == 0


def test_listing_a_directory_loads_it_but_not_its_subdirectories(basic):
    tree, _ = basic
    names = [n for n, _ in tree.listdir("a")]
    assert names == ["c", "f1", "f2"]
    assert loaded_dirs(tree) == {"", "a"}
    st = dict(tree.listdir("a"))["c"]
    assert st.is_dir and st.size == 0 and st.etag is None


def test_corrupt_line_is_only_an_error_when_its_directory_is_touched(store):
    good = store.put(b"foo")
    text = f". {good} 0:3:ok\n./bad {good} 0:5:past_end\n./fine {good} 0:3:x\n"
    tree = make_tree(text, store=store)
    assert read_all(tree, "ok") == b"foo"
    assert read_all(tree, "fine/x") == b"foo"
    assert [n for n, _ in tree.listdir("")] == ["bad", "fine", "ok"]
    with pytest.raises(CorruptManifest):
        tree.listdir("bad")
    with pytest.raises(CorruptManifest):
        tree.stat("bad/past_end")


@pytest.mark.parametrize("text", ["no newline", ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:f", "./a/../b acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:f\n"])
def test_corrupt_manifest_at_open(text):
    with pytest.raises(CorruptManifest):
        make_tree(text)


# ------------------------------------------------------------------ stat / list


def test_stat_and_listdir(basic):
    tree, _ = basic
    root = tree.stat("")
    assert root.is_dir and root.etag is None
    assert tree.stat("/").is_dir
    f = tree.stat("a/f2")
    assert (f.is_dir, f.size) == (False, 6)
    assert f.etag and len(f.etag) == 32
    assert tree.stat("/a//f2/").size == 6  # slashes are separators only
    assert tree.stat("b/empty").size == 0
    assert tree.stat("e").is_dir
    assert tree.listdir("e") == []
    assert tree.names("") == ["a", "b", "e", "top.txt"]
    listing = tree.listdir("")
    assert [n for n, _ in listing] == ["a", "b", "e", "top.txt"]
    assert [s.is_dir for _, s in listing] == [True, True, True, False]
    assert tree.exists("a/c/deep") and not tree.exists("a/nope") and not tree.exists("top.txt/x")
    assert [p for p, _ in tree.walk_files("a")] == ["a/c/deep", "a/f1", "a/f2"]
    assert [p for p, _ in tree.walk_files("a/f1")] == ["a/f1"]
    files, dirs = contents(tree)
    assert files == BASIC and dirs == {"a", "a/c", "b", "e"}


def test_walk_files_does_not_hold_the_lock_between_items(basic):
    tree, _ = basic
    it = tree.walk_files("")
    next(it)
    # Another thread can use the tree now (stat takes the tree lock).
    import threading

    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(tree.stat("a/f1") is not None), daemon=True)
    t.start()
    t.join(timeout=2)
    assert got == [True], "a suspended walk_files still holds the tree lock"


# ----------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/", "nul\x00", "\x00", "lone\udc80surrogate"])
def test_check_name_rejects(name):
    with pytest.raises(InvalidName):
        check_name(name)


@pytest.mark.parametrize("name", ["a", "...", ".hidden", "a b", "a:b", "x\\y", "é", "..a", "a.."])
def test_check_name_accepts(name):
    assert check_name(name) == name


@pytest.mark.parametrize("path", [".", "..", "a/..", "a/./b", "x\x00y", "../etc", "d/\ud800"])
def test_invalid_names_in_every_operation(basic, path):
    tree, _ = basic
    ch = ChangeSet()
    for op in (
        lambda: tree.stat(path),
        lambda: tree.listdir(path),
        lambda: tree.snapshot(path),
        lambda: tree.mkdir(ch, path),
        lambda: tree.put_file(ch, path, ()),
        lambda: tree.remove(ch, path),
        lambda: tree.rename(ch, "top.txt", path),
        lambda: tree.rename(ch, path, "new"),
        lambda: tree.copy(ch, "top.txt", path),
        lambda: tree.write_at(ch, path, 0, b"x"),
        lambda: truncate(tree, ch, path, 0),
    ):
        with pytest.raises(InvalidName):
            op()
    assert not ch
    ch.release()


def test_root_cannot_be_created_removed_or_moved(basic):
    tree, _ = basic
    ch = ChangeSet()
    with pytest.raises(InvalidName):
        tree.mkdir(ch, "")
    with pytest.raises(InvalidName):
        tree.put_file(ch, "/", ())
    with pytest.raises(InvalidMove):
        tree.remove(ch, "")
    with pytest.raises(InvalidMove):
        tree.rename(ch, "", "x")
    with pytest.raises(InvalidMove):
        tree.copy(ch, "a", "")
    with pytest.raises(IsADirectory):
        tree.snapshot("")
    ch.release()


def test_not_found_and_parent_not_found(basic):
    tree, _ = basic
    ch = ChangeSet()
    for op in (
        lambda: tree.stat("nope"),
        lambda: tree.stat("a/nope"),
        lambda: tree.listdir("nope"),
        lambda: tree.snapshot("a/c/nope"),
        lambda: tree.remove(ch, "nope"),
        lambda: tree.rename(ch, "nope", "x"),
        lambda: tree.copy(ch, "a/nope", "x"),
        lambda: truncate(tree, ch, "nope", 3),
        lambda: open_read(tree, "nope"),
    ):
        with pytest.raises(NotFound) as ei:
            op()
        assert type(ei.value) is NotFound
    for op in (
        lambda: tree.mkdir(ch, "x/y"),
        lambda: tree.put_file(ch, "x/y", ()),
        lambda: tree.rename(ch, "top.txt", "x/y"),
        lambda: tree.copy(ch, "a", "x/y/z"),
        lambda: tree.write_at(ch, "x/y", 0, b"1"),
        lambda: tree.remove(ch, "x/y"),
    ):
        with pytest.raises(ParentNotFound):
            op()
    assert issubclass(ParentNotFound, NotFound)
    assert not ch
    ch.release()


def test_not_a_directory_and_is_a_directory(basic):
    tree, _ = basic
    ch = ChangeSet()
    for op in (
        lambda: tree.stat("top.txt/x"),
        lambda: tree.listdir("top.txt"),
        lambda: tree.names("a/f1"),
        lambda: tree.mkdir(ch, "top.txt/x"),
        lambda: tree.put_file(ch, "a/f1/x", ()),
        lambda: tree.rename(ch, "b/g", "a/f1/g"),
        lambda: tree.write_at(ch, "a/f1/deeper/x", 0, b"1"),
        lambda: tree.remove(ch, "top.txt/x"),
    ):
        with pytest.raises(NotADirectory):
            op()
    for op in (
        lambda: tree.put_file(ch, "a", ()),
        lambda: tree.snapshot("a/c"),
        lambda: open_read(tree, "a"),
        lambda: truncate(tree, ch, "a", 0),
        lambda: tree.write_at(ch, "b", 0, b"x"),
    ):
        with pytest.raises(IsADirectory):
            op()
    assert not ch
    ch.release()


def test_already_exists_and_invalid_move(basic):
    tree, _ = basic
    ch = ChangeSet()
    with pytest.raises(AlreadyExists):
        tree.mkdir(ch, "a")
    with pytest.raises(AlreadyExists):
        tree.mkdir(ch, "top.txt")
    with pytest.raises(AlreadyExists):
        tree.rename(ch, "a/f1", "a/f2", overwrite=False)
    with pytest.raises(AlreadyExists):
        tree.copy(ch, "a", "b", overwrite=False)
    with pytest.raises(InvalidMove):
        tree.rename(ch, "a", "a/c/a")  # a directory into itself
    with pytest.raises(InvalidMove):
        tree.copy(ch, "a", "a/x")
    with pytest.raises(InvalidMove):
        tree.rename(ch, "a", "a")  # onto itself
    with pytest.raises(InvalidMove):
        tree.copy(ch, "top.txt", "/top.txt/")
    assert not ch
    ch.release()
    assert contents(tree)[0] == BASIC


def test_readonly_tree_refuses_every_mutation(store):
    text = build_manifest(store, BASIC)
    tree = make_tree(text, store=store, readonly=True)
    other = make_tree(text, store=store)
    ch = ChangeSet()
    for op in (
        lambda: tree.new_writer(),
        lambda: tree.mkdir(ch, "new"),
        lambda: tree.put_file(ch, "new", ()),
        lambda: tree.remove(ch, "top.txt"),
        lambda: tree.rename(ch, "top.txt", "x"),
        lambda: tree.copy(ch, "top.txt", "x"),
        lambda: tree.write_at(ch, "top.txt", 0, b"x"),
        lambda: truncate(tree, ch, "top.txt", 0),
        lambda: tree.import_entry(ch, other, "a", "a2"),
    ):
        with pytest.raises(ReadOnly):
            op()
    assert not ch and ch.trees == []
    # Reading is fine, and a read-only tree can be a copy source.
    assert read_all(tree, "a/f1") == b"hello"
    other.import_entry(ch, tree, "a", "a2")
    assert read_all(other, "a2/f2") == b"world!"
    ch.rollback()
    ch.release()


# --------------------------------------------------------- .arvados#collection


def test_virtual_record_file(basic):
    tree, text = basic
    tree.record.update(
        {
            "uuid": tree.uuid,
            "name": "my coll",
            "portable_data_hash": M.portable_data_hash(text),
            "properties": {"k": "v"},
            "modified_at": "2026-01-02T03:04:05.000000000Z",
            "version": 3,
            "_revision": ("x", 3),  # private keys are not shown
        }
    )
    assert VIRTUAL_RECORD_NAME not in tree.names("")
    assert VIRTUAL_RECORD_NAME not in [n for n, _ in tree.listdir("")]
    assert not any(VIRTUAL_RECORD_NAME in p for p, _ in tree.walk_files(""))
    st = tree.stat(VIRTUAL_RECORD_NAME)
    data = open_read(tree, VIRTUAL_RECORD_NAME).read()
    assert st.size == len(data) and not st.is_dir
    rec = json.loads(data)
    assert rec["uuid"] == tree.uuid
    assert rec["portable_data_hash"] == M.portable_data_hash(text)
    assert rec["manifest_text"] == text == tree.marshal()
    assert rec["properties"] == {"k": "v"}
    assert rec["modified_at"] == "2026-01-02T03:04:05.000000000Z"
    assert "_revision" not in rec
    # Only at the root.
    with pytest.raises(NotFound):
        tree.stat("a/" + VIRTUAL_RECORD_NAME)
    # Read-only in every way.
    ch = ChangeSet()
    for op in (
        lambda: tree.put_file(ch, VIRTUAL_RECORD_NAME, ()),
        lambda: tree.mkdir(ch, VIRTUAL_RECORD_NAME),
        lambda: tree.remove(ch, VIRTUAL_RECORD_NAME),
        lambda: tree.rename(ch, VIRTUAL_RECORD_NAME, "x"),
        lambda: tree.rename(ch, "top.txt", VIRTUAL_RECORD_NAME),
        lambda: tree.copy(ch, "top.txt", VIRTUAL_RECORD_NAME),
        lambda: tree.write_at(ch, VIRTUAL_RECORD_NAME, 0, b"x"),
        lambda: truncate(tree, ch, VIRTUAL_RECORD_NAME, 0),
    ):
        with pytest.raises(ReadOnly):
            op()
    assert not ch
    # Content follows the tree (the cache is invalidated by changes).
    tree.remove(ch, "top.txt")
    text2 = commit(tree, ch, text)
    rec2 = json.loads(record_json(tree))
    assert rec2["manifest_text"] == text2 != text
    tree.record["properties"] = {"k": "w"}
    assert json.loads(record_json(tree))["properties"] == {"k": "w"}


def test_virtual_record_waits_for_unstored_bytes_of_another_change(basic):
    """While a change holds buffered bytes, record_json cannot show their
    locators: the owner's thread gets BusyError, others wait for commit."""
    import threading

    tree, text = basic
    ch = ChangeSet()
    tree.write_at(ch, "new", 0, b"buffered")
    with pytest.raises(BusyError):
        record_json(tree)
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.append(record_json(tree)))
    t.start()
    t.join(0.2)
    assert t.is_alive()  # waiting for the change to finish
    commit(tree, ch, text)
    t.join(5)
    assert out and "new" in json.loads(out[0])["manifest_text"]


# ------------------------------------------------- copy / move touch no bytes


def test_copy_move_import_never_touch_blocks(store):
    files = {f"src/d{i}/f{j}": bytes([65 + i]) * (j + 1) for i in range(3) for j in range(4)}
    files["big.bin"] = b"B" * 1000
    text = build_manifest(store, files)
    tree = make_tree(text, store=store, uuid="u-a")
    other = make_tree(build_manifest(store, {"x": b"x"}), store=store, uuid="u-b")
    other_text = other.marshal()
    tree.listdir("src/d1")  # one loaded subtree, the others lazy
    puts, gets = store.puts, store.gets

    ch = ChangeSet()
    tree.rename(ch, "big.bin", "moved.bin")
    tree.copy(ch, "moved.bin", "copied.bin")
    tree.copy(ch, "src", "src_copy")  # mix of loaded and unloaded dirs
    tree.rename(ch, "src/d0", "d0_moved")  # an unloaded dir
    tree.rename(ch, "src/d1", "d1_moved")  # a loaded dir
    tree.copy(ch, "src", "shallow", recursive=False)
    tree.listdir("src_copy/d2")
    text2 = commit(tree, ch, text)

    ch = ChangeSet()
    ch.lock_trees(tree, other)
    other.import_entry(ch, tree, "src_copy", "imported")
    other.import_entry(ch, tree, "moved.bin", "one.bin")
    other.import_entry(ch, tree, "", "whole")
    other.import_entry(ch, tree, "d1_moved", "flat", recursive=False)
    tree.remove(ch, "moved.bin")  # cross-collection MOVE = import + remove
    ch.flush()
    other_after = apply_batches(other_text, ch.batches(other))
    tree_after = apply_batches(text2, ch.batches(tree))
    ch.committed(other, version=1)
    ch.committed(tree, version=2)
    ch.release()
    assert (store.puts, store.gets) == (puts, gets), "COPY/MOVE/import read or wrote blocks"

    assert parse_manifest(other.marshal()).root == other_after
    assert parse_manifest(tree.marshal()).root == tree_after
    assert (store.puts, store.gets) == (puts, gets)
    # And the content is right (reading does fetch blocks, of course).
    got, dirs = contents(other)
    assert got["one.bin"] == b"B" * 1000
    assert got["imported/d2/f3"] == b"CCCC"
    assert got["whole/d0_moved/f0"] == b"A"
    assert "flat" in dirs and not any(p.startswith("flat/") for p in got)
    tfiles, tdirs = contents(tree)
    assert "moved.bin" not in tfiles and tfiles["copied.bin"] == b"B" * 1000
    assert tfiles["d1_moved/f2"] == b"BBB" and "src/d1/f0" not in tfiles
    assert "shallow" in tdirs and not any(p.startswith("shallow/") for p in tfiles)


def test_deltas_use_reference_sources(basic):
    tree, text = basic
    ch = ChangeSet()
    tree.rename(ch, "a/f1", "moved")
    [(rf, mt)] = ch.batches(tree)
    assert rf == {"/moved": "current/a/f1", "/a/f1": ""} and mt == ""
    commit(tree, ch, text)

    ch = ChangeSet()
    tree.copy(ch, "a", "a2")
    tree.remove(ch, "b/g")
    [(rf, mt)] = ch.batches(tree)
    assert rf == {"/a2": "current/a", "/b/g": ""} and mt == ""
    ch.rollback()
    ch.release()

    ch = ChangeSet()
    tree.mkdir(ch, "newdir")
    tree.copy(ch, "a", "shallow", recursive=False)
    [(rf, mt)] = ch.batches(tree)
    assert rf == {"/newdir": "manifest_text/newdir", "/shallow": "manifest_text/shallow"}
    assert mt == f"./newdir {M.EMPTY_BLOCK} 0:0:\\056\n./shallow {M.EMPTY_BLOCK} 0:0:\\056\n"
    ch.rollback()
    ch.release()


def test_copy_depth_zero(basic):
    tree, text = basic
    ch = ChangeSet()
    assert tree.copy(ch, "a", "a0", recursive=False) is True
    assert tree.listdir("a0") == []
    # A file is copied whole whatever the depth.
    tree.copy(ch, "a/f1", "f1copy", recursive=False)
    # Depth 0 onto an existing directory replaces it with an empty one.
    assert tree.copy(ch, "e", "b", recursive=False) is False
    commit(tree, ch, text)
    assert tree.listdir("a0") == [] and tree.listdir("b") == []
    assert read_all(tree, "f1copy") == b"hello"
    assert [n for n, _ in tree.listdir("a")] == ["c", "f1", "f2"]


def test_copy_is_independent_of_its_source(basic):
    tree, text = basic
    ch = ChangeSet()
    tree.listdir("a/c")
    tree.copy(ch, "a", "a2")
    tree.write_at(ch, "a/c/deep", 0, b"DEEP")
    tree.remove(ch, "a2/f1")
    tree.mkdir(ch, "a/c/new")
    commit(tree, ch, text)
    assert read_all(tree, "a2/c/deep") == b"deep file"
    assert read_all(tree, "a/c/deep") == b"DEEP file"
    assert tree.exists("a/f1") and not tree.exists("a2/f1")
    assert not tree.exists("a2/c/new")


def test_move_and_copy_onto_an_ancestor(basic):
    """MOVE a/c onto a replaces a by its own subdirectory; the delta must
    not name a/c again (a nested target is a 400 from the catalog)."""
    tree, text = basic
    ch = ChangeSet()
    assert tree.rename(ch, "a/c", "a") is False
    [(rf, _)] = ch.batches(tree)
    assert rf == {"/a": "current/a/c"}
    text2 = commit(tree, ch, text)
    assert tree.names("a") == ["deep"]
    ch = ChangeSet()
    tree.copy(ch, "a/deep", "a")
    commit(tree, ch, text2)
    assert read_all(tree, "a") == b"deep file"


def test_return_values_say_whether_the_target_was_new(basic):
    tree, text = basic
    ch = ChangeSet()
    assert tree.put_file(ch, "n1", ()) is True
    assert tree.put_file(ch, "n1", tree.snapshot("a/f1")) is False
    assert tree.rename(ch, "n1", "n2") is True
    assert tree.rename(ch, "n2", "top.txt") is False
    assert tree.copy(ch, "top.txt", "n3") is True
    assert tree.copy(ch, "top.txt", "n3") is False
    commit(tree, ch, text)


def test_put_of_identical_content_is_not_a_change(basic):
    tree, text = basic
    ch = ChangeSet()
    assert tree.put_file(ch, "a/f1", tree.snapshot("a/f1")) is False
    assert not ch
    ch.release()


# ------------------------------------------------------------------------ ETags


def test_etag_stable_across_unrelated_changes_and_reloads(basic):
    tree, text = basic
    e1 = tree.stat("a/f1").etag
    assert tree.listdir("a")[1][1].etag == e1
    ch = ChangeSet()
    tree.write_at(ch, "a/f2", 0, b"W")
    tree.mkdir(ch, "a/newdir")
    tree.rename(ch, "top.txt", "a/top")
    tree.remove(ch, "b")
    text2 = commit(tree, ch, text)
    assert tree.stat("a/f1").etag == e1
    reloaded = make_tree(text2, store=tree.store)
    assert reloaded.stat("a/f1").etag == e1
    # A copy has the same ETag (same bytes, same references).
    ch = ChangeSet()
    tree.copy(ch, "a/f1", "f1copy")
    assert tree.stat("f1copy").etag == e1
    ch.rollback()
    ch.release()


def test_etag_changes_with_content(basic):
    tree, text = basic
    before = {p: tree.stat(p).etag for p in ("a/f1", "a/f2", "b/g", "b/empty")}
    ch = ChangeSet()
    tree.write_at(ch, "a/f1", 0, b"J")  # same size, other bytes
    truncate(tree, ch, "a/f2", 3)
    tree.write_at(ch, "b/g", 2, b"!")
    commit(tree, ch, text)
    after = {p: tree.stat(p).etag for p in before}
    assert after["b/empty"] == before["b/empty"]
    for p in ("a/f1", "a/f2", "b/g"):
        assert after[p] != before[p], p
    assert len(set(after.values())) == 4


def test_etag_survives_packing_and_reload(store):
    """Two adjacent writes packed contiguously are one piece after reload;
    the ETag must not notice."""
    tree = make_tree("", store=store)
    ch = ChangeSet()
    tree.write_at(ch, "f", 0, b"abc")
    tree.write_at(ch, "f", 3, b"def")
    tree.write_at(ch, "g", 0, b"other")
    text = commit(tree, ch, "")
    assert len(tree.snapshot("f")) == 2
    reloaded = make_tree(text, store=store)
    assert len(reloaded.snapshot("f")) == 1
    assert reloaded.stat("f").etag == tree.stat("f").etag
    assert read_all(reloaded, "f") == b"abcdef"


def test_etag_ignores_permission_hints():
    loc = "acbd18db4cc2f85cedef654fccc4a4d8+3"
    assert etag_of(((loc, 0, 3),)) == etag_of(((loc + SIG, 0, 3),))
    assert etag_of(((loc, 0, 3),)) != etag_of(((loc, 0, 2),))
    buf = BufferBlock(None, b"foo")
    e_buf = etag_of(((buf, 0, 3),))
    buf.stored(loc + SIG)
    assert etag_of(((buf, 0, 3),)) == etag_of(((loc, 0, 3),)) != e_buf


# -------------------------------------------------------- truncate / write_at


def test_truncate_shrink_and_grow(basic):
    tree, text = basic
    ch = ChangeSet()
    truncate(tree, ch, "a/f2", 2)
    truncate(tree, ch, "a/f1", 0)
    truncate(tree, ch, "b/empty", 5)
    truncate(tree, ch, "b/g", (3 << 20) + 7)  # grow past the 1 MiB zero chunk
    truncate(tree, ch, "top.txt", 9)  # same size
    assert read_all(tree, "a/f2") == b"wo"
    assert read_all(tree, "a/f1") == b""
    assert read_all(tree, "b/empty") == bytes(5)
    big = read_all(tree, "b/g")
    assert big[:2] == b"gg" and big[2:] == bytes((3 << 20) + 5)
    text2 = commit(tree, ch, text)
    reloaded = make_tree(text2, store=tree.store)
    assert read_all(reloaded, "b/g") == big
    assert read_all(reloaded, "a/f2") == b"wo"
    assert reloaded.stat("b/empty").size == 5
    with pytest.raises(ValueError):
        truncate(tree, ChangeSet(), "a/f2", -1)


def test_write_at_with_gaps_and_overlaps(basic):
    tree, text = basic
    ch = ChangeSet()
    tree.write_at(ch, "new", 10, b"tail")  # creates, zero-fills 0..10
    assert read_all(tree, "new") == bytes(10) + b"tail"
    tree.write_at(ch, "new", 2, b"AB")
    tree.write_at(ch, "new", 12, b"XYZW")  # overlaps the end and extends
    assert read_all(tree, "new") == b"\0\0AB" + bytes(6) + b"taXYZW"
    tree.write_at(ch, "a/f1", 4, b"O, world")  # over a stored segment
    tree.write_at(ch, "a/f1", 0, b"")  # empty write: no change
    assert read_all(tree, "a/f1") == b"hellO, world"
    text2 = commit(tree, ch, text)
    reloaded = make_tree(text2, store=tree.store)
    assert read_all(reloaded, "new") == b"\0\0AB" + bytes(6) + b"taXYZW"
    assert read_all(reloaded, "a/f1") == b"hellO, world"


def test_write_at_more_than_a_block_is_cut_into_blocks(store):
    tree = make_tree("", store=store)
    data = hashlib.sha256(b"seed").digest() * ((M.MAX_BLOCK_SIZE // 32) + 1000)
    ch = ChangeSet()
    tree.write_at(ch, "huge", 0, data)
    text = commit(tree, ch, "")
    segs = parse_manifest(text).get("huge")
    assert all(M.locator_size(s[0]) <= M.MAX_BLOCK_SIZE for s in segs)
    assert read_all(make_tree(text, store=store), "huge") == data


# ------------------------------------------------- deltas for tricky sequences


def _commit_seq(tree: CollectionTree, base: str, steps) -> str:
    ch = ChangeSet()
    for step in steps:
        step(ch)
    return commit(tree, ch, base)


def test_delta_swap_via_temporary(basic):
    tree, text = basic
    text2 = _commit_seq(
        tree,
        text,
        [
            lambda ch: tree.rename(ch, "a", "tmp"),
            lambda ch: tree.rename(ch, "b", "a"),
            lambda ch: tree.rename(ch, "tmp", "b"),
        ],
    )
    files, _ = contents(tree)
    assert files["b/f1"] == b"hello" and files["a/g"] == b"gg"
    assert parse_manifest(text2).root == parse_manifest(tree.marshal()).root


def test_delta_mkdir_then_fill_then_copy_then_delete_source(basic):
    tree, text = basic
    _commit_seq(
        tree,
        text,
        [
            lambda ch: tree.mkdir(ch, "n"),
            lambda ch: tree.mkdir(ch, "n/m"),
            lambda ch: tree.write_at(ch, "n/m/f", 0, b"new data"),
            lambda ch: tree.copy(ch, "n", "n2"),
            lambda ch: tree.write_at(ch, "n2/m/f", 0, b"NEW"),
            lambda ch: tree.remove(ch, "n"),
            lambda ch: tree.rename(ch, "n2/m/f", "top.txt"),
        ],
    )
    files, dirs = contents(tree)
    assert files["top.txt"] == b"NEW data" and "n" not in dirs and "n2/m" in dirs


def test_delta_delete_and_recreate(basic):
    tree, text = basic
    _commit_seq(
        tree,
        text,
        [
            lambda ch: tree.remove(ch, "a"),
            lambda ch: tree.mkdir(ch, "a"),
            lambda ch: tree.write_at(ch, "a/f1", 0, b"again"),
            lambda ch: tree.remove(ch, "top.txt"),
            lambda ch: tree.write_at(ch, "top.txt", 0, b"T"),
        ],
    )
    files, dirs = contents(tree)
    assert files["a/f1"] == b"again" and "a/c" not in dirs and files["top.txt"] == b"T"


def test_delta_overwrite_dir_with_file_and_file_with_dir(basic):
    tree, text = basic
    _commit_seq(
        tree,
        text,
        [
            lambda ch: tree.rename(ch, "top.txt", "a"),
            lambda ch: tree.copy(ch, "b", "a2"),
            lambda ch: tree.rename(ch, "a2", "a"),
        ],
    )
    files, dirs = contents(tree)
    assert "a" in dirs and files["a/g"] == b"gg" and "a/f1" not in files


# -------------------------------------------------------------- commit / rollback


def test_rollback_restores_the_tree_exactly(basic):
    tree, text = basic
    before = contents(tree)
    etags = {p: tree.stat(p).etag for p in BASIC}
    marshal_before = tree.marshal()
    ch = ChangeSet()
    tree.write_at(ch, "a/f1", 1, b"EE")
    truncate(tree, ch, "b/g", 0)
    tree.mkdir(ch, "z")
    tree.rename(ch, "a/c", "z/c")
    tree.copy(ch, "z", "y")
    tree.remove(ch, "top.txt")
    tree.put_file(ch, "top.txt", tree.snapshot("a/f2"))
    w = tree.new_writer()
    w.write(b"written")
    tree.put_file(ch, "e/w", w.close())
    ch.rollback()
    ch.release()
    assert contents(tree) == before
    assert {p: tree.stat(p).etag for p in BASIC} == etags
    assert tree.marshal() == marshal_before == text


def test_release_without_commit_rolls_back(basic):
    tree, text = basic
    ch = ChangeSet()
    tree.remove(ch, "a")
    ch.release()
    assert tree.exists("a/f1") and tree.marshal() == text
    # And the lock is free again.
    ch2 = ChangeSet(lock_timeout=0.1)
    tree.mkdir(ch2, "q")
    ch2.rollback()
    ch2.release()


def test_committed_tree_survives_rollback_of_another(store):
    """A request changing two collections commits one, then the other's
    catalog update fails: rolling back must keep the committed one."""
    t1 = make_tree(build_manifest(store, {"x": b"1"}), store=store, uuid="u1")
    t2 = make_tree(build_manifest(store, {"y": b"2"}), store=store, uuid="u2")
    ch = ChangeSet()
    ch.lock_trees(t2, t1)
    assert ch.trees == [t1, t2]  # UUID order
    t1.mkdir(ch, "d1")
    t2.mkdir(ch, "d2")
    ch.flush()
    assert ch.batches(t1) and ch.batches(t2)
    ch.committed(t1, version=5)
    assert ch.batches(t1) == [] and t1.version == 5
    ch.rollback()
    ch.release()
    assert t1.exists("d1") and not t2.exists("d2")


def test_committed_records_version_record_and_staleness(basic):
    tree, _ = basic
    ch = ChangeSet()
    tree.mkdir(ch, "v")
    ch.committed(tree, version=9, record={"portable_data_hash": "x+1"}, fresh=False)
    ch.release()
    assert tree.version == 9 and tree.record["portable_data_hash"] == "x+1" and tree.stale


def test_batches_split_only_on_overlap(basic):
    tree, _ = basic
    ch = ChangeSet()
    tree.write_at(ch, "p1", 0, b"1")
    tree.write_at(ch, "a/p2", 0, b"2")
    tree.remove(ch, "b/g")
    tree.mkdir(ch, "a/c/x")
    ch.flush()
    assert len(ch.batches(tree)) == 1
    tree.write_at(ch, "a/c/x/f", 0, b"inside the new dir")
    ch.flush()
    assert len(ch.batches(tree)) == 2
    ch.rollback()
    ch.release()


def test_flush_packs_small_buffers_into_one_block(store):
    tree = make_tree("", store=store)
    ch = ChangeSet()
    for i in range(50):
        tree.write_at(ch, f"f{i}", 0, b"%d" % i * 10)
    puts = store.puts
    ch.flush()
    assert store.puts == puts + 1
    text = commit(tree, ch, "")
    assert len({s[0] for _, segs in parse_manifest(text).files() for s in segs}) == 1
    assert read_all(make_tree(text, store=store), "f7") == b"7" * 10


# ------------------------------------------------------------------------ marshal


MANIFESTS = load_vectors("manifests.json")["cases"]


def _accepted(case: dict) -> bool:
    try:
        parse_manifest(case["input_manifest"])
        return True
    except M.ManifestError:
        return False


@pytest.mark.parametrize("case", [c for c in MANIFESTS if _accepted(c)], ids=lambda c: c["id"])
@pytest.mark.parametrize("trusted", [False, True], ids=["plain", "trusted"])
def test_marshal_vectors(case, trusted):
    text = case["input_manifest"]
    expected = normalize_manifest(text)
    if case["input_is_normalized"]:
        assert expected == text  # our normalizer agrees with the oracle here
    tree = make_tree(text, trusted_normalized=trusted and case["input_is_normalized"])
    assert tree.marshal() == expected  # nothing loaded
    assert tree.marshal(strip=True) == parse_manifest(text).to_text(strip=True)
    list(tree.walk_files(""))  # everything loaded
    assert tree.marshal() == expected
    if case["input_is_normalized"]:
        assert tree.marshal() == text  # byte for byte


def test_marshal_reuses_untouched_lines_when_trusted(store, monkeypatch):
    files = {f"d{i}/s{j}/f{k}": b"%d%d%d" % (i, j, k) for i in range(6) for j in range(3) for k in range(4)}
    text = build_manifest(store, files, dirs=("empty", "d1/empty"))
    renders: list[str] = []
    real = tree_mod.render_stream
    monkeypatch.setattr(tree_mod, "render_stream", lambda sname, f, **kw: renders.append(sname) or real(sname, f, **kw))

    trusted = make_tree(text, store=store, trusted_normalized=True)
    assert trusted.marshal() == text
    assert renders == [] and loaded_dirs(trusted) == set()

    trusted.listdir("d2/s1")  # loaded but unchanged: still reused
    assert trusted.marshal() == text and renders == []

    ch = ChangeSet()
    trusted.write_at(ch, "d4/s0/f1", 0, b"X")
    ch.flush()
    after = Manifest(apply_batches(text, ch.batches(trusted))).to_text()
    ch.committed(trusted, version=1)
    ch.release()
    renders.clear()
    assert trusted.marshal() == after
    assert renders == ["./d4/s0"]  # only the changed directory
    renders.clear()
    assert trusted.marshal() == after and renders == []  # cached now

    # Without the promise every loaded directory is rendered again.
    plain = make_tree(text, store=store)
    renders.clear()
    assert plain.marshal() == text
    assert len(renders) == 6 * 3


@pytest.mark.parametrize(
    "body",
    [
        ". {L} 0:3:d/f 0:3:g\n",  # the leaf d holds the root's line
        "./d {L} 0:3:e/f\n./d/e {L} 0:3:x\n",
        ". {L} 0:3:a\\057b\n",  # escaped slash: a path, not a name
        "./p {L} 0:3:q/r/s 0:3:t\n./x {L} 0:3:y\n",
    ],
)
def test_trusted_flag_does_not_reuse_lines_that_reach_into_subdirectories(store, body):
    """The catalog may claim the normalized layout wrongly; a line whose
    tokens reach into subdirectories must never be reused verbatim."""
    text = body.replace("{L}", store.put(b"foo"))
    expected = normalize_manifest(text)
    assert make_tree(text, store=store, trusted_normalized=True).marshal() == expected
    tree = make_tree(text, store=store, trusted_normalized=True)
    list(tree.walk_files(""))
    assert tree.marshal() == expected


def test_marshal_of_unstored_data_is_refused(store):
    tree = make_tree("", store=store)
    ch = ChangeSet()
    tree.write_at(ch, "f", 0, b"x")
    with pytest.raises(ValueError):
        tree.marshal()
    ch.flush()
    assert tree.marshal().endswith(" 0:1:f\n")
    ch.rollback()
    ch.release()


def test_trusted_reuse_renames_moved_and_copied_directories(store):
    """Reused lines of moved/copied directories get their new stream name;
    a loaded directory's line is reused by reference, not copied."""
    files = {"a/f": b"1", "a/c/g": b"22", "a/c/d/h": b"333", "b/x y": b"4", "keep/k": b"5"}
    text = build_manifest(store, files, dirs=("a/empty",))
    tree = make_tree(text, store=store, trusted_normalized=True)
    tree.listdir("a")  # loaded: tail refers to the index line
    assert tree.root.children["a"].tail is tree_mod.FROM_INDEX
    ch = ChangeSet()
    tree.copy(ch, "a", "a copy")  # loaded dir, name needing escapes
    tree.rename(ch, "a/c", "moved")  # unloaded subtree
    tree.copy(ch, "b", "b2")
    commit(tree, ch, text)
    files_now, dirs_now = contents(tree)
    assert files_now["a copy/c/d/h"] == b"333" and files_now["moved/d/h"] == b"333"
    assert files_now["b2/x y"] == b"4" and "a/c" not in dirs_now and "a copy/empty" in dirs_now
    m = tree.marshal()
    assert "./a\\040copy " in m and "./moved/d " in m
    assert make_tree(m, store=store, trusted_normalized=True).marshal() == m


def test_plain_marshal_does_not_keep_directories_loaded(store):
    files = {f"d{i}/f": b"x" for i in range(10)}
    tree = make_tree(build_manifest(store, files), store=store)
    tree.marshal()
    assert loaded_dirs(tree) == set()
    tree.listdir("d3")
    tree.marshal()
    assert loaded_dirs(tree) == {"", "d3"}


def test_debug_lock_checks_refuse_changes_without_the_writer_lock(basic):
    # The test suite runs with DAVCOLL_DEBUG_LOCKS=1 (conftest.py): a change
    # set that records an operation or an undo entry for a tree whose writer
    # lock it does not hold, or an undo while nobody holds it, is a bug.
    from davcoll.collection import Op
    from davcoll.collection.locking import DEBUG, LockOrderError

    tree, _ = basic
    assert DEBUG
    ch = ChangeSet()
    with pytest.raises(LockOrderError):
        ch.record_op(Op("delete", tree, "top.txt", None))
    with pytest.raises(LockOrderError):
        tree.undo([])
    ch.acquire(tree)
    ch.record_op(Op("delete", tree, "top.txt", None))  # fine once held
    ch.release()

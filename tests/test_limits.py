"""Issue 10 §5: limits instead of crashes.

- Nesting: every walk over a tree is iterative, so trees deeper than
  Python's recursion limit (written by other clients) stay readable and
  deletable; creating a path past ``max_depth`` levels is refused up front
  with 409 and a reason.
- Growth: ``max_entries`` and ``max_manifest_bytes`` cap a collection; a
  request that would grow past them answers 507 with a reason and changes
  nothing.
- ``.arvados#collection`` is streamed: its JSON is rendered chunk by chunk,
  never held whole in memory.
"""

from __future__ import annotations

import json
import threading
import tracemalloc
import uuid as uuidlib

import pytest
import requests

from davcoll.collection import ByteBudget, ChangeSet, CollectionTree, Flusher
from davcoll.collection import record as record_mod
from davcoll.collection.errors import LimitExceeded, TooDeep
from davcoll.collection.limits import TreeLimits
from davcoll.collection.changes import compile_batches
from davcoll.manifest import parse_manifest, portable_data_hash, strip_manifest
from davcoll.storage.memory_blocks import MemoryBlockStore
from davclient import NO_CACHE as FRESH, DavClient, hrefs
from tree_helpers import record_json
from server_util import running_server
LOC = "acbd18db4cc2f85cedef654fccc4a4d8+3"  # md5("foo")


# ------------------------------------------------------------------ helpers


def deep_manifest(levels: int, name: str = "d", loc: str = LOC) -> str:
    """One file ``f.txt`` at the bottom of ``levels`` nested folders, plus
    one file per level (so every folder has a stream line)."""
    lines = [f". {loc} 0:3:top.txt\n"]
    path = "."
    for _ in range(levels):
        path += "/" + name
        lines.append(f"{path} {loc} 0:3:f.txt\n")
    return "".join(lines)


def new_tree(text: str = "", limits: TreeLimits | None = None, trusted: bool = True, record=None) -> CollectionTree:
    return CollectionTree(text, store=MemoryBlockStore(), flusher=Flusher(1), budget=ByteBudget(1 << 24),
                          trusted_normalized=trusted, limits=limits, record=record)


def in_small_stack(fn):
    """Run ``fn`` in a thread with a small recursion limit: any walk whose
    Python recursion grows with the tree depth fails there."""
    import sys

    out: list = []
    old = sys.getrecursionlimit()

    def run():
        try:
            out.append(("ok", fn()))
        except BaseException as e:  # noqa: BLE001 - reported below
            out.append(("err", e))

    sys.setrecursionlimit(400)
    try:
        t = threading.Thread(target=run)
        t.start()
        t.join()
    finally:
        sys.setrecursionlimit(old)
    kind, value = out[0]
    if kind == "err":
        raise value
    return value


# ------------------------------------------------------------------ unit: walks are iterative


DEEP = 3000  # far past the 400 frames the walks get in in_small_stack


@pytest.mark.parametrize("trusted", [True, False])
def test_marshal_record_and_walks_of_a_deep_tree_are_iterative(trusted):
    text = deep_manifest(DEEP)
    tree = new_tree(text, limits=TreeLimits(max_depth=10 * DEEP), trusted=trusted)

    def work():
        assert tree.marshal() == text
        rec = json.loads(record_json(tree))
        assert rec["manifest_text"] == text
        files = dict(tree.walk_files(""))
        assert len(files) == DEEP + 1
        ch = ChangeSet()
        tree.copy(ch, "d", "copy")  # _measure, _copy_entry
        tree.mkdir(ch, "x")
        tree.rename(ch, "copy", "x/moved")
        other = new_tree(limits=TreeLimits(max_depth=10 * DEEP))
        och = ChangeSet()
        other.import_entry(och, tree, "d", "imported")  # _measure, _materialize, _from_dir
        assert len(list(other.walk_files(""))) == DEEP
        batches = compile_batches(och.ops_for(other))  # _place_content/_resolve_dir + Manifest.to_text
        assert parse_manifest(batches[0][1]).get("imported/" + "/".join(["d"] * (DEEP - 1)) + "/f.txt")
        tree.remove(ch, "x")
        ch.rollback()
        ch.release()
        och.release()
        return tree.marshal()

    assert in_small_stack(work) == text


def test_manifest_module_walks_are_iterative():
    text = deep_manifest(DEEP)

    def work():
        m = parse_manifest(text)
        assert m.to_text() == text
        assert len(list(m.files())) == DEEP + 1
        return m.portable_data_hash()

    assert in_small_stack(work) == portable_data_hash(text)


def test_catalog_and_replace_files_handle_a_deep_tree(tmp_path):
    from davcoll.storage.local_catalog import LocalCatalog

    text = deep_manifest(DEEP)
    cat = LocalCatalog(tmp_path / "cat")

    def work():
        rec = cat.create("deep", text)
        assert cat.get(rec.uuid).manifest_text == text
        # replace_files copying the deep folder (replace_files._deep_copy)
        cat.update(rec.uuid, replace_files={"/copy": "current/d"})
        got = parse_manifest(cat.get(rec.uuid).manifest_text)
        return got.get("copy/" + "/".join(["d"] * (DEEP - 1)) + "/f.txt")

    try:
        assert in_small_stack(work)
    finally:
        cat.close()


def test_fake_cluster_renders_a_deep_tree():
    from davcoll.testing import fake_arvados

    text = deep_manifest(DEEP)
    root = parse_manifest(text).root
    assert in_small_stack(lambda: fake_arvados.render_go_layout(fake_arvados._strip_tree(root))) == text


# ------------------------------------------------------------------ unit: depth and caps


def test_depth_limit_counts_path_components():
    tree = new_tree(limits=TreeLimits(max_depth=3))
    ch = ChangeSet()
    tree.mkdir(ch, "a")
    tree.mkdir(ch, "a/b")
    tree.put_file(ch, "a/b/f", ())
    tree.mkdir(ch, "a/b/c")
    with pytest.raises(TooDeep, match="4 levels deep; the limit is 3"):
        tree.mkdir(ch, "a/b/c/d")
    with pytest.raises(TooDeep):
        tree.put_file(ch, "a/b/c/f", ())
    # A copy or move counts the depth of the subtree it brings along.
    tree.mkdir(ch, "z")
    with pytest.raises(TooDeep):
        tree.copy(ch, "a", "z/a")
    tree.copy(ch, "a/b", "z/b")
    with pytest.raises(TooDeep):
        tree.rename(ch, "a", "z/a")
    tree.rename(ch, "a/b/f", "z/f")  # not deeper than allowed: fine
    ch.release()


def test_deeper_tree_written_elsewhere_stays_usable():
    tree = new_tree(deep_manifest(10), limits=TreeLimits(max_depth=4))
    ch = ChangeSet()
    deep = "/".join(["d"] * 10)
    assert tree.snapshot(deep + "/f.txt")
    tree.put_file(ch, deep + "/f.txt", ())  # overwrite: creates nothing deeper
    with pytest.raises(TooDeep):
        tree.put_file(ch, deep + "/new.txt", ())
    tree.rename(ch, "d/d/d/d", "shallow")  # moving up is fine
    tree.remove(ch, "d")
    ch.release()


def test_entry_cap_refuses_growth_and_changes_nothing():
    tree = new_tree(limits=TreeLimits(max_entries=10))
    ch = ChangeSet()
    tree.mkdir(ch, "a")
    for i in range(4):
        tree.put_file(ch, f"a/f{i}", ())
    assert tree.entries == 5
    before = tree.marshal()
    tree.copy(ch, "a", "b")  # 5 + 5 = 10: allowed
    with pytest.raises(LimitExceeded, match="would hold 15 files and folders; the limit is 10"):
        tree.copy(ch, "a", "c")
    assert tree.entries == 10
    assert "./b" in tree.marshal() and "./c" not in tree.marshal()
    tree.remove(ch, "b")
    assert tree.entries == 5
    assert tree.marshal() == before
    ch.rollback()
    assert tree.entries == 0
    ch.release()


def test_counts_at_load_and_after_undo():
    text = deep_manifest(5)
    tree = new_tree(text)
    assert tree.entries == 6 + 5  # files + folders
    assert tree.manifest_bytes == len(text)
    ch = ChangeSet()
    tree.copy(ch, "d", "e")
    assert tree.entries == 11 + 10
    ch.rollback()
    assert (tree.entries, tree.manifest_bytes) == (11, len(text))
    ch.release()


def test_manifest_size_estimate_tracks_the_real_size():
    text = deep_manifest(50)
    tree = new_tree(text)
    ch = ChangeSet()
    for i in range(3):
        tree.copy(ch, "d", f"copy{i}")
    real = len(tree.marshal())
    assert 0.7 * real <= tree.manifest_bytes <= 1.5 * real, (real, tree.manifest_bytes)
    ch.release()


def test_record_stream_is_the_same_json_and_pdh(monkeypatch):
    monkeypatch.setattr(record_mod, "_CHUNK", 97)  # many chunk boundaries, mid-line too
    signed = "acbd18db4cc2f85cedef654fccc4a4d8+3+A" + "f" * 40 + "@" + "6" * 8
    text = deep_manifest(40, name="s p\u00e9c:\\x", loc=signed).replace("s p\u00e9c:\\x", "s\\040p\u00e9c\\072\\134x")
    parse_manifest(text)
    tree = new_tree(text, record={"uuid": "zzzzz-4zz18-000000000000000", "name": "n \"q\"", "properties": {"k": "\u2028"}})
    rec = json.loads(record_json(tree))
    assert rec["manifest_text"] == text
    assert rec["portable_data_hash"] == portable_data_hash(text)
    expected = {"uuid": "zzzzz-4zz18-000000000000000", "name": "n \"q\"", "portable_data_hash": portable_data_hash(text),
                "manifest_text": text, "properties": {"k": "\u2028"}, "modified_at": None, "version": None}
    assert record_json(tree) == (json.dumps(expected, indent=2, sort_keys=True) + "\n").encode()
    body = tree.record_body()
    assert body.length == len(record_json(tree))


def test_big_record_is_streamed_not_built_whole():
    """A 200,000-file record: the text is ~8 MB; streaming it allocates a
    small fraction of that at any moment."""
    n_dirs, per_dir = 2000, 100
    lines = []
    for d in range(n_dirs):
        toks = " ".join(f"{3 * i}:3:file-{i:05d}.dat" for i in range(per_dir))
        lines.append(f"./dir-{d:05d} {LOC.replace('+3', '+' + str(3 * per_dir))} {toks}\n")
    text = "".join(lines)
    tree = new_tree(text)
    tracemalloc.start()
    try:
        body = tree.record_body()
        total = 0
        for chunk in body:
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == body.length > len(text)
    assert peak < len(text) / 4, (peak, len(text))


# ------------------------------------------------------------------ server


def new_coll(srv) -> str:
    name = "l-" + uuidlib.uuid4().hex[:10]
    assert DavClient(srv.url).mkcol(name + "/").status_code == 201
    return name


def req(srv, method: str, path: str, dest: str | None = None, **kw) -> requests.Response:
    """One request to any of this module's servers; deep trees get a long timeout."""
    headers = dict(kw.pop("headers", {}))
    if dest is not None:
        headers["Destination"] = dest
    return DavClient(srv.url, timeout=120).req(method, path, headers=headers, **kw)


def stored_text(srv, coll: str) -> str:
    cat = srv.app.backend.catalog_
    return cat.get(cat.find_by_name(coll).uuid).manifest_text


def write_behind_our_back(srv, coll: str, text: str) -> None:
    """Replace a collection's manifest through the catalog (another client)."""
    srv.app.backend.blocks.put(b"foo")
    cat = srv.app.backend.catalog_
    cat.update(cat.find_by_name(coll).uuid, manifest_text=text)


def test_mkcol_chain_refused_past_max_depth(srv):
    coll = new_coll(srv)
    path = coll
    for level in range(1, 257):
        path += "/d"
        r = req(srv, "MKCOL", path + "/")
        assert r.status_code == 201, (level, r.status_code, r.text[:200])
    before = stored_text(srv, coll)
    r = req(srv, "MKCOL", path + "/d/")
    assert r.status_code == 409, r.text[:300]
    assert "257 levels deep; the limit is 256" in r.text
    r = req(srv, "PUT", path + "/f.txt", data=b"ok")  # depth 257 as a file
    assert r.status_code == 409, r.text[:300]
    assert req(srv, "MKCOL", path + "/d/x/y/").status_code == 409
    assert stored_text(srv, coll) == before
    assert req(srv, "PROPFIND", path + "/d/", headers={"Depth": "0", **FRESH}).status_code == 404
    assert req(srv, "PUT", path[:-2] + "/f.txt", data=b"ok").status_code == 201  # depth 256
    assert "f.txt" in stored_text(srv, coll)


def test_tree_2000_deep_written_elsewhere_stays_readable(srv):
    coll = new_coll(srv)
    levels = 2000
    text = deep_manifest(levels)
    write_behind_our_back(srv, coll, text)
    bottom = coll + "/" + "/".join(["d"] * levels)
    r = req(srv, "PROPFIND", bottom + "/", headers={"Depth": "1", **FRESH})
    assert r.status_code == 207, r.text[:300]
    assert b"f.txt" in r.content
    r = req(srv, "GET", bottom + "/f.txt", headers=FRESH)
    assert r.status_code == 200 and r.content == b"foo"
    r = req(srv, "GET", coll + "/.arvados%23collection", headers=FRESH)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["manifest_text"] == text
    assert int(r.headers["Content-Length"]) == len(r.content)
    # A new folder down there is past max_depth: refused, not a 500.
    assert req(srv, "MKCOL", bottom + "/new/").status_code == 409
    r = req(srv, "DELETE", coll + "/d/")
    assert r.status_code == 204, r.text[:300]
    assert stored_text(srv, coll) == f". {LOC} 0:3:top.txt\n"


def test_cross_collection_copy_of_a_490_deep_folder(srv, tmp_path):
    src, dst = new_coll(srv), new_coll(srv)
    write_behind_our_back(srv, src, deep_manifest(490))
    before = stored_text(srv, dst)
    r = req(srv, "COPY", src + "/d/", dest=dst + "/d/")
    assert r.status_code == 409, r.text[:300]
    assert "levels deep" in r.text
    assert stored_text(srv, dst) == before
    r = req(srv, "MOVE", src + "/d/", dest=dst + "/d/")
    assert r.status_code == 409, r.text[:300]
    assert stored_text(srv, src) == deep_manifest(490)
    # With a higher limit the copy works.
    with running_server(tmp_path / "data", anonymous="write", max_depth=1000) as big:
        a, b = new_coll(big), new_coll(big)
        write_behind_our_back(big, a, deep_manifest(490))
        r = req(big, "COPY", a + "/d/", dest=b + "/d/")
        assert r.status_code == 201, r.text[:300]
        assert req(big, "GET", b + "/" + "/".join(["d"] * 490) + "/f.txt", headers=FRESH).content == b"foo"
        r = req(big, "MOVE", a + "/d/", dest=b + "/moved/")
        assert r.status_code == 201, r.text[:300]
        assert stored_text(big, a) == f". {LOC} 0:3:top.txt\n"


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("capped") / "data", anonymous="write", max_entries=100) as s:
        yield s


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("small") / "data", anonymous="write", max_manifest_bytes=5000) as s:
        yield s


def double_until_refused(srv, coll: str) -> requests.Response:
    """COPY d -> tmp, MOVE tmp -> d/copyN: the folder doubles each round."""
    for i in range(40):
        r = req(srv, "COPY", coll + "/d/", dest=coll + "/tmp/")
        if r.status_code != 201:
            return r
        r = req(srv, "MOVE", coll + "/tmp/", dest=coll + f"/d/copy{i}/")
        assert r.status_code == 201, r.text[:300]
    raise AssertionError("never refused")


def test_copy_doubling_stops_at_the_entry_cap(capped):
    coll = new_coll(capped)
    assert req(capped, "MKCOL", coll + "/d/").status_code == 201
    for i in range(3):
        assert req(capped, "PUT", coll + f"/d/f{i}", data=b"x").status_code == 201
    r = double_until_refused(capped, coll)
    before = stored_text(capped, coll)
    assert r.status_code == 507, r.text[:300]
    assert "limit is 100" in r.text
    assert stored_text(capped, coll) == before
    listed = hrefs(req(capped, "PROPFIND", coll + "/", headers={"Depth": "1", **FRESH}))
    assert not [h for h in listed if h.rstrip("/").endswith("/tmp")]
    # Freeing space makes room again.
    assert req(capped, "DELETE", coll + "/d/copy0/").status_code == 204
    assert req(capped, "PUT", coll + "/d/after", data=b"x").status_code == 201


def test_copy_doubling_stops_at_the_manifest_size_cap(small):
    coll = new_coll(small)
    assert req(small, "MKCOL", coll + "/d/").status_code == 201
    # Few entries, long names: the size cap is what stops the growth.
    assert req(small, "PUT", coll + "/d/" + "n" * 200, data=b"x").status_code == 201
    r = double_until_refused(small, coll)
    before = stored_text(small, coll)
    assert r.status_code == 507, r.text[:300]
    assert "manifest would grow to about" in r.text and "the limit is 5000" in r.text
    assert len(before) <= 5000
    assert stored_text(small, coll) == before
    # A cross-collection copy is capped too, and changes nothing.
    other = new_coll(small)
    assert req(small, "PUT", other + "/" + "m" * 200, data=b"x").status_code == 201
    before = stored_text(small, other)
    for i in range(40):
        r = req(small, "COPY", coll + "/d/", dest=other + f"/d{i}/")
        if r.status_code != 201:
            break
        before = stored_text(small, other)
    assert r.status_code == 507, r.text[:300]
    assert stored_text(small, other) == before


# ------------------------------------------------------------------ Arvados backend (the in-repo fake)


def test_arvados_backend_deep_tree_and_limits(tmp_path):
    from fake_cluster import arvados_server, fake_cluster, live_collection

    with fake_cluster(keepstores=1, seed=7) as fake:
        token = fake.add_user("deep")
        with arvados_server(fake, tmp_path / "data", anonymous="none", max_entries=60) as srv:
            dav = DavClient(srv.url, token=token, timeout=120)

            def call(method, path, dest=None, **kw):
                headers = dict(kw.pop("headers", {}))
                if dest is not None:
                    headers["Destination"] = dest
                return dav.req(method, path, headers=headers, **kw)

            a, b = "deep-a", "deep-b"
            for c in (a, b):
                assert call("MKCOL", c + "/").status_code == 201
            fake.store_block(b"foo")
            text = deep_manifest(1200)
            fake.set_manifest_raw(live_collection(fake, a).uuid, text)
            bottom = a + "/" + "/".join(["d"] * 1200)
            assert call("PROPFIND", bottom + "/", headers={"Depth": "1", **FRESH}).status_code == 207
            assert call("GET", bottom + "/f.txt", headers=FRESH).content == b"foo"
            r = call("GET", a + "/.arvados%23collection", headers=FRESH)
            assert r.status_code == 200 and strip_manifest(r.json()["manifest_text"]) == text  # signed locators
            # Cross-collection COPY of a folder deeper than max_depth: 409, nothing changed.
            before = fake.stored_manifest(live_collection(fake, b).uuid)
            r = call("COPY", a + "/d/", dest=b + "/d/")
            assert r.status_code == 409, r.text[:300]
            assert fake.stored_manifest(live_collection(fake, b).uuid) == before
            # Past max_entries (60): a 50-entry copy fits once, not twice.
            r = call("COPY", a + "/" + "/".join(["d"] * 1175) + "/", dest=b + "/x/")
            assert r.status_code == 201, r.text[:300]
            before = fake.stored_manifest(live_collection(fake, b).uuid)
            r = call("COPY", b + "/x/", dest=b + "/y/")
            assert r.status_code == 507, r.text[:300]
            assert "the limit is 60" in r.text
            assert fake.stored_manifest(live_collection(fake, b).uuid) == before
            assert call("DELETE", a + "/d/").status_code == 204

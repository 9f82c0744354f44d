"""The embedded SQLite catalog and token store."""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import re
import sqlite3
import threading
from pathlib import Path

import pytest

from conftest import load_vectors
from davcoll.manifest import Dir, Manifest, normalize_manifest, parse_manifest, portable_data_hash
from davcoll.storage.catalog import BadRequest, Conflict, InvalidManifest, NotFound
from davcoll.storage.local_catalog import LocalCatalog, db_path_for
from davcoll.storage.local_catalog import lines as catalog_lines
from davcoll.storage.local_catalog.lines import render_dir
from davcoll.storage.local_catalog.schema import MIGRATIONS
from davcoll.storage.local_catalog.writer import VersionWriter
from davcoll.storage.local_tokens import LocalTokenStore
from davcoll.storage.replace_files import apply_to_tree, plan_replace_files

FOO = "acbd18db4cc2f85cedef654fccc4a4d8+3"  # "foo"
BAR = "37b51d194a7513e45b56f6524f2d51f2+3"  # "bar"
EMPTY = "d41d8cd98f00b204e9800998ecf8427e+0"
SIG = "+A" + "0" * 40 + "@7fffffff"
BASE = f". {FOO} {BAR} 0:3:a 3:3:b\n./d {FOO} 0:3:x\n./d/e {BAR} 0:3:y\n"
TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z")


@pytest.fixture
def cat(tmp_path: Path):
    c = LocalCatalog(db_path_for(tmp_path))
    yield c
    c.close()


def text_of(cat: LocalCatalog, uuid: str) -> str:
    return cat.get(uuid).manifest_text or ""


def entry_rows(cat: LocalCatalog) -> int:
    """Rows of the entry history (schema 2: one per entry per version range)."""
    with sqlite3.connect(cat.path) as conn:
        return conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]


def dir_rows(cat: LocalCatalog) -> tuple:
    """Everything the tree is stored in: a failed update must change none of it.

    (Schema 1 counted its one ``dirs`` table here; schema 2 has the entry
    history plus the line cache, compared row for row.)
    """
    with sqlite3.connect(cat.path) as conn:
        return (
            conn.execute("SELECT * FROM entries ORDER BY cid, parent, name, v_from").fetchall(),
            conn.execute("SELECT * FROM dir_lines ORDER BY cid, path").fetchall(),
        )


def check_line_cache(cat: LocalCatalog, uuid: str) -> None:
    """The line cache has one row per current directory (root included), and
    every line it holds equals a fresh rendering from the entry rows."""
    with sqlite3.connect(cat.path) as conn:
        (cid,) = conn.execute("SELECT id FROM collections WHERE uuid = ?", (uuid,)).fetchone()
        cached = dict(conn.execute("SELECT path, line FROM dir_lines WHERE cid = ?", (cid,)))
        dirs = {
            f"{p}/{n}" if p else n
            for p, n in conn.execute("SELECT parent, name FROM entries WHERE cid = ? AND v_to IS NULL AND kind = 'd'", (cid,))
        }
        assert set(cached) == dirs | {""}
        for path, line in cached.items():
            if line is not None:
                assert line == render_dir(conn, cid, path), path


# --- records, round trips, validation ---------------------------------------


def test_create_get_round_trip_normalizes_and_strips_signatures(cat):
    messy = f"./d {FOO}{SIG} 0:3:x\n. {BAR} {FOO}{SIG} 3:3:a 0:3:b\n./d/e {BAR} 0:3:y\n"
    rec = cat.create("one", messy, {"k": "v"})
    assert re.fullmatch(r"dvcol-4zz18-[a-z0-9]{15}", rec.uuid)
    assert TS_RE.fullmatch(rec.created_at) and rec.modified_at == rec.created_at
    assert rec.version == 1 and rec.properties == {"k": "v"} and rec.manifest_text is None
    got = cat.get(rec.uuid)
    assert got.manifest_text == BASE == normalize_manifest(messy.replace(SIG, ""))
    assert got.portable_data_hash == portable_data_hash(BASE) == rec.portable_data_hash
    assert "+A" not in got.manifest_text
    assert cat.get(rec.uuid, with_manifest=False).manifest_text is None


def test_manifest_vectors_give_the_sdk_pdh(cat):
    """Every vector manifest we accept is stored normalized with the SDK's PDH.

    ``high_octal_escape`` is a documented exception (spec 2.5): the SDK
    decodes octal escapes per character, davcoll as UTF-8 bytes.
    """
    checked = 0
    for case in load_vectors("manifests.json")["cases"]:
        if "pdh" not in case or case["id"] == "high_octal_escape":
            continue
        try:
            parse_manifest(case["input_manifest"])
        except ValueError:
            continue  # lenient_* / server-rejected inputs: the parser's tests cover them
        rec = cat.create(case["id"], case["input_manifest"])
        got = cat.get(rec.uuid)
        assert got.portable_data_hash == case["pdh"], case["id"]
        assert "+A" not in got.manifest_text
        checked += 1
    assert checked >= 40


@pytest.mark.parametrize("bad", ["garbage\n", f". {FOO} 0:3:a", f". {FOO} 0:9:a\n", f"./a {FOO} 0:3:b\n. {FOO} 0:3:a\n"])
def test_invalid_manifest_rejected_and_nothing_created(cat, bad):
    with pytest.raises(InvalidManifest):
        cat.create("x", bad)
    assert cat.list() == []
    rec = cat.create("x", BASE)
    with pytest.raises(InvalidManifest):
        cat.update(rec.uuid, manifest_text=bad)
    with pytest.raises(InvalidManifest):
        cat.update(rec.uuid, replace_files={"/n": "manifest_text/a"}, manifest_text=bad)
    assert cat.get(rec.uuid).version == 1 and text_of(cat, rec.uuid) == BASE


def test_names_unique_among_live_collections(cat):
    a = cat.create("a")
    b = cat.create("b")
    with pytest.raises(Conflict):
        cat.create("a")
    with pytest.raises(Conflict):
        cat.rename(b.uuid, "a")
    with pytest.raises(Conflict):
        cat.update(b.uuid, name="a", replace_files={"/f": "manifest_text/f"}, manifest_text=f". {FOO} 0:3:f\n")
    assert text_of(cat, b.uuid) == "" and cat.get(b.uuid).version == 1  # nothing of the failed update stuck
    assert [r.name for r in cat.list()] == ["a", "b"]
    assert cat.rename(b.uuid, "c").name == "c"
    assert cat.find_by_name("c").uuid == b.uuid and cat.find_by_name("b") is None
    cat.trash(a.uuid)
    assert [r.name for r in cat.list()] == ["c"]
    assert cat.create("a").uuid != a.uuid  # trash freed the name
    with pytest.raises(Conflict):
        cat.untrash(a.uuid)


def test_trashed_collection_is_gone(cat):
    rec = cat.create("t", BASE)
    pdh = cat.get(rec.uuid).portable_data_hash
    cat.trash(rec.uuid)
    for call in (
        lambda: cat.get(rec.uuid),
        lambda: cat.update(rec.uuid, name="u"),
        lambda: cat.revision(rec.uuid),
        lambda: cat.get(pdh),
    ):
        with pytest.raises(NotFound):
            call()
    assert cat.find_by_name("t") is None
    assert cat.get(rec.uuid, include_trash=True).is_trashed
    assert cat.untrash(rec.uuid).name == "t"
    assert text_of(cat, rec.uuid) == BASE


def test_not_found_and_bad_arguments(cat):
    for key in ("dvcol-4zz18-000000000000000", "nonsense", FOO):
        with pytest.raises(NotFound):
            cat.get(key)
    with pytest.raises(NotFound):
        cat.update("dvcol-4zz18-000000000000000", name="x")
    with pytest.raises(NotFound):
        cat.trash("dvcol-4zz18-000000000000000")
    rec = cat.create("p")
    with pytest.raises(BadRequest):
        cat.update(rec.uuid, properties=["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LocalCatalog(cat.path, cluster_id="toolong")


def test_properties_name_and_revision(cat):
    rec = cat.create("p", BASE, {"a": 1})
    res = cat.update(rec.uuid, properties={"b": [1, 2]}, name="q", base_version=1)
    assert res.applied_on_base and res.record.version == 2
    assert res.record.properties == {"b": [1, 2]} and res.record.name == "q"
    assert res.record.portable_data_hash == portable_data_hash(BASE)  # tree unchanged
    got = cat.get(rec.uuid)
    assert got.properties == {"b": [1, 2]} and got.name == "q" and got.manifest_text == BASE
    assert cat.revision(rec.uuid) == (got.modified_at, 2)
    assert cat.get_version(rec.uuid, 1).name == "p" and cat.get_version(rec.uuid, 1).properties == {"a": 1}


def test_reopen_keeps_everything(tmp_path):
    c1 = LocalCatalog(tmp_path / "c.sqlite3")
    rec = c1.create("keep", BASE)
    c1.update(rec.uuid, replace_files={"/d": ""})
    c1.close()
    c2 = LocalCatalog(tmp_path / "c.sqlite3")
    assert c2.get(rec.uuid).manifest_text == f". {FOO} {BAR} 0:3:a 3:3:b\n"
    assert c2.get_version(rec.uuid, 1).manifest_text == BASE
    c2.close()


# --- versions and PDH lookups -----------------------------------------------


def test_every_update_is_a_readable_version(cat):
    rec = cat.create("v", BASE)
    texts = {1: BASE}
    steps = [
        {"/a": ""},
        {"/d/e/z": "current/b"},
        {"/d": ""},
        {"/n/m": "current/b"},
    ]
    for i, rf in enumerate(steps, 2):
        res = cat.update(rec.uuid, replace_files=rf, base_version=i - 1)
        assert res.record.version == i and res.applied_on_base
        texts[i] = text_of(cat, rec.uuid)
    texts[6] = BASE
    cat.update(rec.uuid, manifest_text=BASE)  # whole-tree replacement is a version too
    assert texts[6] == text_of(cat, rec.uuid)
    for v, t in texts.items():
        old = cat.get_version(rec.uuid, v)
        assert old.manifest_text == t and old.version == v
        assert old.portable_data_hash == portable_data_hash(t)
    assert len(set(texts.values())) == 5
    with pytest.raises(NotFound):
        cat.get_version(rec.uuid, 99)


def test_get_by_pdh_finds_old_and_current_versions(cat):
    rec = cat.create("h", BASE)
    v1 = cat.get(rec.uuid)
    cat.update(rec.uuid, replace_files={"/a": ""})
    by_old = cat.get(v1.portable_data_hash)
    assert by_old.uuid == rec.uuid and by_old.version == 1 and by_old.manifest_text == BASE
    # the current version's PDH was never read: a lookup miss computes it
    now = portable_data_hash(f". {BAR} 0:3:b\n./d {FOO} 0:3:x\n./d/e {BAR} 0:3:y\n")
    assert cat.get(now).version == 2
    with pytest.raises(NotFound):
        cat.get("0" * 32 + "+5")


def test_applied_on_base_false_after_a_concurrent_commit(cat):
    rec = cat.create("b", BASE)
    cat.update(rec.uuid, replace_files={"/a": ""})  # someone else's change
    res = cat.update(rec.uuid, replace_files={"/b": ""}, base_version=1)
    assert not res.applied_on_base and res.record.version == 3
    assert not cat.update(rec.uuid, name="z").applied_on_base  # no base given


def test_update_pdh_only_when_cheap(tmp_path):
    c = LocalCatalog(tmp_path / "c.sqlite3", cheap_pdh_chars=10)
    rec = c.create("big", BASE)
    res = c.update(rec.uuid, replace_files={"/a": ""})
    assert res.record.portable_data_hash is None
    assert c.get(rec.uuid, with_manifest=False).portable_data_hash is None
    full = c.get(rec.uuid)
    assert full.portable_data_hash == portable_data_hash(full.manifest_text)
    assert c.get(rec.uuid, with_manifest=False).portable_data_hash == full.portable_data_hash  # cached
    c.close()


# --- replace_files through the catalog --------------------------------------


def rf_update(cat, uuid, rf, manifest_text=None):
    return cat.update(uuid, replace_files=rf, manifest_text=manifest_text)


def test_replace_files_rules(cat):
    rec = cat.create("r", BASE)
    u = rec.uuid
    rf_update(cat, u, {"/a": "current/b", "/b": "current/a"})  # swap
    assert text_of(cat, u) == f". {BAR} {FOO} 0:3:a 3:3:b\n./d {FOO} 0:3:x\n./d/e {BAR} 0:3:y\n"
    rf_update(cat, u, {"/x/y/z": "current/d", "/d": ""})  # move a dir, mkdir -p
    assert text_of(cat, u) == f". {BAR} {FOO} 0:3:a 3:3:b\n./x/y/z {FOO} 0:3:x\n./x/y/z/e {BAR} 0:3:y\n"
    rf_update(cat, u, {"/x/y/z/e/new": "manifest_text/f"}, f". {FOO} 0:3:f\n")
    assert text_of(cat, u) == f". {BAR} {FOO} 0:3:a 3:3:b\n./x/y/z {FOO} 0:3:x\n./x/y/z/e {FOO} {BAR} 0:3:new 3:3:y\n"
    rf_update(cat, u, {"/x": ""})  # recursive delete
    assert text_of(cat, u) == f". {BAR} {FOO} 0:3:a 3:3:b\n"
    rf_update(cat, u, {"/gone": "", "/a/not/here": ""})  # missing targets: no-op
    assert text_of(cat, u) == f". {BAR} {FOO} 0:3:a 3:3:b\n"
    rf_update(cat, u, {"/": "manifest_text/"}, BASE)
    assert text_of(cat, u) == BASE
    rf_update(cat, u, {"/": ""})
    assert text_of(cat, u) == ""


@pytest.mark.parametrize(
    "rf, mt, exc",
    [
        ({"/a": "current/b", "/a/c": ""}, None, BadRequest),  # ancestor with content
        ({"/n": "current/b"}, f". {FOO} 0:3:f\n", BadRequest),  # unused manifest_text
        ({"a": ""}, None, BadRequest),
        ({"/a/": ""}, None, BadRequest),
        ({"/a//b": ""}, None, BadRequest),
        ({"/d/../a": ""}, None, BadRequest),
        ({"/n": "current/missing"}, None, BadRequest),
        ({"/d": "", "/n": "current/missing"}, None, BadRequest),
        ({"/a/sub": "current/b"}, None, BadRequest),  # parent is a file
        ({"/d": "", "/m": "manifest_text/nope"}, f". {FOO} 0:3:f\n", BadRequest),  # fails after a delete
        ({"/d": "", "/m": f"{'0' * 32}+9/x"}, None, NotFound),
        ({"/": "manifest_text/f"}, f". {FOO} 0:3:f\n", BadRequest),
        ({"/x": "bogus/a"}, None, BadRequest),
    ],
)
def test_bad_replace_files_change_nothing(cat, rf, mt, exc):
    rec = cat.create("r", BASE)
    rows = dir_rows(cat)
    with pytest.raises(exc):
        rf_update(cat, rec.uuid, rf, mt)
    assert text_of(cat, rec.uuid) == BASE
    assert cat.revision(rec.uuid)[1] == 1
    assert dir_rows(cat) == rows
    with pytest.raises(NotFound):
        cat.get_version(rec.uuid, 2)


def test_failure_inside_the_transaction_rolls_back(cat, monkeypatch):
    rec = cat.create("r", BASE)
    rows = dir_rows(cat)

    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(VersionWriter, "finish", boom)
    with pytest.raises(RuntimeError):
        rf_update(cat, rec.uuid, {"/d": "", "/z": "current/a"}, None)
    monkeypatch.undo()
    assert text_of(cat, rec.uuid) == BASE and cat.revision(rec.uuid)[1] == 1 and dir_rows(cat) == rows
    rf_update(cat, rec.uuid, {"/z": "current/a"})  # the connection is usable afterwards
    assert cat.revision(rec.uuid)[1] == 2


def test_empty_directory_markers(cat):
    u = cat.create("m", BASE).uuid
    marker = f"{EMPTY} 0:0:\\056\n"
    rf_update(cat, u, {"/d/e/y": ""})
    assert text_of(cat, u) == f". {FOO} {BAR} 0:3:a 3:3:b\n./d {FOO} 0:3:x\n./d/e {marker}"
    rf_update(cat, u, {"/d/x": ""})  # d keeps a subdirectory: no marker of its own
    assert text_of(cat, u) == f". {FOO} {BAR} 0:3:a 3:3:b\n./d/e {marker}"
    rf_update(cat, u, {"/d/e": ""})  # now d is empty
    assert text_of(cat, u) == f". {FOO} {BAR} 0:3:a 3:3:b\n./d {marker}"
    rf_update(cat, u, {"/d/f": "current/a"})  # a file replaces the marker
    assert text_of(cat, u) == f". {FOO} {BAR} 0:3:a 3:3:b\n./d {FOO} 0:3:f\n"
    rf_update(cat, u, {"/a": "", "/b": ""})  # the root never gets a marker
    assert text_of(cat, u) == f"./d {FOO} 0:3:f\n"
    rf_update(cat, u, {"/mk": "manifest_text/mk"}, f"./mk {marker}")  # MKCOL
    assert text_of(cat, u) == f"./d {FOO} 0:3:f\n./mk {marker}"
    rf_update(cat, u, {"/copy": "current/"})  # the root copied below itself
    assert text_of(cat, u) == f"./copy/d {FOO} 0:3:f\n./copy/mk {marker}./d {FOO} 0:3:f\n./mk {marker}"
    rf_update(cat, u, {"/": ""})
    rf_update(cat, u, {"/empty": "current/"})  # an empty root placed below is an empty dir
    assert text_of(cat, u) == f"./empty {marker}"


def test_subtree_ranges_respect_neighbour_names(cat):
    """Names sorting right around '/' (0x2f) and '0' (0x30) stay untouched."""
    names = ["a", "a b", "a-b", "a.b", "a0", "a:b", "aZ", "a\u00e9"]
    mt = "".join(f"./{n.replace(' ', chr(92) + '040').replace(':', chr(92) + '072')} {FOO} 0:3:f\n" for n in names)
    mt += f"./a/inner {FOO} 0:3:g\n"
    u = cat.create("n", mt).uuid
    rf_update(cat, u, {"/a": ""})
    left = Manifest(parse_manifest(text_of(cat, u)).root)
    assert sorted(left.root) == sorted(names[1:])
    rf_update(cat, u, {"/moved": "current/a-b", "/a-b": ""})
    assert "a-b" not in parse_manifest(text_of(cat, u)).root
    assert text_of(cat, u) == normalize_manifest(text_of(cat, u))


def test_pdh_source_copies_between_collections(cat):
    src = cat.create("src", f"./s {BAR} 0:3:f\n./s/t {FOO} 0:3:g\n")
    pdh = cat.get(src.uuid).portable_data_hash
    dst = cat.create("dst", BASE)
    rf_update(cat, dst.uuid, {"/c1": f"{pdh}/s/f", "/c2": f"{pdh}/s"})
    assert text_of(cat, dst.uuid) == (
        f". {FOO} {BAR} 0:3:a 3:3:b 3:3:c1\n./c2 {BAR} 0:3:f\n./c2/t {FOO} 0:3:g\n./d {FOO} 0:3:x\n./d/e {BAR} 0:3:y\n"
    )
    with pytest.raises(BadRequest):
        rf_update(cat, dst.uuid, {"/c3": f"{pdh}/nope"})


# --- randomized agreement with the in-memory reference ----------------------

NAMES = ["a", "b", "a-b", "a b", "a0", "é", "c:d"]
BLOCKS = [FOO, BAR, "8d777f385d3dfec8815d20f7496026dc+4", EMPTY]


def random_tree(rng: random.Random, depth: int = 0) -> Dir:
    d = Dir()
    for name in rng.sample(NAMES, rng.randint(0, 4)):
        if depth < 2 and rng.random() < 0.4:
            d[name] = random_tree(rng, depth + 1)
        else:
            loc = rng.choice(BLOCKS)
            size = int(loc.split("+")[1])
            d[name] = ((loc, 0, size),) if size else ()
    return d


def all_paths(d: Dir, prefix: str = "") -> list[str]:
    out = []
    for name, v in d.items():
        p = f"{prefix}/{name}"
        out.append(p)
        if type(v) is not tuple:
            out.extend(all_paths(v, p))
    return out


def random_replace_files(rng, current: Dir, new: Dir, pdh: str, other: Dir) -> dict[str, str]:
    rf: dict[str, str] = {}
    for _ in range(rng.randint(1, 3)):
        pool = all_paths(current) + ["/" + rng.choice(NAMES) + "/" + rng.choice(NAMES), "/" + rng.choice(NAMES)]
        target = rng.choice(pool + ["/"] if rng.random() < 0.05 else pool)
        kind = rng.random()
        if kind < 0.3:
            src = ""
        elif kind < 0.6:
            src = "current" + rng.choice(all_paths(current) + ["/", "/missing"])
        elif kind < 0.85:
            src = "manifest_text" + rng.choice(all_paths(new) + ["/"])
        else:
            src = pdh + rng.choice(all_paths(other) + ["/"])
        rf[target] = src
    return rf


def test_random_updates_agree_with_apply_to_tree(tmp_path):
    rng = random.Random(1234)
    cat = LocalCatalog(tmp_path / "c.sqlite3", synchronous="OFF", cheap_pdh_chars=200)
    other = random_tree(rng)
    other_rec = cat.create("other", Manifest(other).to_text())
    other_pdh = cat.get(other_rec.uuid).portable_data_hash
    current = random_tree(rng)
    uuid = cat.create("main", Manifest(current).to_text()).uuid
    history = {1: Manifest(current).to_text()}
    outcomes = {"ok": 0, "BadRequest": 0}

    def load(pdh: str) -> Dir:
        if pdh != other_pdh:
            raise NotFound(pdh)
        return other

    for _ in range(300):
        new = random_tree(rng)
        new_text = Manifest(new).to_text()
        if rng.random() < 0.05:  # now and then a whole-tree replacement
            res = cat.update(uuid, manifest_text=new_text)
            assert text_of(cat, uuid) == new_text
            current, history[res.record.version] = new, new_text
            continue
        rf = random_replace_files(rng, current, new, other_pdh, other)
        if not any(s.startswith("manifest_text/") for s in rf.values()):
            new_text = ""
        try:
            ops = plan_replace_files(rf, manifest_text_supplied=bool(new_text))
            expected = apply_to_tree(current, ops, new_content=parse_manifest(new_text).root, load_pdh=load)
        except BadRequest:
            with pytest.raises(BadRequest):
                cat.update(uuid, replace_files=rf, manifest_text=new_text or None)
            outcomes["BadRequest"] += 1
            continue
        res = cat.update(uuid, replace_files=rf, manifest_text=new_text or None)
        check_line_cache(cat, uuid)  # before the read below renders what is stale
        want = Manifest(expected).to_text()
        got = text_of(cat, uuid)
        assert got == want, (rf, new_text)
        if res.record.portable_data_hash is not None:
            assert res.record.portable_data_hash == portable_data_hash(want)
        current = expected
        history[res.record.version] = want
        outcomes["ok"] += 1
    assert outcomes["ok"] > 100 and outcomes["BadRequest"] > 10
    for version in rng.sample(sorted(history), 30):
        assert cat.get_version(uuid, version).manifest_text == history[version]
    check_line_cache(cat, uuid)
    check_line_cache(cat, other_rec.uuid)
    cat.close()


# --- concurrency ------------------------------------------------------------


def put_file(cat: LocalCatalog, uuid: str, path: str, loc: str) -> None:
    name = path.rsplit("/", 1)[1]
    size = loc.split("+")[1]
    cat.update(uuid, replace_files={path: f"manifest_text/{name}"}, manifest_text=f". {loc} 0:{size}:{name}\n")


def put_many(cat: LocalCatalog, uuid: str, who: int, count: int) -> None:
    """Worker ``who``: files of its own, and its version of a shared file."""
    for i in range(count):
        put_file(cat, uuid, f"/p{who}/f{i}", FOO)
        put_file(cat, uuid, "/same", FOO if who % 2 else BAR)


def _process_worker(db: str, uuid: str, who: int, count: int) -> None:
    cat = LocalCatalog(db)
    put_many(cat, uuid, who, count)
    cat.close()


def check_all_present(cat: LocalCatalog, uuid: str, workers: int, count: int) -> Dir:
    root = parse_manifest(text_of(cat, uuid)).root
    for w in range(workers):
        assert sorted(root[f"p{w}"]) == sorted(f"f{i}" for i in range(count))
    assert root["same"] in (((FOO, 0, 3),), ((BAR, 0, 3),))
    assert cat.revision(uuid)[1] == 1 + 2 * workers * count
    return root


def test_threads_never_lose_each_others_changes(cat):
    uuid = cat.create("t", BASE).uuid
    workers, count = 6, 15
    errors: list[BaseException] = []

    def work(who: int) -> None:
        try:
            put_many(cat, uuid, who, count)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    root = check_all_present(cat, uuid, workers, count)
    assert root["d"]["x"] == ((FOO, 0, 3),)  # the original content survived too


def test_processes_never_lose_each_others_changes(cat):
    uuid = cat.create("p", BASE).uuid
    workers, count = 4, 12
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_worker, args=(str(cat.path), uuid, w, count)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * workers
    check_all_present(cat, uuid, workers, count)


# --- tokens -----------------------------------------------------------------


def test_tokens_are_stored_hashed(tmp_path):
    path = db_path_for(tmp_path)
    cat = LocalCatalog(path)  # the same file holds both
    store = LocalTokenStore(path)
    rw = store.create(False, "laptop")
    ro = store.create(True)
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", rw) and rw != ro
    assert store.count() == 2
    info = store.lookup(rw)
    assert info is not None and not info.read_only and info.label == "laptop" and TS_RE.fullmatch(info.created_at)
    assert store.lookup(ro).read_only
    assert store.lookup("nope") is None and store.lookup("") is None
    assert {i.id for i in store.list()} == {info.id, store.lookup(ro).id}
    raw = path.read_bytes() + (Path(str(path) + "-wal").read_bytes() if Path(str(path) + "-wal").exists() else b"")
    assert rw.encode() not in raw and ro.encode() not in raw
    with pytest.raises(ValueError):
        store.revoke(info.id[:2])
    assert store.revoke(info.id[:6]) == 1
    assert store.lookup(rw) is None
    assert store.revoke(ro) == 1 and store.count() == 0
    assert store.revoke("ffffffff") == 0
    store.close()
    cat.close()


def test_names_that_cannot_be_path_components_rejected(cat):
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(BadRequest):
            cat.create(bad)
    rec = cat.create("fine name: ok")
    with pytest.raises(BadRequest):
        cat.rename(rec.uuid, "x/y")


def test_update_writes_only_the_touched_directory(cat):
    """The cost model: a one-file PUT adds one row, whatever the size."""
    text = "".join(f"./dir{i:03d} {FOO} 0:3:f\n" for i in range(200))
    uuid = cat.create("big", text).uuid
    before = entry_rows(cat)
    put_file(cat, uuid, "/dir123/new", BAR)
    assert entry_rows(cat) == before + 1
    put_file(cat, uuid, "/fresh/deep/new", BAR)  # two new directories and the file
    assert entry_rows(cat) == before + 1 + 3


def test_deep_paths(cat):
    uuid = cat.create("deep").uuid
    deep = "/" + "/".join(f"l{i}" for i in range(1200))
    put_file(cat, uuid, deep + "/f", FOO)
    root = parse_manifest(text_of(cat, uuid)).root
    node = root
    for i in range(1200):
        node = node[f"l{i}"]
    assert node["f"] == ((FOO, 0, 3),)
    cat.update(uuid, replace_files={"/l0": ""})
    assert text_of(cat, uuid) == ""


# --- schema 2: cost follows the change ----------------------------------------


def db_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(Path(str(path) + s).stat().st_size for s in ("", "-wal") if Path(str(path) + s).exists())


def test_storage_per_update_follows_the_change(tmp_path):
    """3,000 one-file PUTs into one directory store ~3,000 entry rows, not
    3,000 copies of a growing directory line (schema 1: 272 MiB)."""
    cat = LocalCatalog(tmp_path / "c.sqlite3", synchronous="OFF")
    uuid = cat.create("flat").uuid
    n = 3000
    for i in range(n):
        loc = f"{i:032x}+4096"
        put_file(cat, uuid, f"/flat/f{i:05d}", loc)
    with sqlite3.connect(cat.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == n + 1  # the files and /flat
        assert conn.execute("SELECT COUNT(*) FROM entries WHERE v_to IS NOT NULL").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM dir_lines").fetchone()[0] == 2  # root and /flat
        assert conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0] == n + 1
        # Rows hold segments, never rendered text: the biggest one is one file's.
        assert conn.execute("SELECT MAX(LENGTH(segs)) FROM entries").fetchone()[0] < 60
    root = parse_manifest(text_of(cat, uuid)).root
    assert len(root["flat"]) == n and root["flat"]["f02999"] == ((f"{2999:032x}+4096", 0, 4096),)
    cat.close()
    assert db_size(tmp_path / "c.sqlite3") < 4 << 20


def test_overwrites_close_one_row_each(cat):
    """Rewriting one file of a big directory closes its row and adds one."""
    text = ". " + FOO + " " + " ".join(f"0:3:f{i:04d}" for i in range(2000)) + "\n"
    uuid = cat.create("big", text).uuid
    before = entry_rows(cat)
    for _ in range(5):
        put_file(cat, uuid, "/f0100", BAR)
    put_file(cat, uuid, "/f0100", FOO)
    assert entry_rows(cat) == before + 6
    with sqlite3.connect(cat.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM entries WHERE v_to IS NOT NULL").fetchone()[0] == 6
    assert text_of(cat, uuid) == text  # back to the original content, same text


class RenderCounter:
    """Counts ``render_stream`` calls made by the catalog, by stream name."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        real = catalog_lines.render_stream

        def counting(stream, files, **kw):
            self.calls.append(stream)
            return real(stream, files, **kw)

        monkeypatch.setattr(catalog_lines, "render_stream", counting)


def null_lines(cat: LocalCatalog) -> list[str]:
    with sqlite3.connect(cat.path) as conn:
        return sorted(p for (p,) in conn.execute("SELECT path FROM dir_lines WHERE line IS NULL"))


def test_reading_after_an_update_renders_only_the_touched_directory(tmp_path, monkeypatch):
    cat = LocalCatalog(tmp_path / "c.sqlite3", cheap_pdh_chars=0)  # no PDH (hence no rendering) in updates
    text = "".join(f"./dir{i:03d} {FOO} {BAR} " + " ".join(f"{j % 2 * 3}:3:f{j:03d}" for j in range(50)) + "\n" for i in range(100))
    uuid = cat.create("c", text).uuid
    counter = RenderCounter(monkeypatch)
    assert text_of(cat, uuid) == text and counter.calls == []  # create filled the cache

    put_file(cat, uuid, "/dir042/new", BAR)
    assert counter.calls == [] and null_lines(cat) == ["dir042"]  # the update rendered nothing
    first = cat.get(uuid)
    assert counter.calls == ["./dir042"]
    assert null_lines(cat) == []  # stored back
    assert cat.get(uuid).manifest_text == first.manifest_text and counter.calls == ["./dir042"]
    assert first.portable_data_hash == portable_data_hash(first.manifest_text)

    counter.calls.clear()
    put_file(cat, uuid, "/fresh/deep/new", BAR)  # mkdir -p: two new directories
    assert null_lines(cat) == ["fresh", "fresh/deep"]  # the root's line ('') cannot change
    cat.get(uuid)
    assert counter.calls == ["./fresh/deep"]  # /fresh has no files: '' needs no rendering

    counter.calls.clear()
    cat.update(uuid, replace_files={"/moved": "current/dir007", "/dir007": ""})
    assert null_lines(cat) == []  # a moved directory keeps its line (re-based)
    got = cat.get(uuid).manifest_text
    assert counter.calls == []
    assert got == normalize_manifest(got) and f"./moved {FOO} {BAR} " in got and "./dir007 " not in got

    cat.update(uuid, replace_files={"/fresh/deep/new": ""})  # /fresh/deep becomes an empty dir
    assert null_lines(cat) == ["fresh/deep"]
    assert f"./fresh/deep {EMPTY} 0:0:\\056\n" in text_of(cat, uuid)
    cat.close()


def test_a_read_never_caches_lines_of_a_superseded_version(tmp_path):
    """A reader renders version N; an update commits N+1 touching the same
    directory before the reader stores its lines: they must be dropped."""
    cat = LocalCatalog(tmp_path / "c.sqlite3", cheap_pdh_chars=0)
    uuid = cat.create("c", BASE).uuid
    put_file(cat, uuid, "/d/new", BAR)  # /d is stale now
    with cat._read() as conn:
        row = cat._collection_row(conn, uuid)
        rec, computed = cat._snapshot(conn, row, row[5], with_manifest=True, current=True)
    assert computed is not None and set(computed.lines) == {"d"}
    put_file(cat, uuid, "/d/newer", FOO)  # commits while the reader holds its result
    cat._remember(computed)
    assert null_lines(cat) == ["d"]
    assert parse_manifest(text_of(cat, uuid)).root["d"]["newer"] == ((FOO, 0, 3),)
    # ... while a result that is still current is stored, PDH included.
    with cat._read() as conn:
        row = cat._collection_row(conn, uuid)
        rec, computed = cat._snapshot(conn, row, row[5], with_manifest=True, current=True)
    cat._remember(computed)
    assert null_lines(cat) == [] and cat.get(uuid, with_manifest=False).portable_data_hash == rec.portable_data_hash
    cat.close()


def test_every_version_reads_back_byte_identical(tmp_path):
    """What ``get`` returned at each version is what ``get_version`` (and a
    PDH lookup) returns later, after many more changes of every kind."""
    rng = random.Random(99)
    cat = LocalCatalog(tmp_path / "c.sqlite3", synchronous="OFF", cheap_pdh_chars=0)
    uuid = cat.create("v", BASE).uuid
    seen = {1: (text_of(cat, uuid), cat.get(uuid).portable_data_hash)}
    blocks = [FOO, BAR, "8d777f385d3dfec8815d20f7496026dc+4"]
    for step in range(400):
        tree = parse_manifest(text_of(cat, uuid)).root
        paths = all_paths(tree)
        r = rng.random()
        name = rng.choice(NAMES)
        where = rng.choice([p for p in paths if type(lookup_path(tree, p)) is Dir] + [""])
        if r < 0.45 or not paths:
            loc = rng.choice(blocks)
            cat.update(uuid, replace_files={f"{where}/{name}": "manifest_text/f"},
                       manifest_text=f". {loc} 0:{loc.split('+')[1]}:f\n")
        elif r < 0.6:
            cat.update(uuid, replace_files={rng.choice(paths): ""})
        elif r < 0.75:
            src = rng.choice(paths)
            target = f"{where}/{name}"
            if target == src or target.startswith(src + "/"):
                continue
            rf = {target: f"current{src}"}
            if rng.random() < 0.5:
                rf[src] = ""  # a move
            try:
                cat.update(uuid, replace_files=rf)
            except BadRequest:
                continue  # e.g. a deleting ancestor and a target below it
        elif r < 0.85:
            cat.update(uuid, replace_files={f"{where}/{name}": "manifest_text/m"}, manifest_text=f"./m {EMPTY} 0:0:\\056\n")
        elif r < 0.9:
            cat.update(uuid, properties={"step": step})
        elif r < 0.95:
            cat.update(uuid, manifest_text=Manifest(random_tree(rng)).to_text())
        else:
            cat.update(uuid, replace_files={"/": "current/"})  # same content, new version
        rec = cat.get(uuid)
        seen[rec.version] = (rec.manifest_text, rec.portable_data_hash)
    assert len(seen) > 300
    for version, (text, pdh) in seen.items():
        old = cat.get_version(uuid, version)
        assert old.manifest_text == text, version
        assert old.portable_data_hash == pdh == portable_data_hash(text)
        assert text == normalize_manifest(text)
    newest = max(seen)
    for version in rng.sample(sorted(seen), 20):  # a PDH names the newest version with that text
        found = cat.get(seen[version][1])
        assert found.manifest_text == seen[version][0]
    check_line_cache(cat, uuid)
    # The cache agrees with a full re-render: drop every line and read again.
    with sqlite3.connect(cat.path) as conn:
        conn.execute("UPDATE dir_lines SET line = NULL")
    assert text_of(cat, uuid) == seen[newest][0]
    cat.close()


def lookup_path(tree: Dir, path: str):
    node = tree
    for part in path.strip("/").split("/"):
        node = node[part]
    return node


def test_referenced_blocks_cover_every_version(cat):
    third = "8d777f385d3dfec8815d20f7496026dc+4"
    uuid = cat.create("g", f". {FOO}+Kzzzzz {BAR} 0:3:a 3:3:b\n").uuid
    put_file(cat, uuid, "/c", third)
    cat.update(uuid, replace_files={"/a": "", "/c": ""})
    cat.update(uuid, manifest_text="")
    assert cat.referenced_blocks() == {FOO, BAR, third}
    assert cat.get_version(uuid, 1).manifest_text == f". {FOO}+Kzzzzz {BAR} 0:3:a 3:3:b\n"  # hints other than +A stay


V1_SCHEMA = (
    """CREATE TABLE collections (uuid TEXT PRIMARY KEY, name TEXT NOT NULL, owner_uuid TEXT NOT NULL,
        created_at TEXT NOT NULL, modified_at TEXT NOT NULL, version INTEGER NOT NULL, properties TEXT NOT NULL,
        is_trashed INTEGER NOT NULL DEFAULT 0, trashed_at TEXT)""",
    "CREATE UNIQUE INDEX collections_live_name ON collections(name) WHERE is_trashed = 0",
    """CREATE TABLE versions (uuid TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,
        properties TEXT NOT NULL, modified_at TEXT NOT NULL, text_chars INTEGER NOT NULL, pdh TEXT,
        PRIMARY KEY (uuid, version)) WITHOUT ROWID""",
    "CREATE INDEX versions_pdh ON versions(pdh) WHERE pdh IS NOT NULL",
    "CREATE TABLE dirs (uuid TEXT NOT NULL, path TEXT NOT NULL, line TEXT NOT NULL, v_from INTEGER NOT NULL, v_to INTEGER)",
    "CREATE UNIQUE INDEX dirs_current ON dirs(uuid, path) WHERE v_to IS NULL",
    "CREATE INDEX dirs_history ON dirs(uuid, path, v_from)",
)


# The token table as the token store created it before it was versioned.
UNVERSIONED_TOKENS = """CREATE TABLE IF NOT EXISTS tokens (token_sha256 TEXT PRIMARY KEY, read_only INTEGER NOT NULL,
    label TEXT NOT NULL, created_at TEXT NOT NULL) WITHOUT ROWID"""


def test_schema_1_database_is_migrated(tmp_path):
    """A database written by the one-row-per-directory catalog opens with all
    versions intact (and the token table untouched)."""
    path = tmp_path / "catalog.sqlite3"
    token = "a-token-made-by-the-unversioned-token-store"
    uuid = "dvcol-4zz18-000000000000001"
    ts = "2026-01-01T00:00:00.000000Z"
    marker = f"./m {EMPTY} 0:0:\\056\n"
    v2 = f". {FOO} {BAR} 0:3:a 3:3:b\n{marker}"
    with sqlite3.connect(path) as conn:
        for statement in V1_SCHEMA:
            conn.execute(statement)
        conn.execute(UNVERSIONED_TOKENS)
        conn.execute("INSERT INTO tokens VALUES (?, 0, 'keep me', ?)", (hashlib.sha256(token.encode()).hexdigest(), ts))
        conn.execute("INSERT INTO collections VALUES (?, 'old', '', ?, ?, 2, '{}', 0, NULL)", (uuid, ts, ts))
        conn.execute("INSERT INTO versions VALUES (?, 1, 'old', '{}', ?, ?, ?)", (uuid, ts, len(BASE), portable_data_hash(BASE)))
        conn.execute("INSERT INTO versions VALUES (?, 2, 'old', '{}', ?, ?, NULL)", (uuid, ts, len(v2)))
        conn.executemany(
            "INSERT INTO dirs VALUES (?, ?, ?, ?, ?)",
            [
                (uuid, "", f". {FOO} {BAR} 0:3:a 3:3:b\n", 1, None),
                (uuid, "d", f"./d {FOO} 0:3:x\n", 1, 2),
                (uuid, "d/e", f"./d/e {BAR} 0:3:y\n", 1, 2),
                (uuid, "m", marker, 2, None),
            ],
        )
        conn.execute("PRAGMA user_version = 1")
    cat = LocalCatalog(path)
    assert text_of(cat, uuid) == v2
    assert cat.get_version(uuid, 1).manifest_text == BASE
    assert cat.get(portable_data_hash(BASE)).version == 1
    check_line_cache(cat, uuid)
    put_file(cat, uuid, "/m/f", FOO)
    assert text_of(cat, uuid) == f". {FOO} {BAR} 0:3:a 3:3:b\n./m {FOO} 0:3:f\n"
    assert cat.create("new", BASE).uuid != uuid and cat.find_by_name("old").uuid == uuid
    with pytest.raises(Conflict):
        cat.create("old")  # the live-name index was rebuilt with the table
    assert cat.referenced_blocks() == {FOO, BAR}
    cat.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "dirs" not in tables and "collections_v1" not in tables
    store = LocalTokenStore(path)
    assert store.lookup(token).label == "keep me"
    store.close()


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "c.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        LocalCatalog(path)


def test_readers_caching_lines_race_writers_safely(tmp_path):
    """Readers store rendered lines back while writers keep invalidating them:
    the cache must never end up holding a line of a superseded version."""
    cat = LocalCatalog(tmp_path / "c.sqlite3", synchronous="OFF", cheap_pdh_chars=0)
    uuid = cat.create("race", BASE).uuid
    workers, count = 3, 25
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(who: int) -> None:
        try:
            for i in range(count):
                put_file(cat, uuid, f"/d/w{who}-{i}", FOO if i % 2 else BAR)
                put_file(cat, uuid, f"/p{who}/f{i}", FOO)
        except BaseException as e:  # surfaced below
            errors.append(e)

    def read() -> None:
        try:
            while not stop.is_set():
                rec = cat.get(uuid)
                assert rec.portable_data_hash == portable_data_hash(rec.manifest_text)
                assert rec.manifest_text == normalize_manifest(rec.manifest_text)
        except BaseException as e:  # surfaced below
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=write, args=(w,)) for w in range(workers)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    check_line_cache(cat, uuid)
    root = parse_manifest(text_of(cat, uuid)).root
    assert sorted(root["d"]) == sorted(["x", "e"] + [f"w{w}-{i}" for w in range(workers) for i in range(count)])
    check_line_cache(cat, uuid)
    cat.close()

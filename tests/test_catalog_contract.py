"""One behavioural suite for both catalogs: the embedded SQLite catalog and
the Arvados REST client against the fake cluster.  The WebDAV layer relies on
exactly these behaviours, whichever backend serves it."""

from __future__ import annotations

import threading

import pytest

from davcoll.manifest import bare_locator, coalesce, parse_manifest
from davcoll.storage.arvados_api import ArvadosCatalog, ArvadosClient
from davcoll.storage.catalog import BadRequest, Conflict, InvalidManifest, NotFound
from davcoll.storage.keep import KeepClient
from davcoll.storage.local_blocks import LocalBlockStore
from davcoll.storage.local_catalog import LocalCatalog
from davcoll.testing.fake_arvados import FakeArvados


@pytest.fixture(scope="module")
def fake():
    with FakeArvados(keepstores=2, seed=7) as f:
        yield f


class Backend:
    def __init__(self, catalog, put_block, close) -> None:
        self.catalog = catalog
        self.put_block = put_block
        self.close = close


@pytest.fixture(params=["embedded", "arvados"])
def be(request, tmp_path, fake):
    if request.param == "embedded":
        store = LocalBlockStore(tmp_path / "data", fsync=False)
        cat = LocalCatalog(tmp_path / "data" / "catalog.sqlite3", synchronous="OFF")
        b = Backend(cat, store.put, cat.close)
    else:
        token = fake.add_user(f"u{id(request)}")
        client = ArvadosClient(fake.api_url, token, retries=1, backoff_start=0.01)
        keep = KeepClient(fake.api_url, token, num_retries=1, backoff_start=0.01, copies=1)
        cat = ArvadosCatalog(client)
        b = Backend(cat, keep.put, lambda: (keep.close(), client.close()))
    yield b
    b.close()


def files(text: str) -> dict[str, tuple]:
    """Files as bare segment lists: the same content whatever the layout."""
    m = parse_manifest(text)
    return {p: coalesce((bare_locator(l), o, n) for l, o, n in segs) for p, segs in m.files()}


def file_manifest(be: Backend, path: str, data: bytes) -> str:
    loc = be.put_block(data)
    d, _, name = path.rpartition("/")
    stream = "./" + d if d else "."
    return f"{stream} {loc} 0:{len(data)}:{name}\n"


def current(be: Backend, uuid: str) -> dict[str, tuple]:
    return files(be.catalog.get(uuid).manifest_text)


def test_create_get_list_rename_trash(be):
    cat = be.catalog
    rec = cat.create("alpha", file_manifest(be, "a.txt", b"alpha"), {"k": "v"})
    assert rec.uuid and rec.name == "alpha"
    got = cat.get(rec.uuid)
    assert set(files(got.manifest_text)) == {"a.txt"}
    assert got.properties == {"k": "v"}
    assert cat.find_by_name("alpha").uuid == rec.uuid
    assert "alpha" in [r.name for r in cat.list()]
    with pytest.raises(Conflict):
        cat.create("alpha")
    cat.rename(rec.uuid, "beta")
    assert cat.find_by_name("alpha") is None and cat.find_by_name("beta").uuid == rec.uuid
    by_pdh = cat.get(got.portable_data_hash)
    assert files(by_pdh.manifest_text) == files(got.manifest_text)
    cat.trash(rec.uuid)
    assert cat.find_by_name("beta") is None
    with pytest.raises(NotFound):
        cat.get(rec.uuid)


def test_unknown_collection_is_not_found(be):
    with pytest.raises(NotFound):
        be.catalog.get("zzzzz-4zz18-000000000000000")
    with pytest.raises(NotFound):
        be.catalog.update("zzzzz-4zz18-000000000000000", replace_files={"/x": ""})


def test_replace_files_sources(be):
    cat = be.catalog
    rec = cat.create("rf", file_manifest(be, "a", b"AAA") + file_manifest(be, "d/b", b"BBBB").replace("./d", "./d"))
    before = current(be, rec.uuid)
    rev0 = cat.revision(rec.uuid)
    # New content via manifest_text, copy and move via current/, delete, mkdir.
    new = file_manifest(be, "n/new.bin", b"new!")
    cat.update(rec.uuid, replace_files={"/n/new.bin": "manifest_text/n/new.bin"}, manifest_text=new)
    cat.update(rec.uuid, replace_files={"/copy": "current/a", "/moved": "current/d/b", "/d/b": ""})
    cat.update(rec.uuid, replace_files={"/empty": "manifest_text/empty"},
               manifest_text="./empty d41d8cd98f00b204e9800998ecf8427e+0 0:0:\\056\n")
    after = current(be, rec.uuid)
    assert after["copy"] == before["a"] and after["moved"] == before["d/b"]
    assert "d/b" not in after and after["n/new.bin"][0][2] == 4
    assert "./empty " in cat.get(rec.uuid).manifest_text
    assert cat.revision(rec.uuid) != rev0
    # A swap reads both sources before either is replaced.
    cat.update(rec.uuid, replace_files={"/a": "current/moved", "/moved": "current/a"})
    swapped = current(be, rec.uuid)
    assert swapped["a"] == before["d/b"] and swapped["moved"] == before["a"]


def test_bad_updates_are_refused_and_change_nothing(be):
    cat = be.catalog
    rec = cat.create("bad", file_manifest(be, "f", b"data"))
    before = cat.get(rec.uuid).manifest_text
    with pytest.raises(BadRequest):
        cat.update(rec.uuid, replace_files={"/x": "current/nope"})
    with pytest.raises(BadRequest):
        cat.update(rec.uuid, replace_files={"/x": ""}, manifest_text=file_manifest(be, "y", b"unused"))
    with pytest.raises(BadRequest):
        cat.update(rec.uuid, replace_files={"x//y": ""})
    with pytest.raises(InvalidManifest):
        cat.create("broken", ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:10:f\n")
    assert cat.get(rec.uuid).manifest_text == before


def test_properties_replace(be):
    cat = be.catalog
    rec = cat.create("props", "", {"a": "1"})
    cat.update(rec.uuid, properties={"b": "2", "n": 3})
    assert cat.get(rec.uuid, with_manifest=False).properties == {"b": "2", "n": 3}


def test_concurrent_writers_lose_nothing(be):
    cat = be.catalog
    rec = cat.create("conc", "")
    manifests = {f"w{i}/f{j}": file_manifest(be, f"w{i}/f{j}", b"%d-%d" % (i, j)) for i in range(6) for j in range(5)}
    same = {i: file_manifest(be, "same", b"writer %d" % i) for i in range(6)}
    errors = []

    def writer(i: int) -> None:
        try:
            for j in range(5):
                p = f"w{i}/f{j}"
                cat.update(rec.uuid, replace_files={"/" + p: "manifest_text/" + p}, manifest_text=manifests[p])
            cat.update(rec.uuid, replace_files={"/same": "manifest_text/same"}, manifest_text=same[i])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    got = current(be, rec.uuid)
    for p, text in manifests.items():
        assert got[p] == files(text)[p]
    # The same path: exactly one writer's version, never a mix.
    assert got["same"] in [files(t)["same"] for t in same.values()]

"""Data directories written before the catalog database had one migration
list open and upgrade cleanly (davcoll/storage/local_catalog/schema.py).

tests/data/pre_migrations/catalog.sqlite3 was written by davcoll at commit
31f87a9 (catalog schema 2, token and dead-property tables unversioned);
expected.json holds what that davcoll read back from it.  See
make_fixture.py there for how both were made.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from davcoll.backends import LocalBackend
from davcoll.storage.catalog import NotFound
from davcoll.storage.local_catalog import LocalCatalog, db_path_for
from davcoll.storage.local_catalog.schema import MIGRATIONS
from davcoll.storage.local_props import LocalPropertyStore
from davcoll.storage.local_tokens import LocalTokenStore

FIXTURE = Path(__file__).parent / "data" / "pre_migrations"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
FOO = "acbd18db4cc2f85cedef654fccc4a4d8+3"


@pytest.fixture
def data_dir(tmp_path):
    shutil.copyfile(FIXTURE / "catalog.sqlite3", db_path_for(tmp_path))
    return tmp_path


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def columns(path: Path, table: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def check_everything_reads_back(backend: LocalBackend, *, written: bool = False) -> None:
    """What the old code wrote is all there (``written``: and whatever
    check_writes_work added since)."""
    cat = backend.catalog_
    for uuid, versions in EXPECTED["versions"].items():
        assert cat.get(uuid).version == len(versions) + (written and len(versions) > 1)
        for v in versions:
            rec = cat.get_version(uuid, v["version"])
            assert (rec.name, rec.manifest_text, rec.portable_data_hash) == (
                v["name"], v["manifest_text"], v["portable_data_hash"]
            )
            assert cat.get(v["portable_data_hash"]).manifest_text == v["manifest_text"]
    listed = {r.name: r.uuid for r in cat.list()}
    assert set(listed.values()) - set(EXPECTED["versions"]) == ({listed["after-upgrade"]} if written else set())
    with pytest.raises(NotFound):
        cat.get(EXPECTED["trashed"])
    assert cat.get(EXPECTED["trashed"], include_trash=True).is_trashed
    for label, token in EXPECTED["tokens"].items():
        info = backend.tokens.lookup(token)
        assert info is not None and info.label == label and info.read_only == (label == "reader")
    for key, props in EXPECTED["props"].items():
        assert {n: v.decode() for n, v in backend.props.get_all(key).items()} == props
    sub = next(k for k in EXPECTED["props"] if k.endswith("/sub"))
    assert backend.props.get_children(sub, 1 << 20) == {sub + "/more": {"{urn:z}y": b"two"}}


def check_writes_work(backend: LocalBackend) -> None:
    cat = backend.catalog_
    uuid = max(EXPECTED["versions"], key=lambda u: len(EXPECTED["versions"][u]))  # "alpha2", with sub/more/foo2
    before = cat.get(uuid)
    rec = cat.update(uuid, replace_files={"/new/f": f"{before.portable_data_hash}/sub/more/foo2"}).record
    assert rec.version == before.version + 1
    assert "./new " in cat.get(uuid).manifest_text
    assert cat.create("after-upgrade", f". {FOO} 0:3:x\n").version == 1
    token = backend.tokens.create(False, "new")
    assert backend.tokens.lookup(token).label == "new"
    backend.props.set("/by_id/x/a", "{urn:z}p", b"1")
    assert backend.props.get_children("/by_id/x", 1 << 20) == {"/by_id/x/a": {"{urn:z}p": b"1"}}


def test_fixture_is_what_the_old_code_wrote():
    """Guards the fixture itself: a schema-2 catalog with the parent column."""
    path = FIXTURE / "catalog.sqlite3"
    assert EXPECTED["user_version"] == 2 == user_version(path)
    assert "parent" in columns(path, "dead_props") and columns(path, "tokens")


def test_a_data_dir_from_before_the_migration_list_upgrades(data_dir):
    db = db_path_for(data_dir)
    backend = LocalBackend(data_dir)
    try:
        assert user_version(db) == len(MIGRATIONS)
        check_everything_reads_back(backend)
        check_writes_work(backend)
    finally:
        backend.close()
    backend = LocalBackend(data_dir)  # and opens again, with nothing left to do
    try:
        check_everything_reads_back(backend, written=True)
    finally:
        backend.close()


@pytest.mark.parametrize("first", ["tokens", "props", "catalog"])
def test_whichever_store_opens_first_upgrades_every_table(data_dir, first):
    """``davcoll token list`` may be the first to open an old data dir."""
    db = db_path_for(data_dir)
    store = {"tokens": LocalTokenStore, "props": LocalPropertyStore, "catalog": LocalCatalog}[first](db)
    store.close()
    assert user_version(db) == len(MIGRATIONS)
    backend = LocalBackend(data_dir)
    try:
        check_everything_reads_back(backend)
    finally:
        backend.close()


def test_dead_props_from_before_the_parent_column_upgrade(data_dir):
    """An even older dead_props table (no parent column) gets it, filled in."""
    db = db_path_for(data_dir)
    with sqlite3.connect(db) as conn:
        conn.executescript(
            """
            CREATE TABLE old_props (res_key TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL,
                PRIMARY KEY (res_key, name)) WITHOUT ROWID;
            INSERT INTO old_props SELECT res_key, name, value FROM dead_props;
            DROP TABLE dead_props;
            ALTER TABLE old_props RENAME TO dead_props;
            """
        )
    assert "parent" not in columns(db, "dead_props")
    backend = LocalBackend(data_dir)
    try:
        check_everything_reads_back(backend)
    finally:
        backend.close()
    assert "parent" in columns(db, "dead_props")


def test_a_token_only_database_gets_the_catalog(tmp_path):
    """``davcoll token create`` run by the old code on a new data dir left a
    file with only the (unversioned) token table, at user_version 0."""
    db = db_path_for(tmp_path)
    token = "made-by-an-old-token-create"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE tokens (token_sha256 TEXT PRIMARY KEY, read_only INTEGER NOT NULL,"
            " label TEXT NOT NULL, created_at TEXT NOT NULL) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO tokens VALUES (?, 1, 'old', '2026-01-01T00:00:00.000000Z')",
            (hashlib.sha256(token.encode()).hexdigest(),),
        )
    backend = LocalBackend(tmp_path)
    try:
        assert backend.tokens.lookup(token).read_only
        uuid = backend.catalog_.create("c", f". {FOO} 0:3:x\n").uuid
        assert backend.catalog_.get(uuid).manifest_text == f". {FOO} 0:3:x\n"
    finally:
        backend.close()
    assert user_version(db) == len(MIGRATIONS)


def test_a_new_database_has_exactly_the_current_tables(tmp_path):
    """Replaying the whole list leaves no remnant of the older layouts."""
    db = tmp_path / "new.sqlite3"
    LocalCatalog(db).close()
    with sqlite3.connect(db) as conn:
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
    assert names == {
        "collections", "collections_live_name", "versions", "versions_pdh", "entries", "entries_current",
        "dir_lines", "tokens", "dead_props", "dead_props_parent", "small_blocks",
    }
    assert user_version(db) == len(MIGRATIONS)

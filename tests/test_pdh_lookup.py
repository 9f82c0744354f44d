"""Lookups by portable data hash are read-only and cheap (issue 11 §4).

Before: a lookup of an unknown PDH took the catalog's write lock and
rendered every collection whose PDH was not computed yet, so any reader
could hold up every commit.  Now a lookup is one indexed read; a miss is
NotFound at once and starts a background pass that computes missing PDHs
outside the write lock.  Checked by ordering (a lookup completes while
another connection holds the write lock), never by wall time.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading

import pytest

import davcoll.storage.local_catalog.catalog as lc
from davcoll.manifest import portable_data_hash
from davcoll.storage.catalog import NotFound
from davcoll.storage.local_catalog import LocalCatalog

FOO = "acbd18db4cc2f85cedef654fccc4a4d8+3"
WAIT = 30.0  # generous bound for events that should happen at once


def random_pdh() -> str:
    return f"{secrets.token_hex(16)}+{secrets.randbelow(10**6)}"


def manifest(i: int, nfiles: int = 30) -> str:
    return f"./d{i} {FOO} " + " ".join(f"0:3:f{j}" for j in range(nfiles)) + "\n"


@pytest.fixture
def cat(tmp_path):
    # cheap_pdh_chars=0 as the server runs it: updates never compute PDHs.
    c = LocalCatalog(tmp_path / "c.sqlite3", synchronous="OFF", cheap_pdh_chars=0, pdh_pass_interval=0)
    yield c
    c.close()


def _changed_collections(cat: LocalCatalog, n: int = 5, prefix: str = "c") -> list[str]:
    """Collections whose current PDH is not computed (changed, never read)."""
    uuids = []
    for i in range(n):
        rec = cat.create(f"{prefix}{i}", manifest(i))
        cat.update(rec.uuid, replace_files={f"/new{i}": ""})
        uuids.append(rec.uuid)
    return uuids


def _hold_write_lock(path):
    """Another connection holding SQLite's write lock (BEGIN IMMEDIATE)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_unknown_pdh_lookup_does_not_wait_for_the_write_lock(cat):
    _changed_collections(cat)
    holder = _hold_write_lock(cat.path)
    outcome: list[object] = []
    done = threading.Event()

    def lookup():
        try:
            cat.get(random_pdh())
            outcome.append("found?!")
        except NotFound:
            outcome.append("404")
        except Exception as e:  # noqa: BLE001 - reported below
            outcome.append(e)
        done.set()

    t = threading.Thread(target=lookup, daemon=True)
    t.start()
    try:
        # The lookup must finish while the lock is still held (before the
        # fix it queued behind it for the 30 s busy timeout).
        assert done.wait(WAIT), "unknown-PDH lookup waited for the catalog's write lock"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        t.join()  # before closing the catalog under it
    assert outcome == ["404"]


def test_unknown_pdh_lookup_costs_constant_catalog_work(cat):
    """Statements run by the looking-up thread do not grow with the number
    of collections whose PDH is missing."""
    counts = []
    for n, prefix in ((1, "a"), (8, "b")):
        _changed_collections(cat, n, prefix)
        statements: list[str] = []
        conn = cat._db.connection()
        conn.set_trace_callback(statements.append)
        try:
            with pytest.raises(NotFound):
                cat.get(random_pdh())
        finally:
            conn.set_trace_callback(None)
        assert not [s for s in statements if s.lstrip().upper().startswith(("BEGIN IMMEDIATE", "UPDATE", "INSERT"))]
        counts.append(len(statements))
        assert cat.wait_pdh_index(WAIT)
    assert counts[0] == counts[1] and counts[0] <= 4, counts


def test_background_pass_does_not_hold_the_write_lock_while_rendering(cat, monkeypatch):
    """While the pass renders a collection, a commit from another catalog
    instance (another connection) goes through."""
    uuids = _changed_collections(cat, 2)
    other = LocalCatalog(cat.path, synchronous="OFF", cheap_pdh_chars=0)
    committed: list[bool] = []
    threads: list[threading.Thread] = []
    real = lc.assemble_current

    def assemble_and_commit_meanwhile(conn, cid):
        if not threads:
            t = threading.Thread(target=lambda: committed.append(
                other.update(uuids[1], replace_files={"/during": ""}) is not None), daemon=True)
            threads.append(t)
            t.start()
            t.join(WAIT)
            assert committed == [True], "a commit was blocked while the PDH pass rendered"
        return real(conn, cid)

    monkeypatch.setattr(lc, "assemble_current", assemble_and_commit_meanwhile)
    try:
        with pytest.raises(NotFound):
            cat.get(random_pdh())
        assert cat.wait_pdh_index(WAIT)
        assert committed == [True]
    finally:
        for t in threads:
            t.join()  # never close a connection another thread is using
        other.close()


def test_known_pdhs_still_resolve(cat):
    rec = cat.create("k", manifest(1))
    read = cat.get(rec.uuid)  # reading the manifest computes and stores the PDH
    assert cat.get(read.portable_data_hash).uuid == rec.uuid
    # An older version stays findable by the PDH it had when it was read.
    cat.update(rec.uuid, replace_files={"/extra": ""})
    old = cat.get(read.portable_data_hash)
    assert (old.uuid, old.version) == (rec.uuid, read.version)
    assert old.manifest_text == read.manifest_text


def test_not_yet_computed_pdh_is_404_then_found_after_the_pass(cat):
    """Decided behaviour: the PDH of a collection changed and never read
    since is unknown until the background pass (started by the miss) has
    computed it; then it resolves."""
    rec = cat.create("n", manifest(2))
    cat.update(rec.uuid, replace_files={"/late": ""})
    text = LocalCatalog.get(cat, rec.uuid, with_manifest=True).manifest_text  # compute to know it ...
    pdh = portable_data_hash(text)
    # ... then forget it again, as if nobody had read this version.
    with sqlite3.connect(cat.path) as conn:
        conn.execute("UPDATE versions SET pdh = NULL WHERE uuid = ?", (rec.uuid,))
    with pytest.raises(NotFound):
        cat.get(pdh)
    assert cat.wait_pdh_index(WAIT)
    found = cat.get(pdh)
    assert found.uuid == rec.uuid and found.manifest_text == text


def test_index_pdhs_fills_every_missing_current_pdh(cat):
    uuids = _changed_collections(cat, 4)
    assert cat.index_pdhs() == 4
    assert cat.index_pdhs() == 0
    for u in uuids:
        rec = cat.get(u, with_manifest=False)
        assert rec.portable_data_hash is not None
        assert cat.get(rec.portable_data_hash).uuid == u


def test_close_stops_the_indexer(tmp_path):
    c = LocalCatalog(tmp_path / "c.sqlite3", synchronous="OFF", cheap_pdh_chars=0, pdh_pass_interval=60)
    with pytest.raises(NotFound):
        c.get(random_pdh())
    c.close()  # returns although the next pass would wait 60 s

"""Issue 14 §2: one sync point per durable small write.

A block under 1 MiB stored by a server PUT becomes a row of the catalog
database, written in the same transaction as the manifest that references
it (storage/local_small_blocks.py).  These tests check that it is durable
and verified like a block file, that no file and no extra fsync is involved,
and that every reader (server, gc, a standalone block store) sees it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest
import requests

from davcoll.storage.blocks import BlockCorrupt
from davcoll.storage.local_blocks import LocalBlockStore
from server_util import ServerProcess, running_server


def rows(data_dir) -> dict[str, bytes]:
    with sqlite3.connect(data_dir / "catalog.sqlite3") as conn:
        return {loc: bytes(d) for loc, d in conn.execute("SELECT locator, data FROM small_blocks")}


def block_files(data_dir) -> list[str]:
    return [f for _, _, fs in os.walk(data_dir / "blocks") for f in fs]


def test_small_put_is_a_database_row_and_needs_no_file_fsync(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync

    def counting_fsync(fd):
        calls.append(fd)
        return real_fsync(fd)

    with running_server(tmp_path / "d") as srv:
        assert requests.request("MKCOL", srv.u("c/")).status_code == 201
        monkeypatch.setattr(os, "fsync", counting_fsync)
        assert requests.put(srv.u("c/small.txt"), data=b"x" * 4096).status_code == 201
        small_calls = len(calls)
        assert requests.put(srv.u("c/big.bin"), data=os.urandom(2 << 20)).status_code == 201
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert requests.get(srv.u("c/small.txt")).content == b"x" * 4096
    # The SQLite commit is the one sync point (SQLite syncs in C, not through
    # os.fsync); a block file costs the file's and its directory's fsync.
    assert small_calls == 0
    assert len(calls) >= 2
    assert any(d == b"x" * 4096 for d in rows(tmp_path / "d").values())
    assert len(block_files(tmp_path / "d")) == 1  # only the 2 MiB block is a file


def test_acknowledged_small_files_survive_kill_9(tmp_path):
    data = tmp_path / "d"
    with ServerProcess(data) as srv:
        assert requests.request("MKCOL", srv.url + "c/").status_code == 201
        for i in range(50):
            assert requests.put(srv.url + f"c/f{i}", data=b"%d" % i * 100).status_code == 201
        srv.kill9()
    with running_server(data) as srv:
        for i in range(50):
            assert requests.get(srv.u(f"c/f{i}")).content == b"%d" % i * 100


def test_a_standalone_store_reads_and_lists_database_blocks(tmp_path):
    with running_server(tmp_path / "d") as srv:
        assert requests.request("MKCOL", srv.u("c/")).status_code == 201
        assert requests.put(srv.u("c/a"), data=b"hello small").status_code == 201
    (loc,) = [loc for loc, d in rows(tmp_path / "d").items() if d == b"hello small"]
    store = LocalBlockStore(tmp_path / "d")
    try:
        assert store.get(loc) == b"hello small"
        assert b"".join(store.read_chunks(loc)) == b"hello small"
        assert store.exists(loc)
        assert loc in {l for l, _, _ in store.iter_blocks()}
        # Without a catalog attached, a put is a durable file, as before.
        other = store.put(b"written by a tool")
        assert store.path_for(other).exists()
    finally:
        store.close()


@pytest.mark.parametrize("where", ["middle", "last"])
def test_a_corrupted_row_is_an_error_never_wrong_bytes(tmp_path, where):
    data = b"abcdefghij" * 100
    with running_server(tmp_path / "d") as srv:
        assert requests.request("MKCOL", srv.u("c/")).status_code == 201
        assert requests.put(srv.u("c/f"), data=data).status_code == 201
    (loc,) = [loc for loc, d in rows(tmp_path / "d").items() if d == data]
    bad = bytearray(data)
    i = len(bad) // 2 if where == "middle" else len(bad) - 1
    bad[i] ^= 0x01
    with sqlite3.connect(tmp_path / "d" / "catalog.sqlite3") as conn:
        conn.execute("UPDATE small_blocks SET data = ? WHERE locator = ?", (bytes(bad), loc))
    store = LocalBlockStore(tmp_path / "d")
    try:
        with pytest.raises(BlockCorrupt):
            store.get(loc)
    finally:
        store.close()
    with running_server(tmp_path / "d") as srv:
        r = requests.get(srv.u("c/f"))
        assert r.status_code in (502, 503) or r.content != bytes(bad), r.status_code
        assert r.status_code != 200


def test_gc_deletes_unreferenced_rows_only(tmp_path):
    data = tmp_path / "d"
    with running_server(data) as srv:
        assert requests.request("MKCOL", srv.u("c/")).status_code == 201
        assert requests.put(srv.u("c/keep"), data=b"kept").status_code == 201
        assert requests.put(srv.u("c/gone"), data=b"purged").status_code == 201
        assert requests.delete(srv.u("c/gone")).status_code == 204
    out = subprocess.run([sys.executable, "-m", "davcoll.cli", "gc", "--data-dir", str(data), "--delete",
                          "--grace-hours", "0", "--prune-versions-older-than", "0", "--keep-versions", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    left = set(rows(data).values())
    assert b"kept" in left and b"purged" not in left
    with running_server(data) as srv:
        assert requests.get(srv.u("c/keep")).content == b"kept"


def test_staged_bytes_are_bounded_while_commits_fail(tmp_path):
    """If the catalog cannot commit (staged blocks never become rows), small
    blocks stop being staged past the cap and are written as files."""
    store = LocalBlockStore(tmp_path)
    try:
        store.small.attach()  # as if a catalog were attached, which never commits
        store.small.max_staged_bytes = 10_000
        locs = [store.put(bytes([i]) * 4000) for i in range(5)]
        staged = [loc for loc in locs if not store.path_for(loc).exists()]
        assert len(staged) == 2  # 8,000 bytes staged; the rest are durable files
        assert all(store.get(loc) == bytes([i]) * 4000 for i, loc in enumerate(locs))
    finally:
        store.close()

"""davcoll gc: dry run by default, never touches referenced or young blocks."""

from __future__ import annotations

import io
import os
import sqlite3
import time

import requests

from davcoll.gc import collect_garbage
from davcoll.storage.local_blocks import LocalBlockStore
from server_util import running_server


def _age(store: LocalBlockStore, locator: str, seconds: float) -> None:
    """Make a block look ``seconds`` old, in whichever home it lives: a
    block file, or a row of the catalog database (small blocks)."""
    p = store.path_for(locator)
    t = time.time() - seconds
    if p.exists():
        os.utime(p, (t, t))
        return
    with sqlite3.connect(store.root / "catalog.sqlite3") as conn:
        assert conn.execute("UPDATE small_blocks SET mtime = ? WHERE locator = ?", (t, locator)).rowcount == 1


def test_gc_keeps_referenced_and_young_blocks(tmp_path):
    data = tmp_path / "data"
    with running_server(data) as srv:
        assert requests.request("MKCOL", srv.u("c/")).status_code == 201
        assert requests.put(srv.u("c/keep.txt"), data=b"keep me").status_code == 201
        assert requests.put(srv.u("c/old.txt"), data=b"old version").status_code == 201
        assert requests.put(srv.u("c/old.txt"), data=b"new version").status_code == 204
        assert requests.delete(srv.u("c/keep.txt")).status_code == 204
    store = LocalBlockStore(data)
    orphan = store.put(b"never committed")
    young_orphan = store.put(b"upload in flight")
    for loc, _, _ in list(store.iter_blocks()):
        if loc != young_orphan:
            _age(store, loc, 3 * 86400)
    out = io.StringIO()
    found, deleted = collect_garbage(str(data), delete=False, grace_seconds=86400, out=out)
    # Older versions still reference every committed block: only the orphan goes.
    assert found == 1 and deleted == 0
    assert orphan in out.getvalue() and young_orphan not in out.getvalue()
    assert store.exists(orphan)
    found, deleted = collect_garbage(str(data), delete=True, grace_seconds=86400, out=io.StringIO())
    assert (found, deleted) == (1, 1)
    assert not store.exists(orphan) and store.exists(young_orphan)
    # Every version of the collection is still readable.
    with running_server(data) as srv:
        assert requests.get(srv.u("c/old.txt")).content == b"new version"
        cat = srv.app.backend.catalog_
        rec = cat.find_by_name("c")
        for v in range(1, rec.version + 1):
            text = cat.get_version(rec.uuid, v).manifest_text
            for tok in text.split():
                if "+" in tok and ":" not in tok:
                    assert store.exists(tok), (v, tok)


# -- retention: trash lifetime and old versions (issue 13 §3) -----------------

import random  # noqa: E402

import pytest  # noqa: E402

from davcoll.cli import main as cli_main  # noqa: E402
from davcoll.gc import Retention, apply_retention, block_usage_report  # noqa: E402
from davcoll.storage.catalog import NotFound  # noqa: E402
from davcoll.storage.local_catalog import LocalCatalog, db_path_for  # noqa: E402


def _blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _disk_bytes(data) -> int:
    return sum(size for _, size, _ in LocalBlockStore(data).iter_blocks())


def _purge_scenario(data) -> dict[str, bytes]:
    """A live file, an overwritten one, a deleted one, a trashed collection."""
    live = {"c/keep.bin": _blob(300_000, 1)}
    with running_server(data) as srv:
        assert requests.request("MKCOL", srv.u("c/")).status_code == 201
        assert requests.put(srv.u("c/keep.bin"), data=live["c/keep.bin"]).status_code == 201
        assert requests.put(srv.u("c/over.bin"), data=_blob(400_000, 2)).status_code == 201
        live["c/over.bin"] = _blob(100_000, 3)
        assert requests.put(srv.u("c/over.bin"), data=live["c/over.bin"]).status_code == 204
        assert requests.put(srv.u("c/gone.bin"), data=_blob(500_000, 4)).status_code == 201
        assert requests.delete(srv.u("c/gone.bin")).status_code == 204
        assert requests.request("MKCOL", srv.u("t/")).status_code == 201
        assert requests.put(srv.u("t/big.bin"), data=_blob(600_000, 5)).status_code == 201
        assert requests.delete(srv.u("t/")).status_code == 204
    return live


def test_purged_files_stay_on_disk_until_retention_and_then_space_comes_back(tmp_path):
    """Reproduces issue 13: after deleting files, gc found 0 unreferenced
    blocks because old versions and trash kept them all."""
    data = tmp_path / "data"
    live = _purge_scenario(data)
    before = _disk_bytes(data)
    assert before >= 1_900_000
    # The default policy (2 weeks) keeps everything this young.
    found, _ = collect_garbage(str(data), delete=True, grace_seconds=0, out=io.StringIO())
    assert found == 0
    assert apply_retention(str(data), Retention(14 * 86400, 14 * 86400)) == (0, 0)
    report = block_usage_report(str(data), Retention(14 * 86400, 14 * 86400))
    assert report["live"][1] == 400_000
    assert report["versions"][1] == 900_000  # overwritten + deleted file, kept by old versions
    assert report["trash"][1] == 600_000
    assert report["unreferenced"] == (0, 0)

    # The same data seen with a zero-length policy: what a pass would free.
    policy = Retention(0, 0)
    later = time.time() + 1
    report = block_usage_report(str(data), policy, now=later)
    assert report["live"][1] == 400_000
    assert report["versions_expired"][1] == 900_000 and report["trash_expired"][1] == 600_000
    assert report["versions"] == (0, 0) and report["trash"] == (0, 0)

    assert apply_retention(str(data), policy, now=later) == (1, 5)  # t purged; c keeps only its current version
    found, deleted = collect_garbage(str(data), delete=True, grace_seconds=0, out=io.StringIO())
    assert found == deleted == 3
    assert _disk_bytes(data) == 400_000
    # The current content is intact; the dropped versions are gone.
    with running_server(data) as srv:
        for path, body in live.items():
            assert requests.get(srv.u(path)).content == body
        cat = srv.app.backend.catalog_
        rec = cat.find_by_name("c")
        with pytest.raises(NotFound):
            cat.get_version(rec.uuid, rec.version - 1)
        assert cat.find_by_name("t") is None


def test_version_retention_keeps_the_newest_n_and_recent_ones(tmp_path):
    data = tmp_path / "data"
    with running_server(data) as srv:
        assert requests.request("MKCOL", srv.u("c/")).status_code == 201
        for i in range(5):
            assert requests.put(srv.u("c/f.txt"), data=f"v{i}".encode()).status_code in (201, 204)
        rec = srv.app.backend.catalog_.find_by_name("c")
    cat = LocalCatalog(db_path_for(data))
    try:
        versions = rec.version
        # keep=3: only versions older than the newest three go.
        assert cat.prune_versions("9999-12-31T00:00:00.000000Z", keep=3) == versions - 3
        assert cat.get_version(rec.uuid, versions - 2).manifest_text
        with pytest.raises(NotFound):
            cat.get_version(rec.uuid, versions - 3)
        # A cutoff before every write drops nothing.
        assert cat.prune_versions("2000-01-01T00:00:00.000000Z", keep=1) == 0
        assert cat.prune_versions("9999-12-31T00:00:00.000000Z", keep=1) == 2
        assert cat.get(rec.uuid).manifest_text.count("f.txt") == 1
    finally:
        cat.close()


def test_gc_command_reports_what_keeps_bytes_and_applies_the_policy(tmp_path, capsys):
    data = tmp_path / "data"
    _purge_scenario(data)
    args = ["gc", "--data-dir", str(data), "--grace-hours", "0"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "old versions kept by the policy" in out and "900000 bytes" in out
    assert "trash kept by the policy" in out and "600000 bytes" in out
    assert "dry run" in out and _disk_bytes(data) >= 1_900_000
    time.sleep(0.01)  # the cutoff is "now"; the trash timestamp must be older
    assert cli_main([*args, "--delete", "--prune-trash-older-than", "0s", "--prune-versions-older-than", "0"]) == 0
    out = capsys.readouterr().out
    assert "purged 1 trashed collection(s)" in out and "deleted 3 (1500000 bytes)" in out
    assert _disk_bytes(data) == 400_000
    with pytest.raises(SystemExit) as exc:
        cli_main([*args, "--prune-trash-older-than", "soon"])
    assert exc.value.code == 2 and "not a duration" in capsys.readouterr().err


def test_gc_refuses_a_data_dir_without_catalog(tmp_path, capsys):
    assert cli_main(["gc", "--data-dir", str(tmp_path / "nothing")]) == 1
    assert "no catalog" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()

"""kill -9 mid-upload loses no acknowledged write (issue 7, scenario 3).

100 uploads of mixed sizes (1 KiB .. 20 MiB) run against a ``davcoll serve``
process that is killed with SIGKILL part-way -- twice, restarting on the same
data directory each time.  Afterwards:
  - every upload that got a 2xx reads back byte for byte;
  - an upload that got no answer is either absent or complete (its commit
    landed just before the kill); no file has wrong or partial content;
  - the catalog opens cleanly and passes SQLite's integrity check;
  - ``davcoll gc`` (dry run through the CLI, then ``--delete`` with grace 0)
    removes only blocks no collection version references, and every file
    still reads back afterwards from a fresh server (empty block cache).

This would fail if a 2xx could go out before the catalog commit was durable
(SQLite synchronous=FULL, block files fsynced and renamed into place), if a
block file could be visible half-written under its final name, or if gc
considered a committed block unreferenced.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

import pytest
import requests

from davcoll.gc import collect_garbage
from davcoll.manifest import parse_manifest
from davcoll.storage.local_blocks import LocalBlockStore
from davcoll.storage.local_catalog import LocalCatalog, db_path_for
from davclient import hrefs
from server_util import ServerProcess

KiB, MiB = 1 << 10, 1 << 20
UPLOADS = 100


def sizes(n: int, seed: int = 11) -> list[int]:
    """Log-uniform sizes from 1 KiB to 20 MiB, both ends included."""
    rng = random.Random(seed)
    lo, hi = math.log(KiB), math.log(20 * MiB)
    out = [int(math.exp(rng.uniform(lo, hi))) for _ in range(n - 2)] + [KiB, 20 * MiB]
    rng.shuffle(out)
    return out


def body_of(i: int, size: int) -> bytes:
    return random.Random(1000 + i).randbytes(size)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def upload_round(srv: ServerProcess, jobs: list[tuple[int, int]], kill_after: int) -> dict[int, object]:
    """Upload ``jobs`` (index, size) with 12 clients; SIGKILL the server once
    ``kill_after`` uploads were acknowledged.  Returns index -> status code
    (or the exception of an upload that got no answer)."""
    acked = 0
    lock = threading.Lock()
    killed = threading.Event()
    results: dict[int, object] = {}

    def one(job):
        i, size = job
        data = body_of(i, size)  # (after the kill: refused, unacknowledged)
        try:
            r = requests.put(srv.url + f"c/u{i:03d}.bin", data=data, timeout=120)
            results[i] = r.status_code
        except requests.RequestException as e:
            results[i] = e
            return
        nonlocal acked
        if 200 <= r.status_code < 300:
            with lock:
                acked += 1
                if acked == kill_after:
                    srv.kill9()
                    killed.set()

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(one, jobs))
    assert killed.is_set(), "the server was never killed"
    return results


def check_state(url: str, expected: dict[int, str], unanswered: dict[int, str], manifest_text: str) -> None:
    """expected: index -> sha of acknowledged uploads; unanswered: the same
    for uploads that got no answer (absent or complete)."""
    files = {p: sum(s[2] for s in segs) for p, segs in parse_manifest(manifest_text).files()}
    names = {f"u{i:03d}.bin": i for i in list(expected) + list(unanswered)}
    assert set(files) <= set(names), set(files) - set(names)
    for i, digest in expected.items():
        r = requests.get(url + f"c/u{i:03d}.bin", timeout=60)
        assert r.status_code == 200 and sha(r.content) == digest, (i, r.status_code)
    for i, digest in unanswered.items():
        r = requests.get(url + f"c/u{i:03d}.bin", timeout=60)
        assert r.status_code in (200, 404), r.status_code
        if r.status_code == 200:
            assert sha(r.content) == digest, f"u{i:03d}.bin is visible with wrong content"
    # The listing agrees with the catalog.
    r = requests.request("PROPFIND", url + "c/", headers={"Depth": "1"}, timeout=60)
    assert r.status_code == 207
    listed = {unquote(h).rstrip("/").rsplit("/", 1)[-1] for h in hrefs(r)}
    listed.discard("c")
    assert listed == set(files)


@pytest.mark.slow
def test_kill9_mid_upload_then_gc(tmp_path):
    data = tmp_path / "data"
    sz = sizes(UPLOADS)
    digests = {i: sha(body_of(i, s)) for i, s in enumerate(sz)}
    expected: dict[int, str] = {}
    unanswered: dict[int, str] = {}
    rounds = [(range(0, 60), 25), (range(60, 100), 15)]

    for rnd, (idx, kill_after) in enumerate(rounds):
        srv = ServerProcess(data, args=["--anonymous", "write"], log_dir=tmp_path / "logs").start()
        try:
            if rnd == 0:
                assert requests.request("MKCOL", srv.url + "c/").status_code == 201
            else:
                # What survived the previous crash is still there after restart.
                cat = LocalCatalog(db_path_for(data))
                check_state(srv.url, expected, unanswered, cat.get(cat.find_by_name("c").uuid).manifest_text)
                cat.close()
            results = upload_round(srv, [(i, sz[i]) for i in idx], kill_after)
        finally:
            srv.stop()
        for i, res in results.items():
            if isinstance(res, int):
                assert res in (201, 204), (i, res)  # an answered upload succeeded
                expected[i] = digests[i]
            else:
                unanswered[i] = digests[i]
        assert len(unanswered) > 0, "the kill interrupted nothing"
        assert "Traceback" not in srv.log_text()

    # The catalog opens cleanly after two SIGKILLs.
    conn = sqlite3.connect(db_path_for(data))
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    cat = LocalCatalog(db_path_for(data))
    rec = cat.find_by_name("c")
    manifest_text = cat.get(rec.uuid).manifest_text
    referenced = cat.referenced_blocks()
    cat.close()

    srv = ServerProcess(data, args=["--anonymous", "write"], log_dir=tmp_path / "logs").start()
    try:
        check_state(srv.url, expected, unanswered, manifest_text)
    finally:
        srv.stop()

    # What a crash can leave besides: a block stored for an upload whose
    # commit never happened, and a half-written temporary file.
    store = LocalBlockStore(data)
    orphan = store.put(b"stored, never committed" * 1000)
    tmp_file = store.path_for(orphan).parent / ".tmp-interrupted"
    tmp_file.write_bytes(b"half a block")
    assert orphan not in referenced

    # gc: a dry run through the CLI changes nothing.
    before = {loc for loc, _, _ in store.iter_blocks()}
    out = subprocess.run([sys.executable, "-m", "davcoll.cli", "gc", "--data-dir", str(data), "--grace-hours", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    dry = {line.split()[1] for line in out.stdout.splitlines() if line.startswith("unreferenced ")}
    assert {loc for loc, _, _ in store.iter_blocks()} == before
    assert not dry & referenced and orphan in dry
    assert tmp_file.exists()
    # ... and the delete run removes exactly the unreferenced blocks.
    buf = io.StringIO()
    found, deleted = collect_garbage(str(data), delete=True, grace_seconds=0, out=buf)
    gone = {line.split()[1] for line in buf.getvalue().splitlines() if line.startswith("deleted ")}
    assert gone == dry and deleted == len(gone) == found
    after = {loc for loc, _, _ in store.iter_blocks()}
    assert after == before - gone
    assert referenced <= after | {"d41d8cd98f00b204e9800998ecf8427e+0"}
    assert not tmp_file.exists()
    print(f"crash test: {len(expected)} acknowledged, {len(unanswered)} unanswered "
          f"({sum(1 for i in unanswered if f'u{i:03d}.bin' in manifest_text)} of them landed before the kill), "
          f"gc removed {len(gone)} orphan block(s) of {len(before)}")

    # Every file still reads back, from a fresh process (empty block cache).
    srv = ServerProcess(data, args=["--anonymous", "write"], log_dir=tmp_path / "logs").start()
    try:
        check_state(srv.url, expected, unanswered, manifest_text)
        # and the server still takes writes
        assert requests.put(srv.url + "c/after-gc.bin", data=b"x" * 5000).status_code == 201
    finally:
        srv.stop()

"""Benchmark LocalCatalog: does an update cost the change, or the collection?

Usage: ``python bench/bench_catalog.py [--quick] [--updates N] [--flat N] [--read-files N]
[--synchronous FULL|NORMAL|OFF] [--dir PATH] [--only spread,flat,read]``

Every update is committed the way a WebDAV PUT commits one: ``replace_files``
with one ``manifest_text/`` source holding one 4 KiB file.  Three parts:

``spread``
    Collections built by ``bench/synth.py`` with 100 files per directory: a
    small one (1,000 files) and a large one (100,000 files over 1,000
    directories; 20,000 with ``--quick``).  ``--updates`` single-file
    updates go into random existing directories.  Reports the median and
    p90 latency per update; the design target is a large/small ratio of at
    most 2 (an update should not grow with the collection).

``flat``
    One directory growing from 0 to ``--flat`` files (3,000; 1,000 with
    ``--quick``), one file per update.  Reports the median latency of the
    first and of the last 100 updates (target: flat, last/first <= 1.5), the
    slowest run of 100 (while the collection is below the catalog's
    ``cheap_pdh_chars``, an update also computes the PDH, which renders the
    touched directory: bounded, but visible), and the database size
    afterwards (after a WAL checkpoint), which shows whether each version
    stores the change or the whole directory again.

``read``
    ``get(uuid, with_manifest=True)`` of a large collection (1,000,000 files
    = 10,000 directories x 100; 100,000 with ``--quick``): right after one
    more single-file update (the touched directory and the PDH are not
    known yet), and then warm (best of three; target <= 0.5 s for 1M files).

Only the catalog's public API is used (plus file sizes), so the same script
measures any implementation of it.  With the default ``--synchronous FULL``
each update includes an fsync, so absolute numbers depend on the disk;
``--synchronous OFF`` shows the CPU part alone.  Nothing is asserted; it
prints tables.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from davcoll.manifest import parse_manifest  # noqa: E402
from davcoll.storage.local_catalog import LocalCatalog  # noqa: E402
from synth import synth_manifest  # noqa: E402

FILES_PER_DIR = 100
NEW_FILE_SIZE = 4096


def dir_paths(manifest_text: str) -> list[str]:
    """Directories that hold files (the update targets)."""
    return [line.split(" ", 1)[0][2:] for line in manifest_text.splitlines() if line.startswith("./")]


def one_update(cat: LocalCatalog, uuid: str, directory: str, i: int) -> float:
    """Seconds to commit one 4 KiB file into ``directory``."""
    name = f"new_{i:05d}.bin"
    loc = f"{hashlib.md5(name.encode()).hexdigest()}+{NEW_FILE_SIZE}"
    text = f". {loc} 0:{NEW_FILE_SIZE}:{name}\n"
    t0 = time.perf_counter()
    cat.update(uuid, replace_files={f"/{directory}/{name}": f"manifest_text/{name}"}, manifest_text=text)
    return time.perf_counter() - t0


def db_bytes(path: Path) -> int:
    """Database size after folding the WAL back in (what stays on disk)."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    total = 0
    for suffix in ("", "-wal"):
        p = Path(str(path) + suffix)
        if p.exists():
            total += p.stat().st_size
    return total


def bench_spread(workdir: Path, nfiles: int, updates: int, synchronous: str) -> dict[str, Any]:
    ndirs = nfiles // FILES_PER_DIR
    text = synth_manifest(ndirs, FILES_PER_DIR, seed=ndirs)
    dirs = dir_paths(text)
    cat = LocalCatalog(workdir / f"spread-{nfiles}.sqlite3", synchronous=synchronous)
    try:
        t0 = time.perf_counter()
        uuid = cat.create(f"c{nfiles}", text).uuid
        create_s = time.perf_counter() - t0
        rng = random.Random(nfiles)
        for i in range(3):  # warm-up: page cache, statement cache
            one_update(cat, uuid, rng.choice(dirs), i)
        times = [one_update(cat, uuid, rng.choice(dirs), 1000 + i) for i in range(updates)]
        rec = cat.get(uuid)
        got = parse_manifest(rec.manifest_text or "")
        assert sum(1 for _ in got.files()) == nfiles + 3 + updates, "updates lost"
        return {
            "files": nfiles,
            "median_ms": statistics.median(times) * 1e3,
            "p90_ms": sorted(times)[int(len(times) * 0.9) - 1] * 1e3,
            "create_s": create_s,
        }
    finally:
        cat.close()


def bench_flat(workdir: Path, nfiles: int, synchronous: str) -> dict[str, Any]:
    cat = LocalCatalog(workdir / "flat.sqlite3", synchronous=synchronous)
    try:
        uuid = cat.create("flat").uuid
        times = [one_update(cat, uuid, "flat", i) for i in range(nfiles)]
        rec = cat.get(uuid)
        assert len(parse_manifest(rec.manifest_text or "").root["flat"]) == nfiles, "updates lost"
        first = statistics.median(times[:100]) * 1e3
        last = statistics.median(times[-100:]) * 1e3
        windows = [(statistics.median(times[i : i + 100]) * 1e3, i) for i in range(0, len(times) - 99, 100)]
        worst_ms, worst_at = max(windows)
    finally:
        cat.close()
    return {
        "files": nfiles,
        "first_ms": first,
        "last_ms": last,
        "worst_ms": worst_ms,
        "worst_at": worst_at,
        "db_mib": db_bytes(workdir / "flat.sqlite3") / 2**20,
    }


def bench_read(workdir: Path, nfiles: int, synchronous: str) -> dict[str, Any]:
    ndirs = nfiles // FILES_PER_DIR
    text = synth_manifest(ndirs, FILES_PER_DIR, seed=ndirs)
    dirs = dir_paths(text)
    path = workdir / f"read-{nfiles}.sqlite3"
    cat = LocalCatalog(path, synchronous=synchronous)
    try:
        t0 = time.perf_counter()
        uuid = cat.create(f"r{nfiles}", text).uuid
        create_s = time.perf_counter() - t0
        del text
        update_s = one_update(cat, uuid, dirs[len(dirs) // 2], 0)
        t0 = time.perf_counter()
        rec = cat.get(uuid)
        after_update_s = time.perf_counter() - t0
        warm = []
        for _ in range(3):
            t0 = time.perf_counter()
            again = cat.get(uuid)
            warm.append(time.perf_counter() - t0)
        assert again.manifest_text == rec.manifest_text and again.portable_data_hash == rec.portable_data_hash
        mb = len(rec.manifest_text or "") / 1e6
    finally:
        cat.close()
    return {
        "files": nfiles,
        "create_s": create_s,
        "update_ms": update_s * 1e3,
        "after_update_s": after_update_s,
        "warm_s": min(warm),
        "manifest_mb": mb,
        "db_mib": db_bytes(path) / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller collections (20k spread, 1k flat, 100k read)")
    ap.add_argument("--updates", type=int, default=None, help="timed updates per spread collection (default 40, quick 20)")
    ap.add_argument("--flat", type=int, default=None, help="files put into one directory (default 3000, quick 1000)")
    ap.add_argument("--read-files", type=int, default=None, help="files in the read benchmark (default 1,000,000)")
    ap.add_argument("--synchronous", default="FULL", help="SQLite synchronous setting (FULL, NORMAL, OFF)")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the databases (default: a temp dir)")
    ap.add_argument("--only", default="spread,flat,read", help="comma-separated parts to run")
    args = ap.parse_args()
    updates = args.updates or (20 if args.quick else 40)
    large = 20_000 if args.quick else 100_000
    flat = args.flat or (1_000 if args.quick else 3_000)
    read_files = args.read_files or (100_000 if args.quick else 1_000_000)
    parts = set(args.only.split(","))

    workdir = Path(tempfile.mkdtemp(prefix="bench-catalog-", dir=args.dir))
    print(f"LocalCatalog, synchronous={args.synchronous}, updates put one {NEW_FILE_SIZE} B file via replace_files"
          f" (pid {os.getpid()})")
    try:
        if "spread" in parts:
            results = [bench_spread(workdir, n, updates, args.synchronous) for n in (1_000, large)]
            print(f"\n(a) {updates} updates into random directories of {FILES_PER_DIR} files")
            print(f"{'files':>8} {'median ms':>10} {'p90 ms':>8} {'create s':>9}")
            for r in results:
                print(f"{r['files']:>8} {r['median_ms']:>10.2f} {r['p90_ms']:>8.2f} {r['create_s']:>9.2f}")
            small, big = results
            print(f"update median ratio {big['files']} / {small['files']} files: "
                  f"{big['median_ms'] / small['median_ms']:.2f} (target <= 2)")
        if "flat" in parts:
            r = bench_flat(workdir, flat, args.synchronous)
            print(f"\n(b) one directory growing from 0 to {r['files']} files, one file per update")
            print(f"first 100 median {r['first_ms']:.2f} ms, last 100 median {r['last_ms']:.2f} ms, "
                  f"ratio {r['last_ms'] / r['first_ms']:.2f} (target <= 1.5); database {r['db_mib']:.1f} MiB")
            print(f"slowest 100 in a row: median {r['worst_ms']:.2f} ms (updates {r['worst_at']}-{r['worst_at'] + 99})")
        if "read" in parts:
            r = bench_read(workdir, read_files, args.synchronous)
            print(f"\n(c) full manifest of {r['files']} files ({r['manifest_mb']:.1f} MB text, "
                  f"database {r['db_mib']:.0f} MiB)")
            print(f"create {r['create_s']:.2f} s; one update {r['update_ms']:.1f} ms; "
                  f"get with manifest right after it {r['after_update_s']:.3f} s; "
                  f"warm {r['warm_s']:.3f} s (target <= 0.5 s)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark LocalCatalog: does an update cost the change, or the collection?

Usage: ``python bench/bench_catalog.py [--quick] [--updates N] [--synchronous FULL|NORMAL|OFF] [--dir PATH]``

Two collections built by ``bench/synth.py`` with 100 files per directory:
a small one (1,000 files) and a large one (100,000 files; 20,000 with
``--quick``).  Into each, the benchmark commits ``--updates`` single-file
changes the way a WebDAV PUT does -- ``replace_files`` with one
``manifest_text/`` source holding one 4 KiB file, each into a random
existing directory -- and reports the median latency per update.  The
design target is a large/small ratio of at most 2: an update re-renders one
directory row, so it should not grow with the collection.

It also times what does grow with the collection: creating it, and
``get(uuid)`` with the manifest (assembling the full text from its rows plus
the PDH), cold (PDH not yet cached) and warm.

Every update is a committed SQLite transaction; with the default
``--synchronous FULL`` each one includes an fsync, so absolute numbers
depend on the disk.  ``--synchronous OFF`` shows the CPU part alone.
Nothing here is asserted; it prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from davcoll.manifest import parse_manifest  # noqa: E402
from davcoll.storage.local_catalog import LocalCatalog, assemble  # noqa: E402
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


def bench_size(workdir: Path, nfiles: int, updates: int, synchronous: str) -> dict[str, float]:
    ndirs = nfiles // FILES_PER_DIR
    text = synth_manifest(ndirs, FILES_PER_DIR, seed=ndirs)
    dirs = dir_paths(text)
    cat = LocalCatalog(workdir / f"catalog-{nfiles}.sqlite3", synchronous=synchronous)
    try:
        t0 = time.perf_counter()
        uuid = cat.create(f"c{nfiles}", text).uuid
        create_s = time.perf_counter() - t0

        rng = random.Random(nfiles)
        for i in range(3):  # warm-up: page cache, statement cache
            one_update(cat, uuid, rng.choice(dirs), i)
        times = [one_update(cat, uuid, rng.choice(dirs), 1000 + i) for i in range(updates)]

        t0 = time.perf_counter()
        rec = cat.get(uuid)
        get_cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cat.get(uuid)
        get_warm_s = time.perf_counter() - t0

        with sqlite3.connect(cat.path) as conn:  # the stored rows, to time assembly alone
            rows = conn.execute("SELECT path, line FROM dirs WHERE uuid = ? AND v_to IS NULL", (uuid,)).fetchall()
        t0 = time.perf_counter()
        assemble(rows)
        assemble_s = time.perf_counter() - t0

        got = parse_manifest(rec.manifest_text or "")
        assert sum(1 for _ in got.files()) == nfiles + 3 + updates, "updates lost"
        return {
            "files": nfiles,
            "median_ms": statistics.median(times) * 1e3,
            "p90_ms": sorted(times)[int(len(times) * 0.9) - 1] * 1e3,
            "create_s": create_s,
            "get_cold_s": get_cold_s,
            "get_warm_s": get_warm_s,
            "assemble_s": assemble_s,
            "manifest_mb": len(rec.manifest_text or "") / 1e6,
        }
    finally:
        cat.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20,000 files instead of 100,000 for the large collection")
    ap.add_argument("--updates", type=int, default=None, help="timed updates per collection (default 40, quick 20)")
    ap.add_argument("--synchronous", default="FULL", help="SQLite synchronous setting (FULL, NORMAL, OFF)")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the databases (default: a temp dir)")
    args = ap.parse_args()
    updates = args.updates or (20 if args.quick else 40)
    large = 20_000 if args.quick else 100_000

    workdir = Path(tempfile.mkdtemp(prefix="bench-catalog-", dir=args.dir))
    try:
        results = [bench_size(workdir, n, updates, args.synchronous) for n in (1_000, large)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"LocalCatalog update latency: one {NEW_FILE_SIZE} B file via replace_files, "
          f"{updates} updates, synchronous={args.synchronous}")
    print(f"{'files':>8} {'median ms':>10} {'p90 ms':>8} {'create s':>9} {'get cold s':>11} {'get warm s':>11} {'assemble s':>11} {'manifest MB':>12}")
    for r in results:
        print(
            f"{r['files']:>8} {r['median_ms']:>10.2f} {r['p90_ms']:>8.2f} {r['create_s']:>9.2f} "
            f"{r['get_cold_s']:>11.3f} {r['get_warm_s']:>11.3f} {r['assemble_s']:>11.3f} {r['manifest_mb']:>12.2f}"
        )
    small, big = results
    ratio = big["median_ms"] / small["median_ms"]
    print(f"update median ratio {big['files']} / {small['files']} files: {ratio:.2f} (target <= 2)")
    print(f"full manifest of {big['files']} files: assemble {big['assemble_s'] * 1e3:.1f} ms, "
          f"get with manifest {big['get_warm_s'] * 1e3:.1f} ms warm / {big['get_cold_s'] * 1e3:.1f} ms cold (PDH computed)")


if __name__ == "__main__":
    main()

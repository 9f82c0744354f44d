"""Benchmark the collection filesystem (``davcoll.collection``) at scale.

Usage: ``python bench/bench_collection.py [--quick] [--repeat N]``

Measures, on synthetic manifests from ``bench/synth.py``:

* open + list   -- ``CollectionTree(text)`` of a 1,000,000-file collection
  (10,000 dirs x 100 files; 100,000 with ``--quick``), which runs
  ``index_streams``, then ``listdir`` of one small directory (parsing that
  directory's line only).  Target <= 1 s.
* rename / copy -- of a 10 GiB file made of 160 segments (64 MiB blocks),
  and for contrast of a 16,000-segment file: the tree operation, the delta
  compile (``batches``), the ETag, and the marshal of the changed
  directory.  Rename/copy/batches must not depend on the segment count;
  only the ETag and the directory re-render are O(segments).  The block
  store must see no put or get.
* marshal       -- of a 100,000-file collection (20,000 with ``--quick``)
  after one small change, with ``trusted_normalized=True`` (untouched
  directories reuse their stored lines), against a full marshal of the same
  collection with every directory loaded and nothing reusable.
  Target: >= 20x cheaper.
* memory        -- in a fresh subprocess: RSS growth from loading every
  directory of the 1M (100k) collection, per file.  Target <= 500 B/file.

Exit status is 1 if a target is missed, so CI can run ``--quick``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from davcoll.collection import ByteBudget, ChangeSet, CollectionTree, Flusher  # noqa: E402
from davcoll.manifest import MAX_BLOCK_SIZE, index_streams  # noqa: E402
from davcoll.storage.memory_blocks import MemoryBlockStore  # noqa: E402
from synth import synth_manifest  # noqa: E402
from report import print_targets  # noqa: E402

TARGET_OPEN_S = 1.0
TARGET_MARSHAL_RATIO = 20.0
TARGET_BYTES_PER_FILE = 500

FLUSHER = Flusher(4)


def _tree(text: str, store: MemoryBlockStore | None = None, *, trusted: bool = True) -> CollectionTree:
    return CollectionTree(
        text,
        store=store if store is not None else MemoryBlockStore(),
        flusher=FLUSHER,
        budget=ByteBudget(256 << 20),
        trusted_normalized=trusted,
        uuid="zzzzz-4zz18-benchbenchbench",
    )


def _best(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` runs: the least noisy estimate of cost."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _median_us(fn, repeat: int) -> float:
    """Median of ``repeat`` timings of a fast operation, in microseconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1000


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


# --------------------------------------------------------------------- open


def bench_open(text: str, ndirs: int, repeat: int) -> dict:
    some_dir = "batch_%03d/dir_%06d" % ((ndirs // 2) // 100, ndirs // 2)
    open_s = index_s = list_s = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        tree = _tree(text)
        t1 = time.perf_counter()
        listing = tree.listdir(some_dir)
        t2 = time.perf_counter()
        open_s, list_s = min(open_s, t2 - t0), min(list_s, t2 - t1)
        assert len(listing) == 100
        del tree
        gc.collect()
    index_s = _best(lambda: index_streams(text), repeat)
    return {"open_list_s": open_s, "index_s": index_s, "list_s": list_s}


# ------------------------------------------------------------ rename / copy


def _big_file_manifest(nsegs: int) -> str:
    locs = [f"{hashlib.md5(b'%d' % i).hexdigest()}+{MAX_BLOCK_SIZE}" for i in range(nsegs)]
    size = nsegs * MAX_BLOCK_SIZE
    return f"./data {' '.join(locs)} 0:{size}:big.bin\n./other {locs[0]} 0:10:small\n"


def bench_rename_copy(nsegs: int, repeat: int) -> dict:
    store = MemoryBlockStore()
    tree = _tree(_big_file_manifest(nsegs), store)
    assert tree.stat("data/big.bin").size == nsegs * MAX_BLOCK_SIZE  # loads the dir
    ch = ChangeSet()

    def rename_back_and_forth() -> None:
        tree.rename(ch, "data/big.bin", "data/moved.bin")
        tree.rename(ch, "data/moved.bin", "data/big.bin")

    rename_us = _median_us(rename_back_and_forth, repeat) / 2
    ch.rollback()
    copy_us = _median_us(lambda: tree.copy(ch, "data/big.bin", "other/copy.bin"), repeat)
    ch.rollback()
    tree.rename(ch, "data/big.bin", "other/moved.bin")
    batches_us = _median_us(lambda: ch.batches(tree), repeat)
    ch.rollback()
    ch.release()
    etag_us = _median_us(lambda: tree.stat("data/big.bin").etag, max(repeat // 10, 5))

    def move_and_marshal() -> None:
        c = ChangeSet()
        tree.rename(c, "data/big.bin", "other/big.bin")
        t0 = time.perf_counter_ns()
        tree.marshal()
        marshal_ns.append(time.perf_counter_ns() - t0)
        c.rollback()
        c.release()

    marshal_ns: list[int] = []
    for _ in range(max(repeat // 10, 5)):
        move_and_marshal()
    assert store.puts == 0 and store.gets == 0, "rename/copy touched the block store"
    return {
        "rename_us": rename_us,
        "copy_us": copy_us,
        "batches_us": batches_us,
        "etag_us": etag_us,
        "marshal_us": statistics.median(marshal_ns) / 1000,
    }


# ------------------------------------------------------------------ marshal


def bench_marshal(text: str, nfiles: int, repeat: int) -> dict:
    store = MemoryBlockStore()
    tree = _tree(text, store)
    dirs = sorted(d for d in tree._index.children if d.count("/") == 1)
    incremental = []
    for i in range(repeat):
        d = dirs[(i * 7919) % len(dirs)]
        ch = ChangeSet()
        tree.write_at(ch, f"{d}/new-{i}.txt", 0, b"a small change %d\n" % i)
        ch.flush()
        t0 = time.perf_counter()
        tree.marshal()
        incremental.append(time.perf_counter() - t0)
        ch.committed(tree, version=i + 1)
        ch.release()

    full = float("inf")
    for _ in range(max(2, repeat // 3)):
        plain = _tree(text, store, trusted=False)
        for d in plain._index.children:
            plain.names(d)  # every directory loaded
        t0 = time.perf_counter()
        out = plain.marshal()
        full = min(full, time.perf_counter() - t0)
        assert out == text
        del plain
        gc.collect()
    inc = statistics.median(incremental)
    return {"incremental_s": inc, "incremental_first_s": incremental[0], "full_s": full, "ratio": full / inc}


# ------------------------------------------------------------------- memory


def _memory_child(ndirs: int) -> None:
    """Subprocess body: RSS growth from loading every directory."""
    import resource

    text = synth_manifest(ndirs, 100, seed=3)
    gc.collect()
    rss_text = _rss_bytes()
    tree = _tree(text)
    gc.collect()
    before = _rss_bytes()
    t0 = time.perf_counter()
    for d in list(tree._index.children):
        tree.names(d)
    load_s = time.perf_counter() - t0
    gc.collect()
    after = _rss_bytes()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    nfiles = sum(1 for _ in tree.walk_files("")) if ndirs <= 1000 else ndirs * 100
    print(json.dumps({"before": before, "after": after, "peak": peak, "rss_text": rss_text, "nfiles": nfiles, "load_s": load_s}))


def bench_memory(ndirs: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(ndirs)], check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    n = r["nfiles"]
    return {
        "per_file": (r["after"] - r["before"]) / n,
        "peak_per_file": (max(r["peak"], r["after"]) - r["before"]) / n,
        "index_per_file": (r["before"] - r["rss_text"]) / n,
        "load_s": r["load_s"],
        "nfiles": n,
    }


# --------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100k files instead of 1M (and 20k for marshal)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per timing (best or median is shown)")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        _memory_child(args.memory_child)
        return 0

    big_dirs = 1000 if args.quick else 10000
    marshal_dirs = 200 if args.quick else 1000
    t0 = time.perf_counter()
    text = synth_manifest(big_dirs, 100, seed=1)
    mtext = synth_manifest(marshal_dirs, 100, seed=2)
    print(
        f"synthetic manifests: {big_dirs * 100:,} files ({len(text) / 1e6:.1f} MB) and "
        f"{marshal_dirs * 100:,} files ({len(mtext) / 1e6:.1f} MB), generated in {time.perf_counter() - t0:.1f} s"
    )

    op = bench_open(text, big_dirs, args.repeat)
    del text
    gc.collect()
    rc160 = bench_rename_copy(160, 200 * args.repeat)
    rc16k = bench_rename_copy(16000, 30 * args.repeat)
    ms = bench_marshal(mtext, marshal_dirs * 100, max(5, 3 * args.repeat))
    mem = bench_memory(big_dirs)

    nbig = f"{big_dirs * 100 // 1000}k" if big_dirs < 10000 else "1M"
    rows: list[tuple[str, str, str, bool | None]] = [
        (f"open {nbig}-file collection + list one dir", f"{op['open_list_s']:.3f} s", f"<= {TARGET_OPEN_S} s", op["open_list_s"] <= TARGET_OPEN_S),
        ("  of which index_streams alone", f"{op['index_s']:.3f} s", "", None),
        ("  of which listdir (parses 1 dir)", f"{op['list_s'] * 1e3:.2f} ms", "", None),
    ]
    for label, rc in (("10 GiB file, 160 segs", rc160), ("1 TiB file, 16000 segs", rc16k)):
        rows += [
            (f"rename, {label}", f"{rc['rename_us']:.1f} us", "O(1)", None),
            (f"copy, {label}", f"{rc['copy_us']:.1f} us", "O(1)", None),
            (f"  delta compile (batches)", f"{rc['batches_us']:.1f} us", "", None),
            (f"  ETag (stat)", f"{rc['etag_us']:.1f} us", "O(segments)", None),
            (f"  marshal after move", f"{rc['marshal_us']:.1f} us", "O(segments)", None),
        ]
    rows.append(("  block store puts/gets", "0 / 0", "0", True))
    nm = f"{marshal_dirs * 100 // 1000}k"
    rows += [
        (f"marshal {nm} after 1 change, trusted", f"{ms['incremental_s'] * 1e3:.2f} ms", "", None),
        ("  first one after open", f"{ms['incremental_first_s'] * 1e3:.2f} ms", "", None),
        (f"full marshal {nm}, all dirs loaded", f"{ms['full_s'] * 1e3:.1f} ms", "", None),
        ("  ratio full / incremental", f"{ms['ratio']:.0f}x", f">= {TARGET_MARSHAL_RATIO:.0f}x", ms["ratio"] >= TARGET_MARSHAL_RATIO),
        (f"memory per loaded file ({nbig}, RSS)", f"{mem['per_file']:.0f} B", f"<= {TARGET_BYTES_PER_FILE} B", mem["per_file"] <= TARGET_BYTES_PER_FILE),
        ("  peak during loading, per file", f"{mem['peak_per_file']:.0f} B", "", None),
        ("  stream index (before loading), per file", f"{mem['index_per_file']:.0f} B", "", None),
        ("  time to load every directory", f"{mem['load_s']:.2f} s", "", None),
    ]
    return print_targets(rows)


if __name__ == "__main__":
    sys.exit(main())

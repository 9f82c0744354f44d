"""Benchmark the local block store against plain file I/O of the same bytes.

Usage: ``python bench/bench_blocks.py [--quick] [--blocks N] [--repeat N] [--dir PATH]``

Every operation handles the same 64 MiB blocks of random data, in the same
directory (so the same file system and disk):

* md5          -- ``hashlib.md5`` of each block on one core (the floor of
  both ``put`` and ``get``, which each hash every byte once);
* plain write  -- create a new file, write the block, fsync, close;
* put          -- ``LocalBlockStore.put`` of new blocks (md5, temp file,
  fsync, rename, directory fsync);
* put, 2 threads -- the same puts from two threads (as the collection
  writer runs them: hashing of one block overlaps the disk write of another);
* put (dup)    -- ``put`` of blocks already stored (md5 + compare + utime);
* plain read   -- open and read the whole file;
* get          -- ``LocalBlockStore.get`` (read + size/md5 verification);
* read_chunks  -- ``LocalBlockStore.read_chunks`` in 1 MiB pieces (the
  streaming GET path, incremental md5).

Reads run right after the writes, so both plain reads and store reads come
from the page cache: the comparison is of CPU cost, not of the disk.

Ratios: each store operation against its plain counterpart, and against the
"serial bound" -- the rate of doing the plain I/O and the md5 one after the
other (1 / (1/io + 1/md5)), which is what a single thread can reach at best
when it must hash every byte.  Targets: get >= 0.9 x plain read (only
reachable where md5 is much faster than reading; see the serial-bound column),
put close to its serial bound.  Rates are best of ``--repeat`` runs.
Nothing here is asserted; it prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from davcoll.storage.local_blocks import LocalBlockStore  # noqa: E402

BLOCK = 1 << 26
MB = 1e6


def make_blocks(count: int) -> list[bytes]:
    """``count`` distinct random blocks (distinct so dedup never kicks in)."""
    base = os.urandom(BLOCK)
    return [i.to_bytes(8, "big") + base[8:] for i in range(count)]


def best_rates(nbytes: int, repeat: int, runs: dict[str, Callable[[int], None]]) -> dict[str, float]:
    """Best MB/s of each ``runs[name](rep)`` (one full pass each) over
    ``repeat`` rounds.  The operations alternate within a round, so a disk
    that speeds up or slows down over time affects them alike."""
    best = {name: float("inf") for name in runs}
    for rep in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run(rep)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: nbytes / secs / MB for name, secs in best.items()}


def plain_write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            pos += os.write(fd, view[pos:])
        os.fsync(fd)
    finally:
        os.close(fd)


def plain_read(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.readall()


def serial(a: float, b: float) -> float:
    """Rate of doing two passes over the same bytes one after the other."""
    return 1.0 / (1.0 / a + 1.0 / b)


def measure(work: Path, blocks: list[bytes], repeat: int) -> dict[str, float]:
    total = len(blocks) * BLOCK
    md5_all = lambda _: [hashlib.md5(b).hexdigest() for b in blocks]  # noqa: E731
    rates = best_rates(total, repeat, {"md5": md5_all})

    # New files on every run, as put creates new files: overwriting an
    # existing file in place is several times faster on some file systems
    # and would flatter the baseline.
    def write_plain(rep: int) -> None:
        plain_dir = work / f"plain{rep}"
        plain_dir.mkdir()
        for i, b in enumerate(blocks):
            plain_write(plain_dir / f"block{i}", b)

    def put_new(rep: int) -> None:
        store = LocalBlockStore(work / f"store{rep}")
        for b in blocks:
            store.put(b)

    def put_parallel(rep: int) -> None:
        store = LocalBlockStore(work / f"pstore{rep}")
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(store.put, blocks))

    rates |= best_rates(total, repeat, {"plain write": write_plain, "put": put_new, "put x2": put_parallel})
    for rep in range(repeat):
        shutil.rmtree(work / f"pstore{rep}")
        if rep < repeat - 1:
            shutil.rmtree(work / f"plain{rep}")
            shutil.rmtree(work / f"store{rep}")
    paths = [work / f"plain{repeat - 1}" / f"block{i}" for i in range(len(blocks))]
    store = LocalBlockStore(work / f"store{repeat - 1}")
    locs = [f"{hashlib.md5(b).hexdigest()}+{len(b)}" for b in blocks]

    def stream(_: int) -> None:
        for loc in locs:
            for _piece in store.read_chunks(loc, 1 << 20):
                pass

    rates |= best_rates(total, repeat, {"put (dup)": lambda _: [store.put(b) for b in blocks]})
    rates |= best_rates(
        total,
        repeat,
        {
            "plain read": lambda _: [plain_read(p) for p in paths],
            "get": lambda _: [store.get(loc) for loc in locs],
            "read_chunks": stream,
        },
    )
    return rates


def report(rates: dict[str, float]) -> None:
    md5 = rates["md5"]
    w_bound = serial(rates["plain write"], md5)
    r_bound = serial(rates["plain read"], md5)
    rows = [
        ("md5 (1 core)", md5, "", ""),
        ("plain write+fsync", rates["plain write"], "1.00", ""),
        ("put (new)", rates["put"], f"{rates['put'] / rates['plain write']:.2f}", f"{rates['put'] / w_bound:.2f}"),
        ("put, 2 threads", rates["put x2"], f"{rates['put x2'] / rates['plain write']:.2f}", f"{rates['put x2'] / w_bound:.2f}"),
        ("put (duplicate)", rates["put (dup)"], f"{rates['put (dup)'] / rates['plain write']:.2f}", ""),
        ("plain read", rates["plain read"], "1.00", ""),
        ("get", rates["get"], f"{rates['get'] / rates['plain read']:.2f}", f"{rates['get'] / r_bound:.2f}"),
        (
            "read_chunks 1 MiB",
            rates["read_chunks"],
            f"{rates['read_chunks'] / rates['plain read']:.2f}",
            f"{rates['read_chunks'] / r_bound:.2f}",
        ),
    ]
    print(f"{'operation':<20}{'MB/s':>9}  {'vs plain':>9}  {'vs serial bound':>16}")
    for name, rate, vs_plain, vs_bound in rows:
        print(f"{name:<20}{rate:>9.0f}  {vs_plain:>9}  {vs_bound:>16}")
    print()
    print(f"serial bounds: write+md5 {w_bound:.0f} MB/s, read+md5 {r_bound:.0f} MB/s")
    print(f"get vs md5 alone: {rates['get'] / md5:.2f}; put vs md5 alone: {rates['put'] / md5:.2f}")
    verdict = "met" if rates["get"] / rates["plain read"] >= 0.9 else "not met (md5-bound; see serial bound)"
    print(f"target get >= 0.9 x plain read: {verdict}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 blocks, 1 run (default 8 blocks, 3 runs)")
    ap.add_argument("--blocks", type=int, help="number of 64 MiB blocks")
    ap.add_argument("--repeat", type=int, help="runs per operation (best is reported)")
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    count = args.blocks or (4 if args.quick else 8)
    repeat = args.repeat or (1 if args.quick else 3)
    blocks = make_blocks(count)
    work = Path(tempfile.mkdtemp(prefix="bench-blocks-", dir=args.dir))
    print(f"{count} x 64 MiB blocks, best of {repeat}, in {work}")
    try:
        rates = measure(work, blocks, repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())

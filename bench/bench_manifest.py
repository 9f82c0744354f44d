"""Benchmark the manifest engine on a large synthetic manifest.

Usage: ``python bench/bench_manifest.py [--quick] [--repeat N]``

Measures, on the text from ``bench/synth.py`` (10,000 dirs x 100 files, or
1,000 x 100 with ``--quick``):

* parse      -- ``parse_manifest`` (in a fresh subprocess, so the heap is
  clean and the RSS figures are not polluted by earlier runs), including
  the one young-generation GC pass it defers;
* render     -- ``Manifest.to_text()`` of the parsed tree (the normalize cost
  on top of parsing);
* pdh        -- ``portable_data_hash`` of the unsigned text and of the same
  layout with ``+A`` hints on every locator (the strip path);
* index      -- ``index_streams`` (the lazy per-directory index);
* load_dir   -- ``StreamIndex.load_dir`` of one directory (the lazy path's
  unit of work);
* RSS/file   -- growth of resident memory caused by parsing, divided by the
  number of files (the text itself is already in memory before parsing).

Targets (2-core machine): parse <= 3 s, index <= 0.5 s, <= 600 B/file.
Exit status is 1 if a target is missed, so CI can run ``--quick``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from davcoll.manifest import (  # noqa: E402
    index_streams,
    normalize_manifest,
    parse_manifest,
    portable_data_hash,
)
from synth import synth_manifest  # noqa: E402
from report import print_targets  # noqa: E402

TARGET_PARSE_S = 3.0
TARGET_INDEX_S = 0.5
TARGET_RSS_PER_FILE = 600


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc; falls back to 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _child(path: str) -> None:
    """Subprocess body: parse once, report time and memory as JSON."""
    import resource

    text = Path(path).read_text(encoding="utf-8")
    before = _rss_bytes()
    t0 = time.perf_counter()
    m = parse_manifest(text)
    # parse_manifest pauses the cyclic GC; the first collection afterwards
    # visits every new object once.  Charge that deferred cost to parsing.
    gc.collect(0)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    after = _rss_bytes()
    nfiles = sum(1 for _ in m.files())
    print(json.dumps({"parse_s": dt, "before": before, "peak": peak, "after": after, "nfiles": nfiles}))


def _best(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` runs: the least noisy estimate of cost."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100k files instead of 1M")
    ap.add_argument("--repeat", type=int, default=3, help="runs per in-process timing (best is shown)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0

    ndirs = 1000 if args.quick else 10000
    files_per_dir = 100
    t0 = time.perf_counter()
    text = synth_manifest(ndirs, files_per_dir, seed=1)
    signed = synth_manifest(ndirs, files_per_dir, seed=1, signed=True)
    gen_s = time.perf_counter() - t0
    nfiles = ndirs * files_per_dir
    print(f"synthetic manifest: {nfiles:,} files in {ndirs:,} dirs, {len(text) / 1e6:.1f} MB "
          f"({len(signed) / 1e6:.1f} MB signed), generated in {gen_s:.1f} s")

    with tempfile.NamedTemporaryFile("w", suffix=".manifest", delete=False, encoding="utf-8") as f:
        f.write(text)
        path = f.name
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", path], check=True, capture_output=True, text=True
        ).stdout
    finally:
        os.unlink(path)
    child = json.loads(out)
    assert child["nfiles"] == nfiles, child

    m = parse_manifest(text)
    render_s = _best(m.to_text, args.repeat)
    assert m.to_text() == text, "synthetic manifest is not in normalized form"
    pdh_s = _best(lambda: portable_data_hash(text), args.repeat)
    pdh_signed_s = _best(lambda: portable_data_hash(signed), args.repeat)
    assert portable_data_hash(signed) == portable_data_hash(text)
    index_s = _best(lambda: index_streams(text), args.repeat)
    idx = index_streams(text)
    some_dir = "batch_%03d/dir_%06d" % ((ndirs // 2) // 100, ndirs // 2)
    load_s = _best(lambda: idx.load_dir(some_dir), max(args.repeat, 10))
    assert len(idx.load_dir(some_dir)) == files_per_dir
    del m
    normalize_s = _best(lambda: normalize_manifest(text), 1)

    per_file = (child["peak"] - child["before"]) / nfiles
    total_per_file = child["peak"] / nfiles
    rows = [
        ("parse (fresh process)", f"{child['parse_s']:.3f} s", f"<= {TARGET_PARSE_S} s", child["parse_s"] <= TARGET_PARSE_S),
        ("render (to_text)", f"{render_s:.3f} s", "", None),
        ("normalize (parse+render)", f"{normalize_s:.3f} s", "", None),
        ("portable_data_hash", f"{pdh_s:.3f} s", "", None),
        ("portable_data_hash, signed", f"{pdh_signed_s:.3f} s", "", None),
        ("index_streams", f"{index_s:.3f} s", f"<= {TARGET_INDEX_S} s", index_s <= TARGET_INDEX_S),
        ("load_dir (one dir)", f"{load_s * 1e3:.2f} ms", "", None),
        ("RSS growth / parsed file", f"{per_file:.0f} B", f"<= {TARGET_RSS_PER_FILE} B", per_file <= TARGET_RSS_PER_FILE),
        ("peak RSS / file (incl. text)", f"{total_per_file:.0f} B", "", None),
    ]
    return print_targets(rows)


if __name__ == "__main__":
    sys.exit(main())

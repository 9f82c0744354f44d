"""Unknown-PDH lookups vs commits in the embedded catalog (issue 11 §4).

A GET of ``/c=<random pdh>/`` asks the catalog for a PDH nobody has.  The
catalog used to compute every missing PDH on the spot under SQLite's write
lock (0.8 s for 20 collections × 20k files), blocking every commit.  This
measures, on ``--collections`` collections of ``--files`` files each, all
changed since their PDH was last computed (as after ordinary PUTs: the
server never computes PDHs on the write path):

1. latency of one unknown-PDH lookup (``catalog.get(<random pdh>)``);
2. commit latency (one small ``replace_files`` update) alone, and while
   another thread looks up random PDHs back to back.

Catalog level, in one process (the server's catalog calls, without HTTP).
``--repo DIR`` imports davcoll from another checkout (e.g. a ``git archive``
export of an older commit), for before/after numbers:

    git archive 9f20467 | tar -x -C /tmp/before
    python bench/bench_pdh_lookup.py --repo /tmp/before
    python bench/bench_pdh_lookup.py
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def fmt(xs: list[float]) -> str:
    ms = [x * 1000 for x in xs]
    return f"p50 {statistics.median(ms):8.2f} ms  p99 {pct(ms, 0.99):8.2f} ms  max {max(ms):8.2f} ms  (n={len(ms)})"


def measure(collections: int, files: int, lookups: int, commits: int, seconds: float, lookup_interval: float,
            workdir: str | None = None, rounds: int = 1, log=print) -> dict:
    """Set up ``collections`` × ``files`` once, then ``rounds`` times: the
    unknown-PDH lookups, commits alone, commits while lookups run.  Returns
    ``{"setup_s": …, "rounds": [{"lookup", "alone", "busy", "during"}: seconds]}``.
    davcoll is imported from ``sys.path`` as it is when this is called."""
    from workloads import synth_tree

    from davcoll.storage.catalog import NotFound
    from davcoll.storage.local_catalog import LocalCatalog

    work = Path(tempfile.mkdtemp(prefix="davcoll-pdh-", dir=workdir))
    cat = LocalCatalog(work / "catalog.sqlite3", cheap_pdh_chars=0)
    try:
        t0 = time.perf_counter()
        uuids = [cat.create(f"c{i:03d}", synth_tree(files, seed=i)).uuid for i in range(collections)]
        setup = time.perf_counter() - t0
        log(f"set-up: {collections} collections × {files} files in {setup:.1f} s")
        counter = [0]

        def commit(uuid: str) -> float:
            counter[0] += 1
            t = time.perf_counter()
            cat.update(uuid, replace_files={f"/new/f{counter[0]}": ""})
            return time.perf_counter() - t

        def touch_all() -> None:
            for u in uuids:
                commit(u)

        def unknown_lookup() -> float:
            t = time.perf_counter()
            try:
                cat.get(f"{secrets.token_hex(16)}+{secrets.randbelow(10**6)}")
                raise RuntimeError("a random PDH was found?!")
            except NotFound:
                pass
            return time.perf_counter() - t

        out = []
        for _ in range(rounds):
            lookup = []
            for _ in range(lookups):
                touch_all()  # every collection's PDH is missing again
                lookup.append(unknown_lookup())
            alone = [commit(uuids[i % len(uuids)]) for i in range(commits)]
            stop = threading.Event()
            during: list[float] = []

            def hammer(stop: threading.Event, during: list[float]) -> None:
                while not stop.is_set():
                    during.append(unknown_lookup())
                    stop.wait(lookup_interval)

            th = threading.Thread(target=hammer, args=(stop, during), daemon=True)
            th.start()
            try:
                busy: list[float] = []
                end = time.monotonic() + seconds
                while len(busy) < commits or time.monotonic() < end:
                    busy.append(commit(uuids[len(busy) % len(uuids)]))
            finally:
                stop.set()
                th.join()
            out.append({"lookup": lookup, "alone": alone, "busy": busy, "during": during})
        return {"setup_s": setup, "rounds": out}
    finally:
        cat.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collections", type=int, default=20)
    ap.add_argument("--files", type=int, default=20000, help="files per collection (multiple of 100)")
    ap.add_argument("--lookups", type=int, default=5, help="timed unknown-PDH lookups (each after changing all)")
    ap.add_argument("--commits", type=int, default=200, help="timed commits per phase (at least)")
    ap.add_argument("--seconds", type=float, default=5.0, help="phase 2b lasts at least this long")
    ap.add_argument("--lookup-interval", type=float, default=0.05,
                    help="seconds between unknown-PDH lookups in phase 2b (a client polling; 0: back to back)")
    ap.add_argument("--repo", help="import davcoll from this checkout instead of this one")
    ap.add_argument("--workdir", help="directory for the catalog (default: a temp dir, removed after)")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(args.repo).resolve() if args.repo else HERE.parent))
    sys.path.insert(1, str(HERE))
    import davcoll

    print(f"davcoll from {Path(davcoll.__file__).parent}")
    res = measure(args.collections, args.files, args.lookups, args.commits, args.seconds, args.lookup_interval,
                  args.workdir)["rounds"][0]
    print(f"1. unknown-PDH lookup, {args.collections} collections changed: {fmt(res['lookup'])}")
    print(f"2a. commit alone:                            {fmt(res['alone'])}")
    print(f"2b. commit while unknown-PDH lookups run (one per {args.lookup_interval * 1000:.0f} ms):")
    print(f"                                             {fmt(res['busy'])}")
    print(f"    lookups meanwhile:                       {fmt(res['during'])}")


if __name__ == "__main__":
    main()

"""Peak RSS added by reading ``.arvados#collection`` of a big collection.

Builds a trusted (embedded-backend) tree of N files in folders of 100,
then streams its record the way GET does (``record_body()`` chunks) and,
for comparison, builds it whole (``b"".join``).  The peak-RSS counter is
reset between phases through /proc/self/clear_refs (Linux).

    .venv/bin/python bench/bench_record_rss.py [N=1000000] [--json]
"""

from __future__ import annotations

import gc
import json
import sys

from davcoll.collection import ByteBudget, CollectionTree, Flusher
from davcoll.storage.memory_blocks import MemoryBlockStore

LOC = "acbd18db4cc2f85cedef654fccc4a4d8+300"


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(n: int, per: int = 100, log=print) -> dict[str, dict[str, float]]:
    """Build the tree of ``n`` files, then per way of reading its record:
    ``{"streamed"|"whole": {"mb": JSON size, "growth_mib": peak RSS added}}``.
    Measures this process: run it in a fresh one (``--json``)."""
    toks = " ".join(f"{3 * i}:3:file-{i:05d}.dat" for i in range(per))
    text = "".join(f"./dir-{d:06d} {LOC} {toks}\n" for d in range(n // per))
    tree = CollectionTree(text, store=MemoryBlockStore(), flusher=Flusher(1), budget=ByteBudget(1 << 20),
                          trusted_normalized=True)
    log(f"{n} files, manifest {len(text) / 1e6:.1f} MB")
    out = {}
    for key, name, run in (("streamed", "streamed (GET)", lambda: sum(len(c) for c in tree.record_body())),
                           ("whole", "built whole", lambda: len(b"".join(tree.record_body())))):
        tree._record_cache = None
        gc.collect()
        reset_peak()
        base = rss_kib("VmRSS")
        size = run()
        peak = rss_kib("VmHWM")
        out[key] = {"mb": size / 1e6, "growth_mib": (peak - base) / 1024}
        log(f"{name:15s}: {size / 1e6:.1f} MB of JSON, peak RSS +{(peak - base) / 1024:.1f} MiB")
    return out


def main(argv: list[str] | None = None) -> None:
    """``[N] [--json]``: with ``--json`` one JSON line of ``measure``'s result
    on stdout (for bench/run.py), else the human-readable lines."""
    args = sys.argv[1:] if argv is None else argv
    as_json = "--json" in args
    rest = [a for a in args if a != "--json"]
    n = int(rest[0]) if rest else 1_000_000
    if as_json:
        print(json.dumps(measure(n, log=lambda msg: print(msg, file=sys.stderr))), flush=True)
    else:
        measure(n)


if __name__ == "__main__":
    main()

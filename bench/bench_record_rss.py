"""Peak RSS added by reading ``.arvados#collection`` of a big collection.

Builds a trusted (embedded-backend) tree of N files in folders of 100,
then streams its record the way GET does (``record_body()`` chunks) and,
for comparison, builds it whole (``b"".join``).  The peak-RSS counter is
reset between phases through /proc/self/clear_refs (Linux).

    .venv/bin/python bench/bench_record_rss.py [N=1000000]
"""

from __future__ import annotations

import gc
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


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    per = 100
    toks = " ".join(f"{3 * i}:3:file-{i:05d}.dat" for i in range(per))
    text = "".join(f"./dir-{d:06d} {LOC} {toks}\n" for d in range(n // per))
    tree = CollectionTree(text, store=MemoryBlockStore(), flusher=Flusher(1), budget=ByteBudget(1 << 20),
                          trusted_normalized=True)
    print(f"{n} files, manifest {len(text) / 1e6:.1f} MB")
    for name, run in (("streamed (GET)", lambda: sum(len(c) for c in tree.record_body())),
                      ("built whole", lambda: len(b"".join(tree.record_body())))):
        tree._record_cache = None
        gc.collect()
        reset_peak()
        base = rss_kib("VmRSS")
        size = run()
        peak = rss_kib("VmHWM")
        print(f"{name:15s}: {size / 1e6:.1f} MB of JSON, peak RSS +{(peak - base) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()

"""Synthetic manifests for benchmarks (no real data behind them).

``synth_manifest`` lays files out the way an SDK writer does: one global byte
stream, cut into 64 MiB blocks, files appended in the order the normalized
manifest lists them (directories depth-first, names sorted).  Because the
layout follows that order, the generated text is already in the Python SDK's
normalized form, so ``normalize_manifest(text) == text`` -- benchmarks can
time parse and render against the same text and cross-check them.

Block digests are fake (md5 of a counter), which is all a manifest benchmark
needs: nothing ever reads the blocks.  The size mix is chosen so that lines
carry several locators, some files are empty, and a few large files span two
or more blocks, i.e. the parser's multi-block path is exercised, not only the
one-block fast path.
"""

from __future__ import annotations

import hashlib
import random

__all__ = ["synth_manifest", "BLOCK_SIZE"]

BLOCK_SIZE = 1 << 26  # 64 MiB, the Keep maximum
_EMPTY_BLOCK = "d41d8cd98f00b204e9800998ecf8427e+0"


def _escape(name: str) -> str:
    # Only the characters synth names can contain that need escaping; kept
    # local so benchmarks of davcoll.manifest do not depend on its own escaper.
    return name.replace("\\", "\\134").replace(" ", "\\040").replace(":", "\\072")


def _file_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.02:
        return 0  # empty files exist in real collections
    if r < 0.90:
        return rng.randint(1, 256 * 1024)
    if r < 0.995:
        return rng.randint(256 * 1024, 16 << 20)
    return rng.randint(BLOCK_SIZE, 3 * BLOCK_SIZE)  # spans 2-4 blocks


def _file_name(rng: random.Random, j: int) -> str:
    # Zero-padded index first so names are unique; a random tail so names are
    # as long as real ones (~25-35 chars) and some need escaping.
    tail = "%08x" % rng.getrandbits(32)
    r = rng.random()
    if r < 0.02:
        return f"file {j:05d} copy {tail}.txt"
    if r < 0.03:
        return f"run:{j:05d}:{tail}.log"
    return f"sample_{j:05d}_{tail}.fastq.gz"


def synth_manifest(ndirs: int, files_per_dir: int, seed: int = 0, *, signed: bool = False) -> str:
    """A normalized manifest of ``ndirs`` directories with ``files_per_dir`` files each.

    Directories are ``./batch_NNN/dir_NNNNNN`` (100 per batch), so the tree
    has two levels and the root has no files.  Files are packed back to back
    into 64 MiB blocks (the last block is short, and about one directory in
    ten ends its block early, as a writer that flushes on close would), so
    small files share blocks and large ones span several.  With ``signed``,
    every locator carries a fake ``+A`` permission hint, for timing the PDH
    strip path.  Deterministic for a given ``seed``.
    """
    rng = random.Random(seed)
    sig_expiry = "@%08x" % 0x7FFFFFFF

    # Block list of the global stream, built lazily as data is appended.
    block_locs: list[str] = []
    block_starts: list[int] = []
    block_sizes: list[int] = []
    cur_start = 0  # global offset where the open block begins
    pos = 0  # global write offset

    def close_block(end: int) -> None:
        nonlocal cur_start
        size = end - cur_start
        n = len(block_locs)
        md5 = hashlib.md5(f"{seed}/{n}".encode()).hexdigest()
        loc = f"{md5}+{size}"
        if signed:
            sig = hashlib.sha1(loc.encode()).hexdigest()
            loc = f"{loc}+A{sig}{sig_expiry}"
        block_locs.append(loc)
        block_starts.append(cur_start)
        block_sizes.append(size)
        cur_start = end

    # First pass: choose names and sizes, lay out data, remember ranges.
    dirs: list[tuple[str, list[tuple[str, int, int]]]] = []
    for i in range(ndirs):
        path = f"./batch_{i // 100:03d}/dir_{i:06d}"
        entries = []
        for j in range(files_per_dir):
            entries.append((_file_name(rng, j), _file_size(rng)))
        entries.sort(key=lambda e: e[0])
        files = []
        for name, size in entries:
            files.append((name, pos, size))
            pos += size
            while pos - cur_start >= BLOCK_SIZE:
                close_block(cur_start + BLOCK_SIZE)
        if rng.random() < 0.1 and pos > cur_start:
            close_block(pos)
        dirs.append((path, files))
    if pos > cur_start:
        close_block(pos)

    # Second pass: one normalized line per directory.  Each line lists the
    # blocks its non-empty files touch, in order, and positions are relative
    # to the first listed block.
    out: list[str] = []
    bi = 0  # first block that may still be used (directories are in data order)
    nblocks = len(block_locs)
    for path, files in dirs:
        data = [(s, z) for _, s, z in files if z]
        if data:
            gstart = data[0][0]
            gend = data[-1][0] + data[-1][1]
            while block_starts[bi] + block_sizes[bi] <= gstart:
                bi += 1
            bj = bi
            while bj + 1 < nblocks and block_starts[bj + 1] < gend:
                bj += 1
            locs = " ".join(block_locs[bi : bj + 1])
            base = block_starts[bi]
        else:
            locs = _EMPTY_BLOCK
            base = 0
        toks = []
        for name, start, size in files:
            p = start - base if size else 0
            toks.append(f"{p}:{size}:{_escape(name)}")
        out.append(f"{path} {locs} {' '.join(toks)}\n")
    return "".join(out)


if __name__ == "__main__":  # pragma: no cover - manual inspection aid
    import sys

    nd = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    nf = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    sys.stdout.write(synth_manifest(nd, nf, 0))

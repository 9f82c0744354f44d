"""Benchmark set-up helpers: big collections and their on-disk mirrors.

davcoll side: a synthetic manifest (``bench/synth.py``, deterministic for a
seed) stored straight into the embedded catalog before the server starts.
Its blocks do not exist; listings and small writes never read them.

Reference side: the same tree as real files and directories, each file
sparse (``ftruncate`` to its size), so a listing reports the same sizes
without writing data.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from davcoll.manifest import parse_stream  # noqa: E402
from davcoll.storage.local_catalog import LocalCatalog, db_path_for  # noqa: E402
from synth import synth_manifest  # noqa: E402

FILES_PER_DIR = 100


def synth_tree(nfiles: int, seed: int, files_per_dir: int = FILES_PER_DIR) -> str:
    """Manifest text with ``nfiles`` files, ``files_per_dir`` per directory (0 files: empty)."""
    if nfiles <= 0:
        return ""
    assert nfiles % files_per_dir == 0, "nfiles must be a multiple of files_per_dir"
    return synth_manifest(nfiles // files_per_dir, files_per_dir, seed)


def dir_path(index: int) -> str:
    """Path of synth directory ``index`` (as synth.py names them)."""
    return f"batch_{index // 100:03d}/dir_{index:06d}"


def create_collections(data_dir: Path, collections: dict[str, str]) -> None:
    """Store ``{name: manifest_text}`` in the embedded catalog of ``data_dir``."""
    cat = LocalCatalog(db_path_for(data_dir))
    try:
        for name, text in collections.items():
            cat.create(name, text)
    finally:
        cat.close()


def materialize(manifest_text: str, root: Path) -> int:
    """Create the manifest's tree under ``root`` as sparse files; return the file count."""
    root.mkdir(parents=True, exist_ok=True)
    count = 0
    for n, line in enumerate(manifest_text.splitlines(), 1):
        stream, files = parse_stream(line, n)
        rel = stream[2:] if stream.startswith("./") else ("" if stream == "." else stream)
        base = root / rel if rel else root
        base.mkdir(parents=True, exist_ok=True)
        for name, segments in files:
            path = base / name
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, sum(seg[2] for seg in segments))
            finally:
                os.close(fd)
            count += 1
    return count

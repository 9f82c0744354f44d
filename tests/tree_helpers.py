"""Test-only helpers over the collection tree's public API.

They used to be methods of ``CollectionTree`` (and ``segments.buffers_of``)
although no server code called them; tests share them from here.
"""

from __future__ import annotations

from typing import Any

from davcoll.collection import VIRTUAL_RECORD_NAME, BufferBlock, ChangeSet, CollectionTree, FileReader, ReadOnly, split_path
from davcoll.collection.buffers import zero_segments
from davcoll.collection.segments import Segments, merge, size_of, slice_segments


def record_json(tree: CollectionTree) -> bytes:
    """The whole content of the virtual ``.arvados#collection`` file."""
    body = tree.record_body()
    return body.data if body.data is not None else b"".join(body)


def open_read(tree: CollectionTree, path: str) -> Any:
    """A file object over ``path``'s content (the record file included)."""
    if path.strip("/") == VIRTUAL_RECORD_NAME:
        return tree.record_body().reader()
    return FileReader(tree.snapshot(path), tree.store)


def truncate(tree: CollectionTree, change: ChangeSet, path: str, size: int) -> None:
    """Shrink or grow (with zero bytes) a file.

    The writer lock is taken *before* the current content is read: this is
    a read-modify-write, and reading first would let a concurrent change
    slip in between and be overwritten with stale content.
    """
    if size < 0:
        raise ValueError("negative size")
    parts = split_path(path)
    if tree.readonly:
        raise ReadOnly("collection snapshot is read-only")
    if parts == [VIRTUAL_RECORD_NAME]:
        raise ReadOnly(f"{VIRTUAL_RECORD_NAME} is read-only")
    change.acquire(tree)
    segs = tree.snapshot(path)
    cur = size_of(segs)
    if size <= cur:
        new = merge(slice_segments(segs, 0, size))
    else:
        new = merge(list(segs) + zero_segments(size - cur))
    tree.put_file(change, path, new)


def buffers_of(segs: Segments) -> list[BufferBlock]:
    """Distinct BufferBlocks of a file that are not stored yet."""
    seen: dict[int, BufferBlock] = {}
    for seg in segs:
        src = seg[0]
        if type(src) is not str and src.locator is None:
            seen[id(src)] = src
    return list(seen.values())

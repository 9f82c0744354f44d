"""The node model of a collection tree.

A directory is a ``DirNode``; a file is an immutable tuple of segments (see
``segments.py``).  Directories load lazily from the stored manifest's stream
index: a ``DirNode`` whose ``children`` is None has not been parsed yet, and
only directories that are touched ever are.

Locks: a node belongs to one ``CollectionTree``; its fields are read and
written only under that tree's ``_lock`` (see ``locking.py``).  Segment
tuples are immutable and may be read without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FROM_INDEX", "DirNode", "Stat", "sname_len"]

#: ``DirNode.tail`` value meaning "the own-files line of ``src`` in the
#: stream index is still exact": the line is reused by reference, so a loaded
#: directory costs no second copy of its manifest text.
FROM_INDEX: Any = type("_FromIndex", (), {"__repr__": lambda self: "FROM_INDEX", "__slots__": ()})()


class DirNode:
    """A directory.  ``children`` is None until loaded from ``src``."""

    __slots__ = ("children", "src", "tail", "mtimes")

    def __init__(self, children: dict | None = None, src: str | None = None) -> None:
        self.children: dict[str, Any] | None = children
        # Directory path in the source StreamIndex this node loads from (and,
        # once loaded, whose line ``tail == FROM_INDEX`` refers to).
        self.src = src
        # Cached stream line of this directory's own files *without* the
        # stream name (" <locators> <tokens>\n"), '' when it has no files,
        # FROM_INDEX (see there), or None when it must be rendered again.
        self.tail: Any = None
        # Modification times of entries changed in this process.
        self.mtimes: dict[str, float] | None = None


class Stat:
    __slots__ = ("is_dir", "size", "mtime", "etag")

    def __init__(self, is_dir: bool, size: int, mtime: float, etag: str | None) -> None:
        self.is_dir = is_dir
        self.size = size
        self.mtime = mtime
        self.etag = etag

    def __repr__(self) -> str:
        return f"Stat(is_dir={self.is_dir}, size={self.size}, etag={self.etag})"


def sname_len(parts: list[str]) -> int:
    """Approximate length of the stream name ``./a/b`` of a path."""
    return 1 + sum(len(p) + 1 for p in parts)

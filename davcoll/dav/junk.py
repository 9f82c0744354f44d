"""Finder/Windows metadata files: accepted, readable for a while, never stored.

macOS writes ``._*`` AppleDouble files and ``.DS_Store``; Windows writes
``Thumbs.db`` and ``desktop.ini``.  Committing each of them would cost a
collection update (and a version) and litter shared data.  Writes to such
names succeed and read back from this process's memory, bounded by a byte
limit (least recently used entries are forgotten first), but they never
enter a collection.

``JunkStore._lock`` guards ``_items`` and ``_bytes``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import threading
import time
from collections import OrderedDict

DEFAULT_PATTERNS = ("._*", ".DS_Store", "Thumbs.db", "desktop.ini", ".localized")


class JunkPolicy:
    def __init__(self, patterns: tuple[str, ...] | list[str] = DEFAULT_PATTERNS) -> None:
        self.patterns = tuple(patterns)

    def is_junk(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)


class JunkEntry:
    __slots__ = ("data", "mtime", "etag")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.mtime = time.time()
        self.etag = "junk-" + hashlib.md5(data).hexdigest()


class JunkStore:
    """Byte-bounded in-memory files keyed by (collection id, path)."""

    def __init__(self, policy: JunkPolicy | None = None, max_bytes: int = 64 << 20, max_file: int = 16 << 20) -> None:
        self.policy = policy or JunkPolicy()
        self.max_bytes = max_bytes
        self.max_file = max_file
        self._lock = threading.Lock()
        self._items: "OrderedDict[tuple[str, str], JunkEntry]" = OrderedDict()
        self._bytes = 0

    def is_junk(self, name: str) -> bool:
        return self.policy.is_junk(name)

    def get(self, coll: str, path: str) -> JunkEntry | None:
        with self._lock:
            e = self._items.get((coll, path))
            if e is not None:
                self._items.move_to_end((coll, path))
            return e

    def put(self, coll: str, path: str, data: bytes) -> bool:
        """Store; returns True if the name was new."""
        entry = JunkEntry(data)
        with self._lock:
            old = self._items.pop((coll, path), None)
            if old is not None:
                self._bytes -= len(old.data)
            self._items[(coll, path)] = entry
            self._bytes += len(data)
            while self._bytes > self.max_bytes and self._items:
                _, ev = self._items.popitem(last=False)
                self._bytes -= len(ev.data)
        return old is None

    def delete(self, coll: str, path: str) -> bool:
        with self._lock:
            old = self._items.pop((coll, path), None)
            if old is not None:
                self._bytes -= len(old.data)
            return old is not None

    def names_in(self, coll: str, dir_path: str) -> list[str]:
        """Junk names directly inside ``dir_path`` of a collection."""
        prefix = dir_path + "/" if dir_path else ""
        with self._lock:
            keys = list(self._items)
        out = []
        for c, p in keys:
            if c == coll and p.startswith(prefix) and "/" not in p[len(prefix) :]:
                out.append(p[len(prefix) :])
        return out

    def drop_tree(self, coll: str, dir_path: str = "") -> None:
        """Forget junk under a deleted directory (or a whole collection)."""
        prefix = dir_path + "/" if dir_path else ""
        with self._lock:
            for key in [k for k in self._items if k[0] == coll and k[1].startswith(prefix)]:
                self._bytes -= len(self._items.pop(key).data)

"""Finder/Windows metadata files: accepted, readable for a while, never stored.

macOS writes ``._*`` AppleDouble files and ``.DS_Store``; Windows writes
``Thumbs.db`` and ``desktop.ini``.  Committing each of them would cost a
collection update (and a version) and litter shared data.  Writes to such
names succeed and read back from this process's memory, bounded by a byte
limit that counts names and a per-entry overhead as well as content, and by
a number of entries (least recently used entries are forgotten first), but
they never enter a collection.

The top level (``/``) holds collections only, but Finder writes the
AppleDouble companion of a folder it copies there (``/._Folder``) and aborts
the copy if that fails.  Such names live under a per-principal key
(``top_level_key``), never a collection's: every user sees their own ``/``
(their own collections), so one user's ``._Photos`` must not show up in
another user's listing.

``JunkStore._lock`` guards ``_items``, ``_dirs`` and ``_bytes``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import sys
import threading
import time
from collections import OrderedDict

DEFAULT_PATTERNS = ("._*", ".DS_Store", "Thumbs.db", "desktop.ini", ".localized")
DEFAULT_MAX_ENTRIES = 100_000
# Bytes charged per entry beyond its name strings and content: the entry
# object, its etag string, the key tuple, OrderedDict and directory-index
# slots (tracemalloc: ~440 B per entry in all, names included, on CPython 3.11).
ENTRY_OVERHEAD = 400


TOP_LEVEL_PREFIX = "/"  # collection keys are UUIDs/PDHs and never start with "/"


def top_level_key(principal_id: str) -> str:
    """The JunkStore collection key for metadata files at ``/`` of one principal."""
    return TOP_LEVEL_PREFIX + principal_id


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
    """Bounded in-memory files keyed by (collection id, path).

    The budget counts what an entry really costs, not only its content: the
    key's characters (a 50 KB name costs more than an empty file's bytes;
    3,000 empty ``._`` files with 50 KB names once took 160 MiB uncounted)
    plus ``entry_overhead`` bytes for the entry, its index slot and Python
    object headers.  Past ``max_bytes`` or ``max_entries`` the least
    recently used entries are forgotten (a client that wants them back
    writes them again, as Finder does).

    ``_dirs`` indexes paths by (collection, directory) so a listing costs
    the size of that directory, not of the whole store (it holds the key's
    own path strings, so a name is stored once).
    """

    def __init__(self, policy: JunkPolicy | None = None, max_bytes: int = 64 << 20, max_file: int = 16 << 20,
                 *, max_entries: int = DEFAULT_MAX_ENTRIES, entry_overhead: int = ENTRY_OVERHEAD) -> None:
        self.policy = policy or JunkPolicy()
        self.max_bytes = max_bytes
        self.max_file = max_file
        self.max_entries = max_entries
        self.entry_overhead = entry_overhead
        self._lock = threading.Lock()
        self._items: "OrderedDict[tuple[str, str], JunkEntry]" = OrderedDict()
        self._dirs: dict[tuple[str, str], set[str]] = {}
        self._bytes = 0

    def is_junk(self, name: str) -> bool:
        return self.policy.is_junk(name)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def bytes_used(self) -> int:
        """Bytes charged against ``max_bytes`` (content, names, overhead)."""
        with self._lock:
            return self._bytes

    def _cost(self, key: tuple[str, str], entry: JunkEntry) -> int:
        # getsizeof: a name's real memory (1, 2 or 4 bytes per character).
        return len(entry.data) + sys.getsizeof(key[0]) + sys.getsizeof(key[1]) + self.entry_overhead

    def get(self, coll: str, path: str) -> JunkEntry | None:
        with self._lock:
            e = self._items.get((coll, path))
            if e is not None:
                self._items.move_to_end((coll, path))
            return e

    def put(self, coll: str, path: str, data: bytes) -> bool:
        """Store; returns True if the name was new."""
        key = (coll, path)
        entry = JunkEntry(data)
        with self._lock:
            old = self._pop(key)
            self._items[key] = entry
            self._bytes += self._cost(key, entry)
            self._dirs.setdefault((coll, path.rpartition("/")[0]), set()).add(path)
            while self._items and (self._bytes > self.max_bytes or len(self._items) > self.max_entries):
                self._pop(next(iter(self._items)))
        return old is None

    def _pop(self, key: tuple[str, str]) -> JunkEntry | None:
        """Remove one entry and its index slot (caller holds ``_lock``)."""
        old = self._items.pop(key, None)
        if old is None:
            return None
        self._bytes -= self._cost(key, old)
        parent = key[1].rpartition("/")[0]
        paths = self._dirs.get((key[0], parent))
        if paths is not None:
            paths.discard(key[1])
            if not paths:
                del self._dirs[(key[0], parent)]
        return old

    def copy(self, src_coll: str, src_path: str, dst_coll: str, dst_path: str, *, move: bool) -> bool:
        """Copy (or move) one entry; False if the source does not exist."""
        entry = self.get(src_coll, src_path)
        if entry is None:
            return False
        self.put(dst_coll, dst_path, entry.data)
        if move:
            self.delete(src_coll, src_path)
        return True

    def delete(self, coll: str, path: str) -> bool:
        with self._lock:
            return self._pop((coll, path)) is not None

    def names_in(self, coll: str, dir_path: str) -> list[str]:
        """Junk names directly inside ``dir_path`` of a collection."""
        skip = len(dir_path) + 1 if dir_path else 0
        with self._lock:
            return [p[skip:] for p in self._dirs.get((coll, dir_path), ())]

    def drop_tree(self, coll: str, dir_path: str = "") -> None:
        """Forget junk under a deleted directory (or a whole collection).

        Rare (a DELETE or MOVE of a folder), so a scan of the keys is fine."""
        prefix = dir_path + "/" if dir_path else ""
        with self._lock:
            for key in [k for k in self._items if k[0] == coll and k[1].startswith(prefix)]:
                self._pop(key)

"""Size limits of one collection, and the cheap estimates that enforce them.

Why estimates: knowing a collection's exact entry count or manifest length
would mean rendering it on every request.  Instead each ``CollectionTree``
keeps two running totals, set once from the stored text when it is loaded
and moved by every mutation by the size of what that mutation changes
(O(change), never O(collection)):

* entries: files plus directories.  At load, every file token of the text
  (``count(':') // 2``: stream names and locators never contain a raw ``:``)
  minus empty-directory markers, plus the directories of the stream index.
  A file written as several tokens is counted several times, so the count
  errs on the high side only for fragmented files.
* manifest bytes: at load, the stored text's length; a change adds the
  estimated line length of what it creates (``file_cost``: its token, its
  locators) and subtracts that of what it removes.  Copies and deletes
  measure the subtree they touch (``CollectionTree._measure``): unloaded
  directories by their stored lines, loaded ones by their files.

Depth counts path components inside a collection (``a/b/c.txt`` is 3).  A
tree keeps an upper bound of the depth anything in it reaches, so a move or
copy only walks its subtree for the depth check when the bound says it
might go over.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Stand-in length of a locator whose block is not stored yet (signed
#: ``md5+size+A<40 hex>@<8 hex>`` is about this long).
UNSTORED_LOCATOR_LEN = 92


@dataclass(frozen=True)
class TreeLimits:
    """Caps on one collection; past them a request is refused up front.

    ``max_depth``: creating a path with more components is refused (409);
    deeper trees written by other clients stay readable and deletable.
    ``max_entries`` (files + folders) and ``max_manifest_bytes`` (estimated
    manifest text): a request that would grow past them gets 507 and
    changes nothing.  A request that shrinks the collection is always
    allowed.
    """

    max_depth: int = 256
    max_entries: int = 10_000_000
    max_manifest_bytes: int = 1 << 30


def file_cost(name: str, segs: tuple) -> int:
    """Estimated manifest bytes of one file: its ``pos:len:name`` token
    and one locator per segment (an upper bound: files packed into one
    block share it)."""
    n = len(name) + 24
    for seg in segs:
        src = seg[0]
        n += (len(src) if type(src) is str else UNSTORED_LOCATOR_LEN) + 1
    return n


def text_entries(text: str) -> int:
    """Entries (files) spelled by a manifest's file tokens (see module doc)."""
    return text.count(":") // 2 - text.count(" 0:0:\\056")

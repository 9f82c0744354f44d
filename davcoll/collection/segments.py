"""Segment lists: the content of a file.

A file is an immutable ``tuple`` of segments ``(source, offset, length)``.
``source`` is either a locator string (data in a stored block) or a
``BufferBlock`` (data still in memory, or stored as part of a pack).  Keeping
files as plain tuples is what lets a loaded million-file collection stay
within a few hundred bytes per file, and immutability is what lets readers
stream a snapshot while writers swap in new content.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from typing import Iterable

from ..manifest import coalesce

Segments = tuple


def size_of(segs: Segments) -> int:
    return sum(s[2] for s in segs)


class NotStored(ValueError):
    """A segment still points at buffered bytes (``ChangeSet.flush`` first)."""


def resolve(seg: tuple) -> tuple:
    """The stored form ``(locator, offset, length)`` of a segment, if stored."""
    src = seg[0]
    if type(src) is str:
        return seg
    loc = src.locator
    if loc is None:
        raise NotStored("segment data has not been stored yet")
    return (loc, src.base + seg[1], seg[2])


def resolve_all(segs: Segments) -> Segments:
    """All segments in stored form, merging pieces that became contiguous."""
    out: list[tuple] = []
    for seg in segs:
        seg = resolve(seg)
        if out:
            last = out[-1]
            if last[0] == seg[0] and last[1] + last[2] == seg[1]:
                out[-1] = (last[0], last[1], last[2] + seg[2])
                continue
        out.append(seg)
    return tuple(out)


def is_stored(segs: Segments) -> bool:
    for seg in segs:
        src = seg[0]
        if type(src) is not str and src.locator is None:
            return False
    return True


def etag_of(segs: Segments) -> str:
    """A strong ETag from the segment list alone (no block reads).

    Derived from bare locators, offsets and lengths, so it is stable across
    unrelated changes to the collection, identical for identical references,
    and changes whenever the referenced bytes change.  Pieces that are
    contiguous in one block are hashed as one, so a file whose buffers were
    packed next to each other keeps its ETag after a reload from the
    manifest (where the parser has merged them).  Unstored buffers are
    identified by object identity: their ETag changes once they are stored.
    """
    h = hashlib.md5()
    pend: tuple[str, int, int] | None = None  # stored piece not hashed yet
    for seg in segs:
        src = seg[0]
        off = seg[1]
        if type(src) is not str:
            if src.locator is None:
                if pend is not None:
                    h.update(b"%s:%d:%d;" % (pend[0].encode(), pend[1], pend[2]))
                    pend = None
                h.update(b"buf%x:%d:%d;" % (id(src), off, seg[2]))
                continue
            off += src.base
            src = src.locator
        i = src.find("+", 33)
        bare = src if i < 0 else src[:i]
        if pend is not None:
            if pend[0] == bare and pend[1] + pend[2] == off:
                pend = (bare, pend[1], pend[2] + seg[2])
                continue
            h.update(b"%s:%d:%d;" % (pend[0].encode(), pend[1], pend[2]))
        pend = (bare, off, seg[2])
    if pend is not None:
        h.update(b"%s:%d:%d;" % (pend[0].encode(), pend[1], pend[2]))
    return h.hexdigest()


def offsets_of(segs: Segments) -> list[int]:
    """Start offset of each segment within the file."""
    out = []
    pos = 0
    for seg in segs:
        out.append(pos)
        pos += seg[2]
    return out


def slice_segments(segs: Segments, start: int, end: int) -> list[tuple]:
    """Segments covering file bytes ``[start, end)``."""
    out: list[tuple] = []
    if end <= start:
        return out
    starts = offsets_of(segs)
    i = max(bisect_right(starts, start) - 1, 0)
    while i < len(segs):
        s0 = starts[i]
        src, off, ln = segs[i]
        if s0 >= end:
            break
        a = max(start, s0)
        b = min(end, s0 + ln)
        if b > a:
            out.append((src, off + (a - s0), b - a))
        i += 1
    return out


def merge(segs: Iterable[tuple]) -> Segments:
    """Canonical tuple: drop empty pieces, merge contiguous same-source ones.

    The manifest layer's ``coalesce`` does exactly this: sources compare by
    ``==``, which for BufferBlocks (no ``__eq__``) is identity.
    """
    return coalesce(segs)

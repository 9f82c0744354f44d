"""The virtual ``.arvados#collection`` file, streamed.

Why streamed: the record embeds the whole manifest text as one JSON string,
and a big collection's text is tens of megabytes.  ``RecordBody`` knows its
length and ETag up front (from a first pass, ``measure_record``) and renders
the JSON chunk by chunk as it is read, so no request ever holds the whole
text.  The pieces of text come from the tree (``CollectionTree.record_body``),
which owns the locking and the cache; nothing here takes a lock.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any, Callable, Iterator

from ..manifest import strip_manifest

__all__ = ["RECORD_KEYS", "SMALL_RECORD", "RecordBody", "measure_record", "record_frame"]

#: The record fields the file shows (``manifest_text`` is rendered from the tree).
RECORD_KEYS = ("uuid", "name", "portable_data_hash", "manifest_text", "properties", "modified_at", "version")
#: Records up to this many bytes are kept whole in the cache (and served
#: with ranges); bigger ones are rendered anew, chunk by chunk, per read.
SMALL_RECORD = 1 << 18
_CHUNK = 1 << 16
_PLACEHOLDER = "\x00davcoll-manifest-text\x00"

#: Renders a tree's snapshot pieces as manifest text (``CollectionTree.expand``).
Expand = Callable[[list[Any]], Iterator[str]]


def record_frame(rec: dict[str, Any], pdh: str | None) -> tuple[bytes, bytes]:
    """The record's JSON before and after the manifest text (quotes included).

    Keys are sorted, so this is byte-identical to dumping the whole record.
    """
    rec = dict(rec, manifest_text=_PLACEHOLDER, portable_data_hash=pdh)
    text = json.dumps(rec, indent=2, sort_keys=True, default=str) + "\n"
    marker = json.dumps(_PLACEHOLDER)
    i = text.index(marker)  # "manifest_text" sorts before every other key
    return (text[:i] + '"').encode(), ('"' + text[i + len(marker) :]).encode()


def chunks(pieces: Iterator[str], size: int | None = None) -> Iterator[str]:
    """Pieces of manifest text regrouped into chunks of about ``size``
    characters, each ending just after a newline or a space (the last one
    wherever the text ends), so that no chunk is ever the whole text of a
    big manifest and each can be JSON-escaped (and stripped) on its own."""
    if size is None:
        size = _CHUNK
    buf: list[str] = []
    n = 0
    for p in pieces:
        if len(p) <= size:
            buf.append(p)
            n += len(p)
            if n >= size and (p.endswith("\n") or p.endswith(" ")):
                yield "".join(buf)
                buf, n = [], 0
            continue
        i = 0
        while len(p) - i > size:
            cut = p.rfind(" ", i, i + size)
            if cut < i:
                cut = p.find(" ", i + size)
                if cut < 0:
                    break
            buf.append(p[i : cut + 1])
            yield "".join(buf)
            buf, n = [], 0
            i = cut + 1
        rest = p[i:]
        buf.append(rest)
        n += len(rest)
    if buf:
        yield "".join(buf)


def measure_record(
    rec: dict[str, Any], text: Iterator[str], *, need_pdh: bool
) -> tuple[int, str, str | None, bytes | None]:
    """First pass over the manifest ``text`` pieces: ``(length, etag, pdh,
    data)`` of the record file, computed chunk by chunk without keeping the
    text (``data``: the whole file when it is at most ``SMALL_RECORD``).

    With ``need_pdh`` the PDH is the hash of the stripped text: the catalog
    computes PDHs lazily, and a trusted tree renders the very text the
    catalog stores, so its hash is the PDH.
    """
    pdh = rec.get("portable_data_hash")
    md5 = hashlib.md5()
    pdh_md5 = hashlib.md5()
    pdh_len = 0
    n = 0
    small: list[bytes] | None = []
    mid_line = False
    for chunk in chunks(text):
        esc = json.dumps(chunk)[1:-1].encode()
        n += len(esc)
        md5.update(esc)
        if small is not None:
            small.append(esc)
            if n > SMALL_RECORD:
                small = None
        if need_pdh:
            # A chunk that starts mid-line gets its space back, so a
            # locator at its start is still recognised.
            stripped = strip_manifest(" " + chunk)[1:] if mid_line else strip_manifest(chunk)
            sb = stripped.encode()
            pdh_md5.update(sb)
            pdh_len += len(sb)
        mid_line = chunk.endswith(" ")
    if need_pdh:
        pdh = f"{pdh_md5.hexdigest()}+{pdh_len}"
    prefix, suffix = record_frame(rec, pdh)
    length = len(prefix) + n + len(suffix)
    etag = hashlib.md5(prefix + md5.hexdigest().encode() + suffix).hexdigest()
    data = prefix + b"".join(small) + suffix if small is not None else None
    return length, etag, pdh, data


class RecordBody:
    """A snapshot of ``.arvados#collection``: ``length`` and ``etag`` are
    known up front; iterating renders the JSON chunk by chunk (manifest
    text pieces escaped one by one), so even a million-file record is never
    held whole in memory.  Small records carry their bytes in ``data``.

    ``expand`` turns ``pieces`` (the tree's snapshot: stored lines and
    unloaded subtrees) into text; it needs no lock (see
    ``CollectionTree.expand``)."""

    def __init__(self, expand: Expand, pieces: list[Any], prefix: bytes, suffix: bytes,
                 length: int, etag: str, data: bytes | None) -> None:
        self.expand = expand
        self.pieces = pieces
        self.prefix = prefix
        self.suffix = suffix
        self.length = length
        self.etag = etag
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        yield self.prefix
        for chunk in chunks(self.expand(self.pieces)):
            yield json.dumps(chunk)[1:-1].encode()
        yield self.suffix

    def reader(self) -> "IterReader":
        """A read-only file object over the content."""
        return IterReader(iter(self))


class IterReader(io.RawIOBase):
    """``read(n)`` over an iterator of byte chunks (no seeking)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if n is None or n < 0:
            data = self._buf + b"".join(self._chunks)
            self._buf = b""
            return data
        while len(self._buf) < n:
            nxt = next(self._chunks, None)
            if nxt is None:
                break
            self._buf += nxt
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

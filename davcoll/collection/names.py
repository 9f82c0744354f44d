"""Name rules of the collection filesystem: which names exist, which can be made.

Two different questions, deliberately answered by two functions:

- ``check_name`` -- can this component *name* an entry at all?  Lenient:
  collections written by other clients (the Arvados SDK, keep-web) may hold
  names with control characters or in any Unicode spelling, and those must
  stay reachable (readable, deletable).
- ``check_new_name`` -- may a request *create* an entry with this name?
  Strict: characters that XML 1.0 cannot carry (every WebDAV listing is XML)
  or that terminals and logs interpret (C0/C1 controls, DEL) are refused, so
  one upload cannot make a folder unlistable for everybody.

Unicode spellings: a name is looked up exactly first; only when no entry has
exactly that spelling is its canonically equivalent NFC or NFD spelling
used (``find_spelling``).  So in a folder where both "é" spellings exist
(macOS data), each request reaches the file it named; where only one exists,
Finder's NFD and Windows' NFC spellings both reach it; and new names are
created in NFC (``spelling_for_new``).
"""

from __future__ import annotations

import unicodedata
from typing import Mapping

from .errors import InvalidName

__all__ = [
    "bad_new_name_char",
    "check_name",
    "check_new_name",
    "find_spelling",
    "spelling_for_new",
    "split_path",
]


def check_name(name: str) -> str:
    """Validate one path component for lookup (raises InvalidName).

    Besides the names no filesystem allows, a name must be encodable as
    UTF-8 (a lone surrogate from a lossy URL decode is not): manifests are
    UTF-8, so such a name would otherwise only fail at commit time.
    """
    if not name or name == "." or name == ".." or "/" in name or "\x00" in name:
        raise InvalidName(f"invalid name {name!r}")
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidName(f"name is not valid UTF-8: {name!r}") from None
    return name


def split_path(path: str) -> list[str]:
    """Components of a collection-relative path ('' or '/' is the root)."""
    parts = [p for p in path.split("/") if p]
    for p in parts:
        check_name(p)
    return parts


def _is_bad(cp: int) -> bool:
    return (
        cp < 0x20
        or 0x7F <= cp <= 0x9F
        or 0xD800 <= cp <= 0xDFFF
        or cp in (0xFFFE, 0xFFFF)
    )


def bad_new_name_char(name: str) -> str | None:
    """The first character a new name may not contain, or None."""
    if name.isascii() and name.isprintable():
        return None
    for ch in name:
        if _is_bad(ord(ch)):
            return ch
    return None


def check_new_name(name: str) -> str:
    """Validate a component that a request is about to create."""
    check_name(name)
    bad = bad_new_name_char(name)
    if bad is not None:
        raise InvalidName(f"names cannot contain the control character U+{ord(bad):04X}")
    return name


def _equivalents(name: str) -> tuple[str, ...]:
    if name.isascii():
        return ()
    out = []
    for form in ("NFC", "NFD"):
        alt = unicodedata.normalize(form, name)
        if alt != name and alt not in out:
            out.append(alt)
    return tuple(out)


def find_spelling(entries: Mapping[str, object], name: str) -> str | None:
    """The key of ``entries`` that ``name`` refers to: exactly, else its
    NFC or NFD equivalent; None when neither exists."""
    if name in entries:
        return name
    for alt in _equivalents(name):
        if alt in entries:
            return alt
    return None


def spelling_for_new(entries: Mapping[str, object], name: str) -> str:
    """The spelling a write to ``name`` uses: an existing entry's (see
    ``find_spelling``), else the NFC form (a new name)."""
    found = find_spelling(entries, name)
    if found is not None:
        return found
    return unicodedata.normalize("NFC", name) if not name.isascii() else name


def display_safe(name: str) -> str:
    """``name`` with characters XML cannot carry written as ``\\xNN`` escapes
    (for display names of entries other clients created)."""
    if bad_new_name_char(name) is None:
        return name
    return "".join(_escaped(c) if _is_bad(ord(c)) else c for c in name)


def _escaped(c: str) -> str:
    cp = ord(c)
    return f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}"

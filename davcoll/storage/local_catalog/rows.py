"""How the catalog stores an entry: paths as ``(parent, name)``, a file's
segments as text, and the size estimate each row adds to ``approx_chars``.

Pure functions and constants: no database access (see the package
docstring for the tables they describe).
"""

from __future__ import annotations

ROW_OVERHEAD = 8  # approx_chars: separators and positions per entry

# Current-tree queries name the partial index (see the package docstring).
CUR = "entries INDEXED BY entries_current"

Row = tuple  # (parent, name, kind, segs): one entry, relative or absolute


def row_key(row: Row) -> tuple[str, str]:
    return row[0], row[1]


def join_path(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def place_under(top: str, rel: str) -> str:
    """``rel`` (relative, '' = the top itself) placed below ``top``."""
    if not rel:
        return top
    return f"{top}/{rel}" if top else rel


def split_path(path: str) -> tuple[str, str]:
    """``(parent, name)`` of a non-root path."""
    parent, _, name = path.rpartition("/")
    return parent, name


def subtree_bounds(path: str) -> tuple[str, str]:
    """``[lo, hi)`` of the strings that start with ``path + '/'`` (non-root)."""
    return path + "/", path + "0"


def relative_path(path: str, top: str) -> str:
    if not top:
        return path
    return "" if path == top else path[len(top) + 1 :]


def encode_segs(segs: tuple) -> str:
    """A file's segments as stored: ``"loc off len"`` triples, space-joined.

    Space is safe as the separator: locators, offsets and lengths never
    contain one.
    """
    if len(segs) == 1:
        loc, off, ln = segs[0]
        return f"{loc} {off} {ln}"
    return " ".join(f"{loc} {off} {ln}" for loc, off, ln in segs)


def decode_segs(text: str) -> tuple:
    """Inverse of :func:`encode_segs`."""
    if not text:
        return ()
    t = text.split(" ")
    if len(t) == 3:
        return ((t[0], int(t[1]), int(t[2])),)
    return tuple((t[i], int(t[i + 1]), int(t[i + 2])) for i in range(0, len(t), 3))


def entry_chars(parent: str, name: str, segs: str | None) -> int:
    """An entry's contribution to ``approx_chars`` (the same formula as SQL's
    ``APPROX_SQL``: both count characters)."""
    return len(parent) + len(name) + (len(segs) if segs else 0) + ROW_OVERHEAD


APPROX_SQL = f"COALESCE(SUM(LENGTH(parent) + LENGTH(name) + IFNULL(LENGTH(segs), 0) + {ROW_OVERHEAD}), 0)"

"""The line cache: each current directory's rendered manifest line.

Lines are rendered from entry rows only when a read needs them
(``assemble_current``) and stored back by the caller; an update merely
marks the lines it may have changed as stale (see the package docstring).
"""

from __future__ import annotations

import sqlite3
from typing import Iterable, Mapping, Sequence

from ...manifest import Dir, escape_name, render_empty_dir, render_stream
from .rows import CUR, Row, decode_segs, encode_segs, join_path

MARKER_TAIL = " 0:0:\\056\n"  # how every empty-directory marker line ends


def stream_name(path: str) -> str:
    """Escaped stream token of a decoded directory path ('' -> '.')."""
    if not path:
        return "."
    # Names never contain "/" and escape_name leaves "/" alone, so the whole
    # path escapes in one call (deep trees have thousands of components).
    return "./" + escape_name(path)


def dir_line(path: str, files: Sequence[tuple[str, tuple]], has_subdirs: bool) -> str:
    """The normalized line of a directory given its (sorted) files."""
    if files:
        return render_stream(stream_name(path), files)
    if has_subdirs or not path:
        return ""  # only subdirectories, or the root: no line (spec 2.7, 2.9)
    return render_empty_dir(stream_name(path))


def has_files(line: str | None) -> bool:
    """True if a line lists files (it is neither '' nor a marker).

    A marker line is recognised by its last token: a file literally named
    ``.`` cannot exist, and a file named ``\\056`` is escaped as ``\\134056``.
    """
    return bool(line) and not line.endswith(MARKER_TAIL)  # type: ignore[union-attr]


def rebase(line: str, new_path: str) -> str:
    """A line moved to another directory: only its stream token changes."""
    if not line:
        return line
    return stream_name(new_path) + line[line.index(" ") :]


def assemble(rows: Iterable[tuple[str, str]]) -> str:
    """Full normalized manifest from every directory's ``(path, line)``.

    Sorting by the tuple of decoded components gives the depth-first order
    of spec 2.9 (``a``, ``a/c``, ``a-b``), which plain string order does not.
    """
    ordered = sorted(rows, key=lambda r: r[0].split("/"))
    return "".join(line for _, line in ordered)


def tree_parts(root: Dir, base: str = "") -> tuple[list[Row], list[tuple[str, str]]]:
    """Entry rows and directory lines of an in-memory tree placed at ``base``.

    ``base`` itself gets a line but no row (the caller adds it, if it is not
    the root).  Iterative, so arbitrarily deep trees cannot hit the
    recursion limit.
    """
    rows: list[Row] = []
    lines: list[tuple[str, str]] = []
    stack: list[tuple[str, Dir]] = [(base, root)]
    while stack:
        path, d = stack.pop()
        files = []
        has_subdirs = False
        for name in sorted(d):
            v = d[name]
            if type(v) is tuple:
                files.append((name, v))
                rows.append((path, name, "f", encode_segs(v)))
            else:
                has_subdirs = True
                rows.append((path, name, "d", None))
                stack.append((join_path(path, name), v))
        lines.append((path, dir_line(path, files, has_subdirs)))
    return rows, lines


def render_dir(conn: sqlite3.Connection, cid: int, path: str) -> str:
    """The current line of directory ``path``, from its current entry rows.

    Costs the directory's direct files (one index range, already in name
    order), never its subtree.
    """
    files = [
        (name, decode_segs(segs))
        for name, segs in conn.execute(
            f"SELECT name, segs FROM {CUR} WHERE cid = ? AND parent = ? AND v_to IS NULL AND kind = 'f' ORDER BY name",
            (cid, path),
        )
    ]
    if files or not path:
        return dir_line(path, files, False)
    # No files: any current child is a subdirectory.
    child = conn.execute(
        f"SELECT 1 FROM {CUR} WHERE cid = ? AND parent = ? AND v_to IS NULL LIMIT 1", (cid, path)
    ).fetchone()
    return dir_line(path, (), child is not None)


def assemble_current(conn: sqlite3.Connection, cid: int) -> tuple[str, dict[str, str]]:
    """The current manifest from the line cache, rendering stale lines.

    Returns ``(text, rendered)``; ``rendered`` holds the lines that were
    stale, for the caller to store back.
    """
    rendered: dict[str, str] = {}
    rows = conn.execute("SELECT path, line FROM dir_lines WHERE cid = ?", (cid,)).fetchall()
    for i, (path, line) in enumerate(rows):
        if line is None:
            line = rendered[path] = render_dir(conn, cid, path)
            rows[i] = (path, line)
    return assemble(rows), rendered


def store_lines(conn: sqlite3.Connection, cid: int, rendered: Mapping[str, str]) -> None:
    """Fill stale cache rows (caller holds the write lock for the version
    the lines were rendered from)."""
    conn.executemany(
        "UPDATE dir_lines SET line = ? WHERE cid = ? AND path = ? AND line IS NULL",
        [(line, cid, path) for path, line in rendered.items()],
    )

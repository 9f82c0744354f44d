"""Arvados manifest format: strict parsing, normalized serialization, PDH.

This module is the bottom layer of davcoll and is pure: no I/O and no imports
from the rest of the package.  Everything else (the collection filesystem, the
catalogs, the fake cluster) reads and writes manifests through it, so there is
exactly one implementation of the format's rules.

Data model
----------
A manifest describes a tree.  ``Dir`` is a ``dict`` mapping an entry name to
either another ``Dir`` or to a file.  A file is a ``tuple`` of segments, and a
segment is a plain ``(locator, offset_in_block, length)`` tuple.  Plain tuples
(rather than objects) keep a parsed million-file manifest within a few hundred
bytes per file.  Segments of one file that are contiguous inside the same
block (same locator string) are always merged, so a tree has one canonical
form and ``parse(render(tree)) == tree``.

Strictness
----------
``parse_manifest`` accepts what the API server's validator accepts (spec 2.8)
minus what spec 2.10 says to reject on top: tokens past the end of their
stream, file/directory clashes, size-less locators, upper-case hex, blocks
over 64 MiB and non-empty ``.`` tokens.  Every rejection is a ``ManifestError``
whose message starts with the 1-based line number.

Layout
------
``Manifest.to_text()`` writes the Python SDK's normalized layout (spec 2.9):
depth-first directories, entries sorted by decoded name, per-line locator
lists in first-use order, adjacent segments merged.  ``render_stream`` is the
per-directory piece of that, exposed so the collection filesystem can
re-render only the directories that changed.
"""

from __future__ import annotations

import gc
import hashlib
import re
import threading
from bisect import bisect_right
from contextlib import contextmanager
from itertools import accumulate
from dataclasses import dataclass
from typing import Iterable, Iterator, Union

__all__ = [
    "MAX_BLOCK_SIZE",
    "EMPTY_BLOCK",
    "EMPTY_DIR_MARKER",
    "ManifestError",
    "Locator",
    "Segment",
    "FileSegments",
    "Dir",
    "Manifest",
    "StreamIndex",
    "parse_manifest",
    "parse_stream",
    "normalize_manifest",
    "strip_manifest",
    "portable_data_hash",
    "escape_name",
    "unescape_name",
    "render_stream",
    "render_empty_dir",
    "index_streams",
    "locator_size",
    "bare_locator",
    "coalesce",
    "is_locator",
    "is_portable_data_hash",
]

MAX_BLOCK_SIZE = 1 << 26
EMPTY_BLOCK = "d41d8cd98f00b204e9800998ecf8427e+0"
EMPTY_DIR_MARKER = "\\056"

Segment = tuple  # (locator: str, offset_in_block: int, length: int)
FileSegments = tuple  # tuple[Segment, ...]


class ManifestError(ValueError):
    """A manifest (or a piece of one) breaks the format rules.

    ``line`` is the 1-based line number (0 when the problem is not tied to a
    line).  The message always names what is wrong.
    """

    def __init__(self, message: str, line: int = 0):
        self.line = line
        self.reason = message
        super().__init__(f"line {line}: {message}" if line else message)


# ---------------------------------------------------------------------------
# Escaping (spec 2.5): writers escape bytes 0x00-0x20, ':' and '\' as \ooo.

_ESCAPE_TABLE = {c: "\\%03o" % c for c in range(0x21)}
_ESCAPE_TABLE[ord(":")] = "\\072"
_ESCAPE_TABLE[ord("\\")] = "\\134"
_NEEDS_ESCAPE = re.compile(r"[\x00-\x20:\\]")
# What the server accepts inside a name token: no raw control/space bytes, and
# a backslash only as the start of \[0-3][0-7][0-7].
_BAD_RAW = re.compile(r"[\x00-\x20]|\\(?![0-3][0-7][0-7])")
_HIGH_OCTAL = re.compile(r"\\[4-7][0-7][0-7]")
_OCTAL_BYTES = re.compile(rb"\\([0-3][0-7][0-7])")


def _escape_char(m: re.Match) -> str:
    return _ESCAPE_TABLE[ord(m.group())]


def escape_name(name: str) -> str:
    """Escape a decoded stream or file name the way both SDKs write it."""
    if _NEEDS_ESCAPE.search(name) is None:
        return name
    # re.sub touches only the few escaped characters; str.translate with a
    # dict table would do a Python-level lookup for every character.
    return _NEEDS_ESCAPE.sub(_escape_char, name)


def unescape_name(token: str, line: int = 0) -> str:
    """Decode ``\\ooo`` escapes as *bytes*, then the result as UTF-8.

    This follows the Go/Ruby semantics (spec 2.5), not the Python SDK's
    per-character decoding.  Raises ManifestError for anything the server
    would not accept (lone backslash, ``\\4xx``..``\\7xx``, raw control
    characters, invalid UTF-8 after decoding).
    """
    bad = _BAD_RAW.search(token)
    if bad is not None:
        if _HIGH_OCTAL.match(token, bad.start()):
            raise ManifestError(f"escape sequence of more than 8 bits in {token!r}", line)
        raise ManifestError(f"invalid character or escape in {token!r}", line)
    if "\\" not in token:
        return token
    raw = _OCTAL_BYTES.sub(lambda m: bytes((int(m.group(1), 8),)), token.encode("utf-8"))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"escaped name {token!r} is not valid UTF-8", line) from None


# ---------------------------------------------------------------------------
# Locators (spec 1, 2.3)

_LOCATOR_RE = re.compile(r"([0-9a-f]{32})\+([0-9]+)((?:\+[A-Z][-A-Za-z0-9@_]*)*)")
_LOOSE_LOCATOR_RE = re.compile(r"[0-9a-fA-F]{32}(\+[0-9]+)?(\+[A-Z][-A-Za-z0-9@_]*)*")
_PDH_RE = re.compile(r"[0-9a-f]{32}\+[0-9]+")
_PERMISSION_RE = re.compile(r"A([0-9a-f]{40})@([0-9a-f]{8})")
_MAX_DIGITS = 20  # a longer decimal cannot be a valid size or position


def is_locator(text: str) -> bool:
    """True if ``text`` is a well-formed block locator (size hint required)."""
    return _LOCATOR_RE.fullmatch(text) is not None


def is_portable_data_hash(text: str) -> bool:
    """True if ``text`` has the shape of a PDH (``md5+size``, no hints)."""
    return _PDH_RE.fullmatch(text) is not None


def bare_locator(locator: str) -> str:
    """``md5+size`` of a locator string, dropping every other hint."""
    i = locator.find("+", 33)
    return locator if i < 0 else locator[:i]


def locator_size(locator: str) -> int:
    """The size hint of a locator string (assumed well formed)."""
    i = locator.find("+", 33)
    return int(locator[33:] if i < 0 else locator[33:i])


@dataclass(frozen=True)
class Locator:
    """A parsed block locator ``md5+size[+hints]``."""

    md5: str
    size: int
    hints: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Locator":
        m = _LOCATOR_RE.fullmatch(text)
        if m is None or len(m.group(2)) > _MAX_DIGITS:
            raise ManifestError(f"invalid locator {text!r}")
        hints = tuple(h for h in m.group(3).split("+") if h)
        return cls(m.group(1), int(m.group(2)), hints)

    def __str__(self) -> str:
        return "+".join((self.md5, str(self.size)) + self.hints)

    def bare(self) -> str:
        """``md5+size``: the block's identity, whatever its hints."""
        return f"{self.md5}+{self.size}"

    @property
    def permission_hint(self) -> str | None:
        """The ``A<sig>@<expiry>`` hint (without the ``+``), if any."""
        for h in self.hints:
            if _PERMISSION_RE.fullmatch(h):
                return h
        return None

    @property
    def signature(self) -> str | None:
        h = self.permission_hint
        return h[1:41] if h else None

    @property
    def expiry(self) -> int | None:
        """Unix time at which the permission signature expires, if signed."""
        h = self.permission_hint
        return int(h[42:], 16) if h else None

    def with_permission(self, signature: str, expiry: int) -> "Locator":
        """A copy whose permission hint is replaced (signers append it last).

        Every existing ``A`` hint goes, well-formed or not, so the result
        never carries two signatures.
        """
        hints = tuple(h for h in self.hints if not h.startswith("A"))
        return Locator(self.md5, self.size, hints + (f"A{signature}@{expiry:08x}",))

    def without_permission(self) -> "Locator":
        """A copy without any ``A`` (permission) hint; other hints stay."""
        return Locator(self.md5, self.size, tuple(h for h in self.hints if not h.startswith("A")))


# ---------------------------------------------------------------------------
# The tree


class Dir(dict):
    """A directory: entry name -> ``Dir`` or file (tuple of segments)."""

    __slots__ = ()


Entry = Union[Dir, tuple]


def coalesce(segments: Iterable[Segment]) -> FileSegments:
    """Canonical form of a segment list: drop empty pieces, merge contiguous ones."""
    out: list[Segment] = []
    for seg in segments:
        if seg[2] <= 0:
            continue
        if out:
            last = out[-1]
            if last[0] == seg[0] and last[1] + last[2] == seg[1]:
                out[-1] = (last[0], last[1], last[2] + seg[2])
                continue
        out.append(seg)
    return tuple(out)


def _walk_file_sizes(d: Dir, prefix: str) -> Iterator[tuple[str, FileSegments]]:
    """Files in sorted depth-first order.  An explicit stack of iterators,
    not recursion: a tree may be nested deeper than Python's stack."""
    stack: list[tuple[str, Iterator[tuple[str, Entry]]]] = [(prefix, iter(sorted(d.items())))]
    while stack:
        pre, it = stack[-1]
        for name, v in it:
            if type(v) is tuple:
                yield pre + name, v
            else:
                stack.append((pre + name + "/", iter(sorted(v.items()))))
                break
        else:
            stack.pop()


class Manifest:
    """A parsed manifest: the root ``Dir`` plus convenience accessors."""

    __slots__ = ("root",)

    def __init__(self, root: Dir | None = None):
        self.root = root if root is not None else Dir()

    def files(self) -> Iterator[tuple[str, FileSegments]]:
        """All files as ``(path, segments)`` in normalized (sorted) order."""
        return _walk_file_sizes(self.root, "")

    def dirs(self) -> Iterator[str]:
        """All directory paths (not the root), depth-first sorted."""
        stack: list[tuple[str, Dir]] = [("", self.root)]
        while stack:
            prefix, d = stack.pop()
            subs = [(n, v) for n, v in d.items() if type(v) is not tuple]
            subs.sort(reverse=True)
            for name, sub in subs:
                stack.append((prefix + name + "/", sub))
            if prefix:
                yield prefix[:-1]

    def get(self, path: str) -> Entry | None:
        node: Entry = self.root
        for part in filter(None, path.split("/")):
            if type(node) is tuple or part not in node:
                return None
            node = node[part]
        return node

    def file_size(self, path: str) -> int:
        segs = self.get(path)
        if type(segs) is not tuple:
            raise KeyError(path)
        return sum(s[2] for s in segs)

    def to_text(self, *, strip: bool = False) -> str:
        """Serialize in the normalized layout; ``strip`` drops non-size hints."""
        out: list[str] = []
        _emit_dir(self.root, ".", out, strip)
        return "".join(out)

    def portable_data_hash(self) -> str:
        """The PDH the Python SDK reports for this tree.

        That is the hash of the *stripped normalized* text, where a block
        that appears under two different signatures is listed once.  It can
        differ from ``portable_data_hash(self.to_text())`` -- the server's
        rule applied to the signed text, which lists such a block twice
        (spec 2.3, 2.9, 3).  Both agree whenever each block has one spelling.
        """
        return portable_data_hash(self.to_text(strip=True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Manifest) and self.root == other.root

    def __repr__(self) -> str:
        return f"Manifest({self.to_text()!r})"


# ---------------------------------------------------------------------------
# Rendering (spec 2.9)


def render_empty_dir(stream_name: str) -> str:
    """The marker line for an empty directory (``stream_name`` already escaped).

    Writers use ``\\056`` rather than a raw ``.``: older validators only
    accepted the escaped spelling (spec 2.7).
    """
    return f"{stream_name} {EMPTY_BLOCK} 0:0:{EMPTY_DIR_MARKER}\n"


def _escape_all(names: list[str]) -> list[str]:
    """``escape_name`` over a list, with one regex scan for the common no-escape case.

    Names never contain ``/`` (and ``/`` is never escaped), so the joined
    string can be scanned and translated in one C call each and split back.
    """
    joined = "/".join(names)
    if _NEEDS_ESCAPE.search(joined) is None:
        return names
    return _NEEDS_ESCAPE.sub(_escape_char, joined).split("/")


def _render_line(stream_name: str, enames: list[str], seg_lists: list[FileSegments], strip: bool) -> str:
    """The body of ``render_stream`` on already-escaped names (see there)."""
    starts: dict[str, int] = {}
    locs: list[str] = []
    tokens: list[str] = []
    add = tokens.append
    pos = 0
    for ename, segs in zip(enames, seg_lists):
        if len(segs) == 1 and not strip:
            # One segment, one token: the bulk of real files.
            loc, off, ln = segs[0]
            start = starts.get(loc)
            if start is None:
                start = starts[loc] = pos
                locs.append(loc)
                pos += locator_size(loc)
            add(f"{start + off}:{ln}:{ename}")
            continue
        tok_start = -1
        tok_len = 0
        for loc, off, ln in segs:
            if strip:
                loc = bare_locator(loc)
            start = starts.get(loc)
            if start is None:
                start = starts[loc] = pos
                locs.append(loc)
                pos += locator_size(loc)
            p = start + off
            if tok_start + tok_len == p and tok_start >= 0:
                tok_len += ln  # contiguous in the stream: extend the token
            else:
                if tok_start >= 0:
                    add(f"{tok_start}:{tok_len}:{ename}")
                tok_start, tok_len = p, ln
        if tok_start >= 0:
            add(f"{tok_start}:{tok_len}:{ename}")
        else:
            add(f"0:0:{ename}")
    if not locs:
        locs.append(EMPTY_BLOCK)
    return f"{stream_name} {' '.join(locs)} {' '.join(tokens)}\n"


def render_stream(stream_name: str, files: Iterable[tuple[str, FileSegments]], *, strip: bool = False) -> str:
    """One normalized stream line for the files directly in a directory.

    ``stream_name`` is already escaped (``.`` or ``./a/b``); ``files`` are
    ``(decoded name, segments)`` pairs and must be sorted by name.  Returns
    the line with its trailing newline.  Locators are listed in first-use
    order (deduplicated by full string, or by bare ``md5+size`` with
    ``strip``), and a file's stream-contiguous segments share one token, as
    the Python SDK writes them (spec 2.9).
    """
    names: list[str] = []
    seg_lists: list[FileSegments] = []
    for name, segs in files:
        names.append(name)
        seg_lists.append(segs)
    return _render_line(stream_name, _escape_all(names), seg_lists, strip)


_JUST_TUPLE = {tuple}


def _emit_dir(d: Dir, stream_name: str, out: list[str], strip: bool) -> None:
    """Append the lines of ``d`` and its subtree in normalized order.

    Iterative (an explicit stack of directories still to emit): manifests
    written by other clients can nest deeper than Python's recursion limit.
    """
    stack: list[tuple[Dir, str]] = [(d, stream_name)]
    while stack:
        d, stream_name = stack.pop()
        names = sorted(d)
        if not names:
            if stream_name != ".":
                out.append(render_empty_dir(stream_name))
            continue
        values = list(map(d.__getitem__, names))
        if set(map(type, values)) == _JUST_TUPLE:
            # Only files (the usual leaf directory): no need to sort out subdirs.
            out.append(_render_line(stream_name, _escape_all(names), values, strip))
            continue
        fnames: list[str] = []
        fsegs: list[FileSegments] = []
        subdirs: list[tuple[Dir, str]] = []
        for ename, v in zip(_escape_all(names), values):
            if type(v) is tuple:
                fnames.append(ename)
                fsegs.append(v)
            else:
                subdirs.append((v, f"{stream_name}/{ename}"))
        if fnames:
            out.append(_render_line(stream_name, fnames, fsegs, strip))
        subdirs.reverse()  # popped in sorted order
        stack.extend(subdirs)


# ---------------------------------------------------------------------------
# Parsing
#
# Each line goes through a fast path (``_parse_line_fast``) that leans on C
# string methods and one ``findall`` for the file tokens.  It returns None as
# soon as anything looks unusual; the line is then re-parsed token by token by
# ``_parse_line_checked``, which is the readable statement of the rules and
# produces the precise error.  Both must agree on every line the fast path
# accepts (tests fuzz them against each other).

# A file token together with the space before it.  Anchoring on the space
# makes every match start at a token boundary, so "number of matches ==
# number of spaces" proves the whole section is well-formed file tokens.
# Positions are capped at 18 digits so ``int`` stays cheap and bounded;
# longer spellings take the checked path.
_FILE_TOKEN_RE = re.compile(r" ([0-9]{1,18}):([0-9]{1,18}):([^ ]+)")
_CONTROL_RE = re.compile(r"[\x00-\x1f]")
_BAD_ESCAPE_RE = re.compile(r"\\(?![0-3][0-7][0-7])")
_DOT_NAMES = frozenset((".", ".."))
# The run of locators after a stream name, each with its leading space.
# Sizes are capped at 8 digits (64 MiB has 8); longer spellings take the
# checked path.
_LOCATOR_RUN_RE = re.compile(r"(?: [0-9a-f]{32}\+[0-9]{1,8}(?:\+[A-Z][-A-Za-z0-9@_]*)*)+(?= )")


def _check_path_components(parts: list[str], what: str, raw: str, line: int) -> None:
    # Membership tests run in C: a stream name can have thousands of parts.
    if "" in parts or "." in parts or ".." in parts:
        raise ManifestError(f"invalid {what} {raw!r}", line)


def _decode_stream_name(token: str, line: int) -> str:
    """Decoded directory path of a stream token: '' for '.', 'a/b' for './a/b'."""
    if token == ".":
        return ""
    try:
        name = unescape_name(token, line)
    except ManifestError as e:
        raise ManifestError(f"invalid stream name: {e.reason}", line) from None
    if name == ".":
        return ""
    if not name.startswith("./"):
        raise ManifestError(f"invalid stream name {token!r}", line)
    rest = name[2:]
    # No empty, "." or ".." component (string scans: a stream name can have
    # thousands of components).
    framed = f"/{rest}/"
    if "//" in framed or "/./" in framed or "/../" in framed:
        raise ManifestError(f"invalid stream name {token!r}", line)
    return rest


def _decimal(digits: str, what: str, tok: str, line: int) -> int:
    """``int(digits)`` without Python's 4300-digit ValueError on absurd input.

    Leading zeros are tolerated (spec 2.4), however many there are.
    """
    if len(digits) > _MAX_DIGITS:
        digits = digits.lstrip("0") or "0"
        if len(digits) > _MAX_DIGITS:
            raise ManifestError(f"{what} out of range in {tok!r}", line)
    return int(digits)


def _segments_for(p: int, end: int, starts: list[int], ends: list[int], locs: list[str]) -> FileSegments:
    """Map stream range [p, end) (non-empty, within the stream) to block segments."""
    k = bisect_right(starts, p) - 1
    bend = ends[k]
    if end <= bend:
        return ((locs[k], p - starts[k], end - p),)
    segs = []
    while p < end:
        bend = ends[k]
        if bend > p:  # zero-size blocks contribute nothing
            take = (end if end < bend else bend) - p
            segs.append((locs[k], p - starts[k], take))
            p += take
        k += 1
    return tuple(segs)


def _parse_line_checked(line_text: str, line: int) -> tuple[str, list[tuple[str, FileSegments]], bool]:
    """Token-by-token parse of one line: the reference rules, precise errors.

    Returns ``(dir_path, entries, has_subpaths)`` like ``_parse_line_fast``.
    """
    if not line_text:
        raise ManifestError("missing stream name (blank line)", line)
    tokens = line_text.split(" ")
    if tokens[0] == "":
        raise ManifestError("missing stream name (leading space)", line)
    dir_path = _decode_stream_name(tokens[0], line)
    if tokens[-1] == "":
        raise ManifestError("trailing space", line)
    if "" in tokens:
        raise ManifestError("empty token (two spaces)", line)

    # Block locators.
    n = len(tokens)
    i = 1
    starts: list[int] = []
    ends: list[int] = []
    locs: list[str] = []
    pos = 0
    while i < n:
        tok = tokens[i]
        m = _LOCATOR_RE.fullmatch(tok)
        if m is None:
            break
        size = _decimal(m.group(2), "block size", tok, line)
        if size > MAX_BLOCK_SIZE:
            raise ManifestError(f"block {tok!r} is larger than 64 MiB", line)
        starts.append(pos)
        locs.append(tok)
        pos += size
        ends.append(pos)
        i += 1
    if not locs:
        tok = tokens[1] if n > 1 else ""
        if _LOOSE_LOCATOR_RE.fullmatch(tok):
            raise ManifestError(f"invalid locator {tok!r}: needs lower-case hex and a size hint", line)
        if _BAD_RAW.search(tok):
            raise ManifestError(f"invalid locator {tok!r}: bad character", line)
        raise ManifestError(f"missing or invalid locator {tok!r}", line)
    if i == n:
        raise ManifestError("no file tokens", line)
    stream_len = pos

    entries: list[tuple[str, FileSegments]] = []
    subpaths = False
    for j in range(i, n):
        tok = tokens[j]
        parts = tok.split(":", 2)
        if len(parts) != 3:
            raise ManifestError(f"invalid file token {tok!r}", line)
        ps, ls, raw_name = parts
        if not (ps.isdigit() and ls.isdigit() and ps.isascii() and ls.isascii()) or not raw_name:
            if _LOOSE_LOCATOR_RE.fullmatch(tok):
                raise ManifestError(f"invalid file token {tok!r}: locator after file tokens", line)
            raise ManifestError(f"invalid file token {tok!r}", line)
        try:
            name = unescape_name(raw_name, line)
        except ManifestError as e:
            raise ManifestError(f"invalid file token {tok!r}: {e.reason}", line) from None
        p = _decimal(ps, "position", tok, line)
        ln = _decimal(ls, "length", tok, line)
        if "/" in name:
            _check_path_components(name.split("/"), "file token", tok, line)
            subpaths = True
        elif name == "." or name == "..":
            if name == "." and ps == "0" and ls == "0":
                continue  # empty-directory marker
            raise ManifestError(f"invalid file token {tok!r}", line)
        end = p + ln
        if end > stream_len:
            raise ManifestError(f"file token {tok!r} runs past the end of its stream ({stream_len} bytes)", line)
        entries.append((name, _segments_for(p, end, starts, ends, locs) if ln else ()))
    return dir_path, entries, subpaths


def _parse_line_fast(line_text: str, line: int) -> tuple[str, list[tuple[str, FileSegments]], bool] | None:
    """Parse a well-formed line quickly, or return None to defer to the checked path."""
    # Raw characters (spec 2.5/2.8): no controls, backslash only as \[0-3]oo.
    # isprintable() is a quick C scan that is True for nearly every line;
    # when it is not (DEL, some non-ASCII), the regex decides.
    if not line_text.isprintable() and _CONTROL_RE.search(line_text) is not None:
        return None
    if "\\" in line_text and _BAD_ESCAPE_RE.search(line_text) is not None:
        return None
    sp = line_text.find(" ")
    if sp <= 0:
        return None
    stok = line_text[:sp]
    dir_path = "" if stok == "." else _decode_stream_name(stok, line)

    # All locators in one regex match; it must be followed by a space, i.e.
    # by at least one more token (a file token, checked below).
    m = _LOCATOR_RUN_RE.match(line_text, sp)
    if m is None:
        return None
    i = m.end() + 1  # start of the first file token
    locs = line_text[sp + 1 : i - 1].split(" ")
    sizes = [int(loc[33:] if (h := loc.find("+", 33)) < 0 else loc[33:h]) for loc in locs]
    if max(sizes) > MAX_BLOCK_SIZE:
        return None
    ends = list(accumulate(sizes))
    starts = [0]
    starts += ends[:-1]
    pos = ends[-1]
    found = _FILE_TOKEN_RE.findall(line_text, i - 1)
    if len(found) != line_text.count(" ", i - 1):
        return None
    stream_len = pos
    # The block holding the previous token's start.  Tokens usually advance
    # through the stream, so this is nearly always still (or again) right
    # and the bisect is skipped.
    bstart = 0
    bend = ends[0]
    bloc = locs[0]

    entries: list[tuple[str, FileSegments]] = []
    append = entries.append
    subpaths = False
    for ps, ls, name in found:
        if "\\" in name:
            try:
                name = unescape_name(name, line)
            except ManifestError:  # not UTF-8: let the checked path word it
                return None
        if "/" in name:
            parts = name.split("/")
            if "" in parts or "." in parts or ".." in parts:
                return None
            subpaths = True
        elif name in _DOT_NAMES:
            if name == "." and ps == "0" and ls == "0":
                continue  # empty-directory marker
            return None
        p = int(ps)
        ln = int(ls)
        end = p + ln
        if end > stream_len:
            return None
        if not ln:
            append((name, ()))
            continue
        if not bstart <= p < bend:
            k = bisect_right(starts, p) - 1
            bstart = starts[k]
            bend = ends[k]
            bloc = locs[k]
        if end <= bend:  # inside one block: the common case, inlined
            append((name, ((bloc, p - bstart, ln),)))
        else:
            append((name, _segments_for(p, end, starts, ends, locs)))
    return dir_path, entries, subpaths


def _parse_line(line_text: str, line: int) -> tuple[str, list[tuple[str, FileSegments]], bool]:
    r = _parse_line_fast(line_text, line)
    if r is None:
        r = _parse_line_checked(line_text, line)
    return r


def parse_stream(line_text: str, line: int = 1) -> tuple[str, list[tuple[str, FileSegments]]]:
    """Parse one stream line (without its newline).

    Returns ``(dir_path, entries)``: ``dir_path`` is the decoded directory
    ('' for the root) and ``entries`` lists ``(relative path, segments)`` in
    token order; a relative path contains ``/`` when the token named a file
    in a subdirectory.  Empty-directory markers produce no entry (the line
    itself already says the directory exists).  Raises ManifestError with
    ``line`` as its line number.
    """
    dir_path, entries, _ = _parse_line(line_text, line)
    return dir_path, entries


def _lines(text: str | bytes) -> list[str]:
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            line = bytes(text)[: e.start].count(b"\n") + 1
            raise ManifestError("manifest is not valid UTF-8", line) from None
    elif not text.isascii():
        # A str can hold lone surrogates, which have no UTF-8 encoding.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ManifestError("manifest is not valid UTF-8", text[: e.start].count("\n") + 1) from None
    if not text:
        return []
    if not text.endswith("\n"):
        raise ManifestError("manifest does not end with a newline", text.count("\n") + 1)
    lines = text.split("\n")
    lines.pop()
    return lines


def _dir_at(root: Dir, path: str, line: int, cache: dict[str, Dir] | None = None) -> Dir:
    """The directory at ``path``, created as needed.

    ``cache`` (path -> Dir, for one parse) makes a line cost O(1) instead of
    O(depth): a directory once created is never replaced (a clash raises),
    so the walk starts at the deepest ancestor seen before.
    """
    if not path:
        return root
    if cache is None:
        d, rest = root, path
    else:
        d = cache.get(path)
        if d is not None:
            return d
        base = path
        while True:
            base = base.rpartition("/")[0]
            if not base:
                d, rest = root, path
                break
            d = cache.get(base)
            if d is not None:
                rest = path[len(base) + 1 :]
                break
    cur = path[: len(path) - len(rest)].rstrip("/")
    for part in rest.split("/"):
        cur = f"{cur}/{part}" if cur else part
        nxt = d.get(part)
        if nxt is None:
            nxt = d[part] = Dir()
        elif type(nxt) is not Dir:
            raise ManifestError(f"directory {path!r} clashes with a file of the same name", line)
        d = nxt
        if cache is not None:
            cache[cur] = d
    return d


def _extend_segments(acc: list[Segment], segs: FileSegments) -> None:
    """Append canonical ``segs`` to canonical ``acc``, keeping it canonical.

    Only the junction can need merging: each side is already coalesced.
    Appending to a list (not re-coalescing tuples) keeps a file written as
    thousands of tokens linear rather than quadratic.
    """
    if acc and segs:
        last = acc[-1]
        first = segs[0]
        if last[0] == first[0] and last[1] + last[2] == first[1]:
            acc[-1] = (last[0], last[1], last[2] + first[2])
            acc.extend(segs[1:])
            return
    acc.extend(segs)


def _place(root: Dir, base: Dir, base_path: str, entries: list, line: int, growing: list) -> None:
    """Add a line's entries to the tree.

    A file named again gets its segments concatenated (spec 2.6); while that
    happens its value is a temporary ``list`` recorded in ``growing``, which
    the caller turns back into a tuple once the whole manifest is read.
    """
    for name, segs in entries:
        d = base
        if "/" in name:
            sub, _, name = name.rpartition("/")
            d = _dir_at(root, f"{base_path}/{sub}" if base_path else sub, line)
        old = d.get(name)
        if old is None:
            d[name] = segs
        elif type(old) is tuple:
            if segs:
                if old:
                    acc = list(old)
                    _extend_segments(acc, segs)
                    d[name] = acc
                    growing.append((d, name))
                else:
                    d[name] = segs
        elif type(old) is list:
            _extend_segments(old, segs)
        else:
            path = f"{base_path}/{name}" if base_path else name
            raise ManifestError(f"file {path!r} clashes with a directory of the same name", line)


_gc_lock = threading.Lock()
_gc_depth = 0
_gc_was_enabled = False


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Suspend the cyclic GC while building a big tree.

    A parsed tree is millions of small tuples and no cycles, so every
    collection the allocations trigger is wasted work (about a fifth of the
    parse time for a million files).  A depth counter keeps concurrent
    parses in other threads from re-enabling it early, and a GC that the
    application had disabled stays disabled.
    """
    global _gc_depth, _gc_was_enabled
    with _gc_lock:
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                gc.enable()


def parse_manifest(text: str | bytes) -> Manifest:
    """Strictly parse a whole manifest into a tree (see module docstring)."""
    root = Dir()
    growing: list[tuple[Dir, str]] = []
    dirs: dict[str, Dir] = {}
    with _gc_paused():
        for lineno, line_text in enumerate(_lines(text), 1):
            dir_path, entries, subpaths = _parse_line(line_text, lineno)
            d = _dir_at(root, dir_path, lineno, dirs)
            if not d and not subpaths:
                # Common case: first line for a fresh directory.  Bulk insert,
                # then fall back if a name repeated within the line.
                d.update(entries)
                if len(d) == len(entries):
                    continue
                d.clear()
            _place(root, d, dir_path, entries, lineno, growing)
        for d, name in growing:
            d[name] = tuple(d[name])
    return Manifest(root)


def normalize_manifest(text: str | bytes) -> str:
    """The Python SDK's normalized text for a (strictly valid) manifest."""
    return parse_manifest(text).to_text()


# ---------------------------------------------------------------------------
# PDH (spec 3)

# The hints of a locator token, matched so they can be replaced by "" (a
# literal replacement keeps re.sub entirely in C; a group reference would
# cost a Python call per match).  The match starts at the "+" before the
# first hint -- a literal the regex engine scans for quickly -- and one of
# the lookbehinds then checks that " <32 hex>+<size>+" precedes it (Python
# needs fixed-width lookbehinds, hence one per size length).  Only a locator
# token looks like that: stream names start with "." and file tokens with
# "digits:".  Upper-case hex is matched too: the server tolerates it and
# strips such locators the same way.
_SIZE_CONTEXT = "|".join(rf"(?<= [0-9a-fA-F]{{32}}\+[0-9]{{{n}}}\+)" for n in range(1, _MAX_DIGITS + 1))
_HINTS_RE = re.compile(
    rf"\+(?=[A-Z])(?:{_SIZE_CONTEXT})[A-Z][-A-Za-z0-9@_]*(?:\+[A-Z][-A-Za-z0-9@_]*)*(?=[ \n])"
)
_HINT_START_RE = re.compile(r"\+[A-Z]")


def strip_manifest(text: str) -> str:
    """The text with every locator reduced to ``md5+size`` (nothing else changes)."""
    if _HINT_START_RE.search(text) is None:
        return text  # nothing to strip: skip building a copy
    return _HINTS_RE.sub("", text)


def portable_data_hash(text: str | bytes) -> str:
    """PDH of a manifest exactly as given (hints other than size removed)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    data = strip_manifest(text).encode("utf-8")
    return f"{hashlib.md5(data).hexdigest()}+{len(data)}"


# ---------------------------------------------------------------------------
# Stream index: per-directory line lists without parsing file tokens


class StreamIndex:
    """Per-directory view of a manifest's lines, for lazy loading.

    ``lines[dir_path]`` lists ``(line_number, line_text)`` for every line that
    contributes files directly to that directory, in manifest order.
    ``children[dir_path]`` is the set of immediate subdirectory names.  Lines
    whose file tokens spell a subdirectory (``0:3:d/f``) are rare; they are
    parsed while indexing and listed under every directory they touch, so
    loading a directory only ever needs its own list.
    """

    __slots__ = ("lines", "children")

    def __init__(self) -> None:
        self.lines: dict[str, list[tuple[int, str]]] = {}
        self.children: dict[str, set[str]] = {"": set()}

    def add_dir(self, path: str) -> None:
        parts = path.split("/") if path else []
        cur = ""
        for part in parts:
            parent = cur
            cur = f"{cur}/{part}" if cur else part
            kids = self.children.get(parent)
            if kids is None:
                kids = self.children[parent] = set()
            kids.add(part)
            if cur not in self.children:
                self.children[cur] = set()

    def is_dir(self, path: str) -> bool:
        return path in self.children

    def load_dir(self, path: str) -> list[tuple[str, FileSegments]]:
        """Parse this directory's lines; return its files in manifest order.

        Files spread over several tokens or lines are concatenated; names
        that clash with subdirectories raise ManifestError.
        """
        files: dict[str, FileSegments | list[Segment]] = {}
        kids = self.children.get(path, ())
        prefix = path + "/" if path else ""
        for lineno, text in self.lines.get(path, ()):
            dir_path, entries, subpaths = _parse_line(text, lineno)
            for rel, segs in entries:
                name = rel
                if subpaths or dir_path != path:
                    full = f"{dir_path}/{rel}" if dir_path else rel
                    parent, _, name = full.rpartition("/")
                    if parent != path:
                        continue
                if name in kids:
                    raise ManifestError(f"file {prefix + name!r} clashes with a directory of the same name", lineno)
                old = files.get(name)
                if old is None:
                    files[name] = segs
                elif type(old) is list:
                    _extend_segments(old, segs)
                elif segs:
                    if old:
                        acc = list(old)
                        _extend_segments(acc, segs)
                        files[name] = acc
                    else:
                        files[name] = segs
        return [(name, segs if type(segs) is tuple else tuple(segs)) for name, segs in files.items()]


def index_streams(text: str | bytes) -> StreamIndex:
    """Split a manifest into per-directory line lists (see StreamIndex)."""
    idx = StreamIndex()
    lines_by_dir = idx.lines
    for lineno, line_text in enumerate(_lines(text), 1):
        sp = line_text.find(" ")
        if sp <= 0:
            _parse_line_checked(line_text, lineno)  # raises the precise error
            raise ManifestError("malformed line", lineno)  # pragma: no cover
        stok = line_text[:sp]
        dir_path = _decode_stream_name(stok, lineno)
        if dir_path not in idx.children:
            idx.add_dir(dir_path)
        if line_text.find("/", sp) >= 0 or line_text.find("\\057", sp) >= 0:
            # File tokens reach into subdirectories: parse now to learn which.
            _, entries = parse_stream(line_text, lineno)
            touched = {dir_path}
            for rel, _segs in entries:
                if "/" in rel:
                    sub = rel.rpartition("/")[0]
                    full = f"{dir_path}/{sub}" if dir_path else sub
                    idx.add_dir(full)
                    touched.add(full)
            for d in touched:
                lines_by_dir.setdefault(d, []).append((lineno, line_text))
        else:
            lst = lines_by_dir.get(dir_path)
            if lst is None:
                lines_by_dir[dir_path] = [(lineno, line_text)]
            else:
                lst.append((lineno, line_text))
    return idx

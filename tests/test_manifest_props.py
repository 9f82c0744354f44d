"""Property tests for the manifest engine (hypothesis).

Random trees -- awkward names, empty files and directories, files sharing
blocks, files spanning several blocks, signed and unsigned spellings of the
same block -- must survive render -> parse unchanged, whatever layout the
text uses (normalized, one line per file, file tokens spilling into
subdirectories, shuffled lines).
"""

from __future__ import annotations

import hashlib
import random
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from davcoll.manifest import (
    EMPTY_BLOCK,
    MAX_BLOCK_SIZE,
    Dir,
    Manifest,
    bare_locator,
    coalesce,
    escape_name,
    index_streams,
    is_portable_data_hash,
    locator_size,
    normalize_manifest,
    parse_manifest,
    portable_data_hash,
    strip_manifest,
    unescape_name,
)

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SIG_A = "0123456789abcdef0123456789abcdef01234567"
SIG_B = "fedcba9876543210fedcba9876543210fedcba98"
HINTS = ["", f"+A{SIG_A}@7fffffff", f"+A{SIG_B}@6fffffff", "+K@zzzzz", f"+Zfoo+A{SIG_A}@00000001"]

# Characters that stress escaping and splitting, mixed with arbitrary text.
_SPECIAL = list(" :\\\t\n\r\x00\x7f.-_+é日😀") + ["\\056", "\\134"]
NAME_CHARS = st.one_of(
    st.sampled_from(_SPECIAL),
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/"),
)
NAMES = st.lists(NAME_CHARS, min_size=1, max_size=8).map("".join).filter(lambda s: s not in (".", ".."))


@st.composite
def block_pools(draw) -> list[tuple[str, int]]:
    """Bare blocks (md5+size); sizes mostly small, some full 64 MiB ones."""
    sizes = draw(
        st.lists(
            st.one_of(st.integers(1, 64), st.just(MAX_BLOCK_SIZE), st.integers(1, MAX_BLOCK_SIZE)),
            min_size=1,
            max_size=6,
        )
    )
    return [(f"{hashlib.md5(str(i).encode()).hexdigest()}+{size}", size) for i, size in enumerate(sizes)]


@st.composite
def file_segments(draw, pool: list[tuple[str, int]]) -> tuple:
    """A canonical segment tuple: a few runs, each over consecutive pool blocks."""
    segs = []
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(pool) - 1))
        off = draw(st.integers(0, pool[i][1] - 1))
        avail = sum(size for _, size in pool[i:]) - off
        length = draw(st.one_of(st.integers(1, min(avail, 100)), st.integers(1, avail)))
        while length > 0:  # walk the run block by block: files span blocks
            bare, size = pool[i]
            take = min(length, size - off)
            segs.append((bare + draw(st.sampled_from(HINTS)), off, take))
            length -= take
            off = 0
            i += 1
    return coalesce(segs)


@st.composite
def trees(draw, depth: int = 0, pool: list | None = None) -> Dir:
    if pool is None:
        pool = draw(block_pools())
    d = Dir()
    for name in draw(st.lists(NAMES, min_size=1 if depth == 0 else 0, max_size=5, unique=True)):
        if depth < 3 and draw(st.integers(0, 3)) == 0:
            d[name] = draw(trees(depth + 1, pool))
        else:
            d[name] = draw(file_segments(pool))
    return d


def _walk(d: Dir, path: tuple = ()):
    """(path components, value) for every file and every empty directory."""
    if not d and path:
        yield path, None
    for name, v in d.items():
        if type(v) is tuple:
            yield path + (name,), v
        else:
            yield from _walk(v, path + (name,))


def _alt_layout(tree: Dir, rng: random.Random) -> str:
    """A valid but non-normalized text for ``tree``: one line per file.

    Each line lists one locator per segment (repeats allowed, Go style), file
    tokens either live in their directory's stream or spill into it from the
    root stream (``0:3:a/b/f``, sometimes spelled with ``\\057``), empty
    directories get marker lines (``\\056`` or a raw ``.``), and line order
    is shuffled.
    """
    lines = []
    for parts, segs in _walk(tree):
        if segs is None:
            marker = rng.choice(["\\056", "."])
            lines.append(f"./{'/'.join(map(escape_name, parts))} {EMPTY_BLOCK} 0:0:{marker}")
            continue
        if rng.random() < 0.5:
            stream = "." if len(parts) == 1 else "./" + "/".join(map(escape_name, parts[:-1]))
            tname = escape_name(parts[-1])
        else:
            stream = "."
            tname = rng.choice(["/", "\\057"]).join(map(escape_name, parts))
        if not segs:
            lines.append(f"{stream} {rng.choice([EMPTY_BLOCK, f'{EMPTY_BLOCK}+K@zzzzz'])} 0:0:{tname}")
            continue
        locs, toks, pos = [], [], 0
        for loc, off, ln in segs:
            locs.append(loc)
            toks.append(f"{pos + off}:{ln}:{tname}")
            pos += locator_size(loc)
        lines.append(f"{stream} {' '.join(locs)} {' '.join(toks)}")
    rng.shuffle(lines)
    return "".join(line + "\n" for line in lines)


def _bare_tree(d: Dir) -> Dir:
    out = Dir()
    for name, v in d.items():
        if type(v) is tuple:
            out[name] = coalesce((bare_locator(loc), off, ln) for loc, off, ln in v)
        else:
            out[name] = _bare_tree(v)
    return out


def _tree_from_index(text: str) -> Dir:
    idx = index_streams(text)

    def build(path: str) -> Dir:
        d = Dir(idx.load_dir(path))
        for kid in idx.children.get(path, ()):
            d[kid] = build(f"{path}/{kid}" if path else kid)
        return d

    return build("")


# ---------------------------------------------------------------------------


@SETTINGS
@given(trees())
def test_render_parse_roundtrip(tree: Dir) -> None:
    text = Manifest(tree).to_text()
    parsed = parse_manifest(text)
    assert parsed.root == tree
    assert parse_manifest(text.encode("utf-8")).root == tree
    assert normalize_manifest(text) == text  # idempotent
    assert text == "" or text.endswith("\n")


@SETTINGS
@given(trees(), st.randoms(use_true_random=False))
def test_any_layout_parses_to_the_same_tree(tree: Dir, rng: random.Random) -> None:
    alt = _alt_layout(tree, rng)
    assert parse_manifest(alt).root == tree
    assert normalize_manifest(alt) == Manifest(tree).to_text()
    assert _tree_from_index(alt) == tree


@SETTINGS
@given(trees())
def test_stream_index_agrees_with_full_parse(tree: Dir) -> None:
    text = Manifest(tree).to_text()
    assert _tree_from_index(text) == tree
    idx = index_streams(text)
    for parts, segs in _walk(tree):
        path = "/".join(parts)
        if segs is None:
            assert idx.is_dir(path) and idx.load_dir(path) == []


@SETTINGS
@given(trees())
def test_strip_and_pdh(tree: Dir) -> None:
    m = Manifest(tree)
    text = m.to_text()
    stripped = strip_manifest(text)
    assert strip_manifest(stripped) == stripped
    assert not re.search(r"[0-9a-f]{32}\+[0-9]+\+[A-Z]", stripped.replace(" 0:", "\n"))
    bare = _bare_tree(tree)
    # Textual strip keeps the layout; the tree it describes is the bare tree.
    assert parse_manifest(stripped).root == bare
    assert m.to_text(strip=True) == Manifest(bare).to_text()
    pdh = portable_data_hash(text)
    assert is_portable_data_hash(pdh)
    data = stripped.encode("utf-8")
    assert pdh == f"{hashlib.md5(data).hexdigest()}+{len(data)}"
    assert portable_data_hash(stripped) == pdh
    assert portable_data_hash(text.encode("utf-8")) == pdh
    # Equal text, equal PDH; signatures never change the normalized PDH.
    assert portable_data_hash(m.to_text()) == pdh
    assert portable_data_hash(m.to_text(strip=True)) == portable_data_hash(Manifest(bare).to_text())


@SETTINGS
@given(st.lists(NAME_CHARS, min_size=1, max_size=20).map("".join))
def test_escape_roundtrip(name: str) -> None:
    esc = escape_name(name)
    assert unescape_name(esc) == name
    assert not re.search(r"[\x00-\x20:]", esc)
    assert not re.search(r"\\(?![0-3][0-7][0-7])", esc)
    assert escape_name(unescape_name(esc)) == esc


@SETTINGS
@given(st.lists(NAMES, min_size=2, max_size=6, unique=True))
def test_sort_order_is_by_decoded_name(names: list[str]) -> None:
    foo = "acbd18db4cc2f85cedef654fccc4a4d8+3"
    tree = Dir({n: ((foo, 0, 3),) for n in names})
    line = Manifest(tree).to_text()
    emitted = [unescape_name(tok.split(":", 2)[2]) for tok in line.rstrip("\n").split(" ")[2:]]
    assert emitted == sorted(names)

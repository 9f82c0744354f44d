"""The ``replace_files`` update language of the Arvados controller (spec 7.6).

A write to a collection is expressed as ``{target: source}`` pairs so that the
backend can apply it to whatever version is stored *when the update runs*,
rather than to the (possibly stale) tree the client saw.  That is what lets
two writers touching different paths of one collection never lose each
other's changes.

This module is shared by every backend that has to *apply* such a map: the
embedded SQLite catalog (which uses :func:`plan_replace_files` and applies
the plan row by row) and the fake Arvados cluster used in tests (which uses
:func:`apply_to_tree` on an in-memory tree).  Keeping validation and the
evaluation order here means both agree with each other and with the real
controller.

Rules (spec 7.6, cross-checked against the controller's behaviour):

* Targets are canonical absolute paths: ``/`` or ``/a/b`` -- leading ``/``,
  no trailing ``/``, no ``//``, no ``.``/``..`` components.
* Sources are ``""`` (delete, recursive), ``current/<path>`` (this
  collection *before* the request), ``manifest_text/<path>`` (the manifest
  sent with the request) or ``<PDH>/<path>`` (any collection with that
  portable data hash).  An empty ``<path>`` means the source's root.
  The controller also takes a bare ``<PDH>`` or ``manifest_text`` (no
  slash) as the root; davcoll never sends those, so they are rejected here
  to keep one spelling.
* A target with a non-empty source may not be an ancestor of another target.
* A non-empty ``manifest_text`` that no ``manifest_text/`` source uses is an
  error.
* Evaluation starts from the current tree, or from an empty tree when ``/``
  itself is a target (so ``current/`` sources then see an empty collection,
  as on the controller).  Deletions run first, then the other replacements
  grouped by source.  Missing parents of a target are created; a target is
  replaced wholesale, whether it was a file or a directory.
* Deleting a path that does not exist is a no-op (the controller removes
  with "remove all" semantics, which ignores a missing path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ..manifest import Dir, is_portable_data_hash
from .catalog import BadRequest

__all__ = [
    "DELETE",
    "CURRENT",
    "MANIFEST_TEXT",
    "PDH",
    "ReplaceOp",
    "plan_replace_files",
    "apply_to_tree",
    "target_parts",
    "lookup",
]

DELETE = "delete"
CURRENT = "current"
MANIFEST_TEXT = "manifest_text"
PDH = "pdh"


@dataclass(frozen=True)
class ReplaceOp:
    """One validated ``target: source`` pair.

    ``source_path`` is relative to the source's root with no leading or
    trailing slash (``""`` = the root itself, and always ``""`` for deletes).
    """

    target: str
    kind: str
    source_pdh: str | None
    source_path: str

    @property
    def target_parts(self) -> tuple[str, ...]:
        return target_parts(self.target)

    @property
    def source_parts(self) -> tuple[str, ...]:
        return tuple(self.source_path.split("/")) if self.source_path else ()


def target_parts(target: str) -> tuple[str, ...]:
    """Components of a validated target path (``()`` for ``/``)."""
    return tuple(target[1:].split("/")) if target != "/" else ()


def _check_target(target: object) -> str:
    if not isinstance(target, str) or not target.startswith("/"):
        raise BadRequest(f"invalid replace_files target {target!r}: must start with '/'")
    if target == "/":
        return target
    if target.endswith("/"):
        raise BadRequest(f"invalid replace_files target {target!r}: trailing '/'")
    for part in target[1:].split("/"):
        if part in ("", ".", ".."):
            raise BadRequest(f"invalid replace_files target {target!r}: empty, '.' or '..' component")
    return target


def _parse_source(target: str, source: object) -> ReplaceOp:
    """Classify a source spec; the path part is canonicalised."""
    if not isinstance(source, str):
        raise BadRequest(f"invalid replace_files source for {target!r}: not a string")
    if source == "":
        return ReplaceOp(target, DELETE, None, "")
    srcid, slash, rest = source.partition("/")
    if not slash:
        raise BadRequest(
            f"invalid replace_files source {source!r} for {target!r}: "
            "must be '', 'current/PATH', 'manifest_text/PATH' or 'PDH/PATH'"
        )
    if srcid == CURRENT or srcid == MANIFEST_TEXT:
        kind, pdh = srcid, None
    elif is_portable_data_hash(srcid):
        kind, pdh = PDH, srcid
    else:
        raise BadRequest(f"invalid replace_files source {source!r} for {target!r}: unknown source {srcid!r}")
    # Leading/trailing slashes are tolerated ("current/" is the root);
    # anything that is not a plain component is not.
    parts = rest.strip("/").split("/") if rest.strip("/") else []
    for part in parts:
        if part in ("", ".", ".."):
            raise BadRequest(f"invalid replace_files source {source!r}: empty, '.' or '..' component")
    return ReplaceOp(target, kind, pdh, "/".join(parts))


def _check_no_nesting(replace_files: Mapping[str, str]) -> None:
    """A target with content may not contain another target (spec 7.6).

    A deleting ancestor is fine: deletions run first, so ``{"/a": "",
    "/a/b": "current/x"}`` means "empty /a, then put b in it".
    """
    for target in replace_files:
        parts = target_parts(target)
        for depth in range(len(parts)):
            outer = "/" + "/".join(parts[:depth]) if depth else "/"
            if replace_files.get(outer, ""):
                raise BadRequest(f"replace_files: cannot operate on target {target!r} inside non-empty target {outer!r}")


def plan_replace_files(replace_files: Mapping[str, str], *, manifest_text_supplied: bool) -> list[ReplaceOp]:
    """Validate a ``replace_files`` map and return it in evaluation order.

    ``manifest_text_supplied`` is True when the request carried a non-empty
    ``manifest_text``.  Raises :class:`BadRequest` naming the first problem.
    The order is the controller's: deletions first, then the rest grouped by
    source (sorted by source id, ties by target so the plan is
    deterministic).  Non-deleting targets never nest, so the order among
    them does not change the result.
    """
    if not isinstance(replace_files, Mapping):
        raise BadRequest("replace_files must be an object")
    ops = [_parse_source(_check_target(t), s) for t, s in replace_files.items()]
    if manifest_text_supplied and not any(op.kind == MANIFEST_TEXT for op in ops):
        raise BadRequest("manifest_text was provided but no replace_files entry uses it (manifest_text/...)")
    _check_no_nesting(replace_files)

    def order(op: ReplaceOp) -> tuple[str, str]:
        srcid = "" if op.kind == DELETE else (op.source_pdh or op.kind)
        return (srcid, op.target)

    return sorted(ops, key=order)


# ---------------------------------------------------------------------------
# Applying a plan to an in-memory tree


def lookup(root: Dir, parts: Sequence[str]) -> Dir | tuple | None:
    """The entry at ``parts`` under ``root`` (``None`` if absent)."""
    node: Dir | tuple = root
    for part in parts:
        if type(node) is tuple:
            return None
        node = node.get(part)  # type: ignore[union-attr]
        if node is None:
            return None
    return node


def _deep_copy(node: Dir | tuple) -> Dir | tuple:
    """Copy a subtree's directories (files are immutable tuples).

    Iterative: a tree may be nested deeper than Python's recursion limit.
    """
    if type(node) is tuple:
        return node
    top = Dir()
    stack: list[tuple[Dir, Dir]] = [(node, top)]
    while stack:
        src, out = stack.pop()
        for name, child in src.items():
            if type(child) is tuple:
                out[name] = child
            else:
                sub = out[name] = Dir()
                stack.append((child, sub))
    return top


class _CopyOnWrite:
    """Edits a tree without touching the original.

    Directories on the path to every edit are copied the first time they are
    modified (``_owned`` records which ones are already private copies), so an
    edit costs the size of the directories along its path, not of the tree.
    """

    def __init__(self, root: Dir):
        self.root = root
        self._owned: set[int] = set()
        self._keep: list[Dir] = []  # keeps owned dirs alive so their ids stay unique

    def _own(self, d: Dir) -> Dir:
        if id(d) in self._owned:
            return d
        copy = Dir(d)
        self._owned.add(id(copy))
        self._keep.append(copy)
        return copy

    def _writable_dir(self, parts: Sequence[str], *, create: bool, target: str) -> Dir | None:
        """A private copy of the directory at ``parts``, creating it if asked.

        Returns None if it does not exist and ``create`` is False.  Raises
        BadRequest if a component is a file.
        """
        if lookup(self.root, parts) is None and not create:
            return None
        d = self.root = self._own(self.root)
        for part in parts:
            child = d.get(part)
            if child is None:
                child = Dir()
            elif type(child) is tuple:
                raise BadRequest(f"replace_files: cannot create parent directory of {target!r}: {part!r} is a file")
            child = d[part] = self._own(child)
            d = child
        return d

    def delete(self, parts: Sequence[str], target: str) -> None:
        if not parts:
            self.root = Dir()
            return
        node = lookup(self.root, parts[:-1])
        if type(node) is not Dir or parts[-1] not in node:
            return  # missing target (or a file on its path): nothing to delete
        parent = self._writable_dir(parts[:-1], create=False, target=target)
        assert parent is not None
        del parent[parts[-1]]

    def place(self, parts: Sequence[str], node: Dir | tuple, target: str) -> None:
        if not parts:
            if type(node) is tuple:
                raise BadRequest("replace_files: target '/' needs a directory source, got a file")
            self.root = node  # type: ignore[assignment]
            return
        parent = self._writable_dir(parts[:-1], create=True, target=target)
        assert parent is not None
        parent[parts[-1]] = node

    def result(self) -> Dir:
        return self._own(self.root)


def apply_to_tree(
    root: Dir,
    ops: Sequence[ReplaceOp],
    *,
    new_content: Dir | None,
    load_pdh: Callable[[str], Dir],
) -> Dir:
    """Apply a plan from :func:`plan_replace_files` to an in-memory tree.

    Pure: ``root`` is never modified and a new root is returned.  Unchanged
    subtrees are shared between ``root`` and the result, so treat both as
    immutable (copy a directory before changing it).  ``new_content`` is
    the parsed ``manifest_text`` of the request (None = empty);
    ``load_pdh`` returns the tree of a collection by PDH and may raise
    NotFound.  A missing source path raises BadRequest.
    """
    replacing_root = any(op.target == "/" for op in ops)
    original = Dir() if replacing_root else root
    sources: dict[str, Dir] = {}
    if new_content is not None:
        sources[MANIFEST_TEXT] = new_content

    def source_tree(op: ReplaceOp) -> Dir:
        if op.kind == CURRENT:
            return original
        key = op.source_pdh if op.kind == PDH else MANIFEST_TEXT
        assert key is not None
        tree = sources.get(key)
        if tree is None:
            tree = sources[key] = load_pdh(key) if op.kind == PDH else Dir()
        return tree

    # All current/ snapshots are read from `original`, which the editor
    # below never mutates, so swaps ({"/a": "current/b", "/b": "current/a"})
    # see the pre-request content.  Check them first, as the controller does.
    for op in ops:
        if op.kind == CURRENT and lookup(original, op.source_parts) is None:
            raise BadRequest(f"replace_files: nonexistent source 'current/{op.source_path}'")

    editor = _CopyOnWrite(original)
    for op in ops:
        if op.kind == DELETE:
            editor.delete(op.target_parts, op.target)
            continue
        node = lookup(source_tree(op), op.source_parts)
        if node is None:
            src = op.source_pdh if op.kind == PDH else op.kind
            raise BadRequest(f"replace_files: nonexistent source '{src}/{op.source_path}' for {op.target!r}")
        editor.place(op.target_parts, _deep_copy(node), op.target)
    return editor.result()

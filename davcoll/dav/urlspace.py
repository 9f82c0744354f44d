"""The URL space: what a share-relative path names, resolved as far as it exists.

    /                         the caller's collections, as folders
    /<name>/...               a collection by name, and paths inside it
    /by_id/<uuid|pdh>/...     a collection by UUID (writable) or PDH (snapshot)
    /c=<uuid|pdh>/...         the same, keep-web style
    /t=<token>/...            a token in the path (auth strips nothing; the
                              resolver skips this component)
    /._Name, /.DS_Store       Finder/Windows metadata files at the top (never stored)
    /<collection>/.arvados#collection   the virtual JSON record (read-only)

This is the single resolver: resources, COPY/MOVE destinations and lock
roots all come through ``UrlSpace.locate``, and each path is located once
per request (``RequestContext.locations``).  It also names things for the
layers below: ``canonical_ref`` (the key of locks and dead properties, the
same whatever URL was used) and ``place_of`` (a location as the operations
layer's ``Place``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

from ..collection import CollectionTree, FsError
from ..manifest import is_portable_data_hash
from ..operations import Place
from ..session import Session, record_dict
from ..storage.catalog import CatalogError, CollectionRecord
from ..storage.catalog import NotFound as CatalogNotFound
from .auth import path_token_width
from .context import context_of
from .errors import dav_error
from .junk import JunkStore, top_level_key

_UUID_RE = re.compile(r"[a-z0-9]{5}-[a-z0-9]{5}-[a-z0-9]{15}")
_PDH_DASH_RE = re.compile(r"([0-9a-f]{32})[- ]([0-9]+)")

RESERVED_TOP = {"by_id", "_health", "_metrics", "_"}
# Methods that change a resource (COPY is absent: a snapshot may be its source).
# Canonical refs (locks, dead properties) of metadata files at "/": the
# JunkStore key ("/<principal>") follows, then the name.
TOP_JUNK_REF = "/_top"
SNAPSHOT_REFUSED = frozenset({"PUT", "DELETE", "MKCOL", "MOVE", "PROPPATCH", "LOCK", "UNLOCK", "POST"})


def normalize_ident(ident: str) -> str | None:
    """A UUID or PDH from a URL component (keep-web allows '-' for '+')."""
    if _UUID_RE.fullmatch(ident):
        return ident
    if is_portable_data_hash(ident):
        return ident
    m = _PDH_DASH_RE.fullmatch(ident)
    if m:
        return f"{m.group(1)}+{m.group(2)}"
    return None


@dataclass
class Location:
    """Where a path points, resolved as far as it exists."""

    kind: str  # "top" | "by_id" | "coll" | "top_junk" (a metadata file at /; ident is its JunkStore key)
    ident: str | None = None
    inner: str = ""
    name: str = ""
    is_top_level: bool = False  # the path is exactly /<name>
    readonly_id: bool = False
    junk: bool = False
    record: dict[str, Any] | None = None
    _tree: CollectionTree | None = None
    _loader: Callable[[], CollectionTree | None] | None = field(default=None, repr=False)

    @property
    def tree(self) -> CollectionTree | None:
        if self._tree is None and self._loader is not None:
            loader, self._loader = self._loader, None
            self._tree = loader()
        return self._tree

    @property
    def coll_key(self) -> str:
        if self._tree is not None and self._tree.uuid:
            return self._tree.uuid
        return self.ident or ""

    @property
    def is_collection_root(self) -> bool:
        return self.kind == "coll" and self.inner == "" and self.ident is not None

    def child(self, name: str) -> "Location":
        return Location(
            kind="coll",
            ident=self.ident,
            inner=f"{self.inner}/{name}" if self.inner else name,
            name=name,
            readonly_id=self.readonly_id,
            record=None,
            _tree=self.tree,
        )




class UrlSpace:
    """Path resolution for the provider (``junk`` is the metadata-file store)."""

    junk: JunkStore

    @staticmethod
    def session(environ: dict) -> Session:
        return context_of(environ).session

    def reserved_name_reason(self, name: str) -> str | None:
        if name in RESERVED_TOP or name.startswith(("c=", "t=")):
            return f"{name!r} is reserved at the top level"
        if "/" in name or "\x00" in name or name in (".", ".."):
            return "invalid collection name"
        return None

    def visible_collections(self, environ: dict) -> list[CollectionRecord]:
        out = []
        for rec in self.session(environ).list_collections():
            if rec.name and self.reserved_name_reason(rec.name) is None:
                out.append(rec)
        return out

    @staticmethod
    def principal_id(environ: dict) -> str:
        principal = context_of(environ).principal
        return principal.user_id if principal is not None else "anonymous"

    def place_of(self, loc: Location) -> Place:
        """A resolved location as the operations layer's ``Place``."""
        tree = loc.tree if loc.kind == "coll" else None
        return Place(
            tree=tree,
            path=loc.inner,
            ref=self.canonical_ref(loc, loc.inner) if tree is not None or loc.kind == "top_junk" else "",
            coll_key=loc.coll_key,
            name=loc.name,
            top_level=loc.is_top_level,
            is_top=loc.kind in ("top", "by_id"),
            snapshot=loc.readonly_id,
            junk=loc.junk or (tree is not None and loc.inner != "" and self.junk.is_junk(loc.name)),
        )

    def canonical_ref(self, loc: Location, inner: str) -> str:
        """Key for locks and dead properties: the same whatever URL was used."""
        if loc.kind == "top_junk":
            # Per principal, like the JunkStore key (locks.py accepts /_top/ roots).
            return quote(f"{TOP_JUNK_REF}{loc.ident}/{inner}")
        key = f"/by_id/{loc.coll_key}"
        if inner:
            key += "/" + inner
        return quote(key)

    def _open(self, environ: dict, ident: str) -> CollectionTree | None:
        # Session.open_tree serialises loads of one collection.
        try:
            return self.session(environ).open_tree(ident, no_cache=context_of(environ).no_cache)
        except CatalogNotFound:
            return None
        except (CatalogError, FsError) as e:
            raise dav_error(e) from e

    def locate(self, path: str, environ: dict) -> Location | None:
        """What a share-relative path names (None if it cannot name anything),
        located once per request."""
        cache = context_of(environ).locations
        if path not in cache:
            cache[path] = self._locate(path, environ)
        return cache[path]

    def _locate(self, path: str, environ: dict) -> Location | None:
        # Names are looked up as spelled (exact bytes first; the tree and
        # find_collection fall back to the NFC/NFD equivalent).
        parts = [p for p in path.split("/") if p]
        parts = parts[path_token_width(parts):]
        if not parts:
            return Location(kind="top")
        head = parts[0]
        if head == "by_id":
            if len(parts) == 1:
                return Location(kind="by_id")
            ident = normalize_ident(parts[1])
            rest = parts[2:]
            top = False
        elif head.startswith("c="):
            ident = normalize_ident(head[2:])
            rest = parts[1:]
            top = False
        else:
            sess = self.session(environ)
            rec = sess.find_collection(head)
            if rec is None and not self.junk.is_junk(head):
                # The listing is memoized briefly; a miss re-reads it once so
                # a collection created elsewhere (another process, the API)
                # is found at once instead of 404/409 for a second.
                rec = sess.find_collection(head, fresh=True)
            if rec is None and len(parts) == 1:
                if self.junk.is_junk(head):
                    # Finder's /._Folder (see junk.py): kept per principal.
                    return Location(kind="top_junk", ident=top_level_key(self.principal_id(environ)),
                                    inner=head, name=head, is_top_level=True, junk=True)
                return Location(kind="coll", name=head, is_top_level=True)
            if rec is None:
                return None
            ident = rec.uuid
            rest = parts[1:]
            top = len(parts) == 1
            if top:
                loc = Location(kind="coll", ident=ident, name=head, is_top_level=True, record=listed_record(rec))
                loc._loader = lambda: self._open(environ, ident)
                return loc
        if ident is None:
            return None
        loc = Location(
            kind="coll",
            ident=ident,
            inner="/".join(rest),
            name=rest[-1] if rest else ident,
            is_top_level=top,
            readonly_id=is_portable_data_hash(ident),
        )
        tree = self._open(environ, ident)
        if tree is None:
            return None
        loc._tree = tree
        return loc

    def is_snapshot_path(self, path: str) -> bool:
        """Whether a path addresses a collection by PDH (a read-only snapshot)."""
        parts = [p for p in path.split("/") if p]
        parts = parts[path_token_width(parts):]
        if len(parts) >= 2 and parts[0] == "by_id":
            ident = normalize_ident(parts[1])
        elif parts and parts[0].startswith("c="):
            ident = normalize_ident(parts[0][2:])
        else:
            return False
        return ident is not None and is_portable_data_hash(ident)

    def destination_refusal(self, dest_path: str) -> str | None:
        """Why a COPY/MOVE may not create ``dest_path`` (None: it may).

        The top level holds collections only, under the names MKCOL would
        accept: a collection moved to ``/_health/`` would hide behind the
        health endpoint, one moved to ``/c=<uuid>/`` behind another
        collection.
        """
        parts = [p for p in dest_path.split("/") if p]
        parts = parts[path_token_width(parts):]
        if len(parts) == 1:
            return self.reserved_name_reason(parts[0])
        return None



def listed_record(rec: CollectionRecord) -> dict[str, Any]:
    """A record as listings show it, with its creation time (creationdate)."""
    return {**record_dict(rec), "created_at": rec.created_at}



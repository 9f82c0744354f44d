"""The URL space: one WsgiDAV provider at ``/`` that resolves every path.

    /                         the caller's collections, as folders
    /<name>/...               a collection by name, and paths inside it
    /by_id/<uuid|pdh>/...     a collection by UUID (writable) or PDH (snapshot)
    /c=<uuid|pdh>/...         the same, keep-web style
    /t=<token>/...            a token in the path (auth strips nothing; the
                              resolver skips this component)
    /<collection>/.arvados#collection   the virtual JSON record (read-only)

This is the single resolver: resources, COPY/MOVE destinations and lock
roots all come through ``locate``.  Resolution is cached per request in the
environ because WsgiDAV asks for the same path several times.
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

from wsgidav import util
from wsgidav.dav_error import HTTP_METHOD_NOT_ALLOWED, HTTP_NOT_MODIFIED, HTTP_PRECONDITION_FAILED, DAVError
from wsgidav.dav_provider import DAVProvider

from ..collection import VIRTUAL_RECORD_NAME, CollectionTree, FsError, InvalidName, IsADirectory, NotADirectory, NotFound, Stat
from ..collection.segments import etag_of, size_of
from ..manifest import is_portable_data_hash
from ..operations import Place
from ..session import Session, parse_time, record_dict
from ..storage.catalog import CatalogError, CollectionRecord
from ..storage.catalog import NotFound as CatalogNotFound
from .auth import path_token_width
from .context import context_of
from .copymove import copy_or_move
from .errors import ReasonedError, dav_error
from .junk import JunkStore, top_level_key
from .propfind import handle_propfind
from .props import DeadPropertyManager

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


class CollectionProvider(DAVProvider):
    def __init__(self, *, junk: JunkStore, prop_manager: DeadPropertyManager | None, propfind_max_entries: int = 10_000) -> None:
        super().__init__()
        self.junk = junk
        self._dead_props = prop_manager
        self.propfind_max_entries = propfind_max_entries  # Depth: infinity cap (dav/propfind.py)
        self.started_at = time.time()  # the dates of /by_id/ (and of / with no collections)

    def set_prop_manager(self, prop_manager) -> None:
        # WsgiDAV passes its own (None unless configured); we always use ours.
        super().set_prop_manager(self._dead_props)

    def is_readonly(self) -> bool:
        return False

    # ------------------------------------------------------------------ helpers

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

    # ------------------------------------------------------------------ resolution

    def locate(self, path: str, environ: dict) -> Location | None:
        """Parse a share-relative path; None if it cannot name anything."""
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
                loc = Location(kind="coll", ident=ident, name=head, is_top_level=True, record=_listed(rec))
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

    def get_resource_inst(self, path: str, environ: dict):
        if path is None:  # WsgiDAV asks for the parent of "/" (DELETE /)
            return None
        cache = context_of(environ).resolved
        if path in cache:
            return cache[path]
        res = self._resolve(path, environ)
        cache[path] = res
        return res

    def _resolve(self, path: str, environ: dict):
        from .resources import ByIdResource, DirResource, FileResource, JunkResource, RecordResource, TopResource

        loc = self.locate(path, environ)
        if loc is None:
            return None
        if loc.kind == "top":
            return TopResource(path, environ, loc)
        if loc.kind == "by_id":
            return ByIdResource(path, environ, loc)
        if loc.kind == "top_junk":
            entry = self.junk.get(loc.coll_key, loc.inner)
            return JunkResource(path, environ, loc, entry) if entry is not None else None
        if loc.ident is None:
            return None
        if loc.inner == "":
            tree = loc.tree
            if tree is None:
                return None
            mtime = parse_time(loc.record["modified_at"]) if loc.record else tree.mtime
            return DirResource(path, environ, loc, Stat(True, 0, mtime, None))
        tree = loc.tree
        if tree is None:
            return None
        if loc.inner == VIRTUAL_RECORD_NAME:
            return RecordResource(path, environ, loc)
        if self.junk.is_junk(loc.name):
            loc.junk = True
            entry = self.junk.get(loc.coll_key, loc.inner)
            return JunkResource(path, environ, loc, entry) if entry is not None else None
        try:
            segs = tree.snapshot(loc.inner)
        except IsADirectory:
            if not loc.inner.isascii():
                loc.inner = tree.resolve(loc.inner)
            return DirResource(path, environ, loc, tree.stat(loc.inner))
        except (NotFound, NotADirectory, InvalidName):
            fresh = self._after_miss(environ, loc, tree)
            if fresh is None:
                return None
            loc._tree = tree = fresh
            try:
                segs = tree.snapshot(loc.inner)
            except IsADirectory:
                if not loc.inner.isascii():
                    loc.inner = tree.resolve(loc.inner)
                return DirResource(path, environ, loc, tree.stat(loc.inner))
            except (NotFound, NotADirectory, InvalidName):
                return None
        except FsError as e:
            raise dav_error(e) from e
        if not loc.inner.isascii():
            # Locks and dead properties key on the stored spelling, whichever
            # equivalent spelling the request used.
            loc.inner = tree.resolve(loc.inner)
        st = Stat(False, size_of(segs), _mtime(tree, loc.inner), etag_of(segs))
        return FileResource(path, environ, loc, st, segs)

    def _after_miss(self, environ: dict, loc: Location, tree: CollectionTree) -> CollectionTree | None:
        """A newer tree to retry a miss with, if the catalog changed.

        Only before the request changed anything: a request keeps using the
        tree its change set locked.
        """
        ctx = context_of(environ)
        if ctx.has_change and ctx.change.trees:
            return None
        try:
            fresh = self.session(environ).revalidate_after_miss(loc.ident or "", tree)
        except (CatalogError, FsError):
            return None
        return fresh if fresh is not tree else None

    def collection_root_from_record(self, parent_path: str, rec: CollectionRecord, environ: dict):
        """A listing entry for a collection, without loading its manifest."""
        from .resources import DirResource

        ident = rec.uuid
        loc = Location(kind="coll", ident=ident, name=rec.name, is_top_level=True, record=_listed(rec))
        loc._loader = lambda: self._open(environ, ident)
        path = parent_path.rstrip("/") + "/" + rec.name
        return DirResource(path, environ, loc, Stat(True, 0, parse_time(rec.modified_at), None))

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

    def custom_request_handler(self, environ, start_response, default_handler):
        method = environ.get("REQUEST_METHOD")
        # Every write method on a snapshot is refused the same way (LOCK and
        # PROPPATCH would otherwise reach the lock and property managers).
        if method in SNAPSHOT_REFUSED and self.is_snapshot_path(environ.get("PATH_INFO", "")):
            raise DAVError(HTTP_METHOD_NOT_ALLOWED, context_info="collection snapshot (PDH) is read-only")
        if method in ("PUT", "MKCOL"):
            self._check_collection_exists(environ)
        if method in ("COPY", "MOVE"):
            # Our own Destination parsing (see copymove.py); ``default_handler``
            # is a bound method of WsgiDAV's RequestServer, whose checks we reuse.
            return copy_or_move(default_handler.__self__, environ, start_response, is_move=method == "MOVE")
        self._check_if_modified_since(environ)
        if environ.get("HTTP_IF_MATCH") and environ.get("REQUEST_METHOD") in ("PUT", "MKCOL", "LOCK"):
            # RFC 9110 13.1.1: If-Match is false when there is no current
            # representation (WsgiDAV ignores it for unmapped URLs and creates).
            if self.get_resource_inst(environ.get("PATH_INFO", ""), environ) is None:
                raise DAVError(HTTP_PRECONDITION_FAILED, context_info="If-Match: the target does not exist")
        if environ.get("REQUEST_METHOD") == "PROPFIND":
            return handle_propfind(self, environ, start_response, default_handler)  # streamed multistatus
        return default_handler(environ, start_response)

    def _check_collection_exists(self, environ: dict) -> None:
        """409 naming the missing collection for PUT/MKCOL below ``/<name>/``.

        WsgiDAV's own 409 ("PUT parent must be a collection") does not say
        that the *collection* is missing, nor how to create it; a first-time
        curl user PUTting into a collection they never made hits exactly this.
        """
        parts = [p for p in environ.get("PATH_INFO", "").split("/") if p]
        parts = parts[path_token_width(parts):]
        if (len(parts) < 2 or parts[0] == "by_id" or self.reserved_name_reason(parts[0]) is not None
                or self.junk.is_junk(parts[0])):  # never a collection (MKCOL refuses the name)
            return
        sess = self.session(environ)
        if sess.find_collection(parts[0]) is None and sess.find_collection(parts[0], fresh=True) is None:
            name = parts[0]
            raise ReasonedError(409, "collection-missing",
                                f"collection '{name}' does not exist (create it with MKCOL /{name}/)")

    def _check_if_modified_since(self, environ: dict) -> None:
        """304 when Last-Modified equals If-Modified-Since (RFC 7232 3.3).

        WsgiDAV only answers 304 when the date is strictly later, so the
        usual revalidation (the client echoes Last-Modified) got a 200.
        Only the plain case is handled here; with other conditionals WsgiDAV
        evaluates them all in order.
        """
        ims = environ.get("HTTP_IF_MODIFIED_SINCE")
        if not ims or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return
        if any(k in environ for k in ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_IF_UNMODIFIED_SINCE", "HTTP_IF")):
            return
        since = util.parse_time_string(ims)
        if since is None:
            return
        res = self.get_resource_inst(environ.get("PATH_INFO", ""), environ)
        if res is None or res.is_collection or not res.support_modified():
            return
        if int(res.get_last_modified()) <= since:
            raise DAVError(HTTP_NOT_MODIFIED)


def _listed(rec: CollectionRecord) -> dict[str, Any]:
    """A record as listings show it, with its creation time (creationdate)."""
    return {**record_dict(rec), "created_at": rec.created_at}


def _mtime(tree: CollectionTree, inner: str) -> float:
    try:
        return tree.stat(inner).mtime
    except FsError:
        return tree.mtime



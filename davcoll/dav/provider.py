"""The WebDAV provider: resources for the paths the URL space resolves.

``urlspace.UrlSpace`` says what a path names (a ``Location``); this provider
turns locations into WsgiDAV resources (``resources.py``), caches them per
request (``RequestContext.resolved``: WsgiDAV asks for the same path several
times) and takes over the requests WsgiDAV handles in ways davcoll cannot
use (COPY/MOVE: ``copymove.py``; PROPFIND: ``propfind.py``).
"""

from __future__ import annotations

import time

from wsgidav import util
from wsgidav.dav_error import HTTP_METHOD_NOT_ALLOWED, HTTP_NOT_MODIFIED, HTTP_PRECONDITION_FAILED, DAVError
from wsgidav.dav_provider import DAVProvider

from ..collection import VIRTUAL_RECORD_NAME, CollectionTree, FsError, InvalidName, IsADirectory, NotADirectory, NotFound, Stat
from ..collection.segments import size_of
from ..session import parse_time
from ..storage.catalog import CatalogError, CollectionRecord
from .auth import path_token_width
from .context import context_of
from .copymove import copy_or_move
from .errors import ReasonedError, dav_error
from .junk import JunkStore
from .propfind import handle_propfind
from .props import DeadPropertyManager
from .resources import ByIdResource, DirResource, FileResource, JunkResource, RecordResource, TopResource
from .urlspace import SNAPSHOT_REFUSED, Location, UrlSpace, listed_record


class CollectionProvider(UrlSpace, DAVProvider):
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

    # ------------------------------------------------------------------ resolution

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
        # No ETag here: FileResource computes it from ``segs`` when asked (once).
        st = Stat(False, size_of(segs), _mtime(tree, loc.inner), None)
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
        ident = rec.uuid
        loc = Location(kind="coll", ident=ident, name=rec.name, is_top_level=True, record=listed_record(rec))
        loc._loader = lambda: self._open(environ, ident)
        path = parent_path.rstrip("/") + "/" + rec.name
        return DirResource(path, environ, loc, Stat(True, 0, parse_time(rec.modified_at), None))

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


def _mtime(tree: CollectionTree, inner: str) -> float:
    try:
        return tree.stat(inner).mtime
    except FsError:
        return tree.mtime



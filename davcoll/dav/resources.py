"""WsgiDAV resources over collection trees.

Resources are cheap per-request views: they hold the tree, the path inside
it and a stat/snapshot taken when the resource was resolved, so every getter
is O(1) and a GET streams exactly the content whose length and ETag it
announced.  Mutations go through the request's ``ChangeSet`` (see
``collection/tree.py``); the sync middleware commits it before any status
is sent.
"""

from __future__ import annotations

import mimetypes
import time
import unicodedata
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from wsgidav import util
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_FORBIDDEN,
    HTTP_INTERNAL_ERROR,
    HTTP_METHOD_NOT_ALLOWED,
    HTTP_NOT_FOUND,
    HTTP_PRECONDITION_FAILED,
    DAVError,
)
from wsgidav.dav_provider import DAVCollection, DAVNonCollection

from ..collection import FsError, Stat
from ..collection.names import display_safe
from ..collection.segments import etag_of, size_of
from ..collection.io import FileReader
from ..storage.blocks import BlockStoreError
from ..storage.catalog import CatalogError
from .context import context_of
from .errors import ReasonedError, dav_error
from .junk import top_level_key
from .locks import lockdiscovery, lockroot_href
from .sidestores import operations_of
from .props import COLLECTION_NS, PROPS_NS, collection_props_get, is_xml_name

if TYPE_CHECKING:
    from .provider import CollectionProvider
    from .urlspace import Location

QUOTA_AVAILABLE = 1 << 50  # advertised free space: Explorer/rclone need a number

_ctype_cache: dict[str, str] = {}

def content_type_for(name: str) -> str:
    """MIME type from the file name (cached per extension)."""
    dot = name.rfind(".")
    ext = name[dot:].lower() if dot > 0 else ""
    ct = _ctype_cache.get(ext)
    if ct is None:
        ct = mimetypes.guess_type("x" + ext)[0] if ext else None
        ct = ct or "application/octet-stream"
        if ct.startswith("text/"):
            ct += "; charset=utf-8"
        _ctype_cache[ext] = ct
    return ct

# Characters WsgiDAV percent-encodes in hrefs although RFC 3986 allows them
# in a path segment.  "=" and "+" occur in /c=<id>/, /t=<token>/ and PDHs,
# and an encoded reserved character makes a different URI (RFC 3986 2.2):
# cadaver (neon) could not open such URLs ("Did not find a collection").
_HREF_SAFE = "/!*'(),$-_|.=+:@~"

def href_of(res) -> str:
    prov = res.provider
    return quote(prov.mount_path + prov.share_path + res.get_preferred_path(), safe=_HREF_SAFE)

def top_level_refusal() -> ReasonedError:
    """Why a plain file cannot be created at ``/`` (PUT, LOCK, COPY, MOVE),
    as an RFC 4918 error body Finder/Explorer users can be shown."""
    return ReasonedError(
        HTTP_FORBIDDEN, "top-level-holds-collections-only",
        "only collections (folders) live at the top level: create a folder here and put files in it, "
        "or mount a single collection's URL (e.g. https://host:8080/<collection>/) to use its files directly",
    )

class _Mixin:
    """Helpers shared by collection-backed resources."""

    provider: "CollectionProvider"
    environ: dict
    loc: "Location"

    def _session(self):
        return context_of(self.environ).session

    def _ref_key(self, inner: str | None = None) -> str:
        return self.provider.canonical_ref(self.loc, self.loc.inner if inner is None else inner)

    def _fail(self, exc: BaseException, **kw: Any) -> DAVError:
        return dav_error(exc, **kw)

    def _forget_resolution(self) -> None:
        context_of(self.environ).forget_resolutions()

    # --- WsgiDAV entry points: every delete/copy/move is one native operation

    def delete(self):
        self._delete()

    def handle_delete(self):
        return self._delete()

    def handle_copy(self, dest_path, *, depth_infinity):
        return self._copy_or_move(dest_path, move=False, recursive=depth_infinity)

    def handle_move(self, dest_path):
        return self._copy_or_move(dest_path, move=True)

    def support_recursive_move(self, dest_path):
        return True

    def copy_move_single(self, dest_path, *, is_move):  # pragma: no cover - native handlers cover it
        raise DAVError(HTTP_INTERNAL_ERROR, context_info="unexpected fallback copy/move")

    def move_recursive(self, dest_path):  # pragma: no cover
        raise DAVError(HTTP_INTERNAL_ERROR, context_info="unexpected fallback move")

    get_href = href_of

    def get_display_name(self) -> str:
        # Names other clients wrote may hold characters XML cannot carry;
        # the href (percent-encoded) still names the entry exactly.
        return display_safe(self.loc.name)

    def get_property_value(self, name: str):
        # RFC 4918 15.6: getetag holds the entity-tag as in the ETag header,
        # quotes included (WsgiDAV would return the bare value).
        if name == "{DAV:}getetag":
            etag = self.get_etag()  # type: ignore[attr-defined]
            if etag is not None:
                return f'"{etag}"'
        if name == "{DAV:}lockdiscovery" and self.provider.lock_manager is not None:
            return lockdiscovery(self.provider.lock_manager, self._ref_key(), self._lockroot_href)
        return super().get_property_value(name)  # type: ignore[misc]

    def _lockroot_href(self, root: str) -> str:
        """The lock root as the client named it (RFC 4918 14.12): from the
        request URL when this is its LOCK (a refresh reports the lock root
        resolved by its canonical key), else from this resource's URL."""
        env = self.environ
        if env.get("REQUEST_METHOD") == "LOCK":
            req = self.provider.get_resource_inst(env.get("PATH_INFO", ""), env)
            if req is not None:
                href = lockroot_href(root, req.get_ref_url(), req.get_href())
                if href is not None:
                    return href
        return lockroot_href(root, self._ref_key(), self.get_href()) or self.get_href()  # type: ignore[attr-defined]

    # --- the operations layer does the work (one verb -> one operation) ----

    def _ops(self):
        return operations_of(self.provider, self.environ)

    def place(self):
        """This resource as the operations layer's ``Place``."""
        return self.provider.place_of(self.loc)

    def _copy_or_move(self, dest_path: str, *, move: bool, recursive: bool = True) -> bool:
        prov = self.provider
        dst = prov.locate(dest_path, self.environ)
        if dst is None:
            raise DAVError(HTTP_BAD_REQUEST, context_info="invalid destination path")
        dest_exists = prov.get_resource_inst(dest_path, self.environ) is not None
        if dst.kind == "coll" and dst.is_top_level and not (self.loc.is_collection_root or self.loc.junk):
            raise top_level_refusal()
        try:
            if move:
                self._ops().move(self.place(), prov.place_of(dst), dest_exists=dest_exists)
            else:
                self._ops().copy(self.place(), prov.place_of(dst), recursive=recursive, dest_exists=dest_exists)
        except (FsError, CatalogError, BlockStoreError) as e:
            raise self._fail(e, already_exists=HTTP_PRECONDITION_FAILED) from e
        self._forget_resolution()
        return True

    def _check_locks(self) -> None:
        """Refuse (423) if this resource or anything below it is locked by
        someone whose token the request did not present.  WsgiDAV skips this
        check when the provider deletes natively."""
        lm = self.provider.lock_manager
        if lm is not None:
            lm.check_write_permission(
                url=self._ref_key(),
                depth="infinity",
                token_list=self.environ.get("wsgidav.ifLockTokenList", []),
                principal=self.environ.get("wsgidav.user_name", ""),
            )

    def _delete(self) -> bool:
        self._check_locks()
        try:
            self._ops().delete(self.place())
        except (FsError, CatalogError) as e:
            raise self._fail(e) from e
        self._forget_resolution()
        return True

class TopResource(DAVCollection):
    """``/``: every collection the caller can see, as a folder."""

    def __init__(self, path: str, environ: dict, loc: "Location") -> None:
        super().__init__(path, environ)
        self.loc = loc

    get_href = href_of

    def get_ref_url(self) -> str:
        return "/"

    def get_display_name(self) -> str:
        return ""

    def _junk_key(self) -> str:
        return top_level_key(self.provider.principal_id(self.environ))

    def get_member_names(self) -> list[str]:
        names = [r.name for r in self.provider.visible_collections(self.environ)]
        return names + self.provider.junk.names_in(self._junk_key(), "")

    def get_member(self, name: str):
        return self.provider.get_resource_inst(util.join_uri(self.path, name), self.environ)

    def get_member_list(self):
        out = []
        for rec in self.provider.visible_collections(self.environ):
            res = self.provider.collection_root_from_record(self.path, rec, self.environ)
            if res is not None:
                out.append(res)
        for name in self.provider.junk.names_in(self._junk_key(), ""):
            res = self.get_member(name)  # Finder's /._Folder files (see junk.py)
            if res is not None:
                out.append(res)
        return out

    def get_last_modified(self):
        """The newest collection's modification time (server start without any)."""
        from ..session import parse_time

        times = [r.modified_at for r in self.provider.visible_collections(self.environ) if r.modified_at]
        return max(parse_time(t) for t in times) if times else self.provider.started_at

    def get_creation_date(self):
        """The oldest collection's creation time (server start without any)."""
        from ..session import parse_time

        times = [r.created_at for r in self.provider.visible_collections(self.environ) if r.created_at]
        return min(parse_time(t) for t in times) if times else self.provider.started_at

    def get_available_bytes(self):
        return QUOTA_AVAILABLE

    def get_used_bytes(self):
        """0: the sum would read every collection's manifest (RFC 4331 wants
        a number; clients only show it)."""
        return 0

    def create_collection(self, name: str):
        prov = self.provider
        name = unicodedata.normalize("NFC", name)
        reason = prov.reserved_name_reason(name)
        if reason:
            raise DAVError(HTTP_FORBIDDEN, context_info=reason)
        if prov.junk.is_junk(name):
            raise DAVError(HTTP_FORBIDDEN, context_info="system metadata names cannot be folders")
        try:
            operations_of(prov, self.environ).create_collection(name)
        except (CatalogError, FsError) as e:
            raise dav_error(e) from e
        context_of(self.environ).forget_resolutions()

    def create_empty_resource(self, name: str):
        prov = self.provider
        path = util.join_uri(self.path, name)
        loc = prov.locate(path, self.environ) if prov.junk.is_junk(name) else None
        if loc is not None and loc.kind == "top_junk":
            return JunkResource(path, self.environ, loc, None)
        raise top_level_refusal()

    def delete(self):
        raise DAVError(HTTP_FORBIDDEN, context_info="cannot delete the top level")

    def handle_delete(self):
        raise DAVError(HTTP_FORBIDDEN, context_info="cannot delete the top level")

    def handle_copy(self, dest_path, *, depth_infinity):
        raise DAVError(HTTP_FORBIDDEN, context_info="cannot copy the top level")

    def handle_move(self, dest_path):
        raise DAVError(HTTP_FORBIDDEN, context_info="cannot move the top level")

    def set_property_value(self, name, value, *, dry_run=False):
        # Every user sees the same "/": its dead properties were shared scratch space.
        raise DAVError(HTTP_FORBIDDEN, context_info="the top level is shared by every user; properties cannot be set here")

    def support_recursive_move(self, dest_path):
        return True

class ByIdResource(DAVCollection):
    """``/by_id``: resolves collections by UUID or PDH on demand; lists nothing."""

    def __init__(self, path: str, environ: dict, loc: "Location") -> None:
        super().__init__(path, environ)
        self.loc = loc

    get_href = href_of

    def get_ref_url(self) -> str:
        return "/by_id"

    def get_member_names(self) -> list[str]:
        return []

    def get_last_modified(self):
        return self.provider.started_at  # lists nothing: nothing newer to report

    def get_creation_date(self):
        return self.provider.started_at

    def get_available_bytes(self):
        return QUOTA_AVAILABLE

    def get_used_bytes(self):
        return 0  # lists nothing

    def create_collection(self, name: str):
        raise DAVError(HTTP_METHOD_NOT_ALLOWED, context_info="/by_id is read-only")

    def create_empty_resource(self, name: str):
        raise DAVError(HTTP_METHOD_NOT_ALLOWED, context_info="/by_id is read-only")

    def handle_delete(self):
        raise DAVError(HTTP_METHOD_NOT_ALLOWED, context_info="/by_id is read-only")

    def handle_copy(self, dest_path, *, depth_infinity):
        raise DAVError(HTTP_METHOD_NOT_ALLOWED, context_info="/by_id is read-only")

    def handle_move(self, dest_path):
        raise DAVError(HTTP_METHOD_NOT_ALLOWED, context_info="/by_id is read-only")

    def set_property_value(self, name, value, *, dry_run=False):
        raise DAVError(HTTP_FORBIDDEN, context_info="/by_id is shared by every user; properties cannot be set here")

    def support_recursive_move(self, dest_path):
        return True

class DirResource(_Mixin, DAVCollection):
    """A folder inside a collection (including the collection root)."""

    def __init__(self, path: str, environ: dict, loc: "Location", stat: Stat) -> None:
        super().__init__(path, environ)
        self.loc = loc
        self.stat = stat

    # --- identity and live properties ---------------------------------------

    def get_ref_url(self) -> str:
        return self._ref_key()

    def get_last_modified(self):
        return self.stat.mtime

    def get_creation_date(self):
        """A collection root's creation time when the listing carried it;
        else the modification time (manifests keep no creation times)."""
        rec = self.loc.record if self.loc.is_collection_root else None
        if rec and rec.get("created_at"):
            from ..session import parse_time

            return parse_time(rec["created_at"])
        return self.stat.mtime

    def get_etag(self):
        return None

    def support_etag(self):
        return False

    def get_available_bytes(self):
        return QUOTA_AVAILABLE

    def get_used_bytes(self):
        """0: the sum of a folder's sizes walks everything below it, for
        every folder of a listing (RFC 4331 wants a number; clients only
        show it, and the free space is what they check)."""
        return 0

    def get_member_names(self) -> list[str]:
        assert self.loc.tree is not None
        try:
            names = self.loc.tree.names(self.loc.inner)
        except FsError as e:
            raise self._fail(e) from e
        junk = self.provider.junk.names_in(self.loc.coll_key, self.loc.inner)
        return sorted(set(names) | set(junk)) if junk else names

    def get_member(self, name: str):
        return self.provider.get_resource_inst(util.join_uri(self.path, name), self.environ)

    def get_member_list(self):
        """Children built straight from one directory listing (no re-resolving)."""
        tree = self.loc.tree
        assert tree is not None
        try:
            entries = tree.listdir(self.loc.inner)
        except FsError as e:
            raise self._fail(e) from e
        out: list = []
        base = self.path.rstrip("/")
        for name, st in entries:
            child = self.loc.child(name)
            path = f"{base}/{name}"
            if st.is_dir:
                out.append(DirResource(path, self.environ, child, st))
            else:
                out.append(FileResource(path, self.environ, child, st, None))
        for name in self.provider.junk.names_in(self.loc.coll_key, self.loc.inner):
            res = self.get_member(name)
            if res is not None:
                out.append(res)
        return out

    # --- collection-root properties (catalog properties) -------------------

    def _record(self) -> dict | None:
        """The catalog record of a collection root (without loading its tree
        when the listing already supplied it)."""
        if not self.loc.is_collection_root:
            return None
        if self.loc.record is not None:
            return self.loc.record
        tree = self.loc.tree
        return tree.record if tree is not None else None

    def get_property_names(self, *, is_allprop):
        names = super().get_property_names(is_allprop=is_allprop)
        rec = self._record()
        if rec is not None:
            names.extend(f"{{{COLLECTION_NS}}}{k}" for k in ("uuid", "portable_data_hash", "version"))
            names.extend(f"{{{PROPS_NS}}}{k}" for k in (rec.get("properties") or {}) if is_xml_name(k))
        return names

    def get_property_value(self, name: str):
        rec = self._record()
        if rec is not None:
            value = collection_props_get(rec, name)
            if value is not None:
                return value
        return super().get_property_value(name)

    def set_property_value(self, name: str, value, *, dry_run: bool = False):
        if name.startswith("{" + COLLECTION_NS + "}"):
            raise DAVError(HTTP_FORBIDDEN, context_info="read-only collection property")
        if name.startswith("{" + PROPS_NS + "}"):
            if not self.loc.is_collection_root or self.loc.tree is None:
                raise DAVError(HTTP_FORBIDDEN, context_info="collection properties live on the collection root")
            if self.loc.readonly_id:
                raise DAVError(HTTP_FORBIDDEN, context_info="collection snapshot is read-only")
            key = name[len(PROPS_NS) + 2 :]
            if not dry_run:
                # Only the keys the request names: the commit applies them to
                # the properties stored *then* (no lost updates).
                patch = context_of(self.environ).props_patch.setdefault(self.loc.tree, {})
                patch[key] = None if value is None else "".join(value.itertext())
            return True
        if self.loc.readonly_id:
            raise DAVError(HTTP_FORBIDDEN, context_info="collection snapshot is read-only")
        return super().set_property_value(name, value, dry_run=dry_run)

    def set_last_modified(self, dest_path, time_stamp, *, dry_run):
        return True  # Windows timestamps are accepted; manifests carry no mtimes

    # --- writes --------------------------------------------------------------

    def create_empty_resource(self, name: str):
        prov = self.provider
        # The tree picks the spelling (an existing equivalent name, else NFC).
        child = self.loc.child(name)
        if prov.junk.is_junk(name):
            child.junk = True
            return JunkResource(util.join_uri(self.path, name), self.environ, child, None)
        tree = self.loc.tree
        assert tree is not None
        if self.environ.get("REQUEST_METHOD") == "LOCK":
            # A lock-null resource becomes a real, empty file (RFC 4918 7.3).
            try:
                self._ops().put(self.provider.place_of(child), ())
            except FsError as e:
                raise self._fail(e) from e
            self._forget_resolution()
            return FileResource(util.join_uri(self.path, name), self.environ, child, Stat(False, 0, time.time(), etag_of(())), ())
        if tree.readonly:
            raise DAVError(HTTP_METHOD_NOT_ALLOWED, context_info="collection snapshot is read-only")
        return FileResource(util.join_uri(self.path, name), self.environ, child, None, None)

    def create_collection(self, name: str):
        child = self.loc.child(name)
        child.junk = self.provider.junk.is_junk(name)
        try:
            self._ops().mkdir(self.provider.place_of(child))
        except FsError as e:
            raise self._fail(e) from e
        self._forget_resolution()

    def support_recursive_delete(self):
        return True

class _UploadStream:
    """What ``begin_write`` hands WsgiDAV: counts bytes into a FileWriter.

    A block-store failure surfacing mid-body is mapped here: WsgiDAV would
    turn any non-DAVError into a 500.
    """

    def __init__(self, writer) -> None:
        self.writer = writer

    def write(self, data: bytes) -> None:
        try:
            self.writer.write(data)
        except (FsError, BlockStoreError) as e:
            raise dav_error(e) from e

    def writelines(self, chunks) -> None:
        for c in chunks:
            self.write(c)

    def close(self) -> None:
        pass

def expected_upload_size(environ: dict) -> int | None:
    """The body size the client announced (Content-Length, or Finder's
    X-Expected-Entity-Length for chunked uploads)."""
    te = environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    raw = environ.get("HTTP_X_EXPECTED_ENTITY_LENGTH") if "chunked" in te else environ.get("CONTENT_LENGTH")
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        return None

class _MappedReader:
    """A FileReader whose storage errors become mapped DAVErrors.

    WsgiDAV reads the body after the handler returned; the first read comes
    before the first byte is sent, so a failing block gives the client a
    clean 502/503 (a later failure can only cut the body short, which the
    client sees as a short Content-Length).
    """

    def __init__(self, reader: FileReader) -> None:
        self._r = reader

    def read(self, n: int = -1) -> bytes:
        try:
            return self._r.read(n)
        except (FsError, BlockStoreError) as e:
            raise dav_error(e) from e

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._r.seek(offset, whence)

    def tell(self) -> int:
        return self._r.tell()

    def close(self) -> None:
        self._r.close()

class FileResource(_Mixin, DAVNonCollection):
    """A file in a collection; ``segs`` is the snapshot it reads."""

    def __init__(self, path: str, environ: dict, loc: "Location", stat: Stat | None, segs: tuple | None) -> None:
        super().__init__(path, environ)
        self.loc = loc
        self.stat = stat
        self._segs = segs
        self._writer = None
        self._etag: str | None = None  # etag_of(self._segs), computed once on demand
        self._etag_after_commit = False  # written by this request: the sync middleware sends the ETag

    def _snapshot(self) -> tuple:
        if self._segs is None:
            if self.stat is None:
                raise DAVError(HTTP_NOT_FOUND)
            assert self.loc.tree is not None
            try:
                self._segs = self.loc.tree.snapshot(self.loc.inner)
            except FsError as e:
                raise self._fail(e) from e
        return self._segs

    def get_ref_url(self) -> str:
        return self._ref_key()

    def get_content_length(self):
        if self._segs is not None:
            return size_of(self._segs)
        return self.stat.size if self.stat else 0

    def get_content_type(self):
        return content_type_for(self.loc.name)

    def get_creation_date(self):
        # Manifests keep no per-file times: the last modification is the
        # best known (getlastmodified too; Windows' own times are dead
        # properties, see build_app's hotfixes).
        return self.get_last_modified()

    def get_used_bytes(self):
        return self.get_content_length()

    def get_available_bytes(self):
        return QUOTA_AVAILABLE

    def get_etag(self):
        if self._etag_after_commit:
            # Before the commit stores the tail, an ETag would name an unstored
            # buffer; the sync middleware adds the stored one to the response.
            return None
        if self._segs is not None:
            if self._etag is None:
                self._etag = etag_of(self._segs)
            return self._etag
        return self.stat.etag if self.stat else None

    def support_etag(self):
        return True

    def get_last_modified(self):
        return self.stat.mtime if self.stat else time.time()

    def support_ranges(self):
        return True

    def get_content(self):
        assert self.loc.tree is not None
        return _MappedReader(FileReader(self._snapshot(), self.loc.tree.store))

    def set_last_modified(self, dest_path, time_stamp, *, dry_run):
        return True  # accepted (Windows); manifests carry no per-file times

    def set_property_value(self, name: str, value, *, dry_run: bool = False):
        if self.loc.readonly_id:
            raise DAVError(HTTP_FORBIDDEN, context_info="collection snapshot is read-only")
        if name.startswith(("{" + PROPS_NS + "}", "{" + COLLECTION_NS + "}")):
            raise DAVError(HTTP_FORBIDDEN, context_info="collection properties live on the collection root")
        return super().set_property_value(name, value, dry_run=dry_run)

    # --- upload ---------------------------------------------------------------

    def begin_write(self, *, content_type=None):
        tree = self.loc.tree
        assert tree is not None
        try:
            self._writer = tree.new_writer()
        except FsError as e:
            raise self._fail(e) from e
        return _UploadStream(self._writer)

    def end_write(self, *, with_errors):
        writer = self._writer
        if writer is None:
            return
        self._writer = None
        if with_errors:
            writer.abort()
            return
        expected = expected_upload_size(self.environ)
        if expected is not None and writer.bytes_written != expected:
            writer.abort()
            raise DAVError(
                HTTP_BAD_REQUEST,
                context_info=f"upload incomplete: received {writer.bytes_written} of {expected} bytes; nothing was changed",
            )
        tree = self.loc.tree
        assert tree is not None
        try:
            # The last partial block stays buffered: the commit stores it,
            # packed together with other small files committed with it.
            segs = writer.close()
            self._ops().put(self.place(), segs)
        except (FsError, BlockStoreError) as e:
            writer.abort()
            raise self._fail(e) from e
        self._segs = segs
        self.stat = Stat(False, size_of(segs), time.time(), None)
        # The ETag is computed once, by the sync middleware after the commit
        # stored the tail (get_etag answers None until then, so WsgiDAV adds none).
        self._etag_after_commit = True
        context_of(self.environ).etag = lambda: etag_of(segs)
        self._forget_resolution()

class RecordResource(_Mixin, DAVNonCollection):
    """The read-only, unlisted ``.arvados#collection`` JSON file."""

    def __init__(self, path: str, environ: dict, loc: "Location") -> None:
        super().__init__(path, environ)
        self.loc = loc
        assert loc.tree is not None
        # Length and ETag now; the JSON itself is rendered chunk by chunk
        # as it is sent (a big manifest is never held whole in memory).
        self._body = loc.tree.record_body()

    def get_ref_url(self) -> str:
        return self._ref_key()

    def get_content_length(self):
        return self._body.length

    def get_content_type(self):
        return "application/json"

    def get_etag(self):
        return self._body.etag

    def support_etag(self):
        return True

    def get_last_modified(self):
        assert self.loc.tree is not None
        return self.loc.tree.mtime

    def get_creation_date(self):
        return self.get_last_modified()

    def support_ranges(self):
        return self._body.data is not None  # a streamed record cannot seek

    def get_content(self):
        if self._body.data is not None:
            import io

            return io.BytesIO(self._body.data)
        return self._body.reader()

    def prevent_locking(self):
        return True

    def begin_write(self, *, content_type=None):
        raise DAVError(HTTP_METHOD_NOT_ALLOWED, context_info=".arvados#collection is read-only")

    def _ro(self, *a, **kw):
        raise DAVError(HTTP_METHOD_NOT_ALLOWED, context_info=".arvados#collection is read-only")

    delete = handle_delete = handle_move = _ro  # COPY (a read) stays allowed

    def set_property_value(self, name, value, *, dry_run=False):
        raise DAVError(HTTP_FORBIDDEN, context_info=".arvados#collection is read-only")

class JunkResource(_Mixin, DAVNonCollection):
    """A Finder/Windows metadata file kept in memory only (see junk.py)."""

    def __init__(self, path: str, environ: dict, loc: "Location", entry) -> None:
        super().__init__(path, environ)
        self.loc = loc
        self.entry = entry
        self._buf: bytearray | None = None

    def get_ref_url(self) -> str:
        return self._ref_key()

    def get_content_length(self):
        return len(self.entry.data) if self.entry else 0

    def get_content_type(self):
        return "application/octet-stream"

    def get_etag(self):
        return self.entry.etag if self.entry else None

    def support_etag(self):
        return True

    def get_last_modified(self):
        return self.entry.mtime if self.entry else time.time()

    def get_creation_date(self):
        return self.get_last_modified()

    def get_used_bytes(self):
        return self.get_content_length()

    def get_available_bytes(self):
        return QUOTA_AVAILABLE

    def support_ranges(self):
        return True

    def get_content(self):
        import io

        return io.BytesIO(self.entry.data if self.entry else b"")

    def set_last_modified(self, dest_path, time_stamp, *, dry_run):
        return True

    def begin_write(self, *, content_type=None):
        self._buf = bytearray()
        limit = self.provider.junk.max_file
        buf = self._buf

        class _Sink:
            def write(self_inner, data):
                if len(buf) + len(data) > limit:
                    raise DAVError(507, context_info="system metadata file too large")
                buf.extend(data)

            def close(self_inner):
                pass

        return _Sink()

    def end_write(self, *, with_errors):
        if with_errors or self._buf is None:
            self._buf = None
            return
        expected = expected_upload_size(self.environ)
        if expected is not None and len(self._buf) != expected:
            self._buf = None
            raise DAVError(HTTP_BAD_REQUEST, context_info="upload incomplete; nothing was changed")
        self.provider.junk.put(self.loc.coll_key, self.loc.inner, bytes(self._buf))
        self.entry = self.provider.junk.get(self.loc.coll_key, self.loc.inner)
        self._buf = None
        self._forget_resolution()


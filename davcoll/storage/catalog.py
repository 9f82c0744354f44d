"""Collection catalog interface ("the API server"), records and errors.

Two implementations: the embedded SQLite catalog (``local_catalog``) and the
Arvados REST client (``arvados_api``).  Both speak the same update language
as the Arvados controller: ``replace_files`` plus an optional
``manifest_text`` holding the new content (spec 7.6), so a write request is
always sent as a delta and two writers touching different paths of one
collection never lose each other's changes.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping, Sequence

__all__ = [
    "CatalogError",
    "NotFound",
    "PermissionDenied",
    "Unauthorized",
    "Conflict",
    "BadRequest",
    "InvalidManifest",
    "Unavailable",
    "CollectionRecord",
    "UpdateResult",
    "Catalog",
    "revision_key",
]


class CatalogError(Exception):
    """Base class of catalog failures.  ``status`` is the HTTP status the
    Arvados API would have used; the WebDAV layer maps it from here."""

    status = 500


class BadRequest(CatalogError):
    """Malformed parameters, e.g. an invalid ``replace_files`` map (400)."""

    status = 400


class Unauthorized(CatalogError):
    """Missing, invalid or expired token (401)."""

    status = 401


class PermissionDenied(CatalogError):
    """The token may not do this (403), incl. bad block signatures."""

    status = 403


class NotFound(CatalogError):
    """No such collection, or not readable with this token (404)."""

    status = 404


class Conflict(CatalogError):
    """Unique-name clash or a similar state conflict (409/422)."""

    status = 409


class InvalidManifest(CatalogError):
    """A manifest failed validation, or the backend sent one that does (422/502)."""

    status = 422


class Unavailable(CatalogError):
    """Temporary backend trouble that outlasted the retries (503)."""

    status = 503


@dataclasses.dataclass
class CollectionRecord:
    """One collection as the catalog describes it.

    ``manifest_text`` is None unless it was asked for (it can be large);
    ``portable_data_hash`` may be None after a cheap update, where computing
    it would cost time proportional to the whole collection.
    ``version`` increases with every committed change (a cheap revalidation
    key for the embedded catalog; informational on Arvados).
    """

    uuid: str
    name: str
    portable_data_hash: str | None = None
    manifest_text: str | None = None
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)
    modified_at: str = ""
    created_at: str = ""
    version: int = 1
    owner_uuid: str = ""
    is_trashed: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def revision_key(rec: CollectionRecord) -> tuple[str, int]:
    """The cheap freshness key of a record: ``(modified_at, version)``.

    The one definition both catalogs' ``revision`` and the session's tree
    cache use, so a remembered key equals a fresh one exactly when nothing
    changed.  Not the PDH: the embedded catalog may only learn it later (a
    key whose spelling changes would look like a change), and a rename or a
    properties change keeps the PDH but must still refresh the record.
    """
    return (rec.modified_at, rec.version)


@dataclasses.dataclass
class UpdateResult:
    """What an update returns.

    ``applied_on_base`` is True when the catalog can vouch that the change
    was applied to exactly the version the caller named as ``base_version``
    (nobody else committed in between), so the caller's cached tree equals
    the stored one.  False means "re-read before trusting your cache".
    """

    record: CollectionRecord
    applied_on_base: bool = False


@dataclasses.dataclass
class CatalogUpdate:
    """One collection update, as ``Catalog.update`` takes it (for
    ``update_many``).  ``properties_patch`` changes only the keys it names
    (a None value deletes the key) on the properties *stored now*."""

    uuid: str
    replace_files: Mapping[str, str] | None = None
    manifest_text: str | None = None
    properties: Mapping[str, Any] | None = None
    name: str | None = None
    base_version: int | None = None
    properties_patch: Mapping[str, Any] | None = None


class PartiallyApplied(CatalogError):
    """``update_many`` on a catalog without multi-collection transactions
    failed after some updates were applied.  ``applied`` holds their
    results (in order), ``cause`` the failure of the next one."""

    def __init__(self, applied: list["UpdateResult"], cause: CatalogError) -> None:
        super().__init__(str(cause))
        self.applied = applied
        self.cause = cause
        self.status = getattr(cause, "status", 502)


class Catalog(abc.ABC):
    """Collections as seen by one caller."""

    #: Whether ``update_many`` applies all its updates in one transaction
    #: (embedded SQLite) or one after the other (the Arvados API has no
    #: multi-collection transaction).
    atomic_update_many = False

    def update_many(self, updates: Sequence[CatalogUpdate]) -> list[UpdateResult]:
        """Apply updates in order.

        Atomic catalogs apply all or none.  Others apply them one by one and
        raise ``PartiallyApplied`` when one fails after others were applied,
        so the caller can order updates such that a partial result never
        loses data (additions before removals).
        """
        done: list[UpdateResult] = []
        for u in updates:
            try:
                if u.properties_patch is not None:
                    done.append(self.update_properties(u.uuid, u.properties_patch))
                    continue
                done.append(self.update(u.uuid, replace_files=u.replace_files, manifest_text=u.manifest_text,
                                        properties=u.properties, name=u.name, base_version=u.base_version))
            except CatalogError as e:
                if done:
                    raise PartiallyApplied(done, e) from e
                raise
        return done

    def update_properties(self, uuid: str, patch: Mapping[str, Any]) -> UpdateResult:
        """Change only the property keys in ``patch`` (None deletes a key).

        Default: read the properties uncached right before the update.  A
        concurrent writer can still slip in between the two calls on a
        catalog without patch semantics (the Arvados API replaces the whole
        properties object); the window is one round trip, not a cache age.
        """
        current = dict(self.get(uuid, with_manifest=False).properties or {})
        for key, value in patch.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        return self.update(uuid, properties=current)

    @abc.abstractmethod
    def get(self, uuid_or_pdh: str, *, with_manifest: bool = True) -> CollectionRecord:
        """A collection by UUID (current version) or PDH (a snapshot)."""

    @abc.abstractmethod
    def list(self) -> list[CollectionRecord]:
        """The collections to show at ``/`` (no manifests)."""

    def find_by_name(self, name: str) -> CollectionRecord | None:
        """The untrashed collection with this name at ``/``, if any."""
        for rec in self.list():
            if rec.name == name:
                return rec
        return None

    @abc.abstractmethod
    def create(self, name: str, manifest_text: str = "", properties: Mapping[str, Any] | None = None) -> CollectionRecord:
        """A new collection; Conflict if the name is taken."""

    @abc.abstractmethod
    def update(
        self,
        uuid: str,
        *,
        replace_files: Mapping[str, str] | None = None,
        manifest_text: str | None = None,
        properties: Mapping[str, Any] | None = None,
        name: str | None = None,
        base_version: int | None = None,
    ) -> UpdateResult:
        """Apply a change atomically.

        With ``replace_files`` the controller's rules apply (spec 7.6):
        ``manifest_text`` supplies the content for ``manifest_text/...``
        sources.  Without it, ``manifest_text`` replaces the whole tree.
        ``properties`` replaces the properties object; ``name`` renames.
        """

    @abc.abstractmethod
    def trash(self, uuid: str) -> None:
        """Move the collection to the trash (it disappears from ``list``)."""

    @abc.abstractmethod
    def untrash(self, uuid: str) -> CollectionRecord:
        """Take a collection out of the trash (undoes ``trash``)."""

    def rename(self, uuid: str, new_name: str) -> CollectionRecord:
        return self.update(uuid, name=new_name).record

    @abc.abstractmethod
    def revision(self, uuid: str) -> tuple[str, int]:
        """``revision_key`` of the current record, without its manifest.

        Used to revalidate a cached tree with one small lookup.
        """

    def refresh_signatures(self, uuid_or_pdh: str) -> dict[str, str]:
        """Fresh ``+A`` signatures: bare ``md5+size`` -> newly signed locator.

        Catalogs whose blocks need no signatures have nothing to refresh.
        """
        return {}

    def close(self) -> None:
        """Release connections."""

"""Collection records: identifiers, names, properties and timestamps as the
catalog checks, stores and returns them."""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime, timezone
from typing import Any, Mapping

from ...manifest import Dir, ManifestError, parse_manifest
from ..catalog import BadRequest, CollectionRecord, InvalidManifest
from ..signatures import strip_manifest_signatures

UUID_RE = re.compile(r"[a-z0-9]{5}-4zz18-[a-z0-9]{15}")
CLUSTER_RE = re.compile(r"[a-z0-9]{5}")
UUID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_uuid(cluster_id: str) -> str:
    tail = "".join(secrets.choice(UUID_ALPHABET) for _ in range(15))
    return f"{cluster_id}-4zz18-{tail}"


def rfc3339_now() -> str:
    """RFC 3339 UTC with microseconds, as Arvados timestamps look."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


COLUMNS = ("uuid", "name", "owner_uuid", "created_at", "modified_at", "version", "properties", "is_trashed")
COLLECTION_COLUMNS = ", ".join(COLUMNS)
ROW_COLUMNS = COLLECTION_COLUMNS + ", id"  # collection_row: the record's columns, then the tree key


def to_record(row: tuple, *, pdh: str | None = None, manifest_text: str | None = None) -> CollectionRecord:
    uuid, name, owner, created, modified, version, props, trashed = row[:8]
    return CollectionRecord(
        uuid=uuid,
        name=name,
        portable_data_hash=pdh,
        manifest_text=manifest_text,
        properties=json.loads(props),
        modified_at=modified,
        created_at=created,
        version=version,
        owner_uuid=owner,
        is_trashed=bool(trashed),
    )


def check_name(name: object) -> str:
    """Collection names are path components at the WebDAV root, so, as on
    Arvados, they may not contain '/' nor be '.' or '..' (or empty)."""
    if not isinstance(name, str):
        raise BadRequest("name must be a string")
    if name in ("", ".", "..") or "/" in name:
        raise BadRequest(f"invalid collection name {name!r}")
    return name


def properties_json(properties: Mapping[str, Any] | None) -> str:
    if properties is None:
        return "{}"
    if not isinstance(properties, Mapping):
        raise BadRequest("properties must be an object")
    try:
        return json.dumps(dict(properties), sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise BadRequest(f"properties are not JSON-serializable: {e}") from e


def parse_incoming(manifest_text: str | None) -> Dir:
    """Validate a manifest sent by a client; +A hints are not stored (spec 8)."""
    if not manifest_text:
        return Dir()
    if not isinstance(manifest_text, str):
        raise BadRequest("manifest_text must be a string")
    try:
        return parse_manifest(strip_manifest_signatures(manifest_text)).root
    except ManifestError as e:
        raise InvalidManifest(str(e)) from e

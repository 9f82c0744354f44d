"""Properties: the dead-property manager and collection properties.

Dead properties (anything a client PROPPATCHes outside ``DAV:``) are kept in
a ``PropertyStore`` behind WsgiDAV's property-manager interface.

Each collection root also exposes its catalog ``properties`` (like keep-web's
S3 ``x-amz-meta-*``) as live properties in ``PROPS_NS``: readable by
PROPFIND, writable by PROPPATCH (the change is committed to the catalog by
the sync middleware), and a few read-only facts in ``COLLECTION_NS``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lxml import etree

from ..storage.props import PropertyStore

PROPS_NS = "urn:davcoll:properties"
COLLECTION_NS = "urn:davcoll:collection"

_NCNAME = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*")


def is_xml_name(key: str) -> bool:
    """Whether a property key can be an XML element name (others stay hidden)."""
    return _NCNAME.fullmatch(key) is not None and not key.lower().startswith("xml")


def collection_props_get(record: dict[str, Any], name: str) -> Any:
    """Value of a collection-root property, or None if ``name`` is not one."""
    if name.startswith("{" + PROPS_NS + "}"):
        key = name[len(PROPS_NS) + 2 :]
        props = record.get("properties") or {}
        if key not in props:
            return None
        v = props[key]
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    if name.startswith("{" + COLLECTION_NS + "}"):
        key = name[len(COLLECTION_NS) + 2 :]
        if key in ("uuid", "portable_data_hash", "version") and record.get(key) is not None:
            return str(record[key])
    return None


class DeadPropertyManager:
    """WsgiDAV's property-manager interface over a PropertyStore."""

    def __init__(self, store: PropertyStore) -> None:
        self.store = store

    def get_properties(self, norm_url: str, environ: dict | None = None) -> list[str]:
        return self.store.names(norm_url)

    def get_property(self, norm_url: str, name: str, environ: dict | None = None) -> str | None:
        v = self.store.get(norm_url, name)
        return v.decode("utf-8") if v is not None else None

    def write_property(self, norm_url: str, name: str, property_value: bytes, dry_run: bool = False, environ: dict | None = None) -> None:
        if dry_run:
            return
        if isinstance(property_value, str):
            property_value = property_value.encode("utf-8")
        self.store.set(norm_url, name, property_value)

    def remove_property(self, norm_url: str, name: str, dry_run: bool = False, environ: dict | None = None) -> None:
        if not dry_run:
            self.store.remove(norm_url, name)

    def remove_properties(self, norm_url: str, environ: dict | None = None) -> None:
        self.store.remove_tree(norm_url)

    def remove_tree(self, norm_url: str) -> None:
        self.store.remove_tree(norm_url)

    def copy_properties(self, src_url: str, dest_url: str, environ: dict | None = None) -> None:
        self.store.copy_tree(src_url, dest_url)

    def move_properties(self, src_url: str, dest_url: str, with_children: bool, environ: dict | None = None) -> None:
        self.store.move_tree(src_url, dest_url)


__all__ = ["PROPS_NS", "COLLECTION_NS", "DeadPropertyManager", "collection_props_get", "is_xml_name", "etree"]

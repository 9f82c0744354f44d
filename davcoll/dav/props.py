"""Properties: the dead-property manager and collection properties.

Dead properties (anything a client PROPPATCHes outside ``DAV:``) are kept in
a ``PropertyStore`` behind WsgiDAV's property-manager interface, capped in
number per resource and in value size, and read through a per-request cache
so PROPFIND costs O(1) store queries per folder.

Each collection root also exposes its catalog ``properties`` (like keep-web's
S3 ``x-amz-meta-*``) as live properties in ``PROPS_NS``: readable by
PROPFIND, writable by PROPPATCH (the change is committed to the catalog by
the sync middleware), and a few read-only facts in ``COLLECTION_NS``.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from typing import Any

from lxml import etree
from wsgidav.dav_error import ERROR_DESCRIPTIONS, HTTP_INSUFFICIENT_STORAGE, DAVError

from ..storage.props import PropertyStore, parent_key
from .context import context_of

PROPS_NS = "urn:davcoll:properties"
COLLECTION_NS = "urn:davcoll:collection"

# WsgiDAV writes a status it has no phrase for as "507 Status" in multistatus
# bodies; RFC 4918 11.5 names it.
ERROR_DESCRIPTIONS.setdefault(HTTP_INSUFFICIENT_STORAGE, "507 Insufficient Storage")

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


class DeadPropertyLimits:
    """Caps on dead properties, so one client cannot make every reader of a
    resource pay for thousands of properties (allprop PROPFIND of 45,000
    properties took 16 s) or store unbounded values.

    ``max_per_resource``: properties one resource may hold.
    ``max_value_bytes``: bytes of one property's XML.
    The total per request is bounded by the XML body limits in guard.py
    (1 MiB, 10,000 elements).
    """

    def __init__(self, max_per_resource: int = 1000, max_value_bytes: int = 64 << 10) -> None:
        self.max_per_resource = max_per_resource
        self.max_value_bytes = max_value_bytes


_CACHE = "davcoll.dead_props"  # environ key: this request's _RequestCache
_PLAN = "davcoll.dead_props_plan"  # environ key: PROPPATCH dry-run state per resource
BULK_BYTES = 4 << 20  # one folder's children's properties read at once at most
CACHE_BYTES = 8 << 20  # properties kept per request at most


class _RequestCache:
    """Dead properties read during one request.

    PROPFIND asks for the names, then each value, of every resource it lists.
    The first resource under a folder is read on its own (a Depth 0 PROPFIND
    costs one query); from the second on, the folder's children are read
    in one ``get_children`` query.  Bounded by ``CACHE_BYTES`` (least
    recently used folders and resources are dropped and read again if
    asked), so a streamed Depth 1 listing of a huge folder stays small.
    """

    def __init__(self, store: PropertyStore) -> None:
        self.store = store
        self.entries: "OrderedDict[tuple[str, str], tuple[Any, int]]" = OrderedDict()
        self.size = 0
        self.seen_parents: set[str] = set()
        self.too_big: set[str] = set()

    def _remember(self, key: tuple[str, str], value: Any, size: int) -> None:
        self.entries[key] = (value, size)
        self.size += size
        while self.size > CACHE_BYTES and len(self.entries) > 1:
            _, (_, old) = self.entries.popitem(last=False)
            self.size -= old

    def _hit(self, key: tuple[str, str]) -> Any:
        hit = self.entries.get(key)
        if hit is None:
            return None
        self.entries.move_to_end(key)
        return hit[0]

    def props(self, ref: str) -> dict[str, bytes]:
        own = self._hit(("k", ref))
        if own is not None:
            return own
        parent = parent_key(ref)
        kids = self._hit(("p", parent))
        if kids is not None:
            return kids.get(ref, {})
        if parent in self.seen_parents and parent not in self.too_big:
            kids = self.store.get_children(parent, BULK_BYTES)
            if kids is not None:
                self._remember(("p", parent), kids, _size(kids) + 64)
                return kids.get(ref, {})
            self.too_big.add(parent)
        self.seen_parents.add(parent)
        own = self.store.get_all(ref)
        self._remember(("k", ref), own, sum(len(n) + len(v) for n, v in own.items()) + 64)
        return own


def _size(kids: dict[str, dict[str, bytes]]) -> int:
    return sum(len(k) + sum(len(n) + len(v) for n, v in p.items()) for k, p in kids.items())


class DeadPropertyManager:
    """WsgiDAV's property-manager interface over a PropertyStore.

    Reads go through a per-request cache (see ``_RequestCache``): an allprop
    PROPFIND costs one store query per resource (Depth 0) or a few per
    folder (Depth 1), not one per property.  Writes check the limits in the
    PROPPATCH dry run (WsgiDAV runs every change as a dry run first and
    applies none if one fails), so a refused PROPPATCH changes nothing.
    """

    def __init__(self, store: PropertyStore, limits: DeadPropertyLimits | None = None) -> None:
        self.store = store
        self.limits = limits or DeadPropertyLimits()

    def _props(self, norm_url: str, environ: dict | None) -> dict[str, bytes]:
        if environ is None:
            return self.store.get_all(norm_url)
        cache = environ.get(_CACHE)
        if cache is None:
            cache = environ[_CACHE] = _RequestCache(self.store)
        return cache.props(norm_url)

    @staticmethod
    def _changed(environ: dict | None) -> None:
        """Forget what this request read: a write makes it stale."""
        if environ is not None:
            environ.pop(_CACHE, None)

    def get_properties(self, norm_url: str, environ: dict | None = None) -> list[str]:
        return sorted(self._props(norm_url, environ))

    def get_property(self, norm_url: str, name: str, environ: dict | None = None) -> str | None:
        v = self._props(norm_url, environ).get(name)
        return v.decode("utf-8") if v is not None else None

    def _plan(self, norm_url: str, environ: dict | None) -> dict[str, int]:
        """Sizes of the resource's properties as this PROPPATCH would leave them."""
        plans = environ.setdefault(_PLAN, {}) if environ is not None else {}
        plan = plans.get(norm_url)
        if plan is None:
            plan = plans[norm_url] = {n: len(v) for n, v in self._props(norm_url, environ).items()}
        return plan

    def write_property(self, norm_url: str, name: str, property_value: bytes, dry_run: bool = False, environ: dict | None = None) -> None:
        if isinstance(property_value, str):
            property_value = property_value.encode("utf-8")
        if dry_run:
            self._check_set(norm_url, name, len(property_value), environ)
            return
        if self._defer(environ, self.store.set, norm_url, name, property_value):
            return
        self.store.set(norm_url, name, property_value)
        self._changed(environ)

    def _defer(self, environ: dict | None, write, *args) -> bool:
        """In a PROPPATCH, queue a write for the sync middleware, which
        applies it once the request's catalog part (collection properties)
        has committed: a PROPPATCH that fails there changes nothing."""
        if environ is None or environ.get("REQUEST_METHOD") != "PROPPATCH":
            return False
        context_of(environ).dead_prop_writes.append(lambda: write(*args))
        self._changed(environ)
        return True

    def _check_set(self, norm_url: str, name: str, size: int, environ: dict | None) -> None:
        """Refuse a property past a limit: 507, which RFC 4918 (9.2.1) names
        for a PROPPATCH the server has no room to record; the reason says
        which limit."""
        lim = self.limits
        if size > lim.max_value_bytes:
            raise DAVError(HTTP_INSUFFICIENT_STORAGE,
                           context_info=f"property value is {size} bytes; the limit is {lim.max_value_bytes} bytes")
        plan = self._plan(norm_url, environ)
        if name not in plan and len(plan) >= lim.max_per_resource:
            raise DAVError(HTTP_INSUFFICIENT_STORAGE,
                           context_info=f"a resource holds at most {lim.max_per_resource} dead properties")
        plan[name] = size

    def remove_property(self, norm_url: str, name: str, dry_run: bool = False, environ: dict | None = None) -> None:
        if dry_run:
            self._plan(norm_url, environ).pop(name, None)
            return
        if self._defer(environ, self.store.remove, norm_url, name):
            return
        self.store.remove(norm_url, name)
        self._changed(environ)

    def remove_properties(self, norm_url: str, environ: dict | None = None) -> None:
        self.store.remove_tree(norm_url)
        self._changed(environ)

    def remove_tree(self, norm_url: str) -> None:
        self.store.remove_tree(norm_url)

    def copy_properties(self, src_url: str, dest_url: str, environ: dict | None = None) -> None:
        self.store.copy_tree(src_url, dest_url)
        self._changed(environ)

    def move_properties(self, src_url: str, dest_url: str, with_children: bool, environ: dict | None = None) -> None:
        self.store.move_tree(src_url, dest_url)
        self._changed(environ)


__all__ = ["PROPS_NS", "COLLECTION_NS", "DeadPropertyLimits", "DeadPropertyManager", "collection_props_get", "is_xml_name", "etree"]

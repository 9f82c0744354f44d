"""Dead WebDAV property store interface.

Properties are keyed by a canonical resource key (``/by_id/<uuid>/<path>``,
URL-quoted), so renaming a collection or addressing it by name or by id
finds the same properties.  Values are the XML of the property element.

Implementations: ``local_props.LocalPropertyStore`` (SQLite, embedded) and
``redis_props.RedisPropertyStore`` (shared by instances).  The abstract
methods are the whole contract; ``get_all`` and ``get_children`` have
correct defaults built on them and exist so a store can answer PROPFIND
in one query per folder instead of one per property.
"""

from __future__ import annotations

import abc


class PropertyStore(abc.ABC):
    @abc.abstractmethod
    def names(self, key: str) -> list[str]:
        """Property names (Clark notation) stored for ``key``."""

    @abc.abstractmethod
    def get(self, key: str, name: str) -> bytes | None:
        ...

    @abc.abstractmethod
    def set(self, key: str, name: str, value: bytes) -> None:
        ...

    @abc.abstractmethod
    def remove(self, key: str, name: str) -> None:
        ...

    @abc.abstractmethod
    def remove_tree(self, key: str) -> None:
        """Drop every property of ``key`` and of everything below it."""

    @abc.abstractmethod
    def copy_tree(self, src: str, dst: str) -> None:
        """Copy the properties of ``src`` and its descendants to ``dst``."""

    @abc.abstractmethod
    def move_tree(self, src: str, dst: str) -> None:
        """Re-key the properties of ``src`` and its descendants to ``dst``."""

    # --- bulk reads (optional; the defaults are correct but slower) --------
    # PROPFIND asks for every property of every listed resource.  One query
    # per resource per property made an allprop PROPFIND cost a store round
    # trip per property; these two let a folder listing cost O(1) queries.

    def get_all(self, key: str) -> dict[str, bytes]:
        """Every property of ``key`` (name -> value), ideally in one query."""
        out: dict[str, bytes] = {}
        for name in self.names(key):
            value = self.get(key, name)
            if value is not None:
                out[name] = value
        return out

    def get_children(self, parent: str, max_bytes: int) -> dict[str, dict[str, bytes]] | None:
        """Properties of the direct children of ``parent`` in one query:
        ``{child key: {name: value}}`` (children without properties are
        absent).  A child of ``parent`` is a key whose ``parent_key`` is
        ``parent``.  None if the values add up to more than ``max_bytes``
        (so memory stays bounded) or the store cannot list children: the
        caller then asks ``get_all`` per resource.  The default is None."""
        return None

    def close(self) -> None:
        pass


def parent_key(key: str) -> str:
    """The resource key one level up (``/by_id/u/a/b`` -> ``/by_id/u/a``).

    Stores that implement ``get_children`` index keys by this value."""
    return key.rstrip("/").rpartition("/")[0]

"""Dead WebDAV property store interface.

Properties are keyed by a canonical resource key (``/by_id/<uuid>/<path>``,
URL-quoted), so renaming a collection or addressing it by name or by id
finds the same properties.  Values are the XML of the property element.
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

    def close(self) -> None:
        pass

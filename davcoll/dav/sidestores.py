"""The side stores of one request, as the operations layer sees them.

``operations.SideStores`` is a small protocol; this adapter implements it
over the WebDAV layer's dead-property manager, WsgiDAV's lock manager and
the metadata-file store, so ``davcoll/operations.py`` never imports WsgiDAV.
"""

from __future__ import annotations

from typing import Any

from ..operations import Operations
from .context import context_of


class DavSideStores:
    """Dead properties, locks and metadata files for one request."""

    def __init__(self, provider: Any, environ: dict) -> None:
        self.junk = provider.junk
        self._props = provider.prop_manager
        self._locks = provider.lock_manager
        self._environ = environ

    def remove_properties(self, ref: str) -> None:
        if self._props is not None:
            self._props.remove_tree(ref)

    def move_properties(self, src_ref: str, dst_ref: str) -> None:
        if self._props is not None:
            self._props.move_properties(src_ref, dst_ref, with_children=True, environ=self._environ)

    def copy_properties(self, src_ref: str, dst_ref: str) -> None:
        if self._props is not None:
            self._props.copy_properties(src_ref, dst_ref, self._environ)

    def remove_locks(self, ref: str) -> None:
        if self._locks is not None:
            self._locks.remove_all_locks_from_url(ref, recursive=True)


def operations_of(provider: Any, environ: dict) -> Operations:
    """The request's operations object (one per request)."""
    ctx = context_of(environ)
    if ctx.operations is None:
        ctx.operations = Operations(ctx.session, ctx.change, DavSideStores(provider, environ))
    return ctx.operations

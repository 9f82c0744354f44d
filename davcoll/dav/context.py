"""The per-request state the WebDAV layers share, in one typed object.

WSGI gives the layers (guard, auth, sync middleware, provider, resources)
only the ``environ`` dict to talk through.  Instead of a dozen loose
``environ["davcoll.*"]`` keys, each request carries one ``RequestContext``
under ``CONTEXT_KEY``; its fields say what they hold and who sets them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..collection import ChangeSet

if TYPE_CHECKING:
    from ..collection import CollectionTree
    from ..operations import Operations
    from ..session import Principal, Session

CONTEXT_KEY = "davcoll.ctx"


@dataclass
class RequestContext:
    # Set by auth (TokenAuthenticator): who is calling, and their session.
    principal: "Principal | None" = None
    session: "Session | None" = None
    # Cache-Control: no-cache / must-revalidate: revalidate trees at once.
    no_cache: bool = False
    # The request's mutations (created on first use by ``change``).
    _change: ChangeSet | None = None
    # Collection-property patches per collection root (PROPPATCH), applied
    # after the tree change commits: {tree: {key: value or None}}.
    props_patch: "dict[CollectionTree, dict[str, Any]]" = field(default_factory=dict)
    # PUT: the stored ETag of the new content (computed after the commit
    # stores the last partial block).
    etag: Callable[[], str] | None = None
    # Resources resolved in this request, by share-relative path: every URL
    # is resolved once, however often WsgiDAV asks.
    resolved: dict[str, Any] = field(default_factory=dict)
    # What each path names (urlspace.Location), located once per request.
    locations: dict[str, Any] = field(default_factory=dict)
    # PROPPATCH: the dead-property writes, applied by the sync middleware
    # after the catalog part of the request (collection properties)
    # committed, so a failed request leaves both stores as they were.
    dead_prop_writes: list[Callable[[], None]] = field(default_factory=list)
    # The request's domain operations (dav/sidestores.py operations_of).
    operations: "Operations | None" = None

    @property
    def change(self) -> ChangeSet:
        """The request's change set (created on first use)."""
        if self._change is None:
            self._change = ChangeSet()
        return self._change

    @property
    def has_change(self) -> bool:
        return self._change is not None

    def forget_resolutions(self) -> None:
        """Drop cached resolutions after a mutation (paths now mean other things)."""
        self.resolved.clear()
        self.locations.clear()


def context_of(environ: dict) -> RequestContext:
    """The request's context (created on first use)."""
    ctx = environ.get(CONTEXT_KEY)
    if ctx is None:
        ctx = environ[CONTEXT_KEY] = RequestContext()
    return ctx

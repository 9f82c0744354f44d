"""The lock manager: WsgiDAV's, scoped to what a principal may lock.

WsgiDAV's ``LockManager`` granted ``LOCK /`` (or ``/by_id``) with Depth
infinity, after which every other principal got 423 on their own data; it
turned "Timeout: Infinite" into four weeks and kept owner XML of any size
(50 locks with 1 MB owners cost 900 MiB and 50 MB per PROPFIND).  This
subclass adds, before a lock is granted:

- only collection content is lockable: lock roots are canonical keys
  (``/by_id/<uuid>[/path]``, see ``CollectionProvider.canonical_ref``);
  ``/`` and ``/by_id`` (also reached as ``/t=<token>/``) are virtual folders
  shared by everybody: 403 with a reason.  Snapshots (PDH) are refused by
  the provider, and read-only principals by the authenticator, before this;
- timeouts capped (Infinite and absent ones get the cap, refreshes too);
- owner XML capped in bytes (413);
- live locks per principal capped (403).

It also makes "check conflicts, then create" atomic across processes: the
base class guards it with an in-process lock only, so with a lock store
shared by several instances (SQLite in the data directory or Redis) two
of them could grant conflicting exclusive locks.  ``acquire`` runs inside
the store's ``exclusive()`` section.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator
from urllib.parse import unquote

from lxml import etree
from wsgidav import xml_tools

from wsgidav import util
from wsgidav.dav_error import (
    HTTP_FORBIDDEN,
    HTTP_PRECONDITION_FAILED,
    HTTP_REQUEST_ENTITY_TOO_LARGE,
    PRECONDITION_CODE_LockConflict,
    PRECONDITION_CODE_LockTokenMismatch,
    DAVError,
    DAVErrorCondition,
)
from wsgidav.lock_man.lock_manager import LockManager, normalize_lock_root

from ..storage.catalog import CatalogError
from ..storage.locks import LockGone, LockStore
from .errors import dav_error


@dataclass(frozen=True)
class LockLimits:
    max_timeout: int = 3600  # seconds
    max_owner_bytes: int = 4096
    max_per_principal: int = 1000


def is_lockable_root(url: str) -> bool:
    """Whether a lock root names collection content (not a virtual folder),
    or a metadata file at the top level (``/_top/<principal>/<name>``, see
    ``CollectionProvider.canonical_ref``: Finder locks ``/._Folder``)."""
    parts = [p for p in url.split("/") if p]
    return (len(parts) >= 2 and parts[0] == "by_id") or (len(parts) >= 3 and parts[0] == "_top")


def lockroot_href(root: str, ref: str, href: str) -> str | None:
    """The client's URL for lock root ``root`` (a canonical key), given a
    resource at or below it: its canonical key ``ref`` and the URL ``href``
    the client named it by (as in listings).  None if ``ref`` is not at or
    below ``root``.

    Locks are stored under canonical keys so that every URL of a resource
    (``/name/…``, ``/by_id/<uuid>/…``, ``/c=<uuid>/…``) sees the same
    locks; RFC 4918 14.12 wants the reported lockroot to be the URL that
    was locked, which only the request knows.
    """
    root_parts = [p for p in unquote(root).split("/") if p]
    own_parts = [p for p in unquote(ref).split("/") if p]
    if own_parts[: len(root_parts)] != root_parts:
        return None
    below = len(own_parts) - len(root_parts)
    if below == 0:
        return href
    kept = href.rstrip("/").split("/")[:-below]
    return "/".join(kept) + "/"  # an ancestor is a folder


def lockdiscovery(manager: LockManager, ref: str, root_href: Callable[[str], str]) -> etree._Element:
    """``DAV:lockdiscovery`` of the resource keyed ``ref`` (its own locks,
    as WsgiDAV reports them), with each lockroot from ``root_href(root)``.

    WsgiDAV's version resolved each lock root back to a resource and
    reported that resource's canonical ``/by_id/…`` URL (and failed with a
    500 when the root no longer resolved, e.g. a lock on a metadata file
    that was never written).
    """
    el = etree.Element("{DAV:}lockdiscovery")
    for lock in manager.get_url_lock_list(ref):
        active = etree.SubElement(el, "{DAV:}activelock")
        etree.SubElement(etree.SubElement(active, "{DAV:}locktype"), "{DAV:}" + lock["type"])
        etree.SubElement(etree.SubElement(active, "{DAV:}lockscope"), "{DAV:}" + lock["scope"])
        etree.SubElement(active, "{DAV:}depth").text = lock["depth"]
        if lock["owner"]:
            active.append(xml_tools.string_to_xml(lock["owner"]))
        if lock["timeout"] < 0:
            timeout = "Infinite"
        else:
            timeout = "Second-" + str(max(0, int(lock["expire"] - time.time())))
        etree.SubElement(active, "{DAV:}timeout").text = timeout
        etree.SubElement(etree.SubElement(active, "{DAV:}locktoken"), "{DAV:}href").text = lock["token"]
        etree.SubElement(etree.SubElement(active, "{DAV:}lockroot"), "{DAV:}href").text = root_href(lock["root"])
    return el


class _MappedStore:
    """The store as the lock manager sees it: an unreachable store (Redis
    down, SQLite busy past its timeout) is a 503 with a reason, not a 500."""

    def __init__(self, store: LockStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return repr(self._store)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        try:
            with self._store.exclusive():
                yield
        except CatalogError as e:
            raise dav_error(e) from None

    def __getattr__(self, name: str):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except CatalogError as e:
                raise dav_error(e) from None

        # Kept: __getattr__ runs only for missing names, so each method is
        # wrapped once, not on every call (a write checks ~10 lock lists).
        setattr(self, name, call)
        return call


class ScopedLockManager(LockManager):
    def __init__(self, storage: LockStore, limits: LockLimits | None = None) -> None:
        super().__init__(_MappedStore(storage))
        self.limits = limits or LockLimits()

    def capped_timeout(self, timeout: float | None) -> float:
        cap = float(self.limits.max_timeout)
        if timeout is None or timeout < 0 or timeout > cap:
            return cap
        return float(timeout)

    def acquire(self, *, url, lock_type, lock_scope, lock_depth, lock_owner, timeout, principal, token_list):
        root = normalize_lock_root(url)
        if not is_lockable_root(root):
            raise DAVError(
                HTTP_FORBIDDEN,
                context_info="virtual folders are shared by every user and cannot be locked; lock a collection or something inside one",
            )
        owner = lock_owner or b""
        if len(owner) > self.limits.max_owner_bytes:
            raise DAVError(
                HTTP_REQUEST_ENTITY_TOO_LARGE,
                context_info=f"lock owner is larger than {self.limits.max_owner_bytes} bytes",
            )
        with self.storage.exclusive():
            if self.storage.count_for(principal) >= self.limits.max_per_principal:
                raise DAVError(
                    HTTP_FORBIDDEN,
                    context_info=f"too many locks held ({self.limits.max_per_principal} at most); unlock some first",
                )
            return super().acquire(
                url=root,
                lock_type=lock_type,
                lock_scope=lock_scope,
                lock_depth=lock_depth,
                lock_owner=owner,
                timeout=self.capped_timeout(timeout),
                principal=principal,
                token_list=token_list,
            )

    def _get_write_conflicts(self, url, depth, token_list, principal):
        """WsgiDAV's check (the URL and its ancestors, and for depth infinity
        its descendants), answered by one store query when the store can
        (``locks_on``) instead of one per ancestor: a MOVE made four such
        checks, fifteen queries in all."""
        locks_on = getattr(self.storage, "locks_on", None)
        if locks_on is None:
            return super()._get_write_conflicts(url, depth, token_list, principal)
        url = normalize_lock_root(url)
        chain = []
        u = url
        while u:
            chain.append(normalize_lock_root(u))
            u = util.get_uri_parent(u)
        errcond = DAVErrorCondition(PRECONDITION_CODE_LockConflict)
        for lock in locks_on(chain, below=url if depth == "infinity" else None):
            root = lock["root"]
            if root in chain:
                if root != url and lock["depth"] != "infinity":
                    continue  # only depth-infinity locks of ancestors count
                if principal == lock["principal"] and lock["token"] in token_list:
                    continue  # the caller's own lock, its token submitted
            errcond.add_href(root)
        return errcond

    def refresh(self, token, *, timeout=None):
        try:
            return self.storage.refresh(token, timeout=self.capped_timeout(timeout))
        except LockGone:
            raise DAVError(
                HTTP_PRECONDITION_FAILED,
                context_info="the lock expired or was released",
                err_condition=PRECONDITION_CODE_LockTokenMismatch,
            ) from None

    def __del__(self) -> None:
        # The base class closes the storage when it is garbage collected;
        # the process owns the store and closes it (App.close).
        pass


def install_lock_manager(dav_app, provider, storage: LockStore, limits: LockLimits) -> ScopedLockManager:
    """Give a WsgiDAV app (built with ``lock_storage: False``) our manager.

    WsgiDAV always wraps its ``lock_storage`` option in its own LockManager,
    so the scoped one is set on the provider after the app is built.
    """
    manager = ScopedLockManager(storage, limits)
    dav_app.lock_manager = manager
    provider.set_lock_manager(manager)
    return manager

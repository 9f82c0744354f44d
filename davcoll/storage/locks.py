"""WebDAV lock storage interface (shared state), free of WsgiDAV imports.

WsgiDAV's ``LockManager`` talks to a *lock storage* object through a small
duck-typed interface (``open``, ``close``, ``cleanup``, ``clear``, ``get``,
``create``, ``refresh``, ``delete``, ``get_lock_list``).  ``LockStore``
spells that interface out and adds what several processes sharing one store
need, which WsgiDAV's in-memory storage gets for free from one process-wide
lock:

- ``exclusive()``: a critical section across *every* process on the store,
  so "check for conflicting locks, then create" cannot interleave with the
  same sequence on another instance;
- ``count_for(principal)``: live locks held by one principal (the per
  principal cap).

A lock is a dict with the fields WsgiDAV uses: ``root`` (normalized path,
no trailing slash), ``type``, ``scope``, ``depth``, ``owner`` (XML bytes),
``principal``, ``timeout`` (seconds, -1 = infinite), ``expire`` (Unix time,
-1 = never) and ``token``.  Timeout policy (caps) is the caller's business:
a store keeps what it is given.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import functools
import json
import secrets
import time
from typing import Any, Callable, Iterator, TypeVar

from .catalog import Unavailable

F = TypeVar("F", bound=Callable[..., Any])


class LockGone(Exception):
    """The lock does not exist (any more): it expired or was released."""


class SharedStateUnavailable(Unavailable):
    """The lock or dead-property store cannot be reached or is busy.

    A subclass of the catalog's ``Unavailable`` so the one error table maps
    it to 503 + Retry-After (a Redis outage must not become 500s)."""


def map_store_errors(*error_types: type[BaseException]) -> Callable[[F], F]:
    """Method decorator: the driver's errors become ``SharedStateUnavailable``."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except error_types as e:
                raise SharedStateUnavailable(f"shared state store: {type(e).__name__}") from e

        return wrapper  # type: ignore[return-value]

    return deco


def normalize_root(path: str) -> str:
    """``/a/b`` for ``a/b/``, ``/`` for the root (WsgiDAV's normal form)."""
    return "/" + path.strip("/")


def new_token() -> str:
    # 256 random bits, the same shape as WsgiDAV's tokens.
    return "opaquelocktoken:" + hex(secrets.randbits(256))


def child_prefix(root: str) -> str:
    """Every strict descendant of ``root`` starts with this."""
    return "/" if root == "/" else root + "/"


def is_live(lock: dict[str, Any], now: float | None = None) -> bool:
    expire = float(lock["expire"])
    return expire < 0 or expire >= (time.time() if now is None else now)


def expire_of(timeout: float, now: float | None = None) -> float:
    return -1.0 if timeout < 0 else (time.time() if now is None else now) + timeout


def lock_to_json(lock: dict[str, Any]) -> str:
    """JSON text of a lock (owner XML base64-encoded: it is bytes)."""
    d = dict(lock)
    d["owner"] = base64.b64encode(lock.get("owner") or b"").decode("ascii")
    return json.dumps(d, separators=(",", ":"))


def lock_from_json(text: str | bytes) -> dict[str, Any]:
    d = json.loads(text)
    d["owner"] = base64.b64decode(d.get("owner") or "")
    return d


class LockStore(abc.ABC):
    """Storage for WebDAV locks; see the module docstring for the contract."""

    def open(self) -> None:
        """Called by the lock manager before first use."""

    def close(self) -> None:
        """Release connections; the store may be opened again."""

    def cleanup(self) -> None:
        """Purge expired locks (optional)."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Delete every lock (tests)."""

    @abc.abstractmethod
    def get(self, token: str) -> dict[str, Any] | None:
        """The live lock with this token, or None."""

    def create(self, path: str, lock: dict[str, Any]) -> dict[str, Any]:
        """Store a new lock on ``path``.

        ``lock`` has no token yet; it is completed *in place* (``root``,
        ``expire``, ``token``) and returned, as WsgiDAV expects.  Stores
        wrap this with their error mapping (``map_store_errors``).
        """
        self._complete(path, lock)
        with self.exclusive():
            self.cleanup()
            self._insert(lock)
        return lock

    def refresh(self, token: str, *, timeout: float) -> dict[str, Any]:
        """New timeout for a live lock; raises ``LockGone`` if there is none."""
        with self.exclusive():
            lock = self.get(token)
            if lock is None:
                raise LockGone(token)
            lock["timeout"] = -1.0 if timeout < 0 else float(timeout)
            lock["expire"] = expire_of(lock["timeout"])
            self._save_expiry(lock)
        return lock

    @abc.abstractmethod
    def _insert(self, lock: dict[str, Any]) -> None:
        """Write a completed new lock (inside ``exclusive``)."""

    @abc.abstractmethod
    def _save_expiry(self, lock: dict[str, Any]) -> None:
        """Write a refreshed lock's ``timeout`` and ``expire`` (inside ``exclusive``)."""

    @abc.abstractmethod
    def delete(self, token: str) -> bool:
        """Remove a lock; False if it did not exist."""

    @abc.abstractmethod
    def get_lock_list(self, path: str, *, include_root: bool, include_children: bool, token_only: bool) -> list:
        """Live locks whose root is ``path`` and/or below it."""

    @abc.abstractmethod
    def count_for(self, principal: str) -> int:
        """Number of live locks held by ``principal``."""

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """A critical section shared by every process using this store."""
        yield

    def _complete(self, path: str, lock: dict[str, Any]) -> dict[str, Any]:
        """Fill root, timeout, expire and token of a new lock in place."""
        if lock.get("token") is not None or lock.get("expire") is not None:
            raise ValueError("create() takes a lock definition, not an existing lock")
        lock["root"] = normalize_root(path)
        timeout = float(lock["timeout"])
        lock["timeout"] = -1.0 if timeout < 0 else timeout
        lock["expire"] = expire_of(lock["timeout"])
        if not isinstance(lock.get("owner"), bytes):
            lock["owner"] = str(lock.get("owner") or "").encode("utf-8")
        lock["token"] = new_token()
        return lock

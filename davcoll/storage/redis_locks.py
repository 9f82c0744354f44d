"""WebDAV locks in Redis, shared by every davcoll instance of a deployment.

Why not WsgiDAV's ``LockStorageRedis`` (wsgidav 4.4): it does not fit the
semantics several instances need.
- It stores locks with ``pickle``: anyone who can write to the Redis
  database could run code in every instance.
- "Check for conflicts, then create" is guarded only by the LockManager's
  in-process lock, so two instances can grant conflicting exclusive locks.
- Children of a path are found with ``KEYS prefix*`` (a scan of the whole
  database, blocking Redis) and the URL lists never drop expired tokens.
- ``refresh`` asserts that the lock exists (a lock expiring between the
  check and the refresh was a 500) and an infinite timeout (-1) becomes an
  invalid ``EX -1``.
- Nothing counts locks per principal.

Layout (every key under ``prefix``):
- ``L:<token>``: the lock as JSON, expiring in Redis when the lock does;
- ``idx``: sorted set of ``<root>\\0<token>`` (all scores 0), so the locks
  of one root and of every descendant are a lexicographic range
  (``ZRANGEBYLEX``) instead of a scan;
- ``exp``: the same members scored by expiry time, to purge ``idx``;
- ``P:<principal>``: sorted set of that principal's tokens by expiry;
- ``mutex``: the cross-instance critical section (redis-py's ``Lock``:
  ``SET NX PX`` with a token, released by a script), which expires on its
  own if an instance dies holding it.
Multi-key changes go in one ``MULTI``/``EXEC`` transaction.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

import redis

from .locks import (
    LockStore,
    SharedStateUnavailable,
    child_prefix,
    is_live,
    lock_from_json,
    lock_to_json,
    map_store_errors,
    normalize_root,
)

_mapped = map_store_errors(redis.exceptions.RedisError)

MUTEX_TIMEOUT = 30.0  # seconds an instance may hold the critical section


def redis_client(url_or_client: "str | redis.Redis") -> "redis.Redis":
    """A client for a ``redis://`` URL (or the client given), with the
    timeouts every shared-state store uses."""
    if isinstance(url_or_client, str):
        return redis.Redis.from_url(url_or_client, socket_timeout=30, health_check_interval=30)
    return url_or_client


class RedisLockStore(LockStore):
    def __init__(self, url_or_client: str | redis.Redis, *, prefix: str = "davcoll:") -> None:
        self.r = redis_client(url_or_client)
        self.prefix = prefix
        self._idx = prefix + "idx"
        self._exp = prefix + "exp"
        self._mutex = self.r.lock(
            prefix + "mutex", timeout=MUTEX_TIMEOUT, blocking_timeout=MUTEX_TIMEOUT, sleep=0.005, thread_local=True
        )
        # redis-py's Lock is not re-entrant; a thread inside exclusive() that
        # calls create() must not wait for itself.
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"RedisLockStore(prefix={self.prefix!r})"

    def _key(self, token: str) -> str:
        return f"{self.prefix}L:{token}"

    def _pkey(self, principal: str) -> str:
        return f"{self.prefix}P:{principal}"

    @staticmethod
    def _member(root: str, token: str) -> bytes:
        return f"{root}\0{token}".encode("utf-8")

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        try:
            acquired = self._mutex.acquire()
        except redis.exceptions.RedisError as e:
            raise SharedStateUnavailable(f"shared state store: {type(e).__name__}") from e
        if not acquired:
            raise SharedStateUnavailable("shared state store: timed out waiting for the lock table")
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            with contextlib.suppress(redis.exceptions.LockError):
                self._mutex.release()

    def close(self) -> None:
        self.r.close()

    @_mapped
    def cleanup(self) -> None:
        now = time.time()
        stale = self.r.zrangebyscore(self._exp, 0, now)
        if stale:
            p = self.r.pipeline()
            p.zrem(self._idx, *stale)
            p.zrem(self._exp, *stale)
            p.execute()

    @_mapped
    def clear(self) -> None:
        keys = list(self.r.scan_iter(match=self.prefix.replace("*", r"\*") + "*", count=1000))
        if keys:
            self.r.delete(*keys)

    @_mapped
    def get(self, token: str) -> dict[str, Any] | None:
        raw = self.r.get(self._key(token))
        if raw is None:
            return None
        lock = lock_from_json(raw)
        return lock if is_live(lock) else None

    def _write(self, p: Any, lock: dict[str, Any]) -> None:
        key = self._key(lock["token"])
        member = self._member(lock["root"], lock["token"])
        expire = float(lock["expire"])
        if expire < 0:
            p.set(key, lock_to_json(lock))
        else:
            p.set(key, lock_to_json(lock), pxat=int(expire * 1000) + 1)
        score = float("inf") if expire < 0 else expire
        p.zadd(self._idx, {member: 0})
        p.zadd(self._exp, {member: score})
        p.zadd(self._pkey(lock["principal"]), {lock["token"]: score})

    create = _mapped(LockStore.create)
    refresh = _mapped(LockStore.refresh)

    def _insert(self, lock: dict[str, Any]) -> None:
        p = self.r.pipeline(transaction=True)
        self._write(p, lock)
        p.execute()

    _save_expiry = _insert  # the whole lock is rewritten with its new expiry

    @_mapped
    def delete(self, token: str) -> bool:
        raw = self.r.get(self._key(token))
        if raw is None:
            return False
        lock = lock_from_json(raw)
        member = self._member(lock["root"], token)
        p = self.r.pipeline(transaction=True)
        p.delete(self._key(token))
        p.zrem(self._idx, member)
        p.zrem(self._exp, member)
        p.zrem(self._pkey(lock["principal"]), token)
        return bool(p.execute()[0])

    def _range(self, lo: str, hi: str) -> list[bytes]:
        return self.r.zrangebylex(self._idx, b"[" + lo.encode("utf-8"), b"(" + hi.encode("utf-8"))

    @_mapped
    def get_lock_list(self, path: str, *, include_root: bool, include_children: bool, token_only: bool) -> list:
        root = normalize_root(path)
        members: list[bytes] = []
        if include_root:
            members += self._range(root + "\0", root + "\x01")
        if include_children:
            prefix = child_prefix(root)
            members += [m for m in self._range(prefix, prefix[:-1] + "0") if not m.startswith(root.encode("utf-8") + b"\0")]
        if not members:
            return []
        tokens = [m.split(b"\0", 1)[1].decode("ascii") for m in members]
        raws = self.r.mget([self._key(t) for t in tokens])
        now = time.time()
        out: list = []
        gone: list[bytes] = []
        for member, raw in zip(members, raws):
            if raw is None:
                gone.append(member)
                continue
            lock = lock_from_json(raw)
            if is_live(lock, now):
                out.append(lock["token"] if token_only else lock)
        if gone:  # expired in Redis: drop the index entries too
            p = self.r.pipeline()
            p.zrem(self._idx, *gone)
            p.zrem(self._exp, *gone)
            p.execute()
        return out

    @_mapped
    def count_for(self, principal: str) -> int:
        key = self._pkey(principal)
        p = self.r.pipeline(transaction=True)
        p.zremrangebyscore(key, 0, time.time())
        p.zcard(key)
        return int(p.execute()[1])

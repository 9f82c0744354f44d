"""Dead WebDAV properties in Redis, shared by every davcoll instance.

The Arvados backend has nowhere on the cluster to keep dead properties, so
without a shared store each instance kept its own file and a property set
through one instance was missing through another.  With ``shared_state``
every instance reads and writes the same Redis database.

Layout (under ``prefix``): ``D:<resource key>`` is a hash of property name
(Clark notation) to value (XML bytes); ``didx`` is a sorted set of every
resource key that has properties (all scores 0), so a subtree
(``key`` and everything under ``key + "/"``) is one ``ZRANGEBYLEX`` range
instead of a ``KEYS`` scan.  Index entries of keys whose hash became empty
are harmless and dropped by the next subtree operation.  Copy and move read
the subtree and rewrite it in one ``MULTI``/``EXEC`` under ``WATCH`` (retried
if another instance changed the subtree meanwhile), so they are atomic.
"""

from __future__ import annotations

from typing import Any

import redis

from .locks import map_store_errors
from .redis_locks import redis_client
from .props import PropertyStore

_mapped = map_store_errors(redis.exceptions.RedisError)


CHILDREN_SCAN = 20_000  # descendants read to find a folder's children in one go


class RedisPropertyStore(PropertyStore):
    def __init__(self, url_or_client: str | redis.Redis, *, prefix: str = "davcoll:") -> None:
        self.r = redis_client(url_or_client)
        self.prefix = prefix
        self._idx = prefix + "didx"

    def _key(self, res_key: str) -> str:
        return f"{self.prefix}D:{res_key}"

    @_mapped
    def names(self, key: str) -> list[str]:
        return sorted(n.decode("utf-8") for n in self.r.hkeys(self._key(key)))

    @_mapped
    def get(self, key: str, name: str) -> bytes | None:
        v = self.r.hget(self._key(key), name)
        return bytes(v) if v is not None else None

    @_mapped
    def get_all(self, key: str) -> dict[str, bytes]:
        """Every property of ``key`` in one round trip (``HGETALL``)."""
        return {n.decode("utf-8"): bytes(v) for n, v in self.r.hgetall(self._key(key)).items()}

    @_mapped
    def get_children(self, parent: str, max_bytes: int) -> dict[str, dict[str, bytes]] | None:
        """Properties of the direct children of ``parent`` in two round trips:
        one index range (descendants, at most ``CHILDREN_SCAN`` of them) and
        one pipelined ``HGETALL`` per child.  None past either bound."""
        p = parent.rstrip("/")
        lo, hi = (p + "/").encode("utf-8"), (p + "0").encode("utf-8")
        members = self.r.zrangebylex(self._idx, b"[" + lo, b"(" + hi, start=0, num=CHILDREN_SCAN + 1)
        if len(members) > CHILDREN_SCAN:
            return None
        keys = [m.decode("utf-8") for m in members]
        keys = [k for k in keys if "/" not in k[len(p) + 1:]]
        if not keys:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(self._key(k))
        out: dict[str, dict[str, bytes]] = {}
        total = 0
        for k, props in zip(keys, pipe.execute()):
            if not props:
                continue
            total += sum(len(n) + len(v) for n, v in props.items())
            if total > max_bytes:
                return None
            out[k] = {n.decode("utf-8"): bytes(v) for n, v in props.items()}
        return out

    @_mapped
    def set(self, key: str, name: str, value: bytes) -> None:
        p = self.r.pipeline(transaction=True)
        p.hset(self._key(key), name, value)
        p.zadd(self._idx, {key.encode("utf-8"): 0})
        p.execute()

    @_mapped
    def remove(self, key: str, name: str) -> None:
        self.r.hdel(self._key(key), name)

    def _subtree(self, client: Any, key: str) -> list[str]:
        """``key`` and every indexed key below it."""
        k = key.rstrip("/")
        lo, hi = (k + "/").encode("utf-8"), (k + "0").encode("utf-8")
        below = client.zrangebylex(self._idx, b"[" + lo, b"(" + hi)
        return [k] + [m.decode("utf-8") for m in below]

    @_mapped
    def remove_tree(self, key: str) -> None:
        keys = self._subtree(self.r, key)
        p = self.r.pipeline(transaction=True)
        p.delete(*[self._key(k) for k in keys])
        p.zrem(self._idx, *[k.encode("utf-8") for k in keys])
        p.execute()

    def copy_tree(self, src: str, dst: str) -> None:
        self._rekey(src, dst, move=False)

    def move_tree(self, src: str, dst: str) -> None:
        self._rekey(src, dst, move=True)

    @_mapped
    def _rekey(self, src: str, dst: str, *, move: bool) -> None:
        s, d = src.rstrip("/"), dst.rstrip("/")

        def txn(pipe: Any) -> None:
            keys = self._subtree(pipe, s)
            pipe.watch(*[self._key(k) for k in keys])
            values = [(k, pipe.hgetall(self._key(k))) for k in keys]
            pipe.multi()
            for k, props in values:
                if not props:
                    continue
                new = d + k[len(s):]
                pipe.hset(self._key(new), mapping=props)
                pipe.zadd(self._idx, {new.encode("utf-8"): 0})
                if move:
                    pipe.delete(self._key(k))
                    pipe.zrem(self._idx, k.encode("utf-8"))

        self.r.transaction(txn, self._idx)

    def close(self) -> None:
        self.r.close()

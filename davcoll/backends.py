"""Backend wiring: which catalog, block store and token check serve callers.

- ``LocalBackend`` (the default): SQLite catalog and hashed tokens in
  ``<data-dir>/catalog.sqlite3``, blocks under ``<data-dir>/blocks``.
- ``ArvadosBackend``: the Arvados REST API and Keep, per caller token.

The WebDAV layer only sees the ``Backend`` interface (``session.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from .session import Backend, Principal, token_key
from .storage.blocks import BlockCache, BlockStore
from .storage.catalog import Catalog
from .storage.local_blocks import LocalBlockStore
from .storage.local_catalog import LocalCatalog
from .storage.local_props import LocalPropertyStore
from .storage.local_tokens import LocalTokenStore
from .storage.props import PropertyStore

ANONYMOUS_ID = "anonymous"

log = logging.getLogger("davcoll.backends")


class LocalBackend(Backend):
    trusted_normalized = True  # LocalCatalog stores our normalized layout
    shared_trees = True  # one tenant: every token sees the same collections

    def __init__(self, data_dir: str | Path, *, block_cache_bytes: int = 256 << 20) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        db = self.data_dir / "catalog.sqlite3"
        # PDHs are computed when asked for, never on the write path (a cheap
        # PDH still re-renders the touched directory on every update).
        self.catalog_ = LocalCatalog(db, cheap_pdh_chars=0)
        self.tokens = LocalTokenStore(db)
        self.props = LocalPropertyStore(db)
        self.blocks = LocalBlockStore(self.data_dir)
        # Small blocks become durable in the catalog commit that references
        # them: one sync point per small write (storage/local_small_blocks).
        self.catalog_.attach_small_blocks(self.blocks.small)
        self.cache = BlockCache(self.blocks, block_cache_bytes)
        self._count_lock = threading.Lock()
        self._count: tuple[float, int] | None = None

    def token_count(self) -> int:
        """Number of tokens (cached for a few seconds: checked per anonymous request)."""
        now = time.monotonic()
        with self._count_lock:
            if self._count is not None and now - self._count[0] < 5:
                return self._count[1]
        n = self.tokens.count()
        with self._count_lock:
            self._count = (now, n)
        return n

    def authenticate(self, token: str | None) -> Principal | None:
        if token is None:
            return Principal(ANONYMOUS_ID, "", can_write=False, label="anonymous")
        info = self.tokens.lookup(token)
        if info is None:
            return None
        return Principal(f"token-{info.id}", token, can_write=not info.read_only, label=info.label)

    def catalog(self, principal: Principal) -> Catalog:
        return self.catalog_

    def block_store(self, principal: Principal) -> BlockStore:
        return self.cache

    def cache_stats(self) -> dict[str, int]:
        return self.cache.stats()

    def close(self) -> None:
        self.blocks.close()
        self.catalog_.close()
        self.tokens.close()
        self.props.close()


class ArvadosBackend(Backend):
    """Collections and blocks on an Arvados cluster, per caller token.

    Each token gets its own catalog client and Keep client (locators are
    signed per token); all of them share one connection pool per service
    kind and one byte-bounded block cache.  Token checks (``users/current``)
    are cached briefly so every request does not cost an API round trip.
    Dead WebDAV properties live in the shared store (``shared_state``,
    Redis) when one is configured, so every instance sees them; else in a
    local SQLite file in the data directory (per instance: several
    instances then need sticky sessions).
    """

    trusted_normalized = False  # the controller writes the Go layout
    shared_trees = False  # trees hold per-token signatures
    pdh_access_checks = True  # a token may lose access to /by_id/<pdh>/

    def __init__(
        self,
        api_url: str,
        *,
        insecure: bool = False,
        anonymous_token: str | None = None,
        block_cache_bytes: int = 256 << 20,
        data_dir: str | Path = "./davcoll-data",
        keep_services: str | None = None,
        client_options: dict | None = None,
        keep_options: dict | None = None,
        principal_ttl: float = 60.0,
        shared_state: str = "",
    ) -> None:
        from .storage.arvados_api import ArvadosClient
        from .storage.keep import KeepClient

        self.api_url = api_url
        if insecure:
            # Once here instead of an InsecureRequestWarning per API/Keep call.
            log.warning("TLS certificate verification is off for the Arvados API and Keep (insecure = true)")
        self._client = ArvadosClient(api_url, "", verify_tls=not insecure, **(client_options or {}))
        self._keep = KeepClient(api_url, "", services=keep_services, verify_tls=not insecure,
                                signature_ttl=self.signature_ttl, **(keep_options or {}))
        self._anonymous_token = anonymous_token
        self.cache = BlockCache(self._keep, block_cache_bytes)
        data = Path(data_dir)
        data.mkdir(parents=True, exist_ok=True)
        if shared_state:
            from .storage.redis_props import RedisPropertyStore

            self.props: PropertyStore = RedisPropertyStore(shared_state)
        else:
            self.props = LocalPropertyStore(data / "dead-props.sqlite3")
        self.principal_ttl = principal_ttl
        # _lock guards _principals (token digest -> (expires, principal|None)).
        self._lock = threading.Lock()
        self._principals: dict[str, tuple[float, Principal | None]] = {}

    def _catalog_for(self, token: str):
        from .storage.arvados_api import ArvadosCatalog

        # The token's Keep client renews old signatures in a commit's manifest.
        return ArvadosCatalog(self._client.for_token(token), signer=self._keep.for_token(token))

    def signature_ttl(self) -> float | None:
        """The cluster's ``blobSignatureTtl`` (discovery document, read once)."""
        return float(self._client.blob_signature_ttl())

    def authenticate(self, token: str | None) -> Principal | None:
        from .storage.catalog import PermissionDenied, Unauthorized

        anonymous = token is None
        if anonymous:
            if not self._anonymous_token:
                return None
            token = self._anonymous_token
        key = token_key(token)
        now = time.monotonic()
        with self._lock:
            hit = self._principals.get(key)
        if hit is not None and hit[0] > now:
            p = hit[1]
            return Principal(p.user_id, p.token, can_write=not anonymous, label=p.label) if p else None
        try:
            user = self._catalog_for(token).current_user()
            principal: Principal | None = Principal(user["uuid"], token, can_write=not anonymous, label=user.get("username", ""))
            ttl = self.principal_ttl
        except (Unauthorized, PermissionDenied):
            principal, ttl = None, 5.0  # remember refusals briefly (no hammering)
        with self._lock:
            self._principals[key] = (now + ttl, principal)
            if len(self._principals) > 10000:
                self._principals = {k: v for k, v in self._principals.items() if v[0] > now}
        return principal

    def catalog(self, principal: Principal) -> Catalog:
        return self._catalog_for(principal.token)

    def block_store(self, principal: Principal) -> BlockStore:
        return self.cache.view(self._keep.for_token(principal.token))

    def cache_stats(self) -> dict[str, int]:
        return self.cache.stats()

    def close(self) -> None:
        self.props.close()
        self._keep.close()
        self._client.close()

"""Backend wiring: which catalog, block store and token check serve callers.

- ``LocalBackend`` (the default): SQLite catalog and hashed tokens in
  ``<data-dir>/catalog.sqlite3``, blocks under ``<data-dir>/blocks``.
- ``ArvadosBackend``: the Arvados REST API and Keep, per caller token.

The WebDAV layer only sees the ``Backend`` interface (``session.py``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

from .session import Backend, Principal
from .storage.blocks import BlockCache, BlockStore
from .storage.catalog import Catalog
from .storage.local_blocks import LocalBlockStore
from .storage.local_catalog import LocalCatalog
from .storage.local_props import LocalPropertyStore
from .storage.local_tokens import LocalTokenStore

ANONYMOUS_ID = "anonymous"


class LocalBackend(Backend):
    trusted_normalized = True  # LocalCatalog stores our normalized layout
    shared_trees = True  # one tenant: every token sees the same collections

    def __init__(self, data_dir: str | Path, *, block_cache_bytes: int = 256 << 20) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        db = self.data_dir / "catalog.sqlite3"
        self.catalog_ = LocalCatalog(db)
        self.tokens = LocalTokenStore(db)
        self.props = LocalPropertyStore(db)
        self.blocks = LocalBlockStore(self.data_dir)
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
        self.catalog_.close()
        self.tokens.close()
        self.props.close()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()

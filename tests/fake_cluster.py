"""The fake Arvados cluster and davcoll-on-Arvados servers, wired once.

Six test modules each built their own FakeArvados + ArvadosBackend +
running_server trio, with slightly different retry settings and config
overrides; this module is the one place that wiring lives.

- ``fake_cluster(...)``: a started FakeArvados (context manager).
- ``fake_fixture(...)``: a module-scoped pytest fixture yielding one.
- ``arvados_backend(fake, data_dir, ...)``: an ArvadosBackend with test
  retry settings (short backoff, so injected faults do not stall tests).
- ``arvados_server(fake, data_dir, ...)``: davcoll on that backend, served
  in-process (server_util.running_server); ``srv.app.backend`` is it.
- ``live_collection`` / ``stored_files``: what the cluster itself stores,
  read past davcoll.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import pytest

from davcoll.backends import ArvadosBackend
from davcoll.manifest import parse_manifest
from davcoll.testing.fake_arvados import FakeArvados
from server_util import Running, running_server

# Test defaults: retry quickly (faults are injected, not network weather).
CLIENT_OPTIONS: dict[str, Any] = {"backoff_start": 0.01, "retries": 2}
KEEP_OPTIONS: dict[str, Any] = {"backoff_start": 0.01, "num_retries": 2}


@contextlib.contextmanager
def fake_cluster(*, keepstores: int = 2, seed: int = 0, ttl: int | None = None, **kw: Any) -> Iterator[FakeArvados]:
    """A running fake cluster; ``ttl`` is the blob signing TTL (seconds)."""
    if ttl is not None:
        kw["blob_signing_ttl"] = ttl
    with FakeArvados(keepstores=keepstores, seed=seed, **kw) as fake:
        yield fake


def fake_fixture(*, keepstores: int = 2, seed: int = 0, ttl: int | None = None, scope: str = "module",
                 name: str = "fake", **kw: Any):
    """A pytest fixture (module-scoped by default) yielding a fake cluster:
    ``fake = fake_fixture(keepstores=2, seed=1)`` at module level (give
    ``name`` when the module-level name is not ``fake``)."""

    @pytest.fixture(scope=scope, name=name)
    def fake():
        with fake_cluster(keepstores=keepstores, seed=seed, ttl=ttl, **kw) as f:
            yield f

    return fake


def arvados_backend(fake: FakeArvados, data_dir: str | Path, *, client_options: dict | None = None,
                    keep_options: dict | None = None, shared_state: str = "", **kw: Any) -> ArvadosBackend:
    """An ArvadosBackend on the fake cluster.  ``client_options`` and
    ``keep_options`` replace (not extend) the test defaults; other keywords
    (block_cache_bytes, principal_ttl, ...) go to ArvadosBackend."""
    return ArvadosBackend(
        fake.api_url,
        data_dir=data_dir,
        client_options=dict(CLIENT_OPTIONS if client_options is None else client_options),
        keep_options=dict(KEEP_OPTIONS if keep_options is None else keep_options),
        shared_state=shared_state,
        **kw,
    )


@contextlib.contextmanager
def arvados_server(fake: FakeArvados, data_dir: str | Path, *, backend: ArvadosBackend | None = None,
                   client_options: dict | None = None, keep_options: dict | None = None, shared_state: str = "",
                   backend_options: dict | None = None, **overrides: Any) -> Iterator[Running]:
    """davcoll on the fake cluster, served in-process.

    ``backend`` (else one built by ``arvados_backend`` with the options
    given) serves; ``overrides`` are config values (anonymous, revalidate_seconds, ...).
    """
    if backend is None:
        backend = arvados_backend(fake, data_dir, client_options=client_options, keep_options=keep_options,
                                  shared_state=shared_state, **(backend_options or {}))
    overrides.setdefault("backend", "arvados")
    overrides.setdefault("arvados_api_host", fake.api_url)
    if shared_state:
        overrides.setdefault("shared_state", shared_state)
    with running_server(data_dir, backend_impl=backend, **overrides) as srv:
        yield srv


def live_collection(fake: FakeArvados, name: str):
    """The untrashed collection with this name on the cluster, or None."""
    found = [c for c in list(fake.collections.values()) if c.name == name and not c.is_trashed]
    return found[0] if found else None


def stored_manifest(fake: FakeArvados, name: str) -> str:
    """The manifest the cluster stores for a (live) collection name."""
    c = live_collection(fake, name)
    assert c is not None, f"no collection {name!r}"
    return fake.stored_manifest(c.uuid)


def stored_files(manifest_text: str) -> dict[str, int]:
    """path -> size of every file of a manifest."""
    return {p: sum(s[2] for s in segs) for p, segs in parse_manifest(manifest_text).files()}

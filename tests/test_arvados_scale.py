"""The Arvados backend over time (issue 12): cheap revalidation, block
signatures that expire, access re-checks, outages as 5xx with a reason,
TLS settings.  Everything runs against the in-repo fake cluster."""

from __future__ import annotations

import time

import pytest
import requests

from davcoll.backends import ArvadosBackend
from davcoll.session import SessionConfig, SessionManager
from davcoll.storage.arvados_api import ArvadosCatalog, ArvadosClient
from davcoll.storage.catalog import revision_key
from davcoll.storage.local_catalog import LocalCatalog
from davcoll.testing.fake_arvados import FakeArvados

FAST_API = {"backoff_start": 0.01, "retries": 1, "timeout": (2.0, 10.0)}
FAST_KEEP = {"backoff_start": 0.01, "num_retries": 1, "connect_timeout": 1.0, "read_timeout": 10.0}


@pytest.fixture(scope="module")
def fake():
    with FakeArvados(keepstores=2, seed=12) as f:
        yield f


@pytest.fixture(autouse=True)
def clean(fake):
    fake.faults.reset()
    fake.time_offset = 0.0
    yield
    fake.faults.reset()


def make_backend(fake, tmp_path, **kw) -> ArvadosBackend:
    return ArvadosBackend(fake.api_url, data_dir=tmp_path / "state", client_options=dict(FAST_API),
                          keep_options=dict(FAST_KEEP), **kw)


@pytest.fixture
def manager(fake, tmp_path):
    backend = make_backend(fake, tmp_path)
    m = SessionManager(backend, config=SessionConfig(revalidate_seconds=0.0))
    yield m
    m.close()


def api_calls(fake, since: int) -> list:
    return fake.requests_for("api")[since:]


def n_api(fake) -> int:
    return len(fake.requests_for("api"))


# --------------------------------------------------------------------------- item 1


def test_revision_key_is_one_definition_for_both_catalogs(fake, tmp_path):
    """Both catalogs' revision() equal revision_key of their own record."""
    local = LocalCatalog(tmp_path / "c.sqlite3", synchronous="OFF")
    token = fake.add_user("rk")
    arv = ArvadosCatalog(ArvadosClient(fake.api_url, token, **FAST_API))
    try:
        for cat in (local, arv):
            rec = cat.create("rk")
            assert cat.revision(rec.uuid) == revision_key(cat.get(rec.uuid, with_manifest=False))
            cat.update(rec.uuid, properties={"a": "b"})
            assert cat.revision(rec.uuid) == revision_key(cat.get(rec.uuid, with_manifest=False))
            assert cat.revision(rec.uuid) != revision_key(rec)
    finally:
        local.close()
        arv.close()


def test_unchanged_collection_revalidates_with_one_small_call(fake, manager):
    token = fake.add_user("reval")
    s = manager.session(manager.authenticate(token))
    loc = fake.sign(fake.store_block(b"hello"), token)
    rec = s.catalog.create("big", "".join(f"./d{i} {loc} 0:5:f{j}\n" for i in range(3) for j in range(1)))
    tree = s.open_tree(rec.uuid)
    before = n_api(fake)
    assert s.open_tree(rec.uuid) is tree  # revalidate_seconds=0: checked every time
    calls = api_calls(fake, before)
    assert len(calls) == 1, [(c.method, c.path, c.query) for c in calls]
    assert calls[0].method == "GET" and "manifest_text" not in calls[0].query
    # A change elsewhere (another writer) reloads.
    s.catalog.update(rec.uuid, properties={"x": "y"})
    before = n_api(fake)
    fresh = s.open_tree(rec.uuid)
    assert fresh is not tree and fresh.record["properties"] == {"x": "y"}
    assert any("manifest_text" in c.query for c in api_calls(fake, before))
    # ... and the reloaded tree is again checked with one small call.
    before = n_api(fake)
    assert s.open_tree(rec.uuid) is fresh
    assert len(api_calls(fake, before)) == 1

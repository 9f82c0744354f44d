"""The WebDAV server on the Arvados backend, against the fake cluster.

Same client-visible behaviour as the embedded backend: litmus passes, writes
are replace_files deltas (checked on the fake's request log), COPY/MOVE
between collections move references only, users are isolated.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from davcoll.testing.fake_arvados import FakeArvados
from davclient import DavClient
from fake_cluster import arvados_server, fake_fixture, live_collection

fake = fake_fixture(keepstores=2, seed=1)


@pytest.fixture
def arv_server(fake, tmp_path):
    with arvados_server(fake, tmp_path / "state", anonymous="none") as srv:
        yield srv


def _client(srv, fake: FakeArvados, user: str) -> DavClient:
    return DavClient(srv.url, token=fake.add_user(user))


def _stored(fake, name: str) -> tuple[str, str]:
    """(uuid, stored manifest) of the untrashed collection with this name."""
    c = live_collection(fake, name)
    if c is None:
        raise AssertionError(f"no collection {name!r}")
    return c.uuid, fake.stored_manifest(c.uuid)


def _collection_updates(fake) -> list:
    return [r for r in fake.requests_for("api") if r.method in ("PATCH", "PUT") and "/collections/" in r.path]


def test_cycle_is_one_update_per_request(fake, arv_server):
    srv = arv_server
    c = _client(srv, fake, "carol")
    assert c.mkcol("data/").status_code == 201
    assert c.mkcol("data/sub/").status_code == 201
    fake.clear_requests()
    assert c.put("data/sub/x.bin", b"x" * 1000).status_code == 201
    assert len(_collection_updates(fake)) == 1
    _, text = _stored(fake, "data")
    assert "0:1000:x.bin" in text
    fake.clear_requests()
    r = c.move("data/sub/x.bin", "data/y.bin")
    assert r.status_code == 201
    assert len(_collection_updates(fake)) == 1
    assert not fake.requests_for("keep_put")  # MOVE moves references only
    assert c.get("data/y.bin").content == b"x" * 1000
    assert c.get("data/sub/x.bin").status_code == 404
    _, text = _stored(fake, "data")
    assert "y.bin" in text and "x.bin" not in text
    # A request that changes nothing commits nothing.
    fake.clear_requests()
    assert c.propfind("data/", "1").status_code == 207
    assert c.get("data/y.bin").status_code == 200
    assert not _collection_updates(fake)


def test_cross_collection_copy_and_isolation(fake, arv_server):
    srv = arv_server
    a, b = _client(srv, fake, "dave"), _client(srv, fake, "erin")
    for name in ("one", "two"):
        assert a.mkcol(f"{name}/").status_code == 201
    payload = bytes(range(256)) * 4096
    assert a.put("one/f.bin", payload).status_code == 201
    fake.clear_requests()
    r = a.copy("one/f.bin", "two/g.bin")
    assert r.status_code == 201, r.text
    assert not fake.requests_for("keep_put")  # no block was re-uploaded
    assert a.get("two/g.bin").content == payload
    # Another user sees neither collection, by name or by id.
    assert b.get("one/f.bin").status_code == 404
    r = b.propfind("", "1")
    assert r.status_code == 207 and "/one/" not in r.text
    uuid, _ = _stored(fake, "one")
    assert b.get(f"by_id/{uuid}/f.bin").status_code == 404
    assert a.get(f"by_id/{uuid}/f.bin").content == payload


def test_bad_token_is_401(fake, arv_server):
    r = DavClient(arv_server.url, token="v2/zzzzz-gj3su-000000000000000/nope").get("")
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("litmus") is None, reason="litmus not installed (CI installs it)")
def test_litmus_on_arvados_backend(fake, arv_server, tmp_path):
    tok = fake.add_user("litmus")
    assert DavClient(arv_server.url, token=tok).mkcol("lit/").status_code == 201
    out = subprocess.run(["litmus", arv_server.u("lit/"), "x", tok], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    text = out.stdout + out.stderr
    summaries = [l for l in text.splitlines() if "summary for" in l]
    assert len(summaries) == 5, text[-3000:]
    assert all("0 failed" in l for l in summaries), text[-3000:]
    assert "WARNING" not in text, text[-3000:]

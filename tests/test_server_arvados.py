"""The WebDAV server on the Arvados backend, against the fake cluster.

Same client-visible behaviour as the embedded backend: litmus passes, writes
are replace_files deltas (checked on the fake's request log), COPY/MOVE
between collections move references only, users are isolated.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests

from davcoll.backends import ArvadosBackend
from davcoll.testing.fake_arvados import FakeArvados
from server_util import running_server

FAST = {"backoff_start": 0.01}


@pytest.fixture(scope="module")
def fake():
    with FakeArvados(keepstores=2, seed=1) as f:
        yield f


@pytest.fixture
def arv_server(fake, tmp_path):
    backend = ArvadosBackend(
        fake.api_url,
        data_dir=tmp_path / "state",
        client_options=dict(FAST, retries=2),
        keep_options=dict(FAST, num_retries=2),
    )
    with running_server(tmp_path / "state", backend_impl=backend, anonymous="none",
                        backend="arvados", arvados_api_host=fake.api_url) as srv:
        yield srv


def _auth(tok: str) -> dict:
    return {"Authorization": f"Bearer {tok}"}


def _stored(fake, name: str) -> tuple[str, str]:
    """(uuid, stored manifest) of the untrashed collection with this name."""
    for c in list(fake.collections.values()):
        if c.name == name and not c.is_trashed:
            return c.uuid, fake.stored_manifest(c.uuid)
    raise AssertionError(f"no collection {name!r}")


def _collection_updates(fake) -> list:
    return [r for r in fake.requests_for("api") if r.method in ("PATCH", "PUT") and "/collections/" in r.path]


def test_cycle_is_one_update_per_request(fake, arv_server):
    srv = arv_server
    h = _auth(fake.add_user("carol"))
    assert requests.request("MKCOL", srv.u("data/"), headers=h).status_code == 201
    assert requests.request("MKCOL", srv.u("data/sub/"), headers=h).status_code == 201
    fake.clear_requests()
    assert requests.put(srv.u("data/sub/x.bin"), data=b"x" * 1000, headers=h).status_code == 201
    assert len(_collection_updates(fake)) == 1
    _, text = _stored(fake, "data")
    assert "0:1000:x.bin" in text
    fake.clear_requests()
    r = requests.request("MOVE", srv.u("data/sub/x.bin"), headers={**h, "Destination": srv.u("data/y.bin")})
    assert r.status_code == 201
    assert len(_collection_updates(fake)) == 1
    assert not fake.requests_for("keep_put")  # MOVE moves references only
    assert requests.get(srv.u("data/y.bin"), headers=h).content == b"x" * 1000
    assert requests.get(srv.u("data/sub/x.bin"), headers=h).status_code == 404
    _, text = _stored(fake, "data")
    assert "y.bin" in text and "x.bin" not in text
    # A request that changes nothing commits nothing.
    fake.clear_requests()
    assert requests.request("PROPFIND", srv.u("data/"), headers={**h, "Depth": "1"}).status_code == 207
    assert requests.get(srv.u("data/y.bin"), headers=h).status_code == 200
    assert not _collection_updates(fake)


def test_cross_collection_copy_and_isolation(fake, arv_server):
    srv = arv_server
    ha, hb = _auth(fake.add_user("dave")), _auth(fake.add_user("erin"))
    for name in ("one", "two"):
        assert requests.request("MKCOL", srv.u(f"{name}/"), headers=ha).status_code == 201
    payload = bytes(range(256)) * 4096
    assert requests.put(srv.u("one/f.bin"), data=payload, headers=ha).status_code == 201
    fake.clear_requests()
    r = requests.request("COPY", srv.u("one/f.bin"), headers={**ha, "Destination": srv.u("two/g.bin")})
    assert r.status_code == 201, r.text
    assert not fake.requests_for("keep_put")  # no block was re-uploaded
    assert requests.get(srv.u("two/g.bin"), headers=ha).content == payload
    # Another user sees neither collection, by name or by id.
    assert requests.get(srv.u("one/f.bin"), headers=hb).status_code == 404
    r = requests.request("PROPFIND", srv.u(""), headers={**hb, "Depth": "1"})
    assert r.status_code == 207 and "/one/" not in r.text
    uuid, _ = _stored(fake, "one")
    assert requests.get(srv.u(f"by_id/{uuid}/f.bin"), headers=hb).status_code == 404
    assert requests.get(srv.u(f"by_id/{uuid}/f.bin"), headers=ha).content == payload


def test_bad_token_is_401(fake, arv_server):
    r = requests.get(arv_server.u(""), headers=_auth("v2/zzzzz-gj3su-000000000000000/nope"))
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("litmus") is None, reason="litmus not installed (CI installs it)")
def test_litmus_on_arvados_backend(fake, arv_server, tmp_path):
    tok = fake.add_user("litmus")
    h = _auth(tok)
    assert requests.request("MKCOL", arv_server.u("lit/"), headers=h).status_code == 201
    out = subprocess.run(["litmus", arv_server.u("lit/"), "x", tok], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    text = out.stdout + out.stderr
    summaries = [l for l in text.splitlines() if "summary for" in l]
    assert len(summaries) == 5, text[-3000:]
    assert all("0 failed" in l for l in summaries), text[-3000:]
    assert "WARNING" not in text, text[-3000:]

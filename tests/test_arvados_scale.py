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
from tree_helpers import open_read
from davclient import DavClient
from fake_cluster import arvados_backend, arvados_server, fake_fixture

FAST_API = {"backoff_start": 0.01, "retries": 1, "timeout": (2.0, 10.0)}
FAST_KEEP = {"backoff_start": 0.01, "num_retries": 1, "connect_timeout": 1.0, "read_timeout": 10.0}


fake = fake_fixture(keepstores=2, seed=12)


@pytest.fixture(autouse=True)
def clean(fake):
    fake.faults.reset()
    fake.time_offset = 0.0
    yield
    fake.faults.reset()


def make_backend(fake, tmp_path, **kw) -> ArvadosBackend:
    return arvados_backend(fake, tmp_path / "state", client_options=FAST_API, keep_options=FAST_KEEP, **kw)


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


# --------------------------------------------------------------------------- item 4

METHODS = ["GET", "HEAD", "PROPFIND", "PUT", "MKCOL", "DELETE", "COPY", "MOVE", "PROPPATCH", "LOCK"]
PROPPATCH_BODY = (b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop>'
                  b'<Z:color>red</Z:color></D:prop></D:set></D:propertyupdate>')
LOCK_BODY = (b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
             b'<D:locktype><D:write/></D:locktype></D:lockinfo>')


def _call(c: DavClient, method: str, coll: str, n: int) -> requests.Response:
    if method in ("GET", "HEAD"):
        return c.req(method, f"{coll}/f.txt")
    if method == "PROPFIND":
        return c.propfind(f"{coll}/", "1")
    if method == "PUT":
        return c.put(f"{coll}/new{n}.txt", b"new data %d" % n)
    if method == "MKCOL":
        return c.mkcol(f"{coll}/dir{n}/")
    if method == "DELETE":
        return c.delete(f"{coll}/del.txt")
    if method in ("COPY", "MOVE"):
        return c.req(method, f"{coll}/" + ("f.txt" if method == "COPY" else "mv.txt"),
                     headers={"Destination": f"{coll}/{method.lower()}{n}.txt"})
    if method == "PROPPATCH":
        return c.proppatch(f"{coll}/f.txt", PROPPATCH_BODY)
    assert method == "LOCK"
    return c.req(method, f"{coll}/lock{n}.txt", data=LOCK_BODY, headers={"Timeout": "Second-60", "Depth": "0"})


@pytest.mark.parametrize("outage", ["api", "keep", "both"])
@pytest.mark.parametrize("cache", ["warm", "cold"])
def test_outages_answer_5xx_with_a_reason_never_500(fake, tmp_path, outage, cache):
    token = fake.add_user(f"out-{outage}-{cache}")
    coll = f"o-{outage}-{cache}"
    # revalidate_seconds=0: a warm tree is still checked on every request.
    kw = dict(anonymous="none", revalidate_seconds=0)
    with arvados_server(fake, tmp_path / "state", backend=make_backend(fake, tmp_path), **kw) as srv:
        c = DavClient(srv.url, token=token)
        assert c.mkcol(f"{coll}/").status_code == 201
        for name in ("f.txt", "del.txt", "mv.txt"):
            assert c.put(f"{coll}/{name}", b"content").status_code == 201
        if cache == "warm":
            assert c.get(f"{coll}/f.txt").content == b"content"
    with arvados_server(fake, tmp_path / "state", backend=make_backend(fake, tmp_path), **kw) as srv:
        c = DavClient(srv.url, token=token)
        if cache == "warm":  # login cache, tree and block cache all filled
            assert c.get(f"{coll}/f.txt").content == b"content"
            # ... but the 1 s listing memo has run out, as it has a second
            # later (the case: name lookup with the API down -> 500).
            srv.app.sessions.config.list_cache_seconds = 0.0
        services = ["api", "keep"] if outage == "both" else [outage]
        for s in services:
            fake.take_down(s)
        try:
            got = {}
            for n, method in enumerate(METHODS):
                # One kept-alive connection for all of them: a HEAD answered
                # 5xx used to carry an HTML body that desynchronised it.
                r = _call(c, method, coll, n)
                got[method] = r.status_code
                assert r.status_code != 500, (method, r.text[:300])
                if r.status_code >= 500:
                    assert r.status_code in (502, 503, 504), (method, r.status_code)
                    if method != "HEAD":
                        assert "unavailable" in r.text or "failed" in r.text, (method, r.text[:300])
        finally:
            for s in services:
                fake.bring_up(s)
        if outage in ("api", "both"):
            # Every method needs the API server (token check or revalidation).
            assert all(s in (502, 503, 504) for s in got.values()), got
        else:
            # Keep down: what needs block data fails, the rest still works.
            assert got["PUT"] in (502, 503, 504), got
            if cache == "cold":
                assert got["GET"] in (502, 503, 504), got
            assert got["PROPFIND"] == 207 and got["MKCOL"] == 201 and got["DELETE"] == 204, got
        # Once the services are back, everything works again.
        assert c.get(f"{coll}/f.txt").content == b"content"


def test_fake_apply_then_drop_and_take_down(fake):
    """The fake's outage knobs: an update that takes effect but never
    answers, and a service whose port refuses connections until brought up."""
    from davcoll.storage.catalog import Unavailable

    token = fake.add_user("knobs")
    cat = ArvadosCatalog(ArvadosClient(fake.api_url, token, **FAST_API))
    rec = cat.create("knobs")
    fake.faults.apply_then_drop_next("api", match="PATCH /arvados/v1/collections/")
    with pytest.raises(Unavailable, match="outcome is unknown"):
        cat.update(rec.uuid, properties={"applied": "yes"})
    assert fake.collections[rec.uuid].properties == {"applied": "yes"}  # it did take effect
    fake.take_down("api")
    try:
        with pytest.raises(requests.ConnectionError):
            requests.get(fake.api_url + "/arvados/v1/config", timeout=5)
    finally:
        fake.bring_up("api")
    assert cat.get(rec.uuid).properties == {"applied": "yes"}
    cat.close()


# --------------------------------------------------------------------------- item 5


@pytest.fixture(scope="module")
def tls_fake(tmp_path_factory):
    from davcoll.testing.fake_arvados import self_signed_cert
    from fake_cluster import fake_cluster

    cert, key = self_signed_cert(tmp_path_factory.mktemp("tls"))
    with fake_cluster(keepstores=2, seed=5, tls=(cert, key)) as f:
        f.cert_file = cert
        yield f


def _round_trip(backend: ArvadosBackend, token: str) -> None:
    """Token check, Keep put/get and a collection create through the backend."""
    principal = backend.authenticate(token)
    assert principal is not None
    store = backend.block_store(principal)
    loc = store.put(b"over tls")
    assert store.get(loc) == b"over tls"
    backend.catalog(principal).create(f"tls-{time.monotonic_ns()}", f". {loc} 0:8:f\n")


@pytest.mark.parametrize("var", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_insecure_is_honoured_with_ca_bundle_variables(tls_fake, tmp_path, monkeypatch, caplog, var):
    import warnings

    import certifi

    # A CA bundle that does not know the fake's self-signed certificate.
    monkeypatch.setenv(var, certifi.where())
    token = tls_fake.add_user(f"tls-{var}")
    with caplog.at_level("WARNING", logger="davcoll"):
        backend = make_backend(tls_fake, tmp_path, insecure=True)
    try:
        assert [r for r in caplog.records if "verification is off" in r.getMessage()]
        with warnings.catch_warnings(record=True) as seen:
            _round_trip(backend, token)
        assert not [w for w in seen if "Unverified HTTPS" in str(w.message)]
    finally:
        backend.close()


def test_verification_uses_the_environment_bundle_when_on(tls_fake, tmp_path, monkeypatch):
    from davcoll.storage.catalog import Unavailable

    token = tls_fake.add_user("tls-verify")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls_fake.cert_file)  # trusts the fake
    backend = make_backend(tls_fake, tmp_path)
    try:
        _round_trip(backend, token)
    finally:
        backend.close()
    import certifi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())  # does not
    backend = arvados_backend(tls_fake, tmp_path / "s2", client_options=dict(FAST_API, retries=0),
                              keep_options=FAST_KEEP)
    try:
        with pytest.raises(Unavailable):
            backend.authenticate(token)
    finally:
        backend.close()


# --------------------------------------------------------------------------- items 2 and 3

TTL = 3  # seconds: the short blobSignatureTtl of the fake below


short_fake = fake_fixture(keepstores=2, seed=13, ttl=TTL, name="short_fake")


@pytest.fixture
def short_manager(short_fake, tmp_path):
    # A long revalidation interval: only the signature age makes trees reload.
    short_fake.time_offset = 0.0
    m = SessionManager(make_backend(short_fake, tmp_path), config=SessionConfig(revalidate_seconds=1000.0))
    yield m
    m.close()
    short_fake.time_offset = 0.0


def _put_file(session, uuid: str, path: str, data: bytes) -> None:
    from davcoll.collection import ChangeSet, FileWriter

    tree = session.open_tree(uuid)
    w = FileWriter(tree.store, tree.flusher, tree.budget)
    w.write(data)
    change = ChangeSet()
    tree.put_file(change, path, w.close())
    session.commit(change)


def test_ttl_comes_from_the_discovery_document(short_fake, short_manager):
    assert short_manager.backend.signature_ttl() == TTL


def test_trees_reload_before_half_the_ttl(short_fake, short_manager):
    token = short_fake.add_user("halfttl")
    s = short_manager.session(short_manager.authenticate(token))
    rec = s.catalog.create("h")
    _put_file(s, rec.uuid, "f", b"data")
    pdh = s.catalog.get(rec.uuid, with_manifest=False).portable_data_hash
    for ident in (rec.uuid, pdh):  # PDH trees too
        tree = s.open_tree(ident)
        assert s.open_tree(ident) is tree
        tree.loaded_at -= TTL / 2 + 0.1  # as if half the TTL had passed
        fresh = s.open_tree(ident)
        assert fresh is not tree and open_read(fresh, "f").read() == b"data"


def test_read_refused_for_an_expired_signature_refreshes_once(short_fake, short_manager):
    token = short_fake.add_user("expired")
    s = short_manager.session(short_manager.authenticate(token))
    rec = s.catalog.create("e")
    _put_file(s, rec.uuid, "f", b"payload")
    s.drop_tree(rec.uuid)
    tree = s.open_tree(rec.uuid)
    pdh_tree = s.open_tree(s.catalog.get(rec.uuid, with_manifest=False).portable_data_hash)
    short_manager.backend.cache.clear()  # the upload left the block in the cache
    short_fake.time_offset = TTL + 2  # every signature these trees hold has expired
    before = n_api(short_fake)
    assert open_read(tree, "f").read() == b"payload"
    refresh = [c for c in api_calls(short_fake, before) if "manifest_text" in c.query]
    assert len(refresh) == 1  # one manifest re-fetch for fresh signatures
    assert s.open_tree(rec.uuid) is not tree  # and the tree is reloaded at its next use
    assert open_read(pdh_tree, "f").read() == b"payload"


def test_upload_longer_than_the_ttl_commits(short_fake, short_manager):
    from davcoll.collection import ChangeSet, FileWriter

    token = short_fake.add_user("slow-upload")
    s = short_manager.session(short_manager.authenticate(token))
    rec = s.catalog.create("u")
    tree = s.open_tree(rec.uuid)
    # 1 KiB blocks, each stored while the upload goes on, for longer than the TTL.
    w = FileWriter(tree.store, tree.flusher, tree.budget, block_size=1024, small_limit=16)
    parts = [bytes([65 + i]) * 1024 for i in range(7)]
    start = time.monotonic()
    for p in parts:
        w.write(p)
        time.sleep(TTL / 5)
    segs = w.close()
    assert time.monotonic() - start > TTL
    change = ChangeSet()
    tree.put_file(change, "big.bin", segs)
    s.commit(change)  # the first blocks' original signatures have expired by now
    s.drop_tree(rec.uuid)
    assert open_read(s.open_tree(rec.uuid), "big.bin").read() == b"".join(parts)


def test_http_reads_after_the_ttl(short_fake, tmp_path):
    short_fake.time_offset = 0.0
    token = short_fake.add_user("http-ttl")
    with arvados_server(short_fake, tmp_path / "state", backend=make_backend(short_fake, tmp_path),
                        anonymous="none") as srv:
        c = DavClient(srv.url, token=token)
        assert c.mkcol("t/").status_code == 201
        assert c.put("t/a.txt", b"first").status_code == 201
        assert c.put("t/b.txt", b"second").status_code == 201
        assert c.get("t/a.txt").content == b"first"
        srv.app.backend.cache.clear()  # the uploads left their blocks in the cache
        short_fake.time_offset = TTL + 2  # signatures in the cached tree have expired
        r = c.get("t/b.txt")
        assert r.status_code == 200 and r.content == b"second"


def test_pdh_access_is_rechecked(fake, tmp_path):
    token = fake.add_user("loses-access")
    other = fake.user_for(fake.add_user("gets-it"))
    with arvados_server(fake, tmp_path / "state", backend=make_backend(fake, tmp_path), anonymous="none",
                        revalidate_seconds=1000) as srv:
        c = DavClient(srv.url, token=token)
        assert c.mkcol("p/").status_code == 201
        assert c.put("p/f", b"secret").status_code == 201
        uuid = next(c.uuid for c in fake.collections.values() if c.name == "p" and c.owner_uuid != other.uuid
                    and fake.user_for(token).uuid == c.owner_uuid)
        pdh = fake.collections[uuid].pdh
        assert c.get(f"by_id/{pdh}/f").content == b"secret"
        fake.transfer(uuid, other.uuid)
        # Within revalidate_seconds the cached snapshot is served ...
        assert c.get(f"by_id/{pdh}/f").status_code == 200
        # ... but Cache-Control: no-cache re-checks at once, with one small call.
        before = n_api(fake)
        r = c.get(f"by_id/{pdh}/f", no_cache=True)
        assert r.status_code == 404
        assert not [call for call in api_calls(fake, before) if "manifest_text" in call.query]
        assert c.get(f"by_id/{pdh}/f").status_code == 404


def test_pdh_access_recheck_at_the_revalidation_interval(fake, manager):
    from davcoll.storage.catalog import NotFound

    token = fake.add_user("interval")
    other = fake.user_for(fake.add_user("interval-2"))
    s = manager.session(manager.authenticate(token))  # revalidate_seconds=0
    rec = s.catalog.create("i")
    _put_file(s, rec.uuid, "f", b"x")
    pdh = s.catalog.get(rec.uuid, with_manifest=False).portable_data_hash
    tree = s.open_tree(pdh)
    before = n_api(fake)
    assert s.open_tree(pdh) is tree
    calls = api_calls(fake, before)
    assert len(calls) == 1 and "manifest_text" not in calls[0].query  # one small check
    fake.transfer(rec.uuid, other.uuid)
    with pytest.raises(NotFound):
        s.open_tree(pdh)

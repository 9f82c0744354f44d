"""The fake cluster itself, checked against the spec with plain HTTP requests."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
import urllib.parse

import pytest
import requests

from davcoll.manifest import parse_manifest, portable_data_hash
from davcoll.storage import signatures as sg
from davcoll.testing.fake_arvados import FakeArvados, render_go_layout

FOO = "acbd18db4cc2f85cedef654fccc4a4d8+3"  # "foo"
BAR = "37b51d194a7513e45b56f6524f2d51f2+3"  # "bar"
EMPTY = "d41d8cd98f00b204e9800998ecf8427e+0"


@pytest.fixture(scope="module")
def fake():
    with FakeArvados(keepstores=2, seed=11) as f:
        f.token = f.add_user("alice")
        f.other = f.add_user("bob")
        f.store_block(b"foo")
        f.store_block(b"bar")
        yield f


@pytest.fixture(autouse=True)
def clean(fake):
    fake.faults.reset()
    fake.legacy_keepstore_status = False
    fake.time_offset = 0.0
    yield
    fake.faults.reset()


class Api:
    """Tiny raw client: the point is to see exactly what the fake answers."""

    def __init__(self, fake, token):
        self.fake = fake
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {token}"
        self.token = token

    def __call__(self, method, path, **kw):
        return self.s.request(method, self.fake.api_url + path, timeout=10, **kw)

    def create(self, **attrs):
        r = self("POST", "/arvados/v1/collections", json={"collection": attrs})
        assert r.status_code == 200, r.text
        return r.json()

    def sign(self, text):
        return sg.sign_manifest(text, self.fake.blob_signing_key, self.token, ttl=self.fake.blob_signing_ttl)


@pytest.fixture
def alice(fake):
    return Api(fake, fake.token)


@pytest.fixture
def bob(fake):
    return Api(fake, fake.other)


def assert_error_shape(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["errors"], list) and body["errors"] and all(isinstance(e, str) for e in body["errors"])
    assert isinstance(body["error_token"], str) and body["error_token"]


# ---------------------------------------------------------------------------
# Go layout renderer (spec 2.9)


def test_go_layout_collapses_only_adjacent_repeats():
    tree = parse_manifest(f". {FOO} {BAR} 0:3:a 3:3:b 0:3:c\n").root
    assert render_go_layout(tree) == f". {FOO} {BAR} {FOO} 0:3:a 3:3:b 6:3:c\n"
    tree = parse_manifest(f". {FOO} 0:3:a 0:3:b 0:0:e\n./d {EMPTY} 0:0:\\056\n./d\\040x {BAR} 0:3:f\\072g\n").root
    assert render_go_layout(tree) == (
        f". {FOO} 0:3:a 0:3:b 0:0:e\n./d {EMPTY} 0:0:\\056\n./d\\040x {BAR} 0:3:f\\072g\n"
    )
    # A file spanning two blocks, then one starting in the second block.
    tree = parse_manifest(f". {FOO} {BAR} 1:4:a 3:3:b\n").root
    assert render_go_layout(tree) == f". {FOO} {BAR} 1:4:a 3:3:b\n"
    # Only empty files: the empty block stands in; depth-first stream order.
    tree = parse_manifest(f"./a {EMPTY} 0:0:x\n./a/c {FOO} 0:3:y\n./a-b {BAR} 0:3:z\n").root
    assert render_go_layout(tree) == f"./a {EMPTY} 0:0:x\n./a/c {FOO} 0:3:y\n./a-b {BAR} 0:3:z\n"
    assert render_go_layout(parse_manifest("").root) == ""


# ---------------------------------------------------------------------------
# Public and user endpoints


def test_config_and_discovery_need_no_token(fake):
    cfg = requests.get(fake.api_url + "/arvados/v1/config").json()
    assert cfg["ClusterID"] == "zzzzz" and "CollectionVersioning" in cfg["Collections"]
    doc = requests.get(fake.api_url + "/discovery/v1/apis/arvados/v1/rest").json()
    assert doc["packageVersion"] == fake.package_version
    assert doc["blobSignatureTtl"] == 1209600 and doc["defaultCollectionReplication"] == 2


def test_users_current_and_auth_errors(fake, alice):
    r = alice("GET", "/arvados/v1/users/current")
    assert r.status_code == 200 and r.json()["kind"] == "arvados#user"
    assert r.json()["uuid"] == fake.user_for(fake.token).uuid
    # The bare secret of a v2 token names the same user.
    bare = fake.token.rsplit("/", 1)[-1]
    r2 = requests.get(fake.api_url + "/arvados/v1/users/current", headers={"Authorization": f"OAuth2 {bare}"})
    assert r2.json()["uuid"] == r.json()["uuid"]
    r3 = requests.get(fake.api_url + "/arvados/v1/users/current", params={"api_token": fake.token})
    assert r3.status_code == 200
    assert_error_shape(requests.get(fake.api_url + "/arvados/v1/users/current"), 401)
    assert_error_shape(requests.get(fake.api_url + "/arvados/v1/users/current", headers={"Authorization": "Bearer nope"}), 401)
    assert_error_shape(alice("GET", "/arvados/v1/nonexistent"), 404)


def test_revoked_token(fake):
    tok = fake.add_user("carol")
    api = Api(fake, tok)
    assert api("GET", "/arvados/v1/users/current").status_code == 200
    fake.revoke(tok)
    assert_error_shape(api("GET", "/arvados/v1/users/current"), 401)


def test_keep_services_accessible(fake, alice):
    r = alice("GET", "/arvados/v1/keep_services/accessible")
    body = r.json()
    assert body["kind"] == "arvados#keepServiceList" and len(body["items"]) == 2
    ports = {it["service_port"] for it in body["items"]}
    assert len(ports) == 2 and fake.api_port not in ports
    for it in body["items"]:
        assert it["uuid"].startswith("zzzzz-bi6l4-") and len(it["uuid"]) == 27
        assert it["service_type"] == "disk" and it["service_ssl_flag"] is False and it["read_only"] is False
    assert_error_shape(requests.get(fake.api_url + "/arvados/v1/keep_services/accessible"), 401)


# ---------------------------------------------------------------------------
# Keepstore


def keep(fake, i=0):
    return fake.keepstores[i].url


def test_keep_put_returns_signed_locator(fake):
    data = b"keep put body"
    md5 = hashlib.md5(data).hexdigest()
    r = requests.put(keep(fake) + md5, data=data, headers={"Authorization": f"Bearer {fake.token}"})
    assert r.status_code == 200 and r.text.endswith("\n")
    loc = r.text.strip()
    assert loc.startswith(f"{md5}+{len(data)}+A")
    sg.verify_locator(loc, fake.blob_signing_key, fake.token)
    expiry = sg.signature_expiry(loc)
    assert abs(expiry - (time.time() + 14 * 86400)) < 60
    assert r.headers["X-Keep-Replicas-Stored"] == "1"
    assert fake.block_locations(loc) == [0]


def test_keep_put_errors(fake):
    auth = {"Authorization": f"Bearer {fake.token}"}
    assert requests.put(keep(fake) + hashlib.md5(b"x").hexdigest(), data=b"y", headers=auth).status_code == 400
    assert requests.put(keep(fake) + hashlib.md5(b"x").hexdigest() + "+5", data=b"x", headers=auth).status_code == 400
    assert requests.put(keep(fake) + hashlib.md5(b"x").hexdigest(), data=b"x").status_code == 401
    # Chunked upload: no Content-Length.
    r = requests.put(keep(fake) + hashlib.md5(b"x").hexdigest(), data=iter([b"x"]), headers=auth)
    assert r.status_code == 411
    # Too large: refused from the header alone.
    host, port = fake.keepstores[0].url[7:-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("PUT", "/" + "0" * 32)
    conn.putheader("Authorization", f"Bearer {fake.token}")
    conn.putheader("Content-Length", str((1 << 26) + 1))
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()


def test_keep_get_signature_rules(fake):
    bare = fake.store_block(b"signed read")
    good = fake.sign(bare, fake.token)
    auth = {"Authorization": f"Bearer {fake.token}"}
    r = requests.get(keep(fake) + good, headers=auth)
    assert r.status_code == 200 and r.content == b"signed read"
    assert r.headers["Content-Length"] == str(len(b"signed read"))
    assert requests.head(keep(fake) + good, headers=auth).status_code == 200
    assert requests.get(keep(fake) + good).status_code == 401  # no token
    assert requests.get(keep(fake) + bare, headers=auth).status_code == 400  # unsigned
    assert requests.get(keep(fake) + fake.sign(bare, fake.other), headers=auth).status_code == 400  # other token
    expired = fake.sign(bare, fake.token, expiry=int(time.time()) - 1)
    assert requests.get(keep(fake) + expired, headers=auth).status_code == 401
    assert requests.get(keep(fake) + bare[:32], headers=auth).status_code == 405  # no size hint
    assert requests.get(keep(fake) + good.upper(), headers=auth).status_code == 400
    missing = fake.sign(hashlib.md5(b"absent").hexdigest() + "+6", fake.token)
    assert requests.get(keep(fake) + missing, headers=auth).status_code == 404
    # The empty block needs neither a signature nor storage.
    r = requests.get(keep(fake) + EMPTY, headers=auth)
    assert r.status_code == 200 and r.content == b""
    # Older keepstores: 403 for a bad signature.
    fake.legacy_keepstore_status = True
    assert requests.get(keep(fake) + bare, headers=auth).status_code == 403


def test_keep_blocks_live_per_service(fake):
    bare = fake.store_block(b"only on 1", services=[1])
    loc = fake.sign(bare, fake.token)
    auth = {"Authorization": f"Bearer {fake.token}"}
    assert requests.get(keep(fake, 0) + loc, headers=auth).status_code == 404
    assert requests.get(keep(fake, 1) + loc, headers=auth).status_code == 200


# ---------------------------------------------------------------------------
# Collections


def test_create_requires_signatures_and_stores_stripped(fake, alice):
    text = f". {FOO} 0:3:foo.txt\n"
    r = alice("POST", "/arvados/v1/collections", json={"collection": {"name": "unsigned", "manifest_text": text}})
    assert_error_shape(r, 403)
    foreign = sg.sign_manifest(text, fake.blob_signing_key, fake.other)
    assert_error_shape(alice("POST", "/arvados/v1/collections", json={"collection": {"name": "x", "manifest_text": foreign}}), 403)
    expired = sg.sign_manifest(text, fake.blob_signing_key, fake.token, expiry=int(time.time()) - 5)
    assert_error_shape(alice("POST", "/arvados/v1/collections", json={"collection": {"name": "x", "manifest_text": expired}}), 403)
    # The empty block needs no signature.
    c0 = alice.create(name="empty file", manifest_text=f". {EMPTY} 0:0:e\n")
    assert c0["file_count"] == 1
    c = alice.create(name="signed", manifest_text=alice.sign(text) , properties={"k": "v"})
    assert c["kind"] == "arvados#collection" and c["uuid"].startswith("zzzzz-4zz18-")
    assert c["portable_data_hash"] == portable_data_hash(text)
    assert fake.stored_manifest(c["uuid"]) == text
    # The response is signed for the caller, valid for the TTL.
    locs = list(sg.manifest_locators(c["manifest_text"]))
    sg.verify_locator(locs[0], fake.blob_signing_key, fake.token)
    for f in ("owner_uuid", "created_at", "modified_at", "version", "is_trashed", "properties", "current_version_uuid"):
        assert f in c
    assert c["properties"] == {"k": "v"} and c["version"] == 1 and c["owner_uuid"] == fake.user_for(fake.token).uuid


def test_invalid_manifest_is_422(fake, alice):
    for bad in ("not a manifest\n", f". {FOO} 0:3:foo", f". {FOO} 0:3:a//b\n"):
        r = alice("POST", "/arvados/v1/collections", json={"collection": {"name": "bad", "manifest_text": bad}})
        assert_error_shape(r, 422)


def test_get_permissions_select_and_pdh(fake, alice, bob):
    c = alice.create(name="private", manifest_text=alice.sign(f". {FOO} 0:3:f\n"))
    assert_error_shape(bob("GET", f"/arvados/v1/collections/{c['uuid']}"), 404)
    assert_error_shape(bob("PATCH", f"/arvados/v1/collections/{c['uuid']}", json={"collection": {"name": "x"}}), 404)
    assert_error_shape(alice("GET", "/arvados/v1/collections/zzzzz-4zz18-000000000000000"), 404)
    r = alice("GET", f"/arvados/v1/collections/{c['uuid']}", params={"select": json.dumps(["uuid", "portable_data_hash"])})
    assert set(r.json()) <= {"kind", "uuid", "portable_data_hash"} and r.json()["uuid"] == c["uuid"]
    r = alice("GET", f"/arvados/v1/collections/{c['uuid']}", params={"select": json.dumps(["unsigned_manifest_text"])})
    assert r.json()["unsigned_manifest_text"] == f". {FOO} 0:3:f\n"
    assert_error_shape(alice("GET", f"/arvados/v1/collections/{c['uuid']}", params={"select": '["bogus"]'}), 400)
    # By PDH: only pdh, manifest (signed) and trash_at; others' PDHs are not readable.
    r = alice("GET", f"/arvados/v1/collections/{c['portable_data_hash']}")
    assert set(r.json()) == {"kind", "portable_data_hash", "manifest_text", "trash_at"}
    sg.verify_locator(next(sg.manifest_locators(r.json()["manifest_text"])), fake.blob_signing_key, fake.token)
    assert_error_shape(bob("GET", f"/arvados/v1/collections/{c['portable_data_hash']}"), 404)


def test_list_filters_select_paging(fake):
    tok = fake.add_user("lister")
    api = Api(fake, tok)
    me = api("GET", "/arvados/v1/users/current").json()["uuid"]
    made = [api.create(name=f"c{i}", manifest_text=api.sign(f". {FOO} 0:3:f{i}\n"), properties={"i": i}) for i in range(5)]
    r = api("GET", "/arvados/v1/collections", params={"filters": json.dumps([["owner_uuid", "=", me]])})
    body = r.json()
    assert body["kind"] == "arvados#collectionList" and body["items_available"] == 5 and len(body["items"]) == 5
    assert all("manifest_text" not in it for it in body["items"])
    assert body["limit"] == 100 and body["offset"] == 0
    r = api("GET", "/arvados/v1/collections", params={"select": '["uuid","manifest_text"]', "order": '["name asc"]', "limit": 2, "offset": 1})
    items = r.json()["items"]
    assert [it["uuid"] for it in items] == [made[1]["uuid"], made[2]["uuid"]]
    assert sg.earliest_expiry(items[0]["manifest_text"]) is not None
    r = api("GET", "/arvados/v1/collections", params={"filters": '[["name","in",["c1","c3"]],["properties.i",">",1]]', "count": "none"})
    assert [it["name"] for it in r.json()["items"]] == ["c3"] and "items_available" not in r.json()
    r = api("GET", "/arvados/v1/collections", params={"filters": '[["name","like","c%"],["uuid",">","' + sorted(c["uuid"] for c in made)[2] + '"]]', "order": "uuid asc"})
    assert [it["uuid"] for it in r.json()["items"]] == sorted(c["uuid"] for c in made)[3:]
    # The POST _method=GET form of a long query.
    r = api("POST", "/arvados/v1/collections", data={"_method": "GET", "filters": '[["name","=","c4"]]'})
    assert [it["name"] for it in r.json()["items"]] == ["c4"]
    assert_error_shape(api("GET", "/arvados/v1/collections", params={"filters": '[["bogus","=",1]]'}), 422)


def test_name_conflicts(fake, alice):
    alice.create(name="dup")
    r = alice("POST", "/arvados/v1/collections", json={"collection": {"name": "dup"}})
    assert_error_shape(r, 422)
    assert "duplicate key" in r.json()["errors"][0]
    r = alice("POST", "/arvados/v1/collections", json={"collection": {"name": "dup"}, "ensure_unique_name": True})
    assert r.status_code == 200 and r.json()["name"].startswith("dup (")
    other = alice.create(name="dup2")
    assert_error_shape(alice("PUT", f"/arvados/v1/collections/{other['uuid']}", json={"collection": {"name": "dup"}}), 422)


def test_update_full_manifest_put_and_patch(fake, alice):
    c = alice.create(name="upd", manifest_text=alice.sign(f". {FOO} 0:3:f\n"))
    path = f"/arvados/v1/collections/{c['uuid']}"
    new = f". {BAR} 0:3:g\n"
    assert_error_shape(alice("PUT", path, json={"collection": {"manifest_text": new}}), 403)
    r = alice("PUT", path, json={"collection": {"manifest_text": alice.sign(new), "name": "upd2"}})
    assert r.status_code == 200 and r.json()["name"] == "upd2"
    assert fake.stored_manifest(c["uuid"]) == new and r.json()["modified_at"] > c["modified_at"]
    # Resubmitting the stored text unsigned is not a change: no signature check.
    r = alice("PATCH", path, json={"collection": {"manifest_text": new, "properties": {"a": 1}}})
    assert r.status_code == 200 and r.json()["properties"] == {"a": 1}
    # Attributes as a top-level JSON body (no "collection" key).
    r = alice("PATCH", path, json={"name": "upd3"})
    assert r.status_code == 200 and r.json()["name"] == "upd3"
    # Form-encoded parameters with JSON values.
    r = alice("PATCH", path, data={"collection": json.dumps({"description": "d"}), "select": '["uuid","description"]'})
    assert r.json() == {"kind": "arvados#collection", "uuid": c["uuid"], "description": "d"}
    assert_error_shape(alice("PATCH", path, json={"collection": {"portable_data_hash": "0" * 32 + "+1"}}), 422)


def rf(api, uuid, replace_files, manifest_text=None, method="PATCH"):
    body = {"replace_files": replace_files, "collection": {}}
    if manifest_text is not None:
        body["collection"]["manifest_text"] = api.sign(manifest_text)
    return api(method, f"/arvados/v1/collections/{uuid}", json=body)


def test_replace_files_semantics(fake, alice):
    c = alice.create(name="rf", manifest_text=alice.sign(f". {FOO} {BAR} 0:3:a 3:3:b\n./d {FOO} 0:3:x\n"))
    u = c["uuid"]
    # Swap with current/ sources: both see the pre-request content.
    r = rf(alice, u, {"/a": "current/b", "/b": "current/a"})
    assert r.status_code == 200, r.text
    assert fake.stored_manifest(u) == f". {BAR} {FOO} 0:3:a 3:3:b\n./d {FOO} 0:3:x\n"
    # New content from manifest_text (signed), parents created, Go layout.
    r = rf(alice, u, {"/new/deep/f": "manifest_text/f"}, f". {FOO} 0:3:f\n", method="PUT")
    assert r.status_code == 200, r.text
    assert "./new/deep " + FOO + " 0:3:f\n" in fake.stored_manifest(u)
    sg.verify_locator(next(sg.manifest_locators(r.json()["manifest_text"])), fake.blob_signing_key, fake.token)
    # Delete a directory recursively; deleting a missing path is fine.
    assert rf(alice, u, {"/new": "", "/missing": ""}).status_code == 200
    assert "./new" not in fake.stored_manifest(u)
    # Copy from a PDH.
    other = alice.create(name="src", manifest_text=alice.sign(f". {FOO} 0:3:s\n"))
    assert rf(alice, u, {"/copied": f"{other['portable_data_hash']}/s"}).status_code == 200
    # "copied" follows "b" and uses the same block: collapsed (adjacent).
    assert fake.stored_manifest(u).splitlines(True)[0] == f". {BAR} {FOO} 0:3:a 3:3:b 3:3:copied\n"
    # Empty directory via manifest_text.
    assert rf(alice, u, {"/emptydir": "manifest_text/e"}, f"./e {EMPTY} 0:0:\\056\n").status_code == 200
    assert f"./emptydir {EMPTY} 0:0:\\056\n" in fake.stored_manifest(u)
    assert fake.stored_manifest(u) == render_go_layout(parse_manifest(fake.stored_manifest(u)).root)
    assert c["portable_data_hash"] != portable_data_hash(fake.stored_manifest(u))


def test_replace_files_errors(fake, alice, bob):
    c = alice.create(name="rf-errors", manifest_text=alice.sign(f". {FOO} 0:3:a\n"))
    u = c["uuid"]
    before = fake.stored_manifest(u)
    for bad in ({"a": ""}, {"/a/": ""}, {"/a//b": ""}, {"/a/../b": ""}, {"/x": "current/nope"}, {"/x": "bogus/a"}, {"/a": "current/a", "/a/b": ""}):
        assert_error_shape(rf(alice, u, bad), 400)
    assert_error_shape(rf(alice, u, {"/x": ""}, f". {FOO} 0:3:f\n"), 400)  # unused manifest_text
    # manifest_text sources must be signed.
    r = alice("PATCH", f"/arvados/v1/collections/{u}", json={"replace_files": {"/x": "manifest_text/f"}, "collection": {"manifest_text": f". {FOO} 0:3:f\n"}})
    assert_error_shape(r, 403)
    # Another user's PDH is not readable.
    theirs = bob.create(name="theirs", manifest_text=bob.sign(f". {BAR} 0:3:t\n"))
    assert rf(alice, u, {"/t": f"{theirs['portable_data_hash']}/t"}).status_code == 404
    assert fake.stored_manifest(u) == before


def test_concurrent_replace_files_serialize(fake, alice):
    c = alice.create(name="concurrent")
    u = c["uuid"]
    errors = []

    def writer(tag):
        api = Api(fake, fake.token)
        for i in range(15):
            r = rf(api, u, {f"/{tag}/f{i}": "manifest_text/x"}, f". {FOO} 0:3:x\n")
            if r.status_code != 200:
                errors.append(r.text)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("p", "q", "r")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    files = {p for p, _ in parse_manifest(fake.stored_manifest(u)).files()}
    assert files == {f"{t}/f{i}" for t in "pqr" for i in range(15)}


def test_trash_untrash(fake, alice):
    c = alice.create(name="trashme", manifest_text=alice.sign(f". {FOO} 0:3:f\n"))
    path = f"/arvados/v1/collections/{c['uuid']}"
    r = alice("POST", path + "/trash")
    assert r.status_code == 200 and r.json()["is_trashed"] is True and r.json()["trash_at"]
    # Trashed manifests are not signed.
    assert "+A" not in r.json()["manifest_text"]
    assert_error_shape(alice("GET", path), 404)
    assert alice("GET", path, params={"include_trash": "true"}).status_code == 200
    names = [it["name"] for it in alice("GET", "/arvados/v1/collections", params={"limit": 1000}).json()["items"]]
    assert "trashme" not in names
    # The name is free again while trashed; untrash then needs a unique name.
    alice.create(name="trashme")
    assert_error_shape(alice("POST", path + "/untrash"), 422)
    r = alice("POST", path + "/untrash", params={"ensure_unique_name": "true"})
    assert r.status_code == 200 and r.json()["is_trashed"] is False and r.json()["name"].startswith("trashme (")
    assert alice("DELETE", path).json()["is_trashed"] is True


def test_versioning_counter(fake):
    with FakeArvados(keepstores=1, collection_versioning=True) as f:
        api = Api(f, f.add_user("v"))
        c = api.create(name="v1")
        r = api("PATCH", f"/arvados/v1/collections/{c['uuid']}", json={"collection": {"name": "v2"}})
        assert r.json()["version"] == 2


# ---------------------------------------------------------------------------
# Fault knobs


def test_fault_fail_next_and_match(fake, alice):
    fake.faults.fail_next("api", 2, status=502, match="users/current")
    assert_error_shape(alice("GET", "/arvados/v1/users/current"), 502)
    assert alice("GET", "/arvados/v1/keep_services/accessible").status_code == 200  # not matched
    assert alice("GET", "/arvados/v1/users/current").status_code == 502
    assert alice("GET", "/arvados/v1/users/current").status_code == 200
    assert fake.faults.pending() == 0


def test_fault_malformed_json_and_drop(fake, alice):
    fake.faults.malformed_json_next(1)
    r = alice("GET", "/arvados/v1/users/current")
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    fake.faults.drop_next("api", 1)
    with pytest.raises(requests.ConnectionError):
        alice("GET", "/arvados/v1/users/current")
    assert alice("GET", "/arvados/v1/users/current").status_code == 200


def test_fault_hang_causes_read_timeout(fake, alice):
    fake.faults.hang_next("api", 1, seconds=1.0)
    with pytest.raises(requests.ReadTimeout):
        alice.s.get(fake.api_url + "/arvados/v1/users/current", timeout=(5, 0.2))


def test_fault_latency(fake, alice):
    fake.faults.set_latency("api", 0.2)
    t0 = time.monotonic()
    alice("GET", "/arvados/v1/users/current")
    assert time.monotonic() - t0 >= 0.2


def test_fault_truncate_and_corrupt_keep_get(fake):
    data = b"0123456789" * 100
    loc = fake.sign(fake.store_block(data), fake.token)
    auth = {"Authorization": f"Bearer {fake.token}"}
    fake.faults.truncate_next(1, service=0)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(keep(fake, 0) + loc, headers=auth).content
    fake.faults.corrupt_next(1, service=1)
    r = requests.get(keep(fake, 1) + loc, headers=auth)
    assert len(r.content) == len(data) and r.content != data
    assert requests.get(keep(fake, 1) + loc, headers=auth).content == data


def test_fault_error_rate_is_seeded():
    def pattern(seed):
        with FakeArvados(keepstores=1, seed=seed) as f:
            tok = f.add_user("r")
            f.faults.set_error_rate("api", 0.5)
            s = requests.Session()
            return [s.get(f.api_url + "/arvados/v1/users/current", headers={"Authorization": f"Bearer {tok}"}).status_code for _ in range(20)]

    a, b = pattern(5), pattern(5)
    assert a == b and 503 in a and 200 in a


def test_bad_endpoint_name_rejected(fake):
    with pytest.raises(ValueError):
        fake.faults.fail_next("keep", 1)


def test_request_records(fake, alice):
    fake.clear_requests()
    alice("GET", "/arvados/v1/users/current", headers={"X-Request-Id": "req-abc"})
    rec = fake.requests_for("api")[-1]
    assert rec.method == "GET" and rec.status == 200 and rec.token == fake.token
    assert rec.headers["x-request-id"] == "req-abc" and "authorization" not in rec.headers


def test_query_string_json_parsing(fake, alice):
    c = alice.create(name="qs")
    q = urllib.parse.urlencode({"select": json.dumps(["name"])})
    r = alice("GET", f"/arvados/v1/collections/{c['uuid']}?{q}")
    assert r.json() == {"kind": "arvados#collection", "name": "qs"}


def test_old_version_refuses_new_replace_files_sources():
    with FakeArvados(keepstores=1, package_version="2.7.4") as f:
        f.store_block(b"foo")
        api = Api(f, f.add_user("old"))
        c = api.create(name="old", manifest_text=api.sign(f". {FOO} 0:3:a\n"))
        src = api.create(name="src", manifest_text=api.sign(f". {FOO} 0:3:s\n"))
        assert_error_shape(rf(api, c["uuid"], {"/b": "current/a"}), 400)
        assert_error_shape(rf(api, c["uuid"], {"/b": "manifest_text/b"}, f". {FOO} 0:3:b\n"), 400)
        assert rf(api, c["uuid"], {"/a": "", "/s": f"{src['portable_data_hash']}/s"}).status_code == 200
        assert f.stored_manifest(c["uuid"]) == f". {FOO} 0:3:s\n"

"""ArvadosCatalog / ArvadosClient against the fake cluster."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from conftest import free_port
from davcoll.manifest import parse_manifest, portable_data_hash
from davcoll.storage import arvados_api
from davcoll.storage import signatures as sg
from davcoll.storage.arvados_api import ArvadosCatalog, ArvadosClient, parse_version
from davcoll.storage.catalog import (
    BadRequest,
    CollectionRecord,
    Conflict,
    InvalidManifest,
    NotFound,
    PermissionDenied,
    Unauthorized,
    Unavailable,
)
from davcoll.storage.keep import KeepClient
from davcoll.testing.fake_arvados import FakeArvados

FOO = "acbd18db4cc2f85cedef654fccc4a4d8+3"
BAR = "37b51d194a7513e45b56f6524f2d51f2+3"


@pytest.fixture(scope="module")
def fake():
    with FakeArvados(keepstores=2, seed=21) as f:
        f.store_block(b"foo")
        f.store_block(b"bar")
        yield f


@pytest.fixture(autouse=True)
def clean(fake):
    fake.faults.reset()
    fake.time_offset = 0.0
    yield
    fake.faults.reset()


def make_catalog(fake, token, **kw):
    ckw = {k: kw.pop(k) for k in ("timeout", "retries", "backoff_start") if k in kw}
    ckw.setdefault("backoff_start", 0.001)
    ckw.setdefault("retries", 3)
    ckw.setdefault("timeout", (2.0, 5.0))
    return ArvadosCatalog(ArvadosClient(fake.api_url, token, **ckw), **kw)


@pytest.fixture
def user(fake):
    """A fresh user per test: its home project starts empty."""
    token = fake.add_user("u")
    cat = make_catalog(fake, token)
    cat.token = token
    yield cat
    cat.close()


def signed(fake, token, text):
    return sg.sign_manifest(text, fake.blob_signing_key, token)


def secret_free(exc, token):
    text = str(exc)
    assert token not in text and token.rsplit("/", 1)[-1] not in text


# ---------------------------------------------------------------------------
# Catalog methods


def test_current_user_and_home(fake, user):
    me = user.current_user()
    assert me["uuid"] == fake.user_for(user.token).uuid
    assert user.home_uuid() == me["uuid"]


def test_create_get_list_find(fake, user):
    text = f". {FOO} 0:3:foo.txt\n"
    rec = user.create("one", signed(fake, user.token, text), {"p": 1})
    assert isinstance(rec, CollectionRecord)
    assert rec.name == "one" and rec.properties == {"p": 1} and rec.portable_data_hash == portable_data_hash(text)
    assert rec.owner_uuid == user.home_uuid() and not rec.is_trashed and rec.modified_at
    got = user.get(rec.uuid)
    assert sg.strip_manifest_signatures(got.manifest_text) == text
    sg.verify_locator(next(sg.manifest_locators(got.manifest_text)), fake.blob_signing_key, user.token)
    assert user.get(rec.uuid, with_manifest=False).manifest_text is None
    by_pdh = user.get(rec.portable_data_hash)
    assert by_pdh.uuid == rec.portable_data_hash and by_pdh.portable_data_hash == rec.portable_data_hash
    assert sg.strip_manifest_signatures(by_pdh.manifest_text) == text
    user.create("two")
    assert sorted(r.name for r in user.list()) == ["one", "two"]
    assert all(r.manifest_text is None for r in user.list())
    assert user.find_by_name("two").name == "two"
    assert user.find_by_name("three") is None


def test_list_pages_and_is_limited_to_home(fake, user):
    user.page_size = 3
    for i in range(7):
        user.create(f"c{i}")
    other = make_catalog(fake, fake.add_user("other"))
    other.create("not mine")
    assert sorted(r.name for r in user.list()) == [f"c{i}" for i in range(7)]
    assert [r.name for r in other.list()] == ["not mine"]
    # Pages were keyset-paged on uuid.
    other.close()


def test_server_page_cap_is_respected(fake):
    with FakeArvados(keepstores=1, max_items_per_response=2) as f:
        cat = make_catalog(f, f.add_user("capped"))
        for i in range(5):
            cat.create(f"n{i}")
        assert len(cat.list()) == 5
        cat.close()


def test_long_query_goes_as_post(fake, user):
    name = "x" * 5000
    user.create(name)
    fake.clear_requests()
    assert user.find_by_name(name).name == name
    assert any(r.method == "POST" and r.path == "/arvados/v1/collections" for r in fake.requests_for("api"))


def test_update_replace_files_server_side(fake, user):
    rec = user.create("rf", signed(fake, user.token, f". {FOO} 0:3:a\n"))
    fake.clear_requests()
    res = user.update(rec.uuid, replace_files={"/dir/b": "manifest_text/b"}, manifest_text=signed(fake, user.token, f". {BAR} 0:3:b\n"))
    assert res.applied_on_base is False
    assert res.record.portable_data_hash == portable_data_hash(fake.stored_manifest(rec.uuid))
    assert fake.stored_manifest(rec.uuid) == f". {FOO} 0:3:a\n./dir {BAR} 0:3:b\n"
    sent = [r for r in fake.requests_for("api") if r.method == "PATCH"]
    assert len(sent) == 1
    user.update(rec.uuid, replace_files={"/c": "current/a", "/a": ""})
    assert sorted(p for p, _ in parse_manifest(fake.stored_manifest(rec.uuid)).files()) == ["c", "dir/b"]


def test_update_full_manifest_name_and_properties(fake, user):
    rec = user.create("full")
    res = user.update(rec.uuid, manifest_text=signed(fake, user.token, f". {FOO} 0:3:x\n"), properties={"a": "b"}, name="renamed")
    assert res.record.name == "renamed" and res.record.properties == {"a": "b"}
    assert fake.stored_manifest(rec.uuid) == f". {FOO} 0:3:x\n"
    assert user.rename(rec.uuid, "again").name == "again"
    # Nothing to change: no write, the current record comes back.
    assert user.update(rec.uuid).record.name == "again"


def test_trash(fake, user):
    rec = user.create("bin")
    user.trash(rec.uuid)
    assert user.find_by_name("bin") is None
    with pytest.raises(NotFound):
        user.get(rec.uuid)


def test_revision_changes_with_content(fake, user):
    rec = user.create("rev", signed(fake, user.token, f". {FOO} 0:3:a\n"))
    r1 = user.revision(rec.uuid)
    assert r1 == (rec.modified_at, 1)  # revision_key: the same key the session stores
    fake.clear_requests()
    user.update(rec.uuid, replace_files={"/b": "current/a"})
    r2 = user.revision(rec.uuid)
    assert r2[0] != r1[0]
    last = fake.requests_for("api")[-1]
    assert last.method == "GET" and "modified_at" in last.query and "manifest_text" not in last.query


def test_refresh_signatures(fake, user):
    text = f". {FOO} {BAR} 0:3:a 3:3:b\n"
    rec = user.create("sig", signed(fake, user.token, text))
    fake.time_offset = 3600
    fresh = user.refresh_signatures(rec.uuid)
    assert set(fresh) == {FOO, BAR}
    for bare, loc in fresh.items():
        assert loc.startswith(bare + "+A")
        sg.verify_locator(loc, fake.blob_signing_key, user.token, now=time.time() + 3600)
        assert sg.signature_expiry(loc) >= int(time.time()) + 3600 + fake.blob_signing_ttl - 5
    assert set(user.refresh_signatures(rec.portable_data_hash)) == {FOO, BAR}


def test_keep_and_catalog_together(fake, user):
    """Write blocks with KeepClient, save them, read back through a fresh fetch."""
    kc = KeepClient(fake.api_url, user.token, backoff_start=0.001)
    loc = kc.put(b"round trip data")
    rec = user.create("rt", f". {loc} 0:15:f.txt\n")
    text = user.get(rec.uuid).manifest_text
    got_loc = next(sg.manifest_locators(text))
    assert kc.get(got_loc) == b"round trip data"
    kc.close()


# ---------------------------------------------------------------------------
# Error mapping


def test_unauthorized(fake):
    cat = make_catalog(fake, "v2/zzzzz-gj3su-000000000000000/notavalidtokenatall")
    with pytest.raises(Unauthorized) as ei:
        cat.list()
    secret_free(ei.value, "v2/zzzzz-gj3su-000000000000000/notavalidtokenatall")
    cat.close()


def test_permission_denied_for_unsigned_manifest(fake, user):
    with pytest.raises(PermissionDenied) as ei:
        user.create("unsigned", f". {FOO} 0:3:f\n")
    secret_free(ei.value, user.token)
    rec = user.create("later")
    with pytest.raises(PermissionDenied):
        user.update(rec.uuid, replace_files={"/f": "manifest_text/f"}, manifest_text=f". {FOO} 0:3:f\n")


def test_not_found(fake, user):
    with pytest.raises(NotFound):
        user.get("zzzzz-4zz18-000000000000000")
    with pytest.raises(NotFound):
        user.get("0" * 32 + "+0")
    with pytest.raises(NotFound):
        user.get("not-an-id")
    theirs = make_catalog(fake, fake.add_user("them"))
    rec = theirs.create("theirs")
    with pytest.raises(NotFound):
        user.get(rec.uuid)
    with pytest.raises(NotFound):
        user.update(rec.uuid, name="mine")
    with pytest.raises(NotFound):
        user.trash(rec.uuid)
    theirs.close()


def test_conflict_on_name_clash(fake, user):
    user.create("same")
    with pytest.raises(Conflict):
        user.create("same")
    other = user.create("other")
    with pytest.raises(Conflict):
        user.rename(other.uuid, "same")


def test_invalid_manifest_422(fake, user):
    with pytest.raises(InvalidManifest):
        user.create("bad", "this is not a manifest\n")


def test_bad_replace_files_400(fake, user):
    rec = user.create("badrf")
    with pytest.raises(BadRequest):
        user.update(rec.uuid, replace_files={"no-slash": ""})
    with pytest.raises(BadRequest):
        user.update(rec.uuid, replace_files={"/x": "current/missing"})


def test_garbage_manifest_from_server_is_invalid_manifest(fake, user):
    rec = user.create("garbage")
    fake.set_manifest_raw(rec.uuid, ". nonsense here\n")
    with pytest.raises(InvalidManifest):
        user.get(rec.uuid)
    # Without asking for the manifest, the record still loads.
    assert user.get(rec.uuid, with_manifest=False).name == "garbage"


def test_5xx_retried_then_ok(fake, user):
    fake.faults.fail_next("api", 3, status=503, match="/collections")
    rec = user.create("retried")
    assert rec.name == "retried"
    for status in (500, 502, 504, 408, 423):
        fake.faults.fail_next("api", 1, status=status, match="/collections")
        assert user.get(rec.uuid).name == "retried"


def test_5xx_exhausted_is_unavailable(fake, user):
    user.current_user()
    fake.faults.set_error_rate("api", 1.0, status=503)
    with pytest.raises(Unavailable) as ei:
        user.list()
    secret_free(ei.value, user.token)
    assert ei.value.status == 503


def test_malformed_json_is_unavailable(fake, user):
    user.current_user()
    fake.faults.malformed_json_next(1, match="/collections")
    with pytest.raises(Unavailable) as ei:
        user.list()
    assert "malformed JSON" in str(ei.value)


def test_read_timeout_retried_for_get_not_for_writes(fake):
    token = fake.add_user("slow")
    cat = make_catalog(fake, token, timeout=(2.0, 0.3))
    rec = cat.create("slow")
    fake.faults.hang_next("api", 1, seconds=1.0, match="GET /arvados/v1/collections")
    assert cat.get(rec.uuid).name == "slow"
    fake.faults.hang_next("api", 1, seconds=1.0, match="PATCH")
    with pytest.raises(Unavailable) as ei:
        cat.rename(rec.uuid, "slower")
    assert "outcome is unknown" in str(ei.value)
    cat.close()


def test_dropped_connection(fake, user):
    rec = user.create("dropped")
    fake.faults.drop_next("api", 1, match="GET")
    assert user.get(rec.uuid).name == "dropped"
    fake.faults.drop_next("api", 1, match="PATCH")
    with pytest.raises(Unavailable):
        user.rename(rec.uuid, "x")


def test_connection_refused_is_unavailable():
    cat = ArvadosCatalog(ArvadosClient(f"http://127.0.0.1:{free_port()}", "tok-secret-value", retries=2, backoff_start=0.001, timeout=(0.5, 0.5)))
    with pytest.raises(Unavailable) as ei:
        cat.list()
    secret_free(ei.value, "tok-secret-value")
    # Refused connections never reached the server: writes are retried too.
    with pytest.raises(Unavailable) as ei:
        cat.create("x")
    assert "outcome is unknown" not in str(ei.value)
    cat.close()


def test_token_scrubbed_from_server_messages(fake, caplog):
    """An API server that echoes the token in its error message: the error
    davcoll raises (and would show a client) does not carry it."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    token = fake.add_user("scrub")

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"errors": [f"bad token {token} in request"]}).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    client = ArvadosClient(f"http://127.0.0.1:{server.server_address[1]}", token, retries=0)
    try:
        with pytest.raises(Unavailable) as ei:
            client.get("/arvados/v1/collections")
        assert "bad token" in str(ei.value)  # the server's message is passed on ...
        secret_free(ei.value, token)  # ... without the token
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        t.join(timeout=5)


def test_token_not_logged(fake, caplog):
    token = fake.add_user("quiet")
    cat = make_catalog(fake, token)
    with caplog.at_level(logging.DEBUG):
        fake.faults.fail_next("api", 2, status=503)
        cat.list()
        with pytest.raises(NotFound):
            cat.get("zzzzz-4zz18-000000000000000")
    assert token.rsplit("/", 1)[-1] not in caplog.text
    assert token.rsplit("/", 1)[-1] not in repr(cat.client)
    cat.close()


# ---------------------------------------------------------------------------
# Concurrency and old clusters


def test_concurrent_replace_files_lose_nothing(fake, user):
    rec = user.create("busy")
    token = user.token
    errors: list[Exception] = []

    def writer(tag: str) -> None:
        cat = make_catalog(fake, token)
        try:
            for i in range(15):
                cat.update(rec.uuid, replace_files={f"/{tag}/f{i}": "manifest_text/x"}, manifest_text=signed(fake, token, f". {FOO} 0:3:x\n"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            cat.close()

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    files = {p for p, _ in parse_manifest(fake.stored_manifest(rec.uuid)).files()}
    assert files == {f"{t}/f{i}" for t in ("left", "right") for i in range(15)}


def test_version_parsing():
    assert parse_version("3.0.0") == (3, 0)
    assert parse_version("2.7.4~rc1") == (2, 7)
    assert parse_version(None) is None and parse_version("dev") is None


def test_old_cluster_applies_replace_files_client_side():
    with FakeArvados(keepstores=1, package_version="2.7.4", seed=4) as f:
        f.store_block(b"foo")
        f.store_block(b"bar")
        token = f.add_user("old")
        cat = make_catalog(f, token)
        assert cat.server_supports_replace_files() is False
        rec = cat.create("legacy", signed(f, token, f". {FOO} 0:3:a\n./d {BAR} 0:3:b\n"))
        src = cat.create("source", signed(f, token, f". {BAR} 0:3:s\n"))
        f.clear_requests()
        cat.update(
            rec.uuid,
            replace_files={"/new/n": "manifest_text/n", "/a2": "current/a", "/a": "", "/s": f"{src.portable_data_hash}/s"},
            manifest_text=signed(f, token, f". {FOO} 0:3:n\n"),
        )
        files = dict(parse_manifest(f.stored_manifest(rec.uuid)).files())
        assert sorted(files) == ["a2", "d/b", "new/n", "s"]
        patches = [r for r in f.requests_for("api") if r.method == "PATCH"]
        assert len(patches) == 1  # one full-manifest save, no replace_files sent
        # The plan is still validated locally.
        with pytest.raises(BadRequest):
            cat.update(rec.uuid, replace_files={"/x": "current/nope"})
        cat.close()


def test_replace_files_mode_override(fake, user):
    cat = ArvadosCatalog(user.client, replace_files_mode="client")
    assert cat.server_supports_replace_files() is False
    assert ArvadosCatalog(user.client, replace_files_mode="server").server_supports_replace_files() is True
    with pytest.raises(ValueError):
        ArvadosCatalog(user.client, replace_files_mode="maybe")


def test_discovery_failure_assumes_modern(fake, user, caplog):
    arvados_api._VERSION_CACHE.pop(user.client.api_url, None)
    fake.faults.set_error_rate("api", 1.0, status=503)
    with caplog.at_level(logging.WARNING):
        assert user.server_supports_replace_files() is True
    assert "assuming Arvados >= 3.0" in caplog.text
    fake.faults.reset()
    assert user.server_supports_replace_files() is True

"""KeepClient: rendezvous order (vectors) and behaviour against the fake cluster."""

from __future__ import annotations

import hashlib
import logging
import re
import time

import pytest

from conftest import free_port, load_vectors
from davcoll.storage import signatures as sg
from davcoll.storage.blocks import (
    BlockCorrupt,
    BlockNotFound,
    BlockPermissionDenied,
    BlockStoreError,
    BlockStoreUnavailable,
    BlockTooLarge,
    EMPTY_BLOCK,
)
from davcoll.storage.keep import KeepClient, KeepService, parse_keep_services, rendezvous_order, service_weight
from davcoll.testing.fake_arvados import FakeArvados

RDV = load_vectors("rendezvous.json")["cases"]


# ---------------------------------------------------------------------------
# Rendezvous (spec 6.3)


@pytest.mark.parametrize("case", RDV, ids=[c["id"] for c in RDV])
def test_rendezvous_vectors(case):
    svcs = [KeepService(uuid=u, url=f"http://h{i}:25107/") for i, u in enumerate(case["service_uuids"])]
    assert [s.uuid for s in rendezvous_order(case["block_hash"], svcs)] == case["probe_order"]
    for uuid, weight in case["weights"].items():
        assert service_weight(case["block_hash"], uuid) == weight


def test_probe_order_puts_gateway_hint_first_and_skips_read_only_for_writes():
    svcs = [
        KeepService("zzzzz-bi6l4-000000000000000", "http://a:1/"),
        KeepService("zzzzz-bi6l4-000000000000001", "http://b:1/", read_only=True),
        KeepService("zzzzz-bi6l4-00000000000000g", "http://g:1/", service_type="gateway:test"),
    ]
    kc = KeepClient(None, "tok", services=svcs)
    md5 = "acbd18db4cc2f85cedef654fccc4a4d8"
    plain = [s.uuid for s in kc.probe_order(f"{md5}+3")]
    assert "zzzzz-bi6l4-00000000000000g" not in plain and len(plain) == 2
    hinted = kc.probe_order(f"{md5}+3+K@zzzzz-bi6l4-00000000000000g")
    assert hinted[0].uuid == "zzzzz-bi6l4-00000000000000g"
    assert [s.uuid for s in kc.probe_order(f"{md5}+3", writable=True)] == ["zzzzz-bi6l4-000000000000000"]


def test_parse_keep_services_override():
    svcs = parse_keep_services("http://a:1 https://b:2/")
    assert [s.url for s in svcs] == ["http://a:1/", "https://b:2/"]
    assert all(s.is_proxy for s in svcs)


# ---------------------------------------------------------------------------
# Against the fake cluster


@pytest.fixture(scope="module")
def fake():
    with FakeArvados(keepstores=3, seed=7) as f:
        f.token = f.add_user("alice")
        f.other_token = f.add_user("bob")
        yield f


@pytest.fixture(autouse=True)
def clean(fake):
    fake.faults.reset()
    fake.legacy_keepstore_status = False
    fake.replicas_per_put = 1
    fake.time_offset = 0.0
    fake.clear_requests()
    yield
    fake.faults.reset()


def client(fake, token=None, **kw):
    kw.setdefault("backoff_start", 0.001)
    kw.setdefault("num_retries", 3)
    kw.setdefault("read_timeout", 5.0)
    return KeepClient(fake.api_url, token or fake.token, **kw)


def idx(fake, svc):
    return next(ks.index for ks in fake.keepstores if ks.uuid == svc.uuid)


def order(fake, kc, locator):
    return [idx(fake, s) for s in kc.probe_order(locator)]


def stored(fake, data, services=None):
    """Store a block directly and return a locator signed for alice."""
    return fake.sign(fake.store_block(data, services=services), fake.token)


def test_put_get_exists_roundtrip(fake):
    kc = client(fake)
    data = b"hello keep " * 1000
    loc = kc.put(data)
    md5 = hashlib.md5(data).hexdigest()
    assert loc.startswith(f"{md5}+{len(data)}+A")
    sg.verify_locator(loc, fake.blob_signing_key, fake.token)
    # Two copies, on the first two services of the probe order.
    assert sorted(fake.block_locations(loc)) == sorted(order(fake, kc, loc)[:2])
    assert kc.get(loc) == data
    assert kc.exists(loc)
    puts = fake.requests_for("keep_put")
    assert len(puts) == 2
    for r in puts:
        assert r.token == fake.token
        assert r.headers["content-length"] == str(len(data))
        assert r.headers["x-keep-desired-replicas"] in ("1", "2")
        assert re.fullmatch(r"req-[0-9a-z]{20}", r.headers["x-request-id"])
    kc.close()


def test_put_accepts_bytearray_and_memoryview(fake):
    kc = client(fake)
    data = bytearray(b"xyz" * 333)
    assert kc.get(kc.put(data)) == bytes(data)
    assert kc.get(kc.put(memoryview(bytes(data)))) == bytes(data)
    kc.close()


def test_empty_block_needs_no_network(fake):
    kc = client(fake)
    assert kc.put(b"") == EMPTY_BLOCK
    assert kc.get(EMPTY_BLOCK) == b""
    assert kc.exists(EMPTY_BLOCK)
    assert [r for r in fake.requests if r.endpoint != "api"] == []
    kc.close()


def test_discovery_is_cached(fake):
    kc = client(fake)
    loc = kc.put(b"cached discovery")
    kc.get(loc)
    kc.get(loc)
    assert len([r for r in fake.requests_for("api") if r.path.endswith("keep_services/accessible")]) == 1
    kc.close()


def test_truncated_body_is_retried_on_next_service(fake):
    data = b"t" * 100_000
    kc = client(fake)
    loc = stored(fake, data)
    first = order(fake, kc, loc)[0]
    fake.faults.truncate_next(1, service=first)
    assert kc.get(loc) == data
    gets = [r.service for r in fake.requests_for("keep_get")]
    assert gets[0] == first and gets[1] != first
    kc.close()


def test_md5_mismatch_is_a_failed_try(fake):
    data = b"c" * 5000
    kc = client(fake)
    loc = stored(fake, data)
    first = order(fake, kc, loc)[0]
    fake.faults.corrupt_next(1, service=first)
    assert kc.get(loc) == data
    assert [r.service for r in fake.requests_for("keep_get")][:2] == order(fake, kc, loc)[:2]
    kc.close()


def test_corrupt_everywhere_is_block_corrupt(fake):
    kc = client(fake, num_retries=1)
    loc = stored(fake, b"always corrupt")
    fake.faults.corrupt_next(100)
    with pytest.raises(BlockCorrupt):
        kc.get(loc)
    kc.close()


def test_5xx_is_retried_next_round(fake):
    data = b"five hundred"
    kc = client(fake)
    loc = stored(fake, data)
    fake.faults.fail_next("keep_get", 3, status=503)
    assert kc.get(loc) == data
    statuses = [r.status for r in fake.requests_for("keep_get")]
    assert statuses == [503, 503, 503, 200]
    kc.close()


@pytest.mark.parametrize("status", [408, 409, 423, 500, 502, 504])
def test_other_temporary_statuses_are_retried(fake, status):
    data = f"temp {status}".encode()
    kc = client(fake)
    loc = stored(fake, data)
    fake.faults.fail_next("keep_get", 3, status=status)
    assert kc.get(loc) == data
    kc.close()


def test_exhausted_temporary_failures_are_unavailable(fake):
    kc = client(fake, num_retries=2)
    loc = stored(fake, b"never")
    fake.faults.set_error_rate("keep_get", 1.0, status=503)
    with pytest.raises(BlockStoreUnavailable):
        kc.get(loc)
    # 3 rounds x 3 services, each tried every round.
    assert len(fake.requests_for("keep_get")) == 9
    kc.close()


def test_404_is_permanent_per_service(fake):
    data = b"only on one"
    kc = client(fake)
    probe = order(fake, kc, hashlib.md5(data).hexdigest())
    loc = stored(fake, data, services=[probe[-1]])
    # The other services answer 404 once each; the last one is busy at first.
    fake.faults.fail_next("keep_get", 1, status=503, service=probe[-1])
    assert kc.get(loc) == data
    services = [r.service for r in fake.requests_for("keep_get")]
    assert services == probe + [probe[-1]]
    kc.close()


def test_missing_everywhere_is_not_found_without_retries(fake):
    kc = client(fake)
    loc = fake.sign(hashlib.md5(b"nope").hexdigest() + "+4", fake.token)
    with pytest.raises(BlockNotFound):
        kc.get(loc)
    assert len(fake.requests_for("keep_get")) == 3
    assert kc.exists(loc) is False
    kc.close()


def test_expired_signature_is_permission_denied(fake):
    kc = client(fake)
    bare = fake.store_block(b"expired")
    loc = fake.sign(bare, fake.token, expiry=int(time.time()) - 10)
    with pytest.raises(BlockPermissionDenied):
        kc.get(loc)
    assert {r.status for r in fake.requests_for("keep_get")} == {401}
    assert len(fake.requests_for("keep_get")) == 3  # permanent: no second round
    kc.close()


def test_unsigned_and_foreign_signatures_are_permission_denied(fake):
    kc = client(fake)
    bare = fake.store_block(b"unsigned")
    with pytest.raises(BlockPermissionDenied):
        kc.get(bare)
    assert {r.status for r in fake.requests_for("keep_get")} == {400}
    with pytest.raises(BlockPermissionDenied):
        kc.get(fake.sign(bare, fake.other_token))
    with pytest.raises(BlockPermissionDenied):
        kc.exists(bare)
    fake.legacy_keepstore_status = True
    with pytest.raises(BlockPermissionDenied):
        kc.get(bare)
    kc.close()


def test_signature_ages_out(fake):
    kc = client(fake)
    loc = kc.put(b"aging")
    fake.time_offset = fake.blob_signing_ttl + 60
    with pytest.raises(BlockPermissionDenied):
        kc.get(loc)
    kc.close()


def test_read_timeout_moves_on(fake):
    data = b"slow service"
    kc = client(fake, read_timeout=0.3)
    loc = stored(fake, data)
    first = order(fake, kc, loc)[0]
    fake.faults.hang_next("keep_get", 1, seconds=1.5, service=first)
    t0 = time.monotonic()
    assert kc.get(loc) == data
    assert time.monotonic() - t0 < 1.4
    kc.close()


def test_dropped_connection_moves_on(fake):
    data = b"dropped"
    kc = client(fake)
    loc = stored(fake, data)
    first = order(fake, kc, loc)[0]
    fake.faults.drop_next("keep_get", 1, service=first)
    assert kc.get(loc) == data
    kc.close()


def test_connection_refused_service_is_skipped(fake):
    dead = KeepService("zzzzz-bi6l4-deaddeaddeaddea", f"http://127.0.0.1:{free_port()}/")
    live = [KeepService(ks.uuid, ks.url) for ks in fake.keepstores]
    kc = KeepClient(None, fake.token, services=[dead] + live, backoff_start=0.001, num_retries=1)
    data = b"refused"
    loc = stored(fake, data)
    assert kc.get(loc) == data
    kc2 = KeepClient(None, fake.token, services=[dead], backoff_start=0.001, num_retries=1, connect_timeout=0.5)
    with pytest.raises(BlockStoreUnavailable):
        kc2.get(loc)
    with pytest.raises(BlockStoreUnavailable):
        kc2.put(b"nowhere to go")
    kc.close()
    kc2.close()


def test_put_retries_failed_replica(fake):
    kc = client(fake)
    data = b"retry my put"
    probe = order(fake, kc, hashlib.md5(data).hexdigest())
    # Round 1: every service is busy; round 2 writes the first two again.
    fake.faults.fail_next("keep_put", 3, status=503)
    loc = kc.put(data)
    assert sorted(fake.block_locations(loc)) == sorted(probe[:2])
    assert [r.status for r in fake.requests_for("keep_put")] == [503, 503, 503, 200, 200]
    fake.clear_requests()
    # A failure in the first batch is made up by the next service in the same round.
    data = b"retry my put, again"
    probe = order(fake, kc, hashlib.md5(data).hexdigest())
    fake.faults.fail_next("keep_put", 1, status=503, service=probe[0])
    loc = kc.put(data)
    assert sorted(fake.block_locations(loc)) == sorted(probe[1:])
    kc.close()


def test_put_permanent_failure_falls_through_to_next_service(fake):
    kc = client(fake)
    data = b"full disk"
    probe = order(fake, kc, hashlib.md5(data).hexdigest())
    fake.faults.fail_next("keep_put", 1, status=507, service=probe[0])
    loc = kc.put(data)
    assert sorted(fake.block_locations(loc)) == sorted(probe[1:])
    kc.close()


def test_put_survives_dropped_connection(fake):
    kc = client(fake)
    data = b"dropped during upload" * 100
    probe = order(fake, kc, hashlib.md5(data).hexdigest())
    fake.faults.drop_next("keep_put", 1, service=probe[0])
    loc = kc.put(data)
    assert len(fake.block_locations(loc)) == 2
    assert kc.get(loc) == data
    kc.close()


def test_put_error_mapping(fake):
    kc = client(fake, num_retries=1)
    fake.faults.fail_next("keep_put", 10, status=413)
    with pytest.raises(BlockTooLarge):
        kc.put(b"server says too large")
    fake.faults.reset()
    fake.faults.fail_next("keep_put", 10, status=401)
    with pytest.raises(BlockPermissionDenied):
        kc.put(b"token refused")
    fake.faults.reset()
    fake.faults.set_error_rate("keep_put", 1.0, status=503)
    with pytest.raises(BlockStoreUnavailable):
        kc.put(b"always busy")
    fake.faults.reset()
    fake.faults.fail_next("keep_put", 10, status=405)
    with pytest.raises(BlockStoreError):
        kc.put(b"refused")
    kc.close()


def test_put_too_large_is_refused_locally(fake):
    kc = client(fake)
    with pytest.raises(BlockTooLarge):
        kc.put(bytes((1 << 26) + 1))
    assert fake.requests_for("keep_put") == []
    kc.close()


def test_put_through_proxy_asks_for_all_copies(fake):
    # ARVADOS_KEEP_SERVICES-style override: treated as a proxy, one PUT.
    fake.replicas_per_put = 2
    kc = KeepClient(None, fake.token, services=fake.keep_urls[0], backoff_start=0.001)
    loc = kc.put(b"via proxy")
    puts = fake.requests_for("keep_put")
    assert len(puts) == 1 and puts[0].headers["x-keep-desired-replicas"] == "2"
    assert kc.get(loc) == b"via proxy"
    kc.close()


def test_under_replicated_put_still_returns_locator(fake, caplog):
    kc = client(fake, copies=3, num_retries=1)
    data = b"under replicated"
    probe = order(fake, kc, hashlib.md5(data).hexdigest())
    fake.faults.fail_next("keep_put", 10, status=507, service=probe[2])
    with caplog.at_level(logging.WARNING, logger="davcoll.storage.keep"):
        loc = kc.put(data)
    assert len(fake.block_locations(loc)) == 2
    assert "replicas" in caplog.text
    kc.close()


def test_copies_capped_by_writable_services():
    with FakeArvados(keepstores=1, seed=3) as f:
        tok = f.add_user("solo")
        kc = KeepClient(f.api_url, tok, backoff_start=0.001)
        loc = kc.put(b"single node")
        assert kc.get(loc) == b"single node"
        assert len(f.requests_for("keep_put")) == 1
        kc.close()


def test_discovery_errors(fake):
    kc = KeepClient(fake.api_url, "v2/zzzzz-gj3su-000000000000000/bogus", backoff_start=0.001, num_retries=1)
    with pytest.raises(BlockPermissionDenied):
        kc.get(fake.sign(fake.store_block(b"x"), fake.token))
    kc.close()
    kc = client(fake, num_retries=1)
    fake.faults.fail_next("api", 5, status=503, match="keep_services")
    with pytest.raises(BlockStoreUnavailable):
        kc.get(stored(fake, b"no discovery"))
    kc.close()


def test_rediscovery_after_failed_round(fake):
    kc = client(fake)
    data = b"rediscover"
    loc = stored(fake, data)
    fake.faults.fail_next("keep_get", 3, status=503)
    assert kc.get(loc) == data
    assert len([r for r in fake.requests_for("api") if r.path.endswith("accessible")]) == 2
    kc.close()


def test_token_never_logged_or_raised(fake, caplog):
    kc = client(fake, num_retries=1)
    secret = fake.token.rsplit("/", 1)[-1]
    with caplog.at_level(logging.DEBUG):
        fake.faults.set_error_rate("keep_get", 1.0, status=503)
        with pytest.raises(BlockStoreUnavailable) as ei:
            kc.get(stored(fake, b"secretive"))
        fake.faults.reset()
        with pytest.raises(BlockNotFound) as ei2:
            kc.get(fake.sign(hashlib.md5(b"gone").hexdigest() + "+4", fake.token))
    for text in (caplog.text, str(ei.value), str(ei2.value), repr(kc)):
        assert secret not in text
    kc.close()


def test_for_token_shares_pool(fake):
    kc = client(fake)
    bob = kc.for_token(fake.other_token)
    loc = bob.put(b"bob's block")
    sg.verify_locator(loc, fake.blob_signing_key, fake.other_token)
    with pytest.raises(BlockPermissionDenied):
        kc.get(loc)
    assert bob.get(loc) == b"bob's block"
    bob.close()
    kc.close()

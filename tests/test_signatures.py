"""Permission signatures against the shared vectors (spec 4.2) and the helpers."""

from __future__ import annotations

import pytest

from conftest import load_vectors
from davcoll.storage import signatures as sg

CASES = load_vectors("signatures.json")["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_vector_signature(case):
    md5 = case["locator"][:32]
    assert case["hmac_sha1_message"] == f"{md5}@{case['api_token']}@{case['expiry_hex']}@{case['ttl_hex']}"
    sig = sg.compute_signature(case["blob_signing_key"], md5, case["api_token"], case["expiry_unix"], case["blob_signing_ttl_seconds"])
    assert sig == case["signature"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_vector_signed_locator_and_verify(case):
    key, tok, ttl = case["blob_signing_key"], case["api_token"], case["blob_signing_ttl_seconds"]
    signed = sg.sign_locator(case["locator"], key, tok, expiry=case["expiry_unix"], ttl=ttl)
    assert signed == case["signed_locator"]
    # Valid just before expiry, expired just after.
    sg.verify_locator(signed, key, tok, ttl=ttl, now=case["expiry_unix"] - 1)
    with pytest.raises(sg.ExpiredSignature):
        sg.verify_locator(signed, key, tok, ttl=ttl, now=case["expiry_unix"] + 1)
    # Another token, another key, another TTL: invalid.
    with pytest.raises(sg.InvalidSignature):
        sg.verify_locator(signed, key, tok + "x", ttl=ttl, now=0)
    with pytest.raises(sg.InvalidSignature):
        sg.verify_locator(signed, "otherkey", tok, ttl=ttl, now=0)
    with pytest.raises(sg.InvalidSignature):
        sg.verify_locator(signed, key, tok, ttl=ttl + 1, now=0)
    assert sg.signature_expiry(signed) == case["expiry_unix"]
    assert sg.strip_permission(signed) == case["locator"]


def test_size_not_signed_and_hint_position_free():
    c = CASES[0]
    key, tok = c["blob_signing_key"], c["api_token"]
    signed = c["signed_locator"]
    # A wrong size hint does not break verification (only the md5 is signed).
    wrong_size = signed.replace("+3+", "+4+", 1)
    sg.verify_locator(wrong_size, key, tok, now=0)
    # Verifiers accept the +A hint before other hints.
    md5, size, a = signed.split("+")
    sg.verify_locator(f"{md5}+{size}+{a}+K@zzzzz", key, tok, now=0)


def test_missing_signature_and_empty_block():
    with pytest.raises(sg.MissingSignature):
        sg.verify_locator("acbd18db4cc2f85cedef654fccc4a4d8+3", "k", "t", now=0)
    with pytest.raises(sg.MissingSignature):
        sg.verify_locator(CASES[0]["signed_locator"], "k", None, now=0)
    sg.verify_locator("d41d8cd98f00b204e9800998ecf8427e+0", "k", None)
    sg.verify_locator("d41d8cd98f00b204e9800998ecf8427e+0+K@zzzzz", "k", "t")


def test_resign_replaces_old_hint():
    c = CASES[0]
    once = sg.sign_locator(c["locator"], "k1", "t1", expiry=100)
    twice = sg.sign_locator(once, "k2", "t2", expiry=200)
    assert twice.count("+A") == 1
    sg.verify_locator(twice, "k2", "t2", now=150)


def test_errors_never_leak_secrets():
    c = CASES[0]
    for tok in (c["api_token"], "secret-token-value"):
        try:
            sg.verify_locator(c["signed_locator"], "another-key", tok, now=0)
        except sg.SignatureError as e:
            assert tok not in str(e) and "another-key" not in str(e)


MANIFEST = (
    ". acbd18db4cc2f85cedef654fccc4a4d8+3+K@zzzzz 37b51d194a7513e45b56f6524f2d51f2+3 0:3:foo 3:3:bar\n"
    "./d d41d8cd98f00b204e9800998ecf8427e+0 0:0:\\056\n"
    "./e acbd18db4cc2f85cedef654fccc4a4d8+3+Aabcdefabcdefabcdefabcdefabcdefabcdefabcd@00000010 0:3:foo\n"
)


def test_sign_manifest_strip_and_expiry():
    signed = sg.sign_manifest(MANIFEST, "key", "tok", expiry=0x7FFFFFFF)
    locs = list(sg.manifest_locators(signed))
    assert len(locs) == 4
    for loc in locs:
        sg.verify_locator(loc, "key", "tok", now=0)
        assert loc.count("+A") == 1
    assert locs[0].startswith("acbd18db4cc2f85cedef654fccc4a4d8+3+K@zzzzz+A")
    assert sg.earliest_expiry(signed) == 0x7FFFFFFF
    assert sg.earliest_expiry(MANIFEST) == 0x10
    assert sg.earliest_expiry(sg.strip_manifest_signatures(MANIFEST)) is None
    stripped = sg.strip_manifest_signatures(signed)
    assert stripped == MANIFEST.replace("+Aabcdefabcdefabcdefabcdefabcdefabcdefabcd@00000010", "")
    # File tokens and stream names are never touched.
    assert stripped.count("0:3:foo") == 2 and "./d " in stripped
    assert sg.sign_manifest("", "key", "tok") == ""

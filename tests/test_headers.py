"""Header grammars the guard enforces (Range, If)."""

import pytest

from davcoll.dav.headers import classify_range, valid_if_header


@pytest.mark.parametrize("value,kind", [
    ("bytes=0-5", "ok"), ("bytes=5-", "ok"), ("bytes=-5", "ok"), ("bytes= 0-5 ", "ok"),
    ("bytes=0-1,5-6", "multi"), ("bytes=1-2,", "multi"),
    ("items=0-5", "ignore"), ("garbage", "ignore"), ("=0-5", "ignore"),
    ("bytes=-0", "unsatisfiable"), ("bytes=5-2", "unsatisfiable"), ("bytes=z-y", "unsatisfiable"),
    ("bytes=-5-3", "unsatisfiable"), ("bytes=", "unsatisfiable"), ("bytes=0x10-", "unsatisfiable"),
])
def test_classify_range(value, kind):
    assert classify_range(value) == kind


@pytest.mark.parametrize("value", [
    "(<opaquelocktoken:abc>)",
    "(<urn:x> [\"etag\"])",
    "(Not <DAV:no-lock>)",
    "(Not <DAV:no-lock> [W/\"x\"])",
    "<http://h/a> (<urn:x>) (Not <DAV:no-lock>)",
    "(<urn:a>) (<urn:b>)",
    '([""])',
])
def test_valid_if(value):
    assert valid_if_header(value)


@pytest.mark.parametrize("value", [
    "", "((((", "(Not <x> Not)", "()", "(<>)", "<http://h/a>", "(<urn:x>) <http://h/a>",
    "<http://h/a> (<urn:x>) (<urn:y>) garbage", "([etag])", "(<urn:x)", "(Not)", "(<urn:x> [\"a\"",
    "<a> <b> (<urn:x>)",
])
def test_invalid_if(value):
    assert not valid_if_header(value)

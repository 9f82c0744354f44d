"""Locks scoped to what a principal may lock, and bounded (issue 11 §2, §6).

Before: ``LOCK /`` (or ``/by_id/``, or ``/t=<token>/``) with Depth infinity
was granted for four weeks ("Timeout: Infinite"), after which every other
principal got 423 on PUT/MKCOL/DELETE of their own data; owner XML of any
size was kept (and echoed by every PROPFIND); a principal could hold any
number of locks; dead properties on ``/`` and ``/by_id/`` were scratch space
shared by every user.
"""

from __future__ import annotations

import re

import pytest
import requests

from davclient import DavClient

LOCK_TMPL = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:{scope}/></D:lockscope>'
    "<D:locktype><D:write/></D:locktype><D:owner>{owner}</D:owner></D:lockinfo>"
)


def lock(dav: DavClient, path: str, *, depth: str = "infinity", timeout: str | None = "Second-600",
         owner: str = "tester", scope: str = "exclusive") -> requests.Response:
    """A new lock with this owner and scope (``timeout=None``: no Timeout header)."""
    return dav.lock(path, LOCK_TMPL.format(owner=owner, scope=scope), depth=depth, timeout=timeout)


def granted_seconds(r: requests.Response) -> int:
    m = re.search(r"<[^>]*timeout>Second-(\d+)<", r.text)
    assert m, r.text
    return int(m.group(1))


def unlock(dav: DavClient, path: str, r: requests.Response) -> int:
    return dav.unlock(path, r.headers["Lock-Token"]).status_code


@pytest.fixture(scope="module")
def server_overrides():
    return {"anonymous": "none", "max_locks_per_principal": 3, "max_lock_timeout": 600}


@pytest.fixture(scope="module")
def srv(srv):
    """The shared server with principals alice and bob (read-write) and reader
    (read-only), each a DavClient with its token, and collections a and b/f.txt."""
    tokens = srv.app.backend.tokens
    srv.alice_raw = tokens.create(read_only=False, label="alice")
    srv.alice = DavClient(srv.url, token=srv.alice_raw)
    srv.bob = DavClient(srv.url, token=tokens.create(read_only=False, label="bob"))
    srv.reader = DavClient(srv.url, token=tokens.create(read_only=True, label="reader"))
    for name in ("a", "b"):
        assert srv.alice.mkcol(f"{name}/").status_code == 201
    assert srv.bob.put("b/f.txt", data=b"x").status_code == 201
    return srv


@pytest.mark.parametrize("path", ["", "by_id/", "by_id"])
@pytest.mark.parametrize("depth", ["infinity", "0"])
def test_virtual_folders_cannot_be_locked(srv, path, depth):
    r = lock(srv.alice, path, depth=depth)
    assert r.status_code == 403, r.text
    assert "virtual folders" in r.text and "Lock-Token" not in r.headers
    # Everybody else's data stays writable.
    assert srv.bob.put("b/f.txt", data=b"y").status_code == 204
    assert srv.bob.mkcol("newcoll/").status_code == 201
    assert srv.bob.delete("newcoll/").status_code == 204


def test_path_token_root_cannot_be_locked(srv):
    r = lock(DavClient(srv.url), f"t={srv.alice_raw}/")
    assert r.status_code == 403, r.text
    assert srv.bob.put("b/f.txt", data=b"z").status_code == 204


def test_new_name_at_top_level_cannot_be_locked(srv):
    assert lock(srv.alice, "brand-new").status_code == 403


def test_collection_root_through_c_prefix_is_lockable(srv):
    """``/c=<uuid>/`` is a collection (not a virtual folder): its writer may lock it."""
    uuid = srv.app.backend.catalog_.find_by_name("a").uuid
    r = lock(srv.alice, f"c={uuid}/")
    assert r.status_code == 200, r.text
    assert srv.bob.put("a/x", data=b"1").status_code == 423
    assert unlock(srv.alice, "a/", r) == 204
    assert srv.bob.put("a/x", data=b"1").status_code == 201


def test_read_only_principal_cannot_lock(srv):
    r = lock(srv.reader, "b/f.txt", depth="0")
    assert r.status_code == 403
    assert srv.bob.put("b/f.txt", data=b"w").status_code == 204


@pytest.mark.parametrize("timeout", ["Infinite", "Second-4100000000", "Second-86400", None, "Infinite, Second-30"])
def test_timeouts_are_capped(srv, timeout):
    r = lock(srv.alice, "a/capped", depth="0", timeout=timeout)
    assert r.status_code in (200, 201), r.text
    try:
        assert 0 < granted_seconds(r) <= 600
        # A refresh asking for Infinite is capped too.
        rr = srv.alice.req("LOCK", "a/capped", headers={"If": f"({r.headers['Lock-Token']})", "Timeout": "Infinite"})
        assert rr.status_code == 200, rr.text
        assert 0 < granted_seconds(rr) <= 600
    finally:
        assert unlock(srv.alice, "a/capped", r) == 204


def test_short_timeout_is_kept(srv):
    r = lock(srv.alice, "a/short", depth="0", timeout="Second-60")
    assert r.status_code in (200, 201)
    assert 55 <= granted_seconds(r) <= 60
    assert unlock(srv.alice, "a/short", r) == 204


def test_owner_size_capped(srv):
    r = lock(srv.alice, "a/big-owner", depth="0", owner="o" * 5000)
    assert r.status_code == 413, r.text
    assert "owner" in r.text and "Lock-Token" not in r.headers
    # Nothing was locked and the lock-null file was not created.
    assert srv.bob.put("a/big-owner", data=b"1").status_code == 201
    ok = lock(srv.alice, "a/big-owner", depth="0", owner="o" * 3000)
    assert ok.status_code == 200
    assert unlock(srv.alice, "a/big-owner", ok) == 204


def test_locks_per_principal_capped(srv):
    held = []
    for i in range(3):
        r = lock(srv.alice, f"a/many{i}", depth="0")
        assert r.status_code in (200, 201), r.text
        held.append((f"a/many{i}", r))
    r = lock(srv.alice, "a/many3", depth="0")
    assert r.status_code == 403 and "too many locks" in r.text, r.text
    assert srv.alice.get("a/many3").status_code == 404  # no lock-null file left
    # Another principal is not affected by alice's count.
    rb = lock(srv.bob, "b/f.txt", depth="0")
    assert rb.status_code == 200
    assert unlock(srv.bob, "b/f.txt", rb) == 204
    # Releasing one frees a slot.
    path, first = held.pop(0)
    assert unlock(srv.alice, path, first) == 204
    r = lock(srv.alice, "a/many3", depth="0")
    assert r.status_code in (200, 201)
    held.append(("a/many3", r))
    for path, r in held:
        assert unlock(srv.alice, path, r) == 204


PROPPATCH = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:scratch"><D:set><D:prop>'
    "<Z:note>{value}</Z:note></D:prop></D:set></D:propertyupdate>"
)
PROPFIND_NOTE = '<D:propfind xmlns:D="DAV:" xmlns:Z="urn:scratch"><D:prop><Z:note/></D:prop></D:propfind>'


@pytest.mark.parametrize("path", ["", "by_id/"])
def test_virtual_folders_are_not_property_scratch_space(srv, path):
    r = srv.alice.proppatch(path, PROPPATCH.format(value="from-alice"))
    assert r.status_code in (207, 403), r.text
    assert "403 Forbidden" in r.text or r.status_code == 403
    assert "shared by every user" in r.text
    r = srv.bob.propfind(path, "0", PROPFIND_NOTE)
    assert r.status_code == 207 and "from-alice" not in r.text
    # Removing is refused the same way.
    rm = ('<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:scratch"><D:remove><D:prop><Z:note/></D:prop>'
          "</D:remove></D:propertyupdate>")
    r = srv.bob.proppatch(path, rm)
    assert "403 Forbidden" in r.text or r.status_code == 403


def test_properties_inside_collections_still_work(srv):
    r = srv.bob.proppatch("b/f.txt", PROPPATCH.format(value="kept"))
    assert r.status_code == 207 and "200 OK" in r.text
    r = srv.alice.propfind("b/f.txt", "0", PROPFIND_NOTE)
    assert "kept" in r.text

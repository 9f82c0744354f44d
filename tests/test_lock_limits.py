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

from server_util import running_server

LOCK_TMPL = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:{scope}/></D:lockscope>'
    "<D:locktype><D:write/></D:locktype><D:owner>{owner}</D:owner></D:lockinfo>"
)


def lock(url: str, h: dict, *, depth: str = "infinity", timeout: str | None = "Second-600",
         owner: str = "tester", scope: str = "exclusive") -> requests.Response:
    headers = {**h, "Depth": depth, "Content-Type": "application/xml"}
    if timeout is not None:
        headers["Timeout"] = timeout
    return requests.request("LOCK", url, data=LOCK_TMPL.format(owner=owner, scope=scope), headers=headers, timeout=30)


def granted_seconds(r: requests.Response) -> int:
    m = re.search(r"<[^>]*timeout>Second-(\d+)<", r.text)
    assert m, r.text
    return int(m.group(1))


def unlock(url: str, h: dict, r: requests.Response) -> int:
    return requests.request("UNLOCK", url, headers={**h, "Lock-Token": r.headers["Lock-Token"]}, timeout=30).status_code


def bearer(tok: str) -> dict:
    return {"Authorization": f"Bearer {tok}"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("locklimits") / "data", anonymous="none",
                        max_locks_per_principal=3, max_lock_timeout=600) as s:
        tokens = s.app.backend.tokens
        s.alice = bearer(tokens.create(read_only=False, label="alice"))
        s.bob = bearer(tokens.create(read_only=False, label="bob"))
        s.alice_raw = s.alice["Authorization"].split()[1]
        s.reader = bearer(tokens.create(read_only=True, label="reader"))
        for name in ("a", "b"):
            assert requests.request("MKCOL", s.u(f"{name}/"), headers=s.alice, timeout=30).status_code == 201
        assert requests.put(s.u("b/f.txt"), data=b"x", headers=s.bob, timeout=30).status_code == 201
        yield s


@pytest.mark.parametrize("path", ["", "by_id/", "by_id"])
@pytest.mark.parametrize("depth", ["infinity", "0"])
def test_virtual_folders_cannot_be_locked(srv, path, depth):
    r = lock(srv.u(path), srv.alice, depth=depth)
    assert r.status_code == 403, r.text
    assert "virtual folders" in r.text and "Lock-Token" not in r.headers
    # Everybody else's data stays writable.
    assert requests.put(srv.u("b/f.txt"), data=b"y", headers=srv.bob, timeout=30).status_code == 204
    assert requests.request("MKCOL", srv.u("newcoll/"), headers=srv.bob, timeout=30).status_code == 201
    assert requests.request("DELETE", srv.u("newcoll/"), headers=srv.bob, timeout=30).status_code == 204


def test_path_token_root_cannot_be_locked(srv):
    r = lock(srv.u(f"t={srv.alice_raw}/"), {})
    assert r.status_code == 403, r.text
    assert requests.put(srv.u("b/f.txt"), data=b"z", headers=srv.bob, timeout=30).status_code == 204


def test_new_name_at_top_level_cannot_be_locked(srv):
    assert lock(srv.u("brand-new"), srv.alice).status_code == 403


def test_collection_root_through_c_prefix_is_lockable(srv):
    """``/c=<uuid>/`` is a collection (not a virtual folder): its writer may lock it."""
    uuid = srv.app.backend.catalog_.find_by_name("a").uuid
    r = lock(srv.u(f"c={uuid}/"), srv.alice)
    assert r.status_code == 200, r.text
    assert requests.put(srv.u("a/x"), data=b"1", headers=srv.bob, timeout=30).status_code == 423
    assert unlock(srv.u("a/"), srv.alice, r) == 204
    assert requests.put(srv.u("a/x"), data=b"1", headers=srv.bob, timeout=30).status_code == 201


def test_read_only_principal_cannot_lock(srv):
    r = lock(srv.u("b/f.txt"), srv.reader, depth="0")
    assert r.status_code == 403
    assert requests.put(srv.u("b/f.txt"), data=b"w", headers=srv.bob, timeout=30).status_code == 204


@pytest.mark.parametrize("timeout", ["Infinite", "Second-4100000000", "Second-86400", None, "Infinite, Second-30"])
def test_timeouts_are_capped(srv, timeout):
    r = lock(srv.u("a/capped"), srv.alice, depth="0", timeout=timeout)
    assert r.status_code in (200, 201), r.text
    try:
        assert 0 < granted_seconds(r) <= 600
        # A refresh asking for Infinite is capped too.
        rr = requests.request("LOCK", srv.u("a/capped"), timeout=30,
                              headers={**srv.alice, "If": f"({r.headers['Lock-Token']})", "Timeout": "Infinite"})
        assert rr.status_code == 200, rr.text
        assert 0 < granted_seconds(rr) <= 600
    finally:
        assert unlock(srv.u("a/capped"), srv.alice, r) == 204


def test_short_timeout_is_kept(srv):
    r = lock(srv.u("a/short"), srv.alice, depth="0", timeout="Second-60")
    assert r.status_code in (200, 201)
    assert 55 <= granted_seconds(r) <= 60
    assert unlock(srv.u("a/short"), srv.alice, r) == 204


def test_owner_size_capped(srv):
    r = lock(srv.u("a/big-owner"), srv.alice, depth="0", owner="o" * 5000)
    assert r.status_code == 413, r.text
    assert "owner" in r.text and "Lock-Token" not in r.headers
    # Nothing was locked and the lock-null file was not created.
    assert requests.put(srv.u("a/big-owner"), data=b"1", headers=srv.bob, timeout=30).status_code == 201
    ok = lock(srv.u("a/big-owner"), srv.alice, depth="0", owner="o" * 3000)
    assert ok.status_code == 200
    assert unlock(srv.u("a/big-owner"), srv.alice, ok) == 204


def test_locks_per_principal_capped(srv):
    held = []
    for i in range(3):
        r = lock(srv.u(f"a/many{i}"), srv.alice, depth="0")
        assert r.status_code in (200, 201), r.text
        held.append((f"a/many{i}", r))
    r = lock(srv.u("a/many3"), srv.alice, depth="0")
    assert r.status_code == 403 and "too many locks" in r.text, r.text
    assert requests.get(srv.u("a/many3"), headers=srv.alice, timeout=30).status_code == 404  # no lock-null file left
    # Another principal is not affected by alice's count.
    rb = lock(srv.u("b/f.txt"), srv.bob, depth="0")
    assert rb.status_code == 200
    assert unlock(srv.u("b/f.txt"), srv.bob, rb) == 204
    # Releasing one frees a slot.
    path, first = held.pop(0)
    assert unlock(srv.u(path), srv.alice, first) == 204
    r = lock(srv.u("a/many3"), srv.alice, depth="0")
    assert r.status_code in (200, 201)
    held.append(("a/many3", r))
    for path, r in held:
        assert unlock(srv.u(path), srv.alice, r) == 204


PROPPATCH = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:scratch"><D:set><D:prop>'
    "<Z:note>{value}</Z:note></D:prop></D:set></D:propertyupdate>"
)
PROPFIND_NOTE = '<D:propfind xmlns:D="DAV:" xmlns:Z="urn:scratch"><D:prop><Z:note/></D:prop></D:propfind>'


@pytest.mark.parametrize("path", ["", "by_id/"])
def test_virtual_folders_are_not_property_scratch_space(srv, path):
    r = requests.request("PROPPATCH", srv.u(path), data=PROPPATCH.format(value="from-alice"), headers=srv.alice, timeout=30)
    assert r.status_code in (207, 403), r.text
    assert "403 Forbidden" in r.text or r.status_code == 403
    assert "shared by every user" in r.text
    r = requests.request("PROPFIND", srv.u(path), data=PROPFIND_NOTE, headers={**srv.bob, "Depth": "0"}, timeout=30)
    assert r.status_code == 207 and "from-alice" not in r.text
    # Removing is refused the same way.
    rm = ('<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:scratch"><D:remove><D:prop><Z:note/></D:prop>'
          "</D:remove></D:propertyupdate>")
    r = requests.request("PROPPATCH", srv.u(path), data=rm, headers=srv.bob, timeout=30)
    assert "403 Forbidden" in r.text or r.status_code == 403


def test_properties_inside_collections_still_work(srv):
    r = requests.request("PROPPATCH", srv.u("b/f.txt"), data=PROPPATCH.format(value="kept"), headers=srv.bob, timeout=30)
    assert r.status_code == 207 and "200 OK" in r.text
    r = requests.request("PROPFIND", srv.u("b/f.txt"), data=PROPFIND_NOTE, headers={**srv.alice, "Depth": "0"}, timeout=30)
    assert "kept" in r.text

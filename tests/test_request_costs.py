"""Work per request does not multiply (issue 14 §5): counted, not timed.

- a PUT resolves its URL once (plus its parent, which WsgiDAV asks for) and
  computes the new content's ETag once (after the commit);
- PROPFIND allprop reads dead properties per folder, not per entry.
"""

from __future__ import annotations

import collections

import pytest
import requests

import davcoll.dav.provider as provider_mod
import davcoll.dav.resources as resources_mod
import davcoll.storage.local_props as local_props
from server_util import running_server

PROPPATCH = (b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z">'
             b"<D:set><D:prop><Z:a>1</Z:a></D:prop></D:set></D:propertyupdate>")


@pytest.fixture
def counted(monkeypatch, tmp_path):
    counts: collections.Counter = collections.Counter()

    def count(obj, name, label):
        orig = getattr(obj, name)

        def wrapper(*a, **k):
            counts[label] += 1
            return orig(*a, **k)

        monkeypatch.setattr(obj, name, wrapper)

    count(provider_mod.CollectionProvider, "_resolve", "resolve")
    count(resources_mod, "etag_of", "etag")
    for meth in ("get", "get_all", "get_children", "names"):
        count(local_props.LocalPropertyStore, meth, "props")
    with running_server(tmp_path / "data") as srv:
        yield srv, counts


def test_put_resolves_once_and_computes_the_etag_once(counted):
    srv, counts = counted
    s = requests.Session()
    assert s.request("MKCOL", srv.u("c/")).status_code == 201
    counts.clear()
    r = s.put(srv.u("c/new.bin"), data=b"y" * 5000)
    assert r.status_code == 201 and r.headers["ETag"].startswith('"')
    assert counts["resolve"] == 2  # the file and its parent
    assert counts["etag"] == 1
    counts.clear()
    r2 = s.put(srv.u("c/new.bin"), data=b"z" * 5000)
    assert r2.status_code == 204 and r2.headers["ETag"] not in ("", r.headers["ETag"])
    assert counts["etag"] == 2  # the old content's (preconditions) and the new one's
    assert s.head(srv.u("c/new.bin")).headers["ETag"] == r2.headers["ETag"]


def test_propfind_allprop_reads_dead_properties_per_folder(counted):
    srv, counts = counted
    s = requests.Session()
    assert s.request("MKCOL", srv.u("c/")).status_code == 201
    assert s.request("MKCOL", srv.u("c/d/")).status_code == 201
    for i in range(30):
        assert s.put(srv.u(f"c/d/f{i}"), data=b"x").status_code == 201
        assert s.request("PROPPATCH", srv.u(f"c/d/f{i}"), data=PROPPATCH).status_code == 207
    counts.clear()
    r = s.request("PROPFIND", srv.u("c/d/"), headers={"Depth": "1"})
    assert r.status_code == 207 and r.content.count(b"urn:z") >= 30
    assert counts["props"] <= 3, counts  # not one per entry (31 entries)


def test_write_conflict_checks_ask_the_lock_store_once_each(monkeypatch, tmp_path):
    """WsgiDAV asked the lock store once per ancestor of every URL a write
    touches (15 queries for a MOVE); the conflict check is one query."""
    import davcoll.storage.local_locks as local_locks

    calls: collections.Counter = collections.Counter()
    for meth in ("get_lock_list", "locks_on"):
        orig = getattr(local_locks.LocalLockStore, meth)

        def wrapper(self, *a, _orig=orig, _m=meth, **k):
            calls[_m] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(local_locks.LocalLockStore, meth, wrapper)
    with running_server(tmp_path / "data") as srv:
        s = requests.Session()
        assert s.request("MKCOL", srv.u("c/")).status_code == 201
        assert s.request("MKCOL", srv.u("c/d/")).status_code == 201
        assert s.put(srv.u("c/d/a"), data=b"a").status_code == 201
        calls.clear()
        r = s.request("MOVE", srv.u("c/d/a"), headers={"Destination": srv.u("c/d/b")})
        assert r.status_code == 201
        assert sum(calls.values()) <= 5, calls
        # Still enforced: a depth-infinity lock on the folder blocks writes below it.
        lock = s.request("LOCK", srv.u("c/d/"), headers={"Depth": "infinity", "Timeout": "Second-60"},
                         data=b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
                              b"</D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>")
        assert lock.status_code == 200
        token = lock.headers["Lock-Token"]
        r = s.request("MOVE", srv.u("c/d/b"), headers={"Destination": srv.u("c/d/a")})
        assert r.status_code == 423
        assert s.put(srv.u("c/d/x"), data=b"x").status_code == 423
        assert s.put(srv.u("c/d/x"), data=b"x", headers={"If": f"({token})"}).status_code == 201
        assert s.delete(srv.u("c/"), ).status_code == 423  # a locked descendant

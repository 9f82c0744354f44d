"""davcoll gc: dry run by default, never touches referenced or young blocks."""

from __future__ import annotations

import io
import os
import time

import requests

from davcoll.gc import collect_garbage
from davcoll.storage.local_blocks import LocalBlockStore
from server_util import running_server


def _age(store: LocalBlockStore, locator: str, seconds: float) -> None:
    p = store.path_for(locator)
    t = time.time() - seconds
    os.utime(p, (t, t))


def test_gc_keeps_referenced_and_young_blocks(tmp_path):
    data = tmp_path / "data"
    with running_server(data) as srv:
        assert requests.request("MKCOL", srv.u("c/")).status_code == 201
        assert requests.put(srv.u("c/keep.txt"), data=b"keep me").status_code == 201
        assert requests.put(srv.u("c/old.txt"), data=b"old version").status_code == 201
        assert requests.put(srv.u("c/old.txt"), data=b"new version").status_code == 204
        assert requests.delete(srv.u("c/keep.txt")).status_code == 204
    store = LocalBlockStore(data)
    orphan = store.put(b"never committed")
    young_orphan = store.put(b"upload in flight")
    for loc, _, _ in list(store.iter_blocks()):
        if loc != young_orphan:
            _age(store, loc, 3 * 86400)
    out = io.StringIO()
    found, deleted = collect_garbage(str(data), delete=False, grace_seconds=86400, out=out)
    # Older versions still reference every committed block: only the orphan goes.
    assert found == 1 and deleted == 0
    assert orphan in out.getvalue() and young_orphan not in out.getvalue()
    assert store.exists(orphan)
    found, deleted = collect_garbage(str(data), delete=True, grace_seconds=86400, out=io.StringIO())
    assert (found, deleted) == (1, 1)
    assert not store.exists(orphan) and store.exists(young_orphan)
    # Every version of the collection is still readable.
    with running_server(data) as srv:
        assert requests.get(srv.u("c/old.txt")).content == b"new version"
        cat = srv.app.backend.catalog_
        rec = cat.find_by_name("c")
        for v in range(1, rec.version + 1):
            text = cat.get_version(rec.uuid, v).manifest_text
            for tok in text.split():
                if "+" in tok and ":" not in tok:
                    assert store.exists(tok), (v, tok)

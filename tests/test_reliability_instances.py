"""Two davcoll instances writing one collection lose nothing (issue 7, scenario 1).

Two ``davcoll serve`` processes share one data directory (SQLite catalog and
block files).  n MKCOLs, then n² parallel 2 MiB PUTs spread over both
instances, interleaved with MOVEs and DELETEs of other paths.  Afterwards
every acknowledged change is visible through both instances with the right
bytes, and nothing that was not asked for is there.  Two simultaneous PUTs
to one path leave exactly one of the two bodies, never a mix.

The same runs again with two in-process servers, each with its own
``ArvadosBackend``, against one ``FakeArvados`` cluster.

These tests would fail if a commit built on a stale tree overwrote another
instance's change (whole-manifest saves instead of ``replace_files``), if a
2xx went out before the catalog update, or if the catalog's per-collection
serialization were missing.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pytest
import requests

from davcoll.manifest import parse_manifest
from davcoll.storage.local_catalog import LocalCatalog, db_path_for
from davclient import NO_CACHE, DavClient, parse_multistatus, wait_until
from server_util import ServerProcess

N = 8
SIZE = 2 << 20
FRESH = NO_CACHE


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def Client(base: str, headers: dict[str, str] | None = None) -> DavClient:
    """A client of one instance (one requests.Session per thread)."""
    return DavClient(base, headers=headers, timeout=120)


def listing(client: DavClient, path: str, *, fresh: bool = True) -> set[str]:
    """Names in a folder via PROPFIND Depth 1 (with ``fresh``: Cache-Control: no-cache)."""
    r = client.propfind(path, "1", no_cache=fresh)
    assert r.status_code == 207, r.text
    base = "/" + path.strip("/") + "/"
    return {resp.path.rstrip("/").rsplit("/", 1)[-1] for resp in parse_multistatus(r)
            if resp.path.rstrip("/") + "/" != base}


def run_scenario(clients: list[DavClient], manifest_of: Callable[[], str]) -> None:
    """The scenario, against any two (or more) instances sharing a catalog.

    ``manifest_of`` returns the collection ``c``'s stored manifest text (read
    straight from the catalog, not through davcoll).
    """
    a, b = clients[0], clients[1]
    pick = lambda i: clients[i % len(clients)]  # noqa: E731

    r = a.req("MKCOL", "c/")
    assert r.status_code == 201, r.text
    # Every instance lists the new collection (its listing memo lasts 1 s).
    assert wait_until(lambda: all(c.propfind("c/", "0").status_code == 207 for c in clients)), \
        "an instance never saw the new collection"

    # n MKCOLs spread over both instances, in parallel.
    dirs = [f"d{i}" for i in range(N)] + ["mv", "del"]
    with ThreadPoolExecutor(len(dirs)) as pool:
        codes = list(pool.map(lambda ix: pick(ix[0]).req("MKCOL", f"c/{ix[1]}/").status_code, enumerate(dirs)))
    assert codes == [201] * len(dirs), codes
    # Each instance learns of the other's folders at its next revalidation
    # (every 2 s by default); until then a PUT into one of them gets 409.
    # Wait until every instance shows every folder (no Cache-Control).
    assert wait_until(lambda: all(listing(c, "c/", fresh=False) >= set(dirs) for c in clients)), \
        "an instance never saw the other's folders"

    # Files that the parallel phase moves and deletes.
    small = {f"mv/src{k}": os.urandom(1000 + k) for k in range(N)}
    small.update({f"del/x{k}": os.urandom(2000 + k) for k in range(N)})
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda ix: pick(ix[0]).req("PUT", "c/" + ix[1][0], data=ix[1][1]).status_code,
                              enumerate(small.items())))
    assert set(codes) == {201}, codes
    # Let both instances' cached trees revalidate (default every 2 s), as a
    # client that sends no Cache-Control would see them.
    assert wait_until(lambda: all(c.req("HEAD", "c/" + p).status_code == 200 for c in clients for p in small)), \
        [(c.base, p, st) for c in clients for p in small if (st := c.req("HEAD", "c/" + p).status_code) != 200]

    bodies = {f"d{i}/f{j}": os.urandom(SIZE) for i in range(N) for j in range(N)}
    jobs: list[tuple] = [("PUT", p, body) for p, body in bodies.items()]
    jobs += [("MOVE", f"mv/src{k}", f"mv/dst{k}") for k in range(N)]
    jobs += [("DELETE", f"del/x{k}", None) for k in range(N)]
    random.Random(7).shuffle(jobs)

    def do(ix):
        i, (method, path, arg) = ix
        c = pick(i)
        try:
            if method == "PUT":
                r = c.req("PUT", "c/" + path, data=arg)
            elif method == "MOVE":
                r = c.req("MOVE", "c/" + path, headers={"Destination": "c/" + arg, "Overwrite": "F"})
            else:
                r = c.req("DELETE", "c/" + path)
            return method, path, arg, r.status_code, r.text[:300]
        except requests.RequestException as e:  # not acknowledged
            return method, path, arg, None, repr(e)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(do, enumerate(jobs)))

    acked = [(m, p, arg) for m, p, arg, st, _ in results if st is not None and 200 <= st < 300]
    failed = [(m, p, st, txt) for m, p, _, st, txt in results if st is None or not 200 <= st < 300]
    # Nothing here should fail: path-disjoint writes never conflict.
    assert not failed, failed

    expected: dict[str, str] = {p: sha(body) for p, body in small.items()}
    for m, p, arg in acked:
        if m == "PUT":
            expected[p] = sha(arg)
        elif m == "MOVE":
            expected[arg] = expected.pop(p)
        else:
            expected.pop(p)

    # The catalog itself holds exactly the acknowledged state.
    man = parse_manifest(manifest_of())
    stored = {path: sum(seg[2] for seg in segs) for path, segs in man.files()}
    assert set(stored) == set(expected), (set(stored) ^ set(expected))
    for p, _ in expected.items():
        want = SIZE if p.startswith("d") else (1000 + int(p[-1]) if p.startswith("mv") else 2000 + int(p[-1]))
        assert stored[p] == want, p

    # Every instance serves every acknowledged file with the right bytes, both
    # with an explicit revalidation and after the revalidation interval.
    for c in clients:
        for p, digest in expected.items():
            r = c.req("GET", "c/" + p, headers=FRESH)
            assert r.status_code == 200 and sha(r.content) == digest, (c.base, p, r.status_code)
        for k in range(N):
            assert c.req("GET", f"c/mv/src{k}", headers=FRESH).status_code == 404
            assert c.req("GET", f"c/del/x{k}", headers=FRESH).status_code == 404
        for i in range(N):
            assert listing(c, f"c/d{i}/") == {f"f{j}" for j in range(N)}
        assert listing(c, "c/mv/") == {f"dst{k}" for k in range(N)}
        assert listing(c, "c/del/") == set()
    # Part of what is tested: once the revalidation interval (2 s) has really
    # passed, a request without Cache-Control revalidates and is right too.
    time.sleep(2.2)
    for c in clients:
        for p in random.Random(1).sample(sorted(expected), 12):
            r = c.req("GET", "c/" + p)
            assert r.status_code == 200 and sha(r.content) == expected[p], (c.base, p)

    # Two concurrent PUTs to one path: the result is exactly one of them.
    for rnd in range(6):
        x, y = os.urandom(SIZE), os.urandom(SIZE)
        barrier = threading.Barrier(2)

        def put(c: DavClient, body: bytes):
            barrier.wait()
            return c.req("PUT", f"c/same{rnd % 2}.bin", data=body).status_code

        with ThreadPoolExecutor(2) as pool:
            fx, fy = pool.submit(put, a, x), pool.submit(put, b, y)
            sx, sy = fx.result(), fy.result()
        assert sx in (201, 204) and sy in (201, 204), (sx, sy)
        seen = set()
        for c in clients:
            r = c.req("GET", f"c/same{rnd % 2}.bin", headers=FRESH)
            assert r.status_code == 200
            seen.add(sha(r.content))
        assert len(seen) == 1, "instances disagree about the winner"
        assert seen <= {sha(x), sha(y)}, "the stored body is neither of the two PUTs"
        stored_size = dict((p, sum(s[2] for s in segs)) for p, segs in parse_manifest(manifest_of()).files())
        assert stored_size[f"same{rnd % 2}.bin"] == SIZE


@pytest.mark.slow
def test_two_processes_one_data_dir(tmp_path):
    data = tmp_path / "data"
    servers = [ServerProcess(data, args=["--anonymous", "write"], log_dir=tmp_path / "logs") for _ in range(2)]
    for s in servers:
        s.start()
    try:
        catalog = LocalCatalog(db_path_for(data))

        def manifest_of() -> str:
            rec = catalog.find_by_name("c")
            return catalog.get(rec.uuid).manifest_text or ""

        run_scenario([Client(s.url) for s in servers], manifest_of)
        catalog.close()
        for s in servers:
            assert s.proc.poll() is None, "a server died"
    finally:
        for s in servers:
            s.stop()
    logs = "".join(s.log_text() for s in servers)
    assert "Traceback" not in logs, logs[-3000:]
    assert " 500 " not in logs


@pytest.mark.slow
def test_two_arvados_backends_one_cluster(tmp_path):
    from fake_cluster import arvados_server, fake_cluster

    with fake_cluster(keepstores=2) as fake:
        token = fake.add_user("alice")
        auth = {"Authorization": f"Bearer {token}"}
        # The backends' own retry settings (client_options/keep_options={}).
        kw = dict(client_options={}, keep_options={}, backend_options=dict(block_cache_bytes=64 << 20))
        with arvados_server(fake, tmp_path / "inst0", **kw) as s0, arvados_server(fake, tmp_path / "inst1", **kw) as s1:

            def manifest_of() -> str:
                uuids = [c.uuid for c in fake.collections.values() if c.name == "c" and not c.is_trashed]
                assert len(uuids) == 1, uuids
                return fake.stored_manifest(uuids[0])

            run_scenario([Client(s0.url, auth), Client(s1.url, auth)], manifest_of)
            for s in (s0, s1):
                assert s.app.sessions.budget.used == 0

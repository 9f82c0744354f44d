"""Issue 10 §3: a COPY or MOVE between collections is all-or-nothing.

Each case runs a cross-collection COPY or MOVE (a file, a folder, a whole
collection) while the catalog update of the destination, of the source, or
of both fails, and checks the exact contents of both collections afterwards
and the side stores (dead properties, locks):

- embedded backend: both collections change in one SQLite transaction, so
  any failure leaves both exactly as they were (the fault is raised inside
  the transaction, after the other collection's rows were written);
- Arvados backend (the in-repo fake cluster): the destination is updated
  first and the source only after it, so a failure can leave a copy at the
  destination (answered 5xx, saying so) but never lose the file.
"""

from __future__ import annotations

import contextlib
import uuid as uuidlib
from typing import Any, Callable, Iterator

import pytest
import requests

from davcoll.backends import LocalBackend
from davcoll.storage.catalog import Unavailable
from davcoll.storage.local_catalog import LocalCatalog
from davclient import NO_CACHE, DavClient, parse_multistatus
from fake_cluster import arvados_server, fake_cluster, live_collection, stored_files
from server_util import running_server

MiB = 1 << 20
PROP_NS = "urn:x-test"
PROPPATCH = (
    '<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:x-test"><D:set><D:prop>'
    "<Z:tag>{v}</Z:tag></D:prop></D:set></D:propertyupdate>"
)
PROPFIND = '<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:Z="urn:x-test"><D:prop><Z:tag/></D:prop></D:propfind>'


class Env:
    """A running server plus a way to read what the catalog stores."""

    def __init__(self, srv: Any, headers: dict[str, str], files_of: Callable[[str], dict[str, int]],
                 uuid_of: Callable[[str], str], fail: Callable[[str, int], None], reset: Callable[[], None],
                 atomic: bool) -> None:
        self.srv, self.headers, self.files_of, self.uuid_of = srv, headers, files_of, uuid_of
        self.fail, self.reset, self.atomic = fail, reset, atomic
        self.client = DavClient(srv.url, headers=headers)

    def req(self, method: str, path: str, **kw) -> requests.Response:
        return self.client.req(method, path, **kw)

    def dest(self, method: str, src: str, dst: str, **headers) -> requests.Response:
        return self.req(method, src, headers={"Destination": dst, **headers})

    def prop(self, path: str) -> str | None:
        r = self.client.propfind(path, "0", PROPFIND, headers=NO_CACHE)
        if r.status_code != 207:
            return None
        return parse_multistatus(r)[0].text(f"{{{PROP_NS}}}tag") or None


# ------------------------------------------------------------------ backends


class TxnFault:
    """Fail the embedded catalog's update of one collection *inside* the
    write transaction (after earlier updates of the same transaction ran),
    so the rollback is SQLite's, not a pretend one."""

    def __init__(self) -> None:
        self.remaining: dict[str, int] = {}  # uuid -> failures to inject
        self._orig = LocalCatalog._update_in

    def install(self) -> None:
        fault = self

        def _update_in(cat, conn, u, *a, **kw):
            if fault.remaining.get(u.uuid, 0) > 0:
                fault.remaining[u.uuid] -= 1
                raise Unavailable("injected catalog failure inside the transaction")
            return fault._orig(cat, conn, u, *a, **kw)

        LocalCatalog._update_in = _update_in  # type: ignore[method-assign]

    def uninstall(self) -> None:
        LocalCatalog._update_in = self._orig  # type: ignore[method-assign]


@contextlib.contextmanager
def embedded_env(tmp) -> Iterator[Env]:
    backend = LocalBackend(tmp / "data")
    fault = TxnFault()
    fault.install()
    cat = backend.catalog_

    def uuid_of(name: str) -> str:
        return cat.find_by_name(name).uuid

    def files_of(name: str) -> dict[str, int]:
        rec = cat.find_by_name(name)
        if rec is None:
            return {}
        text = cat.get(rec.uuid).manifest_text or ""
        return stored_files(text)

    def fail(name: str, n: int) -> None:
        fault.remaining[uuid_of(name)] = n

    def reset() -> None:
        fault.remaining.clear()

    try:
        with running_server(tmp / "data", backend_impl=backend) as srv:
            yield Env(srv, {}, files_of, uuid_of, fail, reset, atomic=True)
    finally:
        fault.uninstall()


@contextlib.contextmanager
def arvados_env(tmp) -> Iterator[Env]:
    with fake_cluster(keepstores=1, seed=10) as fake:
        token = fake.add_user("xc")

        def live(name: str):
            return live_collection(fake, name)

        def files_of(name: str) -> dict[str, int]:
            c = live(name)
            if c is None:
                return {}
            return stored_files(fake.stored_manifest(c.uuid))

        def fail(name: str, n: int) -> None:
            fake.faults.fail_next("api", n, status=503, match=f"/arvados/v1/collections/{live(name).uuid}")

        with arvados_server(fake, tmp / "data", client_options=dict(timeout=(1, 5), retries=1, backoff_start=0.01),
                            keep_options={}) as srv:
            yield Env(srv, {"Authorization": f"Bearer {token}"}, files_of, lambda n: live(n).uuid, fail,
                      fake.faults.reset, atomic=False)
            fake.faults.reset()


@pytest.fixture(scope="module", params=["embedded", "arvados"])
def env(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    maker = embedded_env if request.param == "embedded" else arvados_env
    with maker(tmp) as e:
        yield e


def setup_pair(env: Env) -> tuple[str, str]:
    src, dst = "src-" + uuidlib.uuid4().hex[:8], "dst-" + uuidlib.uuid4().hex[:8]
    for c in (src, dst):
        assert env.req("MKCOL", c + "/").status_code == 201
    assert env.req("MKCOL", f"{src}/dir/").status_code == 201
    for path, size in ((f"{src}/f.bin", 3000), (f"{src}/dir/a.bin", 1000), (f"{src}/dir/b.bin", 2 * MiB),
                       (f"{dst}/keep.bin", 10)):
        assert env.req("PUT", path, data=b"x" * size).status_code == 201
    r = env.req("PROPPATCH", f"{src}/f.bin", data=PROPPATCH.format(v="on-src"))
    assert r.status_code == 207, r.text
    return src, dst


CASES = [("COPY", "f.bin", "g.bin"), ("MOVE", "f.bin", "g.bin"), ("COPY", "dir/", "dir2/"), ("MOVE", "dir/", "dir2/")]


@pytest.mark.parametrize("method, src_rel, dst_rel", CASES)
@pytest.mark.parametrize("failing", ["destination", "source", "both"])
def test_cross_collection_failure_loses_nothing(env, method, src_rel, dst_rel, failing):
    src, dst = setup_pair(env)
    before_src, before_dst = env.files_of(src), env.files_of(dst)
    if failing in ("destination", "both"):
        env.fail(dst, 5)
    if failing in ("source", "both"):
        env.fail(src, 5)
    try:
        r = env.dest(method, f"{src}/{src_rel}", f"{dst}/{dst_rel}")
    finally:
        env.reset()
    after_src, after_dst = env.files_of(src), env.files_of(dst)
    src_touched = method == "MOVE"  # a COPY never updates its source
    if failing == "source" and not src_touched:
        assert r.status_code == 201, r.text
        return
    assert r.status_code in (502, 503), r.text
    assert after_src == before_src, "the source changed although the request failed"
    if env.atomic or failing != "source":
        assert after_dst == before_dst, "the destination changed although the request failed"
        copied = False
    else:
        # Arvados, MOVE, the source update failed after the destination's:
        # the copy exists (and the answer says so); nothing is lost.
        copied = True
        moved = {k[len(src_rel):]: v for k, v in before_src.items() if k.startswith(src_rel.rstrip("/"))}
        assert all(after_dst.get(dst_rel.rstrip("/") + k[len(src_rel.rstrip("/")):]) == v
                   for k, v in before_src.items() if k.startswith(src_rel.rstrip("/"))), (moved, after_dst)
        assert "destination" in r.text
    # Side stores: the property stayed on the source, and moved nowhere.
    if src_rel == "f.bin":
        assert env.prop(f"{src}/f.bin") == "on-src"
        if not copied:
            assert env.prop(f"{dst}/{dst_rel}") is None
    # The server keeps serving, and the next try succeeds.
    r = env.dest(method, f"{src}/{src_rel}", f"{dst}/{dst_rel}")
    assert r.status_code in (201, 204), r.text
    final_dst = env.files_of(dst)
    for k, v in before_src.items():
        if k.startswith(src_rel.rstrip("/")):
            assert final_dst[dst_rel.rstrip("/") + k[len(src_rel.rstrip("/")):]] == v
    if method == "MOVE" and src_rel == "f.bin":
        assert env.prop(f"{dst}/{dst_rel}") == "on-src"  # properties follow a successful move


@pytest.mark.parametrize("method", ["MOVE", "COPY"])
def test_collection_onto_existing_collection_failure_keeps_both(env, method):
    """MOVE/COPY /a/ onto an existing /b/: the target is trashed first; when
    the rename/copy fails it must come back, and /a/ must be unchanged."""
    a, b = setup_pair(env)
    before_a, before_b = env.files_of(a), env.files_of(b)
    env.fail(a, 5)  # the rename (MOVE) is an update of a
    if method == "COPY":
        env.fail(b, 0)
    try:
        r = env.dest(method, a + "/", b + "/")
    finally:
        env.reset()
    if method == "COPY" and r.status_code in (201, 204):
        # COPY creates a new collection: a failing update of "a" does not
        # touch it.  Then it must have replaced b with a's content.
        assert env.files_of(b) == before_a
        return
    assert r.status_code in (502, 503), r.text
    assert env.files_of(a) == before_a
    assert env.files_of(b) == before_b, "the existing collection was lost"

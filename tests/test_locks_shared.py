"""Locks and dead properties shared by instances and surviving restarts (issue 12 §6).

Before: locks lived in one process's memory (WsgiDAV's LockStorageDict), so a
LOCK taken through instance 1 was invisible to instance 2 (PUT without the
token → 204, refresh → 412, UNLOCK → 409) and a restart dropped every lock;
Arvados dead properties were per instance.

The shared-store tests run a real ``redis-server`` (Debian package) on a free
loopback port in a temporary directory, and skip only when it is absent.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from davcoll.storage.local_locks import LocalLockStore
from server_util import ServerProcess, free_port, running_server

LOCK_BODY = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
    "<D:locktype><D:write/></D:locktype><D:owner>tester</D:owner></D:lockinfo>"
)
PROPPATCH_BODY = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:test"><D:set><D:prop>'
    "<Z:colour>teal</Z:colour></D:prop></D:set></D:propertyupdate>"
)


# --------------------------------------------------------------- redis-server


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("redis-server exited early")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not answer")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    d = tmp_path_factory.mktemp("redis")
    port = free_port()
    log = open(d / "redis.log", "wb")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_port(port, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture
def redis_url(redis_server):
    import redis

    r = redis.Redis.from_url(redis_server)
    r.flushdb()
    r.close()
    return redis_server


# --------------------------------------------------------------- store contract


def _lock(principal: str = "alice", timeout: float = 60, depth: str = "infinity", scope: str = "exclusive") -> dict:
    return {"type": "write", "scope": scope, "depth": depth, "owner": b"<owner>x</owner>", "timeout": timeout, "principal": principal}


def _stores(kind: str, tmp_path: Path, url: str | None):
    """Two store objects on one backing store (two processes' view of it)."""
    if kind == "sqlite":
        return LocalLockStore(tmp_path / "locks.sqlite3"), LocalLockStore(tmp_path / "locks.sqlite3")
    from davcoll.storage.redis_locks import RedisLockStore

    return RedisLockStore(url), RedisLockStore(url)


@pytest.fixture(params=["sqlite", "redis"])
def two_stores(request, tmp_path):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    a, b = _stores(request.param, tmp_path, url)
    yield a, b
    a.close()
    b.close()


def test_store_contract_seen_by_a_second_store(two_stores):
    a, b = two_stores
    lk = a.create("/by_id/u1/dir/", _lock())
    assert lk["root"] == "/by_id/u1/dir" and lk["token"].startswith("opaquelocktoken:")
    a.create("/by_id/u1/dir/sub/f", _lock("bob", depth="0"))
    a.create("/by_id/u1/dirx", _lock("bob"))  # a sibling sharing the prefix, not a child
    a.create("/by_id/u2", _lock("carol"))
    got = b.get(lk["token"])
    assert got is not None and got["owner"] == b"<owner>x</owner>" and got["principal"] == "alice"
    roots = lambda locks: sorted(x["root"] for x in locks)  # noqa: E731
    assert roots(b.get_lock_list("/by_id/u1/dir", include_root=True, include_children=False, token_only=False)) == ["/by_id/u1/dir"]
    assert roots(b.get_lock_list("/by_id/u1/dir", include_root=False, include_children=True, token_only=False)) == ["/by_id/u1/dir/sub/f"]
    assert roots(b.get_lock_list("/by_id/u1", include_root=True, include_children=True, token_only=False)) == [
        "/by_id/u1/dir", "/by_id/u1/dir/sub/f", "/by_id/u1/dirx"]
    assert len(b.get_lock_list("/", include_root=False, include_children=True, token_only=True)) == 4
    assert b.count_for("bob") == 2 and b.count_for("alice") == 1 and b.count_for("nobody") == 0
    # refresh through the other store
    before = lk["expire"]
    time.sleep(0.01)
    again = b.refresh(lk["token"], timeout=120)
    assert again["expire"] > before and a.get(lk["token"])["timeout"] == 120
    assert b.delete(lk["token"]) is True
    assert a.get(lk["token"]) is None and b.delete(lk["token"]) is False
    assert a.count_for("alice") == 0


def test_store_expiry_and_refresh_of_a_gone_lock(two_stores):
    from davcoll.storage.locks import LockGone

    a, b = two_stores
    lk = a.create("/by_id/u1/f", _lock(timeout=0.3))
    inf = a.create("/by_id/u1/g", _lock(timeout=-1))
    assert inf["expire"] == -1 and b.get(inf["token"]) is not None
    deadline = time.monotonic() + 10
    while b.get(lk["token"]) is not None:
        assert time.monotonic() < deadline, "lock did not expire"
        time.sleep(0.05)
    assert b.get_lock_list("/by_id/u1/f", include_root=True, include_children=False, token_only=True) == []
    assert b.count_for("alice") == 1  # only the infinite one
    with pytest.raises(LockGone):
        b.refresh(lk["token"], timeout=10)


def test_conflicting_exclusive_locks_through_two_stores(two_stores):
    """Check-then-create is atomic across processes: exactly one of many racing
    exclusive LOCKs of one URL wins, whichever store (instance) they use."""
    from wsgidav.dav_error import DAVError

    from davcoll.dav.locks import LockLimits, ScopedLockManager

    managers = [ScopedLockManager(s, LockLimits()) for s in two_stores]
    wins: list[str] = []
    errors: list[int] = []
    start = threading.Barrier(8)

    def attempt(i: int) -> None:
        start.wait()
        try:
            lk = managers[i % 2].acquire(url="/by_id/u1/race", lock_type="write", lock_scope="exclusive", lock_depth="0",
                                         lock_owner=b"", timeout=60, principal=f"p{i}", token_list=[])
            wins.append(lk["token"])
        except DAVError as e:
            errors.append(e.value)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(wins) == 1, wins
    assert errors == [423] * 7


# --------------------------------------------------------------- redis props


def test_redis_property_store(redis_url):
    from davcoll.storage.redis_props import RedisPropertyStore

    a, b = RedisPropertyStore(redis_url), RedisPropertyStore(redis_url)
    try:
        a.set("/by_id/u/d", "{urn:x}a", b"<a>1</a>")
        a.set("/by_id/u/d/f", "{urn:x}b", b"<b>2</b>")
        a.set("/by_id/u/dx", "{urn:x}c", b"<c/>")
        assert b.names("/by_id/u/d") == ["{urn:x}a"] and b.get("/by_id/u/d/f", "{urn:x}b") == b"<b>2</b>"
        b.copy_tree("/by_id/u/d", "/by_id/v/e")
        assert a.get("/by_id/v/e/f", "{urn:x}b") == b"<b>2</b>" and a.get("/by_id/u/d/f", "{urn:x}b") == b"<b>2</b>"
        b.move_tree("/by_id/u/d/", "/by_id/w")
        assert a.names("/by_id/u/d") == [] and a.names("/by_id/u/d/f") == []
        assert a.get("/by_id/w", "{urn:x}a") == b"<a>1</a>" and a.get("/by_id/w/f", "{urn:x}b") == b"<b>2</b>"
        assert a.get("/by_id/u/dx", "{urn:x}c") == b"<c/>"  # a sibling is not part of the subtree
        a.remove("/by_id/w", "{urn:x}a")
        assert b.get("/by_id/w", "{urn:x}a") is None
        b.remove_tree("/by_id/v")
        assert a.names("/by_id/v/e") == [] and a.names("/by_id/v/e/f") == []
        # Bulk reads (one round trip per folder for PROPFIND).
        a.set("/by_id/w/f/deeper", "{urn:x}d", b"<d/>")
        assert b.get_all("/by_id/w/f") == {"{urn:x}b": b"<b>2</b>"}
        assert b.get_children("/by_id/w", 1 << 20) == {"/by_id/w/f": {"{urn:x}b": b"<b>2</b>"}}
        assert b.get_children("/by_id/w", 3) is None  # past max_bytes: the caller falls back
        assert b.get_children("/by_id/nothing", 1 << 20) == {}
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------- two instances, one cluster, one redis


def _auth(tok: str) -> dict:
    return {"Authorization": f"Bearer {tok}"}


def _lock_req(url: str, h: dict, depth: str = "0", timeout: str = "Second-600") -> requests.Response:
    return requests.request("LOCK", url, data=LOCK_BODY, headers={**h, "Depth": depth, "Timeout": timeout,
                                                                  "Content-Type": "application/xml"})


def _token_of(r: requests.Response) -> str:
    return r.headers["Lock-Token"].strip("<>")


def _arvados_instance(fake, tmp_path: Path, name: str, url: str):
    from fake_cluster import arvados_server

    # Test retry defaults: backoff 0.01 s, 2 retries (API and Keep).
    return arvados_server(fake, tmp_path / name, shared_state=url, anonymous="none")


def test_two_arvados_instances_share_locks_and_props(tmp_path, redis_url):
    from fake_cluster import fake_cluster

    with fake_cluster(keepstores=1, seed=3) as fake:
        h = _auth(fake.add_user("alice"))
        with _arvados_instance(fake, tmp_path, "i1", redis_url) as s1, _arvados_instance(fake, tmp_path, "i2", redis_url) as s2:
            assert requests.request("MKCOL", s1.u("docs/"), headers=h).status_code == 201
            assert requests.put(s1.u("docs/a.txt"), data=b"one", headers=h).status_code == 201
            r = _lock_req(s1.u("docs/a.txt"), h)
            assert r.status_code == 200, r.text
            tok = _token_of(r)
            # Conflicting PUT through the other instance (no token): 423.
            assert requests.put(s2.u("docs/a.txt"), data=b"two", headers=h).status_code == 423
            # With the token, through the other instance: allowed.
            r = requests.put(s2.u("docs/a.txt"), data=b"two", headers={**h, "If": f"(<{tok}>)"})
            assert r.status_code == 204, r.text
            # Refresh through the other instance.
            r = requests.request("LOCK", s2.u("docs/a.txt"), headers={**h, "If": f"(<{tok}>)", "Timeout": "Second-900"})
            assert r.status_code == 200, r.text
            # Dead property set through one instance, read through the other.
            r = requests.request("PROPPATCH", s1.u("docs/a.txt"), data=PROPPATCH_BODY, headers={**h, "If": f"(<{tok}>)"})
            assert r.status_code == 207 and "200 OK" in r.text, r.text
            r = requests.request("PROPFIND", s2.u("docs/a.txt"), headers={**h, "Depth": "0"},
                                 data='<D:propfind xmlns:D="DAV:" xmlns:Z="urn:test"><D:prop><Z:colour/></D:prop></D:propfind>')
            assert r.status_code == 207 and "teal" in r.text, r.text
            # Lock discovery is the same on both.
            r = requests.request("PROPFIND", s2.u("docs/a.txt"), headers={**h, "Depth": "0"},
                                 data='<D:propfind xmlns:D="DAV:"><D:prop><D:lockdiscovery/></D:prop></D:propfind>')
            assert tok in r.text
        # Restart instance 1: the lock is still there (it lives in Redis).
        with _arvados_instance(fake, tmp_path, "i1", redis_url) as s1, _arvados_instance(fake, tmp_path, "i2", redis_url) as s2:
            assert requests.put(s1.u("docs/a.txt"), data=b"three", headers=h).status_code == 423
            r = requests.request("UNLOCK", s2.u("docs/a.txt"), headers={**h, "Lock-Token": f"<{tok}>"})
            assert r.status_code == 204, r.text
            assert requests.put(s1.u("docs/a.txt"), data=b"three", headers=h).status_code == 204
            assert requests.get(s2.u("docs/a.txt"), headers={**h, "Cache-Control": "no-cache"}).content == b"three"


# --------------------------------------------------------------- embedded: data directory


def test_embedded_lock_survives_restart(tmp_path):
    data = tmp_path / "data"
    with running_server(data) as s:
        assert requests.request("MKCOL", s.u("c/")).status_code == 201
        assert requests.put(s.u("c/f.txt"), data=b"x").status_code == 201
        r = _lock_req(s.u("c/"), {}, depth="infinity")
        assert r.status_code == 200, r.text
        tok = _token_of(r)
    with running_server(data) as s:
        assert requests.put(s.u("c/f.txt"), data=b"y").status_code == 423
        assert requests.put(s.u("c/f.txt"), data=b"y", headers={"If": f"(<{tok}>)"}).status_code == 204
        r = requests.request("UNLOCK", s.u("c/"), headers={"Lock-Token": f"<{tok}>"})
        assert r.status_code == 204
        assert requests.put(s.u("c/f.txt"), data=b"z").status_code == 204


@pytest.mark.slow
def test_two_processes_on_one_data_dir_share_locks(tmp_path):
    data = tmp_path / "data"
    servers = [ServerProcess(data, args=["--anonymous", "write"], log_dir=tmp_path / "logs") for _ in range(2)]
    try:
        for s in servers:
            s.start()
        p1, p2 = (s.url for s in servers)
        assert requests.request("MKCOL", p1 + "c/").status_code == 201
        assert requests.put(p1 + "c/f.txt", data=b"x").status_code == 201
        r = _lock_req(p1 + "c/f.txt", {})
        assert r.status_code == 200, r.text
        tok = _token_of(r)
        assert requests.put(p2 + "c/f.txt", data=b"y").status_code == 423
        # A conflicting LOCK through the other process is refused too.
        assert _lock_req(p2 + "c/f.txt", {}).status_code == 423
        r = requests.request("LOCK", p2 + "c/f.txt", headers={"If": f"(<{tok}>)", "Timeout": "Second-100"})
        assert r.status_code == 200, r.text
        r = requests.request("UNLOCK", p2 + "c/f.txt", headers={"Lock-Token": f"<{tok}>"})
        assert r.status_code == 204
        assert requests.put(p1 + "c/f.txt", data=b"z").status_code == 204
    finally:
        for s in servers:
            s.stop()
    logs = "".join(s.log_text() for s in servers)
    assert "Traceback" not in logs, logs[-3000:]


def test_unreachable_shared_store_is_503_not_500(tmp_path):
    """Redis down: requests that need the lock table get 503 + Retry-After with a reason."""
    pytest.importorskip("redis")
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with running_server(tmp_path / "data") as s:
        assert requests.request("MKCOL", s.u("c/"), timeout=60).status_code == 201
        assert requests.put(s.u("c/f"), data=b"old", timeout=60).status_code == 201
    with running_server(tmp_path / "data", shared_state=dead) as s:
        for method, path, body in (("LOCK", "c/f", None), ("PUT", "c/f", b"x"), ("MKCOL", "d/", None)):
            if method == "LOCK":
                r = _lock_req(s.u(path), {})
            else:
                r = requests.request(method, s.u(path), data=body, timeout=60)
            assert r.status_code == 503, (method, r.status_code, r.text)
            assert "shared state" in r.text and r.headers.get("Retry-After")
        assert requests.get(s.u("c/f"), timeout=30).content == b"old"  # reads need no lock table

"""Sustained mixed load: no errors, no lost writes (issue 7, scenario 5).

64 keep-alive connections (one per client thread) against a ``davcoll serve``
process on loopback for ``DAVCOLL_LOAD_SECONDS`` (default 60): reads of
shared files (whole and ranged, checked byte for byte), HEAD, PROPFIND
Depth 1, and writes (PUT, MOVE, DELETE) of each client's own files in two
collections.  Every response must have the expected status and content;
afterwards every client's files are exactly what its last acknowledged
writes left.  p50/p99 latency and throughput are printed (run with ``-s``
to see them, or read the captured stdout of a failure).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import statistics
import threading
import time
from collections import Counter, defaultdict

import pytest

from server_util import ServerProcess

CLIENTS = 64
SECONDS = float(os.environ.get("DAVCOLL_LOAD_SECONDS", "60"))
SHARED = 40  # shared files per collection
OWN = 4  # file slots per client


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class Conn:
    """One keep-alive connection (http.client reopens it only after a
    response that said ``Connection: close``; a dropped connection is an
    error)."""

    def __init__(self, port: int) -> None:
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        self.c.request(method, path, body=body, headers=headers or {})
        r = self.c.getresponse()
        data = r.read()
        if r.getheader("Connection", "").lower() == "close":
            self.c.close()
        return r.status, data, r


@pytest.mark.slow
def test_mixed_load(tmp_path):
    srv = ServerProcess(tmp_path / "data", args=["--anonymous", "write"], log_dir=tmp_path / "logs").start()
    try:
        run_load(srv)
    finally:
        srv.stop()
    log = srv.log_text()
    assert "Traceback" not in log, log[-4000:]


def run_load(srv: ServerProcess) -> None:
    rng = random.Random(5)
    setup = Conn(srv.port)
    shared: dict[str, bytes] = {}
    for c in ("l0", "l1"):
        assert setup.request("MKCOL", f"/{c}/")[0] == 201
        for i in range(SHARED):
            body = rng.randbytes(rng.choice([4096, 65536, 300_000, 1 << 20]) + i)
            path = f"/{c}/s{i:02d}.bin"
            assert setup.request("PUT", path, body)[0] == 201
            shared[path] = body
    for t in range(CLIENTS):
        assert setup.request("MKCOL", f"/l{t % 2}/w{t}/")[0] == 201
    shared_paths = sorted(shared)
    digests = {p: sha(b) for p, b in shared.items()}

    deadline = time.monotonic() + SECONDS
    lat: dict[str, list[float]] = defaultdict(list)
    counts: Counter = Counter()
    errors: list[str] = []
    bytes_moved = [0]
    lock = threading.Lock()
    final: dict[str, str | None] = {}  # own path -> sha of the last acknowledged content (None: absent)
    start = threading.Barrier(CLIENTS)

    def client(t: int) -> None:
        r = random.Random(1000 + t)
        conn = Conn(srv.port)
        mine: dict[str, bytes | None] = {f"/l{t % 2}/w{t}/f{k}.bin": None for k in range(OWN)}
        my_lat: dict[str, list[float]] = defaultdict(list)
        moved = 0
        start.wait()
        while time.monotonic() < deadline:
            x = r.random()
            try:
                t0 = time.perf_counter()
                if x < 0.50:
                    op = "GET"
                    p = r.choice(shared_paths)
                    st, data, _ = conn.request("GET", p)
                    ok = st == 200 and sha(data) == digests[p]
                elif x < 0.60:
                    op = "GET-range"
                    p = r.choice(shared_paths)
                    n = len(shared[p])
                    a = r.randrange(n)
                    b = min(n - 1, a + r.randrange(1, 200_000))
                    st, data, _ = conn.request("GET", p, headers={"Range": f"bytes={a}-{b}"})
                    ok = st == 206 and data == shared[p][a:b + 1]
                elif x < 0.65:
                    op = "HEAD"
                    p = r.choice(shared_paths)
                    st, data, resp = conn.request("HEAD", p)
                    ok = st == 200 and int(resp.getheader("Content-Length")) == len(shared[p])
                elif x < 0.70:
                    op = "PROPFIND"
                    st, data, _ = conn.request("PROPFIND", f"/l{r.randrange(2)}/", headers={"Depth": "1"})
                    ok = st == 207 and b"s00.bin" in data
                elif x < 0.90:
                    op = "PUT"
                    p = r.choice(sorted(mine))
                    body = r.randbytes(r.choice([1024, 16384, 65536, 262144]))
                    st, data, _ = conn.request("PUT", p, body)
                    ok = st == (204 if mine[p] is not None else 201)
                    if ok:
                        mine[p] = body
                    data = body
                elif x < 0.95:
                    op = "MOVE"
                    have = [p for p, v in mine.items() if v is not None]
                    if not have:
                        continue
                    src = r.choice(have)
                    dst = r.choice([p for p in mine if p != src])
                    st, data, _ = conn.request("MOVE", src, headers={
                        "Destination": f"http://127.0.0.1:{srv.port}{dst}", "Overwrite": "T"})
                    ok = st == (204 if mine[dst] is not None else 201)
                    if ok:
                        mine[dst], mine[src] = mine[src], None
                    data = b""
                else:
                    op = "DELETE"
                    p = r.choice(sorted(mine))
                    st, data, _ = conn.request("DELETE", p)
                    ok = st == (204 if mine[p] is not None else 404)
                    if ok:
                        mine[p] = None
                dt = time.perf_counter() - t0
                my_lat[op].append(dt)
                moved += len(data)
                if not ok:
                    with lock:
                        errors.append(f"client {t}: {op} -> {st}")
            except Exception as e:  # noqa: BLE001 - every failure is an error here
                with lock:
                    errors.append(f"client {t}: {type(e).__name__}: {e}")
                conn = Conn(srv.port)
        with lock:
            for k, v in my_lat.items():
                lat[k].extend(v)
                counts[k] += len(v)
            bytes_moved[0] += moved
            for p, v in mine.items():
                final[p] = sha(v) if v is not None else None

    t_start = time.monotonic()
    threads = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(CLIENTS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=SECONDS + 180)
    elapsed = time.monotonic() - t_start
    assert not any(th.is_alive() for th in threads), "a client hung"

    allv = sorted(v for vs in lat.values() for v in vs)
    total = len(allv)

    def pct(vals: list[float], q: float) -> float:
        return vals[min(len(vals) - 1, int(q * len(vals)))] * 1000 if vals else 0.0

    lines = [
        f"load: {CLIENTS} connections, {elapsed:.1f} s, {total} requests, {total / elapsed:.0f} req/s, "
        f"{bytes_moved[0] / elapsed / 1e6:.1f} MB/s of bodies; latency p50 {pct(allv, 0.5):.1f} ms, "
        f"p99 {pct(allv, 0.99):.1f} ms, max {allv[-1] * 1000 if allv else 0:.0f} ms; errors {len(errors)}",
    ]
    for op in sorted(lat):
        vs = sorted(lat[op])
        lines.append(f"  {op:9s} n={len(vs):6d}  p50 {pct(vs, 0.5):7.1f} ms  p99 {pct(vs, 0.99):7.1f} ms  "
                     f"mean {statistics.fmean(vs) * 1000:7.1f} ms")
    print("\n".join(lines))

    assert not errors, errors[:20]
    assert total > CLIENTS * 10
    assert counts["PUT"] > 0 and counts["GET"] > 0

    # Every client's files are what its acknowledged writes left, as seen by a
    # fresh connection after revalidation.
    check = Conn(srv.port)
    for p, digest in sorted(final.items()):
        st, data, _ = check.request("GET", p, headers={"Cache-Control": "no-cache"})
        if digest is None:
            assert st == 404, (p, st)
        else:
            assert st == 200 and sha(data) == digest, (p, st)
    st, _, _ = check.request("GET", "/_metrics")
    assert st == 200

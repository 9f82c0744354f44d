"""Benchmark: GET of one file in a 200k-file collection after ``revalidate_seconds`` idle.

Usage: ``python bench/bench_arvados_revalidate.py [--files 200000] [--rounds 5] [--revalidate 1.0]``

davcoll (Arvados backend) and the fake cluster run in this process.  One
collection holds ``--files`` files (1,000 per directory, all pointing into
one small stored block).  After a first GET loads the tree, each round waits
``--revalidate`` seconds (so the cached tree is due for revalidation) and
times one GET of one file.  Issue 12 item 1 target: <= 50 ms, because an
unchanged collection costs one small API call.

Two rows are printed: ``after`` is the code as it is; ``before`` patches
``ArvadosCatalog.revision`` back to the pre-fix key ``(portable_data_hash,
version)``, which never matched the key the session stored, so every
revalidation downloaded and parsed the whole manifest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from davcoll.backends import ArvadosBackend  # noqa: E402
from davcoll.config import load_config  # noqa: E402
from davcoll.server import build_app, make_server  # noqa: E402
from davcoll.storage import arvados_api  # noqa: E402
from davcoll.testing.fake_arvados import FakeArvados  # noqa: E402


def _old_revision(self, uuid):
    """The pre-fix revision key (for the 'before' row only)."""
    data = self.client.get(self._coll_path(uuid), select=["portable_data_hash", "modified_at", "version"])
    return (data.get("portable_data_hash") or data.get("modified_at") or "", int(data.get("version") or 1))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe_path(files: int) -> str:
    """The file the GETs read: d00007/f00042, or one that exists in a smaller collection."""
    ndirs = (files + 999) // 1000
    return f"d{min(7, ndirs - 1):05d}/f{min(42, files - 1 - 1000 * min(7, ndirs - 1)):05d}"


def run(fake: FakeArvados, token: str, uuid: str, rounds: int, revalidate: float,
        path: str = "d00007/f00042") -> tuple[float, list[float], int]:
    """``(first GET seconds, idle GET seconds per round, API calls per idle GET)``."""
    with tempfile.TemporaryDirectory() as tmp:
        backend = ArvadosBackend(fake.api_url, data_dir=tmp)
        port = _free_port()
        cfg = load_config(None, data_dir=tmp, listen=f"127.0.0.1:{port}", backend="arvados",
                          arvados_api_host=fake.api_url, anonymous="none", revalidate_seconds=revalidate)
        app = build_app(cfg, backend=backend)
        server = make_server(app, "127.0.0.1", port, threads=8, timeout=30)
        server.prepare()
        t = threading.Thread(target=server.serve, daemon=True)
        t.start()
        try:
            url = f"http://127.0.0.1:{port}/by_id/{uuid}/{path}"
            h = {"Authorization": f"Bearer {token}"}
            with requests.Session() as http:
                t0 = time.perf_counter()
                r = http.get(url, headers=h)
                first = time.perf_counter() - t0
                assert r.status_code == 200 and r.content == b"benchmark block", r.status_code
                times = []
                calls = 0
                for _ in range(rounds):
                    time.sleep(revalidate * 1.05)
                    n0 = len(fake.requests_for("api"))
                    t0 = time.perf_counter()
                    r = http.get(url, headers=h)
                    times.append(time.perf_counter() - t0)
                    calls = len(fake.requests_for("api")) - n0
                    assert r.status_code == 200, r.status_code
        finally:
            server.stop()
            t.join(timeout=10)
            app.close()
    return first, times, calls


def big_collection(fake: FakeArvados, files: int) -> tuple[str, str, int]:
    """One user and one collection of ``files`` files (1,000 per directory, all
    pointing into one small stored block): (token, collection uuid, manifest bytes)."""
    token = fake.add_user("bench")
    loc = fake.sign(fake.store_block(b"benchmark block"), token)
    per_dir = 1000
    lines = []
    for d in range((files + per_dir - 1) // per_dir):
        n = min(per_dir, files - d * per_dir)
        lines.append(f"./d{d:05d} {loc} " + " ".join(f"0:15:f{j:05d}" for j in range(n)) + "\n")
    cat = arvados_api.ArvadosCatalog(arvados_api.ArvadosClient(fake.api_url, token))
    rec = cat.create("big", "".join(lines))
    cat.close()
    fake.clear_requests()
    return token, rec.uuid, sum(map(len, lines))


def measure(fake: FakeArvados, token: str, uuid: str, rounds: int, revalidate: float,
            label: str = "after", path: str = "d00007/f00042") -> tuple[float, list[float], int]:
    """``run`` with the code as it is (``after``) or the pre-fix revision key (``before``)."""
    current = arvados_api.ArvadosCatalog.revision
    arvados_api.ArvadosCatalog.revision = _old_revision if label == "before" else current
    try:
        return run(fake, token, uuid, rounds, revalidate, path)
    finally:
        arvados_api.ArvadosCatalog.revision = current


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--revalidate", type=float, default=1.0, help="revalidate_seconds of the server")
    p.add_argument("--only", choices=["before", "after"], default=None)
    args = p.parse_args(argv)
    with FakeArvados(keepstores=2) as fake:
        token, uuid, size = big_collection(fake, args.files)
        print(f"collection: {args.files} files, manifest {size / 1e6:.1f} MB; "
              f"revalidate_seconds={args.revalidate}")
        print(f"{'code':<8} {'first GET':>10} {'idle GET median':>16} {'max':>8} {'API calls':>10}  (goal <= 50 ms)")
        for label in ("before", "after"):
            if args.only and label != args.only:
                continue
            first, times, calls = measure(fake, token, uuid, args.rounds, args.revalidate, label,
                                          probe_path(args.files))
            med = statistics.median(times)
            print(f"{label:<8} {first * 1000:>8.0f}ms {med * 1000:>14.1f}ms {max(times) * 1000:>6.0f}ms {calls:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

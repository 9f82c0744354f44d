"""Server memory per PROPFIND Depth 1 of one very large folder.

Usage: ``python bench/bench_propfind_rss.py [--files N] [--concurrency 1,4] [--mode allprop|prop]``

A collection holding one folder of ``--files`` files (100,000 by default;
synthetic manifest from ``bench/synth.py`` stored straight into the embedded
catalog, no blocks behind it) is served by ``davcoll serve`` in a child
process.  For each concurrency level a *fresh* server is started (so an
earlier run's freed-but-kept heap cannot hide growth), the collection is
loaded with Depth 0 PROPFINDs of the folder and of one of its files (that
puts the folder's entries in the tree cache, which is shared and stays), and then ``c`` clients each send one Depth 1
PROPFIND of the folder at the same time and read the whole 207 body.

Printed per level: baseline RSS after the warm-up, the peak RSS sampled at
20 Hz during the requests, the growth (peak - baseline) in total and per
request, the wall time, the body size, whether the reply was chunked, and
the number of ``<response>`` elements each client counted.  The target from
issue 11 is a growth of at most 50 MiB per request.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from davcoll.manifest import parse_stream  # noqa: E402
from procs import RssSampler, davcoll_server  # noqa: E402
from synth import synth_manifest  # noqa: E402
from workloads import create_collections  # noqa: E402

COLLECTION = "big"
FOLDER = "batch_000/dir_000000"  # synth.py's name for directory 0
BODY = {
    "allprop": b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>',
    "prop": (b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
             b"<D:resourcetype/><D:getcontentlength/><D:getlastmodified/><D:getetag/></D:prop></D:propfind>"),
}


def propfind(port: int, path: str, depth: str, body: bytes, out: dict) -> None:
    """One PROPFIND, reading the body in 64 KiB pieces (never holding it whole)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("PROPFIND", quote(path), body=body, headers={"Depth": depth, "Content-Type": "application/xml"})
    r = c.getresponse()
    out["status"] = r.status
    out["chunked"] = (r.getheader("Transfer-Encoding") or "").lower() == "chunked"
    n = responses = 0
    tail = b""
    while True:
        piece = r.read(65536)
        if not piece:
            break
        n += len(piece)
        buf = tail + piece
        responses += buf.count(b"<D:response") - tail.count(b"<D:response")
        tail = buf[-16:]
    out["bytes"] = n
    out["responses"] = responses
    c.close()


def prepare(data: Path, nfiles: int) -> tuple[str, str]:
    """Store the one-folder collection in the embedded catalog at ``data``:
    (the folder's URL path, the name of one of its files)."""
    text = synth_manifest(1, nfiles, seed=7)
    create_collections(data, {COLLECTION: text})
    first = parse_stream(text.splitlines()[0], 1)[1][0][0]
    return f"/{COLLECTION}/{FOLDER}/", first


def measure_level(data: Path, logs: Path, path: str, first: str, conc: int, mode: str) -> dict:
    """``conc`` simultaneous Depth-1 PROPFINDs of ``path`` against a fresh server on ``data``."""
    with davcoll_server(data, logs) as srv:
        # Warm-up: Depth 0 of one file loads the folder into the tree cache,
        # which stays (it is not per-request memory).
        for target in (path, path + first):
            warm: dict = {}
            propfind(srv.port, target, "0", BODY[mode], warm)
            assert warm["status"] == 207, warm
        time.sleep(0.5)
        base = srv.rss_kib()
        outs = [dict() for _ in range(conc)]
        threads = [threading.Thread(target=propfind, args=(srv.port, path, "1", BODY[mode], o)) for o in outs]
        t0 = time.monotonic()
        with RssSampler(srv.pid) as s:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        dt = time.monotonic() - t0
        return {
            "conc": conc, "base_mib": base / 1024, "peak_mib": s.peak_kib / 1024,
            "growth_mib": (s.peak_kib - base) / 1024, "per_req_mib": (s.peak_kib - base) / 1024 / conc,
            "seconds": dt, "statuses": sorted({o.get("status") for o in outs}),
            "mb": outs[0].get("bytes", 0) / 1e6, "chunked": all(o.get("chunked") for o in outs),
            "responses": [o.get("responses") for o in outs],
        }


def run_level(work: Path, nfiles: int, conc: int, mode: str) -> dict:
    data = work / f"data-{conc}"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    path, first = prepare(data, nfiles)
    return measure_level(data, work / "logs", path, first, conc, mode)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--concurrency", default="1,4")
    p.add_argument("--mode", choices=sorted(BODY), default="allprop")
    p.add_argument("--workdir")
    a = p.parse_args()
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="bench-propfind-"))
    try:
        print(f"PROPFIND Depth 1 of one folder with {a.files:,} files ({a.mode}); fresh server per row")
        print(f"{'clients':>7} {'base MiB':>9} {'peak MiB':>9} {'growth':>8} {'per req':>8} {'secs':>7} "
              f"{'body MB':>8} {'chunked':>7}  status/responses")
        for conc in [int(x) for x in a.concurrency.split(",")]:
            r = run_level(work, a.files, conc, a.mode)
            print(f"{r['conc']:>7} {r['base_mib']:>9.1f} {r['peak_mib']:>9.1f} {r['growth_mib']:>8.1f} "
                  f"{r['per_req_mib']:>8.1f} {r['seconds']:>7.2f} {r['mb']:>8.1f} {str(r['chunked']):>7}  "
                  f"{r['statuses']} {r['responses']}", flush=True)
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

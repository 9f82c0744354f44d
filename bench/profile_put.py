"""Profile one server during big PUTs (and GETs) with py-spy (issue 14 §3).

Starts ``davcoll serve`` (embedded backend) on a throwaway data dir, runs
``py-spy record`` on it while the bench client PUTs (or GETs) a big file a
few times, and prints the MB/s of each transfer plus the md5 rate of one
core measured next to them, so a change to the upload path can be judged
against the same bound as ``bench/run.py`` scenario 2 uses.

    .venv/bin/pip install py-spy
    python bench/profile_put.py --size 1024 --reps 3 --mode length --svg /tmp/put.svg

Without ``--svg`` (or when py-spy is missing) it only measures.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from client import Client, Payload, expect  # noqa: E402
from procs import davcoll_server, reference_server  # noqa: E402


def md5_mbps(nbytes: int = 256 << 20) -> float:
    data = bytes(range(256)) * (nbytes // 256)
    t = time.perf_counter()
    hashlib.md5(data, usedforsecurity=False)
    return nbytes / (time.perf_counter() - t) / 1e6


def user_sys(pid: int) -> tuple[float, float, int]:
    """User and system CPU seconds of a process so far, and its minor page faults."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick, int(fields[7])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="MiB per transfer")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mode", choices=["length", "chunked", "get"], default="length")
    ap.add_argument("--server", choices=["davcoll", "reference"], default="davcoll")
    ap.add_argument("--svg", help="py-spy flame graph output (omit: measure only)")
    ap.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    ap.add_argument("--format", default="raw", help="py-spy output format (raw: collapsed stacks; flamegraph)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="davcoll-prof-"))
    try:
        if args.server == "davcoll":
            srv = davcoll_server(work / "data", work / "logs")
        else:
            (work / "root").mkdir()
            srv = reference_server(work / "root", work / "logs")
        srv.start()
        spy = None
        try:
            c = Client(srv.url, srv.headers)
            expect(c.request("MKCOL", "/p/"), 201, 405)
            size = args.size << 20
            if args.mode == "get":
                expect(c.put_payload("/p/big.bin", Payload(1, size)), 201, 204)
            if args.svg and shutil.which("py-spy"):
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(srv.pid), "--threads", "--idle",
                                        "--rate", str(args.rate), "--output", args.svg, "--format", args.format])
                time.sleep(1.0)
            for rep in range(args.reps):
                bound = md5_mbps()
                cpu0 = srv.cpu_seconds()
                ut0, st0, pf0 = user_sys(srv.pid)
                if args.mode == "get":
                    r = expect(c.get("/p/big.bin"), 200)
                else:
                    r = expect(c.put_payload(f"/p/big{rep}.bin", Payload(100 + rep, size),
                                             chunked=args.mode == "chunked"), 201, 204)
                cpu = srv.cpu_seconds() - cpu0
                ut, st, pf = user_sys(srv.pid)
                mbps = size / r.seconds / 1e6
                print(f"{args.mode} rep {rep}: {mbps:.0f} MB/s, md5 bound {bound:.0f} MB/s, "
                      f"ratio {mbps / bound:.2f}, server CPU {cpu / (size / 2**30):.2f} s/GiB "
                      f"(user {(ut - ut0) / (size / 2**30):.2f}, sys {(st - st0) / (size / 2**30):.2f}; "
                      f"{(pf - pf0) / (size / 2**30):.0f} minor faults per GiB)", flush=True)
            c.close()
        finally:
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
                spy.wait(timeout=60)
            srv.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

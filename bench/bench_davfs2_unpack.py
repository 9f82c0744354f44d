"""Unpack a 2,450-file tree through a davfs2 mount: davcoll vs the reference.

Usage::

    python bench/bench_davfs2_unpack.py [--files 2450] [--repeat 3] [--json out.json]

Issue 14 §4: through davfs2, unpacking a tree costs a LOCK (lock-null:
creates the file), PUT, UNLOCK and often a MOVE and DELETE per file, so
the per-request cost of metadata methods decides the wall time.  This
starts both servers (``davcoll serve``, embedded backend, anonymous write;
``bench/refserver.py`` with WsgiDAV's in-memory property manager), mounts
each with davfs2 (private davfs2.conf with ``buf_size 64`` and
``delay_upload 0``, private cache dir, a dummy secrets entry: both servers
allow anonymous writes), and times ``tar -xf`` of a generated tarball into the
mount *plus the unmount*: davfs2 uploads on close and finishes its queue at
unmount, so only then is everything on the server.  Repetitions alternate
which server goes first; every repetition uses a fresh mount and directory.
A few files are read back over HTTP afterwards.

Needs root, /dev/fuse and mount.davfs (Debian package davfs2).  When
mounting is not possible it prints ``skipped: <reason>`` and exits 0.
Mount daemons are stopped by PID if unmounting leaves them running.

``run(...)`` is also scenario 12 of ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # davcoll.testing

from client import Client, expect  # noqa: E402
from davcoll.testing.davfs2 import Davfs2Mount, MountNotPermitted, is_mounted  # noqa: E402
from procs import ServerProc, davcoll_server, reference_server  # noqa: E402

UMOUNT_TIMEOUT = 600.0  # the unmount uploads whatever davfs2 still holds


class Skip(Exception):
    """Mounting davfs2 is not possible here (reason in the message)."""


def make_tarball(path: Path, files: int, seed: int = 14) -> int:
    """A tar of ``files`` small files (50 per directory, two levels, 100 B to
    8 KiB, like a source tree); returns the total payload bytes."""
    rng = random.Random(seed)
    total = 0
    with tarfile.open(path, "w") as tar:
        for i in range(files):
            d = i // 50
            name = f"tree/pkg{d // 7:02d}/mod{d:03d}/file{i:05d}.txt"
            size = rng.choice((100, 300, 700, 1500, 3000, 8000))
            data = rng.randbytes(size)
            info = tarfile.TarInfo(name)
            info.size = size
            info.mtime = 1_700_000_000
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
            total += size
    return total


def check_preconditions() -> None:
    if os.name != "posix" or os.geteuid() != 0:
        raise Skip("mounting davfs2 needs root")
    if shutil.which("mount.davfs") is None and not os.path.exists("/sbin/mount.davfs"):
        raise Skip("mount.davfs is not installed (Debian package davfs2)")
    if not os.path.exists("/dev/fuse"):
        raise Skip("/dev/fuse is missing")


def unpack_once(srv: ServerProc, base_path: str, tarball: Path, work: Path, names: list[str]) -> dict[str, float]:
    """Mount ``srv`` at ``base_path``, untar into it, unmount; check some files."""
    work.mkdir(parents=True)
    # Both servers allow anonymous writes and never ask; the secrets entry
    # keeps mount.davfs from prompting for a user name.
    m = Davfs2Mount(work, srv.url.rstrip("/") + base_path, "anonymous", "none", umount_timeout=UMOUNT_TIMEOUT)
    try:
        m.mount()
    except MountNotPermitted as e:
        raise Skip(str(e)) from None
    cpu0 = srv.cpu_seconds()
    try:
        t0 = time.perf_counter()
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(m.mnt), "--no-same-owner", "-m"], check=True,
                       capture_output=True, timeout=3600)
        t_tar = time.perf_counter() - t0
        m.umount()
        t_all = time.perf_counter() - t0
    finally:
        m.stop_daemon(0 if not is_mounted(m.mnt) else UMOUNT_TIMEOUT)
    cpu = srv.cpu_seconds() - cpu0
    c = Client(srv.url, srv.headers)
    with tarfile.open(tarball) as tar:
        for name in names:
            want = tar.extractfile(name).read()  # type: ignore[union-attr]
            r = expect(c.get(base_path + name, keep_body=True), 200, what=f"{srv.name} GET {name}")
            if r.body != want:
                raise RuntimeError(f"{srv.name}: {name} read back wrong ({len(r.body)} bytes, want {len(want)})")
    c.close()
    shutil.rmtree(work, ignore_errors=True)
    return {"tar_s": t_tar, "total_s": t_all, "server_cpu_s": cpu}


def run(work: Path, *, files: int = 2450, repeat: int = 3, log=print) -> dict:
    """Both servers, ``repeat`` unpacks each; raises ``Skip`` if davfs2 cannot mount."""
    check_preconditions()
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # davfs2's own user must reach the mount's cache
    tarball = work / "tree.tar"
    nbytes = make_tarball(tarball, files)
    with tarfile.open(tarball) as tar:
        members = [m.name for m in tar.getmembers() if m.isfile()]
    names = [members[0], members[len(members) // 2], members[-1]]
    logs = work / "logs"
    servers = [davcoll_server(work / "davcoll-data", logs),
               reference_server(work / "reference-root", logs, extra=["--property-manager", "memory"])]
    out: dict = {"files": files, "bytes": nbytes, "davcoll": [], "reference": []}
    started: list[ServerProc] = []
    try:
        for s in servers:
            started.append(s.start())
        for rep in range(repeat):
            for srv in (servers if rep % 2 == 0 else servers[::-1]):
                # davcoll: a collection per repetition (top-level names are
                # collections); the reference: a directory.
                base = f"/unpack{rep}/"
                c = Client(srv.url, srv.headers)
                expect(c.request("MKCOL", base), 201, what=f"{srv.name} MKCOL")
                c.close()
                os.sync()
                res = unpack_once(srv, base, tarball, work / f"m-{srv.name}-{rep}", names)
                log(f"davfs2 unpack {srv.name} rep {rep}: tar {res['tar_s']:.1f} s, with unmount "
                    f"{res['total_s']:.1f} s, server CPU {res['server_cpu_s']:.1f} s")
                out[srv.name].append(res)
    finally:
        for s in started:
            s.stop()
    return out


def summary(res: dict) -> dict[str, float]:
    d = statistics.median(r["total_s"] for r in res["davcoll"])
    r = statistics.median(x["total_s"] for x in res["reference"])
    return {"davcoll_s": d, "reference_s": r, "ratio": d / r}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2450)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="write all samples here")
    p.add_argument("--workdir", help="work directory (default: a temp dir under /tmp, removed after)")
    args = p.parse_args(argv)
    own = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="davcoll-davfs2-bench-", dir="/tmp"))
    try:
        res = run(work, files=args.files, repeat=args.repeat)
    except Skip as e:
        print(f"skipped: {e}")
        return 0
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    s = summary(res)
    print(f"davfs2 unpack of {args.files} files ({res['bytes'] / 1e6:.1f} MB), tar + unmount, median of "
          f"{args.repeat}: davcoll {s['davcoll_s']:.1f} s, reference {s['reference_s']:.1f} s, "
          f"davcoll÷reference {s['ratio']:.2f} (goal ≤ 1.2)")
    if args.json:
        Path(args.json).write_text(json.dumps({**res, "summary": s}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

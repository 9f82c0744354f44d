"""The benchmark scenarios of issue 6, each run against davcoll and the reference.

Every scenario starts its own fresh server processes (davcoll with the
embedded backend and ``bench/refserver.py``) on their own data, repeats its
measurement ``ctx.repeat`` times, alternating which server goes first in
each repetition so that slow phases of a noisy machine hit both alike, and
returns ``Row`` objects holding every sample.  Nothing here asserts; the
verdicts are computed from the targets and printed by ``bench/run.py``.

Ratios compare speeds, davcoll ÷ reference: for a throughput that is the
ratio of the rates, for a time it is reference time ÷ davcoll time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from client import (MIB, NAMED_PROPS, Client, Payload, count_responses, disk_write_rate, expect, fsync_rate,
                    md5_rate)
from procs import ServerProc, davcoll_server, reference_server
from workloads import create_collections, dir_path, materialize, synth_tree

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------
# Sizes, results, context


@dataclass(frozen=True)
class Sizes:
    big: int  # scenarios 1, 2, 6, 8 (GET), 10
    huge: int  # scenario 8 (PUT)
    small_count: int  # scenario 3
    small_size: int
    s4_ns: tuple[int, ...]  # scenario 4 collection sizes
    s4_puts: int  # timed PUTs per (N, server, repetition)
    s5_files: int  # scenario 5 directory size
    s7_files: int  # scenario 7 collection size
    par_clients: int  # scenario 9
    par_files: int
    par_size: int
    md5_bytes: int
    arv_big: int  # scenario 10's big file (the fake cluster keeps blocks in memory)
    warm_puts: int  # small PUTs before timing small PUTs (scenarios 3, 4)
    meta_files: int = 300  # scenario 11: files per repetition in the LOCK/PUT/UNLOCK/PROPPATCH/MOVE/DELETE mix
    # Scenarios 12-16 (bench/scenarios_limits.py: the rows issues 10-12 ask for)
    attack: tuple[int, int, int] = (1000, 1000, 200)  # 12: silent, slow-header, stalled-body connections
    attack_probes: int = 5  # 12: fresh GETs per repetition while the attack is on
    attack_probe_timeout: float = 5.0  # 12: seconds before a fresh GET counts as unanswered
    propfind_files: int = 100_000  # 13: entries in the one folder listed with Depth 1
    pdh_collections: int = 20  # 14: collections × files, all changed since their PDH was computed
    pdh_files: int = 20_000
    pdh_commits: int = 200  # 14: timed commits per phase and repetition (at least)
    pdh_seconds: float = 5.0  # 14: the commits-during-lookups phase lasts at least this long
    revalidate_files: int = 200_000  # 15: files in the Arvados collection
    revalidate_rounds: int = 5  # 15: idle GETs (each after revalidate_seconds)
    record_files: int = 1_000_000  # 16: files in the collection whose .arvados#collection is read


FULL = Sizes(big=1 << 30, huge=4 << 30, small_count=1000, small_size=4096, s4_ns=(0, 10_000, 100_000), s4_puts=40,
             s5_files=10_000, s7_files=1_000_000, par_clients=16, par_files=64, par_size=256 << 10, md5_bytes=512 * MIB,
             arv_big=512 * MIB, warm_puts=600)
QUICK = Sizes(big=128 * MIB, huge=256 * MIB, small_count=300, small_size=4096, s4_ns=(0, 1_000, 10_000), s4_puts=20,
              s5_files=2_000, s7_files=100_000, par_clients=16, par_files=16, par_size=256 << 10, md5_bytes=128 * MIB,
              arv_big=64 * MIB, warm_puts=200, meta_files=100, attack=(100, 100, 20), attack_probes=2,
              attack_probe_timeout=2.0,
              propfind_files=2_000, pdh_collections=5, pdh_files=4_000, pdh_commits=30, pdh_seconds=1.0,
              revalidate_files=20_000, revalidate_rounds=3, record_files=100_000)


def human_size(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def human_count(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def spread(xs: list[float]) -> float | None:
    """(max - min) / median, as a fraction."""
    if len(xs) < 2:
        return None
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / m if m else None


@dataclass
class Row:
    scenario: str
    workload: str
    metric: str
    davcoll: list[float]
    reference: list[float] = field(default_factory=list)
    bound: float | None = None  # physical bound in the row's unit (md5 rate of one core)
    ratio: float | None = None
    ratio_of: str = ""  # what ``ratio`` divides
    target: str = ""
    verdict: str = "report"  # pass | MISS | report
    note: str = ""

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["davcoll_median"] = med(self.davcoll)
        d["reference_median"] = med(self.reference)
        d["davcoll_spread"] = spread(self.davcoll)
        d["reference_spread"] = spread(self.reference)
        return d


def verdict(ok: bool | None) -> str:
    return "report" if ok is None else ("pass" if ok else "MISS")


def speed_row(scenario: str, workload: str, metric: str, d: list[float], r: list[float], *, min_ratio: float | None,
              time_metric: bool = False, bound: float | None = None, note: str = "") -> Row:
    """A row whose ratio is davcoll speed ÷ reference speed."""
    md, mr = med(d), med(r)
    ratio = None
    if md and mr:
        ratio = (mr / md) if time_metric else (md / mr)
    ok = None if min_ratio is None or ratio is None else ratio >= min_ratio
    target = f"≥ {min_ratio:g} × ref" if min_ratio is not None else ""
    return Row(scenario, workload, metric, d, r, bound, ratio, "ref÷davcoll time" if time_metric else "davcoll÷ref",
               target, verdict(ok), note)


def bound_row(scenario: str, workload: str, metric: str, d: list[float], r: list[float], bound: float, *,
              min_ratio: float | None, note: str = "") -> Row:
    """A throughput row judged against a physical bound (davcoll ÷ bound)."""
    md = med(d)
    ratio = md / bound if md and bound else None
    ok = None if min_ratio is None or ratio is None else ratio >= min_ratio
    target = f"≥ {min_ratio:g} × md5" if min_ratio is not None else ""
    return Row(scenario, workload, metric, d, r, bound, ratio, "davcoll÷md5", target, verdict(ok), note)


def limit_row(scenario: str, workload: str, metric: str, d: list[float], r: list[float], limit: float | None, *,
              note: str = "", ratio: float | None = None, ratio_of: str = "") -> Row:
    """A row judged by an absolute upper limit on davcoll's median."""
    md = med(d)
    ok = None if limit is None or md is None else md <= limit
    target = f"≤ {limit:g} {metric}" if limit is not None else ""
    return Row(scenario, workload, metric, d, r, None, ratio, ratio_of, target, verdict(ok), note)


class Ctx:
    def __init__(self, sizes: Sizes, repeat: int, work: Path, keep: bool = False) -> None:
        self.sizes = sizes
        self.repeat = repeat
        self.work = work
        self.keep = keep
        self.md5_bps: float | None = None  # bytes/s, set by scenario 0
        self.disk_mbps: float | None = None
        self.fsync_per_s: float | None = None
        self.t0 = time.monotonic()
        self.extra: dict[str, object] = {}  # raw numbers beyond the rows, for the JSON file

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    def fresh(self, name: str) -> Path:
        p = self.work / name
        if p.exists():
            shutil.rmtree(p)
        p.mkdir(parents=True)
        return p

    def cleanup(self, path: Path) -> None:
        if not self.keep:
            shutil.rmtree(path, ignore_errors=True)

    def record_cpu(self, key: str, server: str, value: float) -> None:
        """Server CPU per unit of work (kept in the JSON, quoted in notes)."""
        self.extra.setdefault("server_cpu", {}).setdefault(key, {}).setdefault(server, []).append(value)

    def cpu(self, key: str, server: str) -> float | None:
        return med(self.extra.get("server_cpu", {}).get(key, {}).get(server, []))

    def cpu_note(self, key: str, unit: str, scale: float = 1.0) -> str:
        d, r = self.cpu(key, "davcoll"), self.cpu(key, "reference")
        parts = [f"{name} {v * scale:.2f}" for name, v in (("davcoll", d), ("reference", r)) if v is not None]
        return f"server CPU {unit}: " + ", ".join(parts) if parts else ""

    def sample_md5(self, label: str) -> None:
        """Measure the md5 rate again next to a measurement (the machine's speed drifts)."""
        rate = md5_rate(self.sizes.md5_bytes // 4, seed=7) / 1e6
        self.extra.setdefault("md5_adjacent_MBps", {}).setdefault(label, []).append(rate)

    def md5_mbps(self, label: str | None = None) -> float:
        """md5 MB/s measured next to ``label``'s measurements, else at the start of the run."""
        near = self.extra.get("md5_adjacent_MBps", {}).get(label) if label else None
        if near:
            return statistics.median(near)
        assert self.md5_bps is not None
        return self.md5_bps / 1e6


def alternate(rep: int, servers: list[ServerProc]) -> list[ServerProc]:
    return servers if rep % 2 == 0 else servers[::-1]


def sync_disk() -> None:
    """Flush dirty pages so a timed transfer does not pay for the previous one's writeback."""
    os.sync()


def client(srv: ServerProc) -> Client:
    return Client(srv.url, srv.headers)


def mkcol(srv: ServerProc, path: str) -> None:
    c = client(srv)
    try:
        expect(c.request("MKCOL", path), 201, 405, what=f"{srv.name} MKCOL {path}")
    finally:
        c.close()


@contextlib.contextmanager
def server_pair(ctx: Ctx, name: str, *, collections: dict[str, str] | None = None,
                ref_setup: Callable[[Path], None] | None = None) -> Iterator[tuple[Path, Path, Path]]:
    """Fresh davcoll data dir and reference root (pre-populated), removed afterwards.

    Yields (davcoll data dir, reference root, log dir); servers are started
    by the caller (some scenarios restart them)."""
    base = ctx.fresh(name)
    data, root, logs = base / "davcoll", base / "reference", base / "logs"
    root.mkdir()
    logs.mkdir()
    try:
        if collections:
            create_collections(data, collections)
        if ref_setup:
            ref_setup(root)
        yield data, root, logs
    finally:
        ctx.cleanup(base)


@contextlib.contextmanager
def running(*servers: ServerProc) -> Iterator[list[ServerProc]]:
    started: list[ServerProc] = []
    try:
        for s in servers:
            started.append(s.start())
        yield started
    finally:
        for s in started:
            s.stop()


@contextlib.contextmanager
def embedded_and_reference(ctx: Ctx, name: str, **kw) -> Iterator[list[ServerProc]]:
    with server_pair(ctx, name, **kw) as (data, root, logs):
        with running(davcoll_server(data, logs), reference_server(root, logs)) as servers:
            yield servers


# ---------------------------------------------------------------------------
# Measurements shared by the embedded scenarios and scenario 10


def measure_get(ctx: Ctx, servers: list[ServerProc], coll: str = "g", size: int | None = None,
                label: str = "1") -> dict[str, list[float]]:
    """MB/s of GETs of one ``big`` file (written first, verified once untimed)."""
    size = size or ctx.sizes.big
    payload = Payload(1, size)
    want = payload.md5()
    for srv in servers:
        mkcol(srv, f"/{coll}/")
        c = client(srv)
        expect(c.put_payload(f"/{coll}/big.bin", payload), 201, 204, what=f"{srv.name} PUT")
        h = hashlib.md5(usedforsecurity=False)
        r = expect(c.get(f"/{coll}/big.bin", sink=h.update), 200, what=f"{srv.name} GET")
        if r.nbytes != size or h.hexdigest() != want:
            raise RuntimeError(f"{srv.name}: GET returned wrong content ({r.nbytes} bytes)")
        c.close()
    out: dict[str, list[float]] = {s.name: [] for s in servers}
    for rep in range(ctx.repeat):
        ctx.sample_md5(label)
        for srv in alternate(rep, servers):
            sync_disk()
            c = client(srv)
            cpu0 = srv.cpu_seconds()
            r = expect(c.get(f"/{coll}/big.bin"), 200, what=f"{srv.name} GET")
            ctx.record_cpu(label, srv.name, (srv.cpu_seconds() - cpu0) / (size / 2**30))
            c.close()
            assert r.nbytes == size
            out[srv.name].append(size / r.seconds / 1e6)
    return out


def measure_put(ctx: Ctx, servers: list[ServerProc], coll: str = "p",
                size: int | None = None, label: str = "2") -> dict[str, dict[str, list[float]]]:
    """MB/s of PUTs of a ``big`` file, with Content-Length and chunked (1 MiB chunks)."""
    size = size or ctx.sizes.big
    out: dict[str, dict[str, list[float]]] = {s.name: {"length": [], "chunked": []} for s in servers}
    for srv in servers:
        mkcol(srv, f"/{coll}/")
    for rep in range(ctx.repeat):
        for mode in ("length", "chunked"):
            ctx.sample_md5(label)
            for srv in alternate(rep, servers):
                sync_disk()
                payload = Payload(1000 + rep * 2 + (mode == "chunked"), size)
                c = client(srv)
                cpu0 = srv.cpu_seconds()
                r = expect(c.put_payload(f"/{coll}/big_{mode}_{rep}.bin", payload, chunked=mode == "chunked"),
                           201, 204, what=f"{srv.name} PUT {mode}")
                ctx.record_cpu(f"{label}{mode}", srv.name, (srv.cpu_seconds() - cpu0) / (size / 2**30))
                c.close()
                out[srv.name][mode].append(size / r.seconds / 1e6)
    return out


def warm_puts(srv: ServerProc, count: int, size: int = 4096) -> None:
    """Small PUTs into a warm-up collection: connection set-up, first-use code
    paths and on-disk directories (davcoll's 256 block fan-out directories are
    created, with an fsync each, on first use), so that timed runs see the
    steady state of a server that has been in use."""
    mkcol(srv, "/warm/")
    c = client(srv)
    for i in range(count):
        expect(c.put_payload(f"/warm/w{i:05d}.bin", Payload(-1 - i, size)), 201, 204, what=f"{srv.name} warm PUT")
    c.close()


def measure_small_puts(ctx: Ctx, servers: list[ServerProc], label: str = "3") -> dict[str, list[float]]:
    """Requests/s of ``small_count`` sequential small PUTs on one keep-alive connection."""
    n, size = ctx.sizes.small_count, ctx.sizes.small_size
    out: dict[str, list[float]] = {s.name: [] for s in servers}
    for srv in servers:
        warm_puts(srv, ctx.sizes.warm_puts)
    for rep in range(ctx.repeat):
        for srv in alternate(rep, servers):
            coll = f"/small_{rep}/"
            mkcol(srv, coll)
            c = client(srv)
            payloads = [Payload(rep * 1_000_000 + i, size) for i in range(n)]
            cpu0 = srv.cpu_seconds()
            t0 = time.perf_counter()
            for i, p in enumerate(payloads):
                r = c.put_payload(f"{coll}f{i:04d}.bin", p)
                if r.status not in (201, 204):
                    raise RuntimeError(f"{srv.name}: small PUT {i}: HTTP {r.status} {r.body[:200]!r}")
            dt = time.perf_counter() - t0
            ctx.record_cpu(label, srv.name, (srv.cpu_seconds() - cpu0) / n)
            c.close()
            out[srv.name].append(n / dt)
    return out


def parallel_round(srv: ServerProc, coll: str, clients: int, files: int, size: int, seed: int) -> dict:
    cpu = [srv.cpu_seconds()]
    res = _parallel_round(srv, coll, clients, files, size, seed, cpu)
    gib = clients * files * size / 2**30
    res["put_cpu_per_gib"] = (cpu[1] - cpu[0]) / gib
    res["get_cpu_per_gib"] = (cpu[3] - cpu[2]) / gib
    return res


def _parallel_round(srv: ServerProc, coll: str, clients: int, files: int, size: int, seed: int,
                    cpu: list[float]) -> dict:
    """``clients`` threads each PUT ``files`` files into ``coll``, then GET and check them."""
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1, timeout=900)

    def err(msg: str) -> None:
        with lock:
            errors.append(msg)

    def worker(k: int) -> None:
        c = client(srv)
        names = [(f"{coll}c{k:02d}_f{i:03d}.bin", Payload(seed + k * files + i, size)) for i in range(files)]
        barrier.wait()
        for path, p in names:
            try:
                r = c.put_payload(path, p)
                if r.status not in (201, 204):
                    err(f"PUT {path}: HTTP {r.status}")
            except Exception as e:  # noqa: BLE001 - counted as an error, then carry on
                err(f"PUT {path}: {e!r}")
                c.close()
                c = client(srv)
        barrier.wait()
        barrier.wait()
        for path, p in names:
            try:
                r = c.get(path, keep_body=True)
                if r.status != 200:
                    err(f"GET {path}: HTTP {r.status}")
                elif r.body != p.bytes():
                    err(f"GET {path}: wrong content ({len(r.body)} bytes)")
            except Exception as e:  # noqa: BLE001
                err(f"GET {path}: {e!r}")
                c.close()
                c = client(srv)
        barrier.wait()
        c.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    total = clients * files * size
    barrier.wait()
    cpu[0] = srv.cpu_seconds()
    t0 = time.perf_counter()
    barrier.wait()
    t_put = time.perf_counter() - t0
    cpu.append(srv.cpu_seconds())
    barrier.wait()
    cpu.append(srv.cpu_seconds())
    t0 = time.perf_counter()
    barrier.wait()
    t_get = time.perf_counter() - t0
    cpu.append(srv.cpu_seconds())
    for t in threads:
        t.join()
    return {"put_mbps": total / t_put / 1e6, "get_mbps": total / t_get / 1e6, "errors": errors}


def measure_parallel(ctx: Ctx, servers: list[ServerProc], label: str = "9") -> dict[str, dict[str, list]]:
    s = ctx.sizes
    out: dict[str, dict[str, list]] = {srv.name: {"put": [], "get": [], "errors": []} for srv in servers}
    for rep in range(ctx.repeat):
        ctx.sample_md5(label)
        for srv in alternate(rep, servers):
            coll = f"/par_{rep}/"
            mkcol(srv, coll)
            res = parallel_round(srv, coll, s.par_clients, s.par_files, s.par_size, seed=9_000_000 + rep * 100_000)
            out[srv.name]["put"].append(res["put_mbps"])
            out[srv.name]["get"].append(res["get_mbps"])
            out[srv.name]["errors"].append(len(res["errors"]))
            ctx.record_cpu(f"{label}put", srv.name, res["put_cpu_per_gib"])
            ctx.record_cpu(f"{label}get", srv.name, res["get_cpu_per_gib"])
            if res["errors"]:
                ctx.extra.setdefault("parallel_errors", []).append(
                    {"server": srv.name, "url": srv.url, "rep": rep, "errors": res["errors"][:50]})
                ctx.log(f"{srv.name}: {len(res['errors'])} errors, first: {res['errors'][:3]}")
    return out


# ---------------------------------------------------------------------------
# Scenarios


def s0_bounds(ctx: Ctx) -> list[Row]:
    """Physical bounds, measured in this run: md5 on one core, and the disk under the work dir."""
    reps = range(max(3, ctx.repeat))
    rates = [md5_rate(ctx.sizes.md5_bytes, seed=k) / 1e6 for k in reps]
    ctx.md5_bps = statistics.median(rates) * 1e6
    disk = []
    for k in reps:
        sync_disk()
        disk.append(disk_write_rate(str(ctx.work), ctx.sizes.big, seed=k) / 1e6)
    fs = [fsync_rate(str(ctx.work)) for _ in reps]
    ctx.disk_mbps = statistics.median(disk)
    ctx.fsync_per_s = statistics.median(fs)
    return [
        Row("0a", f"hashlib.md5, one core, {human_size(ctx.sizes.md5_bytes)}", "MB/s", rates,
            note="the bound for anything that must hash"),
        Row("0b", f"disk: sequential write of {human_size(ctx.sizes.big)} + fdatasync", "MB/s", disk,
            note="the bound for a PUT that is durable before its 2xx"),
        Row("0c", "disk: create + write 4 KiB + fsync", "ops/s", fs,
            note="one durable small write; a small davcoll PUT makes one (the catalog commit, which holds its block)"),
    ]


def s1_get(ctx: Ctx) -> list[Row]:
    with embedded_and_reference(ctx, "s1") as servers:
        res = measure_get(ctx, servers)
    return [speed_row("1", f"GET {human_size(ctx.sizes.big)} file", "MB/s", res["davcoll"], res["reference"],
                      min_ratio=0.9, bound=ctx.md5_mbps("1"),
                      note="davcoll verifies each block as it reads it, against the xxh3-128 digest recorded "
                           "at write time (md5 only for blocks without one); " + ctx.cpu_note("1", "s per GiB"))]


def s2_put(ctx: Ctx) -> list[Row]:
    with embedded_and_reference(ctx, "s2") as servers:
        res = measure_put(ctx, servers)
    b = ctx.md5_mbps("2")
    size = human_size(ctx.sizes.big)

    def note(mode: str) -> str:
        d, r = med(res["davcoll"][mode]), med(res["reference"][mode])
        return (f"davcoll÷reference {d / r:.2f}; davcoll÷disk bound (0b, {ctx.disk_mbps:.0f} MB/s) "
                f"{d / ctx.disk_mbps:.2f}; the reference does not fsync; " + ctx.cpu_note(f"2{mode}", "s per GiB"))

    return [
        bound_row("2a", f"PUT {size}, Content-Length", "MB/s", res["davcoll"]["length"], res["reference"]["length"],
                  b, min_ratio=0.8, note=note("length")),
        bound_row("2b", f"PUT {size}, chunked (1 MiB chunks)", "MB/s", res["davcoll"]["chunked"],
                  res["reference"]["chunked"], b, min_ratio=0.8, note=note("chunked")),
    ]


def s3_small(ctx: Ctx) -> list[Row]:
    with embedded_and_reference(ctx, "s3") as servers:
        res = measure_small_puts(ctx, servers)
    s = ctx.sizes
    return [speed_row("3", f"{s.small_count} × {human_size(s.small_size)} PUT, one keep-alive connection", "req/s",
                      res["davcoll"], res["reference"], min_ratio=0.8, bound=ctx.fsync_per_s,
                      note="bound: fsync'd 4 KiB writes/s (0c); davcoll makes each PUT durable before its 2xx, "
                           "the reference never fsyncs; " + ctx.cpu_note("3", "ms per PUT", 1000))]


def s4_put_latency(ctx: Ctx) -> list[Row]:
    """Latency of one small PUT vs the size of the collection (and, extra, of the directory).

    Collections of N files, 100 per directory; every PUT goes into the same
    directory (``batch_000/dir_000000``: 100 files when N > 0, created empty
    when N = 0).  An extra report-only case puts into a collection whose
    single directory already holds ``s5_files`` files.
    """
    s = ctx.sizes
    ns = s.s4_ns
    target = dir_path(0)
    cases = [(f"n{n}", f"N={human_count(n)}") for n in ns] + [("wide", f"dir={human_count(s.s5_files)}")]
    texts = {f"n{n}": synth_tree(n, seed=40 + i) for i, n in enumerate(ns)}
    texts["wide"] = synth_tree(s.s5_files, seed=49, files_per_dir=s.s5_files)

    def ref_setup(root: Path) -> None:
        for name, text in texts.items():
            (root / name).mkdir()
            materialize(text, root / name)
            (root / name / target).mkdir(parents=True, exist_ok=True)

    keys = [k for k, _ in cases]
    p50: dict[str, dict[str, list[float]]] = {"davcoll": {k: [] for k in keys}, "reference": {k: [] for k in keys}}
    p90: dict[str, dict[str, list[float]]] = {"davcoll": {k: [] for k in keys}, "reference": {k: [] for k in keys}}
    ctx.log(f"s4: creating collections of {', '.join(human_count(n) for n in ns)} files")
    with embedded_and_reference(ctx, "s4", collections=texts, ref_setup=ref_setup) as servers:
        if 0 in ns:  # an empty collection has no directories yet
            mkcol(servers[0], f"/n0/{target.split('/')[0]}/")
            mkcol(servers[0], f"/n0/{target}/")
        for srv in servers:  # warm-up: connections, code paths, block fan-out directories
            warm_puts(srv, ctx.sizes.warm_puts)
        for rep in range(ctx.repeat):
            for srv in alternate(rep, servers):
                # One connection per case, PUTs interleaved across the cases, so
                # that slow phases of the disk hit every N alike.
                conns = {key: client(srv) for key in keys}
                lat: dict[str, list[float]] = {key: [] for key in keys}
                for key, c in conns.items():
                    base = f"/{key}/{target}/"
                    expect(c.propfind(base, "0"), 207, what=f"{srv.name} PROPFIND")  # opens the collection
                    expect(c.put_payload(f"{base}warm_{rep}.bin", Payload(7, s.small_size)), 201, 204, what="PUT")
                for i in range(s.s4_puts):
                    order = keys if i % 2 == 0 else keys[::-1]
                    for key in order:
                        r = conns[key].put_payload(f"/{key}/{target}/new_{rep}_{i:04d}.bin",
                                                   Payload(rep * 10_000 + i, s.small_size))
                        expect(r, 201, 204, what=f"{srv.name} PUT into {key}")
                        lat[key].append(r.seconds * 1000)
                for key, c in conns.items():
                    c.close()
                    xs = sorted(lat[key])
                    p50[srv.name][key].append(statistics.median(xs))
                    p90[srv.name][key].append(xs[int(0.9 * (len(xs) - 1))])
    ctx.extra["s4_p50_ms"] = p50
    ctx.extra["s4_p90_ms"] = p90
    rows = []
    size = human_size(s.small_size)
    ids = iter("abcdefghij")
    for key, label in cases:
        what = (f"one {size} PUT into a collection of {label[2:]} files (100 per dir), p50" if key != "wide" else
                f"extra: one {size} PUT into a directory of {label[4:]} files, p50")
        rows.append(Row(f"4{next(ids)}", what, "ms", p50["davcoll"][key], p50["reference"][key],
                        note=f"p90 davcoll {med(p90['davcoll'][key]):.1f} ms, reference {med(p90['reference'][key]):.1f} ms"))
    lo, hi = keys[0], keys[len(ns) - 1]

    def per_rep_ratio(kind: str, a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(p50[kind][a], p50[kind][b])]

    dr, rr = per_rep_ratio("davcoll", hi, lo), per_rep_ratio("reference", hi, lo)
    md = med(dr)
    rows.append(Row(f"4{next(ids)}", f"p50 ratio N={human_count(ns[-1])} ÷ N={human_count(ns[0])} (per repetition)", "×", dr, rr,
                    ratio=md, ratio_of=f"N={human_count(ns[-1])}÷N=0", target="≤ 2",
                    verdict=verdict(md is not None and md <= 2)))
    dw, rw = per_rep_ratio("davcoll", "wide", lo), per_rep_ratio("reference", "wide", lo)
    rows.append(Row(f"4{next(ids)}", f"extra: p50 ratio dir={human_count(s.s5_files)} ÷ N=0 (per repetition)", "×", dw, rw,
                    ratio=med(dw), ratio_of=f"dir={human_count(s.s5_files)}÷N=0",
                    note="catalog updates cost the change, not the directory (per-entry history)"))
    return rows


def s5_propfind(ctx: Ctx) -> list[Row]:
    nfiles = ctx.sizes.s5_files
    text = synth_tree(nfiles, seed=5, files_per_dir=nfiles)
    path = f"/p5/{dir_path(0)}/"
    times: dict[str, dict[str, list[float]]] = {"davcoll": {"named": [], "allprop": []},
                                                "reference": {"named": [], "allprop": []}}
    sizes: dict[str, dict[str, int]] = {"davcoll": {}, "reference": {}}

    def ref_setup(root: Path) -> None:
        materialize(text, root / "p5")

    with embedded_and_reference(ctx, "s5", collections={"p5": text}, ref_setup=ref_setup) as servers:
        for srv in servers:  # warm-up and sanity check: every entry listed
            c = client(srv)
            for mode, body in (("named", NAMED_PROPS), ("allprop", b"")):
                r = expect(c.propfind(path, "1", body), 207, what=f"{srv.name} PROPFIND")
                if count_responses(r.body) != nfiles + 1:
                    raise RuntimeError(f"{srv.name}: PROPFIND listed {count_responses(r.body)} entries, not {nfiles + 1}")
                sizes[srv.name][mode] = len(r.body)
            c.close()
        for rep in range(ctx.repeat):
            for mode, body in (("named", NAMED_PROPS), ("allprop", b"")):
                for srv in alternate(rep, servers):
                    c = client(srv)
                    r = expect(c.propfind(path, "1", body), 207, what=f"{srv.name} PROPFIND")
                    c.close()
                    times[srv.name][mode].append(r.seconds)
    ctx.extra["s5_response_bytes"] = sizes
    n = human_count(nfiles)
    return [
        speed_row("5a", f"PROPFIND Depth 1, {n} files, named props", "s", times["davcoll"]["named"],
                  times["reference"]["named"], min_ratio=1.0, time_metric=True,
                  note=f"response {sizes['davcoll']['named'] / 1e6:.1f} MB vs {sizes['reference']['named'] / 1e6:.1f} MB"),
        speed_row("5b", f"PROPFIND Depth 1, {n} files, allprop", "s", times["davcoll"]["allprop"],
                  times["reference"]["allprop"], min_ratio=1.0, time_metric=True,
                  note=f"response {sizes['davcoll']['allprop'] / 1e6:.1f} MB vs {sizes['reference']['allprop'] / 1e6:.1f} MB"),
    ]


def s6_copy_move(ctx: Ctx) -> list[Row]:
    size = ctx.sizes.big
    ops = ("copy", "move", "copy_x", "move_x")
    ms: dict[str, dict[str, list[float]]] = {"davcoll": {o: [] for o in ops}, "reference": {o: [] for o in ops}}
    with embedded_and_reference(ctx, "s6") as servers:
        for srv in servers:
            mkcol(srv, "/c6/")
            mkcol(srv, "/c6b/")
            c = client(srv)
            expect(c.put_payload("/c6/big.bin", Payload(6, size)), 201, 204, what=f"{srv.name} PUT")
            c.close()
        for rep in range(ctx.repeat):
            for srv in alternate(rep, servers):
                sync_disk()
                c = client(srv)
                steps = (
                    ("copy", "COPY", "/c6/big.bin", f"/c6/copy_{rep}.bin"),
                    ("move", "MOVE", f"/c6/copy_{rep}.bin", f"/c6/moved_{rep}.bin"),
                    ("copy_x", "COPY", "/c6/big.bin", f"/c6b/copy_{rep}.bin"),
                    ("move_x", "MOVE", f"/c6/moved_{rep}.bin", f"/c6b/moved_{rep}.bin"),
                )
                for op, method, src, dst in steps:
                    r = expect(c.copy_move(method, src, dst), 201, 204, what=f"{srv.name} {method}")
                    ms[srv.name][op].append(r.seconds * 1000)
                for p in (f"/c6b/copy_{rep}.bin", f"/c6b/moved_{rep}.bin"):
                    expect(c.request("DELETE", p), 204, what=f"{srv.name} DELETE")
                c.close()
    n = human_size(size)
    labels = {"copy": f"COPY a {n} file (same collection)", "move": f"MOVE a {n} file (same collection)",
              "copy_x": f"COPY a {n} file into another collection",
              "move_x": f"MOVE a {n} file into another collection"}
    return [limit_row(f"6{c}", labels[o], "ms", ms["davcoll"][o], ms["reference"][o], 50.0) for c, o in zip("abcd", ops)]


def s7_open_big(ctx: Ctx) -> list[Row]:
    nfiles = ctx.sizes.s7_files
    ctx.log(f"s7: generating a {human_count(nfiles)}-file collection")
    text = synth_tree(nfiles, seed=7)
    ndirs = nfiles // 100
    path = f"/big/{dir_path(ndirs // 2)}/"
    cold: dict[str, list[float]] = {"davcoll": [], "reference": []}
    warm: dict[str, list[float]] = {"davcoll": [], "reference": []}
    rss: dict[str, list[float]] = {"davcoll": [], "reference": []}

    def ref_setup(root: Path) -> None:
        ctx.log(f"s7: materializing {human_count(nfiles)} files for the reference")
        materialize(text, root / "big")

    with server_pair(ctx, "s7", collections={"big": text}, ref_setup=ref_setup) as (data, root, logs):
        del text
        for rep in range(ctx.repeat):
            for kind in (("davcoll", "reference") if rep % 2 == 0 else ("reference", "davcoll")):
                srv = davcoll_server(data, logs) if kind == "davcoll" else reference_server(root, logs)
                with running(srv):
                    c = client(srv)
                    r = expect(c.propfind(path, "1", NAMED_PROPS), 207, what=f"{kind} PROPFIND")
                    cold[kind].append(r.seconds)
                    if count_responses(r.body) != 101:
                        raise RuntimeError(f"{kind}: listed {count_responses(r.body)} entries, not 101")
                    r = expect(c.propfind(path, "1", NAMED_PROPS), 207, what=f"{kind} PROPFIND")
                    warm[kind].append(r.seconds * 1000)
                    c.close()
                    rss[kind].append(srv.rss_kib() / 1024)
    n = human_count(nfiles)
    return [
        limit_row("7a", f"fresh server: open a {n}-file collection + PROPFIND D1 of a 100-file dir", "s",
                  cold["davcoll"], cold["reference"], 1.0),
        limit_row("7b", "the same PROPFIND again (collection open)", "ms", warm["davcoll"], warm["reference"], None),
        limit_row("7c", f"server RSS after opening the {n}-file collection", "MiB", rss["davcoll"], rss["reference"],
                  None),
    ]


def s8_memory(ctx: Ctx) -> list[Row]:
    s = ctx.sizes
    put_peak: dict[str, list[float]] = {"davcoll": [], "reference": []}
    get_peak: dict[str, list[float]] = {"davcoll": [], "reference": []}
    rates: dict[str, dict[str, list[float]]] = {"davcoll": {"put": [], "get": []}, "reference": {"put": [], "get": []}}
    with server_pair(ctx, "s8") as (data, root, logs):

        def make(kind: str) -> ServerProc:
            return davcoll_server(data, logs) if kind == "davcoll" else reference_server(root, logs)

        for kind in ("davcoll", "reference"):
            with running(make(kind)) as (srv,):
                mkcol(srv, "/m/")
                c = client(srv)
                expect(c.put_payload("/m/get.bin", Payload(8, s.big)), 201, 204, what=f"{kind} PUT")
                c.close()
        for rep in range(ctx.repeat):
            for kind in (("davcoll", "reference") if rep % 2 == 0 else ("reference", "davcoll")):
                sync_disk()
                with running(make(kind)) as (srv,):  # fresh process: VmHWM covers this PUT only
                    c = client(srv)
                    r = expect(c.put_payload(f"/m/huge_{rep}.bin", Payload(80 + rep, s.huge)), 201, 204,
                               what=f"{kind} PUT huge")
                    c.close()
                    put_peak[kind].append(srv.hwm_kib() / 1024)
                    rates[kind]["put"].append(s.huge / r.seconds / 1e6)
                    c = client(srv)
                    expect(c.request("DELETE", f"/m/huge_{rep}.bin"), 204, what=f"{kind} DELETE")
                    c.close()
                sync_disk()
                with running(make(kind)) as (srv,):
                    c = client(srv)
                    r = expect(c.get("/m/get.bin"), 200, what=f"{kind} GET")
                    c.close()
                    get_peak[kind].append(srv.hwm_kib() / 1024)
                    rates[kind]["get"].append(s.big / r.seconds / 1e6)
    ctx.extra["s8_rates_mbps"] = rates
    note_put = f"PUT ran at {med(rates['davcoll']['put']):.0f} MB/s (reference {med(rates['reference']['put']):.0f})"
    note_get = f"GET ran at {med(rates['davcoll']['get']):.0f} MB/s (reference {med(rates['reference']['get']):.0f})"
    return [
        limit_row("8a", f"peak RSS of a fresh server during a {human_size(s.huge)} PUT", "MiB", put_peak["davcoll"],
                  put_peak["reference"], 300.0, note=note_put),
        limit_row("8b", f"peak RSS of a fresh server during a {human_size(s.big)} GET", "MiB", get_peak["davcoll"],
                  get_peak["reference"], 200.0, note=note_get),
    ]


def s9_parallel(ctx: Ctx) -> list[Row]:
    s = ctx.sizes
    with embedded_and_reference(ctx, "s9") as servers:
        res = measure_parallel(ctx, servers)
    what = f"{s.par_clients} clients × {s.par_files} × {human_size(s.par_size)}"
    d, r = res["davcoll"], res["reference"]
    errs = sum(d["errors"])
    return [
        speed_row("9a", f"{what} PUT into one collection, aggregate", "MB/s", d["put"], r["put"], min_ratio=0.7,
                  bound=ctx.md5_mbps("9"), note=ctx.cpu_note("9put", "s per GiB")),
        speed_row("9b", f"{what} GET back (content checked), aggregate", "MB/s", d["get"], r["get"], min_ratio=0.7,
                  note=ctx.cpu_note("9get", "s per GiB")),
        Row("9c", "errors (non-2xx, exceptions, wrong content), all repetitions", "count", d["errors"], r["errors"],
            target="= 0", verdict=verdict(errs == 0)),
    ]


# ---------------------------------------------------------------------------
# Scenario 11: the metadata requests of a davfs2 tree unpack (issue 14 §4)

LOCK_BODY = (b'<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:">'
             b"<D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype>"
             b"<D:owner>bench</D:owner></D:lockinfo>")
PROPPATCH_BODY = (b'<?xml version="1.0" encoding="utf-8"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:bench">'
                  b"<D:set><D:prop><Z:mode>0644</Z:mode></D:prop></D:set></D:propertyupdate>")
META_METHODS = ("LOCK", "PUT", "UNLOCK", "PROPPATCH", "MOVE", "DELETE")


def metadata_round(srv: ServerProc, base: str, n: int, size: int, seed: int,
                   cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """The request mix davfs2 sends per file while a tree is unpacked, ``n`` times
    on one keep-alive connection: LOCK a new name (lock-null: the server creates
    an empty file), PUT with the lock token, UNLOCK, PROPPATCH a dead property,
    MOVE to the final name; every other file is then DELETEd.  Returns the
    client-side seconds of each request by method (one connection, no think
    time, so that is the server's time plus loopback).  With ``cpu``, the
    requests of odd files are not timed but charged the server's CPU seconds
    (all threads, from schedstat, read between requests), appended to
    ``cpu[method]``."""
    c = client(srv)
    out: dict[str, list[float]] = {m: [] for m in META_METHODS}
    mark = [0]
    probe = [False]  # this file's requests are CPU-probed (odd files), not timed

    def timed(method: str, r, *ok: int):
        expect(r, *ok, what=f"{srv.name} {method}")
        if probe[0]:
            now = srv.cpu_ns()
            cpu.setdefault(method, []).append((now - mark[0]) / 1e9)  # type: ignore[union-attr]
            mark[0] = srv.cpu_ns()
        else:
            out[method].append(r.seconds)
        return r

    try:
        for i in range(n):
            # Reading the server's CPU clock between requests costs the client
            # time: odd files are probed for CPU, even ones timed.
            probe[0] = cpu is not None and i % 2 == 1
            if probe[0]:
                mark[0] = srv.cpu_ns()
            tmp, final = f"{base}.tmp_{i:05d}", f"{base}f_{i:05d}.txt"
            r = timed("LOCK", c.request("LOCK", tmp, LOCK_BODY, {"Depth": "0", "Timeout": "Second-300",
                                                                 "Content-Type": "application/xml"}), 200, 201)
            token = r.headers.get("Lock-Token") or r.headers.get("lock-token") or ""
            if not token.startswith("<"):
                raise RuntimeError(f"{srv.name}: LOCK answered no Lock-Token: {r.headers}")
            timed("PUT", c.put_payload(tmp, Payload(seed + i, size), headers={"If": f"({token})"}), 200, 201, 204)
            timed("UNLOCK", c.request("UNLOCK", tmp, headers={"Lock-Token": token}), 204)
            r = timed("PROPPATCH", c.request("PROPPATCH", tmp, PROPPATCH_BODY, {"Content-Type": "application/xml"}),
                      207)
            if b"200" not in r.body:
                raise RuntimeError(f"{srv.name}: PROPPATCH did not set the property: {r.body[:300]!r}")
            timed("MOVE", c.copy_move("MOVE", tmp, final), 201, 204)
            if i % 4 < 2:  # every other file, both timed and probed ones
                timed("DELETE", c.request("DELETE", final), 204)
    finally:
        c.close()
    return out


def s11_metadata(ctx: Ctx) -> list[Row]:
    """Mean time per request of the LOCK/PUT/UNLOCK/PROPPATCH/MOVE/DELETE mix.

    The reference gets WsgiDAV's in-memory property manager for this
    scenario (without one it refuses PROPPATCH); its locks are in memory as
    well, davcoll's are in SQLite in the data directory."""
    s = ctx.sizes
    n = s.meta_files
    ms: dict[str, dict[str, list[float]]] = {k: {m: [] for m in META_METHODS} for k in ("davcoll", "reference")}
    cpu_ms: dict[str, dict[str, list[float]]] = {k: {m: [] for m in META_METHODS} for k in ("davcoll", "reference")}
    with server_pair(ctx, "s11") as (data, root, logs):
        with running(davcoll_server(data, logs),
                     reference_server(root, logs, extra=["--property-manager", "memory"])) as servers:
            for srv in servers:
                warm_puts(srv, s.warm_puts)
                mkcol(srv, "/m11/")
                mkcol(srv, "/m11/warm/")
                metadata_round(srv, "/m11/warm/", max(20, n // 5), s.small_size, seed=11_000_000)
            for rep in range(ctx.repeat):
                for srv in alternate(rep, servers):
                    base = f"/m11/r{rep}/"
                    mkcol(srv, base)
                    cpu0 = srv.cpu_seconds()
                    per: dict[str, list[float]] = {}
                    res = metadata_round(srv, base, n, s.small_size, seed=11_100_000 + rep * 100_000, cpu=per)
                    ctx.record_cpu("11", srv.name, (srv.cpu_seconds() - cpu0) / n)
                    for m in META_METHODS:
                        ms[srv.name][m].append(statistics.fmean(res[m]) * 1000)
                        cpu_ms[srv.name][m].append(statistics.fmean(per[m]) * 1000)
    ctx.extra["s11_mean_ms"] = ms
    ctx.extra["s11_cpu_ms"] = cpu_ms
    rows = []
    for letter, m in zip("abcdef", META_METHODS):
        d, r = ms["davcoll"][m], ms["reference"][m]
        what = {"LOCK": "LOCK a new name (lock-null: creates an empty file)",
                "PUT": f"PUT {human_size(s.small_size)} with the lock token",
                "UNLOCK": "UNLOCK", "PROPPATCH": "PROPPATCH one dead property",
                "MOVE": "MOVE to the final name", "DELETE": "DELETE (every other file)"}[m]
        dc, rc = med(cpu_ms["davcoll"][m]), med(cpu_ms["reference"][m])
        note = f"server CPU ms per request: davcoll {dc:.2f}, reference {rc:.2f} (CPU ratio {dc / rc:.2f})"
        if m == "LOCK":
            note = (f"{n} files per repetition, one connection, mean client-side time per request; " + note + "; "
                    + ctx.cpu_note("11", "ms per file (all six requests)", 1000))
        rows.append(speed_row(f"11{letter}", f"metadata mix: {what}", "ms", d, r,
                              min_ratio=None if m == "PUT" else 0.5, time_metric=True, note=note))
    return rows


# ---------------------------------------------------------------------------
# Scenario 10: the Arvados backend against the fake cluster (report only)


@contextlib.contextmanager
def arvados_davcoll(ctx: Ctx, name: str) -> Iterator[ServerProc]:
    base = ctx.fresh(name)
    logs = base / "logs"
    logs.mkdir()
    fake_log = open(logs / "fakecluster.log", "ab")
    fake = subprocess.Popen([sys.executable, str(HERE / "fakecluster.py")], stdout=subprocess.PIPE,
                            stderr=fake_log, cwd=str(HERE.parent))
    srv: ServerProc | None = None
    try:
        assert fake.stdout is not None
        line = fake.stdout.readline()
        if not line:
            raise RuntimeError("fake cluster did not start: " + (logs / "fakecluster.log").read_text()[-2000:])
        info = json.loads(line)
        srv = davcoll_server(base / "davcoll", logs, name="davcoll",
                             extra=["--arvados-api-host", info["api_url"], "--anonymous", "none"],
                             headers={"Authorization": f"Bearer {info['token']}"})
        srv.start()
        ctx.extra.setdefault("s10_fake_pid", fake.pid)
        yield srv
    finally:
        if srv is not None:
            srv.stop()
        fake.terminate()
        try:
            fake.wait(timeout=20)
        except subprocess.TimeoutExpired:
            fake.kill()
            fake.wait(timeout=10)
        fake_log.close()
        ctx.cleanup(base)


def first_byte_ms(srv: ServerProc, path: str) -> float:
    """Milliseconds from sending a GET to reading the first body byte (the
    rest is drained untimed).  The file's blocks must not be cached: big
    blocks never are (streamed reads bypass the block cache)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=600)
    try:
        t0 = time.perf_counter()
        conn.request("GET", path, headers=srv.headers)
        resp = conn.getresponse()
        if resp.status != 200 or not resp.read(1):
            raise RuntimeError(f"{srv.name}: GET {path}: HTTP {resp.status}")
        dt = time.perf_counter() - t0
        while resp.read(1 << 20):
            pass
        return dt * 1000
    finally:
        conn.close()


def s10_arvados(ctx: Ctx) -> list[Row]:
    s = ctx.sizes
    rows: list[Row] = []
    with arvados_davcoll(ctx, "s10") as srv:
        ctx.log("s10: GET")
        g = measure_get(ctx, [srv], size=s.arv_big, label="10.1")["davcoll"]
        ttfb = [first_byte_ms(srv, "/g/big.bin") for _ in range(ctx.repeat)]
        ctx.log("s10: PUT")
        p = measure_put(ctx, [srv], size=s.arv_big, label="10.2")["davcoll"]
        ctx.log("s10: small PUTs")
        sm = measure_small_puts(ctx, [srv], label="10.3")["davcoll"]
        ctx.log("s10: parallel")
        par = measure_parallel(ctx, [srv], label="10.9")["davcoll"]
    size = human_size(s.arv_big)
    b = ctx.md5_mbps("10.2")
    what = f"{s.par_clients} clients × {s.par_files} × {human_size(s.par_size)}"
    note = "Arvados backend, fake cluster (2 keepstores, Python) on the same machine"
    rows.append(Row("10.1", f"Arvados: GET {size} file", "MB/s", g, bound=ctx.md5_mbps("10.1"), note=note))
    rows.append(Row("10.1b", f"Arvados: GET {size} file, time to first byte", "ms", ttfb,
                    note="Keep reads stream: the first MiB is sent before its 64 MiB block has arrived"))
    rows.append(Row("10.2a", f"Arvados: PUT {size}, Content-Length", "MB/s", p["length"], bound=b,
                    ratio=med(p["length"]) / b, ratio_of="davcoll÷md5"))
    rows.append(Row("10.2b", f"Arvados: PUT {size}, chunked", "MB/s", p["chunked"], bound=b,
                    ratio=med(p["chunked"]) / b, ratio_of="davcoll÷md5"))
    rows.append(Row("10.3", f"Arvados: {s.small_count} × {human_size(s.small_size)} PUT, one connection", "req/s", sm))
    rows.append(Row("10.9a", f"Arvados: {what} PUT, aggregate", "MB/s", par["put"], bound=ctx.md5_mbps("10.9")))
    rows.append(Row("10.9b", f"Arvados: {what} GET back, aggregate", "MB/s", par["get"]))
    rows.append(Row("10.9c", "Arvados: errors in 10.9", "count", par["errors"]))
    return rows


SCENARIOS: dict[str, Callable[[Ctx], list[Row]]] = {
    "1": s1_get,
    "2": s2_put,
    "3": s3_small,
    "4": s4_put_latency,
    "5": s5_propfind,
    "6": s6_copy_move,
    "7": s7_open_big,
    "8": s8_memory,
    "9": s9_parallel,
    "10": s10_arvados,
    "11": s11_metadata,
}

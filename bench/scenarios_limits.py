"""Scenarios 12-16: the benchmark rows issues 10, 11 and 12 ask for.

Each wraps one of the stand-alone micro-benchmarks (``bench/bench_*.py``,
still runnable on their own) so that ``bench/run.py`` prints its rows in
the one table, with the same sizes switch (``--quick``), repetitions and
verdict rules as scenarios 1-11.  The scripts are imported inside each
function: their imports (the fake Arvados cluster, requests, davcoll's
server) cost nothing unless the scenario runs.

* 12 (issue 11 §1): silent, slow-header and stalled-body connections from
  127.0.0.1 while fresh GETs from the same address are timed; davcoll
  beside WsgiDAV's FilesystemProvider on stock cheroot.
* 13 (issue 11 §4): peak RSS growth of the server per Depth-1 PROPFIND of
  one big folder, 1 and 4 at once.
* 14 (issue 11 §4): unknown-PDH lookups and commits while they run
  (embedded catalog, in this process).
* 15 (issue 12 §1): GET of one file of a big Arvados collection after
  ``revalidate_seconds`` idle (fake cluster and davcoll in this process).
* 16 (issue 10 §5): peak RSS of streaming ``.arvados#collection`` of a big
  collection (in a fresh child process: it measures its own peak).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from procs import davcoll_server
from scenarios import Ctx, Row, alternate, human_count, limit_row, med, running, verdict

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

FRESH_TARGET_MS = 1000.0  # issue 11 §1: a new request answered in < 1 s
PROPFIND_TARGET_MIB = 50.0  # issue 11 §4: peak RSS growth per Depth-1 PROPFIND
PDH_LOOKUP_TARGET_MS = 10.0  # issue 11 §4: an unknown-PDH lookup is O(1) (an indexed read)
REVALIDATE_TARGET_MS = 50.0  # issue 12 §1
REVALIDATE_SECONDS = 1.0


def _below(scenario: str, workload: str, d: list[float], r: list[float], limit: float, note: str = "") -> Row:
    """A ms row judged by davcoll's median being strictly below ``limit``."""
    md = med(d)
    return Row(scenario, workload, "ms", d, r, target=f"< {limit:g} ms",
               verdict=verdict(None if md is None else md < limit), note=note)


def s12_slowloris(ctx: Ctx) -> list[Row]:
    """Fresh-request latency while idle and slow connections are held (issue 11 §1).

    Both servers run side by side for the whole scenario; each repetition
    attacks one, then the other (alternating who goes first), and waits for
    the attacked server to answer normally again before the next attack.
    An unanswered probe counts as the probe timeout (so a median or maximum
    equal to it means "no answer")."""
    from bench_slowloris import (
        attack_args,
        raise_fd_limit,
        request,
        run_attack,
        stock_reference,
    )

    silent, slow, stalled = ctx.sizes.attack
    total = silent + slow + stalled
    timeout = ctx.sizes.attack_probe_timeout
    args = attack_args(silent, slow, stalled, probes=ctx.sizes.attack_probes, probe_timeout=timeout)
    raise_fd_limit()  # this process holds every attack socket; the servers inherit the limit
    medians: dict[str, list[float]] = {"davcoll": [], "reference": []}
    probes: dict[str, list[float]] = {"davcoll": [], "reference": []}
    held: dict[str, list[float]] = {"davcoll": [], "reference": []}
    ok = {"davcoll": 0, "reference": 0}  # probes answered (200) within the probe timeout
    last: dict[str, dict] = {}
    base = ctx.fresh("s12")
    logs = base / "logs"
    try:
        dav = davcoll_server(base / "davcoll", logs)
        ref = stock_reference(base / "reference", logs)
        ref.name = "reference"
        with running(dav, ref) as servers:
            for rep in range(ctx.repeat):
                for srv in alternate(rep, servers):
                    _settle(srv.port, request)
                    res = run_attack(srv.name, srv, args, "/")
                    lat = [timeout * 1000 if x is None else x for x in res["latencies_ms"]]
                    probes[srv.name] += lat
                    medians[srv.name].append(statistics.median(lat))
                    held[srv.name].append(float(sum(res["held"].values())))
                    ok[srv.name] += sum(x is not None for x in res["latencies_ms"])
                    last[srv.name] = res
    finally:
        ctx.cleanup(base)
    ctx.extra["s12_probe_ms"] = probes
    ctx.extra["s12_runs"] = {k: {kk: vv for kk, vv in v.items() if kk != "latencies_ms"} for k, v in last.items()}
    what = f"{human_count(silent)}/{human_count(slow)}/{human_count(stalled)} silent/slow-header/stalled-body conns"
    n = len(probes["davcoll"])

    def answered(name: str) -> str:
        return f"{name} answered {ok[name]}/{n}"

    def breakdown(name: str) -> str:
        r = last[name]
        h = r["held"]
        return (f"{name} held {h['silent']}/{h['slow']}/{h['stalled']} silent/slow/stalled, "
                f"{r['connect_failures']} connects failed, RSS +{r['rss_growth_mib']:.0f} MiB, {r['threads']} threads")

    timeouts = f"unanswered probes count as {timeout * 1000:.0f} ms"
    return [
        _below("12a", f"fresh GET under attack ({what} from 127.0.0.1), median", medians["davcoll"],
               medians["reference"], FRESH_TARGET_MS,
               note=(f"{args.probes} fresh GETs per repetition, one a second; {answered('davcoll')}, "
                     f"{answered('reference')} (WsgiDAV FilesystemProvider on stock cheroot: 64 threads, "
                     f"300 s timeout); {timeouts}")),
        _below("12b", "fresh GET under attack, max over all probes", [max(probes["davcoll"])],
               [max(probes["reference"])], FRESH_TARGET_MS),
        Row("12c", f"attack connections still open after the probes (of {total})", "conns", held["davcoll"],
            held["reference"], note=f"last repetition: {breakdown('davcoll')}; {breakdown('reference')}"),
    ]


def _settle(port: int, request, timeout: float = 30.0) -> None:
    """Wait (at most ``timeout`` s, then go on: a slow machine must not fail
    the run) until the server answers a plain request promptly again, the
    previous attack's connections gone, so that attacks do not overlap."""
    raw = b"OPTIONS / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, elapsed = request(port, raw, 5.0)
        if status is not None and elapsed < 0.5:
            return
        time.sleep(0.2)


def s13_propfind_rss(ctx: Ctx) -> list[Row]:
    """Server RSS growth per Depth-1 allprop PROPFIND of one big folder (issue 11 §4).

    The collection is stored once; every measurement starts a fresh server
    (an earlier request's freed-but-kept heap cannot hide growth) and loads
    the folder into the tree cache with Depth-0 requests first."""
    from bench_propfind_rss import measure_level, prepare

    n = ctx.sizes.propfind_files
    growth: dict[int, list[float]] = {1: [], 4: []}
    facts: dict[int, list[dict]] = {1: [], 4: []}
    base = ctx.fresh("s13")
    try:
        data = base / "davcoll"
        data.mkdir()
        path, first = prepare(data, n)
        for rep in range(ctx.repeat):
            for conc in ((1, 4) if rep % 2 == 0 else (4, 1)):
                r = measure_level(data, base / "logs", path, first, conc, "allprop")
                if r["statuses"] != [207] or r["responses"] != [n + 1] * conc:
                    raise RuntimeError(f"PROPFIND of {n} entries: statuses {r['statuses']}, "
                                       f"<response>s {r['responses']} (want {n + 1} each)")
                growth[conc].append(r["per_req_mib"])
                facts[conc].append(r)
    finally:
        ctx.cleanup(base)
    ctx.extra["s13_levels"] = facts

    def note(conc: int) -> str:
        rs = facts[conc]
        return (f"body {rs[0]['mb']:.1f} MB{' chunked' if rs[0]['chunked'] else ''}, "
                f"{med([r['seconds'] for r in rs]):.2f} s, RSS before {med([r['base_mib'] for r in rs]):.0f} MiB")

    what = f"PROPFIND D1 allprop, {human_count(n)}-entry folder"
    return [
        limit_row("13a", f"{what}: server peak RSS growth, 1 client", "MiB", growth[1], [], PROPFIND_TARGET_MIB,
                  note=note(1)),
        limit_row("13b", f"{what}: the same per request, 4 clients at once", "MiB", growth[4], [],
                  PROPFIND_TARGET_MIB, note=note(4)),
    ]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def s14_pdh_lookup(ctx: Ctx) -> list[Row]:
    """Unknown-PDH lookups against commits in the embedded catalog (issue 11 §4).

    Catalog level, in this process (the server's catalog calls without
    HTTP); one set-up, then per repetition: lookups after every collection
    changed, commits alone, commits while a thread looks up a random PDH
    every 50 ms."""
    from bench_pdh_lookup import measure

    s = ctx.sizes
    res = measure(s.pdh_collections, s.pdh_files, lookups=5, commits=s.pdh_commits, seconds=s.pdh_seconds,
                  lookup_interval=0.05, workdir=str(ctx.work), rounds=ctx.repeat, log=ctx.log)
    rounds = res["rounds"]
    ms = 1000.0
    lookup = [statistics.median(r["lookup"]) * ms for r in rounds]
    busy99 = [_pct(r["busy"], 0.99) * ms for r in rounds]
    alone99 = [_pct(r["alone"], 0.99) * ms for r in rounds]
    busy50 = [statistics.median(r["busy"]) * ms for r in rounds]
    alone50 = [statistics.median(r["alone"]) * ms for r in rounds]
    during = [statistics.median(r["during"]) * ms for r in rounds if r["during"]]
    ctx.extra["s14"] = {"setup_s": res["setup_s"], "lookup_p50_ms": lookup, "commit_p99_busy_ms": busy99,
                        "commit_p99_alone_ms": alone99, "commit_p50_busy_ms": busy50,
                        "commit_p50_alone_ms": alone50, "lookup_p50_during_ms": during}
    what = f"{s.pdh_collections} collections × {human_count(s.pdh_files)} files, all changed"
    ratio = med(busy99) / med(alone99) if med(alone99) else None
    return [
        limit_row("14a", f"unknown-PDH lookup ({what}), p50", "ms", lookup, [], PDH_LOOKUP_TARGET_MS,
                  note=f"catalog level, in the benchmark process; {what} in {res['setup_s']:.1f} s"),
        limit_row("14b", "commit (one small update) while unknown-PDH lookups run, p50", "ms", busy50, [],
                  None, ratio=med(busy50) / med(alone50) if med(alone50) else None, ratio_of="÷ commit alone",
                  note=f"one lookup every 50 ms in another thread; commits alone: p50 {med(alone50):.1f} ms, p99 {med(alone99):.1f} ms; lookups meanwhile: "
                       f"p50 {med(during) if during else float('nan'):.2f} ms"),
        limit_row("14c", "the same commits, p99", "ms", busy99, [], None, ratio=ratio, ratio_of="÷ commit alone"),
    ]


def s15_arvados_revalidate(ctx: Ctx) -> list[Row]:
    """GET of one file of a big Arvados collection after ``revalidate_seconds``
    idle (issue 12 §1): the fake cluster and davcoll (Arvados backend) in
    this process; each idle GET should cost one small API call, not a
    manifest download."""
    from bench_arvados_revalidate import big_collection, measure, probe_path

    from davcoll.testing.fake_arvados import FakeArvados

    s = ctx.sizes
    rounds = max(s.revalidate_rounds, ctx.repeat)
    with FakeArvados(keepstores=2) as fake:
        token, uuid, size = big_collection(fake, s.revalidate_files)
        first, times, calls = measure(fake, token, uuid, rounds, REVALIDATE_SECONDS,
                                      path=probe_path(s.revalidate_files))
    idle = [t * 1000 for t in times]
    ctx.extra["s15"] = {"first_ms": first * 1000, "idle_ms": idle, "api_calls_last_idle_get": calls,
                        "manifest_bytes": size}
    n = human_count(s.revalidate_files)
    return [
        limit_row("15a", f"Arvados: GET a file of a {n}-file collection after revalidate_seconds idle, median",
                  "ms", idle, [], REVALIDATE_TARGET_MS,
                  note=(f"{rounds} idle GETs (revalidate_seconds {REVALIDATE_SECONDS:g}, fake cluster and server in "
                        f"the benchmark process), API calls for the last one: {calls}; manifest "
                        f"{size / 1e6:.1f} MB")),
        limit_row("15b", "Arvados: the first GET (loads the collection)", "ms", [first * 1000], [], None),
    ]


def s16_record_rss(ctx: Ctx) -> list[Row]:
    """Peak RSS added by reading ``.arvados#collection`` of a big collection
    (issue 10 §5), streamed the way GET sends it and, for comparison, built
    whole; each repetition in a fresh child process, which measures its own
    peak (VmHWM reset through /proc/self/clear_refs)."""
    n = ctx.sizes.record_files
    streamed: list[float] = []
    whole: list[float] = []
    mb = 0.0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for _ in range(ctx.repeat):
        proc = subprocess.run([sys.executable, str(HERE / "bench_record_rss.py"), str(n), "--json"],
                              check=False, capture_output=True, text=True, timeout=1800, cwd=str(REPO), env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"bench_record_rss.py failed: {proc.stderr[-2000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        streamed.append(res["streamed"]["growth_mib"])
        whole.append(res["whole"]["growth_mib"])
        mb = res["streamed"]["mb"]
    what = f".arvados#collection of {human_count(n)} files ({mb:.1f} MB JSON)"
    return [
        limit_row("16a", f"{what}, streamed as GET sends it: peak RSS growth", "MiB", streamed, [], None,
                  note="embedded-backend tree in a fresh child process per repetition, record cache cleared"),
        limit_row("16b", "the same record built whole, for comparison (what GET no longer does)", "MiB", whole, [],
                  None),
    ]


LIMIT_SCENARIOS = {
    "12": s12_slowloris,
    "13": s13_propfind_rss,
    "14": s14_pdh_lookup,
    "15": s15_arvados_revalidate,
    "16": s16_record_rss,
}

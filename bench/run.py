"""davcoll vs WsgiDAV's FilesystemProvider: the one benchmark command.

Usage::

    python bench/run.py                 # full run (1-11 about 7 minutes on 2 vCPUs, 12-16 about 10 more)
    python bench/run.py --quick         # scaled-down sizes (about 3 minutes)
    python bench/run.py --only 1,3,5 --repeat 5 --json out.json

Each scenario starts davcoll (``davcoll serve``, embedded backend, anonymous
read-write) and the reference (``bench/refserver.py``: WsgiDAV's own
FilesystemProvider on a plain directory, same cheroot settings, 1 MiB
blocks) as fresh child processes on 127.0.0.1, runs the same workload with
the same client (``bench/client.py``) against both, alternating which goes
first, and prints a Markdown table: median of the repetitions, their spread
((max - min) / median), the physical bound where one applies (md5 rate of
one core, measured in the same run), the ratio, the target and a verdict.
Scenario 10 runs davcoll's Arvados backend against the fake cluster
(``bench/fakecluster.py``) and is report-only.  Scenarios 12-16
(``bench/scenarios_limits.py``) are the rows issues 10-12 ask for: slow and
idle connections, PROPFIND memory, unknown-PDH lookups, Arvados
revalidation, ``.arvados#collection`` memory.

Verdicts (pass / MISS) are printed in quick mode too, against the same
targets, but only a scenario that fails to run makes the exit status
non-zero: a MISS never does, so CI's ``--quick`` cannot fail on a slow
machine.

Only ratios measured in the same run mean anything: the machine is shared
and noisy.  Nothing here is part of the test suite; ``tests/test_bench_quick.py``
only checks that the command works.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from scenarios import FULL, QUICK, Ctx, Row, med, spread  # noqa: E402
from scenarios import SCENARIOS as EMBEDDED_SCENARIOS  # noqa: E402
from scenarios_limits import LIMIT_SCENARIOS  # noqa: E402

SCENARIOS = {**EMBEDDED_SCENARIOS, **LIMIT_SCENARIOS}


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001
        return "?"


def machine_facts(work: Path) -> dict[str, str]:
    facts: dict[str, str] = {
        "date": datetime.datetime.now(datetime.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "davcoll": _version("davcoll"),
        "wsgidav": _version("wsgidav"),
        "cheroot": _version("cheroot"),
        "kernel": platform.release(),
    }
    try:
        facts["git"] = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                      capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if not facts.get("git") and (REPO / ".bench-commit").exists():
        # A frozen export (git archive) of a commit, so the code cannot change mid-run.
        facts["git"] = (REPO / ".bench-commit").read_text().strip() + " (exported)"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")]
        facts["cpu"] = f"{len(models)} × {models[0]}" if models else "?"
    except OSError:
        facts["cpu"] = "?"
    facts["cpus_usable"] = str(len(os.sched_getaffinity(0)))
    try:
        for ln in Path("/proc/meminfo").read_text().splitlines():
            if ln.startswith("MemTotal:"):
                facts["memory"] = f"{int(ln.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    try:
        usage = shutil.disk_usage(work)
        dev = subprocess.run(["df", "--output=source,fstype", str(work)], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()[-1].split()
        facts["disk"] = f"{work} on {' '.join(dev)}, {usage.free / 2**30:.0f} GiB free of {usage.total / 2**30:.0f} GiB"
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return facts


def fmt(x: float | None) -> str:
    if x is None:
        return ""
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def fmt_spread(xs: list[float]) -> str:
    s = spread(xs)
    return "" if s is None else f"{s * 100:.0f}%"


HEADER = ("#", "workload", "metric", "davcoll", "±", "reference", "±", "bound", "ratio", "ratio of", "target",
          "verdict")


def table(rows: list[Row]) -> str:
    lines = []
    body = []
    for r in rows:
        if r.metric == "count":  # totals over the repetitions, not medians
            d, ds = (str(int(sum(r.davcoll))), "") if r.davcoll else ("", "")
            f, fs = (str(int(sum(r.reference))), "") if r.reference else ("", "")
        else:
            d, ds = fmt(med(r.davcoll)), fmt_spread(r.davcoll)
            f, fs = fmt(med(r.reference)), fmt_spread(r.reference)
        body.append((r.scenario, r.workload, r.metric, d, ds, f, fs, fmt(r.bound), fmt(r.ratio), r.ratio_of,
                     r.target, r.verdict))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(HEADER)]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(HEADER, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for b in body:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(b, widths)) + " |")
    return "\n".join(lines)


def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(SCENARIOS)
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [c for c in chosen if c not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    return [k for k in SCENARIOS if k in chosen]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="davcoll vs WsgiDAV FilesystemProvider benchmark")
    p.add_argument("--quick", action="store_true", help="scaled-down sizes (1 GiB → 128 MiB, 100k → 10k, 1M → 100k)")
    p.add_argument("--only", help=f"comma-separated scenario numbers ({', '.join(SCENARIOS)}); the bounds (0) "
                                  "always run")
    p.add_argument("--repeat", type=int, default=3, help="repetitions per measurement (at least 3 for RESULTS)")
    p.add_argument("--json", help="write raw numbers to this file")
    p.add_argument("--workdir", help="directory for server data (default: a temp dir under /tmp, removed after)")
    p.add_argument("--keep", action="store_true", help="keep server data and logs")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    chosen = parse_only(args.only)
    sizes = QUICK if args.quick else FULL
    own_work = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="davcoll-bench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    facts = machine_facts(work)
    ctx = Ctx(sizes, args.repeat, work, keep=args.keep)
    mode = "quick" if args.quick else "full"
    print(f"# davcoll benchmark ({mode}, {args.repeat} repetitions): "
          + ", ".join(f"{k} {v}" for k, v in facts.items()), flush=True)
    rows: list[Row] = []
    failures: dict[str, str] = {}
    timings: dict[str, float] = {}
    t_start = time.monotonic()
    try:
        from scenarios import s0_bounds

        ctx.log("scenario 0 (physical bounds)")
        rows += s0_bounds(ctx)
        for key in chosen:
            ctx.log(f"scenario {key} ({SCENARIOS[key].__name__})")
            t0 = time.monotonic()
            try:
                rows += SCENARIOS[key](ctx)
            except Exception as e:  # noqa: BLE001 - report and carry on with the other scenarios
                failures[key] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            timings[key] = time.monotonic() - t0
            ctx.log(f"scenario {key} took {timings[key]:.1f}s")
    finally:
        if own_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - t_start
    print()
    print(table(rows))
    print()
    print("davcoll/reference: median of the repetitions; ±: (max - min) / median; bound: measured in this run "
          "(md5 rate of one core, re-measured next to each repetition, for MB/s rows; fsync'd 4 KiB writes/s for row 3); ratio: of speeds "
          "(for times: reference time ÷ davcoll time); counts are totals.")
    for r in rows:
        if r.note:
            print(f"  {r.scenario}: {r.note}")
    for key, msg in failures.items():
        print(f"FAILED scenario {key}: {msg}")
    misses = [r for r in rows if r.verdict == "MISS"]
    print(f"{len(rows)} rows, {sum(r.verdict == 'pass' for r in rows)} pass, {len(misses)} MISS"
          + (f" ({', '.join(r.scenario for r in misses)})" if misses else "")
          + f", {len(failures)} failed scenarios; {total:.0f}s")
    if args.json:
        out = {
            "mode": mode,
            "repeat": args.repeat,
            "facts": facts,
            "sizes": dataclasses.asdict(sizes),
            "md5_MBps": ctx.md5_bps / 1e6 if ctx.md5_bps else None,
            "rows": [r.as_dict() for r in rows],
            "extra": ctx.extra,
            "failures": failures,
            "seconds": {**timings, "total": total},
        }
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""``davcoll gc``: retention of trash and old versions, then blocks nothing references.

Deleting files does not free disk space by itself: the embedded backend keeps
every version of a collection and keeps trashed collections (both readable,
both undoable), and their blocks with them.  A retention pass -- like
Arvados' trash sweep (DefaultTrashLifetime, 2 weeks) -- purges collections
trashed longer ago than ``trash_lifetime`` and drops versions superseded
longer ago than ``version_lifetime`` (keeping the newest ``versions_kept``);
the blocks only they used then become garbage.  The report says which of
these keeps how many bytes alive, so an operator sees what a shorter policy
would free.

Safety rules for deleting blocks:
  - the referenced set is every stored version of every collection,
    trashed ones included (what retention kept stays readable);
  - blocks are listed *before* the referenced set is read, so a commit that
    lands in between is seen;
  - blocks younger than the grace period are never touched (an upload in
    flight has stored blocks its commit has not referenced yet), and the
    delete itself re-checks the mtime atomically (a concurrent ``put`` of
    the same content refreshes it);
  - the default is a dry run: nothing is purged, pruned or deleted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TextIO

from .config import load_config
from .manifest import EMPTY_BLOCK
from .storage.local_blocks import LocalBlockStore
from .storage.local_catalog import LocalCatalog, db_path_for

_LABELS = {
    "live": "live collections (current versions)",
    "versions": "old versions kept by the policy",
    "trash": "trash kept by the policy",
    "versions_expired": "old versions past the policy",
    "trash_expired": "trash past the policy",
    "unreferenced": "nothing (unreferenced blocks)",
}


@dataclass(frozen=True)
class Retention:
    """How long trash and superseded versions are kept (seconds; inf = forever)."""

    trash_seconds: float
    version_seconds: float
    keep_versions: int = 1

    def cutoffs(self, now: float) -> tuple[str | None, str | None]:
        """(trashed_before, superseded_before) as stored timestamps; None = keep all."""
        return _stamp(now - self.trash_seconds), _stamp(now - self.version_seconds)


def _stamp(t: float) -> str | None:
    if math.isinf(t) or math.isnan(t):
        return None
    return datetime.fromtimestamp(max(t, 0), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _size(locator: str) -> int:
    try:
        return int(locator.split("+")[1])
    except (IndexError, ValueError):
        return 0


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def block_usage_report(data_dir: str, retention: Retention, *, now: float | None = None) -> dict[str, tuple[int, int]]:
    """kind -> (blocks, bytes) for each of LocalCatalog.USAGE_KINDS and
    "unreferenced" (blocks on disk nothing references; any age)."""
    trashed_before, superseded_before = retention.cutoffs(time.time() if now is None else now)
    store = LocalBlockStore(data_dir)
    catalog = LocalCatalog(db_path_for(data_dir))
    try:
        on_disk = {loc: size for loc, size, _ in store.iter_blocks()}
        usage = catalog.block_usage(
            trashed_before=trashed_before, superseded_before=superseded_before, keep=retention.keep_versions
        )
    finally:
        catalog.close()
    totals = {kind: [0, 0] for kind in (*LocalCatalog.USAGE_KINDS, "unreferenced")}
    for loc, kind in usage.items():
        if loc == EMPTY_BLOCK:
            continue
        totals[kind][0] += 1
        totals[kind][1] += on_disk.get(loc, _size(loc))
    for loc, size in on_disk.items():
        if loc not in usage and loc != EMPTY_BLOCK:
            totals["unreferenced"][0] += 1
            totals["unreferenced"][1] += size
    return {kind: (n, b) for kind, (n, b) in totals.items()}


def print_usage(report: dict[str, tuple[int, int]], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    print("block bytes kept alive by:", file=out)
    for kind, (blocks, nbytes) in report.items():
        print(f"  {_LABELS[kind]:<38} {blocks:>8} blocks {nbytes:>16} bytes ({_human(nbytes)})", file=out)


def apply_retention(data_dir: str, retention: Retention, *, now: float | None = None) -> tuple[int, int]:
    """Purge expired trash and prune expired versions now.  Returns
    (collections purged, versions dropped)."""
    trashed_before, superseded_before = retention.cutoffs(time.time() if now is None else now)
    catalog = LocalCatalog(db_path_for(data_dir))
    try:
        purged = len(catalog.purge_trash(trashed_before)) if trashed_before else 0
        pruned = catalog.prune_versions(superseded_before, retention.keep_versions) if superseded_before else 0
    finally:
        catalog.close()
    return purged, pruned


def collect_garbage(data_dir: str, *, delete: bool, grace_seconds: float, out: TextIO | None = None) -> tuple[int, int]:
    """Returns (number of unreferenced blocks found, number deleted)."""
    out = out or sys.stdout
    store = LocalBlockStore(data_dir)
    catalog = LocalCatalog(db_path_for(data_dir))
    try:
        cutoff = time.time() - grace_seconds
        listed = list(store.iter_blocks())
        referenced = catalog.referenced_blocks()
        found = deleted = 0
        total = freed = 0
        for locator, size, mtime in listed:
            if locator in referenced or locator == EMPTY_BLOCK or mtime > cutoff:
                continue
            found += 1
            total += size
            if delete:
                if store.delete(locator, unless_newer_than=cutoff):
                    deleted += 1
                    freed += size
                    print(f"deleted {locator}", file=out)
            else:
                print(f"unreferenced {locator}", file=out)
        if delete:
            store.remove_stale_temps(cutoff)
            print(f"{found} unreferenced block(s), {total} bytes; deleted {deleted} ({freed} bytes)", file=out)
        else:
            print(f"{found} unreferenced block(s), {total} bytes; would delete {found} (dry run; use --delete)", file=out)
        return found, deleted
    finally:
        catalog.close()


def run_gc(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        cfg = load_config(args.config, data_dir=args.data_dir)
    except ValueError as e:
        print(f"davcoll: {e}", file=sys.stderr)
        return 2
    if cfg.backend != "embedded":
        print("davcoll gc: only the embedded backend keeps its own blocks (Arvados runs keep-balance)", file=sys.stderr)
        return 2
    data_dir = os.path.abspath(cfg.data_dir)
    if not db_path_for(data_dir).exists():
        print(f"davcoll gc: data_dir {data_dir}: no catalog here; pass --data-dir or --config", file=sys.stderr)
        return 1
    keep = cfg.versions_kept if getattr(args, "keep_versions", None) is None else args.keep_versions
    if keep < 1:
        print("davcoll gc: --keep-versions must be at least 1 (the current version)", file=sys.stderr)
        return 2
    retention = Retention(
        trash_seconds=_pick(getattr(args, "prune_trash_older_than", None), cfg.trash_lifetime),
        version_seconds=_pick(getattr(args, "prune_versions_older_than", None), cfg.version_lifetime),
        keep_versions=keep,
    )
    print(f"davcoll gc: data dir {data_dir}; trash kept {_days(retention.trash_seconds)}, versions kept "
          f"{_days(retention.version_seconds)} after being superseded (newest {keep} always)", file=out)
    now = time.time()
    print_usage(block_usage_report(data_dir, retention, now=now), out)
    if args.delete:
        purged, pruned = apply_retention(data_dir, retention, now=now)
        print(f"purged {purged} trashed collection(s), dropped {pruned} old version(s)", file=out)
    else:
        print("dry run: nothing purged or pruned (use --delete)", file=out)
    collect_garbage(data_dir, delete=args.delete, grace_seconds=args.grace_hours * 3600, out=out)
    return 0


def _pick(option: float | None, configured: float) -> float:
    return configured if option is None else option


def _days(seconds: float) -> str:
    if math.isinf(seconds):
        return "forever"
    if seconds >= 86400 and seconds % 3600 == 0:
        return f"{seconds / 86400:g} days"
    return f"{seconds:g} s"

"""``davcoll gc``: find (and optionally remove) blocks nothing references.

Blocks of the embedded backend become garbage when the collection versions
that used them are gone, or when an upload was interrupted before its
commit.  Safety rules:
  - the referenced set is every stored version of every collection,
    trashed ones included (versions stay readable; trash can be undone);
  - blocks are listed *before* the referenced set is read, so a commit that
    lands in between is seen;
  - blocks younger than the grace period are never touched (an upload in
    flight has stored blocks its commit has not referenced yet), and the
    delete itself re-checks the mtime atomically (a concurrent ``put`` of
    the same content refreshes it);
  - the default is a dry run.
"""

from __future__ import annotations

import argparse
import sys
import time

from .config import load_config
from .manifest import EMPTY_BLOCK
from .storage.local_blocks import LocalBlockStore
from .storage.local_catalog import LocalCatalog, db_path_for


def collect_garbage(data_dir: str, *, delete: bool, grace_seconds: float, out=sys.stdout) -> tuple[int, int]:
    """Returns (number of unreferenced blocks found, number deleted)."""
    store = LocalBlockStore(data_dir)
    catalog = LocalCatalog(db_path_for(data_dir))
    try:
        cutoff = time.time() - grace_seconds
        listed = list(store.iter_blocks())
        referenced = catalog.referenced_blocks()
        found = deleted = 0
        total = 0
        for locator, size, mtime in listed:
            if locator in referenced or locator == EMPTY_BLOCK or mtime > cutoff:
                continue
            found += 1
            total += size
            if delete:
                if store.delete(locator, unless_newer_than=cutoff):
                    deleted += 1
                    print(f"deleted {locator}", file=out)
            else:
                print(f"unreferenced {locator}", file=out)
        if delete:
            store.remove_stale_temps(cutoff)
        verb = "deleted" if delete else "would delete (dry run; use --delete)"
        print(f"{found} unreferenced block(s), {total} bytes; {verb} {deleted if delete else found}", file=out)
        return found, deleted
    finally:
        catalog.close()


def run_gc(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, data_dir=args.data_dir)
    if cfg.backend != "embedded":
        print("davcoll gc: only the embedded backend keeps its own blocks (Arvados runs keep-balance)", file=sys.stderr)
        return 2
    collect_garbage(cfg.data_dir, delete=args.delete, grace_seconds=args.grace_hours * 3600)
    return 0

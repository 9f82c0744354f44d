"""The ``davcoll`` command: serve, token management, garbage collection."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="davcoll", description="WebDAV server for Arvados-style collections")
    p.add_argument("--version", action="version", version=f"davcoll {__version__}")
    sub = p.add_subparsers(dest="cmd")

    s = sub.add_parser("serve", help="run the WebDAV server")
    s.add_argument("--config", help="TOML config file (see config/)")
    s.add_argument("--data-dir", help="embedded backend data directory (default ./davcoll-data)")
    s.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8080)")
    s.add_argument("--anonymous", choices=["none", "read", "write"], help="access without a token")
    s.add_argument("--arvados-api-host", help="use the Arvados backend at this API URL")

    t = sub.add_parser("token", help="manage access tokens of the embedded backend")
    t.add_argument("--config")
    t.add_argument("--data-dir")
    tsub = t.add_subparsers(dest="tcmd", required=True)
    tc = tsub.add_parser("create", help="create a token and print it once")
    tc.add_argument("--read-only", action="store_true")
    tc.add_argument("--label", default="")
    tsub.add_parser("list", help="list tokens (ids only, never the tokens)")
    tr = tsub.add_parser("revoke", help="revoke a token by id")
    tr.add_argument("id")

    g = sub.add_parser("gc", help="find (and optionally delete) unreferenced blocks")
    g.add_argument("--config")
    g.add_argument("--data-dir")
    g.add_argument("--delete", action="store_true", help="delete them (default: dry run)")
    g.add_argument("--grace-hours", type=float, default=24.0, help="never touch blocks younger than this")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd is None or args.cmd == "serve":
        from .config import load_config
        from .server import serve

        a = args if args.cmd == "serve" else argparse.Namespace(config=None, data_dir=None, listen=None, anonymous=None, arvados_api_host=None)
        try:
            cfg = load_config(
                a.config,
                data_dir=a.data_dir,
                listen=a.listen,
                anonymous=a.anonymous,
                arvados_api_host=a.arvados_api_host,
                backend="arvados" if a.arvados_api_host else None,
            )
        except (ValueError, OSError) as e:
            print(f"davcoll: {e}", file=sys.stderr)
            return 2
        return serve(cfg)
    if args.cmd == "token":
        return _token(args)
    if args.cmd == "gc":
        from .gc import run_gc

        return run_gc(args)
    return 2


def _token(args: argparse.Namespace) -> int:
    from .config import load_config
    from .storage.local_catalog import db_path_for
    from .storage.local_tokens import LocalTokenStore

    from pathlib import Path

    cfg = load_config(args.config, data_dir=args.data_dir)
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    store = LocalTokenStore(db_path_for(cfg.data_dir))
    try:
        if args.tcmd == "create":
            token = store.create(read_only=args.read_only, label=args.label)
            print(token)
            print(f"({'read-only' if args.read_only else 'read-write'} token; it is shown only once)", file=sys.stderr)
        elif args.tcmd == "list":
            for info in store.list():
                mode = "ro" if info.read_only else "rw"
                print(f"{info.id}  {mode}  {info.created_at}  {info.label}")
        elif args.tcmd == "revoke":
            n = store.revoke(args.id)
            print(f"revoked {n} token(s)")
            return 0 if n else 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

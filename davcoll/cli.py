"""The ``davcoll`` command: serve, token management, garbage collection.

Start-up problems (a bad setting, a port in use, an unusable data directory
or TLS file) end the command with one line on stderr that names the setting
or path, and a non-zero exit: the person reading it has to fix a file or a
flag, and a traceback only hides which.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
import tempfile
from pathlib import Path

from . import __version__

EXIT_CONFIG = 2  # a setting is wrong (also argparse's usage errors)
EXIT_ENVIRONMENT = 1  # the settings are fine, the machine is not (port taken, path unusable)


def _duration(text: str) -> float:
    """argparse type: a duration ('14d', '336h', '90s'), or 'never' = keep forever."""
    from .config import parse_duration

    if text.strip().lower() in ("never", "off", "inf"):
        return float("inf")
    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 12h, 14d, 2w, never)") from None


def _add_store_options(p: argparse.ArgumentParser, *, sub: bool) -> None:
    """--config/--data-dir.  ``token`` takes them before and after its
    subcommand: on the subcommand they are SUPPRESS-ed unless given, so they
    never overwrite a value given before it."""
    default = argparse.SUPPRESS if sub else None
    p.add_argument("--config", default=default, help="TOML config file (see config/)")
    p.add_argument("--data-dir", default=default, help="embedded backend data directory (default ./davcoll-data)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="davcoll", description="WebDAV server for Arvados-style collections")
    p.add_argument("--version", action="version", version=f"davcoll {__version__}")
    sub = p.add_subparsers(dest="cmd")

    s = sub.add_parser("serve", help="run the WebDAV server")
    _add_store_options(s, sub=False)
    s.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8080)")
    s.add_argument("--anonymous", choices=["none", "read", "write"], help="access without a token")
    s.add_argument("--arvados-api-host", help="use the Arvados backend at this API URL")

    t = sub.add_parser("token", help="manage access tokens of the embedded backend")
    _add_store_options(t, sub=False)
    tsub = t.add_subparsers(dest="tcmd", required=True)
    tc = tsub.add_parser("create", help="create a token and print it once")
    tc.add_argument("--read-only", action="store_true")
    tc.add_argument("--label", default="")
    tl = tsub.add_parser("list", help="list tokens (ids only, never the tokens)")
    tr = tsub.add_parser("revoke", help="revoke a token by id")
    tr.add_argument("id")
    for cmd in (tc, tl, tr):
        _add_store_options(cmd, sub=True)

    g = sub.add_parser(
        "gc",
        help="apply the retention policy and find (optionally delete) unreferenced blocks",
        description="Report which blocks keep how many bytes alive (live collections, old versions, trash); "
        "with --delete, purge trash and prune versions past the retention policy (config: trash_lifetime, "
        "version_lifetime, versions_kept; the options below override it) and delete the blocks nothing "
        "references any more.  Without --delete nothing changes.",
    )
    _add_store_options(g, sub=False)
    g.add_argument("--delete", action="store_true", help="apply: purge, prune and delete (default: dry run)")
    g.add_argument("--grace-hours", type=float, default=24.0, help="never delete blocks younger than this")
    g.add_argument("--prune-trash-older-than", type=_duration, metavar="DURATION",
                   help="purge collections trashed longer ago than this (default: trash_lifetime, 14d; 'never')")
    g.add_argument("--prune-versions-older-than", type=_duration, metavar="DURATION",
                   help="drop versions superseded longer ago than this (default: version_lifetime, 14d; 'never')")
    g.add_argument("--keep-versions", type=int, metavar="N",
                   help="always keep the newest N versions, current included (default: versions_kept, 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd is None or args.cmd == "serve":
        return _serve(args)
    if args.cmd == "token":
        return _token(args)
    if args.cmd == "gc":
        from .gc import run_gc

        return run_gc(args)
    return EXIT_CONFIG


def _fail(message: str, code: int) -> int:
    print(f"davcoll: {message}", file=sys.stderr)
    return code


def _serve(args: argparse.Namespace) -> int:
    from .config import load_config

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
    except ValueError as e:
        return _fail(str(e), EXIT_CONFIG)
    problem = check_data_dir(cfg.data_dir, create=True) or check_tls(cfg.tls_cert, cfg.tls_key) or check_listen(cfg.listen)
    if problem:
        return _fail(problem, EXIT_ENVIRONMENT)
    from .server import serve

    try:
        return serve(cfg)
    except (OSError, RuntimeError) as e:
        # What the checks above cannot foresee (the port taken in between, a
        # damaged catalog): still one line.
        return _fail(f"cannot start: {e}", EXIT_ENVIRONMENT)


def check_data_dir(path: str, *, create: bool) -> str | None:
    """Why the data directory ``path`` is unusable, or None (created if
    ``create``).  Writability is probed by writing, so read-only mounts and
    ACLs are seen too."""
    p = Path(os.path.abspath(path))
    if p.exists() and not p.is_dir():
        return f"data_dir {p}: exists and is not a directory"
    if not p.exists():
        if not create:
            return f"data_dir {p}: does not exist"
        try:
            p.mkdir(parents=True)
        except FileExistsError:
            pass
        except OSError as e:
            return f"data_dir {p}: cannot be created ({e.strerror})"
    try:
        with tempfile.TemporaryFile(dir=p, prefix=".davcoll-probe-"):
            pass
    except OSError as e:
        return f"data_dir {p}: not writable ({e.strerror})"
    return None


def check_tls(cert: str, key: str) -> str | None:
    """Why the TLS files cannot be used, or None (or no TLS)."""
    if not cert and not key:
        return None
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            return f"{name} {os.path.abspath(path)}: {e.strerror}"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A passphrase-protected key would otherwise prompt on the terminal.
        ctx.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        return f"tls_cert {cert} / tls_key {key}: not a PEM certificate with its unencrypted key ({reason})"
    return None


def check_listen(listen: str) -> str | None:
    """Why the server cannot listen on ``listen``, or None.  Binds the way
    the server will (SO_REUSEADDR), then lets go."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, OverflowError, ValueError) as e:
        return f"listen = {listen}: cannot resolve the host ({getattr(e, 'strerror', None) or e})"
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            return f"listen = {listen}: cannot listen there ({e.strerror})"
    return None


def _token(args: argparse.Namespace) -> int:
    from .config import load_config
    from .storage.local_catalog import db_path_for
    from .storage.local_tokens import LocalTokenStore

    try:
        cfg = load_config(args.config, data_dir=args.data_dir)
    except ValueError as e:
        return _fail(str(e), EXIT_CONFIG)
    if cfg.backend != "embedded":
        return _fail("tokens are for the embedded backend; with Arvados, clients use their Arvados tokens", EXIT_CONFIG)
    data_dir = os.path.abspath(cfg.data_dir)
    db = db_path_for(data_dir)
    # Only `create` may start a new data directory: a `list` or `revoke` run
    # in the wrong directory must not leave an empty one the server never sees.
    if not db.exists() and args.tcmd != "create":
        problem = check_data_dir(data_dir, create=False) or f"data_dir {data_dir}: no catalog here (nothing to {args.tcmd})"
        return _fail(f"{problem}; pass --data-dir or --config", EXIT_ENVIRONMENT)
    new = not Path(data_dir).exists()
    problem = check_data_dir(data_dir, create=True)
    if problem:
        return _fail(problem, EXIT_ENVIRONMENT)
    print(f"davcoll: {'created new' if new else 'using'} data dir {data_dir}", file=sys.stderr)
    store = LocalTokenStore(db)
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

"""Process assembly: backend + sessions + WsgiDAV app + guard, served by cheroot.

``build_app`` wires everything without starting a server (tests use it with
their own cheroot instance); ``serve`` runs it until SIGINT/SIGTERM.
cheroot is tuned per the WsgiDAV notes: many worker threads (in-flight
requests), long socket timeouts for slow uploads, a deep listen backlog,
many idle keep-alive connections and a cap on header size; davcoll/httpd.py
(imported only here) keeps idle and slow clients from holding workers.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from cheroot import wsgi as cheroot_wsgi

from . import __version__
from .collection.limits import TreeLimits
from .config import Config
from .dav.auth import TokenAuthenticator
from .dav.browser import DirectoryListing, SecurityHeaders
from .dav.errors import DomainErrors
from .dav.guard import RequestGuard
from .dav.junk import JunkPolicy, JunkStore
from .dav.locks import LockLimits, install_lock_manager
from .dav.props import DeadPropertyLimits, DeadPropertyManager
from .dav.provider import CollectionProvider
from .dav.sync import SyncMiddleware
from .httpd import Limits, Server
from .metrics import Metrics
from .session import Backend, SessionConfig, SessionManager

log = logging.getLogger("davcoll")

BLOCK_SIZE = 1 << 20  # WsgiDAV read/write chunk size (see wsgidav-notes §5)


@dataclass
class App:
    wsgi: Callable
    sessions: SessionManager
    backend: Backend
    metrics: Metrics
    config: Config
    lock_store: Any = None

    def close(self) -> None:
        self.sessions.close()
        if self.lock_store is not None:
            self.lock_store.close()


def make_backend(cfg: Config) -> Backend:
    if cfg.backend == "arvados":
        from .backends import ArvadosBackend

        return ArvadosBackend(
            cfg.arvados_api_host,
            insecure=cfg.arvados_insecure,
            anonymous_token=cfg.arvados_anonymous_token or None,
            block_cache_bytes=cfg.block_cache,
            data_dir=cfg.data_dir,
            shared_state=cfg.shared_state,
        )
    from .backends import LocalBackend

    return LocalBackend(cfg.data_dir, block_cache_bytes=cfg.block_cache)


def make_lock_store(cfg: Config):
    """Locks in the shared store when configured, else in the data directory."""
    if cfg.shared_state:
        from .storage.redis_locks import RedisLockStore

        return RedisLockStore(cfg.shared_state)
    from .storage.local_locks import LocalLockStore

    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    return LocalLockStore(Path(cfg.data_dir) / "locks.sqlite3")


def anonymous_policy(cfg: Config, backend: Backend) -> Callable[[], str] | str:
    """'auto' means read-write on loopback while no tokens exist, else off."""
    if cfg.anonymous != "auto":
        return cfg.anonymous
    loopback = cfg.is_loopback()
    token_count = getattr(backend, "token_count", None)
    if not loopback or token_count is None:
        return "none"
    return lambda: "write" if token_count() == 0 else "none"


def build_app(cfg: Config, backend: Backend | None = None) -> App:
    from wsgidav.error_printer import ErrorPrinter
    from wsgidav.request_resolver import RequestResolver
    from wsgidav.wsgidav_app import WsgiDAVApp

    backend = backend or make_backend(cfg)
    sessions = SessionManager(
        backend,
        tree_cache_bytes=cfg.tree_cache,
        buffer_bytes=cfg.buffer_limit,
        config=SessionConfig(revalidate_seconds=cfg.revalidate_seconds,
                             tree_limits=TreeLimits(cfg.max_depth, cfg.max_entries, cfg.max_manifest_bytes)),
    )
    metrics = Metrics(cache_stats=backend.cache_stats, buffered=lambda: sessions.budget.used)
    props_store = getattr(backend, "props", None)
    provider = CollectionProvider(
        junk=JunkStore(JunkPolicy(cfg.junk_patterns), max_bytes=cfg.junk_max_bytes, max_entries=cfg.junk_max_entries),
        prop_manager=(DeadPropertyManager(props_store, DeadPropertyLimits(cfg.max_dead_props, cfg.max_prop_bytes))
                      if props_store is not None else None),
        propfind_max_entries=cfg.propfind_infinity_max_entries,
    )
    dav_config: dict[str, Any] = {
        "provider_mapping": {"/": provider},
        "middleware_stack": [SecurityHeaders, ErrorPrinter, DomainErrors, TokenAuthenticator, SyncMiddleware, DirectoryListing, RequestResolver],
        "lock_storage": False,  # install_lock_manager below (scoped, shared)
        "property_manager": None,
        "block_size": BLOCK_SIZE,
        "verbose": 1,
        "logging": {"enable": False},
        # emulate_win32_lastmod off: Windows' Win32LastModifiedTime/CreationTime/
        # FileAttributes (PROPPATCHed after every copy) are then ordinary dead
        # properties, stored and moved/copied/deleted with their file; with it
        # on, WsgiDAV answered 200 and dropped them.
        "hotfixes": {"emulate_win32_lastmod": False, "re_encode_path_info": True},
        "dir_browser": {
            "enable": True,
            "ignore": list(cfg.junk_patterns),
            "davmount": True,
            "inline_active_content": cfg.inline_active_content,
            "response_trailer": f"davcoll {__version__}",
        },
        "add_header_MS_Author_Via": True,
        "davcoll": {
            "sessions": sessions,
            "anonymous": anonymous_policy(cfg, backend),
            "metrics": metrics,
        },
    }
    dav_app = WsgiDAVApp(dav_config)
    lock_store = make_lock_store(cfg)
    install_lock_manager(dav_app, provider, lock_store, LockLimits(
        max_timeout=cfg.max_lock_timeout, max_owner_bytes=cfg.max_lock_owner_bytes,
        max_per_principal=cfg.max_locks_per_principal))
    logging.getLogger("wsgidav").setLevel(logging.WARNING)

    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "backend": cfg.backend}

    guard = RequestGuard(dav_app, metrics=metrics, health=health)
    return App(wsgi=guard, sessions=sessions, backend=backend, metrics=metrics, config=cfg, lock_store=lock_store)


# --- the HTTP server ----------------------------------------------------------
# cheroot with davcoll's connection handling (davcoll/httpd.py): strict
# framing, request heads read without holding a worker, header deadline,
# growing pool, connection caps (issue 11).


def limits_from(cfg: Config) -> Limits:
    return Limits(
        header_timeout=float(cfg.header_timeout),
        idle_timeout=float(cfg.idle_timeout),
        max_threads=int(cfg.max_threads),
        max_connections=int(cfg.max_connections),
        max_connections_per_address=int(cfg.max_connections_per_address),
    )


def make_server(app: App, host: str, port: int, *, threads: int = 64, timeout: int = 300) -> cheroot_wsgi.Server:
    cfg = app.config
    limits = limits_from(cfg)
    # Keep the connection cap below the open-file limit (files, database, pipes need some too).
    fd_room = open_file_limit() - 256
    if fd_room > 0 and limits.max_connections > fd_room:
        limits = replace(limits, max_connections=fd_room)
    server = Server(
        (host, port),
        app.wsgi,
        threads=threads,
        timeout=timeout,
        limits=limits,
        request_queue_size=1024,
        server_name="davcoll",
    )
    server.max_request_header_size = 64 * 1024
    if cfg.tls_cert and cfg.tls_key:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        server.ssl_adapter = BuiltinSSLAdapter(cfg.tls_cert, cfg.tls_key)
    return server


def open_file_limit() -> int:
    try:
        import resource
    except ImportError:  # not POSIX
        return 0
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_open_file_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: every held connection is a descriptor."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError) as e:
        log.warning("could not raise the open-file limit: %s", e)


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("wsgidav").setLevel(logging.WARNING)


def mount_help(url: str) -> str:
    return (
        f"davcoll {__version__} serving {url}\n"
        f"  curl:    curl -u x:TOKEN {url}   (or no -u while anonymous access is on)\n"
        f"  rclone:  rclone config create dc webdav url={url} vendor=other\n"
        f"  macOS:   Finder > Go > Connect to Server > {url}\n"
        f"  Windows: map network drive to {url} (HTTPS needed for Basic auth)\n"
        f"  davfs2:  add 'buf_size 64' to /etc/davfs2/davfs2.conf, then mount -t davfs {url} /mnt/dc\n"
    )


def serve(cfg: Config) -> int:
    configure_logging(cfg.log_level)
    raise_open_file_limit()
    app = build_app(cfg)
    server = make_server(app, cfg.host, cfg.port, threads=cfg.threads, timeout=cfg.timeout)
    server.prepare()
    host, port = server.bind_addr[:2]
    scheme = "https" if server.ssl_adapter else "http"
    shown_host = f"[{host}]" if ":" in host else host
    print(mount_help(f"{scheme}://{shown_host}:{port}/"), flush=True)
    stop = threading.Event()

    def _stop(signum, frame):  # noqa: ARG001
        stop.set()
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server.serve()
    finally:
        app.close()
    return 0

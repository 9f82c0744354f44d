"""Process assembly: backend + sessions + WsgiDAV app + guard, served by cheroot.

``build_app`` wires everything without starting a server (tests use it with
their own cheroot instance); ``serve`` runs it until SIGINT/SIGTERM.
cheroot is tuned per the WsgiDAV notes: many worker threads (in-flight
requests), long socket timeouts for slow uploads, a deep listen backlog,
many idle keep-alive connections and a cap on header size.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cheroot import server as cheroot_server
from cheroot import wsgi as cheroot_wsgi

from . import __version__
from .config import Config
from .dav.auth import TokenAuthenticator
from .dav.errors import DomainErrors
from .dav.guard import RequestGuard
from .dav.junk import JunkPolicy, JunkStore
from .dav.locks import LockLimits, install_lock_manager
from .dav.props import DeadPropertyManager
from .dav.provider import CollectionProvider
from .dav.sync import SyncMiddleware
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
    from wsgidav.dir_browser import WsgiDavDirBrowser
    from wsgidav.request_resolver import RequestResolver
    from wsgidav.wsgidav_app import WsgiDAVApp

    backend = backend or make_backend(cfg)
    sessions = SessionManager(
        backend,
        tree_cache_bytes=cfg.tree_cache,
        buffer_bytes=cfg.buffer_limit,
        config=SessionConfig(revalidate_seconds=cfg.revalidate_seconds),
    )
    metrics = Metrics(cache_stats=backend.cache_stats, buffered=lambda: sessions.budget.used)
    props_store = getattr(backend, "props", None)
    provider = CollectionProvider(
        junk=JunkStore(JunkPolicy(cfg.junk_patterns), max_bytes=cfg.junk_max_bytes),
        prop_manager=DeadPropertyManager(props_store) if props_store is not None else None,
        propfind_infinity=cfg.propfind_infinity,
    )
    dav_config: dict[str, Any] = {
        "provider_mapping": {"/": provider},
        "middleware_stack": [ErrorPrinter, DomainErrors, TokenAuthenticator, SyncMiddleware, WsgiDavDirBrowser, RequestResolver],
        "lock_storage": False,  # install_lock_manager below (scoped, shared)
        "property_manager": None,
        "block_size": BLOCK_SIZE,
        "verbose": 1,
        "logging": {"enable": False},
        "hotfixes": {"emulate_win32_lastmod": True, "re_encode_path_info": True},
        "dir_browser": {
            "enable": True,
            "ignore": list(cfg.junk_patterns),
            "show_user": False,
            "davmount": True,
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

    guard = RequestGuard(dav_app, metrics=metrics, health=health, propfind_infinity=cfg.propfind_infinity)
    return App(wsgi=guard, sessions=sessions, backend=backend, metrics=metrics, config=cfg, lock_store=lock_store)


# --- stricter HTTP framing than cheroot's defaults ---------------------------
# cheroot keeps the last of several Content-Length lines, accepts "+5" and
# Content-Length together with Transfer-Encoding (body read as chunked), and
# parses chunk sizes with int(x, 16), so "-5" ends the body early (an empty
# file was stored for a malformed upload) and "0x", "_" or "+" pass.  Those
# are request-smuggling and data-integrity hazards (RFC 7230 3.3.2, 3.3.3,
# 4.1): refuse them.  Header problems raise ValueError inside cheroot's header
# reader, which answers 400 itself; a bad chunk-size line raises ValueError
# from wsgi.input, so the upload fails and nothing is stored.


class _OneContentLength(dict):
    def __setitem__(self, key: bytes, value: bytes) -> None:
        if key == b"Content-Length" and key in self:
            raise ValueError("more than one Content-Length header")
        super().__setitem__(key, value)


class _StrictHeaderReader(cheroot_server.HeaderReader):
    def __call__(self, rfile, hdict=None):
        headers = super().__call__(rfile, _OneContentLength())
        cl = headers.get(b"Content-Length")
        if cl is not None and not cl.isdigit():
            raise ValueError("malformed Content-Length header")
        if cl is not None and b"Transfer-Encoding" in headers:
            raise ValueError("both Content-Length and Transfer-Encoding")
        if hdict is None:
            return dict(headers)
        hdict.update(headers)
        return hdict


class _StrictRequest(cheroot_server.HTTPRequest):
    header_reader = _StrictHeaderReader()


class _StrictConnection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _StrictRequest


_CHUNK_SIZE_LINE = re.compile(rb"[0-9A-Fa-f]{1,15}(;[^\r\n]*)?\r\n")


class _ChunkLines:
    """The connection's input as cheroot's ChunkedRFile sees it: it reads
    chunk-size lines with readline(), which must be hex digits (at most
    15, so a size stays below 2**60) and an optional extension."""

    def __init__(self, rfile) -> None:
        self._rfile = rfile

    def readline(self, size: int = -1) -> bytes:
        line = self._rfile.readline()
        if not _CHUNK_SIZE_LINE.fullmatch(line):
            raise ValueError("malformed chunk-size line in chunked request body")
        return line

    def read(self, size: int = -1) -> bytes:
        return self._rfile.read(size)


class _Gateway(cheroot_wsgi.Gateway_10):
    def get_environ(self):
        req = self.req
        if req.chunked_read:
            req.rfile = cheroot_server.ChunkedRFile(_ChunkLines(req.conn.rfile), req.server.max_request_body_size)
        return super().get_environ()


def make_server(app: App, host: str, port: int, *, threads: int = 64, timeout: int = 300) -> cheroot_wsgi.Server:
    server = cheroot_wsgi.Server(
        (host, port),
        app.wsgi,
        numthreads=threads,
        timeout=timeout,
        request_queue_size=128,
        server_name="davcoll",
    )
    server.keep_alive_conn_limit = 256
    server.max_request_header_size = 64 * 1024
    server.ConnectionClass = _StrictConnection
    server.gateway = _Gateway
    cfg = app.config
    if cfg.tls_cert and cfg.tls_key:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        server.ssl_adapter = BuiltinSSLAdapter(cfg.tls_cert, cfg.tls_key)
    return server


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
        f"  davfs2:  mount -t davfs {url} /mnt/dc\n"
    )


def serve(cfg: Config) -> int:
    configure_logging(cfg.log_level)
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

"""A protocol-faithful fake Arvados cluster for tests and benchmarks.

What it is
----------
One API server and N keepstores, each a WSGI app served by its own cheroot
server on ``127.0.0.1`` (separate ports, so rendezvous order decides which
keepstore holds a block).  It implements exactly the parts of the protocols
davcoll uses, following ``shared/specs/arvados-protocols.md``:

* API: ``users/current``, ``config``, the discovery document,
  ``keep_services/accessible`` and collections get (by UUID or PDH) / list /
  create / update (PUT and PATCH) / delete / trash / untrash, with request
  parameters accepted in the query string, a form body or a JSON body
  (spec 7.1), ``select``, ``filters``, ``order``, ``limit``/``offset``,
  ``count`` and ``include_trash``.
* ``replace_files`` evaluated by :mod:`davcoll.storage.replace_files` (the
  same rules as the embedded catalog) under a per-UUID lock, with the result
  serialized in the Go SDK layout of spec 2.9 (:func:`render_go_layout`).
* Permission signatures (spec 4): a random signing key, TTL 2 weeks by
  default; keepstore PUT returns a signed locator; responses sign manifest
  locators for the caller (expiry capped at ``trash_at``); create/update
  reject a changed manifest whose locators lack a valid signature for the
  caller's token (403) and store it with ``+A`` hints stripped.
* Keepstore GET/HEAD verify signatures: missing token 401, expired 401,
  bad or missing signature 400 as in the 3.x keepstore
  (``legacy_keepstore_status=True`` answers 403 as older keepstores did).
* Errors as ``{"errors": [...], "error_token": "..."}``.

A token only sees collections owned by its own user (others get 404).
Each user's home project is the user UUID, as on a real cluster.

Deliberate simplifications
--------------------------
* Manifests are validated with davcoll's own strict parser, which rejects a
  little more than the real validator (spec 2.10); davcoll never sends those.
* No federation (``+R``), no storage-class accounting beyond ``default``, no
  admin users, no ``replace_segments``.
* ``package_version`` below 3.0 only changes two things: the discovery
  document reports it, and ``replace_files`` refuses ``current/`` and
  ``manifest_text/`` sources (400), as controllers before 3.0 did.
* A PDH source (``<PDH>/path`` and ``GET collections/<PDH>``) is looked up
  among every version any of the caller's collections ever had.

Fault knobs
-----------
``fake.faults`` injects trouble per endpoint class ``"api"``,
``"keep_put"`` or ``"keep_get"`` (GET and HEAD), optionally for one
keepstore (``service=index``) or for requests whose ``"METHOD /path"``
contains ``match``: error statuses for the next N requests or at a seeded
random rate, added latency, hangs (to provoke read timeouts), dropped
connections (before handling the request, or after it took effect:
``apply_then_drop_next``), truncated or corrupted keep GET bodies and
malformed API JSON.  ``take_down``/``bring_up`` stop and restart a service's
listener on its port (connection refused in between).
Randomness comes from ``random.Random(seed)``, so a run is reproducible.

This module is test-only code: the server never imports it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import random
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import cheroot.wsgi

from ..manifest import (
    EMPTY_BLOCK,
    MAX_BLOCK_SIZE,
    Dir,
    ManifestError,
    escape_name,
    locator_size,
    parse_manifest,
    portable_data_hash,
    render_empty_dir,
)
from ..storage import signatures as sg
from ..storage.catalog import BadRequest, CatalogError, NotFound
from ..storage.replace_files import apply_to_tree, plan_replace_files

__all__ = ["FakeArvados", "Faults", "FakeUser", "FakeKeepstore", "RequestRecord", "render_go_layout", "self_signed_cert"]

log = logging.getLogger(__name__)

_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"
_EMPTY_MD5 = EMPTY_BLOCK[:32]
_KEEP_PATH = re.compile(r"/([0-9a-fA-F]{32})((?:\+[0-9]+)?)((?:\+[A-Z][-A-Za-z0-9@_]*)*)")
_COLL_PATH = re.compile(r"/arvados/v1/collections/([^/]+)(/trash|/untrash)?")
_PDH = re.compile(r"[0-9a-f]{32}\+[0-9]+")
_UUID = re.compile(r"[a-z0-9]{5}-[a-z0-9]{5}-[a-z0-9]{15}")

ENDPOINTS = ("api", "keep_put", "keep_get")


# ---------------------------------------------------------------------------
# Go layout (spec 2.9): what the controller writes after replace_files.


def render_go_layout(root: Dir) -> str:
    """Serialize a tree the way the Go SDK's ``marshalManifest`` does.

    Same traversal, sorting and escaping as the Python layout, but the
    locator list of a line is built per segment and only a repeat of the
    *immediately preceding* block is collapsed; so ``a``=foo, ``b``=bar,
    ``c``=foo gives ``. FOO BAR FOO 0:3:a 3:3:b 6:3:c``.  Locators are used
    exactly as they appear in the tree (strip ``+A`` first if needed).
    """
    out: list[str] = []
    _go_dir(root, ".", out)
    return "".join(out)


def _go_dir(top: Dir, top_stream: str, out: list[str]) -> None:
    # An explicit stack, not recursion: trees may nest deeper than Python's stack.
    stack: list[tuple[Dir, str]] = [(top, top_stream)]
    while stack:
        d, stream = stack.pop()
        _go_one_dir(d, stream, out, stack)


def _go_one_dir(d: Dir, stream: str, out: list[str], stack: list[tuple[Dir, str]]) -> None:
    files = []
    subdirs = []
    for name in sorted(d):
        v = d[name]
        (files if type(v) is tuple else subdirs).append((name, v))
    if files:
        blocks: list[str] = []
        tokens: list[list] = []  # [pos, len, escaped name]
        stream_len = 0
        for name, segs in files:
            ename = escape_name(name)
            first = True
            for loc, off, ln in segs:
                if blocks and blocks[-1] == loc:
                    block_start = stream_len - locator_size(loc)
                else:
                    blocks.append(loc)
                    block_start = stream_len
                    stream_len += locator_size(loc)
                pos = block_start + off
                prev = tokens[-1] if tokens else None
                if not first and prev is not None and prev[0] + prev[1] == pos:
                    prev[1] += ln
                else:
                    tokens.append([pos, ln, ename])
                first = False
            if first:
                tokens.append([0, 0, ename])
        if not blocks:
            blocks.append(EMPTY_BLOCK)
        toks = " ".join(f"{p}:{n}:{e}" for p, n, e in tokens)
        out.append(f"{stream} {' '.join(blocks)} {toks}\n")
    elif not d and stream != ".":
        out.append(render_empty_dir(stream))
    for name, sub in reversed(subdirs):  # popped in sorted order
        stack.append((sub, stream + "/" + escape_name(name)))


def _strip_tree(d: Dir) -> Dir:
    """A copy of the tree with ``+A`` hints removed from every locator (iterative)."""
    top = Dir()
    stack: list[tuple[Dir, Dir]] = [(d, top)]
    while stack:
        src, out = stack.pop()
        for name, v in src.items():
            if type(v) is tuple:
                out[name] = tuple((sg.strip_permission(loc), off, ln) for loc, off, ln in v)
            else:
                sub = out[name] = Dir()
                stack.append((v, sub))
    return top


def self_signed_cert(directory: str | Path, host: str = "127.0.0.1") -> tuple[str, str]:
    """Write a self-signed certificate for ``host`` and its key; return the paths.

    For ``FakeArvados(tls=...)``: a cluster whose certificate no default CA
    bundle trusts, as with ``insecure = true`` deployments.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = d / "fake-arvados.crt", d / "fake-arvados.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


# ---------------------------------------------------------------------------
# Fault injection


@dataclass
class _Rule:
    endpoint: str
    action: str  # status | hang | drop | apply_drop | truncate | corrupt | malformed | stall
    remaining: int
    status: int = 503
    seconds: float = 0.0
    fraction: float = 0.5
    service: int | None = None
    match: str | None = None
    gate: threading.Event | None = None  # stall: the rest of the body waits for this
    done: threading.Event | None = None  # stall: set once the whole body was sent


class Faults:
    """Runtime-settable trouble, consulted at the start of every request.

    Queued rules (``*_next``) are consumed first, oldest first, by the first
    request they match; then the random error rate and the latency of the
    endpoint class apply.  All methods are thread-safe.
    """

    def __init__(self, seed: int = 0, stop: threading.Event | None = None) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._stop = stop or threading.Event()
        self._rules: list[_Rule] = []
        self._latency: dict[str, float] = {}
        self._rate: dict[str, tuple[float, int]] = {}

    @staticmethod
    def _check(endpoint: str) -> None:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, not {endpoint!r}")

    def _add(self, rule: _Rule) -> None:
        self._check(rule.endpoint)
        with self._lock:
            self._rules.append(rule)

    def fail_next(self, endpoint: str, n: int = 1, *, status: int = 503, service: int | None = None, match: str | None = None) -> None:
        """Answer the next ``n`` matching requests with ``status``."""
        self._add(_Rule(endpoint, "status", n, status=status, service=service, match=match))

    def hang_next(self, endpoint: str, n: int = 1, *, seconds: float = 2.0, service: int | None = None, match: str | None = None) -> None:
        """Sleep ``seconds`` before handling the next ``n`` requests (read timeouts)."""
        self._add(_Rule(endpoint, "hang", n, seconds=seconds, service=service, match=match))

    def drop_next(self, endpoint: str, n: int = 1, *, service: int | None = None, match: str | None = None) -> None:
        """Close the connection without any response."""
        self._add(_Rule(endpoint, "drop", n, service=service, match=match))

    def apply_then_drop_next(self, endpoint: str = "api", n: int = 1, *, service: int | None = None, match: str | None = None) -> None:
        """Handle the next ``n`` requests in full (an update is saved, a block
        stored), then close the connection without a response: the client
        cannot tell whether its request took effect."""
        self._add(_Rule(endpoint, "apply_drop", n, service=service, match=match))

    def truncate_next(self, n: int = 1, *, fraction: float = 0.5, service: int | None = None) -> None:
        """Keep GET: announce the full Content-Length, send ``fraction`` of the body, close."""
        self._add(_Rule("keep_get", "truncate", n, fraction=fraction, service=service))

    def corrupt_next(self, n: int = 1, *, service: int | None = None) -> None:
        """Keep GET: a full-length body with one byte flipped (md5 mismatch)."""
        self._add(_Rule("keep_get", "corrupt", n, service=service))

    def stall_next(self, n: int = 1, *, gate: threading.Event, done: threading.Event | None = None,
                   fraction: float = 0.5, seconds: float = 30.0, corrupt: bool = False,
                   service: int | None = None) -> None:
        """Keep GET: send ``fraction`` of the body, then wait until ``gate`` is
        set (at most ``seconds``) before sending the rest, then set ``done``;
        ``corrupt`` also flips the body's last byte.  Shows whether a reader
        streams (uses the first bytes before the block is complete)."""
        self._add(_Rule("keep_get", "stall", n, seconds=seconds, fraction=fraction, service=service, gate=gate,
                        done=done, status=1 if corrupt else 0))

    def malformed_json_next(self, n: int = 1, *, match: str | None = None) -> None:
        """API: a 200 whose body is not JSON."""
        self._add(_Rule("api", "malformed", n, match=match))

    def set_latency(self, endpoint: str, seconds: float) -> None:
        """Delay every request of the endpoint class by ``seconds``."""
        self._check(endpoint)
        with self._lock:
            self._latency[endpoint] = seconds

    def set_error_rate(self, endpoint: str, rate: float, *, status: int = 503) -> None:
        """Fail a seeded-random fraction ``rate`` of the endpoint's requests."""
        self._check(endpoint)
        with self._lock:
            self._rate[endpoint] = (rate, status)

    def reset(self) -> None:
        with self._lock:
            self._rules.clear()
            self._latency.clear()
            self._rate.clear()

    def pending(self) -> int:
        """How many queued faults are still to fire."""
        with self._lock:
            return sum(r.remaining for r in self._rules)

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up when the fake is stopping."""
        if seconds > 0:
            self._stop.wait(seconds)

    def take(self, endpoint: str, service: int | None, request_line: str) -> tuple[float, _Rule | None]:
        """``(latency, rule)`` for one request; the rule is consumed."""
        with self._lock:
            latency = self._latency.get(endpoint, 0.0)
            for rule in self._rules:
                if rule.endpoint != endpoint or rule.remaining <= 0:
                    continue
                if rule.service is not None and rule.service != service:
                    continue
                if rule.match is not None and rule.match not in request_line:
                    continue
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._rules.remove(rule)
                return latency, rule
            rate = self._rate.get(endpoint)
            if rate is not None and self._rng.random() < rate[0]:
                return latency, _Rule(endpoint, "status", 1, status=rate[1])
        return latency, None


# ---------------------------------------------------------------------------
# Cluster state


@dataclass
class FakeUser:
    uuid: str
    username: str
    token: str  # v2/<token uuid>/<secret>
    secret: str
    active: bool = True


@dataclass
class _Collection:
    uuid: str
    owner_uuid: str
    name: str | None
    manifest: str  # stored text, +A hints stripped
    pdh: str
    properties: dict
    description: str | None
    created_at: str
    modified_at: str
    modified_by: str
    version: int = 1
    is_trashed: bool = False
    trash_at: str | None = None
    delete_at: str | None = None
    trash_at_unix: float | None = None
    replication_desired: int | None = None


@dataclass
class RequestRecord:
    """One request as a server saw it (for assertions in tests)."""

    endpoint: str  # "api" | "keep_put" | "keep_get"
    method: str
    path: str
    service: int | None
    status: int
    headers: dict[str, str]  # lower-case names; Authorization omitted
    token: str | None
    query: str = ""


@dataclass
class FakeKeepstore:
    index: int
    uuid: str
    read_only: bool = False
    blocks: dict[str, bytes] = field(default_factory=dict)  # md5 -> data
    port: int = 0
    url: str = ""


class _Gateway(cheroot.wsgi.Gateway_10):
    """Exposes a way to slam the connection shut to the fake's apps."""

    def get_environ(self):  # type: ignore[override]
        env = super().get_environ()
        req = self.req

        def abort() -> None:
            req.close_connection = True
            try:
                req.conn.wfile.flush()
            except Exception:
                pass
            try:
                req.conn.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        env["fake.abort"] = abort
        return env


def _now_iso(t: float) -> str:
    dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}000Z"


class _HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


_STATUS_TEXT = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
    411: "Length Required", 413: "Request Entity Too Large", 422: "Unprocessable Entity",
    423: "Locked", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 507: "Insufficient Storage",
}


def _status_line(code: int) -> str:
    return f"{code} {_STATUS_TEXT.get(code, 'Error')}"


_COLLECTION_FIELDS = (
    "kind", "etag", "uuid", "owner_uuid", "created_at", "modified_at", "modified_by_client_uuid",
    "modified_by_user_uuid", "name", "description", "properties", "portable_data_hash",
    "manifest_text", "unsigned_manifest_text", "replication_desired", "replication_confirmed",
    "replication_confirmed_at", "storage_classes_desired", "storage_classes_confirmed",
    "storage_classes_confirmed_at", "trash_at", "delete_at", "is_trashed", "current_version_uuid",
    "version", "preserve_version", "file_count", "file_size_total",
)
_DEFAULT_LIST_FIELDS = tuple(f for f in _COLLECTION_FIELDS if f not in ("manifest_text", "unsigned_manifest_text"))
_DEFAULT_GET_FIELDS = tuple(f for f in _COLLECTION_FIELDS if f != "unsigned_manifest_text")
_BOOL_PARAMS = ("distinct", "ensure_unique_name", "include_trash", "include_old_versions")
_INT_PARAMS = ("limit", "offset")


class FakeArvados:
    """The fake cluster.  Use as a context manager, or call start()/stop().

    >>> with FakeArvados(keepstores=2) as fake:
    ...     token = fake.add_user("alice")
    ...     fake.api_url, fake.keep_urls
    """

    def __init__(
        self,
        *,
        cluster_id: str = "zzzzz",
        keepstores: int = 2,
        seed: int = 0,
        blob_signing_key: str | None = None,
        blob_signing_ttl: int = sg.DEFAULT_TTL,
        blob_signing: bool = True,
        package_version: str = "3.1.2",
        collection_versioning: bool = False,
        legacy_keepstore_status: bool = False,
        max_items_per_response: int = 1000,
        replicas_per_put: int = 1,
        numthreads: int = 24,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.seed = seed
        self._rng = random.Random(seed)
        self.blob_signing_key = blob_signing_key or "".join(self._rng.choice(_ALNUM) for _ in range(64))
        self.blob_signing_ttl = blob_signing_ttl
        self.blob_signing = blob_signing
        self.package_version = package_version
        self.collection_versioning = collection_versioning
        self.legacy_keepstore_status = legacy_keepstore_status
        self.max_items_per_response = max_items_per_response
        self.replicas_per_put = replicas_per_put
        self.time_offset = 0.0  # added to the wall clock: tests age signatures with it
        self._numthreads = numthreads
        self.tls = tls  # (certificate file, key file): serve HTTPS (see self_signed_cert)
        self._stop_event = threading.Event()
        self.faults = Faults(seed, self._stop_event)
        # _lock guards every dict below and the rng; _coll_locks serialize
        # updates per collection like the controller's uuid_locks table.
        self._lock = threading.RLock()
        self._coll_locks: dict[str, threading.Lock] = {}
        self.users: dict[str, FakeUser] = {}  # uuid -> user
        self._by_token: dict[str, FakeUser] = {}  # full token and bare secret -> user
        self.collections: dict[str, _Collection] = {}
        self._history: dict[str, list[tuple[str, str]]] = {}  # pdh -> [(owner_uuid, text)]
        self._stats_cache: dict[str, tuple[int, int]] = {}
        self.keepstores = [
            FakeKeepstore(index=i, uuid=f"{cluster_id}-bi6l4-{self._rand15()}") for i in range(keepstores)
        ]
        self.requests: list[RequestRecord] = []
        self._last_modified = 0.0
        self._servers: list[cheroot.wsgi.Server] = []
        self._roles: dict[str, tuple[cheroot.wsgi.Server, threading.Thread]] = {}  # "api"/"keep<i>" -> server
        self._threads: list[threading.Thread] = []
        self.api_url = ""
        self.api_port = 0

    # ------------------------------------------------------------------
    # Lifecycle

    def __enter__(self) -> "FakeArvados":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, app: Callable, port: int = 0, role: str = "") -> int:
        if port == 0:
            # A fixed port makes cheroot set SO_REUSEADDR, so ``bring_up``
            # can listen on it again while old connections linger.
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        server = cheroot.wsgi.Server(("127.0.0.1", port), app, numthreads=self._numthreads, shutdown_timeout=1, server_name="fake-arvados")
        server.gateway = _Gateway
        server.error_log = lambda *a, **k: None  # aborted connections are intentional
        if self.tls is not None:
            from cheroot.ssl.builtin import BuiltinSSLAdapter

            server.ssl_adapter = BuiltinSSLAdapter(*self.tls)
        server.prepare()
        port = server.bind_addr[1]
        t = threading.Thread(target=server.serve, name=f"fake-arvados-{port}", daemon=True)
        t.start()
        self._servers.append(server)
        self._threads.append(t)
        if role:
            self._roles[role] = (server, t)
        return port

    def start(self) -> None:
        self._stop_event.clear()
        self.api_port = self._serve(self._api_app, role="api")
        scheme = "https" if self.tls is not None else "http"
        self.api_url = f"{scheme}://127.0.0.1:{self.api_port}"
        for ks in self.keepstores:
            ks.port = self._serve(self._keep_app(ks), role=f"keep{ks.index}")
            ks.url = f"{scheme}://127.0.0.1:{ks.port}/"

    def _roles_of(self, service: str) -> list[str]:
        if service == "api":
            return ["api"]
        if service == "keep":
            return [f"keep{ks.index}" for ks in self.keepstores]
        if service.startswith("keep") and service[4:].isdigit() and int(service[4:]) < len(self.keepstores):
            return [service]
        raise ValueError("service must be 'api', 'keep' or 'keep<index>'")

    def take_down(self, service: str) -> None:
        """Stop a service's listener: its port then refuses connections
        (``"api"``, ``"keep"`` for every keepstore, or ``"keep<index>"``)."""
        for role in self._roles_of(service):
            hit = self._roles.pop(role, None)
            if hit is None:
                continue
            server, t = hit
            server.stop()
            t.join(timeout=10)
            self._servers.remove(server)
            self._threads.remove(t)

    def bring_up(self, service: str) -> None:
        """Serve a service taken down by ``take_down`` again, on its old port."""
        for role in self._roles_of(service):
            if role in self._roles:
                continue
            if role == "api":
                self._serve(self._api_app, self.api_port, role)
            else:
                ks = self.keepstores[int(role[4:])]
                self._serve(self._keep_app(ks), ks.port, role)

    def stop(self) -> None:
        self._stop_event.set()

        def stop_one(server: cheroot.wsgi.Server) -> None:
            try:
                server.stop()
            except Exception:  # pragma: no cover - best effort at teardown
                pass

        # Each cheroot stop takes ~0.5 s of polling; stop them side by side.
        stoppers = [threading.Thread(target=stop_one, args=(s,), daemon=True) for s in self._servers]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(timeout=10)
        for t in self._threads:
            t.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        self._roles.clear()

    @property
    def keep_urls(self) -> list[str]:
        return [ks.url for ks in self.keepstores]

    # ------------------------------------------------------------------
    # Test helpers (direct state access, no HTTP)

    def now(self) -> float:
        return time.time() + self.time_offset

    def _rand15(self) -> str:
        with self._lock:
            return "".join(self._rng.choice(_ALNUM) for _ in range(15))

    def add_user(self, username: str, *, token: str | None = None) -> str:
        """Create a user; return its v2 API token (the bare secret works too)."""
        with self._lock:
            uuid = f"{self.cluster_id}-tpzed-{self._rand15()}"
            if token is None:
                secret = "".join(self._rng.choice(_ALNUM) for _ in range(49))
                token = f"v2/{self.cluster_id}-gj3su-{self._rand15()}/{secret}"
            secret = token.rsplit("/", 1)[-1]
            user = FakeUser(uuid=uuid, username=username, token=token, secret=secret)
            self.users[uuid] = user
            self._by_token[token] = user
            self._by_token[secret] = user
            return token

    def user_for(self, token: str) -> FakeUser:
        return self._by_token[token]

    def revoke(self, token: str) -> None:
        """Make a token invalid (its requests then get 401)."""
        with self._lock:
            user = self._by_token[token]
            user.active = False

    def transfer(self, uuid: str, to_user_uuid: str) -> None:
        """Give a collection, and its current content's history entry, to
        another user: the old owner can no longer read it by UUID or PDH."""
        with self._lock:
            c = self.collections[uuid]
            old = c.owner_uuid
            c.owner_uuid = to_user_uuid
            entries = self._history.get(c.pdh, [])
            self._history[c.pdh] = [(to_user_uuid if o == old else o, t) for o, t in entries]

    def sign(self, locator: str, token: str, *, expiry: int | None = None) -> str:
        """Sign a locator the way this cluster would for ``token``."""
        return sg.sign_locator(locator, self.blob_signing_key, token, expiry=expiry, ttl=self.blob_signing_ttl, now=self.now())

    def store_block(self, data: bytes, *, services: Iterable[int] | None = None) -> str:
        """Put a block straight into keepstores (all by default); return it unsigned."""
        md5 = hashlib.md5(data).hexdigest()
        with self._lock:
            for i in services if services is not None else range(len(self.keepstores)):
                self.keepstores[i].blocks[md5] = bytes(data)
        return f"{md5}+{len(data)}"

    def block_locations(self, locator: str) -> list[int]:
        """Indexes of the keepstores holding a block."""
        md5 = locator[:32]
        with self._lock:
            return [ks.index for ks in self.keepstores if md5 in ks.blocks]

    def delete_block(self, locator: str, *, services: Iterable[int] | None = None) -> None:
        md5 = locator[:32]
        with self._lock:
            for i in services if services is not None else range(len(self.keepstores)):
                self.keepstores[i].blocks.pop(md5, None)

    def set_manifest_raw(self, uuid: str, text: str) -> None:
        """Store any text as a collection's manifest, bypassing validation."""
        with self._lock:
            c = self.collections[uuid]
            c.manifest = text
            c.pdh = self._pdh_or_garbage(text)

    def stored_manifest(self, uuid: str) -> str:
        """The unsigned manifest text as stored."""
        with self._lock:
            return self.collections[uuid].manifest

    def requests_for(self, endpoint: str) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.endpoint == endpoint]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    @staticmethod
    def _pdh_or_garbage(text: str) -> str:
        try:
            return portable_data_hash(text)
        except Exception:
            return hashlib.md5(text.encode("utf-8", "replace")).hexdigest() + "+0"

    # ------------------------------------------------------------------
    # Shared request plumbing

    @staticmethod
    def _token_from(environ: dict) -> str | None:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        for scheme in ("Bearer ", "OAuth2 "):
            if auth.startswith(scheme):
                return auth[len(scheme) :].strip() or None
        qs = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        if qs.get("api_token"):
            return qs["api_token"][0]
        return None

    def _record(self, endpoint: str, environ: dict, service: int | None, status: int, token: str | None) -> None:
        headers = {
            k[5:].replace("_", "-").lower(): v
            for k, v in environ.items()
            if k.startswith("HTTP_") and k != "HTTP_AUTHORIZATION"
        }
        for k in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            if environ.get(k):
                headers[k.replace("_", "-").lower()] = environ[k]
        rec = RequestRecord(
            endpoint, environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), service, status, headers, token,
            urllib.parse.unquote_plus(environ.get("QUERY_STRING", "")),
        )
        with self._lock:
            self.requests.append(rec)

    def _pre_fault(self, endpoint: str, service: int | None, environ: dict) -> _Rule | None:
        """Apply latency and hangs; return a rule the handler must act on."""
        line = f"{environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')}"
        latency, rule = self.faults.take(endpoint, service, line)
        self.faults.sleep(latency)
        if rule is not None and rule.action == "hang":
            self.faults.sleep(rule.seconds)
            return None
        return rule

    @staticmethod
    def _drain(environ: dict) -> None:
        """Read the request body so a keep-alive connection stays usable."""
        try:
            n = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            n = 0
        if n > 0:
            environ["wsgi.input"].read(n)

    # ------------------------------------------------------------------
    # API server

    def _api_app(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        token = self._token_from(environ)
        rule = self._pre_fault("api", None, environ)
        if rule is not None:
            if rule.action == "drop":
                self._record("api", environ, None, 0, token)
                environ["fake.abort"]()
                start_response("500 Internal Server Error", [("Content-Length", "0")])
                return []
            if rule.action == "status":
                self._drain(environ)
                return self._json_error(start_response, environ, token, rule.status, f"injected fault (HTTP {rule.status})")
            if rule.action == "malformed":
                self._drain(environ)
                self._record("api", environ, None, 200, token)
                body = b'{"kind": "arvados#collection", "uuid": '
                start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
                return [body]
        try:
            status, body = self._api_dispatch(environ, token)
            if rule is not None and rule.action == "apply_drop":
                self._record("api", environ, None, 0, token)
                environ["fake.abort"]()
                start_response("500 Internal Server Error", [("Content-Length", "0")])
                return []
        except _HTTPError as e:
            return self._json_error(start_response, environ, token, e.status, e.message)
        except CatalogError as e:
            return self._json_error(start_response, environ, token, e.status, str(e))
        except Exception as e:  # pragma: no cover - a bug in the fake
            log.exception("fake API failed")
            return self._json_error(start_response, environ, token, 500, f"internal error in fake: {type(e).__name__}: {e}")
        data = json.dumps(body).encode("utf-8")
        self._record("api", environ, None, status, token)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        rid = environ.get("HTTP_X_REQUEST_ID")
        if rid:
            headers.append(("X-Request-Id", rid))
        start_response(_status_line(status), headers)
        return [data]

    def _json_error(self, start_response: Callable, environ: dict, token: str | None, status: int, message: str) -> list[bytes]:
        with self._lock:
            err_token = f"{int(time.time())}+{self._rng.getrandbits(32):08x}"
        data = json.dumps({"errors": [message], "error_token": err_token}).encode("utf-8")
        self._record("api", environ, None, status, token)
        start_response(_status_line(status), [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    @staticmethod
    def _read_params(environ: dict) -> dict[str, Any]:
        """Query string + form or JSON body, merged as spec 7.1 describes."""
        params: dict[str, Any] = {}

        def put_str(k: str, v: str) -> None:
            if v == "" or v == "null":
                params[k] = None
            elif v[:1] in ("[", "{", '"'):
                try:
                    params[k] = json.loads(v)
                except ValueError:
                    raise _HTTPError(400, f"invalid JSON in parameter {k!r}") from None
            else:
                params[k] = v

        for k, v in urllib.parse.parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True):
            if k != "api_token":
                put_str(k, v)
        try:
            n = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            n = 0
        raw = environ["wsgi.input"].read(n) if n > 0 else b""
        ctype = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
        if raw:
            if ctype == "application/x-www-form-urlencoded":
                for k, v in urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True):
                    put_str(k, v)
            elif ctype in ("", "application/json"):
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise _HTTPError(400, "request body is not valid JSON") from None
                if not isinstance(body, dict):
                    raise _HTTPError(400, "request body must be a JSON object")
                if "collection" not in body:
                    # A body without the resource key carries the attributes.
                    attrs = {k: v for k, v in body.items() if k not in ("replace_files", "select", "ensure_unique_name", "replace_segments")}
                    rest = {k: v for k, v in body.items() if k not in attrs}
                    body = dict(rest, collection=attrs) if attrs else rest
                params.update(body)
            else:
                raise _HTTPError(400, f"unsupported content type {ctype!r}")
        for k in _INT_PARAMS:
            if k in params and params[k] is not None:
                try:
                    params[k] = int(params[k])
                except (TypeError, ValueError):
                    raise _HTTPError(400, f"invalid integer for {k!r}") from None
        for k in _BOOL_PARAMS:
            if k in params:
                v = params[k]
                params[k] = v if isinstance(v, bool) else str(v).lower() not in ("", "false", "0", "none")
        return params

    def _auth_user(self, token: str | None) -> FakeUser:
        if not token:
            raise _HTTPError(401, "Not logged in")
        with self._lock:
            user = self._by_token.get(token)
        if user is None or not user.active:
            raise _HTTPError(401, "Not logged in (invalid or expired API token)")
        return user

    def _api_dispatch(self, environ: dict, token: str | None) -> tuple[int, Any]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        params = self._read_params(environ)
        if method == "POST" and params.get("_method") == "GET":
            method = "GET"
        if path == "/arvados/v1/config" and method == "GET":
            return 200, self._config()
        if path == "/discovery/v1/apis/arvados/v1/rest" and method == "GET":
            return 200, self._discovery()
        user = self._auth_user(token)
        assert token is not None
        if path == "/arvados/v1/users/current" and method == "GET":
            return 200, self._user_json(user)
        if path == "/arvados/v1/keep_services/accessible" and method == "GET":
            return 200, self._keep_services_json()
        if path == "/arvados/v1/collections":
            if method == "GET":
                return 200, self._list(user, token, params)
            if method == "POST":
                return 200, self._create(user, token, params)
        m = _COLL_PATH.fullmatch(path)
        if m is not None:
            ident, action = m.group(1), m.group(2)
            if action is None and method == "GET":
                return 200, self._get(user, token, ident, params)
            if action is None and method in ("PUT", "PATCH"):
                return 200, self._update(user, token, ident, params)
            if (action is None and method == "DELETE") or (action == "/trash" and method == "POST"):
                return 200, self._trash(user, token, ident, params, trash=True)
            if action == "/untrash" and method == "POST":
                return 200, self._trash(user, token, ident, params, trash=False)
        raise _HTTPError(404, f"Path not found: {method} {path}")

    def _config(self) -> dict:
        return {
            "ClusterID": self.cluster_id,
            "Collections": {
                "BlobSigning": self.blob_signing,
                "BlobSigningTTL": f"{self.blob_signing_ttl}s",
                "CollectionVersioning": self.collection_versioning,
                "DefaultReplication": 2,
            },
            "StorageClasses": {"default": {"Default": True, "Priority": 0}},
            "API": {"MaxItemsPerResponse": self.max_items_per_response},
        }

    def _discovery(self) -> dict:
        return {
            "kind": "discovery#restDescription",
            "id": "arvados:v1",
            "name": "arvados",
            "version": "v1",
            "packageVersion": self.package_version,
            "revision": "20240101",
            "source_version": "fake",
            "uuidPrefix": self.cluster_id,
            "rootUrl": self.api_url + "/",
            "servicePath": "arvados/v1/",
            "blobSignatureTtl": self.blob_signing_ttl,
            "defaultCollectionReplication": 2,
            "maxRequestSize": 134217728,
            "resources": {},
        }

    def _user_json(self, user: FakeUser) -> dict:
        return {
            "kind": "arvados#user",
            "uuid": user.uuid,
            "owner_uuid": f"{self.cluster_id}-tpzed-000000000000000",
            "username": user.username,
            "email": f"{user.username}@example.com",
            "full_name": user.username.title(),
            "first_name": user.username.title(),
            "last_name": "",
            "is_active": user.active,
            "is_admin": False,
        }

    def _keep_services_json(self) -> dict:
        items = [
            {
                "kind": "arvados#keepService",
                "uuid": ks.uuid,
                "owner_uuid": f"{self.cluster_id}-tpzed-000000000000000",
                "service_host": "127.0.0.1",
                "service_port": ks.port,
                "service_ssl_flag": self.tls is not None,
                "service_type": "disk",
                "read_only": ks.read_only,
            }
            for ks in self.keepstores
        ]
        return {"kind": "arvados#keepServiceList", "items": items, "items_available": len(items), "offset": 0, "limit": len(items)}

    # -- collections ---------------------------------------------------

    def _readable(self, user: FakeUser, uuid: str, include_trash: bool = False) -> _Collection:
        with self._lock:
            c = self.collections.get(uuid)
        if c is None or c.owner_uuid != user.uuid or (c.is_trashed and not include_trash):
            raise _HTTPError(404, f"Path not found: collection {uuid} does not exist or is not readable")
        return c

    def _render(self, c: _Collection, token: str, select: Iterable[str]) -> dict:
        now = self.now()
        out: dict[str, Any] = {}
        for f in select:
            if f == "kind":
                out[f] = "arvados#collection"
            elif f == "etag":
                out[f] = hashlib.md5(f"{c.uuid}{c.modified_at}".encode()).hexdigest()[:25]
            elif f == "uuid" or f == "current_version_uuid":
                out[f] = c.uuid
            elif f == "owner_uuid":
                out[f] = c.owner_uuid
            elif f in ("created_at", "modified_at"):
                out[f] = getattr(c, f)
            elif f == "modified_by_user_uuid":
                out[f] = c.modified_by
            elif f in ("name", "description", "version", "is_trashed", "trash_at", "delete_at", "replication_desired"):
                out[f] = getattr(c, f)
            elif f == "properties":
                out[f] = json.loads(json.dumps(c.properties))
            elif f == "portable_data_hash":
                out[f] = c.pdh
            elif f == "manifest_text":
                out[f] = self._signed(c, token, now)
            elif f == "unsigned_manifest_text":
                out[f] = c.manifest
            elif f == "storage_classes_desired":
                out[f] = ["default"]
            elif f == "storage_classes_confirmed":
                out[f] = []
            elif f in ("replication_confirmed", "replication_confirmed_at", "storage_classes_confirmed_at", "modified_by_client_uuid"):
                out[f] = None
            elif f == "preserve_version":
                out[f] = False
            elif f in ("file_count", "file_size_total"):
                count, total = self._file_stats(c.manifest)
                out[f] = count if f == "file_count" else total
        out.setdefault("kind", "arvados#collection")
        return out

    def _file_stats(self, manifest: str) -> tuple[int, int]:
        """``(file_count, file_size_total)``, cached by text (lists render many rows)."""
        key = hashlib.md5(manifest.encode("utf-8", "replace")).hexdigest()
        with self._lock:
            hit = self._stats_cache.get(key)
        if hit is None:
            try:
                files = list(parse_manifest(manifest).files())
            except ManifestError:
                files = []
            hit = (len(files), sum(sum(seg[2] for seg in segs) for _, segs in files))
            with self._lock:
                self._stats_cache[key] = hit
        return hit

    def _signed(self, c: _Collection, token: str, now: float) -> str:
        if not self.blob_signing or c.is_trashed or not c.manifest:
            return c.manifest
        expiry = int(now) + self.blob_signing_ttl
        if c.trash_at_unix is not None:
            expiry = min(expiry, int(c.trash_at_unix))
        try:
            return sg.sign_manifest(c.manifest, self.blob_signing_key, token, expiry=expiry, ttl=self.blob_signing_ttl)
        except Exception:
            return c.manifest

    @staticmethod
    def _select(params: dict, default: tuple[str, ...]) -> tuple[str, ...]:
        sel = params.get("select")
        if sel is None:
            return default
        if not isinstance(sel, list) or not all(isinstance(s, str) for s in sel):
            raise _HTTPError(400, "select must be a list of attribute names")
        for s in sel:
            if s not in _COLLECTION_FIELDS:
                raise _HTTPError(400, f"Invalid attribute {s!r} in select")
        return tuple(sel)

    def _get(self, user: FakeUser, token: str, ident: str, params: dict) -> dict:
        if _PDH.fullmatch(ident):
            text = self._find_pdh(user, ident)
            if text is None:
                raise _HTTPError(404, f"Path not found: collection {ident} does not exist or is not readable")
            tmp = _Collection(ident, user.uuid, None, text, ident, {}, None, "", "", "")
            out = {"kind": "arvados#collection", "portable_data_hash": ident, "manifest_text": self._signed(tmp, token, self.now()), "trash_at": None}
            sel = params.get("select")
            if isinstance(sel, list):
                out = {k: v for k, v in out.items() if k in sel or k == "kind"}
            return out
        if not _UUID.fullmatch(ident):
            raise _HTTPError(404, f"Path not found: {ident!r} is not a UUID or PDH")
        c = self._readable(user, ident, bool(params.get("include_trash")))
        return self._render(c, token, self._select(params, _DEFAULT_GET_FIELDS))

    def _find_pdh(self, user: FakeUser, pdh: str) -> str | None:
        with self._lock:
            for c in self.collections.values():
                if c.pdh == pdh and c.owner_uuid == user.uuid:
                    return c.manifest
            for owner, text in self._history.get(pdh, ()):
                if owner == user.uuid:
                    return text
        return None

    def _list(self, user: FakeUser, token: str, params: dict) -> dict:
        select = self._select(params, _DEFAULT_LIST_FIELDS)
        filters = params.get("filters") or []
        if not isinstance(filters, list) or not all(isinstance(f, list) and len(f) == 3 for f in filters):
            raise _HTTPError(400, "filters must be a list of [attribute, operator, operand] triples")
        include_trash = bool(params.get("include_trash"))
        with self._lock:
            cands = [c for c in self.collections.values() if c.owner_uuid == user.uuid and (include_trash or not c.is_trashed)]
        rows = [(c, self._render(c, token, _DEFAULT_LIST_FIELDS)) for c in cands]
        for attr, op, operand in filters:
            rows = [(c, r) for c, r in rows if self._filter_match(r, attr, op, operand)]
        order = params.get("order") or ["modified_at desc", "uuid desc"]
        if isinstance(order, str):
            order = [o.strip() for o in order.split(",")]
        for spec in reversed(order):
            parts = spec.split()
            attr = parts[0]
            if attr not in _COLLECTION_FIELDS:
                raise _HTTPError(400, f"Invalid attribute {attr!r} in order")
            desc = len(parts) > 1 and parts[1].lower() == "desc"
            rows.sort(key=lambda cr: (cr[1].get(attr) is None, cr[1].get(attr) if cr[1].get(attr) is not None else ""), reverse=desc)
        limit = params.get("limit")
        limit = 100 if limit is None else limit
        if limit < 0:
            raise _HTTPError(400, "limit must be >= 0")
        limit = min(limit, self.max_items_per_response)
        offset = params.get("offset") or 0
        page = rows[offset : offset + limit]
        out: dict[str, Any] = {
            "kind": "arvados#collectionList",
            "etag": "",
            "offset": offset,
            "limit": limit,
            "items": [self._render(c, token, select) for c, _ in page],
        }
        if params.get("count", "exact") != "none":
            out["items_available"] = len(rows)
        return out

    @staticmethod
    def _filter_match(row: dict, attr: str, op: str, operand: Any) -> bool:
        if attr.startswith("properties."):
            value = row.get("properties", {}).get(attr[len("properties.") :])
        elif attr in _COLLECTION_FIELDS:
            value = row.get(attr)
        else:
            raise _HTTPError(422, f"Invalid attribute {attr!r} in filter")
        op = op.lower()
        if op == "=":
            return value == operand
        if op == "!=":
            return value != operand
        if op == "in":
            return value in (operand or [])
        if op == "not in":
            return value not in (operand or [])
        if op in ("<", "<=", ">", ">="):
            if value is None:
                return False
            return {"<": value < operand, "<=": value <= operand, ">": value > operand, ">=": value >= operand}[op]
        if op in ("like", "ilike"):
            if value is None:
                return False
            pat = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in str(operand))
            return re.fullmatch(pat, str(value), re.IGNORECASE if op == "ilike" else 0) is not None
        if op == "exists":
            return value is not None
        raise _HTTPError(422, f"Invalid operator {op!r} in filter")

    # -- writes ----------------------------------------------------------

    def _check_signatures(self, text: str, token: str) -> None:
        """403 unless every locator is validly signed for this token (spec 4.4)."""
        if not self.blob_signing:
            return
        now = self.now()
        for loc in sg.manifest_locators(text):
            try:
                sg.verify_locator(loc, self.blob_signing_key, token, ttl=self.blob_signing_ttl, now=now)
            except sg.SignatureError as e:
                raise _HTTPError(403, f"Permission denied: block {loc[:32]}: {e}") from None

    @staticmethod
    def _parse(text: Any) -> Dir:
        if not isinstance(text, str):
            raise _HTTPError(422, "manifest_text must be a string")
        try:
            return parse_manifest(text).root
        except ManifestError as e:
            raise _HTTPError(422, f"Manifest invalid: {e}") from None

    def _tick(self) -> tuple[float, str]:
        """A strictly increasing modification time (so revisions always move)."""
        with self._lock:
            t = max(self.now(), self._last_modified + 1e-6)
            self._last_modified = t
        return t, _now_iso(t)

    def _name_taken(self, owner: str, name: str | None, except_uuid: str | None = None) -> bool:
        if name is None:
            return False
        with self._lock:
            return any(
                c.owner_uuid == owner and c.name == name and not c.is_trashed and c.uuid != except_uuid
                for c in self.collections.values()
            )

    def _unique_name(self, owner: str, name: str | None, ensure_unique: bool, except_uuid: str | None = None) -> str | None:
        if not self._name_taken(owner, name, except_uuid):
            return name
        if not ensure_unique:
            raise _HTTPError(
                422,
                'ActiveRecord::RecordNotUnique: PG::UniqueViolation: ERROR:  duplicate key value violates unique '
                'constraint "index_collections_on_owner_uuid_and_name"',
            )
        _, stamp = self._tick()
        candidate = f"{name} ({stamp})"
        n = 1
        while self._name_taken(owner, candidate, except_uuid):
            n += 1
            candidate = f"{name} ({stamp} {n})"
        return candidate

    def _new_content(self, text: str, token: str, replace_files: dict | None, base: Dir, user: FakeUser) -> str:
        """The manifest to store for a create/update that changes content."""
        if replace_files:
            supplied = bool(text)
            ops = plan_replace_files(replace_files, manifest_text_supplied=supplied)
            if self._version() < (3, 0) and any(op.kind in ("current", "manifest_text") for op in ops):
                # Before 3.0 the controller only knew "" and <PDH>/path sources.
                raise _HTTPError(400, "replace_files: invalid source (only '' and PDH/path are supported)")
            new_tree: Dir | None = None
            if supplied:
                new_tree = self._parse(text)
                self._check_signatures(text, token)

            def load_pdh(pdh: str) -> Dir:
                found = self._find_pdh(user, pdh)
                if found is None:
                    raise NotFound(f"replace_files source collection {pdh} not found or not readable")
                return self._parse(found)

            result = apply_to_tree(base, ops, new_content=new_tree, load_pdh=load_pdh)
            return render_go_layout(_strip_tree(result))
        self._parse(text)
        self._check_signatures(text, token)
        return sg.strip_manifest_signatures(text)

    def _version(self) -> tuple[int, int]:
        m = re.match(r"(\d+)\.(\d+)", self.package_version)
        return (int(m.group(1)), int(m.group(2))) if m else (99, 0)

    def _attrs(self, params: dict) -> dict:
        attrs = params.get("collection") or {}
        if not isinstance(attrs, dict):
            raise _HTTPError(400, "collection must be a JSON object")
        return attrs

    def _save_history(self, c: _Collection) -> None:
        with self._lock:
            entries = self._history.setdefault(c.pdh, [])
            if (c.owner_uuid, c.manifest) not in entries:
                entries.append((c.owner_uuid, c.manifest))

    def _create(self, user: FakeUser, token: str, params: dict) -> dict:
        attrs = self._attrs(params)
        owner = attrs.get("owner_uuid") or user.uuid
        if owner != user.uuid:
            raise _HTTPError(403, "Permission denied: cannot create in another user's project")
        replace_files = params.get("replace_files")
        if replace_files is not None and not isinstance(replace_files, dict):
            raise BadRequest("replace_files must be an object")
        text = attrs.get("manifest_text") or ""
        manifest = self._new_content(text, token, replace_files, Dir(), user) if (text or replace_files) else ""
        pdh = portable_data_hash(manifest)
        if attrs.get("portable_data_hash") and attrs["portable_data_hash"].split("+")[0] != pdh.split("+")[0]:
            raise _HTTPError(422, "portable_data_hash does not match manifest_text")
        props = attrs.get("properties") or {}
        if not isinstance(props, dict):
            raise _HTTPError(422, "properties must be an object")
        name = attrs.get("name")
        with self._lock:
            name = self._unique_name(owner, name, bool(params.get("ensure_unique_name")))
            _, stamp = self._tick()
            uuid = f"{self.cluster_id}-4zz18-{self._rand15()}"
            c = _Collection(
                uuid=uuid, owner_uuid=owner, name=name, manifest=manifest, pdh=pdh, properties=props,
                description=attrs.get("description"), created_at=stamp, modified_at=stamp, modified_by=user.uuid,
                replication_desired=attrs.get("replication_desired"),
            )
            self.collections[uuid] = c
            self._coll_locks[uuid] = threading.Lock()
            self._save_history(c)
        return self._render(c, token, self._select(params, _DEFAULT_GET_FIELDS))

    def _update(self, user: FakeUser, token: str, uuid: str, params: dict) -> dict:
        if not _UUID.fullmatch(uuid):
            raise _HTTPError(404, f"Path not found: {uuid!r} is not a collection UUID")
        self._readable(user, uuid)
        with self._lock:
            lock = self._coll_locks.setdefault(uuid, threading.Lock())
        attrs = self._attrs(params)
        replace_files = params.get("replace_files")
        if replace_files is not None and not isinstance(replace_files, dict):
            raise BadRequest("replace_files must be an object")
        # Like the controller's uuid_locks row lock: read, apply and save
        # under one lock, so concurrent replace_files updates serialize.
        with lock:
            c = self._readable(user, uuid)
            changed = False
            manifest = c.manifest
            if replace_files:
                base = self._parse(c.manifest)
                manifest = self._new_content(attrs.get("manifest_text") or "", token, replace_files, base, user)
            elif "manifest_text" in attrs:
                text = attrs.get("manifest_text") or ""
                if sg.strip_manifest_signatures(text) != c.manifest:
                    manifest = self._new_content(text, token, None, Dir(), user) if text else ""
            if attrs.get("portable_data_hash") and attrs["portable_data_hash"].split("+")[0] != portable_data_hash(manifest).split("+")[0]:
                raise _HTTPError(422, "portable_data_hash does not match manifest_text")
            new_name = c.name
            if "name" in attrs and attrs["name"] != c.name:
                new_name = self._unique_name(c.owner_uuid, attrs["name"], bool(params.get("ensure_unique_name")), except_uuid=uuid)
            props = c.properties
            if "properties" in attrs:
                props = attrs["properties"] or {}
                if not isinstance(props, dict):
                    raise _HTTPError(422, "properties must be an object")
            with self._lock:
                if manifest != c.manifest:
                    c.manifest = manifest
                    c.pdh = portable_data_hash(manifest)
                    changed = True
                if new_name != c.name:
                    c.name = new_name
                    changed = True
                if props != c.properties:
                    c.properties = props
                    changed = True
                if "description" in attrs and attrs["description"] != c.description:
                    c.description = attrs["description"]
                    changed = True
                if changed:
                    _, c.modified_at = self._tick()
                    c.modified_by = user.uuid
                    if self.collection_versioning:
                        c.version += 1
                    self._save_history(c)
        return self._render(c, token, self._select(params, _DEFAULT_GET_FIELDS))

    def _trash(self, user: FakeUser, token: str, uuid: str, params: dict, *, trash: bool) -> dict:
        c = self._readable(user, uuid, include_trash=True)
        with self._lock:
            if trash and not c.is_trashed:
                t, stamp = self._tick()
                c.is_trashed = True
                c.trash_at = stamp
                c.trash_at_unix = t
                c.delete_at = _now_iso(t + 14 * 86400)
                c.modified_at = stamp
            elif not trash and c.is_trashed:
                c.name = self._unique_name(c.owner_uuid, c.name, bool(params.get("ensure_unique_name")), except_uuid=uuid)
                _, stamp = self._tick()
                c.is_trashed = False
                c.trash_at = c.delete_at = None
                c.trash_at_unix = None
                c.modified_at = stamp
        return self._render(c, token, self._select(params, _DEFAULT_GET_FIELDS))

    # ------------------------------------------------------------------
    # Keepstore

    def _keep_app(self, ks: FakeKeepstore) -> Callable:
        def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
            return self._keep_request(ks, environ, start_response)

        return app

    def _keep_reply(self, ks, environ, start_response, endpoint, token, status, body=b"", headers=()) -> list[bytes]:
        self._record(endpoint, environ, ks.index, status, token)
        hdrs = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        hdrs.extend(headers)
        start_response(_status_line(status), hdrs)
        return [body] if environ["REQUEST_METHOD"] != "HEAD" else []

    def _keep_request(self, ks: FakeKeepstore, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        endpoint = "keep_put" if method == "PUT" else "keep_get"
        token = self._token_from(environ)
        reply = lambda status, body=b"", headers=(): self._keep_reply(ks, environ, start_response, endpoint, token, status, body, headers)  # noqa: E731
        if method not in ("GET", "HEAD", "PUT"):
            self._drain(environ)
            return reply(405, b"method not allowed\n")
        rule = self._pre_fault(endpoint, ks.index, environ)
        if rule is not None:
            if rule.action == "drop":
                self._record(endpoint, environ, ks.index, 0, token)
                environ["fake.abort"]()
                start_response("500 Internal Server Error", [("Content-Length", "0")])
                return []
            if rule.action == "status":
                self._drain(environ)
                return reply(rule.status, f"injected fault (HTTP {rule.status})\n".encode())
        m = _KEEP_PATH.fullmatch(environ.get("PATH_INFO", ""))
        if m is None or m.group(1).lower() != m.group(1):
            self._drain(environ)
            return reply(400, b"invalid locator\n")
        md5, size_hint = m.group(1), m.group(2)
        if not token:
            self._drain(environ)
            return reply(401, b"no token provided in Authorization header\n")
        if method == "PUT":
            out = self._keep_put(ks, environ, reply, md5, size_hint, token)
            if rule is not None and rule.action == "apply_drop":
                environ["fake.abort"]()
            return out
        # GET / HEAD
        if not size_hint and md5 != _EMPTY_MD5:
            return reply(405, b"size hint required\n")
        locator = environ["PATH_INFO"][1:]
        if self.blob_signing and md5 != _EMPTY_MD5:
            try:
                sg.verify_locator(locator, self.blob_signing_key, token, ttl=self.blob_signing_ttl, now=self.now())
            except sg.ExpiredSignature:
                return reply(401, b"expired signature\n")
            except sg.SignatureError:
                return reply(403 if self.legacy_keepstore_status else 400, b"invalid signature\n")
        if md5 == _EMPTY_MD5:
            data = b""
        else:
            with self._lock:
                data = ks.blocks.get(md5)
            if data is None:
                return reply(404, b"block not found\n")
        if rule is not None and rule.action == "corrupt" and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if rule is not None and rule.action == "stall" and method == "GET" and data:
            self._record(endpoint, environ, ks.index, 200, token)
            start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(data)))])
            body = data[:-1] + bytes([data[-1] ^ 0xFF]) if rule.status else data
            cut = max(1, min(len(body) - 1, int(len(body) * rule.fraction)))
            gate = rule.gate

            def stalled() -> Iterable[bytes]:
                yield body[:cut]
                assert gate is not None
                gate.wait(rule.seconds)
                for i in range(cut, len(body), 1 << 20):
                    yield body[i : i + (1 << 20)]
                if rule.done is not None:
                    rule.done.set()

            return stalled()
        if rule is not None and rule.action == "truncate" and method == "GET" and data:
            self._record(endpoint, environ, ks.index, 200, token)
            start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(data)))])
            cut = max(0, min(len(data) - 1, int(len(data) * rule.fraction)))

            def partial() -> Iterable[bytes]:
                if cut:
                    yield data[:cut]
                environ["fake.abort"]()

            return partial()
        self._record(endpoint, environ, ks.index, 200, token)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(data)))])
        if method == "HEAD":
            return []
        return [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)] or [b""]

    def _keep_put(self, ks: FakeKeepstore, environ: dict, reply: Callable, md5: str, size_hint: str, token: str) -> list[bytes]:
        if ks.read_only:
            self._drain(environ)
            return reply(405, b"read-only keepstore\n")
        cl = environ.get("CONTENT_LENGTH")
        if not cl:
            return reply(411, b"Content-Length required\n")
        try:
            n = int(cl)
        except ValueError:
            return reply(400, b"invalid Content-Length\n")
        if n > MAX_BLOCK_SIZE:
            return reply(413, b"block too large\n")
        data = environ["wsgi.input"].read(n) if n else b""
        if len(data) != n:
            return reply(400, b"body shorter than Content-Length\n")
        if size_hint and int(size_hint[1:]) != n:
            return reply(400, b"size hint does not match body\n")
        if hashlib.md5(data).hexdigest() != md5:
            return reply(400, b"hash mismatch\n")
        with self._lock:
            ks.blocks[md5] = data
        loc = f"{md5}+{n}"
        if self.blob_signing:
            loc = self.sign(loc, token)
        return reply(
            200,
            (loc + "\n").encode(),
            [("X-Keep-Replicas-Stored", str(self.replicas_per_put)), ("X-Keep-Storage-Classes-Confirmed", f"default={self.replicas_per_put}")],
        )

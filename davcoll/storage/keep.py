"""Keep client: the ``BlockStore`` of a real Arvados cluster (spec section 6).

How a block is found
--------------------
Services come from ``GET /arvados/v1/keep_services/accessible`` (cached for
``discovery_ttl`` seconds and dropped after any failed round, so a cluster
whose service list changed is re-read), or from an override list in the
style of ``ARVADOS_KEEP_SERVICES`` (each URL treated as a proxy).  For each
block the services are tried in rendezvous order: sorted by
``md5(block_md5 + service_uuid[-15:])``, largest first (spec 6.3).

Retries
-------
Both reads and writes run in *rounds* (``num_retries + 1`` of them).  Round
``n >= 1`` starts no earlier than ``min(backoff_start * 2**n, backoff_max)``
seconds after round ``n-1`` started (with the spec's default of 2 s this
gives waits of 4, 8, 16, 32, 60, 60 ... s).  Within a round every
still-usable service is tried in probe order.  Statuses 408, 409, 423, 500,
502, 503, 504, network errors and a body that does not hash to the locator
are *temporary*: that service is tried again next round.  Every other status
is *permanent* for that service.  The connect timeout doubles each round
(capped at 16x), as the SDK does, so a slow-to-accept server gets a fair
chance without making the first attempt slow.

Errors
------
After the rounds run out the failure is summarized as one BlockStore error:
a body that never verified -> ``BlockCorrupt``; any temporary failure left ->
``BlockStoreUnavailable``; a signature or token rejection (400/401 from a
3.x keepstore, 403 from older ones) -> ``BlockPermissionDenied`` (the
session layer re-signs the manifest on this, spec 4.5); every service said
404/410 -> ``BlockNotFound``; a 413 -> ``BlockTooLarge``.

Streaming reads
---------------
``read_chunks`` (used for whole-block sequential reads, e.g. a large GET)
yields the keepstore's body as it arrives, hashing as it goes, so the first
byte of a GET does not wait for a 64 MiB block.  The last piece is held back
until the whole body hashed to the locator; a mismatch raises
``BlockCorrupt`` instead, which cuts the response short: a corrupt block can
truncate a response but never complete it.  A service that fails mid-body
(network error or bad body) is replaced by the next one, which is read from
the start: its prefix must hash like the bytes already passed on (else
``BlockCorrupt``), then the stream continues where it stopped.  A service
whose body failed verification is tried last for that block for a while
(``_BadReplicas``), so a client retrying after a cut-short response is
served from a good replica.  Streamed blocks are not added to the block
cache (``BlockCache.read_chunks``): a long download must neither evict the
working set nor hold 64 MiB per reader; ``get`` still fetches whole blocks
(range reads, small files) and those are cached.

Secrets: the token is only ever placed in the ``Authorization`` header.  Log
lines and exception messages carry bare ``md5+size`` locators and service
URLs, never tokens or signatures.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import re
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import requests
import requests.adapters
import urllib3.exceptions

from ..manifest import EMPTY_BLOCK, MAX_BLOCK_SIZE, bare_locator
from . import signatures as sg
from .blocks import (
    BlockCorrupt,
    BlockNotFound,
    BlockPermissionDenied,
    BlockStore,
    BlockStoreError,
    BlockStoreUnavailable,
    BlockTooLarge,
)

__all__ = [
    "KeepService",
    "KeepClient",
    "service_weight",
    "rendezvous_order",
    "parse_keep_services",
    "new_request_id",
    "TEMPORARY_STATUSES",
]

log = logging.getLogger(__name__)

TEMPORARY_STATUSES = frozenset({408, 409, 423, 500, 502, 503, 504})
_NOT_FOUND_STATUSES = frozenset({404, 410})
# 400 = bad/missing signature (3.x keepstore), 401 = no token or expired
# signature, 403 = bad signature on older keepstores / token rejected by a
# proxy.  The client validates locator syntax before sending, so a 400 is not
# a malformed-locator complaint.
_PERMISSION_STATUSES = frozenset({400, 401, 403})

_GET_LOCATOR = re.compile(r"([0-9a-f]{32})\+([0-9]+)(\+[A-Z][-A-Za-z0-9@_]*)*")
_K_HINT = re.compile(r"\+K@([a-z0-9]{5}-[a-z0-9]{5}-[a-z0-9]{15})(?=\+|$)")
_REQ_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_CHUNK = 1 << 20


def new_request_id() -> str:
    """An SDK-style request id: ``req-`` + 20 characters of ``[0-9a-z]``."""
    return "req-" + "".join(secrets.choice(_REQ_ID_ALPHABET) for _ in range(20))


@dataclass(frozen=True)
class KeepService:
    """One keepstore, keepproxy or gateway as discovery describes it."""

    uuid: str
    url: str  # base URL ending in "/"
    service_type: str = "disk"
    read_only: bool = False

    @property
    def is_proxy(self) -> bool:
        return self.service_type == "proxy"

    @property
    def is_gateway(self) -> bool:
        return self.service_type.startswith("gateway:")

    @classmethod
    def from_json(cls, item: dict) -> "KeepService":
        host = str(item["service_host"])
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # IPv6 literal
        scheme = "https" if item.get("service_ssl_flag") else "http"
        return cls(
            uuid=str(item["uuid"]),
            url=f"{scheme}://{host}:{int(item['service_port'])}/",
            service_type=str(item.get("service_type") or "disk"),
            read_only=bool(item.get("read_only", False)),
        )


def service_weight(block_md5: str, service_uuid: str) -> str:
    """Rendezvous weight: md5 of the block digest + the uuid's last 15 chars."""
    return hashlib.md5((block_md5 + service_uuid[-15:]).encode("ascii")).hexdigest()


def rendezvous_order(block_md5: str, services: Iterable[KeepService]) -> list[KeepService]:
    """Services in probe order for a block: heaviest weight first (spec 6.3)."""
    return sorted(services, key=lambda s: service_weight(block_md5, s.uuid), reverse=True)


def parse_keep_services(value: str | Sequence[str]) -> list[KeepService]:
    """An ``ARVADOS_KEEP_SERVICES``-style list: space-separated URLs, each a proxy.

    The synthetic uuids (``00000-bi6l4-<index>``) only serve rendezvous
    ordering; the order among overrides is therefore stable per block.
    """
    urls = value.split() if isinstance(value, str) else list(value)
    out = []
    for i, url in enumerate(urls):
        if not url.endswith("/"):
            url += "/"
        out.append(KeepService(uuid=f"00000-bi6l4-{i:015d}", url=url, service_type="proxy"))
    return out


@dataclass
class _Tally:
    """What happened to one logical request, across services and rounds."""

    statuses: dict[str, int] = field(default_factory=dict)  # uuid -> last status (0 = network)
    permanent: set[str] = field(default_factory=set)  # uuids not worth retrying
    corrupt: bool = False
    too_large: bool = False
    temporary: bool = False  # some service failed temporarily in the last round
    discovery_error: BaseException | None = None

    def record(self, svc: KeepService, status: int) -> None:
        self.statuses[svc.uuid] = status
        if status == 0 or status in TEMPORARY_STATUSES:
            self.temporary = True
        else:
            self.permanent.add(svc.uuid)
            if status == 413:
                self.too_large = True

    def summary(self) -> str:
        parts = sorted({("network error" if s == 0 else str(s)) for s in self.statuses.values()})
        return ", ".join(parts) or "no service answered"


class _BadBody(Exception):
    """A body that does not hash to the locator (a failed, retryable try)."""


class _BadReplicas:
    """(block md5, service uuid) pairs whose body recently failed its md5.

    Reads try such a service last for that block for ``ttl`` seconds: a
    streaming read that already passed bytes on cannot switch replicas
    silently, so its client's retry must not meet the same bad copy first.
    Shared by a client and its ``for_token`` copies."""

    def __init__(self, max_entries: int = 4096, ttl: float = 600.0) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._lock = threading.Lock()  # guards _items
        self._items: "OrderedDict[tuple[str, str], float]" = OrderedDict()

    def add(self, md5: str, svc_uuid: str) -> None:
        with self._lock:
            self._items.pop((md5, svc_uuid), None)
            self._items[(md5, svc_uuid)] = time.monotonic()
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def order(self, md5: str, services: list["KeepService"]) -> list["KeepService"]:
        """``services`` with recently bad ones for this block moved last."""
        if not self._items:
            return services
        now = time.monotonic()
        with self._lock:
            bad = {u for (m, u), t in self._items.items() if m == md5 and now - t < self.ttl}
        if not bad:
            return services
        return [s for s in services if s.uuid not in bad] + [s for s in services if s.uuid in bad]


class _RecentWrites:
    """Signed locators of blocks written but not yet saved in a collection.

    Keyed by (token digest, bare locator): signatures are per token.  Shared
    by a client and its ``for_token`` copies (the catalog's signer and the
    session's store are different copies).  Entries leave when a commit
    names them (``forget``), or, for abandoned uploads, after ``max_age``
    seconds or when more than ``max_entries`` are held (oldest first).
    """

    def __init__(self, max_entries: int = 20000, max_age: float = 86400.0) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        # _lock guards _items and _busy.
        self._lock = threading.Lock()
        # key -> (newest signed locator, first written, monotonic)
        self._items: "OrderedDict[tuple[str, str], tuple[str, float]]" = OrderedDict()
        self._busy: set[tuple[str, str]] = set()  # being renewed right now

    def record(self, token_key: str, locator: str) -> None:
        key = (token_key, bare_locator(locator))
        now = time.monotonic()
        with self._lock:
            old = self._items.pop(key, None)
            self._items[key] = (locator, old[1] if old else now)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def newest(self, token_key: str, locator: str) -> str | None:
        with self._lock:
            item = self._items.get((token_key, bare_locator(locator)))
        return item[0] if item else None

    def forget(self, token_key: str, locators: Iterable[str]) -> None:
        keys = {(token_key, bare_locator(loc)) for loc in locators}
        with self._lock:
            for key in keys:
                self._items.pop(key, None)

    def due(self, token_key: str, ttl: float) -> list[str]:
        """This token's entries past half their TTL, marked busy (call ``done``)."""
        now, mono = time.time(), time.monotonic()
        out = []
        with self._lock:
            for key, (loc, first) in list(self._items.items()):
                if mono - first > self.max_age:
                    del self._items[key]
                elif key[0] == token_key and key not in self._busy and sg.needs_refresh(loc, ttl, now):
                    self._busy.add(key)
                    out.append(loc)
        return out

    def done(self, token_key: str, locator: str) -> None:
        with self._lock:
            self._busy.discard((token_key, bare_locator(locator)))


class KeepClient(BlockStore):
    """Blocks in Keep, reached over one pooled ``requests.Session``.

    ``api_url``/``token`` are used for discovery and every Keep request.
    ``services`` skips discovery: a space-separated string or list of URLs
    (proxies, like ``ARVADOS_KEEP_SERVICES``), or ready ``KeepService``
    objects.  ``copies`` is how many replicas a put should achieve (the
    cluster's ``defaultCollectionReplication`` is 2).  Timeouts are
    ``(connect, read)`` in seconds; ``read_timeout`` is the longest silence
    tolerated while a body streams, which approximates the SDK's low-speed
    limit.  ``request_id`` supplies ``X-Request-Id`` values (for log
    correlation with the incoming WebDAV request); the default makes a fresh
    one per HTTP request.
    """

    def __init__(
        self,
        api_url: str | None,
        token: str,
        *,
        services: str | Sequence[str] | Sequence[KeepService] | None = None,
        copies: int = 2,
        connect_timeout: float = 2.0,
        read_timeout: float = 256.0,
        proxy_connect_timeout: float = 20.0,
        num_retries: int = 10,
        backoff_start: float = 2.0,
        backoff_max: float = 60.0,
        verify_tls: bool | str = True,
        discovery_ttl: float = 300.0,
        pool_size: int = 16,
        request_id: Callable[[], str] | None = None,
        session: requests.Session | None = None,
        signature_ttl: Callable[[], float | None] | None = None,
        _written: "_RecentWrites | None" = None,
        _bad: "_BadReplicas | None" = None,
    ) -> None:
        if api_url is None and services is None:
            raise ValueError("KeepClient needs an API URL or an explicit service list")
        if api_url and "://" not in api_url:
            api_url = "https://" + api_url  # ARVADOS_API_HOST style: host[:port]
        self._api_url = api_url.rstrip("/") if api_url else None
        self._token = token
        self.copies = copies
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.proxy_connect_timeout = proxy_connect_timeout
        self.num_retries = num_retries
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.discovery_ttl = discovery_ttl
        self._request_id = request_id or new_request_id
        self._pool_size = pool_size
        self.signature_ttl = signature_ttl
        self._written = _written if _written is not None else _RecentWrites()
        self._bad = _bad if _bad is not None else _BadReplicas()
        self._token_key = hashlib.sha256(token.encode()).hexdigest()
        self._own_session = session is None
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        # Passed with every request (see ArvadosClient: the environment's CA
        # bundle would otherwise override ``verify=False``).
        self._verify = verify_tls
        if verify_tls is False:
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        self._session = session
        self._fixed: list[KeepService] | None = None
        if services is not None:
            if isinstance(services, str) or (services and isinstance(services[0], str)):
                self._fixed = parse_keep_services(services)  # type: ignore[arg-type]
            else:
                self._fixed = list(services)  # type: ignore[arg-type]
        # _lock guards the discovery cache and the lazily created executor.
        self._lock = threading.Lock()
        self._discovered: list[KeepService] | None = None
        self._discovered_at = 0.0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def __repr__(self) -> str:  # never show the token
        return f"KeepClient(api_url={self._api_url!r})"

    def for_token(self, token: str) -> "KeepClient":
        """A client for another token sharing this one's connection pool."""
        clone = KeepClient(
            self._api_url,
            token,
            services=self._fixed,
            copies=self.copies,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            proxy_connect_timeout=self.proxy_connect_timeout,
            num_retries=self.num_retries,
            backoff_start=self.backoff_start,
            backoff_max=self.backoff_max,
            verify_tls=self._verify,
            discovery_ttl=self.discovery_ttl,
            pool_size=self._pool_size,
            request_id=self._request_id,
            session=self._session,
            signature_ttl=self.signature_ttl,
            _written=self._written,
            _bad=self._bad,
        )
        return clone

    # ------------------------------------------------------------------
    # Discovery

    def services(self, *, refresh: bool = False) -> list[KeepService]:
        """All known services (any type), discovering them if needed."""
        if self._fixed is not None:
            return list(self._fixed)
        with self._lock:
            fresh = self._discovered is not None and time.monotonic() - self._discovered_at < self.discovery_ttl
            if fresh and not refresh:
                return list(self._discovered)  # type: ignore[arg-type]
        found = self._discover()
        with self._lock:
            self._discovered = found
            self._discovered_at = time.monotonic()
        return list(found)

    def _forget_services(self) -> None:
        with self._lock:
            self._discovered = None

    def _discover(self) -> list[KeepService]:
        url = f"{self._api_url}/arvados/v1/keep_services/accessible"
        try:
            r = self._session.get(url, headers=self._headers(), timeout=(self.proxy_connect_timeout, 60.0), verify=self._verify)
        except requests.RequestException as e:
            raise BlockStoreUnavailable(f"keep service discovery failed: {type(e).__name__}") from None
        if r.status_code in (401, 403):
            raise BlockPermissionDenied(f"keep service discovery refused the token (HTTP {r.status_code})")
        if r.status_code != 200:
            raise BlockStoreUnavailable(f"keep service discovery failed (HTTP {r.status_code})")
        try:
            items = r.json()["items"]
            found = [KeepService.from_json(it) for it in items]
        except (ValueError, KeyError, TypeError):
            raise BlockStoreUnavailable("keep service discovery returned malformed JSON") from None
        if not found:
            raise BlockStoreUnavailable("the API server lists no accessible keep services")
        return found

    def probe_order(self, locator: str, *, writable: bool = False) -> list[KeepService]:
        """Services to try for a block, in order: ``+K@`` gateways, then rendezvous."""
        svcs = self.services()
        return self._order(locator, svcs, writable)

    @staticmethod
    def _order(locator: str, svcs: list[KeepService], writable: bool) -> list[KeepService]:
        md5 = locator[:32]
        normal = [s for s in svcs if not s.is_gateway and not (writable and s.read_only)]
        ordered = rendezvous_order(md5, normal)
        if writable:
            return ordered
        # Gateway services named by 27-char +K@ hints go first.  The legacy
        # 5-char form (+K@zzzzz -> keep.zzzzz.arvadosapi.com) would send the
        # token to a host chosen by manifest content; it is not followed.
        by_uuid = {s.uuid: s for s in svcs}
        first = [by_uuid[u] for u in _K_HINT.findall(locator) if u in by_uuid]
        return first + [s for s in ordered if s not in first]

    # ------------------------------------------------------------------
    # Plumbing

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self._token}", "X-Request-Id": self._request_id()}
        if extra:
            h.update(extra)
        return h

    def _timeout(self, svc: KeepService, rnd: int) -> tuple[float, float]:
        base = self.proxy_connect_timeout if svc.is_proxy else self.connect_timeout
        return (base * (2 ** min(rnd, 4)), self.read_timeout)

    def _rounds(self, tally: _Tally) -> Iterable[int]:
        """Yield round numbers, sleeping so rounds start on the backoff schedule."""
        start = time.monotonic()
        for rnd in range(self.num_retries + 1):
            if rnd:
                delay = min(self.backoff_start * (2**rnd), self.backoff_max)
                wait = start + delay - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                start = time.monotonic()
                # A failed round may mean the service list changed.
                self._forget_services()
            tally.temporary = False
            yield rnd

    def _candidates(self, locator: str, tally: _Tally, writable: bool) -> list[KeepService] | None:
        """This round's services, or None if discovery itself failed temporarily."""
        try:
            order = self.probe_order(locator, writable=writable)
        except BlockStoreUnavailable as e:
            tally.discovery_error = e
            tally.temporary = True
            return None
        usable = [s for s in order if s.uuid not in tally.permanent]
        return usable if writable else self._bad.order(locator[:32], usable)

    @staticmethod
    def _check_locator(locator: str) -> tuple[str, int]:
        m = _GET_LOCATOR.fullmatch(locator)
        if m is None:
            raise BlockNotFound(f"invalid block locator {bare_locator(locator)[:48]!r}")
        return m.group(1), int(m.group(2))

    # ------------------------------------------------------------------
    # Reads

    def get(self, locator: str) -> bytes:
        md5, size = self._check_locator(locator)
        if locator.startswith(EMPTY_BLOCK[:32]) and size == 0:
            return b""
        if size > MAX_BLOCK_SIZE:
            raise BlockTooLarge(f"locator {bare_locator(locator)} claims more than 64 MiB")
        tally = _Tally()
        for rnd in self._rounds(tally):
            cands = self._candidates(locator, tally, writable=False)
            if cands is None:
                continue
            if not cands:
                break
            for svc in cands:
                try:
                    data = self._get_from(svc, locator, md5, size, rnd)
                except _BadBody:
                    tally.corrupt = True
                    tally.record(svc, 0)
                    self._bad.add(md5, svc.uuid)
                    continue
                except requests.RequestException as e:
                    log.debug("keep GET %s from %s: %s", bare_locator(locator), svc.url, type(e).__name__)
                    tally.record(svc, 0)
                    continue
                if isinstance(data, int):
                    tally.record(svc, data)
                    continue
                return data
            if not tally.temporary:
                break
        raise self._read_error(locator, tally)

    def _get_from(self, svc: KeepService, locator: str, md5: str, size: int, rnd: int) -> bytes | int:
        """The verified body from one service, or its failing status code."""
        r = self._session.get(svc.url + locator, headers=self._headers(), timeout=self._timeout(svc, rnd), stream=True,
                              verify=self._verify)
        try:
            if r.status_code != 200:
                log.debug("keep GET %s from %s: HTTP %d", bare_locator(locator), svc.url, r.status_code)
                return r.status_code
            buf = bytearray()
            h = hashlib.md5()
            for chunk in r.iter_content(_CHUNK):
                if len(buf) + len(chunk) > size:
                    raise _BadBody()
                h.update(chunk)
                buf += chunk
            if len(buf) != size or h.hexdigest() != md5:
                log.warning("keep GET %s from %s: body does not match its locator", bare_locator(locator), svc.url)
                raise _BadBody()
            return bytes(buf)
        finally:
            r.close()

    def read_chunks(self, locator: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The block's bytes as they arrive from Keep (see "Streaming reads").

        Pieces are at most ``chunk_size`` bytes; the last one is yielded only
        after the whole body hashed to the locator.  Errors (including a
        corrupt body, ``BlockCorrupt``) are raised from the iteration, after
        the pieces already yielded."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        md5, size = self._check_locator(locator)
        if size > MAX_BLOCK_SIZE:
            raise BlockTooLarge(f"locator {bare_locator(locator)} claims more than 64 MiB")
        return self._stream(locator, md5, size, chunk_size)

    def _stream(self, locator: str, md5: str, size: int, chunk_size: int) -> Iterator[bytes]:
        if md5 == EMPTY_BLOCK[:32] and size == 0:
            return
        sent = 0  # bytes passed on to the caller so far
        sent_md5 = hashlib.md5()  # ... and their md5, to check a replacement service's prefix
        tally = _Tally()
        for rnd in self._rounds(tally):
            cands = self._candidates(locator, tally, writable=False)
            if cands is None:
                continue
            if not cands:
                break
            for svc in cands:
                try:
                    r = self._session.get(svc.url + locator, headers=self._headers(), timeout=self._timeout(svc, rnd),
                                          stream=True, verify=self._verify)
                except requests.RequestException as e:
                    log.debug("keep GET %s from %s: %s", bare_locator(locator), svc.url, type(e).__name__)
                    tally.record(svc, 0)
                    continue
                try:
                    if r.status_code != 200:
                        log.debug("keep GET %s from %s: HTTP %d", bare_locator(locator), svc.url, r.status_code)
                        tally.record(svc, r.status_code)
                        continue
                    h = hashlib.md5()
                    prefix = hashlib.md5() if sent else None  # this body's first ``sent`` bytes
                    got = 0
                    pending: bytes | None = None  # held back: the last piece waits for verification
                    for chunk in r.iter_content(chunk_size):
                        if not chunk:
                            continue
                        start, got = got, got + len(chunk)
                        if got > size:
                            raise _BadBody()
                        h.update(chunk)
                        if got <= sent:
                            prefix.update(chunk)  # type: ignore[union-attr]
                            continue
                        if start < sent:
                            prefix.update(chunk[: sent - start])  # type: ignore[union-attr]
                            chunk = chunk[sent - start :]
                        if prefix is not None:
                            if prefix.digest() != sent_md5.digest():
                                # Bytes already passed on differ from this copy's:
                                # one of them is corrupt, and the caller has them.
                                self._bad.add(md5, svc.uuid)
                                raise BlockCorrupt(f"block {bare_locator(locator)}: replicas differ in the part "
                                                   "already sent; response cut short")
                            prefix = None
                        if pending is not None:
                            sent_md5.update(pending)
                            sent += len(pending)
                            yield pending
                        pending = chunk
                    if got != size or h.hexdigest() != md5:
                        raise _BadBody()
                    if pending is not None:
                        yield pending
                    return
                except _BadBody:
                    log.warning("keep GET %s from %s: body does not match its locator", bare_locator(locator), svc.url)
                    tally.corrupt = True
                    tally.record(svc, 0)
                    self._bad.add(md5, svc.uuid)
                    continue
                except requests.RequestException as e:
                    log.debug("keep GET %s from %s (streaming): %s", bare_locator(locator), svc.url, type(e).__name__)
                    tally.record(svc, 0)
                    continue
                finally:
                    r.close()
            if not tally.temporary:
                break
        raise self._read_error(locator, tally)

    def _read_error(self, locator: str, tally: _Tally) -> BlockStoreError:
        bare = bare_locator(locator)
        codes = set(tally.statuses.values())
        if tally.corrupt:
            return BlockCorrupt(f"block {bare}: no service returned data matching its md5")
        if tally.temporary or (tally.discovery_error is not None and not codes):
            if tally.discovery_error is not None and not codes:
                return BlockStoreUnavailable(f"block {bare}: {tally.discovery_error}")
            return BlockStoreUnavailable(f"block {bare}: retries exhausted ({tally.summary()})")
        if codes & _PERMISSION_STATUSES:
            return BlockPermissionDenied(f"block {bare}: signature or token rejected ({tally.summary()})")
        if codes and codes <= _NOT_FOUND_STATUSES:
            return BlockNotFound(f"block {bare} not found on any keep service")
        if not codes:
            return BlockStoreUnavailable(f"block {bare}: no keep service to ask")
        return BlockStoreError(f"block {bare}: keep services refused the request ({tally.summary()})")

    def exists(self, locator: str) -> bool:
        md5, size = self._check_locator(locator)
        if md5 == EMPTY_BLOCK[:32] and size == 0:
            return True
        tally = _Tally()
        for rnd in self._rounds(tally):
            cands = self._candidates(locator, tally, writable=False)
            if cands is None:
                continue
            if not cands:
                break
            for svc in cands:
                try:
                    r = self._session.head(svc.url + locator, headers=self._headers(), timeout=self._timeout(svc, rnd),
                                           verify=self._verify)
                    r.close()
                except requests.RequestException:
                    tally.record(svc, 0)
                    continue
                if r.status_code == 200:
                    return True
                tally.record(svc, r.status_code)
            if not tally.temporary:
                break
        codes = set(tally.statuses.values())
        if codes and codes <= _NOT_FOUND_STATUSES and not tally.temporary:
            return False
        raise self._read_error(locator, tally)

    # ------------------------------------------------------------------
    # Writes

    def put(self, data: bytes | bytearray | memoryview, *, copies: int | None = None) -> str:
        """Store a block (see ``_store``) and remember its signature.

        Blocks written here are usually not in any saved collection yet (an
        upload is running), so nothing else would renew their signatures:
        each put also re-signs this token's earlier uncommitted blocks that
        are past half their TTL (``fresh_locator``), so a long upload's first
        blocks are still valid when it commits.
        """
        loc = self._store(data, copies=copies)
        if sg.permission_hint(loc) is not None:
            self._written.record(self._token_key, loc)
            self._renew_written()
        return loc

    # ------------------------------------------------------------------
    # Signatures of blocks written by uploads that have not committed yet

    def _ttl(self) -> float | None:
        return self.signature_ttl() if self.signature_ttl is not None else None

    def fresh_locator(self, locator: str) -> str:
        """``locator`` with a signature younger than half the TTL.

        The newest signature this process holds for the block is used; if
        that one is past half its life too, the block is re-signed by
        reading it (the old signature is still valid) and storing it again
        (Keep answers with a fresh signature; the data is not duplicated).
        Unsigned or expired locators come back unchanged.
        """
        if sg.permission_hint(locator) is None:
            return locator
        newer = self._written.newest(self._token_key, locator)
        if newer is not None and (sg.signature_expiry(newer) or 0) > (sg.signature_expiry(locator) or 0):
            locator = newer
        ttl = self._ttl()
        if ttl is None or not sg.needs_refresh(locator, ttl):
            return locator
        return self._resign(locator)

    def forget(self, locators: Iterable[str]) -> None:
        """Stop renewing these blocks (they are in a saved collection now)."""
        self._written.forget(self._token_key, locators)

    def _resign(self, locator: str) -> str:
        data = self.get(locator)
        new = self._store(data)
        if sg.permission_hint(new) is not None:
            self._written.record(self._token_key, new)
        log.debug("re-signed block %s", bare_locator(locator))
        return new

    def _renew_written(self) -> None:
        ttl = self._ttl()
        if ttl is None:
            return
        for loc in self._written.due(self._token_key, ttl):
            try:
                self._resign(loc)
            except BlockStoreError as e:
                log.warning("could not renew the signature of block %s: %s", bare_locator(loc), e)
            finally:
                self._written.done(self._token_key, loc)

    def _store(self, data: bytes | bytearray | memoryview, *, copies: int | None = None) -> str:
        """Store a block on ``copies`` replicas; return the signed locator.

        With only keepstores (``disk``), each PUT stores one replica, so up
        to ``copies`` services are written in parallel per attempt.  With a
        proxy in the list, one PUT asks it for all copies via
        ``X-Keep-Desired-Replicas``.  Replicas are summed from
        ``X-Keep-Replicas-Stored`` (missing header = 1).

        When the retries run out with at least one replica stored, the block
        is durable and its signed locator is returned (with a warning): the
        cluster's balancer restores replication later, and failing the whole
        upload would discard data that is safely stored.  The wanted count is
        also capped by the number of writable services, so a single-node
        cluster works with the default of 2.
        """
        mv = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        size = len(mv)
        if size > MAX_BLOCK_SIZE:
            raise BlockTooLarge(f"block of {size} bytes exceeds 64 MiB")
        md5 = hashlib.md5(mv).hexdigest()
        bare = f"{md5}+{size}"
        if size == 0:
            # The empty block needs no signature anywhere and no storage.
            return EMPTY_BLOCK
        wanted = self.copies if copies is None else copies
        if wanted < 1:
            return bare
        tally = _Tally()
        stored = 0
        signed: str | None = None
        done: set[str] = set()
        capped = False
        for rnd in self._rounds(tally):
            cands = self._candidates(bare, tally, writable=True)
            if cands is None:
                continue
            if not capped:
                capped = True
                writable = len(cands)
                if writable and all(not s.is_proxy for s in cands):
                    wanted = min(wanted, writable)
            cands = [s for s in cands if s.uuid not in done]
            if not cands:
                break
            proxy = any(s.is_proxy for s in cands)
            while cands and stored < wanted:
                need = wanted - stored
                batch = cands[:1] if proxy else cands[:need]
                cands = cands[len(batch) :]
                for svc, outcome in self._put_batch(batch, mv, md5, size, need, rnd):
                    if isinstance(outcome, int):
                        tally.record(svc, outcome)
                        continue
                    loc, replicas = outcome
                    done.add(svc.uuid)
                    stored += replicas
                    signed = loc
            if stored >= wanted:
                return signed  # type: ignore[return-value]
            if not tally.temporary:
                break
        if tally.too_large:
            raise BlockTooLarge(f"block {bare}: keep refused it as too large (413)")
        if signed is not None:
            log.warning("block %s stored on %d of %d wanted replicas", bare, stored, wanted)
            return signed
        codes = set(tally.statuses.values())
        if tally.temporary or not codes:
            if tally.discovery_error is not None and not codes:
                raise BlockStoreUnavailable(f"block {bare}: {tally.discovery_error}")
            raise BlockStoreUnavailable(f"block {bare}: write retries exhausted ({tally.summary()})")
        if codes <= {401, 403}:
            raise BlockPermissionDenied(f"block {bare}: keep refused the token ({tally.summary()})")
        if codes & {507}:
            raise BlockStoreUnavailable(f"block {bare}: keep volumes are full ({tally.summary()})")
        raise BlockStoreError(f"block {bare}: keep services refused the write ({tally.summary()})")

    def _put_batch(self, batch, mv, md5: str, size: int, need: int, rnd: int):
        """PUT to every service of ``batch`` at once; yield ``(svc, outcome)``.

        The first PUT runs in the calling thread and the rest in a small pool,
        so the usual one-replica-per-keepstore case costs one upload's time.
        """
        if len(batch) == 1:
            yield batch[0], self._put_one(batch[0], mv, md5, size, need, rnd)
            return
        ex = self._pool()
        futures = [ex.submit(self._put_one, s, mv, md5, size, need, rnd) for s in batch[1:]]
        first = self._put_one(batch[0], mv, md5, size, need, rnd)
        yield batch[0], first
        for svc, fut in zip(batch[1:], futures):
            yield svc, fut.result()

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max(2, self._pool_size // 2), thread_name_prefix="keep-put")
            return self._executor

    def _put_one(self, svc: KeepService, mv, md5: str, size: int, need: int, rnd: int) -> tuple[str, int] | int:
        """One PUT: ``(signed locator, replicas stored)`` or the failing status (0 = network)."""
        headers = self._headers(
            {
                "Content-Length": str(size),
                "Content-Type": "application/octet-stream",
                "X-Keep-Desired-Replicas": str(need),
            }
        )
        try:
            r = self._session.put(svc.url + md5, data=mv, headers=headers, timeout=self._timeout(svc, rnd), verify=self._verify)
            body = r.text
            r.close()
        except requests.RequestException as e:
            log.debug("keep PUT %s+%d to %s: %s", md5, size, svc.url, type(e).__name__)
            return 0
        if r.status_code != 200:
            log.debug("keep PUT %s+%d to %s: HTTP %d", md5, size, svc.url, r.status_code)
            return r.status_code
        loc = body.strip()
        m = _GET_LOCATOR.fullmatch(loc)
        if m is None or m.group(1) != md5 or int(m.group(2)) != size:
            log.warning("keep PUT %s+%d to %s: unexpected response body", md5, size, svc.url)
            return 502  # treat as a broken server: temporary
        try:
            replicas = int(r.headers.get("X-Keep-Replicas-Stored", "1"))
        except ValueError:
            replicas = 1
        return loc, max(replicas, 0)

    # ------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=False)
        if self._own_session:
            self._session.close()

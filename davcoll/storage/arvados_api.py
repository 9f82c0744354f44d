"""The Arvados REST API as a davcoll ``Catalog`` (spec section 7).

Two layers:

``ArvadosClient``
    One pooled ``requests.Session`` per API host, JSON in and out, retries
    and the mapping of Arvados error replies (``{"errors": [...],
    "error_token": ...}``) to the catalog's error types.

``ArvadosCatalog``
    The ``Catalog`` interface on top: collections in the caller's home
    project, ``replace_files`` updates, trash, cheap revisions and the
    re-signing helper used before ``+A`` signatures expire.

Retries
-------
Statuses 408, 409, 423, 500, 502, 503 and 504 are retried for every method
(Arvados runs each request in a database transaction, so an error reply
means nothing was saved), as are connection failures that happened before
the request was sent (refused, connect timeout).  A read timeout or a
connection lost *after* sending is retried only for GET: for a write the
outcome is unknown, and re-sending a non-idempotent ``replace_files`` (a
MOVE, a create) could apply it twice, so the caller gets ``Unavailable``
saying so.  Round ``n`` waits ``min(backoff_start * 2**n, backoff_max)``
seconds, the schedule of spec 6.4 with a shorter default start, because a
WebDAV client is waiting on the other end.

Cluster version and ``replace_files``
--------------------------------------
``current/`` and ``manifest_text/`` sources need Arvados 3.0 (spec 7.6).
In ``replace_files_mode="auto"`` the catalog reads ``packageVersion`` from
the discovery document (``GET /discovery/v1/apis/arvados/v1/rest``, no
token needed; cached per API host for the process lifetime).  On 3.0 or
later, updates go to the server as ``replace_files`` (+ ``manifest_text``)
and the controller applies them atomically.  On older clusters the catalog
applies the same plan client-side: fetch the current manifest, apply the
operations with :func:`davcoll.storage.replace_files.apply_to_tree` to the
fetched tree, and save the whole manifest.  That keeps path-disjoint edits
from other writers that landed *before* the fetch, but a writer committing
between the fetch and the save is overwritten (the API has no conditional
update); the window is one round trip.  If the discovery document cannot
be read or has no parsable version, the modern path is assumed (and
logged), since every supported cluster since 2024 has it.

Secrets: the token only travels in the ``Authorization`` header.  Error
messages from the server are scrubbed of it before they are raised.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Mapping, Protocol

import requests
import requests.adapters
import urllib3.exceptions

from ..manifest import ManifestError, Manifest, parse_manifest
from . import signatures as sg
from .catalog import (
    BadRequest,
    Catalog,
    CatalogError,
    CollectionRecord,
    Conflict,
    InvalidManifest,
    NotFound,
    PermissionDenied,
    Unauthorized,
    Unavailable,
    UpdateResult,
    revision_key,
)
from .replace_files import apply_to_tree, plan_replace_files

__all__ = ["ArvadosClient", "ArvadosCatalog", "ClusterFacts", "RETRY_STATUSES", "parse_version", "quiet_insecure_warnings"]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 423, 500, 502, 503, 504})
_REQ_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_CONFLICT_RE = re.compile(r"duplicate key|unique constraint|already (been )?(taken|exists)|name .*(taken|exists)", re.IGNORECASE)
_PDH_RE = re.compile(r"[0-9a-f]{32}\+[0-9]+")
_UUID_RE = re.compile(r"[a-z0-9]{5}-[a-z0-9]{5}-[a-z0-9]{15}")
_VERSION_RE = re.compile(r"(\d+)\.(\d+)")
_MAX_QUERY = 4000  # longer GET queries go as POST with _method=GET (spec 7.2)

_REVISION_FIELDS = ["uuid", "modified_at", "version"]
_RECORD_FIELDS = ["uuid", "name", "portable_data_hash", "properties", "modified_at", "created_at", "version", "owner_uuid", "is_trashed"]

# Which API hosts support the 3.0 replace_files sources (api_url -> bool).
_VERSION_CACHE: dict[str, bool] = {}
_VERSION_LOCK = threading.Lock()
_TTL_RETRY_SECONDS = 30.0


class ClusterFacts:
    """What one client and its ``for_token`` copies learned about the
    cluster (the signature TTL), shared so it is read once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ttl: int | None = None
        self.retry_at = 0.0  # when a failed discovery read may be retried


def _new_request_id() -> str:
    return "req-" + "".join(secrets.choice(_REQ_ID_ALPHABET) for _ in range(20))


def parse_version(text: Any) -> tuple[int, int] | None:
    """``(major, minor)`` of an Arvados ``packageVersion`` like ``3.0.0~dev1``."""
    if not isinstance(text, str):
        return None
    m = _VERSION_RE.match(text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def _normalize_api_url(url: str) -> str:
    """Accept ``https://host[:port]`` or an ``ARVADOS_API_HOST``-style ``host[:port]``."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "https://" + url
    return url


def quiet_insecure_warnings() -> None:
    """Silence urllib3's per-request ``InsecureRequestWarning``.

    With TLS verification turned off on purpose (``insecure = true``) the
    warning would fire on every API and Keep call; the backend logs one
    warning at start-up instead.
    """
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)


class _NotSent(Exception):
    """Marker: the request never reached the server (safe to retry)."""


class ArvadosClient:
    """JSON over HTTP to one API server, with retries and error mapping.

    ``timeout`` is ``(connect, read)`` seconds (or one number for both);
    ``retries`` is how many times a retryable failure is retried.
    ``request_id`` supplies ``X-Request-Id`` values, so the server's logs can
    be matched to the WebDAV request that caused them.
    """

    def __init__(
        self,
        api_host_url: str,
        token: str,
        *,
        timeout: float | tuple[float, float] = (10.0, 300.0),
        retries: int = 4,
        verify_tls: bool | str = True,
        backoff_start: float = 1.0,
        backoff_max: float = 30.0,
        pool_size: int = 16,
        request_id: Callable[[], str] | None = None,
        session: requests.Session | None = None,
        facts: ClusterFacts | None = None,
    ) -> None:
        self.api_url = _normalize_api_url(api_host_url)
        self._facts = facts or ClusterFacts()
        self._token = token
        self.timeout = timeout if isinstance(timeout, tuple) else (float(timeout), float(timeout))
        self.retries = retries
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self._pool_size = pool_size
        self._request_id = request_id or _new_request_id
        self._own_session = session is None
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        # Passed with every request: requests prefers REQUESTS_CA_BUNDLE /
        # CURL_CA_BUNDLE over Session.verify, which silently re-enabled
        # verification for ``insecure = true`` when either was set.
        self._verify = verify_tls
        if verify_tls is False:
            quiet_insecure_warnings()
        self._session = session

    def __repr__(self) -> str:  # never show the token
        return f"ArvadosClient({self.api_url!r})"

    @property
    def token(self) -> str:
        return self._token

    def for_token(self, token: str) -> "ArvadosClient":
        """A client for another token sharing this one's connection pool."""
        return ArvadosClient(
            self.api_url,
            token,
            timeout=self.timeout,
            retries=self.retries,
            verify_tls=self._verify,
            backoff_start=self.backoff_start,
            backoff_max=self.backoff_max,
            pool_size=self._pool_size,
            request_id=self._request_id,
            session=self._session,
            facts=self._facts,
        )

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    # ------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """Remove the token (and its secret part) from text bound for errors/logs."""
        for secret in {self._token, self._token.rsplit("/", 1)[-1]}:
            if secret and len(secret) >= 8:
                text = text.replace(secret, "***")
        return text

    @staticmethod
    def _encode_params(params: Mapping[str, Any]) -> dict[str, str]:
        """Query/form encoding: objects, arrays and booleans as JSON (spec 7.1)."""
        out = {}
        for k, v in params.items():
            if v is None:
                continue
            out[k] = v if isinstance(v, str) else json.dumps(v)
        return out

    def _send(self, method: str, path: str, params: Mapping[str, Any] | None, body: Any, auth: bool) -> requests.Response:
        url = self.api_url + path
        headers = {"X-Request-Id": self._request_id(), "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token}"
        kwargs: dict[str, Any] = {"headers": headers, "timeout": self.timeout, "verify": self._verify}
        if method == "GET" and params:
            query = self._encode_params(params)
            if sum(len(k) + len(v) for k, v in query.items()) > _MAX_QUERY:
                method = "POST"
                kwargs["data"] = dict(query, _method="GET")
            else:
                kwargs["params"] = query
        elif params:
            kwargs["params"] = self._encode_params(params)
        if body is not None:
            kwargs["data"] = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            return self._session.request(method, url, **kwargs)
        except requests.exceptions.ConnectTimeout:
            raise _NotSent("connect timeout") from None
        except requests.exceptions.ConnectionError as e:
            reason = e.args[0].reason if e.args and isinstance(e.args[0], urllib3.exceptions.MaxRetryError) else None
            if isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)):
                raise _NotSent("connection refused") from None
            raise

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        auth: bool = True,
        idempotent: bool | None = None,
    ) -> Any:
        """One API call; the decoded JSON reply, or a CatalogError.

        ``idempotent`` (default: GET only) says whether a request whose
        outcome is unknown after a lost response may be sent again.
        """
        if idempotent is None:
            idempotent = method == "GET"
        start = time.monotonic()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.backoff_start * (2**attempt), self.backoff_max)
                wait = start + delay - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                start = time.monotonic()
            try:
                r = self._send(method, path, params, body, auth)
            except _NotSent as e:
                last = f"cannot reach the API server ({e})"
                log.debug("%s %s: %s", method, path, last)
                continue
            except requests.RequestException as e:
                last = f"{type(e).__name__} talking to the API server"
                if not idempotent:
                    raise Unavailable(f"{method} {path}: {last}; the outcome is unknown") from None
                log.debug("%s %s: %s", method, path, last)
                continue
            if r.status_code in RETRY_STATUSES and attempt < self.retries:
                last = f"HTTP {r.status_code}: {self._error_text(r)}"
                log.debug("%s %s: %s (will retry)", method, path, last)
                r.close()
                continue
            return self._decode(method, path, r)
        raise Unavailable(f"{method} {path}: {last or 'retries exhausted'}")

    def _error_text(self, r: requests.Response) -> str:
        try:
            data = r.json()
            errors = data.get("errors") if isinstance(data, dict) else None
            if isinstance(errors, list) and errors:
                return self._scrub("; ".join(str(e) for e in errors))
        except ValueError:
            pass
        return f"HTTP {r.status_code}"

    def _decode(self, method: str, path: str, r: requests.Response) -> Any:
        if 200 <= r.status_code < 300:
            try:
                return r.json()
            except ValueError:
                raise Unavailable(f"{method} {path}: the API server returned malformed JSON (HTTP {r.status_code})") from None
        msg = f"{method} {path}: {self._error_text(r)}"
        code = r.status_code
        if code == 400:
            raise BadRequest(msg)
        if code == 401:
            raise Unauthorized(msg)
        if code == 403:
            raise PermissionDenied(msg)
        if code == 404:
            raise NotFound(msg)
        if code == 409:
            raise Conflict(msg)
        if code == 422:
            if _CONFLICT_RE.search(msg):
                raise Conflict(msg)
            raise InvalidManifest(msg)
        if code >= 500 or code in RETRY_STATUSES:
            raise Unavailable(msg)
        raise BadRequest(msg)

    # Convenience wrappers -------------------------------------------------

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)

    def discovery(self) -> dict:
        """The discovery document (public; fetched without the token)."""
        doc = self.call("GET", "/discovery/v1/apis/arvados/v1/rest", auth=False)
        if not isinstance(doc, dict):
            raise Unavailable("the discovery document is not a JSON object")
        return doc

    def blob_signature_ttl(self) -> int:
        """The cluster's ``blobSignatureTtl`` (seconds) from the discovery document.

        Block signatures in manifests and from Keep PUTs are valid for this
        long; cached trees and uploads refresh them before half of it has
        passed.  Read once per API host; if the document cannot be read the
        Arvados default (2 weeks) is assumed and the read is retried after
        30 s (not on every call: during an outage each try costs retries).
        """
        facts = self._facts
        with facts.lock:
            if facts.ttl is not None:
                return facts.ttl
            if time.monotonic() < facts.retry_at:
                return sg.DEFAULT_TTL
        try:
            value = self.discovery().get("blobSignatureTtl")
            ttl = int(value) if value is not None else sg.DEFAULT_TTL
            if ttl <= 0:
                raise ValueError("blobSignatureTtl must be positive")
        except (CatalogError, TypeError, ValueError) as e:
            log.warning("cannot read blobSignatureTtl from the discovery document (%s); assuming %d s", e, sg.DEFAULT_TTL)
            with facts.lock:
                facts.retry_at = time.monotonic() + _TTL_RETRY_SECONDS
            return sg.DEFAULT_TTL
        with facts.lock:
            facts.ttl = ttl
        return ttl

    def config(self) -> dict:
        """The exported cluster configuration (public)."""
        cfg = self.call("GET", "/arvados/v1/config", auth=False)
        if not isinstance(cfg, dict):
            raise Unavailable("the cluster config is not a JSON object")
        return cfg


class BlockSigner(Protocol):
    """What the catalog needs from Keep to send only fresh signatures."""

    def fresh_locator(self, locator: str) -> str:
        """``locator``, or the same block with a signature younger than TTL/2."""

    def forget(self, locators: Iterable[str]) -> None:
        """These blocks are in a saved collection now: stop refreshing them."""


class ArvadosCatalog(Catalog):
    """Collections of the caller's home project on an Arvados cluster.

    ``replace_files_mode``: ``"auto"`` (detect, see the module docstring),
    ``"server"`` (always send ``replace_files``) or ``"client"`` (always
    apply locally and save the whole manifest).  ``update_method`` is the
    HTTP method of updates (the controller routes PATCH and PUT alike).
    ``validate_manifests`` parses every fetched manifest with davcoll's
    strict parser so a corrupt one is reported as ``InvalidManifest`` here
    rather than surfacing as odd behaviour later.  ``signer`` (the caller's
    Keep client) re-signs the locators of a new manifest that are past half
    their signature TTL before it is sent, so an upload that took longer
    than the TTL still commits.
    """

    def __init__(
        self,
        client: ArvadosClient,
        *,
        replace_files_mode: str = "auto",
        update_method: str = "PATCH",
        page_size: int = 1000,
        validate_manifests: bool = True,
        signer: "BlockSigner | None" = None,
    ) -> None:
        if replace_files_mode not in ("auto", "server", "client"):
            raise ValueError("replace_files_mode must be 'auto', 'server' or 'client'")
        self.client = client
        self.replace_files_mode = replace_files_mode
        self.update_method = update_method
        self.page_size = page_size
        self.validate_manifests = validate_manifests
        self.signer = signer
        self._user: dict | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------
    # Helpers

    def current_user(self) -> dict:
        """``GET /arvados/v1/users/current`` (cached; a token has one user)."""
        with self._lock:
            if self._user is not None:
                return self._user
        user = self.client.get("/arvados/v1/users/current")
        if not isinstance(user, dict) or not isinstance(user.get("uuid"), str):
            raise Unavailable("users/current returned no user uuid")
        with self._lock:
            self._user = user
        return user

    def home_uuid(self) -> str:
        """The home project: on Arvados it is the user's own UUID."""
        return self.current_user()["uuid"]

    def server_supports_replace_files(self) -> bool:
        """True if ``current/`` and ``manifest_text/`` sources work (Arvados >= 3.0)."""
        if self.replace_files_mode != "auto":
            return self.replace_files_mode == "server"
        key = self.client.api_url
        with _VERSION_LOCK:
            hit = _VERSION_CACHE.get(key)
        if hit is not None:
            return hit
        try:
            version = parse_version(self.client.discovery().get("packageVersion"))
        except CatalogError as e:
            log.warning("cannot read the discovery document (%s); assuming Arvados >= 3.0", e)
            return True  # not cached: try again next time
        supported = True if version is None else version >= (3, 0)
        if version is None:
            log.warning("discovery document has no packageVersion; assuming Arvados >= 3.0")
        elif not supported:
            log.info("Arvados %d.%d: replace_files is applied client-side", *version)
        with _VERSION_LOCK:
            _VERSION_CACHE[key] = supported
        return supported

    def _record(self, data: Any, *, with_manifest: bool) -> CollectionRecord:
        if not isinstance(data, dict) or not isinstance(data.get("uuid"), str):
            raise Unavailable("the API server returned a malformed collection record")
        text = data.get("manifest_text") if with_manifest else None
        if with_manifest:
            text = self._checked_manifest(text, data["uuid"])
        try:
            return CollectionRecord(
                uuid=data["uuid"],
                name=data.get("name") or "",
                portable_data_hash=data.get("portable_data_hash"),
                manifest_text=text,
                properties=dict(data.get("properties") or {}),
                modified_at=data.get("modified_at") or "",
                created_at=data.get("created_at") or "",
                version=int(data.get("version") or 1),
                owner_uuid=data.get("owner_uuid") or "",
                is_trashed=bool(data.get("is_trashed", False)),
            )
        except (TypeError, ValueError):
            raise Unavailable(f"the API server returned a malformed record for {data['uuid']}") from None

    def _checked_manifest(self, text: Any, ident: str) -> str:
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise InvalidManifest(f"collection {ident}: manifest_text is not a string")
        if self.validate_manifests:
            try:
                parse_manifest(text)
            except ManifestError as e:
                raise InvalidManifest(f"collection {ident}: stored manifest is invalid: {e}") from None
        return text

    @staticmethod
    def _coll_path(ident: str) -> str:
        if not (_UUID_RE.fullmatch(ident) or _PDH_RE.fullmatch(ident)):
            raise NotFound(f"{ident!r} is neither a collection UUID nor a portable data hash")
        return f"/arvados/v1/collections/{ident}"

    # ------------------------------------------------------------------
    # Catalog interface

    def get(self, uuid_or_pdh: str, *, with_manifest: bool = True) -> CollectionRecord:
        path = self._coll_path(uuid_or_pdh)
        if _PDH_RE.fullmatch(uuid_or_pdh):
            # A PDH get returns only portable_data_hash, manifest_text and
            # trash_at (spec 7.2): the snapshot is named by its hash.
            data = self.client.get(path)
            if not isinstance(data, dict):
                raise Unavailable("the API server returned a malformed collection record")
            text = self._checked_manifest(data.get("manifest_text"), uuid_or_pdh) if with_manifest else None
            pdh = data.get("portable_data_hash") or uuid_or_pdh
            return CollectionRecord(uuid=uuid_or_pdh, name=uuid_or_pdh, portable_data_hash=pdh, manifest_text=text)
        select = _RECORD_FIELDS + (["manifest_text"] if with_manifest else [])
        return self._record(self.client.get(path, select=select), with_manifest=with_manifest)

    def list(self) -> list[CollectionRecord]:
        return self._list_where([])

    def find_by_name(self, name: str) -> CollectionRecord | None:
        found = self._list_where([["name", "=", name]], limit=1)
        return found[0] if found else None

    def _list_where(self, extra_filters: list, limit: int | None = None) -> list[CollectionRecord]:
        """Keyset-paged listing of the home project (pages ordered by uuid)."""
        owner = self.home_uuid()
        out: list[CollectionRecord] = []
        last = ""
        while True:
            filters = [["owner_uuid", "=", owner]] + extra_filters
            if last:
                filters.append(["uuid", ">", last])
            want = self.page_size if limit is None else min(self.page_size, limit - len(out))
            resp = self.client.get(
                "/arvados/v1/collections",
                filters=filters,
                select=_RECORD_FIELDS,
                order=["uuid asc"],
                limit=want,
                count="none",
            )
            items = resp.get("items") if isinstance(resp, dict) else None
            if not isinstance(items, list):
                raise Unavailable("collection list reply has no items")
            out.extend(self._record(it, with_manifest=False) for it in items)
            if limit is not None and len(out) >= limit:
                return out[:limit]
            served = resp.get("limit") if isinstance(resp.get("limit"), int) else want
            if not items or len(items) < max(1, min(want, served)):
                return out
            last = out[-1].uuid

    def create(self, name: str, manifest_text: str = "", properties: Mapping[str, Any] | None = None) -> CollectionRecord:
        manifest_text = self._fresh(manifest_text) or ""
        attrs: dict[str, Any] = {"name": name, "manifest_text": manifest_text}
        if properties is not None:
            attrs["properties"] = dict(properties)
        body = {"collection": attrs, "ensure_unique_name": False, "select": _RECORD_FIELDS}
        rec = self._record(self.client.call("POST", "/arvados/v1/collections", body=body), with_manifest=False)
        self._saved(manifest_text)
        return rec

    def _fresh(self, manifest_text: str | None) -> str | None:
        """``manifest_text`` with signatures past half their TTL renewed.

        The API server refuses a manifest with an expired signature (403),
        and a block written early in a long upload could otherwise expire
        before the commit.  Renewing at half the TTL leaves the other half
        for the request itself.
        """
        if not manifest_text or self.signer is None or "+A" not in manifest_text:
            return manifest_text
        return sg.map_manifest_locators(manifest_text, self.signer.fresh_locator)

    def _saved(self, manifest_text: str | None) -> None:
        if manifest_text and self.signer is not None:
            self.signer.forget(sg.manifest_locators(manifest_text))

    def update(
        self,
        uuid: str,
        *,
        replace_files: Mapping[str, str] | None = None,
        manifest_text: str | None = None,
        properties: Mapping[str, Any] | None = None,
        name: str | None = None,
        base_version: int | None = None,
    ) -> UpdateResult:
        """See ``Catalog.update``.  ``applied_on_base`` is always False:
        the controller does not say what it applied the change to."""
        path = self._coll_path(uuid)
        manifest_text = self._fresh(manifest_text)
        try:
            return self._update(uuid, path, replace_files, manifest_text, properties, name)
        finally:
            # Saved or not: a failed commit drops the upload's buffers, and
            # nobody will send these blocks again.
            self._saved(manifest_text)

    def _update(self, uuid: str, path: str, replace_files: Mapping[str, str] | None, manifest_text: str | None,
                properties: Mapping[str, Any] | None, name: str | None) -> UpdateResult:
        attrs: dict[str, Any] = {}
        if properties is not None:
            attrs["properties"] = dict(properties)
        if name is not None:
            attrs["name"] = name
        body: dict[str, Any] = {"select": _RECORD_FIELDS}
        if replace_files:
            if not self.server_supports_replace_files():
                return self._update_client_side(uuid, replace_files, manifest_text, attrs)
            body["replace_files"] = dict(replace_files)
            if manifest_text:
                attrs["manifest_text"] = manifest_text
        elif manifest_text is not None:
            attrs["manifest_text"] = manifest_text
        if not attrs and not replace_files:
            return UpdateResult(self.get(uuid, with_manifest=False), applied_on_base=False)
        body["collection"] = attrs
        data = self.client.call(self.update_method, path, body=body)
        return UpdateResult(self._record(data, with_manifest=False), applied_on_base=False)

    def _update_client_side(self, uuid: str, replace_files: Mapping[str, str], manifest_text: str | None, attrs: dict) -> UpdateResult:
        """Pre-3.0 clusters: apply the plan to a fresh copy and save it whole."""
        ops = plan_replace_files(replace_files, manifest_text_supplied=bool(manifest_text))
        new_content = None
        if manifest_text:
            try:
                new_content = parse_manifest(manifest_text).root
            except ManifestError as e:
                raise InvalidManifest(f"manifest_text of the update is invalid: {e}") from None
        current = self.get(uuid, with_manifest=True)
        base = parse_manifest(current.manifest_text or "").root

        def load_pdh(pdh: str):
            return parse_manifest(self.get(pdh, with_manifest=True).manifest_text or "").root

        result = apply_to_tree(base, ops, new_content=new_content, load_pdh=load_pdh)
        # The fetched and supplied locators carry signatures for our token,
        # so the full manifest passes the server's signature check.
        attrs = dict(attrs, manifest_text=Manifest(result).to_text())
        data = self.client.call(self.update_method, self._coll_path(uuid), body={"collection": attrs, "select": _RECORD_FIELDS})
        return UpdateResult(self._record(data, with_manifest=False), applied_on_base=False)

    def trash(self, uuid: str) -> None:
        self.client.call("POST", f"{self._coll_path(uuid)}/trash", idempotent=True)

    def untrash(self, uuid: str) -> CollectionRecord:
        self.client.call("POST", f"{self._coll_path(uuid)}/untrash", idempotent=True)
        return self.get(uuid, with_manifest=False)

    def revision(self, uuid: str) -> tuple[str, int]:
        """``revision_key`` of the collection: one GET selecting three fields.

        For a PDH (content never changes) this is the access check: NotFound
        once the token can read no collection with that content.
        """
        if _PDH_RE.fullmatch(uuid):
            self._check_pdh_access(uuid)
            return (uuid, 1)
        data = self.client.get(self._coll_path(uuid), select=_REVISION_FIELDS)
        return revision_key(self._record(data, with_manifest=False))

    def _check_pdh_access(self, pdh: str) -> None:
        """One small listing: a readable collection with this PDH.  Only if
        there is none, ask for the PDH itself (it may be an old version's
        content, which listings do not show); that GET may return the whole
        manifest, but a PDH nobody currently holds is rare."""
        resp = self.client.get(
            "/arvados/v1/collections",
            filters=[["portable_data_hash", "=", pdh]],
            select=["uuid"],
            limit=1,
            count="none",
        )
        items = resp.get("items") if isinstance(resp, dict) else None
        if not isinstance(items, list):
            raise Unavailable("collection list reply has no items")
        if not items:
            self.client.get(self._coll_path(pdh), select=["portable_data_hash"])

    def refresh_signatures(self, uuid_or_pdh: str) -> dict[str, str]:
        """Fresh ``+A`` signatures: bare ``md5+size`` -> newly signed locator.

        Spec 4.5: re-fetch the manifest and map old locators to new ones by
        ``md5+size``.  Callers swap signatures in their cached trees before
        the earliest expiry (or after Keep rejects one).
        """
        path = self._coll_path(uuid_or_pdh)
        params: dict[str, Any] = {}
        if not _PDH_RE.fullmatch(uuid_or_pdh):
            params["select"] = ["portable_data_hash", "manifest_text"]
        data = self.client.get(path, **params)
        text = data.get("manifest_text") if isinstance(data, dict) else None
        if not isinstance(text, str):
            raise Unavailable("the API server returned no manifest_text to re-sign from")
        out: dict[str, str] = {}
        for loc in sg.manifest_locators(text):
            bare = loc[: loc.find("+", 33)] if loc.find("+", 33) > 0 else loc
            if sg.permission_hint(loc) is not None:
                out[bare] = loc
        return out

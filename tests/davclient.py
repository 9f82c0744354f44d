"""The one WebDAV test client, multistatus parser and poll helper.

Tests used to carry their own small clients (each with its own idea of
timeouts, Destination headers and quoting) and their own ElementTree walks
over 207 bodies; a fix to one (say, absolute Destination URLs) never
reached the others.  Every test that talks DAV over HTTP should use these.

- ``DavClient``: ``requests`` with a base URL, default headers (a bearer
  token), one ``requests.Session`` per thread (safe to share across a
  thread pool), a verb per method and absolute ``Destination`` URLs.
- ``parse_multistatus``: a 207 body as a list of ``Response`` values.
- ``wait_until``: poll a condition instead of sleeping out a cache interval.
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar
from urllib.parse import quote, unquote, urlparse

import requests

D = "{DAV:}"
NO_CACHE = {"Cache-Control": "no-cache"}

LOCK_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>'
    b'<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
    b"<D:locktype><D:write/></D:locktype><D:owner>tester</D:owner></D:lockinfo>"
)

T = TypeVar("T")


def wait_until(cond: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    """Call ``cond`` until it returns something truthy or ``timeout`` passes;
    returns its last value, so ``assert wait_until(...)`` reads as the claim.

    Caches (tree revalidation, the collection listing memo, token checks)
    expire on their own clock; a fixed sleep either wastes time or, on a
    loaded machine, is too short.  Polling ends as soon as the change shows.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class DavClient:
    """WebDAV over ``requests`` against one server.

    ``base`` is the server URL (ending in "/"); ``token`` adds a bearer
    Authorization header; ``headers`` are sent with every request (a
    per-call ``headers=`` adds to them); ``no_cache`` sends
    ``Cache-Control: no-cache`` with every request (per call: ``no_cache=``)
    so the server revalidates its cached tree and listing at once;
    ``quote_paths`` percent-encodes paths given as plain names.
    """

    def __init__(self, base: str, *, token: str | None = None, headers: dict[str, str] | None = None,
                 auth: Any = None, no_cache: bool = False, timeout: float = 60, quote_paths: bool = False,
                 allow_redirects: bool = True) -> None:
        self.base = base if base.endswith("/") else base + "/"
        self.headers: dict[str, str] = dict(headers or {})
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.auth = auth
        self.no_cache = no_cache
        self.timeout = timeout
        self.quote_paths = quote_paths
        self.allow_redirects = allow_redirects
        self._local = threading.local()

    # -------------------------------------------------------------- plumbing

    @property
    def http(self) -> requests.Session:
        """This thread's session (requests.Session is not thread-safe); it
        carries the default headers, so plain ``http.get(url)`` is authorized."""
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.headers.update(self.headers)
        return s

    def u(self, path: str = "") -> str:
        """The absolute URL of a server path."""
        path = path.lstrip("/")
        return self.base + (quote(path, safe="/=+") if self.quote_paths else path)

    def dest(self, path: str) -> str:
        """A Destination header value: absolute URLs pass through unchanged."""
        return path if path.startswith(("http://", "https://")) else self.u(path)

    def req(self, method: str, path: str, *, headers: dict[str, str] | None = None, no_cache: bool | None = None,
            **kw: Any) -> requests.Response:
        h = dict(self.headers)
        if self.no_cache if no_cache is None else no_cache:
            h.update(NO_CACHE)
        h.update(headers or {})
        if "Destination" in h:
            h["Destination"] = self.dest(h["Destination"])
        kw.setdefault("timeout", self.timeout)
        kw.setdefault("allow_redirects", self.allow_redirects)
        if self.auth is not None:
            kw.setdefault("auth", self.auth)
        return self.http.request(method, self.u(path), headers=h, **kw)

    # -------------------------------------------------------------- verbs

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.req("GET", path, **kw)

    def head(self, path: str, **kw: Any) -> requests.Response:
        return self.req("HEAD", path, **kw)

    def put(self, path: str, data: Any = b"", **kw: Any) -> requests.Response:
        return self.req("PUT", path, data=data, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.req("DELETE", path, **kw)

    def mkcol(self, path: str, **kw: Any) -> requests.Response:
        return self.req("MKCOL", path, **kw)

    def copy(self, src: str, dst: str, headers: dict[str, str] | None = None, **more_headers: str) -> requests.Response:
        """COPY to ``dst`` (a path or URL); keywords are headers (Overwrite="F", Depth="0")."""
        return self.req("COPY", src, headers={"Destination": dst, **(headers or {}), **more_headers})

    def move(self, src: str, dst: str, headers: dict[str, str] | None = None, **more_headers: str) -> requests.Response:
        """MOVE to ``dst`` (a path or URL); keywords are headers (Overwrite="F")."""
        return self.req("MOVE", src, headers={"Destination": dst, **(headers or {}), **more_headers})

    def propfind(self, path: str, depth: str | None = "1", body: Any = None, *, headers: dict[str, str] | None = None,
                 **kw: Any) -> requests.Response:
        h = {} if depth is None else {"Depth": depth}
        return self.req("PROPFIND", path, data=body, headers={**h, **(headers or {})}, **kw)

    def proppatch(self, path: str, body: Any, **kw: Any) -> requests.Response:
        return self.req("PROPPATCH", path, data=body, **kw)

    def lock(self, path: str, body: Any = LOCK_BODY, *, depth: str = "0", timeout: str | None = "Second-600",
             headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
        """A new lock (``body=None`` with an ``If`` header: a refresh);
        ``timeout=None`` sends no Timeout header."""
        h = {"Depth": depth}
        if timeout is not None:
            h["Timeout"] = timeout
        if body is not None:
            h["Content-Type"] = "application/xml"
        return self.req("LOCK", path, data=body, headers={**h, **(headers or {})}, **kw)

    def unlock(self, path: str, token: str, **kw: Any) -> requests.Response:
        return self.req("UNLOCK", path, headers={"Lock-Token": f"<{token.strip('<>')}>", **kw.pop("headers", {})}, **kw)


# ------------------------------------------------------------------ multistatus


@dataclass
class Response:
    """One <D:response> of a multistatus body.

    ``href`` is as the server wrote it; ``status`` is the response-level
    status code (a response without propstats), else None; ``props`` maps a
    property's Clark name ("{DAV:}getetag") to (its propstat's status code,
    its element).
    """

    href: str
    status: int | None = None
    props: dict[str, tuple[int, ET.Element]] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The href's path, percent-decoded."""
        return unquote(urlparse(self.href).path)

    @property
    def is_dir(self) -> bool:
        el = self.prop(f"{D}resourcetype")
        return el is not None and el.find(f"{D}collection") is not None

    def prop(self, name: str) -> ET.Element | None:
        """The element of a property found (200), else None."""
        code, el = self.props.get(name, (0, None))
        return el if code == 200 else None

    def text(self, name: str) -> str | None:
        el = self.prop(name)
        return None if el is None else (el.text or "")


def _code(status_text: str | None) -> int:
    return int((status_text or "").split()[1])


def parse_multistatus(body: bytes | str | requests.Response) -> list[Response]:
    """The responses of a 207 body, in document order (a ``requests``
    response must be a 207).  Raises AssertionError when the body is not a
    DAV multistatus."""
    if isinstance(body, requests.Response):
        assert body.status_code == 207, (body.status_code, body.text[:500])
        body = body.content
    root = ET.fromstring(body)
    assert root.tag == f"{D}multistatus", root.tag
    out: list[Response] = []
    for resp in root.findall(f"{D}response"):
        href = resp.find(f"{D}href")
        assert href is not None, "a response without an href"
        r = Response(href.text or "")
        st = resp.find(f"{D}status")
        if st is not None:
            r.status = _code(st.text)
        for ps in resp.findall(f"{D}propstat"):
            code = _code(ps.find(f"{D}status").text)
            prop = ps.find(f"{D}prop")
            for p in prop if prop is not None else ():
                r.props[p.tag] = (code, p)
        out.append(r)
    return out


def hrefs(body: bytes | str | requests.Response) -> list[str]:
    """The hrefs of a multistatus, as the server wrote them, in order."""
    return [r.href for r in parse_multistatus(body)]

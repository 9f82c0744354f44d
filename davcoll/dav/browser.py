"""davcoll's HTML folder listing and the headers that keep user content inert.

Why not WsgiDAV's directory browser: it put file names into ``href``s and
single-quoted attributes without full escaping (a file named
``javascript:alert(1)`` became a live link; a quote in a ``.docx`` name broke
out of an attribute), loaded script from ``/:dir_browser`` and labelled the
page WsgiDAV.  Here every name is escaped for the context it lands in:

* text and attribute values: ``html.escape`` (quotes included), and every
  attribute is double-quoted;
* links: each path segment is percent-encoded with nothing left "safe"
  (``quote(seg, safe="")``, so ``: ; ? # % \\`` cannot change what the URL
  means) and a relative link always starts with ``./`` (a scheme such as
  ``javascript:`` can never be read from it); the parent link is ``./../``.
  Relative links keep working behind a proxy that mounts davcoll under a
  prefix, and never repeat a ``/t=<token>/`` path component into the page.

All files are served on the same origin as the listing, so user content of
an active type (HTML, SVG, XML, script) would run with the reader's
credentials.  Following keep-web (which only serves such content inline from
per-collection hostnames or with ``TrustAllContent``), those responses get
``Content-Disposition: attachment`` unless the operator sets
``inline_active_content``.  Every response gets ``X-Content-Type-Options:
nosniff`` (so a browser cannot sniff a harmless-looking type into HTML) and
every response that is not user content (listings, error pages, multistatus
XML) a restrictive Content-Security-Policy.

Big folders: the page is rendered row by row and sent in chunks of a few
hundred rows; only a compact tuple per entry is kept.  Its length is
computed by rendering twice, so the response keeps its Content-Length and the
connection stays alive (WsgiDAV closes connections without one).
"""

from __future__ import annotations

import html
import re
import time
from fnmatch import translate
from typing import Any, Callable, Iterable, Iterator, NamedTuple
from urllib.parse import quote

from wsgidav import util
from wsgidav.dav_error import HTTP_MEDIATYPE_NOT_SUPPORTED, DAVError
from wsgidav.mw.base_mw import BaseMiddleware

from .. import __version__
from .guard import redact

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
NOSNIFF = ("X-Content-Type-Options", "nosniff")
USER_CONTENT_KEY = "davcoll.user_content"  # environ flag: the response body is a user's file

# Types a browser would execute or render as a document with script.
ACTIVE_TYPES = frozenset({
    "text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml",
    "text/xsl", "application/xslt+xml", "application/javascript", "text/javascript",
    "application/x-javascript", "application/ecmascript", "text/ecmascript", "text/jscript",
    "application/vnd.wap.xhtml+xml", "multipart/x-mixed-replace", "application/x-shockwave-flash",
    "text/cache-manifest", "text/vtt",
})
# Types a browser may sniff (with or without nosniff): treat as active.
SNIFFED_TYPES = frozenset({"", "unknown/unknown", "application/unknown", "*/*"})

ROWS_PER_CHUNK = 256
KEEP_RENDERED = 4 << 20  # a listing up to this size is rendered once

DAVMOUNT_XML = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<dm:mount xmlns:dm="http://purl.org/NET/webdav/mount"><dm:url>{}</dm:url></dm:mount>\n'
)

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
    "h1{font-size:1.3em;font-weight:600;word-break:break-all}"
    "table{border-collapse:collapse;width:100%}"
    "th,td{text-align:left;padding:.25em .8em;border-bottom:1px solid #eee}"
    "td.n{word-break:break-all}td.s,td.m,th.s,th.m{text-align:right;white-space:nowrap}"
    "tr.d a{font-weight:600}footer{margin-top:1em;color:#888;font-size:.85em}"
)


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_active_type(content_type: str | None) -> bool:
    """True for content a browser could run script from (or might sniff into such)."""
    mt = media_type(content_type)
    return mt in ACTIVE_TYPES or mt in SNIFFED_TYPES or mt.endswith("+xml")


def attachment_disposition(name: str) -> str:
    """An ``attachment`` header value; the name only ever appears percent-encoded (RFC 6266/8187)."""
    return "attachment; filename*=UTF-8''" + quote(name, safe="")


def member_href(name: str, is_dir: bool) -> str:
    """A link to a member of the listed folder: ``./`` + one encoded segment."""
    return "./" + quote(name, safe="") + ("/" if is_dir else "")


def absolute_href(path: str) -> str:
    """An absolute link to ``path`` (a decoded URL path), each segment encoded."""
    segs = [quote(s, safe="") for s in path.split("/") if s]
    return "/" + "".join(s + "/" for s in segs)


def _has_header(headers: list, name: str) -> bool:
    name = name.lower()
    return any(k.lower() == name for k, _ in headers)


def _last_segment(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


class Row(NamedTuple):
    is_dir: bool
    sort_key: str
    name: str  # URL segment (decoded)
    label: str  # shown text
    size: int | None
    mtime: float | None


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def format_time(ts: float | None) -> str:
    if ts is None:
        return ""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return ""


def render_row(row: Row) -> str:
    # Only the label needs escaping: the href is "./" plus quote(safe="")
    # output ([A-Za-z0-9_.~%-]), size and time are digits and fixed words.
    label = html.escape(row.label + ("/" if row.is_dir else ""))
    if row.is_dir:
        return (f'<tr class="d"><td class="n"><a href="./{quote(row.name, safe="")}/">{label}</a></td>'
                f'<td class="s">-</td><td class="m">{format_time(row.mtime)}</td></tr>\n')
    return (f'<tr class="f"><td class="n"><a href="./{quote(row.name, safe="")}">{label}</a></td>'
            f'<td class="s">{human_size(row.size)}</td><td class="m">{format_time(row.mtime)}</td></tr>\n')


class ListingPage:
    """One folder's page as byte chunks, with its length known up front."""

    def __init__(self, shown_path: str, parent_href: str | None, rows: list[Row], trailer: str) -> None:
        self.rows = rows
        title = html.escape(f"Index of {shown_path} — davcoll")
        head = [
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n",
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
            '<meta name="referrer" content="no-referrer">\n',
            f"<title>{title}</title>\n<style>{_STYLE}</style>\n</head><body>\n",
            f"<h1>Index of {html.escape(shown_path)}</h1>\n",
            '<table><thead><tr><th>Name</th><th class="s">Size</th><th class="m">Last modified</th></tr></thead>\n<tbody>\n',
        ]
        if parent_href is not None:
            head.append(f'<tr class="d"><td class="n"><a href="{html.escape(parent_href)}">../</a></td>'
                        '<td class="s">-</td><td class="m"></td></tr>\n')
        self.head = "".join(head).encode()
        self._kept: list[bytes] | None = None
        self.tail = (f"</tbody></table>\n<footer>{html.escape(trailer)}</footer>\n</body></html>\n").encode()

    def _row_chunks(self) -> Iterator[bytes]:
        rows = self.rows
        for i in range(0, len(rows), ROWS_PER_CHUNK):
            yield "".join([render_row(r) for r in rows[i : i + ROWS_PER_CHUNK]]).encode()

    def length(self) -> int:
        """The body's length.  The rendered rows are kept for ``chunks`` up
        to KEEP_RENDERED bytes; a bigger page is rendered again instead."""
        total = len(self.head) + len(self.tail)
        kept: list[bytes] | None = []
        for chunk in self._row_chunks():
            total += len(chunk)
            if kept is not None:
                kept.append(chunk)
                if total > KEEP_RENDERED:
                    kept = None
        self._kept = kept
        return total

    def chunks(self) -> Iterator[bytes]:
        yield self.head
        kept, self._kept = self._kept, None
        yield from (kept if kept is not None else self._row_chunks())
        yield self.tail


class SecurityHeaders(BaseMiddleware):
    """Outermost layer of the WsgiDAV stack (outside ErrorPrinter, so error
    pages pass through it): ``nosniff`` on everything and the CSP on
    everything that is not a user's file."""

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        def sr(status: str, headers: list, exc_info: Any = None):
            headers = list(headers)
            if not _has_header(headers, NOSNIFF[0]):
                headers.append(NOSNIFF)
            user_file = environ.get(USER_CONTENT_KEY) and status[:1] == "2"
            if not user_file and not _has_header(headers, "Content-Security-Policy"):
                headers.append(("Content-Security-Policy", CSP))
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        return self.next_app(environ, sr)


class DirectoryListing(BaseMiddleware):
    """GET/HEAD on a folder → davcoll's HTML listing; GET/HEAD on a file →
    the file, with ``attachment`` when its type is active.

    Config (``dir_browser``): ``enable`` (listing on/off), ``ignore`` (fnmatch
    patterns of names not listed), ``davmount`` (answer ``?davmount``, RFC
    4709), ``inline_active_content``, ``response_trailer`` (plain text footer).
    """

    def __init__(self, wsgidav_app: Any, next_app: Callable, config: dict) -> None:
        super().__init__(wsgidav_app, next_app, config)
        conf = util.get_dict_value(config, "dir_browser", as_dict=True) or {}
        self.listing_enabled = conf.get("enable", True) is not False
        self.davmount = bool(conf.get("davmount", False))
        self.inline_active = bool(conf.get("inline_active_content", False))
        trailer = conf.get("response_trailer")
        self.trailer = trailer if isinstance(trailer, str) else f"davcoll {__version__}"
        patterns = conf.get("ignore") or []
        if isinstance(patterns, str):
            patterns = patterns.split(",")
        self._ignore = re.compile("|".join(translate(p) for p in patterns)) if patterns else None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        provider = environ.get("wsgidav.provider")
        if method not in ("GET", "HEAD") or provider is None:
            return self.next_app(environ, start_response)
        path = environ["PATH_INFO"]
        res = provider.get_resource_inst(path, environ)
        if res is None:
            return self.next_app(environ, start_response)
        if not res.is_collection:
            return self.next_app(environ, self._file_start_response(environ, start_response, path))
        if not self.listing_enabled:
            return self.next_app(environ, start_response)
        return self._listing(environ, start_response, res, path, method)

    # ------------------------------------------------------------------ files

    def _file_start_response(self, environ: dict, start_response: Callable, path: str) -> Callable:
        query = environ.get("QUERY_STRING", "")
        forced = "disposition=attachment" in query.split("&")

        def sr(status: str, headers: list, exc_info: Any = None):
            headers = list(headers)
            code = int(status.split(" ", 1)[0])
            if 200 <= code < 300:
                environ[USER_CONTENT_KEY] = True
                ctype = next((v for k, v in headers if k.lower() == "content-type"), None)
                if (forced or (is_active_type(ctype) and not self.inline_active)) and not _has_header(
                    headers, "Content-Disposition"
                ):
                    headers.append(("Content-Disposition", attachment_disposition(_last_segment(path))))
            if not _has_header(headers, NOSNIFF[0]):
                headers.append(NOSNIFF)
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        return sr

    # ---------------------------------------------------------------- folders

    def _listing(self, environ: dict, start_response: Callable, res: Any, path: str, method: str) -> Iterable[bytes]:
        if util.get_content_length(environ) != 0:
            raise DAVError(HTTP_MEDIATYPE_NOT_SUPPORTED, "The server does not handle any body content.")
        full_path = environ.get("SCRIPT_NAME", "") + path
        if self.davmount and "davmount" in environ.get("QUERY_STRING", "").split("&"):
            return self._davmount(environ, start_response, full_path)
        if not path.endswith("/"):
            # Relative member links need the slash URL.
            location = absolute_href(full_path)
            start_response("301 Moved Permanently", [("Location", location), ("Content-Length", "0"),
                                                     ("Content-Type", "text/plain; charset=utf-8")])
            return [b""]
        rows = self._rows(res)
        shown = redact(full_path if full_path.endswith("/") else full_path + "/")
        is_top = full_path.strip("/") == ""
        parent = None if is_top else "./../"
        page = ListingPage(shown, parent, rows, self.trailer)
        headers = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(page.length())),
            ("Cache-Control", "private, no-cache"),
            ("Date", util.get_rfc1123_time()),
            ("Content-Security-Policy", CSP),
            NOSNIFF,
            ("Referrer-Policy", "no-referrer"),
        ]
        start_response("200 OK", headers)
        if method == "HEAD":
            return [b""]
        return page.chunks()

    def _rows(self, res: Any) -> list[Row]:
        ignore = self._ignore
        rows: list[Row] = []
        for m in res.get_member_list():
            name = _last_segment(m.path)
            if not name or (ignore is not None and ignore.match(name)):
                continue
            is_dir = bool(m.is_collection)
            label = m.get_display_name() or name
            size = None if is_dir else m.get_content_length()
            rows.append(Row(is_dir, label.casefold(), name, label, size, m.get_last_modified()))
        rows.sort(key=lambda r: (not r.is_dir, r.sort_key, r.name))
        return rows

    def _davmount(self, environ: dict, start_response: Callable, full_path: str) -> Iterable[bytes]:
        scheme = environ.get("wsgi.url_scheme", "http")
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "localhost")
        url = f"{scheme}://{host}{absolute_href(full_path)}"
        body = DAVMOUNT_XML.format(html.escape(url)).encode()
        start_response("200 OK", [("Content-Type", "application/davmount+xml"),
                                  ("Content-Length", str(len(body))), ("Cache-Control", "private")])
        return [body]

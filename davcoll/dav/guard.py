"""The outermost WSGI layer: reject hostile input before WsgiDAV sees it.

WsgiDAV alone drops the connection on invalid UTF-8 paths, answers ``..``
escapes with a body-less 400 that hangs clients, ignores chunked XML bodies
(desynchronising keep-alive), serves only the last of several ranges, and
lets cheroot read a rejected upload's whole body into memory.  This layer
answers all of those with a clear status and a short reason, and also owns
the access log (tokens redacted), metrics accounting, ``/_health`` and
``/_metrics``.
"""

from __future__ import annotations

import io
import json
from http import HTTPStatus
import logging
import re
import time
from typing import Any, Callable, Iterable

from defusedxml import DefusedXmlException
from wsgidav.dav_error import HTTP_BAD_REQUEST, DAVError

from .headers import classify_range, valid_if_header
from .auth import split_path_token
from defusedxml.ElementTree import iterparse as safe_iterparse
from xml.etree.ElementTree import ParseError

log = logging.getLogger("davcoll.access")

XML_BODY_METHODS = frozenset({"PROPFIND", "PROPPATCH", "LOCK"})
MAX_XML_BODY = 1 << 20
# Shape limits for XML bodies.  WsgiDAV (lxml) copies every in-scope
# namespace declaration into each property it stores, a cost quadratic in
# the declarations (40,000 ``xmlns:`` in one 1 MB PROPPATCH took 10 s of
# CPU; 100 declarations cost ~50 us per element), so declarations and
# elements are capped before WsgiDAV parses the body.  Real clients send a
# handful of namespaces and a few dozen elements.
MAX_XML_NAMESPACES = 100
MAX_XML_ELEMENTS = 10_000
MAX_XML_DEPTH = 64
_XMLNS_DECL = re.compile(rb"\sxmlns(?::[^\s=>]*)?\s*=")
DRAIN_LIMIT = 8 << 20
# An encoded "/" would hide a separator in a name; NUL ends C strings.  An
# encoded backslash is an ordinary character (Arvados names may hold "\\").
_ENCODED_BAD = re.compile(r"%(2f|00)", re.IGNORECASE)
# A path token is one component, or three for a v2 token written with its
# slashes (t=v2/<uuid>/<secret>).
_TOKEN_IN_PATH = re.compile(r"(^|/)t=(?:v2/[^/]*/)?[^/]*")

STATUS_TEXT = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    503: "Service Unavailable",
}


def redact(path: str) -> str:
    return _TOKEN_IN_PATH.sub(r"\1t=***", path)


# C0, DEL, C1, the Unicode line separators, the backslash itself, and the
# surrogates that stand for undecodable bytes (surrogateescape).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\\\\\u2028\u2029\udc80-\udcff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(m: re.Match) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    n = ord(c)
    if 0xDC80 <= n <= 0xDCFF:  # an undecodable byte
        return f"\\x{n - 0xDC00:02x}"
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def log_safe(text: str) -> str:
    """One log field that cannot start a new log line or fake one.

    Control characters and the backslash become backslash escapes, so
    ``GET /x%0A2026-... DELETE /`` is logged as one line with a visible
    ``\\n``, and a literal backslash in a name (logged ``\\\\``) cannot pass
    for an escape.
    """
    return _CONTROL.sub(_escape_char, text)


def log_path(raw_path: str) -> str:
    """The path as the user typed it, tokens redacted, safe to log.

    WSGI hands PATH_INFO over as latin-1-decoded bytes; re-decoding them as
    UTF-8 logs ``été`` rather than ``Ã©tÃ©`` (bytes that are not UTF-8 show
    as ``\\xNN``)."""
    try:
        path = raw_path.encode("latin-1").decode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:  # already decoded text
        path = raw_path
    return log_safe(redact(path))


def _path_token(path: str) -> bytes:
    """The raw bytes of a ``/t=<token>/`` path token (to mask in error pages)."""
    if not path.startswith("/t="):
        return b""
    token = split_path_token(path)[0] or ""
    try:
        return token.encode("latin-1") if len(token) >= 4 else b""
    except UnicodeEncodeError:
        return b""


def _with_reason_phrase(code: int, status: str) -> str:
    """The status line with its standard reason phrase where WsgiDAV wrote
    a placeholder ("503 Status", "507 Status")."""
    if status.endswith(" Status"):
        try:
            return f"{code} {HTTPStatus(code).phrase}"
        except ValueError:
            return status
    return status


def _plain(start_response: Callable, status: int, reason: str, headers: list | None = None) -> list[bytes]:
    body = f"{status} {STATUS_TEXT.get(status, '')}: {reason}\n".encode()
    start_response(
        f"{status} {STATUS_TEXT.get(status, 'Error')}",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))] + (headers or []),
    )
    return [body]


class CountingInput:
    """Wraps wsgi.input to count bytes and tell whether the body was consumed.

    A body that cannot be read (the client stalled past the socket timeout,
    went away, or sent broken chunked framing) becomes a 408/400 DAVError
    instead of an exception WsgiDAV would turn into a 500; the connection is
    then closed because the stream position is lost.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.count = 0
        self.eof = False
        self.broken = False

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.inner.read(size) if size is not None and size >= 0 else self.inner.read()
        except TimeoutError:
            self.broken = True
            raise DAVError(408, context_info="request body timed out; nothing was changed") from None
        except (OSError, ValueError) as e:
            self.broken = True
            raise DAVError(HTTP_BAD_REQUEST, context_info=f"request body could not be read ({type(e).__name__}); nothing was changed") from None
        self.count += len(data)
        if not data or size is None or size < 0:
            self.eof = True
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self.inner.readline(size)
        self.count += len(data)
        return data

    def __iter__(self):
        return iter(self.read, b"")


def xml_shape_problem(body: bytes) -> tuple[int, str, str] | None:
    """Why an XML request body is refused (status, reason, ""), or None.

    Well-formed, no DTD or entities, and within the shape limits.  First a
    byte scan for declaration syntax (`` xmlns:p=``), so 40,000 declarations
    in one start tag cost a millisecond instead of expat's 0.2 s (a value
    quoting more than the limit of declarations as text is refused too);
    then a streaming parse (expat, 16 KiB at a time, no tree kept) counts
    and stops at the first limit passed.  Only then does WsgiDAV build its
    lxml tree.
    """
    if len(_XMLNS_DECL.findall(body, 0, len(body))) > MAX_XML_NAMESPACES:
        return 413, f"XML body declares more than {MAX_XML_NAMESPACES} namespaces", ""
    namespaces = elements = depth = 0
    try:
        events = safe_iterparse(io.BytesIO(body), events=("start-ns", "start", "end"),
                                forbid_dtd=True, forbid_entities=True, forbid_external=True)
        for event, _ in events:
            if event == "start":
                elements += 1
                depth += 1
                if elements > MAX_XML_ELEMENTS:
                    return 413, f"XML body has more than {MAX_XML_ELEMENTS} elements", ""
                if depth > MAX_XML_DEPTH:
                    return 413, f"XML body nests deeper than {MAX_XML_DEPTH} elements", ""
            elif event == "end":
                depth -= 1
            else:
                namespaces += 1
                if namespaces > MAX_XML_NAMESPACES:
                    return 413, f"XML body declares more than {MAX_XML_NAMESPACES} namespaces", ""
    except DefusedXmlException:
        return 400, "DTDs and entities are not allowed in XML bodies", ""
    except (ParseError, ValueError, SyntaxError, LookupError):
        # LookupError: an XML declaration naming an unknown encoding.
        return 400, "malformed XML body", ""
    return None


class RequestGuard:
    """See module docstring.  ``app`` is the WsgiDAV application."""

    def __init__(self, app: Callable, *, metrics: Any = None, health: Callable[[], dict] | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.health = health or (lambda: {"status": "ok"})

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        t0 = time.monotonic()
        method = environ.get("REQUEST_METHOD", "")
        raw_path = environ.get("PATH_INFO", "")
        shown = log_path(raw_path)
        result: dict[str, Any] = {"status": 0, "out": 0}
        inp = CountingInput(environ.get("wsgi.input", io.BytesIO()))
        environ["wsgi.input"] = inp

        def sr(status: str, headers: list, exc_info=None):
            code = int(status.split(" ", 1)[0])
            result["status"] = code
            status = _with_reason_phrase(code, status)
            headers = list(headers)
            if environ.get("davcoll.chunked_keep_alive"):
                # A streamed PROPFIND ends by its chunked framing; WsgiDAV
                # closes every response without Content-Length.
                headers = [(k, v) for k, v in headers if k.lower() != "connection"]
            self._protect_connection(environ, inp, headers)
            return start_response(status, headers, exc_info)

        secret = _path_token(raw_path)
        try:
            it = self._route(environ, sr, method, raw_path)
            head = method == "HEAD"
            for chunk in it:
                if head:
                    # No content in an answer to HEAD (RFC 9110 9.3.2), error
                    # pages included: on a kept-alive connection the client
                    # would read them as the start of the next response.
                    continue
                result["out"] += len(chunk)
                if secret and result["status"] >= 400:
                    chunk = chunk.replace(secret, b"*" * len(secret))  # same length: Content-Length holds
                yield chunk
            if hasattr(it, "close"):
                it.close()
        finally:
            dt = time.monotonic() - t0
            if self.metrics is not None:
                self.metrics.observe_request(method, result["status"], dt, inp.count, result["out"])
            log.info('%s %s %s %d %d %.3f', log_safe(method), shown, result["status"], inp.count, result["out"], dt)

    # ------------------------------------------------------------------ routing

    def _route(self, environ: dict, sr: Callable, method: str, raw_path: str) -> Iterable[bytes]:
        if raw_path == "/_health" and method in ("GET", "HEAD"):
            body = (json.dumps(self.health()) + "\n").encode()
            sr("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body] if method == "GET" else [b""]
        if raw_path == "/_metrics" and method in ("GET", "HEAD") and self.metrics is not None:
            body = self.metrics.render().encode()
            sr("200 OK", [("Content-Type", "text/plain; version=0.0.4"), ("Content-Length", str(len(body)))])
            return [body] if method == "GET" else [b""]
        problem = self._check(environ, method, raw_path)
        if problem is not None:
            status, reason, extra = problem
            return _plain(sr, status, reason)
        return self.app(environ, sr)

    def _check(self, environ: dict, method: str, raw_path: str) -> tuple[int, str, str] | None:
        # Path: valid UTF-8 (WsgiDAV would drop the connection), no NUL,
        # no encoded slash/backslash, no dot segments.
        try:
            path = raw_path.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return 400, "request path is not valid UTF-8", ""
        uri = environ.get("REQUEST_URI", "") or environ.get("RAW_URI", "")
        if _ENCODED_BAD.search(uri.split("?", 1)[0]):
            return 400, "encoded slashes and NUL are not allowed in paths", ""
        if "\x00" in path:
            return 400, "NUL is not allowed in paths", ""
        segs = path.split("/")
        if any(s in (".", "..") for s in segs):
            return 400, "'.' and '..' path segments are not allowed", ""
        # The Destination header is parsed strictly by dav/destination.py
        # when the COPY/MOVE runs (it needs the request's host and scheme).
        if method == "PROPPATCH":
            # RFC 4918 defines no Depth for PROPPATCH; webdavclient3 sends
            # "Depth: 1", which WsgiDAV refuses.  Ignore it, as Apache does.
            environ.pop("HTTP_DEPTH", None)
        depth = environ.get("HTTP_DEPTH")
        if depth is not None and depth.strip().lower() not in ("0", "1", "infinity"):
            return 400, "invalid Depth header", ""
        # Depth: infinity on PROPFIND is decided by dav/propfind.py (it needs
        # to know whether the target is a folder and how big it is).
        rng = environ.get("HTTP_RANGE")
        if rng is not None:
            kind = classify_range(rng)
            if kind in ("ignore", "multi"):
                # Another unit must be ignored (RFC 9110 14.2).  For several
                # ranges WsgiDAV would serve only the last one; the whole
                # body (200) is the other answer the RFC allows.
                del environ["HTTP_RANGE"]
            elif kind == "unsatisfiable":
                # "-0" or a malformed set ("5-2": WsgiDAV read it as the
                # suffix "-2"; "-0": it sent "bytes 1000-999/1000"): an empty
                # spec makes WsgiDAV answer 416.
                environ["HTTP_RANGE"] = "bytes="
        if_header = environ.get("HTTP_IF")
        if if_header is not None and not valid_if_header(if_header):
            return 400, "malformed If header", ""
        if method in XML_BODY_METHODS:
            return self._check_xml_body(environ)
        return None

    def _check_xml_body(self, environ: dict) -> tuple[int, str, str] | None:
        inp: CountingInput = environ["wsgi.input"]
        te = environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        cl = environ.get("CONTENT_LENGTH", "")
        if "chunked" in te:
            body = inp.read(MAX_XML_BODY + 1)
            if len(body) > MAX_XML_BODY:
                return 413, "XML request body too large", ""
            inp.eof = True
        else:
            try:
                n = int(cl) if cl else 0
            except ValueError:
                return 400, "invalid Content-Length", ""
            if n < 0:
                return 400, "invalid Content-Length", ""
            if n > MAX_XML_BODY:
                return 413, "XML request body too large", ""
            body = inp.read(n) if n else b""
            if len(body) != n:
                return 400, "request body shorter than Content-Length", ""
            inp.eof = True
        if body.strip():
            problem = xml_shape_problem(body)
            if problem is not None:
                return problem
        environ["wsgi.input"] = CountingInput(io.BytesIO(body))
        environ["wsgi.input"].count = 0
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        inp.count = len(body)
        return None

    @staticmethod
    def _protect_connection(environ: dict, inp: CountingInput, headers: list) -> None:
        """Never let cheroot slurp a large unread body into memory.

        cheroot drains an unread Content-Length body with one read() to keep
        the connection alive.  Small leftovers are fine; for large ones we
        tell cheroot nothing is left and close the connection instead.
        Unread chunked bodies are never drained by cheroot: close as well.
        """
        if inp.eof and not inp.broken:
            return
        inner = inp.inner
        remaining = getattr(inner, "remaining", None)
        te = environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        must_close = inp.broken or ("chunked" in te) or (remaining is not None and remaining > DRAIN_LIMIT)
        if must_close:
            if remaining is not None:
                try:
                    inner.remaining = 0
                except AttributeError:
                    pass
            if not any(k.lower() == "connection" for k, _ in headers):
                headers.append(("Connection", "close"))

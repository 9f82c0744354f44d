"""Hostile input corpus (issue 7, scenario 4).

More than a hundred malformed or malicious requests, sent over raw sockets to
a real ``davcoll serve`` process (``timeout = 3`` in its config file, so
stalled bodies are cut off quickly).  For every row:
  - the status is one of the row's expected statuses (``CLOSE`` means the
    server may instead close the connection without a response, which is
    what it should do with a client that stalls past the socket timeout);
  - never 500, never a hang;
  - the server answers a GET right afterwards;
  - collection ``c``'s manifest and the list of collections are unchanged.

Statuses that are surprising but defensible are explained in the row's note.
A row where davcoll answers 500 (or hangs) is a bug: mark it
``row(..., xfail="<cause and proposed fix>")`` (strict) until it is fixed.
(The first run found: unknown XML encodings dropping the connection,
malformed If headers ignored, invalid ranges served as suffix ranges,
stalled or malformed request bodies answered 500, duplicate or signed
Content-Length, CL with TE and negative chunk sizes accepted.)

This file would fail if the request guard stopped rejecting entity-expanding
XML, dot-segment or invalid UTF-8 paths, or malformed credentials, or if a
malformed request could change the collection.
"""

from __future__ import annotations

import base64
import socket
import time
from dataclasses import dataclass
from typing import Callable

import pytest

from davcoll.manifest import parse_manifest
from davcoll.storage.local_catalog import LocalCatalog, db_path_for
from server_util import ServerProcess

CLOSE = "close"  # the server closed the connection without a response
SHUT_WR = "shut_wr"  # in a row's parts: the client half-closes (no more body)
TIMEOUT = 3  # the server's socket timeout (config file below)
BASE = b"hello world\n"


# --------------------------------------------------------------------------
# raw HTTP


@dataclass
class Resp:
    status: int | None
    headers: dict[str, str]
    body: bytes
    elapsed: float


def _recv_until(s: socket.socket, buf: bytearray, marker: bytes) -> bool:
    while marker not in buf:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError, socket.timeout):
            return False
        if not chunk:
            return False
        buf += chunk
    return True


def exchange(port: int, parts: list, *, method: str = "", read_timeout: float = 15.0) -> Resp:
    """Send ``parts`` (bytes to send, a float: seconds to pause, or SHUT_WR), then read
    one response.  Sending stops quietly if the server closed already."""
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    try:
        for part in parts:
            if isinstance(part, (int, float)):
                time.sleep(part)
                continue
            if part == SHUT_WR:
                s.shutdown(socket.SHUT_WR)
                continue
            try:
                s.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        buf = bytearray()
        if not _recv_until(s, buf, b"\r\n\r\n"):
            return Resp(None, {}, bytes(buf), time.monotonic() - t0)
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = bytearray(rest)
        if method != "HEAD" and status not in (204, 304) and status >= 200:
            if "content-length" in headers:
                n = int(headers["content-length"])
                while len(body) < n:
                    try:
                        chunk = s.recv(65536)
                    except (ConnectionResetError, TimeoutError, socket.timeout):
                        break
                    if not chunk:
                        break
                    body += chunk
                assert len(body) >= n, f"response body cut short: {len(body)} of {n} bytes"
                body = body[:n]
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                _recv_until(s, body, b"0\r\n\r\n")
        return Resp(status, headers, bytes(body), time.monotonic() - t0)
    finally:
        s.close()


def req(method: str, path: str | bytes, headers: list[tuple[str, str]] | tuple = (), body: bytes = b"", *,
        cl: bool = True, host: bool = True, version: str = "HTTP/1.1", close: bool = True) -> bytes:
    p = path if isinstance(path, bytes) else path.encode("latin-1")
    out = [method.encode() + b" " + p + b" " + version.encode()]
    if host:
        out.append(b"Host: 127.0.0.1")
    for k, v in headers:
        out.append(k.encode("latin-1") + b": " + (v if isinstance(v, bytes) else v.encode("latin-1")))
    if body and cl:
        out.append(b"Content-Length: " + str(len(body)).encode())
    if close:
        out.append(b"Connection: close")
    return b"\r\n".join(out) + b"\r\n\r\n" + body


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


# --------------------------------------------------------------------------
# XML bodies

LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + b"".join(
        b'<!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10)
    )
    + b']>\n<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&lol9;</D:displayname></D:prop></D:propfind>'
)
XXE = (
    b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    b'<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&xxe;</D:displayname></D:prop></D:propfind>'
)
XXE_PROPPATCH = (
    b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    b'<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop><Z:p>&xxe;</Z:p></D:prop></D:set></D:propertyupdate>'
)
LAUGHS_PROPPATCH = LAUGHS.replace(
    b'<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&lol9;</D:displayname></D:prop></D:propfind>',
    b'<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop><Z:p>&lol9;</Z:p></D:prop></D:set></D:propertyupdate>',
)
LOCK_BODY = (
    b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
    b"<D:locktype><D:write/></D:locktype><D:owner>%s</D:owner></D:lockinfo>"
)
XXE_LOCK = b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n' + LOCK_BODY[21:] % b"&xxe;"
LAUGHS_LOCK = LAUGHS.split(b"]>")[0] + b"]>\n" + LOCK_BODY[21:] % b"&lol9;"
EXT_DTD = b'<?xml version="1.0"?>\n<!DOCTYPE D:propfind SYSTEM "http://127.0.0.1:9/evil.dtd">\n<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
PARAM_ENTITY = b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY % pe SYSTEM "http://127.0.0.1:9/x"> %pe;]>\n<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
QUADRATIC = (
    b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY a "' + b"A" * 50000 + b'">]>\n<D:propfind xmlns:D="DAV:"><D:prop><D:x>'
    + b"&a;" * 2000 + b"</D:x></D:prop></D:propfind>"
)
ALLPROP = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
PROPPATCH_OK = (
    b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop><Z:p>v</Z:p></D:prop></D:set></D:propertyupdate>'
)
DEEP = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:">' + b"<a>" * 50000 + b"</a>" * 50000 + b"</D:propfind>"
BIG_XML = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop>' + b"<D:x/>" * 300000 + b"</D:prop></D:propfind>"


def basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


# --------------------------------------------------------------------------
# The corpus.  Each row: (id, builder(port) -> list of parts, expected
# statuses, note).  Paths: /c/base.txt (a file), /c/five.txt ("12345"),
# /c/dir/ (a folder with a.txt); "H" in a Destination is this server.

Row = tuple[str, Callable[[int], list], set, str]
ROWS: list[Row] = []


def row(rid: str, build: Callable[[int], list] | bytes, expect, note: str = "", *, xfail: str | None = None) -> None:
    b = build if callable(build) else (lambda port, _b=build: [_b])
    exp = set(expect) if isinstance(expect, (set, list, tuple)) else {expect}
    marks = (pytest.mark.xfail(strict=True, reason=xfail),) if xfail else ()
    ROWS.append(pytest.param(rid, b, exp, note, id=rid, marks=marks))


def dest(value: str, method: str = "COPY", src: str = "/c/base.txt", extra: tuple = ()) -> Callable[[int], list]:
    # The Host header of these requests is "127.0.0.1" (no port), so "H" is
    # the same server.
    return lambda port: [req(method, src, [("Destination", value.replace("H", "127.0.0.1")), *extra])]


# XML: entity expansion, external entities, DTDs -----------------------------
for m, body in [("PROPFIND", LAUGHS), ("PROPPATCH", LAUGHS_PROPPATCH), ("LOCK", LAUGHS_LOCK)]:
    row(f"xml-billion-laughs-{m}", req(m, "/c/base.txt", [("Depth", "0"), ("Content-Type", "application/xml")], body), 400)
for m, body in [("PROPFIND", XXE), ("PROPPATCH", XXE_PROPPATCH), ("LOCK", XXE_LOCK)]:
    row(f"xml-external-entity-{m}", req(m, "/c/base.txt", [("Depth", "0")], body), 400)
row("xml-external-dtd", req("PROPFIND", "/c/base.txt", [("Depth", "0")], EXT_DTD), 400)
row("xml-parameter-entity", req("PROPFIND", "/c/base.txt", [("Depth", "0")], PARAM_ENTITY), 400)
row("xml-quadratic-blowup", req("PROPFIND", "/c/base.txt", [("Depth", "0")], QUADRATIC), 400)
row("xml-billion-laughs-chunked", req("PROPPATCH", "/c/base.txt", [("Transfer-Encoding", "chunked")],
                                      chunked(LAUGHS_PROPPATCH[:300], LAUGHS_PROPPATCH[300:]), cl=False), 400)
row("xml-xxe-on-collection", req("PROPFIND", "/c/", [("Depth", "1")], XXE), 400)
row("xml-xxe-on-root", req("PROPFIND", "/", [("Depth", "1")], XXE), 400)
# XML: malformed, oversized, odd
row("xml-unclosed-PROPFIND", req("PROPFIND", "/c/base.txt", [("Depth", "0")], b'<D:propfind xmlns:D="DAV:"><D:prop>'), 400)
row("xml-unclosed-PROPPATCH", req("PROPPATCH", "/c/base.txt", [], b'<D:propertyupdate xmlns:D="DAV:"><D:set>'), 400)
row("xml-unclosed-LOCK", req("LOCK", "/c/base.txt", [], b'<D:lockinfo xmlns:D="DAV:"><D:lockscope>'), 400)
row("xml-binary-garbage", req("PROPFIND", "/c/base.txt", [("Depth", "0")], bytes(range(256)) * 4), 400)
row("xml-invalid-utf8", req("PROPFIND", "/c/base.txt", [("Depth", "0")],
                            b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop><D:\xff\xfe/></D:prop></D:propfind>'), 400)
row("xml-unknown-encoding", req("PROPFIND", "/c/base.txt", [("Depth", "0")],
                                b'<?xml version="1.0" encoding="x-bogus"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'), 400)
row("xml-undeclared-prefix", req("PROPFIND", "/c/base.txt", [("Depth", "0")], b"<D:propfind><D:allprop/></D:propfind>"), 400)
row("xml-wrong-root-PROPFIND", req("PROPFIND", "/c/base.txt", [("Depth", "0")], b'<D:lockinfo xmlns:D="DAV:"/>'), 400)
row("xml-wrong-root-PROPPATCH", req("PROPPATCH", "/c/base.txt", [], ALLPROP), 400)
row("xml-empty-PROPPATCH", req("PROPPATCH", "/c/base.txt", [("Content-Length", "0")], b""), 400)
row("xml-text-only", req("PROPFIND", "/c/base.txt", [("Depth", "0")], b"just text"), 400)
row("xml-two-roots", req("PROPFIND", "/c/base.txt", [("Depth", "0")], ALLPROP + ALLPROP[21:]), 400)
row("xml-deep-nesting", req("PROPFIND", "/c/base.txt", [("Depth", "0")], DEEP), {400, 413, 207},
    "50,000 nested unknown elements: refused (413: deeper than the guard's limit), or ignored (unknown "
    "elements inside propfind are ignored per RFC 4918); never a crash")
row("xml-oversized-content-length", lambda port: [req("PROPFIND", "/c/base.txt", [("Depth", "0")], BIG_XML)], 413)
row("xml-oversized-chunked", lambda port: [req("PROPFIND", "/c/base.txt", [("Depth", "0"), ("Transfer-Encoding", "chunked")],
                                                chunked(*[BIG_XML[i:i + 65536] for i in range(0, len(BIG_XML), 65536)]), cl=False)], 413)
row("xml-chunked-valid", req("PROPFIND", "/c/base.txt", [("Depth", "0"), ("Transfer-Encoding", "chunked")],
                             chunked(ALLPROP[:20], ALLPROP[20:]), cl=False), 207,
    "not hostile: chunked XML bodies are de-chunked by the guard (WsgiDAV alone ignores them)")
row("xml-chunked-bad-framing", req("PROPFIND", "/c/base.txt", [("Depth", "0"), ("Transfer-Encoding", "chunked")],
                                   b"zz\r\n" + ALLPROP + b"\r\n0\r\n\r\n", cl=False), {400, CLOSE})
row("xml-content-length-negative", req("PROPFIND", "/c/base.txt", [("Depth", "0"), ("Content-Length", "-5")], b""), 400)
row("xml-content-length-garbage", req("PROPFIND", "/c/base.txt", [("Depth", "0"), ("Content-Length", "12abc")], b""), 400)
row("xml-proppatch-live-prop", req("PROPPATCH", "/c/base.txt", [],
                                   b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><D:getetag>x</D:getetag>'
                                   b"</D:prop></D:set></D:propertyupdate>"), 207,
    "multistatus with 403 for the protected live property (RFC 4918 9.2); nothing changes")
# XML shape and dead-property limits (issue 11 section 4) -----------------------
row("xml-40k-namespace-decls", req("PROPPATCH", "/c/base.txt", [], PROPPATCH_OK.replace(
    b'xmlns:Z="urn:z"', b'xmlns:Z="urn:z" ' + b" ".join(b'xmlns:n%d="urn:x%d"' % (i, i) for i in range(40000)))), 413,
    "namespace declarations are capped (lxml copies each in-scope one into every stored property)")
row("xml-150-default-namespaces", req("PROPFIND", "/c/base.txt", [("Depth", "0")],
    b'<D:propfind xmlns:D="DAV:"><D:prop>' + b"".join(b'<p xmlns="urn:%d"/>' % i for i in range(150))
    + b"</D:prop></D:propfind>"), 413)
row("xml-20k-elements", req("PROPFIND", "/c/base.txt", [("Depth", "0")],
    b'<D:propfind xmlns:D="DAV:"><D:prop>' + b"<D:x/>" * 20000 + b"</D:prop></D:propfind>"), 413)
row("xml-100-deep", req("PROPPATCH", "/c/base.txt", [], PROPPATCH_OK.replace(b"<Z:p>v</Z:p>", b"<Z:p>" + b"<a>" * 100
    + b"</a>" * 100 + b"</Z:p>")), 413)
row("deadprops-1001-in-one-PROPPATCH", req("PROPPATCH", "/c/base.txt", [], PROPPATCH_OK.replace(
    b"<Z:p>v</Z:p>", b"".join(b"<Z:p%d>v</Z:p%d>" % (i, i) for i in range(1001)))), 207,
    "multistatus: 507 Insufficient Storage (RFC 4918 9.2.1) past 1000 properties, 424 for the rest; nothing stored")
row("deadprops-value-too-big", req("PROPPATCH", "/c/base.txt", [], PROPPATCH_OK.replace(b">v<", b">" + b"v" * 70000 + b"<")),
    207, "multistatus: 507 for a value over 64 KiB; nothing stored")
row("method-made-up", req("BREWCOFFEE", "/c/base.txt"), {400, 405, 501},
    "counted as method 'other' in /_metrics: made-up methods add no series")
row("path-log-injection", req("GET", "/x%0A2026-01-01%2000:00:00,000%20INFO%20davcoll.access:%20DELETE%20/c/%20204"),
    404, "the access log escapes the newline (one line per request)")

# Paths ------------------------------------------------------------------------
row("path-latin1-E4-GET", req("GET", "/c/%E4"), 400)
row("path-latin1-E4-PUT", req("PUT", "/c/%E4.txt", [], b"x"), 400)
row("path-bad-2byte-MKCOL", req("MKCOL", "/c/%C3%28/"), 400)
row("path-surrogate", req("GET", "/c/%ED%A0%80"), 400)
row("path-overlong-slash", req("GET", "/c/%C0%AF"), 400)
row("path-E4-in-collection-name", req("PROPFIND", "/%E4/", [("Depth", "1")]), 400)
row("path-dotdot-raw", req("GET", "/c/../../etc/passwd"), 400)
row("path-dotdot-root", req("GET", "/../c/base.txt"), 400)
row("path-dotdot-encoded", req("GET", "/c/%2e%2e/%2e%2e/etc/passwd"), 400)
row("path-dotdot-encoded-upper", req("DELETE", "/c/dir/%2E%2E"), 400)
row("path-dotdot-DELETE", req("DELETE", "/c/dir/.."), 400)
row("path-dot", req("GET", "/c/./base.txt"), 400)
row("path-encoded-slash", req("GET", "/c/dir%2fa.txt"), 400)
row("path-encoded-slash-dotdot", req("GET", "/c/%2E%2E%2Fetc"), 400)
# (An encoded backslash is an ordinary name character now: test_data_safety.py.)
row("path-control-char-new-name", req("PUT", "/c/a%01b.txt", [], b"x"), 400, "control characters make listings unusable")
row("mkcol-control-char", req("MKCOL", "/c/a%1Bb/"), 400)
row("path-encoded-nul-GET", req("GET", "/c/base.txt%00.jpg"), 400)
row("path-encoded-nul-PUT", req("PUT", "/c/x%00.txt", [], b"x"), 400)
row("path-encoded-nul-MKCOL", req("MKCOL", "/c/%00/"), 400)
row("path-raw-space", b"GET /c/base .txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400)
row("path-raw-control-char", b"GET /c/\x01.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", {400, 404},
    "cheroot passes raw control bytes through; the resolver then finds nothing (404); nothing is created")
row("path-fragment", req("GET", "/c/base.txt#frag"), 400)
row("path-no-leading-slash", req("GET", "c/base.txt"), 400)
row("path-very-long", req("GET", "/c/" + "a" * 70000), {400, 404, 414},
    "a 70 KB request line exceeds the 64 KiB header limit: cheroot answers 414")
row("path-deep", req("MKCOL", "/c/" + "d/" * 2000), {400, 404, 409}, "parents missing: 409")
row("path-reserved-top-PUT", req("PUT", "/_health/x", [], b"x"), {403, 404, 405, 409})
row("path-by-id-garbage", req("GET", "/by_id/not-a-uuid/x"), 404)
row("path-token-garbage", req("GET", "/t=/c/base.txt"), {200, 401},
    "an empty /t= component carries no token: the request is anonymous (allowed on this server) and the "
    "resolver skips the component, so the file is served")
row("path-absolute-uri-other-host", req("GET", "http://evil.example/c/base.txt"), {200, 400},
    "absolute-form request target (RFC 7230 5.3.2): cheroot takes its path; a GET is harmless")

# Request line / methods -------------------------------------------------------
row("line-garbage", b"FOO\r\n\r\n", {400, CLOSE})
row("line-http2", req("GET", "/c/base.txt", version="HTTP/2.0"), 505)
row("line-http-garbage-version", req("GET", "/c/base.txt", version="HTTP/x.y"), 400)
row("line-http09", b"GET /c/base.txt\r\n\r\n", {400, CLOSE})
row("line-lowercase-method", req("get", "/c/base.txt"), {400, 405, 501})
row("line-unknown-method", req("BREW", "/c/base.txt"), {405, 501})
row("line-TRACE", req("TRACE", "/c/base.txt"), {405, 501}, "never echo requests back")
row("line-CONNECT", req("CONNECT", "127.0.0.1:22"), {400, 405, 501})
row("line-POST", req("POST", "/c/base.txt", [], b"x=1"), 405)
row("line-PUT-collection", req("PUT", "/c/", [], b"x"), {405, 409})
row("line-PUT-root", req("PUT", "/", [], b"x"), {403, 405, 409})
row("line-PUT-missing-parent", req("PUT", "/c/nope/x.txt", [], b"x"), 409)
row("line-MKCOL-with-body", req("MKCOL", "/c/newdir/", [("Content-Type", "text/plain")], b"body"), 415)
row("line-MKCOL-existing", req("MKCOL", "/c/dir/"), 405)
row("line-GET-with-body", req("GET", "/c/base.txt", [], b"unexpected body"), {200, 415},
    "WsgiDAV refuses bodies on GET with 415")

# Depth ------------------------------------------------------------------------
for d in ["2", "-1", "garbage", "1,1", "0 ", "99999999999999999999", "infinity2"]:
    row(f"depth-{d.strip() or 'space'}-{'sp' if d.endswith(' ') else 'x'}", req("PROPFIND", "/c/", [("Depth", d)]),
        {400} if d != "0 " else {207}, "'0 ' is 0 after trimming" if d == "0 " else "")
row("depth-infinity-PROPFIND", req("PROPFIND", "/c/", [("Depth", "infinity")]), 207,
    "PROPFIND Depth: infinity is answered (streamed) below propfind_infinity_max_entries")
row("depth-missing-PROPFIND", req("PROPFIND", "/c/"), 207, "a missing Depth means infinity (RFC 4918)")
row("depth-infinity-PROPFIND-root", req("PROPFIND", "/", [("Depth", "infinity")]), 403,
    "the server root is never walked: 403 with DAV:propfind-finite-depth (RFC 4918 9.1)")
row("depth-1-COPY", dest("http://H/c/copy-depth1.txt", extra=(("Depth", "1"),)), 400, "COPY allows Depth 0 or infinity only")
row("depth-0-DELETE-folder", req("DELETE", "/c/dir/", [("Depth", "0")]), 400, "DELETE of a folder must be Depth infinity")
row("depth-0-MOVE-folder", dest("http://H/c/dir2/", method="MOVE", src="/c/dir/", extra=(("Depth", "0"),)), 400)
row("depth-garbage-GET", req("GET", "/c/base.txt", [("Depth", "x")]), 400)

# Overwrite --------------------------------------------------------------------
for v in ["X", "", "TF", "yes", "t"]:
    exp = {400} if v.upper() not in ("T",) else {204, 412}
    note = ""
    if v == "t":
        note = "lower-case 't' is upper-cased by WsgiDAV: a valid overwrite of five.txt by a copy of itself -> 403"
        exp = {403}
    row(f"overwrite-{v or 'empty'}", dest("http://H/c/five.txt", extra=(("Overwrite", v),)) if v != "t" else
        dest("http://H/c/five.txt", src="/c/five.txt", extra=(("Overwrite", v),)), exp, note)

# Destination ------------------------------------------------------------------
row("dest-other-host", dest("http://evil.example/c/x.txt"), 502,
    "RFC 4918 9.8.5: 502 when the destination is on another server")
row("dest-other-port", dest("http://127.0.0.1:1/c/x.txt"), 502, "same as another host")
row("dest-other-scheme", dest("ftp://H/c/x.txt"), {400, 502}, "another scheme is another server")
row("dest-malformed", dest("::::"), 400)
row("dest-relative-no-slash", dest("x.txt"), 400)
row("dest-empty", dest(""), 400)
row("dest-dotdot", dest("http://H/c/../x.txt"), 400)
row("dest-dotdot-encoded", dest("http://H/c/%2e%2e/x.txt"), 400)
row("dest-encoded-slash", dest("http://H/c/a%2fb.txt"), 400)
row("dest-encoded-nul", dest("http://H/c/a%00b.txt"), 400)
row("dest-invalid-utf8", dest("http://H/c/%E4.txt"), 400)
row("dest-same-as-source-MOVE", dest("http://H/c/base.txt", method="MOVE", extra=(("Overwrite", "T"),)), 403,
    "RFC 4918 9.9.4: source and destination are the same")
row("dest-into-own-subtree", dest("http://H/c/dir/sub/", method="MOVE", src="/c/dir/"), {403, 409})
row("dest-into-snapshot", dest("http://H/by_id/d41d8cd98f00b204e9800998ecf8427e+0/x.txt"), {403, 404, 405, 409})
row("dest-reserved", dest("http://H/_health"), {403, 404, 405, 409, 412})
row("dest-missing-MOVE", req("MOVE", "/c/base.txt"), 400)
row("dest-existing-no-overwrite", dest("http://H/c/five.txt", extra=(("Overwrite", "F"),)), 412)
row("dest-query-fragment", dest("http://H/c/x.txt?a=1#f", src="/c/nonexistent.txt"), {400, 404})
row("dest-query", dest("http://H/c/x.txt?a=1"), 400, "a query in a Destination is a 400 (not silently dropped)")
row("dest-fragment", dest("http://H/c/x.txt#f"), 400)
row("dest-fragment-dotdot", dest("http://H/c/z#/../../other/"), 400)
row("dest-control-char", dest("http://H/c/x%07.txt"), 400)
row("dest-reserved-top-MOVE", dest("http://H/_metrics/", method="MOVE", src="/c/"), 403)

row("dest-huge", dest("http://H/c/" + "x" * 60000, src="/c/nonexistent.txt"), {400, 404, 413})

# Range ------------------------------------------------------------------------
row("range-garbage", req("GET", "/c/base.txt", [("Range", "garbage")]), 200, "an invalid Range is ignored (RFC 7233 3.1)")
row("range-unit", req("GET", "/c/base.txt", [("Range", "items=0-5")]), 200, "unknown unit: ignored")
row("range-unsatisfiable", req("GET", "/c/base.txt", [("Range", "bytes=999999-")]), 416)
row("range-reversed", req("GET", "/c/base.txt", [("Range", "bytes=5-2")]), {200, 416}, "syntactically invalid: ignored or 416")
row("range-suffix-zero", req("GET", "/c/base.txt", [("Range", "bytes=-0")]), {200, 416})
row("range-huge-end", req("GET", "/c/base.txt", [("Range", "bytes=0-99999999999999999999999999")]), 206, "end clamped to the size")
row("range-huge-suffix", req("GET", "/c/base.txt", [("Range", "bytes=-99999999999999999999")]), 206, "whole file")
row("range-many", req("GET", "/c/base.txt", [("Range", "bytes=" + ",".join(f"{i}-{i}" for i in range(5000)))]), 200,
    "several ranges: the guard serves the whole body (200), which RFC 7233 allows")
row("range-negative-start", req("GET", "/c/base.txt", [("Range", "bytes=-5-3")]), {200, 416})
row("if-range-garbage", req("GET", "/c/base.txt", [("Range", "bytes=0-1"), ("If-Range", "garbage")]), 200,
    "If-Range does not match: the whole body")

# Content-Length / Transfer-Encoding ---------------------------------------------
row("cl-negative-PUT", req("PUT", "/c/new.txt", [("Content-Length", "-1")], b"x", cl=False), 400)
row("cl-garbage-PUT", req("PUT", "/c/new.txt", [("Content-Length", "abc")], b"x", cl=False), 400)
row("cl-two-values-PUT", req("PUT", "/c/new.txt", [("Content-Length", "1"), ("Content-Length", "2")], b"xy", cl=False),
    400, "RFC 7230 3.3.2 (fixed in server.py: cheroot kept the last value and stored 'xy')")
row("cl-plus-sign-PUT", req("PUT", "/c/five.txt", [("Content-Length", "+5")], b"12345", cl=False), 400,
    "'+5' is not a valid Content-Length (server.py accepts digits only)")
row("cl-shorter-than-body", req("PUT", "/c/five.txt", [("Content-Length", "5")], b"12345GARBAGE", cl=False), 204,
    "the first 5 bytes are the body (same content: nothing changes); the rest is a new, invalid request")
row("cl-huge-PUT", lambda port: [req("PUT", "/c/new.txt", [("Content-Length", str(10**20))], b"", cl=False)],
    {400, 408, 413, CLOSE}, "no body follows: refused, or cut off after the socket timeout")
row("cl-body-short-then-close", lambda port: [req("PUT", "/c/new.txt", [("Content-Length", "1000")], b"x" * 10, cl=False),
                                              SHUT_WR], 400,
    "the client half-closes after 10 of 1000 bytes: the incomplete upload is refused and never stored")
row("te-and-cl", req("PUT", "/c/new.txt", [("Content-Length", "5"), ("Transfer-Encoding", "chunked")], chunked(b"hello"), cl=False),
    400, "request smuggling vector (RFC 7230 3.3.3): refused by server.py's header check")
row("te-gzip", req("PUT", "/c/new.txt", [("Transfer-Encoding", "gzip")], b"x", cl=False), {400, 501})
row("te-chunked-gzip", req("PUT", "/c/new.txt", [("Transfer-Encoding", "gzip, chunked")], chunked(b"x"), cl=False), {400, 501})
row("te-chunked-garbage-size", req("PUT", "/c/new.txt", [("Transfer-Encoding", "chunked")], b"zz\r\nhello\r\n0\r\n\r\n", cl=False),
    {400, CLOSE})
row("te-chunked-overflow-size", req("PUT", "/c/new.txt", [("Transfer-Encoding", "chunked")],
                                    b"FFFFFFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n", cl=False), {400, 413, CLOSE})
row("te-chunked-negative-size", req("PUT", "/c/new.txt", [("Transfer-Encoding", "chunked")], b"-5\r\nhello\r\n0\r\n\r\n", cl=False),
    {400, CLOSE})
row("te-chunked-size-mismatch", req("PUT", "/c/new.txt", [("Transfer-Encoding", "chunked")], b"3\r\nhello\r\n0\r\n\r\n", cl=False),
    {400, CLOSE})
row("te-chunked-expected-length-mismatch", req("PUT", "/c/new.txt", [("Transfer-Encoding", "chunked"),
                                                                      ("X-Expected-Entity-Length", "100")], chunked(b"hello"), cl=False),
    400, "Finder's announced length does not match: nothing is stored")
row("content-range-PUT", req("PUT", "/c/five.txt", [("Content-Range", "bytes 0-4/5")], b"abcde"), 400,
    "partial PUT is not supported (RFC 7231 4.3.4)")
row("content-encoding-PUT", req("PUT", "/c/five.txt", [("Content-Encoding", "gzip")], b"abcde"), {415, 501})
row("expect-garbage", req("PUT", "/c/five.txt", [("Expect", "200-ok")], b"12345"), {204, 417},
    "unknown expectation: ignored by cheroot (same content: nothing changes)")

# Conditional / lock headers ----------------------------------------------------
row("if-garbage", req("PUT", "/c/five.txt", [("If", "((((")], b"abcde"), 400)
row("if-unknown-token", req("DELETE", "/c/five.txt", [("If", "(<urn:uuid:00000000-0000-0000-0000-000000000000>)")]), 412)
row("if-other-resource", req("PUT", "/c/five.txt", [("If", "<http://evil.example/x> (<urn:uuid:1>)")], b"12345"), {204, 412},
    "a list tagged with a resource the request does not touch is ignored (RFC 4918 10.4.3), so the PUT "
    "(of the same content: nothing changes) may proceed")
row("if-huge", req("DELETE", "/c/five.txt", [("If", "(<urn:uuid:1>) " * 3000)]), {400, 412})
row("if-not-garbage", req("PUT", "/c/five.txt", [("If", "(Not <x> Not)")], b"abcde"), 400)
row("if-match-garbage", req("PUT", "/c/five.txt", [("If-Match", "garbage")], b"abcde"), 412)
row("if-none-match-star", req("PUT", "/c/five.txt", [("If-None-Match", "*")], b"abcde"), 412)
row("if-modified-since-garbage", req("GET", "/c/base.txt", [("If-Modified-Since", "yesterday")]), 200)
row("if-unmodified-since-past", req("DELETE", "/c/five.txt", [("If-Unmodified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")]), 412)
row("lock-token-garbage", req("UNLOCK", "/c/base.txt", [("Lock-Token", "garbage")]), {400, 409},
    "WsgiDAV answers 409 with DAV:lock-token-matches-request-uri (RFC 4918 9.11.1): no such lock here")
row("lock-token-unknown", req("UNLOCK", "/c/base.txt", [("Lock-Token", "<opaquelocktoken:nope>")]), {409, 400})
row("lock-token-missing", req("UNLOCK", "/c/base.txt"), 400)
row("lock-timeout-garbage", req("LOCK", "/c/nolock.txt", [("Timeout", "Second-abc, garbage")], b"<D:lockinfo"), 400,
    "malformed lock body with a garbage Timeout on an unmapped URL: refused, no lock-null file")
row("lock-refresh-without-if", req("LOCK", "/c/base.txt", [("Timeout", "Second-10")], b""), {400, 412})
row("lock-depth-garbage", req("LOCK", "/c/base.txt", [("Depth", "5")], LOCK_BODY % b"x"), 400)

# Headers ------------------------------------------------------------------------
row("header-70KiB", req("GET", "/c/base.txt", [("X-Big", "a" * 70 * 1024)]), {400, 413, 431})
row("header-many", req("GET", "/c/base.txt", [(f"X-H{i}", "v" * 20) for i in range(4000)]), {400, 413, 431})
row("header-no-colon", b"GET /c/base.txt HTTP/1.1\r\nHost: x\r\nNoColonHere\r\nConnection: close\r\n\r\n", 400)
row("header-nul", b"GET /c/base.txt HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\nConnection: close\r\n\r\n", {200, 400},
    "a NUL in an unused header value is harmless")
row("header-space-before-colon", b"GET /c/base.txt HTTP/1.1\r\nHost : x\r\nConnection: close\r\n\r\n", 400,
    "RFC 9112 5.1 requires 400 (cheroot stripped the space; fixed in davcoll/httpd.py, issue 11)")
row("header-host-missing", req("GET", "/c/base.txt", host=False), 400,
    "RFC 9112 3.2 requires 400 for HTTP/1.1 without Host (cheroot served it; fixed in davcoll/httpd.py, issue 11)")
row("header-folded", b"GET /c/base.txt HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nConnection: close\r\n\r\n", 400,
    "obsolete line folding: refused (RFC 9112 5.2 allows 400; cheroot replaced the value with the continuation)")

# Authorization (no tokens exist here: anonymous writes are on, bad credentials still 401) -----
row("auth-basic-no-colon", req("GET", "/c/base.txt", [("Authorization", basic(b"justuser"))]), 401)
row("auth-basic-bad-base64", req("GET", "/c/base.txt", [("Authorization", "Basic !!!notbase64")]), 401)
row("auth-basic-non-utf8", req("GET", "/c/base.txt", [("Authorization", basic(b"\xff\xfe:\xff"))]), 401)
row("auth-basic-empty-password", req("PUT", "/c/new.txt", [("Authorization", basic(b"user:"))], b"x"), 401)
row("auth-basic-empty", req("GET", "/c/base.txt", [("Authorization", "Basic")]), 401)
row("auth-unknown-scheme", req("GET", "/c/base.txt", [("Authorization", "Digest username=x")]), 401)
row("auth-bearer-empty", req("PUT", "/c/new.txt", [("Authorization", "Bearer ")], b"x"), 401)
row("auth-bearer-spaces", req("GET", "/c/base.txt", [("Authorization", "Bearer a b c")]), 401)
row("auth-bearer-unknown-token", req("DELETE", "/c/five.txt", [("Authorization", "Bearer v2/x/y")]), 401)
row("auth-huge", req("GET", "/c/base.txt", [("Authorization", "Bearer " + "a" * 60000)]), {401, 413})
row("auth-path-token-unknown", req("DELETE", "/t=nosuchtoken/c/five.txt"), 401)

# Stalls (the server's socket timeout is 3 s) ---------------------------------
row("stall-headers", lambda port: [b"GET /c/base.txt HTTP/1.1\r\nHost: x\r\n", TIMEOUT + 2.0], {CLOSE, 408},
    "headers never finish: the connection is closed after the timeout")
row("stall-PUT-body", lambda port: [req("PUT", "/c/stalled.txt", [("Content-Length", "100000")], b"", cl=False) + b"x" * 500,
                                    TIMEOUT + 2.0], {CLOSE, 400, 408},
    "the body stops: no file is created, the connection is dropped or refused")
row("stall-PUT-chunked", lambda port: [req("PUT", "/c/stalled.txt", [("Transfer-Encoding", "chunked")], b"", cl=False)
                                       + b"100\r\n" + b"x" * 10, TIMEOUT + 2.0], {CLOSE, 400, 408})
row("stall-PROPFIND-body", lambda port: [req("PROPFIND", "/c/", [("Depth", "1"), ("Content-Length", "500")], b"", cl=False)
                                         + ALLPROP[:20], TIMEOUT + 2.0], {CLOSE, 400, 408})


# --------------------------------------------------------------------------
# server + checks


BASELINE = {"c/base.txt": BASE, "c/five.txt": b"12345", "c/dir/a.txt": b"a"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    cfg = tmp / "davcoll.toml"
    cfg.write_text(f'timeout = {TIMEOUT}\nanonymous = "write"\n')
    srv = ServerProcess(tmp / "data", args=["--config", str(cfg)], log_dir=tmp / "logs").start()
    port = srv.port
    assert exchange(port, [req("MKCOL", "/c/")]).status == 201
    assert exchange(port, [req("MKCOL", "/c/dir/")]).status == 201
    for path, body in BASELINE.items():
        assert exchange(port, [req("PUT", "/" + path, [], body)]).status == 201
    catalog = LocalCatalog(db_path_for(tmp / "data"))
    yield srv, catalog
    catalog.close()
    srv.stop()


def state(catalog: LocalCatalog) -> tuple:
    """What must not change: the collections and c's manifest (not its
    version number: a PUT of identical content is a no-op that still counts
    as an update)."""
    names = tuple(r.name for r in catalog.list())
    rec = catalog.find_by_name("c")
    return names, catalog.get(rec.uuid).manifest_text


def restore(port: int, catalog: LocalCatalog, before: tuple) -> None:
    """Put things back after a row that changed them (a failing row must not
    spoil the rows after it)."""
    if state(catalog) == before:
        return
    for name in set(state(catalog)[0]) - set(before[0]):
        exchange(port, [req("DELETE", f"/{name}/")])
    files = [p for p, _ in parse_manifest(state(catalog)[1]).files()]
    for p in files:
        if "c/" + p not in BASELINE:
            exchange(port, [req("DELETE", "/c/" + p)])
    for path, body in BASELINE.items():
        got = exchange(port, [req("GET", "/" + path, [("Cache-Control", "no-cache")])], method="GET")
        if got.status != 200 or got.body != body:
            exchange(port, [req("PUT", "/" + path, [], body)])


def test_corpus_size():
    assert len(ROWS) >= 100, len(ROWS)


@pytest.mark.parametrize("rid, build, expect, note", ROWS)
def test_hostile_request(server, rid, build, expect, note):
    srv, catalog = server
    port = srv.port
    before = state(catalog)
    parts = build(port)
    first = next((p for p in parts if isinstance(p, bytes)), b"")
    method = first.split(b" ", 1)[0].decode("latin-1", "replace")
    try:
        resp = exchange(port, parts, method=method, read_timeout=TIMEOUT + 12)
        got = resp.status if resp.status is not None else CLOSE
        assert got != 500, f"{rid}: 500 Internal Server Error: {resp.body[:400]!r}"
        assert got in expect, f"{rid}: got {got}, expected {sorted(map(str, expect))}; body {resp.body[:300]!r}"
        assert resp.elapsed < TIMEOUT + 10, f"{rid}: took {resp.elapsed:.1f}s"
        if got == 401:
            assert "www-authenticate" in resp.headers
        # The server still answers, and nothing changed.
        ok = exchange(port, [req("GET", "/c/base.txt")], method="GET")
        assert ok.status == 200 and ok.body == BASE, f"{rid}: follow-up GET got {ok.status}"
        assert state(catalog) == before, f"{rid}: the collection changed"
        assert srv.proc.poll() is None, "the server died"
    finally:
        if srv.proc.poll() is None:
            restore(port, catalog, before)


MALFORMED_CHUNKS = [b"-5", b"+5", b"0x5", b"5_0", b"zz", b"5 5", b"FFFFFFFFFFFFFFFFFFFFFFFF", b""]


@pytest.mark.parametrize("size_line", MALFORMED_CHUNKS, ids=[c.decode() or "empty" for c in MALFORMED_CHUNKS])
def test_malformed_chunk_size_stores_nothing(server, size_line):
    """A chunked body with a malformed chunk-size line is refused (400, or
    the connection is closed) and stores nothing: cheroot alone ended the
    body at '-5' and acknowledged an empty file."""
    srv, catalog = server
    before = state(catalog)
    body = size_line + b"\r\nhello\r\n0\r\n\r\n"
    resp = exchange(srv.port, [req("PUT", "/c/chunky.txt", [("Transfer-Encoding", "chunked")], body, cl=False)], method="PUT")
    assert resp.status in (None, 400), resp.status
    assert state(catalog) == before
    assert exchange(srv.port, [req("GET", "/c/chunky.txt")], method="GET").status == 404


def test_framing_headers_refused_before_the_app(server):
    """Duplicate Content-Length, '+5', and Content-Length with
    Transfer-Encoding are refused by the HTTP layer with 400 (server.py)."""
    srv, catalog = server
    before = state(catalog)
    for hdrs, body in [
        ([("Content-Length", "5"), ("Content-Length", "5")], b"12345"),
        ([("Content-Length", "1"), ("Content-Length", "5")], b"12345"),
        ([("Content-Length", "+5")], b"12345"),
        ([("Content-Length", "0x5")], b"12345"),
        ([("Content-Length", "5"), ("Transfer-Encoding", "chunked")], chunked(b"12345")),
        ([("Transfer-Encoding", "chunked"), ("Content-Length", "5")], chunked(b"12345")),
    ]:
        resp = exchange(srv.port, [req("PUT", "/c/framing.txt", hdrs, body, cl=False)], method="PUT")
        assert resp.status == 400, (hdrs, resp.status)
    assert state(catalog) == before
    # Well-formed chunked uploads (with chunk extensions) still work, also
    # two of them on one keep-alive connection.
    two = req("PUT", "/c/framing.txt", [("Transfer-Encoding", "chunked")], b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
              cl=False, close=False)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        s.sendall(two + two.replace(b"PUT", b"PUT", 1))
        buf = bytearray()
        deadline = time.monotonic() + 10
        while buf.count(b"HTTP/1.1 ") < 2 and time.monotonic() < deadline:
            buf += s.recv(65536)
    finally:
        s.close()
    assert buf.startswith(b"HTTP/1.1 201") and b"HTTP/1.1 204" in buf, bytes(buf[:200])
    assert exchange(srv.port, [req("GET", "/c/framing.txt")], method="GET").body == b"abcde"
    exchange(srv.port, [req("DELETE", "/c/framing.txt")])

"""PROPFIND with a streamed multistatus.

WsgiDAV's ``do_PROPFIND`` builds every member resource and the whole 207
tree before the first byte leaves: a Depth 1 listing of a 100,000-entry
folder took about 690 MiB of RSS per request.  This handler keeps WsgiDAV's
semantics (it parses the same request body, evaluates the If headers with
WsgiDAV's own code, asks each resource ``get_properties(mode, name_list)``
and builds each ``<response>`` with ``util.add_property_response``) but
creates members lazily and serializes one ``<response>`` at a time, so memory
per request stays bounded whatever the folder size.  A reply larger than
FLUSH_BYTES goes out without Content-Length, which cheroot sends chunked on
HTTP/1.1; smaller ones keep their Content-Length.

Depth (RFC 4918 9.1): a missing Depth means infinity.  On a file every Depth
is Depth 0.  On a folder infinity is answered when the subtree holds at most
``provider.propfind_max_entries`` entries; larger subtrees, ``/`` and
``/by_id/`` (every collection of the server) get 403 with the
``propfind-finite-depth`` precondition, so clients fall back to Depth 1.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from lxml import etree
from wsgidav import util, xml_tools
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_FORBIDDEN,
    HTTP_NOT_FOUND,
    PRECONDITION_CODE_PropfindFiniteDepth,
    DAVError,
    as_DAVError,
    get_http_status_string,
)

from ..collection import FsError

if TYPE_CHECKING:
    from .provider import CollectionProvider

log = logging.getLogger("davcoll.propfind")

FLUSH_BYTES = 64 << 10  # responses are gathered into pieces of about this size
_HEAD = b'<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">'
_TAIL = b"</D:multistatus>\n"
_D_DECL = b' xmlns:D="DAV:"'
_ALLPROP_BODY = "<D:propfind xmlns:D='DAV:'><D:allprop/></D:propfind>"


class _StreamedLengthFilter(logging.Filter):
    """Drop WsgiDAV's complaint that a 207 has no Content-Length.

    WsgiDAV logs an error for every response without Content-Length; a
    streamed multistatus has none on purpose (cheroot frames it chunked).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not msg.startswith("Missing required Content-Length header in 207")


logging.getLogger("wsgidav.wsgidav_app").addFilter(_StreamedLengthFilter())


def handle_propfind(provider: "CollectionProvider", environ: dict, start_response: Callable,
                    default_handler: Callable) -> Iterable[bytes]:
    """Answer a PROPFIND; every error is raised before the first byte."""
    path = environ["PATH_INFO"]
    depth = (environ.get("HTTP_DEPTH") or "infinity").strip().lower()
    if depth not in ("0", "1", "infinity"):
        raise DAVError(HTTP_BAD_REQUEST, context_info=f"invalid Depth header: {depth!r}")
    res = provider.get_resource_inst(path, environ)
    if res is None:
        raise DAVError(HTTP_NOT_FOUND, context_info=path)
    server = getattr(default_handler, "__self__", None)
    if server is not None and hasattr(server, "_evaluate_if_headers"):
        server._evaluate_if_headers(res, environ)  # WsgiDAV's If/If-Match/... evaluation
    mode, names, include = parse_propfind_body(environ)
    if not res.is_collection:
        depth = "0"
    elif depth == "infinity":
        _check_infinity(provider, res)
    environ["HTTP_DEPTH"] = depth
    return _respond(environ, start_response, _stream(res, depth, mode, names, include))


def _respond(environ: dict, start_response: Callable, pieces: Iterator[bytes]) -> Iterator[bytes]:
    """A small multistatus goes out whole with Content-Length; a large one streams.

    ``start_response`` is called lazily (WsgiDAV's ErrorPrinter sends the
    status only with the first body piece), so the first FLUSH_BYTES decide:
    a listing that fits is answered like WsgiDAV did, a larger one has no
    Content-Length and cheroot frames it chunked.
    """
    headers = [("Content-Type", "application/xml; charset=utf-8"), ("Date", util.get_rfc1123_time())]
    first: list[bytes] = []
    size = 0
    for piece in pieces:
        first.append(piece)
        size += len(piece)
        if size >= FLUSH_BYTES:
            break
    else:
        body = b"".join(first)
        start_response("207 Multi-Status", headers + [("Content-Length", str(len(body)))])
        yield body
        return
    # WsgiDAV closes any response without Content-Length (and warns unless
    # it already says close); the guard drops that header again when the
    # chunked framing lets the connection live (see _chunked_keep_alive).
    headers.append(("Connection", "close"))
    environ["davcoll.chunked_keep_alive"] = _chunked_keep_alive(environ)
    start_response("207 Multi-Status", headers)
    yield b"".join(first)
    yield from pieces


def parse_propfind_body(environ: dict) -> tuple[str, list[str], list[str]]:
    """(mode, prop names, include names) from the body, as WsgiDAV reads it.

    An empty body is allprop.  ``allprop`` and ``propname`` exclude each
    other and ``prop``; ``include`` (RFC 4918 14.8) only goes with allprop.
    """
    request_el = util.parse_xml_body(environ, allow_empty=True)
    if request_el is None:
        request_el = etree.XML(_ALLPROP_BODY)
    if request_el.tag != "{DAV:}propfind":
        raise DAVError(HTTP_BAD_REQUEST, context_info="body must be a DAV:propfind element")
    mode: str | None = None
    names: list[str] = []
    include: list[str] = []
    for node in request_el:
        if node.tag == "{DAV:}allprop":
            if mode:
                raise DAVError(HTTP_BAD_REQUEST, context_info="allprop excludes propname and prop")
            mode = "allprop"
        elif node.tag in ("{DAV:}propname", "{DAV:}name"):  # WsgiDAV reads "name"
            if mode:
                raise DAVError(HTTP_BAD_REQUEST, context_info="propname excludes allprop and prop")
            mode = "name"
        elif node.tag == "{DAV:}prop":
            if mode not in (None, "named"):
                raise DAVError(HTTP_BAD_REQUEST, context_info="prop excludes allprop and propname")
            mode = "named"
            names.extend(child.tag for child in node if isinstance(child.tag, str))
        elif node.tag == "{DAV:}include":
            include.extend(child.tag for child in node if isinstance(child.tag, str))
    if include and mode != "allprop":
        raise DAVError(HTTP_BAD_REQUEST, context_info="include is only valid with allprop")
    if mode is None:
        # <propfind/> with no child: WsgiDAV answers named with no names; an
        # empty request means allprop, the closest reading.
        mode = "allprop"
    return mode, names, include


def _chunked_keep_alive(environ: dict) -> bool:
    """Whether cheroot will frame the body chunked on a kept-alive connection.

    On HTTP/1.1 the chunked framing ends the body, so the connection can
    serve the next request; on HTTP/1.0 (no chunking) or when the client
    asked to close, closing is the only way to end the body.
    """
    wants_close = "close" in environ.get("HTTP_CONNECTION", "").lower()
    return environ.get("SERVER_PROTOCOL", "HTTP/1.1") == "HTTP/1.1" and not wants_close


# ---------------------------------------------------------------------- depth


def _refuse_infinity(reason: str) -> None:
    raise DAVError(HTTP_FORBIDDEN, context_info=reason, err_condition=PRECONDITION_CODE_PropfindFiniteDepth)


def _check_infinity(provider: "CollectionProvider", res: Any) -> None:
    """403 unless the subtree below ``res`` holds at most the configured entries."""
    loc = getattr(res, "loc", None)
    if loc is None or loc.kind in ("top", "by_id"):
        _refuse_infinity("Depth: infinity is not allowed on the server root or /by_id/; use Depth: 1")
    limit = provider.propfind_max_entries
    count = 0
    for _ in _descendants(res, "infinity"):
        count += 1
        if count > limit:
            _refuse_infinity(f"folder has more than {limit} entries at all levels; use Depth: 1")


def _descendants(res: Any, depth: str) -> Iterator[Any]:
    """``res`` and its members to ``depth``, in pre-order, created lazily."""
    yield res
    if depth == "0" or not res.is_collection:
        return
    stack = [_members(res)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            continue
        yield child
        if depth == "infinity" and child.is_collection:
            stack.append(_members(child))


def _members(res: Any) -> Iterator[Any]:
    """Members of a collection, one resource at a time.

    A folder inside a collection is listed by name and each member stat'ed
    on its own (``listdir`` would build every stat at once); a member
    removed meanwhile is skipped.  Other collections (``/``, ``/by_id/``)
    hold few members and use WsgiDAV's ``get_member_list``.
    """
    from .resources import DirResource, FileResource

    if not isinstance(res, DirResource):
        yield from res.get_member_list()
        return
    loc = res.loc
    tree = loc.tree
    if tree is None:
        return
    try:
        names = tree.names(loc.inner)
    except FsError as e:
        raise res._fail(e) from e
    junk = res.provider.junk.names_in(loc.coll_key, loc.inner)
    base = res.path.rstrip("/")
    for name in names:
        child = loc.child(name)
        try:
            st = tree.stat(child.inner)
        except FsError:
            continue
        path = f"{base}/{name}"
        if st.is_dir:
            yield DirResource(path, res.environ, child, st)
        else:
            yield FileResource(path, res.environ, child, st, None)
    for name in junk:
        member = res.get_member(name)
        if member is not None:
            yield member


# ---------------------------------------------------------------------- body


def _stream(res: Any, depth: str, mode: str, names: list[str], include: list[str]) -> Iterator[bytes]:
    yield _HEAD
    buf: list[bytes] = []
    size = 0
    for member in _descendants(res, depth):
        piece = _response_bytes(member, mode, names, include)
        buf.append(piece)
        size += len(piece)
        if size >= FLUSH_BYTES:
            yield b"".join(buf)
            buf.clear()
            size = 0
    buf.append(_TAIL)
    yield b"".join(buf)


def _properties(res: Any, mode: str, names: list[str], include: list[str]) -> list[tuple[str, Any]]:
    if mode == "named":
        return res.get_properties("named", name_list=names)
    props = res.get_properties(mode)
    if include:
        have = {n for n, _ in props}
        extra = [n for n in include if n not in have]
        if extra:
            props.extend(res.get_properties("named", name_list=extra))
    return props


def _response_bytes(res: Any, mode: str, names: list[str], include: list[str]) -> bytes:
    """One serialized ``<D:response>`` (a status-only one if the member failed)."""
    href = res.get_href()
    parent = xml_tools.make_multistatus_el()
    try:
        util.add_property_response(parent, href, _properties(res, mode, names, include))
    except Exception as e:  # one bad member must not cut the listing short
        err = as_DAVError(e)
        if not isinstance(e, DAVError):
            log.exception("PROPFIND of %s failed", href)
        parent = xml_tools.make_multistatus_el()
        el = etree.SubElement(parent, "{DAV:}response")
        etree.SubElement(el, "{DAV:}href").text = href
        etree.SubElement(el, "{DAV:}status").text = f"HTTP/1.1 {get_http_status_string(err)}"
    data = etree.tostring(parent[0], encoding="UTF-8")
    # The subtree repeats the DAV: declaration the multistatus already has.
    end = data.find(b">")
    decl = data.find(_D_DECL, 0, end)
    if decl >= 0:
        data = data[:decl] + data[decl + len(_D_DECL):]
    return data

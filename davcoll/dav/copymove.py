"""COPY and MOVE at the request level: our Destination, WsgiDAV's checks.

WsgiDAV's own ``_copy_or_move`` parses the Destination lossily (see
``destination.py``), so davcoll runs the request itself: the destination is
parsed strictly, then the checks of RFC 4918 run in WsgiDAV's order, with
WsgiDAV's own helpers (If headers, lock permissions), and the source
resource's native ``handle_copy``/``handle_move`` does the work.  The sync
middleware commits before the status leaves.
"""

from __future__ import annotations

from typing import Any, Callable

from wsgidav import util
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_CREATED,
    HTTP_FORBIDDEN,
    HTTP_NOT_FOUND,
    HTTP_NO_CONTENT,
    HTTP_PRECONDITION_FAILED,
    DAVError,
)

from .destination import destination_path

__all__ = ["copy_or_move"]


def _read_ignored_body(environ: dict) -> None:
    # RFC 2518's <propertybehavior> body was dropped by RFC 4918; clients
    # may still send it.  Read it so the connection stays in sync.
    n = util.get_content_length(environ)
    if n:
        environ["wsgi.input"].read(n)
        environ["wsgidav.all_input_read"] = 1


def _depth(environ: dict, src_res: Any, is_move: bool) -> bool:
    """Whether the request is Depth infinity (RFC 4918 9.8.3, 9.9.2)."""
    if src_res.is_collection:
        depth = environ.setdefault("HTTP_DEPTH", "infinity")
        if depth not in ("0", "infinity"):
            raise DAVError(HTTP_BAD_REQUEST, context_info="Invalid Depth header.")
        if is_move and depth != "infinity":
            raise DAVError(HTTP_BAD_REQUEST, context_info="Depth header for MOVE collection must be 'infinity'.")
        return depth == "infinity"
    # A file: any Depth means the file itself (litmus sends infinity).
    depth = environ.setdefault("HTTP_DEPTH", "0")
    if depth not in ("0", "infinity"):
        raise DAVError(HTTP_BAD_REQUEST, context_info="Invalid Depth header.")
    environ["HTTP_DEPTH"] = "0"
    return False


def copy_or_move(server: Any, environ: dict, start_response: Callable, *, is_move: bool):
    """Handle one COPY or MOVE; ``server`` is WsgiDAV's RequestServer."""
    provider = server._davProvider
    src_path = environ["PATH_INFO"]
    src_res = provider.get_resource_inst(src_path, environ)
    if src_res is None:
        raise DAVError(HTTP_NOT_FOUND, context_info="the source does not exist")
    dest_path = destination_path(environ, mount_prefix=provider.mount_path + provider.share_path)
    if environ.setdefault("HTTP_OVERWRITE", "T") not in ("T", "F"):
        raise DAVError(HTTP_BAD_REQUEST, context_info="Invalid Overwrite header.")
    _read_ignored_body(environ)
    infinity = _depth(environ, src_res, is_move)
    if src_res.is_collection:
        dest_path = dest_path.rstrip("/") + "/"

    reason = provider.destination_refusal(dest_path)
    if reason is not None:
        raise DAVError(HTTP_FORBIDDEN, context_info=reason)

    dest_res = provider.get_resource_inst(dest_path, environ)
    dest_exists = dest_res is not None
    dest_parent = provider.get_resource_inst(util.get_uri_parent(dest_path), environ)
    if dest_parent is None or not dest_parent.is_collection:
        raise DAVError(HTTP_CONFLICT, context_info="Destination parent must be a collection.")

    # RFC 4918 10.4 and 7.4/7.5, in WsgiDAV's order.
    server._evaluate_if_headers(src_res, environ)
    server._evaluate_if_headers(dest_res, environ)
    if is_move:
        server._check_write_permission(src_res, "infinity", environ)
        src_parent = provider.get_resource_inst(util.get_uri_parent(src_path), environ)
        if src_parent:
            server._check_write_permission(src_parent, "0", environ)
    if not dest_exists:
        server._check_write_permission(dest_parent, "0", environ)
    server._check_write_permission(dest_res, "infinity", environ)

    if src_path == dest_path or (dest_exists and src_res.get_ref_url() == dest_res.get_ref_url()):
        raise DAVError(HTTP_FORBIDDEN, context_info="Cannot copy/move source onto itself")
    if util.is_equal_or_child_uri(src_path, dest_path):
        raise DAVError(HTTP_FORBIDDEN, context_info="Cannot copy/move source below itself")
    if dest_exists and environ["HTTP_OVERWRITE"] != "T":
        raise DAVError(HTTP_PRECONDITION_FAILED,
                       context_info="Destination already exists and Overwrite is set to false")

    if is_move:
        src_res.handle_move(dest_path)
    else:
        src_res.handle_copy(dest_path, depth_infinity=infinity)
    status = HTTP_NO_CONTENT if dest_exists else HTTP_CREATED
    return util.send_status_response(environ, start_response, status)

"""The Destination header of COPY and MOVE, parsed strictly.

Why our own parser: WsgiDAV 4.4 percent-decodes the whole header and only
then splits it into path, parameters and query, so an encoded ``;`` or ``?``
inside a name (``report%3Bv2.txt``) cut the name short and a COPY silently
overwrote ``report``.  Here the URL is split into its parts first (RFC 3986
section 3), and only the path is decoded, exactly once:

- a query or a fragment in a Destination is a 400 (a name with ``?`` or
  ``#`` must spell them ``%3F`` and ``%23``, as davcoll's listings do);
- ``;`` is an ordinary path character: no "path parameters";
- a raw ``\\`` and ``%5C`` are the same character (Arvados names may hold
  backslashes);
- after decoding: no ``.``/``..`` segments, no encoded ``/`` and no
  characters that can never start a new name (NUL, control characters);
- the bytes must be UTF-8.

The result is the share-relative path as WsgiDAV's resolver expects it
(decoded Unicode, starting with ``/``).
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes, urlsplit

from wsgidav.dav_error import HTTP_BAD_GATEWAY, HTTP_BAD_REQUEST, DAVError

from ..collection.names import bad_new_name_char

__all__ = ["destination_path"]


def _bad(reason: str) -> DAVError:
    return DAVError(HTTP_BAD_REQUEST, context_info=f"Destination: {reason}")


def _decode_path(raw_path: str) -> str:
    """Percent-decode once (UTF-8, strict) and check every segment."""
    try:
        # WSGI hands header values over as latin-1 decoded bytes.
        raw_bytes = raw_path.encode("latin-1")
    except UnicodeEncodeError:
        raise _bad("not a valid URL") from None
    segments = raw_bytes.split(b"/")
    decoded: list[str] = []
    for seg in segments:
        if b"%2f" in seg.lower():
            raise _bad("encoded '/' is not allowed in names")
        try:
            text = unquote_to_bytes(seg).decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("the path is not valid UTF-8") from None
        if text in (".", ".."):
            raise _bad("'.' and '..' segments are not allowed")
        bad = bad_new_name_char(text)
        if bad is not None:
            raise _bad(f"names cannot contain the character U+{ord(bad):04X}")
        decoded.append(text)
    return "/".join(decoded)


def destination_path(environ: dict, *, mount_prefix: str = "") -> str:
    """The decoded, share-relative path a COPY/MOVE Destination names.

    Raises DAVError 400 for a malformed header and 502 for a URL on another
    server (RFC 4918 9.8.5), as WsgiDAV did.
    """
    raw = environ.get("HTTP_DESTINATION")
    if raw is None:
        raise DAVError(HTTP_BAD_REQUEST, context_info="Missing required Destination header.")
    raw = raw.strip()
    if not raw:
        raise _bad("empty")
    if "?" in raw or "#" in raw:
        raise _bad("a query or fragment is not allowed (encode '?' as %3F and '#' as %23 in names)")
    try:
        parts = urlsplit(raw)
    except ValueError:
        raise _bad("not a valid URL") from None
    if parts.scheme or parts.netloc:
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise _bad("only http and https URLs")
        own = {environ.get("wsgi.url_scheme", "").lower(), environ.get("HTTP_X_FORWARDED_PROTO", "").lower()}
        if scheme not in own:
            raise DAVError(HTTP_BAD_GATEWAY, context_info="Source and destination must have the same scheme.")
        hosts = {environ.get("HTTP_HOST", "").lower(), environ.get("HTTP_X_FORWARDED_HOST", "").lower()} - {""}
        if parts.netloc.lower() not in hosts:
            raise DAVError(HTTP_BAD_GATEWAY, context_info="Source and destination must have the same host name.")
    path = parts.path
    if not path.startswith("/"):
        raise _bad("must be an absolute URL or an absolute path")
    if "\\" in path:
        path = path.replace("\\", "%5C")  # the same character either way
    decoded = _decode_path(path)
    if mount_prefix:
        if decoded != mount_prefix and not decoded.startswith(mount_prefix.rstrip("/") + "/"):
            raise DAVError(HTTP_BAD_GATEWAY, context_info="Inter-realm copy/move is not supported.")
        decoded = decoded[len(mount_prefix.rstrip("/")) :] or "/"
    return decoded

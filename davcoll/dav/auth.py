"""Authentication: tokens from headers, HTTP Basic or the path; sessions.

Accepted credentials (first found wins):
  - ``Authorization: Bearer <token>`` or ``Authorization: OAuth2 <token>``
  - HTTP Basic, where the password is the token and the user name is ignored
    (Finder and Windows can only do Basic)
  - a ``/t=<token>/`` first path component
Anything malformed is a 401 with a Basic challenge, never a 500.

After authentication ``wsgidav.auth.user_name`` is set to the principal's
canonical id (never the client-chosen Basic user name), because WsgiDAV uses
it as the lock owner.  Tokens never appear in logs or error bodies.
"""

from __future__ import annotations

import base64
import binascii
import logging

from wsgidav.dav_error import HTTP_FORBIDDEN, DAVError
from wsgidav.mw.base_mw import BaseMiddleware

from ..storage.catalog import CatalogError
from .context import context_of
from .errors import HTTP_UNAUTHORIZED, dav_error

log = logging.getLogger("davcoll.auth")

WRITE_METHODS = frozenset({"PUT", "DELETE", "MKCOL", "COPY", "MOVE", "PROPPATCH", "LOCK", "UNLOCK", "POST"})


class BadCredentials(Exception):
    """The request carried a credential we could not parse."""


def path_token_width(parts: list[str]) -> int:
    """How many leading path components a ``t=<token>`` prefix occupies.

    One, or three for an Arvados v2 token pasted with its slashes
    (``t=v2/<uuid>/<secret>``).  Zero when there is no path token.
    """
    if not parts or not parts[0].startswith("t="):
        return 0
    return 3 if parts[0] == "t=v2" and len(parts) >= 3 else 1


def split_path_token(path: str) -> tuple[str | None, str]:
    """``(token, remaining path)`` for a leading ``/t=<token>/`` prefix."""
    parts = path.split("/")[1:] if path.startswith("/") else path.split("/")
    width = path_token_width(parts)
    if width == 0:
        return None, path
    token = "/".join(parts[:width])[2:]
    return (token or None), "/" + "/".join(parts[width:])


def token_from_path(path: str) -> str | None:
    """The token of a leading ``/t=<token>/`` prefix, if present."""
    return split_path_token(path)[0]


def extract_token(environ: dict) -> str | None:
    """The token a request carries (None: anonymous).  Raises BadCredentials."""
    auth = environ.get("HTTP_AUTHORIZATION", "").strip()
    if auth:
        scheme, _, rest = auth.partition(" ")
        scheme = scheme.lower()
        rest = rest.strip()
        if scheme in ("bearer", "oauth2"):
            if not rest or " " in rest:
                raise BadCredentials("malformed bearer token")
            return rest
        if scheme == "basic":
            try:
                raw = base64.b64decode(rest, validate=True)
            except (binascii.Error, ValueError):
                raise BadCredentials("malformed Basic credentials") from None
            if b":" not in raw:
                raise BadCredentials("malformed Basic credentials")
            # The user name is ignored, so its charset (clients send UTF-8
            # or Latin-1) must not matter; only the password is decoded.
            try:
                password = raw.split(b":", 1)[1].decode("utf-8")
            except UnicodeDecodeError:
                raise BadCredentials("malformed Basic credentials") from None
            if not password:
                raise BadCredentials("empty password (use the token as password)")
            return password
        raise BadCredentials("unsupported authorization scheme")
    return token_from_path(environ.get("PATH_INFO", ""))


class TokenAuthenticator(BaseMiddleware):
    """Turns credentials into a ``Session`` (environ ``davcoll.session``)."""

    def __init__(self, wsgidav_app, next_app, config):
        super().__init__(wsgidav_app, next_app, config)
        opts = config["davcoll"]
        self.sessions = opts["sessions"]
        self.anonymous = opts.get("anonymous", "none")  # none | read | write
        self.realm = opts.get("realm", "davcoll")

    def _challenge(self, reason: str) -> DAVError:
        return DAVError(
            HTTP_UNAUTHORIZED,
            context_info=reason,
            add_headers=[("WWW-Authenticate", f'Basic realm="{self.realm}", charset="UTF-8"')],
        )

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "")
        try:
            token = extract_token(environ)
        except BadCredentials as e:
            raise self._challenge(str(e)) from None
        if environ.get("QUERY_STRING", "").find("logout") >= 0 and token is None:
            raise self._challenge("logged out")
        try:
            principal = self.sessions.authenticate(token)
        except CatalogError as e:
            raise dav_error(e) from None
        if principal is None:
            if token is None:
                raise self._challenge("a token is required")
            raise self._challenge("invalid or expired token")
        if token is None:
            mode = self.anonymous() if callable(self.anonymous) else self.anonymous
            principal.can_write = mode == "write"
            if mode == "none":
                raise self._challenge("a token is required")
        if method in WRITE_METHODS and not principal.can_write:
            if token is None:
                raise self._challenge("writing requires a token")
            raise DAVError(HTTP_FORBIDDEN, context_info="this token is read-only")
        environ["wsgidav.auth.user_name"] = principal.user_id
        environ["wsgidav.auth.realm"] = self.realm
        environ["wsgidav.auth.roles"] = ["editor" if principal.can_write else "reader"]
        environ["wsgidav.auth.permissions"] = []
        ctx = context_of(environ)
        ctx.principal = principal
        ctx.session = self.sessions.session(principal)
        cc = environ.get("HTTP_CACHE_CONTROL", "").lower()
        ctx.no_cache = "no-cache" in cc or "must-revalidate" in cc
        return self.next_app(environ, start_response)

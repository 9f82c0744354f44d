"""The one table that maps domain errors to HTTP statuses.

Every resource method funnels exceptions through ``dav_error`` so a given
situation always produces the same status and a short reason, whichever
method hit it.  Unknown exceptions are not mapped here: they stay 500s
(and are bugs).
"""

from __future__ import annotations

from wsgidav.dav_error import (
    HTTP_BAD_GATEWAY,
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_FORBIDDEN,
    HTTP_METHOD_NOT_ALLOWED,
    HTTP_NOT_FOUND,
    HTTP_PRECONDITION_FAILED,
    DAVError,
)
from wsgidav.mw.base_mw import BaseMiddleware

from ..collection import errors as fs
from ..storage import blocks as bs
from ..storage import catalog as cat

HTTP_UNAUTHORIZED = 401
HTTP_SERVICE_UNAVAILABLE = 503
HTTP_INSUFFICIENT_STORAGE = 507

# (exception type, status, default reason); first match wins, so subclasses
# come before their bases.
_TABLE: list[tuple[type[BaseException], int, str]] = [
    (fs.InvalidName, HTTP_BAD_REQUEST, "invalid name"),
    (fs.ParentNotFound, HTTP_CONFLICT, "parent folder does not exist"),
    (fs.NotFound, HTTP_NOT_FOUND, "not found"),
    (fs.NotADirectory, HTTP_CONFLICT, "a path component is a file"),
    (fs.IsADirectory, HTTP_METHOD_NOT_ALLOWED, "is a folder"),
    (fs.AlreadyExists, HTTP_METHOD_NOT_ALLOWED, "already exists"),
    (fs.InvalidMove, HTTP_FORBIDDEN, "cannot move or copy a folder into itself"),
    (fs.ReadOnly, HTTP_METHOD_NOT_ALLOWED, "read-only"),
    (fs.Refused, HTTP_FORBIDDEN, "not allowed here"),
    (fs.OverwritesSource, HTTP_CONFLICT, "the destination folder contains the source"),
    (fs.BusyError, HTTP_SERVICE_UNAVAILABLE, "collection busy, try again"),
    (fs.LimitExceeded, HTTP_INSUFFICIENT_STORAGE, "collection size limit reached"),
    (fs.TooDeep, HTTP_CONFLICT, "folders nested too deep"),
    (fs.CorruptManifest, HTTP_BAD_GATEWAY, "the stored manifest is invalid"),
    (fs.StorageFailure, HTTP_BAD_GATEWAY, "block storage failed"),
    (bs.BlockStoreUnavailable, HTTP_SERVICE_UNAVAILABLE, "block storage unavailable"),
    (bs.BlockTooLarge, HTTP_BAD_GATEWAY, "block too large"),
    (bs.BlockStoreError, HTTP_BAD_GATEWAY, "block storage failed"),
    (cat.PartiallyApplied, HTTP_BAD_GATEWAY,
     "the copy at the destination was saved, but removing the source failed (it still exists there)"),
    (cat.Unauthorized, HTTP_UNAUTHORIZED, "token rejected by the API server"),
    (cat.PermissionDenied, HTTP_FORBIDDEN, "permission denied"),
    (cat.NotFound, HTTP_NOT_FOUND, "collection not found"),
    (cat.Conflict, HTTP_CONFLICT, "conflict"),
    (cat.InvalidManifest, HTTP_BAD_GATEWAY, "the API server rejected or sent an invalid manifest"),
    (cat.BadRequest, HTTP_BAD_GATEWAY, "the API server rejected the update"),
    (cat.Unavailable, HTTP_SERVICE_UNAVAILABLE, "API server unavailable"),
    (cat.CatalogError, HTTP_BAD_GATEWAY, "API server error"),
]

RETRY_AFTER = [("Retry-After", "5")]


def status_of(exc: BaseException) -> tuple[int, str] | None:
    for etype, status, reason in _TABLE:
        if isinstance(exc, etype):
            return status, reason
    return None


def dav_error(exc: BaseException, *, already_exists: int | None = None) -> DAVError:
    """The DAVError for a domain exception (DAVErrors pass through).

    ``already_exists`` overrides the status of AlreadyExists (MOVE/COPY use
    412 Precondition Failed, MKCOL uses 405).
    """
    if isinstance(exc, DAVError):
        return exc
    mapped = status_of(exc)
    if mapped is None:
        raise exc
    status, reason = mapped
    if isinstance(exc, cat.PartiallyApplied):
        # A 5xx of the failed step's kind (503 stays retryable), with the
        # reason saying what did happen.
        cause = status_of(exc.cause)
        if cause is not None and cause[0] >= 500:
            status = cause[0]
    if already_exists is not None and isinstance(exc, fs.AlreadyExists):
        status = already_exists
    detail = str(exc).strip()
    text = f"{reason}: {detail}" if detail and detail != reason else reason
    headers = RETRY_AFTER if status == HTTP_SERVICE_UNAVAILABLE else None
    return DAVError(status, context_info=text[:300], add_headers=headers)


class DomainErrors(BaseMiddleware):
    """WSGI middleware (right inside WsgiDAV's ErrorPrinter): a domain error
    that escaped its handler becomes its mapped status instead of a 500.

    Handlers map errors where they catch them; this is the net under the
    places that do not (e.g. a collection lookup while resolving a path when
    the API server is down, which used to answer 500 instead of 503).  Once
    the response has started, the status can no longer change and the error
    is passed on as is.
    """

    def __call__(self, environ, start_response):
        started = False
        try:
            app_iter = self.next_app(environ, start_response)
            try:
                for chunk in app_iter:
                    started = True
                    yield chunk
            finally:
                if hasattr(app_iter, "close"):
                    app_iter.close()
        except DAVError:
            raise
        except Exception as e:
            if started or status_of(e) is None:
                raise
            raise dav_error(e) from None


ERROR_NS = "urn:davcoll:error"


class ReasonedError(DAVError):
    """A refusal whose body is an RFC 4918 (16) ``<D:error>``: a davcoll
    condition element plus the human reason.

    WsgiDAV sends an HTML page for errors without a DAV condition, and its
    conditions carry no text; WebDAV clients (Finder, Explorer, cadaver)
    parse neither, so an XML body with the reason is the best they can
    show or log.
    """

    def __init__(self, status: int, condition: str, reason: str) -> None:
        super().__init__(status, context_info=reason)
        self.condition = condition
        self.reason = reason

    def get_response_page(self):
        from xml.sax.saxutils import escape

        body = (
            '<?xml version="1.0" encoding="utf-8"?>\n'
            f'<D:error xmlns:D="DAV:" xmlns:dc="{ERROR_NS}">'
            f"<dc:{self.condition}/><dc:reason>{escape(self.reason)}</dc:reason></D:error>\n"
        )
        return "application/xml; charset=utf-8", body.encode("utf-8")


__all__ = ["DomainErrors", "ReasonedError", "ERROR_NS", "dav_error", "status_of", "HTTP_PRECONDITION_FAILED", "HTTP_UNAUTHORIZED", "HTTP_SERVICE_UNAVAILABLE"]

"""Commit before status: the manifest sync at the end of every write request.

For write methods the inner app runs to completion with a captured
``start_response`` (WsgiDAV is lazy: the handler runs while we drain it).
Then the request's change set is committed through ``Session.commit``; only
if that succeeds does the real status leave.  A failed commit becomes the
mapped error status (502/503/4xx) and the tree is rolled back, so a 2xx
always means durable.  A request that changed nothing commits nothing.

Responses of write methods are small (a status page or a 207 body), so
buffering them is cheap.  GET/HEAD/PROPFIND pass through untouched.
"""

from __future__ import annotations

import logging
import time

from wsgidav import util
from wsgidav.dav_error import HTTP_INTERNAL_ERROR, DAVError
from wsgidav.mw.base_mw import BaseMiddleware

from ..collection.errors import FsError
from ..storage.blocks import BlockStoreError
from ..storage.catalog import CatalogError
from .context import context_of
from .errors import dav_error

log = logging.getLogger("davcoll.sync")

COMMIT_METHODS = frozenset({"PUT", "DELETE", "MKCOL", "COPY", "MOVE", "PROPPATCH", "LOCK", "UNLOCK", "POST"})


class SyncMiddleware(BaseMiddleware):
    def __init__(self, wsgidav_app, next_app, config):
        super().__init__(wsgidav_app, next_app, config)
        self.metrics = config["davcoll"].get("metrics")

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "")
        if method not in COMMIT_METHODS:
            return self.next_app(environ, start_response)
        sub = util.SubAppStartResponse()
        try:
            app_iter = self.next_app(environ, sub)
            try:
                body = b"".join(app_iter)
            finally:
                if hasattr(app_iter, "close"):
                    app_iter.close()
        except BaseException:
            self._abandon(environ)
            raise
        status = int(sub.status.split(" ", 1)[0])
        if status < 300:
            self._commit(environ)
        else:
            self._abandon(environ)
        headers = sub.response_headers
        etag = context_of(environ).etag
        if etag is not None and status < 300:
            # The stored form of the new content (see FileResource.end_write).
            headers = [(k, v) for k, v in headers if k.lower() != "etag"] + [("ETag", f'"{etag()}"')]
        start_response(sub.status, headers, sub.exc_info)
        return [body]

    def _commit(self, environ: dict) -> None:
        ctx = context_of(environ)
        change = ctx.change if ctx.has_change else None
        sess = ctx.session
        t0 = time.monotonic()
        try:
            if change is not None:
                sess.commit(change)
            for tree, patch in ctx.props_patch.items():
                sess.patch_properties(tree, patch)
            # Dead properties last: a PROPPATCH whose collection-property
            # patch failed must not leave its dead properties written.
            for write in ctx.dead_prop_writes:
                write()
        except (FsError, CatalogError, BlockStoreError) as e:
            log.warning("commit failed: %s", e)
            if self.metrics is not None:
                self.metrics.commit_failed()
            raise dav_error(e) from None
        except DAVError:
            raise
        except Exception as e:
            log.exception("commit failed")
            raise DAVError(HTTP_INTERNAL_ERROR, context_info="commit failed") from e
        if self.metrics is not None and change is not None:
            self.metrics.observe_sync(time.monotonic() - t0)

    @staticmethod
    def _abandon(environ: dict) -> None:
        ctx = context_of(environ)
        if ctx.has_change:
            change = ctx.change
            try:
                change.rollback()
            finally:
                change.release()

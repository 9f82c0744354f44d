"""Access tokens of the embedded backend, kept in the catalog's SQLite file.

Only a SHA-256 digest of each token is stored, so a copy of the database
(a backup, a stray file permission) does not hand out working credentials.
The plain token exists exactly once: in the return value of ``create``.
Tokens are 256-bit random strings, so an unsalted fast hash is enough: there
is no dictionary to attack, unlike passwords.

Each token has a public ``id`` (the first 12 hex digits of its digest) that
is safe to print, list and pass to ``revoke``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .local_catalog import rfc3339_now
from .local_catalog.schema import open_catalog_db

__all__ = ["LocalTokenStore", "TokenInfo"]

_ID_CHARS = 12
_MIN_PREFIX = 4


@dataclass(frozen=True)
class TokenInfo:
    """What is known about a token -- never the token itself."""

    id: str
    read_only: bool
    label: str
    created_at: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _info(row: tuple) -> TokenInfo:
    digest, read_only, label, created_at = row
    return TokenInfo(id=digest[:_ID_CHARS], read_only=bool(read_only), label=label, created_at=created_at)


class LocalTokenStore:
    """Tokens in the ``tokens`` table of ``db_path`` (usually the catalog file;
    the table is part of its schema: ``local_catalog.schema``).

    Thread-safe: one connection per thread, like the catalog; every method is
    a single statement (autocommit), so no transaction spans calls.
    """

    def __init__(self, db_path: str | os.PathLike[str]):
        self.path = Path(db_path)
        self._db = open_catalog_db(self.path, label="token table")

    def _conn(self) -> sqlite3.Connection:
        return self._db.connection()

    def close(self) -> None:
        self._db.close()

    def create(self, read_only: bool, label: str = "") -> str:
        """A new random token; the caller must show or store it now."""
        token = secrets.token_urlsafe(32)  # 43 chars of [A-Za-z0-9_-]
        created = rfc3339_now()
        self._conn().execute(
            "INSERT INTO tokens (token_sha256, read_only, label, created_at) VALUES (?, ?, ?, ?)",
            (_digest(token), int(bool(read_only)), label, created),
        )
        return token

    def lookup(self, token: str) -> TokenInfo | None:
        """The token's info, or None if unknown/revoked.

        No constant-time comparison is needed: the database is searched by
        the SHA-256 of the presented token, so any timing difference depends
        on that digest, and learning digest bytes of wrong guesses says
        nothing about a valid token (finding a token for a digest prefix is
        a preimage search).
        """
        if not token:
            return None
        row = self._conn().execute(
            "SELECT token_sha256, read_only, label, created_at FROM tokens WHERE token_sha256 = ?", (_digest(token),)
        ).fetchone()
        return None if row is None else _info(row)

    def count(self) -> int:
        (n,) = self._conn().execute("SELECT COUNT(*) FROM tokens").fetchone()
        return n

    def list(self) -> list[TokenInfo]:
        rows = self._conn().execute(
            "SELECT token_sha256, read_only, label, created_at FROM tokens ORDER BY created_at, token_sha256"
        ).fetchall()
        return [_info(r) for r in rows]

    def revoke(self, id_or_token: str) -> int:
        """Delete a token named by its id, an unambiguous id prefix (at least
        4 hex digits) or the token itself.  Returns how many were deleted
        (0 or 1); raises ValueError for an ambiguous or too short prefix.
        """
        conn = self._conn()
        deleted = conn.execute("DELETE FROM tokens WHERE token_sha256 = ?", (_digest(id_or_token),)).rowcount
        prefix = id_or_token.lower()
        if deleted or len(prefix) > _ID_CHARS or not all(c in "0123456789abcdef" for c in prefix):
            return deleted  # the token itself (or something that is no id)
        if len(prefix) < _MIN_PREFIX:
            raise ValueError(f"token id prefix must have at least {_MIN_PREFIX} hex digits")
        # 'g' sorts after every hex digit, so [prefix, prefix+'g') is the prefix range.
        matches = conn.execute(
            "SELECT token_sha256 FROM tokens WHERE token_sha256 >= ? AND token_sha256 < ? LIMIT 2",
            (prefix, prefix + "g"),
        ).fetchall()
        if len(matches) > 1:
            raise ValueError(f"token id prefix {prefix!r} is ambiguous")
        if not matches:
            return 0
        return conn.execute("DELETE FROM tokens WHERE token_sha256 = ?", (matches[0][0],)).rowcount

"""Typed errors of the collection filesystem.

Each type stands for one client-visible situation; the WebDAV layer maps
them to statuses in one table (``dav/errors.py``).  Nothing here knows HTTP.
"""

from __future__ import annotations


class FsError(Exception):
    """Base class of collection filesystem errors."""


class InvalidName(FsError):
    """A path component is empty, '.', '..', or contains '/' or NUL."""


class NotFound(FsError):
    """The path (or a parent of it) does not exist."""


class ParentNotFound(NotFound):
    """The parent directory of a path to be created does not exist (409)."""


class NotADirectory(FsError):
    """A path component that must be a directory is a file."""


class IsADirectory(FsError):
    """A file operation was aimed at a directory."""


class AlreadyExists(FsError):
    """The target exists and overwriting was not allowed."""


class InvalidMove(FsError):
    """A directory cannot be moved or copied into itself (or onto itself)."""


class OverwritesSource(FsError):
    """A MOVE whose destination folder contains the source: overwriting
    the destination would delete what is being moved (409)."""


class Refused(FsError):
    """The operation is not possible on this kind of place (e.g. a plain
    file at the top level, where only collections live)."""


class ReadOnly(FsError):
    """The tree is an immutable snapshot (addressed by PDH)."""


class StorageFailure(FsError):
    """The block store failed; the tree is as it was before the operation."""


class CorruptManifest(FsError):
    """The stored manifest (or a directory line of it) is invalid."""


class BusyError(FsError):
    """The collection's writer lock could not be taken in time."""


class LimitExceeded(FsError):
    """The change would grow the collection past a configured cap (entries
    or manifest size, see ``limits.py``); nothing was changed (507)."""


class TooDeep(FsError):
    """The change would create a path nested deeper than ``max_depth``
    levels inside the collection; nothing was changed (409)."""

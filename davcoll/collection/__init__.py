"""The collection filesystem: an in-memory tree over a manifest.

It knows nothing of HTTP or WsgiDAV and talks to blocks only through the
``BlockStore`` interface.  ``tree.py`` describes the model and names the
module of each concern (nodes, changes, commits, record, buffers);
``locking.py`` is the lock-order document for the whole process (every
lock, the order in which they nest, and a debug-mode check that callers
hold what a function requires).
"""

from .buffers import BufferBlock, ByteBudget, Flusher
from .changes import ChangeSet, Op, Undo
from .errors import (
    AlreadyExists,
    BusyError,
    CorruptManifest,
    FsError,
    InvalidMove,
    InvalidName,
    IsADirectory,
    NotADirectory,
    NotFound,
    ParentNotFound,
    ReadOnly,
    StorageFailure,
)
from .io import FileReader, FileWriter
from .names import check_name, split_path
from .nodes import DirNode, Stat
from .tree import VIRTUAL_RECORD_NAME, CollectionTree

__all__ = [
    "AlreadyExists", "BufferBlock", "BusyError", "ByteBudget", "ChangeSet", "CollectionTree",
    "CorruptManifest", "DirNode", "FileReader", "FileWriter", "Flusher", "FsError", "InvalidMove",
    "InvalidName", "IsADirectory", "NotADirectory", "NotFound", "Op", "ParentNotFound", "ReadOnly", "Stat",
    "StorageFailure", "Undo", "VIRTUAL_RECORD_NAME", "check_name", "split_path",
]

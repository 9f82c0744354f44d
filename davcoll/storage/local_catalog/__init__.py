"""The embedded catalog: collections in one SQLite file (spec 8).

Why the storage looks like this
-------------------------------
A collection may hold a million files, yet a WebDAV PUT changes one, and a
directory may hold many thousands of files, yet a PUT into it adds one.  So
an update must cost -- in CPU and in stored bytes -- the size of the change,
not the size of the collection nor of the directory it touches.  Two tables
carry the tree:

``entries``: the history, one row per entry per range of versions.
    ``(cid, parent, name, kind, segs, v_from, v_to)``: ``kind`` is ``'f'``
    (file) or ``'d'`` (directory); ``segs`` is a file's segments as text,
    ``"locator offset length"`` triples joined by spaces (``''`` for an
    empty file, NULL for a directory).  Every directory has its own row --
    empty ones, and every parent implied by a deeper path -- so empty
    directories persist and ``mkdir -p`` is explicit; the root is implicit.
    A row belongs to every version ``v`` with ``v_from <= v < v_to``
    (``v_to`` NULL = still current).  An update to version ``N`` closes the
    rows it replaces (``v_to = N``) and inserts the new ones (``v_from =
    N``): O(changed entries), never a rewrite of a directory.

``dir_lines``: a cache of the *current* version only.
    ``(cid, path, line)``: each current directory's rendered normalized
    stream line (``render_stream`` output, the empty-directory marker line,
    or ``''`` for a directory holding only subdirectories and for a root
    without files).  There is exactly one row per current directory (root
    included); ``line`` NULL means "stale".  An update sets the line of each
    directory whose direct *files* changed to NULL (and of a file-less
    directory whose subdirectories changed, since marker vs ``''`` depends on
    them) -- it never renders anything itself.  Reading the full manifest
    renders the stale lines from the entry rows, concatenates all lines in
    depth-first order, and stores the rendered lines back in a short
    separate transaction.  So a warm read of a million files is a read of
    ~10k cached strings, and a read after an update re-renders only the
    directories that update touched.

Refinements of the obvious layout, and why:

* ``cid`` is a small integer (``collections.id``) rather than the 27-char
  UUID, and a path is stored as ``(parent, name)`` rather than as path plus
  parent plus name: at a million rows, each repeated string in the table
  and in its index costs tens of MB.  ``(cid, parent, name, v_from)`` is
  the primary key of a ``WITHOUT ROWID`` table, so the table itself is the
  history index ("row at path P at version v" is one descent).
* The current state has its own partial index ``entries_current`` on
  ``(cid, parent, name) WHERE v_to IS NULL``; it answers "current row at
  path P" (one probe), "current children of directory X" (one range, in
  name order -- byte order of UTF-8 is code-point order, which is what the
  normalized layout sorts by) and "current rows under X": those whose
  parent is X, or starts with ``X/``, i.e. ``parent >= X/ AND parent < X0``
  (``0`` is the character after ``/``; names such as ``a-b``, ``a.b``,
  ``a0`` sort outside that range).  Queries on the current tree name the
  index (``INDEXED BY``): without statistics the planner may prefer the
  primary key and walk every historical row.
* Rows valid at an old version ``v`` are found by scanning the collection's
  rows in primary-key order and filtering on ``v_from``/``v_to``; no single
  index range can select an interval-containment, and reading an old
  version is allowed to cost O(collection history).  Old versions are
  rendered from a tree built out of those rows (``Manifest.to_text``),
  which produces the same bytes as the cached lines did when that version
  was current.

Locators are stored as the collection stores them: ``+A`` signatures are
stripped on the way in (spec 8), other hints stay, so the manifest text is
exactly what the previous design returned (and normally the locators are
bare ``md5+size``).  ``referenced_blocks`` reduces them to ``md5+size``.

The portable data hash needs the whole text, so it is computed lazily: when
a manifest is read, when a change replaces the whole text anyway, or when
the collection is small; it is cached per version.  "Small" is judged by
``versions.approx_chars``, an estimate of the text size kept up to date from
the rows an update inserts and closes (exact sizes would need the rendered
lines, which updates deliberately do not produce).  A lookup *by* PDH is one
indexed read that never takes the write lock: a miss answers NotFound at
once and nudges a background pass (``pdh_indexer``) that computes missing
PDHs in read snapshots, so the PDH of a collection changed and not read
since resolves once that pass has run (about ``pdh_pass_interval`` later).

Concurrency and transactions
----------------------------
Every change runs in one ``BEGIN IMMEDIATE`` transaction: SQLite's write
lock then serializes writers across threads *and* processes sharing the data
directory, and the update reads the stored version inside the same
transaction, so two ``replace_files`` updates to different paths never lose
each other's edits.  The sources of a ``replace_files`` request are read at
the start of that transaction, before any edit, so ``current/`` sees the
pre-request tree (swaps work).  Reads run in a deferred transaction (a WAL
snapshot), so a manifest is assembled from one consistent version.  Lines
and a PDH computed by a read are written back afterwards in a *separate*
short IMMEDIATE transaction that waits at most ``_CACHE_WAIT_MS`` for the
lock (an update never waits long behind it; a busy database only costs a
re-render later) and that only stores them if the collection is still at
the version they were computed for.  Each thread uses its own connection
(``local_sqlite.Database``); a connection is never shared between threads.

Modules
-------
``schema``     the tables and how older databases are upgraded.
``rows``       how an entry is stored (paths, segments, size estimates).
``lines``      the line cache: rendering, assembling, storing lines.
``history``    rows of the current or an older version; PDHs of versions.
``sources``    ``replace_files`` sources, read before any edit.
``writer``     a new version, built inside the write transaction.
``records``    collection records: UUIDs, names, properties, timestamps.
``retention``  ``davcoll gc``: block usage, purging trash and old versions.
``catalog``    ``LocalCatalog``, the API the rest of davcoll uses.
"""

from .catalog import LocalCatalog
from .records import rfc3339_now
from .schema import DB_FILENAME, db_path_for

__all__ = ["LocalCatalog", "DB_FILENAME", "db_path_for", "rfc3339_now"]

"""LocalCatalog: the embedded catalog's API (see the package docstring)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from ...manifest import Manifest, is_portable_data_hash, portable_data_hash
from ..catalog import (
    Catalog,
    CatalogUpdate,
    CollectionRecord,
    Conflict,
    NotFound,
    Unavailable,
    UpdateResult,
)
from ..local_sqlite import SYNCHRONOUS_MODES
from ..pdh_indexer import PdhIndexer
from ..replace_files import plan_replace_files
from . import retention
from .history import MISSING_PDHS, cached_pdh, find_pdh, tree_at
from .lines import assemble, assemble_current, store_lines, tree_parts
from .records import (
    CLUSTER_RE,
    COLLECTION_COLUMNS,
    COLUMNS,
    ROW_COLUMNS,
    UUID_RE,
    check_name,
    new_uuid,
    parse_incoming,
    properties_json,
    rfc3339_now,
    to_record,
)
from .rows import entry_chars, row_key
from .schema import open_catalog_db
from .writer import VersionWriter, apply_replace_files

if TYPE_CHECKING:
    from ..local_small_blocks import SmallBlocks

_CACHE_WAIT_MS = 200  # how long a read that only wants to cache lines or a PDH waits for the write lock


@dataclass
class _Computed:
    """What a read computed and would like cached (after its transaction)."""

    uuid: str
    cid: int
    version: int
    pdh: str | None  # a newly computed PDH, or None
    lines: dict[str, str]  # newly rendered current lines (empty for old versions)


class LocalCatalog(Catalog):
    """Collections, their versions and trees in ``db_path`` (SQLite).

    ``cluster_id`` is the 5-character prefix of generated UUIDs.
    ``cheap_pdh_chars``: an update computes the PDH right away when the
    new manifest is estimated to be at most this long (otherwise the record
    carries None until a read computes it).  ``synchronous`` is SQLite's
    durability setting; FULL makes every commit durable before the caller
    answers.  ``pdh_pass_interval``: the background pass that computes
    missing PDHs after a lookup miss starts at most this often (seconds;
    see ``pdh_indexer``).
    """

    atomic_update_many = True  # update_many is one SQLite transaction

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        cluster_id: str = "dvcol",
        owner_uuid: str = "",
        cheap_pdh_chars: int = 32 * 1024,
        synchronous: str = "FULL",
        pdh_pass_interval: float = 1.0,
    ):
        if not CLUSTER_RE.fullmatch(cluster_id):
            raise ValueError(f"cluster_id must be 5 characters [a-z0-9], got {cluster_id!r}")
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"bad synchronous setting {synchronous!r}")
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.cluster_id = cluster_id
        self.owner_uuid = owner_uuid
        self.cheap_pdh_chars = cheap_pdh_chars
        self._db = open_catalog_db(self.path, synchronous=synchronous, unavailable=Unavailable)
        self._pdh_indexer = PdhIndexer(self.index_pdhs, min_interval=pdh_pass_interval)
        self._small_blocks: SmallBlocks | None = None

    def attach_small_blocks(self, small: SmallBlocks) -> None:
        """Write the block store's staged small blocks in every transaction
        that stores a manifest (see local_small_blocks): from now on the
        block store stages them instead of writing files."""
        self._small_blocks = small
        small.attach()

    @contextlib.contextmanager
    def _manifest_write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that also makes the staged small blocks
        durable: a manifest written in it may reference any of them."""
        small = self._small_blocks
        with self._db.write() as conn:
            staged = small.write_staged(conn) if small is not None else []
            yield conn
        if small is not None:
            small.committed(staged)

    def close(self) -> None:
        self._pdh_indexer.close()
        self._db.close()

    # -- transactions ------------------------------------------------------

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.read()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.write()

    # -- reads -------------------------------------------------------------

    @staticmethod
    def _collection_row(conn: sqlite3.Connection, uuid: str, *, include_trash: bool = False) -> tuple:
        """The record's 8 columns followed by the tree key ``id``."""
        row = conn.execute(f"SELECT {ROW_COLUMNS} FROM collections WHERE uuid = ?", (uuid,)).fetchone()
        if row is None or (row[7] and not include_trash):
            raise NotFound(f"collection {uuid} not found")
        return row

    def _remember(self, computed: _Computed | None) -> None:
        """Cache what a read computed: rendered lines and a PDH.

        Its own short IMMEDIATE transaction, after the read's: best effort,
        with a short lock wait, because a busy database only costs a
        re-render later, so a read never waits long for (or fails because
        of) this write, and an update never queues long behind it.  Lines
        are stored only if the collection is still at the version they were
        rendered from (a later update may have changed those directories).
        """
        if computed is None:
            return
        try:
            with self._db.write(busy_timeout_ms=_CACHE_WAIT_MS) as conn:
                if computed.pdh is not None:
                    conn.execute(
                        "UPDATE versions SET pdh = ? WHERE uuid = ? AND version = ? AND pdh IS NULL",
                        (computed.pdh, computed.uuid, computed.version),
                    )
                if computed.lines:
                    row = conn.execute("SELECT version FROM collections WHERE id = ?", (computed.cid,)).fetchone()
                    if row is not None and row[0] == computed.version:
                        store_lines(conn, computed.cid, computed.lines)
        except (sqlite3.Error, Unavailable):
            pass

    def get(self, uuid_or_pdh: str, *, with_manifest: bool = True, include_trash: bool = False) -> CollectionRecord:
        """By UUID: the current version (trashed ones only with
        ``include_trash``).  By PDH: the version with that PDH, preferring
        a current one (see ``history.backfill_pdhs`` for which versions are found).
        With the manifest the PDH is always filled in (computed if needed)."""
        if is_portable_data_hash(uuid_or_pdh):
            return self._get_by_pdh(uuid_or_pdh, with_manifest=with_manifest)
        if not isinstance(uuid_or_pdh, str) or not UUID_RE.fullmatch(uuid_or_pdh):
            raise NotFound(f"collection {uuid_or_pdh!r} not found")
        with self._read() as conn:
            row = self._collection_row(conn, uuid_or_pdh, include_trash=include_trash)
            rec, computed = self._snapshot(conn, row, row[5], with_manifest=with_manifest, current=True)
        self._remember(computed)
        return rec

    def get_version(self, uuid: str, version: int, *, with_manifest: bool = True) -> CollectionRecord:
        """A collection as it was at ``version`` (name, properties, tree)."""
        with self._read() as conn:
            row = self._collection_row(conn, uuid)
            ver = conn.execute(
                "SELECT name, properties, modified_at FROM versions WHERE uuid = ? AND version = ?", (uuid, version)
            ).fetchone()
            if ver is None:
                raise NotFound(f"collection {uuid} has no version {version}")
            current = version == row[5]
            row = (row[0], ver[0], row[2], row[3], ver[2], version, ver[1], row[7], row[8])
            rec, computed = self._snapshot(conn, row, version, with_manifest=with_manifest, current=current)
        self._remember(computed)
        return rec

    def _snapshot(
        self, conn: sqlite3.Connection, row: tuple, version: int, *, with_manifest: bool, current: bool
    ) -> tuple[CollectionRecord, _Computed | None]:
        """Record of ``row`` at ``version``, with the manifest when asked.

        Runs inside the caller's read transaction, so rows and record belong
        to one version.  The current version is assembled from the line
        cache; an older one from the entry rows valid then.  Whatever was
        computed is returned for the caller to cache once the read
        transaction is over.
        """
        uuid, cid = row[0], row[8]
        pdh = cached_pdh(conn, uuid, version)
        if not with_manifest:
            return to_record(row, pdh=pdh), None
        rendered: dict[str, str] = {}
        if current:
            text, rendered = assemble_current(conn, cid)
        else:
            text = Manifest(tree_at(conn, cid, version)).to_text()
        new_pdh = None
        if pdh is None:
            pdh = new_pdh = portable_data_hash(text)
        computed = _Computed(uuid, cid, version, new_pdh, rendered) if new_pdh or rendered else None
        return to_record(row, pdh=pdh, manifest_text=text), computed

    def _get_by_pdh(self, pdh: str, *, with_manifest: bool) -> CollectionRecord:
        """One indexed read; a miss is NotFound at once (issue 11 §4).

        A PDH is known once computed: when the version's manifest was read
        (``get`` with the manifest), when an update computed it, or by the
        background pass a miss starts (``index_pdhs``).  So a lookup of the
        PDH of a collection changed moments ago and never read since may
        answer 404 until that pass has run (about ``pdh_pass_interval``
        seconds later); no lookup ever takes the write lock or renders a
        collection."""
        found = self._find_pdh(pdh)
        if found is None:
            self._pdh_indexer.nudge()
            raise NotFound(f"no collection with portable data hash {pdh}")
        return self.get_version(found[0], found[1], with_manifest=with_manifest)

    def index_pdhs(self) -> int:
        """Compute the missing PDHs of current versions; return how many.

        Each collection is rendered in its own read transaction (a WAL
        snapshot: commits proceed meanwhile) and its PDH and rendered lines
        are stored by ``_remember``'s short, bounded write, which keeps them
        only for the version they were computed from.  The background
        indexer runs this after lookup misses; tools and tests may call it
        directly.
        """
        with self._read() as conn:
            todo = conn.execute(MISSING_PDHS).fetchall()
        done = 0
        for uuid, _version, cid in todo:
            if self._pdh_indexer.closing:
                break
            with self._read() as conn:
                row = conn.execute("SELECT version FROM collections WHERE id = ?", (cid,)).fetchone()
                if row is None or cached_pdh(conn, uuid, row[0]) is not None:
                    continue
                text, rendered = assemble_current(conn, cid)
            self._remember(_Computed(uuid, cid, row[0], portable_data_hash(text), rendered))
            done += 1
        return done

    def wait_pdh_index(self, timeout: float | None = None) -> bool:
        """Wait for the background PDH pass that earlier misses started."""
        return self._pdh_indexer.wait_idle(timeout)

    def _find_pdh(self, pdh: str) -> tuple[str, int] | None:
        with self._read() as conn:
            return find_pdh(conn, pdh)

    def list(self) -> list[CollectionRecord]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {', '.join('c.' + col for col in COLUMNS)}, v.pdh"
                " FROM collections c LEFT JOIN versions v ON v.uuid = c.uuid AND v.version = c.version"
                " WHERE c.is_trashed = 0 ORDER BY c.name"
            ).fetchall()
        return [to_record(r[:8], pdh=r[8]) for r in rows]

    def find_by_name(self, name: str) -> CollectionRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {COLLECTION_COLUMNS} FROM collections WHERE name = ? AND is_trashed = 0", (name,)
            ).fetchone()
            if row is None:
                return None
            return to_record(row, pdh=cached_pdh(conn, row[0], row[5]))

    def revision(self, uuid: str) -> tuple[str, int]:
        """``(modified_at, version)``: one primary-key lookup.

        Always modified_at, never the PDH: the PDH may only become known
        later, and a key that changes spelling would look like a change.
        """
        with self._read() as conn:
            row = conn.execute(
                "SELECT modified_at, version FROM collections WHERE uuid = ? AND is_trashed = 0", (uuid,)
            ).fetchone()
        if row is None:
            raise NotFound(f"collection {uuid} not found")
        return row[0], row[1]

    # -- writes ------------------------------------------------------------

    def create(self, name: str, manifest_text: str = "", properties: Mapping[str, Any] | None = None) -> CollectionRecord:
        check_name(name)
        props = properties_json(properties)
        rows, lines = tree_parts(parse_incoming(manifest_text))
        # Key order: the table and its index are then filled by appending,
        # which is faster and packs pages full (random order leaves ~1/3 free).
        rows.sort(key=row_key)
        text = assemble(lines)
        pdh = portable_data_hash(text)  # the whole text was sent: hashing it costs no more
        approx = sum(entry_chars(p, n, s) for p, n, _k, s in rows)
        now = rfc3339_now()
        uuid = new_uuid(self.cluster_id)
        # One write transaction: the collection, its first version, its
        # entries and its (fully rendered) line cache appear together.
        with self._manifest_write() as conn:
            try:
                cur = conn.execute(
                    f"INSERT INTO collections ({COLLECTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, 1, ?, 0)",
                    (uuid, name, self.owner_uuid, now, now, props),
                )
            except sqlite3.IntegrityError as e:
                raise Conflict(f"a collection named {name!r} already exists") from e
            cid = cur.lastrowid
            conn.execute(
                "INSERT INTO versions (uuid, version, name, properties, modified_at, approx_chars, pdh)"
                " VALUES (?, 1, ?, ?, ?, ?, ?)",
                (uuid, name, props, now, approx, pdh),
            )
            conn.executemany(
                "INSERT INTO entries (cid, parent, name, kind, segs, v_from) VALUES (?, ?, ?, ?, ?, 1)",
                [(cid, p, n, k, s) for p, n, k, s in rows],
            )
            conn.executemany(
                "INSERT INTO dir_lines (cid, path, line) VALUES (?, ?, ?)", [(cid, p, line) for p, line in lines]
            )
        return CollectionRecord(
            uuid=uuid,
            name=name,
            portable_data_hash=pdh,
            properties=json.loads(props),
            modified_at=now,
            created_at=now,
            version=1,
            owner_uuid=self.owner_uuid,
        )

    def update(
        self,
        uuid: str,
        *,
        replace_files: Mapping[str, str] | None = None,
        manifest_text: str | None = None,
        properties: Mapping[str, Any] | None = None,
        name: str | None = None,
        base_version: int | None = None,
    ) -> UpdateResult:
        upd = CatalogUpdate(uuid, replace_files=replace_files, manifest_text=manifest_text,
                            properties=properties, name=name, base_version=base_version)
        return self.update_many([upd])[0]

    def update_many(self, updates: Sequence[CatalogUpdate]) -> list[UpdateResult]:
        """Apply several updates (of one or several collections) in ONE
        transaction: all of them, in order, or none (see Catalog.update_many)."""
        # Everything that needs no stored state is checked before the write
        # lock is taken, so a bad request never holds up other writers.
        prepared = [self._prepare_update(u) for u in updates]
        with self._manifest_write() as conn:
            # The IMMEDIATE transaction holds SQLite's write lock from here to
            # COMMIT: the stored versions read now are the ones we build on,
            # and every row change below commits (or rolls back) as one.
            return [self._update_in(conn, u, *p) for u, p in zip(updates, prepared)]

    @staticmethod
    def _prepare_update(u: CatalogUpdate) -> tuple:
        ops = None
        if u.replace_files:
            ops = plan_replace_files(u.replace_files, manifest_text_supplied=bool(u.manifest_text))
        new_tree = parse_incoming(u.manifest_text) if u.manifest_text is not None else None
        props = properties_json(u.properties) if u.properties is not None else None
        if u.name is not None:
            check_name(u.name)
        return ops, new_tree, props

    def _update_in(self, conn: sqlite3.Connection, u: CatalogUpdate, ops, new_tree, props) -> UpdateResult:
        """One update inside the caller's write transaction."""
        uuid, name, base_version = u.uuid, u.name, u.base_version
        if u.properties_patch is not None:
            props = self._patched_properties(conn, uuid, u.properties_patch)
        row = self._collection_row(conn, uuid)
        cid = row[8]
        old = row[5]
        new = old + 1
        now = rfc3339_now()
        new_name = row[1] if name is None else name
        new_props = row[6] if props is None else props
        try:
            conn.execute(
                "UPDATE collections SET name = ?, properties = ?, modified_at = ?, version = ? WHERE id = ?",
                (new_name, new_props, now, new, cid),
            )
        except sqlite3.IntegrityError as e:
            raise Conflict(f"a collection named {new_name!r} already exists") from e

        (approx,) = conn.execute(
            "SELECT approx_chars FROM versions WHERE uuid = ? AND version = ?", (uuid, old)
        ).fetchone()
        pdh = None
        if ops is not None:
            writer = VersionWriter(conn, cid, new)
            apply_replace_files(conn, writer, cid, old, ops, new_tree)
            approx = max(0, approx + writer.delta_chars)
            if approx <= self.cheap_pdh_chars:
                # Small collection: assembling it costs little, and the
                # lines rendered now are this version's (we hold the lock).
                text, rendered = assemble_current(conn, cid)
                store_lines(conn, cid, rendered)
                pdh = portable_data_hash(text)
        elif new_tree is not None:
            writer = VersionWriter(conn, cid, new)
            pdh = portable_data_hash(writer.replace_all(new_tree))
            approx = max(0, approx + writer.delta_chars)
        else:
            pdh = cached_pdh(conn, uuid, old)  # tree unchanged
        conn.execute(
            "INSERT INTO versions (uuid, version, name, properties, modified_at, approx_chars, pdh)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (uuid, new, new_name, new_props, now, approx, pdh),
        )
        record = to_record((uuid, new_name, row[2], row[3], now, new, new_props, 0), pdh=pdh)
        return UpdateResult(record=record, applied_on_base=base_version is not None and base_version == old)

    def update_properties(self, uuid: str, patch: Mapping[str, Any]) -> UpdateResult:
        return self.update_many([CatalogUpdate(uuid, properties_patch=patch)])[0]

    def _patched_properties(self, conn: sqlite3.Connection, uuid: str, patch: Mapping[str, Any]) -> str:
        """The stored properties with ``patch`` applied (None values delete
        keys), read inside the write transaction: no lost updates."""
        row = self._collection_row(conn, uuid)
        current = json.loads(row[6] or "{}")
        for key, value in patch.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        return properties_json(current)

    def referenced_blocks(self) -> set[str]:
        """Bare locators used by any version of any collection (trashed too);
        see ``retention``."""
        return retention.referenced_blocks(self._db)

    # -- retention (``davcoll gc``; see ``retention``) ---------------------

    USAGE_KINDS = retention.USAGE_KINDS

    def block_usage(
        self, *, trashed_before: str | None = None, superseded_before: str | None = None, keep: int = 1
    ) -> dict[str, str]:
        """Every referenced bare locator -> what keeps it alive (one of
        USAGE_KINDS); see ``retention.block_usage``."""
        return retention.block_usage(
            self._db, trashed_before=trashed_before, superseded_before=superseded_before, keep=keep
        )

    def purge_trash(self, trashed_before: str) -> list[str]:
        """Delete for good every collection trashed before ``trashed_before``;
        returns their UUIDs (see ``retention.purge_trash``)."""
        return retention.purge_trash(self._db, trashed_before)

    def prune_versions(self, superseded_before: str, keep: int = 1) -> int:
        """Drop the old versions retention no longer keeps; returns how many
        (see ``retention.prune_versions``)."""
        return retention.prune_versions(self._db, superseded_before, keep)

    def trash(self, uuid: str) -> None:
        """Hide the collection (and free its name); its rows are kept."""
        with self._write() as conn:
            self._collection_row(conn, uuid, include_trash=True)
            conn.execute(
                "UPDATE collections SET is_trashed = 1, trashed_at = ? WHERE uuid = ? AND is_trashed = 0", (rfc3339_now(), uuid)
            )

    def untrash(self, uuid: str) -> CollectionRecord:
        """Bring a trashed collection back; Conflict if its name was reused."""
        with self._write() as conn:
            self._collection_row(conn, uuid, include_trash=True)
            try:
                conn.execute("UPDATE collections SET is_trashed = 0, trashed_at = NULL WHERE uuid = ?", (uuid,))
            except sqlite3.IntegrityError as e:
                raise Conflict("another collection now has this name") from e
        return self.get(uuid, with_manifest=False)

"""Make ``catalog.sqlite3`` + ``expected.json`` here with an OLD davcoll.

The fixture is a data directory's catalog file as davcoll wrote it before
the tables had one migration list (commit 31f87a9: catalog schema 2, token
and dead-property tables unversioned, dead_props with its parent column).
tests/test_schema_upgrade.py opens it with the current code.  To remake:

    git archive 31f87a9 davcoll | tar -x -C /tmp/old-davcoll
    PYTHONPATH=/tmp/old-davcoll .venv/bin/python tests/data/pre_migrations/make_fixture.py

The file is shrunk afterwards (512-byte pages, rollback journal) so it
stays small in the repository; the tables and rows are the old code's.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
from pathlib import Path

import davcoll
from davcoll.backends import LocalBackend

HERE = Path(__file__).resolve().parent
FOO = "acbd18db4cc2f85cedef654fccc4a4d8+3"
BAR = "37b51d194a7513e5b00bd72e5ac3b1ee+3"


def main() -> None:
    print("davcoll from", davcoll.__file__, file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalBackend(tmp)
        cat = backend.catalog_
        a = cat.create("alpha", f". {FOO} 0:3:foo\n./sub {BAR} 0:3:bar\n", {"k": "v"})
        cat.update(a.uuid, replace_files={"/sub/more/foo2": f"{a.portable_data_hash}/foo", "/empty": ""})
        cat.update(a.uuid, replace_files={"/foo": ""})
        cat.update(a.uuid, replace_files={"/sub/bar": ""}, name="alpha2")
        b = cat.create("beta", f". {BAR} 0:3:b\n./e d41d8cd98f00b204e9800998ecf8427e+0 0:0:\\056\n")
        t = cat.create("gone", f". {FOO} 0:3:t\n")
        cat.trash(t.uuid)
        rw = backend.tokens.create(False, "writer")
        ro = backend.tokens.create(True, "reader")
        backend.props.set(f"/by_id/{a.uuid}/sub", "{DAV:}x", b"<x>1</x>")
        backend.props.set(f"/by_id/{a.uuid}/sub/more", "{urn:z}y", b"two")
        backend.props.set(f"/by_id/{a.uuid}/sub/more/foo2", "{urn:z}y", b"three")
        backend.close()
        # The fixture is the file as it is now (most PDHs not computed yet,
        # stale lines in the cache); the expectations are read afterwards.
        db = Path(tmp) / "catalog.sqlite3"
        fixture = Path(tmp) / "fixture.sqlite3"
        src = sqlite3.connect(db)
        dst = sqlite3.connect(fixture)
        src.backup(dst)
        src.close()
        dst.execute("PRAGMA journal_mode = DELETE")
        dst.execute("PRAGMA page_size = 512")
        dst.execute("VACUUM")
        user_version = dst.execute("PRAGMA user_version").fetchone()[0]
        dst.close()
        (HERE / "catalog.sqlite3").write_bytes(fixture.read_bytes())
        backend = LocalBackend(tmp)
        cat = backend.catalog_
        versions = {}
        for rec in (a, b):
            cur = cat.get(rec.uuid)
            versions[rec.uuid] = [
                {"version": v, **{k: getattr(cat.get_version(rec.uuid, v), k) for k in ("name", "manifest_text", "portable_data_hash")}}
                for v in range(1, cur.version + 1)
            ]
        backend.close()
    expected = {
        "user_version": user_version,
        "tokens": {"writer": rw, "reader": ro},
        "versions": versions,
        "trashed": t.uuid,
        "props": {
            f"/by_id/{a.uuid}/sub": {"{DAV:}x": "<x>1</x>"},
            f"/by_id/{a.uuid}/sub/more": {"{urn:z}y": "two"},
            f"/by_id/{a.uuid}/sub/more/foo2": {"{urn:z}y": "three"},
        },
    }
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

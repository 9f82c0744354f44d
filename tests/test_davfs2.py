"""davfs2 (the Linux FUSE WebDAV file system) against a real server, with
the README's recipe: ``buf_size 64`` in davfs2.conf and the token as the
password in a secrets file.

davfs2 1.6.1 with its default ``buf_size`` (16 KiB) fails every directory
listing with ``ls: reading directory: Invalid argument`` (on any server), so
the recipe must carry the option.  The test mounts the server root (the
collections as folders) and then a single collection's URL, writes a small
tree through the mount, reads names and content back through the mount and
over HTTP after unmounting (davfs2 uploads on close and at unmount).

Needs root, /dev/fuse and mount.davfs (Debian package davfs2); skips with
the reason otherwise, or when the kernel refuses the FUSE mount (containers
without CAP_SYS_ADMIN).  Every wait is bounded; the davfs2 daemon is
stopped by its PID if unmounting leaves it running.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import requests

from davcoll.testing.davfs2 import Davfs2Mount, MountNotPermitted, is_mounted
from server_util import running_server

MOUNT_DAVFS = shutil.which("mount.davfs") or ("/sbin/mount.davfs" if os.path.exists("/sbin/mount.davfs") else None)
pytestmark = [
    pytest.mark.skipif(MOUNT_DAVFS is None, reason="mount.davfs is not installed (Debian package davfs2)"),
    pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="mounting davfs2 needs root"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing (FUSE not available)"),
]


class Davfs2(Davfs2Mount):
    """The README's recipe (any user name, the token as password) as a test
    sees it: a refused FUSE mount skips, any other failure fails, and the
    unmount must leave nothing mounted."""

    def __init__(self, work: Path, url: str, token: str) -> None:
        super().__init__(work, url, "x", token)

    def mount(self) -> None:
        try:
            super().mount()
        except MountNotPermitted as e:
            pytest.skip(f"mounting FUSE is not permitted here: {e.detail}")
        except RuntimeError as e:
            pytest.fail(str(e))

    def umount(self) -> None:
        super().umount()
        assert not is_mounted(self.mnt), "davfs2 mount still present"


def tree_files() -> dict[str, bytes]:
    big = hashlib.sha256(b"davfs2").digest() * (300_000 // 32)  # ~300 KB, several FUSE writes
    return {
        "notes.txt": b"hello from davfs2\n",
        "with space é.txt": "Grüße\n".encode(),
        "src/main.py": b"print('hi')\n",
        "src/pkg/__init__.py": b"",
        "src/pkg/mod.py": b"x = 1\n" * 100,
        "data/blob.bin": big,
    }


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "lost+found"]
        for name in filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


@pytest.fixture
def mount_dir():
    """Mount points and caches outside pytest's tmp_path: that is 0700, and
    davfs2 drops to its own user, which must reach its cache."""
    d = Path(tempfile.mkdtemp(prefix="davcoll-davfs2-"))
    d.chmod(0o755)
    yield d
    for sub in d.iterdir():
        if not is_mounted(sub / "mnt"):
            shutil.rmtree(sub, ignore_errors=True)
    if not any(d.iterdir()):
        d.rmdir()


def test_davfs2_root_and_single_collection(tmp_path, mount_dir):
    files = tree_files()
    with running_server(tmp_path / "data", anonymous="none") as srv:
        token = srv.app.backend.tokens.create(read_only=False, label="davfs2")
        auth = ("x", token)
        assert requests.request("MKCOL", srv.u("/project/"), auth=auth, timeout=30).status_code == 201

        # 1. The server root: collections are folders; mkdir makes one.
        fs = Davfs2(mount_dir / "root", srv.url, token)
        fs.mount()
        try:
            top = sorted(os.listdir(fs.mnt))
            assert "project" in top, top
            write_tree(fs.mnt / "project", files)
            (fs.mnt / "made-by-mkdir").mkdir()
            (fs.mnt / "made-by-mkdir" / "f.txt").write_bytes(b"in a new collection\n")
            assert read_tree(fs.mnt / "project") == files
            assert sorted(os.listdir(fs.mnt / "project")) == ["data", "notes.txt", "src", "with space é.txt"]
            assert sorted(os.listdir(fs.mnt / "project" / "src" / "pkg")) == ["__init__.py", "mod.py"]
        finally:
            fs.umount()

        # Over HTTP after unmount: everything was uploaded.
        for rel, data in files.items():
            r = requests.get(srv.u("/project/" + rel), auth=auth, timeout=30)
            assert r.status_code == 200 and r.content == data, rel
        assert requests.get(srv.u("/made-by-mkdir/f.txt"), auth=auth, timeout=30).content == b"in a new collection\n"

        # 2. One collection's URL as the mount: its files at the top.
        one = Davfs2(mount_dir / "one", srv.u("/project/"), token)
        one.mount()
        try:
            assert read_tree(one.mnt) == files
            (one.mnt / "src" / "pkg" / "mod.py").write_bytes(b"x = 2\n")
            (one.mnt / "notes.txt").unlink()
            os.rename(one.mnt / "data" / "blob.bin", one.mnt / "data" / "renamed.bin")
        finally:
            one.umount()
        r = requests.get(srv.u("/project/src/pkg/mod.py"), auth=auth, timeout=30)
        assert r.content == b"x = 2\n"
        assert requests.get(srv.u("/project/notes.txt"), auth=auth, timeout=30).status_code == 404
        assert requests.get(srv.u("/project/data/renamed.bin"), auth=auth, timeout=30).content == files["data/blob.bin"]
        assert requests.get(srv.u("/project/data/blob.bin"), auth=auth, timeout=30).status_code == 404

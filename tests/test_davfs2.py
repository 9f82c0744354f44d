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

import grp
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from server_util import running_server

MOUNT_DAVFS = shutil.which("mount.davfs") or ("/sbin/mount.davfs" if os.path.exists("/sbin/mount.davfs") else None)
pytestmark = [
    pytest.mark.skipif(MOUNT_DAVFS is None, reason="mount.davfs is not installed (Debian package davfs2)"),
    pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="mounting davfs2 needs root"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing (FUSE not available)"),
]

MOUNT_TIMEOUT = 60
UMOUNT_TIMEOUT = 60
# Kernel/FUSE refusals that mean "not permitted here", not a davcoll bug.
NOT_PERMITTED = ("not permitted", "permission denied", "fuse: device not found", "can't open fuse device",
                 "no such device", "must be superuser", "mounting failed")


def davfs2_pids(mountpoint: Path) -> list[int]:
    """PIDs of mount.davfs daemons serving ``mountpoint`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"mount.davfs") and str(mountpoint).encode() in argv:
            out.append(int(d.name))
    return out


def is_mounted(mountpoint: Path) -> bool:
    target = str(mountpoint)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)


class Davfs2:
    """One davfs2 mount with a private davfs2.conf (``conf=``), cache and secrets."""

    def __init__(self, work: Path, url: str, token: str) -> None:
        self.work = work
        self.url = url
        self.mnt = work / "mnt"
        self.mnt.mkdir(parents=True)
        cache = work / "cache"
        cache.mkdir()
        # davfs2 runs as its own user when root mounts: the cache must belong
        # to group davfs2 with group rwx (see mount.davfs(8)).
        try:
            os.chown(cache, 0, grp.getgrnam("davfs2").gr_gid)
        except KeyError:
            pass
        cache.chmod(0o775)
        secrets = work / "secrets"
        # As in the README: keyed by mount point; any user name, the token as password.
        secrets.write_text(f"{self.mnt} x {token}\n")
        secrets.chmod(0o600)
        self.conf = work / "davfs2.conf"
        # The README's recipe: buf_size 64.  use_locks stays on (the default).
        self.conf.write_text(f"buf_size 64\ncache_dir {cache}\nsecrets {secrets}\ndelay_upload 0\n")

    def mount(self) -> None:
        try:
            done = subprocess.run(["mount", "-t", "davfs", "-o", f"conf={self.conf}", self.url, str(self.mnt)],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=MOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop_daemon()
            pytest.fail("mount -t davfs did not finish within 60 s")
        if done.returncode != 0:
            msg = (done.stderr + done.stdout).strip()
            self.stop_daemon()
            if any(s in msg.lower() for s in NOT_PERMITTED):
                pytest.skip(f"mounting FUSE is not permitted here: {msg}")
            pytest.fail(f"mount -t davfs failed ({done.returncode}): {msg}")
        assert is_mounted(self.mnt)

    def umount(self) -> None:
        if is_mounted(self.mnt):
            try:
                subprocess.run(["umount", str(self.mnt)], capture_output=True, text=True, timeout=UMOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        self.stop_daemon()
        assert not is_mounted(self.mnt), "davfs2 mount still present"

    def stop_daemon(self) -> None:
        """Wait for the davfs2 daemon of this mount to exit (it uploads the
        cache at unmount); SIGTERM, then SIGKILL it by PID past the bound."""
        deadline = time.monotonic() + UMOUNT_TIMEOUT
        while davfs2_pids(self.mnt) and time.monotonic() < deadline:
            time.sleep(0.1)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = davfs2_pids(self.mnt)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + 10
            while davfs2_pids(self.mnt) and time.monotonic() < end:
                time.sleep(0.1)
        if is_mounted(self.mnt):
            subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True, timeout=UMOUNT_TIMEOUT)


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

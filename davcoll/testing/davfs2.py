"""One davfs2 mount with its own davfs2.conf, cache and secrets, for tests
and benchmarks (never imported by the server).

The README's recipe needs ``buf_size 64`` (davfs2 1.6.1's default fails
every directory listing); ``delay_upload 0`` makes davfs2 upload on close,
and a private ``conf=`` keeps the system's /etc/davfs2 out of it.  When root
mounts, davfs2 drops to its own user, so the cache belongs to group davfs2
and every directory above it must be reachable (callers use a 0755 work
dir, not pytest's 0700 tmp_path).

Callers decide what a refusal means: the kernel refusing FUSE (containers
without CAP_SYS_ADMIN) raises ``MountNotPermitted`` (a test skips, a
benchmark says "skipped"); anything else raises ``RuntimeError``.  Every wait
is bounded and a daemon left running is stopped by its PID.
"""

from __future__ import annotations

import grp
import os
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["Davfs2Mount", "MountNotPermitted", "davfs2_pids", "is_mounted"]

MOUNT_TIMEOUT = 60.0
# Kernel/FUSE refusals that mean "not permitted here", not a server bug.
NOT_PERMITTED = ("not permitted", "permission denied", "fuse device", "/dev/fuse", "fuse: device not found",
                 "no such device", "must be superuser", "mounting failed")


class MountNotPermitted(Exception):
    """The system refuses the FUSE mount; ``detail`` is mount's own output."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"mounting davfs2 is not permitted here: {detail}")
        self.detail = detail


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
        return any(len(line.split()) > 1 and line.split()[1] == target for line in f)


class Davfs2Mount:
    """A davfs2 mount of ``url`` at ``work/mnt`` with ``work/davfs2.conf``,
    ``work/cache`` and ``work/secrets`` (``user`` / ``password``; servers
    that allow anonymous writes still get an entry, so mount.davfs never
    prompts).  ``umount_timeout`` bounds the unmount, during which davfs2
    uploads whatever it still holds."""

    def __init__(self, work: Path, url: str, user: str, password: str, *, umount_timeout: float = 60.0) -> None:
        self.url = url
        self.umount_timeout = umount_timeout
        self.mnt = work / "mnt"
        self.mnt.mkdir(parents=True)
        cache = work / "cache"
        cache.mkdir()
        try:  # davfs2's own user must reach its cache (see mount.davfs(8))
            os.chown(cache, 0, grp.getgrnam("davfs2").gr_gid)
        except KeyError:
            pass
        cache.chmod(0o775)
        secrets = work / "secrets"
        secrets.write_text(f"{self.mnt} {user} {password}\n")  # keyed by mount point
        secrets.chmod(0o600)
        self.conf = work / "davfs2.conf"
        # use_locks stays on (the default).
        self.conf.write_text(f"buf_size 64\ncache_dir {cache}\nsecrets {secrets}\ndelay_upload 0\n")

    def mount(self) -> None:
        """Mount; ``MountNotPermitted`` if FUSE is refused, else ``RuntimeError``."""
        try:
            done = subprocess.run(["mount", "-t", "davfs", "-o", f"conf={self.conf}", self.url, str(self.mnt)],
                                  check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=MOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop_daemon(0)
            raise RuntimeError(f"mount -t davfs {self.url} did not finish within {MOUNT_TIMEOUT:.0f} s") from None
        if done.returncode != 0:
            msg = (done.stderr + done.stdout).strip()
            self.stop_daemon(0)
            if any(s in msg.lower() for s in NOT_PERMITTED):
                raise MountNotPermitted(msg)
            raise RuntimeError(f"mount -t davfs failed ({done.returncode}): {msg}")
        if not is_mounted(self.mnt):
            raise RuntimeError("mount -t davfs returned 0 but nothing is mounted")

    def umount(self) -> None:
        """Unmount and wait for the daemon to finish its uploads and exit."""
        if is_mounted(self.mnt):
            try:
                subprocess.run(["umount", str(self.mnt)], check=False, capture_output=True, text=True,
                               timeout=self.umount_timeout)
            except subprocess.TimeoutExpired:
                pass
        self.stop_daemon()

    def stop_daemon(self, grace: float | None = None) -> None:
        """Wait up to ``grace`` s (default ``umount_timeout``) for this mount's
        daemon to exit (it uploads the cache at unmount); then SIGTERM and
        SIGKILL it by PID, and lazily unmount what is left."""
        deadline = time.monotonic() + (self.umount_timeout if grace is None else grace)
        while davfs2_pids(self.mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
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
            subprocess.run(["umount", "-l", str(self.mnt)], check=False, capture_output=True, timeout=60)

"""Server processes for the benchmarks and their memory use.

Every server runs as its own child process on a free 127.0.0.1 port, so
the benchmark client never shares a GIL with it and its resident memory can
be read from ``/proc``.  ``VmHWM`` is the kernel's exact peak RSS of the
process since it started; ``RssSampler`` also polls ``VmRSS`` (20 Hz by
default) for the peak over one interval of a long-lived process.

Processes are stopped by their own pid only (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, ...), in KiB."""
    with open(f"/proc/{pid}/status", "rb") as fh:
        for line in fh:
            if line.startswith(field.encode() + b":"):
                return int(line.split()[1])
    raise KeyError(field)


class ServerProc:
    """A WebDAV server child process; ``url`` ends with ``/``."""

    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path, *, ready_path: str = "/",
                 env: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> None:
        self.name = name
        self.cmd = cmd
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.log_path = log_path
        self.ready_path = ready_path
        self.env = {**os.environ, **(env or {})}
        self.headers = dict(headers or {})  # sent by the client with every request (auth)
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> "ServerProc":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=str(REPO))
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("OPTIONS" if self.ready_path == "/" else "GET", self.ready_path, headers=self.headers)
                c.getresponse().read()
                c.close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} did not start; log:\n{self.log_tail()}")
                time.sleep(0.05)

    def rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmRSS")

    def hwm_kib(self) -> int:
        return proc_status_kib(self.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (all threads)."""
        with open(f"/proc/{self.pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cpu_ns(self) -> int:
        """CPU time of all the process's threads in nanoseconds (from each
        thread's schedstat: fine enough to charge single requests, where
        ``cpu_seconds`` counts 10 ms clock ticks)."""
        total = 0
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/schedstat", "rb") as fh:
                    total += int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that just ended
        return total

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> "ServerProc":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def davcoll_server(data_dir: Path, log_dir: Path, *, extra: list[str] | None = None,
                   headers: dict[str, str] | None = None, name: str = "davcoll") -> ServerProc:
    """``davcoll serve`` (embedded backend unless ``extra`` says otherwise)."""
    port = free_port()
    cmd = [sys.executable, "-m", "davcoll.cli", "serve", "--data-dir", str(data_dir),
           "--listen", f"127.0.0.1:{port}", *(extra or ["--anonymous", "write"])]
    return ServerProc(name, cmd, port, log_dir / f"{name}-{port}.log", ready_path="/_health", headers=headers)


def reference_server(root: Path, log_dir: Path, *, extra: list[str] | None = None) -> ServerProc:
    """WsgiDAV FilesystemProvider on ``root`` (bench/refserver.py, ``extra``: its options)."""
    port = free_port()
    cmd = [sys.executable, str(HERE / "refserver.py"), "--root", str(root), "--listen", f"127.0.0.1:{port}",
           *(extra or [])]
    return ServerProc("reference", cmd, port, log_dir / f"reference-{port}.log")


class RssSampler:
    """Peak VmRSS of a process over a ``with`` block, polled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            self.peak_kib = max(self.peak_kib, proc_status_kib(self.pid, "VmRSS"))
        except (OSError, KeyError):
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

"""Real davcoll servers for integration tests.

``running_server`` builds the app in-process and serves it with cheroot on a
free 127.0.0.1 port in a background thread (fast, and tests can reach the
backend).  ``ServerProcess`` runs ``davcoll serve`` as a separate process,
for tests that need a real process (kill -9, two instances).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import requests

from davcoll.config import load_config
from davcoll.server import App, build_app, make_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Running:
    def __init__(self, app: App, url: str) -> None:
        self.app = app
        self.url = url  # ends with "/"

    def u(self, path: str = "") -> str:
        return self.url + path.lstrip("/")


@contextlib.contextmanager
def running_server(data_dir: str | Path, *, backend_impl: Any = None, **overrides: Any) -> Iterator[Running]:
    """Serve davcoll in-process; ``backend_impl`` replaces the configured backend."""
    overrides.setdefault("anonymous", "write")
    port = free_port()
    cfg = load_config(None, data_dir=str(data_dir), listen=f"127.0.0.1:{port}", **overrides)
    app = build_app(cfg, backend=backend_impl)
    server = make_server(app, "127.0.0.1", port, threads=32, timeout=30)
    server.prepare()
    t = threading.Thread(target=server.serve, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url + "_health")
        yield Running(app, url)
    finally:
        server.stop()
        t.join(timeout=10)
        app.close()


class ServerProcess:
    """``davcoll serve`` in a child process (stdout/stderr captured to files)."""

    def __init__(self, data_dir: str | Path, *, port: int | None = None, args: list[str] | None = None,
                 env: dict[str, str] | None = None, log_dir: str | Path | None = None) -> None:
        self.port = port or free_port()
        self.data_dir = str(data_dir)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = args or []
        self.env = {**os.environ, **(env or {})}
        log_dir = Path(log_dir or data_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        cmd = [sys.executable, "-m", "davcoll.cli", "serve", "--data-dir", self.data_dir,
               "--listen", f"127.0.0.1:{self.port}", *self.args]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        wait_http(self.url + "_health")
        return self

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill9()
        if getattr(self, "_log", None):
            self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

"""Slow and idle connections cannot stop the server (issue 11 §1).

Every test runs a real server on 127.0.0.1 and opens raw sockets from the same
address as the "good" client: silent connections (connect, send nothing),
slow-header connections (a request head trickled a byte at a time, never
finished) and stalled bodies (a PUT whose body stops).  A fresh request must
still be answered promptly (generous bound: 2 s; the issue asks < 1 s and
bench/bench_slowloris.py measures it at full scale).
Before the fix, 32 workers (the test server's pool) were all held by the
first silent connections and the fresh request timed out.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Iterator

from server_util import running_server

FRESH_BOUND = 2.0  # seconds; the bound is 1 s on an unloaded machine


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _status_of(s: socket.socket, timeout: float) -> int | None:
    """Read one response head from ``s``; its status, or None on close/timeout."""
    s.settimeout(timeout)
    buf = b""
    try:
        while b"\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                return None
            buf += chunk
    except (TimeoutError, socket.timeout, ConnectionResetError):
        return None
    return int(buf.split(b" ", 2)[1])


def fresh_request(port: int, path: str = "/_health", timeout: float = 8.0) -> tuple[int | None, float]:
    """A new connection's GET: (status, seconds until the status line)."""
    t0 = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return None, time.monotonic() - t0
    with s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        status = _status_of(s, timeout)
    return status, time.monotonic() - t0


class Attack:
    """Bad connections held open from 127.0.0.1 (all closed on exit)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.silent: list[socket.socket] = []
        self.slow: list[socket.socket] = []
        self.stalled: list[socket.socket] = []

    def open(self, silent: int, slow: int, stalled: int) -> None:
        for _ in range(silent):
            self.silent.append(_connect(self.port))
        for _ in range(slow):
            s = _connect(self.port)
            s.sendall(b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            self.slow.append(s)
        for i in range(stalled):
            s = _connect(self.port)
            s.sendall(b"PUT /c/stalled-%d.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n0123456789" % i)
            self.stalled.append(s)

    def trickle(self) -> None:
        """One more header byte on every slow-header connection."""
        for s in self.slow:
            with contextlib.suppress(OSError):
                s.send(b"a")

    def all(self) -> list[socket.socket]:
        return self.silent + self.slow + self.stalled

    def close(self) -> None:
        for s in self.all():
            s.close()


@contextlib.contextmanager
def attack(port: int, silent: int = 0, slow: int = 0, stalled: int = 0) -> Iterator[Attack]:
    a = Attack(port)
    try:
        a.open(silent, slow, stalled)
        yield a
    finally:
        a.close()


def _closed_by_server(s: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """Wait (bounded) until the server closes ``s``; (closed?, bytes it sent)."""
    s.settimeout(timeout)
    got = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return True, got
            got += chunk
    except (TimeoutError, socket.timeout):
        return False, got
    except ConnectionResetError:
        return True, got


def _mkcol(port: int, path: str) -> int | None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"MKCOL {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        return _status_of(s, 10)


def test_fresh_request_answered_while_many_bad_connections_are_open(tmp_path):
    """200 silent + 200 slow-header + 50 stalled-body connections from the
    same address as the good client; the pool starts with 32 workers."""
    with running_server(tmp_path / "d") as srv:
        port = int(srv.url.rsplit(":", 1)[1].strip("/"))
        assert _mkcol(port, "/c/") == 201
        with attack(port, silent=200, slow=200, stalled=50) as a:
            for _ in range(3):
                a.trickle()
                status, elapsed = fresh_request(port)
                assert status == 200 and elapsed < FRESH_BOUND, (status, elapsed)
            # a write still goes through too
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"PUT /c/ok.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                assert _status_of(s, FRESH_BOUND * 4) == 201
            status, elapsed = fresh_request(port, "/c/ok.txt")
            assert status == 200 and elapsed < FRESH_BOUND
            # the server still holds the bad connections (it did not simply drop them)
            assert sum(1 for s in a.silent[-20:] if not _closed_by_server(s, 0.01)[0]) == 20


def test_silent_and_slow_header_connections_are_cut_at_the_header_deadline(tmp_path):
    with running_server(tmp_path / "d", header_timeout=1.0) as srv:
        port = int(srv.url.rsplit(":", 1)[1].strip("/"))
        with attack(port, silent=3, slow=3) as a:
            deadline = time.monotonic() + 10
            for s in a.silent:
                closed, got = _closed_by_server(s, max(0.1, deadline - time.monotonic()))
                assert closed and got == b""
            for s in a.slow:
                a.trickle()  # still trickling: the deadline counts from the first byte, not the last
                closed, got = _closed_by_server(s, max(0.1, deadline - time.monotonic()))
                assert closed and got.startswith(b"HTTP/1.1 408 "), got[:80]
            assert time.monotonic() < deadline


def test_head_in_pieces_within_the_deadline_is_served(tmp_path):
    with running_server(tmp_path / "d", header_timeout=5.0) as srv:
        port = int(srv.url.rsplit(":", 1)[1].strip("/"))
        with _connect(port) as s:
            for piece in (b"GET /_hea", b"lth HTTP/1.1\r\nHo", b"st: 127.0.0.1\r\n", b"Connection: close\r\n", b"\r\n"):
                s.sendall(piece)
                time.sleep(0.05)
            assert _status_of(s, 5) == 200


def test_keep_alive_and_pipelining_still_work(tmp_path):
    with running_server(tmp_path / "d") as srv:
        port = int(srv.url.rsplit(":", 1)[1].strip("/"))
        assert _mkcol(port, "/k/") == 201
        with _connect(port) as s:
            # the body arrives in the same packet as the head; a second request follows in it too
            s.sendall(b"PUT /k/a.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello"
                      b"GET /k/a.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            s.settimeout(10)
            buf = b""
            while buf.count(b"HTTP/1.1 ") < 2 or not buf.endswith(b"hello"):
                chunk = s.recv(65536)
                assert chunk, buf
                buf += chunk
            assert buf.startswith(b"HTTP/1.1 201 ") and b"\r\n\r\nhello" in buf
            # the connection stays usable after an idle pause (it waits without a worker)
            time.sleep(0.3)
            s.sendall(b"GET /k/a.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert _status_of(s, 10) == 200


def test_per_address_cap_closes_the_oldest_idle_connection(tmp_path):
    """Past the per-address cap a new connection is still accepted; the
    address's oldest waiting connection is closed to make room."""
    with running_server(tmp_path / "d", max_connections_per_address=20) as srv:
        port = int(srv.url.rsplit(":", 1)[1].strip("/"))
        with attack(port, silent=30) as a:
            status, elapsed = fresh_request(port)
            assert status == 200 and elapsed < FRESH_BOUND
            # (one of the evictions may hit an idle keep-alive connection left by the start-up check)
            oldest = [_closed_by_server(s, 2)[0] for s in a.silent[:10]]
            assert all(oldest[:9])
            newest = [_closed_by_server(s, 0.01)[0] for s in a.silent[-15:]]
            assert not any(newest)


@contextlib.contextmanager
def own_server(data_dir, *, threads: int = 4, timeout: int = 30, **overrides) -> Iterator[int]:
    """A server built here (running_server fixes timeout=30 and speaks plain HTTP only); yields its port."""
    import threading

    from davcoll.config import load_config
    from davcoll.server import build_app, make_server
    from server_util import free_port

    port = free_port()
    cfg = load_config(None, data_dir=str(data_dir), listen=f"127.0.0.1:{port}", anonymous="write", **overrides)
    app = build_app(cfg)
    server = make_server(app, "127.0.0.1", port, threads=threads, timeout=timeout)
    server.prepare()
    t = threading.Thread(target=server.serve, daemon=True)
    t.start()
    try:
        yield port
    finally:
        server.stop()
        t.join(timeout=10)
        app.close()


def test_stalled_bodies_time_out_and_free_their_workers(tmp_path):
    """A body that stops is cut after the idle timeout (``timeout``)."""
    with own_server(tmp_path / "d", threads=4, timeout=1) as port:
        assert _mkcol(port, "/c/") == 201
        with attack(port, stalled=10) as a:
            status, elapsed = fresh_request(port)
            assert status == 200 and elapsed < FRESH_BOUND
            for s in a.stalled:
                closed, _ = _closed_by_server(s, 10)
                assert closed
        status, _ = fresh_request(port, "/c/stalled-0.bin")
        assert status == 404  # nothing stored for a body that never arrived


def test_many_connections_waiting_cost_no_worker(tmp_path):
    """More waiting connections than workers, each later finishing its
    request: all are answered (none was starved or dropped)."""
    with running_server(tmp_path / "d") as srv:
        port = int(srv.url.rsplit(":", 1)[1].strip("/"))
        socks = [_connect(port) for _ in range(100)]
        try:
            for s in socks:
                s.sendall(b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            ok = 0
            for s in socks:
                ok += _status_of(s, 10) == 200
            assert ok == 100
        finally:
            for s in socks:
                s.close()


def test_tls_handshakes_do_not_block_the_server(tmp_path):
    """cheroot ran the TLS handshake in its only accepting thread, blocking
    for up to ``timeout``: one silent TLS client stopped every other one.
    Handshakes now run in the selector without blocking."""
    import ssl

    from davcoll.testing.fake_arvados import self_signed_cert

    cert, key = self_signed_cert(tmp_path / "tls")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with own_server(tmp_path / "d", tls_cert=cert, tls_key=key, header_timeout=1.0) as port:
        with attack(port, silent=50) as a:
            a.silent[0].sendall(b"\x16\x03\x01\x02\x00\x01")  # half a ClientHello
            for _ in range(2):
                t0 = time.monotonic()
                with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                    with ctx.wrap_socket(raw) as s:
                        s.sendall(b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                        assert _status_of(s, 10) == 200
                assert time.monotonic() - t0 < FRESH_BOUND
            # silent TLS clients are cut at the header deadline like plain ones
            assert _closed_by_server(a.silent[1], 10)[0]

"""The upload read path (issue 14 §3): large body reads bypass cheroot's
pure-Python buffer, and must still never read past the body (pipelined
requests on the same connection), deliver every byte in order (Content-Length
and chunked, chunk boundaries anywhere), and close a connection whose body
broke off instead of reading the rest of it as a new request."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from server_util import running_server


class _Responses:
    """Responses read off one socket in order (pipelined replies may arrive
    in one recv, so leftovers are kept for the next call)."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.buf = b""

    def _more(self) -> None:
        chunk = self.s.recv(1 << 20)
        assert chunk, f"connection closed early: {self.buf[:200]!r}"
        self.buf += chunk

    def next(self) -> tuple[int, bytes]:
        """One response (Content-Length bodies only): (status, body)."""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split()[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body


def _recv_response(s: socket.socket) -> tuple[int, bytes]:
    return _Responses(s).next()


@pytest.fixture
def srv(tmp_path):
    with running_server(tmp_path / "d") as running:
        port = int(running.url.rsplit(":", 1)[1].strip("/"))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"MKCOL /c/ HTTP/1.1\r\nHost: h\r\n\r\n")
            assert _recv_response(s)[0] == 201
        yield port


@pytest.mark.parametrize("size", [70_000, (1 << 20) + 3, (5 << 20) - 1])
def test_pipelined_requests_after_a_large_body(srv, size):
    """PUT + GET + GET sent in one go: the PUT's body reads stop exactly at
    its end, so the next requests are parsed from the right place."""
    data = os.urandom(size)
    req = (b"PUT /c/f.bin HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size) + data
    req += b"GET /c/f.bin HTTP/1.1\r\nHost: h\r\n\r\n"
    req += b"GET /_health HTTP/1.1\r\nHost: h\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv), timeout=30) as s:
        s.sendall(req)
        r = _Responses(s)
        assert r.next()[0] == 201
        status, body = r.next()
        assert status == 200 and hashlib.md5(body).digest() == hashlib.md5(data).digest()
        assert r.next()[0] == 200
        assert r.buf == b""


@pytest.mark.parametrize("chunk", [1, 4093, 1 << 20, (1 << 20) + 5])
def test_chunked_bodies_with_any_chunk_size(srv, chunk):
    size = (2 << 20) + 17 if chunk > 1 else 100_003  # 1-byte chunks: slow in cheroot's parser
    data = os.urandom(size)
    body = b"".join(b"%x\r\n" % len(data[i : i + chunk]) + data[i : i + chunk] + b"\r\n"
                    for i in range(0, size, chunk)) + b"0\r\n\r\n"
    req = b"PUT /c/ch.bin HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    req += b"GET /c/ch.bin HTTP/1.1\r\nHost: h\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv), timeout=60) as s:
        s.sendall(req)
        r = _Responses(s)
        assert r.next()[0] == 201
        status, got = r.next()
        assert status == 200 and got == data


def test_body_that_breaks_off_closes_the_connection(tmp_path):
    """A body shorter than announced, then a pause past the timeout: 408
    and the connection closed; what the client sends afterwards is never
    parsed as a request (it would be the rest of the body)."""
    import threading

    from davcoll.config import load_config
    from davcoll.server import build_app, make_server
    from server_util import free_port

    port = free_port()
    app = build_app(load_config(None, data_dir=str(tmp_path / "d"), listen=f"127.0.0.1:{port}", anonymous="write"))
    server = make_server(app, "127.0.0.1", port, threads=4, timeout=1)
    server.prepare()
    t = threading.Thread(target=server.serve, daemon=True)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"MKCOL /c/ HTTP/1.1\r\nHost: h\r\n\r\n")
            assert _recv_response(s)[0] == 201
            s.sendall(b"PUT /c/x.bin HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100_000)
            status, _ = _recv_response(s)
            assert status == 408
            s.settimeout(10)
            assert s.recv(1) == b""  # closed by the server
    finally:
        server.stop()
        t.join(timeout=10)
        app.close()

"""Strict request framing (issue 11 §5, RFC 9112).

Whitespace between a field name and its colon must be answered with 400
(RFC 9112 5.1: "Content-Length : 5" was honoured, a smuggling hazard behind
a proxy that ignores it); so must a second Host line or an HTTP/1.1 request
without Host (RFC 9112 3.2), and obsolete line folding, which cheroot turned
into a silently replaced header value (RFC 9112 5.2 allows 400).  Sent over
raw sockets to a real server; nothing may be stored by a refused PUT.
"""

from __future__ import annotations

import socket

import pytest

from server_util import running_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("framing") / "d") as s:
        port = int(s.url.rsplit(":", 1)[1].strip("/"))
        assert send(port, b"MKCOL /c/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")[0] == 201
        yield port


def send(port: int, raw: bytes) -> tuple[int | None, bytes]:
    """One request; (status, whole response) — None if closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(raw)
        buf = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except (TimeoutError, socket.timeout, ConnectionResetError):
            pass
    if not buf.startswith(b"HTTP/"):
        return None, buf
    return int(buf.split(b" ", 2)[1]), buf


def head(lines: list[bytes], body: bytes = b"", method: bytes = b"PUT", path: bytes = b"/c/f.txt",
         version: bytes = b"HTTP/1.1") -> bytes:
    return b"\r\n".join([method + b" " + path + b" " + version, *lines, b"Connection: close"]) + b"\r\n\r\n" + body


REFUSED = [
    ("content-length-space-before-colon", head([b"Host: 127.0.0.1", b"Content-Length : 5"], b"hello")),
    ("content-length-tab-before-colon", head([b"Host: 127.0.0.1", b"Content-Length\t: 5"], b"hello")),
    ("transfer-encoding-space-before-colon",
     head([b"Host: 127.0.0.1", b"Transfer-Encoding : chunked"], b"5\r\nhello\r\n0\r\n\r\n")),
    ("host-space-before-colon", head([b"Host : 127.0.0.1"], method=b"GET", path=b"/_health")),
    ("two-host-headers", head([b"Host: 127.0.0.1", b"Host: evil.example"], method=b"GET", path=b"/_health")),
    ("two-host-headers-same-value", head([b"Host: 127.0.0.1", b"Host: 127.0.0.1"], method=b"GET", path=b"/_health")),
    ("http11-without-host", head([], method=b"GET", path=b"/_health")),
    ("empty-field-name", head([b"Host: 127.0.0.1", b": x"], method=b"GET", path=b"/_health")),
    ("space-inside-field-name", head([b"Host: 127.0.0.1", b"X Y: z"], method=b"GET", path=b"/_health")),
    ("obs-fold-continuation", head([b"Host: 127.0.0.1", b"X-A: a", b" b"], method=b"GET", path=b"/_health")),
    ("obs-fold-content-length", head([b"Host: 127.0.0.1", b"X-A: a", b"\tContent-Length: 5"], b"hello")),
]


@pytest.mark.parametrize("raw", [r for _, r in REFUSED], ids=[i for i, _ in REFUSED])
def test_malformed_framing_is_refused_with_400(srv, raw):
    status, resp = send(srv, raw)
    assert status == 400, resp[:200]
    # nothing was stored by a refused PUT
    assert send(srv, head([b"Host: 127.0.0.1"], method=b"GET"))[0] == 404


def test_well_formed_requests_still_pass(srv):
    assert send(srv, head([b"Host: 127.0.0.1", b"Content-Length: 5"], b"hello", path=b"/c/ok.txt"))[0] == 201
    status, resp = send(srv, head([b"Host: 127.0.0.1"], method=b"GET", path=b"/c/ok.txt"))
    assert status == 200 and resp.endswith(b"hello")
    # HTTP/1.0 needs no Host; odd but legal field names (tokens) and empty values pass
    assert send(srv, head([], method=b"GET", path=b"/_health", version=b"HTTP/1.0"))[0] == 200
    assert send(srv, head([b"Host: 127.0.0.1", b"X_Odd.Name~1: ", b"x-lower:v"], method=b"GET", path=b"/_health"))[0] == 200
    # chunked upload
    raw = head([b"Host: 127.0.0.1", b"Transfer-Encoding: chunked"], b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", path=b"/c/ch.txt")
    assert send(srv, raw)[0] == 201
    status, resp = send(srv, head([b"Host: 127.0.0.1"], method=b"GET", path=b"/c/ch.txt"))
    assert status == 200 and resp.endswith(b"abcde")

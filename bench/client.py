"""The one HTTP client every benchmark uses, against every server.

Plain ``http.client`` on a keep-alive connection, kept cheap on the client
side: request bodies are streamed from a pool of random 1 MiB buffers
without copying them (only a small per-chunk header differs, so every MiB
of a body, and every body of a run, is distinct and no server can
deduplicate), and responses are read into one reusable 1 MiB buffer.

``Payload`` is the deterministic data generator: ``Payload(seed)`` always
yields the same bytes, so a later GET can be checked against it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import re
import struct
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Iterator

MIB = 1 << 20
_POOL_SIZE = 16
_POOL_CACHE: dict[int, list[bytes]] = {}


def _pool(pool_seed: int = 0) -> list[bytes]:
    pool = _POOL_CACHE.get(pool_seed)
    if pool is None:
        rng = random.Random(pool_seed)
        pool = _POOL_CACHE[pool_seed] = [rng.randbytes(MIB) for _ in range(_POOL_SIZE)]
    return pool


class Payload:
    """``size`` deterministic bytes for ``seed``, as pieces of at most 1 MiB.

    Piece ``i`` is 16 header bytes (seed, index) followed by the rest of a
    pooled random buffer chosen by ``(seed, i)``; pieces are never copied.
    """

    def __init__(self, seed: int, size: int) -> None:
        self.seed = seed
        self.size = size
        self._pool = _pool()

    def pieces(self, piece: int = MIB) -> Iterator[tuple[bytes, memoryview]]:
        """(header, body) pairs; their lengths add up to ``size``."""
        assert piece <= MIB and piece > 16
        left = self.size
        i = 0
        while left > 0:
            n = min(piece, left)
            head = struct.pack(">QQ", self.seed & 0xFFFFFFFFFFFFFFFF, i)[: min(16, n)]
            buf = self._pool[(self.seed * 7919 + i) % _POOL_SIZE]
            yield head, memoryview(buf)[len(head) : n]
            left -= n
            i += 1

    def bytes(self) -> bytes:
        return b"".join(h + bytes(b) for h, b in self.pieces())

    def md5(self) -> str:
        h = hashlib.md5(usedforsecurity=False)
        for head, body in self.pieces():
            h.update(head)
            h.update(body)
        return h.hexdigest()


def md5_rate(total: int, seed: int = 1) -> float:
    """Bytes/s of ``hashlib.md5`` on one core, over ``total`` bytes of the same data."""
    h = hashlib.md5(usedforsecurity=False)
    pieces = list(Payload(seed, min(total, 64 * MIB)).pieces())
    t0 = time.perf_counter()
    done = 0
    while done < total:
        for head, body in pieces:
            h.update(head)
            h.update(body)
            done += len(head) + len(body)
            if done >= total:
                break
    h.hexdigest()
    return done / (time.perf_counter() - t0)


def disk_write_rate(directory: str, total: int, seed: int = 2) -> float:
    """Bytes/s of writing ``total`` bytes sequentially (1 MiB writes) plus one fdatasync."""
    path = f"{directory}/.disk-write-probe-{seed}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for head, body in Payload(seed, total).pieces():
            os.write(fd, head)
            os.write(fd, body)
        os.fdatasync(fd)
        return total / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)


def fsync_rate(directory: str, count: int = 200) -> float:
    """Durable small writes per second: create a file, write 4 KiB, fsync, close."""
    data = Payload(3, 4096).bytes()
    paths = [f"{directory}/.fsync-probe-{i}" for i in range(count)]
    t0 = time.perf_counter()
    for p in paths:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
    rate = count / (time.perf_counter() - t0)
    for p in paths:
        os.unlink(p)
    return rate


@dataclass
class Response:
    status: int
    body: bytes
    nbytes: int
    headers: dict[str, str]
    seconds: float


def quote_path(path: str) -> str:
    return urllib.parse.quote(path, safe="/")


_RESPONSE_RE = re.compile(rb"<(?:[A-Za-z0-9_]+:)?response[\s>]")


def count_responses(multistatus: bytes) -> int:
    return len(_RESPONSE_RE.findall(multistatus))


class Client:
    """One keep-alive connection to one server (not thread-safe: one per thread)."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, timeout: float = 600.0) -> None:
        u = urllib.parse.urlsplit(base_url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.prefix = u.path.rstrip("/")
        self.base_url = base_url
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        self._buf = bytearray(MIB)

    def close(self) -> None:
        self.conn.close()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}{quote_path(path)}"

    def _start(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.conn.putrequest(method, self.prefix + quote_path(path), skip_accept_encoding=True)
        for k, v in {**self.headers, **headers}.items():
            self.conn.putheader(k, v)
        self.conn.endheaders()

    def _finish(self, t0: float, keep_body: bool, sink: Callable[[memoryview], object] | None = None) -> Response:
        resp = self.conn.getresponse()
        nbytes = 0
        chunks: list[bytes] = []
        view = memoryview(self._buf)
        while True:
            n = resp.readinto(view)
            if not n:
                break
            nbytes += n
            if sink is not None:
                sink(view[:n])
            if keep_body:
                chunks.append(bytes(view[:n]))
        seconds = time.perf_counter() - t0
        if resp.will_close:
            self.conn.close()
        return Response(resp.status, b"".join(chunks), nbytes, dict(resp.getheaders()), seconds)

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                keep_body: bool = True) -> Response:
        t0 = time.perf_counter()
        h = dict(headers or {})
        if body or method in ("PUT", "POST", "PROPFIND", "PROPPATCH"):
            h.setdefault("Content-Length", str(len(body)))
        self._start(method, path, h)
        if body:
            self.conn.send(body)
        return self._finish(t0, keep_body)

    def get(self, path: str, keep_body: bool = False, sink: Callable[[memoryview], object] | None = None) -> Response:
        """GET; the body is counted, and kept or fed to ``sink`` piece by piece if asked."""
        t0 = time.perf_counter()
        self._start("GET", path, {})
        return self._finish(t0, keep_body, sink)

    def put_payload(self, path: str, payload: Payload, *, chunked: bool = False, piece: int = MIB,
                    headers: dict[str, str] | None = None) -> Response:
        """Stream ``payload`` with Content-Length, or chunked (one HTTP chunk per piece)."""
        t0 = time.perf_counter()
        h = dict(headers or {})
        if chunked:
            h["Transfer-Encoding"] = "chunked"
        else:
            h["Content-Length"] = str(payload.size)
        self._start("PUT", path, h)
        sock = self.conn.sock
        for head, body in payload.pieces(piece):
            if chunked:
                sock.sendall(b"%x\r\n" % (len(head) + len(body)) + head)
                sock.sendall(body)
                sock.sendall(b"\r\n")
            else:
                sock.sendall(head)
                sock.sendall(body)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        return self._finish(t0, True)

    def propfind(self, path: str, depth: str = "1", body: bytes = b"") -> Response:
        h = {"Depth": depth}
        if body:
            h["Content-Type"] = "application/xml"
        return self.request("PROPFIND", path, body, h)

    def copy_move(self, method: str, src: str, dst: str, overwrite: bool = True) -> Response:
        return self.request(method, src, headers={"Destination": self.url(dst), "Overwrite": "T" if overwrite else "F"})


NAMED_PROPS = (
    b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
    b"<D:getlastmodified/><D:getcontentlength/><D:creationdate/><D:resourcetype/>"
    b"</D:prop></D:propfind>"
)


def expect(resp: Response, *ok: int, what: str = "") -> Response:
    if resp.status not in ok:
        raise RuntimeError(f"{what}: HTTP {resp.status} (expected {ok}): {resp.body[:300]!r}")
    return resp

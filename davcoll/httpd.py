"""The cheroot layer: strict HTTP framing and connections that cannot clog the server.

This module and ``davcoll/server.py`` are the only ones that import cheroot
(architecture.md's layer rule: only the process layer touches it); only
``server.py`` imports this module.

Why it exists (issue 11 §1): stock cheroot hands every accepted connection
to a worker thread before a single byte has arrived, and the worker then
blocks on the socket for up to ``timeout`` (300 s).  64 silent connections
froze the whole server.  Here instead:

* a connection holds a worker only while a complete request head has
  arrived and is being answered.  Until then (new connections and
  keep-alive connections between requests) it sits in one selector thread,
  which reads the request head without blocking and hands the connection
  to the pool only when the blank line ending the head is in;
* the head must arrive within ``header_timeout`` (counted from the
  connection, or from the first byte of a later request on a keep-alive
  connection): silent and slow-header clients are closed there (408 for a
  started head); idle keep-alive connections wait up to ``idle_timeout``;
* the worker pool grows on demand from ``threads`` up to ``max_threads``
  (a stalled request body does hold a worker, by nature: the WSGI app reads
  it synchronously; it is cut off after ``timeout`` seconds without
  progress), and shrinks back when idle;
* total and per-address connection caps never refuse a newcomer while some
  connection is merely waiting: the oldest waiting one (of the same address
  at the per-address cap) is closed to make room, so a flood from one
  address costs the flooder its own oldest idle connections, not the
  service.  TLS handshakes also run in the selector, without blocking.
"""

from __future__ import annotations

import _pyio
import collections
import errno
import logging
import re
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from cheroot import makefile as cheroot_makefile
from cheroot import server as cheroot_server
from cheroot import wsgi as cheroot_wsgi
from cheroot.workers import threadpool

log = logging.getLogger("davcoll.httpd")


@dataclass(frozen=True)
class Limits:
    """Connection limits (see Config for the meaning and defaults)."""

    header_timeout: float = 15.0
    idle_timeout: float = 60.0
    max_threads: int = 1024
    max_connections: int = 8192
    max_connections_per_address: int = 4096


# --- strict HTTP framing -------------------------------------------------------
# cheroot keeps the last of several Content-Length lines, accepts "+5" and
# Content-Length together with Transfer-Encoding (body read as chunked), and
# parses chunk sizes with int(x, 16), so "-5" ends the body early (an empty
# file was stored for a malformed upload) and "0x", "_" or "+" pass.  It also
# strips whitespace between a field name and its colon ("Content-Length : 5"
# was honoured), keeps the last of two Host lines and serves HTTP/1.1 without
# Host.  Those are request-smuggling and data-integrity hazards (RFC 9112 3.2,
# 5.1, 5.2, 6.3, 7.1): refuse them with 400.  Header problems raise ValueError
# inside cheroot's header reader, which answers 400 itself; a bad chunk-size
# line raises ValueError from wsgi.input, so the upload fails and nothing is
# stored.

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SINGLE = (b"Content-Length", b"Host")


class _SingleValued(dict):
    """Header dict that refuses a second line of a header that must be single."""

    def __setitem__(self, key: bytes, value: bytes) -> None:
        if key in _SINGLE and key in self:
            raise ValueError(f"more than one {key.decode()} header")
        super().__setitem__(key, value)


class StrictHeaderReader(cheroot_server.HeaderReader):
    def __init__(self, require_host: bool = False) -> None:
        self.require_host = require_host

    def __call__(self, rfile, hdict=None):
        headers = super().__call__(_NoFolding(rfile), _SingleValued())
        cl = headers.get(b"Content-Length")
        if cl is not None and not cl.isdigit():
            raise ValueError("malformed Content-Length header")
        if cl is not None and b"Transfer-Encoding" in headers:
            raise ValueError("both Content-Length and Transfer-Encoding")
        if self.require_host and b"Host" not in headers:
            raise ValueError("HTTP/1.1 request without a Host header")
        if hdict is None:
            return dict(headers)
        hdict.update(headers)
        return hdict

    def _transform_key(self, key_name: bytes) -> bytes:
        # A field name is a token, directly followed by the colon (RFC 9112
        # 5.1: whitespace before the colon must be answered with 400).
        if not _TOKEN.fullmatch(key_name):
            raise ValueError("malformed header field name (whitespace before the colon?)")
        return key_name.title()


class _NoFolding:
    """rfile view that refuses obsolete line folding (RFC 9112 5.2 allows 400):
    cheroot would replace the folded header's value with the continuation."""

    def __init__(self, rfile) -> None:
        self._rfile = rfile

    def readline(self, size: int = -1) -> bytes:
        line = self._rfile.readline()
        if line[:1] in (b" ", b"\t"):
            raise ValueError("obsolete line folding in a header")
        return line


class StrictRequest(cheroot_server.HTTPRequest):
    def read_request_headers(self):
        # An instance attribute per request: the Host rule depends on the version.
        self.header_reader = StrictHeaderReader(require_host=self.response_protocol == "HTTP/1.1")
        return super().read_request_headers()


_CHUNK_SIZE_LINE = re.compile(rb"[0-9A-Fa-f]{1,15}(;[^\r\n]*)?\r\n")


class _ChunkLines:
    """The connection's input as cheroot's ChunkedRFile sees it: it reads
    chunk-size lines with readline(), which must be hex digits (at most
    15, so a size stays below 2**60) and an optional extension."""

    def __init__(self, rfile) -> None:
        self._rfile = rfile

    def readline(self, size: int = -1) -> bytes:
        line = self._rfile.readline()
        if not _CHUNK_SIZE_LINE.fullmatch(line):
            raise ValueError("malformed chunk-size line in chunked request body")
        return line

    def read(self, size: int = -1) -> bytes:
        return self._rfile.read(size)


class Gateway(cheroot_wsgi.Gateway_10):
    def start_response(self, status, headers, exc_info=None):
        """An application's ``Connection: close`` closes the connection
        (cheroot only sends the header): the guard adds it when a request
        body broke off mid-stream, after which the connection's position in
        the byte stream is lost, so nothing more may be read from it."""
        if any(k.lower() == "connection" and v.strip().lower() == "close" for k, v in headers):
            self.req.close_connection = True
        return super().start_response(status, headers, exc_info)

    def get_environ(self):
        req = self.req
        if req.chunked_read:
            req.rfile = cheroot_server.ChunkedRFile(_ChunkLines(req.conn.rfile), req.server.max_request_body_size)
        return super().get_environ()


# --- connections -----------------------------------------------------------------


class _PrefixedSocketIO(socket.SocketIO):
    """Socket reads that first return the bytes the selector thread already
    took off the socket while it waited for a complete request head."""

    def __init__(self, sock: socket.socket, mode: str) -> None:
        super().__init__(sock, mode)
        self.prefix = bytearray()

    def readinto(self, b) -> int | None:
        if self.prefix:
            n = min(len(b), len(self.prefix))
            b[:n] = self.prefix[:n]
            del self.prefix[:n]
            return n
        return super().readinto(b)


class _Reader(cheroot_makefile.StreamReader):
    #: Reads at least this large (request bodies: WsgiDAV asks for 1 MiB)
    #: take what is buffered, then go straight to the socket, see ``read``.
    DIRECT_READ = 64 * 1024

    def __init__(self, sock: socket.socket, mode: str = "rb", bufsize: int = _pyio.DEFAULT_BUFFER_SIZE) -> None:
        _pyio.BufferedReader.__init__(self, _PrefixedSocketIO(sock, mode), bufsize)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        """Large body reads bypass cheroot's pure-Python ``BufferedReader``,
        which copies every byte twice more (bytearray to bytes, then a join):
        receiving 1 GiB in 1 MiB reads over a socketpair cost 0.7 s of CPU
        that way and 0.2 s reading into one buffer (chunked: 0.33 vs 0.22 s;
        issue 14 §3: the CPU an upload spends besides md5 is what keeps it
        from the md5 bound).  Same blocking, timeout and end-of-file
        behaviour as a buffered read; never reads past ``size``."""
        buffered = len(self._read_buf) - self._read_pos  # what cheroot's has_data looks at
        if size is None or size < self.DIRECT_READ or buffered >= size:
            return super().read(size)
        buf = bytearray(size)
        view = memoryview(buf)
        if buffered:
            view[:buffered] = super().read(buffered)  # counted there
        have = buffered
        try:
            while have < size:
                # The prefix first, then the socket; a timeout marks the
                # socket timed out as a buffered read would (the connection
                # is then closed, never read again mid-body).
                n = self.raw.readinto(view[have:])
                if not n:
                    break
                have += n
        finally:
            view.release()
            self.bytes_read += have - buffered
        return bytes(buf) if have == size else bytes(buf[:have])

    def has_data(self) -> bool:
        return super().has_data() or bool(self.raw.prefix)

    def take_unread(self) -> bytearray:
        """Everything read from the socket but not yet consumed (a pipelined
        request), handed back to the selector thread as the next head."""
        out = bytearray()
        if super().has_data():
            buffered = self.peek()  # buffered bytes only: no socket read while some are buffered
            out += self.read(len(buffered))
        out += self.raw.prefix
        self.raw.prefix.clear()
        return out


def _makefile(sock: socket.socket, mode: str = "r", bufsize: int = _pyio.DEFAULT_BUFFER_SIZE):
    if "r" in mode:
        return _Reader(sock, mode, bufsize)
    return cheroot_makefile.StreamWriter(sock, mode, bufsize)


class Connection(cheroot_server.HTTPConnection):
    """A cheroot connection that can wait in the selector for its request head."""

    RequestHandlerClass = StrictRequest
    manager: "ConnectionManager | None" = None

    def __init__(self, server, sock, makefile=_makefile) -> None:
        super().__init__(server, sock, _makefile)
        self.head = bytearray()  # bytes of the next request read by the selector thread
        self.scanned = 0  # head[:scanned] holds no end-of-head marker
        self.deadline = 0.0
        self.head_started = False
        self.kept_alive = False  # True once a request has been answered on it
        self.counted = False

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.manager is not None:
                self.manager.forget(self)


class _Handshake:
    """A TLS connection whose handshake the selector thread is still driving."""

    def __init__(self, sock: ssl.SSLSocket, addr: Any, deadline: float) -> None:
        self.socket = sock
        self.addr = addr
        self.remote_addr = addr[0] if isinstance(addr, tuple) else ""
        self.deadline = deadline
        self.counted = False
        self.manager: ConnectionManager | None = None

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            if self.manager is not None:
                self.manager.forget(self)


_LISTENER = object()
_WAKE = object()
_HEAD_END = (b"\n\r\n", b"\n\n")  # a blank line ends the head (bare LF: cheroot answers 400)
_ACCEPT_BATCH = 256
_SWEEP_INTERVAL = 0.25
_SHRINK_INTERVAL = 5.0
_SPARE_WORKERS = 16


class ConnectionManager:
    """Replaces cheroot's ConnectionManager: one selector thread accepts,
    reads request heads, runs TLS handshakes and enforces deadlines and caps.
    Connections go to the worker pool only with a complete head."""

    def __init__(self, server: "Server", limits: Limits) -> None:
        self.server = server
        self.limits = limits
        self._sel = selectors.DefaultSelector()
        self._listener = server.socket
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, _LISTENER)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._returned: collections.deque[Connection] = collections.deque()
        # connections (and TLS handshakes) in the selector, oldest first
        self._waiting: dict[Any, None] = {}
        self._waiting_by_addr: dict[str, dict[Any, None]] = {}
        self._lock = threading.Lock()
        self._open = 0
        self._per_addr: collections.Counter[str] = collections.Counter()
        self._stop_requested = False
        self._serving = False
        self._next_sweep = 0.0
        self._next_shrink = time.monotonic() + _SHRINK_INTERVAL
        self._emfile_logged = 0.0
        self.evicted = 0
        self.timed_out = 0

    # -- accounting (any thread) --
    def _count(self, item: Any) -> None:
        with self._lock:
            item.counted = True
            self._open += 1
            self._per_addr[item.remote_addr] += 1

    def forget(self, item: Any) -> None:
        with self._lock:
            if not item.counted:
                return
            item.counted = False
            self._open -= 1
            n = self._per_addr[item.remote_addr] - 1
            if n > 0:
                self._per_addr[item.remote_addr] = n
            else:
                del self._per_addr[item.remote_addr]

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def can_add_keepalive_connection(self) -> bool:
        return self._open <= self.limits.max_connections

    # -- cheroot's interface --
    def put(self, conn: Connection) -> None:
        """A worker finished a request and keeps the connection: back to the selector."""
        self._returned.append(conn)
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or we are closing)

    def stop(self) -> None:
        self._stop_requested = True
        self._wake()
        while self._serving:
            time.sleep(0.01)

    def close(self) -> None:
        for item in list(self._waiting):
            self._unwait(item)
            _quiet_close(item)
        while self._returned:
            _quiet_close(self._returned.popleft())
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def run(self, expiration_interval: float) -> None:  # noqa: ARG002 (deadlines are our own)
        self._serving = True
        try:
            while not self._stop_requested:
                self._run_once()
        finally:
            self._serving = False

    # -- the selector loop --
    def _run_once(self) -> None:
        try:
            events = self._sel.select(_SWEEP_INTERVAL)
        except OSError:
            events = []
        for key, mask in events:
            data = key.data
            try:
                if data is _LISTENER:
                    self._accept()
                elif data is _WAKE:
                    self._drain_wake()
                elif isinstance(data, _Handshake):
                    self._handshake(data)
                else:
                    self._read_head(data)
            except Exception:  # one bad connection must not stop the loop
                log.exception("connection handling failed")
                if data is not _LISTENER and data is not _WAKE:
                    self._unwait(data)
                    _quiet_close(data)
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_INTERVAL
            self._sweep(now)
        if now >= self._next_shrink:
            self._next_shrink = now + _SHRINK_INTERVAL
            self.server.requests.shrink_idle(_SPARE_WORKERS)

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: make room, the backlog is retried next round.
                    self._evict_oldest(None)
                    now = time.monotonic()
                    if now - self._emfile_logged > 10:
                        self._emfile_logged = now
                        log.warning("out of file descriptors (%s): closing the oldest waiting connection", e.strerror)
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            sock.setblocking(False)
            remote = addr[0] if isinstance(addr, tuple) else ""
            if not self._admit(remote):
                _refuse(sock)
                continue
            deadline = time.monotonic() + self._header_timeout()
            adapter = self.server.ssl_adapter
            if adapter is not None:
                tls = adapter.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                hs = _Handshake(tls, addr, deadline)
                hs.manager = self
                self._count(hs)
                self._wait(hs, selectors.EVENT_READ)
                self._handshake(hs)
                continue
            conn = self._new_conn(sock, addr, {})
            conn.deadline = deadline
            self._wait(conn, selectors.EVENT_READ)

    def _header_timeout(self) -> float:
        return min(self.limits.header_timeout, float(self.server.timeout))

    def _admit(self, addr: str) -> bool:
        """Room for one more connection from ``addr``?  Makes room by closing
        the oldest waiting connection (of ``addr`` at the per-address cap)."""
        with self._lock:
            mine = self._per_addr.get(addr, 0)
            total = self._open
        if mine >= self.limits.max_connections_per_address:
            return self._evict_oldest(addr)
        if total >= self.limits.max_connections:
            return self._evict_oldest(None)
        return True

    def _evict_oldest(self, addr: str | None) -> bool:
        pool = self._waiting if addr is None else self._waiting_by_addr.get(addr, {})
        for item in pool:
            self._unwait(item)
            _quiet_close(item)
            self.evicted += 1
            return True
        return False

    def _new_conn(self, sock: socket.socket, addr: Any, ssl_env: dict) -> Connection:
        conn = self.server.ConnectionClass(self.server, sock, _makefile)
        if isinstance(addr, tuple):
            conn.remote_addr, conn.remote_port = addr[0], addr[1]
        else:
            conn.remote_addr, conn.remote_port = "", 0
        conn.ssl_env = ssl_env
        conn.manager = self
        conn.last_used = time.time()
        self._count(conn)
        return conn

    def _wait(self, item: Any, events: int) -> None:
        self._waiting[item] = None
        self._waiting_by_addr.setdefault(item.remote_addr, {})[item] = None
        self._sel.register(item.socket, events, item)

    def _unwait(self, item: Any) -> None:
        if self._waiting.pop(item, 0) is None:
            by_addr = self._waiting_by_addr.get(item.remote_addr)
            if by_addr is not None:
                by_addr.pop(item, None)
                if not by_addr:
                    del self._waiting_by_addr[item.remote_addr]
            try:
                self._sel.unregister(item.socket)
            except (KeyError, ValueError):
                pass

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while self._returned:
            conn = self._returned.popleft()
            if self._stop_requested:
                _quiet_close(conn)
                continue
            conn.socket.settimeout(0.0)
            conn.head = conn.rfile.take_unread()
            conn.scanned = 0
            conn.last_used = time.time()
            conn.head_started = bool(conn.head)
            conn.kept_alive = True
            now = time.monotonic()
            conn.deadline = now + (self._header_timeout() if conn.head else self.limits.idle_timeout)
            if conn.head and self._head_complete(conn):
                self._dispatch(conn)
            else:
                self._wait(conn, selectors.EVENT_READ)

    def _handshake(self, hs: _Handshake) -> None:
        try:
            hs.socket.do_handshake()
        except ssl.SSLWantReadError:
            self._sel.modify(hs.socket, selectors.EVENT_READ, hs)
            return
        except ssl.SSLWantWriteError:
            self._sel.modify(hs.socket, selectors.EVENT_WRITE, hs)
            return
        except (ssl.SSLError, OSError):
            self._unwait(hs)
            _quiet_close(hs)
            return
        self._unwait(hs)
        self.forget(hs)
        conn = self._new_conn(hs.socket, hs.addr, self.server.ssl_adapter.get_environ(hs.socket))
        conn.deadline = hs.deadline
        self._wait(conn, selectors.EVENT_READ)
        if hs.socket.pending():
            self._read_head(conn)

    def _read_head(self, conn: Connection) -> None:
        limit = self.server.max_request_header_size + 2
        eof = False
        for _ in range(8):
            try:
                chunk = conn.socket.recv(65536)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            if not conn.head_started:
                conn.head_started = True
                if conn.kept_alive:  # a new connection's deadline already counts from the connect
                    conn.deadline = time.monotonic() + self._header_timeout()
            conn.head += chunk
            if self._head_complete(conn) or len(conn.head) >= limit:
                self._unwait(conn)
                self._dispatch(conn)
                return
            pending = getattr(conn.socket, "pending", None)
            if not (pending and pending()) and len(chunk) < 65536:
                break
        if eof:
            self._unwait(conn)
            if conn.head:
                self._dispatch(conn)  # cheroot answers the partial head with 400
            else:
                _quiet_close(conn)

    @staticmethod
    def _head_complete(conn: Connection) -> bool:
        head = conn.head
        start = max(0, conn.scanned - 2)
        if head.startswith(b"\r\n") and start == 0:
            start = 2  # one leading empty line is skipped by cheroot (RFC 9112 2.2)
        for marker in _HEAD_END:
            if head.find(marker, start) >= 0:
                return True
        conn.scanned = len(head)
        return False

    def _dispatch(self, conn: Connection) -> None:
        conn.socket.settimeout(self.server.timeout)
        conn.rfile.raw.prefix += conn.head
        conn.head = bytearray()
        conn.scanned = 0
        conn.head_started = False
        self.server.process_conn(conn)
        self.server.requests.grow_if_busy()

    def _sweep(self, now: float) -> None:
        expired = [item for item in self._waiting if item.deadline <= now]
        for item in expired:
            self._unwait(item)
            self.timed_out += 1
            if isinstance(item, Connection) and item.head_started:
                _send_quietly(item.socket, _RESPONSE_408)
            _quiet_close(item)


_RESPONSE_408 = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 39\r\n"
    b"Connection: close\r\n\r\nThe request head did not arrive in time"
)
_RESPONSE_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 32\r\n"
    b"Retry-After: 5\r\nConnection: close\r\n\r\nToo many connections; try later."
)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.settimeout(0.0)
        sock.send(data)
    except (OSError, ValueError):
        pass


def _refuse(sock: socket.socket) -> None:
    _send_quietly(sock, _RESPONSE_503)
    _quiet_close(sock)


def _quiet_close(item: Any) -> None:
    try:
        item.close()
    except (OSError, ValueError):
        pass


class GrowingPool(threadpool.ThreadPool):
    """cheroot's pool, growing without pausing the selector thread (cheroot's
    grow() sleeps 0.1 s per thread until it runs) and shrinking when idle."""

    def grow(self, amount: int) -> None:
        budget = max(int(min(self.max, 1 << 30)) - len(self._threads), 0)
        for _ in range(min(amount, budget)):
            self._threads.append(self._spawn_worker())

    def grow_if_busy(self) -> None:
        if self.idle <= self._queue.qsize():
            self.grow(1)

    def shrink_idle(self, spare: int) -> None:
        extra = self.idle - spare
        if extra > 0 and len(self._threads) > self.min:
            self.shrink(extra)


class Server(cheroot_wsgi.Server):
    """cheroot's WSGI server with the connection manager and pool above."""

    ConnectionClass = Connection

    def __init__(self, bind_addr, wsgi_app, *, threads: int, timeout: float, limits: Limits, **kw: Any) -> None:
        super().__init__(bind_addr, wsgi_app, numthreads=threads, timeout=timeout, **kw)
        self.limits = limits
        self.requests = GrowingPool(self, min=max(1, threads), max=max(threads, limits.max_threads))
        self.gateway = Gateway

    def prepare(self) -> None:
        super().prepare()
        stock = self._connections
        stock._selector.close()  # cheroot's own manager never runs
        self._connections = ConnectionManager(self, self.limits)

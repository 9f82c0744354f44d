"""Prometheus metrics served at ``/_metrics``.

Requests by method and status, request and sync latency, bytes in and out,
commit failures, block cache hits/misses (and the hit ratio), and bytes
waiting in upload buffers.  A private registry keeps tests independent.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Label values come from a fixed set so a client cannot grow the registry:
# every made-up method would otherwise add series (5,000 invented methods
# cost 36 MiB and a 7 MB scrape).  Methods are the HTTP and WebDAV methods
# davcoll serves (plus TRACE/CONNECT/PATCH so probes are told apart);
# anything else counts as "other".  Statuses are the codes HTTP registers;
# anything else counts as its class ("5xx") or "other".
KNOWN_METHODS = frozenset({
    "GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
    "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK",
})
_KNOWN_STATUSES = frozenset(int(s) for s in HTTPStatus)


def method_label(method: str) -> str:
    """The ``method`` label: a known method, or ``other``."""
    return method if method in KNOWN_METHODS else "other"


def status_label(status: int) -> str:
    """The ``status`` label: a registered code, its class, or ``other``
    (0 means no response was started, e.g. the client went away)."""
    if status in _KNOWN_STATUSES:
        return str(status)
    if 100 <= status <= 599:
        return f"{status // 100}xx"
    return "other"


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, cache_stats: Callable[[], dict] | None = None, buffered: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("davcoll_requests", "HTTP requests", ["method", "status"], registry=r)
        self.latency = Histogram("davcoll_request_seconds", "Request latency", ["method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.sync = Histogram("davcoll_sync_seconds", "Commit (manifest sync) latency", buckets=_LATENCY_BUCKETS, registry=r)
        self.sync_failures = Counter("davcoll_sync_failures", "Commits that failed and were rolled back", registry=r)
        self.bytes_in = Counter("davcoll_bytes_in", "Request body bytes received", registry=r)
        self.bytes_out = Counter("davcoll_bytes_out", "Response body bytes sent", registry=r)
        stats = cache_stats or (lambda: {})
        Gauge("davcoll_block_cache_hits", "Block cache hits", registry=r).set_function(lambda: stats().get("hits", 0))
        Gauge("davcoll_block_cache_misses", "Block cache misses", registry=r).set_function(lambda: stats().get("misses", 0))
        Gauge("davcoll_block_cache_bytes", "Bytes held by the block cache", registry=r).set_function(
            lambda: stats().get("bytes_cached", 0)
        )

        def ratio() -> float:
            s = stats()
            total = s.get("hits", 0) + s.get("misses", 0)
            return s.get("hits", 0) / total if total else 0.0

        Gauge("davcoll_block_cache_hit_ratio", "Block cache hit ratio", registry=r).set_function(ratio)
        buf = buffered or (lambda: 0)
        Gauge("davcoll_buffered_bytes", "Upload bytes waiting in memory buffers", registry=r).set_function(buf)

    def observe_request(self, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        method = method_label(method)
        self.requests.labels(method, status_label(status)).inc()
        self.latency.labels(method).observe(seconds)
        self.bytes_in.inc(bytes_in)
        self.bytes_out.inc(bytes_out)

    def observe_sync(self, seconds: float) -> None:
        self.sync.observe(seconds)

    def commit_failed(self) -> None:
        self.sync_failures.inc()

    def render(self) -> str:
        return generate_latest(self.registry).decode()

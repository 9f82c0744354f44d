"""A block store wrapper that fails on demand, for reliability tests.

Tests and benchmarks wrap a real store (memory or local) and then arrange
trouble: "the next two puts fail with a full disk", "every get fails with
probability 0.1", "each put takes 50 ms", "the next download dies after
1 MiB".  Randomness is seeded so a failing run can be replayed.

Knobs are per operation: ``"put"``, ``"get"``, ``"exists"``,
``"read_chunks"`` (failing the call itself), or ``"*"`` for all of them.
``get_range`` goes through ``get`` and so obeys the ``"get"`` knobs.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable, Iterator, Union

from ..storage.blocks import BlockStore, BlockStoreUnavailable

__all__ = ["FlakyBlockStore", "OPS"]

OPS = ("put", "get", "exists", "read_chunks")

#: An exception to raise: an instance (re-raised each time), a class, or a
#: zero-argument factory (a fresh instance per failure).
ErrorSpec = Union[BaseException, type, Callable[[], BaseException]]


def _make_error(spec: ErrorSpec, op: str) -> BaseException:
    if isinstance(spec, BaseException):
        return spec
    if isinstance(spec, type) and issubclass(spec, BaseException):
        return spec(f"injected failure in {op}")
    return spec()


def _ops(op: str) -> tuple[str, ...]:
    if op == "*":
        return OPS
    if op not in OPS:
        raise ValueError(f"unknown operation {op!r}; expected one of {OPS} or '*'")
    return (op,)


class FlakyBlockStore(BlockStore):
    """Wraps ``inner``; every call may be delayed or failed per the knobs.

    ``calls[op]`` counts calls, ``injected[op]`` counts injected failures.
    Failures are injected *before* the inner call, so an injected put
    failure stores nothing (use ``fail_after`` to fail after storing).
    """

    def __init__(self, inner: BlockStore, *, seed: int = 0) -> None:
        self.inner = inner
        # _lock guards every knob, the RNG and the counters; it is never held
        # while sleeping or calling the inner store.
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._next: dict[str, list[ErrorSpec]] = {op: [] for op in OPS}
        self._after: dict[str, list[ErrorSpec]] = {op: [] for op in OPS}
        self._prob: dict[str, tuple[float, ErrorSpec]] = {}
        self._latency: dict[str, float] = {}
        self._breaks: list[tuple[int, ErrorSpec]] = []
        self.calls: dict[str, int] = {op: 0 for op in OPS}
        self.injected: dict[str, int] = {op: 0 for op in OPS}

    # -- knobs ---------------------------------------------------------------

    def fail_next(self, op: str, count: int = 1, error: ErrorSpec = BlockStoreUnavailable) -> None:
        """The next ``count`` calls of ``op`` raise ``error`` (queued after
        any failures already scheduled)."""
        with self._lock:
            for name in _ops(op):
                self._next[name].extend([error] * count)

    def fail_after(self, op: str, count: int = 1, error: ErrorSpec = BlockStoreUnavailable) -> None:
        """The next ``count`` calls of ``op`` *do* reach the inner store and
        then raise ``error`` — e.g. a put whose block was stored but whose
        response was lost."""
        with self._lock:
            for name in _ops(op):
                self._after[name].extend([error] * count)

    def fail_randomly(self, op: str, probability: float, error: ErrorSpec = BlockStoreUnavailable) -> None:
        """Each call of ``op`` fails with ``probability`` (0 turns it off)."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        with self._lock:
            for name in _ops(op):
                if probability:
                    self._prob[name] = (probability, error)
                else:
                    self._prob.pop(name, None)

    def set_latency(self, op: str, seconds: float) -> None:
        """Sleep ``seconds`` before each call of ``op`` (and before each
        chunk of a ``read_chunks`` stream, to simulate a slow download)."""
        with self._lock:
            for name in _ops(op):
                self._latency[name] = seconds

    def break_streams(self, after_bytes: int, count: int = 1, error: ErrorSpec = BlockStoreUnavailable) -> None:
        """The next ``count`` ``read_chunks`` streams raise ``error`` in place
        of the first chunk that would follow ``after_bytes`` yielded bytes
        (0: instead of the first chunk).  A stream shorter than that ends
        normally."""
        with self._lock:
            self._breaks.extend([(after_bytes, error)] * count)

    def reset(self) -> None:
        """Remove every knob (counters are kept)."""
        with self._lock:
            for op in OPS:
                self._next[op].clear()
                self._after[op].clear()
            self._prob.clear()
            self._latency.clear()
            self._breaks.clear()

    # -- BlockStore API ----------------------------------------------------

    def put(self, data: bytes | bytearray | memoryview) -> str:
        self._before("put")
        locator = self.inner.put(data)
        self._after_call("put")
        return locator

    def get(self, locator: str) -> bytes:
        self._before("get")
        data = self.inner.get(locator)
        self._after_call("get")
        return data

    def exists(self, locator: str) -> bool:
        self._before("exists")
        found = self.inner.exists(locator)
        self._after_call("exists")
        return found

    def read_chunks(self, locator: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Call-time failures happen here; mid-stream ones while iterating."""
        self._before("read_chunks")
        stream = self.inner.read_chunks(locator, chunk_size)
        self._after_call("read_chunks")
        with self._lock:
            brk = self._breaks.pop(0) if self._breaks else None
            delay = self._latency.get("read_chunks", 0.0)
        return self._stream(stream, brk, delay)

    def close(self) -> None:
        self.inner.close()

    # -- internals -----------------------------------------------------------

    def _before(self, op: str) -> None:
        """Count the call, sleep if asked, then maybe raise."""
        with self._lock:
            self.calls[op] += 1
            delay = self._latency.get(op, 0.0)
            error = self._pick_failure(op)
        if delay:
            time.sleep(delay)
        if error is not None:
            raise _make_error(error, op)

    def _pick_failure(self, op: str) -> ErrorSpec | None:
        """Which failure (if any) this call gets.  Caller holds _lock."""
        if self._next[op]:
            self.injected[op] += 1
            return self._next[op].pop(0)
        prob = self._prob.get(op)
        if prob is not None and self._rng.random() < prob[0]:
            self.injected[op] += 1
            return prob[1]
        return None

    def _after_call(self, op: str) -> None:
        with self._lock:
            error = self._after[op].pop(0) if self._after[op] else None
            if error is not None:
                self.injected[op] += 1
        if error is not None:
            raise _make_error(error, op)

    def _stream(self, stream: Iterator[bytes], brk: tuple[int, ErrorSpec] | None, delay: float) -> Iterator[bytes]:
        """Re-yield ``stream``, breaking it as arranged; always closes it."""
        sent = 0
        try:
            for piece in stream:
                if brk is not None and sent >= brk[0]:
                    with self._lock:
                        self.injected["read_chunks"] += 1
                    raise _make_error(brk[1], "read_chunks")
                if delay:
                    time.sleep(delay)
                sent += len(piece)
                yield piece
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

"""A background pass that fills in missing portable data hashes.

Why: the embedded catalog does not compute PDHs on the write path (a PDH
hashes the whole manifest, so a small PUT into a big collection would pay
for the collection).  A lookup *by* PDH therefore cannot tell "unknown"
from "not computed yet" by looking at one index.  It used to compute every
missing PDH on the spot, under the database's write lock: any reader could
make every commit wait (issue 11 §4: 0.8 s for 20 collections × 20k files).

Now a lookup is one indexed read.  A miss answers "not found" at once and
*nudges* this indexer, which computes the missing PDHs in its own thread:
it renders each collection in a read transaction (a WAL snapshot, so
commits go on) and stores the result in a short write that waits at most
a fraction of a second for the lock.  Nudges coalesce, and passes start at
most once per ``min_interval`` seconds, so a flood of lookups of random
PDHs costs at most one pass per interval, over the collections changed
since the last one.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

__all__ = ["PdhIndexer"]

log = logging.getLogger(__name__)


class PdhIndexer:
    """Runs ``run_pass`` in a daemon thread after ``nudge`` (coalesced).

    ``run_pass`` returns how many PDHs it computed; exceptions are logged
    and the thread carries on (a busy or closed database only delays PDHs).
    """

    def __init__(self, run_pass: Callable[[], int], *, min_interval: float = 1.0, name: str = "davcoll-pdh") -> None:
        self._run_pass = run_pass
        self.min_interval = min_interval
        self._name = name
        self._cond = threading.Condition()
        self._wanted = 0  # nudges so far
        self._done = 0  # nudges covered by a finished pass
        self._closed = False
        self._thread: threading.Thread | None = None
        self.passes = 0

    def nudge(self) -> None:
        """Ask for a pass soon; never blocks on the pass itself."""
        with self._cond:
            if self._closed:
                return
            self._wanted += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every nudge so far is covered by a finished pass
        (tests and tools; a request never waits for this)."""
        with self._cond:
            target = self._wanted
            return self._cond.wait_for(lambda: self._done >= target or self._closed, timeout)

    @property
    def closing(self) -> bool:
        """True once ``close`` was called: a pass should stop at its next step."""
        return self._closed

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread and wait for it: the caller closes the database
        next, which must not happen under a connection still in use (a
        running pass checks ``closing`` between steps to end early)."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self) -> None:
        last = float("-inf")
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wanted > self._done or self._closed)
                if self._closed:
                    return
                delay = last + self.min_interval - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)  # rate limit; closing wakes it
                    if self._closed:
                        return
                covers = self._wanted
            last = time.monotonic()
            try:
                self._run_pass()
            except Exception:  # noqa: BLE001 - keep the thread; the next nudge retries
                log.warning("background PDH pass failed", exc_info=True)
            with self._cond:
                self.passes += 1
                self._done = max(self._done, covers)
                self._cond.notify_all()

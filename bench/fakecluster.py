"""Run the fake Arvados cluster as its own process (for scenario 10).

Usage: ``python bench/fakecluster.py [--keepstores 2]``

Starts ``davcoll.testing.fake_arvados.FakeArvados``, creates one user and
prints one JSON line ``{"api_url": ..., "token": ...}``; runs until SIGTERM
or SIGINT.  In its own process the fake's Python work does not compete with
the benchmark client for a GIL, as a real cluster would not.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from davcoll.testing.fake_arvados import FakeArvados  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keepstores", type=int, default=2)
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    fake = FakeArvados(keepstores=args.keepstores, numthreads=64)
    fake.start()
    try:
        token = fake.add_user("bench")
        print(json.dumps({"api_url": fake.api_url, "token": token}), flush=True)
        while not stop.wait(1.0):
            # The fake logs every request; nothing here reads the log.
            fake.clear_requests()
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

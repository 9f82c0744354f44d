"""Shared test fixtures: the SDK-generated vectors (tests/data/vectors), free ports."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

# Functions that require a lock check that their caller holds it
# (davcoll/collection/locking.py); set before davcoll is imported.
os.environ.setdefault("DAVCOLL_DEBUG_LOCKS", "1")

REPO = Path(__file__).resolve().parents[1]
# Copied into the repository (provenance in its README) so a plain clone runs the suite.
VECTORS = REPO / "tests" / "data" / "vectors"


def load_vectors(name: str) -> dict:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def vectors():
    return load_vectors

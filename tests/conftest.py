"""Shared test fixtures: the SDK-generated vectors (tests/data/vectors), free
ports, and one running server per module with a fresh collection per test.

``srv`` is a module-scoped in-process davcoll (server_util.running_server,
anonymous write unless overridden); a module changes its configuration by
defining its own ``server_overrides`` fixture, and adds to it (tokens, seed
data) by defining ``srv(srv)``, which pytest resolves to this one.  ``dav`` is
a DavClient on it (override it to add a token); ``coll`` is a new, empty
collection made through ``dav``.  Several modules carried copies of these.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from davclient import DavClient

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


@pytest.fixture(scope="module")
def server_overrides() -> dict[str, Any]:
    """Config values for this module's ``srv`` (a module overrides this fixture)."""
    return {}


@pytest.fixture(scope="module")
def srv(tmp_path_factory, server_overrides) -> Iterator[Any]:
    """davcoll served in-process for the whole module (server_util.Running)."""
    from server_util import running_server  # imports davcoll: after DAVCOLL_DEBUG_LOCKS is set

    overrides = {"anonymous": "write", **server_overrides}
    with running_server(tmp_path_factory.mktemp("srv") / "data", **overrides) as s:
        yield s


@pytest.fixture
def dav(srv) -> DavClient:
    """A DAV client on ``srv`` (a module overrides it to send a token)."""
    return DavClient(srv.url)


@pytest.fixture
def coll(dav) -> str:
    """The name of a new, empty collection, unique to the test."""
    name = "c-" + uuid.uuid4().hex[:10]
    r = dav.mkcol(name + "/")
    assert r.status_code == 201, (r.status_code, r.text[:300])
    return name

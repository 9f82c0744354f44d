"""Keep reads stream (issue 14 §5): a GET's first byte does not wait for the
whole block, and a body that does not hash to its locator still fails.

The fake keepstore's ``stall_next`` sends part of a body, then waits for the
test's ``gate`` before sending the rest (and sets ``done`` after): a reader
that hands out bytes while ``done`` is unset streams.  Nothing here measures
time; a reader that buffered the whole block would only see the first piece
after the stall times out, with ``done`` set.
"""

from __future__ import annotations

import hashlib
import random
import threading

import pytest
import requests

from davcoll.storage.blocks import BlockCorrupt
from davcoll.storage.keep import KeepClient
from davcoll.testing.fake_arvados import FakeArvados
from fake_cluster import arvados_server

MIB = 1 << 20


@pytest.fixture(scope="module")
def fake():
    with FakeArvados(keepstores=3, seed=14) as f:
        f.token = f.add_user("alice")
        yield f


@pytest.fixture(autouse=True)
def clean(fake):
    fake.faults.reset()
    fake.clear_requests()
    yield
    fake.faults.reset()


def client(fake, **kw):
    kw.setdefault("backoff_start", 0.001)
    kw.setdefault("num_retries", 2)
    kw.setdefault("read_timeout", 60.0)
    return KeepClient(fake.api_url, fake.token, **kw)


def block(seed: int, size: int = 4 * MIB) -> bytes:
    return random.Random(seed).randbytes(size)


def stored(fake, data, services=None):
    return fake.sign(fake.store_block(data, services=services), fake.token)


def probe(fake, kc, loc):
    by_uuid = {ks.uuid: ks.index for ks in fake.keepstores}
    return [by_uuid[s.uuid] for s in kc.probe_order(loc)]


def test_first_piece_arrives_before_the_block_is_complete(fake):
    data = block(1)
    kc = client(fake)
    loc = stored(fake, data)
    gate, done = threading.Event(), threading.Event()
    fake.faults.stall_next(1, gate=gate, done=done, fraction=0.5)
    it = kc.read_chunks(loc)
    first = next(it)
    assert first and data.startswith(first)
    assert not done.is_set(), "the first piece waited for the whole block"
    gate.set()
    assert first + b"".join(it) == data
    assert done.is_set()
    kc.close()


def test_corrupt_body_fails_and_never_completes(fake):
    data = block(2)
    kc = client(fake, num_retries=1)
    only = 0
    loc = stored(fake, data, services=[only])  # one replica: nothing to fall back on
    gate = threading.Event()
    gate.set()
    fake.faults.stall_next(10, gate=gate, corrupt=True, service=only)  # last byte flipped
    got = bytearray()
    with pytest.raises(BlockCorrupt):
        for piece in kc.read_chunks(loc):
            got += piece
    assert 0 < len(got) < len(data)  # streamed, then cut short: the last piece is held back
    assert data.startswith(bytes(got))
    kc.close()


def test_corrupt_first_byte_everywhere_is_block_corrupt(fake):
    kc = client(fake, num_retries=1)
    loc = stored(fake, block(3))
    fake.faults.corrupt_next(100)
    with pytest.raises(BlockCorrupt):
        b"".join(kc.read_chunks(loc))
    kc.close()


def test_bad_tail_on_one_replica_is_replaced_by_the_next(fake):
    """The corrupt part was held back, so the stream can go on from another
    replica whose prefix matches the bytes already passed on."""
    data = block(4)
    kc = client(fake)
    loc = stored(fake, data)
    first = probe(fake, kc, loc)[0]
    gate = threading.Event()
    gate.set()
    fake.faults.stall_next(1, gate=gate, corrupt=True, service=first)
    assert b"".join(kc.read_chunks(loc)) == data
    gets = [r.service for r in fake.requests_for("keep_get")]
    assert gets[0] == first and len(gets) == 2 and gets[1] != first
    kc.close()


def test_truncated_body_resumes_from_another_replica(fake):
    data = block(5)
    kc = client(fake)
    loc = stored(fake, data)
    first = probe(fake, kc, loc)[0]
    fake.faults.truncate_next(1, fraction=0.6, service=first)
    assert b"".join(kc.read_chunks(loc)) == data
    assert len(fake.requests_for("keep_get")) == 2
    kc.close()


def test_bad_bytes_already_sent_cut_the_stream_and_the_retry_avoids_that_replica(fake):
    data = block(6)
    kc = client(fake)
    loc = stored(fake, data)
    first = probe(fake, kc, loc)[0]
    fake.faults.corrupt_next(1, service=first)  # first byte flipped: it is passed on before the md5 fails
    with pytest.raises(BlockCorrupt):
        b"".join(kc.read_chunks(loc))
    fake.clear_requests()
    assert b"".join(kc.read_chunks(loc)) == data  # the client's retry
    assert fake.requests_for("keep_get")[0].service != first
    kc.close()


def test_consumer_stopping_early_closes_the_response(fake):
    data = block(7)
    kc = client(fake)
    loc = stored(fake, data)
    it = kc.read_chunks(loc)
    assert data.startswith(next(it))
    it.close()  # the GET handler's reader is closed mid-file
    assert b"".join(kc.read_chunks(loc)) == data
    kc.close()


def test_webdav_get_streams_from_keep(fake, tmp_path):
    """End to end: a GET of a one-block 16 MiB file answers its first MiB
    while the keepstore still holds back the rest; a corrupt block cuts
    the response short."""
    size = 16 * MIB
    data = block(8, size)
    token = fake.add_user("streamer")
    with arvados_server(fake, tmp_path / "state", anonymous="none") as srv:
        auth = {"Authorization": f"Bearer {token}"}
        assert requests.request("MKCOL", srv.u("s/"), headers=auth).status_code == 201
        assert requests.put(srv.u("s/big.bin"), data=data, headers=auth).status_code == 201
        srv.app.backend.cache.clear()  # a 16 MiB PUT is not cached, but be sure
        gate, done = threading.Event(), threading.Event()
        fake.faults.stall_next(1, gate=gate, done=done, fraction=0.25)
        with requests.get(srv.u("s/big.bin"), headers=auth, stream=True, timeout=60) as r:
            assert r.status_code == 200
            it = r.iter_content(MIB)
            head = next(it)
            assert head and data.startswith(head)
            assert not done.is_set(), "the GET waited for the whole block"
            gate.set()
            body = head + b"".join(it)
        assert hashlib.md5(body).hexdigest() == hashlib.md5(data).hexdigest()

        gate2 = threading.Event()
        gate2.set()
        fake.faults.stall_next(20, gate=gate2, corrupt=True)
        got = 0
        with pytest.raises(requests.exceptions.RequestException):
            with requests.get(srv.u("s/big.bin"), headers=auth, stream=True, timeout=60) as r:
                assert r.status_code == 200
                for piece in r.iter_content(MIB):
                    got += len(piece)
        assert got < size

"""Read-time checksums of the embedded block store (issue 14 §1).

Every block carries an xxh3-128 digest in an xattr, recorded at write time;
reads verify against it.  A block without one is md5-verified on its first
read and gets one then.  Either way a flipped bit is an error, never wrong
bytes -- in the middle of a block and in its last byte, whole-block reads
(``get``, which range reads use) and streamed reads (``read_chunks``).
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import xxhash

from davcoll.storage.blocks import BlockCorrupt
from davcoll.storage.local_blocks import XXH3_XATTR, LocalBlockStore

SIZE = (3 << 20) + 12345  # several read chunks, last one short


def _xattrs_supported(path) -> bool:
    probe = path / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.davcoll.probe", b"1")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


@pytest.fixture
def store(tmp_path):
    if not _xattrs_supported(tmp_path):
        pytest.skip("no user xattrs on this file system")
    return LocalBlockStore(tmp_path, fsync=False)


def _recorded(store: LocalBlockStore, loc: str) -> bytes | None:
    try:
        return os.getxattr(store.path_for(loc), XXH3_XATTR)
    except OSError:
        return None


def _flip(path, offset: int) -> None:
    """Flip one bit in place (size unchanged, xattr kept)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def _strip(store: LocalBlockStore, loc: str) -> None:
    """Make a block look like one from an older data dir (no digest)."""
    os.removexattr(store.path_for(loc), XXH3_XATTR)


def _stream_all(store: LocalBlockStore, loc: str) -> bytes:
    return b"".join(store.read_chunks(loc, 1 << 20))


def _writer_put(store: LocalBlockStore, data: bytes) -> str:
    w = store.open_writer()
    mv = memoryview(data)
    for i in range(0, len(data), 1 << 20):
        w.write(mv[i : i + (1 << 20)])
    return w.finish()


@pytest.mark.parametrize("how", ["put", "writer"])
def test_writes_record_the_xxh3_digest(store, how):
    data = os.urandom(SIZE)
    loc = store.put(data) if how == "put" else _writer_put(store, data)
    assert loc == f"{hashlib.md5(data).hexdigest()}+{SIZE}"
    assert _recorded(store, loc) == xxhash.xxh3_128(data).digest()
    assert store.get(loc) == data
    assert _stream_all(store, loc) == data


def test_reads_with_a_digest_do_not_compute_md5(store, monkeypatch):
    data = os.urandom(SIZE)
    loc = store.put(data)
    import davcoll.storage.local_blocks as lb

    def no_md5():
        raise AssertionError("md5 computed on a read of a block with a digest")

    monkeypatch.setattr(lb, "_md5", no_md5)
    assert store.get(loc) == data
    assert _stream_all(store, loc) == data


@pytest.mark.parametrize("read", ["get", "stream"])
def test_block_without_digest_is_md5_verified_once_and_gets_one(store, read, monkeypatch):
    data = os.urandom(SIZE)
    loc = store.put(data)
    _strip(store, loc)
    assert _recorded(store, loc) is None
    got = store.get(loc) if read == "get" else _stream_all(store, loc)
    assert got == data
    assert _recorded(store, loc) == xxhash.xxh3_128(data).digest()
    import davcoll.storage.local_blocks as lb

    monkeypatch.setattr(lb, "_md5", lambda: (_ for _ in ()).throw(AssertionError("md5 again")))
    assert store.get(loc) == data and _stream_all(store, loc) == data


def test_block_copied_in_by_hand_is_served_and_gets_a_digest(store, tmp_path):
    data = os.urandom(5000)
    other = LocalBlockStore(tmp_path / "other", fsync=False)
    loc = other.put(data)
    dest = store.path_for(loc)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(other.path_for(loc), dest)  # content only, no xattrs
    assert _recorded(store, loc) is None
    assert store.get(loc) == data
    assert _recorded(store, loc) == xxhash.xxh3_128(data).digest()


@pytest.mark.parametrize("where", ["middle", "last"])
@pytest.mark.parametrize("path", ["xxh3", "md5"])
@pytest.mark.parametrize("read", ["get", "stream"])
def test_flipped_bit_is_an_error_never_wrong_bytes(store, where, path, read):
    data = os.urandom(SIZE)
    loc = store.put(data)
    if path == "md5":
        _strip(store, loc)
    _flip(store.path_for(loc), SIZE // 2 if where == "middle" else SIZE - 1)
    if read == "get":
        with pytest.raises(BlockCorrupt):
            store.get(loc)
    else:
        got = []
        with pytest.raises(BlockCorrupt):
            for piece in store.read_chunks(loc, 1 << 20):
                got.append(piece)
        # The stream stopped before its last piece: a client sees a short
        # body, never a complete one with a flipped bit (the streaming
        # guarantee, the same as with md5: pieces before the last may go out
        # before the whole block is known to be bad).
        assert sum(map(len, got)) < SIZE
    # Still an error on the next read (md5 fallback after a dropped digest),
    # and no digest is ever recorded for bad data.
    with pytest.raises(BlockCorrupt):
        store.get(loc)
    with pytest.raises(BlockCorrupt):
        _stream_all(store, loc)
    assert _recorded(store, loc) is None


def test_rotten_digest_with_good_data_heals(store):
    """A corrupt xattr (not data) fails that read, then md5 finds the data
    good and records a fresh digest."""
    data = os.urandom(SIZE)
    loc = store.put(data)
    os.setxattr(store.path_for(loc), XXH3_XATTR, bytes(16))
    with pytest.raises(BlockCorrupt):
        store.get(loc)
    assert store.get(loc) == data
    assert _recorded(store, loc) == xxhash.xxh3_128(data).digest()


def test_put_over_an_existing_copy_without_digest_records_one(store):
    data = os.urandom(4096)
    loc = store.put(data)
    _strip(store, loc)
    assert store.put(data) == loc
    assert _recorded(store, loc) == xxhash.xxh3_128(data).digest()


def test_no_xattr_support_falls_back_to_md5(tmp_path, monkeypatch):
    def refuse(*a, **kw):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", refuse)
    monkeypatch.setattr(os, "getxattr", refuse)
    store = LocalBlockStore(tmp_path, fsync=False)
    data = os.urandom(SIZE)
    loc = store.put(data)
    assert store.get(loc) == data and _stream_all(store, loc) == data
    assert store.xattrs is False
    _flip(store.path_for(loc), SIZE - 1)
    with pytest.raises(BlockCorrupt):
        store.get(loc)
    with pytest.raises(BlockCorrupt):
        _stream_all(store, loc)

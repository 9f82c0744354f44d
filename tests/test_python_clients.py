"""Python WebDAV clients against a real davcoll server.

webdav4 is the client behind fsspec's ``webdav`` filesystem and DVC's webdav
remote; its info/exists/isdir send PROPFIND without a Depth header (which
means infinity), so they only work because a file answers any Depth as
Depth 0 and a small folder is answered in full.  webdavclient3 sends
``Depth: 1`` on PROPPATCH, which must be ignored.  Every test checks the
content and the names read back, with names that need URL escaping.

Client-side limits (not the server's): webdav4 hands the raw path to httpx,
which refuses ``#`` and ``?`` in a path and passes ``%XX`` through
undecoded, so names with those are created with requests and only listed
through webdav4.
"""

from __future__ import annotations

import io
import os
from urllib.parse import quote

import pytest

from davclient import DavClient

webdav4_client = pytest.importorskip("webdav4.client")
webdav4_fsspec = pytest.importorskip("webdav4.fsspec")
webdav3_client = pytest.importorskip("webdav3.client")

# Names each client can address itself.
NAMES = ["plain.txt", "with space.txt", "semi;colon.txt", "50% off.txt", "été ☃ 日本.txt", "amp&eq=plus+.txt"]
# Names only listed through webdav4 (created with requests).
LISTED_ONLY = ["hash#tag.txt", "q?mark.txt", "100%25.txt"]


def content(name: str) -> bytes:
    return f"content of {name}\n".encode() * 3


def server_bytes(dav: DavClient, path: str) -> bytes:
    r = dav.get(quote(path))
    assert r.status_code == 200, (path, r.status_code)
    return r.content


# ------------------------------------------------------------------ webdav4 Client


def test_webdav4_client_basic_operations(srv, dav, coll):
    c = webdav4_client.Client(srv.url)
    c.mkdir(f"{coll}/sub")
    for n in NAMES:
        c.upload_fileobj(io.BytesIO(content(n)), f"{coll}/sub/{n}")
    for n in LISTED_ONLY:
        assert dav.put(quote(f"{coll}/sub/{n}"), data=content(n)).status_code == 201

    listed = c.ls(f"{coll}/sub", detail=True)
    assert {e["name"] for e in listed} == {f"{coll}/sub/{n}" for n in NAMES + LISTED_ONLY}
    by_name = {e["name"].rsplit("/", 1)[1]: e for e in listed}
    for n in NAMES + LISTED_ONLY:
        assert by_name[n]["type"] == "file" and by_name[n]["content_length"] == len(content(n))
        assert by_name[n]["display_name"] == n

    for n in NAMES:
        p = f"{coll}/sub/{n}"
        assert c.exists(p) and not c.isdir(p) and c.isfile(p), n
        info = c.info(p)
        assert info["type"] == "file" and info["content_length"] == len(content(n)) and info["etag"]
        buf = io.BytesIO()
        c.download_fileobj(p, buf)
        assert buf.getvalue() == content(n), n
    assert c.isdir(coll) and c.isdir(f"{coll}/sub") and c.info(f"{coll}/sub")["type"] == "directory"
    assert not c.exists(f"{coll}/sub/missing.txt")

    src, dst, moved = f"{coll}/sub/{NAMES[4]}", f"{coll}/copy {NAMES[4]}", f"{coll}/sub/moved;{NAMES[3]}"
    c.copy(src, dst)
    assert server_bytes(dav, dst) == content(NAMES[4])
    c.move(dst, moved)
    assert not c.exists(dst) and server_bytes(dav, moved) == content(NAMES[4])
    c.remove(moved)
    assert not c.exists(moved)
    c.remove(f"{coll}/sub")
    assert not c.exists(f"{coll}/sub") and c.ls(coll, detail=False) == []


# ------------------------------------------------------------------ fsspec


def test_fsspec_filesystem_operations(srv, dav, coll, tmp_path):
    fs = webdav4_fsspec.WebdavFileSystem(srv.url)
    local = tmp_path / "up"
    local.mkdir()
    for n in NAMES:
        (local / n).write_bytes(content(n))
    big = os.urandom(3 << 20)
    (local / "big.bin").write_bytes(big)

    fs.mkdir(f"{coll}/in")
    for n in NAMES:
        fs.put(str(local / n), f"{coll}/in/{n}")
    fs.put(str(local / "big.bin"), f"{coll}/in/big.bin")
    assert sorted(fs.ls(f"{coll}/in", detail=False)) == sorted(f"{coll}/in/{n}" for n in NAMES + ["big.bin"])
    assert fs.exists(f"{coll}/in/{NAMES[3]}") and fs.isdir(f"{coll}/in") and not fs.isdir(f"{coll}/in/{NAMES[3]}")
    assert fs.info(f"{coll}/in/big.bin")["size"] == len(big)
    assert fs.info(f"{coll}/in")["type"] == "directory"
    assert fs.cat(f"{coll}/in/big.bin") == big

    # open for write and read (ranges through seek)
    with fs.open(f"{coll}/in/written {NAMES[4]}", "wb") as f:
        f.write(b"hello ")
        f.write(b"world")
    with fs.open(f"{coll}/in/written {NAMES[4]}", "rb") as f:
        assert f.read() == b"hello world"
    with fs.open(f"{coll}/in/big.bin", "rb") as f:
        f.seek(1_000_000)
        assert f.read(1000) == big[1_000_000:1_001_000]
    with fs.open(f"{coll}/in/{NAMES[1]}", "r", encoding="utf-8") as f:
        assert f.read() == content(NAMES[1]).decode()

    # get back, file by file and recursively
    down = tmp_path / "down"
    fs.get(f"{coll}/in/{NAMES[2]}", str(tmp_path / "one.txt"))
    assert (tmp_path / "one.txt").read_bytes() == content(NAMES[2])
    fs.get(f"{coll}/in", str(down), recursive=True)
    got = {p.name: p.read_bytes() for p in down.rglob("*") if p.is_file()}
    assert got == {**{n: content(n) for n in NAMES}, "big.bin": big, f"written {NAMES[4]}": b"hello world"}

    # cp, mv, find, walk, rm
    fs.mkdir(f"{coll}/in/deeper")
    fs.cp(f"{coll}/in/{NAMES[0]}", f"{coll}/in/deeper/{NAMES[5]}")
    fs.mv(f"{coll}/in/{NAMES[3]}", f"{coll}/in/deeper/{NAMES[3]}")
    assert fs.cat(f"{coll}/in/deeper/{NAMES[5]}") == content(NAMES[0])
    assert not fs.exists(f"{coll}/in/{NAMES[3]}")
    assert fs.cat(f"{coll}/in/deeper/{NAMES[3]}") == content(NAMES[3])
    found = set(fs.find(coll))
    assert f"{coll}/in/deeper/{NAMES[3]}" in found and f"{coll}/in/big.bin" in found and len(found) == 9
    walked = {root: (sorted(dirs), sorted(files)) for root, dirs, files in fs.walk(coll)}
    assert walked[f"{coll}/in"][0] == ["deeper"]
    assert walked[f"{coll}/in/deeper"] == ([], sorted([NAMES[3], NAMES[5]]))
    fs.put(str(local), f"{coll}/tree", recursive=True)
    assert server_bytes(dav, f"{coll}/tree/{NAMES[4]}") == content(NAMES[4])
    fs.rm(f"{coll}/in/big.bin")
    assert not fs.exists(f"{coll}/in/big.bin")
    fs.rm(f"{coll}/in", recursive=True)
    assert not fs.exists(f"{coll}/in")
    assert dav.propfind(f"{coll}/in/", depth="0").status_code == 404


def test_fsspec_lists_the_server_root(srv, coll):
    """Listing / (Depth 1) works; only an infinite walk of it is refused."""
    fs = webdav4_fsspec.WebdavFileSystem(srv.url)
    assert coll in {p.strip("/") for p in fs.ls("/", detail=False)}
    assert fs.isdir(coll)


# ------------------------------------------------------------------ webdavclient3


def test_webdavclient3_properties_transfers_and_lock(srv, dav, coll, tmp_path):
    c = webdav3_client.Client({"webdav_hostname": srv.url.rstrip("/")})
    local = tmp_path / "w3"
    local.mkdir()
    for n in NAMES:
        (local / n).write_bytes(content(n))
    c.mkdir(f"{coll}/w3")
    for n in NAMES:
        c.upload_sync(remote_path=f"{coll}/w3/{n}", local_path=str(local / n))
    assert sorted(c.list(f"{coll}/w3")) == sorted(NAMES)
    infos = {i["name"]: i for i in c.list(f"{coll}/w3", get_info=True)}
    assert {n: int(infos[n]["size"]) for n in NAMES} == {n: len(content(n)) for n in NAMES}
    for n in NAMES:
        p = f"{coll}/w3/{n}"
        assert c.check(p) and not c.is_dir(p)
        c.download_sync(remote_path=p, local_path=str(tmp_path / "back.txt"))
        assert (tmp_path / "back.txt").read_bytes() == content(n)

    # PROPPATCH (sent with Depth: 1) and PROPFIND of a dead property
    target = f"{coll}/w3/{NAMES[4]}"
    c.set_property(target, {"namespace": "urn:davcoll-test", "name": "colour", "value": "blue ☃"})
    assert c.get_property(target, {"namespace": "urn:davcoll-test", "name": "colour"}) == "blue ☃"
    c.set_property_batch(target, [{"namespace": "urn:davcoll-test", "name": "a", "value": "1"},
                                  {"namespace": "urn:davcoll-test", "name": "b", "value": "2"}])
    assert c.get_property(target, {"namespace": "urn:davcoll-test", "name": "b"}) == "2"

    # LOCK: the holder writes, others get 423, UNLOCK on leaving the block
    with c.lock(target, timeout=60) as locked:
        (local / "new").write_bytes(b"written under lock")
        locked.upload_sync(remote_path=target, local_path=str(local / "new"))
        with pytest.raises(webdav3_client.ResourceLocked):
            c.upload_sync(remote_path=target, local_path=str(local / NAMES[0]))
    assert server_bytes(dav, target) == b"written under lock"
    c.upload_sync(remote_path=target, local_path=str(local / NAMES[0]))  # the lock is gone
    assert server_bytes(dav, target) == content(NAMES[0])

    # copy, move, recursive list (Depth: infinity), directories, delete
    c.copy(target, f"{coll}/w3/copy.txt")
    c.move(f"{coll}/w3/copy.txt", f"{coll}/w3/moved;x.txt")
    assert server_bytes(dav, f"{coll}/w3/moved;x.txt") == content(NAMES[0])
    c.upload_sync(remote_path=f"{coll}/w3dir", local_path=str(local))
    assert sorted(c.list(f"{coll}/w3dir")) == sorted(NAMES + ["new"])
    recursive = c.list(coll, recursive=True)  # webdavclient3 lists bare names
    assert set(recursive) == {"w3/", "w3dir/", "moved;x.txt", "new", *NAMES}
    c.download_sync(remote_path=f"{coll}/w3dir", local_path=str(tmp_path / "w3back"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "w3back").iterdir()} == {
        **{n: content(n) for n in NAMES}, "new": b"written under lock"}
    c.clean(f"{coll}/w3/moved;x.txt")
    assert not c.check(f"{coll}/w3/moved;x.txt")
    c.clean(f"{coll}/w3dir/")
    assert not c.check(f"{coll}/w3dir/")


def test_no_depth_propfind_of_an_escaped_file_name(dav, coll):
    """What webdav4's info() sends, for a name webdav4 itself cannot form."""
    r = dav.put(quote(f"{coll}/a#b.txt"), data=b"x")
    assert r.status_code == 201
    r = dav.propfind(quote(f"{coll}/a#b.txt"), depth=None)  # no Depth: a file
    assert r.status_code == 207 and "a%23b.txt" in r.text

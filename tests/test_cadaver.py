"""cadaver (the neon-based command-line WebDAV client) against a real server.

cadaver reads its commands from stdin.  Basic credentials (any user name,
the token as password) come from ``~/.netrc`` in a temporary HOME, so
cadaver never prompts.  Every session's output is checked command by
command, and the server's catalog afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid as uuidlib
from pathlib import Path
from urllib.parse import urlparse

import pytest

from davclient import DavClient

CADAVER = shutil.which("cadaver")
pytestmark = pytest.mark.skipif(CADAVER is None, reason="cadaver is not installed")


class Cadaver:
    def __init__(self, srv, tmp: Path, token: str | None) -> None:
        self.srv = srv
        self.home = tmp / "home"
        self.home.mkdir(exist_ok=True)
        self.work = tmp / "work"
        self.work.mkdir(exist_ok=True)
        netrc = self.home / ".netrc"
        if token is not None:
            host = urlparse(srv.url).hostname
            netrc.write_text(f"machine {host}\nlogin davcoll-user\npassword {token}\n")
            netrc.chmod(0o600)

    def run(self, path: str, commands: list[str]) -> dict[int, tuple[str, str]]:
        """Run commands against ``<server>/<path>``; {index: (command, output)}."""
        script = "\n".join(commands + ["quit"]) + "\n"
        env = {**os.environ, "HOME": str(self.home)}
        env.pop("http_proxy", None)
        env.pop("HTTP_PROXY", None)
        proc = subprocess.run([CADAVER, self.srv.url + path], input=script, capture_output=True, text=True,
                              cwd=self.work, env=env, timeout=60)
        out = proc.stdout + proc.stderr
        self.last = out
        assert "Could not access" not in out, out
        # Output is "dav:/path/> <command>\n<result>" per command.
        pieces = re.split(r"^dav:[^\n>]*> ", out, flags=re.M)[1:]
        result = {}
        for i, cmd in enumerate(commands):
            assert i < len(pieces), f"cadaver stopped early:\n{out}"
            echoed, _, text = pieces[i].partition("\n")
            assert echoed.strip() == cmd, (echoed, cmd, out)
            result[i] = (cmd, text)
        return result


def succeeded(results, i) -> bool:
    cmd, text = results[i]
    return "succeeded" in text and "failed" not in text


@pytest.fixture(scope="module")
def server_overrides():
    return {"anonymous": "none"}


@pytest.fixture(scope="module")
def srv(srv):
    """The shared server with a read-write token for cadaver."""
    srv.token = srv.app.backend.tokens.create(read_only=False, label="cadaver")
    return srv


@pytest.fixture
def dav(srv) -> DavClient:
    """The test's own requests, with cadaver's token."""
    return DavClient(srv.url, token=srv.token)


def manifest(srv, name: str) -> str:
    cat = srv.app.backend.catalog_
    return cat.get(cat.find_by_name(name).uuid).manifest_text


def files_in(manifest_text: str) -> set[str]:
    """Paths of the files in a manifest (without empty-dir placeholders)."""
    out = set()
    for line in manifest_text.splitlines():
        stream, *tokens = line.split(" ")
        stream = stream.replace("\\040", " ")
        for tok in tokens:
            m = re.fullmatch(r"\d+:\d+:(.+)", tok)
            if m and m.group(1) != "\\056":
                out.add((stream[2:] + "/" if stream != "." else "") + m.group(1).replace("\\040", " "))
    return out


def test_cadaver_session(srv, dav, coll, tmp_path):
    cad = Cadaver(srv, tmp_path, srv.token)
    text = b"hello from cadaver\n"
    blob = os.urandom(300_000)
    (cad.work / "local.txt").write_bytes(text)
    (cad.work / "blob.bin").write_bytes(blob)
    r = cad.run(f"{coll}/", [
        "ls",                                      # 0
        "mkcol newdir",                            # 1
        "put local.txt newdir/remote.txt",         # 2
        "put blob.bin blob.bin",                   # 3
        "get newdir/remote.txt got.txt",           # 4
        "get blob.bin got.bin",                    # 5
        "copy newdir/remote.txt copy.txt",         # 6
        "move copy.txt moved.txt",                 # 7
        "propset moved.txt colour blue",           # 8
        "propget moved.txt colour",                # 9
        "lock moved.txt",                          # 10
        "put local.txt moved.txt",                 # 11  (cadaver sends its lock token)
        "unlock moved.txt",                        # 12
        "mkcol newdir",                            # 13  exists: fails
        "ls",                                      # 14
    ])
    assert "collection is empty" in r[0][1]
    for i in (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 14):
        assert succeeded(r, i), r[i]
    assert "Value of colour is: blue" in r[9][1]
    assert "failed" in r[13][1] and "405" in r[13][1]
    listing = r[14][1]
    assert re.search(r"Coll:\s+newdir", listing) and "moved.txt" in listing and "blob.bin" in listing
    assert (cad.work / "got.txt").read_bytes() == text
    assert (cad.work / "got.bin").read_bytes() == blob
    # server state
    assert files_in(manifest(srv, coll)) == {"newdir/remote.txt", "blob.bin", "moved.txt"}
    assert dav.get(f"{coll}/moved.txt").content == text
    assert dav.get(f"{coll}/blob.bin").content == blob
    pf = dav.propfind(f"{coll}/moved.txt", "0")
    assert re.search(r">blue</", pf.text)
    # the lock was released: anyone with write access can write again
    assert dav.put(f"{coll}/moved.txt", data=b"after").status_code == 204

    r = cad.run(f"{coll}/", [
        "rm moved.txt",      # 0
        "rm blob.bin",       # 1
        "rmcol newdir",      # 2
        "rm nosuchfile",     # 3
        "ls",                # 4
    ])
    for i in (0, 1, 2):
        assert succeeded(r, i), r[i]
    assert "failed" in r[3][1] and "404" in r[3][1]
    assert "collection is empty" in r[4][1]
    assert manifest(srv, coll) == ""


def test_cadaver_lock_blocks_other_clients(srv, dav, coll, tmp_path):
    cad = Cadaver(srv, tmp_path, srv.token)
    (cad.work / "a.txt").write_bytes(b"a")
    # cadaver exits without unlocking: the lock outlives the session
    r = cad.run(f"{coll}/", ["put a.txt locked.txt", "lock locked.txt"])
    assert succeeded(r, 0) and succeeded(r, 1)
    assert dav.put(f"{coll}/locked.txt", data=b"other").status_code == 423
    assert dav.delete(f"{coll}/locked.txt").status_code == 423
    pf = dav.propfind(f"{coll}/locked.txt", "0")
    token = re.search(r"opaquelocktoken:[^<]+", pf.text).group(0)
    assert dav.unlock(f"{coll}/locked.txt", token).status_code == 204
    assert dav.put(f"{coll}/locked.txt", data=b"other").status_code == 204


def test_cadaver_pdh_is_read_only(srv, dav, coll, tmp_path):
    dav.put(f"{coll}/a.txt", data=b"snapshot")
    cat = srv.app.backend.catalog_
    before = cat.get(cat.find_by_name(coll).uuid)
    pdh = before.portable_data_hash
    cad = Cadaver(srv, tmp_path, srv.token)
    (cad.work / "local.txt").write_bytes(b"new")
    r = cad.run(f"by_id/{pdh}/", [
        "ls",                        # 0
        "get a.txt got.txt",         # 1
        "put local.txt x.txt",       # 2
        "put local.txt a.txt",       # 3
        "mkcol d",                   # 4
        "rm a.txt",                  # 5
        "move a.txt b.txt",          # 6
        "propset a.txt colour red",  # 7
        "lock a.txt",                # 8
    ])
    assert succeeded(r, 0) and "a.txt" in r[0][1]
    assert succeeded(r, 1)
    assert (cad.work / "got.txt").read_bytes() == b"snapshot"
    for i in range(2, 9):
        cmd, text = r[i]
        assert "failed" in text and "405" in text, (cmd, text)
    after = cat.get(before.uuid)
    assert (after.version, after.manifest_text) == (before.version, before.manifest_text)
    # the same through /c=<pdh>/
    r = cad.run(f"c={pdh}/", ["ls", "put local.txt y.txt"])
    assert succeeded(r, 0) and "405" in r[1][1]


def test_cadaver_path_token_without_netrc(srv, coll, tmp_path):
    cad = Cadaver(srv, tmp_path, None)
    (cad.work / "p.txt").write_bytes(b"path token")
    r = cad.run(f"t={srv.token}/{coll}/", ["put p.txt p.txt", "ls", "get p.txt back.txt", "mkcol sub", "move p.txt sub/p.txt"])
    assert all(succeeded(r, i) for i in (0, 1, 2, 3, 4)), r
    assert (cad.work / "back.txt").read_bytes() == b"path token"
    assert files_in(manifest(srv, coll)) == {"sub/p.txt"}


def test_cadaver_collection_level(srv, tmp_path):
    """At the top level cadaver creates, renames and removes collections."""
    cad = Cadaver(srv, tmp_path, srv.token)
    name = "cadtop-" + uuidlib.uuid4().hex[:6]
    (cad.work / "f.txt").write_bytes(b"f")
    r = cad.run("", [f"mkcol {name}", f"put f.txt {name}/f.txt", f"move {name} {name}-renamed", "ls"])
    assert all(succeeded(r, i) for i in range(4)), r
    assert f"{name}-renamed" in r[3][1]
    cat = srv.app.backend.catalog_
    assert cat.find_by_name(name) is None
    rec = cat.find_by_name(f"{name}-renamed")
    assert files_in(cat.get(rec.uuid).manifest_text) == {"f.txt"}
    r = cad.run("", [f"rmcol {name}-renamed"])
    assert succeeded(r, 0)
    assert cat.find_by_name(f"{name}-renamed") is None

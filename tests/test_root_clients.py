"""Finder and Explorer with the server root mounted (issue 13 §2), and the
409 for a PUT into a collection that does not exist (issue 13 §3).

Request sequences follow what the clients send (Apple's webdavfs when
Finder copies a folder to the mounted root; Windows' MiniRedir PROPPATCH
after a copy); everything is checked against a real server, with names
and content read back.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import pytest
from lxml import etree

from davclient import D, DavClient, parse_multistatus
from server_util import running_server

MS = "urn:schemas-microsoft-com:"
EXPLORER = {"User-Agent": "Microsoft-WebDAV-MiniRedir/10.0.19045"}
LOCK_BODY = (
    '<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:">'
    "<D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype>"
    "<D:owner><D:href>tester</D:href></D:owner></D:lockinfo>"
)
WIN32_PROPPATCH = (
    '<?xml version="1.0" encoding="utf-8" ?>'
    '<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:schemas-microsoft-com:"><D:set><D:prop>'
    "<Z:Win32CreationTime>Mon, 01 Jan 2024 10:00:00 GMT</Z:Win32CreationTime>"
    "<Z:Win32LastAccessTime>Tue, 02 Jan 2024 10:00:00 GMT</Z:Win32LastAccessTime>"
    "<Z:Win32LastModifiedTime>Wed, 03 Jan 2024 10:00:00 GMT</Z:Win32LastModifiedTime>"
    "<Z:Win32FileAttributes>00000020</Z:Win32FileAttributes>"
    "</D:prop></D:set></D:propertyupdate>"
)
WIN32 = {
    "Win32CreationTime": "Mon, 01 Jan 2024 10:00:00 GMT",
    "Win32LastModifiedTime": "Wed, 03 Jan 2024 10:00:00 GMT",
    "Win32FileAttributes": "00000020",
}


def propfind(dav: DavClient, path: str, depth: str = "1", props: list[str] | None = None,
             headers=None) -> dict[str, dict[str, ET.Element]]:
    """{unquoted href: {clark name: element}} of the 200 propstats (allprop
    unless ``props`` names some)."""
    if props is None:
        body = '<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
    else:
        inner = "".join(f'<x:{local} xmlns:x="{ns}"/>' for ns, local in (p[1:].split("}") for p in props))
        body = f'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop>{inner}</D:prop></D:propfind>'
    r = dav.propfind(path, depth, body, headers={"Content-Type": "application/xml", **(headers or {})})
    return {resp.path: {name: el for name, (code, el) in resp.props.items() if code == 200}
            for resp in parse_multistatus(r)}


def mkcol(dav: DavClient, path: str) -> None:
    r = dav.mkcol(path)
    assert r.status_code == 201, (r.status_code, r.text)


def collection_names(dav: DavClient) -> set[str]:
    """Names of the collections listed at / (metadata files are not folders)."""
    return {
        href.strip("/") for href, props in propfind(dav, "/").items()
        if href != "/" and props[D + "resourcetype"].find(D + "collection") is not None
    }


# ---------------------------------------------------------------- Finder


def test_finder_copies_a_folder_to_the_root(dav):
    """Finder: MKCOL, PUT each file, then PUT the folder's own xattrs to
    /._Folder (AppleDouble) -- a 403 there aborted the whole copy."""
    mkcol(dav, "/Holiday Photos/")
    assert dav.put("/Holiday Photos/a.jpg", b"jpeg-a").status_code == 201
    assert dav.put("/Holiday Photos/._a.jpg", b"xattr-a").status_code == 201
    apple = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(range(200))
    r = dav.put("/._Holiday Photos", apple)
    assert r.status_code == 201, (r.status_code, r.text)
    r = dav.put("/.DS_Store", b"Bud1" + b"\x00" * 60)
    assert r.status_code == 201, (r.status_code, r.text)

    # Read back, listed at / like inside collections.
    assert dav.get("/._Holiday Photos").content == apple
    head = dav.head("/._Holiday Photos")
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(apple)
    listing = propfind(dav, "/")
    assert "/._Holiday Photos" in listing and "/.DS_Store" in listing
    assert int(listing["/._Holiday Photos"][D + "getcontentlength"].text) == len(apple)
    assert listing["/._Holiday Photos"][D + "resourcetype"].find(D + "collection") is None
    # ... but never a collection, and never inside one.
    assert collection_names(dav) >= {"Holiday Photos"}
    assert not any(n.startswith("._") or n == ".DS_Store" for n in collection_names(dav))
    inside = propfind(dav, "/Holiday Photos/")
    assert set(inside) == {"/Holiday Photos/", "/Holiday Photos/a.jpg", "/Holiday Photos/._a.jpg"}
    record = dav.get("/Holiday Photos/.arvados#collection".replace("#", "%23")).json()
    assert "._Holiday" not in record["manifest_text"] and ".DS_Store" not in record["manifest_text"]

    # Overwrite, then delete.
    assert dav.put("/._Holiday Photos", b"v2").status_code == 204
    assert dav.get("/._Holiday Photos").content == b"v2"
    assert dav.delete("/._Holiday Photos").status_code == 204
    assert dav.get("/._Holiday Photos").status_code == 404
    assert "/._Holiday Photos" not in propfind(dav, "/")
    assert dav.delete("/.DS_Store").status_code == 204


def test_metadata_files_at_the_root_move_and_copy_by_name(dav):
    mkcol(dav, "/mv/")
    assert dav.put("/mv/plain.txt", b"plain").status_code == 201
    assert dav.put("/._old", b"meta").status_code == 201

    def move(src, dst, copy=False):
        return dav.req("COPY" if copy else "MOVE", src, headers={"Destination": quote(dst)})

    r = move("/._old", "/._new")
    assert r.status_code == 201, r.text
    assert dav.get("/._old").status_code == 404
    assert dav.get("/._new").content == b"meta"
    # Between the top level and a collection: junk <-> junk only.
    assert move("/._new", "/mv/._inside", copy=True).status_code == 201
    assert dav.get("/mv/._inside").content == b"meta"
    assert move("/mv/._inside", "/._back").status_code == 201
    assert dav.get("/._back").content == b"meta"
    assert dav.get("/mv/._inside").status_code == 404
    # Metadata never becomes a file, a file never becomes metadata, and a
    # collection is never renamed to a metadata name.
    assert move("/._back", "/mv/plain-from-junk.txt").status_code == 403
    assert move("/mv/plain.txt", "/._plain").status_code == 403
    assert move("/mv/", "/._mv").status_code == 403
    assert dav.get("/mv/plain.txt").content == b"plain"
    assert "mv" in collection_names(dav)
    # A folder with a metadata name is refused, as inside collections.
    assert dav.mkcol("/.DS_Store/").status_code == 403


def test_metadata_files_at_the_root_are_per_principal(tmp_path):
    """Every user sees their own / (their collections): one user's
    /._Photos must not show up in another's listing."""
    with running_server(tmp_path, anonymous="none") as s:
        a = s.app.backend.tokens.create(read_only=False, label="a")
        b = s.app.backend.tokens.create(read_only=False, label="b")
        dav_a, dav_b = DavClient(s.url, auth=("x", a)), DavClient(s.url, auth=("x", b))
        assert dav_a.put("/._Photos", data=b"a's").status_code == 201
        assert dav_a.get("/._Photos").content == b"a's"
        assert dav_b.get("/._Photos").status_code == 404
        r = dav_b.propfind("/", "1")
        assert r.status_code == 207 and "._Photos" not in r.text
        r = dav_a.propfind("/", "1")
        assert "._Photos" in r.text


def test_finder_locks_a_metadata_file_at_the_root(dav):
    """webdavfs LOCKs a file it opens for writing, AppleDouble ones too."""
    r = dav.req("LOCK", "/._Locked", data=LOCK_BODY, headers={"Content-Type": "application/xml", "Timeout": "Second-600"})
    assert r.status_code in (200, 201), (r.status_code, r.text)
    token = r.headers["Lock-Token"]
    root = etree.fromstring(r.content).find(f".//{D}lockroot/{D}href").text
    assert root == "/._Locked"
    assert dav.put("/._Locked", b"x").status_code == 423
    r = dav.put("/._Locked", b"locked write", headers={"If": f"({token})"})
    assert r.status_code in (201, 204), r.text
    assert dav.req("UNLOCK", "/._Locked", headers={"Lock-Token": token}).status_code == 204
    assert dav.get("/._Locked").content == b"locked write"


# ---------------------------------------------------------------- plain files at /


@pytest.mark.parametrize("how", ["PUT", "LOCK", "COPY", "MOVE"])
def test_plain_file_at_the_root_is_refused_with_a_dav_error_body(dav, how):
    mkcol(dav, f"/src-{how}/")
    assert dav.put(f"/src-{how}/doc.txt", b"doc").status_code == 201
    if how == "PUT":
        r = dav.put("/doc.txt", b"doc")
    elif how == "LOCK":
        r = dav.req("LOCK", "/doc.txt", data=LOCK_BODY, headers={"Content-Type": "application/xml"})
    else:
        r = dav.req(how, f"/src-{how}/doc.txt", headers={"Destination": "/doc.txt"})
    assert r.status_code == 403, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/xml")
    el = etree.fromstring(r.content)
    assert el.tag == D + "error"
    assert el.find("{urn:davcoll:error}top-level-holds-collections-only") is not None
    reason = el.findtext("{urn:davcoll:error}reason")
    assert "only collections (folders) live at the top level" in reason
    assert "mount a single collection" in reason
    assert dav.get("/doc.txt").status_code == 404
    assert dav.get(f"/src-{how}/doc.txt").content == b"doc"


# ---------------------------------------------------------------- numbers and dates


def test_quota_and_dates_everywhere(dav):
    mkcol(dav, "/dated/")
    mkcol(dav, "/dated/sub/")
    assert dav.put("/dated/sub/f.bin", b"12345").status_code == 201
    uuid = propfind(dav, "/dated/", "0", ["{urn:davcoll:collection}uuid"])["/dated/"]["{urn:davcoll:collection}uuid"].text
    names = [D + "quota-used-bytes", D + "quota-available-bytes", D + "getlastmodified", D + "creationdate"]
    for path in ["/", "/by_id/", "/dated/", "/dated/sub/", "/dated/sub/f.bin", f"/by_id/{uuid}/", f"/by_id/{uuid}/sub/f.bin"]:
        props = next(iter(propfind(dav, path, "0", names).values()))
        for n in names:
            assert n in props and (props[n].text or "").strip(), (path, n)
        assert int(props[D + "quota-used-bytes"].text) >= 0
        assert int(props[D + "quota-available-bytes"].text) > 0
        parsedate_to_datetime(props[D + "getlastmodified"].text)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", props[D + "creationdate"].text), (path, props[D + "creationdate"].text)
        if path.endswith("f.bin"):
            assert int(props[D + "quota-used-bytes"].text) == 5
    # / is as new as its newest collection.
    listing = propfind(dav, "/", "1", [D + "getlastmodified"])
    newest = max(parsedate_to_datetime(p[D + "getlastmodified"].text) for h, p in listing.items() if h != "/")
    assert parsedate_to_datetime(listing["/"][D + "getlastmodified"].text) == newest
    # allprop reports them too (Explorer asks with allprop).
    allprop = propfind(dav, "/", "0")["/"]
    assert D + "getlastmodified" in allprop and D + "creationdate" in allprop and allprop[D + "quota-used-bytes"].text == "0"


# ---------------------------------------------------------------- Windows Explorer


def win32_props(dav: DavClient, path: str) -> dict[str, str]:
    props = next(iter(propfind(dav, path, "0", [f"{{{MS}}}{k}" for k in WIN32]).values()))
    return {k: props[f"{{{MS}}}{k}"].text for k in WIN32 if f"{{{MS}}}{k}" in props}


def test_explorer_win32_times_are_stored_and_follow_the_file(dav):
    mkcol(dav, "/win/")
    assert dav.put("/win/report.docx", b"docx", headers=EXPLORER).status_code == 201
    r = dav.req("PROPPATCH", "/win/report.docx", data=WIN32_PROPPATCH, headers={**EXPLORER, "Content-Type": "text/xml"})
    assert r.status_code == 207 and "200 OK" in r.text, r.text
    assert win32_props(dav, "/win/report.docx") == WIN32
    # allprop (what Explorer's folder view asks for) returns them too.
    allprop = propfind(dav, "/win/", "1", headers=EXPLORER)["/win/report.docx"]
    assert allprop[f"{{{MS}}}Win32LastModifiedTime"].text == WIN32["Win32LastModifiedTime"]
    # Folders (the collection root and a folder in it) keep theirs too.
    mkcol(dav, "/win/sub/")
    for folder in ("/win/", "/win/sub/"):
        assert dav.req("PROPPATCH", folder, data=WIN32_PROPPATCH, headers={**EXPLORER, "Content-Type": "text/xml"}).status_code == 207
        assert win32_props(dav, folder) == WIN32
    # COPY and MOVE carry them; DELETE drops them.
    dst = {"Destination": "/win/copy.docx"}
    assert dav.req("COPY", "/win/report.docx", headers=dst).status_code == 201
    assert win32_props(dav, "/win/copy.docx") == WIN32
    assert dav.req("MOVE", "/win/copy.docx", headers={"Destination": "/win/sub/moved.docx"}).status_code == 201
    assert win32_props(dav, "/win/sub/moved.docx") == WIN32
    assert dav.delete("/win/sub/moved.docx").status_code == 204
    assert dav.put("/win/sub/moved.docx", b"new").status_code == 201
    assert win32_props(dav, "/win/sub/moved.docx") == {}
    # Also through another URL of the same file.
    uuid = propfind(dav, "/win/", "0", ["{urn:davcoll:collection}uuid"])["/win/"]["{urn:davcoll:collection}uuid"].text
    assert win32_props(dav, f"/by_id/{uuid}/report.docx") == WIN32
    # desktop.ini (a metadata file) keeps its attributes (hidden, system) while it lives.
    assert dav.put("/win/desktop.ini", b"[.ShellClassInfo]").status_code == 201
    assert dav.req("PROPPATCH", "/win/desktop.ini", data=WIN32_PROPPATCH, headers={**EXPLORER, "Content-Type": "text/xml"}).status_code == 207
    assert win32_props(dav, "/win/desktop.ini") == WIN32


# ---------------------------------------------------------------- lockroot


def lock(dav: DavClient, path: str, depth: str = "0") -> tuple[str, str]:
    r = dav.req("LOCK", path, data=LOCK_BODY, headers={"Content-Type": "application/xml", "Depth": depth, "Timeout": "Second-600"})
    assert r.status_code in (200, 201), (r.status_code, r.text)
    return r.headers["Lock-Token"], etree.fromstring(r.content).find(f".//{D}lockroot/{D}href").text


def test_lockroot_is_the_url_that_was_locked(dav):
    mkcol(dav, "/lock me/")
    mkcol(dav, "/lock me/dir ü/")
    assert dav.put("/lock me/dir ü/a b.txt", b"a").status_code == 201
    assert dav.put("/lock me/c.txt", b"c").status_code == 201
    uuid = propfind(dav, "/lock me/", "0", ["{urn:davcoll:collection}uuid"])["/lock me/"]["{urn:davcoll:collection}uuid"].text
    listing = propfind(dav, "/lock me/dir ü/", "1")
    href_of_file = next(h for h in listing if h.endswith("a b.txt"))

    token, root = lock(dav, "/lock%20me/dir%20%C3%BC/a%20b.txt")
    assert unquote(root) == href_of_file == "/lock me/dir ü/a b.txt"
    assert root == quote("/lock me/dir ü/a b.txt")  # percent-encoded as in listings
    # lockdiscovery via PROPFIND, by name and by UUID: each its own URL.
    for path in ("/lock me/dir ü/a b.txt", f"/by_id/{uuid}/dir ü/a b.txt", f"/c={uuid}/dir ü/a b.txt"):
        props = propfind(dav, path, "0", [D + "lockdiscovery"])
        (href, p), = props.items()
        roots = [e.text for root in p[D + "lockdiscovery"].iter(D + "lockroot") for e in root.findall(D + "href")]
        assert [unquote(r) for r in roots] == [path], (path, roots)
    # The lock is the same whatever URL: a LOCK through the UUID conflicts.
    r = dav.req("LOCK", f"/by_id/{uuid}/dir%20%C3%BC/a%20b.txt", data=LOCK_BODY, headers={"Content-Type": "application/xml"})
    assert r.status_code == 423
    # A refresh (no body, If header) reports the URL too.
    r = dav.req("LOCK", "/lock%20me/dir%20%C3%BC/a%20b.txt", headers={"If": f"({token})", "Timeout": "Second-300"})
    assert r.status_code == 200, r.text
    assert unquote(etree.fromstring(r.content).find(f".//{D}lockroot/{D}href").text) == "/lock me/dir ü/a b.txt"
    assert dav.req("UNLOCK", f"/by_id/{uuid}/dir%20%C3%BC/a%20b.txt", headers={"Lock-Token": token}).status_code == 204

    # A folder locked through /by_id/: reported as /by_id/...; a refresh through a
    # file below it reports the folder's URL in the form the client used.
    token, root = lock(dav, f"/by_id/{uuid}/dir%20%C3%BC/", depth="infinity")
    assert unquote(root) == f"/by_id/{uuid}/dir ü/"
    r = dav.req("LOCK", "/lock%20me/dir%20%C3%BC/a%20b.txt", headers={"If": f"({token})"})
    assert r.status_code == 200, r.text
    assert unquote(etree.fromstring(r.content).find(f".//{D}lockroot/{D}href").text) == "/lock me/dir ü/"
    assert dav.put("/lock me/dir ü/a b.txt", b"blocked").status_code == 423
    assert dav.req("UNLOCK", "/lock%20me/dir%20%C3%BC/", headers={"Lock-Token": token}).status_code == 204

    # A whole collection locked by name.
    token, root = lock(dav, "/lock%20me/", depth="infinity")
    assert unquote(root) == "/lock me/"
    assert dav.req("UNLOCK", "/lock%20me/", headers={"Lock-Token": token}).status_code == 204


# ---------------------------------------------------------------- PUT into a missing collection


def test_put_into_a_missing_collection_names_it(dav):
    for method, path in (("PUT", "/nocoll/file.bin"), ("PUT", "/nocoll/deeper/file.bin"), ("MKCOL", "/nocoll/sub/")):
        r = dav.req(method, path, data=b"x" if method == "PUT" else None)
        assert r.status_code == 409, (method, path, r.status_code, r.text)
        assert "collection 'nocoll' does not exist (create it with MKCOL /nocoll/)" in r.text
    mkcol(dav, "/nocoll/")
    assert dav.put("/nocoll/file.bin", b"x").status_code == 201
    # A missing folder inside an existing collection keeps WsgiDAV's 409.
    assert dav.put("/nocoll/missing/file.bin", b"x").status_code == 409


README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_examples_work_top_to_bottom(tmp_path):
    """Every curl command of the README's Mounting section, in order, against
    a real server with a real token: each must succeed (curl --fail)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Mounting", 1)[1].split("\n## ", 1)[0]
    commands = [c.strip() for c in re.findall(r"^\s*(curl .+?)\s*$", section, flags=re.M)]
    assert len(commands) >= 3, commands
    (tmp_path / "file.bin").write_bytes(b"README example\n" * 100)
    with running_server(tmp_path / "data", anonymous="none") as s:
        token = s.app.backend.tokens.create(read_only=False, label="readme")
        base = s.url.rstrip("/")
        for cmd in commands:
            argv = [a.replace("$TOKEN", token).replace("http://host:8080", base).replace("https://host:8080", base)
                    for a in cmd.split()]
            assert argv[0] == "curl"
            done = subprocess.run(["curl", "--fail", "--silent", "--show-error", "--noproxy", "*", *argv[1:]],
                                  cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, (cmd, done.stderr, done.stdout)
        dav = DavClient(s.url, auth=("x", token))
        listing = dav.propfind("/mycoll/", "1")
        assert "file.bin" in listing.text
        assert dav.get("/mycoll/file.bin").content == (tmp_path / "file.bin").read_bytes()
    assert urlparse(base).hostname == "127.0.0.1"

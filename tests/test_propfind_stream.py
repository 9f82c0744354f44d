"""PROPFIND: Depth handling, the infinite-depth entry cap, and the streamed
multistatus (dav/propfind.py).

The streamed reply must say exactly what WsgiDAV's built-in handler said
(litmus' props suite checks that too, see test_litmus.py); these tests add
the cases litmus does not cover: Depth infinity and the cap, the refused
virtual folders, chunked framing on a kept-alive connection, names that need
XML and URL escaping, and 404 propstats and dead properties per member.
"""

from __future__ import annotations

import http.client
import re
import socket
import uuid as uuidlib
import xml.etree.ElementTree as ET
from urllib.parse import quote, unquote, urlparse

import pytest
import requests

from davclient import D, DavClient, hrefs, parse_multistatus
from server_util import running_server

CAP = 6
EMPTY = "d41d8cd98f00b204e9800998ecf8427e+0"


@pytest.fixture(scope="module")
def server_overrides():
    return {"propfind_infinity_max_entries": CAP}


def propfind(dav: DavClient, path: str, depth: str | None = "1", body: bytes | str = b"",
             headers: dict | None = None) -> requests.Response:
    """PROPFIND of a plain path (percent-encoded here); ``depth=None`` sends no Depth."""
    return dav.propfind(quote(path), depth, body, headers={"Content-Type": "application/xml", **(headers or {})})


def responses(r: requests.Response) -> dict[str, dict[str, tuple[int, ET.Element]]]:
    """Decoded href → {prop tag: (status code, element)} (status-only responses: {'': (code, None)})."""
    out: dict[str, dict] = {}
    for resp in parse_multistatus(r):  # asserts a 207 multistatus
        href = unquote(resp.href)
        assert href not in out, f"duplicate response for {href}"
        props: dict[str, tuple[int, ET.Element | None]] = dict(resp.props)
        if resp.status is not None:
            props[""] = (resp.status, None)
        out[href] = props
    return out


def is_finite_depth_error(r: requests.Response) -> bool:
    if r.status_code != 403:
        return False
    err = ET.fromstring(r.content)
    return err.tag == f"{D}error" and err.find(f"{D}propfind-finite-depth") is not None


def put(dav: DavClient, path: str, data: bytes = b"x") -> None:
    assert dav.put(quote(path), data).status_code in (201, 204)


def mkcol(dav: DavClient, path: str) -> None:
    assert dav.mkcol(quote(path)).status_code == 201


# ------------------------------------------------------------------ Depth


@pytest.mark.parametrize("depth", [None, "infinity", "Infinity", "1", "0"])
def test_any_depth_on_a_file_is_depth_0(dav, coll, depth):
    put(dav, f"{coll}/f.txt", b"hello")
    got = responses(propfind(dav, f"{coll}/f.txt", depth))
    assert list(got) == [f"/{coll}/f.txt"]
    assert got[f"/{coll}/f.txt"][f"{D}getcontentlength"][1].text == "5"


@pytest.mark.parametrize("depth", [None, "infinity"])
def test_infinity_on_a_small_folder_lists_every_level(dav, coll, depth):
    mkcol(dav, f"{coll}/a/")
    mkcol(dav, f"{coll}/a/b/")
    put(dav, f"{coll}/a/b/deep.txt")
    put(dav, f"{coll}/top.txt")
    got = responses(propfind(dav, f"{coll}/", depth))
    assert sorted(got) == sorted([f"/{coll}/", f"/{coll}/a/", f"/{coll}/a/b/", f"/{coll}/a/b/deep.txt",
                                  f"/{coll}/top.txt"])
    # Depth 1 stops at the first level.
    assert sorted(responses(propfind(dav, f"{coll}/", "1"))) == sorted([f"/{coll}/", f"/{coll}/a/", f"/{coll}/top.txt"])


def test_infinity_above_the_cap_is_403_with_the_precondition(dav, coll):
    mkcol(dav, f"{coll}/d/")
    for i in range(CAP - 2):  # collection root + d/ + files = CAP entries: allowed
        put(dav, f"{coll}/d/f{i}")
    assert len(responses(propfind(dav, f"{coll}/", "infinity"))) == CAP
    put(dav, f"{coll}/one-too-many")
    for depth in (None, "infinity"):
        r = propfind(dav, f"{coll}/", depth)
        assert is_finite_depth_error(r), (r.status_code, r.text)
        assert r.headers["Content-Type"].startswith("application/xml")
    # A smaller subtree is still answered, and Depth 1 always is.
    assert len(responses(propfind(dav, f"{coll}/d/", "infinity"))) == CAP - 1
    assert len(responses(propfind(dav, f"{coll}/", "1"))) == 3


@pytest.mark.parametrize("path", ["", "by_id/"])
@pytest.mark.parametrize("depth", [None, "infinity"])
def test_root_and_by_id_are_never_walked(dav, coll, path, depth):
    r = propfind(dav, path, depth)
    assert is_finite_depth_error(r), (r.status_code, r.text)
    assert propfind(dav, path, "1").status_code == 207


def test_cap_zero_refuses_folders_but_answers_files(tmp_path):
    with running_server(tmp_path / "data", anonymous="write", propfind_infinity_max_entries=0) as s:
        dav = DavClient(s.url)
        mkcol(dav, "c/")
        put(dav, "c/f")
        assert is_finite_depth_error(propfind(dav, "c/", None))
        assert list(responses(propfind(dav, "c/f", None))) == ["/c/f"]


def test_invalid_depth_is_400(dav, coll):
    for bad in ("2", "one", "infinite"):
        assert propfind(dav, f"{coll}/", bad).status_code == 400, bad


def test_missing_resource_is_404_before_depth(dav):
    assert propfind(dav, "no-such-collection/x/", None).status_code == 404


# ------------------------------------------------------------------ streaming


def big_collection(srv, nfiles: int) -> str:
    """A collection with folder big/ of ``nfiles`` empty files, stored straight into the catalog."""
    name = "pf-big-" + uuidlib.uuid4().hex[:8]
    files = " ".join(f"0:0:f{i:06d}.dat" for i in range(nfiles))
    srv.app.backend.catalog_.create(name, f"./big {EMPTY} {files}\n")
    return name


def test_large_listing_is_chunked_and_the_connection_stays_usable(srv):
    n = 5000
    name = big_collection(srv, n)
    u = urlparse(srv.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request("PROPFIND", f"/{name}/big/", headers={"Depth": "1"})
        r = conn.getresponse()
        assert r.status == 207
        assert r.getheader("Transfer-Encoding", "").lower() == "chunked"
        assert r.getheader("Content-Length") is None
        assert r.getheader("Connection") is None  # kept alive (HTTP/1.1 default)
        body = r.read()
        paths = [unquote(h) for h in hrefs(body)]
        assert len(paths) == n + 1
        assert paths[0] == f"/{name}/big/" and set(paths[1:]) == {f"/{name}/big/f{i:06d}.dat" for i in range(n)}
        # Same connection, next request: the chunked body ended cleanly.
        conn.request("PROPFIND", f"/{name}/big/f000007.dat", headers={"Depth": "0"})
        r2 = conn.getresponse()
        assert r2.status == 207 and b"f000007.dat" in r2.read()
    finally:
        conn.close()


def test_small_reply_keeps_its_content_length(srv, dav, coll):
    put(dav, f"{coll}/f", b"abc")
    u = urlparse(srv.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("PROPFIND", f"/{coll}/", headers={"Depth": "1"})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 207 and r.getheader("Transfer-Encoding") is None
        assert int(r.getheader("Content-Length")) == len(body) and len(parse_multistatus(body)) == 2
    finally:
        conn.close()


def test_http_1_0_client_gets_the_body_up_to_close(srv):
    name = big_collection(srv, 200)
    u = urlparse(srv.url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(f"PROPFIND /{name}/big/ HTTP/1.0\r\nHost: x\r\nDepth: 1\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 207") or head.startswith(b"HTTP/1.1 207"), head
    assert b"chunked" not in head.lower()
    assert len(parse_multistatus(body)) == 201


def test_infinity_over_many_levels_streams_every_entry(tmp_path):
    with running_server(tmp_path / "data", anonymous="write", propfind_infinity_max_entries=2000) as s:
        lines = [f"./d{i:02d}/e{j} {EMPTY} " + " ".join(f"0:0:f{k}" for k in range(9)) for i in range(10) for j in range(10)]
        s.app.backend.catalog_.create("deep", "\n".join(lines) + "\n")
        r = propfind(DavClient(s.url), "deep/", "infinity", headers={"Connection": "close"})
        assert r.headers.get("Connection") == "close"  # asked for: the guard keeps it
        got = responses(r)
        # root + 10 d* + 100 e* + 900 files
        assert len(got) == 1 + 10 + 100 + 900
        assert "/deep/d03/e7/f8" in got and got["/deep/d03/e7/"][f"{D}resourcetype"][1].find(f"{D}collection") is not None


NAMES = ["a<b.txt", "x&y.txt", 'q"uote.txt', "été ☃.txt", "100% sure.txt", "semi;colon.txt", "hash#tag.txt",
         "apos'trophe.txt", "plus+eq=.txt", "tab]bracket[.txt"]


def test_multistatus_is_well_formed_with_names_that_need_escaping(dav, coll):
    mkcol(dav, f"{coll}/sub <&> dir/")
    for n in NAMES:
        put(dav, f"{coll}/sub <&> dir/{n}", n.encode())
    got = responses(propfind(dav, f"{coll}/sub <&> dir/", "1"))
    base = f"/{coll}/sub <&> dir/"
    assert set(got) == {base} | {base + n for n in NAMES}
    for n in NAMES:
        props = got[base + n]
        assert props[f"{D}displayname"][1].text == n
        assert props[f"{D}getcontentlength"][1].text == str(len(n.encode()))
    # The raw hrefs are percent-encoded: no space, '#', '%' left bare (RFC 3986).
    raw = hrefs(propfind(dav, f"{coll}/sub <&> dir/", "1"))
    assert all(" " not in h and "#" not in h and "<" not in h for h in raw)
    assert all(re.fullmatch(r"(?:[^%]|%[0-9A-F]{2})*", h) for h in raw), raw


# ------------------------------------------------------------------ semantics kept


def test_named_props_missing_ones_are_404_propstat(dav, coll):
    put(dav, f"{coll}/f", b"abc")
    body = ('<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:Z="urn:z"><D:prop>'
            "<D:getcontentlength/><Z:nothere/><D:resourcetype/></D:prop></D:propfind>")
    got = responses(propfind(dav, f"{coll}/", "1", body))
    f = got[f"/{coll}/f"]
    assert f[f"{D}getcontentlength"][0] == 200 and f[f"{D}getcontentlength"][1].text == "3"
    assert f["{urn:z}nothere"][0] == 404
    assert f[f"{D}resourcetype"][0] == 200
    assert got[f"/{coll}/"][f"{D}resourcetype"][1].find(f"{D}collection") is not None
    assert set(f) == {f"{D}getcontentlength", "{urn:z}nothere", f"{D}resourcetype"}


def test_dead_props_in_allprop_propname_and_include(dav, coll):
    put(dav, f"{coll}/f", b"abc")
    pp = ('<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop>'
          "<Z:color>blue &amp; green</Z:color></D:prop></D:set></D:propertyupdate>")
    r = dav.proppatch(f"{coll}/f", pp, headers={"Content-Type": "application/xml"})
    assert r.status_code == 207, r.text
    allprop = responses(propfind(dav, f"{coll}/", "1"))  # empty body = allprop
    f = allprop[f"/{coll}/f"]
    assert f["{urn:z}color"] == (200, f["{urn:z}color"][1]) and f["{urn:z}color"][1].text == "blue & green"
    assert f[f"{D}getetag"][1].text.startswith('"')
    assert f"{D}lockdiscovery" in f and f"{D}supportedlock" in f
    names = responses(propfind(dav, f"{coll}/", "1", '<D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>'))
    nf = names[f"/{coll}/f"]
    assert "{urn:z}color" in nf and f"{D}getcontentlength" in nf
    assert all(el is not None and len(el) == 0 and not (el.text or "").strip() for code, el in nf.values())
    inc = ('<D:propfind xmlns:D="DAV:" xmlns:Z="urn:z"><D:allprop/><D:include><Z:absent/>'
           "</D:include></D:propfind>")
    fi = responses(propfind(dav, f"{coll}/f", "0", inc))[f"/{coll}/f"]
    assert fi["{urn:z}absent"][0] == 404 and fi["{urn:z}color"][0] == 200


@pytest.mark.parametrize("body", [
    '<D:propfind xmlns:D="DAV:"><D:allprop/><D:propname/></D:propfind>',
    '<D:propfind xmlns:D="DAV:"><D:propname/><D:prop><D:getetag/></D:prop></D:propfind>',
    '<D:propertyupdate xmlns:D="DAV:"/>',
    '<D:propfind xmlns:D="DAV:"><D:prop><D:getetag/></D:prop><D:include><D:getetag/></D:include></D:propfind>',
])
def test_bad_request_bodies_are_400(dav, coll, body):
    assert propfind(dav, f"{coll}/", "1", body).status_code == 400


def test_if_match_is_evaluated(dav, coll):
    put(dav, f"{coll}/f", b"abc")
    r = propfind(dav, f"{coll}/f", "0", headers={"If-Match": '"not-the-etag"'})
    assert r.status_code == 412
    etag = dav.head(f"{coll}/f").headers["ETag"]
    assert propfind(dav, f"{coll}/f", "0", headers={"If-Match": etag}).status_code == 207


def test_proppatch_ignores_depth(dav, coll):
    """webdavclient3 sends Depth: 1 on PROPPATCH; RFC 4918 defines none for it."""
    put(dav, f"{coll}/f", b"abc")
    pp = ('<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop>'
          "<Z:k>v</Z:k></D:prop></D:set></D:propertyupdate>")
    for depth in ("1", "infinity", "0"):
        r = dav.proppatch(f"{coll}/f", pp, headers={"Content-Type": "application/xml", "Depth": depth})
        assert r.status_code == 207, (depth, r.status_code, r.text)

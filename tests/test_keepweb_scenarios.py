"""The keep-web scenario list (keep-web-notes.md, section (b)) against davcoll.

One test per scenario that applies, numbered as in the notes (``test_sNN_``),
plus davcoll's own additions (collections at ``/``, cross-collection COPY and
MOVE, ``.arvados#collection``, collection properties, junk files, Unicode
normalisation, health and metrics).  Every test talks HTTP to a real
in-process server and, where it matters, checks the catalog behind it.

Where keep-web and RFC 4918 disagree davcoll follows the RFC (and WsgiDAV):
PUT/MKCOL into a missing parent → 409, MOVE without ``Overwrite`` replaces
the target, overwriting PUT → 204, real locks.  Not applicable to davcoll
(no such feature): cookies and ``?api_token=`` (4-6), per-user permissions
(8 "no read access", 10, 42, 43), anonymous tokens (11), multiple tokens
(12), the ``/_/`` escape (14, second half), CORS (24, second half), past
version UUIDs (52) and the manual client scenarios (53-56; cadaver, rclone
and litmus have their own test files).
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import html
import os
import re
import threading
import time
import unicodedata
import uuid as uuidlib
import xml.etree.ElementTree as ET
from email.utils import formatdate
from html.parser import HTMLParser
from urllib.parse import quote, unquote, urljoin, urlparse

import pytest
import requests

from davcoll.storage.catalog import Unavailable
from davclient import DavClient, parse_multistatus, wait_until
from server_util import running_server

D = "{DAV:}"
PROPS_NS = "urn:davcoll:properties"
COLL_NS = "urn:davcoll:collection"

LOCK_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>'
    b'<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
    b"<D:locktype><D:write/></D:locktype><D:owner>tester</D:owner></D:lockinfo>"
)


# ---------------------------------------------------------------- fixtures


def Client(base: str, token: str | None) -> DavClient:
    """A client with a token; paths are quoted, redirects not followed."""
    return DavClient(base, token=token, quote_paths=True, allow_redirects=False)


class Env:
    def __init__(self, srv, rw: str, ro: str) -> None:
        self.srv = srv
        self.rw = rw
        self.ro = ro
        self.c = Client(srv.url, rw)
        self.backend = srv.app.backend
        self.catalog = srv.app.backend.catalog_

    @property
    def port(self) -> int:
        return urlparse(self.srv.url).port

    def record(self, name: str):
        rec = self.catalog.find_by_name(name)
        assert rec is not None, f"no collection {name!r}"
        return self.catalog.get(rec.uuid)

    def manifest(self, name: str) -> str:
        return self.record(name).manifest_text

    def files(self, name: str) -> dict[str, bytes]:
        """Every file of a collection, read through the server."""
        out = {}
        for href, props in propfind_all(self.c, name):
            if not props["is_dir"]:
                path = unquote(urlparse(href).path).lstrip("/")
                r = self.c.get(path)
                assert r.status_code == 200, (path, r.status_code)
                out[path[len(name) + 1 :]] = r.content
        return out

    def block_count(self) -> int:
        return sum(1 for _ in self.backend.blocks.iter_blocks())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("kw") / "data", anonymous="none") as srv:
        rw = srv.app.backend.tokens.create(read_only=False, label="rw")
        ro = srv.app.backend.tokens.create(read_only=True, label="ro")
        yield Env(srv, rw, ro)


@pytest.fixture
def coll(env):
    """A fresh, empty collection for one test; returns its name."""
    name = "kw-" + uuidlib.uuid4().hex[:10]
    r = env.c.mkcol(name + "/")
    assert r.status_code == 201, r.text
    return name


def multistatus(r: requests.Response) -> dict[str, dict]:
    """href → {'is_dir', 'props': {tag: element}, 'status': {tag: code}}."""
    out = {}
    for resp in parse_multistatus(r):
        out[resp.href] = {
            "is_dir": resp.is_dir,
            "props": {tag: el for tag, (code, el) in resp.props.items() if code == 200},
            "status": {tag: code for tag, (code, _) in resp.props.items()},
        }
    return out


def propfind_all(c: Client, top: str):
    """Walk a collection with Depth 1 PROPFINDs (infinity is disabled)."""
    todo = [top.rstrip("/") + "/"]
    seen = set()
    while todo:
        path = todo.pop()
        ms = multistatus(c.propfind(path, "1"))
        for href, props in ms.items():
            p = unquote(urlparse(href).path).lstrip("/")
            if p in seen or p == path:
                continue
            seen.add(p)
            if props["is_dir"]:
                todo.append(p)
            yield href, props


def make_file_from_blocks(env: Env, name: str, fname: str, blocks: list[bytes]) -> bytes:
    """A collection whose file spans several stored blocks (one per element)."""
    locators = [env.backend.blocks.put(b) for b in blocks]
    data = b"".join(blocks)
    env.catalog.create(name, f". {' '.join(locators)} 0:{len(data)}:{fname}\n")
    return data


# ============================================================ auth and addressing


def test_s01_bearer(env, coll):
    assert env.c.put(f"{coll}/foo", b"foo").status_code == 201
    r = requests.get(env.c.u(f"{coll}/foo"), headers={"Authorization": f"Bearer {env.rw}"})
    assert r.status_code == 200 and r.content == b"foo"


def test_s02_oauth2(env, coll):
    env.c.put(f"{coll}/foo", b"foo")
    r = requests.get(env.c.u(f"{coll}/foo"), headers={"Authorization": f"OAuth2 {env.rw}"})
    assert r.status_code == 200 and r.content == b"foo"


def test_s03_basic_password_is_token_username_ignored(env, coll):
    env.c.put(f"{coll}/foo", b"foo")
    for user in ("x", "someone else", "ü"):
        r = requests.get(env.c.u(f"{coll}/foo"), auth=(user, env.rw))
        assert r.status_code == 200 and r.content == b"foo", user
    # a Basic PUT writes too, and the user name does not matter for locks
    r = requests.put(env.c.u(f"{coll}/bar"), data=b"bar", auth=("anyone", env.rw))
    assert r.status_code == 201


@pytest.mark.parametrize("auth", [None, "Bearer bogus-token", "Basic " + base64.b64encode(b"x:bogus").decode()])
def test_s07_s08_missing_or_bogus_token_is_401_with_basic_challenge(env, coll, auth):
    env.c.put(f"{coll}/foo", b"foo")
    headers = {"Authorization": auth} if auth else {}
    for method, path in [("GET", f"{coll}/foo"), ("PROPFIND", f"{coll}/"), ("PUT", f"{coll}/new"), ("GET", "")]:
        r = requests.request(method, env.c.u(path), headers={**headers, "Depth": "1"}, data=b"x" if method == "PUT" else None)
        assert r.status_code == 401, (method, path, r.status_code)
        challenge = r.headers.get("WWW-Authenticate", "")
        assert challenge.lower().startswith("basic realm="), challenge
    assert env.c.get(f"{coll}/new").status_code == 404


def test_s08_read_only_token_reads_but_gets_403_on_writes(env, coll):
    env.c.put(f"{coll}/foo", b"foo")
    env.c.mkcol(f"{coll}/dir/")
    ro = Client(env.srv.url, env.ro)
    assert ro.get(f"{coll}/foo").content == b"foo"
    assert ro.propfind(f"{coll}/", "1").status_code == 207
    before = env.record(coll).version
    writes = [
        ro.put(f"{coll}/foo", b"changed"),
        ro.put(f"{coll}/new", b"new"),
        ro.mkcol(f"{coll}/dir2/"),
        ro.req("DELETE", f"{coll}/foo"),
        ro.move(f"{coll}/foo", f"{coll}/moved"),
        ro.copy(f"{coll}/foo", f"{coll}/copied"),
        ro.req("PROPPATCH", f"{coll}/foo", data=proppatch_body("urn:x", "a", "1")),
        ro.req("LOCK", f"{coll}/foo", data=LOCK_BODY),
        ro.mkcol("newcoll-by-ro/"),
    ]
    assert [r.status_code for r in writes] == [403] * len(writes)
    assert env.record(coll).version == before
    assert env.c.get(f"{coll}/foo").content == b"foo"


def test_s09_token_in_path(env, coll):
    env.c.put(f"{coll}/foo", b"foo")
    r = requests.get(env.c.u(f"t={env.rw}/{coll}/foo"))
    assert r.status_code == 200 and r.content == b"foo"
    r = requests.put(env.c.u(f"t={env.rw}/{coll}/viapath"), data=b"p")
    assert r.status_code == 201
    assert env.c.get(f"{coll}/viapath").content == b"p"
    # PROPFIND hrefs under a path token keep working as relative URLs
    ms = multistatus(requests.request("PROPFIND", env.c.u(f"t={env.rw}/{coll}/"), headers={"Depth": "1"}))
    assert any(unquote(h).endswith("/viapath") for h in ms)
    # davcoll answers a bad path token like a bad header token: 401 + challenge
    # (keep-web says 404 here).
    r = requests.get(env.c.u(f"t=bogus/{coll}/foo"))
    assert r.status_code == 401 and "basic" in r.headers.get("WWW-Authenticate", "").lower()
    # a read-only token in the path cannot write
    r = requests.put(env.c.u(f"t={env.ro}/{coll}/ro"), data=b"x")
    assert r.status_code == 403


@pytest.mark.parametrize(
    "path",
    ["by_id/garbage/foo", "c=garbage/foo", "by_id/zzzzz-4zz18-zzzzzzzzzzzzzzz/foo", "c=zzzzz-4zz18-zzzzzzzzzzzzzzz/",
     "by_id/00000000000000000000000000000000+0/foo", "no-such-collection/foo", "by_id/acbd18db4cc2f85cedef654fccc4a4d8+3-/x"],
)
def test_s13_malformed_or_unknown_ids_are_404(env, path):
    r = env.c.get(path)
    assert r.status_code == 404, (path, r.status_code)


def test_s14_ids_in_every_url_form(env, coll):
    env.c.put(f"{coll}/foo", b"foo")
    rec = env.record(coll)
    pdh = rec.portable_data_hash
    dashed = pdh.replace("+", "-")
    for prefix in (f"by_id/{rec.uuid}", f"c={rec.uuid}", f"by_id/{pdh}", f"c={pdh}", f"by_id/{dashed}", f"c={dashed}"):
        r = env.c.get(f"{prefix}/foo")
        assert r.status_code == 200 and r.content == b"foo", prefix
    # a space stands for '+' too (URL-encoded)
    r = requests.get(env.srv.url + f"c={pdh.replace('+', '%20')}/foo", headers={"Authorization": f"Bearer {env.rw}"})
    assert r.status_code == 200 and r.content == b"foo"


# ============================================================ reads


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


AWKWARD = ["a b.txt", "q'uote\".txt", "hash#x", "pct%25", "amp&x=1", "ü.txt", "semi;colon", "plus+sign", "<angle>"]


def test_s15_directory_listing(env, coll):
    for name in AWKWARD:
        assert env.c.put(f"{coll}/{name}", name.encode()).status_code == 201, name
    assert env.c.mkcol(f"{coll}/sub dir/").status_code == 201
    assert env.c.put(f"{coll}/sub dir/inner.txt", b"inner").status_code == 201
    # without the slash → redirect to the slash URL (relative links need it)
    r = env.c.get(coll)
    assert r.status_code in (301, 302, 303, 307, 308)
    assert unquote(urlparse(r.headers["Location"]).path) == f"/{coll}/"
    base = env.c.u(f"{coll}/")
    r = env.c.get(f"{coll}/")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    parser = _Links()
    parser.feed(r.text)
    prefix = f"/{coll}/"
    found = {}
    for href in parser.hrefs:
        target = urljoin(base, href)
        path = unquote(urlparse(target).path)
        if path.startswith(prefix) and len(path) > len(prefix):
            found[path[len(prefix) :]] = target
    assert set(found) == set(AWKWARD) | {"sub dir/"}, sorted(found)
    # every link works and serves the right file
    for name in AWKWARD:
        r = env.c.http.get(found[name], timeout=30)
        assert r.status_code == 200 and r.content == name.encode(), name
    r = env.c.http.get(urljoin(found["sub dir/"], "inner.txt"), timeout=30)
    assert r.content == b"inner"
    # the top level lists collections the same way
    r = env.c.get("")
    assert r.status_code == 200
    parser = _Links()
    parser.feed(r.text)
    tops = {unquote(urlparse(urljoin(env.srv.url, h)).path) for h in parser.hrefs}
    assert f"/{coll}/" in tops


def test_s16_content_type_by_extension(env, coll):
    cases = {
        "a.txt": "text/plain; charset=utf-8",
        "b.jpg": "image/jpeg",
        "c.html": "text/html; charset=utf-8",
        "d.json": "application/json",
        "e.pdf": "application/pdf",
        "F.PNG": "image/png",
        "noext": "application/octet-stream",  # davcoll does not sniff content
        "bmp-magic": "application/octet-stream",
    }
    for name in cases:
        env.c.put(f"{coll}/{name}", b"BM\x00\x00" if name == "bmp-magic" else b"x")
    for name, ctype in cases.items():
        r = env.c.get(f"{coll}/{name}")
        assert r.headers["Content-Type"] == ctype, name
    ms = multistatus(env.c.propfind(f"{coll}/", "1"))
    for href, p in ms.items():
        name = unquote(href).rsplit("/", 1)[-1]
        if name in cases:
            assert p["props"][f"{D}getcontenttype"].text == cases[name]


RANGES = [
    ("0-2", 0, 2),
    ("-2", 3999998, 3999999),
    ("1-4", 1, 4),
    ("1000000-1000003", 1000000, 1000003),
    ("999999-1000003", 999999, 1000003),
    ("2999999-3000000", 2999999, 3000000),
    ("3999998-4000004", 3999998, 3999999),  # clamped
    ("3999998-", 3999998, 3999999),
    ("0-", 0, 3999999),
    ("0-3999999", 0, 3999999),
]


@pytest.fixture(scope="module")
def four_mb(env):
    """Two 4,000,000-byte files: one PUT through the server, one made of
    four 1,000,000-byte blocks (block boundaries at 1e6, 2e6, 3e6)."""
    name = "kw-ranges"
    data = os.urandom(4_000_000)
    assert env.c.mkcol(f"{name}/").status_code == 201
    assert env.c.put(f"{name}/put.bin", data).status_code == 201
    blocks = [os.urandom(1_000_000) for _ in range(4)]
    multi = make_file_from_blocks(env, "kw-ranges-blocks", "multi.bin", blocks)
    return {f"{name}/put.bin": data, "kw-ranges-blocks/multi.bin": multi}


@pytest.mark.parametrize("which", ["kw-ranges/put.bin", "kw-ranges-blocks/multi.bin"])
def test_s17_ranges(env, four_mb, which):
    data = four_mb[which]
    for spec, lo, hi in RANGES:
        r = env.c.get(which, headers={"Range": f"bytes={spec}"})
        assert r.status_code == 206, spec
        assert r.headers["Content-Range"] == f"bytes {lo}-{hi}/4000000", spec
        assert int(r.headers["Content-Length"]) == hi - lo + 1
        assert r.content == data[lo : hi + 1], spec
    for bad in ("bytes=z-y", "bytes=4000000-", "bytes=4000000-4000010"):
        r = env.c.get(which, headers={"Range": bad})
        assert r.status_code == 416, bad
    r = env.c.get(which, headers={"Range": "bytes=4000000-"})
    assert r.headers.get("Content-Range") == "bytes */4000000"


def test_s18_conditional_get_304(env, coll):
    env.c.put(f"{coll}/f.txt", b"conditional")
    r = env.c.get(f"{coll}/f.txt")
    etag, lm = r.headers["ETag"], r.headers["Last-Modified"]
    r = env.c.get(f"{coll}/f.txt", headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""
    r = env.c.get(f"{coll}/f.txt", headers={"If-Modified-Since": formatdate(time.time() + 5, usegmt=True)})
    assert r.status_code == 304 and r.content == b""
    r = env.c.get(f"{coll}/f.txt", headers={"If-Modified-Since": lm})
    assert r.status_code == 304
    r = env.c.get(f"{coll}/f.txt", headers={"If-None-Match": '"something-else"'})
    assert r.status_code == 200 and r.content == b"conditional"
    r = env.c.get(f"{coll}/f.txt", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert r.status_code == 200
    # a new version changes the ETag, so the old tag no longer matches
    env.c.put(f"{coll}/f.txt", b"conditional 2")
    r = env.c.get(f"{coll}/f.txt", headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.content == b"conditional 2"


def test_s19_head_matches_get(env, coll):
    env.c.put(f"{coll}/h.json", b'{"a": 1}')
    g = env.c.get(f"{coll}/h.json")
    h = env.c.req("HEAD", f"{coll}/h.json")
    assert h.status_code == 200 and h.content == b""
    for k in ("Content-Length", "ETag", "Last-Modified", "Content-Type"):
        assert h.headers[k] == g.headers[k], k
    assert h.headers["Content-Length"] == "8"
    assert env.c.req("HEAD", f"{coll}/missing").status_code == 404


@pytest.mark.slow
def test_s20_hundred_block_file(env):
    blocks = [os.urandom(30_000) for _ in range(100)]
    data = make_file_from_blocks(env, "kw-100blocks", "f.bin", blocks)
    r = env.c.get("kw-100blocks/f.bin")
    assert r.status_code == 200
    assert r.headers["Content-Length"] == str(len(data))
    assert hashlib.md5(r.content).digest() == hashlib.md5(data).digest()
    r = env.c.get("kw-100blocks/f.bin", headers={"Range": "bytes=29990-2970010"})
    assert r.content == data[29990:2970011]


def test_s21_propfind_depth1_listing(env, coll):
    env.c.mkcol(f"{coll}/my dir/")
    env.c.put(f"{coll}/my file.txt", b"12345")
    env.c.put(f"{coll}/my dir/x", b"x")
    etag = env.c.get(f"{coll}/my file.txt").headers["ETag"]
    ms = multistatus(env.c.propfind(f"{coll}/", "1"))
    q = quote(coll)
    assert set(ms) == {f"/{q}/", f"/{q}/my%20dir/", f"/{q}/my%20file.txt"}
    f = ms[f"/{q}/my%20file.txt"]
    assert not f["is_dir"]
    assert f["props"][f"{D}getcontentlength"].text == "5"
    assert f["props"][f"{D}getetag"].text == etag  # same entity-tag as the header
    assert f"{D}getlastmodified" in f["props"]
    for href in (f"/{q}/", f"/{q}/my%20dir/"):
        d = ms[href]
        assert d["is_dir"] and href.endswith("/")
        assert f"{D}getetag" not in d["props"]
        assert f"{D}getlastmodified" in d["props"]
    # the root lists collections, as folders
    root = multistatus(env.c.propfind("", "1"))
    assert f"/{q}/" in root and root[f"/{q}/"]["is_dir"]
    assert "/" in root


def test_s22_propfind_depths(env, coll):
    env.c.mkcol(f"{coll}/d/")
    env.c.put(f"{coll}/d/f", b"f")
    ms = multistatus(env.c.propfind(f"{coll}/", "0"))
    assert list(ms) == [f"/{coll}/"]
    ms = multistatus(env.c.propfind(f"{coll}/d/f", "0"))
    assert list(ms) == [f"/{coll}/d/f"]
    # Depth: infinity (and no Depth, which means infinity) is answered on a
    # folder below the entry cap and on a file (where it means Depth 0); the
    # server root is never walked (RFC 4918 9.1 propfind-finite-depth)
    for headers in ({"Depth": "infinity"}, {}):
        ms = multistatus(env.c.req("PROPFIND", f"{coll}/", headers=headers))
        assert sorted(ms) == [f"/{coll}/", f"/{coll}/d/", f"/{coll}/d/f"]
        ms = multistatus(env.c.req("PROPFIND", f"{coll}/d/f", headers=headers))
        assert list(ms) == [f"/{coll}/d/f"]
        r = env.c.req("PROPFIND", "", headers=headers)
        assert r.status_code == 403
        err = ET.fromstring(r.content)
        assert err.tag == f"{D}error" and err.find(f"{D}propfind-finite-depth") is not None
    for bad in ("2", "-1", "infinite", "one"):
        assert env.c.propfind(f"{coll}/", bad).status_code == 400, bad


def test_s23_propfind_reads_no_file_content(env):
    # A collection whose files reference blocks that do not exist anywhere:
    # listing must still work, because PROPFIND never reads content.
    fake = [hashlib.md5(str(i).encode()).hexdigest() + "+67108864" for i in range(8)]
    lines = " ".join(fake) + " " + " ".join(f"{i * 67108864}:67108864:big{i}.unknownext" for i in range(8))
    env.catalog.create("kw-noread", ". " + lines + "\n")
    before = env.backend.cache_stats()
    t0 = time.monotonic()
    ms = multistatus(env.c.propfind("kw-noread/", "1"))
    elapsed = time.monotonic() - t0
    files = [p for h, p in ms.items() if not p["is_dir"]]
    assert len(files) == 8
    assert all(p["props"][f"{D}getcontentlength"].text == "67108864" for p in files)
    after = env.backend.cache_stats()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])
    assert elapsed < 5


def test_s24_options(env, coll):
    r = env.c.req("OPTIONS", f"{coll}/")
    assert r.status_code == 200
    classes = {x.strip() for x in r.headers["DAV"].split(",")}
    assert {"1", "2"} <= classes
    assert r.headers.get("MS-Author-Via") == "DAV"
    env.c.put(f"{coll}/f", b"f")
    expected = {
        f"{coll}/": {"PROPFIND", "PROPPATCH", "LOCK", "UNLOCK", "MOVE", "COPY", "DELETE", "GET", "HEAD"},
        f"{coll}/f": {"PROPFIND", "PUT", "LOCK", "MOVE", "COPY", "DELETE", "GET"},
        f"{coll}/missing": {"PUT", "MKCOL"},
    }
    for path, methods in expected.items():
        r = env.c.req("OPTIONS", path)
        allow = {x.strip() for x in r.headers["Allow"].split(",")}
        assert methods <= allow, (path, allow)


def test_s25_unknown_method(env, coll):
    env.c.put(f"{coll}/f", b"f")
    r = env.c.req("PATCH", f"{coll}/f", data=b"x")
    assert r.status_code in (405, 501)
    assert env.c.get(f"{coll}/f").content == b"f"


# ============================================================ writes


def test_s26_put_new_and_empty(env, coll):
    data = os.urandom(100_000)
    r = env.c.put(f"{coll}/new.bin", data)
    assert r.status_code == 201
    assert env.c.get(f"{coll}/new.bin").content == data
    assert env.c.put(f"{coll}/empty", b"").status_code == 201
    r = env.c.get(f"{coll}/empty")
    assert r.status_code == 200 and r.content == b"" and r.headers["Content-Length"] == "0"
    m = env.manifest(coll)
    assert "0:0:empty" in m and ":100000:new.bin" in m


def test_s27_put_overwrite(env, coll):
    env.c.put(f"{coll}/f", b"first version")
    v = env.record(coll).version
    r = env.c.put(f"{coll}/f", b"second")
    assert r.status_code == 204  # RFC/WsgiDAV; keep-web says 201
    assert env.c.get(f"{coll}/f").content == b"second"
    assert env.record(coll).version == v + 1


def test_s28_put_missing_parent_is_409(env, coll):
    r = env.c.put(f"{coll}/a/b/c.txt", b"x")
    assert r.status_code == 409  # RFC 4918 9.7.1 (keep-web creates parents)
    assert env.c.get(f"{coll}/a/").status_code == 404
    env.c.put(f"{coll}/file", b"f")
    assert env.c.put(f"{coll}/file/child", b"x").status_code == 409
    assert env.manifest(coll).count("\n") == 1


def test_s29_chunked_put_with_expected_length(env, coll):
    pieces = [os.urandom(65524) for _ in range(20)]
    data = b"".join(pieces)
    r = env.c.put(f"{coll}/finder.bin", iter(pieces), headers={"X-Expected-Entity-Length": str(len(data))})
    assert r.status_code == 201
    assert env.c.get(f"{coll}/finder.bin").content == data
    # a plain chunked upload (no expected length) from a generator
    big = [os.urandom(1 << 20) for _ in range(12)]
    r = env.c.put(f"{coll}/gen.bin", iter(big))
    assert r.status_code == 201
    got = env.c.get(f"{coll}/gen.bin").content
    assert hashlib.md5(got).digest() == hashlib.md5(b"".join(big)).digest()


def test_s30_mkcol_rules(env, coll):
    assert env.c.mkcol(f"{coll}/newdir/").status_code == 201
    assert env.c.mkcol(f"{coll}/newdir/").status_code == 405
    r = env.c.mkcol(f"{coll}/bodydir/", data=b"<x/>", headers={"Content-Type": "application/xml"})
    assert r.status_code == 415
    assert env.c.mkcol(f"{coll}/missing/child/").status_code == 409
    env.c.put(f"{coll}/afile", b"a")
    assert env.c.mkcol(f"{coll}/afile/").status_code == 405
    assert env.c.mkcol(f"{coll}/afile/sub/").status_code == 409
    # the empty directory is stored (survives a reload from the catalog)
    m = env.manifest(coll)
    assert re.search(r"^\./newdir \S+ 0:0:\\056$", m, re.M), m
    assert "bodydir" not in m and "missing" not in m
    ms = multistatus(env.c.propfind(f"{coll}/", "1", headers={"Cache-Control": "no-cache"}))
    assert ms[f"/{coll}/newdir/"]["is_dir"]


def test_s31_move_into_dir_then_again(env, coll):
    env.c.put(f"{coll}/testfile", b"t")
    env.c.mkcol(f"{coll}/newdir0/")
    assert env.c.move(f"{coll}/testfile", f"{coll}/newdir0/testfile").status_code == 201
    assert env.c.move(f"{coll}/testfile", f"{coll}/newdir0/testfile").status_code == 404
    assert env.c.get(f"{coll}/newdir0/testfile").content == b"t"


def test_s32_move_under_a_file_fails(env, coll):
    env.c.put(f"{coll}/emptyfile", b"")
    env.c.put(f"{coll}/src", b"s")
    r = env.c.move(f"{coll}/src", f"{coll}/emptyfile/bogus/")
    assert r.status_code == 409
    assert env.c.get(f"{coll}/src").content == b"s"


def test_s33_move_dir_and_back_and_into_itself(env, coll):
    env.c.mkcol(f"{coll}/newdir1/")
    env.c.put(f"{coll}/newdir1/f", b"f")
    assert env.c.move(f"{coll}/newdir1/", f"{coll}/newdir1x/").status_code == 201
    assert env.c.get(f"{coll}/newdir1x/f").content == b"f"
    assert env.c.move(f"{coll}/newdir1x/", f"{coll}/newdir1/").status_code == 201
    assert env.c.get(f"{coll}/newdir1/f").content == b"f"
    r = env.c.move(f"{coll}/newdir1/", f"{coll}/newdir1/inside/")
    assert 400 <= r.status_code < 500
    # the opposite direction: the destination folder contains the source
    r = env.c.move(f"{coll}/newdir1/f", f"{coll}/newdir1/")
    assert r.status_code == 409
    assert env.c.get(f"{coll}/newdir1/f").content == b"f"
    assert "./newdir1 " in env.manifest(coll)


def test_s34_move_overwrite_rules(env, coll):
    env.c.put(f"{coll}/a", b"A")
    env.c.put(f"{coll}/b", b"B")
    r = env.c.move(f"{coll}/a", f"{coll}/b", Overwrite="F")
    assert r.status_code == 412
    assert env.c.get(f"{coll}/a").content == b"A" and env.c.get(f"{coll}/b").content == b"B"
    # no Overwrite header: RFC 4918 default T replaces the target
    r = env.c.move(f"{coll}/a", f"{coll}/b")
    assert r.status_code == 204
    assert env.c.get(f"{coll}/a").status_code == 404
    assert env.c.get(f"{coll}/b").content == b"A"
    env.c.put(f"{coll}/c", b"C")
    assert env.c.move(f"{coll}/c", f"{coll}/b", Overwrite="T").status_code == 204
    assert env.c.get(f"{coll}/b").content == b"C"
    assert env.c.copy(f"{coll}/b", f"{coll}/b2").status_code == 201
    assert env.c.copy(f"{coll}/b", f"{coll}/b2", Overwrite="F").status_code == 412


def test_s35_depth_rules_for_move_and_copy(env, coll):
    env.c.mkcol(f"{coll}/dir/")
    env.c.mkcol(f"{coll}/dir/sub/")
    env.c.put(f"{coll}/dir/child", b"c")
    env.c.put(f"{coll}/dir/sub/deep", b"d")
    for depth in ("0", "1"):
        assert env.c.move(f"{coll}/dir/", f"{coll}/moved/", Depth=depth).status_code == 400
    assert env.c.copy(f"{coll}/dir/", f"{coll}/copy1/", Depth="1").status_code == 400
    assert env.c.copy(f"{coll}/dir/", f"{coll}/copy0/", Depth="0").status_code == 201
    assert env.c.req("DELETE", f"{coll}/copy0/child").status_code == 404
    ms = multistatus(env.c.propfind(f"{coll}/copy0/", "1"))
    assert list(ms) == [f"/{coll}/copy0/"]
    assert env.c.copy(f"{coll}/dir/", f"{coll}/copyinf/", Depth="infinity").status_code == 201
    assert env.c.get(f"{coll}/copyinf/child").content == b"c"
    assert env.c.get(f"{coll}/copyinf/sub/deep").content == b"d"
    assert env.c.get(f"{coll}/dir/sub/deep").content == b"d"
    assert env.c.get(f"{coll}/moved/").status_code == 404


def test_s36_copy_file(env, coll):
    env.c.mkcol(f"{coll}/newdir2/")
    data = os.urandom(5000)
    env.c.put(f"{coll}/newdir2/testfile2", data)
    assert env.c.copy(f"{coll}/newdir2/testfile2", f"{coll}/testfile3").status_code == 201
    assert env.c.get(f"{coll}/testfile3").content == data
    assert env.c.get(f"{coll}/newdir2/testfile2").content == data


def test_s37_delete_dir_and_depth_rules(env, coll):
    env.c.mkcol(f"{coll}/d/")
    env.c.put(f"{coll}/d/f", b"f")
    for depth in ("0", "1"):
        assert env.c.req("DELETE", f"{coll}/d/", headers={"Depth": depth}).status_code == 400
    assert env.c.get(f"{coll}/d/f").status_code == 200
    assert env.c.req("DELETE", f"{coll}/d/", headers={"Depth": "infinity"}).status_code == 204
    assert env.c.get(f"{coll}/d/f").status_code == 404
    assert env.c.get(f"{coll}/d/").status_code == 404
    assert env.c.req("DELETE", f"{coll}/d/").status_code == 404


def test_s38_delete_last_files_leaves_empty_manifest(env, coll):
    for n in ("a", "b"):
        env.c.put(f"{coll}/{n}", n.encode())
    for n in ("a", "b"):
        assert env.c.req("DELETE", f"{coll}/{n}").status_code == 204
    assert env.manifest(coll) == ""


def test_s39_destination_on_another_host(env, coll):
    env.c.put(f"{coll}/f", b"f")
    r = env.c.req("MOVE", f"{coll}/f", headers={"Destination": f"http://elsewhere.example:81/{coll}/g"})
    assert r.status_code in (400, 502)
    assert env.c.get(f"{coll}/f").content == b"f"
    assert env.c.get(f"{coll}/g").status_code == 404


def test_s40_writes_to_pdh_are_405(env, coll):
    env.c.put(f"{coll}/f", b"f")
    env.c.mkcol(f"{coll}/d/")
    pdh = env.record(coll).portable_data_hash
    for prefix in (f"by_id/{pdh}", f"c={pdh}", f"c={pdh.replace('+', '-')}"):
        results = {
            "PUT new": env.c.put(f"{prefix}/new", b"x"),
            "PUT over": env.c.put(f"{prefix}/f", b"x"),
            "MKCOL": env.c.mkcol(f"{prefix}/nd/"),
            "DELETE": env.c.req("DELETE", f"{prefix}/f"),
            "DELETE dir": env.c.req("DELETE", f"{prefix}/d/"),
            "MOVE": env.c.move(f"{prefix}/f", f"{prefix}/g"),
            "COPY into": env.c.copy(f"{prefix}/f", f"{prefix}/g"),
            "COPY from writable": env.c.copy(f"{coll}/f", f"{prefix}/g"),
            "PROPPATCH": env.c.req("PROPPATCH", f"{prefix}/f", data=proppatch_body("urn:x", "a", "1")),
            "LOCK": env.c.req("LOCK", f"{prefix}/f", data=LOCK_BODY),
            "LOCK new": env.c.req("LOCK", f"{prefix}/locknull", data=LOCK_BODY),
            "UNLOCK": env.c.req("UNLOCK", f"{prefix}/f", headers={"Lock-Token": "<opaquelocktoken:x>"}),
        }
        assert {k: r.status_code for k, r in results.items()} == {k: 405 for k in results}, prefix
        assert env.c.get(f"{prefix}/f").content == b"f"
    # reading from a snapshot into a writable collection is fine
    assert env.c.copy(f"by_id/{pdh}/f", f"{coll}/from-pdh").status_code == 201
    assert env.c.get(f"{coll}/from-pdh").content == b"f"


def test_s41_writes_to_virtual_dirs(env, coll):
    assert env.c.mkcol("by_id/").status_code == 405
    assert env.c.put("by_id/file", b"x").status_code == 405
    assert env.c.mkcol("by_id/newthing/").status_code in (404, 405)
    assert env.c.req("DELETE", "by_id/").status_code == 405
    assert env.c.req("DELETE", "").status_code in (403, 405)
    # files cannot live at the top level (only collections)
    assert env.c.put("toplevel.txt", b"x").status_code == 403
    assert env.c.get("toplevel.txt").status_code == 404


def test_s44_locks(env, coll):
    env.c.put(f"{coll}/f", b"f")
    r = env.c.req("LOCK", f"{coll}/f", data=LOCK_BODY)
    assert r.status_code == 200
    token = r.headers["Lock-Token"]
    assert re.fullmatch(r"<opaquelocktoken:[^>]+>", token)
    assert env.c.req("LOCK", f"{coll}/f", data=LOCK_BODY).status_code == 423
    assert env.c.put(f"{coll}/f", b"no token").status_code == 423
    assert env.c.req("DELETE", f"{coll}/f").status_code == 423
    assert env.c.move(f"{coll}/f", f"{coll}/g").status_code == 423
    assert env.c.get(f"{coll}/f").content == b"f"
    r = env.c.put(f"{coll}/f", b"with token", headers={"If": f"({token})"})
    assert r.status_code == 204
    # lockdiscovery shows the lock
    ms = multistatus(env.c.propfind(f"{coll}/f", "0"))
    ld = ms[f"/{coll}/f"]["props"][f"{D}lockdiscovery"]
    assert token.strip("<>") in ET.tostring(ld, encoding="unicode")
    assert env.c.req("UNLOCK", f"{coll}/f", headers={"Lock-Token": token}).status_code == 204
    assert env.c.put(f"{coll}/f", b"after unlock").status_code == 204
    assert env.c.get(f"{coll}/f").content == b"after unlock"
    # a locked folder protects its members
    env.c.mkcol(f"{coll}/ld/")
    r = env.c.req("LOCK", f"{coll}/ld/", data=LOCK_BODY, headers={"Depth": "infinity"})
    assert r.status_code == 200
    assert env.c.put(f"{coll}/ld/new", b"x").status_code == 423
    assert env.c.put(f"{coll}/ld/new", b"x", headers={"If": f"({r.headers['Lock-Token']})"}).status_code == 201


def test_s45_lock_null_resource_becomes_empty_file(env, coll):
    r = env.c.req("LOCK", f"{coll}/locknull.txt", data=LOCK_BODY)
    assert r.status_code == 201
    token = r.headers["Lock-Token"]
    # davcoll's choice: the empty file is real and committed (RFC 4918 7.3)
    assert "0:0:locknull.txt" in env.manifest(coll)
    assert env.c.get(f"{coll}/locknull.txt").content == b""
    assert env.c.put(f"{coll}/locknull.txt", b"content").status_code == 423
    assert env.c.put(f"{coll}/locknull.txt", b"content", headers={"If": f"({token})"}).status_code == 204
    assert env.c.req("UNLOCK", f"{coll}/locknull.txt", headers={"Lock-Token": token}).status_code == 204
    assert env.c.get(f"{coll}/locknull.txt").content == b"content"


def proppatch_body(ns: str, name: str, value: str | None) -> bytes:
    op = (
        f"<D:set><D:prop><X:{name}>{html.escape(value)}</X:{name}></D:prop></D:set>"
        if value is not None
        else f"<D:remove><D:prop><X:{name}/></D:prop></D:remove>"
    )
    return (f'<?xml version="1.0" encoding="utf-8"?><D:propertyupdate xmlns:D="DAV:" xmlns:X="{ns}">{op}</D:propertyupdate>').encode()


def test_s46_proppatch_win32_times(env, coll):
    env.c.put(f"{coll}/w.docx", b"doc")
    body = (
        b'<?xml version="1.0" encoding="utf-8"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:schemas-microsoft-com:">'
        b"<D:set><D:prop>"
        b"<Z:Win32CreationTime>Mon, 01 Jan 2024 10:00:00 GMT</Z:Win32CreationTime>"
        b"<Z:Win32LastAccessTime>Mon, 01 Jan 2024 10:00:00 GMT</Z:Win32LastAccessTime>"
        b"<Z:Win32LastModifiedTime>Mon, 01 Jan 2024 10:00:00 GMT</Z:Win32LastModifiedTime>"
        b"<Z:Win32FileAttributes>00000020</Z:Win32FileAttributes>"
        b"</D:prop></D:set></D:propertyupdate>"
    )
    for path in (f"{coll}/w.docx", f"{coll}/"):
        ms = multistatus(env.c.req("PROPPATCH", path, data=body))
        (resp,) = ms.values()
        assert len(resp["status"]) == 4 and set(resp["status"].values()) == {200}, resp["status"]
    assert env.c.get(f"{coll}/w.docx").content == b"doc"


# ============================================================ consistency, concurrency


def test_s47_new_file_visible_by_uuid_not_by_old_pdh(env, coll):
    other = coll + "-other"
    env.c.mkcol(f"{other}/")
    env.c.put(f"{other}/x", b"x")
    env.c.put(f"{coll}/a.txt", b"a")
    old = env.record(coll)
    other_pdh = env.record(other).portable_data_hash
    assert env.c.get(f"by_id/{old.portable_data_hash}/a.txt").content == b"a"  # cache the snapshot
    assert env.c.put(f"by_id/{old.uuid}/b.txt", b"b").status_code == 201
    assert env.c.get(f"by_id/{old.uuid}/b.txt").content == b"b"
    assert env.c.get(f"c={old.uuid}/b.txt").content == b"b"
    assert env.c.get(f"{coll}/b.txt").content == b"b"
    assert env.c.get(f"by_id/{old.portable_data_hash}/b.txt").status_code == 404
    assert env.c.get(f"by_id/{old.portable_data_hash}/a.txt").content == b"a"
    assert env.c.get(f"by_id/{other_pdh}/b.txt").status_code == 404
    new_pdh = env.record(coll).portable_data_hash
    assert new_pdh != old.portable_data_hash
    assert env.c.get(f"by_id/{new_pdh}/b.txt").content == b"b"


def test_s48_change_behind_our_back(env, coll):
    env.c.put(f"{coll}/seen", b"s")
    assert env.c.get(f"{coll}/seen").status_code == 200  # tree is cached now
    loc = env.backend.blocks.put(b"behind")
    rec = env.record(coll)
    env.catalog.update(rec.uuid, replace_files={"/behind.txt": f"manifest_text/behind.txt"},
                       manifest_text=f". {loc} 0:6:behind.txt\n")
    r = env.c.get(f"{coll}/behind.txt", headers={"Cache-Control": "no-cache"})
    assert r.status_code == 200 and r.content == b"behind"
    # and without no-cache, within the revalidation interval (2 s) + listing memo (1 s)
    env.catalog.update(rec.uuid, replace_files={"/behind2.txt": f"manifest_text/behind.txt"},
                       manifest_text=f". {loc} 0:6:behind.txt\n")
    assert wait_until(lambda: env.c.get(f"{coll}/behind2.txt").status_code == 200, timeout=6, interval=0.2), \
        "external change never became visible"
    assert env.c.get(f"{coll}/seen").content == b"s"


@pytest.mark.slow
def test_s49_parallel_mkcol_and_puts(env, coll):
    n = 4
    with cf.ThreadPoolExecutor(max_workers=n * n) as pool:
        codes = list(pool.map(lambda i: Client(env.srv.url, env.rw).mkcol(f"{coll}/dir{i}/").status_code, range(n)))
        assert codes == [201] * n
        payload = {(i, j): os.urandom(2 << 20) for i in range(n) for j in range(n)}

        def put(key):
            i, j = key
            return Client(env.srv.url, env.rw).put(f"{coll}/dir{i}/file{j}", payload[key]).status_code

        codes = list(pool.map(put, payload))
    assert codes == [201] * (n * n)
    for (i, j), data in payload.items():
        r = env.c.get(f"{coll}/dir{i}/file{j}")
        assert r.status_code == 200 and r.content == data
    for i in range(n):
        ms = multistatus(env.c.propfind(f"{coll}/dir{i}/", "1"))
        assert len(ms) == n + 1
    m = env.manifest(coll)
    for i in range(n):
        for j in range(n):
            assert re.search(rf"^\./dir{i} .*:{2 << 20}:file{j}( |$)", m, re.M), (i, j)


@pytest.mark.slow
def test_s50_concurrent_puts_same_path(env, coll):
    for round_ in range(3):
        bodies = [bytes([65 + k]) * (3 << 20) for k in range(2)]
        barrier = threading.Barrier(2)

        def put(k):
            c = Client(env.srv.url, env.rw)
            barrier.wait()
            return c.put(f"{coll}/same.bin", bodies[k]).status_code

        with cf.ThreadPoolExecutor(2) as pool:
            codes = list(pool.map(put, range(2)))
        assert all(c in (201, 204) for c in codes), codes
        got = env.c.get(f"{coll}/same.bin").content
        assert got in bodies, f"round {round_}: mixed content"
        stored = env.catalog.get(env.record(coll).uuid).manifest_text
        assert stored.count("same.bin") == 1


def test_s51_commit_failure_is_503_and_changes_nothing(env, coll, monkeypatch):
    env.c.put(f"{coll}/keep.txt", b"original")
    env.c.mkcol(f"{coll}/d/")
    before = env.record(coll)

    def boom(*a, **kw):
        raise Unavailable("simulated API outage")

    monkeypatch.setattr(env.catalog, "update", boom)
    attempts = {
        "PUT over": env.c.put(f"{coll}/keep.txt", b"CHANGED"),
        "PUT new": env.c.put(f"{coll}/new.txt", b"new"),
        "MKCOL": env.c.mkcol(f"{coll}/nd/"),
        "DELETE": env.c.req("DELETE", f"{coll}/keep.txt"),
        "MOVE": env.c.move(f"{coll}/keep.txt", f"{coll}/moved.txt"),
        "COPY": env.c.copy(f"{coll}/keep.txt", f"{coll}/copied.txt"),
        "DELETE dir": env.c.req("DELETE", f"{coll}/d/"),
    }
    assert {k: r.status_code for k, r in attempts.items()} == {k: 503 for k in attempts}
    assert all(r.headers.get("Retry-After") for r in attempts.values())
    monkeypatch.undo()
    after = env.record(coll)
    assert (after.version, after.manifest_text) == (before.version, before.manifest_text)
    # the server's cached view was rolled back too
    assert env.c.get(f"{coll}/keep.txt").content == b"original"
    for gone in ("new.txt", "nd/", "moved.txt", "copied.txt"):
        assert env.c.get(f"{coll}/{gone}").status_code == 404, gone
    assert env.c.get(f"{coll}/d/").status_code == 200
    # and the next request works normally
    assert env.c.put(f"{coll}/new.txt", b"new").status_code == 201
    assert env.c.get(f"{coll}/new.txt").content == b"new"
    assert "new.txt" in env.manifest(coll)


# ============================================================ davcoll additions


def test_collections_at_top_level(env):
    name = "kw-top-" + uuidlib.uuid4().hex[:6]
    assert env.c.mkcol(f"{name}/").status_code == 201
    assert env.c.mkcol(f"{name}/").status_code == 405
    rec = env.catalog.find_by_name(name)
    assert rec is not None and env.manifest(name) == ""
    env.c.put(f"{name}/f", b"f")
    root = multistatus(env.c.propfind("", "1"))
    assert f"/{name}/" in root
    # rename keeps the identity
    assert env.c.move(f"{name}/", f"{name}-renamed/").status_code == 201
    assert env.catalog.find_by_name(name) is None
    renamed = env.catalog.find_by_name(f"{name}-renamed")
    assert renamed.uuid == rec.uuid
    assert env.c.get(f"{name}-renamed/f").content == b"f"
    assert env.c.get(f"{name}/f").status_code == 404
    # Overwrite: F onto an existing collection
    env.c.mkcol(f"{name}-other/")
    assert env.c.move(f"{name}-renamed/", f"{name}-other/", Overwrite="F").status_code == 412
    assert env.catalog.find_by_name(f"{name}-renamed").uuid == rec.uuid
    # DELETE trashes (the record still exists in the trash)
    assert env.c.req("DELETE", f"{name}-renamed/").status_code == 204
    assert env.catalog.find_by_name(f"{name}-renamed") is None
    assert env.catalog.get(rec.uuid, include_trash=True).is_trashed
    assert env.c.get(f"{name}-renamed/f").status_code == 404
    assert env.c.get(f"by_id/{rec.uuid}/f").status_code == 404
    # reserved names
    for bad in ("by_id", "c=x", "t=x", "_health", "_metrics"):
        assert env.c.mkcol(f"{bad}/").status_code in (403, 405), bad


def test_collection_copy_is_references_only(env, coll):
    env.c.put(f"{coll}/big", os.urandom(300_000))
    blocks = env.block_count()
    dst = coll + "-copy"
    assert env.c.copy(f"{coll}/", f"{dst}/").status_code == 201
    assert env.manifest(dst) == env.manifest(coll)
    assert env.catalog.find_by_name(dst).uuid != env.catalog.find_by_name(coll).uuid
    assert env.block_count() == blocks


def test_cross_collection_copy_and_move(env, coll):
    dst = coll + "-dst"
    env.c.mkcol(f"{dst}/")
    data = os.urandom(200_000)
    env.c.mkcol(f"{coll}/tree/")
    env.c.put(f"{coll}/tree/a.bin", data)
    env.c.put(f"{coll}/tree/b.txt", b"b")
    blocks = env.block_count()
    assert env.c.copy(f"{coll}/tree/a.bin", f"{dst}/a-copy.bin").status_code == 201
    assert env.c.copy(f"{coll}/tree/", f"{dst}/tree-copy/").status_code == 201
    assert env.c.move(f"{coll}/tree/b.txt", f"{dst}/b-moved.txt").status_code == 201
    assert env.block_count() == blocks  # no data was re-stored: references only
    assert env.c.get(f"{dst}/a-copy.bin").content == data
    assert env.c.get(f"{dst}/tree-copy/a.bin").content == data
    assert env.c.get(f"{dst}/b-moved.txt").content == b"b"
    assert env.c.get(f"{coll}/tree/b.txt").status_code == 404
    assert env.c.get(f"{coll}/tree/a.bin").content == data
    src_locators = set(re.findall(r"[0-9a-f]{32}\+\d+", env.manifest(coll)))
    dst_locators = set(re.findall(r"[0-9a-f]{32}\+\d+", env.manifest(dst)))
    assert src_locators and src_locators <= dst_locators | {"d41d8cd98f00b204e9800998ecf8427e+0"}
    assert "b-moved.txt" in env.manifest(dst) and "b.txt" not in env.manifest(coll)


def test_arvados_collection_record(env, coll):
    env.c.put(f"{coll}/f", b"f")
    rec = env.record(coll)
    for path in (f"{coll}/.arvados#collection", f"by_id/{rec.uuid}/.arvados#collection"):
        r = env.c.get(path)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
        doc = r.json()
        assert doc["uuid"] == rec.uuid and doc["name"] == coll
        assert doc["portable_data_hash"] == rec.portable_data_hash
        assert doc["manifest_text"] == rec.manifest_text
    ms = multistatus(env.c.propfind(f"{coll}/", "1"))
    assert not any(".arvados" in unquote(h) for h in ms)  # never listed
    assert env.c.put(f"{coll}/.arvados#collection", b"{}").status_code == 405
    assert env.c.req("DELETE", f"{coll}/.arvados#collection").status_code == 405
    assert env.record(coll).version == rec.version


def test_collection_properties(env, coll):
    pf = (
        f'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:" xmlns:P="{PROPS_NS}" xmlns:C="{COLL_NS}">'
        "<D:prop><P:project/><C:uuid/><C:portable_data_hash/></D:prop></D:propfind>"
    ).encode()
    ms = multistatus(env.c.req("PROPPATCH", f"{coll}/", data=proppatch_body(PROPS_NS, "project", "alpha & beta")))
    assert set(next(iter(ms.values()))["status"].values()) == {200}
    assert env.catalog.find_by_name(coll).properties == {"project": "alpha & beta"}
    # visible at once (not after a listing cache expires)
    ms = multistatus(env.c.propfind(f"{coll}/", "0", body=pf))
    props = ms[f"/{coll}/"]["props"]
    assert props[f"{{{PROPS_NS}}}project"].text == "alpha & beta"
    rec = env.record(coll)
    assert props[f"{{{COLL_NS}}}uuid"].text == rec.uuid
    assert props[f"{{{COLL_NS}}}portable_data_hash"].text == rec.portable_data_hash
    # read-only facts cannot be changed
    ms = multistatus(env.c.req("PROPPATCH", f"{coll}/", data=proppatch_body(COLL_NS, "uuid", "x")))
    assert set(next(iter(ms.values()))["status"].values()) == {403}
    # only on the collection root
    env.c.mkcol(f"{coll}/sub/")
    ms = multistatus(env.c.req("PROPPATCH", f"{coll}/sub/", data=proppatch_body(PROPS_NS, "project", "x")))
    assert set(next(iter(ms.values()))["status"].values()) == {403}
    # remove
    multistatus(env.c.req("PROPPATCH", f"{coll}/", data=proppatch_body(PROPS_NS, "project", None)))
    assert env.catalog.find_by_name(coll).properties == {}
    ms = multistatus(env.c.propfind(f"{coll}/", "0", body=pf))
    assert ms[f"/{coll}/"]["status"][f"{{{PROPS_NS}}}project"] == 404


def test_dead_properties_follow_moves(env, coll):
    env.c.put(f"{coll}/f", b"f")
    assert multistatus(env.c.req("PROPPATCH", f"{coll}/f", data=proppatch_body("urn:x", "color", "red")))
    env.c.move(f"{coll}/f", f"{coll}/g")
    body = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:X="urn:x"><D:prop><X:color/></D:prop></D:propfind>'
    ms = multistatus(env.c.propfind(f"{coll}/g", "0", body=body))
    assert ms[f"/{coll}/g"]["props"]["{urn:x}color"].text == "red"


def test_junk_files_never_committed(env, coll):
    env.c.put(f"{coll}/real.txt", b"real")
    before = env.record(coll)
    junk = {"._real.txt": b"\x00\x05\x16\x07apple", ".DS_Store": b"ds", "Thumbs.db": b"th", "desktop.ini": b"[x]"}
    for name, data in junk.items():
        assert env.c.put(f"{coll}/{name}", data).status_code == 201, name
    for name, data in junk.items():
        assert env.c.get(f"{coll}/{name}").content == data, name
    after = env.record(coll)
    assert (after.version, after.manifest_text) == (before.version, before.manifest_text)
    assert all(name not in after.manifest_text for name in junk)
    # Finder can rename and delete them too, still without commits
    assert env.c.move(f"{coll}/._real.txt", f"{coll}/._other.txt").status_code in (201, 204)
    assert env.c.get(f"{coll}/._other.txt").content == junk["._real.txt"]
    assert env.c.req("DELETE", f"{coll}/.DS_Store").status_code == 204
    assert env.c.get(f"{coll}/.DS_Store").status_code == 404
    assert env.record(coll).version == before.version
    # the HTML listing hides them
    assert ".DS_Store" not in env.c.get(f"{coll}/").text and "Thumbs.db" not in env.c.get(f"{coll}/").text


def test_nfd_names_are_stored_nfc(env, coll):
    nfc = unicodedata.normalize("NFC", "Café Ünïcode.txt")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    assert env.c.put(f"{coll}/{nfd}", b"u").status_code == 201
    assert env.c.get(f"{coll}/{nfc}").content == b"u"
    assert env.c.get(f"{coll}/{nfd}").content == b"u"
    m = env.manifest(coll)
    assert nfc.replace(" ", "\\040") in m and nfd.replace(" ", "\\040") not in m
    assert env.c.mkcol(f"{coll}/{unicodedata.normalize('NFD', 'Ordner-ä')}/").status_code == 201
    assert env.c.put(f"{coll}/Ordner-ä/x", b"x").status_code == 201
    ms = multistatus(env.c.propfind(f"{coll}/", "1"))
    names = {unquote(h) for h in ms}
    assert f"/{coll}/{nfc}" in names and f"/{coll}/Ordner-ä/" in names
    assert env.c.put(f"{coll}/{nfc}", b"v").status_code == 204  # same file
    assert env.manifest(coll).count("Caf") == 1


def test_health_and_metrics_need_no_token(env):
    r = requests.get(env.srv.url + "_health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = requests.get(env.srv.url + "_metrics", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert re.search(r'^davcoll_requests_total\{method="GET",status="200"\} \d', r.text, re.M)
    assert "davcoll_sync_seconds" in r.text
    assert env.rw not in r.text and env.ro not in r.text

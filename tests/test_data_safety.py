"""Issue 10 §1, §2: a request acts only on the names it names.

Every test here reproduces a way a COPY/MOVE/GET/DELETE reached a file or a
collection the request did not name (Destination parsing, Unicode spellings,
backslashes, control characters, reserved top-level names), on a real
server.  Names are written behind davcoll's back through the catalog where
the point is data that another client (the SDK, a macOS writer) made.
"""

from __future__ import annotations

import socket
import unicodedata
import uuid as uuidlib
import xml.etree.ElementTree as ET
from urllib.parse import quote, unquote, urlparse

import pytest
import requests

from davcoll.manifest import escape_name
from davclient import hrefs
from fake_cluster import arvados_server, fake_cluster
from server_util import running_server

FRESH = {"Cache-Control": "no-cache"}
NFC_E = "\u00e9"  # é as one code point
NFD_E = "e\u0301"  # e + combining acute


class Server:
    """A running server on one backend, an authenticated HTTP session for
    it, and direct access to its catalog (to act as another client)."""

    def __init__(self, running, http: requests.Session, catalog, store_block, set_manifest) -> None:
        self.running, self.http, self.catalog = running, http, catalog
        self.url = running.url
        self.store_block, self.set_manifest = store_block, set_manifest

    def u(self, path: str = "") -> str:
        return self.running.u(path)


@pytest.fixture(scope="module", params=["embedded", "arvados"])
def srv(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety-" + request.param)
    if request.param == "embedded":
        with running_server(tmp / "data", anonymous="write") as s:
            backend = s.app.backend

            def set_manifest(uuid: str, text: str) -> None:
                backend.catalog_.update(uuid, manifest_text=text)

            yield Server(s, requests.Session(), backend.catalog_, backend.blocks.put, set_manifest)
        return
    with fake_cluster(keepstores=1, seed=5) as fake:
        token = fake.add_user("safety")
        # client_options/keep_options={}: the backend's own retry settings.
        with arvados_server(fake, tmp / "data", client_options={}, keep_options={}, anonymous="write") as s:
            backend = s.app.backend
            http = requests.Session()
            http.headers["Authorization"] = f"Bearer {token}"
            yield Server(s, http, backend.catalog(backend.authenticate(token)), fake.store_block,
                         fake.set_manifest_raw)


@pytest.fixture
def coll(srv):
    name = "s-" + uuidlib.uuid4().hex[:10]
    assert srv.http.request("MKCOL", srv.u(name + "/"), timeout=10).status_code == 201
    return name


def put(srv, path: str, data: bytes) -> requests.Response:
    return srv.http.put(srv.u(path), data=data, timeout=30)


def get(srv, path: str) -> requests.Response:
    return srv.http.get(srv.u(path), headers=FRESH, timeout=30)


def req(srv, method: str, path: str, dest: str | None = None, **headers) -> requests.Response:
    h = dict(headers)
    if dest is not None:
        h["Destination"] = dest if dest.startswith("http") else srv.url + dest.lstrip("/")
    return srv.http.request(method, srv.u(path), headers=h, timeout=30)


def raw(srv, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes (for paths requests would re-encode); status and body."""
    u = urlparse(srv.url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def listing(srv, path: str, depth: str = "1") -> list[str]:
    """Hrefs of a PROPFIND, as the server wrote them."""
    r = srv.http.request("PROPFIND", srv.u(path), headers={"Depth": depth, **FRESH}, timeout=30)
    assert r.status_code == 207, r.text
    return hrefs(r)


def catalog(srv):
    return srv.catalog


def write_names_behind_our_back(srv, coll: str, files: dict[str, bytes]) -> None:
    """Replace a collection's content through the catalog (another writer)."""
    by_dir: dict[str, list[tuple[str, str, int]]] = {}
    for path, data in files.items():
        d, _, name = path.rpartition("/")
        loc = srv.store_block(data)
        by_dir.setdefault(d, []).append((name, loc, len(data)))
    lines = []
    for d in sorted(by_dir):
        stream = "." if not d else "./" + "/".join(escape_name(p) for p in d.split("/"))
        locs, toks, pos = [], [], 0
        for name, loc, n in sorted(by_dir[d]):
            locs.append(loc)
            toks.append(f"{pos}:{n}:{escape_name(name)}")
            pos += n
        lines.append(f"{stream} {' '.join(locs)} {' '.join(toks)}\n")
    rec = catalog(srv).find_by_name(coll)
    srv.set_manifest(rec.uuid, "".join(lines))


# ---------------------------------------------------------------- Destination


@pytest.mark.parametrize("spelling", ["report%3Bv2.txt", "report;v2.txt"])
def test_copy_to_name_with_semicolon_names_exactly_that_file(srv, coll, spelling):
    """The issue's example: COPY draft.txt -> report%3Bv2.txt overwrote 'report'."""
    assert put(srv, f"{coll}/report", b"REPORT").status_code == 201
    assert put(srv, f"{coll}/draft.txt", b"DRAFT").status_code == 201
    r = req(srv, "COPY", f"{coll}/draft.txt", f"{coll}/{spelling}")
    assert r.status_code == 201, r.text
    assert get(srv, f"{coll}/report").content == b"REPORT"
    assert get(srv, f"{coll}/report%3Bv2.txt").content == b"DRAFT"


def test_copy_to_encoded_question_mark_names_exactly_that_file(srv, coll):
    assert put(srv, f"{coll}/report", b"REPORT").status_code == 201
    assert put(srv, f"{coll}/draft.txt", b"DRAFT").status_code == 201
    r = req(srv, "MOVE", f"{coll}/draft.txt", f"{coll}/report%3Fv2.txt")
    assert r.status_code == 201, r.text
    assert get(srv, f"{coll}/report").content == b"REPORT"
    assert get(srv, f"{coll}/report%3Fv2.txt").content == b"DRAFT"
    assert get(srv, f"{coll}/draft.txt").status_code == 404


@pytest.mark.parametrize("dest", [
    "{c}/report?v2.txt",  # a query
    "{c}/x.txt?a=1",
    "{c}/x.txt#frag",  # a fragment
    "{c}/z#/../../other/",  # the dot-segment escape behind a fragment
    "{c}/%2e%2e/x.txt",
    "{c}/a/%2E/x.txt",
    "{c}/x%01y.txt",  # control character in a new name
])
def test_destination_query_fragment_dots_and_controls_are_400(srv, coll, dest):
    assert put(srv, f"{coll}/report", b"REPORT").status_code == 201
    assert put(srv, f"{coll}/draft.txt", b"DRAFT").status_code == 201
    r = req(srv, "COPY", f"{coll}/draft.txt", dest.format(c=coll))
    assert r.status_code == 400, r.text
    assert get(srv, f"{coll}/report").content == b"REPORT"
    hrefs = listing(srv, f"{coll}/")
    assert sorted(unquote(h).rstrip("/").rsplit("/", 1)[-1] for h in hrefs[1:]) == ["draft.txt", "report"]


def test_collection_move_to_encoded_query_does_not_trash_another_collection(srv):
    a, victim = "a-" + uuidlib.uuid4().hex[:8], "victim-" + uuidlib.uuid4().hex[:8]
    for c in (a, victim):
        assert req(srv, "MKCOL", c + "/").status_code == 201
    assert put(srv, f"{victim}/keep.txt", b"KEEP").status_code == 201
    r = req(srv, "MOVE", a + "/", f"/{victim}%3Fnew/")
    assert r.status_code == 201, r.text
    assert get(srv, f"{victim}/keep.txt").content == b"KEEP"
    assert catalog(srv).find_by_name(f"{victim}?new") is not None
    assert catalog(srv).find_by_name(a) is None


NAMES = ["semi;colon.txt", "quest?ion.txt", "hash#tag.txt", "per%cent.txt", "per%25cent.txt", "sp ace.txt",
         "plus+sign.txt", "caf\u00e9.txt", "\u65e5\u672c.txt", "amp&er.txt", "eq=uals.txt", "back\\slash.txt",
         "quote'\".txt", "at@colon:.txt"]


def test_listing_hrefs_round_trip_as_destinations(srv, coll):
    """A href from a listing, used as a Destination, names exactly that file."""
    assert req(srv, "MKCOL", f"{coll}/src/").status_code == 201
    assert req(srv, "MKCOL", f"{coll}/dst/").status_code == 201
    for i, n in enumerate(NAMES):
        assert put(srv, f"{coll}/src/{quote(n)}", f"{i}".encode()).status_code == 201, n
    hrefs = listing(srv, f"{coll}/src/")[1:]
    assert len(hrefs) == len(NAMES)
    for h in hrefs:
        dest = h.replace("/src/", "/dst/")
        r = srv.http.request("COPY", srv.url.rstrip("/") + h, headers={"Destination": srv.url.rstrip("/") + dest},
                             timeout=30)
        assert r.status_code == 201, (h, r.text)
    got = sorted(unquote(h).rsplit("/", 1)[-1] for h in listing(srv, f"{coll}/dst/")[1:])
    assert got == sorted(NAMES)
    for i, n in enumerate(NAMES):
        assert get(srv, f"{coll}/dst/{quote(n)}").content == f"{i}".encode(), n


@pytest.mark.parametrize("reserved", ["_health", "_metrics", "by_id", "_", "c=zzzzz-4zz18-000000000000000",
                                      "t=sometoken"])
@pytest.mark.parametrize("method", ["MOVE", "COPY"])
def test_reserved_top_level_names_refused_as_destinations(srv, coll, reserved, method):
    assert put(srv, f"{coll}/f.txt", b"F").status_code == 201
    r = req(srv, method, coll + "/", f"/{reserved}/")
    assert r.status_code in (403, 409), r.text
    assert catalog(srv).find_by_name(reserved) is None
    assert get(srv, f"{coll}/f.txt").content == b"F"
    assert srv.http.get(srv.u("_health"), timeout=10).json()["status"] == "ok"


# ---------------------------------------------------------------- backslash


def test_backslash_raw_and_encoded_are_the_same_name(srv, coll):
    assert put(srv, f"{coll}/a%5Cb.txt", b"BACK").status_code == 201
    assert get(srv, f"{coll}/a%5Cb.txt").content == b"BACK"
    auth = "".join(f"{k}: {v}\r\n" for k, v in srv.http.headers.items() if k == "Authorization")
    status, body = raw(srv, f"GET /{coll}/a\\b.txt HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode())
    assert (status, body) == (200, b"BACK")
    hrefs = listing(srv, f"{coll}/")
    assert any(h.endswith("/a%5Cb.txt") for h in hrefs), hrefs


def test_backslash_names_written_by_another_client_are_reachable(srv, coll):
    write_names_behind_our_back(srv, coll, {"dir\\x/f\\g.txt": b"SDK", "top\\name": b"TOP"})
    hrefs = listing(srv, f"{coll}/", "1")
    href = next(h for h in hrefs if "top" in h)
    assert href.endswith("/top%5Cname")
    assert srv.http.get(srv.url.rstrip("/") + href, timeout=10).content == b"TOP"
    assert get(srv, f"{coll}/dir%5Cx/f%5Cg.txt").content == b"SDK"
    assert put(srv, f"{coll}/dir%5Cx/f%5Cg.txt", b"NEW").status_code == 204
    assert get(srv, f"{coll}/dir%5Cx/f%5Cg.txt").content == b"NEW"
    assert srv.http.delete(srv.url.rstrip("/") + href, timeout=10).status_code == 204
    assert get(srv, f"{coll}/top%5Cname").status_code == 404


# ---------------------------------------------------------------- control characters


@pytest.mark.parametrize("name", ["a%01b", "a%0Ab", "a%0Db", "a%09b", "a%7Fb", "a%C2%85b", "a%EF%BF%BEb"])
def test_control_characters_refused_at_creation(srv, coll, name):
    r = put(srv, f"{coll}/{name}", b"x")
    assert r.status_code == 400, r.text
    assert req(srv, "MKCOL", f"{coll}/{name}/").status_code == 400
    assert put(srv, f"{coll}/ok.txt", b"ok").status_code == 201
    assert req(srv, "MOVE", f"{coll}/ok.txt", f"{coll}/{name}").status_code == 400
    assert listing(srv, f"{coll}/")  # still listable


def test_control_character_names_from_other_writers_do_not_break_listings(srv, coll):
    write_names_behind_our_back(srv, coll, {"bad\x01name": b"B", "dir\x1b[31m/in.txt": b"I", "good.txt": b"G"})
    for path, depth in ((f"{coll}/", "1"), (f"{coll}/", "0"), ("", "1")):
        r = srv.http.request("PROPFIND", srv.u(path), headers={"Depth": depth, **FRESH}, timeout=30)
        assert r.status_code == 207, r.text
        ET.fromstring(r.content)  # well-formed
    assert srv.http.get(srv.u(f"{coll}/"), headers={"Accept": "text/html"}, timeout=10).status_code == 200
    assert get(srv, f"{coll}/good.txt").content == b"G"
    assert get(srv, f"{coll}/bad%01name").content == b"B"
    assert srv.http.delete(srv.u(f"{coll}/bad%01name"), timeout=10).status_code == 204
    assert srv.http.delete(srv.u(f"{coll}/dir%1B%5B31m/"), timeout=10).status_code == 204
    assert [unquote(h).rsplit("/", 1)[-1] for h in listing(srv, f"{coll}/")[1:]] == ["good.txt"]


# ---------------------------------------------------------------- Unicode spellings


def test_both_spellings_in_one_folder_each_reach_their_own_file(srv, coll):
    nfc, nfd = f"caf{NFC_E}.txt", f"caf{NFD_E}.txt"
    write_names_behind_our_back(srv, coll, {nfc: b"NFC", nfd: b"NFD"})
    assert get(srv, f"{coll}/{quote(nfc)}").content == b"NFC"
    assert get(srv, f"{coll}/{quote(nfd)}").content == b"NFD"
    assert srv.http.delete(srv.u(f"{coll}/{quote(nfd)}"), timeout=10).status_code == 204
    assert get(srv, f"{coll}/{quote(nfc)}").content == b"NFC"
    assert get(srv, f"{coll}/{quote(nfd)}").content == b"NFC"  # falls back to the equivalent name now
    names = [unquote(h).rsplit("/", 1)[-1] for h in listing(srv, f"{coll}/")[1:]]
    assert names == [nfc]


def test_overwrite_through_one_spelling_leaves_the_other(srv, coll):
    nfc, nfd = f"{NFC_E}t{NFC_E}", f"{NFD_E}t{NFD_E}"
    write_names_behind_our_back(srv, coll, {nfc: b"NFC", nfd: b"NFD"})
    assert put(srv, f"{coll}/{quote(nfd)}", b"NEW-NFD").status_code == 204
    assert get(srv, f"{coll}/{quote(nfc)}").content == b"NFC"
    assert get(srv, f"{coll}/{quote(nfd)}").content == b"NEW-NFD"
    assert req(srv, "COPY", f"{coll}/{quote(nfc)}", f"{coll}/{quote(nfd)}").status_code == 204
    assert get(srv, f"{coll}/{quote(nfd)}").content == b"NFC"
    assert get(srv, f"{coll}/{quote(nfc)}").content == b"NFC"


def test_new_names_are_created_nfc_and_found_by_either_spelling(srv, coll):
    nfd = f"r{NFD_E}sum{NFD_E}.txt"
    nfc = unicodedata.normalize("NFC", nfd)
    assert put(srv, f"{coll}/{quote(nfd)}", b"X").status_code == 201
    names = [unquote(h).rsplit("/", 1)[-1] for h in listing(srv, f"{coll}/")[1:]]
    assert names == [nfc]
    assert get(srv, f"{coll}/{quote(nfd)}").content == b"X"
    assert put(srv, f"{coll}/{quote(nfc)}", b"Y").status_code == 204  # same file, either spelling
    assert get(srv, f"{coll}/{quote(nfd)}").content == b"Y"


def test_collection_with_nfd_name_is_reachable(srv):
    nfd = f"coll-{NFD_E}-" + uuidlib.uuid4().hex[:6]
    rec = catalog(srv).create(nfd)
    try:
        assert put(srv, f"{quote(nfd)}/f.txt", b"IN-NFD").status_code == 201
        assert get(srv, f"{quote(nfd)}/f.txt").content == b"IN-NFD"
        assert catalog(srv).get(rec.uuid).manifest_text.endswith("f.txt\n")
        hrefs = listing(srv, "", "1")
        assert any(unquote(h).rstrip("/").endswith(nfd) for h in hrefs)
        # An NFC twin created next to it is another collection.
        nfc = unicodedata.normalize("NFC", nfd)
        catalog(srv).create(nfc)
        assert put(srv, f"{quote(nfc)}/g.txt", b"IN-NFC").status_code == 201
        assert get(srv, f"{quote(nfd)}/g.txt").status_code == 404
        assert get(srv, f"{quote(nfd)}/f.txt").content == b"IN-NFD"
    finally:
        pass


# ---------------------------------------------------------------- collection properties (§4)

PROPS_NS = "urn:davcoll:properties"


def proppatch(srv, path: str, set_: dict[str, str] | None = None, remove: list[str] | None = None):
    body = [f'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:P="{PROPS_NS}">']
    for k, v in (set_ or {}).items():
        body.append(f"<D:set><D:prop><P:{k}>{v}</P:{k}></D:prop></D:set>")
    for k in remove or []:
        body.append(f"<D:remove><D:prop><P:{k}/></D:prop></D:remove>")
    body.append("</D:propertyupdate>")
    return srv.http.request("PROPPATCH", srv.u(path), data="".join(body).encode(), timeout=30)


def stored_properties(srv, coll: str) -> dict:
    return dict(catalog(srv).get(catalog(srv).find_by_name(coll).uuid, with_manifest=False).properties or {})


def test_proppatch_changes_only_the_named_keys_of_the_stored_properties(srv, coll):
    """3 of 3 races lost a key: the PROPPATCH sent the whole property set
    from a cached record, erasing keys another client had set meanwhile."""
    assert proppatch(srv, f"{coll}/", {"mine": "1"}).status_code == 207
    # Warm the cached record, then another client (the SDK, another
    # instance) sets a key behind davcoll's back.
    assert srv.http.request("PROPFIND", srv.u(f"{coll}/"), headers={"Depth": "0"}, timeout=30).status_code == 207
    uuid = catalog(srv).find_by_name(coll).uuid
    catalog(srv).update(uuid, properties={**stored_properties(srv, coll), "theirs": "sdk"})
    r = proppatch(srv, f"{coll}/", {"mine": "2", "also": "x"})
    assert r.status_code == 207, r.text
    assert stored_properties(srv, coll) == {"mine": "2", "also": "x", "theirs": "sdk"}
    r = proppatch(srv, f"{coll}/", remove=["also"])
    assert r.status_code == 207, r.text
    assert stored_properties(srv, coll) == {"mine": "2", "theirs": "sdk"}


@pytest.mark.parametrize("target", ["f.txt", "sub/"])
def test_collection_properties_only_on_the_collection_root(srv, coll, target):
    assert put(srv, f"{coll}/f.txt", b"F").status_code == 201
    assert req(srv, "MKCOL", f"{coll}/sub/").status_code == 201
    r = proppatch(srv, f"{coll}/{target}", {"k": "v"})
    assert r.status_code in (207, 403), r.text
    if r.status_code == 207:
        assert "403" in r.text, r.text  # the property's own status
    assert "k" not in stored_properties(srv, coll)
    r = srv.http.request("PROPFIND", srv.u(f"{coll}/{target}"), headers={"Depth": "0"},
                         data=f'<D:propfind xmlns:D="DAV:" xmlns:P="{PROPS_NS}"><D:prop><P:k/></D:prop></D:propfind>',
                         timeout=30)
    assert r.status_code == 207 and ">v<" not in r.text

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
from urllib.parse import quote, unquote, urlparse

import pytest

from davcoll.manifest import escape_name
from davclient import DavClient, hrefs, parse_multistatus
from fake_cluster import arvados_server, fake_cluster
from server_util import running_server

NFC_E = "\u00e9"  # é as one code point
NFD_E = "e\u0301"  # e + combining acute


class Server:
    """A running server on one backend, DAV clients for it, and direct
    access to its catalog (to act as another client).

    ``dav`` sends the backend's token; ``fresh`` also sends
    ``Cache-Control: no-cache``, for reads that must see a change another
    writer made behind davcoll's back at once (writes go through ``dav``, so
    they meet whatever the server has cached).
    """

    def __init__(self, running, token: str | None, catalog, store_block, set_manifest) -> None:
        self.running, self.catalog = running, catalog
        self.url = running.url
        self.dav = DavClient(running.url, token=token)
        self.fresh = DavClient(running.url, token=token, no_cache=True)
        self.store_block, self.set_manifest = store_block, set_manifest


@pytest.fixture(scope="module", params=["embedded", "arvados"])
def srv(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety-" + request.param)
    if request.param == "embedded":
        with running_server(tmp / "data", anonymous="write") as s:
            backend = s.app.backend

            def set_manifest(uuid: str, text: str) -> None:
                backend.catalog_.update(uuid, manifest_text=text)

            yield Server(s, None, backend.catalog_, backend.blocks.put, set_manifest)
        return
    with fake_cluster(keepstores=1, seed=5) as fake:
        token = fake.add_user("safety")
        # client_options/keep_options={}: the backend's own retry settings.
        with arvados_server(fake, tmp / "data", client_options={}, keep_options={}, anonymous="write") as s:
            backend = s.app.backend
            yield Server(s, token, backend.catalog(backend.authenticate(token)), fake.store_block,
                         fake.set_manifest_raw)


@pytest.fixture
def dav(srv) -> DavClient:
    """The backend's client (the shared ``coll`` fixture makes collections with it)."""
    return srv.dav


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
    """Hrefs of a fresh PROPFIND, as the server wrote them."""
    return hrefs(srv.fresh.propfind(path, depth))


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
    assert srv.dav.put(f"{coll}/report", b"REPORT").status_code == 201
    assert srv.dav.put(f"{coll}/draft.txt", b"DRAFT").status_code == 201
    r = srv.dav.copy(f"{coll}/draft.txt", f"{coll}/{spelling}")
    assert r.status_code == 201, r.text
    assert srv.fresh.get(f"{coll}/report").content == b"REPORT"
    assert srv.fresh.get(f"{coll}/report%3Bv2.txt").content == b"DRAFT"


def test_copy_to_encoded_question_mark_names_exactly_that_file(srv, coll):
    assert srv.dav.put(f"{coll}/report", b"REPORT").status_code == 201
    assert srv.dav.put(f"{coll}/draft.txt", b"DRAFT").status_code == 201
    r = srv.dav.move(f"{coll}/draft.txt", f"{coll}/report%3Fv2.txt")
    assert r.status_code == 201, r.text
    assert srv.fresh.get(f"{coll}/report").content == b"REPORT"
    assert srv.fresh.get(f"{coll}/report%3Fv2.txt").content == b"DRAFT"
    assert srv.fresh.get(f"{coll}/draft.txt").status_code == 404


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
    assert srv.dav.put(f"{coll}/report", b"REPORT").status_code == 201
    assert srv.dav.put(f"{coll}/draft.txt", b"DRAFT").status_code == 201
    r = srv.dav.copy(f"{coll}/draft.txt", dest.format(c=coll))
    assert r.status_code == 400, r.text
    assert srv.fresh.get(f"{coll}/report").content == b"REPORT"
    hrefs = listing(srv, f"{coll}/")
    assert sorted(unquote(h).rstrip("/").rsplit("/", 1)[-1] for h in hrefs[1:]) == ["draft.txt", "report"]


def test_collection_move_to_encoded_query_does_not_trash_another_collection(srv):
    a, victim = "a-" + uuidlib.uuid4().hex[:8], "victim-" + uuidlib.uuid4().hex[:8]
    for c in (a, victim):
        assert srv.dav.mkcol(c + "/").status_code == 201
    assert srv.dav.put(f"{victim}/keep.txt", b"KEEP").status_code == 201
    r = srv.dav.move(a + "/", f"/{victim}%3Fnew/")
    assert r.status_code == 201, r.text
    assert srv.fresh.get(f"{victim}/keep.txt").content == b"KEEP"
    assert catalog(srv).find_by_name(f"{victim}?new") is not None
    assert catalog(srv).find_by_name(a) is None


NAMES = ["semi;colon.txt", "quest?ion.txt", "hash#tag.txt", "per%cent.txt", "per%25cent.txt", "sp ace.txt",
         "plus+sign.txt", "caf\u00e9.txt", "\u65e5\u672c.txt", "amp&er.txt", "eq=uals.txt", "back\\slash.txt",
         "quote'\".txt", "at@colon:.txt"]


def test_listing_hrefs_round_trip_as_destinations(srv, coll):
    """A href from a listing, used as a Destination, names exactly that file."""
    assert srv.dav.mkcol(f"{coll}/src/").status_code == 201
    assert srv.dav.mkcol(f"{coll}/dst/").status_code == 201
    for i, n in enumerate(NAMES):
        assert srv.dav.put(f"{coll}/src/{quote(n)}", f"{i}".encode()).status_code == 201, n
    hrefs = listing(srv, f"{coll}/src/")[1:]
    assert len(hrefs) == len(NAMES)
    for h in hrefs:
        dest = h.replace("/src/", "/dst/")
        r = srv.dav.copy(h, dest)
        assert r.status_code == 201, (h, r.text)
    got = sorted(unquote(h).rsplit("/", 1)[-1] for h in listing(srv, f"{coll}/dst/")[1:])
    assert got == sorted(NAMES)
    for i, n in enumerate(NAMES):
        assert srv.fresh.get(f"{coll}/dst/{quote(n)}").content == f"{i}".encode(), n


@pytest.mark.parametrize("reserved", ["_health", "_metrics", "by_id", "_", "c=zzzzz-4zz18-000000000000000",
                                      "t=sometoken"])
@pytest.mark.parametrize("method", ["MOVE", "COPY"])
def test_reserved_top_level_names_refused_as_destinations(srv, coll, reserved, method):
    assert srv.dav.put(f"{coll}/f.txt", b"F").status_code == 201
    r = srv.dav.req(method, coll + "/", headers={"Destination": f"/{reserved}/"})
    assert r.status_code in (403, 409), r.text
    assert catalog(srv).find_by_name(reserved) is None
    assert srv.fresh.get(f"{coll}/f.txt").content == b"F"
    assert srv.dav.get("_health").json()["status"] == "ok"


# ---------------------------------------------------------------- backslash


def test_backslash_raw_and_encoded_are_the_same_name(srv, coll):
    assert srv.dav.put(f"{coll}/a%5Cb.txt", b"BACK").status_code == 201
    assert srv.fresh.get(f"{coll}/a%5Cb.txt").content == b"BACK"
    auth = "".join(f"{k}: {v}\r\n" for k, v in srv.dav.headers.items() if k == "Authorization")
    status, body = raw(srv, f"GET /{coll}/a\\b.txt HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode())
    assert (status, body) == (200, b"BACK")
    hrefs = listing(srv, f"{coll}/")
    assert any(h.endswith("/a%5Cb.txt") for h in hrefs), hrefs


def test_backslash_names_written_by_another_client_are_reachable(srv, coll):
    write_names_behind_our_back(srv, coll, {"dir\\x/f\\g.txt": b"SDK", "top\\name": b"TOP"})
    hrefs = listing(srv, f"{coll}/", "1")
    href = next(h for h in hrefs if "top" in h)
    assert href.endswith("/top%5Cname")
    assert srv.dav.get(href).content == b"TOP"
    assert srv.fresh.get(f"{coll}/dir%5Cx/f%5Cg.txt").content == b"SDK"
    assert srv.dav.put(f"{coll}/dir%5Cx/f%5Cg.txt", b"NEW").status_code == 204
    assert srv.fresh.get(f"{coll}/dir%5Cx/f%5Cg.txt").content == b"NEW"
    assert srv.dav.delete(href).status_code == 204
    assert srv.fresh.get(f"{coll}/top%5Cname").status_code == 404


# ---------------------------------------------------------------- control characters


@pytest.mark.parametrize("name", ["a%01b", "a%0Ab", "a%0Db", "a%09b", "a%7Fb", "a%C2%85b", "a%EF%BF%BEb"])
def test_control_characters_refused_at_creation(srv, coll, name):
    r = srv.dav.put(f"{coll}/{name}", b"x")
    assert r.status_code == 400, r.text
    assert srv.dav.mkcol(f"{coll}/{name}/").status_code == 400
    assert srv.dav.put(f"{coll}/ok.txt", b"ok").status_code == 201
    assert srv.dav.move(f"{coll}/ok.txt", f"{coll}/{name}").status_code == 400
    assert listing(srv, f"{coll}/")  # still listable


def test_control_character_names_from_other_writers_do_not_break_listings(srv, coll):
    write_names_behind_our_back(srv, coll, {"bad\x01name": b"B", "dir\x1b[31m/in.txt": b"I", "good.txt": b"G"})
    for path, depth in ((f"{coll}/", "1"), (f"{coll}/", "0"), ("", "1")):
        parse_multistatus(srv.fresh.propfind(path, depth))  # a 207, well-formed
    assert srv.dav.get(f"{coll}/", headers={"Accept": "text/html"}).status_code == 200
    assert srv.fresh.get(f"{coll}/good.txt").content == b"G"
    assert srv.fresh.get(f"{coll}/bad%01name").content == b"B"
    assert srv.dav.delete(f"{coll}/bad%01name").status_code == 204
    assert srv.dav.delete(f"{coll}/dir%1B%5B31m/").status_code == 204
    assert [unquote(h).rsplit("/", 1)[-1] for h in listing(srv, f"{coll}/")[1:]] == ["good.txt"]


# ---------------------------------------------------------------- Unicode spellings


def test_both_spellings_in_one_folder_each_reach_their_own_file(srv, coll):
    nfc, nfd = f"caf{NFC_E}.txt", f"caf{NFD_E}.txt"
    write_names_behind_our_back(srv, coll, {nfc: b"NFC", nfd: b"NFD"})
    assert srv.fresh.get(f"{coll}/{quote(nfc)}").content == b"NFC"
    assert srv.fresh.get(f"{coll}/{quote(nfd)}").content == b"NFD"
    assert srv.dav.delete(f"{coll}/{quote(nfd)}").status_code == 204
    assert srv.fresh.get(f"{coll}/{quote(nfc)}").content == b"NFC"
    assert srv.fresh.get(f"{coll}/{quote(nfd)}").content == b"NFC"  # falls back to the equivalent name now
    names = [unquote(h).rsplit("/", 1)[-1] for h in listing(srv, f"{coll}/")[1:]]
    assert names == [nfc]


def test_overwrite_through_one_spelling_leaves_the_other(srv, coll):
    nfc, nfd = f"{NFC_E}t{NFC_E}", f"{NFD_E}t{NFD_E}"
    write_names_behind_our_back(srv, coll, {nfc: b"NFC", nfd: b"NFD"})
    assert srv.dav.put(f"{coll}/{quote(nfd)}", b"NEW-NFD").status_code == 204
    assert srv.fresh.get(f"{coll}/{quote(nfc)}").content == b"NFC"
    assert srv.fresh.get(f"{coll}/{quote(nfd)}").content == b"NEW-NFD"
    assert srv.dav.copy(f"{coll}/{quote(nfc)}", f"{coll}/{quote(nfd)}").status_code == 204
    assert srv.fresh.get(f"{coll}/{quote(nfd)}").content == b"NFC"
    assert srv.fresh.get(f"{coll}/{quote(nfc)}").content == b"NFC"


def test_new_names_are_created_nfc_and_found_by_either_spelling(srv, coll):
    nfd = f"r{NFD_E}sum{NFD_E}.txt"
    nfc = unicodedata.normalize("NFC", nfd)
    assert srv.dav.put(f"{coll}/{quote(nfd)}", b"X").status_code == 201
    names = [unquote(h).rsplit("/", 1)[-1] for h in listing(srv, f"{coll}/")[1:]]
    assert names == [nfc]
    assert srv.fresh.get(f"{coll}/{quote(nfd)}").content == b"X"
    assert srv.dav.put(f"{coll}/{quote(nfc)}", b"Y").status_code == 204  # same file, either spelling
    assert srv.fresh.get(f"{coll}/{quote(nfd)}").content == b"Y"


def test_collection_with_nfd_name_is_reachable(srv):
    nfd = f"coll-{NFD_E}-" + uuidlib.uuid4().hex[:6]
    rec = catalog(srv).create(nfd)
    try:
        assert srv.dav.put(f"{quote(nfd)}/f.txt", b"IN-NFD").status_code == 201
        assert srv.fresh.get(f"{quote(nfd)}/f.txt").content == b"IN-NFD"
        assert catalog(srv).get(rec.uuid).manifest_text.endswith("f.txt\n")
        hrefs = listing(srv, "", "1")
        assert any(unquote(h).rstrip("/").endswith(nfd) for h in hrefs)
        # An NFC twin created next to it is another collection.
        nfc = unicodedata.normalize("NFC", nfd)
        catalog(srv).create(nfc)
        assert srv.dav.put(f"{quote(nfc)}/g.txt", b"IN-NFC").status_code == 201
        assert srv.fresh.get(f"{quote(nfd)}/g.txt").status_code == 404
        assert srv.fresh.get(f"{quote(nfd)}/f.txt").content == b"IN-NFD"
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
    return srv.dav.proppatch(path, "".join(body).encode())


def stored_properties(srv, coll: str) -> dict:
    return dict(catalog(srv).get(catalog(srv).find_by_name(coll).uuid, with_manifest=False).properties or {})


def test_proppatch_changes_only_the_named_keys_of_the_stored_properties(srv, coll):
    """3 of 3 races lost a key: the PROPPATCH sent the whole property set
    from a cached record, erasing keys another client had set meanwhile."""
    assert proppatch(srv, f"{coll}/", {"mine": "1"}).status_code == 207
    # Warm the cached record, then another client (the SDK, another
    # instance) sets a key behind davcoll's back.
    assert srv.dav.propfind(f"{coll}/", "0").status_code == 207
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
    assert srv.dav.put(f"{coll}/f.txt", b"F").status_code == 201
    assert srv.dav.mkcol(f"{coll}/sub/").status_code == 201
    r = proppatch(srv, f"{coll}/{target}", {"k": "v"})
    assert r.status_code in (207, 403), r.text
    if r.status_code == 207:
        assert "403" in r.text, r.text  # the property's own status
    assert "k" not in stored_properties(srv, coll)
    r = srv.dav.propfind(f"{coll}/{target}", "0",
                         f'<D:propfind xmlns:D="DAV:" xmlns:P="{PROPS_NS}"><D:prop><P:k/></D:prop></D:propfind>')
    assert r.status_code == 207 and ">v<" not in r.text


def test_failed_proppatch_changes_neither_dead_nor_collection_properties(srv, coll, monkeypatch):
    """A PROPPATCH setting a dead property and a collection property whose
    catalog update fails: the dead property used to be written already
    (WsgiDAV writes them during the request); now both stores stay as they
    were, and the next try stores both."""
    from davcoll.storage.catalog import Unavailable

    body = (f'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:P="{PROPS_NS}" xmlns:Z="urn:x-test">'
            "<D:set><D:prop><Z:dead>on-disk</Z:dead><P:k>v</P:k></D:prop></D:set></D:propertyupdate>")
    find = ('<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:Z="urn:x-test">'
            "<D:prop><Z:dead/></D:prop></D:propfind>")

    def dead_value() -> str | None:
        r = srv.fresh.propfind(f"{coll}/", "0", find)
        assert r.status_code == 207, r.text
        return ">on-disk<" in r.text or None

    def failing(self, uuid, patch):
        raise Unavailable("injected: catalog down")

    monkeypatch.setattr(type(catalog(srv)), "update_properties", failing)
    r = srv.dav.proppatch(f"{coll}/", body.encode())
    assert r.status_code == 503, r.text
    monkeypatch.undo()
    assert dead_value() is None
    assert "k" not in stored_properties(srv, coll)
    r = srv.dav.proppatch(f"{coll}/", body.encode())
    assert r.status_code == 207, r.text
    assert dead_value() is True and stored_properties(srv, coll).get("k") == "v"

"""Bounded memory and CPU per request, honest logs (issue 11, sections 4 and 5).

Against a real in-process server (``running_server``):
  - made-up HTTP methods do not add ``/_metrics`` series (one ``other``);
  - Finder/Windows metadata files count their names and a per-entry
    overhead against the junk memory limit, and their number is capped;
  - dead properties are capped per resource (count) and per value (bytes);
    a PROPPATCH past a cap is refused with 507 and a reason and changes
    nothing;
  - allprop PROPFIND costs one property-store query per resource (Depth 0)
    and O(1) queries for a whole folder (Depth 1), counted by wrapping the
    store, not timed;
  - XML bodies with too many namespace declarations, elements or levels are
    refused with 413 before WsgiDAV parses them;
  - the access log escapes control characters (no forged lines) and spells
    non-ASCII paths as typed.
"""

from __future__ import annotations

import logging
import re
import socket

import pytest

from davclient import DavClient, wait_until
from davcoll.dav.junk import JunkStore
from server_util import running_server


def proppatch_body(props: str, extra_ns: str = "") -> bytes:
    return (f'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"{extra_ns}>'
            f"<D:set><D:prop>{props}</D:prop></D:set></D:propertyupdate>").encode()


ALLPROP = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'


@pytest.fixture
def srv(tmp_path):
    """A server of its own per test (the tests count store queries, read
    metrics and the access log), with one collection "c"."""
    with running_server(tmp_path / "data") as s:
        assert DavClient(s.url).mkcol("c/").status_code == 201
        yield s


def raw_request(url: str, line: bytes) -> bytes:
    """Send one request with a raw request line (requests would re-quote it)."""
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


# --------------------------------------------------------------------------
# /_metrics labels


def test_made_up_methods_do_not_grow_metrics(dav):
    for i in range(300):
        dav.req(f"MADEUP{chr(65 + i % 26)}{chr(65 + i // 26)}", "c/")
    dav.req("BREW", "c/")
    text = dav.get("_metrics").text
    methods = set(re.findall(r'davcoll_requests_total\{method="([^"]*)"', text))
    assert "other" in methods
    assert not any(m.startswith("MADEUP") or m == "BREW" for m in methods)
    assert methods <= {"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
                       "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "other"}
    statuses = set(re.findall(r'davcoll_requests_total\{[^}]*status="([^"]*)"', text))
    assert all(re.fullmatch(r"\d{3}|\dxx|other", st) for st in statuses), statuses


def test_status_labels_are_bounded():
    from davcoll.metrics import Metrics, method_label, status_label

    assert method_label("PROPFIND") == "PROPFIND" and method_label("propfind") == "other"
    assert status_label(207) == "207" and status_label(299) == "2xx" and status_label(0) == "other"
    assert status_label(1000) == "other"
    m = Metrics()
    for st in range(0, 2000):
        m.observe_request("GET", st, 0.0, 0, 0)
    series = re.findall(r'davcoll_requests_total\{[^}]*\}', m.render())
    assert len(series) < 80  # registered codes + 5 classes + other


# --------------------------------------------------------------------------
# Finder/Windows metadata files


def test_junk_store_counts_names_and_overhead():
    js = JunkStore(max_bytes=1 << 20, max_entries=100_000, entry_overhead=200)
    long = "d/._" + "n" * 50_000
    for i in range(100):
        js.put("coll", f"{long}{i}", b"")
    # 100 empty files with 50 KB names are ~5 MB of names: only ~20 fit in 1 MiB.
    assert js.bytes_used <= 1 << 20
    assert 10 <= len(js) <= 21
    assert js.get("coll", f"{long}99") is not None  # the newest stay
    assert js.get("coll", f"{long}0") is None  # the oldest went first


def test_junk_store_caps_entries_and_lists_by_directory():
    js = JunkStore(max_bytes=64 << 20, max_entries=50)
    for i in range(200):
        js.put("c", f"d{i % 4}/._f{i}", b"x")
    assert len(js) == 50
    names = js.names_in("c", "d3")
    assert sorted(names) == sorted(f"._f{i}" for i in range(150, 200) if i % 4 == 3)
    assert js.names_in("c", "") == [] and js.names_in("other", "d3") == []
    js.put("c", "._top", b"y")
    assert js.names_in("c", "") == ["._top"]
    js.drop_tree("c", "d3")
    assert js.names_in("c", "d3") == [] and len(js.names_in("c", "d2")) > 0
    assert js.delete("c", "._top") and js.names_in("c", "") == []
    before = js.bytes_used
    js.drop_tree("c")
    assert len(js) == 0 and js.bytes_used == 0 < before


def test_junk_store_lru_refresh_keeps_recently_read():
    js = JunkStore(max_bytes=64 << 20, max_entries=3)
    for n in ("a", "b", "c"):
        js.put("c", f"._{n}", b"")
    assert js.get("c", "._a") is not None  # a is now the most recent
    js.put("c", "._d", b"")
    assert js.get("c", "._b") is None and js.get("c", "._a") is not None


def test_junk_with_long_names_over_http_stays_within_limit(tmp_path):
    with running_server(tmp_path / "data", junk_max_bytes=1 << 20) as srv:
        dav = DavClient(srv.url)
        assert dav.mkcol("c/").status_code == 201
        name = "._" + "n" * 200
        for i in range(40):
            r = dav.put(f"c/{name}{i:03d}", data=b"")
            assert r.status_code in (201, 204), r.text
        junk = provider_of(srv).junk
        # 40 entries of ~(200 + key + overhead) bytes: counted, not zero.
        assert junk.bytes_used >= 40 * 200
        assert junk.bytes_used <= 1 << 20
        # Names are what costs here: 50 KB names fill the 1 MiB budget after ~20.
        big = "._" + "b" * 50_000
        for i in range(40):
            # Some HTTP stacks cap the request line; the server must not keep
            # more than its budget either way.
            dav.put(f"c/{big[:8000]}{i:03d}", data=b"")
        assert junk.bytes_used <= 1 << 20
        listing = dav.propfind("c/", "1")
        assert listing.status_code == 207


def provider_of(srv):
    """The CollectionProvider behind the request guard and WsgiDAV."""
    return srv.app.wsgi.app.provider_map["/"]


# --------------------------------------------------------------------------
# XML body shape


@pytest.mark.parametrize("body, reason", [
    (proppatch_body("<Z:a>v</Z:a>", " " + " ".join(f'xmlns:n{i}="urn:x{i}"' for i in range(40_000))),
     "namespaces"),
    (proppatch_body("".join(f'<p xmlns="urn:p{i}">v</p>' for i in range(150))), "namespaces"),
    (proppatch_body("<Z:a>" + "<b/>" * 20_000 + "</Z:a>"), "elements"),
    (proppatch_body("<Z:a>" + "<b>" * 200 + "</b>" * 200 + "</Z:a>"), "deeper"),
], ids=["40k-prefixed-decls", "150-default-decls", "20k-elements", "200-deep"])
def test_xml_shape_limits(dav, body, reason):
    dav.put("c/f.txt", data=b"x")
    r = dav.proppatch("c/f.txt", body)
    assert r.status_code == 413, r.text
    assert reason in r.text
    assert "Z:a" not in dav.propfind("c/f.txt", "0", ALLPROP).text


def test_xml_within_limits_is_served(dav):
    dav.put("c/f.txt", data=b"x")
    body = proppatch_body("".join(f'<p{i} xmlns="urn:p{i}">v</p{i}>' for i in range(50)))
    r = dav.proppatch("c/f.txt", body)
    assert r.status_code == 207 and "200 OK" in r.text


# --------------------------------------------------------------------------
# access log


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def access_log():
    cap = _Capture()
    cap.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("davcoll.access")
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(cap)
    try:
        yield cap
    finally:
        logger.removeHandler(cap)
        logger.setLevel(old)


def _wait_lines(cap: _Capture, *needles: str) -> list[str]:
    """The captured lines once each needle is in one (the access line is
    written after the response has gone out, so poll)."""
    wait_until(lambda: all(any(n in line for line in cap.lines) for n in needles), timeout=10, interval=0.01)
    return list(cap.lines)


def test_access_log_cannot_be_forged(srv, access_log):
    forged = b"GET /x%0A2026-01-01%2000:00:00,000%20INFO%20davcoll.access:%20DELETE%20/important/%20204%0D HTTP/1.1"
    raw_request(srv.url, forged)
    raw_request(srv.url, b"GET /c/a%5Cb%09%1B%7F HTTP/1.1")
    raw_request(srv.url, b"GE\x01T /c/ HTTP/1.1")  # cheroot may refuse it; if logged, escaped
    lines = _wait_lines(access_log, "important", "/c/a", "/c/ ")
    assert all("\n" not in line and "\r" not in line for line in lines)
    first = [line for line in lines if "important" in line]
    assert len(first) == 1
    assert "/x\\n2026-01-01 00:00:00,000 INFO davcoll.access: DELETE /important/ 204\\r " in first[0]
    second = [line for line in lines if "/c/a" in line]
    assert len(second) == 1 and "/c/a\\\\b\\t\\x1b\\x7f " in second[0]
    assert not any("\x01" in line or "\x1b" in line for line in lines)


def test_access_log_spells_unicode_paths_as_typed(dav, access_log):
    dav.mkcol("c/%C3%A9t%C3%A9/")
    dav.get("c/%C3%A9t%C3%A9/")
    dav.get("t=secret-token-123/c/%C3%A9t%C3%A9/")
    lines = _wait_lines(access_log, "MKCOL /c/", "GET /c/", "/t=***/")
    assert any("MKCOL /c/été/ 201" in line for line in lines), lines
    assert not any("Ã" in line for line in lines)
    assert not any("secret-token-123" in line for line in lines)
    assert any("/t=***/c/été/" in line for line in lines)


# --------------------------------------------------------------------------
# dead properties: caps


def props_of(dav: DavClient, path: str) -> set[str]:
    r = dav.propfind(path, "0", ALLPROP)
    assert r.status_code == 207, r.text
    return set(re.findall(r"<(?:\w+:)?(p\d+)\b", r.text))


def test_dead_property_count_cap_refuses_with_reason_and_changes_nothing(tmp_path):
    with running_server(tmp_path / "data", max_dead_props=20) as srv:
        dav = DavClient(srv.url)
        dav.mkcol("c/")
        dav.put("c/f.txt", data=b"x")
        ok = dav.proppatch("c/f.txt",
                           proppatch_body("".join(f"<Z:p{i}>v</Z:p{i}>" for i in range(18))))
        assert ok.status_code == 207 and "HTTP/1.1 200 OK" in ok.text
        before = props_of(dav, "c/f.txt")
        assert len(before) == 18
        r = dav.proppatch("c/f.txt",
                          proppatch_body("".join(f"<Z:p{i}>w</Z:p{i}>" for i in range(15, 25))))
        assert r.status_code == 207
        assert "HTTP/1.1 507 Insufficient Storage" in r.text
        assert "at most 20 dead properties" in r.text
        assert "HTTP/1.1 424 Failed Dependency" in r.text  # the rest are not applied either
        assert props_of(dav, "c/f.txt") == before
        assert ">w<" not in dav.propfind("c/f.txt", "0", ALLPROP).text
        # Overwriting existing ones and removing to make room stay possible.
        body = (b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z">'
                b"<D:remove><D:prop><Z:p0/><Z:p1/><Z:p2/></D:prop></D:remove>"
                b"<D:set><D:prop><Z:p3>w</Z:p3><Z:p30>v</Z:p30><Z:p31>v</Z:p31><Z:p32>v</Z:p32>"
                b"<Z:p33>v</Z:p33><Z:p34>v</Z:p34></D:prop></D:set></D:propertyupdate>")
        r = dav.proppatch("c/f.txt", body)
        assert r.status_code == 207 and "HTTP/1.1 507" not in r.text, r.text
        assert len(props_of(dav, "c/f.txt")) == 20


def test_dead_property_value_size_cap(tmp_path):
    with running_server(tmp_path / "data", max_prop_bytes=1024) as srv:
        dav = DavClient(srv.url)
        dav.mkcol("c/")
        dav.put("c/f.txt", data=b"x")
        r = dav.proppatch("c/f.txt",
                          proppatch_body("<Z:p1>small</Z:p1><Z:p2>" + "v" * 2000 + "</Z:p2>"))
        assert r.status_code == 207
        assert "HTTP/1.1 507 Insufficient Storage" in r.text and "the limit is 1024 bytes" in r.text
        assert props_of(dav, "c/f.txt") == set()
        ok = dav.proppatch("c/f.txt", proppatch_body("<Z:p1>" + "v" * 900 + "</Z:p1>"))
        assert "HTTP/1.1 200 OK" in ok.text and props_of(dav, "c/f.txt") == {"p1"}


# --------------------------------------------------------------------------
# dead properties: PROPFIND cost in store queries


class CountingStore:
    """Wraps a PropertyStore and counts read queries."""

    READS = ("names", "get", "get_all", "get_children")

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if name in self.READS:
            def counted(*a, **kw):
                self.calls.append(name)
                return attr(*a, **kw)
            return counted
        return attr


def count_store(srv) -> CountingStore:
    pm = provider_of(srv).prop_manager
    if not isinstance(pm.store, CountingStore):
        pm.store = CountingStore(pm.store)
    return pm.store


def test_allprop_on_one_resource_costs_one_query(srv, dav):
    dav.put("c/f.txt", data=b"x")
    r = dav.proppatch("c/f.txt",
                      proppatch_body("".join(f"<Z:p{i}>v{i}</Z:p{i}>" for i in range(500))))
    assert "HTTP/1.1 200 OK" in r.text
    store = count_store(srv)
    store.calls.clear()
    found = props_of(dav, "c/f.txt")
    assert len(found) == 500
    assert len(store.calls) <= 2, store.calls  # was 501 (names + one get per property)


@pytest.mark.parametrize("n", [10, 60])
def test_depth1_allprop_over_a_folder_costs_constant_queries(srv, dav, n):
    for i in range(n):
        dav.put(f"c/f{i}.txt", data=b"x")
        body = proppatch_body(f"<Z:p1>a{i}</Z:p1><Z:p2>b{i}</Z:p2><Z:p3>c{i}</Z:p3>")
        assert "HTTP/1.1 200 OK" in dav.proppatch(f"c/f{i}.txt", body).text
    store = count_store(srv)
    store.calls.clear()
    r = dav.propfind("c/", "1", ALLPROP)
    assert r.status_code == 207
    for i in range(n):
        assert f">a{i}<" in r.text and f">b{i}<" in r.text and f">c{i}<" in r.text
    assert len(store.calls) <= 4, store.calls  # was 4 per file (names + 3 gets)
    # Named dead properties: same bound.
    store.calls.clear()
    named = (b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:Z="urn:z">'
             b"<D:prop><Z:p2/><D:getetag/></D:prop></D:propfind>")
    r = dav.propfind("c/", "1", named)
    assert r.status_code == 207 and f">b{n - 1}<" in r.text
    assert len(store.calls) <= 4, store.calls


def test_property_writes_in_a_request_are_seen_by_later_reads(dav):
    """The per-request cache never serves stale values after a change."""
    dav.put("c/f.txt", data=b"x")
    for v in ("one", "two"):
        r = dav.proppatch("c/f.txt", proppatch_body(f"<Z:p1>{v}</Z:p1>"))
        assert "HTTP/1.1 200 OK" in r.text
        got = dav.propfind("c/f.txt", "0", ALLPROP).text
        assert f">{v}<" in got
    assert dav.move("c/f.txt", "c/g.txt").status_code == 201
    assert ">two<" in dav.propfind("c/", "1", ALLPROP).text


def test_local_store_children_query_and_upgrade(tmp_path):
    """Databases made before the parent column are upgraded on open."""
    import sqlite3

    from davcoll.storage.local_props import LocalPropertyStore

    db = tmp_path / "p.sqlite3"
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE dead_props (res_key TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL, "
              "PRIMARY KEY (res_key, name)) WITHOUT ROWID")
    c.executemany("INSERT INTO dead_props VALUES(?,?,?)",
                  [("/by_id/u/a", "{z}p", b"1"), ("/by_id/u/a/b", "{z}p", b"2"), ("/by_id/u/c", "{z}q", b"3")])
    c.commit()
    c.close()
    store = LocalPropertyStore(db)
    assert store.get_children("/by_id/u", 1 << 20) == {"/by_id/u/a": {"{z}p": b"1"}, "/by_id/u/c": {"{z}q": b"3"}}
    assert store.get_children("/by_id/u", 10) is None  # over the byte budget: ask per key
    store.copy_tree("/by_id/u/a", "/by_id/u/z")
    assert store.get_children("/by_id/u/z", 1 << 20) == {"/by_id/u/z/b": {"{z}p": b"2"}}
    assert store.get_all("/by_id/u/z") == {"{z}p": b"1"}
    store.close()
    assert LocalPropertyStore(db).get_children("/by_id/u/a", 1 << 20) == {"/by_id/u/a/b": {"{z}p": b"2"}}

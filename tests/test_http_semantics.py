"""HTTP semantics a WebDAV server gets wrong easily: ranges, truncated and
mis-sized uploads, entity tags, Last-Modified, conditional requests, and the
hostile-input answers of the guard.  Raw sockets where a client library
would hide the behaviour.
"""

from __future__ import annotations

import email.utils
import os
import re
import socket
import time
from urllib.parse import urlparse

import pytest

from davclient import D, parse_multistatus

SIZE = 100_000


@pytest.fixture
def data_file(dav, coll):
    data = os.urandom(SIZE)
    assert dav.put(f"{coll}/f.bin", data=data).status_code == 201
    return f"{coll}/f.bin", data


def record(srv, name):
    cat = srv.app.backend.catalog_
    return cat.get(cat.find_by_name(name).uuid)


# ------------------------------------------------------------------ raw HTTP


def addr(srv) -> tuple[str, int]:
    u = urlparse(srv.url)
    return u.hostname, u.port


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length framed) from a socket."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {buf!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(body) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:n]


def raw(srv, request: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(addr(srv), timeout=timeout) as s:
        s.sendall(request)
        return read_response(s)


def put_count(dav) -> dict[str, float]:
    """PUT responses by status, from /_metrics."""
    text = dav.get("_metrics").text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'^davcoll_requests_total\{method="PUT",status="(\d+)"\} (\S+)', text, re.M)}


def wait_for_put_outcome(dav, before: dict[str, float], timeout: float = 10) -> dict[str, float]:
    """Wait until the server has finished one more PUT; return the new counts."""
    deadline = time.monotonic() + timeout
    while True:
        now = put_count(dav)
        if sum(now.values()) > sum(before.values()):
            return {k: now.get(k, 0) - before.get(k, 0) for k in now}
        assert time.monotonic() < deadline, "the server never finished the PUT"
        time.sleep(0.05)


# ------------------------------------------------------------------ ranges


@pytest.mark.parametrize(
    "spec",
    ["bytes=0-9,100-109", "bytes=0-1,-1", "bytes=50-60,0-5", "bytes=0-99999,5-10", "bytes=10-20, 30-40", "bytes=1-2,"],
)
def test_multi_range_is_whole_body_or_correct_multipart(dav, data_file, spec):
    path, data = data_file
    r = dav.get(path, headers={"Range": spec})
    if r.status_code == 200:
        assert r.content == data
        assert "Content-Range" not in r.headers
        return
    # a multipart answer must carry every requested range, in order
    assert r.status_code == 206, r.status_code
    ctype = r.headers["Content-Type"]
    assert ctype.startswith("multipart/byteranges"), f"single-part 206 for {spec}: {r.headers.get('Content-Range')}"
    boundary = re.search(r'boundary="?([^";]+)"?', ctype).group(1).encode()
    parts = [p for p in r.content.split(b"--" + boundary) if p.strip() not in (b"", b"--")]
    wanted = [x.strip() for x in spec.split("=", 1)[1].split(",") if x.strip()]
    assert len(parts) == len(wanted)
    for part, rng in zip(parts, wanted):
        head, _, body = part.partition(b"\r\n\r\n")
        m = re.search(rb"Content-Range: bytes (\d+)-(\d+)/(\d+)", head, re.I)
        lo, hi = int(m.group(1)), int(m.group(2))
        assert body.rstrip(b"\r\n") == data[lo : hi + 1] or body[: hi - lo + 1] == data[lo : hi + 1]


def test_single_ranges(dav, data_file):
    path, data = data_file
    for spec, lo, hi in [("0-0", 0, 0), ("10-19", 10, 19), ("-10", SIZE - 10, SIZE - 1), (f"{SIZE - 5}-", SIZE - 5, SIZE - 1),
                         (f"5-{SIZE * 2}", 5, SIZE - 1), (f"-{SIZE * 3}", 0, SIZE - 1)]:
        r = dav.get(path, headers={"Range": f"bytes={spec}"})
        assert r.status_code == 206, spec
        assert r.headers["Content-Range"] == f"bytes {lo}-{hi}/{SIZE}", spec
        assert r.content == data[lo : hi + 1]
        assert r.headers["Accept-Ranges"] == "bytes"


def test_unsatisfiable_ranges_are_416(dav, data_file):
    path, data = data_file
    for spec in (f"bytes={SIZE}-", f"bytes={SIZE + 10}-{SIZE + 20}", "bytes=-0"):
        r = dav.get(path, headers={"Range": spec})
        assert r.status_code == 416, spec
        cr = r.headers.get("Content-Range")
        assert cr is None or cr == f"bytes */{SIZE}", cr
    r = dav.get(path, headers={"Range": f"bytes={SIZE}-"})
    assert r.headers["Content-Range"] == f"bytes */{SIZE}"


def test_range_in_unknown_unit_is_ignored(dav, data_file):
    path, data = data_file
    r = dav.get(path, headers={"Range": "items=0-2"})
    assert r.status_code == 200 and r.content == data


def test_if_range(dav, data_file):
    path, data = data_file
    g = dav.get(path)
    for validator in (g.headers["ETag"], g.headers["Last-Modified"]):
        r = dav.get(path, headers={"Range": "bytes=0-3", "If-Range": validator})
        assert r.status_code == 206 and r.content == data[:4]
    r = dav.get(path, headers={"Range": "bytes=0-3", "If-Range": '"stale-tag"'})
    assert r.status_code == 200 and r.content == data


# ------------------------------------------------------------------ truncated and mis-sized uploads


@pytest.mark.parametrize("target", ["old.txt", "brand-new.txt"])
def test_short_body_changes_nothing(srv, dav, coll, target):
    dav.put(f"{coll}/old.txt", data=b"old content")
    before = record(srv, coll)
    counts = put_count(dav)
    s = socket.create_connection(addr(srv), timeout=10)
    s.sendall(f"PUT /{coll}/{target} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode() + b"z" * 100)
    time.sleep(0.2)
    s.close()  # the client is gone: 900 bytes never arrive
    outcome = wait_for_put_outcome(dav, counts)
    assert not any(k.startswith("2") and v for k, v in outcome.items()), outcome
    after = record(srv, coll)
    assert (after.version, after.manifest_text) == (before.version, before.manifest_text)
    assert dav.get(f"{coll}/old.txt").content == b"old content"
    assert dav.get(f"{coll}/brand-new.txt").status_code == 404


def test_short_body_with_half_close_gets_400(srv, dav, coll):
    dav.put(f"{coll}/old.txt", data=b"old content")
    with socket.create_connection(addr(srv), timeout=10) as s:
        s.sendall(f"PUT /{coll}/old.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode() + b"z" * 100)
        s.shutdown(socket.SHUT_WR)
        status, _, body = read_response(s)
    assert status == 400, body
    assert dav.get(f"{coll}/old.txt").content == b"old content"


def test_truncated_chunked_body_changes_nothing(srv, dav, coll):
    dav.put(f"{coll}/old.txt", data=b"old content")
    before = record(srv, coll)
    counts = put_count(dav)
    s = socket.create_connection(addr(srv), timeout=10)
    s.sendall(f"PUT /{coll}/old.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
              + b"10\r\n" + b"y" * 16 + b"\r\n" + b"10\r\n" + b"y" * 8)
    time.sleep(0.2)
    s.close()
    outcome = wait_for_put_outcome(dav, counts)
    assert not any(k.startswith("2") and v for k, v in outcome.items()), outcome
    after = record(srv, coll)
    assert (after.version, after.manifest_text) == (before.version, before.manifest_text)
    assert dav.get(f"{coll}/old.txt").content == b"old content"


@pytest.mark.parametrize("announced", [999, 1001, 0])
def test_expected_entity_length_mismatch_is_400(srv, dav, coll, announced):
    dav.put(f"{coll}/old.txt", data=b"old content")
    before = record(srv, coll)
    body = b"q" * 1000
    for target in ("old.txt", "new.txt"):
        r = dav.put(f"{coll}/{target}", data=iter([body[:500], body[500:]]),
                    headers={"X-Expected-Entity-Length": str(announced)})
        assert r.status_code == 400, target
    after = record(srv, coll)
    assert (after.version, after.manifest_text) == (before.version, before.manifest_text)
    assert dav.get(f"{coll}/old.txt").content == b"old content"
    assert dav.get(f"{coll}/new.txt").status_code == 404
    # the same upload with the right length works
    r = dav.put(f"{coll}/new.txt", data=iter([body[:500], body[500:]]),
                headers={"X-Expected-Entity-Length": "1000"})
    assert r.status_code == 201
    assert dav.get(f"{coll}/new.txt").content == body


# ------------------------------------------------------------------ validators


ETAG_RE = re.compile(r'"[^"\s]+"')


def test_etags_are_strong_and_consistent(dav, coll):
    r = dav.put(f"{coll}/a.txt", data=b"alpha")
    put_tag = r.headers["ETag"]
    assert ETAG_RE.fullmatch(put_tag) and not put_tag.startswith("W/"), put_tag
    g = dav.get(f"{coll}/a.txt")
    h = dav.head(f"{coll}/a.txt")
    assert g.headers["ETag"] == h.headers["ETag"] == put_tag
    pf = dav.propfind(f"{coll}/a.txt", depth="0")
    tag = parse_multistatus(pf)[0].text(f"{D}getetag")
    assert tag == put_tag
    # a new version has a new tag; the old tag no longer validates
    r = dav.put(f"{coll}/a.txt", data=b"beta")
    assert ETAG_RE.fullmatch(r.headers["ETag"]) and r.headers["ETag"] != put_tag
    assert dav.get(f"{coll}/a.txt").headers["ETag"] == r.headers["ETag"]
    # folders carry no ETag
    assert "ETag" not in dav.head(f"{coll}/").headers
    # unrelated writes to the collection do not change a file's tag
    tag_before = dav.head(f"{coll}/a.txt").headers["ETag"]
    dav.put(f"{coll}/other.txt", data=b"other")
    assert dav.head(f"{coll}/a.txt").headers["ETag"] == tag_before


def test_last_modified(dav, coll):
    t0 = time.time()
    dav.put(f"{coll}/lm.txt", data=b"x")
    for method in ("GET", "HEAD"):
        r = dav.req(method, f"{coll}/lm.txt")
        lm = email.utils.parsedate_to_datetime(r.headers["Last-Modified"]).timestamp()
        assert t0 - 2 <= lm <= time.time() + 1, (method, r.headers["Last-Modified"])
    pf = dav.propfind(f"{coll}/", depth="1")
    for resp in parse_multistatus(pf):
        assert resp.prop(f"{D}getlastmodified") is not None, resp.href
    # revalidating with the exact Last-Modified gives 304
    r = dav.get(f"{coll}/lm.txt")
    r2 = dav.get(f"{coll}/lm.txt", headers={"If-Modified-Since": r.headers["Last-Modified"]})
    assert r2.status_code == 304 and r2.content == b""


def test_conditional_writes(dav, coll):
    r = dav.put(f"{coll}/c.txt", data=b"v1")
    tag = r.headers["ETag"]
    assert dav.put(f"{coll}/c.txt", data=b"v2", headers={"If-Match": '"other"'}).status_code == 412
    assert dav.put(f"{coll}/c.txt", data=b"v2", headers={"If-None-Match": "*"}).status_code == 412
    assert dav.get(f"{coll}/c.txt").content == b"v1"
    assert dav.put(f"{coll}/c.txt", data=b"v2", headers={"If-Match": tag}).status_code == 204
    assert dav.get(f"{coll}/c.txt").content == b"v2"
    # create-only and update-only on a missing target
    assert dav.put(f"{coll}/new.txt", data=b"n", headers={"If-Match": "*"}).status_code == 412
    assert dav.put(f"{coll}/new.txt", data=b"n", headers={"If-Match": tag}).status_code == 412
    assert dav.get(f"{coll}/new.txt").status_code == 404
    assert dav.put(f"{coll}/new.txt", data=b"n", headers={"If-None-Match": "*"}).status_code == 201
    assert dav.delete(f"{coll}/new.txt", headers={"If-Match": '"nope"'}).status_code == 412
    assert dav.get(f"{coll}/new.txt").content == b"n"


# ------------------------------------------------------------------ hostile input


def test_invalid_utf8_path_is_400(srv):
    status, _, body = raw(srv, b"GET /%E4%FC.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 400 and b"UTF-8" in body


def test_dot_dot_escape_is_400_with_body(srv):
    status, headers, body = raw(srv, b"GET /../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=5)
    assert status == 400
    assert len(body) == int(headers["content-length"]) > 0


def test_encoded_slash_in_name_is_400(dav, coll):
    r = dav.put(f"{coll}/a%2Fb", data=b"x")
    assert r.status_code == 400
    r = dav.move(f"{coll}/", "x%2Fy/")
    assert r.status_code == 400


def test_chunked_xml_body_keeps_the_connection_in_sync(srv, dav, coll):
    dav.put(f"{coll}/k.txt", data=b"k")
    xml = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getcontentlength/></D:prop></D:propfind>'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(xml), xml)
    with socket.create_connection(addr(srv), timeout=10) as s:
        s.sendall(f"PROPFIND /{coll}/k.txt HTTP/1.1\r\nHost: x\r\nDepth: 0\r\nTransfer-Encoding: chunked\r\n"
                  "Content-Type: application/xml\r\n\r\n".encode() + chunked)
        status, _, body = read_response(s)
        assert status == 207
        (resp,) = parse_multistatus(body)
        assert resp.text(f"{D}getcontentlength") == "1"
        assert f"{D}displayname" not in resp.props  # the body was honoured (named props only)
        s.sendall(f"GET /{coll}/k.txt HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, _, body = read_response(s)
        assert (status, body) == (200, b"k")


def test_malformed_xml_bodies_are_400(dav, coll):
    for method in ("PROPFIND", "PROPPATCH", "LOCK"):
        r = dav.req(method, f"{coll}/", data=b"<not xml", headers={"Depth": "0"})
        assert r.status_code == 400, method
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
    r = dav.req("PROPFIND", f"{coll}/", data=bomb, headers={"Depth": "0"})
    assert r.status_code == 400


@pytest.mark.parametrize("path", ["/nope-{c}/x", "/{c}/missing.txt", "/{c}/.arvados%23collection/x"])
def test_head_error_answers_carry_no_body(srv, coll, path):
    """A HEAD answered 4xx/5xx came with WsgiDAV's HTML error page as a
    body, which the client reads as the start of the next response on a
    kept-alive connection (RFC 9110 9.3.2: no content in a HEAD answer)."""
    p = path.format(c=coll)
    with socket.create_connection(addr(srv), timeout=10) as s:
        s.sendall(f"HEAD {p} HTTP/1.1\r\nHost: x\r\n\r\nGET /{coll}/ HTTP/1.1\r\nHost: x\r\nDepth: 0\r\n\r\n".encode())
        buf = b""
        deadline = time.monotonic() + 10
        while buf.count(b"HTTP/1.1 ") < 2 and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    first, _, rest = buf.partition(b"\r\n\r\n")
    assert first.split()[1] in (b"404", b"409", b"400"), first
    assert rest.startswith(b"HTTP/1.1 200"), rest[:200]

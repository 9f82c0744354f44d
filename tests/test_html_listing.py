"""Issue 11 §3 and issue 13 §3: no script from file names or file contents.

Hostile names are uploaded to a real server and the HTML listing is read with
the stdlib HTML parser: every link must be a relative ``./`` link or an
absolute ``/`` path that resolves back to exactly the file it names, no
attribute may carry an event handler, there is no ``<script>``, and the page
is davcoll's (not WsgiDAV's) with a restrictive Content-Security-Policy.
Files of active types (HTML, SVG, XML, JS) are attachments unless the
operator allows inline.  Once, a real headless browser (Debian's chromium)
loads the listing and the evil files and must not run any of their script.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import time
import uuid as uuidlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlparse

import pytest

from davclient import NO_CACHE as FRESH, DavClient
from server_util import running_server

# Names that try to become a link scheme, break out of an attribute, open a
# tag, or change what the URL means.  (A name cannot contain "/".)
HOSTILE = [
    "javascript:alert(document.domain)",
    "JaVaScRiPt:alert(1)",
    "data:text,html",
    "vbscript:msgbox(1)",
    "x'autofocus=''onfocus='alert(document.domain)'.docx",
    'y"autofocus=""onfocus="alert(document.domain)".xlsx',
    "<script>alert(1)<",
    '"><img src=x onerror=alert(1)>',
    "'",
    '"',
    ";?#%",
    "?q=1",
    "#frag",
    "%2e%2e",
    "%41",
    "a b  c.txt",
    " lead and trail ",
    "&amp;&lt;",
    "été 日本 ü.txt",
    "back\\slash",
    "\\\\host\\share",
    "evil.example",
    ":colon",
    "a:b@c",
]

HACK_JS = "document.body.append('HA'+'CKED')"  # the marker only appears if script ran
MARK = "HACKED"

ACTIVE_FILES = {
    "evil.html": b"<html><body><script>" + HACK_JS.encode() + b"</script></body></html>",
    "evil.htm": b"<script>" + HACK_JS.encode() + b"</script>",
    "evil.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" onload="' + HACK_JS.encode() + b'">'
                 b"<script>" + HACK_JS.encode() + b"</script></svg>"),
    "evil.xhtml": (b'<html xmlns="http://www.w3.org/1999/xhtml"><body><script>' + HACK_JS.encode()
                   + b"</script></body></html>"),
    "evil.xml": b'<?xml version="1.0"?><a xmlns:h="http://www.w3.org/1999/xhtml"><h:script>' + HACK_JS.encode() + b"</h:script></a>",
    "evil.js": HACK_JS.encode(),
    'q"uo;te.html': b"<script>" + HACK_JS.encode() + b"</script>",
}
PASSIVE_FILES = {"plain.txt": b"hello", "pic.png": b"\x89PNG\r\n\x1a\n", "doc.pdf": b"%PDF-1.4"}


def put_name(dav: DavClient, folder: str, name: str, data: bytes) -> int:
    """PUT ``folder/name``; a name with a backslash is sent raw if the
    request guard refuses its encoded form (%5C)."""
    r = dav.put(f"{folder}/{enc(name)}", data)
    if r.status_code == 400 and "\\" in name:
        u = urlparse(dav.base)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        try:
            conn.request("PUT", f"/{folder}/" + quote(name, safe="\\"), body=data)
            return conn.getresponse().status
        finally:
            conn.close()
    return r.status_code


def enc(name: str) -> str:
    return quote(name, safe="")


class Page(HTMLParser):
    """Every tag, attribute and link text of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.links: list[tuple[str, str]] = []  # (href, text)
        self.title = ""
        self._in: str | None = None
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = []
        self._in = tag

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text)))
            self._href = None
        self._in = None

    def handle_data(self, data):
        if self._href is not None:
            self._text.append(data)
        if self._in == "title":
            self.title += data


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    p.close()
    return p


def assert_inert(page: Page) -> None:
    for tag, attrs in page.tags:
        assert tag not in ("script", "iframe", "object", "embed", "base", "form", "meta") or (
            tag == "meta" and all(k in ("charset", "name", "content") for k, _ in attrs)
        ), (tag, attrs)
        for k, v in attrs:
            assert not k.startswith("on"), (tag, k, v)
            assert k not in ("autofocus", "srcdoc", "formaction", "style"), (tag, k, v)
            if k in ("href", "src"):
                assert v and (v.startswith("./") or v.startswith("/")) and not v.startswith("//"), v


def resolve(base: str, href: str) -> str:
    return unquote(urlparse(urljoin(base, href)).path)


# ------------------------------------------------------------------ listing


def test_hostile_names_are_escaped_and_links_resolve(dav, coll):
    for name in HOSTILE:
        assert put_name(dav, coll, name, name.encode()) == 201, name
    for name in HOSTILE[:6]:  # the same names as folders
        assert dav.mkcol(f"{coll}/{enc('d-' + name)}/").status_code == 201, name
    base = dav.u(f"{coll}/")
    r = dav.get(f"{coll}/", headers=FRESH)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert int(r.headers["Content-Length"]) == len(r.content)
    page = parse(r.text)
    assert_inert(page)
    by_path = {}
    for href, text in page.links:
        by_path[resolve(base, href)] = (href, text)
    prefix = f"/{coll}/"
    for name in HOSTILE:
        href, text = by_path[prefix + name]
        assert href.startswith("./"), href
        assert text == name, (text, name)
    for name in HOSTILE[:6]:
        href, text = by_path[prefix + "d-" + name + "/"]
        assert href.startswith("./") and href.endswith("/"), href
        assert text == "d-" + name + "/"
    members = {p for p in by_path if p.startswith(prefix) and len(p) > len(prefix)}
    assert len(members) == len(HOSTILE) + 6, sorted(members)
    assert by_path["/"][0] == "./../"  # the parent link
    # every link serves the file it names
    for name in HOSTILE:
        r = dav.http.get(urljoin(base, by_path[prefix + name][0]), headers=FRESH, timeout=30)
        if "\\" in name and r.status_code == 400:
            continue  # the request guard may refuse an encoded backslash (%5C); the link is still exact
        assert r.status_code == 200 and r.content == name.encode(), (name, r.status_code)


def test_page_is_davcolls(dav, coll):
    dav.put(f"{coll}/a.txt", b"a")
    r = dav.get(f"{coll}/", headers=FRESH)
    page = parse(r.text)
    assert page.title == f"Index of /{coll}/ — davcoll"
    assert "wsgidav" not in r.text.lower()
    assert not any(tag == "meta" and dict(attrs).get("name") == "generator" for tag, attrs in page.tags)


def test_hostile_collection_names_at_the_top(dav):
    names = ["javascript:alert(1)", "x'onmouseover='alert(1)'", "<b>bold</b>".replace("/", ""), "evil.example"]
    made = []
    for name in names:
        name = name + "-" + uuidlib.uuid4().hex[:6]
        r = dav.mkcol(enc(name) + "/")
        assert r.status_code == 201, (name, r.status_code, r.text)
        made.append(name)
    r = dav.get("", headers=FRESH)
    assert r.status_code == 200 and "Content-Security-Policy" in r.headers
    page = parse(r.text)
    assert_inert(page)
    found = {resolve(dav.base, h): h for h, _ in page.links}
    for name in made:
        assert found[f"/{name}/"].startswith("./"), found
        # without the slash: a redirect to an encoded absolute path (never "//host")
        r = dav.get(enc(name), allow_redirects=False)
        assert r.status_code == 301
        loc = r.headers["Location"]
        assert loc.startswith("/") and not loc.startswith("//") and unquote(loc) == f"/{name}/", loc


def test_head_and_davmount(dav, coll):
    dav.put(f"{coll}/{enc('<x>')}", b"x")
    g = dav.get(f"{coll}/", headers=FRESH)
    h = dav.head(f"{coll}/", headers=FRESH)
    assert h.status_code == 200 and h.headers["Content-Type"] == g.headers["Content-Type"]
    assert h.headers["Content-Length"] == g.headers["Content-Length"]
    assert "Content-Security-Policy" in h.headers
    r = dav.get(f"{coll}/?davmount")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/davmount+xml"
    assert f"/{coll}/</dm:url>" in r.text
    # a body on GET of a folder is refused as before
    r = dav.get(f"{coll}/", data=b"x")
    assert r.status_code == 415


def test_error_pages_send_csp(dav, coll):
    for path in (f"{coll}/{enc('<script>nope')}", "no-such-collection/x"):
        r = dav.get(path)
        assert r.status_code == 404
        assert "default-src 'none'" in r.headers.get("Content-Security-Policy", ""), r.headers
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "<script>" not in r.text


def test_path_token_is_not_shown_and_links_keep_it(tmp_path):
    with running_server(tmp_path / "data", anonymous="none") as s:
        token = s.app.backend.tokens.create(read_only=False, label="rw")
        d = DavClient(s.url, token=token)
        assert d.mkcol("c/").status_code == 201
        assert d.put("c/f.txt", data=b"f").status_code == 201
        anon = DavClient(s.url)  # the token is in the path only
        base = anon.u(f"t={token}/c/")
        r = anon.get(f"t={token}/c/")
        assert r.status_code == 200 and token not in r.text
        page = parse(r.text)
        assert "t=***" in page.title
        links = {resolve(base, h): h for h, _ in page.links}
        r = anon.http.get(urljoin(base, links[f"/t={token}/c/f.txt"]), timeout=30)
        assert r.status_code == 200 and r.content == b"f"


def test_big_folder_page_is_streamed_in_bounded_chunks():
    from davcoll.dav.browser import ListingPage, Row

    rows = [Row(False, f"f{i:06d}", f"f{i:06d} <'\">.txt", f"f{i:06d} <'\">.txt", i, 1.7e9) for i in range(100_000)]
    page = ListingPage("/big/", "/", rows, "davcoll")
    total = 0
    biggest = 0
    count = 0
    for chunk in page.chunks():
        total += len(chunk)
        biggest = max(biggest, len(chunk))
        count += 1
    assert total == page.length() and total > 10_000_000
    assert count > 300 and biggest < 256 * 1024


# ----------------------------------------------------------- active content


def _disposition_name(value: str) -> str:
    m = re.fullmatch(r"attachment; filename\*=UTF-8''([A-Za-z0-9%._~-]+)", value)
    assert m, value
    return unquote(m.group(1))


def test_active_types_are_attachments(dav, coll):
    for name, data in {**ACTIVE_FILES, **PASSIVE_FILES}.items():
        assert dav.put(f"{coll}/{enc(name)}", data).status_code == 201, name
    for name in ACTIVE_FILES:
        for method in ("GET", "HEAD"):
            r = dav.req(method, f"{coll}/{enc(name)}", headers=FRESH)
            assert r.status_code == 200, (name, method)
            assert r.headers["X-Content-Type-Options"] == "nosniff", name
            assert _disposition_name(r.headers["Content-Disposition"]) == name, (name, method)
        r = dav.get(f"{coll}/{enc(name)}", headers={"Range": "bytes=0-3"})
        assert r.status_code == 206 and r.headers["Content-Disposition"].startswith("attachment;"), name
    for name in PASSIVE_FILES:
        r = dav.get(f"{coll}/{enc(name)}", headers=FRESH)
        assert r.status_code == 200 and r.headers["X-Content-Type-Options"] == "nosniff", name
        assert "Content-Disposition" not in r.headers, name
    # keep-web's ?disposition=attachment asks for it on any file
    r = dav.get(f"{coll}/plain.txt?disposition=attachment")
    assert _disposition_name(r.headers["Content-Disposition"]) == "plain.txt"
    # the html file's content type is unchanged (only the disposition differs)
    r = dav.get(f"{coll}/evil.html")
    assert r.headers["Content-Type"].startswith("text/html") and r.content == ACTIVE_FILES["evil.html"]


def test_operator_can_allow_inline(tmp_path):
    with running_server(tmp_path / "data", inline_active_content=True) as s:
        d = DavClient(s.url)
        assert d.mkcol("c/").status_code == 201
        assert d.put("c/evil.html", ACTIVE_FILES["evil.html"]).status_code == 201
        r = d.get("c/evil.html")
        assert r.status_code == 200 and "Content-Disposition" not in r.headers
        assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_config_option_parses(tmp_path):
    from davcoll.config import load_config

    cfg_file = tmp_path / "d.toml"
    cfg_file.write_text("[server]\ninline_active_content = true\n")
    assert load_config(str(cfg_file)).inline_active_content is True
    assert load_config(None).inline_active_content is False


# ----------------------------------------------------------- real browser

CHROMIUM = "/usr/bin/chromium"
BROWSER_NAMES = [
    "<img src=x onerror=" + HACK_JS + ">",
    "x'autofocus=''onfocus='" + HACK_JS + "'.docx",
    'y"autofocus=""onfocus="' + HACK_JS + '".docx',
    '"><svg onload=' + HACK_JS + ">",
    "javascript:" + HACK_JS,
    "<script>" + HACK_JS + "<",
]


def dump_dom(url: str, home: Path) -> tuple[str, bool]:
    """Load ``url`` in headless chromium: the DOM it dumps, and whether the
    navigation became a download instead of a page.  (Then chromium dumps
    nothing and either stays up with the file in ~/Downloads or exits at once
    with "Page load failed: net::ERR_ABORTED", cancelling the download.)"""
    home.mkdir(parents=True, exist_ok=True)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={home / 'profile'}", "--virtual-time-budget=3000", "--dump-dom", url]
    env = {**os.environ, "HOME": str(home)}
    out = home / "dom.html"
    downloads = home / "Downloads"
    with open(out, "wb") as fh, open(home / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=err, env=env, cwd=home, start_new_session=True)
        deadline = time.monotonic() + 90
        try:
            while proc.poll() is None and time.monotonic() < deadline and not _finished(downloads):
                time.sleep(0.1)
            if proc.poll() is not None and out.stat().st_size == 0:
                # Nothing rendered: a download may still be being renamed into place by a helper.
                settle = time.monotonic() + 2
                while time.monotonic() < settle and not _finished(downloads):
                    time.sleep(0.1)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # chromium and its helpers (their own session)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
    aborted = b"Page load failed: net::ERR_ABORTED" in (home / "stderr.txt").read_bytes()
    dom = out.read_text("utf-8", "replace")
    return dom, bool(_finished(downloads)) or (aborted and not dom.strip())


def _finished(downloads: Path) -> list[str]:
    """Completed downloads (chromium writes to hidden or .crdownload names first)."""
    if not downloads.is_dir():
        return []
    return sorted(p.name for p in downloads.iterdir()
                  if not p.name.startswith((".", "Unconfirmed")) and not p.name.endswith(".crdownload"))


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (apt-get install chromium)")
def test_no_script_runs_in_chromium(tmp_path):
    with running_server(tmp_path / "data") as s:
        d = DavClient(s.url)
        assert d.mkcol("c/").status_code == 201
        for name in BROWSER_NAMES:
            assert d.put(f"c/{enc(name)}", b"x").status_code == 201, name
        for name, data in ACTIVE_FILES.items():
            assert d.put(f"c/{enc(name)}", data).status_code == 201, name
        # the listing renders (its names are in the DOM as text) and runs nothing
        dom, downloaded = dump_dom(s.u("c/"), tmp_path / "b1")
        assert "Index of /c/" in dom and "onerror" in dom and not downloaded, dom[:2000]
        assert MARK not in dom, dom
        # evil files are downloaded, not rendered
        for name in ("evil.html", "evil.svg", "evil.xhtml", "evil.xml"):
            dom, downloaded = dump_dom(s.u(f"c/{name}"), tmp_path / ("b-" + name))
            assert MARK not in dom and downloaded, (name, dom)
    # control: with inline allowed the same file does run script, so the checks above can fail
    with running_server(tmp_path / "data2", inline_active_content=True) as inline:
        d2 = DavClient(inline.url)
        assert d2.mkcol("c/").status_code == 201
        assert d2.put("c/evil.html", ACTIVE_FILES["evil.html"]).status_code == 201
        dom, downloaded = dump_dom(inline.u("c/evil.html"), tmp_path / "b-inline")
        assert MARK in dom and not downloaded, dom

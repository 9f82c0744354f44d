"""Access control and secrecy (issue 7, scenario 6).

Embedded backend with tokens:
  - once a token exists, "anonymous: auto" stops anonymous access: writes
    (and reads) without a token get 401 with a Basic challenge, also when
    the token is created while the server runs;
  - a read-only token can read but every write method gets 403, whichever
    way the token is sent (Basic password, Bearer, /t=<token>/ path);
  - a revoked or unknown token gets 401.
Arvados backend (fake cluster, ``davcoll serve --arvados-api-host``):
  - a token for one user cannot see, read, change or delete another user's
    collection, by name, by UUID or by PDH (404), and the listing of / does
    not show it.
Both: no token -- valid, read-only, revoked, unknown, passed as header or
in the path -- ever appears in the server log (at DEBUG level) or in any
error response (body or headers), nor in any response to a request that
sent it in a header.  (Successful responses to a /t=<token>/ request carry
the token in their hrefs by design.)  XML entity expansion is covered by
test_hostile_input.py.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time

import pytest
import requests

from server_util import ServerProcess

WRITE_METHODS = ["PUT", "DELETE", "MKCOL", "COPY", "MOVE", "PROPPATCH", "LOCK", "UNLOCK", "POST"]
PROPPATCH = (b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop>'
             b"<Z:p>v</Z:p></D:prop></D:set></D:propertyupdate>")
LOCK = (b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
        b"<D:locktype><D:write/></D:locktype></D:lockinfo>")


class Recorder:
    """Sends requests and keeps every response's headers and body, so the
    test can check at the end that no token leaked into any of them."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.seen: list[str] = []
        self.s = requests.Session()

    def __call__(self, method: str, path: str, *, token: str | None = None, how: str = "basic",
                 headers: dict | None = None, **kw) -> requests.Response:
        h = dict(headers or {})
        if token is not None and how == "basic":
            h["Authorization"] = "Basic " + base64.b64encode(f"user:{token}".encode()).decode()
        elif token is not None and how == "bearer":
            h["Authorization"] = f"Bearer {token}"
        elif token is not None and how == "path":
            # A v2 Arvados token has slashes; in a path its secret alone
            # serves as the token (as Arvados accepts bare secrets).
            path = f"t={token.rsplit('/', 1)[-1]}/" + path.lstrip("/")
        if "Destination" in h and not h["Destination"].startswith("http"):
            h["Destination"] = self.base + h["Destination"].lstrip("/")
        r = self.s.request(method, self.base + path.lstrip("/"), headers=h, timeout=30, **kw)
        if r.status_code >= 400 or how != "path":
            # (A successful response to a path-token request carries the
            # token in its hrefs by design: the client navigates with it.)
            self.seen.append(f"{r.status_code} {dict(r.headers)!r} {r.text}")
        return r

    def write(self, method: str, path: str, **kw) -> requests.Response:
        """One write method with a plausible body/headers for it."""
        if method == "PUT":
            return self(method, path, data=b"changed", **kw)
        if method in ("COPY", "MOVE"):
            return self(method, path, headers={"Destination": path + ".copy", **kw.pop("headers", {})}, **kw)
        if method == "PROPPATCH":
            return self(method, path, data=PROPPATCH, **kw)
        if method == "LOCK":
            return self(method, path, data=LOCK, headers={"Timeout": "Second-60"}, **kw)
        if method == "UNLOCK":
            return self(method, path, headers={"Lock-Token": "<opaquelocktoken:x>"}, **kw)
        if method == "MKCOL":
            return self(method, path.rstrip("/") + "-dir/", **kw)
        return self(method, path, **kw)


def secrets_of(token: str) -> set[str]:
    """The token and, for Arvados v2 tokens, its secret part."""
    out = {token}
    if token.startswith("v2/"):
        out.add(token.rsplit("/", 1)[-1])
    return {t for t in out if len(t) >= 8}


def assert_no_leak(tokens: list[str], texts: list[str], where: str) -> None:
    for tok in tokens:
        for secret in secrets_of(tok):
            for text in texts:
                assert secret not in text, f"a token leaked into {where}: ...{text[max(0, text.find(secret) - 200):][:400]}"


def token_cli(data, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "davcoll.cli", "token", "--data-dir", str(data), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def wait_status(fn, want: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        st = fn().status_code
        if st == want or time.monotonic() > deadline:
            return st
        time.sleep(0.25)


def test_embedded_tokens(tmp_path):
    data = tmp_path / "data"
    cfg = tmp_path / "davcoll.toml"
    cfg.write_text('log_level = "DEBUG"\n')  # the most verbose log must not leak either
    srv = ServerProcess(data, args=["--config", str(cfg)], log_dir=tmp_path / "logs").start()
    http = Recorder(srv.url)
    bogus = ["bogus-token-0123456789abcdef", "bogus2-0123456789abcdefghijklmnop"]
    try:
        # No token exists yet: anonymous read-write on loopback ("auto").
        assert http("MKCOL", "pub/").status_code == 201
        assert http("PUT", "pub/a.txt", data=b"anonymous").status_code == 201

        # A token appears while the server runs: anonymous access ends
        # (the token count is cached for a few seconds).
        rw = token_cli(data, "create", "--label", "rw").splitlines()[0]
        assert wait_status(lambda: http("PUT", "pub/b.txt", data=b"x"), 401) == 401
        for method in WRITE_METHODS:
            r = http.write(method, "pub/a.txt")
            assert r.status_code == 401, (method, r.status_code)
            assert r.headers.get("WWW-Authenticate", "").startswith("Basic"), method
        assert http("GET", "pub/a.txt").status_code == 401
        assert http("PROPFIND", "pub/", headers={"Depth": "1"}).status_code == 401

        ro = token_cli(data, "create", "--read-only", "--label", "ro").splitlines()[0]
        assert rw != ro and len(rw) >= 20

        # The read-write token writes, in every form.
        assert http("MKCOL", "c/", token=rw).status_code == 201
        assert http("PUT", "c/f.txt", token=rw, data=b"data").status_code == 201
        assert http("PUT", "c/g.txt", token=rw, how="bearer", data=b"g").status_code == 201
        assert http("PUT", "c/h.txt", token=rw, how="path", data=b"h").status_code == 201

        # The read-only token reads, and every write method is refused.
        for how in ("basic", "bearer", "path"):
            assert http("GET", "c/f.txt", token=ro, how=how).content == b"data"
            assert http("PROPFIND", "c/", token=ro, how=how, headers={"Depth": "1"}).status_code == 207
            for method in WRITE_METHODS:
                r = http.write(method, "c/f.txt", token=ro, how=how)
                assert r.status_code == 403, (how, method, r.status_code, r.text[:200])
        for how in ("basic", "bearer"):
            r = http("MKCOL", "newcoll/", token=ro, how=how)
            assert r.status_code == 403
        listing = http("PROPFIND", "c/", token=rw, headers={"Depth": "1", "Cache-Control": "no-cache"}).text
        assert "f.txt.copy" not in listing and "f.txt-dir" not in listing
        assert http("GET", "c/f.txt", token=rw).content == b"data"

        # Error responses to requests with a path token do not echo it.
        for tok, want in ((rw, 404), (ro, 404), (ro, 403)):
            if want == 404:
                r = http("GET", "c/missing.txt", token=tok, how="path")
                assert r.status_code == 404
                r = http("PROPFIND", "nosuchcoll/x/", token=tok, how="path", headers={"Depth": "0"})
                assert r.status_code == 404
            else:
                assert http("DELETE", "c/f.txt", token=tok, how="path").status_code == 403

        # Unknown tokens, however sent: 401.
        for tok in bogus:
            for how in ("basic", "bearer", "path"):
                assert http("GET", "c/f.txt", token=tok, how=how).status_code == 401
                assert http("PUT", "c/f.txt", token=tok, how=how, data=b"x").status_code == 401

        # A revoked token stops working.
        ident = token_cli(data, "list").splitlines()
        ro_id = next(line.split()[0] for line in ident if line.rstrip().endswith(" ro"))
        token_cli(data, "revoke", ro_id)
        assert wait_status(lambda: http("GET", "c/f.txt", token=ro), 401) == 401
        assert http("GET", "c/f.txt", token=rw).status_code == 200
        assert http("GET", "_metrics").status_code in (200, 401)
    finally:
        srv.stop()
    log = srv.log_text()
    assert "c/f.txt" in log, "the access log should have been written"
    assert_no_leak([rw, ro, *bogus], [log], "the server log")
    assert_no_leak([rw, ro, *bogus], http.seen, "a response")


@pytest.fixture(scope="module")
def fake():
    from davcoll.testing.fake_arvados import FakeArvados

    with FakeArvados(keepstores=2) as f:
        yield f


def test_arvados_users_are_isolated(tmp_path, fake):
    alice = fake.add_user("alice")
    bob = fake.add_user("bob")
    revoked = fake.add_user("carol")
    fake.revoke(revoked)
    bogus = "v2/zzzzz-gj3su-111111111111111/definitelynotasecret123456789"
    cfg = tmp_path / "davcoll.toml"
    cfg.write_text('log_level = "DEBUG"\n')
    srv = ServerProcess(tmp_path / "data", args=["--config", str(cfg), "--arvados-api-host", fake.api_url],
                        log_dir=tmp_path / "logs").start()
    http = Recorder(srv.url)
    try:
        assert http("MKCOL", "alice-private/", token=alice).status_code == 201
        assert http("PUT", "alice-private/secret.txt", token=alice, data=b"alice only").status_code == 201
        rec = next(c for c in fake.collections.values() if c.name == "alice-private")
        uuid, pdh = rec.uuid, rec.pdh
        before = fake.stored_manifest(uuid)
        assert http("GET", "alice-private/secret.txt", token=alice).content == b"alice only"
        assert http("GET", f"by_id/{uuid}/secret.txt", token=alice).content == b"alice only"

        # Bob sees nothing of it, however he names it.
        root = http("PROPFIND", "", token=bob, headers={"Depth": "1"})
        assert root.status_code == 207 and "alice-private" not in root.text and uuid not in root.text
        for how in ("basic", "bearer", "path"):
            for path in ("alice-private/secret.txt", f"by_id/{uuid}/secret.txt", f"by_id/{pdh}/secret.txt",
                         f"c={uuid}/secret.txt", f"by_id/{uuid}/"):
                r = http("GET", path, token=bob, how=how)
                assert r.status_code == 404, (how, path, r.status_code)
                assert b"alice only" not in r.content
            for method in WRITE_METHODS:
                for path in (f"by_id/{uuid}/secret.txt", "alice-private/secret.txt"):
                    r = http.write(method, path, token=bob, how=how)
                    assert r.status_code in (404, 405, 409), (how, method, path, r.status_code)
        # Bob may make a collection of the same name: his own, separate one.
        assert http("MKCOL", "alice-private/", token=bob).status_code == 201
        assert http("GET", "alice-private/secret.txt", token=bob).status_code == 404
        assert fake.stored_manifest(uuid) == before
        assert http("GET", "alice-private/secret.txt", token=alice).content == b"alice only"

        # Revoked and unknown tokens: 401; no token: 401 (no anonymous token configured).
        for tok in (revoked, bogus):
            for how in ("basic", "bearer", "path"):
                assert http("GET", "alice-private/secret.txt", token=tok, how=how).status_code == 401
        assert http("GET", "alice-private/secret.txt").status_code == 401
        assert http("PUT", "alice-private/x.txt", data=b"x").status_code == 401
    finally:
        srv.stop()
    log = srv.log_text()
    assert "alice-private" in log
    tokens = [alice, bob, revoked, bogus]
    assert_no_leak(tokens, [log], "the server log")
    assert_no_leak(tokens, http.seen, "a response")


def test_v2_token_in_path_is_not_logged(tmp_path):
    """A v2 token (v2/<uuid>/<secret>) in the path, raw or %2F-encoded, is
    masked as a whole in the access log (the log used to show the secret)."""
    secret = "pathsecret0123456789abcdefghijklmnopqrstuvwxyz012"
    token = f"v2/zzzzz-gj3su-abcdefghijklmno/{secret}"
    srv = ServerProcess(tmp_path / "data", args=["--anonymous", "write"], log_dir=tmp_path / "logs").start()
    http = Recorder(srv.url)
    try:
        assert http("MKCOL", "c/").status_code == 201
        for path in (f"t={token}/c/", f"t={token.replace('/', '%2F')}/c/"):
            r = http("GET", path)
            assert r.status_code in (400, 401, 404)
    finally:
        srv.stop()
    assert_no_leak([token], http.seen, "a response")
    assert_no_leak([token], [srv.log_text()], "the server log")

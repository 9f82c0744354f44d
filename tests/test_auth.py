"""Authentication: token forms, malformed credentials, read-only tokens,
the anonymous policy, lock ownership, and tokens kept out of the logs."""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path

import pytest

from davclient import DavClient, wait_until
from server_util import ServerProcess, free_port, running_server

LOCK_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
    b"<D:locktype><D:write/></D:locktype></D:lockinfo>"
)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def cli_token(data_dir: Path, *extra: str) -> str:
    """``davcoll token create`` (the data directory must exist)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [sys.executable, "-m", "davcoll.cli", "token", "--data-dir", str(data_dir), "create", *extra],
        capture_output=True, text=True, timeout=60, check=True,
    )
    token = out.stdout.strip()
    assert token and token not in out.stderr
    return token


@pytest.fixture(scope="module")
def server_overrides():
    return {"anonymous": "none"}


@pytest.fixture(scope="module")
def srv(srv):
    """The shared server, with tokens: rw, rw2 (read-write) and ro (read-only)."""
    srv.rw = srv.app.backend.tokens.create(read_only=False, label="rw")
    srv.rw2 = srv.app.backend.tokens.create(read_only=False, label="rw2")
    srv.ro = srv.app.backend.tokens.create(read_only=True, label="ro")
    return srv


@pytest.fixture
def dav(srv) -> DavClient:
    """Sends the rw token (the shared ``coll`` makes its collection with it)."""
    return DavClient(srv.url, token=srv.rw)


@pytest.fixture
def bare(srv) -> DavClient:
    """Sends no credentials of its own: each test presents a token its way."""
    return DavClient(srv.url)


@pytest.fixture
def coll(coll, dav):
    """The shared fresh collection, holding f.txt = b"content"."""
    assert dav.put(f"{coll}/f.txt", data=b"content").status_code == 201
    return coll


def forms(token: str) -> dict[str, tuple[dict, str]]:
    """Ways to present a token: (headers, path prefix)."""
    return {
        "bearer": ({"Authorization": f"Bearer {token}"}, ""),
        "bearer-lowercase": ({"Authorization": f"bearer {token}"}, ""),
        "oauth2": ({"Authorization": f"OAuth2 {token}"}, ""),
        "basic": ({"Authorization": "Basic " + b64(f"x:{token}".encode())}, ""),
        "basic-empty-user": ({"Authorization": "Basic " + b64(f":{token}".encode())}, ""),
        "basic-latin1-user": ({"Authorization": "Basic " + b64("Jürgen:".encode("latin-1") + token.encode())}, ""),
        "basic-utf8-user": ({"Authorization": "Basic " + b64(f"Jürgen:{token}".encode())}, ""),
        "path": ({}, f"t={token}/"),
    }


FORM_NAMES = list(forms("x"))


@pytest.mark.parametrize("form", FORM_NAMES)
def test_token_forms_read_and_write(srv, bare, coll, form):
    headers, prefix = forms(srv.rw)[form]
    r = bare.get(f"{prefix}{coll}/f.txt", headers=headers)
    assert r.status_code == 200 and r.content == b"content"
    r = bare.put(f"{prefix}{coll}/{form}.txt", data=form.encode(), headers=headers)
    assert r.status_code == 201
    r = bare.req("PROPFIND", f"{prefix}{coll}/", headers={**headers, "Depth": "1"})
    assert r.status_code == 207 and f"{form}.txt" in r.text


MALFORMED = {
    "basic-not-base64": "Basic !!!not-base64!!!",
    "basic-no-colon": "Basic " + b64(b"just-a-token-without-colon"),
    "basic-empty-password": "Basic " + b64(b"user:"),
    "basic-empty": "Basic ",
    "basic-bare": "Basic",
    "basic-bad-padding": "Basic dXNlcjp0b2tlbg",
    "basic-non-utf8-password": "Basic " + b64(b"user:\xff\xfe\xfd"),
    "bearer-empty": "Bearer ",
    "bearer-bare": "Bearer",
    "bearer-two-words": "Bearer abc def",
    "garbage": "%%%%",
    "control-chars": "Bearer \x01\x02",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_credentials_are_401_not_500(srv, bare, coll, name):
    for method in ("GET", "PUT", "PROPFIND", "DELETE"):
        r = bare.req(method, f"{coll}/f.txt", headers={"Authorization": MALFORMED[name], "Depth": "0"},
                     data=b"x" if method == "PUT" else None)
        assert r.status_code == 401, (name, method, r.status_code)
        assert r.headers.get("WWW-Authenticate", "").lower().startswith("basic realm=")
    assert bare.get(f"{coll}/f.txt", headers={"Authorization": f"Bearer {srv.rw}"}).content == b"content"


@pytest.mark.parametrize("scheme", ["Digest", "Negotiate", "AWS4-HMAC-SHA256", "Token", "NTLM", "ApiKey"])
def test_unknown_scheme_is_401_even_with_a_valid_token(srv, bare, coll, scheme):
    r = bare.get(f"{coll}/f.txt", headers={"Authorization": f"{scheme} {srv.rw}"})
    assert r.status_code == 401
    assert "basic" in r.headers.get("WWW-Authenticate", "").lower()


@pytest.mark.parametrize("form", FORM_NAMES)
def test_bogus_token_is_401(bare, coll, form):
    headers, prefix = forms("bogus-" + uuidlib.uuid4().hex)[form]
    r = bare.get(f"{prefix}{coll}/f.txt", headers=headers)
    assert r.status_code == 401
    assert r.headers.get("WWW-Authenticate", "").lower().startswith("basic realm=")


def test_missing_token_is_401_everywhere(bare, coll):
    for method, path in [("GET", ""), ("PROPFIND", ""), ("OPTIONS", f"{coll}/"), ("GET", f"{coll}/f.txt"),
                         ("MKCOL", "newcoll/"), ("GET", "by_id/")]:
        r = bare.req(method, path, headers={"Depth": "1"})
        assert r.status_code == 401, (method, path)
        assert r.headers["WWW-Authenticate"].lower().startswith("basic realm=")
    # ...but not for the health check and metrics
    assert bare.get("_health").status_code == 200
    assert bare.get("_metrics").status_code == 200


@pytest.mark.parametrize("form", FORM_NAMES)
def test_read_only_token(srv, bare, coll, form):
    headers, prefix = forms(srv.ro)[form]
    p = lambda s: f"{prefix}{coll}/{s}"  # noqa: E731
    assert bare.get(p("f.txt"), headers=headers).content == b"content"
    assert bare.head(p("f.txt"), headers=headers).status_code == 200
    assert bare.propfind(p(""), depth="1", headers=headers).status_code == 207
    assert bare.req("OPTIONS", p(""), headers=headers).status_code == 200
    writes = {
        "PUT": bare.put(p("f.txt"), data=b"x", headers=headers),
        "PUT new": bare.put(p("new.txt"), data=b"x", headers=headers),
        "DELETE": bare.delete(p("f.txt"), headers=headers),
        "MKCOL": bare.mkcol(p("d/"), headers=headers),
        "MOVE": bare.move(p("f.txt"), p("g.txt"), headers=headers),
        "COPY": bare.copy(p("f.txt"), p("g.txt"), headers=headers),
        "LOCK": bare.req("LOCK", p("f.txt"), data=LOCK_BODY, headers=headers),
        "PROPPATCH": bare.proppatch(p("f.txt"), headers=headers,
                                    body=b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:"><D:set><D:prop>'
                                         b'<x:a xmlns:x="urn:x">1</x:a></D:prop></D:set></D:propertyupdate>'),
        "MKCOL top": bare.mkcol(f"{prefix}ro-new-{form}/", headers=headers),
    }
    assert {k: r.status_code for k, r in writes.items()} == {k: 403 for k in writes}
    rw = {"Authorization": f"Bearer {srv.rw}"}
    assert bare.get(f"{coll}/f.txt", headers=rw).content == b"content"
    assert bare.get(f"{coll}/new.txt", headers=rw).status_code == 404


def test_revoked_token(srv, bare, coll):
    tokens = srv.app.backend.tokens
    tok = tokens.create(read_only=False, label="short-lived")
    h = {"Authorization": f"Bearer {tok}"}
    assert bare.get(f"{coll}/f.txt", headers=h).status_code == 200
    assert tokens.revoke(tok) == 1
    assert bare.get(f"{coll}/f.txt", headers=h).status_code == 401
    assert bare.get(f"t={tok}/{coll}/f.txt").status_code == 401


def test_header_token_wins_over_path_token(srv, bare, coll):
    # "first found wins": the header is looked at before the path
    r = bare.get(f"t=bogus/{coll}/f.txt", headers={"Authorization": f"Bearer {srv.rw}"})
    assert r.status_code == 200
    r = bare.put(f"t={srv.rw}/{coll}/x", data=b"x", headers={"Authorization": f"Bearer {srv.ro}"})
    assert r.status_code == 403


def test_lock_owner_is_the_token_not_the_basic_user_name(srv, bare, coll):
    alice = ("alice", srv.rw)
    r = bare.req("LOCK", f"{coll}/f.txt", data=LOCK_BODY, auth=alice)
    assert r.status_code == 200
    lock = r.headers["Lock-Token"]
    try:
        # the same token under another user name owns the lock
        r = bare.put(f"{coll}/f.txt", data=b"by bob", auth=("bob", srv.rw), headers={"If": f"({lock})"})
        assert r.status_code == 204
        # another token, even one calling itself "alice", does not
        r = bare.put(f"{coll}/f.txt", data=b"thief", auth=alice[:1] + (srv.rw2,), headers={"If": f"({lock})"})
        assert r.status_code in (412, 423)  # the If condition is false for this principal
        r = bare.put(f"{coll}/f.txt", data=b"thief", auth=alice[:1] + (srv.rw2,))
        assert r.status_code == 423
        assert bare.get(f"{coll}/f.txt", auth=alice).content == b"by bob"
    finally:
        assert bare.req("UNLOCK", f"{coll}/f.txt", auth=alice, headers={"Lock-Token": lock}).status_code == 204


# ------------------------------------------------------------------ anonymous policy


@pytest.mark.parametrize("mode", ["none", "read", "write"])
def test_explicit_anonymous_modes(tmp_path, mode):
    with running_server(tmp_path / "data", anonymous=mode) as s:
        s.app.backend.catalog_.create("pub")
        anon = DavClient(s.url)
        r = anon.get("pub/")
        assert r.status_code == (401 if mode == "none" else 200)
        r = anon.put("pub/f", data=b"x")
        assert r.status_code == (201 if mode == "write" else 401)
        if r.status_code == 401:
            assert r.headers["WWW-Authenticate"].lower().startswith("basic realm=")
        # a token always works, whatever the anonymous mode
        tok = s.app.backend.tokens.create(read_only=False)
        r = DavClient(s.url, token=tok).put("pub/g", data=b"y")
        assert r.status_code == 201


@pytest.mark.slow
def test_auto_is_write_on_loopback_until_a_token_exists(tmp_path):
    with running_server(tmp_path / "data", anonymous="auto") as s:
        anon = DavClient(s.url)
        assert anon.mkcol("c/").status_code == 201
        assert anon.put("c/f", data=b"anon").status_code == 201
        tok = cli_token(tmp_path / "data")  # another process creates the first token
        assert wait_until(lambda: anon.get("c/f").status_code == 401, timeout=8, interval=0.25), \
            "anonymous access survived the first token"
        r = anon.put("c/g", data=b"x")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].lower().startswith("basic")
        r = DavClient(s.url, token=tok).get("c/f")
        assert r.status_code == 200 and r.content == b"anon"


@pytest.mark.slow
def test_auto_is_none_when_a_token_exists_at_start(tmp_path):
    data = tmp_path / "data"
    tok = cli_token(data)
    with ServerProcess(data) as s:
        r = DavClient(s.url).get("")
        assert r.status_code == 401
        assert DavClient(s.url).mkcol("c/").status_code == 401
        assert DavClient(s.url, token=tok).mkcol("c/").status_code == 201


@pytest.mark.slow
def test_auto_is_none_off_loopback(tmp_path):
    port = free_port()
    with ServerProcess(tmp_path / "data", port=port, args=["--listen", f"0.0.0.0:{port}"]) as s:
        anon = DavClient(s.url)
        assert anon.get("").status_code == 401
        assert anon.mkcol("c/").status_code == 401


# ------------------------------------------------------------------ logs


@pytest.mark.slow
def test_tokens_never_in_logs(tmp_path):
    data = tmp_path / "data"
    rw = cli_token(data)
    ro = cli_token(data, "--read-only")
    bogus = "bogus" + uuidlib.uuid4().hex
    secrets = {"rw": rw, "ro": ro, "bogus": bogus}
    with ServerProcess(data, args=["--anonymous", "none"]) as s:
        u = s.url
        bearer = {"Authorization": f"Bearer {rw}"}
        calls = [
            ("MKCOL", u + "c/", bearer, None),
            ("PUT", u + "c/f.txt", bearer, b"x"),
            ("GET", u + "c/f.txt", {"Authorization": "Basic " + b64(f"someone:{rw}".encode())}, None),
            ("GET", u + "c/f.txt", {"Authorization": f"OAuth2 {rw}"}, None),
            ("GET", u + f"t={rw}/c/f.txt", {}, None),
            ("PUT", u + f"t={rw}/c/g.txt", {}, b"y"),
            ("PROPFIND", u + f"t={rw}/c/", {"Depth": "1"}, None),
            ("MOVE", u + f"t={rw}/c/g.txt", {"Destination": u + f"t={rw}/c/h.txt"}, None),
            ("GET", u + f"t={rw}/c/missing", {}, None),
            ("GET", u + f"t={rw}/c", {}, None),
            ("PUT", u + "c/ro.txt", {"Authorization": f"Bearer {ro}"}, b"z"),  # 403
            ("PUT", u + f"t={ro}/c/ro.txt", {}, b"z"),  # 403
            ("GET", u + "c/f.txt", {"Authorization": f"Bearer {bogus}"}, None),  # 401
            ("GET", u + f"t={bogus}/c/f.txt", {}, None),  # 401
            ("GET", u + "c/f.txt", {"Authorization": "Basic " + b64(f"u:{bogus}".encode())}, None),
            ("GET", u + "c/f.txt", {"Authorization": "Basic " + b64(bogus.encode())}, None),  # malformed
            ("GET", u + "c/f.txt", {"Authorization": f"Digest {rw}"}, None),  # unknown scheme
            ("GET", u + f"t={rw}/../x", {}, None),  # rejected by the guard
            ("GET", u + f"t={rw}/%E4", {}, None),
        ]
        codes = []
        http = DavClient(s.url).http  # the URLs are whole, each with its own credentials
        for method, url, headers, body in calls:
            r = http.request(method, url, headers=headers, data=body, timeout=10, allow_redirects=False)
            codes.append(r.status_code)
        log = s.log_text()
    assert codes[:10] == [201, 201, 200, 200, 200, 201, 207, 201, 404, 301], codes
    assert codes[10:17] == [403, 403, 401, 401, 401, 401, 401], codes
    assert "t=***" in log and " PUT " in log  # the access log is there, redacted
    for label, secret in secrets.items():
        for needle in (secret, secret[:16], secret[-16:], b64(f"someone:{secret}".encode()), b64(f"u:{secret}".encode())):
            assert needle not in log, f"{label} token found in the log"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PROPFIND", "MKCOL"])
def test_path_token_never_echoed_in_error_bodies(srv, bare, coll, method):
    """Error pages quote the request path; a path token must not appear."""
    for token in (srv.rw, srv.ro, "bogus-token-1234567890"):
        r = bare.req(method, f"t={token}/no-such-collection/x/y",
                     headers={"Depth": "0"})
        assert r.status_code >= 400
        assert token not in r.text
        assert token not in "".join(f"{k}: {v}" for k, v in r.headers.items())

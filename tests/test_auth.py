"""Authentication: token forms, malformed credentials, read-only tokens,
the anonymous policy, lock ownership, and tokens kept out of the logs."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path

import pytest
import requests

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
def srv(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("auth") / "data", anonymous="none") as s:
        s.rw = s.app.backend.tokens.create(read_only=False, label="rw")
        s.rw2 = s.app.backend.tokens.create(read_only=False, label="rw2")
        s.ro = s.app.backend.tokens.create(read_only=True, label="ro")
        yield s


@pytest.fixture
def coll(srv):
    name = "a-" + uuidlib.uuid4().hex[:10]
    r = requests.request("MKCOL", srv.u(name + "/"), headers={"Authorization": f"Bearer {srv.rw}"}, timeout=10)
    assert r.status_code == 201
    requests.put(srv.u(f"{name}/f.txt"), data=b"content", headers={"Authorization": f"Bearer {srv.rw}"}, timeout=10)
    return name


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
def test_token_forms_read_and_write(srv, coll, form):
    headers, prefix = forms(srv.rw)[form]
    r = requests.get(srv.u(f"{prefix}{coll}/f.txt"), headers=headers, timeout=10)
    assert r.status_code == 200 and r.content == b"content"
    r = requests.put(srv.u(f"{prefix}{coll}/{form}.txt"), data=form.encode(), headers=headers, timeout=10)
    assert r.status_code == 201
    r = requests.request("PROPFIND", srv.u(f"{prefix}{coll}/"), headers={**headers, "Depth": "1"}, timeout=10)
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
def test_malformed_credentials_are_401_not_500(srv, coll, name):
    for method in ("GET", "PUT", "PROPFIND", "DELETE"):
        r = requests.request(method, srv.u(f"{coll}/f.txt"), headers={"Authorization": MALFORMED[name], "Depth": "0"},
                             data=b"x" if method == "PUT" else None, timeout=10)
        assert r.status_code == 401, (name, method, r.status_code)
        assert r.headers.get("WWW-Authenticate", "").lower().startswith("basic realm=")
    assert requests.get(srv.u(f"{coll}/f.txt"), headers={"Authorization": f"Bearer {srv.rw}"}, timeout=10).content == b"content"


@pytest.mark.parametrize("scheme", ["Digest", "Negotiate", "AWS4-HMAC-SHA256", "Token", "NTLM", "ApiKey"])
def test_unknown_scheme_is_401_even_with_a_valid_token(srv, coll, scheme):
    r = requests.get(srv.u(f"{coll}/f.txt"), headers={"Authorization": f"{scheme} {srv.rw}"}, timeout=10)
    assert r.status_code == 401
    assert "basic" in r.headers.get("WWW-Authenticate", "").lower()


@pytest.mark.parametrize("form", FORM_NAMES)
def test_bogus_token_is_401(srv, coll, form):
    headers, prefix = forms("bogus-" + uuidlib.uuid4().hex)[form]
    r = requests.get(srv.u(f"{prefix}{coll}/f.txt"), headers=headers, timeout=10)
    assert r.status_code == 401
    assert r.headers.get("WWW-Authenticate", "").lower().startswith("basic realm=")


def test_missing_token_is_401_everywhere(srv, coll):
    for method, path in [("GET", ""), ("PROPFIND", ""), ("OPTIONS", f"{coll}/"), ("GET", f"{coll}/f.txt"),
                         ("MKCOL", "newcoll/"), ("GET", "by_id/")]:
        r = requests.request(method, srv.u(path), headers={"Depth": "1"}, timeout=10)
        assert r.status_code == 401, (method, path)
        assert r.headers["WWW-Authenticate"].lower().startswith("basic realm=")
    # ...but not for the health check and metrics
    assert requests.get(srv.u("_health"), timeout=10).status_code == 200
    assert requests.get(srv.u("_metrics"), timeout=10).status_code == 200


@pytest.mark.parametrize("form", FORM_NAMES)
def test_read_only_token(srv, coll, form):
    headers, prefix = forms(srv.ro)[form]
    p = lambda s: srv.u(f"{prefix}{coll}/{s}")  # noqa: E731
    assert requests.get(p("f.txt"), headers=headers, timeout=10).content == b"content"
    assert requests.head(p("f.txt"), headers=headers, timeout=10).status_code == 200
    assert requests.request("PROPFIND", p(""), headers={**headers, "Depth": "1"}, timeout=10).status_code == 207
    assert requests.options(p(""), headers=headers, timeout=10).status_code == 200
    dest = {"Destination": p("g.txt")}
    writes = {
        "PUT": requests.put(p("f.txt"), data=b"x", headers=headers, timeout=10),
        "PUT new": requests.put(p("new.txt"), data=b"x", headers=headers, timeout=10),
        "DELETE": requests.delete(p("f.txt"), headers=headers, timeout=10),
        "MKCOL": requests.request("MKCOL", p("d/"), headers=headers, timeout=10),
        "MOVE": requests.request("MOVE", p("f.txt"), headers={**headers, **dest}, timeout=10),
        "COPY": requests.request("COPY", p("f.txt"), headers={**headers, **dest}, timeout=10),
        "LOCK": requests.request("LOCK", p("f.txt"), data=LOCK_BODY, headers=headers, timeout=10),
        "PROPPATCH": requests.request("PROPPATCH", p("f.txt"), headers=headers, timeout=10,
                                      data=b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:"><D:set><D:prop>'
                                           b'<x:a xmlns:x="urn:x">1</x:a></D:prop></D:set></D:propertyupdate>'),
        "MKCOL top": requests.request("MKCOL", srv.u(f"{prefix}ro-new-{form}/"), headers=headers, timeout=10),
    }
    assert {k: r.status_code for k, r in writes.items()} == {k: 403 for k in writes}
    rw = {"Authorization": f"Bearer {srv.rw}"}
    assert requests.get(srv.u(f"{coll}/f.txt"), headers=rw, timeout=10).content == b"content"
    assert requests.get(srv.u(f"{coll}/new.txt"), headers=rw, timeout=10).status_code == 404


def test_revoked_token(srv, coll):
    tokens = srv.app.backend.tokens
    tok = tokens.create(read_only=False, label="short-lived")
    h = {"Authorization": f"Bearer {tok}"}
    assert requests.get(srv.u(f"{coll}/f.txt"), headers=h, timeout=10).status_code == 200
    assert tokens.revoke(tok) == 1
    assert requests.get(srv.u(f"{coll}/f.txt"), headers=h, timeout=10).status_code == 401
    assert requests.get(srv.u(f"t={tok}/{coll}/f.txt"), timeout=10).status_code == 401


def test_header_token_wins_over_path_token(srv, coll):
    # "first found wins": the header is looked at before the path
    r = requests.get(srv.u(f"t=bogus/{coll}/f.txt"), headers={"Authorization": f"Bearer {srv.rw}"}, timeout=10)
    assert r.status_code == 200
    r = requests.put(srv.u(f"t={srv.rw}/{coll}/x"), data=b"x", headers={"Authorization": f"Bearer {srv.ro}"}, timeout=10)
    assert r.status_code == 403


def test_lock_owner_is_the_token_not_the_basic_user_name(srv, coll):
    alice = ("alice", srv.rw)
    r = requests.request("LOCK", srv.u(f"{coll}/f.txt"), data=LOCK_BODY, auth=alice, timeout=10)
    assert r.status_code == 200
    lock = r.headers["Lock-Token"]
    try:
        # the same token under another user name owns the lock
        r = requests.put(srv.u(f"{coll}/f.txt"), data=b"by bob", auth=("bob", srv.rw), headers={"If": f"({lock})"}, timeout=10)
        assert r.status_code == 204
        # another token, even one calling itself "alice", does not
        r = requests.put(srv.u(f"{coll}/f.txt"), data=b"thief", auth=alice[:1] + (srv.rw2,), headers={"If": f"({lock})"}, timeout=10)
        assert r.status_code in (412, 423)  # the If condition is false for this principal
        r = requests.put(srv.u(f"{coll}/f.txt"), data=b"thief", auth=alice[:1] + (srv.rw2,), timeout=10)
        assert r.status_code == 423
        assert requests.get(srv.u(f"{coll}/f.txt"), auth=alice, timeout=10).content == b"by bob"
    finally:
        assert requests.request("UNLOCK", srv.u(f"{coll}/f.txt"), auth=alice, headers={"Lock-Token": lock}, timeout=10).status_code == 204


# ------------------------------------------------------------------ anonymous policy


@pytest.mark.parametrize("mode", ["none", "read", "write"])
def test_explicit_anonymous_modes(tmp_path, mode):
    with running_server(tmp_path / "data", anonymous=mode) as s:
        s.app.backend.catalog_.create("pub")
        r = requests.get(s.u("pub/"), timeout=10)
        assert r.status_code == (401 if mode == "none" else 200)
        r = requests.put(s.u("pub/f"), data=b"x", timeout=10)
        assert r.status_code == (201 if mode == "write" else 401)
        if r.status_code == 401:
            assert r.headers["WWW-Authenticate"].lower().startswith("basic realm=")
        # a token always works, whatever the anonymous mode
        tok = s.app.backend.tokens.create(read_only=False)
        r = requests.put(s.u("pub/g"), data=b"y", headers={"Authorization": f"Bearer {tok}"}, timeout=10)
        assert r.status_code == 201


@pytest.mark.slow
def test_auto_is_write_on_loopback_until_a_token_exists(tmp_path):
    with running_server(tmp_path / "data", anonymous="auto") as s:
        assert requests.request("MKCOL", s.u("c/"), timeout=10).status_code == 201
        assert requests.put(s.u("c/f"), data=b"anon", timeout=10).status_code == 201
        tok = cli_token(tmp_path / "data")  # another process creates the first token
        deadline = time.monotonic() + 8
        while requests.get(s.u("c/f"), timeout=10).status_code != 401:
            assert time.monotonic() < deadline, "anonymous access survived the first token"
            time.sleep(0.25)
        r = requests.put(s.u("c/g"), data=b"x", timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].lower().startswith("basic")
        r = requests.get(s.u("c/f"), headers={"Authorization": f"Bearer {tok}"}, timeout=10)
        assert r.status_code == 200 and r.content == b"anon"


@pytest.mark.slow
def test_auto_is_none_when_a_token_exists_at_start(tmp_path):
    data = tmp_path / "data"
    tok = cli_token(data)
    with ServerProcess(data) as s:
        r = requests.get(s.url, timeout=10)
        assert r.status_code == 401
        assert requests.request("MKCOL", s.url + "c/", timeout=10).status_code == 401
        assert requests.request("MKCOL", s.url + "c/", headers={"Authorization": f"Bearer {tok}"}, timeout=10).status_code == 201


@pytest.mark.slow
def test_auto_is_none_off_loopback(tmp_path):
    port = free_port()
    with ServerProcess(tmp_path / "data", port=port, args=["--listen", f"0.0.0.0:{port}"]) as s:
        assert requests.get(s.url, timeout=10).status_code == 401
        assert requests.request("MKCOL", s.url + "c/", timeout=10).status_code == 401


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
        for method, url, headers, body in calls:
            r = requests.request(method, url, headers=headers, data=body, timeout=10, allow_redirects=False)
            codes.append(r.status_code)
        log = s.log_text()
    assert codes[:10] == [201, 201, 200, 200, 200, 201, 207, 201, 404, 301], codes
    assert codes[10:17] == [403, 403, 401, 401, 401, 401, 401], codes
    assert "t=***" in log and " PUT " in log  # the access log is there, redacted
    for label, secret in secrets.items():
        for needle in (secret, secret[:16], secret[-16:], b64(f"someone:{secret}".encode()), b64(f"u:{secret}".encode())):
            assert needle not in log, f"{label} token found in the log"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PROPFIND", "MKCOL"])
def test_path_token_never_echoed_in_error_bodies(srv, coll, method):
    """Error pages quote the request path; a path token must not appear."""
    for token in (srv.rw, srv.ro, "bogus-token-1234567890"):
        r = requests.request(method, srv.u(f"t={token}/no-such-collection/x/y"), timeout=10,
                             headers={"Depth": "0"})
        assert r.status_code >= 400
        assert token not in r.text
        assert token not in "".join(f"{k}: {v}" for k, v in r.headers.items())

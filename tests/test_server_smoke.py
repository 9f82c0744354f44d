"""Smoke test of a real server: MKCOL, PUT, GET, PROPFIND, MOVE, DELETE."""

from __future__ import annotations

from davclient import DavClient, wait_until
from server_util import running_server


def test_basic_cycle(tmp_path):
    with running_server(tmp_path / "data") as srv:
        c = DavClient(srv.url)
        assert c.mkcol("c1/").status_code == 201
        r = c.put("c1/a.txt", b"hello")
        assert r.status_code == 201, r.text
        etag = r.headers["ETag"]
        r = c.get("c1/a.txt")
        assert r.content == b"hello" and r.headers["ETag"] == etag
        r = c.propfind("c1/", "1")
        assert r.status_code == 207 and "a.txt" in r.text
        r = c.move("c1/a.txt", "c1/b.txt")
        assert r.status_code == 201, r.text
        assert c.get("c1/a.txt").status_code == 404
        assert c.get("c1/b.txt").content == b"hello"
        assert c.delete("c1/b.txt").status_code == 204
        assert c.get("c1/b.txt").status_code == 404
        # the catalog holds the result (durable before the response)
        rec = srv.app.backend.catalog_.find_by_name("c1")
        assert srv.app.backend.catalog_.get(rec.uuid).manifest_text == ""


def test_second_instance_sees_new_paths_at_once(tmp_path):
    """A miss re-checks the catalog (at most every 0.5 s per collection), so
    a folder made through one instance can be written through another
    without waiting for the regular revalidation interval (60 s here)."""
    data = tmp_path / "shared"
    with running_server(data, revalidate_seconds=60) as a, running_server(data, revalidate_seconds=60) as b:
        ca, cb = DavClient(a.url), DavClient(b.url)
        assert ca.mkcol("c/").status_code == 201
        assert cb.put("c/warm.txt", b"x").status_code == 201  # b caches the tree
        assert ca.mkcol("c/newdir/").status_code == 201
        # Within 0.5 s of b's last check the PUT may still get 409; it must
        # succeed well before the 60 s revalidation interval.
        statuses: list[int] = []
        assert wait_until(lambda: statuses.append(cb.put("c/newdir/f.txt", b"via b").status_code)
                          or statuses[-1] == 201, timeout=10), statuses
        assert set(statuses[:-1]) <= {409}, statuses
        assert ca.get("c/newdir/f.txt", no_cache=True).content == b"via b"
        assert cb.get("c/newdir/f.txt").content == b"via b"


def test_polling_a_missing_path_does_not_keep_a_stale_tree(tmp_path):
    """A tree whose own commit landed on a newer catalog revision (another
    instance wrote meanwhile) lacks that other write but carries the new
    revision (``stale``); it must be reloaded at the next revalidation even
    when a client keeps asking for the missing path (each miss re-checks the
    revision, finds it unchanged, and must not postpone that reload)."""
    data = tmp_path / "shared"
    with running_server(data, revalidate_seconds=1) as a, running_server(data, revalidate_seconds=1) as b:
        ca, cb = DavClient(a.url), DavClient(b.url)
        assert ca.mkcol("c/").status_code == 201
        assert ca.put("c/warm.txt", b"w").status_code == 201  # a caches the tree
        assert cb.put("c/from_b.txt", b"via b").status_code == 201
        assert ca.put("c/from_a.txt", b"via a").status_code == 201  # committed on b's newer revision
        # Ask a every 0.1 s (no Cache-Control): it must show b's file well within 5 s.
        assert wait_until(lambda: ca.get("c/from_b.txt").status_code == 200, timeout=5, interval=0.1), \
            "a kept serving a tree without b's file while it was polled"
        assert ca.get("c/from_b.txt").content == b"via b"

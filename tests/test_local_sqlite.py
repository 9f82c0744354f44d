"""The shared SQLite layer (davcoll/storage/local_sqlite.py): connections per
thread and per process, transactions, schema migrations."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from davcoll.storage.local_sqlite import Database, Migration, migrate


class Busy(Exception):
    pass


@pytest.fixture
def db(tmp_path):
    d = Database(tmp_path / "t.sqlite3", label="test db", unavailable=Busy)
    d.connection().execute("CREATE TABLE t (x INTEGER)")
    yield d
    d.close()


def count(db: Database) -> int:
    with db.read() as conn:
        return conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]


def test_each_thread_has_its_own_connection(db):
    mine = db.connection()
    assert db.connection() is mine
    theirs = []
    t = threading.Thread(target=lambda: theirs.append(db.connection()))
    t.start()
    t.join()
    assert theirs[0] is not mine
    assert mine.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_connections_of_ended_threads_are_closed(db):
    """A worker pool that grows and shrinks does not pile up connections."""
    opened = []
    for _ in range(3):
        t = threading.Thread(target=lambda: opened.append(db.connection()))
        t.start()
        t.join()
    db.connection()  # a new thread's first use sweeps ended threads
    t = threading.Thread(target=db.connection)
    t.start()
    t.join()
    for conn in opened:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")


def test_close_closes_every_thread_connection(db):
    other = []
    gate = threading.Event()

    def worker():
        other.append(db.connection())
        gate.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    while not other:
        threading.Event().wait(0.01)
    db.close()
    gate.set()
    t.join()
    with pytest.raises(sqlite3.ProgrammingError):
        other[0].execute("SELECT 1")
    assert count(db) == 0  # usable again: a new connection


def test_write_commits_or_rolls_back(db):
    with db.write() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ZeroDivisionError):
        with db.write() as conn:
            conn.execute("INSERT INTO t VALUES (2)")
            1 / 0
    assert count(db) == 1


def test_join_runs_inside_the_outer_transaction(db):
    with pytest.raises(ZeroDivisionError):
        with db.write() as conn:
            conn.execute("INSERT INTO t VALUES (1)")
            with db.write(join=True) as inner:
                inner.execute("INSERT INTO t VALUES (2)")
            1 / 0
    assert count(db) == 0
    with db.write():
        with pytest.raises(Busy):  # without join a nested BEGIN fails
            with db.write():
                pass


def test_a_held_write_lock_is_the_stores_unavailable_error(db, tmp_path):
    """Past the (here shortened) busy timeout the caller gets the store's
    own error type with a reason, and its normal timeout is restored."""
    holder = sqlite3.connect(tmp_path / "t.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Busy, match="test db busy"):
            with db.write(busy_timeout_ms=50):
                pass
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert db.connection().execute("PRAGMA busy_timeout").fetchone()[0] == db.busy_timeout_ms


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connection(db):
    parent_conn = db.connection()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not use (or close) the parent's connection
        ok = 0
        try:
            conn = db.connection()
            with db.write() as c:
                c.execute("INSERT INTO t VALUES (7)")
            ok = int(conn is not parent_conn)
            db.close()
        finally:
            os.write(w, str(ok).encode())
            os._exit(0)
    os.close(w)
    got = os.read(r, 10)
    os.close(r)
    os.waitpid(pid, 0)
    assert got == b"1"
    assert count(db) == 1
    assert parent_conn.execute("SELECT x FROM t").fetchall() == [(7,)]  # still open here


def _steps(log: list[int]) -> list[Migration]:
    def step(n: int):
        def apply(conn: sqlite3.Connection) -> None:
            log.append(n)
            conn.execute(f"CREATE TABLE IF NOT EXISTS s{n} (x)")

        return Migration(n, f"s{n}", apply)

    return [step(1), step(2), step(3)]


def test_migrate_runs_the_missing_steps_in_order(tmp_path):
    d = Database(tmp_path / "m.sqlite3")
    log: list[int] = []
    assert migrate(d, _steps(log)[:2]) == 2
    assert log == [1, 2]
    assert migrate(d, _steps(log)) == 3
    assert log == [1, 2, 3]
    assert migrate(d, _steps(log)) == 3  # up to date: nothing runs
    assert log == [1, 2, 3]
    assert d.connection().execute("PRAGMA user_version").fetchone()[0] == 3
    with pytest.raises(RuntimeError, match="newer"):
        migrate(d, _steps(log)[:2])
    d.close()


def test_a_failing_step_leaves_the_database_as_it_was(tmp_path):
    d = Database(tmp_path / "m.sqlite3")
    migrate(d, _steps([])[:1])

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half (x)")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        migrate(d, [*_steps([])[:2], Migration(3, "broken", broken)])
    conn = d.connection()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"s1"}
    d.close()

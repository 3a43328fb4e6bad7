"""Schema migrations: a store written by cmw before them (schema v1) opens, upgrades, and loses nothing.

The v1 layouts below are literals copied from the store as it was, not built by today's code, so a
change to today's schema cannot hide a broken upgrade path.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import agent.sessions.store.sqlite
from agent.sessions.store import SCHEMA_VERSION, RedisStore, SQLiteStore, StoreError
from tests.agent.sessions.test_store_redis import REDIS_SERVER, flush, running_redis

# agent/sessions/store's _SCHEMA at schema 1, verbatim.
_V1_SQL = """
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, meta TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, session_id TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages (session_id, seq);
CREATE TABLE IF NOT EXISTS files (
    session_id TEXT NOT NULL, name TEXT NOT NULL, content TEXT NOT NULL, PRIMARY KEY (session_id, name)
);
"""

# Close last_active values: equal to 14 significant digits, distinct as doubles.
EARLY, LATE = 1718000000.123456, 1718000000.1234563

V1_SESSIONS = {
    "s1": ({"id": "s1", "created": 1.0, "last_active": 10.0, "turns": 2},
           [("user", "q0"), ("assistant", "a0"), ("user", "q1"), ("assistant", "a1")], {"notes.txt": "text"}),
    "s2": ({"id": "s2", "created": 2.0, "last_active": LATE + 100, "turns": 1},
           [("user", "hi"), ("assistant", "yo")], {}),
    "s3": ({"id": "s3", "created": 3.0, "turns": 0}, [], {}),  # no last_active at all
    "early": ({"id": "early", "created": 4.0, "last_active": EARLY}, [("user", "e")], {}),
    "late": ({"id": "late", "created": 5.0, "last_active": LATE}, [("user", "l")], {}),
}


def history(sid: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text} for role, text in V1_SESSIONS[sid][1]]


def write_v1_sqlite(path: Path) -> None:
    """A sessions.db as cmw at schema 1 left it: WAL, user_version 1, no migrations table."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.executescript(_V1_SQL)
        db.execute("PRAGMA user_version = 1")
        for sid, (meta, messages, files) in V1_SESSIONS.items():
            db.execute("INSERT INTO sessions (id, meta) VALUES (?, ?)", (sid, json.dumps(meta)))
            for role, text in messages:
                db.execute("INSERT INTO messages (session_id, message) VALUES (?, ?)",
                           (sid, json.dumps({"role": role, "content": text})))
            for name, content in files.items():
                db.execute("INSERT INTO files (session_id, name, content) VALUES (?, ?, ?)", (sid, name, content))
    finally:
        db.close()


def raw_sqlite(path: Path, sql: str, *args: object) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_a_v1_sqlite_store_upgrades_and_keeps_every_message(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    write_v1_sqlite(path)
    store = SQLiteStore(path)
    try:
        assert store.schema_version == SCHEMA_VERSION == 2
        recorded = store.migrations()
        assert [m["version"] for m in recorded] == [1, 2]
        assert recorded[0]["applied_at"] is None  # ran before migrations were recorded
        assert isinstance(recorded[1]["applied_at"], float)
        for sid, (meta, _, files) in V1_SESSIONS.items():
            assert store.load(sid) == {**meta, "history": history(sid), "files": files}
        assert store.count() == 5
        assert [m["id"] for m in store.list_page()] == ["s2", "late", "early", "s1", "s3"]
        assert [m["id"] for m in store.list_page(1, 2, exclude={"early"})] == ["late", "s1"]
        assert sorted(store.purge_inactive(LATE)) == ["early", "s1", "s3"]
        assert len(store.key("session-token")) == 32
        assert store.load("late")["history"] == history("late")
    finally:
        store.close()
    assert raw_sqlite(path, "SELECT COUNT(*) FROM messages WHERE session_id IN ('s1', 'early')") == [(0,)]
    assert raw_sqlite(path, "SELECT COUNT(*) FROM files") == [(0,)]
    # Reopening runs nothing again: the record of v2 keeps its first time.
    again = SQLiteStore(path)
    try:
        assert again.migrations() == recorded
        assert [m["id"] for m in again.list_page()] == ["s2", "late"]
    finally:
        again.close()


def test_a_fresh_sqlite_store_records_every_step(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "sessions.db")
    try:
        recorded = store.migrations()
    finally:
        store.close()
    assert [m["version"] for m in recorded] == [1, 2]
    assert all(isinstance(m["applied_at"], float) and m["description"] for m in recorded)


def test_list_page_reads_the_last_active_index(tmp_path: Path) -> None:
    """The page query walks sessions_by_last_active, not a sort of every row."""
    path = tmp_path / "sessions.db"
    SQLiteStore(path).close()
    plan = " ".join(row[-1] for row in raw_sqlite(
        path, "EXPLAIN QUERY PLAN SELECT id, meta FROM sessions ORDER BY last_active DESC, id DESC"
    ))
    assert "sessions_by_last_active" in plan and "TEMP B-TREE" not in plan
    query = "EXPLAIN QUERY PLAN SELECT id FROM sessions WHERE last_active < 5"
    plan = " ".join(row[-1] for row in raw_sqlite(path, query))
    assert "sessions_by_last_active" in plan


def test_a_failing_migration_leaves_the_database_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sessions.db"
    write_v1_sqlite(path)

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done (x)")
        db.execute("SELECT no_such_column FROM sessions")

    sqlite_store = agent.sessions.store.sqlite
    monkeypatch.setattr(sqlite_store, "SQLITE_MIGRATIONS", (*sqlite_store.SQLITE_MIGRATIONS, (3, "broken", broken)))
    monkeypatch.setattr(agent.sessions.store.sqlite, "SCHEMA_VERSION", 3)
    with pytest.raises(StoreError, match=r"sessions\.db: cannot open: .*no_such_column"):
        SQLiteStore(path)
    assert raw_sqlite(path, "PRAGMA user_version") == [(1,)]
    tables = {name for (name,) in raw_sqlite(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"sessions", "messages", "files"}  # not v2's column, secrets or migrations either
    assert "last_active" not in {row[1] for row in raw_sqlite(path, "PRAGMA table_info(sessions)")}
    monkeypatch.undo()
    store = SQLiteStore(path)
    try:
        assert store.schema_version == 2 and store.load("s1")["history"] == history("s1")
    finally:
        store.close()


def test_processes_opening_a_v1_store_together_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    write_v1_sqlite(path)
    opened: list[SQLiteStore] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        start.wait(timeout=10)
        try:
            opened.append(SQLiteStore(path))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert not errors and len(opened) == 4
        assert len({store.key("session-token") for store in opened}) == 1
        assert [m["version"] for m in opened[0].migrations()] == [1, 2]
        assert all(store.load("s1")["history"] == history("s1") for store in opened)
    finally:
        for store in opened:
            store.close()


# Redis: the keys RedisStore wrote at schema 1 (no schema key, no active sorted set).
@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def client(redis_url: str) -> Iterator[object]:
    import redis

    flush(redis_url)
    made = redis.Redis.from_url(redis_url, decode_responses=True)
    yield made
    made.close()


def write_v1_redis(client, prefix: str = "cmw:") -> None:
    for sid, (meta, messages, files) in V1_SESSIONS.items():
        client.set(f"{prefix}session:{sid}", json.dumps(meta, separators=(",", ":")))
        if messages:
            client.rpush(f"{prefix}messages:{sid}",
                         *(json.dumps({"role": r, "content": t}, separators=(",", ":")) for r, t in messages))
        if files:
            client.hset(f"{prefix}files:{sid}", mapping=files)
        client.zadd(f"{prefix}ids", {sid: meta["created"]}, nx=True)


@pytest.mark.services
@pytest.mark.parametrize("prefix", ["cmw:", "t[1]*:"])
def test_a_v1_redis_store_upgrades_and_keeps_every_message(client, redis_url: str, prefix: str) -> None:
    write_v1_redis(client, prefix)
    client.set("cmw-other:session:x", "{}")  # not ours: left alone
    store = RedisStore(redis_url, prefix=prefix)
    try:
        assert store.schema_version == RedisStore.SCHEMA_VERSION == 2
        recorded = store.migrations()
        assert [m["version"] for m in recorded] == [1, 2]
        assert recorded[0]["applied_at"] is None and isinstance(recorded[1]["applied_at"], float)
        for sid, (meta, _, files) in V1_SESSIONS.items():
            assert store.load(sid) == {**meta, "history": history(sid), "files": files}
        assert store.count() == 5
        assert [m["id"] for m in store.list_page()] == ["s2", "late", "early", "s1", "s3"]
        assert [m["id"] for m in store.list_page(1, 2, exclude={"early"})] == ["late", "s1"]
        # Scores the migration wrote keep every digit: "early" goes, "late" (0.3 µs later) stays.
        assert sorted(store.purge_inactive(LATE)) == ["early", "s1", "s3"]
        assert store.load("late")["history"] == history("late")
        assert store.list_ids() == ["s2", "late"]
        assert len(store.key("session-token")) == 32
    finally:
        store.close()
    assert client.exists(f"{prefix}messages:s1", f"{prefix}files:s1", f"{prefix}messages:early") == 0
    assert client.get("cmw-other:session:x") == "{}"
    again = RedisStore(redis_url, prefix=prefix)
    try:
        assert again.migrations() == recorded
    finally:
        again.close()


@pytest.mark.services
def test_a_big_v1_redis_store_is_indexed_in_batches(client, redis_url: str) -> None:
    total = 450  # more than two SCAN batches
    pipe = client.pipeline(transaction=False)
    for i in range(total):
        pipe.set(f"cmw:session:s{i:03}", json.dumps({"id": f"s{i:03}", "created": 1.0, "last_active": float(i)}))
        pipe.zadd("cmw:ids", {f"s{i:03}": 1.0})
    pipe.execute()
    store = RedisStore(redis_url)
    try:
        assert store.count() == total
        assert [m["id"] for m in store.list_page(0, 3)] == ["s449", "s448", "s447"]
        assert [m["id"] for m in store.list_page(447, 10)] == ["s002", "s001", "s000"]
        assert len(store.purge_inactive(400.0)) == 400 and store.count() == 50
    finally:
        store.close()


@pytest.mark.services
def test_a_fresh_redis_store_records_every_step(client, redis_url: str) -> None:
    store = RedisStore(redis_url)
    try:
        assert store.schema_version == 2
        assert [(m["version"], m["applied_at"] is not None) for m in store.migrations()] == [(1, True), (2, True)]
    finally:
        store.close()


@pytest.mark.services
def test_a_newer_redis_schema_is_refused(client, redis_url: str) -> None:
    client.set("cmw:schema", "99")
    with pytest.raises(StoreError, match="newer cmw"):
        RedisStore(redis_url)
    assert client.get("cmw:schema") == "99"

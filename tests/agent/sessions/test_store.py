"""The session store: what is written comes back, across reopening and across kill -9."""

from __future__ import annotations

import signal
import socket
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sessions.store import MemoryStore, RedisStore, SQLiteStore, StoreError, open_store, state_dir
from agent.settings import Settings
from tests.agent.sessions.test_store_redis import REDIS_SERVER, flush, running_redis


def meta(session_id: str = "s1", **extra: object) -> dict[str, object]:
    return {"id": session_id, "created": 1.0, "last_active": 2.0, "provider": "sim", "model": "m", "turns": 0, **extra}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    made = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "sessions.db")
    yield made
    made.close()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.services)])
def any_store(request: pytest.FixtureRequest, tmp_path: Path):
    """Each of the three stores, empty; Redis on a real redis-server (skipped when none is installed)."""
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SQLiteStore(tmp_path / "sessions.db")
    else:
        url = request.getfixturevalue("redis_url")
        flush(url)
        made = RedisStore(url)
    yield made
    made.close()


def reopen(made, tmp_path: Path):
    """A second store on the same data (another worker process would open its own)."""
    if isinstance(made, SQLiteStore):
        return SQLiteStore(made.path)
    assert isinstance(made, RedisStore)
    return RedisStore(made.url)


def test_unknown_session_loads_as_none(store) -> None:
    assert store.load("nobody") is None


def test_saved_session_loads_with_history_and_files(store) -> None:
    store.save_session(meta())
    store.append_messages("s1", [user("hi"), assistant("hello")], meta=meta(turns=1))
    store.save_file("s1", "notes.txt", "text", meta=meta(turns=1))
    loaded = store.load("s1")
    assert loaded == {**meta(turns=1), "history": [user("hi"), assistant("hello")], "files": {"notes.txt": "text"}}


def test_messages_keep_their_order_across_appends(store) -> None:
    for i in range(5):
        store.append_messages("s1", [user(f"q{i}"), assistant(f"a{i}")], meta=meta(turns=i + 1))
    history = store.load("s1")["history"]
    assert [m["content"] for m in history] == [x for i in range(5) for x in (f"q{i}", f"a{i}")]


def test_messages_without_a_session_row_are_not_a_session(store) -> None:
    store.append_messages("ghost", [user("hi")])
    assert store.load("ghost") is None
    assert "ghost" not in store.list_ids()


def test_delete_removes_session_messages_and_files(store) -> None:
    store.append_messages("s1", [user("hi")], meta=meta())
    store.save_file("s1", "a.txt", "x", meta=meta())
    store.append_messages("s2", [user("other")], meta=meta("s2"))
    assert store.delete("s1") is True
    assert store.delete("s1") is False
    assert store.load("s1") is None
    store.save_session(meta())
    assert store.load("s1")["history"] == [] and store.load("s1")["files"] == {}
    assert store.load("s2")["history"] == [user("other")]


def test_list_ids_names_every_saved_session(store) -> None:
    for sid in ("a", "b", "c"):
        store.save_session(meta(sid))
    assert sorted(store.list_ids()) == ["a", "b", "c"]


def test_clear_messages_keeps_the_session(store) -> None:
    store.append_messages("s1", [user("hi")], meta=meta())
    store.clear_messages("s1")
    assert store.load("s1")["history"] == []


def test_clear_messages_upserts_meta_in_the_same_write(any_store) -> None:
    any_store.append_messages("s1", [user("hi")], meta=meta(token_nonce="old"))
    any_store.clear_messages("s1", meta=meta(token_nonce="new", last_active=9.0))
    loaded = any_store.load("s1")
    assert loaded["history"] == [] and loaded["token_nonce"] == "new"
    assert [m["id"] for m in any_store.list_page()] == ["s1"] and any_store.list_page()[0]["last_active"] == 9.0


def test_meta_keeps_pending_and_nonce_fields(any_store) -> None:
    pending = {"since": 12.5, "pid": 4242, "run": "r-1"}
    any_store.save_session(meta(pending=pending, token_nonce="n1"))
    assert any_store.load("s1")["pending"] == pending
    assert any_store.list_page() == [meta(pending=pending, token_nonce="n1")]
    any_store.save_session(meta(pending=None, token_nonce="n1"))
    assert any_store.load("s1")["pending"] is None


def test_list_page_orders_by_last_active_and_pages(any_store) -> None:
    for sid, active in [("a", 5.0), ("b", 1.0), ("c", 3.0), ("d", 3.0), ("e", 4.0)]:
        any_store.append_messages(sid, [user(f"hi {sid}")], meta=meta(sid, last_active=active))
    page = any_store.list_page()
    assert [m["id"] for m in page] == ["a", "e", "d", "c", "b"]  # ties (c, d): greater id first
    assert page[0] == meta("a", last_active=5.0)  # the meta as saved: no history, no files
    assert [m["id"] for m in any_store.list_page(0, 2)] == ["a", "e"]
    assert [m["id"] for m in any_store.list_page(2, 2)] == ["d", "c"]
    assert [m["id"] for m in any_store.list_page(4, 2)] == ["b"]
    assert any_store.list_page(5, 2) == [] and any_store.list_page(0, 0) == []
    assert [m["id"] for m in any_store.list_page(1, 2, exclude={"a", "d"})] == ["c", "b"]
    assert any_store.count() == 5
    # A new turn moves a session to the top.
    any_store.append_messages("b", [user("again")], meta=meta("b", last_active=6.0))
    assert [m["id"] for m in any_store.list_page(0, 1)] == ["b"]


def test_list_page_refuses_negative_bounds(any_store) -> None:
    with pytest.raises(ValueError, match="offset"):
        any_store.list_page(-1)
    with pytest.raises(ValueError, match="limit"):
        any_store.list_page(0, -5)


def test_missing_or_odd_last_active_sorts_as_zero(any_store) -> None:
    any_store.save_session({"id": "none"})
    any_store.save_session(meta("text", last_active="yesterday"))
    any_store.save_session(meta("flag", last_active=True))
    any_store.save_session(meta("real", last_active=0.5))
    assert [m["id"] for m in any_store.list_page()] == ["real", "text", "none", "flag"]
    assert sorted(any_store.purge_inactive(0.25)) == ["flag", "none", "text"]
    assert [m["id"] for m in any_store.list_page()] == ["real"]


def test_count_follows_saves_and_deletes(any_store) -> None:
    assert any_store.count() == 0
    any_store.append_messages("ghost", [user("no meta")])
    assert any_store.count() == 0
    for sid in ("a", "b"):
        any_store.save_session(meta(sid))
    assert any_store.count() == 2
    any_store.delete("a")
    assert any_store.count() == 1 and [m["id"] for m in any_store.list_page()] == ["b"]


def test_purge_inactive_deletes_old_sessions_with_messages_and_files(any_store) -> None:
    for sid, active in [("old1", 10.0), ("old2", 19.5), ("edge", 20.0), ("new", 30.0)]:
        any_store.append_messages(sid, [user("q"), assistant("a")], meta=meta(sid, last_active=active))
        any_store.save_file(sid, "f.txt", "text", meta=meta(sid, last_active=active))
    assert sorted(any_store.purge_inactive(20.0)) == ["old1", "old2"]
    assert any_store.load("old1") is None and any_store.load("old2") is None
    # Gone for good: a session saved again under the same id starts empty.
    any_store.save_session(meta("old1", last_active=40.0))
    assert any_store.load("old1")["history"] == [] and any_store.load("old1")["files"] == {}
    assert any_store.load("edge")["history"] == [user("q"), assistant("a")]  # last_active == before is kept
    assert any_store.load("new")["files"] == {"f.txt": "text"}
    assert sorted(m["id"] for m in any_store.list_page()) == ["edge", "new", "old1"]
    assert any_store.count() == 3
    assert any_store.purge_inactive(20.0) == []


def test_purge_inactive_refuses_a_cutoff_that_is_not_a_time(any_store) -> None:
    with pytest.raises(ValueError, match="needs a time"):
        any_store.purge_inactive(float("nan"))


def test_key_is_32_random_bytes_made_once(any_store) -> None:
    first = any_store.key("session-token")
    assert isinstance(first, bytes) and len(first) == 32
    assert any_store.key("session-token") == first
    other = any_store.key("another")
    assert len(other) == 32 and other != first
    with pytest.raises(ValueError, match="name"):
        any_store.key("")


def test_key_is_shared_by_every_store_on_the_same_data(any_store, tmp_path: Path) -> None:
    if isinstance(any_store, MemoryStore):
        assert MemoryStore().key("k") != any_store.key("k")  # per instance: nothing to share
        return
    second = reopen(any_store, tmp_path)
    try:
        # The second instance asks first: whichever makes it, both read the same key.
        made = second.key("session-token")
        assert any_store.key("session-token") == made
    finally:
        second.close()
    any_store.close()
    third = reopen(any_store, tmp_path)
    try:
        assert third.key("session-token") == made
    finally:
        third.close()


def test_file_replaced_and_deleted(store) -> None:
    store.save_file("s1", "a.txt", "old", meta=meta())
    store.save_file("s1", "a.txt", "new", meta=meta())
    assert store.load("s1")["files"] == {"a.txt": "new"}
    store.delete_file("s1", "a.txt")
    assert store.load("s1")["files"] == {}


def test_sqlite_store_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    first = SQLiteStore(path)
    first.append_messages("s1", [user("hi"), assistant("hello")], meta=meta(turns=1))
    first.save_file("s1", "f.txt", "content", meta=meta(turns=1))
    first.close()
    second = SQLiteStore(path)
    try:
        loaded = second.load("s1")
        assert loaded["turns"] == 1
        assert loaded["history"] == [user("hi"), assistant("hello")]
        assert loaded["files"] == {"f.txt": "content"}
    finally:
        second.close()


def test_sqlite_store_uses_wal_and_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    SQLiteStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_store_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"sessions\.db: cannot open"):
        SQLiteStore(path)


def test_sqlite_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer cmw"):
        SQLiteStore(path)


# A child process records turns through the real manager, printing each count once committed.
_WRITER = """
import pathlib, sys
from agent.sessions.manager import SessionManager
from agent.sessions.store import SQLiteStore

manager = SessionManager(idle_ttl_s=3600, max_sessions=10, store=SQLiteStore(sys.argv[1]),
                         upload_root=pathlib.Path(sys.argv[2]), default_provider="sim", default_model="m")
session = manager.get_or_create("victim")
for i in range(100_000):
    manager.record_turn(session, f"q{i}", f"a{i}", tokens=1, latency=0.1, ttft=0.01)
    manager.writer.flush()  # writes go to the store's thread: committed once flushed
    print(i + 1, flush=True)
"""


@pytest.mark.server
@pytest.mark.timeout(60)
def test_every_committed_turn_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    target = 200
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(tmp_path / "uploads")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        committed = 0
        assert child.stdout is not None
        while committed < target:
            line = child.stdout.readline()
            assert line, f"writer exited early with {child.poll()}"
            committed = int(line)
        child.send_signal(signal.SIGKILL)  # while it keeps writing
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL

    fresh = SQLiteStore(path)
    try:
        loaded = fresh.load("victim")
    finally:
        fresh.close()
    assert loaded is not None
    assert loaded["turns"] >= committed
    # Each write is one transaction: the counters never run ahead of the messages. The user's message is
    # stored when its turn starts, so a kill mid-turn leaves it last, marked pending (read back "[interrupted]").
    turns = loaded["turns"]
    expected = [x for i in range(turns) for x in (user(f"q{i}"), assistant(f"a{i}"))]
    assert loaded["history"][: 2 * turns] == expected
    if len(loaded["history"]) == 2 * turns + 1:
        assert loaded["history"][-1] == user(f"q{turns}") and loaded["pending"] is not None
    else:
        assert len(loaded["history"]) == 2 * turns


def test_open_store_sqlite_lives_in_the_state_dir(tmp_path: Path) -> None:
    store = open_store("sqlite", tmp_path)
    try:
        assert isinstance(store, SQLiteStore) and store.path == tmp_path / "sessions.db"
    finally:
        store.close()


def test_open_store_memory() -> None:
    assert isinstance(open_store("memory", Path("/nonexistent")), MemoryStore)


def test_open_store_with_an_unreachable_redis_is_a_clear_store_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here
    with pytest.raises(StoreError, match="cannot connect"):
        open_store(f"redis://127.0.0.1:{port}/0", tmp_path)


def test_state_dir_setting_wins(tmp_path: Path) -> None:
    settings = Settings(server={"state_dir": tmp_path / "explicit"})
    path = state_dir(settings, environ={"XDG_STATE_HOME": str(tmp_path / "xdg")})
    assert path == tmp_path / "explicit" and path.is_dir()


def test_state_dir_follows_xdg_and_is_private(tmp_path: Path) -> None:
    path = state_dir(Settings(), environ={"XDG_STATE_HOME": str(tmp_path / "xdg")})
    assert path == tmp_path / "xdg" / "cmw"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_state_dir_ignores_a_relative_xdg_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = state_dir(Settings(), environ={"XDG_STATE_HOME": "relative/dir"})
    assert path == tmp_path / ".local" / "state" / "cmw"

"""The session store: what is written comes back, across reopening and across kill -9."""

from __future__ import annotations

import signal
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.settings import Settings
from agent.store import MemoryStore, SQLiteStore, StoreError, open_store, state_dir


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
from agent.sessions import SessionManager
from agent.store import SQLiteStore

manager = SessionManager(idle_ttl_s=3600, max_sessions=10, store=SQLiteStore(sys.argv[1]),
                         upload_root=pathlib.Path(sys.argv[2]), default_provider="sim", default_model="m")
session = manager.get_or_create("victim")
for i in range(100_000):
    manager.record_turn(session, f"q{i}", f"a{i}", tokens=1, latency=0.1, ttft=0.01)
    print(i + 1, flush=True)
"""


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
    # A turn is one transaction: never a user message without its reply, never counters ahead of messages.
    assert len(loaded["history"]) == 2 * loaded["turns"]
    expected = [x for i in range(loaded["turns"]) for x in (user(f"q{i}"), assistant(f"a{i}"))]
    assert loaded["history"] == expected


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

"""Session lifecycle: creation, read-back, TTL, memory cap, retention, ending, tokens, locking, counts."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.sessions.manager import SessionManager
from agent.sessions.session import INTERRUPTED, LOG_LINES, RUN, Recent, Session
from agent.sessions.store import MemoryStore, SessionStore, SQLiteStore
from agent.settings import Settings

TTL = 100.0
RETENTION = 10_000.0


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def make(tmp_path: Path, clock: Clock, store: MemoryStore) -> Callable[..., SessionManager]:
    def factory(
        *, max_sessions: int = 10, store: SessionStore = store, retention_s: float = RETENTION
    ) -> SessionManager:
        return SessionManager(
            idle_ttl_s=TTL,
            max_sessions=max_sessions,
            retention_s=retention_s,
            store=store,
            upload_root=tmp_path / "uploads",
            default_provider="sim",
            default_model="sim-model",
            clock=clock,
        )

    return factory


@pytest.fixture
def manager(make: Callable[..., SessionManager]) -> SessionManager:
    return make()


# ---------------------------------------------------------------- creation and lookup


def test_first_get_or_create_makes_a_session_with_the_defaults(manager: SessionManager, clock: Clock) -> None:
    session = manager.get_or_create("a")
    assert (session.id, session.provider, session.model) == ("a", "sim", "sim-model")
    assert session.created == session.last_active == clock.now
    assert session.history == [] and session.turns == 0 and session.state == "idle"


def test_get_or_create_returns_the_same_session_and_touches_it(manager: SessionManager, clock: Clock) -> None:
    first = manager.get_or_create("a")
    clock.advance(5)
    assert manager.get_or_create("a") is first
    assert first.last_active == clock.now and first.created == clock.now - 5


def test_recent_keeps_only_the_last_items_in_order() -> None:
    recent = Recent(3)
    for value in range(5):
        recent.append(value)
    assert recent == [2, 3, 4] and list(recent) == [2, 3, 4]


def test_is_live_sees_only_sessions_held_now(manager: SessionManager) -> None:
    manager.get_or_create("here")
    assert manager.is_live("here") and not manager.is_live("elsewhere")


def test_get_neither_creates_nor_touches(manager: SessionManager, clock: Clock) -> None:
    assert manager.get("a") is None
    assert manager.list() == []
    session = manager.get_or_create("a")
    clock.advance(5)
    assert manager.get("a") is session
    assert session.last_active == clock.now - 5


def test_invalid_session_ids_are_refused(manager: SessionManager) -> None:
    with pytest.raises(ValueError):
        manager.get_or_create("")
    with pytest.raises(ValueError):
        manager.get_or_create("x" * 1000)
    assert manager.get("") is None


def test_list_is_most_recently_active_first(manager: SessionManager, clock: Clock) -> None:
    for sid in ("a", "b", "c"):
        manager.get_or_create(sid)
        clock.advance(1)
    manager.get_or_create("a")
    assert [s.id for s in manager.list()] == ["a", "c", "b"]


# ---------------------------------------------------------------- turns


def test_a_turn_appends_gradio_messages_and_counts(manager: SessionManager) -> None:
    session = manager.get_or_create("a")
    manager.start_turn(session, "hello")
    assert session.history == [{"role": "user", "content": "hello"}]
    assert session.state == "running"
    manager.finish_turn(session, "hi there", tokens=7, latency=1.5, ttft=0.2)
    assert session.history[-1] == {"role": "assistant", "content": "hi there"}
    assert (session.turns, session.tokens, session.errors, session.state) == (1, 7, 0, "idle")
    assert list(session.latencies) == [1.5] and list(session.ttfts) == [0.2]


def test_a_failed_turn_keeps_the_user_message_and_the_callers_notice(manager: SessionManager) -> None:
    session = manager.get_or_create("a")
    manager.start_turn(session, "hello")
    assert session.history == [{"role": "user", "content": "hello"}]  # there while the reply runs
    manager.finish_turn(session, "partial\n\n⚠️ The provider answered HTTP 503.", latency=3.0, error="http_error")
    assert session.history == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "partial\n\n⚠️ The provider answered HTTP 503."},
    ]
    assert (session.turns, session.errors) == (1, 1)
    assert list(session.ttfts) == []


def test_a_failed_turn_without_text_still_answers(manager: SessionManager) -> None:
    session = manager.get_or_create("a")
    manager.record_turn(session, "hello", "", error="timeout")
    assert session.history[-1] == {"role": "assistant", "content": "⚠️ The reply failed (timeout)."}


def test_a_second_turn_cannot_start_while_one_is_in_flight(manager: SessionManager) -> None:
    session = manager.get_or_create("a")
    manager.start_turn(session, "one")
    with pytest.raises(RuntimeError, match="already has a turn in flight"):
        manager.start_turn(session, "two")


def test_finish_without_start_is_refused(manager: SessionManager) -> None:
    with pytest.raises(RuntimeError, match="no turn in flight"):
        manager.finish_turn(manager.get_or_create("a"), "reply")


def test_the_user_message_is_stored_when_the_turn_starts(manager: SessionManager, store: MemoryStore) -> None:
    session = manager.get_or_create("a")
    manager.start_turn(session, "hello")
    manager.writer.flush()
    record = store.load("a")
    assert record["history"] == [{"role": "user", "content": "hello"}]
    assert record["pending"]["run"] == RUN and record["pending"]["pid"] == os.getpid()
    manager.finish_turn(session, "hi", tokens=2)
    manager.writer.flush()
    record = store.load("a")
    assert record["turns"] == 1 and record["tokens"] == 2 and record["pending"] is None
    assert record["history"] == session.history


def test_a_turn_cut_by_a_dead_process_reads_back_interrupted(manager: SessionManager, store: MemoryStore) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pending = {"since": 1.0, "pid": int(done.stdout), "run": "a-run-that-ended"}
    store.append_messages("cut", [{"role": "user", "content": "keep me"}],
                          meta={"id": "cut", "turns": 2, "errors": 0, "pending": pending})
    assert manager.peek("cut")["history"][-1] == {"role": "assistant", "content": INTERRUPTED}
    assert store.load("cut")["pending"] == pending  # the admin's look changes nothing
    session = manager.get_or_create("cut")
    assert [m["content"] for m in session.history] == ["keep me", INTERRUPTED]
    assert (session.turns, session.errors) == (3, 1)
    manager.writer.flush()
    record = store.load("cut")
    assert record["history"] == session.history and record["pending"] is None


def test_a_turn_in_flight_in_a_live_process_is_not_called_interrupted(
    manager: SessionManager, store: MemoryStore
) -> None:
    """Another worker (here: the parent process) is still replying: the record is read as it is."""
    pending = {"since": 1.0, "pid": os.getppid(), "run": "another-worker"}
    store.append_messages("busy", [{"role": "user", "content": "q"}], meta={"id": "busy", "pending": pending})
    assert [m["content"] for m in manager.get_or_create("busy").history] == ["q"]


def test_the_session_log_is_bounded_and_its_own(manager: SessionManager, clock: Clock) -> None:
    mine, other = manager.get_or_create("a"), manager.get_or_create("b")
    for i in range(500):
        mine.note(f"event {i}")
    assert len(mine.log) == LOG_LINES and mine.log[-1] == (clock.now, "event 499")
    assert [message for _, message in other.log] == ["session created"]


def test_clear_forgets_the_conversation_here_and_in_the_store_and_revokes_its_token(
    manager: SessionManager, store: MemoryStore
) -> None:
    session = manager.get_or_create("a")
    manager.record_turn(session, "hello", "hi")
    token = manager.token(session)
    manager.clear_history(session)
    manager.writer.flush()
    assert session.history == [] and session.turns == 1
    assert store.load("a")["history"] == []
    assert manager.come_back("another-tab", token) is False
    assert manager.come_back("another-tab", manager.token(session)) is True


def test_release_frees_a_page_view_that_never_chatted(manager: SessionManager) -> None:
    viewer = manager.conversation_id("viewer-hash")
    manager.get_or_create(viewer)
    assert manager.release("viewer-hash") is True
    assert manager.get(viewer) is None
    assert manager.counts()["ended_by_reason"] == {"unload": 1}


def test_release_keeps_a_conversation_for_the_returning_browser(manager: SessionManager) -> None:
    chatter = manager.conversation_id("chatter-hash")
    session = manager.get_or_create(chatter)
    manager.record_turn(session, "hello", "hi")
    assert manager.release("chatter-hash") is False
    assert manager.get(chatter) is session


def test_get_sees_live_and_stored_sessions(manager: SessionManager, store: MemoryStore) -> None:
    manager.get_or_create("live")
    store.save_session({"id": "stored"})
    assert manager.get("live") is not None and manager.get("stored") is not None
    assert manager.get("nobody") is None and manager.get("") is None


# ---------------------------------------------------------------- identity and tokens


def test_conversation_ids_are_derived_from_the_hash_and_are_not_hashes(manager: SessionManager) -> None:
    first, again, other = (manager.conversation_id(h) for h in ("hash-1", "hash-1", "hash-2"))
    assert first == again != other
    assert "hash-1" not in first and len(first) == 33
    assert manager.conversation_id(first) != first  # an id sent as a hash is another conversation


def test_a_token_brings_another_hash_back_to_the_conversation(manager: SessionManager) -> None:
    session = manager.get_or_create(manager.conversation_id("tab-1"))
    manager.record_turn(session, "hello", "hi")
    assert manager.come_back("tab-2", manager.token(session)) is True
    assert manager.conversation_id("tab-2") == session.id
    manager.forget_hash("tab-2")  # tab closed: its hash leads back to nothing of it
    assert manager.conversation_id("tab-2") != session.id


def test_forged_and_foreign_tokens_open_nothing(manager: SessionManager) -> None:
    session = manager.get_or_create(manager.conversation_id("victim"))
    manager.record_turn(session, "secret", "ok")
    cid, nonce, mac = manager.token(session).split(".")
    for claim in ("victim", session.id, f"{cid}.{nonce}.{'0' * 64}", f"{cid}.{'1' * 32}.{mac}", None, 7, "",
                  "x" * 10_000, f"{cid}..{mac}"):
        assert manager.come_back("attacker", claim) is False, claim
    assert manager.conversation_id("attacker") != session.id
    assert manager.counts()["aliases"] == 0


def test_a_token_survives_a_restart_on_the_same_store(make: Callable[..., SessionManager], tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    before = make(store=SQLiteStore(path))
    session = before.get_or_create(before.conversation_id("tab"))
    before.record_turn(session, "q", "a")
    token = before.token(session)
    before.close()
    after = make(store=SQLiteStore(path))
    try:
        assert after.come_back("new-tab", token) is True
        assert [m["content"] for m in after.get_or_create(after.conversation_id("new-tab")).history] == ["q", "a"]
    finally:
        after.close()


def test_aliases_stay_bounded_and_go_with_their_conversation(make: Callable[..., SessionManager]) -> None:
    manager = make(max_sessions=1)
    session = manager.get_or_create(manager.conversation_id("owner"))
    manager.record_turn(session, "q", "a")
    token = manager.token(session)
    for n in range(manager.max_aliases + 50):
        assert manager.come_back(f"tab-{n}", token)
    assert manager.counts()["aliases"] == manager.max_aliases
    manager.get_or_create("someone-else")  # frees the conversation from memory: its aliases stay
    assert manager.counts()["aliases"] == manager.max_aliases
    assert manager.end(session.id, "killed")
    assert manager.counts()["aliases"] == 0


def test_model_choice_and_files_persist(manager: SessionManager, store: MemoryStore) -> None:
    session = manager.get_or_create("a")
    manager.set_model(session, "openai", "gpt-4o-mini")
    manager.attach_file(session, "a.txt", "alpha")
    manager.attach_file(session, "b.txt", "beta")
    manager.attach_file(session, "b.txt", "beta, replaced")
    manager.writer.flush()
    record = store.load("a")
    assert (record["provider"], record["model"], record["files"]) == (
        "openai", "gpt-4o-mini", {"a.txt": "alpha", "b.txt": "beta, replaced"},
    )


def test_summary_has_the_sessions_list_fields(manager: SessionManager) -> None:
    session = manager.get_or_create("a")
    manager.attach_file(session, "a.txt", "alpha")
    manager.record_turn(session, "hello", "hi", tokens=3)
    summary = session.to_summary()
    for key in ("id", "created", "last_active", "turns", "tokens", "provider", "model", "state", "files"):
        assert key in summary
    assert summary["files"] == ["a.txt"] and summary["state"] == "idle" and summary["turns"] == 1
    detail = session.to_detail()
    assert detail["history"] == session.history and detail["files"] == {"a.txt": "alpha"}
    assert detail["log"] and {"time", "message"} <= set(detail["log"][0])


# ---------------------------------------------------------------- TTL and LRU


def test_an_idle_session_leaves_memory_after_the_ttl_and_its_conversation_stays(
    manager: SessionManager, clock: Clock, store: MemoryStore
) -> None:
    session = manager.get_or_create("a")
    manager.record_turn(session, "hello", "hi")
    clock.advance(TTL)
    assert manager.sweep() == 0  # idle for exactly the TTL is still allowed
    clock.advance(1)
    assert manager.sweep() == 1
    assert not manager.is_live("a") and session.history == [] and session.ended is None
    assert manager.counts()["expired_total"] == 1
    back = manager.get_or_create("a")
    assert back is not session and [m["content"] for m in back.history] == ["hello", "hi"]


def test_activity_postpones_expiry(manager: SessionManager, clock: Clock) -> None:
    manager.get_or_create("a")
    clock.advance(TTL - 1)
    manager.get_or_create("a")
    clock.advance(TTL - 1)
    assert manager.sweep() == 0


def test_a_running_session_never_expires(manager: SessionManager, clock: Clock) -> None:
    session = manager.get_or_create("a")
    manager.start_turn(session, "slow question")
    clock.advance(TTL * 10)
    assert manager.sweep() == 0
    assert manager.get("a") is session


def test_the_least_recently_active_session_is_evicted(make: Callable[..., SessionManager], clock: Clock) -> None:
    manager = make(max_sessions=2)
    a = manager.get_or_create("a")
    clock.advance(1)
    manager.get_or_create("b")
    clock.advance(1)
    manager.get_or_create("a")  # a is now more recent than b
    clock.advance(1)
    manager.get_or_create("c")
    assert sorted(s.id for s in manager.list()) == ["a", "c"]
    assert manager.get("a") is a
    assert manager.counts()["evicted_total"] == 1


def test_eviction_frees_empty_sessions_first_and_never_erases_a_conversation(
    make: Callable[..., SessionManager], clock: Clock, store: MemoryStore
) -> None:
    manager = make(max_sessions=3)
    chatter = manager.get_or_create("chatter")
    manager.record_turn(chatter, "remember", "ok")
    for n in range(10):  # page views that never chat, each more recent than the chatter
        clock.advance(1)
        manager.get_or_create(f"viewer-{n}")
    assert manager.is_live("chatter")  # empty ones went first
    for n in range(5):  # people who chat push it out of memory, not out of the store
        clock.advance(1)
        manager.record_turn(manager.get_or_create(f"talker-{n}"), "hi", "hello")
    assert not manager.is_live("chatter")
    manager.writer.flush()
    assert [m["content"] for m in store.load("chatter")["history"]] == ["remember", "ok"]
    assert [m["content"] for m in manager.get_or_create("chatter").history] == ["remember", "ok"]


def test_start_up_reads_nothing_and_sessions_come_back_on_demand(
    make: Callable[..., SessionManager], store: MemoryStore
) -> None:
    before = make()
    for n in range(5):
        before.record_turn(before.get_or_create(f"s{n}"), "q", "a")
    before.writer.flush()
    after = make()
    assert after.list() == [] and after.counts()["restored_total"] == 0
    assert after.get_or_create("s3").turns == 1 and after.counts()["restored_total"] == 1


def test_summaries_page_live_sessions_then_stored_ones(
    make: Callable[..., SessionManager], clock: Clock, store: MemoryStore
) -> None:
    manager = make(max_sessions=2)
    for n in range(6):
        clock.advance(1)
        manager.record_turn(manager.get_or_create(f"s{n}"), "q", "a")
    manager.writer.flush()
    everything = manager.summaries(0, 100)
    assert [(s["id"], s["state"]) for s in everything] == [
        ("s5", "idle"), ("s4", "idle"), ("s3", "stored"), ("s2", "stored"), ("s1", "stored"), ("s0", "stored")
    ]
    pages = [manager.summaries(offset, 4) for offset in (0, 4)]
    assert [s["id"] for page in pages for s in page] == [s["id"] for s in everything]
    assert all("token_nonce" not in s and "pending" not in s for s in everything)


def test_retention_deletes_conversations_idle_past_it(
    make: Callable[..., SessionManager], clock: Clock, store: MemoryStore
) -> None:
    manager = make(retention_s=RETENTION)
    old = manager.get_or_create(manager.conversation_id("old"))
    manager.record_turn(old, "q", "a")
    assert manager.come_back("old-tab-2", manager.token(old))
    clock.advance(RETENTION / 2)
    manager.record_turn(manager.get_or_create("recent"), "q", "a")
    clock.advance(RETENTION / 2 + 1)
    assert manager.sweep() >= 1
    assert store.load(old.id) is None and store.load("recent") is not None
    assert manager.counts()["aliases"] == 0 and manager.counts()["purged_total"] == 1


def test_retention_zero_keeps_conversations(make: Callable[..., SessionManager], clock: Clock,
                                            store: MemoryStore) -> None:
    manager = make(retention_s=0)
    manager.record_turn(manager.get_or_create("kept"), "q", "a")
    clock.advance(10 * RETENTION)
    manager.sweep()
    manager.writer.flush()
    assert store.load("kept") is not None


def test_a_running_session_is_never_evicted(make: Callable[..., SessionManager], clock: Clock) -> None:
    manager = make(max_sessions=2)
    a = manager.get_or_create("a")
    manager.start_turn(a, "slow question")  # a is the least recently active, but running
    clock.advance(1)
    manager.get_or_create("b")
    clock.advance(1)
    manager.get_or_create("c")
    assert sorted(s.id for s in manager.list()) == ["a", "c"]


async def test_a_session_holding_its_lock_is_never_evicted(make: Callable[..., SessionManager], clock: Clock) -> None:
    manager = make(max_sessions=1)
    a = manager.get_or_create("a")
    async with a.lock:
        clock.advance(1)
        manager.get_or_create("b")
        assert manager.get("a") is a


def test_when_every_session_runs_the_cap_is_exceeded_then_trimmed(
    make: Callable[..., SessionManager], clock: Clock
) -> None:
    manager = make(max_sessions=1)
    a = manager.get_or_create("a")
    manager.start_turn(a, "q")
    clock.advance(1)
    b = manager.get_or_create("b")
    manager.start_turn(b, "q")
    assert len(manager.list()) == 2
    manager.finish_turn(a, "done")
    assert manager.sweep() == 1
    assert [s.id for s in manager.list()] == ["b"]


# ---------------------------------------------------------------- ending


def test_end_frees_everything_and_deletes_the_record(manager: SessionManager, store: MemoryStore) -> None:
    session = manager.get_or_create("a")
    folder = manager.upload_dir(session)
    (folder / "upload.txt").write_text("data")
    manager.attach_file(session, "upload.txt", "data")
    manager.record_turn(session, "hello", "hi")
    token = manager.token(session)
    assert manager.end("a", "killed") is True
    assert manager.come_back("tab", token) is False
    assert not folder.exists()
    assert store.load("a") is None and manager.get("a") is None
    assert (session.history, session.files, list(session.log), session.upload_dir) == ([], {}, [], None)
    assert session.ended == "killed"
    assert manager.counts()["ended_by_reason"] == {"killed": 1}


def test_end_of_an_unknown_session_is_false(manager: SessionManager) -> None:
    assert manager.end("nobody", "killed") is False


def test_end_reaches_a_session_only_in_the_store(manager: SessionManager, store: MemoryStore) -> None:
    store.save_session({"id": "elsewhere", "turns": 1})
    assert manager.end("elsewhere", "killed") is True
    assert store.load("elsewhere") is None


def test_a_reply_finishing_after_a_kill_is_not_persisted(manager: SessionManager, store: MemoryStore) -> None:
    session = manager.get_or_create("a")
    manager.start_turn(session, "hello")
    manager.end("a", "killed")
    manager.finish_turn(session, "late reply")
    manager.writer.flush()
    assert store.load("a") is None
    assert manager.get("a") is None


def test_upload_dir_is_private_and_not_steered_by_the_id(manager: SessionManager, tmp_path: Path) -> None:
    session = manager.get_or_create("../../escape")
    folder = manager.upload_dir(session)
    assert folder.parent == tmp_path / "uploads"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert manager.upload_dir(session) == folder


def test_counts(make: Callable[..., SessionManager], clock: Clock) -> None:
    manager = make(max_sessions=2)
    a = manager.get_or_create("a")
    clock.advance(1)
    manager.get_or_create("b")
    manager.start_turn(a, "q")
    clock.advance(1)
    manager.get_or_create("c")  # evicts b (a runs)
    manager.end("c", "killed")
    assert manager.counts() == {
        "active": 1,
        "running": 1,
        "created_total": 3,
        "restored_total": 0,
        "evicted_total": 1,
        "expired_total": 0,
        "ended_total": 2,
        "ended_by_reason": {"evicted": 1, "killed": 1},
        "purged_total": 0,
        "aliases": 0,
        "store_errors": 0,
    }


# ---------------------------------------------------------------- restore after a restart


def test_a_restart_reads_back_every_stored_session(make: Callable[..., SessionManager], tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    before = make(store=SQLiteStore(path))
    session = before.get_or_create("browser-1")
    before.set_model(session, "openrouter", "some/model")
    before.attach_file(session, "a.txt", "alpha")
    before.record_turn(session, "q1", "a1", tokens=4)
    before.record_turn(session, "q2", "a2", tokens=5)
    before.get_or_create("never-chatted")  # nothing to persist yet
    before.close()

    after = make(store=SQLiteStore(path))
    try:
        assert after.list() == []
        assert [s["id"] for s in after.summaries()] == ["browser-1"]
        restored = after.get_or_create("browser-1")
        assert after.counts()["restored_total"] == 1
        assert [m["content"] for m in restored.history] == ["q1", "a1", "q2", "a2"]
        assert (restored.turns, restored.tokens) == (2, 9)
        assert (restored.provider, restored.model) == ("openrouter", "some/model")
        assert restored.files == {"a.txt": "alpha"}
        assert restored.created == session.created
        assert after.get("never-chatted") is None
    finally:
        after.close()


def test_get_or_create_restores_a_record_written_elsewhere(manager: SessionManager, store: MemoryStore) -> None:
    history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    store.append_messages(
        "other-worker", history, meta={"id": "other-worker", "turns": 1, "provider": "openai", "model": "x"}
    )
    session = manager.get_or_create("other-worker")
    assert session.history == history and session.turns == 1 and session.provider == "openai"
    assert manager.counts()["restored_total"] == 1 and manager.counts()["created_total"] == 0


def test_get_finds_a_persisted_session_for_the_admin(manager: SessionManager, store: MemoryStore) -> None:
    store.save_session({"id": "persisted", "turns": 3})
    assert manager.peek("persisted")["turns"] == 3 and manager.peek("persisted")["state"] == "stored"
    assert not manager.is_live("persisted")  # looking does not load it


def test_from_settings_uses_the_state_dir_and_reaps_dead_uploads(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / "uploads" / done.stdout.strip()
    dead.mkdir(parents=True)
    settings = Settings(sessions={"idle_ttl_s": 60, "max_sessions": 5}, llm={"provider": "sim", "model": "m1"})
    manager = SessionManager.from_settings(settings, tmp_path)
    try:
        assert isinstance(manager.store, SQLiteStore) and (tmp_path / "sessions.db").exists()
        assert manager.upload_root == tmp_path / "uploads" / str(os.getpid())
        assert not dead.exists()
        assert (manager.idle_ttl_s, manager.max_sessions, manager.default_model) == (60, 5, "m1")
    finally:
        manager.close()


# ---------------------------------------------------------------- concurrency


async def test_the_lock_serialises_two_submits_of_one_session(manager: SessionManager) -> None:
    session = manager.get_or_create("a")
    order: list[str] = []
    first_inside, release_first, second_trying = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def submit(name: str, inside: asyncio.Event | None, release: asyncio.Event | None) -> None:
        if inside is None:
            second_trying.set()
        async with session.lock:
            manager.start_turn(session, name)
            order.append(f"{name} start")
            if inside is not None and release is not None:
                inside.set()
                await release.wait()
            manager.finish_turn(session, f"reply to {name}")
            order.append(f"{name} end")

    first = asyncio.create_task(submit("one", first_inside, release_first))
    await first_inside.wait()
    second = asyncio.create_task(submit("two", None, None))
    await second_trying.wait()  # the second submit is now blocked on the lock
    assert order == ["one start"] and session.state == "running"
    release_first.set()
    await asyncio.wait_for(asyncio.gather(first, second), timeout=10)
    assert order == ["one start", "one end", "two start", "two end"]
    assert [m["content"] for m in session.history] == ["one", "reply to one", "two", "reply to two"]


async def test_two_sessions_reply_in_parallel(manager: SessionManager) -> None:
    x, y = manager.get_or_create("x"), manager.get_or_create("y")
    x_inside, y_inside = asyncio.Event(), asyncio.Event()

    async def submit(session: Session, mine: asyncio.Event, theirs: asyncio.Event) -> None:
        async with session.lock:
            manager.start_turn(session, "q")
            mine.set()
            await theirs.wait()  # only returns if the other session is generating at the same time
            manager.finish_turn(session, "a")

    # A deadlock here (caught by the timeout) would mean one session's reply waits for the other's.
    await asyncio.wait_for(asyncio.gather(submit(x, x_inside, y_inside), submit(y, y_inside, x_inside)), timeout=10)
    assert x.turns == y.turns == 1


async def test_the_sweeper_frees_expired_sessions(manager: SessionManager, clock: Clock) -> None:
    manager.get_or_create("a")
    clock.advance(TTL + 1)
    swept = asyncio.Event()
    loop = asyncio.get_running_loop()
    original = manager.sweep

    def sweep() -> int:
        ended = original()
        loop.call_soon_threadsafe(swept.set)
        return ended

    manager.sweep = sweep  # type: ignore[method-assign]
    task = asyncio.create_task(manager.run_sweeper(0.01))
    try:
        await asyncio.wait_for(swept.wait(), timeout=10)
    finally:
        task.cancel()
    assert not manager.is_live("a")

"""The Redis session store against a real redis-server on a free loopback port.

Skipped, with the reason, when redis-server is not installed (.ci/run installs the Debian package).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sessions.store import RedisStore, StoreError, open_store

pytestmark = pytest.mark.services

REDIS_SERVER = shutil.which("redis-server") or next(
    (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).exists()), None
)
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (apt-get install redis-server; .ci/run does)"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_redis(workdir: Path, *extra: str) -> Iterator[str]:
    """redis-server on a free loopback port, no persistence files outside ``workdir``; yields its URL."""
    assert REDIS_SERVER is not None
    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
           "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning", *extra]
    log = open(workdir / "redis.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(workdir / 'redis.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not listen within 20 s")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


def flush(url: str) -> None:
    """Empties the test database, so the next RedisStore opens (and migrates) a fresh one."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    flush(redis_url)
    made = RedisStore(redis_url)
    yield made
    made.close()


def meta(session_id: str = "s1", **extra: object) -> dict[str, object]:
    return {"id": session_id, "created": 1.0, "last_active": 2.0, "provider": "sim", "model": "m", "turns": 0, **extra}


def msg(role: str, text: str) -> dict[str, str]:
    return {"role": role, "content": text}


@needs_redis
def test_open_store_gives_a_redis_store(redis_url: str, tmp_path: Path) -> None:
    made = open_store(redis_url, tmp_path)
    try:
        assert isinstance(made, RedisStore)
    finally:
        made.close()


@needs_redis
def test_saved_session_loads_with_history_and_files(store: RedisStore) -> None:
    assert store.load("s1") is None
    store.save_session(meta())
    store.append_messages("s1", [msg("user", "hi"), msg("assistant", "hello")], meta=meta(turns=1))
    store.save_file("s1", "notes.txt", "text", meta=meta(turns=1))
    assert store.load("s1") == {
        **meta(turns=1), "history": [msg("user", "hi"), msg("assistant", "hello")], "files": {"notes.txt": "text"},
    }
    store.delete_file("s1", "notes.txt")
    store.clear_messages("s1")
    assert store.load("s1") == {**meta(turns=1), "history": [], "files": {}}


@needs_redis
def test_another_process_sees_every_write(store: RedisStore, redis_url: str) -> None:
    other = RedisStore(redis_url)
    try:
        for i in range(3):
            store.append_messages("s1", [msg("user", f"q{i}"), msg("assistant", f"a{i}")], meta=meta(turns=i + 1))
        loaded = other.load("s1")
        assert loaded is not None and loaded["turns"] == 3
        assert [m["content"] for m in loaded["history"]] == ["q0", "a0", "q1", "a1", "q2", "a2"]
        store.save_session(meta("s2", created=5.0))
        assert other.list_ids() == ["s1", "s2"]
        assert [s["id"] for s in other.list_page()] == ["s2", "s1"]
    finally:
        other.close()


@needs_redis
def test_messages_without_a_session_row_are_not_a_session(store: RedisStore) -> None:
    store.append_messages("ghost", [msg("user", "hi")])
    assert store.load("ghost") is None
    assert "ghost" not in store.list_ids()


@needs_redis
def test_delete_removes_everything(store: RedisStore) -> None:
    store.save_file("s1", "a.txt", "x", meta=meta())
    store.append_messages("s1", [msg("user", "hi")], meta=meta())
    assert store.delete("s1") is True
    assert store.load("s1") is None
    assert store.list_ids() == []
    assert sorted(store._redis.keys("cmw:*")) == ["cmw:migrations", "cmw:schema"]  # the store's own, not the session's
    assert store.delete("s1") is False


@needs_redis
def test_a_stale_copy_never_deletes_a_newer_record(store: RedisStore, redis_url: str) -> None:
    """Worker A read the session, worker B then wrote a turn: A's expiry of its stale copy must not delete it."""
    store.append_messages("s1", [msg("user", "q0")], meta=meta(last_active=10.0))
    other = RedisStore(redis_url)
    try:
        assert other.load("s1") is not None  # other now holds a copy at last_active=10
        store.append_messages("s1", [msg("user", "q1")], meta=meta(last_active=20.0))
        assert other.delete("s1") is False
        assert store.load("s1") is not None
        # The writer itself (the owner) may delete, and so may a process that never saw the session.
        assert store.delete("s1") is True
    finally:
        other.close()


@needs_redis
def test_unreachable_redis_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"redis://u:\*{8}@127\.0\.0\.1:\d+/0: cannot connect"):
        RedisStore(f"redis://u:secret@127.0.0.1:{_free_port()}/0")


@needs_redis
def test_list_page_skips_and_drops_ids_whose_meta_is_gone(store: RedisStore) -> None:
    for sid, active in [("a", 3.0), ("b", 2.0), ("c", 1.0)]:
        store.save_session(meta(sid, last_active=active))
    store._redis.delete("cmw:session:b")  # e.g. removed by hand
    assert [m["id"] for m in store.list_page()] == ["a", "c"]
    assert [m["id"] for m in store.list_page(1, 1)] == ["c"]
    assert store._redis.zrange("cmw:active", 0, -1) == ["c", "a"] and store.count() == 2
    assert store.list_ids() == ["a", "c"]


@needs_redis
def test_purge_keeps_a_session_whose_score_lags_its_meta(store: RedisStore) -> None:
    """The sorted set is only the candidate list: the meta decides, and a wrong score is put right."""
    store.append_messages("s1", [msg("user", "hi")], meta=meta(last_active=50.0))
    store._redis.zadd("cmw:active", {"s1": 1.0})
    assert store.purge_inactive(10.0) == []
    assert store._redis.zscore("cmw:active", "s1") == 50.0
    assert store.load("s1")["history"] == [msg("user", "hi")]
    assert store.purge_inactive(60.0) == ["s1"]
    assert sorted(store._redis.keys("cmw:*")) == ["cmw:migrations", "cmw:schema"]


@needs_redis
def test_a_purge_forgets_what_this_process_saw(store: RedisStore, redis_url: str) -> None:
    """After a purge this process holds no copy, so it is no stale holder of a session that comes back."""
    store.save_session(meta(last_active=5.0))
    assert store.purge_inactive(10.0) == ["s1"]
    other = RedisStore(redis_url)
    try:
        other.save_session(meta(last_active=20.0))
    finally:
        other.close()
    assert store.delete("s1") is True


@needs_redis
def test_every_worker_shares_one_key_and_it_is_stored_as_hex(store: RedisStore, redis_url: str) -> None:
    others = [RedisStore(redis_url) for _ in range(3)]
    try:
        keys = {other.key("session-token") for other in others} | {store.key("session-token")}
        assert len(keys) == 1
        assert bytes.fromhex(store._redis.get("cmw:key:session-token")) == keys.pop()
    finally:
        for other in others:
            other.close()


@needs_redis
def test_a_damaged_key_is_a_store_error_that_does_not_show_it(store: RedisStore, redis_url: str) -> None:
    store._redis.set("cmw:key:session-token", "abcd")
    fresh = RedisStore(redis_url)
    try:
        with pytest.raises(StoreError, match="does not hold a 32-byte key") as caught:
            fresh.key("session-token")
        assert "abcd" not in str(caught.value)
    finally:
        fresh.close()

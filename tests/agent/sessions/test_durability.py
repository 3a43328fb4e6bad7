"""No lost message, no stalled loop: a real server killed mid-reply, drained, and behind a stalling Redis."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.app.admin import token_path
from agent.loadtest.protocol import user_texts
from agent.settings import SimSettings
from agent.simulator import Simulator, running_simulator
from tests.agent.sessions.test_store_redis import REDIS_SERVER, running_redis
from tests.raw import call, event
from tests.servers import RunningServer, cmw_server

pytestmark = pytest.mark.server

# A reply of ~10 s: long enough to be cut in the middle.
LONG = SimSettings(ttft_ms=10, tokens_per_second=40, reply_tokens=400, jitter=0)


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[Simulator]:
    """Outside the server, so killing the server with -9 leaves no orphaned simulator."""
    with running_simulator(LONG, host="127.0.0.1", port=0) as simulator:
        yield simulator


def admin_get(server: RunningServer, path: str) -> httpx.Response:
    token = token_path(server.state_dir).read_text().strip()
    return httpx.get(f"{server.url}/admin/api/{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def start_chat(server: RunningServer, session_hash: str, text: str) -> tuple[threading.Thread, threading.Event,
                                                                              list[Any]]:
    """Send a message in the background; the event is set once the reply has begun to stream."""
    chat = event(server.url, api_name="chat")
    streaming = threading.Event()
    result: list[Any] = []

    def seen(outputs: list[Any]) -> None:
        history = outputs[0] if outputs else []
        if history and history[-1]["role"] == "assistant" and history[-1]["content"]:
            streaming.set()

    thread = threading.Thread(target=lambda: result.append(
        call(server.url, chat.fn_index, [text], session_hash, timeout=60, on_update=seen)), daemon=True)
    thread.start()
    return thread, streaming, result


def test_kill_9_mid_reply_keeps_the_message_and_shows_the_reply_interrupted(
    tmp_path: Path, slow_sim: Simulator
) -> None:
    settings = ("llm.provider=\"custom\"", f"llm.base_url=\"{slow_sim.base_url}\"")
    session_hash = f"cut-{secrets.token_hex(6)}"
    with cmw_server(tmp_path, *settings) as first:
        thread, streaming, _ = start_chat(first, session_hash, "please do not lose this")
        assert streaming.wait(30), first.log()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        thread.join(30)
    with cmw_server(tmp_path, *settings) as second:
        detail = admin_get(second, f"sessions/{session_hash}")
        assert detail.status_code == 200, detail.text
        history = detail.json()["history"]
        assert [(m["role"], m["content"]) for m in history] == [
            ("user", "please do not lose this"), ("assistant", "[interrupted]")
        ]
        chat = event(second.url, api_name="chat")
        after = call(second.url, chat.fn_index, ["still there?"], session_hash, timeout=60)
        assert after.ok, after.error
        assert user_texts(after.outputs[0]) == ["please do not lose this", "still there?"]


def test_the_sigterm_drain_refuses_api_calls_as_it_refuses_joins(tmp_path: Path, slow_sim: Simulator) -> None:
    with cmw_server(tmp_path, "llm.provider=\"custom\"", f"llm.base_url=\"{slow_sim.base_url}\"",
                    "server.shutdown_grace_s=30") as running:
        thread, streaming, result = start_chat(running, f"drain-{secrets.token_hex(6)}", "finish me")
        assert streaming.wait(30)
        os.kill(running.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while admin_get(running, "health").json()["status"] != "draining":  # polled: the signal is async
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = httpx.post(f"{running.url}/gradio_api/call/chat", json={"data": ["sneak in"]}, timeout=10)
        assert refused.status_code == 503, refused.text
        assert "shutting down" in refused.json()["detail"]
        thread.join(60)
        assert result and result[0].ok, result
        assert running.proc.wait(30) == 0
        assert "sneak in" not in running.log()


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (apt-get install redis-server)")
def test_a_3_second_redis_stall_does_not_pause_another_sessions_stream(tmp_path: Path) -> None:
    """DEBUG SLEEP 3 blocks Redis while a new session arrives (its store read and turn writes wait for Redis);
    the session already in memory streams on: store I/O is off the event loop."""
    import redis

    with running_redis(tmp_path / "redis", "--enable-debug-command", "local") as url:
        steady = ("sim.ttft_ms=10", "sim.tokens_per_second=50", "sim.reply_tokens=300", "sim.jitter=0")
        with cmw_server(tmp_path, f"sessions.store=\"{url}\"", *steady) as running:
            chat = event(running.url, api_name="chat")
            session_hash = f"steady-{secrets.token_hex(6)}"
            warm = call(running.url, chat.fn_index, ["warm up"], session_hash, timeout=60)  # now in memory
            assert warm.ok, warm.error
            arrivals: list[float] = []
            streaming, sleeping = threading.Event(), threading.Event()
            stall: list[float] = []

            def seen(outputs: list[Any]) -> None:
                arrivals.append(time.monotonic())
                if len(arrivals) == 5:
                    streaming.set()

            def sleep_redis() -> None:
                sleeping.set()
                stall.append(time.monotonic())
                redis.Redis.from_url(url).execute_command("DEBUG", "SLEEP", "3")
                stall.append(time.monotonic())

            steady_chat = threading.Thread(target=lambda: call(
                running.url, chat.fn_index, ["keep going"], session_hash, timeout=60, on_update=seen), daemon=True)
            steady_chat.start()
            assert streaming.wait(30)
            sleeper = threading.Thread(target=sleep_redis, daemon=True)
            sleeper.start()
            assert sleeping.wait(10)
            # A newcomer now needs the store (read its session, write its turn) while Redis sleeps.
            newcomer = call(running.url, chat.fn_index, ["hello"], f"new-{secrets.token_hex(6)}", timeout=60)
            sleeper.join(30)
            steady_chat.join(60)
            assert newcomer.ok, newcomer.error
            began, ended = stall
            assert ended - began >= 2.9 and arrivals[-1] > ended  # Redis did stall, and the reply outlasted it
            during = [t for t in arrivals if began - 1 <= t <= ended + 1]
            gaps = [b - a for a, b in zip(during, during[1:], strict=False)]
            assert max(gaps) < 1.0, max(gaps)

"""The served app, end to end: real `cmw serve`, real simulator, real gradio_client and raw HTTP."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

from agent.fingerprints import fingerprint, parse_reply_header
from agent.settings import SimSettings
from agent.simulator import Simulator, running_simulator
from tests.servers import RunningServer, cmw_server

pytestmark = pytest.mark.server

# ~0.5 s replies: long enough that concurrent chats overlap, short enough for a quick suite.
SLOW = SimSettings(ttft_ms=100, tokens_per_second=40, reply_tokens=16, jitter=0)
# A load-test canary: a message carrying one gets the simulator's fingerprints header, which proves the
# turns the "LLM" saw; without one a person gets a readable reply.
TAG = "cw0-0000"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with running_simulator(SLOW, host="127.0.0.1", port=0) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sim: Simulator) -> Iterator[RunningServer]:
    """balanced profile; the default provider is the embedded simulator, `custom` is the test's own."""
    tmp = tmp_path_factory.mktemp("app")
    with cmw_server(
        tmp,
        "sim.ttft_ms=20", "sim.tokens_per_second=400", "sim.reply_tokens=12",
        "llm.providers=[\"sim\", \"custom\"]", f"llm.base_url=\"{sim.base_url}\"",
        "llm.timeout_s=3", "llm.max_retries=0",
    ) as running:
        yield running


def client(server: RunningServer) -> Client:
    return Client(server.url, verbose=False)


def text_of(message: dict) -> str:
    content = message["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def chat(c: Client, message: str) -> list[dict]:
    history, _ = c.predict(message, api_name="/chat")
    return history


def peak_after(sim: Simulator, fn) -> int:  # type: ignore[no-untyped-def]
    sim.counters.peak_active_requests = sim.counters.active_requests
    fn()
    return sim.counters.peak_active_requests


def test_reply_streams_and_reflects_only_its_own_session(server: RunningServer) -> None:
    users = [client(server) for _ in range(4)]

    def converse(index: int) -> list[dict]:
        chat(users[index], f"{TAG} user {index} first")
        return chat(users[index], f"{TAG} user {index} second")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        histories = list(pool.map(converse, range(4)))
    for index, history in enumerate(histories):
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        header = parse_reply_header(text_of(history[-1]))
        assert header == (2, [fingerprint(f"{TAG} user {index} first"), fingerprint(f"{TAG} user {index} second")])


def test_a_person_gets_a_readable_reply_that_echoes_them_and_no_fingerprints(server: RunningServer) -> None:
    user = client(server)
    chat(user, "hello")
    reply = text_of(chat(user, "what is a load test?")[-1])
    assert reply.startswith("You said \u201cwhat is a load test?\u201d, your 2nd message in this")  # 12 tokens
    assert parse_reply_header(reply) is None and "fp=" not in reply


def test_run_route_cannot_bypass_the_queue(server: RunningServer) -> None:
    response = httpx.post(f"{server.url}/gradio_api/run/chat", json={"data": ["sneak in"]}, timeout=10)
    assert response.status_code == 404


def test_gradio_monitoring_and_deep_links_are_closed(server: RunningServer) -> None:
    user = client(server)
    chat(user, "remember me")
    # Gradio's traffic summary would answer anyone; its deep links would write this session's chat to disk.
    assert httpx.get(f"{server.url}/monitoring/summary", timeout=10).status_code == 403
    deep = httpx.get(f"{server.url}/gradio_api/deep_link", params={"session_hash": user.session_hash}, timeout=10)
    assert deep.status_code == 404


def test_chats_in_flight_reach_but_never_exceed_the_chat_limit(server: RunningServer, sim: Simulator) -> None:
    users = [client(server) for _ in range(6)]
    for user in users:
        user.predict("custom", api_name="/set_provider")

    def burst() -> None:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda pair: chat(pair[1], f"burst {pair[0]}"), enumerate(users)))

    assert peak_after(sim, burst) == 3  # balanced: events.chat_concurrency_limit = 3


def test_an_overlong_message_is_refused_with_a_clear_error(server: RunningServer) -> None:
    user = client(server)
    with pytest.raises(Exception, match="limit is 20,000"):
        chat(user, "x" * 20_001)
    assert parse_reply_header(text_of(chat(user, f"{TAG} short")[-1])) == (1, [fingerprint(f"{TAG} short")])


def test_stop_ends_the_reply_and_the_session_chats_on(server: RunningServer) -> None:
    user = client(server)
    user.predict("custom", api_name="/set_provider")  # the test's simulator: ~0.5 s replies
    job = user.submit(f"{TAG} stop me", api_name="/chat")
    for _ in job:  # the reply is under way
        break
    job.cancel()
    history = chat(user, f"{TAG} after the stop")
    assert [text_of(m) for m in history if m["role"] == "user"] == [f"{TAG} stop me", f"{TAG} after the stop"]
    assert text_of(history[1]).endswith("[stopped]")
    assert parse_reply_header(text_of(history[-1])) == (2, [fingerprint(f"{TAG} stop me"),
                                                            fingerprint(f"{TAG} after the stop")])


def test_stats_count_running_chats_against_their_limit(server: RunningServer) -> None:
    users = [client(server) for _ in range(3)]
    for user in users:
        user.predict("custom", api_name="/set_provider")  # the test's simulator: ~0.5 s replies
    watcher = client(server)
    jobs = [user.submit(f"running {i}", api_name="/chat") for i, user in enumerate(users)]
    seen, deadline = 0, time.monotonic() + 30
    while seen < 3 and time.monotonic() < deadline and not all(job.done() for job in jobs):
        seen = max(seen, watcher.predict(api_name="/stats")["server"]["events"]["chat"]["running"])
    for job in jobs:
        job.result(timeout=30)
    assert seen == 3


def test_provider_is_chosen_per_session(server: RunningServer, sim: Simulator) -> None:
    switched, default = client(server), client(server)
    switched.predict("custom", api_name="/set_provider")
    before = sim.counters.completions
    chat(default, "stays on the embedded simulator")
    assert sim.counters.completions == before
    chat(switched, "goes to the custom provider")
    assert sim.counters.completions == before + 1


def test_attached_text_file_joins_the_sessions_context(server: RunningServer, tmp_path: Path) -> None:
    note = tmp_path / "notes.txt"
    note.write_text("the secret word is pineapple")
    user = client(server)
    info = user.predict([handle_file(str(note))], api_name="/attach")
    assert "notes.txt attached" in info
    stats = user.predict(api_name="/stats")
    assert stats["this_session"]["turns"] == 0


def test_binary_upload_is_refused_with_a_message(server: RunningServer, tmp_path: Path) -> None:
    blob = tmp_path / "image.txt"
    blob.write_bytes(b"\x89PNG\x00\x00binary")
    info = client(server).predict([handle_file(str(blob))], api_name="/attach")
    assert "not a text file" in info


@pytest.mark.parametrize("fault", ["error:500", "error:429", "disconnect", "stall", "malformed"])
def test_every_simulator_fault_gives_a_clear_chat_error_while_others_chat(server: RunningServer, fault: str) -> None:
    broken, healthy = client(server), client(server)
    broken.predict("custom", api_name="/set_provider")
    broken.predict(f"cmw-sim@{fault}", api_name="/set_model")

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        failing = pool.submit(chat, broken, "will fail")
        fine = pool.submit(chat, healthy, f"{TAG} still served")
        failed_history, good_history = failing.result(), fine.result()

    assert text_of(failed_history[-2]) == "will fail"  # the user's message is kept
    assert "⚠️" in text_of(failed_history[-1])
    assert parse_reply_header(text_of(good_history[-1])) == (1, [fingerprint(f"{TAG} still served")])


def test_stats_report_limits_and_this_sessions_turns(server: RunningServer) -> None:
    user = client(server)
    chat(user, "count me")
    stats = user.predict(api_name="/stats")
    assert stats["this_session"]["turns"] == 1
    events = stats["server"]["events"]
    assert {name: fig["limit"] for name, fig in events.items()} == {
        "chat": 3, "file_upload": 2, "stats_refresh": 5, "logs_refresh": 5,
    }


def test_logs_show_this_session_and_never_another(server: RunningServer) -> None:
    mine, other = client(server), client(server)
    chat(other, "other session")
    other.predict("custom", api_name="/set_provider")
    chat(mine, "my session")
    logs = mine.predict(api_name="/logs")
    assert "# start-up" in logs and "turn 1" in logs
    assert "provider set to custom" not in logs


def test_master_switch_off_gives_a_sequential_app(tmp_path: Path, sim: Simulator) -> None:
    with cmw_server(
        tmp_path, "enable_concurrent_processing=false", "llm.provider=\"custom\"", f"llm.base_url=\"{sim.base_url}\"",
    ) as sequential:
        users = [client(sequential) for _ in range(3)]

        def burst() -> None:
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                list(pool.map(lambda pair: chat(pair[1], f"seq {pair[0]}"), enumerate(users)))

        assert peak_after(sim, burst) == 1


def test_eviction_frees_the_least_recently_used_session(tmp_path: Path) -> None:
    with cmw_server(tmp_path, "sessions.max_sessions=2", "sim.ttft_ms=0", "sim.reply_tokens=3") as small:
        first, second, third = client(small), client(small), client(small)
        chat(first, "one")
        chat(second, "two")
        chat(third, "three")
        counts = third.predict(api_name="/stats")["server"]["sessions"]
        assert counts["active"] == 2
        assert counts["evicted_total"] == 1
        assert first.predict(api_name="/stats")["this_session"] == {}  # evicted: nothing of it is left


def test_sigterm_lets_in_flight_replies_finish_and_exits_zero(tmp_path: Path, sim: Simulator) -> None:
    with cmw_server(tmp_path, "llm.provider=\"custom\"", f"llm.base_url=\"{sim.base_url}\"") as running:
        user = client(running)
        job = user.submit(f"{TAG} finish me", api_name="/chat")
        for _ in job:  # the first streamed update: the reply is in flight
            break
        os.kill(running.proc.pid, signal.SIGTERM)
        history, _ = job.result(timeout=30)
        assert parse_reply_header(text_of(history[-1])) == (1, [fingerprint(f"{TAG} finish me")])
        assert running.proc.wait(30) == 0


def test_serve_against_a_separately_started_cmw_sim(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.servers import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmw_cli.main", "sim", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the simulator prints its URL once it listens
        with cmw_server(tmp_path, extra_args=("--llm", f"http://127.0.0.1:{port}/v1")) as running:
            history = chat(client(running), f"{TAG} via cmw sim")
            assert parse_reply_header(text_of(history[-1])) == (1, [fingerprint(f"{TAG} via cmw sim")])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0

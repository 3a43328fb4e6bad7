"""`--agent`: an operator's Runnable, async generator or factory in cmw's UI, and bad specs refused at start."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.agents.custom import load
from agent.settings import ConfigError, SimSettings, load_settings
from agent.simulator import Simulator, reply_text, running_simulator
from tests.asgi import InProcess, in_process

IN_LOOP = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "word_stats_agent.py"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with running_simulator(SimSettings(ttft_ms=0, tokens_per_second=2000, reply_tokens=12, jitter=0), port=0) as s:
        yield s


async def serving(factory: str, sim: Simulator, state_dir: Path) -> Any:
    loaded = load_settings("balanced", ["sessions.store=memory", f"agent.factory={factory}"], environ={},
                           env_file=None)
    return in_process(loaded, state_dir, sim.base_url)


@pytest_asyncio.fixture(loop_scope="session")
async def example(sim: Simulator, tmp_path: Path) -> AsyncIterator[InProcess]:
    async with await serving(f"{EXAMPLE}:agent", sim, tmp_path) as app:
        yield app


def text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def steps_and_reply(chatbot: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    return [m for m in chatbot if m.get("metadata")], text_of(chatbot[-1])


@IN_LOOP
async def test_the_example_agent_shows_its_tool_step_then_the_models_answer(example: InProcess) -> None:
    chatbot, _ = await example.call("chat", ["three words here"], "example-user")
    steps, reply = steps_and_reply(chatbot)
    assert [s["metadata"]["title"] for s in steps] == ["🛠️ word_stats"]
    assert steps[0]["metadata"]["status"] == "done"
    assert "3 words" in text_of(steps[0])
    assert reply == reply_text(["three words here"], 12)  # streamed from the session's chat model (the simulator)


@IN_LOOP
async def test_a_runnable_streams_its_tool_run_and_model_tokens(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAMPLE_AGENT_LLM_URL", sim.base_url)
    async with await serving("tests.agent.agents.sample_agents:runnable", sim, tmp_path) as app:
        chatbot, _ = await app.call("chat", ["hello there"], "runnable-user")
    steps, reply = steps_and_reply(chatbot)
    assert [(s["metadata"]["title"], text_of(s)) for s in steps] == [("🛠️ shout", "HELLO THERE")]
    assert reply_text(["hello there"], 12) in reply  # "..., your first message in this conversation. ..."


@IN_LOOP
async def test_a_factory_gives_each_session_its_own_agent(sim: Simulator, tmp_path: Path) -> None:
    async with await serving("tests.agent.agents.sample_agents:counting", sim, tmp_path) as app:
        for _ in range(2):
            first, _ = await app.call("chat", ["hi"], "session-a")
        second, _ = await app.call("chat", ["hi"], "session-b")
    assert steps_and_reply(first)[1].startswith("turn 2")
    assert steps_and_reply(second)[1].startswith("turn 1")  # session-a's count never reached session-b


@IN_LOOP
async def test_an_agent_that_raises_fails_the_turn_and_the_session_chats_on(sim: Simulator, tmp_path: Path) -> None:
    async with await serving("tests.agent.agents.sample_agents:broken", sim, tmp_path) as app:
        chatbot, _ = await app.call("chat", ["one"], "unlucky")
        assert "half a reply" in steps_and_reply(chatbot)[1] and "⚠️" in steps_and_reply(chatbot)[1]
        chatbot, _ = await app.call("chat", ["two"], "unlucky")
    assert [m["role"] for m in chatbot] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("no_such_module_anywhere:agent", "no module named 'no_such_module_anywhere'"),
        ("tests.agent.agents.sample_agents:missing", "has no attribute 'missing'"),
        ("tests.agent.agents.sample_agents:NOT_AN_AGENT", "int is not a LangChain Runnable"),
        ("/nowhere/agent.py:agent", "no such file /nowhere/agent.py"),
    ],
)
def test_a_bad_spec_is_one_clear_line(spec: str, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load(spec)
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_the_example_loads_from_its_path() -> None:
    assert callable(load(f"{EXAMPLE}:agent"))


@pytest.mark.parametrize(
    "spec", ["no_such_module_anywhere:agent", "examples/word_stats_agent.py:nothing", "not-a-spec"]
)
def test_cmw_serve_with_a_bad_agent_exits_2_with_one_line(spec: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cmw_cli", "serve", "--port", "0", "--agent", spec,
         "--set", f"server.state_dir={tmp_path}"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in done.stderr


@IN_LOOP
async def test_stop_during_a_running_step_ends_it_and_the_history_keeps_what_happened(
    sim: Simulator, tmp_path: Path
) -> None:
    from tests.agent.agents import sample_agents

    sample_agents.STEP_STARTED.clear()
    async with await serving("tests.agent.agents.sample_agents:hanging", sim, tmp_path) as app:
        body = {"data": ["hang"], "fn_index": app.fn_index["chat"], "session_hash": "stopper", "event_data": None,
                "trigger_id": None}
        event_id = (await app.http.post("/gradio_api/queue/join", json=body)).json()["event_id"]
        stream = asyncio.create_task(app.http.get("/gradio_api/queue/data", params={"session_hash": "stopper"}))
        await asyncio.wait_for(sample_agents.STEP_STARTED.wait(), 30)
        cancel = {"session_hash": "stopper", "fn_index": app.fn_index["chat"], "event_id": event_id}
        assert (await app.http.post("/gradio_api/cancel", json=cancel)).status_code == 200
        await asyncio.wait_for(stream, 30)
        session = app.ctx.sessions.get(app.ctx.sessions.conversation_id("stopper"))
        step, reply = session.history[-2], session.history[-1]
        assert step["tool"]["status"] == "error" and "stopped" in step["content"]
        assert reply["content"] == "working on it [stopped]"
        chatbot, _ = await app.call("chat", ["again"], "stopper")  # the session chats on
    assert text_of(chatbot[-1]) == "fine"


@pytest.mark.server
def test_cmw_serve_with_the_example_agent_serves_it(tmp_path: Path) -> None:
    from gradio_client import Client

    from tests.servers import cmw_server

    with cmw_server(tmp_path, "sim.ttft_ms=0", "sim.tokens_per_second=2000", "sim.reply_tokens=5",
                    extra_args=("--agent", f"{EXAMPLE}:agent")) as server:
        chatbot, _ = Client(server.url, verbose=False).predict("two words", api_name="/chat")
    steps, reply = steps_and_reply(chatbot)
    assert [s["metadata"]["title"] for s in steps] == ["🛠️ word_stats"] and "2 words" in text_of(steps[0])
    assert reply == reply_text(["two words"], 5)

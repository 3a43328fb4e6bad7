"""The built-in agent in the app, in process, against the real simulator speaking tool calls.

``sim.tool_call_rate=1``: the simulator answers every user turn with a call of one of the offered tools (its
string arguments are the first words of the user's message), then answers the tool's result with text that
quotes it (:func:`agent.simulator.reply_text`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.agents.builtin import ToolAgent
from agent.agents.steps import Step
from agent.app.llm import Delta
from agent.settings import SimSettings, load_settings
from agent.simulator import Simulator, reply_text, running_simulator
from tests.asgi import InProcess, in_process
from tests.metrics import metric

IN_LOOP = pytest.mark.asyncio(loop_scope="session")
TOOLS = SimSettings(ttft_ms=0, tokens_per_second=5000, reply_tokens=30, jitter=0, tool_call_rate=1.0, seed=7)


def answer_to(said: str, result: str) -> str:
    """The simulator's answer to a calculator result: it quotes the result, then the user's message."""
    return reply_text([said], TOOLS.reply_tokens, ("calculator", result))


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with running_simulator(TOOLS, port=0) as s:
        yield s


def serving(sim: Simulator, state_dir: Path, *sets: str) -> Any:
    loaded = load_settings("balanced", ["sessions.store=memory", *sets], environ={}, env_file=None)
    return in_process(loaded, state_dir, sim.base_url)


@pytest_asyncio.fixture(loop_scope="session")
async def calculator(sim: Simulator, tmp_path: Path) -> AsyncIterator[InProcess]:
    async with serving(sim, tmp_path, 'agent.tools=["calculator"]') as app:
        yield app


def text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def turn(chatbot: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The last turn's steps and its answer."""
    last_user = max(i for i, m in enumerate(chatbot) if m["role"] == "user")
    after = chatbot[last_user + 1:]
    return [m for m in after if m.get("metadata")], text_of(after[-1])


@IN_LOOP
async def test_a_tool_turn_shows_a_done_step_then_an_answer_naming_its_result(calculator: InProcess) -> None:
    chatbot, _ = await calculator.call("chat", ["6*7"], "math")
    steps, answer = turn(chatbot)
    assert [(s["metadata"]["title"], s["metadata"]["status"], text_of(s)) for s in steps] == [
        ("🛠️ calculator", "done", "42"),
    ]
    assert '"expression": "6*7"' in steps[0]["metadata"]["log"] and steps[0]["metadata"]["duration"] >= 0
    assert answer == answer_to("6*7", "42")
    metrics = (await calculator.http.get("/metrics")).text
    assert metric(metrics, "cmw_tool_calls_total", tool="calculator", outcome="done") >= 1


@IN_LOOP
async def test_the_steps_stay_in_the_history_and_the_model_sees_them_next_turn(calculator: InProcess) -> None:
    await calculator.call("chat", ["2+2"], "memory")
    chatbot, _ = await calculator.call("chat", ["3+3"], "memory")
    assert [m["role"] for m in chatbot] == ["user", "assistant", "assistant"] * 2
    session = calculator.ctx.sessions.get(calculator.ctx.sessions.conversation_id("memory"))
    kept = [m["tool"]["name"] for m in session.history if "tool" in m]
    assert kept == ["calculator", "calculator"]


@IN_LOOP
async def test_a_tool_that_refuses_is_an_error_step_and_the_turn_goes_on(calculator: InProcess) -> None:
    chatbot, _ = await calculator.call("chat", ["1/0"], "zero")
    steps, answer = turn(chatbot)
    assert steps[0]["metadata"]["title"] == "🛠️ calculator — error"
    assert "division by zero" in text_of(steps[0])
    assert answer == answer_to("1/0", text_of(steps[0]))  # the model saw the error as the result
    chatbot, _ = await calculator.call("chat", ["1+1"], "zero")
    assert turn(chatbot)[0][0]["metadata"]["status"] == "done"


@IN_LOOP
async def test_malformed_arguments_are_an_error_step(calculator: InProcess) -> None:
    await calculator.call("set_model", ["cmw-sim@bad_arguments"], "garbled")
    chatbot, _ = await calculator.call("chat", ["5-1"], "garbled")
    steps, answer = turn(chatbot)
    assert "could not be read" in text_of(steps[0]) and "error" in steps[0]["metadata"]["title"]
    assert answer.startswith("The calculator tool returned")


@IN_LOOP
async def test_a_stream_cut_inside_a_tool_call_fails_the_turn_and_the_session_chats_on(
    calculator: InProcess,
) -> None:
    await calculator.call("set_model", ["cmw-sim@tool_call,disconnect"], "cut")
    chatbot, _ = await calculator.call("chat", ["7*7"], "cut")
    steps, answer = turn(chatbot)
    assert steps == [] and "⚠️" in answer
    await calculator.call("set_model", ["cmw-sim"], "cut")
    chatbot, _ = await calculator.call("chat", ["7*7"], "cut")
    assert text_of(turn(chatbot)[0][0]) == "49"


@IN_LOOP
async def test_max_steps_ends_the_turn_with_a_clear_message(sim: Simulator, tmp_path: Path) -> None:
    async with serving(sim, tmp_path, "agent.max_steps=1") as app:
        chatbot, _ = await app.call("chat", ["anything"], "looping")
    assert "agent.max_steps" in turn(chatbot)[1]


@IN_LOOP
async def test_two_sessions_file_tools_see_only_their_own_files(sim: Simulator, tmp_path: Path) -> None:
    async with serving(sim, tmp_path, 'agent.tools=["files"]') as app:
        sessions = app.ctx.sessions
        alice = sessions.get_or_create(sessions.conversation_id("alice"))
        bob = sessions.get_or_create(sessions.conversation_id("bob"))
        sessions.attach_file(alice, "alpha.txt", "alice's secret plan")
        sessions.attach_file(bob, "beta.txt", "bob's notes")
        seen = {}
        for user in ("alice", "bob"):
            for message in ("alpha.txt", "beta.txt", "secret"):
                chatbot, _ = await app.call("chat", [message], user)
                steps, _ = turn(chatbot)
                seen.setdefault(user, []).extend(text_of(s) for s in steps)
    # Each saw its own file (by name or content) at least once, and never a word of the other's.
    assert any("secret plan" in result or "alpha.txt (" in result for result in seen["alice"])
    assert any("bob's notes" in result or "beta.txt (" in result for result in seen["bob"])
    assert not any("bob's notes" in result or "beta.txt (" in result for result in seen["alice"])
    assert not any("secret plan" in result or "alpha.txt (" in result for result in seen["bob"])


@IN_LOOP
async def test_the_astream_reader_gives_the_same_tool_turn(sim: Simulator, tmp_path: Path) -> None:
    async with serving(sim, tmp_path, 'agent.tools=["calculator"]', "llm.reader=astream") as app:
        chatbot, _ = await app.call("chat", ["6*7"], "langchain-path")
    steps, answer = turn(chatbot)
    assert [(s["metadata"]["title"], text_of(s)) for s in steps] == [("🛠️ calculator", "42")]
    assert answer == answer_to("6*7", "42")


class Scripted:
    """A model that asks for the given tool calls, then answers: the loop's inputs a real model rarely sends."""

    def __init__(self, calls: list[dict[str, Any]]):
        self.calls = calls
        self.seen: list[list[dict[str, Any]]] = []

    async def stream(self, provider: str, model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        self.seen.append(messages)
        if len(self.seen) == 1:
            yield Delta(tool_call_chunks=[{"type": "tool_call_chunk", "index": i, "id": f"c{i}", "name": c["name"],
                                           "args": c["args"]} for i, c in enumerate(self.calls)])
        else:
            yield Delta("answered")


@IN_LOOP
async def test_an_unknown_tool_and_a_slow_one_become_error_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings("balanced", ["agent.tool_timeout_s=0.05"], environ={}, env_file=None).settings
    model = Scripted([{"name": "teleport", "args": "{}"}, {"name": "calculator", "args": '{"expression": "2+2"}'},
                      {"name": "current_time", "args": '{"timezone": "UTC"}'}])
    agent = ToolAgent(model, settings, dict)

    async def slow(*_: Any, **__: Any) -> str:
        await asyncio.sleep(30)
        return "never"

    monkeypatch.setattr(agent.tools["current_time"], "coroutine", slow)
    events = [event async for event in agent.run("sim", "cmw-sim", [])]
    ended = {e.name: e for e in events if isinstance(e, Step) and e.final}
    assert ended["teleport"].status == "error" and "no tool named 'teleport'" in ended["teleport"].result
    assert ended["calculator"].status == "done" and ended["calculator"].result == "4"
    assert ended["current_time"].status == "error" and "agent.tool_timeout_s" in ended["current_time"].result
    results = {m["tool_call_id"]: m["content"] for m in model.seen[1] if m["role"] == "tool"}
    assert results == {"c0": ended["teleport"].result, "c1": "4", "c2": ended["current_time"].result}
    assert [e.text for e in events if isinstance(e, Delta) and e.text] == ["answered"]


@IN_LOOP
async def test_stop_cancels_a_running_tool_call(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings("balanced", [], environ={}, env_file=None).settings
    agent = ToolAgent(Scripted([{"name": "current_time", "args": "{}"}]), settings, dict)
    running, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(*_: Any, **__: Any) -> str:
        running.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    monkeypatch.setattr(agent.tools["current_time"], "coroutine", slow)

    async def consume() -> None:
        async for _ in agent.run("sim", "cmw-sim", []):
            pass

    turn_task = asyncio.create_task(consume())  # as the reply stream's pump runs it
    await asyncio.wait_for(running.wait(), 10)
    turn_task.cancel()  # Stop
    with pytest.raises(asyncio.CancelledError):
        await turn_task
    await asyncio.wait_for(cancelled.wait(), 10)


@IN_LOOP
async def test_steps_show_in_the_admin_api(calculator: InProcess) -> None:
    from agent.app.admin import token_path

    await calculator.call("chat", ["9-3"], "audited")
    token = token_path(calculator.state_dir).read_text().strip()
    detail = (await calculator.http.get("/admin/api/sessions/audited",
                                        headers={"Authorization": f"Bearer {token}"})).json()
    steps = [m for m in detail["history"] if m.get("tool")]
    assert [(s["tool"]["name"], s["tool"]["args"], s["tool"]["status"], s["content"]) for s in steps] == [
        ("calculator", {"expression": "9-3"}, "done", "6"),
    ]
    assert steps[0]["metadata"]["title"] == "🛠️ calculator"

"""The chat, stats and logs handlers in process: Gradio's queue protocol over ASGI, the simulator on loopback.

The app is the one `cmw serve` runs; what a socket, a second process or gradio_client adds is tested
against a real server in test_app.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from agent.fingerprints import fingerprint, parse_reply_header
from agent.settings import SimSettings, load_settings
from agent.simulator import Simulator, running_simulator
from tests.asgi import InProcess, in_process

pytestmark = pytest.mark.asyncio(loop_scope="session")
# A load-test canary: a message carrying one gets the simulator's fingerprints header, which proves the
# turns the "LLM" saw; without one a person gets a readable reply.
TAG = "cw0-0000"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with running_simulator(SimSettings(ttft_ms=0, tokens_per_second=2000, reply_tokens=5, jitter=0), port=0) as s:
        yield s


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def app(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    loaded = load_settings("balanced", ["sessions.store=memory", "llm.providers=[\"sim\",\"custom\"]",
                                        "llm.base_url=http://127.0.0.1:9/v1"], environ={}, env_file=None)
    async with in_process(loaded, tmp_path_factory.mktemp("handlers"), sim.base_url) as running:
        yield running


def text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


async def test_each_session_gets_replies_built_from_its_own_turns_only(app: InProcess) -> None:
    async def converse(index: int) -> list[dict[str, Any]]:
        await app.call("chat", [f"{TAG} user {index} first"], f"hash-{index}")
        chatbot, box = await app.call("chat", [f"{TAG} user {index} second"], f"hash-{index}")
        assert box == ""  # the message box is emptied for the next message
        return chatbot

    histories = await asyncio.gather(*(converse(index) for index in range(4)))
    for index, history in enumerate(histories):
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        assert parse_reply_header(text_of(history[-1])) == (
            2, [fingerprint(f"{TAG} user {index} first"), fingerprint(f"{TAG} user {index} second")],
        )


async def test_stats_report_limits_and_this_sessions_turns(app: InProcess) -> None:
    await app.call("chat", ["count me"], "stats-hash")
    [stats] = await app.call("stats", [], "stats-hash")
    assert stats["this_session"]["turns"] == 1
    assert {name: fig["limit"] for name, fig in stats["server"]["events"].items()} == {
        "chat": 3, "file_upload": 2, "stats_refresh": 5, "logs_refresh": 5,
    }


async def test_logs_show_this_session_and_never_another(app: InProcess) -> None:
    await app.call("chat", ["other session"], "other-hash")
    await app.call("set_provider", ["custom"], "other-hash")
    await app.call("chat", ["my session"], "my-hash")
    [logs] = await app.call("logs", [], "my-hash")
    assert "# start-up" in logs and "turn 1" in logs
    assert "provider set to custom" not in logs
    [theirs] = await app.call("logs", [], "other-hash")
    assert "provider set to custom" in theirs

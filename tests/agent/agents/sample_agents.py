"""Operators' agents as `--agent` takes them, for tests: a Runnable, a per-session factory, and wrong types."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import tool

from agent.agents.steps import Step

NOT_AN_AGENT = 42


@tool
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


async def _answer(inputs: dict[str, Any], config: RunnableConfig) -> str:
    """A chain whose tool run and model stream show in astream_events, as an agent graph's do."""
    from langchain_openai import ChatOpenAI

    newest = str(inputs["messages"][-1].content)
    loud = await shout.ainvoke({"text": newest}, config)
    model = ChatOpenAI(base_url=os.environ["SAMPLE_AGENT_LLM_URL"], api_key="sim", model="cmw-sim")
    parts = [chunk.content async for chunk in model.astream(inputs["messages"], config)]
    return f"{loud}: {''.join(map(str, parts))}"


runnable = RunnableLambda(_answer)


def counting(session: Any) -> Any:
    """A factory: each session's generator keeps its own count of turns."""
    turns = 0

    async def reply(messages: list[Any], agent_session: Any) -> AsyncIterator[str | Step]:
        nonlocal turns
        turns += 1
        step = Step(f"count-{turns}", "count", {"session": session.id[:8]})
        yield step
        yield step.end("done", str(turns))
        yield f"turn {turns} of {len(session.files)}-file session"

    return reply


async def broken(messages: list[Any], session: Any) -> AsyncIterator[str]:
    """An agent that fails mid-reply: the turn shows an error, the session chats on."""
    yield "half a reply"
    raise RuntimeError("the operator's bug")


STEP_STARTED = asyncio.Event()  # set once `hanging` shows its step: the test presses Stop then


async def hanging(messages: list[Any], session: Any) -> AsyncIterator[str | Step]:
    """On "hang", a step that never ends (until Stop); otherwise a plain answer."""
    if str(messages[-1].content) != "hang":
        yield "fine"
        return
    yield "working on it"
    yield Step("slow-1", "slow_tool", {"seconds": 3600})
    STEP_STARTED.set()
    await asyncio.Event().wait()

"""A small agent of your own, served by cmw: `cmw serve --agent examples/word_stats_agent.py:agent`.

It has one custom tool, ``word_stats``, which it runs on every message (shown as a step in the chat),
then it asks the session's chat model (the provider and model the user picked) to answer with that
figure in mind, streaming the reply. cmw adds everything around it: sessions, limits, admin API,
metrics and load tests.

The protocol (see agent/agents/custom.py): an async generator function ``(messages, session)`` that
yields ``str`` for reply text and ``Step`` objects for tool steps; ``messages`` are LangChain messages
(system first, newest last); ``session`` has ``id``, ``files`` and ``chat_model``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from langchain_core.messages import SystemMessage
from langchain_core.tools import tool

from agent.agents.steps import Step


@tool
def word_stats(text: str) -> str:
    """Count the words and characters of a text."""
    return f"{len(text.split())} words, {len(text)} characters"


async def agent(messages: list[Any], session: Any) -> AsyncIterator[str | Step]:
    """Run word_stats on the newest message, then stream the model's answer."""
    newest = str(messages[-1].content)
    step = Step(id=f"stats-{len(messages)}", name="word_stats", args={"text": newest[:200]})
    yield step
    stats = await word_stats.ainvoke({"text": newest})
    yield step.end("done", stats)
    prompt = [*messages[:-1], SystemMessage(f"The user's newest message has {stats}."), messages[-1]]
    async for chunk in session.chat_model.astream(prompt):
        if isinstance(chunk.content, str):
            yield chunk.content

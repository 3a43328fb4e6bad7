"""cmw's built-in agent: a LangChain tool-calling loop over the session's provider and model.

A turn loops: model call (with the tools bound) → the tool calls it asked for, run concurrently, each with
``agent.tool_timeout_s`` → their results as ``ToolMessage`` s → the next model call; until the model answers
without tools, or ``agent.max_steps`` model calls were made (the turn then ends with a note). Tool-call
pieces are joined by LangChain (``AIMessageChunk`` addition of ``tool_call_chunks``), whichever reader
streamed them (``llm.reader``). A failing tool — it raises, times out, gets malformed arguments, or does
not exist — is an error step whose message the model gets as the tool's result; the turn goes on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from agent.agents.steps import Step
from agent.app.llm import Delta, LLMError

MAX_ERROR_CHARS = 300


class ToolAgent:
    """The built-in agent of one session: its tools see that session's files only."""

    def __init__(self, providers: Any, settings: Any, files: Callable[[], Mapping[str, str]]):
        from agent.agents.tools import build_tools

        self.providers = providers
        self.settings = settings.agent
        self.tools = {tool.name: tool for tool in build_tools(settings.agent, files)}
        self.schemas = _schemas(self.tools)

    async def run(self, provider: str, model: str, messages: list[Any]) -> AsyncIterator[Delta | Step]:
        """Stream one turn: reply text as :class:`Delta`, tool calls as :class:`Step` (pending, then ended)."""
        from langchain_core.messages import AIMessage, AIMessageChunk, ToolMessage, convert_to_openai_messages

        messages = list(messages)
        tokens = 0
        for call_number in range(1, self.settings.max_steps + 1):
            text: list[str] = []
            joined = AIMessageChunk(content="")
            reported = 0  # completion tokens of this call
            async for delta in self.providers.stream(
                provider, model, convert_to_openai_messages(messages), self.schemas or None
            ):
                if delta.text:
                    text.append(delta.text)
                    yield Delta(delta.text)
                if delta.tool_call_chunks:
                    joined = joined + AIMessageChunk(content="", tool_call_chunks=delta.tool_call_chunks)
                if delta.completion_tokens is not None:
                    reported = delta.completion_tokens
                    yield Delta(completion_tokens=tokens + reported)
            tokens += reported
            calls = [dict(call) for call in joined.tool_calls]
            broken = [dict(call) for call in joined.invalid_tool_calls]
            if not calls and not broken:
                return
            if call_number == self.settings.max_steps:
                raise LLMError(
                    "max_steps", f"The agent stopped after {self.settings.max_steps} model calls (agent.max_steps) "
                    "while it still wanted to use tools.",
                )
            steps = [Step(call.get("id") or _call_id(), str(call.get("name") or "?"), dict(call.get("args") or {}))
                     for call in calls]
            steps += [Step(call.get("id") or _call_id(), str(call.get("name") or "?"), {}) for call in broken]
            for step in steps:
                yield step
            async for step in self._run_calls(steps[: len(calls)]):
                yield step
            for step, call in zip(steps[len(calls):], broken, strict=True):
                detail = str(call.get("error") or "they are not valid JSON")[:MAX_ERROR_CHARS]
                yield step.end("error", f"Error: the arguments of this call could not be read ({detail}).")
            messages.append(AIMessage(
                content="".join(text),
                tool_calls=[{"id": s.id, "name": s.name, "args": s.args} for s in steps],
            ))
            messages += [ToolMessage(s.result, tool_call_id=s.id, status="error" if s.status == "error" else "success")
                         for s in steps]

    async def _run_calls(self, steps: list[Step]) -> AsyncIterator[Step]:
        """Run the calls concurrently (they are independent: the model asked for them together); each step
        is yielded as it ends. Cancelling the turn cancels every call still running."""
        tasks = [asyncio.create_task(self._call(step)) for step in steps]
        try:
            for finished in asyncio.as_completed(tasks):
                yield await finished
        finally:
            for task in tasks:
                task.cancel()

    async def _call(self, step: Step) -> Step:
        from pydantic import ValidationError

        from agent.agents.tools import ToolError, bounded

        tool = self.tools.get(step.name)
        if tool is None:
            known = ", ".join(self.tools) or "none"
            return step.end("error", f"Error: there is no tool named '{step.name[:80]}'. Tools: {known}.")
        limit = self.settings.max_tool_result_chars
        try:
            result = await asyncio.wait_for(tool.ainvoke(step.args), self.settings.tool_timeout_s)
        except TimeoutError:
            return step.end("error", f"Error: {step.name} took longer than {self.settings.tool_timeout_s:g} s "
                                     "(agent.tool_timeout_s) and was stopped.")
        except ToolError as exc:
            return step.end("error", bounded(f"Error: {exc}", limit))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            return step.end("error", bounded(f"Error: invalid arguments for {step.name}: {problems}", limit))
        except Exception as exc:  # a tool's bug is the model's information, never the server's crash
            return step.end("error", bounded(f"Error: {step.name} failed: {type(exc).__name__}: {exc}", limit))
        return step.end("done", bounded(str(result), limit))


_SCHEMAS: dict[tuple[str, ...], list[dict[str, Any]]] = {}


def _schemas(tools: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tools' OpenAI schemas, made once per set of tools: every session has its own tools (its files),
    but the same schemas, and making them costs milliseconds of the event loop per new session."""
    key = tuple(tools)
    if key not in _SCHEMAS:
        from langchain_core.utils.function_calling import convert_to_openai_tool

        _SCHEMAS[key] = [convert_to_openai_tool(tool) for tool in tools.values()]
    return _SCHEMAS[key]


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"

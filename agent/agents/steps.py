"""Tool steps: what the UI shows of a tool call, what the history keeps, and what the model is sent back.

A step is kept in the session's history as a Gradio chat message with ``metadata`` (so the Chatbot draws
it as a collapsible step: title, status, duration, arguments in ``log``) plus a ``tool`` record holding the
call's id, name, arguments and result, from which the LangChain messages are rebuilt for the next turns.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

StepStatus = Literal["pending", "done", "error"]
MAX_LOG_CHARS = 500  # of the arguments shown in a step's header


@dataclass
class Step:
    """One tool call of a turn; the same object is yielded when it starts and again when it ends."""

    id: str
    name: str
    args: dict[str, Any]
    status: StepStatus = "pending"
    result: str = ""
    started: float = field(default_factory=time.monotonic)
    duration_s: float | None = None

    def end(self, status: Literal["done", "error"], result: str) -> Step:
        self.status = status
        self.result = result
        self.duration_s = time.monotonic() - self.started
        return self

    @property
    def final(self) -> bool:
        return self.status != "pending"

    def message(self) -> dict[str, Any]:
        """The step as the Chatbot draws it (Gradio's message metadata) and as the history keeps it."""
        arguments = json.dumps(self.args, ensure_ascii=False)
        metadata: dict[str, Any] = {
            "title": f"🛠️ {self.name}" + (" — error" if self.status == "error" else ""),
            "id": self.id,
            "status": "pending" if self.status == "pending" else "done",
            "log": arguments if len(arguments) <= MAX_LOG_CHARS else arguments[:MAX_LOG_CHARS] + "…",
        }
        if self.duration_s is not None:
            metadata["duration"] = round(self.duration_s, 3)
        return {
            "role": "assistant",
            "content": self.result if self.final else "…",
            "metadata": metadata,
            "tool": {"id": self.id, "name": self.name, "args": self.args, "status": self.status},
        }


def shown(message: dict[str, Any]) -> dict[str, Any]:
    """A history message as the Chatbot takes it: role, content and metadata only."""
    if "metadata" in message:
        return {"role": message["role"], "content": message["content"], "metadata": message["metadata"]}
    return {"role": message["role"], "content": message["content"]}


def to_langchain(history: list[dict[str, Any]], system: str) -> list[Any]:
    """The LangChain messages of a history: a run of steps becomes one AIMessage with its tool calls, then
    one ToolMessage per call, so the model sees every call next to its result."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    out: list[Any] = [SystemMessage(system)]
    calls: list[dict[str, Any]] = []
    results: list[Any] = []

    def flush() -> None:
        if calls:
            out.append(AIMessage(content="", tool_calls=list(calls)))
            out.extend(results)
            calls.clear()
            results.clear()

    for message in history:
        tool = message.get("tool")
        if isinstance(tool, dict):
            calls.append({"id": str(tool["id"]), "name": str(tool["name"]), "args": dict(tool.get("args") or {})})
            status = "error" if tool.get("status") == "error" else "success"
            results.append(ToolMessage(str(message["content"]), tool_call_id=str(tool["id"]), status=status))
            continue
        flush()
        content = str(message.get("content") or "")
        out.append(HumanMessage(content) if message.get("role") == "user" else AIMessage(content))
    flush()
    return out

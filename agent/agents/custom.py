"""Your own agent in cmw's UI: ``cmw serve --agent module:attr`` (or ``path/to/file.py:attr``, or ``agent.factory``).

``attr`` is one of:

- a LangChain **Runnable** taking ``{"messages": [...]}``, as LangChain's ``create_agent`` and LangGraph agents
  do. It is streamed with ``astream_events`` (v2): chat-model tokens become the reply, each tool run a step.
- an **async generator function** ``(messages, session)`` that yields ``str`` (reply text) and
  :class:`~agent.agents.steps.Step` objects (yield a step when it starts and again after ``step.end(...)``).
- a **factory**: any other callable, called once per browser session with an :class:`AgentSession` (its
  ``chat_model`` is a ``ChatOpenAI`` for the provider and model the user chose) and returning one of the two
  above. Whatever state it keeps is that session's own.

``messages`` are LangChain messages: the system message, then the conversation (earlier tool calls and their
results included), newest last. A bad spec — no such file or module, no such attribute, a type cmw cannot
serve — is a :class:`~agent.settings.ConfigError` at start-up (exit 2), not at the first chat.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.agents.steps import Step
from agent.app.llm import Delta, LLMError
from agent.settings import ConfigError, Problem

MAX_STEP_RESULT_CHARS = 4000


@dataclass
class AgentSession:
    """What an operator's agent is given of its browser session."""

    id: str
    files: Mapping[str, str]  # the session's attached text files (name → text), read-only
    chat_model: Any = None  # ChatOpenAI for the provider and model the session uses now


def load(spec: str) -> Any:
    """The object ``module:attr`` or ``path/to/file.py:attr`` names; a clear ConfigError otherwise."""
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise _problem(spec, "expected module:attr or path/to/file.py:attr")
    try:
        module = _import_file(where) if where.endswith(".py") or "/" in where else importlib.import_module(where)
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        raise _problem(spec, f"no module named {exc.name!r}") from None
    except Exception as exc:  # the operator's module failed while importing: say how, in one line
        raise _problem(spec, f"importing it failed: {type(exc).__name__}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise _problem(spec, f"{where} has no attribute {attr!r}")
        target = getattr(target, part)
    kind(target, spec)
    return target


def kind(target: Any, spec: str = "agent") -> str:
    """``runnable``, ``generator`` or ``factory``; a ConfigError for anything else."""
    if hasattr(target, "astream_events") and hasattr(target, "invoke"):
        return "runnable"
    if inspect.isasyncgenfunction(target):
        return "generator"
    if callable(target):
        return "factory"
    raise _problem(spec, f"{type(target).__name__} is not a LangChain Runnable, an async generator function "
                         "or a factory")


def _import_file(where: str) -> Any:
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        raise ConfigError([Problem(f"agent.factory: no such file {where}")])
    name = f"cmw_agent_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError([Problem(f"agent.factory: {where} is not a Python file")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _problem(spec: str, why: str) -> ConfigError:
    return ConfigError([Problem(f"agent.factory = {spec!r}: {why}")])


class CustomAgent:
    """An operator's agent behind the same ``run`` as the built-in one: text as Delta, tool runs as Step.

    A factory is called on the session's first turn, inside the turn, so its failure is that turn's error.
    """

    tools: dict[str, Any] = {}  # its tools are its own business (metrics count their calls as "unknown")

    def __init__(self, target: Any, session: AgentSession, chat_model: Any):
        self.session = session
        self._chat_model = chat_model  # (provider, model) → ChatOpenAI
        self.target = target
        self._made = kind(target) != "factory"

    async def run(self, provider: str, model: str, messages: list[Any]) -> AsyncIterator[Delta | Step]:
        self.session.chat_model = self._chat_model(provider, model)
        if not self._made:
            try:
                made = self.target(self.session)
                failed = kind(made) == "factory"
            except ConfigError:
                failed = True
            if failed:
                raise LLMError("config", "The agent factory returned neither a Runnable nor an async generator.")
            self.target, self._made = made, True
        if kind(self.target) == "runnable":
            async for event in _runnable_events(self.target, messages):
                yield event
            return
        async for item in self.target(messages, self.session):
            if isinstance(item, str):
                if item:
                    yield Delta(item)
            elif isinstance(item, Step):
                yield item
            else:
                raise LLMError("app_error", f"The agent yielded a {type(item).__name__}; expected str or Step.")


async def _runnable_events(runnable: Any, messages: list[Any]) -> AsyncIterator[Delta | Step]:
    """``astream_events`` v2 mapped to cmw's events: model tokens → Delta, tool start/end/error → Step."""
    steps: dict[str, Step] = {}
    async for event in runnable.astream_events({"messages": messages}, version="v2"):
        name = event.get("event")
        if name == "on_chat_model_stream":
            chunk = event["data"].get("chunk")
            text = getattr(chunk, "content", "")
            if isinstance(text, str) and text:
                yield Delta(text)
        elif name == "on_tool_start":
            args = event["data"].get("input")
            step = Step(str(event["run_id"]), str(event.get("name") or "tool"), args if isinstance(args, dict) else
                        {"input": args})
            steps[step.id] = step
            yield step
        elif name in ("on_tool_end", "on_tool_error") and str(event["run_id"]) in steps:
            step = steps.pop(str(event["run_id"]))
            if name == "on_tool_end":
                output = event["data"].get("output")
                result = getattr(output, "content", output)
                yield step.end("done", str(result)[:MAX_STEP_RESULT_CHARS])
            else:
                yield step.end("error", f"Error: {event['data'].get('error')}"[:MAX_STEP_RESULT_CHARS])

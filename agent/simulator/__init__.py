"""The embedded OpenAI-compatible simulator: a real HTTP server standing in for an LLM.

It serves ``POST /v1/chat/completions`` (SSE streaming and not), ``GET /v1/models`` and
``GET /health`` on loopback, with a latency model (time to first token, tokens/s, reply length,
jitter, and ``sim.capacity``: a backend that saturates) and fault injection (HTTP errors, cut streams,
stalls, malformed chunks) from :class:`agent.settings.SimSettings`. Its text reply is readable
(:func:`reply_text`: the start of the user's latest message quoted, their message count, what the
simulator is), and opens with the fingerprints header only for the load tester, whose messages carry a
canary (:mod:`agent.fingerprints`). It speaks OpenAI tool calls: a request offering ``tools`` and
ending with a user turn is answered with a tool call at ``sim.tool_call_rate`` (or when forced with
the ``tool_call`` / ``bad_arguments`` faults), and one ending with a tool result with text quoting it
(and for the load tester naming it: :func:`reply_opening`, :func:`tool_result_header`). Where a request goes:

- :mod:`~agent.simulator.plan` — what a request will do: validation, reply text, faults, seeded draws;
- :mod:`~agent.simulator.tools` — tool calls made up from a tool's schema, and tool-result headers;
- :mod:`~agent.simulator.wire` — the bytes: HTTP heads, OpenAI JSON bodies, SSE events;
- :mod:`~agent.simulator.protocol` — the connection: parsing, routes, replies paced by timers;
- :mod:`~agent.simulator.batch` — the shared token rate of a backend at ``sim.capacity``;
- :mod:`~agent.simulator.server` — :class:`Simulator` and the one runner, run in the foreground,
  a thread or a child process.
"""

from agent.simulator.plan import (
    DEFAULT_MODEL,
    FAULT_HEADER,
    FAULT_KINDS,
    TOOL_FAULTS,
    Fault,
    RequestError,
    nominal_reply_s,
    parse_completion_request,
    parse_faults,
    reply_opening,
    reply_text,
)
from agent.simulator.protocol import SimCounters
from agent.simulator.server import Simulator, SimulatorProcess, run, running_simulator, serve, simulator_process
from agent.simulator.tools import ToolCall, ToolSpec, sample_arguments, tool_result_header

__all__ = [
    "DEFAULT_MODEL",
    "FAULT_HEADER",
    "FAULT_KINDS",
    "Fault",
    "RequestError",
    "SimCounters",
    "Simulator",
    "SimulatorProcess",
    "TOOL_FAULTS",
    "ToolCall",
    "ToolSpec",
    "nominal_reply_s",
    "parse_completion_request",
    "parse_faults",
    "reply_opening",
    "reply_text",
    "run",
    "running_simulator",
    "sample_arguments",
    "serve",
    "simulator_process",
    "tool_result_header",
]

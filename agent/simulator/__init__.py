"""The embedded OpenAI-compatible simulator: a real HTTP server standing in for an LLM.

It serves ``POST /v1/chat/completions`` (SSE streaming and not), ``GET /v1/models`` and
``GET /health`` on loopback, with a latency model (time to first token, tokens/s, reply length,
jitter) and fault injection (HTTP errors, cut streams, stalls, malformed chunks) from
:class:`agent.settings.SimSettings`. Where a request goes:

- :mod:`~agent.simulator.plan` — what a request will do: validation, reply text, faults, seeded draws;
- :mod:`~agent.simulator.wire` — the bytes: HTTP heads, OpenAI JSON bodies, SSE events;
- :mod:`~agent.simulator.protocol` — the connection: parsing, routes, replies paced by timers;
- :mod:`~agent.simulator.server` — :class:`Simulator` and the one runner, run in the foreground,
  a thread or a child process.
"""

from agent.simulator.plan import (
    DEFAULT_MODEL,
    FAULT_HEADER,
    FAULT_KINDS,
    Fault,
    RequestError,
    nominal_reply_s,
    parse_completion_request,
    reply_text,
)
from agent.simulator.protocol import SimCounters
from agent.simulator.server import Simulator, SimulatorProcess, run, running_simulator, serve, simulator_process

__all__ = [
    "DEFAULT_MODEL",
    "FAULT_HEADER",
    "FAULT_KINDS",
    "Fault",
    "RequestError",
    "SimCounters",
    "Simulator",
    "SimulatorProcess",
    "nominal_reply_s",
    "parse_completion_request",
    "reply_text",
    "run",
    "running_simulator",
    "serve",
    "simulator_process",
]

"""The embedded OpenAI-compatible simulator (see :mod:`agent.simulator.protocol`)."""

from agent.simulator.protocol import (
    DEFAULT_MODEL,
    FAULT_HEADER,
    Simulator,
    nominal_reply_s,
    reply_text,
    running_simulator,
    serve,
    simulator_process,
)

__all__ = ["DEFAULT_MODEL", "FAULT_HEADER", "Simulator", "nominal_reply_s", "reply_text", "running_simulator",
           "serve", "simulator_process"]

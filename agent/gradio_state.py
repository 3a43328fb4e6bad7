"""Gradio's per-session state, without the upfront copy of every block's config.

On a session's first event Gradio builds a ``SessionState`` whose ``config_values`` holds the
config of every block of the app (``get_config``, ``inspect.signature``, API info): ~10 ms and
~30 KB per new session here, spent on the event loop while the session's event waits. The
values only serve Gradio's deep links (off in cmw, see ``create_app``), and Gradio fills in a
missing entry itself when an event updates that block, so the lean state starts empty and holds
the config of only the blocks a session's events touched. A burst of new users then starts at
once instead of one session build after another (bench/concurrency.py).
"""

from __future__ import annotations

from copy import copy
from typing import Any

from gradio.state_holder import SessionState, StateHolder


class LeanSessionState(SessionState):
    """A SessionState whose block configs are filled in on first use."""

    def __init__(self, blocks: Any):  # same attributes as SessionState.__init__ (tests/agent/test_gradio_state.py)
        self.blocks_config = copy(blocks.default_config)
        self.config_values: dict[int, Any] = {}
        self.state_data: dict[int, Any] = {}
        self._state_ttl: dict[int, Any] = {}
        self.is_closed = False
        self.STATE_TTL_WHEN_CLOSED = 3600


class LeanStateHolder(StateHolder):
    """Gradio's StateHolder (LRU of session states), making lean states."""

    def __getitem__(self, session_id: str) -> SessionState:
        if session_id not in self.session_data:
            self.session_data[session_id] = LeanSessionState(self.blocks)
        return super().__getitem__(session_id)


def use_lean_session_state(demo: Any) -> None:
    """Make the mounted app's state holder (shared by Gradio's App and ``demo``) build lean states."""
    holder = demo.state_holder
    if holder.session_data:
        raise RuntimeError("use_lean_session_state must run before the app serves a session")
    holder.__class__ = LeanStateHolder

"""What the app's handlers share: settings, sessions, providers and server-wide figures."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.app.llm import Providers
from agent.app.metrics import AppMetrics
from agent.app.streaming import UpdatePacer
from agent.sessions.manager import SessionManager
from agent.sessions.session import Session
from agent.settings import LoadedSettings

if TYPE_CHECKING:
    from agent.app.queue import LiveLimits, QueueMonitor


@dataclass
class AppContext:
    """What the handlers share: settings, sessions, providers and server-wide figures."""

    loaded: LoadedSettings
    sessions: SessionManager
    providers: Providers
    startup_log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    ttfts: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    monitor: QueueMonitor | None = None
    in_flight: int = 0
    draining: bool = False  # set on SIGINT/SIGTERM: new chats are refused, running ones finish
    browser_secret: str | None = None  # Gradio's BrowserState wants one; public (in /config), so it guards nothing
    custom_agent: Any = None  # what agent.factory names (loaded at start-up), else the built-in agent serves
    app_sessions: Any = None  # an operator's app: its Gradio sessions (agent.apps.sessions.AppSessions)
    live_limits: LiveLimits | None = None  # limits changed on the running server (set with the admin API)
    metrics: AppMetrics = field(init=False, repr=False)  # this app's own Prometheus registry
    pacer: UpdatePacer = field(init=False, repr=False)  # shares the UI update budget among streaming replies

    def __post_init__(self) -> None:
        self.metrics = AppMetrics(self)
        stream = self.loaded.settings.stream
        self.pacer = UpdatePacer(stream.coalesce_ms / 1000, stream.max_updates_per_s)

    @property
    def settings(self):  # type: ignore[no-untyped-def]
        return self.loaded.settings

    def session_id(self, request: Any) -> str:
        """The conversation of the request's Gradio session (its own, or the one its tab came back to)."""
        return self.sessions.conversation_id(getattr(request, "session_hash", None) or "anonymous")

    def session(self, request: Any) -> Session:
        """The request's session; may read the store, so handlers that call it run in a thread."""
        return self.sessions.get_or_create(self.session_id(request))

    def agent_for(self, session: Session) -> Any:
        """The session's own agent, made on its first turn: its tools see this session's files only."""
        if session.agent is None:
            if self.custom_agent is not None:
                from types import MappingProxyType

                from agent.agents.custom import AgentSession, CustomAgent

                view = AgentSession(session.id, MappingProxyType(session.files))
                session.agent = CustomAgent(self.custom_agent, view, self.providers.session_model)
            else:
                from agent.agents.builtin import ToolAgent

                session.agent = ToolAgent(self.providers, self.settings, lambda: session.files)
        return session.agent

    async def session_async(self, request: Any) -> Session:
        """The request's session from the event loop: a store read, when needed, happens in a thread."""
        session_id = self.session_id(request)
        session = self.sessions.live(session_id)
        if session is None:
            return await asyncio.to_thread(self.sessions.get_or_create, session_id)
        self.sessions.touch(session)
        return session



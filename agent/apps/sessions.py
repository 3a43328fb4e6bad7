"""The sessions of an operator's app: Gradio session hashes, as their events join, run and wait.

cmw's own app keeps conversations (:mod:`agent.sessions`); an operator's app keeps whatever it keeps, and
what cmw can say of its users is what Gradio's queue sees: who joined which event when, and what runs or
waits now. That is what ``cmw sessions`` and ``/admin/api/sessions`` show for it. A session hash is chosen
by the client, so the record is bounded (least recently seen dropped first) and one forgotten after
``sessions.idle_ttl_s`` without an event; a flood of new hashes costs a fixed amount of memory.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KILLED = "This session was ended by the server's operator."


@dataclass
class AppSession:
    """What cmw knows of one Gradio session of an operator's app."""

    id: str
    first_seen: float
    last_seen: float
    by_event: Counter[str] = field(default_factory=Counter)

    @property
    def events(self) -> int:
        return sum(self.by_event.values())


class AppSessions:
    """Gradio sessions of an operator's app, recorded from queue joins; state read live from the queue.

    Joins are recorded on the event loop (inside Gradio's queue), so no lock is needed; readers run there too.
    """

    def __init__(self, demo: Any, names: dict[int, str], *, capacity: int, idle_ttl_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.demo = demo
        self.names = names  # fn index → api name (or fn_N)
        self.capacity = capacity
        self.idle_ttl_s = idle_ttl_s
        self.clock = clock
        self._sessions: OrderedDict[str, AppSession] = OrderedDict()  # least recently seen first
        self._totals: Counter[str] = Counter()
        self._ended: Counter[str] = Counter()

    def joined(self, session_hash: str, fn_index: int) -> None:
        """One event of ``session_hash`` was queued."""
        now = self.clock()
        session = self._sessions.get(session_hash)
        if session is None:
            session = self._sessions[session_hash] = AppSession(session_hash, now, now)
            self._totals["created_total"] += 1
            while len(self._sessions) > self.capacity:
                self._sessions.popitem(last=False)
                self._ended["evicted"] += 1
        else:
            self._sessions.move_to_end(session_hash)
            session.last_seen = now
        session.by_event[self.names.get(fn_index, f"fn_{fn_index}")] += 1

    def attach(self) -> None:
        """Start recording the app's joins (its queue must exist: after ``queue()``)."""
        from agent.app.gradio_compat import observe_joins

        observe_joins(self.demo, self.joined)

    def is_live(self, session_hash: str) -> bool:
        return session_hash in self._sessions

    def sweep(self) -> int:
        """Forget sessions idle past ``idle_ttl_s`` with nothing queued; how many were forgotten."""
        from agent.app.gradio_compat import session_jobs

        deadline = self.clock() - self.idle_ttl_s
        busy = session_jobs(self.demo)
        stale = [s.id for s in self._sessions.values() if s.last_seen < deadline and s.id not in busy]
        for session_hash in stale:
            del self._sessions[session_hash]
        self._ended["expired"] += len(stale)
        return len(stale)

    def counts(self) -> dict[str, Any]:
        """The figures ``/admin/api/health`` and ``/metrics`` give for sessions, in the shape cmw's own have."""
        from agent.app.gradio_compat import session_jobs

        busy = session_jobs(self.demo)
        ended = dict(self._ended)
        return {
            "active": len(self._sessions),
            "running": sum(1 for jobs in busy.values() if jobs.running),
            "created_total": self._totals["created_total"],
            "restored_total": 0,
            "evicted_total": ended.get("evicted", 0),
            "expired_total": ended.get("expired", 0),
            "ended_total": sum(ended.values()),
            "ended_by_reason": ended,
            "purged_total": 0,
            "aliases": 0,
            "store_errors": 0,
        }

    def summaries(self, offset: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """A page of sessions: those with events in flight first, then idle; most recently seen first in each."""
        from agent.app.gradio_compat import session_jobs

        busy = session_jobs(self.demo)
        rows = [self._summary(s, busy.get(s.id)) for s in reversed(self._sessions.values())]
        rows.sort(key=lambda row: row["state"] != "running")  # stable: recency kept within a state
        return rows[offset: offset + limit]

    def detail(self, session_hash: str) -> dict[str, Any] | None:
        from agent.app.gradio_compat import session_jobs

        session = self._sessions.get(session_hash)
        if session is None:
            return None
        jobs = session_jobs(self.demo).get(session_hash)
        return {
            **self._summary(session, jobs),
            "by_event": dict(session.by_event),
            "running_events": [self._name(i) for i in jobs.running] if jobs else [],
            "waiting_events": [self._name(i) for i in jobs.waiting] if jobs else [],
        }

    async def kill(self, session_hash: str) -> int | None:
        """Cancel the session's running and waiting events and forget it; None when it is unknown."""
        from agent.app.gradio_compat import cancel_session_events

        if session_hash not in self._sessions:
            return None
        cancelled = await cancel_session_events(self.demo, session_hash, KILLED)
        if self._sessions.pop(session_hash, None) is not None:
            self._ended["killed"] += 1
        return cancelled

    def _name(self, fn_index: int) -> str:
        return self.names.get(fn_index, f"fn_{fn_index}")

    def _summary(self, session: AppSession, jobs: Any) -> dict[str, Any]:
        running = len(jobs.running) if jobs else 0
        waiting = len(jobs.waiting) if jobs else 0
        return {
            "id": session.id,
            "state": "running" if running or waiting else "idle",  # running: events in flight (queued or run)
            "first_seen": session.first_seen,
            "last_seen": session.last_seen,
            "events": session.events,
            "running": running,
            "waiting": waiting,
            # The keys every `cmw sessions list --json` row carries (DESIGN.md), in an app's terms:
            "created": session.first_seen,
            "last_active": session.last_seen,
            "turns": session.events,
            "provider": None,
            "model": None,
        }

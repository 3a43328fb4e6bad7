"""Gradio's queue, set from settings and read back live.

One place turns settings into Gradio arguments: ``event_options`` for each named event,
``apply_queue`` for the Blocks, and :class:`QueueMonitor` reads waiting/running per event from
Gradio's own queue so Stats, the admin API and metrics report what Gradio really does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.settings import Settings

# The app's events, each with the settings key holding its limit.
EVENTS = ("chat", "file_upload", "stats_refresh", "logs_refresh")


def event_options(settings: Settings, event: str) -> dict[str, Any]:
    """Keyword arguments for a Gradio event listener: its limit and, for files, the shared queue id."""
    options: dict[str, Any] = {"concurrency_limit": settings.event_limit(event)}
    if event == "file_upload":
        options["concurrency_id"] = settings.events.file_processing_queue_id
    return options


def apply_queue(demo: Any, settings: Settings) -> None:
    """Configure the queue and the global running-jobs cap; close the /run bypass.

    Gradio applies ``max_threads`` only in ``launch()``; the app is mounted into FastAPI instead,
    so the cap is set on the Blocks before ``queue()`` builds the queue from it.
    """
    demo.max_threads = settings.server.max_threads
    if settings.queue.enabled:
        demo.queue(
            default_concurrency_limit=settings.default_limit,
            max_size=settings.queue.max_size,
            status_update_rate=settings.queue.status_update_rate,
            api_open=False,
        )
    else:
        demo.queue(api_open=False)
    demo._queue.max_thread_count = settings.server.max_threads
    # Gradio keeps the last 10,000 events for its monitoring dashboard and, after every finished
    # event, rebuilds the dashboard's summary from them: a pandas DataFrame in a worker thread that
    # competes with the event loop for the GIL (~10 ms at 10,000 events; the first one imports pandas,
    # ~0.5 s, stalling the first burst of users). cmw mounts the app with that dashboard off, so the
    # records feed nothing: keep none, and the summary returns at once.
    demo._queue.ANALYTICS_MAX_EVENTS = 0
    coalesce_estimations(demo._queue)


def coalesce_estimations(queue: Any) -> None:
    """Send the queue's rank/ETA broadcasts once per burst of job starts instead of once per start.

    With ``status_update_rate="auto"`` Gradio tells every waiting client its new rank each time a
    job starts; when a burst of N users joins and N slots are free, that is N²/2 messages for ranks
    that are gone before the clients read them (14 per turn at 16 users, more than the streamed
    updates themselves). Gradio starts every startable job in one pass of its loop, so a broadcast
    deferred with ``call_soon`` runs once after the pass and reaches only events still waiting. A
    joining event still learns its rank at once.
    """
    broadcast_now = queue.broadcast_estimations
    due: set[str] = set()

    def flush(concurrency_id: str) -> None:
        due.discard(concurrency_id)
        if concurrency_id in queue.event_queue_per_concurrency_id:
            broadcast_now(concurrency_id)

    def broadcast_estimations(concurrency_id: str, after: int | None = None) -> None:
        if after is not None:  # a join: only the new event is told, and at once
            broadcast_now(concurrency_id, after)
        elif concurrency_id not in due:
            due.add(concurrency_id)
            asyncio.get_running_loop().call_soon(flush, concurrency_id)

    queue.broadcast_estimations = broadcast_estimations


@dataclass
class EventFigures:
    event: str
    waiting: int
    running: int
    limit: int | None


class QueueMonitor:
    """Live waiting/running per named event, read from Gradio's queue."""

    def __init__(self, demo: Any, dependencies: dict[str, Any]):
        self.demo = demo
        self.dependencies = dependencies  # event name → gradio Dependency (its BlockFunction)

    def figures(self) -> list[EventFigures]:
        queue = getattr(self.demo, "_queue", None)
        # `is not None`: Gradio's Queue has a __len__, so an idle queue is falsy.
        per_id = getattr(queue, "event_queue_per_concurrency_id", {}) if queue is not None else {}
        out: list[EventFigures] = []
        for event, dep in self.dependencies.items():
            fn = self.demo.fns[dep["id"]]  # a gradio Dependency is its config dict
            event_queue = per_id.get(fn.concurrency_id)
            if event_queue is None:  # created by Gradio on the event's first join
                out.append(EventFigures(event, 0, 0, fn.concurrency_limit if isinstance(fn.concurrency_limit, int)
                                        else None))
                continue
            waiting = sum(1 for e in event_queue.queue if e.fn is fn)
            running = event_queue.current_concurrency
            limit = event_queue.concurrency_limit
            out.append(EventFigures(event, waiting, running, limit if isinstance(limit, int) else None))
        return out

    def as_dict(self) -> dict[str, dict[str, int | None]]:
        return {f.event: {"waiting": f.waiting, "running": f.running, "limit": f.limit} for f in self.figures()}

    @property
    def total_waiting(self) -> int:
        queue = getattr(self.demo, "_queue", None)
        return len(queue) if queue is not None else 0


def forget_ended_sessions(queue: Any, is_live: Callable[[str], bool]) -> int:
    """Drop Gradio's per-session queue entries of sessions that have ended; the number dropped.

    Gradio keeps, for every session hash it ever saw, a set of event ids (emptied, never removed)
    and, in an LRU of 2,000, a message queue of ~3 KB: ~9 MB after 10,000 sessions have come and
    gone (bench/session_churn.py). An entry goes only when nothing of it is queued or running and
    cmw has ended its session (idle past its TTL), so no stream can still be delivering to it; a
    later join by the same hash recreates both, as for a new session.
    """
    forgotten = 0
    for session_hash, event_ids in list(queue.pending_event_ids_session.items()):
        if event_ids or is_live(session_hash):
            continue
        messages = queue.pending_messages_per_session.get(session_hash)
        if messages is not None and not messages.empty():
            continue
        del queue.pending_event_ids_session[session_hash]
        if messages is not None:
            del queue.pending_messages_per_session[session_hash]
        forgotten += 1
    return forgotten

"""Gradio's queue, set from settings and read back live.

One place turns settings into Gradio arguments: ``event_options`` for each named event,
``apply_queue`` for the Blocks, and :class:`QueueMonitor` reads waiting/running per event from
Gradio's own queue so Stats, the admin API and metrics report what Gradio really does.
"""

from __future__ import annotations

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
    so the cap is set on the Blocks before ``queue()`` builds the queue from it (``queue()`` passes it on).
    """
    from agent.app.gradio_compat import coalesce_estimations  # sets Gradio's env before the queue reads it

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
    coalesce_estimations(demo)


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
        from agent.app.gradio_compat import event_load

        out: list[EventFigures] = []
        for event, dep in self.dependencies.items():
            load = event_load(self.demo, dep["id"])  # a gradio Dependency is its config dict
            out.append(EventFigures(event, load.waiting, load.running, load.limit))
        return out

    def as_dict(self) -> dict[str, dict[str, int | None]]:
        return {f.event: {"waiting": f.waiting, "running": f.running, "limit": f.limit} for f in self.figures()}

    @property
    def total_waiting(self) -> int:
        from agent.app.gradio_compat import queue_length

        return queue_length(self.demo)

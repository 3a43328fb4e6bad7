"""Gradio's queue, set from settings and read back live.

One place turns settings into Gradio arguments: ``event_options`` for each named event,
``apply_queue`` for the Blocks, and :class:`QueueMonitor` reads waiting/running per event from
Gradio's own queue so Stats, the admin API and metrics report what Gradio really does.
:class:`LiveLimits` changes a limit on the running server (``PUT /admin/api/limits/{event}``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.settings import Settings

if TYPE_CHECKING:
    from agent.settings import LoadedSettings

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

    def set_limit(self, event: str, limit: int) -> tuple[int | None, list[str]]:
        """Set ``event``'s limit in Gradio's queue now; its limit before, and the named events of its pool
        (which change with it: they share one set of slots)."""
        from agent.app.gradio_compat import event_load, set_pool_limit

        fn_index = self.dependencies[event]["id"]
        previous = event_load(self.demo, fn_index).limit
        changed = set(set_pool_limit(self.demo, fn_index, limit))
        return previous, [name for name, dep in self.dependencies.items() if dep["id"] in changed]


# ---------------------------------------------------------------------------------------------- live limits

LIVE = "live"  # the source of a limit changed on the running server
log = logging.getLogger("cmw.admin")


@dataclass(frozen=True)
class LiveChange:
    """A limit changed on the running server: what it became, what it was, when and from which client."""

    limit: int
    previous: int | None
    at: float
    by: str


class LimitRefused(Exception):
    """A live change the server will not make: the HTTP status and a detail an operator can act on."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def limit_key(event: str, *, app: bool) -> str:
    """The settings key of an event's limit: ``events.<event>_concurrency_limit`` for cmw's own events,
    ``events.limits.<api name>`` for an operator's app."""
    return f"events.limits.{event}" if app else f"events.{event}_concurrency_limit"


class LiveLimits:
    """The per-event limits of the running server, changeable without a restart (``PUT /admin/api/limits``).

    A change goes straight into Gradio's queue for the event's whole pool (events sharing a concurrency id share
    their slots, so they change together) and is remembered here, so every view of the settings names it as
    source ``live``. It lasts until the process stops: profiles stay files.
    """

    def __init__(self, monitor: QueueMonitor, loaded: LoadedSettings, *, app: bool, log_lines: list[str]):
        self.monitor = monitor
        self.loaded = loaded
        self.app = app  # an operator's app (events.limits.NAME) rather than cmw's own events
        self.log_lines = log_lines  # the start-up log the Logs tab shows
        self.changes: dict[str, LiveChange] = {}

    def source(self, event: str) -> str:
        """Where the limit in effect came from, as `cmw config show` / `cmw inspect` name sources."""
        if event in self.changes:
            return LIVE
        settings = self.loaded.settings
        if not settings.enable_concurrent_processing:
            return "enable_concurrent_processing=false"
        if self.app:
            found = self.monitor.dependencies[event].get("source")
            return str(found) if found else "default"
        return self.loaded.sources.get(limit_key(event, app=False), "default")

    def view(self) -> dict[str, Any]:
        """``GET /admin/api/limits``: every event's limit, its source and its last live change."""
        events: dict[str, dict[str, Any]] = {}
        for figures in self.monitor.figures():
            change = self.changes.get(figures.event)
            events[figures.event] = {
                "limit": figures.limit, "source": self.source(figures.event),
                "changed_at": change.at if change else None, "changed_by": change.by if change else None,
            }
        return {"events": events, "max_threads": self.loaded.settings.server.max_threads}

    def change(self, event: str, limit: int, by: str) -> dict[str, Any]:
        """Set ``event``'s limit (and its pool's) now; the answer of ``PUT /admin/api/limits/{event}``.

        Raises :class:`LimitRefused`: 404 for an unknown event, 409 while the master switch holds every event
        at 1, 422 for a limit outside 1..server.max_threads (Gradio never runs more jobs than that at once).
        """
        settings = self.loaded.settings
        if event not in self.monitor.dependencies:
            known = ", ".join(self.monitor.dependencies) or "none"
            raise LimitRefused(404, f"no event {event!r} on this server (its events: {known})")
        if not settings.enable_concurrent_processing:
            raise LimitRefused(409, "enable_concurrent_processing is false: every event runs one at a time by "
                                    "design; restart with it true to change limits")
        max_threads = settings.server.max_threads
        if not 1 <= limit <= max_threads:
            raise LimitRefused(422, f"limit {limit} for {event} is outside 1–{max_threads}: at least 1, and at most "
                                    f"server.max_threads ({max_threads}), the jobs Gradio runs at once")
        previous, pool = self.monitor.set_limit(event, limit)
        now = time.time()
        for name in pool:
            self.changes[name] = LiveChange(limit, previous, now, by)
        shared = f" (shared pool: {', '.join(pool)})" if len(pool) > 1 else ""
        line = f"limit {event}: {_shown(previous)} → {limit} (live, from {by}){shared}"
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))} {line}"
        self.log_lines.append(stamped)
        log.warning("%s", stamped)  # an operator's change away from the profile: shown at the server's log level
        return {"event": event, "limit": limit, "previous": previous, "pool": pool}

    def describe(self) -> dict[str, dict[str, Any]]:
        """``ctx.loaded.describe()`` with each live limit in its key: value and source ``live``."""
        described = self.loaded.describe()
        if not self.changes:
            return described
        out: dict[str, dict[str, Any]] = {}
        added = {limit_key(event, app=self.app): change for event, change in self.changes.items()}
        for key, entry in described.items():
            change = added.pop(key, None)
            out[key] = entry if change is None else {**entry, "value": change.limit, "source": LIVE}
            if key == "events.limits" and self.app:  # an app's per-event keys right after their table
                max_threads = self.loaded.settings.server.max_threads
                for live_key, live in list(added.items()):
                    name = live_key.removeprefix("events.limits.")
                    out[live_key] = {
                        "value": live.limit, "source": LIVE, "env": [], "allowed": f"1–{max_threads}",
                        "description": f"Concurrency limit of the app's event {name}, changed on the running server.",
                    }
                    del added[live_key]
        return out


def _shown(limit: int | None) -> str:
    return "none" if limit is None else str(limit)

"""Prometheus metrics of one app, served at ``GET /metrics``.

Each :class:`AppMetrics` owns its own ``CollectorRegistry`` (never the process-global default), so
tests and benchmarks can build several apps in one process. Turn counters and latency histograms are
fed by the chat handler; queue and session figures are read live from the app at scrape time, so
they are never stale and cost nothing between scrapes.

``/metrics`` needs no token by default (``admin.metrics_require_token`` makes it need the admin token):
Prometheus scrapers expect a plain endpoint, and it holds only aggregate counts and timings labelled by
provider, error class and event name — no session ids, no model names (free text a user types), no
conversation text and no secrets. The server binds loopback by default; exposing it beyond that is a job for
the reverse proxy in front of it, as for the Gradio UI itself.

No ``from __future__ import annotations``: FastAPI resolves the route's annotations at runtime.
"""

from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class AppMetrics:
    """The metrics of one app: the handler calls :meth:`turn_started` and :meth:`turn_finished`."""

    def __init__(self, ctx: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.turns_started = Counter(
            "cmw_turns_started", "Chat turns started.", ["provider"], registry=self.registry
        )
        self.turns_completed = Counter(
            "cmw_turns_completed", "Chat turns whose reply completed.", ["provider"], registry=self.registry
        )
        self.turns_failed = Counter(
            "cmw_turns_failed", "Chat turns that failed, by error class (timeout, http_error, stopped ...).",
            ["provider", "error"], registry=self.registry,
        )
        self.ttft = Histogram(
            "cmw_ttft_seconds", "Time from the start of a reply to its first token.", ["provider"],
            buckets=TTFT_BUCKETS, registry=self.registry,
        )
        self.latency = Histogram(
            "cmw_reply_latency_seconds", "Time to generate a whole reply (completed turns).", ["provider"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.refused = Counter(
            "cmw_requests_refused", "Requests refused at the HTTP edge, by reason (body_too_large, rate_new_sessions, "
            "rate_messages, rate_session_messages, unknown_event, missing_inputs).", ["reason"], registry=self.registry,
        )
        self.tool_calls = Counter(
            "cmw_tool_calls", "Tool calls of the agent, by tool and outcome (done, error).", ["tool", "outcome"],
            registry=self.registry,
        )
        for provider in ctx.providers.offered:  # series exist from the start, so rate() sees the first turn
            self.turns_started.labels(provider)
            self.turns_completed.labels(provider)
        self.registry.register(LiveCollector(ctx))
        # The same turn counts summed over providers, for the admin API (reading a Counter's value is private).
        self.tally: Tally[str] = Tally()
        self.failed_by_class: Tally[str] = Tally()

    def turn_started(self, provider: str) -> None:
        self.turns_started.labels(provider).inc()
        self.tally["started"] += 1

    def tool_call(self, tool: str, outcome: str) -> None:
        """``tool`` is a configured tool's name or ``unknown``: a model's invented names never become labels."""
        self.tool_calls.labels(tool, outcome).inc()

    def request_refused(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def turn_finished(self, provider: str, latency: float, ttft: float | None, error: str | None) -> None:
        if error is None:
            self.turns_completed.labels(provider).inc()
            self.latency.labels(provider).observe(latency)
            self.tally["completed"] += 1
        else:
            self.turns_failed.labels(provider, error).inc()
            self.tally["failed"] += 1
            self.failed_by_class[error] += 1
        if ttft is not None:
            self.ttft.labels(provider).observe(ttft)

    def turn_figures(self) -> dict[str, Any]:
        """Turns started, completed and failed (with the failures by error class) since the server started."""
        return {
            "started": self.tally["started"],
            "completed": self.tally["completed"],
            "failed": self.tally["failed"],
            "failed_by_class": dict(sorted(self.failed_by_class.items())),
        }

    def render(self) -> bytes:
        """The Prometheus text exposition of this app's registry."""
        return generate_latest(self.registry)


class LiveCollector(Collector):
    """Queue and session figures read from the app when Prometheus scrapes."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily("cmw_queue_waiting", "Events waiting in Gradio's queue.", labels=["event"])
        running = GaugeMetricFamily("cmw_queue_running", "Events being processed.", labels=["event"])
        limit = GaugeMetricFamily("cmw_queue_limit", "Concurrency limit of the event.", labels=["event"])
        monitor = self.ctx.monitor
        for figures in monitor.figures() if monitor is not None else []:
            waiting.add_metric([figures.event], figures.waiting)
            running.add_metric([figures.event], figures.running)
            if figures.limit is not None:
                limit.add_metric([figures.event], figures.limit)
        yield from (waiting, running, limit)

        app_sessions = self.ctx.app_sessions
        counts = app_sessions.counts() if app_sessions is not None else self.ctx.sessions.counts()
        yield GaugeMetricFamily("cmw_sessions_active", "Live sessions.", value=counts["active"])
        yield GaugeMetricFamily("cmw_sessions_running", "Sessions with a reply in flight.", value=counts["running"])
        yield CounterMetricFamily("cmw_sessions_opened", "Sessions created (not restored).",
                                  value=counts["created_total"])
        yield CounterMetricFamily("cmw_sessions_evicted", "Sessions freed from memory by the max-sessions cap "
                                  "(their conversations stay stored).", value=counts["evicted_total"])
        yield CounterMetricFamily("cmw_sessions_purged", "Stored conversations deleted by sessions.retention_days.",
                                  value=counts["purged_total"])
        ended = CounterMetricFamily("cmw_sessions_ended", "Sessions freed from memory, by reason (evicted, expired, "
                                    "unload, killed, retention).", labels=["reason"])
        for reason, count in sorted(counts["ended_by_reason"].items()):
            ended.add_metric([reason], count)
        yield ended
        yield CounterMetricFamily("cmw_session_store_errors", "Failed session store reads/writes.",
                                  value=counts["store_errors"])


def metrics_router(ctx: Any, require_token: Any = None) -> Any:
    """A FastAPI router serving ``GET /metrics``, behind ``require_token`` when one is given."""
    from fastapi import APIRouter, Depends, Response

    router = APIRouter(dependencies=[Depends(require_token)] if require_token is not None else [])

    @router.get("/metrics", tags=["metrics"], response_class=Response)
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router

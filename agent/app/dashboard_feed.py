"""What the dashboard plots: one sample a second per process in a ring buffer, and every worker's ring merged.

:class:`Sampler` is the one background task per process that reads the figures (Gradio's queue through
:class:`~agent.app.queue.QueueMonitor`, the turn counters of :class:`~agent.app.metrics.AppMetrics`, the
latencies of the turns finished since the previous sample, the session counts) into a ring of the last
15 minutes. Viewers never trigger a reading: they look at the ring.

With ``--workers N`` the worker a viewer reached asks its peers over loopback, with the admin token, for the
samples it has not seen yet (:class:`Feed`, at most once a second however many viewers there are); it learns
their ports from its own admin fan-out (``GET /admin/api/queue`` lists every worker). :func:`buckets` turns
the samples of one worker, or of all, into 5-second points: running/waiting at their peak, limits and
counters at their last value, rates from counter differences, latency percentiles over the turns finished
in each step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.stats import percentiles

log = logging.getLogger("cmw.dashboard")

WINDOW_S = 15 * 60
SAMPLE_S = 1.0
BUCKET_S = 5
MAX_VALUES = 200  # latencies kept per sample: enough for percentiles, bounded memory at any rate
LATENCY_STEPS = 6  # latency percentiles pool the turns of the last 30 s (one turn a minute still draws a line)
STEP_VALUES = 100  # latencies a step contributes to that pool
PEER_TIMEOUT_S = 3.0
SAMPLES_PATH = "/admin/api/dashboard/samples"
REVOKE_PATH = "/admin/api/dashboard/revoke"


@dataclass(slots=True)
class Sample:
    """One process's figures at one second."""

    t: float  # unix time
    events: dict[str, tuple[int, int, int | None]]  # event -> (running, waiting, limit)
    completed: int  # turns completed since start (a counter)
    failed: dict[str, int]  # failed turns by error class since start (counters)
    sessions: int  # live sessions
    busy: int  # sessions with a reply in flight
    ttft: list[float] = field(default_factory=list)  # of the turns completed since the previous sample
    e2e: list[float] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"t": self.t, "events": self.events, "completed": self.completed, "failed": self.failed,
                "sessions": self.sessions, "busy": self.busy, "ttft": self.ttft, "e2e": self.e2e}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Sample:
        """A peer's sample; ValueError/TypeError/KeyError when it is not one."""
        events = {str(name): (int(v[0]), int(v[1]), None if v[2] is None else int(v[2]))
                  for name, v in dict(raw["events"]).items()}
        return cls(float(raw["t"]), events, int(raw["completed"]),
                   {str(k): int(v) for k, v in dict(raw["failed"]).items()}, int(raw["sessions"]), int(raw["busy"]),
                   [float(x) for x in raw["ttft"]][:MAX_VALUES], [float(x) for x in raw["e2e"]][:MAX_VALUES])


def _latest(values: deque[float], count: int) -> list[float]:
    """The last ``count`` values appended (at most :data:`MAX_VALUES`), oldest first."""
    count = min(count, len(values), MAX_VALUES)
    return list(itertools.islice(reversed(values), count))[::-1] if count > 0 else []


class Sampler:
    """The ring of this process's samples, filled once a second by :meth:`run` (one task per process)."""

    def __init__(self, ctx: Any, clock: Any = time.time):
        self.ctx = ctx
        self.clock = clock
        self.ring: deque[Sample] = deque(maxlen=int(WINDOW_S / SAMPLE_S) + 2 * BUCKET_S)
        self._completed: int | None = None

    def sample(self) -> Sample:
        ctx = self.ctx
        monitor = ctx.monitor
        events = {f.event: (f.running, f.waiting, f.limit) for f in monitor.figures()} if monitor is not None else {}
        turns = ctx.metrics.turn_figures()
        completed = int(turns["completed"])
        # Every completed turn appends one latency (and its TTFT): the newest `new` values are this second's.
        new = completed - self._completed if self._completed is not None else 0
        self._completed = completed
        counts = ctx.app_sessions.counts() if ctx.app_sessions is not None else ctx.sessions.counts()
        sample = Sample(self.clock(), events, completed, dict(turns["failed_by_class"]), int(counts["active"]),
                        int(counts["running"]), _latest(ctx.ttfts, new), _latest(ctx.latencies, new))
        self.ring.append(sample)
        return sample

    async def run(self) -> None:
        """Sample on each whole second (so workers' samples line up) until cancelled."""
        while True:
            try:
                self.sample()
            except Exception:  # the dashboard must never take the server down with it
                log.exception("dashboard sample failed")
            now = self.clock()
            await asyncio.sleep(SAMPLE_S - (now % SAMPLE_S) + 0.001)

    def since(self, t: float) -> list[Sample]:
        newer = list(itertools.takewhile(lambda s: s.t > t, reversed(self.ring)))
        return newer[::-1]


class Feed:
    """Every worker's samples, for the views: this process's ring, and its peers' (fetched at most once a second)."""

    def __init__(self, sampler: Sampler, token: str, processes: int):
        self.sampler = sampler
        self.token = token
        self.processes = processes
        self.local_port: int | None = None  # learnt from the dashboard's own requests (CookieGate)
        self.ports: list[int] | None = None  # every worker's loopback port, by worker index
        self.index = 0
        self.remote: dict[int, deque[Sample]] = {}
        self.missing: dict[int, str] = {}  # worker -> why its figures are missing
        self._fetched = -math.inf
        self._discovered = -math.inf
        self._lock = asyncio.Lock()
        self._client: Any = None

    def saw(self, scope: dict[str, Any]) -> None:
        server = scope.get("server")
        if server and isinstance(server[1], int):
            self.local_port = server[1]

    def client(self) -> Any:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=PEER_TIMEOUT_S, headers={"Authorization": f"Bearer {self.token}"})
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def workers(self) -> dict[int, Sequence[Sample]]:
        """Worker index -> its samples of the window (just this process's when it serves alone)."""
        if self.processes <= 1:
            return {0: self.sampler.ring}
        async with self._lock:
            if time.monotonic() - self._fetched >= SAMPLE_S:
                await self._refresh()
                self._fetched = time.monotonic()
        return {**self.remote, self.index: self.sampler.ring}

    async def _discover(self) -> None:
        """Ports of all workers, from this worker's admin fan-out (``workers`` of ``GET /admin/api/queue``)."""
        import httpx

        if self.local_port is None or time.monotonic() - self._discovered < 10:
            return
        self._discovered = time.monotonic()
        try:
            answer = await self.client().get(f"http://127.0.0.1:{self.local_port}/admin/api/queue")
            workers = answer.json().get("workers") if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            self.missing = {-1: type(exc).__name__}
            return
        if not workers:
            return
        ports = [int(w["port"]) for w in sorted(workers, key=lambda w: int(w["worker"]))]
        if self.local_port in ports:
            self.ports, self.index = ports, ports.index(self.local_port)

    async def _refresh(self) -> None:
        import httpx

        if self.ports is None:
            await self._discover()
            if self.ports is None:
                return
        horizon = time.time() - WINDOW_S - BUCKET_S

        async def fetch(index: int, port: int) -> None:
            ring = self.remote.setdefault(index, deque(maxlen=self.sampler.ring.maxlen))
            since = ring[-1].t if ring else horizon
            try:
                answer = await self.client().get(f"http://127.0.0.1:{port}{SAMPLES_PATH}", params={"since": since})
                answer.raise_for_status()
                ring.extend(Sample.from_json(raw) for raw in answer.json())
                self.missing.pop(index, None)
            except (httpx.HTTPError, ValueError, TypeError, KeyError) as exc:
                self.missing[index] = type(exc).__name__
            while ring and ring[0].t < horizon:
                ring.popleft()

        self.missing.pop(-1, None)
        await asyncio.gather(*(fetch(i, port) for i, port in enumerate(self.ports) if i != self.index))

    async def broadcast_revoke(self, cookie: str, scope: dict[str, Any]) -> None:
        """Tell the other workers a cookie was logged out (best effort: a worker that misses it still lets the
        cookie expire)."""
        import httpx

        if self.processes <= 1:
            return
        self.saw(scope)
        if self.ports is None:
            self._discovered = -math.inf  # a logout is worth a fresh look
            await self._discover()
        for i, port in enumerate(self.ports or ()):
            if i != self.index:
                with contextlib.suppress(httpx.HTTPError):
                    await self.client().post(f"http://127.0.0.1:{port}{REVOKE_PATH}", json={"cookie": cookie})


# ------------------------------------------------------------------------------------------------ points


@dataclass
class Point:
    """One 5-second step of one worker (or the sum of all)."""

    t: float  # the step's end
    running: int = 0
    waiting: int = 0
    limit: int | None = None
    rps: float | None = None
    errors_per_min: dict[str, float] = field(default_factory=dict)
    sessions: int = 0
    busy: int = 0
    ttft: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)


def buckets(samples: Sequence[Sample], event: str, now: float) -> dict[int, Point]:
    """Step index (0 = the oldest step of the window) -> the point of one worker's samples for ``event``."""
    end = math.floor(now / BUCKET_S) * BUCKET_S
    start = end - WINDOW_S
    points: dict[int, Point] = {}
    seen: Sample | None = None  # the latest sample so far (a step's counters differ from the one before it)
    base: Sample | None = None
    for sample in samples:
        if sample.t <= start:
            seen = sample
            continue
        if sample.t > end:  # the step in progress is drawn once it is whole
            break
        step = int((sample.t - start - 1e-9) // BUCKET_S)
        point = points.get(step)
        if point is None:
            point = points[step] = Point(start + (step + 1) * BUCKET_S)
            base = seen
        running, waiting, limit = sample.events.get(event, (0, 0, None))
        point.running, point.waiting, point.limit = max(point.running, running), max(point.waiting, waiting), limit
        point.sessions, point.busy = sample.sessions, sample.busy
        point.ttft.extend(sample.ttft)
        point.e2e.extend(sample.e2e)
        if base is not None and sample.t > base.t and sample.completed >= base.completed:
            elapsed = sample.t - base.t
            point.rps = (sample.completed - base.completed) / elapsed
            point.errors_per_min = {name: max(0, count - base.failed.get(name, 0)) * 60 / elapsed
                                    for name, count in sample.failed.items()}
        seen = sample
    return points


def total(per_worker: Sequence[dict[int, Point]]) -> dict[int, Point]:
    """The sum of the workers' points (limits and counts add up; latencies pool)."""
    out: dict[int, Point] = {}
    for points in per_worker:
        for step, point in points.items():
            into = out.get(step)
            if into is None:
                into = out[step] = Point(point.t)
            into.running += point.running
            into.waiting += point.waiting
            if point.limit is not None:
                into.limit = (into.limit or 0) + point.limit
            if point.rps is not None:
                into.rps = (into.rps or 0.0) + point.rps
            for name, rate in point.errors_per_min.items():
                into.errors_per_min[name] = into.errors_per_min.get(name, 0.0) + rate
            into.sessions += point.sessions
            into.busy += point.busy
            into.ttft.extend(point.ttft)
            into.e2e.extend(point.e2e)
    return out


def trailing_percentiles(points: dict[int, Point], which: str) -> list[tuple[float, float | None, float | None]]:
    """(step end, p50, p95) of the ``ttft`` or ``e2e`` latencies of the turns finished in the :data:`LATENCY_STEPS`
    steps up to each one, as a percentile over a rate window is; steps with none in the window are left out."""
    thinned: dict[int, list[float]] = {}
    for step, point in points.items():
        values = getattr(point, which)
        thinned[step] = values[:: math.ceil(len(values) / STEP_VALUES)] if values else []
    out = []
    for step in sorted(points):
        pool = [v for k in range(step - LATENCY_STEPS + 1, step + 1) for v in thinned.get(k, ())]
        if pool:
            figures = percentiles(pool)
            out.append((points[step].t, figures["p50"], figures["p95"]))
    return out


@dataclass
class WorkerNow:
    """A worker's row in the "workers now" table."""

    worker: int
    running: int
    waiting: int
    sessions: int
    rps: float | None
    ttft_p95: float | None
    e2e_p95: float | None
    failed: int
    fresh: bool  # its latest sample is recent


def worker_now(index: int, samples: Sequence[Sample], now: float) -> WorkerNow:
    """The latest figures of one worker: replies/s over the last 10 s, p95s over the last minute."""
    if not samples:
        return WorkerNow(index, 0, 0, 0, None, None, None, 0, False)
    latest = samples[-1]
    recent = [s for s in itertools.takewhile(lambda s: s.t > now - 60, reversed(samples))]
    ten = [s for s in recent if s.t > latest.t - 10]
    rps = (latest.completed - ten[-1].completed) / (latest.t - ten[-1].t) if len(ten) > 1 else None
    window = [s for s in samples if s.t > now - WINDOW_S]
    failed = sum(latest.failed.values()) - sum(window[0].failed.values()) if window else 0
    return WorkerNow(
        index, sum(e[0] for e in latest.events.values()), sum(e[1] for e in latest.events.values()),
        latest.sessions, rps if rps is None or rps >= 0 else None,
        percentiles(v for s in recent for v in s.ttft)["p95"], percentiles(v for s in recent for v in s.e2e)["p95"],
        max(0, failed), latest.t > now - 5,
    )

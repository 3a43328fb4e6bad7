"""What runs beside the load: the generator watching itself, and the server's own queue figures.

The generator's CPU share and event-loop lag say whether a run measured the server or the generator; the admin
API's running/waiting/limit per event (cmw servers) says whether the server kept its limits under that load, and
its series over time shows when the queue built up (the HTML report and the plot draw it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx

from agent.loadtest.metrics import describe
from agent.loadtest.results import AdminFigures, EventPeak, GeneratorReport, QueuePoint
from agent.stats import percentile

CPU_LIMIT = 0.8  # share of one core above which the generator may have slowed the figures down
LAG_LIMIT_S = 0.05  # event-loop lag p99 above which timestamps are late by more than we can ignore
TICK_S = 0.01
SERIES_POINTS = 1000  # per event: a 0.25 s poll fills it in ~4 min; longer runs merge neighbouring points


class Monitor:
    """The generator's own CPU share and event-loop lag: if either is high, the figures measure us."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK_S)
            self.lags.append(max(0.0, time.perf_counter() - before - TICK_S))

    def start(self) -> None:
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        self._task = asyncio.create_task(self._tick())

    async def stop(self) -> GeneratorReport:
        await _cancel(self._task)
        wall = max(time.perf_counter() - self._wall0, 1e-9)
        cpu = (time.process_time() - self._cpu0) / wall
        ordered = sorted(self.lags)
        lag_p99 = percentile(ordered, 99) if ordered else 0.0
        reasons = []
        if cpu > CPU_LIMIT:
            reasons.append(f"generator used {cpu:.0%} of a core (> {CPU_LIMIT:.0%})")
        if lag_p99 > LAG_LIMIT_S:
            reasons.append(f"event-loop lag p99 {lag_p99 * 1000:.0f} ms (> {LAG_LIMIT_S * 1000:.0f} ms)")
        lag_ms = {k: None if v is None else round(v * 1000, 3) for k, v in describe(ordered).to_dict().items()}
        return GeneratorReport(
            cpu_share=round(cpu, 4),
            loop_lag_ms=lag_ms | {"max": round(ordered[-1] * 1000, 3) if ordered else None},
            inconclusive=bool(reasons),
            reasons=tuple(reasons),
        )


class AdminWatch:
    """Polls ``/admin/api/queue`` (cmw servers) for running/waiting/limit per event; quiet when absent."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, token: str | None, interval: float = 0.25):
        self.client, self.url, self.token, self.interval = client, f"{base_url}/admin/api/queue", token, interval
        self.peak: dict[str, EventPeak] = {}
        self.worker_peaks: dict[str, dict[str, EventPeak]] = {}  # `cmw serve --workers N`: per worker
        self.samples = 0
        self.status = "no token given" if token is None else "not polled"
        self.series = QueueSeries()
        self._t0 = time.perf_counter()
        self._task: asyncio.Task[None] | None = None

    async def poll_once(self) -> bool:
        """One sample; False (with ``status`` saying why) when the API is not there or refuses us."""
        try:
            response = await self.client.get(self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=5.0)
        except httpx.HTTPError as exc:
            self.status = f"unreachable ({type(exc).__name__})"
            return False
        if response.status_code in (401, 403):
            self.status = f"refused (HTTP {response.status_code}): wrong or missing --token"
            return False
        if response.status_code != 200:
            self.status = f"not available (HTTP {response.status_code})"
            return False
        try:
            body = response.json()
            events = _queue_events(body)
        except ValueError:
            self.status = "not available (not JSON)"
            return False
        self.samples += 1
        self.status = "ok"
        _record_peaks(self.peak, events)
        self.series.add(time.perf_counter(), events)
        workers = body.get("workers") if isinstance(body, dict) else None
        for worker in workers if isinstance(workers, list) else []:
            if isinstance(worker, dict) and "error" not in worker:
                with contextlib.suppress(ValueError):
                    label = str(worker.get("worker", len(self.worker_peaks)))
                    _record_peaks(self.worker_peaks.setdefault(label, {}), _queue_events(worker))
        return True

    async def _loop(self) -> None:
        while await self.poll_once():
            await asyncio.sleep(self.interval)

    async def start(self) -> None:
        """First poll, then the poller; the series' clock starts on return, where ``run_workload`` starts the run's."""
        if self.token is not None and await self.poll_once():
            self._task = asyncio.create_task(self._loop())
        self._t0 = time.perf_counter()

    async def stop(self) -> AdminFigures:
        await _cancel(self._task)
        return AdminFigures(status=self.status, samples=self.samples, peak=dict(self.peak),
                            workers={w: dict(events) for w, events in self.worker_peaks.items()},
                            chat_limit=self.chat_limit(), series=self.series.points(self._t0))

    def chat_limit(self) -> int | None:
        for name, peak in self.peak.items():
            if "chat" in name and isinstance(peak.limit, int):
                return peak.limit
        return None


class QueueSeries:
    """The server's running/waiting/limit per event over time, in bounded memory whatever the run's length.

    Each point covers ``stride`` polls and keeps their highest running and waiting (a short burst stays visible);
    when the points outgrow ``bound``, neighbours merge pairwise and the stride doubles.
    """

    def __init__(self, bound: int = SERIES_POINTS) -> None:
        self.bound = bound
        self.stride = 1
        self._fill = 0  # polls in the last point
        self._points: list[tuple[float, dict[str, QueuePoint]]] = []  # (perf_counter of its first poll, events)

    def add(self, at: float, events: dict[str, dict[str, Any]]) -> None:
        sample = {name: QueuePoint(at, _number(f.get("running")), _number(f.get("waiting")),
                                   f["limit"] if isinstance(f.get("limit"), int) else None)
                  for name, f in events.items()}
        if self._points and self._fill < self.stride:
            self._points[-1] = _merge(self._points[-1], (at, sample))
            self._fill += 1
        else:
            self._points.append((at, sample))
            self._fill = 1
        if len(self._points) > self.bound:
            pairs = zip(self._points[::2], self._points[1::2], strict=False)
            merged = [_merge(a, b) for a, b in pairs]
            if len(self._points) % 2:
                merged.append(self._points[-1])
            self._points, self.stride, self._fill = merged, self.stride * 2, self.stride * 2

    def points(self, t0: float) -> dict[str, tuple[QueuePoint, ...]]:
        """Per event that ever ran or waited, its points with times in seconds from ``t0`` (the run's start)."""
        out: dict[str, list[QueuePoint]] = {}
        for at, events in self._points:
            for name, p in events.items():
                out.setdefault(name, []).append(QueuePoint(round(max(0.0, at - t0), 6), p.running, p.waiting,
                                                           p.limit))
        return {name: tuple(points) for name, points in out.items() if any(p.running or p.waiting for p in points)}


def _number(value: Any) -> int | float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _merge(a: tuple[float, dict[str, QueuePoint]], b: tuple[float, dict[str, QueuePoint]]) -> \
        tuple[float, dict[str, QueuePoint]]:
    """Two neighbouring points as one: the first's time, the highs of both, the latest known limit."""
    events = dict(a[1])
    for name, q in b[1].items():
        p = events.get(name)
        events[name] = q if p is None else QueuePoint(p.t, max(p.running, q.running), max(p.waiting, q.waiting),
                                                      q.limit if q.limit is not None else p.limit)
    return a[0], events


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Stop a background ticker or poller and wait until it has."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _record_peaks(peaks: dict[str, EventPeak], events: dict[str, dict[str, Any]]) -> None:
    for name, figures in events.items():
        peak = peaks.get(name, EventPeak())
        running, waiting = (figures.get(key) for key in ("running", "waiting"))
        peaks[name] = EventPeak(
            running=max(peak.running, running) if isinstance(running, int | float) else peak.running,
            waiting=max(peak.waiting, waiting) if isinstance(waiting, int | float) else peak.waiting,
            limit=figures["limit"] if figures.get("limit") is not None else peak.limit,
        )


def _queue_events(body: Any) -> dict[str, dict[str, Any]]:
    """Per-event figures from the admin queue document, whichever of the natural shapes it takes."""
    if isinstance(body, dict) and isinstance(body.get("events"), dict | list):
        body = body["events"]
    if isinstance(body, list):
        return {str(e.get("event") or e.get("name") or e.get("api_name") or i): e
                for i, e in enumerate(body) if isinstance(e, dict)}
    if isinstance(body, dict):
        return {str(k): v for k, v in body.items() if isinstance(v, dict) and ("running" in v or "waiting" in v)}
    raise ValueError("unexpected admin queue document")

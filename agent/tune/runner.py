"""`cmw tune` end to end: reach or start the server, measure one user, search the limit live, write the profile.

Each candidate limit is set on the running server through the admin API's live limits
(``PUT /admin/api/limits/{event}``, every worker), then measured by the load tester in a closed loop with one
user per slot (limit × workers users, no think time), so every slot stays busy and the queue in front of it
stays empty: what the SLOs see is the backend's answer to that many streams, not queueing. The first turn
of every user is left out (it starts them all at once).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent.tune.search import Measurement, Search, SearchResult

DEFAULT_MAX_LIMIT = 64
DEFAULT_BUDGET_S = 600.0
BASELINE_TURNS = 6  # one user's turns measured for the SLOs' reference


class TuneError(Exception):
    """A tune that cannot go on; ``exit_code`` per DESIGN.md (2 usage, 4 unreachable)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class TuneRequest:
    """What to tune and within which bounds."""

    url: str | None = None
    token: str | None = None
    spawn: bool = False
    base: str | None = None  # profile the spawned server starts from (and the written profile builds on)
    overrides: tuple[str, ...] = ()
    llm: str | None = None
    slos: tuple[str, ...] = ()  # empty: the defaults, relative to one user's figures
    budget_s: float = DEFAULT_BUDGET_S
    max_limit: int = DEFAULT_MAX_LIMIT
    workers_max: int | None = None
    turns: int = 3  # measured turns per user at each candidate
    noise: float = 0.05
    timeout_s: float = 120.0


@dataclass
class Baseline:
    """One user alone: the reference of the default SLOs."""

    ttft_p95: float
    e2e_p95: float
    throughput_rps: float

    def default_slos(self) -> list[str]:
        ttft = 2 * self.ttft_p95 + 0.5
        e2e = 1.5 * self.e2e_p95
        return ["errors<1%", f"ttft.p95<={ttft:.3f}s", f"e2e.p95<={e2e:.3f}s"]


@dataclass
class WorkersSearch:
    """The limit search at one number of workers."""

    workers: int
    result: SearchResult


@dataclass
class TuneResult:
    """Everything the search did and what it chose."""

    request: TuneRequest
    event: str  # the tuned event as the admin API names it (``chat`` for cmw's agent)
    key: str  # the settings key that holds its limit
    app: str | None  # the operator's app served, if any
    backend: dict[str, Any]  # provider, model, base URL (passwords masked)
    baseline: Baseline
    slos: list[str]
    searches: list[WorkersSearch] = field(default_factory=list)
    chosen_limit: int | None = None
    chosen_workers: int = 1
    seconds: float = 0.0
    cut_short: bool = False
    original_limit: int | None = None
    max_threads: int | None = None

    @property
    def measurements(self) -> list[Measurement]:
        return [m for s in self.searches for m in s.result.order]

    def best(self) -> Measurement | None:
        """The chosen candidate's latest measurement."""
        for search in self.searches:
            if search.workers == self.chosen_workers and self.chosen_limit in search.result.candidates:
                return search.result.candidates[self.chosen_limit].runs[-1]
        return None

    def tie(self) -> list[int]:
        for search in self.searches:
            if search.workers == self.chosen_workers:
                return search.result.tie
        return []

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event, "key": self.key, "app": self.app, "backend": self.backend,
            "baseline": {"ttft_p95": self.baseline.ttft_p95, "e2e_p95": self.baseline.e2e_p95,
                         "throughput_rps": self.baseline.throughput_rps},
            "slos": self.slos,
            "chosen": None if self.chosen_limit is None else {"limit": self.chosen_limit,
                                                               "workers": self.chosen_workers,
                                                               "tie": self.tie()},
            "cut_short": self.cut_short, "seconds": round(self.seconds, 1),
            "searches": [{"workers": s.workers, "noise": round(s.result.noise, 4), "tie": s.result.tie,
                          "chosen": s.result.chosen, "cut_short": s.result.cut_short,
                          "measurements": [m.to_dict() for m in s.result.order]} for s in self.searches],
        }


# ---------------------------------------------------------------------------------------------- the server


class LiveServer:
    """A running cmw server as tune drives it: its admin API (token) and its live limits."""

    def __init__(self, url: str, token: str | None):
        self.url = url.rstrip("/")
        self.token = token
        self.http = httpx.Client(base_url=self.url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})

    def close(self) -> None:
        self.http.close()

    def get(self, path: str) -> Any:
        try:
            response = self.http.get(f"/admin/api/{path}")
        except httpx.HTTPError as exc:
            raise TuneError(f"{self.url} is unreachable ({type(exc).__name__})", 4) from None
        if response.status_code in (401, 403):
            raise TuneError(f"{self.url}: the admin token was refused (HTTP {response.status_code}); give --token "
                            "or set CMW_ADMIN_TOKEN", 2)
        if response.status_code != 200:
            raise TuneError(f"{self.url}/admin/api/{path}: HTTP {response.status_code}", 4)
        return response.json()

    def set_limit(self, event: str, limit: int) -> None:
        try:
            response = self.http.put(f"/admin/api/limits/{event}", json={"limit": limit})
        except httpx.HTTPError as exc:
            raise TuneError(f"{self.url} is unreachable ({type(exc).__name__})", 4) from None
        if response.status_code != 200:
            detail = _detail(response)
            raise TuneError(f"{self.url}: cannot set the {event} limit to {limit} live: {detail}", 2)
        failed = [w for w in response.json().get("workers", []) if "error" in w]
        if failed:
            raise TuneError(f"{self.url}: worker(s) {', '.join(str(w['worker']) for w in failed)} did not take "
                            f"the {event} limit {limit}", 4)


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return f"HTTP {response.status_code}" + (f": {detail}" if isinstance(detail, str) else "")


# ---------------------------------------------------------------------------------------------- measuring


def measure_limit(server: LiveServer, event: str, limit: int, workers: int, request: TuneRequest,
             slos: list[str], deadline: float) -> Measurement:
    """Set ``limit`` live on every worker and load it with one user per slot."""
    from agent.loadtest.runner import Target, loadtest
    from agent.loadtest.workload import Workload

    server.set_limit(event, limit)
    users = limit * workers
    turns = request.turns + 1
    workload = Workload(users=users, turns=turns, warmup_turns=1, timeout=request.timeout_s, prime=0,
                        duration=max(5.0, deadline - time.monotonic()), max_requests=users * turns)
    started = time.monotonic()
    result = loadtest(Target(url=server.url, token=server.token), workload, slos=slos)
    return _measurement(result, limit, workers, users, slos, time.monotonic() - started)


def _measurement(result: Any, limit: int, workers: int, users: int, slos: list[str], seconds: float) -> Measurement:
    """A load test's figures as the search sees them, its SLOs judged on its summary."""
    from agent.loadtest.slo import parse_slos

    summary = result.summary
    outcomes = {slo.expr: slo.check(summary) for slo in parse_slos(slos)}
    return Measurement(
        limit=limit, workers=workers, users=users, throughput_rps=summary.throughput_rps,
        ttft_p95=summary.ttft.p95, e2e_p95=summary.e2e.p95, error_rate=summary.error_rate,
        slo_passed=all(outcome.passed for outcome in outcomes.values()) and summary.turns_completed > 0,
        slo={expr: outcome.to_dict() for expr, outcome in outcomes.items()}, seconds=seconds,
    )


def measure_one_user(server: LiveServer, request: TuneRequest, deadline: float) -> tuple[Baseline, Any, float]:
    """One user alone (any limit serves one user as limit 1 does): the reference figures, the run, its seconds."""
    from agent.loadtest.runner import Target, loadtest
    from agent.loadtest.workload import Workload

    workload = Workload(users=1, turns=BASELINE_TURNS + 1, warmup_turns=1, timeout=request.timeout_s, prime=1,
                        duration=max(5.0, deadline - time.monotonic()))
    started = time.monotonic()
    result = loadtest(Target(url=server.url, token=server.token), workload)
    summary = result.summary
    if summary.turns_completed == 0 or summary.ttft.p95 is None or summary.e2e.p95 is None:
        errors = ", ".join(f"{k} {v}" for k, v in summary.errors.items() if v) or "no turn completed"
        raise TuneError(f"{server.url}: one user alone gets no reply ({errors})", 4)
    return Baseline(summary.ttft.p95, summary.e2e.p95, summary.throughput_rps), result, time.monotonic() - started


# ---------------------------------------------------------------------------------------------- the search


Progress = Callable[[str], None]


def tune(request: TuneRequest, progress: Progress | None = None) -> TuneResult:
    """Run the whole search; raises :class:`TuneError` for what stops it (bad SLOs, unreachable server)."""
    from agent.loadtest.slo import SloError, parse_slos

    say = progress or (lambda line: None)
    try:
        parse_slos(list(request.slos))
    except SloError as exc:
        raise TuneError(str(exc), 2) from None
    started = time.monotonic()
    deadline = started + request.budget_s
    worker_counts = _worker_counts(request.workers_max) if request.spawn else [1]
    result: TuneResult | None = None
    for workers in worker_counts:
        remaining = deadline - time.monotonic()
        if result is not None and remaining <= 0:
            result.cut_short = True
            break
        with _server(request, workers) as server:
            result = _tune_on(server, request, workers, deadline, result, say)
    assert result is not None  # noqa: S101 - at least one worker count runs
    result.seconds = time.monotonic() - started
    _choose(result)
    return result


def _worker_counts(workers_max: int | None) -> list[int]:
    if not workers_max or workers_max <= 1:
        return [1]
    counts = [1]
    while counts[-1] * 2 < workers_max:
        counts.append(counts[-1] * 2)
    return [*counts, workers_max]


@contextlib.contextmanager
def _server(request: TuneRequest, workers: int) -> Iterator[LiveServer]:
    if not request.spawn:
        assert request.url is not None  # noqa: S101 - the command requires --url or --spawn
        server = LiveServer(request.url, request.token)
        try:
            yield server
        finally:
            server.close()
        return
    from agent.loadtest.spawn import SpawnError, spawn_server

    overrides = [*request.overrides, f"server.max_threads={max(request.max_limit, _base_max_threads(request))}",
                 f"queue.max_size={max(100, 2 * request.max_limit * workers)}"]
    if request.llm:
        overrides.append(f"llm.provider={request.llm}")
    if workers > 1:
        overrides.append(f"server.workers={workers}")
    try:
        with spawn_server(request.base, overrides) as spawned:
            server = LiveServer(spawned.url, spawned.admin_token)
            try:
                yield server
            finally:
                server.close()
    except SpawnError as exc:
        raise TuneError(str(exc), 4) from None


def _base_max_threads(request: TuneRequest) -> int:
    from agent.settings import load_settings

    return load_settings(request.base, list(request.overrides)).settings.server.max_threads


def _tune_on(server: LiveServer, request: TuneRequest, workers: int, deadline: float, previous: TuneResult | None,
             say: Progress) -> TuneResult:
    health = server.get("health")
    limits = server.get("limits")
    first: Measurement | None = None
    if previous is None:
        say(f"one user alone on {server.url} …")
        baseline, run, seconds = measure_one_user(server, request, deadline)
        slos = list(request.slos) or baseline.default_slos()
        event = run.meta.endpoint.api_name or "chat"
        app = health.get("app")
        result = TuneResult(
            request=request, event=event, key=f"events.limits.{event}" if app else f"events.{event}_concurrency_limit",
            app=app, backend=_backend(server, health), baseline=baseline, slos=slos,
            original_limit=(limits.get("events", {}).get(event) or {}).get("limit"),
            max_threads=limits.get("max_threads"),
        )
        say(f"one user: TTFT p95 {baseline.ttft_p95:.3f} s, end-to-end p95 {baseline.e2e_p95:.3f} s, "
            f"{baseline.throughput_rps:.2f} turns/s; SLOs: {', '.join(slos)}")
        if workers == 1:  # one user at limit 1: the first candidate, already measured
            first = _measurement(run, 1, 1, 1, slos, seconds)
    else:
        result = previous
    if result.event not in limits.get("events", {}):
        raise TuneError(f"{server.url}: the admin API has no live limit for event {result.event!r}", 2)
    max_threads = int(limits.get("max_threads") or request.max_limit)
    cap = max(1, min(request.max_limit, max_threads))

    def measure(limit: int) -> Measurement:
        return measure_limit(server, result.event, limit, workers, request, result.slos, deadline)

    def shown(measurement: Measurement, phase: str) -> None:
        verdict = "SLOs hold" if measurement.slo_passed else "SLO breached: " + ", ".join(
            expr for expr, outcome in measurement.slo.items() if not outcome.get("passed"))
        e2e = "-" if measurement.e2e_p95 is None else f"{measurement.e2e_p95:.2f}"
        ttft = "-" if measurement.ttft_p95 is None else f"{measurement.ttft_p95:.2f}"
        say(f"  {phase:9} workers {workers} limit {measurement.limit:>3}: {measurement.throughput_rps:7.2f} turns/s, "
            f"TTFT p95 {ttft} s, e2e p95 {e2e} s, errors {measurement.error_rate:.1%} — {verdict}")

    remaining = deadline - time.monotonic()
    search = Search(measure, max_limit=cap, budget_s=max(0.0, remaining), noise=request.noise, on_measured=shown)
    try:
        outcome = search.run(first)
    except BaseException:  # a failure or Ctrl-C mid-search: a running server goes back to its own limit
        if not request.spawn and result.original_limit is not None:
            with contextlib.suppress(TuneError):
                server.set_limit(result.event, result.original_limit)
        raise
    result.searches.append(WorkersSearch(workers, outcome))
    result.cut_short = result.cut_short or outcome.cut_short
    if not request.spawn:  # leave the running server at the chosen value, or as it was
        final = outcome.chosen if outcome.chosen is not None else result.original_limit
        if final is not None:
            server.set_limit(result.event, final)
    return result


def _choose(result: TuneResult) -> None:
    """The best throughput over the worker counts; within the noise, fewer workers and then a smaller limit."""
    options = [(s.workers, s.result.chosen, s.result.best_throughput or 0.0, s.result.noise)
               for s in result.searches if s.result.chosen is not None]
    if not options:
        result.chosen_limit = None
        return
    best = max(throughput for _, _, throughput, _ in options)
    noise = max(n for *_, n in options)
    near = [(workers, limit) for workers, limit, throughput, _ in options if throughput >= best * (1 - noise)]
    result.chosen_workers, result.chosen_limit = min(near)


def _backend(server: LiveServer, health: dict[str, Any]) -> dict[str, Any]:
    from agent.settings.masking import mask_url_passwords

    config = server.get("config")

    def value(key: str) -> Any:
        entry = config.get(key) or {}
        return entry.get("value")

    base_url = value("llm.base_url") or ""
    return {"provider": health.get("provider"), "model": health.get("model"),
            "base_url": mask_url_passwords(str(base_url)) if base_url else None,
            "sim": {k: value(f"sim.{k}") for k in ("capacity", "tokens_per_second", "ttft_ms", "reply_tokens")}
            if health.get("provider") == "sim" else None,
            "server": server.url, "cores": os.cpu_count()}



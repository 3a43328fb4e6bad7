"""Typed results of a load test, passed between engine, runner, report and CLI.

Each has a ``to_dict()`` that gives DESIGN's "Machine-readable output" (``cmw loadtest --json``/``--out``), key for
key and in the same order, so scripts that read the JSON never see these types. Times are seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.loadtest.protocol import Endpoint
    from agent.loadtest.workload import Workload

STATS = ("p50", "p90", "p95", "p99", "mean")
LATENCIES = ("queue_wait", "ttft", "itl", "e2e")


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


@dataclass(frozen=True)
class TurnRecord:
    """One turn as the report keeps it; times in seconds from the start of the run."""

    user: int
    session: str
    turn: int
    t_join: float
    warmup: bool
    error: str | None
    detail: str | None = None
    queue_wait: float | None = None
    ttft: float | None = None
    e2e: float | None = None
    tokens: int = 0
    gaps: tuple[float, ...] = ()
    t_end: float | None = None
    t_start: float | None = None
    violation: tuple[str, ...] = ()
    isolation_checked: bool = False  # its reply or history showed what the session sent (isolation judged)
    tool_steps: int = 0  # tool calls the agent made in this turn
    tool_s: float = 0.0  # seconds those steps took (summed; concurrent ones overlap)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        gaps = self.gaps
        return {
            "user": self.user,
            "session": self.session,
            "turn": self.turn,
            "warmup": self.warmup,
            "t_join": _r(self.t_join),
            "queue_wait": _r(self.queue_wait),
            "ttft": _r(self.ttft),
            "e2e": _r(self.e2e),
            "tokens": self.tokens,
            "itl_mean": _r(math.fsum(gaps) / len(gaps)) if gaps else None,
            "itl_max": _r(max(gaps)) if gaps else None,
            "error": self.error,
            "detail": self.detail,
            "violation": list(self.violation),
            "isolation_checked": self.isolation_checked,
            "tool_steps": self.tool_steps,
            "tool_s": _r(self.tool_s),
        }


@dataclass(frozen=True)
class LatencyStats:
    """One latency's percentiles and mean; every figure None when there was no sample."""

    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    mean: float | None = None

    def stat(self, name: str) -> float | None:
        """The figure named as in :data:`STATS` (``"p95"``, ``"mean"``)."""
        if name not in STATS:
            raise KeyError(name)
        value: float | None = getattr(self, name)
        return value

    def to_dict(self) -> dict[str, float | None]:
        return {name: self.stat(name) for name in STATS}


@dataclass(frozen=True)
class SloResult:
    """One objective's outcome; an unknown value (no samples, no ideal) does not pass and says why in ``note``."""

    passed: bool
    value: float | None
    limit: float
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passed": self.passed, "value": self.value, "limit": self.limit}
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class Summary:
    """The figures of one run (see :func:`agent.loadtest.metrics.summarize` for the throughput window)."""

    queue_wait: LatencyStats = LatencyStats()
    ttft: LatencyStats = LatencyStats()
    itl: LatencyStats = LatencyStats()
    e2e: LatencyStats = LatencyStats()
    turns_completed: int = 0
    turns_failed: int = 0
    turns_warmup: int = 0
    tokens: int = 0
    window_s: float = 0.0
    window: str = "none"  # "steady", "overall" or "none": which window throughput_rps was measured over
    throughput_rps: float = 0.0
    throughput_overall_rps: float = 0.0
    tokens_per_s: float = 0.0
    ideal_rps: float | None = None
    efficiency: float | None = None
    errors: Mapping[str, int] = field(default_factory=dict)  # by class, every class present
    error_rate: float = 0.0
    isolation_violations: int = 0  # violating turns
    violating_sessions: tuple[str, ...] = ()
    isolation_checked: int = 0  # completed turns whose reply or history showed what their session sent

    @property
    def isolation_judged(self) -> bool:
        """Whether any turn gave isolation something to judge (an app that echoes nothing of a session cannot)."""
        return self.isolation_checked > 0 or self.isolation_violations > 0
    slo: Mapping[str, SloResult] = field(default_factory=dict)  # expression → outcome
    # Agents: per completed turn, on average. LLM calls are counted as steps + 1, exact when each model call
    # asks for at most one tool (as the simulator's do); a model asking for several at once makes fewer.
    tool_steps_per_turn: float = 0.0
    llm_calls_per_turn: float = 0.0
    tool_s_per_turn: float = 0.0

    def latency(self, metric: str) -> LatencyStats:
        """The statistics of a latency named as in :data:`LATENCIES`."""
        if metric not in LATENCIES:
            raise KeyError(metric)
        stats: LatencyStats = getattr(self, metric)
        return stats

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            **{metric: self.latency(metric).to_dict() for metric in LATENCIES},
            "turns_completed": self.turns_completed,
            "turns_failed": self.turns_failed,
            "turns_warmup": self.turns_warmup,
            "tokens": self.tokens,
            "window_s": self.window_s,
            "window": self.window,
            "throughput_rps": self.throughput_rps,
            "throughput_overall_rps": self.throughput_overall_rps,
            "tokens_per_s": self.tokens_per_s,
            "ideal_rps": self.ideal_rps,
            "efficiency": self.efficiency,
            "errors": dict(self.errors),
            "error_rate": self.error_rate,
            "isolation_violations": self.isolation_violations,
            "violating_sessions": list(self.violating_sessions),
            "isolation_checked": self.isolation_checked,
            "isolation_judged": self.isolation_judged,
            "slo": {expr: result.to_dict() for expr, result in self.slo.items()},
            "tool_steps_per_turn": self.tool_steps_per_turn,
            "llm_calls_per_turn": self.llm_calls_per_turn,
            "tool_s_per_turn": self.tool_s_per_turn,
        }


@dataclass(frozen=True)
class GeneratorReport:
    """The generator's own load: when high, the figures measure the generator rather than the server."""

    cpu_share: float  # of one core
    loop_lag_ms: Mapping[str, float | None]  # p50, p90, p95, p99, mean, max
    inconclusive: bool
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_share": self.cpu_share, "loop_lag_ms": dict(self.loop_lag_ms), "inconclusive": self.inconclusive,
                "reasons": list(self.reasons)}


@dataclass(frozen=True)
class EventPeak:
    """Highest running and waiting counts of one server event seen while polling, and its last reported limit."""

    running: int | float = 0
    waiting: int | float = 0
    limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"running": self.running, "waiting": self.waiting, "limit": self.limit}


@dataclass(frozen=True)
class QueuePoint:
    """One event's running/waiting/limit at ``t`` seconds from the start of the run.

    When the run outgrew the series' bound, a point stands for several polls: their highest running and waiting.
    """

    t: float
    running: int | float = 0
    waiting: int | float = 0
    limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"t": _r(self.t), "running": self.running, "waiting": self.waiting, "limit": self.limit}


@dataclass(frozen=True)
class AdminFigures:
    """What the server's ``/admin/api/queue`` showed during the run; ``status`` is "ok" or why it was skipped."""

    status: str
    samples: int = 0
    peak: Mapping[str, EventPeak] = field(default_factory=dict)  # event name → peak
    workers: Mapping[str, Mapping[str, EventPeak]] = field(default_factory=dict)  # `--workers N`: per worker
    chat_limit: int | None = None
    # event name → its figures over time (bounded; events that never ran or waited are left out, see ``peak``)
    series: Mapping[str, tuple[QueuePoint, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "samples": self.samples,
                               "peak": {name: p.to_dict() for name, p in self.peak.items()}}
        if self.series:
            out["series"] = {name: [p.to_dict() for p in points] for name, points in self.series.items()}
        if self.workers:
            out["workers"] = {w: {name: p.to_dict() for name, p in events.items()}
                              for w, events in self.workers.items()}
        out["chat_limit"] = self.chat_limit
        return out


@dataclass(frozen=True)
class PrimeReport:
    """The uncounted turns sent before the run: their end-to-end times and errors."""

    turns: int = 0
    e2e_s: tuple[float | None, ...] = ()
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"turns": self.turns, "e2e_s": list(self.e2e_s), "errors": list(self.errors)}


@dataclass(frozen=True)
class Nominal:
    """What the ideal throughput needs; each figure says where it came from."""

    chat_limit: int | None = None
    chat_limit_source: str | None = None
    service_time: float | None = None
    service_time_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"chat_limit": self.chat_limit, "chat_limit_source": self.chat_limit_source,
                "service_time_s": self.service_time, "service_time_source": self.service_time_source}


@dataclass(frozen=True)
class TargetInfo:
    """The server that took the load: its URL, and for a spawned one the profile and overrides it ran with."""

    url: str
    spawned: bool
    profile: str | None
    overrides: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "spawned": self.spawned, "profile": self.profile, "overrides": list(self.overrides)}


@dataclass(frozen=True)
class RunMeta:
    """How a run was made: target, workload, nominal figures, the generator's and the server's own view."""

    started_at: str  # ISO 8601, UTC
    duration_s: float
    target: TargetInfo
    endpoint: Endpoint
    workload: Workload
    nominal: Nominal
    settings: Mapping[str, Any] | None  # a spawned server's effective settings
    generator: GeneratorReport
    admin: AdminFigures
    offered_end_s: float
    prime: PrimeReport
    users_started: int
    unfinished: int
    interrupted: bool
    skipped_arrivals: int
    versions: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": "cmw loadtest",
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "target": self.target.to_dict(),
            "endpoint": self.endpoint.describe(),
            "workload": self.workload.describe(),
            "nominal": self.nominal.to_dict(),
            "settings": None if self.settings is None else dict(self.settings),
            "generator": self.generator.to_dict(),
            "admin": self.admin.to_dict(),
            "offered_end_s": self.offered_end_s,
            "prime": self.prime.to_dict(),
            "users_started": self.users_started,
            "unfinished": self.unfinished,
            "interrupted": self.interrupted,
            "skipped_arrivals": self.skipped_arrivals,
            "versions": dict(self.versions),
        }


@dataclass(frozen=True)
class SmokeCheck:
    check: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class SmokeReport:
    """``cmw smoke``'s checks: health and admin reachability, isolation, and each SLO."""

    checks: tuple[SmokeCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [c.to_dict() for c in self.checks]}


@dataclass(frozen=True)
class RunResult:
    """One run: ``{"meta", "summary", "turns"}`` (and ``"smoke"`` for ``cmw smoke``) as JSON."""

    meta: RunMeta
    summary: Summary
    turns: tuple[TurnRecord, ...]
    smoke: SmokeReport | None = None

    @property
    def label(self) -> str:
        """How a table or plot names this run: the profile, else the URL."""
        return self.meta.target.profile or self.meta.target.url

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"meta": self.meta.to_dict(), "summary": self.summary.to_dict(),
                               "turns": [t.to_dict() for t in self.turns]}
        if self.smoke is not None:
            out["smoke"] = self.smoke.to_dict()
        return out


@dataclass(frozen=True)
class ComparisonRow:
    """One profile's line in ``--compare``; ``speedup`` is relative to the baseline's throughput."""

    profile: str
    throughput_rps: float
    ttft_p95: float | None
    speedup: float | None
    efficiency: float | None
    errors: int
    isolation_violations: int

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "throughput_rps": self.throughput_rps, "ttft_p95": self.ttft_p95,
                "speedup": self.speedup, "efficiency": self.efficiency, "errors": self.errors,
                "isolation_violations": self.isolation_violations}


@dataclass(frozen=True)
class CompareResult:
    """The same workload per profile: ``{"meta", "comparison", "runs"}`` as JSON, each run a full one."""

    profiles: tuple[str, ...]
    baseline: str | None
    rows: tuple[ComparisonRow, ...]
    runs: tuple[RunResult, ...]

    def to_dict(self) -> dict[str, Any]:
        meta = self.runs[0].meta.to_dict() if self.runs else {}
        meta["compare"] = {"profiles": list(self.profiles), "baseline": self.baseline}
        return {"meta": meta, "comparison": [row.to_dict() for row in self.rows],
                "runs": [run.to_dict() for run in self.runs]}


Outcome = RunResult | CompareResult
"""What ``cmw loadtest`` and ``cmw smoke`` produce."""

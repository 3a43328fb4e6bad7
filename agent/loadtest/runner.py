"""One load test from target to report: spawn or reach the server, run, measure, judge.

This is the public Python API the ``cmw loadtest`` / ``cmw smoke`` commands are thin layers over:
:func:`loadtest` (one run), :func:`compare` (the same workload per profile) and :func:`smoke` (the CI preset).
Each returns a typed result (:mod:`agent.loadtest.results`) whose ``to_dict()`` is the JSON document of DESIGN's
"Machine-readable output"; :func:`verdict` turns it into an exit code.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import httpx

from agent import __version__
from agent.loadtest.engine import Progress, RunData, run_async, run_workload
from agent.loadtest.metrics import ideal_throughput, summarize
from agent.loadtest.results import (
    CompareResult,
    ComparisonRow,
    Nominal,
    Outcome,
    RunMeta,
    RunResult,
    SmokeCheck,
    SmokeReport,
    TargetInfo,
)
from agent.loadtest.slo import Slo, evaluate, parse_slos
from agent.loadtest.spawn import spawn_server
from agent.loadtest.workload import Workload, WorkloadError
from agent.settings import LoadedSettings, load_settings

SEQUENTIAL = "sequential"
SEQUENTIAL_BASE = "balanced"
SMOKE_SLOS = ("errors<1%", "ttft.p95<30s", "turns_completed>0")

LiveFactory = Callable[[Progress], contextlib.AbstractContextManager[Any]]


@dataclass(frozen=True)
class Target:
    """Where the load goes: a URL, or a server we start with a profile and overrides."""

    url: str | None = None
    spawn: bool = False
    profile: str | None = None
    overrides: tuple[str, ...] = ()
    token: str | None = None
    api_name: str | None = None  # None: "chat", else the one endpoint that takes a message and returns a chat


def nominal_from_settings(loaded: LoadedSettings) -> Nominal:
    """Chat limit and the simulator's nominal reply time (TTFT + tokens ÷ speed) of a spawned server."""
    from agent.settings.providers import PROVIDERS

    s = loaded.settings
    if s.server.app:  # an operator's app: its chat endpoint's limit comes from the server's queue figures
        return Nominal()
    limit = min(s.event_limit("chat"), s.server.max_threads)
    simulated = PROVIDERS[s.llm.provider].embedded
    service = s.sim.ttft_ms / 1000 + s.sim.reply_tokens / s.sim.tokens_per_second if simulated else None
    source = "settings"
    if simulated and s.sim.capacity and s.sim.capacity < limit:  # the backend, not the limit, bounds concurrency
        limit, source = s.sim.capacity, "settings:sim.capacity"
    return Nominal(limit, source, service, "settings:sim" if service is not None else None)


def profile_overrides(profile: str) -> tuple[str, list[str]]:
    """``sequential`` is balanced with the master switch off; every other name is a profile."""
    if profile == SEQUENTIAL:
        return SEQUENTIAL_BASE, ["enable_concurrent_processing=false"]
    return profile, []


def loadtest(
    target: Target,
    workload: Workload,
    *,
    slos: list[str] | None = None,
    chat_limit: int | None = None,
    service_time: float | None = None,
    live: LiveFactory | None = None,
) -> RunResult:
    """One run; raises ``SloError``/``ConfigError``/``WorkloadError`` (bad input), ``TargetError``/``SpawnError``."""
    parsed = parse_slos(list(slos or []))
    problems = workload.validate()
    if problems:
        raise WorkloadError("\n".join(problems))
    if target.spawn:
        base, extra = profile_overrides(target.profile) if target.profile else (None, [])
        overrides = [*target.overrides, *extra]
        loaded = load_settings(base, overrides)
        nominal = nominal_from_settings(loaded)
        with spawn_server(base, overrides) as server:
            run = _run(server.url, target, workload, live, token=server.admin_token)
        target = replace(target, overrides=tuple(overrides))
        settings = _effective(loaded)
        profile: str | None = SEQUENTIAL if target.profile == SEQUENTIAL else loaded.profile_name
    else:
        assert target.url is not None  # noqa: S101 - the command requires --url or --spawn
        run = _run(target.url, target, workload, live, token=target.token)
        nominal, settings, profile = Nominal(), None, target.profile
    nominal = _merge_nominal(nominal, run, chat_limit, service_time)
    return build_result(run, parsed, nominal, target=target, profile=profile, settings=settings)


def _effective(loaded: LoadedSettings) -> dict[str, Any]:
    """A spawned server's settings as the report records them: dotted key → effective value."""
    return {key: entry["value"] for key, entry in loaded.describe().items()}


def _run(url: str, target: Target, workload: Workload, live: LiveFactory | None, *, token: str | None) -> RunData:
    progress = Progress(workload.planned)
    with live(progress) if live is not None else contextlib.nullcontext():
        return run_async(run_workload(url, workload, api_name=target.api_name, admin_token=token, progress=progress))


def _merge_nominal(base: Nominal, run: RunData, chat_limit: int | None, service_time: float | None) -> Nominal:
    """Flags beat the server's admin figures, which beat the settings we spawned it with."""
    limit, limit_src = base.chat_limit, base.chat_limit_source
    if run.admin.chat_limit:
        limit, limit_src = run.admin.chat_limit, "admin:/admin/api/queue"
    if chat_limit is not None:
        limit, limit_src = chat_limit, "--chat-limit"
    service, service_src = base.service_time, base.service_time_source
    if service_time is not None:
        service, service_src = service_time, "--service-time"
    return Nominal(limit, limit_src, service, service_src)


def build_result(
    run: RunData,
    slos: list[Slo],
    nominal: Nominal,
    *,
    target: Target,
    profile: str | None,
    settings: dict[str, Any] | None,
) -> RunResult:
    """The figures, SLO outcomes and meta of one run."""
    w = run.workload
    ideal = ideal_throughput(users=w.users if w.rate is None else None, rate=w.rate, chat_limit=nominal.chat_limit,
                             service_time=nominal.service_time, think_time=w.think_time)
    summary = summarize(run.turns, offered_end=run.offered_end, ideal_rps=ideal)
    summary = replace(summary, slo=evaluate(slos, summary))
    meta = RunMeta(
        started_at=datetime.fromtimestamp(run.started_at, UTC).isoformat(timespec="seconds"),
        duration_s=round(run.duration_s, 3),
        target=TargetInfo(url=run.endpoint.base_url, spawned=target.spawn, profile=profile,
                          overrides=target.overrides if target.spawn else ()),
        endpoint=run.endpoint,
        workload=w,
        nominal=nominal,
        settings=settings,
        generator=run.generator,
        admin=run.admin,
        offered_end_s=round(run.offered_end, 6),
        prime=run.prime,
        users_started=run.users_started,
        unfinished=run.unfinished,
        interrupted=run.interrupted,
        skipped_arrivals=run.skipped_arrivals,
        versions={
            "cmw": __version__,
            "python": platform.python_version(),
            "httpx": httpx.__version__,
            "gradio_server": run.endpoint.gradio_version,
            "platform": platform.platform(terse=True),
        },
    )
    return RunResult(meta=meta, summary=summary, turns=run.turns)


def compare(
    profiles: list[str],
    workload: Workload,
    *,
    overrides: list[str] | None = None,
    slos: list[str] | None = None,
    service_time: float | None = None,
    live: LiveFactory | None = None,
    on_profile: Callable[[str], None] | None = None,
) -> CompareResult:
    """The same workload against a spawned server per profile; speedups relative to ``sequential`` (or the first)."""
    parse_slos(list(slos or []))  # a bad expression fails before the first server starts
    for name in profiles:
        base, extra = profile_overrides(name)
        load_settings(base, [*(overrides or []), *extra])
    runs: list[RunResult] = []
    for name in profiles:
        if on_profile is not None:
            on_profile(name)
        target = Target(spawn=True, profile=name, overrides=tuple(overrides or ()))
        runs.append(loadtest(target, workload, slos=slos, service_time=service_time, live=live))
    return compare_runs(profiles, runs)


def compare_runs(profiles: list[str], runs: list[RunResult]) -> CompareResult:
    """One row per profile, speedup relative to ``sequential`` when it ran, else to the first profile."""
    baseline_index = profiles.index(SEQUENTIAL) if SEQUENTIAL in profiles else 0
    baseline = runs[baseline_index].summary.throughput_rps if runs else 0.0
    rows = tuple(
        ComparisonRow(
            profile=name,
            throughput_rps=run.summary.throughput_rps,
            ttft_p95=run.summary.ttft.p95,
            speedup=round(run.summary.throughput_rps / baseline, 3) if baseline else None,
            efficiency=run.summary.efficiency,
            errors=run.summary.error_count,
            isolation_violations=run.summary.isolation_violations,
        )
        for name, run in zip(profiles, runs, strict=True)
    )
    return CompareResult(profiles=tuple(profiles), baseline=profiles[baseline_index] if profiles else None,
                         rows=rows, runs=tuple(runs))


def smoke(
    profile: str | None,
    *,
    overrides: list[str] | None = None,
    users: int = 4,
    turns: int = 2,
    live: LiveFactory | None = None,
) -> RunResult:
    """CI preset: a short closed-loop run on a spawned server, isolation and loose SLOs, health and admin."""
    workload = Workload(users=users, turns=turns, duration=120.0, timeout=60.0, max_requests=users * turns)
    target = Target(spawn=True, profile=profile, overrides=tuple(overrides or ()))

    loaded = load_settings(profile, list(target.overrides))
    with spawn_server(profile, list(target.overrides)) as server:
        checks = _probe_admin(server.url, server.admin_token)
        run = _run(server.url, target, workload, live, token=server.admin_token)
    nominal = _merge_nominal(nominal_from_settings(loaded), run, None, None)
    result = build_result(run, parse_slos(list(SMOKE_SLOS)), nominal, target=target, profile=loaded.profile_name,
                          settings=_effective(loaded))
    summary = result.summary
    checks.append(SmokeCheck("isolation", summary.isolation_violations == 0 and summary.isolation_judged,
                             f"{summary.isolation_violations} violating turn(s) in {summary.isolation_checked} "
                             "judged"))
    checks += [SmokeCheck(f"slo {expr}", outcome.passed, f"value {outcome.value}") for expr, outcome in
               summary.slo.items()]
    return replace(result, smoke=SmokeReport(tuple(checks)))


def _probe_admin(url: str, token: str | None = None) -> list[SmokeCheck]:
    """Health and admin reachability of a cmw server: both must answer with the token and refuse without."""
    checks: list[SmokeCheck] = []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(timeout=10.0) as client:
        for path in ("/admin/api/health", "/admin/api/queue"):
            try:
                with_token = client.get(f"{url}{path}", headers=headers).status_code
                without = client.get(f"{url}{path}").status_code
            except httpx.HTTPError as exc:
                checks.append(SmokeCheck(f"GET {path}", False, type(exc).__name__))
                continue
            passed = with_token == 200 and without in (401, 403)
            checks.append(SmokeCheck(f"GET {path}", passed, f"HTTP {with_token} with the token, {without} without"))
    return checks


def verdict(result: Outcome) -> tuple[int, list[str]]:
    """(exit code, reasons): 3 isolation violated, 1 a check failed, 0 all held."""
    runs = result.runs if isinstance(result, CompareResult) else (result,)
    violating = sorted({s for run in runs for s in run.summary.violating_sessions})
    if violating:
        return 3, [f"session isolation violated in {len(violating)} session(s): {', '.join(violating)}"]
    reasons = []
    for run in runs:
        label = f"[{run.meta.target.profile}] " if isinstance(result, CompareResult) else ""
        if run.summary.turns_completed == 0:
            reasons.append(f"{label}no turn completed")
        for expr, outcome in run.summary.slo.items():
            if not outcome.passed:
                reasons.append(f"{label}SLO {expr} breached: value {outcome.value}")
    if isinstance(result, RunResult) and result.smoke is not None:
        reasons += [f"smoke check {c.check} failed: {c.detail}" for c in result.smoke.checks
                    if not c.passed and not c.check.startswith("slo ")]
    return (1 if reasons else 0), reasons

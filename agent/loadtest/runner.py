"""One load test from target to report: spawn or reach the server, run, measure, judge.

This is the public Python API the ``cmw loadtest`` / ``cmw smoke`` commands are thin layers over:
:func:`loadtest` (one run), :func:`compare` (the same workload per profile) and :func:`smoke` (the CI preset).
Each returns the JSON document of DESIGN's "Machine-readable output"; :func:`verdict` turns it into an exit code.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import httpx

from agent import __version__
from agent.loadtest.engine import Progress, RunData, Workload, WorkloadError, run_async, run_workload
from agent.loadtest.metrics import ideal_throughput, summarize
from agent.loadtest.slo import Slo, evaluate, parse_slos
from agent.loadtest.spawn import spawn_server
from agent.settings import LoadedSettings, load_settings

SEQUENTIAL = "sequential"
SEQUENTIAL_BASE = "balanced"
SMOKE_SLOS = ("errors<1%", "ttft.p95<30s", "turns_completed>0")

LiveFactory = Callable[[Progress], contextlib.AbstractContextManager[Any]]


@dataclass
class Target:
    """Where the load goes: a URL, or a ``cmw serve`` we start with a profile and overrides."""

    url: str | None = None
    spawn: bool = False
    profile: str | None = None
    overrides: list[str] = field(default_factory=list)
    token: str | None = None
    api_name: str = "chat"


@dataclass(frozen=True)
class Nominal:
    """What the ideal throughput needs; each figure says where it came from."""

    chat_limit: int | None = None
    chat_limit_source: str | None = None
    service_time: float | None = None
    service_time_source: str | None = None


def nominal_from_settings(loaded: LoadedSettings) -> Nominal:
    """Chat limit and the simulator's nominal reply time (TTFT + tokens ÷ speed) of a spawned server."""
    s = loaded.settings
    limit = min(s.event_limit("chat"), s.server.max_threads)
    service = s.sim.ttft_ms / 1000 + s.sim.reply_tokens / s.sim.tokens_per_second if s.llm.provider == "sim" else None
    return Nominal(limit, "settings", service, "settings:sim" if service is not None else None)


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
) -> dict[str, Any]:
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
        target = replace(target, overrides=overrides)
        settings = {key: entry["value"] for key, entry in loaded.describe().items()}
        profile: str | None = SEQUENTIAL if target.profile == SEQUENTIAL else loaded.profile_name
    else:
        assert target.url is not None  # noqa: S101 - the command requires --url or --spawn
        run = _run(target.url, target, workload, live, token=target.token)
        nominal, settings, profile = Nominal(), None, target.profile
    nominal = _merge_nominal(nominal, run, chat_limit, service_time)
    return build_document(run, parsed, nominal, target=target, profile=profile, settings=settings)


def _run(url: str, target: Target, workload: Workload, live: LiveFactory | None, *, token: str | None) -> RunData:
    progress = Progress(workload.planned)
    with live(progress) if live is not None else contextlib.nullcontext():
        return run_async(run_workload(url, workload, api_name=target.api_name, admin_token=token, progress=progress))


def _merge_nominal(base: Nominal, run: RunData, chat_limit: int | None, service_time: float | None) -> Nominal:
    """Flags beat the server's admin figures, which beat the settings we spawned it with."""
    limit, limit_src = base.chat_limit, base.chat_limit_source
    if run.admin.get("chat_limit"):
        limit, limit_src = run.admin["chat_limit"], "admin:/admin/api/queue"
    if chat_limit is not None:
        limit, limit_src = chat_limit, "--chat-limit"
    service, service_src = base.service_time, base.service_time_source
    if service_time is not None:
        service, service_src = service_time, "--service-time"
    return Nominal(limit, limit_src, service, service_src)


def build_document(
    run: RunData,
    slos: list[Slo],
    nominal: Nominal,
    *,
    target: Target,
    profile: str | None,
    settings: dict[str, Any] | None,
) -> dict[str, Any]:
    """``{"meta", "summary", "turns"}`` of one run."""
    w = run.workload
    ideal = ideal_throughput(users=w.users if w.rate is None else None, rate=w.rate, chat_limit=nominal.chat_limit,
                             service_time=nominal.service_time, think_time=w.think_time)
    summary = summarize(run.turns, offered_end=run.offered_end, ideal_rps=ideal)
    summary["slo"] = evaluate(slos, summary)
    meta = {
        "tool": "cmw loadtest",
        "started_at": datetime.fromtimestamp(run.started_at, UTC).isoformat(timespec="seconds"),
        "duration_s": round(run.duration_s, 3),
        "target": {
            "url": run.endpoint.base_url,
            "spawned": target.spawn,
            "profile": profile,
            "overrides": list(target.overrides) if target.spawn else [],
        },
        "endpoint": run.endpoint.describe(),
        "workload": w.describe(),
        "nominal": {
            "chat_limit": nominal.chat_limit,
            "chat_limit_source": nominal.chat_limit_source,
            "service_time_s": nominal.service_time,
            "service_time_source": nominal.service_time_source,
        },
        "settings": settings,
        "generator": run.generator,
        "admin": run.admin,
        "offered_end_s": round(run.offered_end, 6),
        "prime": run.prime,
        "users_started": run.users_started,
        "unfinished": run.unfinished,
        "interrupted": run.interrupted,
        "skipped_arrivals": run.skipped_arrivals,
        "versions": {
            "cmw": __version__,
            "python": platform.python_version(),
            "httpx": httpx.__version__,
            "gradio_server": run.endpoint.gradio_version,
            "platform": platform.platform(terse=True),
        },
    }
    return {"meta": meta, "summary": summary, "turns": [t.to_dict() for t in run.turns]}


def compare(
    profiles: list[str],
    workload: Workload,
    *,
    overrides: list[str] | None = None,
    slos: list[str] | None = None,
    service_time: float | None = None,
    live: LiveFactory | None = None,
    on_profile: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The same workload against a spawned server per profile; speedups relative to ``sequential`` (or the first)."""
    parse_slos(list(slos or []))  # a bad expression fails before the first server starts
    for name in profiles:
        base, _ = profile_overrides(name)
        load_settings(base, [*(overrides or []), *profile_overrides(name)[1]])
    runs: list[dict[str, Any]] = []
    for name in profiles:
        if on_profile is not None:
            on_profile(name)
        target = Target(spawn=True, profile=name, overrides=list(overrides or []))
        runs.append(loadtest(target, workload, slos=slos, service_time=service_time, live=live))
    return comparison_document(profiles, runs)


def comparison_document(profiles: list[str], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"meta", "comparison", "runs"}``; each run is a full one-run document."""
    baseline_index = profiles.index(SEQUENTIAL) if SEQUENTIAL in profiles else 0
    baseline = runs[baseline_index]["summary"]["throughput_rps"] if runs else 0.0
    comparison = []
    for name, doc in zip(profiles, runs, strict=True):
        rps = doc["summary"]["throughput_rps"]
        comparison.append({
            "profile": name,
            "throughput_rps": rps,
            "ttft_p95": doc["summary"]["ttft"]["p95"],
            "speedup": round(rps / baseline, 3) if baseline else None,
            "efficiency": doc["summary"]["efficiency"],
            "errors": sum(doc["summary"]["errors"].values()),
            "isolation_violations": doc["summary"]["isolation_violations"],
        })
    meta = dict(runs[0]["meta"]) if runs else {}
    meta["compare"] = {"profiles": profiles, "baseline": profiles[baseline_index] if profiles else None}
    return {"meta": meta, "comparison": comparison, "runs": runs}


def smoke(
    profile: str | None,
    *,
    overrides: list[str] | None = None,
    users: int = 4,
    turns: int = 2,
    live: LiveFactory | None = None,
) -> dict[str, Any]:
    """CI preset: a short closed-loop run on a spawned server, isolation and loose SLOs, health and admin."""
    checks: list[dict[str, Any]] = []
    workload = Workload(users=users, turns=turns, duration=120.0, timeout=60.0, max_requests=users * turns)
    target = Target(spawn=True, profile=profile, overrides=list(overrides or []))

    loaded = load_settings(profile, target.overrides)
    with spawn_server(profile, target.overrides) as server:
        checks.extend(_probe_admin(server.url, server.admin_token))
        run = _run(server.url, target, workload, live, token=server.admin_token)
    nominal = _merge_nominal(nominal_from_settings(loaded), run, None, None)
    settings = {key: entry["value"] for key, entry in loaded.describe().items()}
    doc = build_document(run, parse_slos(list(SMOKE_SLOS)), nominal, target=target, profile=loaded.profile_name,
                         settings=settings)
    summary = doc["summary"]
    checks.append({"check": "isolation", "passed": summary["isolation_violations"] == 0,
                   "detail": f"{summary['isolation_violations']} violating turn(s)"})
    for expr, result in summary["slo"].items():
        checks.append({"check": f"slo {expr}", "passed": result["passed"], "detail": f"value {result['value']}"})
    doc["smoke"] = {"passed": all(c["passed"] for c in checks), "checks": checks}
    return doc


def _probe_admin(url: str, token: str | None = None) -> list[dict[str, Any]]:
    """Health and admin reachability of a cmw server: both must answer with the token and refuse without."""
    checks = []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(timeout=10.0) as client:
        for path in ("/admin/api/health", "/admin/api/queue"):
            try:
                with_token = client.get(f"{url}{path}", headers=headers).status_code
                without = client.get(f"{url}{path}").status_code
            except httpx.HTTPError as exc:
                checks.append({"check": f"GET {path}", "passed": False, "detail": type(exc).__name__})
                continue
            passed = with_token == 200 and without in (401, 403)
            checks.append({"check": f"GET {path}", "passed": passed,
                           "detail": f"HTTP {with_token} with the token, {without} without"})
    return checks


def verdict(doc: dict[str, Any]) -> tuple[int, list[str]]:
    """(exit code, reasons): 3 isolation violated, 1 a check failed, 0 all held."""
    runs = doc.get("runs") or [doc]
    violating = sorted({s for run in runs for s in run["summary"]["violating_sessions"]})
    if violating:
        return 3, [f"session isolation violated in {len(violating)} session(s): {', '.join(violating)}"]
    reasons = []
    for run in runs:
        label = f"[{run['meta']['target']['profile']}] " if "runs" in doc else ""
        summary = run["summary"]
        if summary["turns_completed"] == 0:
            reasons.append(f"{label}no turn completed")
        for expr, result in summary["slo"].items():
            if not result["passed"]:
                reasons.append(f"{label}SLO {expr} breached: value {result['value']}")
    if "smoke" in doc:
        reasons += [f"smoke check {c['check']} failed: {c['detail']}" for c in doc["smoke"]["checks"]
                    if not c["passed"] and not c["check"].startswith("slo ")]
    return (1 if reasons else 0), reasons

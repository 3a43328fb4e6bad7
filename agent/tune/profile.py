"""The profile `cmw tune` writes: `cmw config init`'s format with the measured values, under a header that says
when, against what and how they were measured — so the file explains itself when it is read a year later."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from agent.tune.runner import TuneResult


def tuned_overrides(result: TuneResult) -> list[str]:
    """The keys the profile changes from its base."""
    assert result.chosen_limit is not None  # noqa: S101 - only a result with a choice is written
    changes = [f"{result.key}={result.chosen_limit}"]
    if result.request.workers_max:
        changes.append(f"server.workers={result.chosen_workers}")
    return changes


def profile_text(result: TuneResult, *, name: str) -> str:
    """The whole TOML file: header, then every key as `cmw config init` writes them."""
    from agent.settings import load_settings, profile_toml

    base = result.request.base or "balanced"
    loaded = load_settings(base, tuned_overrides(result), environ={}, env_file=None)
    settings = loaded.settings
    if settings.server.max_threads < (result.chosen_limit or 0):
        settings = load_settings(base, [*tuned_overrides(result), f"server.max_threads={result.chosen_limit}"],
                                 environ={}, env_file=None).settings
    body = profile_toml(
        settings,
        title=f"cmw profile '{name}', written by `cmw tune` from profile {base} with the measured values.",
        description=f"Measured by cmw tune: {result.event} limit {result.chosen_limit}"
                    + (f", {result.chosen_workers} workers" if result.request.workers_max else "")
                    + f" (from {base}).",
    )
    return "\n".join(header(result)) + "\n#\n" + body


def header(result: TuneResult) -> list[str]:
    """Comment lines: date, version, backend, machine, SLOs and the table of what was measured."""
    from agent import __version__

    backend = result.backend
    sim = backend.get("sim")
    where = backend.get("base_url") or backend.get("provider")
    lines = [
        f"# Tuned by `cmw tune` on {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"cmw {__version__}.",
        f"# Backend: {where}, model {backend.get('model')}"
        + (f" (embedded simulator: capacity {sim.get('capacity')}, {sim.get('tokens_per_second')} tokens/s, "
           f"{sim.get('reply_tokens')} tokens per reply, {sim.get('ttft_ms')} ms to first token)" if sim else "")
        + (f"; app {result.app}" if result.app else "") + ".",
        f"# Machine: {backend.get('cores')} cores; server {backend.get('server')}.",
        f"# One user alone: TTFT p95 {result.baseline.ttft_p95:.3f} s, end-to-end p95 "
        f"{result.baseline.e2e_p95:.3f} s, {result.baseline.throughput_rps:.2f} turns/s.",
        f"# SLOs: {', '.join(result.slos)}.",
        f"# Chosen: {result.key} = {result.chosen_limit}"
        + (f", server.workers = {result.chosen_workers}" if result.request.workers_max else "")
        + (" — the search was cut short by its budget" if result.cut_short else "")
        + (f"; limits {', '.join(map(str, result.tie()))} served within the noise, and the smaller limit won"
           if result.tie() else "") + ".",
        "#",
        "# Measured (closed loop, one user per slot, first turn of each user left out):",
        "# | workers | limit | users | turns/s | TTFT p95 s | e2e p95 s | errors | SLOs |",
        "# |---|---|---|---|---|---|---|---|",
    ]
    for m in result.measurements:
        lines.append(f"# | {m.workers} | {m.limit} | {m.users} | {m.throughput_rps:.2f} | {_s(m.ttft_p95)} | "
                     f"{_s(m.e2e_p95)} | {m.error_rate:.1%} | {'hold' if m.slo_passed else 'breached'} |")
    return lines


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_profile(result: TuneResult, path: Path, *, name: str) -> str:
    """Write and re-read the profile (a file that does not validate is a bug: raise it); the text written."""
    from agent.settings import load_profile

    text = profile_text(result, name=name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    load_profile(path.resolve())
    return text


def as_table(result: TuneResult) -> list[dict[str, Any]]:
    return [m.to_dict() for m in result.measurements]

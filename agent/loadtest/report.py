"""What people see of a run: live progress, summary and comparison tables, JSON files and a plot."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from agent.loadtest.engine import Progress
from agent.loadtest.results import LATENCIES, STATS, CompareResult, Outcome, RunResult


@contextlib.contextmanager
def live_progress(progress: Progress, console: Console, *, label: str = "") -> Iterator[None]:
    """A progress line on ``console`` (stderr) redrawn four times a second while the run goes on."""
    started = time.perf_counter()

    def render() -> Group:
        finished = progress.done + progress.failed
        line = Text.assemble(
            (f"{label} " if label else "", "bold"),
            f"{finished}/{progress.planned} turns  ",
            (f"{progress.failed} failed  ", "red" if progress.failed else "dim"),
            (f"{progress.violations} isolation  ", "bold red" if progress.violations else "dim"),
            f"{progress.in_flight} in flight  ",
            f"ttft {progress.last_ttft:.3f}s  " if progress.last_ttft is not None else "",
            (f"{time.perf_counter() - started:.0f}s", "dim"),
        )
        return Group(ProgressBar(total=max(progress.planned, 1), completed=finished, width=40), line)

    with Live(render(), console=console, refresh_per_second=4, transient=True, get_renderable=render):
        yield


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.3f} s"


def summary_table(result: RunResult) -> Table:
    """Latency percentiles per metric, then the run's totals."""
    summary = result.summary
    table = Table(title="latency", title_justify="left", show_edge=False)
    table.add_column("metric")
    for stat in STATS:
        table.add_column(stat, justify="right")
    names = {"queue_wait": "queue wait", "ttft": "TTFT", "itl": "inter-token", "e2e": "end-to-end"}
    for metric in LATENCIES:
        stats = summary.latency(metric)
        table.add_row(names[metric], *(_seconds(stats.stat(stat)) for stat in STATS))
    return table


def totals_table(result: RunResult) -> Table:
    summary, meta = result.summary, result.meta
    table = Table(show_header=False, show_edge=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("turns", f"{summary.turns_completed} completed, {summary.turns_failed} failed, "
                           f"{summary.turns_warmup} warm-up (excluded), {meta.unfinished} cut off")
    table.add_row("throughput", f"{summary.throughput_rps:.3f} turns/s, {summary.tokens_per_s:.1f} tokens/s "
                                f"steady over {summary.window_s:.2f} s; "
                                f"{summary.throughput_overall_rps:.3f} turns/s overall")
    nominal = meta.nominal
    if summary.efficiency is not None and summary.ideal_rps is not None and nominal.service_time is not None:
        table.add_row("efficiency", f"{summary.efficiency:.0%} of ideal {summary.ideal_rps:.3f} turns/s "
                                    f"(chat limit {nominal.chat_limit}, service {nominal.service_time:.3f} s)")
    else:
        table.add_row("efficiency", "unknown (give --chat-limit and --service-time, or use --spawn)")
    table.add_row("errors", ", ".join(f"{k} {v}" for k, v in summary.errors.items()) + f"  ({summary.error_rate:.1%})")
    if summary.tool_steps_per_turn:
        table.add_row("agent", f"{summary.llm_calls_per_turn:.2f} LLM calls and {summary.tool_steps_per_turn:.2f} "
                               f"tool steps per turn, {summary.tool_s_per_turn * 1000:.1f} ms in tools per turn")
    violations = summary.isolation_violations
    if violations:
        isolation = Text(f"{violations} violating turn(s) in sessions {', '.join(summary.violating_sessions)}",
                         style="bold red")
    elif summary.isolation_judged:
        isolation = Text(f"held ({summary.isolation_checked} turns showed their own session's messages)",
                         style="green")
    else:
        isolation = Text("cannot be judged: no reply or chat history showed what its session sent",
                         style="bold yellow")
    table.add_row("isolation", isolation)
    gen = meta.generator
    verdict = Text("INCONCLUSIVE: " + "; ".join(gen.reasons), style="bold yellow") if gen.inconclusive else \
        Text(f"cpu {gen.cpu_share:.0%} of a core, loop lag p99 {gen.loop_lag_ms['p99']} ms", style="dim")
    table.add_row("generator", verdict)
    admin = meta.admin
    if admin.status == "ok":
        peaks = ", ".join(f"{name}: peak running {p.running} of limit {p.limit}, peak waiting {p.waiting}"
                          for name, p in admin.peak.items() if p.running or p.waiting)
        table.add_row("server queue", peaks or f"no event seen running in {admin.samples} samples")
        for worker, events in admin.workers.items():
            chat = next((p for name, p in events.items() if "chat" in name), None)
            if chat is not None:
                table.add_row(f"  worker {worker}", f"chat peak running {chat.running} of limit {chat.limit}, "
                              f"peak waiting {chat.waiting}")
    else:
        table.add_row("server queue", Text(f"admin figures skipped: {admin.status}", style="dim"))
    for expr, outcome in summary.slo.items():
        mark = Text("pass", style="green") if outcome.passed else Text("FAIL", style="bold red")
        table.add_row(f"slo {expr}", Text.assemble(mark, f"  value {outcome.value}"))
    return table


def print_summary(result: RunResult, console: Console) -> None:
    console.print(summary_table(result))
    console.print()
    console.print(totals_table(result))


def comparison_table(result: CompareResult) -> Table:
    table = Table(title=f"same workload per profile (speedup vs {result.baseline})",
                  title_justify="left", show_edge=False)
    for name, justify in (("profile", "left"), ("turns/s", "right"), ("TTFT p95", "right"), ("speedup", "right"),
                          ("efficiency", "right"), ("errors", "right"), ("isolation", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in result.rows:
        table.add_row(
            row.profile, f"{row.throughput_rps:.3f}", _seconds(row.ttft_p95),
            "–" if row.speedup is None else f"{row.speedup:.2f}×",
            "–" if row.efficiency is None else f"{row.efficiency:.0%}",
            str(row.errors), str(row.isolation_violations),
        )
    return table


def write_json(result: Outcome, path: Path) -> None:
    path.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_plot(result: Outcome, path: Path) -> None:
    """One PNG with what the HTML report shows: per run, latency over time, the TTFT/end-to-end distribution, the
    server's in-flight and queue (admin figures), and errors over time. ``--compare`` gives each profile a column,
    rows sharing their scales so the profiles compare at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agent.loadtest.html import runs_of

    runs = runs_of(result)
    if len(runs) == 1:
        fig, axes = plt.subplots(2, 2, figsize=(13, 7.5))
        columns = [list(axes.flat)]
    else:
        fig, axes = plt.subplots(4, len(runs), figsize=(5.4 * len(runs), 13), squeeze=False, sharex="row",
                                 sharey="row")
        columns = [list(axes[:, i]) for i in range(len(runs))]
    for run, (over_time, spread, server, errors) in zip(runs, columns, strict=True):
        _plot_latency(run, over_time)
        _plot_spread(run, spread)
        _plot_server(run, server)
        _plot_errors(run, errors)
    if isinstance(result, CompareResult):
        speedups = ", ".join(f"{row.profile} {row.speedup:.2f}×" for row in result.rows if row.speedup is not None)
        fig.suptitle(f"same workload per profile; throughput speed-up vs {result.baseline}: {speedups}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_latency(run: RunResult, ax: Any) -> None:
    from agent.loadtest.html import ERROR_COLORS, LATENCY_COLORS, LATENCY_NAMES, failures, latency_points, seconds

    for key in ("e2e", "ttft", "queue_wait"):
        points = latency_points(run, key)
        if points:
            ax.scatter(*zip(*points, strict=True), s=8, alpha=0.6, color=LATENCY_COLORS[key], label=LATENCY_NAMES[key])
    for cls, times in failures(run).items():
        ax.scatter(times, [0] * len(times), marker="x", color=ERROR_COLORS.get(cls, "red"), label=f"failed: {cls}")
    s = run.summary
    ax.set_title(f"{run.label}\n{s.throughput_rps:.2f} turns/s · TTFT p95 {seconds(s.ttft.p95)} · "
                 f"e2e p95 {seconds(s.e2e.p95)} · {s.error_count} errors", fontsize=10)
    ax.set(xlabel="submitted at (s from start)", ylabel="latency per turn (s)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize="small")


def _plot_spread(run: RunResult, ax: Any) -> None:
    from agent.loadtest.html import LATENCY_COLORS, latency_samples

    samples = {name: values for name, key in (("TTFT", "ttft"), ("end-to-end", "e2e"))
               if (values := latency_samples(run, key))}
    if samples:
        ax.hist(list(samples.values()), bins=30, label=list(samples), alpha=0.8,
                color=[LATENCY_COLORS["ttft" if n == "TTFT" else "e2e"] for n in samples])
        ax.legend(fontsize="small")
    ax.set(title=f"{run.label}: TTFT and end-to-end distribution", xlabel="seconds", ylabel="turns")


def _plot_server(run: RunResult, ax: Any) -> None:
    from agent.loadtest.html import queue_series

    admin = run.meta.admin
    ax.set(title=f"{run.label}: server in-flight and queue", xlabel="seconds from start", ylabel="events")
    busy = queue_series(run)
    if not busy:
        why = f"no server figures: {admin.status}" if admin.status != "ok" else \
            f"no event running or waiting in {admin.samples} samples"
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, wrap=True, color="#666")
        return
    for event, points in busy.items():
        times = [p.t for p in points]
        ax.step(times, [p.running for p in points], where="post", label=f"{event} running")
        ax.step(times, [p.waiting for p in points], where="post", label=f"{event} waiting")
        limits = [(p.t, p.limit) for p in points if p.limit is not None]
        if limits:
            ax.step(*zip(*limits, strict=True), where="post", linestyle="--", color="#555", label=f"{event} limit")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize="small")


def _plot_errors(run: RunResult, ax: Any) -> None:
    from agent.loadtest.html import ERROR_COLORS, failures

    ax.set(title=f"{run.label}: failed turns over time", xlabel="submitted at (s from start)", ylabel="turns")
    failed = failures(run)
    if not failed:
        ax.text(0.5, 0.5, "no turn failed", ha="center", va="center", transform=ax.transAxes, color="#2e7d32")
        return
    end = max([run.meta.duration_s, *(t for times in failed.values() for t in times)])
    ax.hist(list(failed.values()), bins=30, range=(0, end or 1), stacked=True, label=list(failed),
            color=[ERROR_COLORS.get(c, "red") for c in failed])
    ax.legend(fontsize="small")

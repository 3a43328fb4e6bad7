"""``cmw loadtest --html``: one self-contained HTML file of a run or a ``--compare``, for sharing.

It opens offline (inline CSS, inline SVG charts, no scripts, no fetched fonts or images) and every string from the
run is escaped, so an error message from the server cannot inject markup. Sections, each ``<section id=…>``:
``comparison`` (``--compare`` only), ``summary``, ``latency-over-time``, ``distributions``, ``server-queue``,
``errors`` and ``run``. :func:`render` is the entry point; the data helpers here also feed the ``--plot`` PNG, and
the building blocks (tables, charts, page) are :mod:`agent.loadtest.htmlkit`'s, re-exported for reuse.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from agent.loadtest.htmlkit import (
    Html,
    Series,
    badge,
    cdf_chart,
    definitions,
    esc,
    grid,
    histogram,
    join,
    line_chart,
    note,
    page,
    section,
    table,
)
from agent.loadtest.results import LATENCIES, STATS, CompareResult, Outcome, QueuePoint, RunResult

__all__ = ["Html", "Series", "cdf_chart", "esc", "histogram", "line_chart", "page", "render", "section", "table",
           "write_html"]

LATENCY_NAMES = {"queue_wait": "queue wait", "ttft": "TTFT", "itl": "inter-token", "e2e": "end-to-end"}
LATENCY_COLORS = {"e2e": "#0072b2", "ttft": "#e69f00", "queue_wait": "#009e73"}
ERROR_COLORS = {"queue_full": "#d55e00", "timeout": "#cc79a7", "app_error": "#8c6d1f", "disconnect": "#444444"}
DETAIL_CHARS = 400  # of one error's detail in the report: a server's whole HTML error page helps no one
DETAIL_ROWS = 20  # distinct errors listed per run
SECTIONS = {"comparison": "Profiles compared", "summary": "Summary", "latency-over-time": "Latency over time",
            "distributions": "TTFT and end-to-end distributions", "server-queue": "Server in-flight and queue",
            "errors": "Errors", "run": "How the run was made"}


# --------------------------------------------------------------------------- data of one run (HTML and PNG)


def runs_of(result: Outcome) -> tuple[RunResult, ...]:
    return result.runs if isinstance(result, CompareResult) else (result,)


def latency_points(run: RunResult, metric: str) -> list[tuple[float, float]]:
    """(join time, latency) of each measured completed turn: latency over time, as the run went."""
    return [(t.t_join, v) for t in run.turns if t.ok and not t.warmup and (v := getattr(t, metric)) is not None]


def latency_samples(run: RunResult, metric: str) -> list[float]:
    return [v for _, v in latency_points(run, metric)]


def failures(run: RunResult) -> dict[str, list[float]]:
    """Join times of the measured failed turns, by error class (only classes that occurred)."""
    out: dict[str, list[float]] = {}
    for t in run.turns:
        if t.error is not None and not t.warmup:
            out.setdefault(t.error, []).append(t.t_join)
    return out


def queue_series(run: RunResult) -> dict[str, tuple[QueuePoint, ...]]:
    """The server's running/waiting over time per busy event (empty without admin figures)."""
    return dict(run.meta.admin.series)


def _end(runs: Sequence[RunResult]) -> float:
    """The longest run's length: charts side by side share their time axis."""
    ends = [r.meta.duration_s for r in runs] + [t.t_end or t.t_join for r in runs for t in r.turns]
    return max(ends, default=1.0) or 1.0


def _max_latency(runs: Sequence[RunResult], metrics: Sequence[str]) -> float:
    return max((v for r in runs for m in metrics for v in latency_samples(r, m)), default=1.0) or 1.0


# --------------------------------------------------------------------------- formatting


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.3f} s"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def isolation_verdict(run: RunResult) -> Html:
    s = run.summary
    if s.isolation_violations:
        return join([badge("VIOLATED", "bad"), f" {s.isolation_violations} turn(s) in session(s) "
                     f"{', '.join(s.violating_sessions)}"], "")
    if s.isolation_judged:
        return join([badge("held", "good"), f" {s.isolation_checked} turn(s) showed their own session's messages"],
                    "")
    return join([badge("cannot be judged", "warn"), " no reply or chat history showed what its session sent"], "")


def _efficiency(run: RunResult) -> str:
    s, nominal = run.summary, run.meta.nominal
    if s.efficiency is None or s.ideal_rps is None:
        return "unknown (no chat limit or service time: give --chat-limit and --service-time, or use --spawn)"
    return (f"{s.efficiency:.0%} of ideal {s.ideal_rps:.3f} turns/s (chat limit {nominal.chat_limit}, "
            f"service {seconds(nominal.service_time)})")


def _errors_cell(run: RunResult) -> str:
    s = run.summary
    by_class = ", ".join(f"{k} {v}" for k, v in s.errors.items() if v)
    return f"{s.error_count} ({s.error_rate:.1%})" + (f": {by_class}" if by_class else "")


# --------------------------------------------------------------------------- sections


def _comparison(result: CompareResult) -> Html:
    rows = []
    for row, run in zip(result.rows, result.runs, strict=True):
        rows.append([row.profile, f"{row.throughput_rps:.3f}",
                     "–" if row.speedup is None else f"{row.speedup:.2f}×", seconds(row.ttft_p95),
                     seconds(run.summary.e2e.p95), f"{row.errors} ({run.summary.error_rate:.1%})",
                     _pct(row.efficiency), isolation_verdict(run)])
    header = ["profile", "turns/s", f"speed-up vs {result.baseline}", "TTFT p95", "end-to-end p95", "errors",
              "efficiency", "isolation"]
    best = max(result.rows, key=lambda r: r.throughput_rps, default=None)
    return section("comparison", SECTIONS["comparison"],
                   note(f"The same workload on a spawned server per profile; speed-up is throughput relative to "
                        f"{result.baseline}." + (f" Highest throughput: {best.profile}." if best else "")),
                   table(header, rows, align="lrrrrrrl"))


def _summary(runs: Sequence[RunResult]) -> Html:
    def row(name: str, cells: Sequence[object]) -> list[object]:
        return [name, *cells]

    rows = [
        row("turns", [f"{r.summary.turns_completed} completed, {r.summary.turns_failed} failed"
                      + (f", {r.summary.turns_warmup} warm-up" if r.summary.turns_warmup else "")
                      + (f", {r.meta.unfinished} cut off" if r.meta.unfinished else "") for r in runs]),
        row("throughput", [f"{r.summary.throughput_rps:.3f} turns/s ({r.summary.window} window "
                           f"{r.summary.window_s:.2f} s); {r.summary.throughput_overall_rps:.3f} overall"
                           for r in runs]),
        row("tokens/s", [f"{r.summary.tokens_per_s:.1f}" for r in runs]),
        row("efficiency", [_efficiency(r) for r in runs]),
        *(row(f"{LATENCY_NAMES[m]} p50 / p95 / p99",
              [" / ".join(seconds(r.summary.latency(m).stat(s)) for s in ("p50", "p95", "p99")) for r in runs])
          for m in LATENCIES),
        row("errors", [_errors_cell(r) for r in runs]),
        row("isolation", [isolation_verdict(r) for r in runs]),
    ]
    for expr in dict.fromkeys(e for r in runs for e in r.summary.slo):
        cells: list[object] = []
        for r in runs:
            outcome = r.summary.slo.get(expr)
            cells.append(None if outcome is None else join([
                badge("pass", "good") if outcome.passed else badge("FAIL", "bad"),
                f" value {outcome.value}" + (f" ({outcome.note})" if outcome.note else "")], ""))
        rows.append(row(f"SLO {expr}", cells))
    if not any(r.summary.slo for r in runs):
        rows.append(row("SLOs", ["none given (--slo 'ttft.p95<2s' …)" for _ in runs]))
    gen_cells: list[object] = []
    for r in runs:
        g = r.meta.generator
        gen_cells.append(join([badge("INCONCLUSIVE", "warn"), " " + "; ".join(g.reasons)], "") if g.inconclusive
                         else f"ok: cpu {g.cpu_share:.0%} of a core, loop lag p99 {g.loop_lag_ms.get('p99')} ms")
    rows.append(row("load generator", gen_cells))
    if any(r.summary.tool_steps_per_turn for r in runs):
        rows.append(row("agent", [f"{r.summary.llm_calls_per_turn:.2f} LLM calls, {r.summary.tool_steps_per_turn:.2f}"
                                  f" tool steps per turn" for r in runs]))
    totals = table(["", *(r.label for r in runs)], rows, align="l" + "l" * len(runs))
    latency_tables = [table(["metric", *STATS], [[LATENCY_NAMES[m], *(seconds(r.summary.latency(m).stat(s))
                                                                     for s in STATS)] for m in LATENCIES],
                            caption=f"{r.label}: latency percentiles") for r in runs]
    return section("summary", SECTIONS["summary"], totals, grid(*latency_tables))


def _latency_over_time(runs: Sequence[RunResult]) -> Html:
    x_range, y_range = (0.0, _end(runs)), (0.0, _max_latency(runs, ("e2e", "ttft", "queue_wait")))
    charts = []
    for r in runs:
        series = [Series(LATENCY_NAMES[m], latency_points(r, m), "points", LATENCY_COLORS[m])
                  for m in ("e2e", "ttft", "queue_wait")]
        warm = [(t.t_join, t.e2e) for t in r.turns if t.warmup and t.e2e is not None]
        if warm:
            series.append(Series("warm-up (excluded)", warm, "points", "#bbbbbb"))
        for cls, times in failures(r).items():
            series.append(Series(f"failed: {cls}", [(t, 0.0) for t in times], "cross", ERROR_COLORS.get(cls, "red")))
        charts.append(line_chart(series, title=f"{r.label}: latency per turn", x_label="submitted at (s from start)",
                                 y_label="seconds", x_range=x_range, y_range=y_range, empty="no completed turn"))
    return section("latency-over-time", SECTIONS["latency-over-time"],
                   note("Each dot is one turn, placed at the time it was submitted; failed turns are crosses on the "
                        "time axis. Charts side by side share their scales."), grid(*charts))


def _distributions(runs: Sequence[RunResult]) -> Html:
    x_range = (0.0, _max_latency(runs, ("e2e", "ttft")))
    names = {"ttft": "TTFT", "e2e": "end-to-end"}
    hists = [histogram({names[m]: latency_samples(r, m) for m in ("ttft", "e2e")}, title=f"{r.label}: turns by latency",
                       x_label="seconds", x_range=x_range, colors={names[m]: LATENCY_COLORS[m] for m in names},
                       empty="no completed turn") for r in runs]
    if len(runs) == 1:
        cdfs = [cdf_chart({names[m]: latency_samples(runs[0], m) for m in names}, title=f"{runs[0].label}: CDF",
                          x_label="seconds", x_range=x_range, colors={names[m]: LATENCY_COLORS[m] for m in names})]
    else:
        cdfs = [cdf_chart({r.label: latency_samples(r, m) for r in runs}, title=f"{names[m]} CDF by profile",
                          x_label="seconds", x_range=x_range) for m in names]
    return section("distributions", SECTIONS["distributions"], grid(*hists), grid(*cdfs))


def _server_queue(runs: Sequence[RunResult]) -> Html:
    x_range = (0.0, _end(runs))
    top = max((max(p.running, p.waiting, p.limit or 0) for r in runs for pts in queue_series(r).values()
               for p in pts), default=1) or 1
    parts: list[Html] = []
    for r in runs:
        admin = r.meta.admin
        if admin.status != "ok":
            parts.append(note(f"{r.label}: no server figures ({admin.status}). The server's own in-flight and queue "
                              "counts come from its admin API: give --token (or CMW_ADMIN_TOKEN) for a cmw server, "
                              "or use --spawn / --compare, which have the token.", "warn"))
            continue
        busy = queue_series(r)
        if not busy:
            parts.append(note(f"{r.label}: the server reported no event running or waiting in {admin.samples} "
                              "samples."))
            continue
        series: list[Series] = []
        for i, (event, points) in enumerate(busy.items()):
            colors = ("#0072b2", "#d55e00", "#555555") if i == 0 else ("#56b4e9", "#e69f00", "#999999")
            series += [Series(f"{event} running", [(p.t, p.running) for p in points], "step", colors[0]),
                       Series(f"{event} waiting", [(p.t, p.waiting) for p in points], "step", colors[1])]
            limits = [(p.t, float(p.limit)) for p in points if p.limit is not None]
            if limits:
                series.append(Series(f"{event} limit", limits, "dashed", colors[2]))
        parts.append(line_chart(series, title=f"{r.label}: server in-flight and queue ({admin.samples} samples)",
                                x_label="seconds from start", y_label="events", x_range=x_range,
                                y_range=(0.0, float(top))))
    peaks = [[r.label, name, p.running, p.limit, p.waiting] for r in runs for name, p in r.meta.admin.peak.items()]
    body: list[Html] = [grid(*parts)]
    if peaks:
        body.append(table(["run", "event", "peak running", "limit", "peak waiting"], peaks, caption="peaks",
                          align="llrrr"))
    return section("server-queue", SECTIONS["server-queue"], *body)


def _errors(runs: Sequence[RunResult]) -> Html:
    classes = list(dict.fromkeys(c for r in runs for c in r.summary.errors))
    counts = table(["class", *(r.label for r in runs)],
                   [[c, *(r.summary.errors.get(c, 0) for r in runs)] for c in classes]
                   + [["total (rate)", *(f"{r.summary.error_count} ({r.summary.error_rate:.1%})" for r in runs)]],
                   caption="failed turns by class")
    parts: list[Html] = [counts]
    charts = []
    for r in runs:
        failed = failures(r)
        if failed:
            charts.append(histogram(failed, title=f"{r.label}: failed turns over time", x_label="submitted at (s)",
                                    x_range=(0.0, _end(runs)), stacked=True, colors=ERROR_COLORS))
    parts.append(grid(*charts) if charts else note("No turn failed: nothing to show over time.", "good"))
    details = []
    for r in runs:
        seen = Counter((t.error, (t.detail or "")[:DETAIL_CHARS]) for t in r.turns if t.error is not None)
        details += [[r.label, cls, n, detail or "–"] for (cls, detail), n in seen.most_common(DETAIL_ROWS)]
    if details:
        parts.append(table(["run", "class", "turns", "detail (as the server or client said it)"], details,
                           caption="distinct errors", align="llrl"))
    violations = [[r.label, t.session, t.turn, "; ".join(t.violation)] for r in runs for t in r.turns if t.violation]
    if violations:
        parts.append(table(["run", "session", "turn", "isolation violation"], violations[:DETAIL_ROWS * 5],
                           caption="isolation violations", align="llrl"))
    return section("errors", SECTIONS["errors"], *parts)


def _provenance(runs: Sequence[RunResult]) -> Html:
    lists = []
    for r in runs:
        m, w = r.meta, r.meta.workload
        load = (f"closed loop: {w.users} users × {w.turns} turns, think {w.think_time} s, ramp-up {w.ramp_up} s"
                if w.rate is None else f"open loop: {w.rate} requests/s for {w.duration} s")
        items: list[tuple[str, object]] = [
            ("run", r.label), ("target", m.target.url + (" (spawned)" if m.target.spawned else "")),
            ("overrides", ", ".join(m.target.overrides) or "none"),
            ("endpoint", f"api_name={m.endpoint.api_name} (fn {m.endpoint.fn_index}, {m.endpoint.protocol})"),
            ("workload", load), ("bounds", f"duration ≤ {w.duration} s, ≤ {w.max_requests} requests, "
                                          f"timeout {w.timeout} s, {w.prime} priming turn(s)"),
            ("chat limit", f"{m.nominal.chat_limit} ({m.nominal.chat_limit_source})"),
            ("service time", f"{seconds(m.nominal.service_time)} ({m.nominal.service_time_source})"),
            ("started", f"{m.started_at}, ran {m.duration_s:.2f} s" + (" (interrupted)" if m.interrupted else "")),
            ("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items())),
        ]
        lists.append(Html(f"<div><h3>{esc(r.label)}</h3>{definitions(items)}</div>"))
    return section("run", SECTIONS["run"], grid(*lists))


def render(result: Outcome, *, title: str | None = None) -> str:
    """The whole report of a run or a ``--compare`` as one self-contained HTML document."""
    runs = runs_of(result)
    compared = isinstance(result, CompareResult)
    if title is None:
        title = ("cmw loadtest: " + " vs ".join(r.label for r in runs)) if compared else \
            f"cmw loadtest: {runs[0].label}"
    first = runs[0].meta if runs else None
    subtitle = None
    if first is not None:
        w = first.workload
        load = f"closed loop, {w.users} users × {w.turns} turns" if w.rate is None else \
            f"open loop, {w.rate} requests/s for up to {w.duration} s"
        subtitle = f"started {first.started_at} · {load} · endpoint {first.endpoint.api_name}"
    body: list[Html] = []
    if isinstance(result, CompareResult):
        body.append(_comparison(result))
    if runs:
        body += [_summary(runs), _latency_over_time(runs), _distributions(runs), _server_queue(runs), _errors(runs),
                 _provenance(runs)]
    nav = [(ref, text) for ref, text in SECTIONS.items() if compared or ref != "comparison"]
    return page(title, body, subtitle=subtitle, nav=nav)


def write_html(result: Outcome, path: Path) -> None:
    path.write_text(render(result), encoding="utf-8")

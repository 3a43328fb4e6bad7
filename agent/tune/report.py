"""`cmw tune --plot/--html`: what was measured at each limit, the SLO bounds, and the choice."""

from __future__ import annotations

from pathlib import Path

from agent.tune.runner import TuneResult


def write_html(result: TuneResult, path: Path) -> None:
    """One self-contained HTML file (no network needed to open it)."""
    from agent.loadtest import htmlkit as h

    sections = []
    verdict = (f"{result.event} limit {result.chosen_limit}" + (f" with {result.chosen_workers} workers"
                                                                if result.request.workers_max else "")
               if result.chosen_limit is not None else "no limit met the SLOs")
    notes = [h.note(verdict, "good" if result.chosen_limit is not None else "bad")]
    if result.cut_short:
        notes.append(h.note("The budget ran out: the search was cut short; this is the best found so far.", "warn"))
    if result.tie():
        notes.append(h.note(f"Limits {', '.join(map(str, result.tie()))} measured within the noise of the chosen "
                            "one; the smaller limit wins.", "warn"))
    sections.append(h.section("choice", "Choice", *notes, h.definitions([
        ("SLOs", ", ".join(result.slos)),
        ("one user", f"TTFT p95 {result.baseline.ttft_p95:.3f} s, end-to-end p95 {result.baseline.e2e_p95:.3f} s, "
                     f"{result.baseline.throughput_rps:.2f} turns/s"),
        ("backend", f"{result.backend.get('base_url') or result.backend.get('provider')} "
                    f"(model {result.backend.get('model')})"),
        ("server", result.backend.get("server")), ("cores", result.backend.get("cores")),
        ("search time", f"{result.seconds:.0f} s"),
    ])))
    series_rps, series_e2e = [], []
    for search in result.searches:
        ordered = sorted(search.result.candidates.values(), key=lambda c: c.limit)
        label = f"{search.workers} worker{'s' if search.workers > 1 else ''}"
        series_rps.append(h.Series(label, [(c.limit, c.throughput) for c in ordered]))
        series_e2e.append(h.Series(label, [(c.limit, c.runs[-1].e2e_p95 or 0.0) for c in ordered]))
    sections.append(h.section("throughput", "Throughput by limit", h.grid(
        h.line_chart(series_rps, title="turns/s", x_label="chat limit", y_label="turns/s"),
        h.line_chart(series_e2e, title="end-to-end p95", x_label="chat limit", y_label="seconds"),
    )))
    rows = [(m.limit, m.workers, m.users, f"{m.throughput_rps:.2f}", _s(m.ttft_p95), _s(m.e2e_p95),
             f"{m.error_rate:.1%}", "hold" if m.slo_passed else "breached") for m in result.measurements]
    sections.append(h.section("measurements", "Measurements, in the order taken", h.table(
        ["limit", "workers", "users", "turns/s", "TTFT p95 s", "e2e p95 s", "errors", "SLOs"], rows)))
    path.write_text(h.page("cmw tune", sections, subtitle=verdict,
                           nav=[("choice", "Choice"), ("throughput", "Throughput"),
                                ("measurements", "Measurements")]), encoding="utf-8")


def write_plot(result: TuneResult, path: Path) -> None:
    """A PNG: throughput and latency p95 per limit, SLO breaches marked, the choice highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rps_ax, lat_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for search in result.searches:
        ordered = sorted(search.result.candidates.values(), key=lambda c: c.limit)
        limits = [c.limit for c in ordered]
        label = f"{search.workers} worker(s)"
        rps_ax.plot(limits, [c.throughput for c in ordered], marker="o", label=label)
        lat_ax.plot(limits, [c.runs[-1].e2e_p95 or 0 for c in ordered], marker="o", label=f"e2e p95, {label}")
        lat_ax.plot(limits, [c.runs[-1].ttft_p95 or 0 for c in ordered], marker="x", linestyle="--",
                    label=f"TTFT p95, {label}")
        breached = [c for c in ordered if not c.passed]
        rps_ax.scatter([c.limit for c in breached], [c.throughput for c in breached], marker="x", s=80,
                       color="red", zorder=3, label="SLO breached" if breached else None)
    if result.chosen_limit is not None:
        rps_ax.axvline(result.chosen_limit, color="green", linestyle=":", label=f"chosen {result.chosen_limit}")
    rps_ax.set(xlabel="chat limit", ylabel="turns/s", title="Throughput")
    lat_ax.set(xlabel="chat limit", ylabel="seconds", title="Latency p95")
    for ax in (rps_ax, lat_ax):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"cmw tune: {', '.join(result.slos)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"

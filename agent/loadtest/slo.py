"""Service-level objectives such as ``ttft.p95<2s``, ``errors<1%``, ``efficiency>0.9``: parsed strictly."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.loadtest.results import LATENCIES, STATS, SloResult, Summary

_EXPR = re.compile(
    r"^\s*([a-z_][a-z0-9_]*)(?:\.([a-z0-9]+))?\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(ms|s|%)?\s*$"
)
_RATES = ("throughput_rps", "tokens_per_s")
_COUNTS = ("turns_completed", "isolation_violations")
METRICS_HELP = (
    "queue_wait|ttft|itl|e2e .p50|p90|p95|p99|mean with s or ms; errors (with % a share, else a count); "
    "efficiency (a fraction or %); throughput_rps; tokens_per_s; turns_completed; isolation_violations"
)


class SloError(ValueError):
    """An SLO expression that does not parse; the message names it and says what is allowed."""


@dataclass(frozen=True)
class Slo:
    expr: str
    metric: str
    stat: str | None
    op: str
    limit: float  # in the summary's own units: seconds, a fraction, a count or a rate

    def value(self, summary: Summary) -> float | None:
        if self.metric in LATENCIES:
            assert self.stat is not None  # noqa: S101 - parse_slo requires a statistic for a latency
            return summary.latency(self.metric).stat(self.stat)
        if self.metric == "errors":
            return summary.error_rate if self.stat == "%" else float(summary.error_count)
        value: float | None = getattr(summary, self.metric)
        return value

    def check(self, summary: Summary) -> SloResult:
        """The outcome; an unknown value (no samples, no ideal) does not pass."""
        value = self.value(summary)
        if value is None:
            return SloResult(passed=False, value=None, limit=self.limit, note="no value to compare")
        passed = {"<": value < self.limit, "<=": value <= self.limit, ">": value > self.limit,
                  ">=": value >= self.limit}[self.op]
        return SloResult(passed=passed, value=value, limit=self.limit)


def parse_slo(expr: str) -> Slo:
    """Parse one expression; raises :class:`SloError` naming it."""
    match = _EXPR.match(expr.lower())
    if match is None:
        raise SloError(f"bad --slo {expr!r}: expected METRIC[.STAT]<OP>NUMBER[UNIT], e.g. 'ttft.p95<2s'; "
                       f"metrics: {METRICS_HELP}")
    metric, stat, op, number, unit = match.groups()
    limit = float(number)

    def bad(why: str) -> SloError:
        return SloError(f"bad --slo {expr!r}: {why}; metrics: {METRICS_HELP}")

    if metric in LATENCIES:
        if stat not in STATS:
            raise bad(f"{metric} needs a statistic ({'|'.join(STATS)}), e.g. {metric}.p95")
        if unit == "%":
            raise bad(f"{metric} is a time: use s or ms")
        return Slo(expr, metric, stat, op, limit / 1000 if unit == "ms" else limit)
    if stat is not None:
        raise bad(f"{metric} takes no statistic")
    if metric == "errors":
        if unit in ("s", "ms"):
            raise bad("errors is a share (%) or a count")
        return Slo(expr, metric, "%" if unit == "%" else None, op, limit / 100 if unit == "%" else limit)
    if metric == "efficiency":
        if unit in ("s", "ms"):
            raise bad("efficiency is a fraction or a %")
        return Slo(expr, metric, None, op, limit / 100 if unit == "%" else limit)
    if metric in _RATES or metric in _COUNTS:
        if unit is not None:
            raise bad(f"{metric} takes a plain number")
        return Slo(expr, metric, None, op, limit)
    raise bad(f"unknown metric {metric!r}")


def parse_slos(exprs: list[str]) -> list[Slo]:
    """Parse every expression, reporting all bad ones at once."""
    slos: list[Slo] = []
    problems: list[str] = []
    for expr in exprs:
        try:
            slos.append(parse_slo(expr))
        except SloError as exc:
            problems.append(str(exc))
    if problems:
        raise SloError("\n".join(problems))
    return slos


def evaluate(slos: list[Slo], summary: Summary) -> dict[str, SloResult]:
    """Expression → outcome, as the summary's ``slo`` holds them."""
    return {slo.expr: slo.check(summary) for slo in slos}

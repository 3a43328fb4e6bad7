"""Figures of a run, with DESIGN's definitions: latency percentiles, throughput, errors, efficiency."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from agent.loadtest.protocol import ERROR_CLASSES
from agent.loadtest.results import LatencyStats, Summary, TurnRecord
from agent.stats import percentile


def describe(values: Iterable[float]) -> LatencyStats:
    """Percentiles (DESIGN's, see :mod:`agent.stats`) and mean, rounded to the microsecond; None without samples."""
    ordered = sorted(values)
    if not ordered:
        return LatencyStats()
    p50, p90, p95, p99 = (round(percentile(ordered, q), 6) for q in (50, 90, 95, 99))
    return LatencyStats(p50, p90, p95, p99, round(math.fsum(ordered) / len(ordered), 6))


def ideal_throughput(
    *,
    users: int | None,
    rate: float | None,
    chat_limit: int | None,
    service_time: float | None,
    think_time: float = 0.0,
) -> float | None:
    """Turns/s a perfect server would complete for this workload; None when the limit or service time is unknown.

    DESIGN: min(users, chat limit) ÷ service time. A closed-loop user also thinks between turns, so it cannot ask
    more often than once per (service + think); an open loop cannot complete more than it is sent.
    """
    if not chat_limit or not service_time or service_time <= 0:
        return None
    server = chat_limit / service_time
    if rate is not None:
        return min(rate, server)
    if not users:
        return None
    return min(users / (service_time + think_time), server)


def served_share(turn: TurnRecord, begin: float, end: float) -> float:
    """Share of a completed turn's service (process start → completion) that fell inside [begin, end]."""
    if turn.error is not None or turn.t_end is None:
        return 0.0
    start = turn.t_start if turn.t_start is not None else turn.t_join
    if turn.t_end <= start:
        return 1.0 if begin <= turn.t_end <= end else 0.0
    overlap = min(end, turn.t_end) - max(begin, start)
    return max(0.0, overlap) / (turn.t_end - start)


def summarize(
    turns: Sequence[TurnRecord],
    *,
    offered_end: float,
    ideal_rps: float | None,
) -> Summary:
    """The figures of one run (SLO outcomes are added by the caller).

    ``throughput_rps`` is the steady-state rate: turns served per second from the moment the server first started
    a measured turn until the offered load began to fall (``offered_end``), a turn on that window's edge counting
    by the share of its service inside it. Without those cuts the ramp-up (a burst of joins on an idle server) and
    a closed loop's ramp-down (the last users finishing while slots stand idle) would make a short run against a
    server with more slots look less efficient than it is. When that window holds under half the completed work
    (users dropped out early, or one turn each) the overall window is used; ``window`` says which.
    ``throughput_overall_rps`` is plainly completed turns ÷ (first submit → last completion).
    """
    measured = [t for t in turns if not t.warmup]
    done = [t for t in measured if t.error is None]
    errors = dict.fromkeys(ERROR_CLASSES, 0)
    for t in measured:
        if t.error is not None:
            errors[t.error] = errors.get(t.error, 0) + 1
    tokens = sum(t.tokens for t in done)
    throughput = tokens_per_s = overall = window = 0.0
    basis = "none"
    if done:
        first_submit = min(t.t_join for t in measured)
        last = max(t.t_end for t in done if t.t_end is not None)
        if last > first_submit:
            overall = len(done) / (last - first_submit)
        # Steady state starts when the server first serves: a burst of joins on an idle server is ramp-up.
        begin = min((t.t_start for t in measured if t.t_start is not None), default=first_submit)
        for basis, start, end in (("steady", begin, offered_end), ("overall", first_submit, last)):
            window = end - start
            if window <= 0 or end > last:
                continue
            shares = [(served_share(t, start, end), t.tokens) for t in turns]
            served = math.fsum(share for share, _ in shares)
            # When users dropped out early (e.g. every turn refused at once) the steady window holds little of
            # the work done: then the overall window is the honest one.
            if basis == "steady" and served < 0.5 * len(done):
                continue
            throughput = served / window
            tokens_per_s = math.fsum(share * n for share, n in shares) / window
            break
        else:
            basis, window = "none", 0.0
    return Summary(
        queue_wait=describe(t.queue_wait for t in done if t.queue_wait is not None),
        ttft=describe(t.ttft for t in done if t.ttft is not None),
        itl=describe(g for t in done for g in t.gaps),
        e2e=describe(t.e2e for t in done if t.e2e is not None),
        turns_completed=len(done),
        turns_failed=len(measured) - len(done),
        turns_warmup=len(turns) - len(measured),
        tokens=tokens,
        window_s=round(window, 6),
        window=basis,
        throughput_rps=round(throughput, 6),
        throughput_overall_rps=round(overall, 6),
        tokens_per_s=round(tokens_per_s, 6),
        tool_steps_per_turn=round(math.fsum(t.tool_steps for t in done) / len(done), 6) if done else 0.0,
        llm_calls_per_turn=round(math.fsum(1 + t.tool_steps for t in done) / len(done), 6) if done else 0.0,
        tool_s_per_turn=round(math.fsum(t.tool_s for t in done) / len(done), 6) if done else 0.0,
        ideal_rps=None if ideal_rps is None else round(ideal_rps, 6),
        efficiency=round(throughput / ideal_rps, 6) if ideal_rps else None,
        errors=errors,
        error_rate=round(sum(errors.values()) / len(measured), 6) if measured else 0.0,
        isolation_violations=sum(1 for t in turns if t.violation),
        violating_sessions=tuple(sorted({t.session for t in turns if t.violation})),
        isolation_checked=sum(1 for t in turns if t.ok and t.isolation_checked),
    )

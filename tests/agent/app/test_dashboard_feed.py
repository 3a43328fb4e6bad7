"""The dashboard's figures: samples into 5-second steps, workers summed, latency percentiles over a trailing window,
flat runs thinned, a peer's samples read defensively, and every string in both languages."""

from __future__ import annotations

import ast
import math
import re
import time
from pathlib import Path

import pytest

import agent
from agent.app import dashboard_text, i18n
from agent.app.dashboard import _flat_runs_thinned
from agent.app.dashboard_feed import (
    BUCKET_S,
    MAX_VALUES,
    WINDOW_S,
    Sample,
    Sampler,
    buckets,
    total,
    trailing_percentiles,
    worker_now,
)

NOW = 1_800_000_003.0  # 3 s into a step


def samples(seconds: int, *, rate: int = 2, running: int = 1, limit: int = 3, start: float = NOW - 60) -> list[Sample]:
    """One sample a second from ``start``: ``rate`` turns completed a second, one timeout every 10 s."""
    return [Sample(start + i, {"chat": (running, i % 2, limit)}, completed=rate * i, failed={"timeout": i // 10},
                   sessions=5, busy=1, ttft=[0.1 * (i % 3 + 1)], e2e=[1.0]) for i in range(seconds)]


def test_samples_become_whole_steps_with_peaks_rates_and_last_values() -> None:
    points = buckets(samples(60), "chat", NOW)
    steps = sorted(points)
    assert steps[-1] == WINDOW_S // BUCKET_S - 1  # the step in progress is left out
    last = points[steps[-1]]
    assert last.t == math.floor(NOW / BUCKET_S) * BUCKET_S
    assert (last.running, last.waiting, last.limit, last.sessions, last.busy) == (1, 1, 3, 5, 1)
    assert last.rps == pytest.approx(2.0)
    # One timeout every 10 s: every other 5-second step has one, at 12 a minute.
    assert {round(p.errors_per_min["timeout"]) for p in points.values() if p.rps is not None} == {0, 12}
    assert points[steps[0]].rps is None  # no sample before the first step to count from
    assert all(len(p.e2e) <= BUCKET_S for p in points.values())


def test_an_unknown_event_is_idle_and_samples_outside_the_window_are_left_out() -> None:
    old = samples(30, start=NOW - WINDOW_S - 100)
    assert buckets(old, "chat", NOW) == {}
    points = buckets(samples(30), "file_upload", NOW)
    assert {(p.running, p.waiting, p.limit) for p in points.values()} == {(0, 0, None)}


def test_a_restarted_worker_has_no_negative_rate() -> None:
    before, after = samples(20, start=NOW - 40), samples(15, start=NOW - 18)
    for sample in after:
        sample.completed -= 10_000  # counters start again at 0
    rates = [p.rps for p in buckets(before + after, "chat", NOW).values()]
    assert all(rate is None or rate >= 0 for rate in rates)


def test_workers_add_up_and_their_latencies_pool() -> None:
    one = buckets(samples(60, rate=2, running=1, limit=3), "chat", NOW)
    two = buckets(samples(60, rate=3, running=2, limit=3), "chat", NOW)
    summed = total([one, two])
    step = max(summed)
    assert (summed[step].running, summed[step].limit, summed[step].sessions) == (3, 6, 10)
    assert summed[step].rps == pytest.approx(5.0)
    assert len(summed[step].ttft) == len(one[step].ttft) + len(two[step].ttft)


def test_latency_percentiles_cover_the_trailing_half_minute() -> None:
    minute = samples(60, start=NOW - 60)
    for sample in minute[12:]:  # turns only in the first 12 s of the minute
        sample.ttft = []
    points = buckets(minute, "chat", NOW)
    lines = trailing_percentiles(points, "ttft")
    assert len(lines) >= 4  # a short burst still draws a line, for 30 s
    assert all(p50 is not None and p95 is not None and p50 <= p95 for _, p50, p95 in lines)
    assert lines[-1][0] <= NOW - 60 + 12 + 30 + BUCKET_S


def test_the_workers_table_row() -> None:
    row = worker_now(1, samples(60), NOW)
    assert (row.worker, row.running, row.waiting, row.sessions, row.fresh) == (1, 1, 1, 5, True)
    assert row.rps == pytest.approx(2.0) and row.e2e_p95 == pytest.approx(1.0) and row.failed == 5
    assert not worker_now(0, samples(10, start=NOW - 300), NOW).fresh
    assert worker_now(0, [], NOW).fresh is False


def test_flat_runs_are_thinned_to_their_ends() -> None:
    line = [(float(t), v) for t, v in enumerate([0, 0, 0, 0, 2, 3, 3, 3, 0])]
    assert _flat_runs_thinned(line) == [(0.0, 0), (3.0, 0), (4.0, 2), (5.0, 3), (7.0, 3), (8.0, 0)]
    assert _flat_runs_thinned(line[:1]) == line[:1] and _flat_runs_thinned([]) == []


def test_a_peers_sample_round_trips_and_junk_is_refused() -> None:
    sample = samples(1)[0]
    assert Sample.from_json(sample.as_json()) == sample
    for junk in ({}, {**sample.as_json(), "events": {"chat": ["x", 1, 2]}}, {**sample.as_json(), "ttft": "abc"}):
        with pytest.raises((KeyError, ValueError, TypeError)):
            Sample.from_json(junk)
    many = {**sample.as_json(), "e2e": [1.0] * (MAX_VALUES * 5)}
    assert len(Sample.from_json(many).e2e) == MAX_VALUES


def test_the_sampler_takes_the_latencies_of_the_turns_finished_since_its_last_sample(tmp_path: Path) -> None:
    from agent.app.context import AppContext
    from agent.app.llm import Providers
    from agent.sessions.manager import SessionManager
    from agent.settings import load_settings

    loaded = load_settings("balanced", ["sessions.store=memory"], environ={}, env_file=None)
    ctx = AppContext(loaded=loaded, sessions=SessionManager.from_settings(loaded.settings, tmp_path),
                     providers=Providers(loaded.settings, "http://127.0.0.1:9/v1"))
    sampler = Sampler(ctx, clock=time.time)
    first = sampler.sample()
    assert (first.completed, first.e2e, first.events) == (0, [], {})
    for latency in (0.5, 0.7):  # as the chat handler records a finished turn
        ctx.metrics.turn_finished("sim", latency, 0.1, None)
        ctx.latencies.append(latency)
        ctx.ttfts.append(0.1)
    ctx.metrics.turn_finished("sim", 9.0, None, "timeout")
    second = sampler.sample()
    assert (second.completed, second.e2e, second.ttft, second.failed) == (2, [0.5, 0.7], [0.1, 0.1], {"timeout": 1})
    assert sampler.sample().e2e == []
    assert [s.t for s in sampler.since(second.t - 1e-6)] == [second.t, sampler.ring[-1].t]


def test_every_dashboard_string_exists_in_both_languages_with_its_placeholders() -> None:
    tables = i18n.tables()
    keys = {k for k in tables["en"] if k.startswith("dashboard.")}
    assert keys == set(dashboard_text.STRINGS["en"]) == set(dashboard_text.STRINGS["ru"])
    root = Path(agent.__file__).resolve().parent / "app"
    used: set[str] = set()
    for path in root.glob("dashboard*.py"):
        tree = ast.parse(path.read_text())
        parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("dashboard.") \
                    and id(node) not in parts:
                used.add(node.value)
            if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) \
                    and str(node.values[0].value).startswith("dashboard."):
                prefix = str(node.values[0].value)
                assert any(k.startswith(prefix) for k in keys), f"{path.name}: no key starts with {prefix}"
    assert used <= keys, used - keys
    for key in keys:
        fields = {f for f in re.findall(r"{(\w+)}", tables["en"][key])}
        assert fields == set(re.findall(r"{(\w+)}", tables["ru"][key])), key

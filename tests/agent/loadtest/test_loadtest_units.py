"""The load tester's pure parts: diffs, outputs, isolation rules, percentiles, throughput window, SLO grammar."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.app.ui import percentiles as app_percentiles
from agent.fingerprints import reply_header
from agent.loadtest.engine import RunData
from agent.loadtest.isolation import check_turn, make_canary, reflects_session
from agent.loadtest.metrics import describe, ideal_throughput, summarize
from agent.loadtest.protocol import Endpoint, apply_diff, content_text, reply_of
from agent.loadtest.results import (
    AdminFigures,
    EventPeak,
    GeneratorReport,
    LatencyStats,
    Nominal,
    RunResult,
    SloResult,
    SmokeCheck,
    SmokeReport,
    Summary,
    TurnRecord,
)
from agent.loadtest.runner import Target, build_result, compare_runs, verdict
from agent.loadtest.slo import SloError, evaluate, parse_slo, parse_slos
from agent.loadtest.workload import Workload
from agent.stats import percentile, percentiles

# --------------------------------------------------------------------------- protocol

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from("abcd"), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(old=json_values, new=json_values)
def test_apply_diff_reads_streams_exactly_as_gradio_client_does(old: Any, new: Any) -> None:
    """Edits made by the server's own diff (gradio.utils.diff), applied in place, give gradio_client's result.

    Not always ``new``: gradio's diff shifts deletions in nested lists twice, and every client inherits that.
    """
    from gradio.utils import diff
    from gradio_client.utils import apply_diff as reference

    edits = diff(old, new)
    try:
        expected = reference(old, copy.deepcopy(edits))
    except (IndexError, KeyError, TypeError):
        with pytest.raises((IndexError, KeyError, TypeError)):
            apply_diff(copy.deepcopy(old), edits)
        return
    assert apply_diff(copy.deepcopy(old), edits) == expected


def test_apply_diff_follows_a_streaming_reply() -> None:
    from gradio.utils import diff

    steps = [[{"role": "user", "content": "hi"}]]
    steps.append([*steps[-1], {"role": "assistant", "content": "he"}])
    steps.append([steps[-1][0], {"role": "assistant", "content": "hello"}])
    steps.append([steps[-1][0], {"role": "assistant", "content": [{"type": "text", "text": "hello!"}]}])
    value = copy.deepcopy(steps[0])
    for before, after in zip(steps, steps[1:], strict=False):
        value = apply_diff(value, diff(before, after))
        assert value == after


def test_message_content_in_every_gradio_spelling() -> None:
    assert content_text("hi") == "hi"
    assert content_text([{"type": "text", "text": "a"}, {"type": "file", "file": {}}, {"type": "text", "text": "b"}]) \
        == "ab"
    assert content_text({"text": "x"}) == "x"
    assert content_text(None) == ""


def test_reply_is_the_assistant_text_after_the_last_user_message() -> None:
    history = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "sec"},
        {"role": "assistant", "content": "ond"},
    ]
    assert reply_of(history) == "second"


# --------------------------------------------------------------------------- isolation


def _history(*user_messages: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in user_messages:
        out += [{"role": "user", "content": message}, {"role": "assistant", "content": "ok"}]
    return out


CANARY = "cw1-aaaa"
M1, M2 = f"{CANARY} turn 1", f"{CANARY} turn 2"


def test_own_history_and_exact_fingerprints_hold() -> None:
    reply = reply_header([M1, M2]) + " fine"
    assert check_turn(canary=CANARY, sent=[M1, M2], confirmed=[M1], reply=reply, history=_history(M1, M2)) == []


def test_another_sessions_canary_in_the_reply_is_a_violation() -> None:
    reasons = check_turn(canary=CANARY, sent=[M1], confirmed=[], reply="as cw7-bbbb said", history=None)
    assert reasons == ["reply carries other sessions' canaries cw7-bbbb"]


def test_another_sessions_turn_in_the_history_is_a_violation() -> None:
    history = _history(M1, "cw2-cccc turn 1", M2)
    reasons = check_turn(canary=CANARY, sent=[M1, M2], confirmed=[M1], reply="ok", history=history)
    assert reasons == ["history carries other sessions' canaries cw2-cccc"]


def test_history_missing_an_earlier_turn_is_a_violation() -> None:
    reasons = check_turn(canary=CANARY, sent=[M1, M2], confirmed=[M1], reply="ok", history=_history(M2))
    assert reasons == ["history lacks 1 of this session's 2 turns"]


def test_a_timed_out_turn_may_or_may_not_be_in_the_history() -> None:
    m3 = f"{CANARY} turn 3"
    for history in (_history(M1, M3 := m3), _history(M1, M2, M3)):
        assert check_turn(canary=CANARY, sent=[M1, M2, M3], confirmed=[M1], reply="ok", history=history) == []


def test_fingerprints_of_other_turns_are_a_violation() -> None:
    reply = reply_header([M1, "someone else"]) + " hi"
    reasons = check_turn(canary=CANARY, sent=[M1, M2], confirmed=[M1], reply=reply, history=None)
    assert len(reasons) == 1 and reasons[0].startswith("LLM saw turns")


def test_a_chat_showing_no_user_message_is_no_evidence_either_way() -> None:
    answers_only = [{"role": "assistant", "content": "noted"}]
    assert check_turn(canary=CANARY, sent=[M1, M2], confirmed=[M1], reply="noted", history=answers_only) == []
    assert not reflects_session(canary=CANARY, sent=[M1], reply="noted", history=answers_only)


@pytest.mark.parametrize(
    ("reply", "history", "judged"),
    [(f"you said {CANARY}", None, True), ("ok", _history(M1), True), (reply_header([M1]) + " hi", None, True),
     ("ok", None, False), ("ok", _history("someone else's message"), False)],
)
def test_a_turn_is_judged_when_its_reply_or_history_shows_what_it_sent(
    reply: str, history: list[dict[str, Any]] | None, judged: bool
) -> None:
    assert reflects_session(canary=CANARY, sent=[M1], reply=reply, history=history) is judged


def test_canaries_are_unique_per_user() -> None:
    assert len({make_canary(i) for i in range(1000)}) == 1000


# --------------------------------------------------------------------------- metrics


def test_percentiles_interpolate_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)
    assert describe([]) == LatencyStats()
    assert describe([]).to_dict() == {"p50": None, "p90": None, "p95": None, "p99": None, "mean": None}
    assert describe([2.0]).p99 == 2.0
    assert describe([4.0, 1.0, 3.0, 2.0]) == LatencyStats(p50=2.5, p90=3.7, p95=3.85, p99=3.97, mean=2.5)


def test_the_app_and_the_load_tester_share_one_percentile() -> None:
    """The admin API's recent-latency figures and a load test's agree on the same samples."""
    values = [0.4, 0.1, 0.3, 0.2, 1.0]
    assert app_percentiles is percentiles
    shared = describe(values)  # the load tester's figures, rounded to the microsecond
    assert percentiles(values) == pytest.approx({"p50": shared.p50, "p95": shared.p95}, abs=1e-6)
    assert percentiles(values, (0.9, 0.99)) == pytest.approx({"p90": shared.p90, "p99": shared.p99}, abs=1e-6)
    assert percentiles(values)["p95"] == pytest.approx(0.88)  # nearest rank would say 1.0
    assert percentiles([]) == {"p50": None, "p95": None}
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def _turn(user: int, start: float, end: float, *, join: float | None = None, error: str | None = None) -> TurnRecord:
    join = start if join is None else join
    return TurnRecord(user=user, session=f"s{user}", turn=1, t_join=join, warmup=False, error=error,
                      queue_wait=start - join, ttft=end - join, e2e=end - join, tokens=10, t_start=start, t_end=end)


def test_steady_throughput_ignores_the_ramp_down() -> None:
    """Three slots, one second per turn: users 0-2 finish at 2 s, the last user alone runs 2 → 3 s."""
    turns = [_turn(u, 0, 1) for u in range(3)] + [_turn(3, 1, 2, join=0)] + [_turn(u, 1, 2) for u in range(2)] \
        + [_turn(2, 2, 3, join=1)]
    summary = summarize(turns, offered_end=2.0, ideal_rps=3.0)
    assert summary.window == "steady"
    assert summary.throughput_rps == pytest.approx(3.0)
    assert summary.efficiency == pytest.approx(1.0)
    assert summary.throughput_overall_rps == pytest.approx(7 / 3)


def test_turns_on_the_window_edge_count_by_their_served_share() -> None:
    turns = [_turn(0, 0, 2), _turn(1, 0, 1), _turn(1, 1, 3)]
    summary = summarize(turns, offered_end=2.0, ideal_rps=None)
    assert summary.throughput_rps == pytest.approx((1 + 1 + 0.5) / 2)
    assert summary.efficiency is None


def test_a_window_with_little_of_the_work_falls_back_to_overall() -> None:
    turns = [_turn(0, 0, 0.01, error="queue_full")] + [_turn(u, 0, 1) for u in range(1, 4)]
    summary = summarize(turns, offered_end=0.01, ideal_rps=None)
    assert summary.window == "overall"
    assert summary.throughput_rps == pytest.approx(3.0)
    assert summary.errors["queue_full"] == 1 and summary.error_rate == 0.25


def test_ideal_follows_design_and_the_think_time() -> None:
    assert ideal_throughput(users=10, rate=None, chat_limit=3, service_time=1.2) == pytest.approx(2.5)
    assert ideal_throughput(users=2, rate=None, chat_limit=3, service_time=1.0) == pytest.approx(2.0)
    assert ideal_throughput(users=2, rate=None, chat_limit=3, service_time=1.0, think_time=1.0) == pytest.approx(1.0)
    assert ideal_throughput(users=None, rate=1.0, chat_limit=3, service_time=1.0) == pytest.approx(1.0)
    assert ideal_throughput(users=10, rate=None, chat_limit=None, service_time=1.0) is None


# --------------------------------------------------------------------------- SLOs


@pytest.mark.parametrize(
    ("expr", "metric", "stat", "limit"),
    [
        ("ttft.p95<2s", "ttft", "p95", 2.0),
        ("e2e.p99 <= 500ms", "e2e", "p99", 0.5),
        ("errors<1%", "errors", "%", 0.01),
        ("errors<3", "errors", None, 3.0),
        ("efficiency>0.9", "efficiency", None, 0.9),
        ("efficiency>=90%", "efficiency", None, 0.9),
        ("throughput_rps>3", "throughput_rps", None, 3.0),
        ("itl.mean<0.05", "itl", "mean", 0.05),
    ],
)
def test_slo_grammar(expr: str, metric: str, stat: str | None, limit: float) -> None:
    slo = parse_slo(expr)
    assert (slo.metric, slo.stat, slo.limit) == (metric, stat, pytest.approx(limit))


def test_every_bad_slo_is_reported_at_once() -> None:
    with pytest.raises(SloError) as caught:
        parse_slos(["ttft.p95<2s", "tfft.p95<2s", "errors<1s"])
    assert "tfft.p95<2s" in str(caught.value) and "errors<1s" in str(caught.value)


def test_slo_results_and_unknown_values() -> None:
    summary = Summary(ttft=LatencyStats(p95=0.5), errors={"timeout": 1}, error_rate=0.02, efficiency=None)
    results = evaluate(parse_slos(["ttft.p95<1s", "errors<1%", "errors<2", "efficiency>0.9"]), summary)
    assert results["ttft.p95<1s"] == SloResult(passed=True, value=0.5, limit=1.0)
    assert results["ttft.p95<1s"].to_dict() == {"passed": True, "value": 0.5, "limit": 1.0}
    assert results["errors<1%"].passed is False
    assert results["errors<2"] == SloResult(passed=True, value=1.0, limit=2.0)
    assert results["efficiency>0.9"].passed is False and results["efficiency>0.9"].value is None
    assert results["efficiency>0.9"].to_dict() == {"passed": False, "value": None, "limit": 0.9,
                                                   "note": "no value to compare"}



# --------------------------------------------------------------------------- typed results and their JSON


def _run(turns: list[TurnRecord], *, profile: str = "balanced", slos: tuple[str, ...] = ()) -> RunResult:
    """A run result built the way the runner builds one, from what an engine would have observed."""
    endpoint = Endpoint(base_url="http://127.0.0.1:1", api_prefix="/gradio_api", api_name="chat", fn_index=0,
                        trigger_id=None, input_types=("textbox",), defaults=(None,), output_types=("chatbot",),
                        gradio_version="6.0", protocol="sse_v3")
    data = RunData(endpoint=endpoint, workload=Workload(users=2, turns=1), turns=tuple(turns), started_at=0.0,
                   duration_s=3.0, offered_end=2.0,
                   generator=GeneratorReport(cpu_share=0.1, loop_lag_ms={"p99": 1.0}, inconclusive=False),
                   admin=AdminFigures(status="ok", samples=2, peak={"chat": EventPeak(running=2, waiting=1, limit=3)},
                                      chat_limit=3),
                   unfinished=0, skipped_arrivals=0, users_started=2)
    return build_result(data, parse_slos(list(slos)), Nominal(3, "settings", 1.0, "settings:sim"),
                        target=Target(spawn=True, profile=profile), profile=profile, settings={"a.b": 1})


def test_a_run_result_gives_designs_json_document() -> None:
    result = _run([_turn(0, 0, 1), _turn(1, 0, 1, error="timeout")], slos=("ttft.p95<2s",))
    doc = result.to_dict()
    assert list(doc) == ["meta", "summary", "turns"]
    assert list(doc["summary"]) == [
        "queue_wait", "ttft", "itl", "e2e", "turns_completed", "turns_failed", "turns_warmup", "tokens", "window_s",
        "window", "throughput_rps", "throughput_overall_rps", "tokens_per_s", "ideal_rps", "efficiency", "errors",
        "error_rate", "isolation_violations", "violating_sessions", "isolation_checked", "isolation_judged", "slo",
        "tool_steps_per_turn", "llm_calls_per_turn", "tool_s_per_turn"]
    assert doc["summary"]["slo"] == {"ttft.p95<2s": {"passed": True, "value": 1.0, "limit": 2.0}}
    assert (doc["summary"]["isolation_checked"], doc["summary"]["isolation_judged"]) == (0, False)  # _turn: no echo
    assert doc["summary"]["errors"] == {"queue_full": 0, "timeout": 1, "app_error": 0, "disconnect": 0}
    assert doc["meta"]["admin"] == {"status": "ok", "samples": 2,
                                    "peak": {"chat": {"running": 2, "waiting": 1, "limit": 3}}, "chat_limit": 3}
    assert doc["meta"]["nominal"] == {"chat_limit": 3, "chat_limit_source": "settings", "service_time_s": 1.0,
                                      "service_time_source": "settings:sim"}
    assert doc["meta"]["target"] == {"url": "http://127.0.0.1:1", "spawned": True, "profile": "balanced",
                                     "overrides": []}
    assert doc["meta"]["prime"] == {"turns": 0, "e2e_s": [], "errors": []}
    assert doc["turns"][1]["error"] == "timeout" and doc["turns"][0]["violation"] == []
    assert json.loads(json.dumps(doc)) == doc  # plain JSON all the way down
    assert verdict(result) == (0, [])


def test_verdict_and_comparison_read_typed_runs() -> None:
    isolated = _run([_turn(0, 0, 1), _turn(1, 0, 1)], profile="sequential")
    broken = _run([_turn(0, 0, 0.5), replace(_turn(1, 0, 0.5), violation=("reply carries cw0-aaaa",))],
                  profile="fast", slos=("ttft.p95<1ms",))
    compared = compare_runs(["fast", "sequential"], [broken, isolated])
    assert compared.baseline == "sequential"
    assert [(row.profile, row.speedup) for row in compared.rows] == [("fast", 2.0), ("sequential", 1.0)]
    assert compared.to_dict()["meta"]["compare"] == {"profiles": ["fast", "sequential"], "baseline": "sequential"}
    assert verdict(compared) == (3, ["session isolation violated in 1 session(s): s1"])
    unbroken = replace(broken, summary=replace(broken.summary, isolation_violations=0, violating_sessions=()))
    assert verdict(unbroken) == (1, ["SLO ttft.p95<1ms breached: value 0.5"])
    smoke = replace(isolated, smoke=SmokeReport((SmokeCheck("GET /admin/api/health", False, "HTTP 500"),)))
    assert smoke.to_dict()["smoke"] == {"passed": False, "checks": [
        {"check": "GET /admin/api/health", "passed": False, "detail": "HTTP 500"}]}
    assert verdict(smoke) == (1, ["smoke check GET /admin/api/health failed: HTTP 500"])


def test_tool_steps_are_not_the_reply_and_count_as_agent_figures() -> None:
    from agent.loadtest.engine import _agent_figures
    from agent.loadtest.protocol import reply_of

    history = [
        {"role": "user", "content": "cw1-abcd what is 6*7"},
        {"role": "assistant", "content": "42", "metadata": {"title": "🛠️ calculator", "duration": 0.25}},
        {"role": "assistant", "content": "[turns=1 fp=x] It is 42."},
    ]
    assert reply_of(history) == "[turns=1 fp=x] It is 42."
    assert _agent_figures(history) == {"tool_steps": 1, "tool_s": 0.25}


def test_another_sessions_canary_in_a_tool_step_is_a_violation() -> None:
    history = [
        {"role": "user", "content": "cw1-abcd read it"},
        {"role": "assistant", "content": "notes of cw2-ffff", "metadata": {"title": "🛠️ read_file"}},
        {"role": "assistant", "content": "done"},
    ]
    reasons = check_turn(canary="cw1-abcd", sent=["cw1-abcd read it"], confirmed=[], reply="done", history=history)
    assert reasons == ["tool steps carry other sessions' canaries cw2-ffff"]

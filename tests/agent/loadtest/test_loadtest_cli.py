"""`cmw loadtest` against a plain Gradio chat app (not cmw): every exit code provoked for real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from agent.loadtest.protocol import ERROR_CLASSES
from agent.loadtest.results import LATENCIES, STATS
from agent.loadtest.spawn import HOST, free_port
from cmw_cli.main import app

pytestmark = pytest.mark.server

runner = CliRunner()


def cmw(*args: str) -> Result:
    return runner.invoke(app, ["loadtest", *args, "--quiet"])


def run_json(*args: str) -> tuple[Result, dict[str, Any]]:
    result = cmw(*args, "--json")
    return result, json.loads(result.stdout)


SUMMARY_KEYS = {
    "queue_wait", "ttft", "itl", "e2e", "turns_completed", "throughput_rps", "tokens_per_s", "efficiency", "errors",
    "isolation_violations", "slo",
}
TURN_KEYS = {"user", "session", "turn", "warmup", "t_join", "queue_wait", "ttft", "e2e", "tokens", "error",
             "violation"}


def test_out_file_has_meta_summary_turns_with_every_metric(plain_server: str, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    result = cmw("--url", f"{plain_server}/chat", "--users", "3", "--turns", "2", "--out", str(out),
                 "--chat-limit", "64", "--service-time", "0.05", "--slo", "ttft.p95<30s")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert set(doc) == {"meta", "summary", "turns"}
    summary = doc["summary"]
    assert set(summary) >= SUMMARY_KEYS
    for metric in LATENCIES:
        assert set(summary[metric]) == set(STATS)
        assert all(isinstance(summary[metric][s], float) for s in STATS), metric
    assert summary["turns_completed"] == 6
    assert summary["throughput_rps"] > 0 and summary["tokens_per_s"] > 0
    assert isinstance(summary["efficiency"], float)
    assert set(summary["errors"]) == set(ERROR_CLASSES) and sum(summary["errors"].values()) == 0
    assert summary["isolation_violations"] == 0
    assert summary["slo"] == {"ttft.p95<30s": {"passed": True, "value": summary["ttft"]["p95"], "limit": 30.0}}
    assert len(doc["turns"]) == 6 and all(set(t) >= TURN_KEYS for t in doc["turns"])
    assert len({t["session"] for t in doc["turns"]}) == 3
    meta = doc["meta"]
    assert meta["endpoint"]["api_name"] == "chat" and meta["versions"]["gradio_server"].startswith("6.")
    assert meta["nominal"]["chat_limit_source"] == "--chat-limit"
    assert {"cpu_share", "loop_lag_ms", "inconclusive"} <= set(meta["generator"])


def test_json_goes_to_stdout_and_reply_only_apps_work(plain_server: str) -> None:
    """gr.ChatInterface's `chat` API returns the reply alone; history lives in its gr.State."""
    result, doc = run_json("--url", f"{plain_server}/iface", "--users", "2", "--turns", "2")
    assert result.exit_code == 0, result.output
    assert doc["summary"]["turns_completed"] == 4
    assert doc["meta"]["endpoint"]["outputs"] == ["json", "state"]


def test_app_without_fingerprints_is_checked_by_canaries_and_history(plain_server: str) -> None:
    result, doc = run_json("--url", f"{plain_server}/plain", "--users", "2", "--turns", "3")
    assert result.exit_code == 0, result.output
    assert doc["summary"]["isolation_violations"] == 0


def test_shared_history_is_an_isolation_violation_exit_3(plain_server: str) -> None:
    result, doc = run_json("--url", f"{plain_server}/shared", "--users", "3", "--turns", "2", "--prime", "0")
    assert result.exit_code == 3
    assert doc["summary"]["isolation_violations"] > 0
    for session in doc["summary"]["violating_sessions"]:
        assert session in result.stderr
    reasons = [r for t in doc["turns"] for r in t["violation"]]
    assert any("canar" in r for r in reasons)


def test_impossible_slo_is_a_breach_exit_1(plain_server: str) -> None:
    result, doc = run_json("--url", f"{plain_server}/chat", "--users", "2", "--turns", "1", "--slo", "ttft.p95<1ms",
                           "--slo", "errors<1%")
    assert result.exit_code == 1
    assert doc["summary"]["slo"]["ttft.p95<1ms"]["passed"] is False
    assert doc["summary"]["slo"]["errors<1%"]["passed"] is True
    assert "ttft.p95<1ms" in result.stderr


def test_unreachable_url_exit_4_names_it() -> None:
    url = f"http://{HOST}:{free_port()}"
    result = cmw("--url", url, "--users", "1", "--turns", "1")
    assert result.exit_code == 4
    assert url in result.stderr
    assert "Traceback" not in result.output


def test_unknown_endpoint_is_bad_input_listing_the_real_ones(plain_server: str) -> None:
    result = cmw("--url", f"{plain_server}/chat", "--api-name", "nope")
    assert result.exit_code == 2
    assert "it has: chat" in result.stderr


@pytest.mark.parametrize("expr", ["ttft<2s", "ttft.p95<2%", "latency.p95<2s", "errors<1s", "ttft.p95 2s", "e2e.p42<1"])
def test_bad_slo_exit_2_names_the_expression(expr: str) -> None:
    result = cmw("--url", "http://127.0.0.1:9", "--slo", expr)
    assert result.exit_code == 2
    assert expr in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--url", "http://127.0.0.1:9", "--spawn"],
        ["--url", "http://127.0.0.1:9", "--compare", "a,b"],
        ["--url", "127.0.0.1:9"],
        ["--url", "http://127.0.0.1:9", "--users", "0"],
        ["--url", "http://127.0.0.1:9", "--rate", "-1"],
        ["--spawn", "-p", "no-such-profile"],
        ["--compare", "sequential"],
    ],
)
def test_bad_usage_exit_2(args: list[str]) -> None:
    result = cmw(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_known_delay_is_measured_as_ttft(plain_server: str) -> None:
    """/slow sleeps 0.3 s before its first word: TTFT cannot be less, and is not far more on loopback."""
    result, doc = run_json("--url", f"{plain_server}/slow", "--users", "2", "--turns", "2")
    assert result.exit_code == 0, result.output
    ttft = doc["summary"]["ttft"]
    assert 0.3 <= ttft["p50"] <= 0.3 + 2.0
    assert all(0.3 <= t["ttft"] <= t["e2e"] for t in doc["turns"])
    assert all(t["queue_wait"] <= t["ttft"] for t in doc["turns"])


def test_full_queue_refusals_are_counted_as_queue_full(plain_server: str) -> None:
    """/tiny runs one reply at a time and queues one more: six users at once cannot all get in."""
    result, doc = run_json("--url", f"{plain_server}/tiny", "--users", "6", "--turns", "1", "--prime", "0")
    errors = doc["summary"]["errors"]
    assert errors["queue_full"] >= 1
    assert errors["queue_full"] + doc["summary"]["turns_completed"] == 6
    assert result.exit_code == 0, result.output  # refusals are figures; only an SLO turns them into a failure


def test_app_errors_are_classified_and_no_completed_turn_fails_the_run(plain_server: str) -> None:
    result, doc = run_json("--url", f"{plain_server}/fail", "--users", "2", "--turns", "1", "--prime", "0")
    assert result.exit_code == 1
    assert doc["summary"]["errors"]["app_error"] == 2
    assert doc["turns"][0]["detail"].startswith("refusing")


def test_open_loop_sends_the_capped_number_of_requests(plain_server: str) -> None:
    result, doc = run_json("--url", f"{plain_server}/chat", "--rate", "40", "--max-requests", "8", "--turns", "2",
                           "--seed", "1")
    assert result.exit_code == 0, result.output
    assert doc["meta"]["workload"]["mode"] == "open"
    assert len(doc["turns"]) == 8 and doc["summary"]["turns_completed"] == 8
    assert doc["meta"]["users_started"] >= 4  # two turns per user at most


def test_warmup_turns_are_reported_but_left_out_of_figures(plain_server: str) -> None:
    result, doc = run_json("--url", f"{plain_server}/chat", "--users", "2", "--turns", "3", "--warmup-turns", "1")
    assert result.exit_code == 0, result.output
    assert doc["summary"]["turns_warmup"] == 2 and doc["summary"]["turns_completed"] == 4
    assert sum(t["warmup"] for t in doc["turns"]) == 2


def test_duration_bounds_the_run(plain_server: str) -> None:
    result, doc = run_json("--url", f"{plain_server}/slow", "--users", "2", "--turns", "5", "--duration", "0.5",
                           "--prime", "0")
    assert doc["summary"]["turns_completed"] < 10
    assert doc["meta"]["unfinished"] >= 1
    assert len(doc["turns"]) + doc["meta"]["unfinished"] <= 10
    assert result.exit_code in (0, 1)  # 1 only if the machine was too slow to finish any turn in 0.5 s


def test_plot_is_a_png(plain_server: str, tmp_path: Path) -> None:
    plot = tmp_path / "run.png"
    result = cmw("--url", f"{plain_server}/chat", "--users", "2", "--turns", "1", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_admin_token_against_a_server_without_admin_api_is_skipped_quietly(plain_server: str) -> None:
    result, doc = run_json("--url", f"{plain_server}/chat", "--users", "1", "--turns", "1", "--token", "t0ken")
    assert result.exit_code == 0, result.output
    assert doc["meta"]["admin"]["status"] == "not available (HTTP 404)"
    assert "t0ken" not in result.output

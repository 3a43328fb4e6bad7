"""`cmw tune` end to end: a simulator that saturates at 8 streams, a spawned or running server, the profile written.

The simulator's replies are slow enough (a nominal 0.5 s) that this process's CPU is not what saturates: the
backend's capacity is, so the tuned limit must land at the knee.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from agent.app.admin import token_path
from cmw_cli.main import app
from tests.servers import RunningServer, cmw_server, free_port

runner = CliRunner()
# 8 streams at full speed; 20 tokens at 40 tokens/s: a 0.5 s reply alone, 1 s at 16 streams.
BACKEND = ["sim.capacity=8", "sim.tokens_per_second=40", "sim.reply_tokens=20", "sim.ttft_ms=50", "sim.jitter=0"]


def sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def test_a_bad_slo_is_refused_before_anything_starts(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tune", "--spawn", "--slo", "ttft.p95 fast", "--out", str(tmp_path / "t.toml")])
    assert result.exit_code == 2 and "bad --slo 'ttft.p95 fast'" in result.output
    assert not (tmp_path / "t.toml").exists()


def test_an_unreachable_server_exits_4(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tune", "--url", f"http://127.0.0.1:{free_port()}", "--token", "x" * 32,
                                 "--out", str(tmp_path / "t.toml")])
    assert result.exit_code == 4 and "unreachable" in result.output


def test_an_existing_profile_is_kept_without_force(tmp_path: Path) -> None:
    existing = tmp_path / "mine.toml"
    existing.write_text("# mine\n", encoding="utf-8")
    result = runner.invoke(app, ["tune", "--spawn", "--out", str(existing)])
    assert result.exit_code == 2 and "--force" in result.output
    assert existing.read_text(encoding="utf-8") == "# mine\n"


def test_target_flags_are_checked() -> None:
    assert runner.invoke(app, ["tune"]).exit_code == 2
    assert runner.invoke(app, ["tune", "--url", "http://127.0.0.1:1", "--spawn"]).exit_code == 2
    assert runner.invoke(app, ["tune", "--url", "http://127.0.0.1:1", "--workers-max", "2"]).exit_code == 2


@pytest.mark.server
def test_the_tuned_limit_lands_at_the_backends_capacity_and_the_profile_says_how(tmp_path: Path) -> None:
    out = tmp_path / "tuned.toml"
    result = runner.invoke(app, ["tune", "--spawn", "-p", "balanced", *sets(*BACKEND), "--max-limit", "32",
                                 "--turns", "2", "--budget", "400", "--out", str(out), "--json",
                                 "--html", str(tmp_path / "tune.html"), "--plot", str(tmp_path / "tune.png")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    chosen = doc["chosen"]["limit"]
    assert 6 <= chosen <= 12, doc
    measured = {m["limit"] for s in doc["searches"] for m in s["measurements"]}
    assert len(measured) < 32 // 3  # a search, not a sweep

    text = out.read_text(encoding="utf-8")
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert re.search(r"Tuned by `cmw tune` on \d{4}-\d{2}-\d{2}", text)
    assert "capacity 8" in text and "cores" in text and "SLOs: errors<1%" in text
    assert sum(1 for line in header if re.match(r"# \| 1 \| \d+ \|", line)) >= len(measured)  # the table
    profile = tomllib.loads(text)
    assert profile["events"]["chat_concurrency_limit"] == chosen

    diff = runner.invoke(app, ["config", "diff", "balanced", str(out)])
    assert diff.exit_code == 0 and "events.chat_concurrency_limit" in diff.output
    shown = runner.invoke(app, ["config", "show", "-p", str(out), "--json"])
    assert json.loads(shown.stdout)["events.chat_concurrency_limit"]["value"] == chosen
    assert "<svg" in (tmp_path / "tune.html").read_text(encoding="utf-8")
    assert (tmp_path / "tune.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.server
def test_no_candidate_meeting_the_slos_writes_nothing_and_exits_1(tmp_path: Path) -> None:
    out = tmp_path / "never.toml"
    result = runner.invoke(app, ["tune", "--spawn", *sets(*BACKEND), "--slo", "ttft.p95<1ms", "--max-limit", "2",
                                 "--turns", "1", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "no limit met the SLOs" in result.output and not out.exists()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with cmw_server(tmp_path_factory.mktemp("tune-url"), *BACKEND, "server.max_threads=64") as server:
        yield server


@pytest.mark.server
def test_tune_url_changes_the_running_servers_limit_live_and_leaves_the_chosen_one(
    running: RunningServer, tmp_path: Path
) -> None:
    token = token_path(running.state_dir).read_text().strip()
    out = tmp_path / "live.toml"
    result = runner.invoke(app, ["tune", "--url", running.url, "--token", token, "--max-limit", "16", "--turns", "2",
                                 "--budget", "300", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    chosen = json.loads(result.stdout)["chosen"]["limit"]
    limits = httpx.get(f"{running.url}/admin/api/limits", headers={"Authorization": f"Bearer {token}"}).json()
    assert limits["events"]["chat"]["limit"] == chosen and limits["events"]["chat"]["source"] == "live"
    status = runner.invoke(app, ["status", "--url", running.url, "--token", token, "--json"])
    assert json.loads(status.stdout)["queue"]["events"]["chat"]["limit"] == chosen


@pytest.mark.server
def test_an_exhausted_budget_writes_the_best_so_far_and_says_so(running: RunningServer, tmp_path: Path) -> None:
    token = token_path(running.state_dir).read_text().strip()
    out = tmp_path / "short.toml"
    result = runner.invoke(app, ["tune", "--url", running.url, "--token", token, "--budget", "10", "--turns", "1",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "cut short" in result.output and out.exists()
    assert "cut short by its budget" in out.read_text(encoding="utf-8")


@pytest.mark.server
@pytest.mark.services
def test_workers_max_searches_the_number_of_workers_too(tmp_path: Path) -> None:
    from agent.runtime.proxy import find_haproxy

    if find_haproxy() is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    out = tmp_path / "workers.toml"
    result = runner.invoke(app, ["tune", "--spawn", *sets(*BACKEND, "sessions.store=memory"), "--workers-max", "2",
                                 "--max-limit", "4", "--turns", "1", "--budget", "300", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [s["workers"] for s in doc["searches"]] == [1, 2]
    assert all(m["users"] == m["limit"] * s["workers"] for s in doc["searches"] for m in s["measurements"])
    assert tomllib.loads(out.read_text(encoding="utf-8"))["server"]["workers"] == doc["chosen"]["workers"]

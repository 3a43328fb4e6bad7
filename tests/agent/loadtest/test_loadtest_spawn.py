"""Spawned servers: start-up failures, `cmw smoke`, and `--compare` ordering against real `cmw serve` processes."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from agent.loadtest.results import LATENCIES
from agent.loadtest.spawn import HOST, SpawnError, free_port, run_server
from cmw_cli.main import app

pytestmark = pytest.mark.server

runner = CliRunner()
# A quick simulator: 0.1 s to first token, 20 tokens at 50/s — half a second per reply, no jitter.
FAST_SIM = ["--set", "sim.ttft_ms=100", "--set", "sim.reply_tokens=20", "--set", "sim.tokens_per_second=50",
            "--set", "sim.jitter=0"]


def test_a_server_that_dies_at_start_is_reported_with_its_stderr() -> None:
    command = [sys.executable, "-c", "import sys; sys.stderr.write('boom: no such model\\n'); sys.exit(3)"]
    with pytest.raises(SpawnError) as caught, run_server(command, f"http://{HOST}:{free_port()}", name="fake"):
        pass
    assert "fake exited with code 3" in str(caught.value)
    assert "boom: no such model" in str(caught.value)


def test_a_server_that_never_answers_is_stopped_after_the_start_timeout() -> None:
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    url = f"http://{HOST}:{free_port()}"
    with pytest.raises(SpawnError, match="did not answer"), run_server(command, url, start_timeout=1.0):
        pass


def test_smoke_passes_on_a_spawned_cmw_server() -> None:
    result = runner.invoke(app, ["smoke", "-p", "constrained", "--json", "--quiet", *FAST_SIM])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["smoke"]["passed"] is True
    checks = {c["check"] for c in doc["smoke"]["checks"]}
    assert {"GET /admin/api/health", "GET /admin/api/queue", "isolation"} <= checks
    assert doc["summary"]["turns_completed"] == 8
    assert doc["meta"]["settings"]["events.chat_concurrency_limit"] == 1


def test_smoke_passes_with_an_agent_calling_tools_in_half_its_turns() -> None:
    """Isolation and figures hold through tool-using turns; the report counts the agent's steps."""
    result = runner.invoke(app, ["smoke", "--json", "--quiet", *FAST_SIM, "--set", "sim.tool_call_rate=0.5",
                                 "--set", "sim.seed=3", "--users", "4", "--turns", "4"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["isolation_violations"] == 0 and summary["turns_completed"] == 16
    assert 0 < summary["tool_steps_per_turn"] < 1
    assert summary["llm_calls_per_turn"] == 1 + summary["tool_steps_per_turn"]


def test_compare_orders_profiles_by_their_chat_limits() -> None:
    result = runner.invoke(app, ["loadtest", "--compare", "sequential,high-performance", "--users", "5",
                                 "--turns", "2", "--json", "--quiet", *FAST_SIM])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    sequential, fast = doc["comparison"]
    assert (sequential["profile"], sequential["speedup"]) == ("sequential", 1.0)
    assert fast["profile"] == "high-performance"
    assert fast["throughput_rps"] > 1.5 * sequential["throughput_rps"]
    assert fast["ttft_p95"] < sequential["ttft_p95"]
    for run, limit in zip(doc["runs"], (1, 5), strict=True):
        summary, meta = run["summary"], run["meta"]
        assert all(summary[m]["p95"] is not None for m in LATENCIES)
        assert summary["isolation_violations"] == 0 and summary["efficiency"] is not None
        assert meta["nominal"]["service_time_s"] == pytest.approx(0.5)
        assert meta["admin"]["status"] == "ok"
        assert meta["admin"]["chat_limit"] == limit
        assert meta["admin"]["samples"] >= 1
        assert meta["admin"]["peak"]["chat"]["running"] <= limit  # the server never ran more chats than allowed


def _spawned_stack(command: psutil.Process, deadline: float) -> tuple[psutil.Process, list[psutil.Process], str]:
    """The `python -m agent` server the command started, everything under it (the simulator), and its URL."""
    while time.monotonic() < deadline:
        serve = next((p for p in command.children() if p.cmdline()[1:3] == ["-m", "agent"]), None)
        if serve is not None:
            port = serve.cmdline()[serve.cmdline().index("--port") + 1]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{HOST}:{port}/config", timeout=2).status_code == 200:
                    return serve, serve.children(recursive=True), f"http://{HOST}:{port}"
        time.sleep(0.2)
    raise AssertionError("the spawned server never answered")


@pytest.mark.parametrize("command", [["loadtest", "--spawn", "--users", "2", "--duration", "600"], ["smoke"]])
def test_sigterm_to_a_command_that_spawned_a_server_stops_the_server_and_its_simulator(
    tmp_path: Path, command: list[str]
) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "cmw_cli.main", *command, "-p", "constrained", *FAST_SIM],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    stack: list[psutil.Process] = []
    try:
        serve, simulator, url = _spawned_stack(psutil.Process(proc.pid), time.monotonic() + 120)
        stack = [serve, *simulator]
        assert simulator, "cmw serve with the sim provider runs a simulator process"
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        _gone, alive = psutil.wait_procs(stack, timeout=30)
        assert not alive, [p.pid for p in alive]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/config", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        for leftover in stack:  # orphaned if the command died without stopping them
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        proc.wait(10)

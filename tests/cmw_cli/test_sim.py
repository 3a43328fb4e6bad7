"""`cmw sim`: flags reach the simulator's settings; the real command serves and stops on SIGTERM."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import agent.simulator
from cmw_cli.main import app

runner = CliRunner()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, settings_env: Path) -> dict[str, Any]:
    """Replace the blocking serve() with a recorder, as uvicorn's CLI tests patch run()."""
    seen: dict[str, Any] = {}

    def fake_serve(settings: Any, *, on_ready: Any = None, **kwargs: Any) -> None:
        seen["settings"] = settings
        on_ready(agent.simulator.Simulator(settings, port=4321))

    monkeypatch.setattr(agent.simulator, "serve", fake_serve)
    return seen


def test_flags_become_simulator_settings(served: dict[str, Any]) -> None:
    result = runner.invoke(app, ["sim", "--host", "127.0.0.2", "--port", "8001", "--ttft-ms", "5", "--tps", "250",
                                 "--reply-tokens", "7", "--set", "sim.error_rate=0.25", "--set", "sim.seed=3"])
    assert result.exit_code == 0, result.output
    s = served["settings"]
    assert (s.host, s.port, s.ttft_ms, s.tokens_per_second, s.reply_tokens, s.error_rate, s.seed) == (
        "127.0.0.2", 8001, 5.0, 250.0, 7, 0.25, 3)


def test_capacity_flag_becomes_sim_capacity_and_is_printed(served: dict[str, Any]) -> None:
    result = runner.invoke(app, ["sim", "--capacity", "8", "--tps", "50"])
    assert result.exit_code == 0, result.output
    assert served["settings"].capacity == 8
    assert "capacity 8 streams (400 tokens/s in all)" in result.output
    assert runner.invoke(app, ["sim", "--capacity", "-1"]).exit_code == 2


def test_dedicated_flags_outrank_set(served: dict[str, Any]) -> None:
    result = runner.invoke(app, ["sim", "--tps", "99", "--set", "sim.tokens_per_second=5"])
    assert result.exit_code == 0, result.output
    assert served["settings"].tokens_per_second == 99.0


def test_it_prints_the_base_url_and_fault_rates(served: dict[str, Any]) -> None:
    result = runner.invoke(app, ["sim", "--set", "sim.stall_rate=0.1"])
    assert "http://127.0.0.1:4321/v1" in result.output
    assert "stall 0.1" in result.output


@pytest.mark.parametrize(
    "args",
    [["--tps", "0"], ["--reply-tokens", "zero"], ["--bogus"], ["--set", "sim.nope=1"], ["--port", "70000"],
     ["--set", "sim.error_statuses=[200]"]],
)
def test_bad_flags_exit_2_without_serving(served: dict[str, Any], args: list[str]) -> None:
    result = runner.invoke(app, ["sim", *args])
    assert result.exit_code == 2, result.output
    assert "settings" not in served
    assert "Traceback" not in result.output


@pytest.mark.server
def test_a_busy_port_exits_4(settings_env: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = runner.invoke(app, ["sim", "--port", str(taken.getsockname()[1])])
    assert result.exit_code == 4
    assert "cannot start the simulator" in result.output


@pytest.mark.server
def test_cmw_sim_serves_models_then_stops_on_sigterm_with_exit_0(settings_env: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "cmw_cli.main", "sim", "--port", "0", "--ttft-ms", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the socket listens
        match = re.search(r"http://127\.0\.0\.1:\d+/v1", line)
        assert match, line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        models = httpx.get(f"{match.group(0)}/models", timeout=5).json()
        assert models["data"][0]["id"] == agent.simulator.DEFAULT_MODEL
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.server
def test_cmw_sim_stops_on_ctrl_c_with_exit_0(settings_env: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "cmw_cli.main", "sim", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "http://" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

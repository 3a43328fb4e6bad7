"""`cmw loadtest` finds an app's chat endpoint when it is not called `chat` (a ChatInterface's included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.loadtest.protocol import TargetError, chat_endpoint
from agent.settings import SimSettings
from agent.simulator import running_simulator
from cmw_cli.main import app
from tests.servers import free_port, wait_until_ready

ROOT = Path(__file__).resolve().parents[3]
runner = CliRunner()
COMPONENTS = {1: {"type": "textbox"}, 2: {"type": "chatbot"}, 3: {"type": "state"}, 4: {"type": "json"},
              5: {"type": "button"}}


def dep(name: str, inputs: list[int], outputs: list[int], visibility: str = "public") -> dict[str, Any]:
    return {"api_name": name, "inputs": inputs, "outputs": outputs, "api_visibility": visibility}


def test_the_one_endpoint_that_takes_a_message_and_returns_a_chatbot_wins() -> None:
    found = chat_endpoint([dep("upper", [1], [1]), dep("talk", [1, 2], [2, 1]), dep("hidden", [1], [2], "private")],
                          COMPONENTS)
    assert found["api_name"] == "talk"


def test_a_chat_interfaces_api_is_found_by_its_message_input() -> None:
    assert chat_endpoint([dep("respond", [1, 3], [4, 3]), dep("reset", [], [2])], COMPONENTS)["api_name"] == "respond"


@pytest.mark.parametrize(
    ("deps", "says"),
    [
        ([dep("a", [1], [2]), dep("b", [1], [2])], "several endpoints take a message and answer (a, b)"),
        ([dep("reset", [5], [2])], "no endpoint takes a message and returns a chat (public endpoints: reset)"),
    ],
)
def test_ambiguous_or_missing_endpoints_are_named(deps: list[dict[str, Any]], says: str) -> None:
    with pytest.raises(TargetError) as refused:
        chat_endpoint(deps, COMPONENTS)
    assert says in str(refused.value)


@pytest.fixture(scope="module")
def chat_interface() -> Iterator[str]:
    """examples/chat_app.py started the way its author runs it: `python app.py`."""
    with running_simulator(SimSettings(ttft_ms=0, tokens_per_second=2000, reply_tokens=5, jitter=0), port=0) as sim:
        port = free_port()
        env = {**os.environ, "CHAT_APP_LLM_URL": sim.base_url, "CHAT_APP_PORT": str(port),
               "GRADIO_ANALYTICS_ENABLED": "False"}
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"chat-app-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "chat_app.py")], env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            wait_until_ready(f"http://127.0.0.1:{port}", proc, log, probe="/config")
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(30)


@pytest.mark.server
def test_loadtest_finds_a_plain_chat_interfaces_endpoint_without_api_name(chat_interface: str) -> None:
    result = runner.invoke(app, ["loadtest", "--url", chat_interface, "--users", "2", "--turns", "2", "--json", "-q"],
                           env={"CMW_ADMIN_TOKEN": ""})
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["meta"]["endpoint"]["api_name"] == "respond"
    assert doc["summary"]["turns_completed"] == 4 and doc["summary"]["isolation_violations"] == 0
    assert doc["summary"]["isolation_judged"] is True  # the ChatInterface's chatbot holds each session's messages


@pytest.mark.server
def test_spawn_app_serves_the_app_under_cmw_and_judges_isolation() -> None:
    with running_simulator(SimSettings(ttft_ms=0, tokens_per_second=2000, reply_tokens=5, jitter=0), port=0) as sim:
        result = runner.invoke(app, ["loadtest", "--spawn", "--app", "examples/chat_app.py", "-p", "balanced",
                                     "--users", "3", "--turns", "2", "--json", "-q"],
                               env={"CHAT_APP_LLM_URL": sim.base_url})
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["meta"]["target"]["spawned"] is True
    assert any(item.endswith("examples/chat_app.py") for item in doc["meta"]["target"]["overrides"])
    assert doc["summary"]["turns_completed"] == 6 and doc["summary"]["isolation_judged"] is True
    assert doc["meta"]["admin"]["status"] == "ok"  # the spawned server's queue figures, read with its token


@pytest.mark.server
def test_the_report_says_when_isolation_cannot_be_judged() -> None:
    forgetful = Path(__file__).resolve().parent / "forgetful_app.py"
    result = runner.invoke(app, ["loadtest", "--spawn", "--app", str(forgetful), "--users", "2", "--turns", "2"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "cannot be judged" in result.stdout

"""`cmw status` against a real `cmw serve`, and its failures: unreachable (4), refused token (2)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from agent.app.admin import token_path
from cmw_cli.main import app
from cmw_cli.status import duration
from tests.servers import RunningServer, cmw_server, free_port

pytestmark = pytest.mark.server

runner = CliRunner()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with cmw_server(tmp_path_factory.mktemp("status"), "sim.ttft_ms=5", "sim.reply_tokens=5",
                    profile="constrained") as running:
        yield running


def token(server: RunningServer) -> str:
    return token_path(server.state_dir).read_text().strip()


def test_status_json_has_health_and_queue_figures(server: RunningServer) -> None:
    result = runner.invoke(app, ["status", "--json", "--url", server.url, "--token", token(server)])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["url"] == server.url
    assert status["health"]["status"] == "ok"
    assert status["health"]["profile"] == "constrained"
    assert status["queue"]["events"]["chat"] == {"waiting": 0, "running": 0, "limit": 1}


def test_status_table_names_profile_and_every_event(server: RunningServer) -> None:
    result = runner.invoke(app, ["status", "--url", server.url + "/", "--token", token(server)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "profile constrained" in result.stdout
    for event in ("chat", "file_upload", "stats_refresh", "logs_refresh"):
        assert event in result.stdout


def test_status_finds_the_token_file_through_the_state_dir(server: RunningServer) -> None:
    result = runner.invoke(app, ["status", "--json", "--url", server.url],
                           env={"CMW_ADMIN_TOKEN": None, "CMW_SERVER__STATE_DIR": str(server.state_dir)})
    assert result.exit_code == 0, result.output


def test_status_with_a_refused_token_is_bad_input(server: RunningServer) -> None:
    result = runner.invoke(app, ["status", "--url", server.url, "--token", "wrong"])
    assert result.exit_code == 2
    assert "refused the admin token" in result.stderr


def test_status_of_an_unreachable_server_exits_4_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["status", "--url", url, "--token", "t"])
    assert result.exit_code == 4
    assert url in result.stderr
    assert "Traceback" not in result.output


def test_a_url_without_a_cmw_admin_api_is_unreachable(server: RunningServer) -> None:
    result = runner.invoke(app, ["status", "--url", f"{server.url}/elsewhere", "--token", token(server)])
    assert result.exit_code == 4
    assert "no cmw admin API" in result.stderr


def test_importing_the_cli_loads_no_web_or_llm_stack() -> None:
    code = (
        "import sys, cmw_cli.main; "
        "print(sorted(m for m in ('gradio', 'fastapi', 'httpx', 'langchain_openai', 'openai') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize(("seconds", "shown"), [(0, "0s"), (59.9, "59s"), (61, "1m01s"), (7260, "2h01m"),
                                                (90_000, "1d01h")])
def test_uptime_reads_at_a_glance(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown

"""`cmw config set --live`, `cmw config show --url` and `cmw status [--watch]` against a real `cmw serve`.

The live change reaches the server's queue (its /admin/api/queue limit), shows as source `live` everywhere,
and every refusal is one line with DESIGN's exit code. `status --watch` renders and exits 0 after --count
views, and a SIGINT to a running one (on a real terminal, a pty) exits 130.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner, Result

from agent.app.admin import token_path
from cmw_cli.main import app
from cmw_cli.status import History, sparkline
from tests.servers import RunningServer, cmw_server, free_port

pytestmark = pytest.mark.server

runner = CliRunner()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with cmw_server(tmp_path_factory.mktemp("live-cli"), "sim.ttft_ms=5", "sim.reply_tokens=5",
                    profile="constrained") as running:
        yield running


def token(server: RunningServer) -> str:
    return token_path(server.state_dir).read_text().strip()


def cmw(server: RunningServer, *args: str) -> Result:
    return runner.invoke(app, [*args, "--url", server.url, "--token", token(server)], env={"COLUMNS": "200"})


def queue_limit(server: RunningServer, event: str) -> int:
    queue = httpx.get(f"{server.url}/admin/api/queue", headers={"Authorization": f"Bearer {token(server)}"})
    return queue.json()["events"][event]["limit"]


def one_error_line(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def test_config_set_live_changes_the_running_servers_limit(server: RunningServer) -> None:
    result = cmw(server, "config", "set", "events.logs_refresh_concurrency_limit=6", "--live")
    assert result.exit_code == 0, result.output
    assert result.stdout == "logs_refresh: 3 → 6 (live)\n"
    assert queue_limit(server, "logs_refresh") == 6

    again = cmw(server, "config", "set", "events.limits.logs_refresh=4", "--live", "--json")  # the api-name form
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == {"event": "logs_refresh", "limit": 4, "previous": 6, "pool": ["logs_refresh"]}
    assert queue_limit(server, "logs_refresh") == 4
    assert token(server) not in server.log() and "logs_refresh: 6 → 4 (live, from 127.0.0.1)" in server.log()


def test_config_show_url_shows_the_servers_settings_with_live_sources(server: RunningServer) -> None:
    assert cmw(server, "config", "set", "events.stats_refresh_concurrency_limit=7", "--live").exit_code == 0
    shown = cmw(server, "config", "show", "--json")
    assert shown.exit_code == 0, shown.output
    config = json.loads(shown.stdout)
    assert config["events.stats_refresh_concurrency_limit"]["value"] == 7
    assert config["events.stats_refresh_concurrency_limit"]["source"] == "live"
    assert config["events.chat_concurrency_limit"]["source"].endswith("constrained.toml")
    table = cmw(server, "config", "show")
    assert table.exit_code == 0, table.output
    assert f"server {server.url}: profile constrained" in table.stdout
    row = next(line for line in table.stdout.splitlines() if "events.stats_refresh_concurrency_limit" in line)
    assert " 7 " in row and " live " in row
    mixed = runner.invoke(app, ["config", "show", "-p", "balanced", "--url", server.url, "--token", token(server)])
    one_error_line(mixed, 2, "give one or the other")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("events.chat_concurrency_limit=2",), ("only live changes are supported", "cmw config init")),
        (("server.port=8000", "--live"), ("server.port cannot change live", "events.limits.<api name>")),
        (("events.bogus_concurrency_limit=2", "--live"), ("cannot change live", "chat, file_upload")),
        (("events.chat_concurrency_limit", "--live"), ("expected KEY=VALUE",)),
        (("events.chat_concurrency_limit=0", "--live"), ("at least 1",)),
        (("events.chat_concurrency_limit=two", "--live"), ("whole number",)),
        (("events.chat_concurrency_limit=41", "--live"), ("refused the change", "server.max_threads (40)")),
        (("events.limits.nope=2", "--live"), ("refused the change", "no event 'nope'")),
    ],
    ids=["without-live", "other-key", "unknown-seed-key", "no-value", "zero", "not-a-number", "above-max-threads",
         "unknown-event"],
)
def test_config_set_refusals_are_one_line_and_exit_2(
    server: RunningServer, args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    one_error_line(cmw(server, "config", "set", *args), 2, *fragments)
    assert queue_limit(server, "chat") == 1  # constrained's, unchanged


def test_config_set_against_nothing_exits_4_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["config", "set", "events.chat_concurrency_limit=2", "--live", "--url", url,
                                 "--token", "t"])
    one_error_line(result, 4, url)


def test_status_names_each_limits_source(server: RunningServer) -> None:
    assert cmw(server, "config", "set", "events.file_upload_concurrency_limit=3", "--live").exit_code == 0
    result = cmw(server, "status")
    assert result.exit_code == 0, result.output
    rows = {cells[0]: cells for line in result.stdout.splitlines()
            if len(cells := [cell.strip() for cell in line.replace("┃", "│").split("│")]) > 1}
    assert rows["event"] == ["event", "waiting", "running", "limit", "source"]
    assert rows["chat"][3:] == ["1", "profile:constrained"]
    assert rows["file_upload"][3:] == ["3", "live"]
    figures = json.loads(cmw(server, "status", "--json").stdout)
    assert figures["limits"]["events"]["file_upload"]["source"] == "live"


def test_status_watch_renders_count_views_and_exits_0(server: RunningServer) -> None:
    result = cmw(server, "status", "--watch", "--count", "2", "--interval", "0.1")
    assert result.exit_code == 0, result.output
    assert "running (last" in result.stdout and "replies/s" in result.stdout
    chat = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["chat"])
    assert "▁▁" in chat  # two samples of running and of waiting, all zero
    lines = cmw(server, "status", "--watch", "--json", "--count", "2", "--interval", "0.1").stdout.splitlines()
    assert [set(json.loads(line)) for line in lines] == [{"time", "health", "queue", "limits"}] * 2


def test_sigint_to_a_running_status_watch_exits_130(server: RunningServer) -> None:
    controller, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "LINES": "40", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmw_cli.main", "status", "--watch", "--interval", "0.2", "--url", server.url,
         "--token", token(server)],
        stdin=terminal, stdout=terminal, stderr=terminal, env=env, close_fds=True,
    )
    os.close(terminal)
    seen = b""
    try:
        while b"replies/s" not in seen:  # the first view is on the screen: the watch loop runs
            ready, _, _ = select.select([controller], [], [], 60)
            assert ready, seen[-500:]
            chunk = os.read(controller, 65536)
            assert chunk, seen[-500:]
            seen += chunk
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(controller)


def test_sparklines_scale_to_the_top_and_keep_zero_apart() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 0, 0]) == "▁▁▁"
    assert sparkline([0, 1, 2, 4], top=4) == "▁▄▅█"
    assert sparkline([5, 10]) == "▅█"
    assert sparkline([0.01, 100])[0] == "▂"  # anything above zero shows


def test_replies_per_second_come_from_the_completed_turns_between_refreshes() -> None:
    history = History(size=3)
    for now, completed in ((0.0, 10), (2.0, 14), (4.0, 14), (5.0, 3), (6.0, 5)):
        history.add({"turns": {"completed": completed}}, {"events": {"chat": {"running": 1, "waiting": 0}}}, now)
    assert list(history.rates) == [2.0, 0.0, 2.0]  # a count that went back (a restart) gives no figure
    assert list(history.running["chat"]) == [1, 1, 1]

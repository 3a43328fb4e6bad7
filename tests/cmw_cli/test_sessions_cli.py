"""`cmw sessions list|show|kill|watch` against a real `cmw serve`, and history that survives kill -9."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client
from typer.testing import CliRunner, Result

from agent.app.admin import token_path
from cmw_cli.main import app
from tests.servers import RunningServer, cmw_server, free_port

pytestmark = pytest.mark.server

FAST = ("sim.ttft_ms=5", "sim.tokens_per_second=2000", "sim.reply_tokens=5", "sim.jitter=0")
runner = CliRunner()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with cmw_server(tmp_path_factory.mktemp("sessions-cli"), *FAST) as running:
        yield running


def cmw(server: RunningServer, *args: str, token: bool = True, env: dict[str, str | None] | None = None) -> Result:
    """Run `cmw` in-process against ``server``; with ``token``, pass the server's token as --token."""
    flags = ["--url", server.url]
    if token:
        flags += ["--token", token_path(server.state_dir).read_text().strip()]
    return runner.invoke(app, [*args, *flags], env={"CMW_ADMIN_TOKEN": None, **(env or {})})


def listed(server: RunningServer) -> dict[str, dict]:
    result = cmw(server, "sessions", "list", "--json")
    assert result.exit_code == 0, result.output
    return {item["id"]: item for item in json.loads(result.stdout)}


def conversation_id(server: RunningServer, session_hash: str) -> str:
    """The id `cmw sessions list` shows for a gradio_client's session (`show` also takes the hash)."""
    result = cmw(server, "sessions", "show", session_hash, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["id"]


def converse(client: Client, turns: int, prefix: str) -> None:
    for turn in range(turns):
        client.submit(f"{prefix} {turn}", api_name="/chat").result(timeout=60)


@pytest.fixture(scope="module")
def two_users(server: RunningServer) -> dict[str, int]:
    """Two gradio_client users chatting at the same time: session id → turns it completed."""
    users = {Client(server.url, verbose=False): 2, Client(server.url, verbose=False): 1}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda pair: converse(pair[0], pair[1], "hello"), users.items()))
    return {conversation_id(server, user.session_hash): turns for user, turns in users.items()}


def test_list_json_shows_both_gradio_client_users_with_their_turn_counts(
    server: RunningServer, two_users: dict[str, int]
) -> None:
    sessions = listed(server)
    for session_id, turns in two_users.items():
        assert sessions[session_id]["turns"] == turns
        assert sessions[session_id]["state"] == "idle"
        assert {"id", "created", "last_active", "turns", "tokens", "provider", "model", "state"} <= set(
            sessions[session_id]
        )


def test_list_table_shows_the_sessions(server: RunningServer, two_users: dict[str, int]) -> None:
    result = runner.invoke(app, ["sessions", "list", "--url", server.url, "--token",
                                 token_path(server.state_dir).read_text().strip()], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for session_id in two_users:
        assert session_id in result.stdout


def test_show_json_gives_the_conversation(server: RunningServer, two_users: dict[str, int]) -> None:
    session_id = next(s for s, turns in two_users.items() if turns == 2)
    result = cmw(server, "sessions", "show", session_id, "--json")
    assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)
    assert [m["content"] for m in detail["history"] if m["role"] == "user"] == ["hello 0", "hello 1"]


def test_show_prints_the_conversation(server: RunningServer, two_users: dict[str, int]) -> None:
    session_id = next(iter(two_users))
    result = cmw(server, "sessions", "show", session_id)
    assert result.exit_code == 0, result.output
    assert "user: hello 0" in result.stdout


def test_kill_frees_the_session_and_then_it_is_unknown(server: RunningServer) -> None:
    client = Client(server.url, verbose=False)
    converse(client, 1, "doomed")
    session_id = conversation_id(server, client.session_hash)
    assert session_id in listed(server)

    killed = cmw(server, "sessions", "kill", session_id)
    assert killed.exit_code == 0, killed.output
    assert session_id not in listed(server)
    again = cmw(server, "sessions", "show", session_id)
    assert again.exit_code == 2
    assert f"no session '{session_id}'" in again.stderr


def test_unknown_session_is_bad_input(server: RunningServer) -> None:
    result = cmw(server, "sessions", "kill", "no-such-session")
    assert result.exit_code == 2
    assert "no session 'no-such-session'" in result.stderr


def test_token_file_in_the_state_dir_is_used_when_no_token_is_given(
    server: RunningServer, two_users: dict[str, int]
) -> None:
    result = cmw(server, "sessions", "list", "--json", token=False,
                 env={"CMW_SERVER__STATE_DIR": str(server.state_dir)})
    assert result.exit_code == 0, result.output
    assert set(two_users) <= {item["id"] for item in json.loads(result.stdout)}


def test_url_defaults_to_the_server_of_the_settings(server: RunningServer, two_users: dict[str, int]) -> None:
    result = runner.invoke(app, ["sessions", "list", "--json"], env={
        "CMW_ADMIN_TOKEN": None, "CMW_SERVER__STATE_DIR": str(server.state_dir),
        "CMW_SERVER__PORT": str(server.port), "CMW_SERVER__HOST": "127.0.0.1",
    })
    assert result.exit_code == 0, result.output
    assert set(two_users) <= {item["id"] for item in json.loads(result.stdout)}


def test_missing_token_is_bad_input_naming_where_it_looked(server: RunningServer, tmp_path: Path) -> None:
    result = cmw(server, "sessions", "list", token=False, env={"CMW_SERVER__STATE_DIR": str(tmp_path)})
    assert result.exit_code == 2
    assert "wants the admin token" in result.stderr and str(tmp_path / "admin.token") in result.stderr


def test_wrong_token_is_bad_input_with_a_clear_message(server: RunningServer) -> None:
    result = runner.invoke(app, ["sessions", "list", "--url", server.url, "--token", "wrong"])
    assert result.exit_code == 2
    assert "refused the admin token" in result.stderr
    assert "Traceback" not in result.output


def test_unreachable_server_exits_4_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["sessions", "list", "--url", url, "--token", "t"])
    assert result.exit_code == 4
    assert url in result.stderr


def test_watch_json_prints_one_snapshot_per_refresh(server: RunningServer, two_users: dict[str, int]) -> None:
    result = cmw(server, "sessions", "watch", "--json", "--count", "2", "--interval", "0.1")
    assert result.exit_code == 0, result.output
    snapshots = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(snapshots) == 2
    assert set(two_users) <= {item["id"] for item in snapshots[-1]["sessions"]}
    assert snapshots[-1]["queue"]["events"]["chat"]["limit"] == 3


def test_watch_table_stops_after_count(server: RunningServer, two_users: dict[str, int]) -> None:
    result = cmw(server, "sessions", "watch", "--count", "1", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "chat 0/3 running" in result.stdout


def test_ctrl_c_stops_watch_with_exit_130(server: RunningServer) -> None:
    """Ctrl-C is how `watch` ends; it reports SIGINT as shells do (128 + 2), so a script can tell it from a failure."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CMW_ADMIN_TOKEN": token_path(server.state_dir).read_text().strip()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmw_cli", "sessions", "watch", "--json", "--interval", "0.1", "--url", server.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        assert "sessions" in json.loads(proc.stdout.readline())  # it is watching: interrupt it mid-loop
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()


def test_kill_9_during_load_then_restart_keeps_every_completed_turn(tmp_path: Path) -> None:
    slow = ("sim.ttft_ms=20", "sim.tokens_per_second=400", "sim.reply_tokens=8", "sim.jitter=0")
    completed: dict[str, int] = {}
    lock = threading.Lock()
    enough = threading.Event()

    def chat_until_killed(client: Client) -> None:
        for turn in range(40):  # bounded: the kill normally ends it long before
            try:
                client.submit(f"turn {turn}", api_name="/chat").result(timeout=30)
            except Exception:  # the server died under this turn
                return
            with lock:
                completed[client.session_hash] += 1
                if sum(completed.values()) >= 9:
                    enough.set()

    with cmw_server(tmp_path, *slow) as first:
        users = [Client(first.url, verbose=False) for _ in range(3)]
        completed.update({user.session_hash: 0 for user in users})
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(chat_until_killed, user) for user in users]
            assert enough.wait(60), "the load never got going"
            first.stop(signal.SIGKILL)
            concurrent.futures.wait(futures, timeout=60)
        for user in users:
            user.close()
        seen = dict(completed)

    with cmw_server(tmp_path, *slow) as second:
        sessions = listed(second)
        for session_hash, turns in seen.items():
            detail = json.loads(cmw(second, "sessions", "show", session_hash, "--json").stdout)
            assert detail["id"] in sessions
            # Every turn the client saw complete is there; one more may have completed (or been cut,
            # and read back as "[interrupted]") as the kill landed.
            assert turns <= detail["turns"] <= turns + 1
            assert len(detail["history"]) == 2 * detail["turns"]

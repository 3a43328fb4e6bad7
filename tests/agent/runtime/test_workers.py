"""`cmw serve --workers 2`: two real worker processes behind a real HAProxy, sessions in a real Redis.

Sessions speak Gradio's raw queue protocol (the one `cmw loadtest` uses) and gradio_client through the
proxy. Checks: stickiness (each session's history holds exactly its own turns, in order, on every
turn), both workers take sessions, uploads reach a worker that can read them, the admin API and
`cmw sessions list` show every worker's sessions, and `kill -9` of a worker mid-turn → it is restarted
and its sessions continue with every completed turn. Skipped when haproxy or redis-server is missing.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from agent.loadtest.connection import Connection, Origin
from agent.loadtest.protocol import Endpoint, discover, run_turn, user_texts
from agent.runtime.proxy import ProxyError, find_haproxy
from cmw_cli.main import app
from tests.agent.sessions.test_store_redis import REDIS_SERVER, running_redis
from tests.servers import RunningServer, cmw_server

pytestmark = [pytest.mark.server, pytest.mark.services]

try:
    find_haproxy()
    HAVE_HAPROXY = True
except ProxyError:
    HAVE_HAPROXY = False

needs_stack = pytest.mark.skipif(
    not HAVE_HAPROXY or REDIS_SERVER is None,
    reason="needs haproxy and redis-server (apt-get install haproxy redis-server; .ci/run does)",
)
runner = CliRunner()


def test_missing_haproxy_exits_4_naming_the_package(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.runtime.proxy.shutil.which", lambda name: None)
    monkeypatch.setattr("agent.runtime.proxy.os.access", lambda path, mode: False)
    result = runner.invoke(app, ["serve", "--workers", "2", "--port", "0", "--set", "sessions.store=memory"])
    assert result.exit_code == 4
    assert "install the 'haproxy' package (apt-get install haproxy)" in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(not HAVE_HAPROXY, reason="haproxy is not installed (apt-get install haproxy)")
def test_unreachable_redis_is_one_line_and_exit_4(settings_env: Path) -> None:
    from tests.agent.sessions.test_store_redis import _free_port

    url = f"redis://127.0.0.1:{_free_port()}/0"
    result = runner.invoke(app, ["serve", "--workers", "2", "--port", "0", "--set", f"sessions.store={url}"])
    assert result.exit_code == 4
    assert "cannot connect" in result.output and "Traceback" not in result.output


def test_workers_flag_rejects_words(settings_env: Path) -> None:
    result = runner.invoke(app, ["serve", "--workers", "many"])
    assert result.exit_code == 2
    assert "'auto'" in result.output


# ------------------------------------------------------------------------------------- the real stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    if not HAVE_HAPROXY or REDIS_SERVER is None:
        pytest.skip("needs haproxy and redis-server (apt-get install haproxy redis-server; .ci/run does)")
    tmp = tmp_path_factory.mktemp("workers")
    with running_redis(tmp / "redis") as redis_url, cmw_server(
        tmp, f"sessions.store={redis_url}", "sim.reply_tokens=10", "sim.tokens_per_second=25", "sim.ttft_ms=50",
        "server.shutdown_grace_s=2", extra_args=("--workers", "2"),
    ) as server:
        yield server


def token(server: RunningServer) -> str:
    return (server.state_dir / "admin.token").read_text().strip()


def admin(server: RunningServer, path: str) -> Any:
    response = httpx.get(f"{server.url}/admin/api/{path}", headers={"Authorization": f"Bearer {token(server)}"},
                         timeout=10)
    response.raise_for_status()
    return response.json()


def worker_procs(server: RunningServer) -> dict[int, psutil.Process]:
    """The supervisor's worker children by index."""
    out = {}
    for child in psutil.Process(server.proc.pid).children():
        cmd = child.cmdline()
        if "agent.runtime.worker" in cmd:
            out[int(cmd[cmd.index("--index") + 1])] = child
    return out


class Chat:
    """One session over the raw protocol; remembers the messages whose turns completed."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.session = uuid.uuid4().hex[:11]
        self.conn = Connection(Origin.parse(endpoint.base_url))
        self.sent: list[str] = []
        self.completed: list[str] = []

    async def turn(self, n: int) -> str | None:
        """Send turn n; None when it completed with this session's exact history, else what went wrong."""
        message = f"canary-{self.session} turn {n}"
        self.sent.append(message)
        result = await run_turn(self.conn, self.endpoint, self.session, message, timeout=90)
        if not result.ok:
            await self.conn.close()
            return f"{result.error}: {result.detail}"
        self.completed.append(message)
        texts = user_texts(result.history or [])
        assert all(self.session in t for t in texts), f"foreign turn in {self.session}: {texts}"
        assert _subsequence(self.completed, texts), f"{self.session} lost a turn: {texts} vs {self.completed}"
        assert _subsequence(texts, self.sent), f"{self.session} has turns it never sent: {texts}"
        return None


def _subsequence(needle: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(item in it for item in needle)


async def _chats(server: RunningServer, count: int) -> list[Chat]:
    async with httpx.AsyncClient() as client:
        endpoint = await discover(client, server.url)
    return [Chat(endpoint) for _ in range(count)]


@needs_stack
def test_concurrent_sessions_are_isolated_and_spread_over_both_workers(stack: RunningServer) -> None:
    async def run() -> list[Chat]:
        chats = await _chats(stack, 8)
        for n in range(3):
            failures = await asyncio.gather(*(chat.turn(n) for chat in chats))
            assert failures == [None] * len(chats)
        return chats

    chats = asyncio.run(run())
    stored = {s["id"]: s for s in admin(stack, "sessions")}
    for chat in chats:
        detail = admin(stack, f"sessions/{chat.session}")  # the admin may name a session by its hash
        assert stored[detail["id"]]["turns"] == 3
        assert user_texts(detail["history"]) == chat.completed
    queue = admin(stack, "queue")
    assert [w["worker"] for w in queue["workers"]] == [0, 1]
    assert all(w.get("samples", 0) > 0 for w in queue["workers"]), f"a worker took no session: {queue['workers']}"
    assert queue["events"]["chat"]["limit"] == sum(w["events"]["chat"]["limit"] for w in queue["workers"])


@needs_stack
def test_gradio_client_sessions_are_sticky(stack: RunningServer) -> None:
    from gradio_client import Client

    for _ in range(2):
        client = Client(stack.url, verbose=False)
        try:
            for n in range(2):
                history = client.predict(f"gc-{client.session_hash} {n}", api_name="/chat")[0]
            texts = user_texts(history)
            assert texts == [f"gc-{client.session_hash} 0", f"gc-{client.session_hash} 1"]
        finally:
            client.close()


@needs_stack
def test_uploads_reach_a_worker_that_can_read_them(stack: RunningServer, tmp_path: Path) -> None:
    """The upload route carries no session hash: the join naming the file may reach the other worker."""
    config = httpx.get(f"{stack.url}/config", timeout=10).json()
    dep = next(d for d in config["dependencies"] if any(
        config_component(config, t[0]).get("type") == "file" for t in d.get("targets", []) if t[1] == "upload"))
    ports = [w["port"] for w in admin(stack, "queue")["workers"]]
    upload_port, join_port = ports[0], ports[1]  # the proxy may send a session's upload and its join apart
    session = uuid.uuid4().hex[:11]
    uploaded = httpx.post(f"http://127.0.0.1:{upload_port}/gradio_api/upload",
                          files={"files": ("notes.txt", b"hello file")}, timeout=10)
    assert uploaded.status_code == 200, uploaded.text
    path = uploaded.json()[0]
    body = {"data": [[{"path": path, "orig_name": "notes.txt", "meta": {"_type": "gradio.FileData"}}]],
            "fn_index": dep["id"], "session_hash": session, "event_data": None, "trigger_id": dep["targets"][0][0]}
    other = f"http://127.0.0.1:{join_port}"
    joined = httpx.post(f"{other}/gradio_api/queue/join", json=body, timeout=10)
    assert joined.status_code == 200, joined.text
    with httpx.stream("GET", f"{other}/gradio_api/queue/data", params={"session_hash": session}, timeout=30) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                assert json.loads(line[5:])["success"], line
                break
    assert admin(stack, f"sessions/{session}")["files"] == {"notes.txt": "hello file"}


def config_component(config: dict[str, Any], component_id: int) -> dict[str, Any]:
    return next((c for c in config["components"] if c["id"] == component_id), {})


@needs_stack
def test_sessions_list_shows_every_workers_sessions(stack: RunningServer) -> None:
    chats = asyncio.run(_one_turn_each(stack, 6))
    result = runner.invoke(app, ["sessions", "list", "--json", "--url", stack.url, "--token", token(stack)])
    assert result.exit_code == 0, result.output
    listed = {s["id"] for s in json.loads(result.output)}
    ids = {admin(stack, f"sessions/{chat.session}")["id"] for chat in chats}
    assert ids <= listed
    per_worker = [set() for _ in range(2)]
    for index, port in enumerate(w["port"] for w in admin(stack, "queue")["workers"]):
        local = httpx.get(f"http://127.0.0.1:{port}/admin/api/sessions", timeout=10,
                          headers={"Authorization": f"Bearer {token(stack)}", "x-cmw-local": "1"}).json()
        per_worker[index] = {s["id"] for s in local if s["state"] != "stored"} & ids  # held in its memory
    assert per_worker[0] and per_worker[1], "all six sessions landed on one worker"
    assert not per_worker[0] & per_worker[1], "a session was held by both workers"


async def _one_turn_each(server: RunningServer, count: int) -> list[Chat]:
    chats = await _chats(server, count)
    assert await asyncio.gather(*(chat.turn(0) for chat in chats)) == [None] * count
    return chats


@needs_stack
def test_loadtest_reports_each_workers_peak_against_its_limit(stack: RunningServer) -> None:
    from agent.loadtest.runner import Target, loadtest
    from agent.loadtest.workload import Workload

    result = loadtest(Target(url=stack.url, token=token(stack)), Workload(users=8, turns=2, timeout=60))
    admin_figures = result.meta.admin
    assert admin_figures.status == "ok"
    assert set(admin_figures.workers) == {"0", "1"}
    for events in admin_figures.workers.values():
        chat = next(peak for name, peak in events.items() if "chat" in name)
        assert chat.limit is not None and chat.running <= chat.limit
    assert result.summary.isolation_violations == 0


@needs_stack
def test_a_token_brings_the_browser_back_on_either_worker(stack: RunningServer) -> None:
    """The page-load restore on each worker directly: the token and its key live in the shared Redis store."""
    from tests.raw import call, event

    restore, chat = event(stack.url, trigger="load"), event(stack.url, api_name="chat")
    tab = f"tab-{uuid.uuid4().hex[:11]}"
    assert call(stack.url, restore.fn_index, [None], tab).ok
    assert call(stack.url, chat.fn_index, ["follow me"], tab).ok
    token = call(stack.url, restore.fn_index, [None], tab).outputs[3]
    for worker in admin(stack, "queue")["workers"]:
        direct = f"http://127.0.0.1:{worker['port']}"
        back = call(direct, restore.fn_index, [token], f"reload-{uuid.uuid4().hex[:11]}")
        assert back.ok and user_texts(back.outputs[0]) == ["follow me"], (worker, back)
        forged = call(direct, restore.fn_index, [token[:-1] + ("0" if token[-1] != "0" else "1")],
                      f"stranger-{uuid.uuid4().hex[:11]}")
        assert forged.ok and forged.outputs[0] == []


@needs_stack
def test_kill_9_of_a_worker_mid_turn_restarts_it_and_loses_no_completed_turn(stack: RunningServer) -> None:
    victim_before = worker_procs(stack)[0]
    port0 = admin(stack, "queue")["workers"][0]["port"]

    async def run() -> list[Chat]:
        chats = await _chats(stack, 8)
        assert await asyncio.gather(*(chat.turn(0) for chat in chats)) == [None] * len(chats)
        second = asyncio.gather(*(chat.turn(1) for chat in chats))
        # Kill once worker 0 is generating replies (bounded wait: the turns take ~1 s each).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            local = await asyncio.to_thread(
                lambda: httpx.get(f"http://127.0.0.1:{port0}/admin/api/queue", timeout=5,
                                  headers={"Authorization": f"Bearer {token(stack)}", "x-cmw-local": "1"}).json())
            if local["events"]["chat"]["running"] > 0:
                break
            await asyncio.sleep(0.05)
        victim_before.send_signal(signal.SIGKILL)
        failures = await second
        assert any(failures), "no turn was in flight on the killed worker"
        assert not all(failures), "the other worker's turns failed too"
        # Turn 2 waits in worker 0's socket backlog until the supervisor has restarted it.
        assert await asyncio.gather(*(chat.turn(2) for chat in chats)) == [None] * len(chats)
        return chats

    chats = asyncio.run(run())
    restarted = worker_procs(stack)[0]
    assert restarted.pid != victim_before.pid
    assert "worker 0" in stack.log() and "restarting it" in stack.log()
    for chat in chats:
        history = admin(stack, f"sessions/{chat.session}")["history"]
        texts = user_texts(history)
        assert _subsequence(chat.completed, texts), f"{chat.session} lost a completed turn: {texts}"
        assert _subsequence(texts, chat.sent)


@needs_stack
def test_sigterm_stops_every_process(stack: RunningServer) -> None:
    """Last: the supervisor drains the workers, stops HAProxy and exits 0, leaving no process behind."""
    children = psutil.Process(stack.proc.pid).children(recursive=True)
    assert {"haproxy"} <= {c.name() for c in children}
    assert stack.stop() == 0
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"left running: {alive}"
    assert "cmw stopped" in stack.log()


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic x"])
def test_the_fan_out_asks_no_peer_without_the_admin_token(authorization: str | None) -> None:
    """A tokenless (or wrong-token) request gets the admin API's own refusal; no worker is asked."""
    import socket

    from agent.app.peers import PeerAdmin

    peer = socket.socket()
    peer.bind(("127.0.0.1", 0))
    peer.listen(8)
    peer.setblocking(False)
    answered: list[int] = []

    async def admin_api(scope: dict[str, Any], receive: Any, send: Any) -> None:
        answered.append(1)
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b'{"detail": "missing admin token"}'})

    fan_out = PeerAdmin(admin_api, ctx=None, index=0, peers=[peer.getsockname()[1]], token="t" * 40)

    async def ask() -> int:
        transport = httpx.ASGITransport(app=fan_out)
        headers = {"Authorization": authorization} if authorization else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://w", timeout=3) as client:
            return (await client.get("/admin/api/sessions", headers=headers)).status_code

    try:
        assert asyncio.run(ask()) == 401 and answered == [1]
        with pytest.raises(BlockingIOError):
            peer.accept()  # nobody connected to the peer
    finally:
        peer.close()

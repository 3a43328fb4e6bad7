"""The dashboard of `cmw serve --workers 2` (two real workers behind a real HAProxy, sessions in a real Redis): each
worker's figures and their sum, every worker's sessions, a login good on both workers, and a logout that reaches
both. Skipped when haproxy or redis-server is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent.app.dashboard import MOUNT
from agent.app.dashboard_auth import COOKIE
from agent.runtime.proxy import ProxyError, find_haproxy
from tests.agent.sessions.test_store_redis import REDIS_SERVER, running_redis
from tests.servers import RunningServer, cmw_server

pytestmark = [pytest.mark.server, pytest.mark.services, pytest.mark.timeout(240)]


def _have_haproxy() -> bool:
    try:
        find_haproxy()
    except ProxyError:
        return False
    return True


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, list[int]]]:
    """Two workers that have served a short load; their loopback ports by worker index."""
    if not _have_haproxy() or REDIS_SERVER is None:
        pytest.skip("needs haproxy and redis-server (apt-get install haproxy redis-server; .ci/run does)")
    tmp = tmp_path_factory.mktemp("dashboard-workers")
    with running_redis(tmp / "redis") as redis_url, cmw_server(
        tmp, f"sessions.store={redis_url}", "sim.reply_tokens=10", "sim.tokens_per_second=50", "sim.ttft_ms=50",
        "server.shutdown_grace_s=2", extra_args=("--workers", "2"),
    ) as server:
        load = subprocess.run(
            [sys.executable, "-m", "cmw_cli.main", "loadtest", "--url", server.url, "--users", "8", "--turns", "1",
             "-q", "--timeout", "60"],
            capture_output=True, text=True, timeout=180, env={**os.environ, "CMW_ADMIN_TOKEN": ""},
        )
        assert load.returncode == 0, load.stdout[-2000:] + load.stderr[-2000:]
        workers = api(server, "queue")["workers"]
        yield server, [w["port"] for w in sorted(workers, key=lambda w: w["worker"])]


def token(server: RunningServer) -> str:
    return (server.state_dir / "admin.token").read_text().strip()


def api(server: RunningServer, path: str) -> Any:
    response = httpx.get(f"{server.url}/admin/api/{path}", headers={"Authorization": f"Bearer {token(server)}"},
                         timeout=10)
    response.raise_for_status()
    return response.json()


def login(base: str, server: RunningServer) -> str:
    """Log in at ``base`` (the proxy or one worker); the cookie's value."""
    response = httpx.post(f"{base}/admin/login", data={"token": token(server)}, timeout=10)
    assert response.status_code == 303, response.text
    return response.cookies[COOKIE]


def event(base: str, cookie: str, api_name: str, data: list[Any], session_hash: str) -> list[Any]:
    """One of the dashboard's events over Gradio's queue protocol, through ``base``; its outputs."""
    with httpx.Client(base_url=base, headers={"Cookie": f"{COOKIE}={cookie}", "Origin": base}, timeout=30) as client:
        config = client.get(f"{MOUNT}/config").json()
        fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)
        joined = client.post(f"{MOUNT}/gradio_api/queue/join", json={
            "data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": None, "trigger_id": None})
        assert joined.status_code == 200, joined.text
        stream = client.get(f"{MOUNT}/gradio_api/queue/data", params={"session_hash": session_hash})
    for line in stream.text.splitlines():
        if line.startswith("data:"):
            message = json.loads(line[5:])
            if message.get("msg") == "process_completed":
                assert message["success"], message
                return message["output"]["data"]
    raise AssertionError(stream.text[-500:])


def limit(queue_plot: dict[str, Any]) -> float | None:
    """The chat limit of the latest step of the queue plot (None before a step is whole)."""
    points = [(row[0], row[1]) for row in queue_plot["data"] if row[2] == "limit" and row[1] is not None]
    return max(points)[1] if points else None


def refreshed(base: str, cookie: str, worker: str) -> list[Any]:
    """The refresh's outputs once the plots hold a whole 5-second step (polled: a step ends on the clock)."""
    deadline = time.monotonic() + 30
    while True:
        outputs = event(base, cookie, "refresh", ["chat", worker, None], f"w-{worker}-{time.monotonic()}")
        if limit(outputs[1]) is not None or time.monotonic() > deadline:
            return outputs
        time.sleep(0.5)


def test_the_dashboard_shows_each_worker_and_their_sum(stack: tuple[RunningServer, list[int]]) -> None:
    server, _ports = stack
    cookie = login(server.url, server)
    _status, queue, *_plots, workers, sessions, _shown = refreshed(server.url, cookie, "all")
    assert [row[0] for row in workers["data"]] == ["#0", "#1", "Σ"]
    assert [row[-1] for row in workers["data"][:2]] == ["ok", "ok"]
    assert int(workers["data"][2][3]) == int(workers["data"][0][3]) + int(workers["data"][1][3])  # sessions add up
    assert limit(queue) == 6.0  # two workers, a chat limit of 3 each
    assert limit(refreshed(server.url, cookie, "1")[1]) == 3.0
    listed = {row[0] for row in sessions["data"]}
    assert {s["id"] for s in api(server, "sessions")} <= listed  # both workers' sessions


def test_a_login_on_one_worker_is_good_on_the_other(stack: tuple[RunningServer, list[int]]) -> None:
    server, ports = stack
    first, second = (f"http://127.0.0.1:{port}" for port in ports)
    cookie = login(first, server)
    assert httpx.get(f"{second}{MOUNT}/config", headers={"Cookie": f"{COOKIE}={cookie}"}).status_code == 200
    # A logout on the first reaches the second: a copy of the cookie is refused there too.
    logout = httpx.post(f"{first}/admin/logout", headers={"Cookie": f"{COOKIE}={cookie}", "Origin": first})
    assert logout.status_code == 303
    for base in (first, second):
        assert httpx.get(f"{base}{MOUNT}/config", headers={"Cookie": f"{COOKIE}={cookie}"}).status_code == 401


def test_kill_reaches_the_worker_that_holds_the_session(stack: tuple[RunningServer, list[int]]) -> None:
    server, ports = stack
    victims = [s["id"] for s in api(server, "sessions")]
    for port in ports:  # kill from each worker's dashboard in turn: one of them does not hold the session
        base = f"http://127.0.0.1:{port}"
        victim = victims.pop()
        notice = event(base, login(base, server), "kill", [victim], f"kill-{port}")
        assert notice == [f"Session {victim} ended."]
        gone = httpx.get(f"{server.url}/admin/api/sessions/{victim}",
                         headers={"Authorization": f"Bearer {token(server)}"})
        assert gone.status_code == 404

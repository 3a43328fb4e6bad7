"""A live limit change with `cmw serve --workers 2`: two real workers behind a real HAProxy, sessions in Redis.

`PUT /admin/api/limits/{event}` through the proxy reaches every worker (each runs its own pools, so the limit is
per worker) and says what each did; `GET /admin/api/limits` answers for the worker it reached plus every
worker's limits. Refusals come back as one worker would give them. Skipped without haproxy or redis-server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from agent.app.peers import PeerAdmin
from agent.runtime.proxy import ProxyError, find_haproxy
from cmw_cli.main import app
from tests.agent.sessions.test_store_redis import REDIS_SERVER, running_redis
from tests.servers import RunningServer, cmw_server

try:
    find_haproxy()
    HAVE_HAPROXY = True
except ProxyError:
    HAVE_HAPROXY = False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    if not HAVE_HAPROXY or REDIS_SERVER is None:
        pytest.skip("needs haproxy and redis-server (apt-get install haproxy redis-server; .ci/run does)")
    tmp = tmp_path_factory.mktemp("live-workers")
    with running_redis(tmp / "redis") as redis_url, cmw_server(
        tmp, f"sessions.store={redis_url}", "sim.ttft_ms=5", "sim.reply_tokens=5", extra_args=("--workers", "2"),
    ) as server:
        yield server


def token(server: RunningServer) -> str:
    return (server.state_dir / "admin.token").read_text().strip()


def put(server: RunningServer, event: str, body: Any, **headers: str) -> httpx.Response:
    auth = headers or {"Authorization": f"Bearer {token(server)}"}
    return httpx.put(f"{server.url}/admin/api/limits/{event}", json=body, headers=auth, timeout=10)


def get(server: RunningServer, path: str) -> Any:
    response = httpx.get(f"{server.url}/admin/api/{path}", headers={"Authorization": f"Bearer {token(server)}"},
                         timeout=10)
    response.raise_for_status()
    return response.json()


@pytest.mark.server
@pytest.mark.services
def test_a_change_reaches_every_worker_and_each_one_says_so(stack: RunningServer) -> None:
    response = put(stack, "chat", {"limit": 4})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "event": "chat", "limit": 4, "previous": 3, "pool": ["chat"],
        "workers": [{"worker": 0, "limit": 4, "previous": 3}, {"worker": 1, "limit": 4, "previous": 3}],
    }
    limits = get(stack, "limits")
    assert limits["events"]["chat"]["limit"] == 4 and limits["events"]["chat"]["source"] == "live"
    assert [w["worker"] for w in limits["workers"]] == [0, 1]
    for worker in limits["workers"]:
        chat = worker["events"]["chat"]
        assert (chat["limit"], chat["source"], chat["changed_by"]) == (4, "live", "127.0.0.1")
        assert worker["events"]["file_upload"]["source"].startswith("profile:")
        own = httpx.get(f"http://127.0.0.1:{worker['port']}/admin/api/queue", timeout=10,
                        headers={"Authorization": f"Bearer {token(stack)}", "x-cmw-local": "1"}).json()
        assert own["events"]["chat"]["limit"] == 4  # each worker's own queue runs it
    assert get(stack, "queue")["events"]["chat"]["limit"] == 8  # summed over the workers, as profile limits are
    assert token(stack) not in stack.log() and "chat: 3 → 4 (live, from 127.0.0.1)" in stack.log()


@pytest.mark.server
@pytest.mark.services
def test_the_cli_names_how_many_workers_took_it(stack: RunningServer) -> None:
    result = CliRunner().invoke(app, ["config", "set", "events.stats_refresh_concurrency_limit=6", "--live",
                                      "--url", stack.url, "--token", token(stack)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "stats_refresh: 5 → 6 (live); 2 of 2 workers (the limit is per worker)\n"


@pytest.mark.server
@pytest.mark.services
@pytest.mark.parametrize(
    ("event", "body", "status", "fragment"),
    [("nope", {"limit": 2}, 404, "no event 'nope'"), ("chat", {"limit": 0}, 422, "server.max_threads"),
     ("chat", {"limit": "x"}, 422, "integer")],
)
def test_a_refusal_every_worker_gives_is_answered_once(
    stack: RunningServer, event: str, body: Any, status: int, fragment: str
) -> None:
    response = put(stack, event, body)
    assert response.status_code == status, response.text
    assert fragment in json.dumps(response.json()["detail"]) and "workers" not in response.json()


@pytest.mark.server
@pytest.mark.services
@pytest.mark.parametrize(("auth", "status"), [(None, 401), ("Bearer wrong", 403)])
def test_without_the_token_no_worker_is_asked(stack: RunningServer, auth: str | None, status: int) -> None:
    headers = {"Authorization": auth} if auth else {"X-Nothing": "1"}
    response = put(stack, "chat", {"limit": 9}, **headers)
    assert response.status_code == status
    assert set(response.json()) == {"detail"}
    assert get(stack, "limits")["events"]["chat"]["limit"] != 9


def test_a_worker_that_did_not_answer_is_named_and_the_others_change() -> None:
    """The merge alone, on the answers workers give (one unreachable, as when it restarts)."""
    peers = PeerAdmin(app=None, ctx=None, index=1, peers=[7001, 7002], token="t")
    took = json.dumps({"event": "chat", "limit": 4, "previous": 3, "pool": ["chat"]}).encode()
    status, merged = peers._limits("PUT", [(0, "unreachable (ConnectError)"), (200, took)])
    assert status == 200 and merged["limit"] == 4
    assert merged["workers"] == [{"worker": 0, "error": "unreachable (ConnectError)"},
                                 {"worker": 1, "limit": 4, "previous": 3}]
    status, merged = peers._limits("PUT", [(0, "unreachable (ConnectError)")] * 2)
    assert status == 502 and "worker 0: unreachable" in merged["detail"]
    refusal = json.dumps({"detail": "no event 'x'"}).encode()
    assert peers._limits("PUT", [(404, refusal), (404, refusal)]) == (404, {"detail": "no event 'x'"})

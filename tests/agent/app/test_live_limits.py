"""Live limit changes (`PUT /admin/api/limits/{event}`) on the app `cmw serve` runs, in process over ASGI.

Gradio's real queue runs the events: a raised limit starts waiting jobs with no other event, a lowered one lets
running jobs finish and starts none until fewer than the new limit run (counted by the app's QueueMonitor, and
by the gated app itself). Every view names the change: the limits route, /admin/api/config (source ``live``),
/admin/api/queue, /metrics, the Logs tab's log and the server's log — never the token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.app import admin_models
from agent.app.admin import token_path
from agent.settings import load_settings
from tests.asgi import InProcess, in_process
from tests.metrics import metric

pytestmark = pytest.mark.asyncio(loop_scope="session")

GATED = "tests.agent.app.gated_app:make"


def own(*sets: str):  # type: ignore[no-untyped-def]
    return load_settings("balanced", ["sessions.store=memory", *sets], environ={}, env_file=None)


def gated(*sets: str):  # type: ignore[no-untyped-def]
    return load_settings("balanced", [f"server.app={GATED}", "sessions.store=memory", *sets], environ={},
                         env_file=None)


@contextlib.asynccontextmanager
async def admin(loaded: Any, state_dir: Path) -> AsyncIterator[InProcess]:
    """The app in process, its client holding the admin token."""
    async with in_process(loaded, state_dir, None) as app:
        app.http.headers["Authorization"] = f"Bearer {token_path(app.state_dir).read_text().strip()}"
        yield app


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def agent_app(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    async with admin(own(), tmp_path_factory.mktemp("live-own")) as app:
        yield app


async def until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the app (its queue runs on this loop) until ``condition()`` holds, bounded."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never: {what}")


# --------------------------------------------------------------------------- cmw's own app


async def test_limits_name_each_event_its_limit_and_the_source_of_it(agent_app: InProcess) -> None:
    response = await agent_app.http.get("/admin/api/limits")
    limits = admin_models.Limits.model_validate(response.json())
    assert limits.max_threads == 100
    assert {name: e.limit for name, e in limits.events.items()} == {
        "chat": 3, "file_upload": 2, "stats_refresh": 5, "logs_refresh": 5,
    }
    assert all(e.source.startswith("profile:") and e.changed_at is None and e.changed_by is None
               for e in limits.events.values())
    assert "workers" not in response.json()


async def test_a_live_change_shows_everywhere_as_live_and_is_logged_without_the_token(
    agent_app: InProcess, caplog: pytest.LogCaptureFixture
) -> None:
    token = token_path(agent_app.state_dir).read_text().strip()
    with caplog.at_level("WARNING", logger="cmw.admin"):
        response = await agent_app.http.put("/admin/api/limits/stats_refresh", json={"limit": 8})
    assert response.status_code == 200, response.text
    assert response.json() == {"event": "stats_refresh", "limit": 8, "previous": 5, "pool": ["stats_refresh"]}

    entry = (await agent_app.http.get("/admin/api/limits")).json()["events"]["stats_refresh"]
    assert entry["limit"] == 8 and entry["source"] == "live" and entry["changed_by"] == "127.0.0.1"
    assert entry["changed_at"] > 0
    config = (await agent_app.http.get("/admin/api/config")).json()
    assert config["events.stats_refresh_concurrency_limit"]["value"] == 8
    assert config["events.stats_refresh_concurrency_limit"]["source"] == "live"
    assert config["events.chat_concurrency_limit"]["source"].startswith("profile:")  # the others keep theirs
    assert (await agent_app.http.get("/admin/api/queue")).json()["events"]["stats_refresh"]["limit"] == 8
    assert metric((await agent_app.http.get("/metrics")).text, "cmw_queue_limit", event="stats_refresh") == 8

    logged = [line for line in agent_app.ctx.startup_log if "stats_refresh" in line and "→" in line]
    assert len(logged) == 1 and "5 → 8 (live, from 127.0.0.1)" in logged[0]
    assert [r.getMessage() for r in caplog.records] == logged  # with the time, as the Logs tab shows it
    assert token not in "\n".join(agent_app.ctx.startup_log) and token not in caplog.text


async def test_the_file_events_pool_changes_as_one(agent_app: InProcess) -> None:
    response = await agent_app.http.put("/admin/api/limits/file_upload", json={"limit": 4})
    assert response.json() == {"event": "file_upload", "limit": 4, "previous": 2, "pool": ["file_upload"]}
    demo = agent_app.ctx.monitor.demo
    pool = [fn for fn in demo.fns.values() if fn.concurrency_id == "file_processing"]
    assert pool and all(fn.concurrency_limit == 4 for fn in pool)


@pytest.mark.parametrize(
    ("event", "body", "status", "fragment"),
    [
        ("nope", {"limit": 4}, 404, "no event 'nope' on this server (its events: chat, file_upload"),
        ("chat", {"limit": 0}, 422, "server.max_threads (100)"),
        ("chat", {"limit": 101}, 422, "limit 101 for chat is outside 1–100"),
        ("chat", {"limit": "4"}, 422, "int"),
        ("chat", {"limit": True}, 422, "int"),
        ("chat", {"limit": 4, "also": 1}, 422, "extra"),
        ("chat", {}, 422, "missing"),
    ],
    ids=["unknown-event", "zero", "above-max-threads", "a-string", "a-bool", "extra-field", "no-limit"],
)
async def test_a_refused_change_says_why_and_changes_nothing(
    agent_app: InProcess, event: str, body: dict[str, Any], status: int, fragment: str
) -> None:
    before = (await agent_app.http.get("/admin/api/limits")).json()
    response = await agent_app.http.put(f"/admin/api/limits/{event}", json=body)
    assert response.status_code == status, response.text
    assert fragment in str(response.json()["detail"])
    assert (await agent_app.http.get("/admin/api/limits")).json() == before


async def test_with_the_master_switch_off_every_change_is_409(tmp_path: Path) -> None:
    async with admin(own("enable_concurrent_processing=false"), tmp_path) as app:
        response = await app.http.put("/admin/api/limits/chat", json={"limit": 2})
        assert response.status_code == 409
        assert "enable_concurrent_processing is false" in response.json()["detail"]
        chat = (await app.http.get("/admin/api/limits")).json()["events"]["chat"]
        assert chat == {"limit": 1, "source": "enable_concurrent_processing=false", "changed_at": None,
                        "changed_by": None}


async def test_the_openapi_document_states_the_limit_routes(agent_app: InProcess) -> None:
    document = (await agent_app.http.get("/admin/openapi.json")).json()
    put = document["paths"]["/admin/api/limits/{event}"]["put"]
    assert {"200", "404", "409", "422"} <= set(put["responses"])
    assert "get" in document["paths"]["/admin/api/limits"]


# --------------------------------------------------------------------------- Gradio's queue under a change


def figures(app: InProcess, event: str = "hold") -> tuple[int, int]:
    """(running, waiting) of an event, as the app's QueueMonitor reads Gradio's queue."""
    fig = app.ctx.monitor.as_dict()[event]
    return fig["running"], fig["waiting"]


async def join(app: InProcess, api_name: str, tag: str) -> None:
    """Queue one event as session ``tag`` and return at once (it runs, or waits, in the background)."""
    body = {"data": [tag], "fn_index": app.fn_index[api_name], "session_hash": tag, "event_data": None,
            "trigger_id": None}
    response = await app.http.post("/gradio_api/queue/join", json=body)
    assert response.status_code == 200, response.text


async def finish(app: InProcess, *tags: str) -> None:
    """Let these holds go and read each one's result to the end."""
    gate = app.ctx.monitor.demo.gate
    gate.release(*tags)
    for tag in tags:
        stream = await app.http.get("/gradio_api/queue/data", params={"session_hash": tag})
        assert f"released {tag}" in stream.text, stream.text[-300:]


async def queue_loop_ran(app: InProcess, probe: str) -> None:
    """Run an unlimited event to completion: the queue's loop has made its passes since the call."""
    assert await app.call("ping", [], probe) == ["pong"]


async def test_raising_a_limit_starts_waiting_jobs_with_no_other_event(tmp_path: Path) -> None:
    async with admin(gated("events.limits.hold=1"), tmp_path) as app:
        gate = app.ctx.monitor.demo.gate
        for tag in ("r1", "r2", "r3"):
            await join(app, "hold", tag)
        await until(lambda: figures(app) == (1, 2) and len(gate.started) == 1, "one hold runs, two wait")
        await queue_loop_ran(app, "before-raise")
        assert figures(app) == (1, 2) and gate.started == ["r1"]

        response = await app.http.put("/admin/api/limits/hold", json={"limit": 3})
        assert response.json() == {"event": "hold", "limit": 3, "previous": 1, "pool": ["hold"]}
        # Nothing else joined. (The queue counts a job as running before its function is first scheduled.)
        await until(lambda: figures(app) == (3, 0) and len(gate.started) == 3, "the two waiting holds start")
        assert sorted(gate.started) == ["r1", "r2", "r3"]
        await finish(app, "r1", "r2", "r3")
        assert figures(app) == (0, 0)


async def test_lowering_a_limit_lets_running_jobs_finish_and_starts_none_until_below_it(tmp_path: Path) -> None:
    async with admin(gated("events.limits.hold=3"), tmp_path) as app:
        gate = app.ctx.monitor.demo.gate
        tags = [f"l{n}" for n in range(1, 6)]
        for tag in tags:
            await join(app, "hold", tag)
        await until(lambda: figures(app) == (3, 2) and len(gate.started) == 3, "three holds run, two wait")
        first = list(gate.started)

        response = await app.http.put("/admin/api/limits/hold", json={"limit": 1})
        assert response.json()["previous"] == 3
        await queue_loop_ran(app, "after-lower")
        assert figures(app) == (3, 2)  # the running ones carry on

        await finish(app, first[0])
        await queue_loop_ran(app, "two-run")
        assert figures(app) == (2, 2) and gate.started == first  # 2 running ≥ 1: none starts
        await finish(app, first[1])
        await queue_loop_ran(app, "one-runs")
        assert figures(app) == (1, 2) and gate.started == first  # 1 running = the limit: still none
        await finish(app, first[2])
        await until(lambda: len(gate.started) == 4, "one waiting hold starts once none runs")
        assert figures(app) == (1, 1)
        await queue_loop_ran(app, "one-at-a-time")
        assert figures(app) == (1, 1) and len(gate.started) == 4
        rest = gate.started[3]
        await finish(app, rest)
        await until(lambda: len(gate.started) == 5, "the last hold starts")
        await finish(app, gate.started[4])
        assert figures(app) == (0, 0)


async def test_a_change_to_one_event_of_a_group_changes_its_pool_and_names_it(tmp_path: Path) -> None:
    sets = ('events.groups.pair=["hold", "also"]', "events.limits.pair=1")
    async with admin(gated(*sets), tmp_path) as app:
        before = (await app.http.get("/admin/api/limits")).json()["events"]
        assert (before["hold"]["limit"], before["hold"]["source"]) == (1, "events.groups[pair]")
        assert (before["ping"]["limit"], before["ping"]["source"]) == (None, "app")

        response = await app.http.put("/admin/api/limits/also", json={"limit": 2})
        assert response.json() == {"event": "also", "limit": 2, "previous": 1, "pool": ["hold", "also"]}
        after = (await app.http.get("/admin/api/limits")).json()["events"]
        assert {name: (after[name]["limit"], after[name]["source"]) for name in ("hold", "also")} == {
            "hold": (2, "live"), "also": (2, "live"),
        }
        config = (await app.http.get("/admin/api/config")).json()
        keys = list(config)
        assert keys.index("events.limits.hold") == keys.index("events.limits") + 1
        assert config["events.limits.also"]["value"] == 2 and config["events.limits.also"]["source"] == "live"
        admin_models.SettingEntry.model_validate(config["events.limits.hold"])

        await join(app, "hold", "g1")
        await join(app, "also", "g2")
        await join(app, "hold", "g3")
        gate = app.ctx.monitor.demo.gate
        await until(lambda: len(gate.started) == 2, "two of the pool run")
        await queue_loop_ran(app, "pool-full")
        assert figures(app, "hold")[0] == figures(app, "also")[0] == 2  # running: the pool's, shared
        assert figures(app, "hold")[1] + figures(app, "also")[1] == 1 and len(gate.started) == 2  # the third waits
        await finish(app, "g1", "g2", "g3")

"""An operator's app as `cmw serve examples/blocks_app.py -p balanced` serves it, in process over ASGI.

Its sessions (Gradio session hashes) in the admin API and /metrics, kill cancelling a running event, and the
limits Gradio's queue really runs each event with — matching `cmw inspect` — for a glob, the app's own limit
both ways of events.override_app_limits, and the master switch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from typer.testing import CliRunner

from agent.app.admin import token_path
from agent.apps.sessions import KILLED
from agent.settings import load_settings
from cmw_cli.main import app as cli
from tests.asgi import InProcess, in_process
from tests.metrics import metric

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "blocks_app.py"


def loaded(*sets: str):  # type: ignore[no-untyped-def]
    return load_settings("balanced", [f"server.app={EXAMPLE}", "sessions.store=memory", *sets], environ={},
                         env_file=None)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    async with in_process(loaded("events.limits.tool_*=2"), tmp_path_factory.mktemp("app-asgi"), None) as app:
        app.http.headers["Authorization"] = f"Bearer {token_path(app.state_dir).read_text().strip()}"
        yield app


async def until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    """Yield to the app until ``condition()`` holds (it runs on this loop), bounded."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never: {what}")


async def test_sessions_list_the_apps_gradio_sessions_with_their_events(served: InProcess) -> None:
    assert await served.call("tool_upper", ["a b"], "visitor-one") == ["A B"]
    assert await served.call("tool_count", ["a b"], "visitor-one") == ["2 words"]
    assert await served.call("tool_upper", ["c"], "visitor-two") == ["C"]
    listed = {s["id"]: s for s in (await served.http.get("/admin/api/sessions")).json()}
    assert listed["visitor-one"]["events"] == 2 and listed["visitor-two"]["events"] == 1
    assert listed["visitor-one"]["state"] == "idle" and listed["visitor-one"]["running"] == 0
    assert listed["visitor-one"]["first_seen"] <= listed["visitor-one"]["last_seen"]
    detail = (await served.http.get("/admin/api/sessions/visitor-one")).json()
    assert detail["by_event"] == {"tool_upper": 1, "tool_count": 1}
    assert (await served.http.get("/admin/api/sessions/nobody")).status_code == 404
    health = (await served.http.get("/admin/api/health")).json()
    assert health["sessions"]["active"] >= 2 and health["sessions"]["created_total"] >= 2
    metrics = (await served.http.get("/metrics")).text
    assert metric(metrics, "cmw_sessions_active") >= 2


async def test_a_running_event_is_seen_and_kill_cancels_it(served: InProcess) -> None:
    body = {"data": ["a long prompt " * 50], "fn_index": served.fn_index["generate"], "session_hash": "victim",
            "event_data": None, "trigger_id": None}
    assert (await served.http.post("/gradio_api/queue/join", json=body)).status_code == 200
    tracker = served.ctx.app_sessions
    await until(lambda: tracker.detail("victim") and tracker.detail("victim")["running_events"] == ["generate"],
                "the event runs")
    listed = {s["id"]: s for s in (await served.http.get("/admin/api/sessions")).json()}
    assert listed["victim"]["state"] == "running" and listed["victim"]["running"] == 1

    killed = await served.http.delete("/admin/api/sessions/victim")
    assert killed.json() == {"id": "victim", "ended": "killed", "cancelled": 1}
    stream = await served.http.get("/gradio_api/queue/data", params={"session_hash": "victim"})
    messages = [json.loads(line[5:]) for line in stream.text.splitlines() if line.startswith("data:")]
    completed = [m for m in messages if m.get("msg") == "process_completed"]
    assert completed and completed[-1]["success"] is False and completed[-1]["output"]["error"] == KILLED
    assert served.ctx.monitor.as_dict()["generate"]["running"] == 0  # its slot is free again
    assert (await served.http.delete("/admin/api/sessions/victim")).status_code == 404
    assert await served.call("generate", ["again"], "victim") == ["again again again"]  # the hash may come back


async def test_a_flood_of_session_hashes_is_bounded(tmp_path: Path) -> None:
    async with in_process(loaded("sessions.max_sessions=3"), tmp_path, None) as app:
        for n in range(6):
            await app.call("tool_upper", ["x"], f"flood-{n}")
        tracker = app.ctx.app_sessions
        assert [s["id"] for s in tracker.summaries()] == ["flood-5", "flood-4", "flood-3"]
        assert tracker.counts()["evicted_total"] == 3


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (("events.limits.tool_*=2", "events.limits.generate=4"),
         {"generate": 4, "tool_upper": 2, "tool_count": 2, "slow_report": 1}),
        (("events.limits.slow_report=3",), {"generate": 5, "tool_upper": 5, "tool_count": 5, "slow_report": 1}),
        (("events.limits.slow_report=3", "events.override_app_limits=true"),
         {"generate": 5, "tool_upper": 5, "tool_count": 5, "slow_report": 3}),
        (("enable_concurrent_processing=false", "events.limits.generate=4"),
         {"generate": 1, "tool_upper": 1, "tool_count": 1, "slow_report": 1}),
    ],
    ids=["glob", "apps-own-limit-wins", "override", "master-switch"],
)
async def test_the_queue_runs_each_event_with_the_limit_inspect_shows(
    tmp_path: Path, sets: tuple[str, ...], expected: dict[str, int]
) -> None:
    inspected = CliRunner().invoke(cli, ["inspect", str(EXAMPLE), "-p", "balanced", "--json",
                                         *[arg for item in sets for arg in ("--set", item)]])
    assert inspected.exit_code == 0, inspected.output
    assert {e["api_name"]: e["limit"] for e in json.loads(inspected.stdout)["events"]} == expected
    async with in_process(loaded(*sets), tmp_path, None) as app:
        for api_name in expected:  # Gradio builds an event's pool on its first join
            await app.call(api_name, ["x"], "limits")
        gradio = app.ctx.monitor.demo._queue.event_queue_per_concurrency_id
        running_with = {name: gradio[app.ctx.monitor.demo.fns[fn].concurrency_id].concurrency_limit
                        for name, fn in app.fn_index.items()}
    assert running_with == expected

"""The admin API and /metrics in process, over ASGI (as datasette's tests do): no socket, no second process.

The app is the one `cmw serve` runs (:func:`agent.app.asgi.create_app`, Gradio mounted, lifespan started);
what needs a real socket or a real chat stays in test_admin.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import TypeAdapter

from agent.app import admin_models
from agent.app.admin import token_path
from agent.settings import load_settings
from tests.metrics import ADMIN_ROUTES, metric

pytestmark = pytest.mark.asyncio(loop_scope="session")

API_KEY = "sk-test-admin-asgi-0123456789abcdef"
ROUTES = ADMIN_ROUTES


@dataclass
class InProcess:
    client: httpx.AsyncClient  # no token
    api: httpx.AsyncClient  # with the admin token
    ctx: Any
    token: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def app(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    from agent.app.asgi import create_app

    state_dir = tmp_path_factory.mktemp("admin-asgi")
    state_dir.chmod(0o700)
    loaded = load_settings(
        "balanced", ["sessions.store=memory"], environ={"OPENAI_API_KEY": API_KEY}, env_file=None
    )
    asgi, ctx = create_app(loaded, sim_base_url=None, state_dir=state_dir)
    token = token_path(state_dir).read_text().strip()
    transport = httpx.ASGITransport(app=asgi)
    async with (
        asgi.router.lifespan_context(asgi),
        httpx.AsyncClient(transport=transport, base_url="http://cmw.test") as client,
        httpx.AsyncClient(transport=transport, base_url="http://cmw.test",
                          headers={"Authorization": f"Bearer {token}"}) as api,
    ):
        yield InProcess(client, api, ctx, token)


def chatted(app: InProcess, session_hash: str, message: str) -> str:
    """A conversation with one completed turn, made through the session manager; its id."""
    sessions = app.ctx.sessions
    session = sessions.get_or_create(sessions.conversation_id(session_hash))
    sessions.record_turn(session, message, f"reply to {message}", tokens=3, latency=0.2, ttft=0.05)
    return session.id


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_route_without_a_token_is_401_with_a_bearer_challenge_and_no_data(
    app: InProcess, method: str, path: str
) -> None:
    response = await app.client.request(method, path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"detail": "missing admin token"}


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_route_with_a_wrong_token_is_403_and_no_data(app: InProcess, method: str, path: str) -> None:
    response = await app.client.request(method, path, headers={"Authorization": "Bearer nope"})
    assert response.status_code == 403
    assert response.json() == {"detail": "invalid admin token"}


async def test_another_auth_scheme_counts_as_no_token(app: InProcess) -> None:
    response = await app.client.get("/admin/api/health", headers={"Authorization": f"Basic {app.token}"})
    assert response.status_code == 401


async def test_health_names_profile_provider_and_version(app: InProcess) -> None:
    health = (await app.api.get("/admin/api/health")).json()
    admin_models.Health.model_validate(health)
    assert health["status"] == "ok"
    assert health["profile"] == "balanced"
    assert health["provider"] == "sim"
    assert health["version"]
    assert health["uptime_s"] >= 0


async def test_queue_reports_each_event_with_its_limit(app: InProcess) -> None:
    queue = (await app.api.get("/admin/api/queue")).json()
    assert {event: figures["limit"] for event, figures in queue["events"].items()} == {
        "chat": 3, "file_upload": 2, "stats_refresh": 5, "logs_refresh": 5,
    }
    assert set(queue["e2e_s"]) == {"p50", "p95"} and set(queue["ttft_s"]) == {"p50", "p95"}


async def test_config_gives_sources_and_masks_the_api_key(app: InProcess) -> None:
    response = await app.api.get("/admin/api/config")
    config = response.json()
    assert config["events.chat_concurrency_limit"]["value"] == 3
    assert config["events.chat_concurrency_limit"]["source"].startswith("profile:")
    assert config["llm.api_key"] == {**config["llm.api_key"], "value": "********", "source": "env:OPENAI_API_KEY"}
    assert API_KEY not in response.text


async def test_sessions_list_detail_and_kill_by_id_or_hash(app: InProcess) -> None:
    session_id = chatted(app, "hash-of-a-browser-tab", "remember me")
    listed = (await app.api.get("/admin/api/sessions")).json()
    TypeAdapter(list[admin_models.SessionSummary]).validate_python(listed)
    summary = {s["id"]: s for s in listed}[session_id]
    assert summary["turns"] == 1 and summary["state"] == "idle" and summary["tokens"] == 3

    detail = (await app.api.get("/admin/api/sessions/hash-of-a-browser-tab")).json()  # by the Gradio hash
    assert detail == (await app.api.get(f"/admin/api/sessions/{session_id}")).json()
    assert [(m["role"], m["content"]) for m in detail["history"]] == [
        ("user", "remember me"), ("assistant", "reply to remember me"),
    ]
    assert detail["latencies"] == [0.2] and detail["ttfts"] == [0.05]

    assert (await app.api.delete("/admin/api/sessions/hash-of-a-browser-tab")).json() == {
        "id": session_id, "ended": "killed",
    }
    assert (await app.api.get(f"/admin/api/sessions/{session_id}")).status_code == 404
    assert (await app.api.delete(f"/admin/api/sessions/{session_id}")).status_code == 404


async def test_sessions_pages_with_offset_and_limit(app: InProcess) -> None:
    ids = {chatted(app, f"pager-{n}", f"page {n}") for n in range(5)}
    pages = [(await app.api.get("/admin/api/sessions", params={"offset": o, "limit": 2})).json() for o in (0, 2, 4)]
    assert [len(page) for page in pages[:2]] == [2, 2]
    seen = [s["id"] for page in pages for s in page]
    assert len(seen) == len(set(seen)) and ids <= set(seen)
    assert (await app.api.get("/admin/api/sessions", params={"limit": 0})).status_code == 422
    assert (await app.api.get("/admin/api/sessions", params={"offset": -1})).status_code == 422


async def test_every_admin_route_publishes_its_response_schema(app: InProcess) -> None:
    """The OpenAPI document constrains each answer (schemathesis checks answers against it in test_admin_fuzz)."""
    document = (await app.client.get("/admin/openapi.json")).json()
    assert {"/admin/api/health", "/admin/api/sessions", "/admin/api/sessions/{session_id}", "/admin/api/queue",
            "/admin/api/config", "/metrics"} <= set(document["paths"])
    assert document["paths"]["/admin/api/health"]["get"]["security"] == [{"HTTPBearer": []}]
    assert set(document["paths"]["/admin/api/sessions/{session_id}"]) == {"get", "delete"}
    for path, operations in document["paths"].items():
        if not path.startswith("/admin/api/") or path == "/admin/api/live":
            continue
        for method, operation in operations.items():
            schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
            assert schema not in ({}, {"type": "object"}, {"type": "array", "items": {}}), (method, path, schema)
    assert {"Health", "SessionSummary", "SessionDetail", "Queue", "SettingEntry", "Ended"} <= set(
        document["components"]["schemas"]
    )


async def test_metrics_need_no_token_count_turns_by_outcome_and_carry_no_secret(app: InProcess) -> None:
    before = (await app.client.get("/metrics")).text
    app.ctx.metrics.turn_started("sim")
    app.ctx.metrics.turn_finished("sim", 0.3, 0.04, None)
    app.ctx.metrics.turn_started("sim")
    app.ctx.metrics.turn_finished("sim", 1.0, None, "timeout")
    response = await app.client.get("/metrics")
    assert response.status_code == 200
    after = response.text
    assert metric(after, "cmw_turns_started_total", provider="sim") - metric(before, "cmw_turns_started_total",
                                                                              provider="sim") == 2
    assert metric(after, "cmw_turns_failed_total", provider="sim", error="timeout") == 1
    assert metric(after, "cmw_ttft_seconds_count", provider="sim") - metric(before, "cmw_ttft_seconds_count",
                                                                             provider="sim") == 1
    assert metric(after, "cmw_queue_limit", event="chat") == 3
    health = (await app.api.get("/admin/api/health")).json()
    assert health["turns"]["failed_by_class"]["timeout"] >= 1
    assert app.token not in after and API_KEY not in after


async def test_a_strangers_malformed_limit_change_gets_401_not_a_description_of_the_body(app: InProcess) -> None:
    for body in (b"", b"{not json", b'{"limit": "many"}'):
        refused = await app.client.put("/admin/api/limits/chat", content=body,
                                       headers={"Content-Type": "application/json"})
        assert refused.status_code == 401 and refused.json() == {"detail": "missing admin token"}
    malformed = await app.api.put("/admin/api/limits/chat", content=b"{not json",
                                  headers={"Content-Type": "application/json"})
    assert malformed.status_code == 422  # with the token: the body's problem, said

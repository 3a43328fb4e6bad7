"""The admin API and /metrics of a real `cmw serve`: what needs a real chat, token file or process.

Token rules, response shapes and the OpenAPI document are tested in process (test_admin_asgi.py).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from agent.app.admin import admin_token, token_path
from agent.sessions.store import StoreError, state_dir
from agent.settings import load_settings
from tests.metrics import ADMIN_ROUTES, metric
from tests.servers import RunningServer, cmw_server

pytestmark = pytest.mark.server

API_KEY = "sk-test-admin-0123456789abcdef"
CONFIGURED = "configured-token-0123456789abcdef-xyz"
FAST = ("sim.ttft_ms=5", "sim.tokens_per_second=2000", "sim.reply_tokens=5", "sim.jitter=0")
ROUTES = ADMIN_ROUTES


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with cmw_server(tmp_path_factory.mktemp("admin"), *FAST, env={"OPENAI_API_KEY": API_KEY}) as running:
        yield running


@pytest.fixture(scope="module")
def token(server: RunningServer) -> str:
    return token_path(server.state_dir).read_text().strip()


@pytest.fixture(scope="module")
def api(server: RunningServer, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        yield client


def chat(server: RunningServer, message: str) -> Client:
    client = Client(server.url, verbose=False)
    client.predict(message, api_name="/chat")
    return client


def test_generated_token_file_is_private(server: RunningServer) -> None:
    mode = stat.S_IMODE(token_path(server.state_dir).stat().st_mode)
    assert mode == 0o600


def test_queue_latency_percentiles_fill_after_a_chat(server: RunningServer, api: httpx.Client) -> None:
    chat(server, "measure me")
    queue = api.get("/admin/api/queue").json()
    assert queue["samples"] >= 1
    assert queue["e2e_s"]["p50"] > 0 and queue["ttft_s"]["p95"] > 0


def test_session_detail_has_history_and_delete_frees_it(server: RunningServer, api: httpx.Client) -> None:
    client = chat(server, "remember me")
    detail = api.get(f"/admin/api/sessions/{client.session_hash}").json()  # an admin may name it by hash
    session_id = detail["id"]
    assert session_id != client.session_hash  # ids shown to operators are not session hashes
    listed = {s["id"]: s for s in api.get("/admin/api/sessions").json()}
    assert listed[session_id]["turns"] == 1 and listed[session_id]["state"] == "idle"
    assert api.get(f"/admin/api/sessions/{session_id}").json() == detail
    assert [m["role"] for m in detail["history"]] == ["user", "assistant"]
    assert detail["history"][0]["content"] == "remember me"
    assert detail["files"] == {}

    assert api.delete(f"/admin/api/sessions/{session_id}").json() == {"id": session_id, "ended": "killed"}
    assert api.get(f"/admin/api/sessions/{session_id}").status_code == 404
    assert api.delete(f"/admin/api/sessions/{session_id}").status_code == 404
    assert session_id not in {s["id"] for s in api.get("/admin/api/sessions").json()}


def test_metrics_need_no_token_and_count_turns_and_latencies(server: RunningServer) -> None:
    before = httpx.get(f"{server.url}/metrics", timeout=10)
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    chat(server, "count this turn")
    after = httpx.get(f"{server.url}/metrics", timeout=10).text
    for name in ("cmw_turns_started_total", "cmw_turns_completed_total", "cmw_ttft_seconds_count",
                 "cmw_reply_latency_seconds_count"):
        assert metric(after, name, provider="sim") == metric(before.text, name, provider="sim") + 1, name
    assert metric(after, "cmw_queue_limit", event="chat") == 3
    assert metric(after, "cmw_queue_running", event="chat") == 0
    assert metric(after, "cmw_sessions_active") >= 1


def test_metrics_count_a_failed_turn_by_error_class(tmp_path: Path) -> None:
    # A provider whose every request fails fast; its own small server keeps the shared one's figures clean.
    with cmw_server(tmp_path, *FAST, "sim.error_rate=1.0", "llm.max_retries=0") as failing:
        chat(failing, "this fails")
        text = httpx.get(f"{failing.url}/metrics", timeout=10).text
    assert metric(text, "cmw_turns_failed_total", provider="sim") == 1
    assert metric(text, "cmw_turns_completed_total", provider="sim") == 0


def test_no_response_or_log_line_carries_the_token_or_the_api_key(
    server: RunningServer, api: httpx.Client, token: str
) -> None:
    client = chat(server, "a turn so every route has data")
    paths = [path.replace("someone", client.session_hash) for method, path in ROUTES if method == "GET"]
    bodies = [api.get(path).text for path in paths]
    bodies += [httpx.get(f"{server.url}{path}", timeout=10).text for path in ("/metrics", "/admin/openapi.json",
                                                                             "/config")]
    bodies.append(server.log())
    for body in bodies:
        assert token not in body
        assert API_KEY not in body


def test_configured_token_wins_and_removes_a_stale_generated_one(tmp_path: Path) -> None:
    stale = token_path(tmp_path)
    stale.write_text("old")
    settings = load_settings(None, [f"admin.token={CONFIGURED}"], environ={}, env_file=None).settings
    assert admin_token(settings, tmp_path) == CONFIGURED
    assert not stale.exists()


def test_generated_token_is_kept_across_restarts_unless_others_can_read_it(tmp_path: Path) -> None:
    settings = load_settings(None, [], environ={}, env_file=None).settings
    first = admin_token(settings, tmp_path)
    assert admin_token(settings, tmp_path) == first
    os.chmod(token_path(tmp_path), 0o644)
    replaced = admin_token(settings, tmp_path)
    assert replaced != first
    assert stat.S_IMODE(token_path(tmp_path).stat().st_mode) == 0o600


# --------------------------------------------------------------------------- the edges of the admin API


def test_the_liveness_probe_needs_no_token_and_says_only_ok(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/admin/api/live", timeout=10)
    assert response.status_code == 200 and response.text == "ok"


def test_admin_docs_serve_swagger_ui_from_this_server_only(server: RunningServer) -> None:
    page = httpx.get(f"{server.url}/admin/docs", timeout=10)
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    linked = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)""", page.text)
    linked += re.findall(r"""url:\s*['"]([^'"]+)""", page.text)
    assert linked and not [url for url in linked if "//" in url], linked  # nothing from another origin
    for asset in ("docs/swagger-ui-bundle.js", "docs/swagger-ui.css", "docs/favicon.png", "openapi.json"):
        assert asset in linked
        served = httpx.get(f"{server.url}/admin/{asset}", timeout=10)
        assert served.status_code == 200 and len(served.content) > 1000, asset
    assert httpx.get(f"{server.url}/admin/docs/..%2Fadmin.token", timeout=10).status_code == 404


def test_a_planted_symlink_is_never_written_through_or_read_as_the_token(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.chmod(victim, 0o600)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / f".admin.token.{os.getpid()}").symlink_to(victim)  # where the token is first written
    token_path(state).symlink_to(victim)  # and where it ends up
    settings = load_settings(None, [], environ={}, env_file=None).settings
    token = admin_token(settings, state)
    assert victim.read_text() == "precious" and token != "precious"
    assert not token_path(state).is_symlink() and token_path(state).read_text().strip() == token


def test_a_state_dir_open_to_others_is_made_0700_and_one_of_another_user_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    settings = load_settings(None, [f"server.state_dir={open_dir}"], environ={}, env_file=None).settings
    assert state_dir(settings) == open_dir
    assert stat.S_IMODE(open_dir.stat().st_mode) == 0o700
    if os.getuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 54321, -1)
    settings = load_settings(None, [f"server.state_dir={theirs}"], environ={}, env_file=None).settings
    with pytest.raises(StoreError, match="belongs to uid 54321, not to this user"):
        state_dir(settings)


PASSWORD = "pw-DO-NOT-SHOW-31337"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """/metrics behind the token; a custom provider whose URL carries a password."""
    overrides = ("admin.metrics_require_token=true", "llm.provider=custom", "llm.providers=custom",
                 f"llm.base_url=http://user:{PASSWORD}@127.0.0.1:9/v1")
    with cmw_server(tmp_path_factory.mktemp("guarded"), *FAST, *overrides) as running:
        yield running


def test_metrics_can_require_the_admin_token(guarded: RunningServer) -> None:
    token = token_path(guarded.state_dir).read_text().strip()
    assert httpx.get(f"{guarded.url}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{guarded.url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 403
    scraped = httpx.get(f"{guarded.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert scraped.status_code == 200 and "cmw_queue_limit" in scraped.text


def test_a_password_in_a_url_is_masked_in_the_banner_and_the_admin_config(guarded: RunningServer) -> None:
    token = token_path(guarded.state_dir).read_text().strip()
    config = httpx.get(f"{guarded.url}/admin/api/config", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert config.json()["llm.base_url"]["value"] == "http://user:********@127.0.0.1:9/v1"
    assert PASSWORD not in config.text
    assert "http://user:********@127.0.0.1:9/v1" in guarded.log() and PASSWORD not in guarded.log()

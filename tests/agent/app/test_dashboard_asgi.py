"""The operator dashboard in process, over ASGI: login, its cookie, logout, the failed-login limit, the gate in
front of every route and event of the dashboard's Gradio app, and Kill's same-origin check.

The app is the one `cmw serve` runs (:func:`agent.app.asgi.create_app`, lifespan started). A stranger is a raw
HTTP client: it can send any path, method, cookie and header a browser could not.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from starlette.routing import Mount

from agent.app.admin import token_path
from agent.app.dashboard import IDLE_POLL_S, MOUNT
from agent.app.dashboard_auth import COOKIE, FAILED_LOGINS_PER_MINUTE, LIFETIME_S, LoginCookies
from agent.app.dashboard_feed import Sample
from agent.settings import load_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

BASE = "http://cmw.test"
SAME_ORIGIN = {"Origin": BASE, "Sec-Fetch-Site": "same-origin"}


@dataclass
class Dash:
    asgi: Any
    ctx: Any
    token: str
    transport: httpx.ASGITransport
    seen: list[httpx.Response]  # every answer of the module: none may carry the token

    def client(self, address: str = "198.51.100.1", base: str = BASE) -> httpx.AsyncClient:
        """A client from its own address (the failed-login limit counts per address)."""
        transport = httpx.ASGITransport(app=self.asgi, client=(address, 40000))

        async def record(response: httpx.Response) -> None:
            await response.aread()
            self.seen.append(response)

        return httpx.AsyncClient(transport=transport, base_url=base, event_hooks={"response": [record]})

    @contextlib.asynccontextmanager
    async def logged_in(self, address: str = "198.51.100.2") -> AsyncIterator[httpx.AsyncClient]:
        async with self.client(address) as client:
            response = await client.post("/admin/login", data={"token": self.token})
            assert response.status_code == 303, response.text
            yield client


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def dash(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dash]:
    from agent.app.asgi import create_app

    state_dir = tmp_path_factory.mktemp("dashboard")
    state_dir.chmod(0o700)
    loaded = load_settings("balanced", ["sessions.store=memory"], environ={"OPENAI_API_KEY": "sk-dashboard-test"},
                           env_file=None)
    asgi, ctx = create_app(loaded, sim_base_url=None, state_dir=state_dir)
    token = token_path(state_dir).read_text().strip()
    seen: list[httpx.Response] = []
    async with asgi.router.lifespan_context(asgi):
        yield Dash(asgi, ctx, token, httpx.ASGITransport(app=asgi), seen)
    for response in seen:  # the token never comes back: not in a body, a header or a cookie
        assert token not in response.text and token not in str(response.headers), response.request.url


def dashboard_routes(asgi: Any) -> list[tuple[str, str]]:
    """(method, path) of every route of the dashboard's Gradio app, its parameters filled in."""
    mount = next(r for r in asgi.routes if isinstance(r, Mount) and r.path == MOUNT)
    found: list[tuple[str, str]] = []
    pending = list(mount.routes)
    while pending:
        route = pending.pop()
        nested = getattr(route, "original_router", None)
        if nested is not None:
            pending.extend(nested.routes)
            continue
        path = re.sub(r"\{[^}:]+(:path)?\}", lambda m: "etc/passwd" if m[1] else "x", route.path)
        found += [(method, MOUNT + path) for method in sorted(getattr(route, "methods", None) or {"GET"})]
    return sorted(set(found))


async def dashboard_event(client: httpx.AsyncClient, api_name: str, data: list[Any], session_hash: str,
                          headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one of the dashboard's events over Gradio's queue protocol; its ``process_completed`` message."""
    config = (await client.get(f"{MOUNT}/config")).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)
    headers = SAME_ORIGIN if headers is None else headers
    joined = await client.post(f"{MOUNT}/gradio_api/queue/join", headers=headers, json={
        "data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": None, "trigger_id": None})
    assert joined.status_code == 200, joined.text
    stream = await client.get(f"{MOUNT}/gradio_api/queue/data", params={"session_hash": session_hash})
    for line in stream.text.splitlines():
        if line.startswith("data:"):
            message = json.loads(line[5:])
            if message.get("msg") == "process_completed":
                return message
    raise AssertionError(stream.text[-500:])


def conversation(dash: Dash, session_hash: str) -> str:
    """A conversation with one completed turn, made through the session manager; its id."""
    sessions = dash.ctx.sessions
    session = sessions.get_or_create(sessions.conversation_id(session_hash))
    sessions.record_turn(session, "hello", "reply to hello", tokens=3, latency=0.2, ttft=0.05)
    return session.id


# ------------------------------------------------------------------------------------------------ login


async def test_the_login_page_shows_a_form_and_nothing_of_the_server(dash: Dash) -> None:
    async with dash.client() as client:
        page = await client.get("/admin/")
        dashboard = await client.get(f"{MOUNT}/", follow_redirects=True)
    assert page.status_code == 200 and '<form method="post" action="login">' in page.text
    assert 'name="token" type="password"' in page.text
    for secret in ("balanced", "chat", "gradio", "sim", dash.ctx.settings.llm.provider, "<script"):
        assert secret not in page.text.lower()
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert dashboard.url.path == "/admin/" and dashboard.text == page.text  # the dashboard sends a stranger here


async def test_the_login_page_speaks_russian_to_a_russian_browser(dash: Dash) -> None:
    async with dash.client() as client:
        page = await client.get("/admin/", headers={"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.5"})
    assert '<html lang="ru">' in page.text and "Токен администратора" in page.text


async def test_the_right_token_sets_a_strict_http_only_cookie_that_is_not_the_token(dash: Dash) -> None:
    async with dash.client("198.51.100.10") as client:
        response = await client.post("/admin/login", data={"token": dash.token})
        assert response.status_code == 303 and response.headers["location"] == "dashboard/"
        cookie = response.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
        assert attributes.keys() >= {COOKIE, "httponly", "path", "samesite", "max-age"}
        assert attributes["path"] == "Path=/admin/" and attributes["samesite"].lower() == "samesite=strict"
        assert attributes["max-age"] == f"Max-Age={LIFETIME_S}"
        assert "secure" not in attributes  # plain http: a Secure cookie would never come back
        value = client.cookies[COOKIE]
        assert dash.token not in value and value != dash.token
        assert (await client.get("/admin/")).headers["location"] == "dashboard/"  # logged in: on to the dashboard
        assert (await client.get(f"{MOUNT}/config")).status_code == 200


@pytest.mark.parametrize("how", ["https", "x-forwarded-proto"])
async def test_the_cookie_is_secure_over_https(dash: Dash, how: str) -> None:
    base = "https://cmw.test" if how == "https" else BASE
    headers = {"X-Forwarded-Proto": "https"} if how == "x-forwarded-proto" else {}
    async with dash.client("198.51.100.11", base=base) as client:
        response = await client.post("/admin/login", data={"token": dash.token}, headers=headers)
    assert response.status_code == 303
    assert "secure" in [part.strip().lower() for part in response.headers["set-cookie"].split(";")]


async def test_a_wrong_token_gets_the_form_again_with_403_and_is_not_echoed(dash: Dash) -> None:
    async with dash.client("198.51.100.12") as client:
        response = await client.post("/admin/login", data={"token": "guess-4d1c2b"})
        assert response.status_code == 403
        assert "Wrong token." in response.text and 'name="token"' in response.text
        assert "guess-4d1c2b" not in response.text and "set-cookie" not in response.headers
        assert (await client.get(f"{MOUNT}/config")).status_code == 401


async def test_failed_logins_are_limited_per_client_address(dash: Dash) -> None:
    async with dash.client("203.0.113.7") as stranger, dash.client("203.0.113.8") as other:
        for _ in range(FAILED_LOGINS_PER_MINUTE):
            assert (await stranger.post("/admin/login", data={"token": "guess"})).status_code == 403
        limited = await stranger.post("/admin/login", data={"token": "guess"})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert "Too many failed attempts" in limited.text
        # Past the limit even the right token waits, so guessing gets no faster...
        right = await stranger.post("/admin/login", data={"token": dash.token})
        assert right.status_code == 429 and "set-cookie" not in right.headers
        # ...while another address is not held up.
        assert (await other.post("/admin/login", data={"token": dash.token})).status_code == 303


async def test_login_refuses_a_cross_site_post_and_a_huge_body(dash: Dash) -> None:
    async with dash.client("198.51.100.13") as client:
        cross = await client.post("/admin/login", data={"token": dash.token},
                                  headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
        huge = await client.post("/admin/login", content=b"token=" + b"a" * 10_000,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert cross.status_code == 403 and "set-cookie" not in cross.headers
    assert huge.status_code == 413


async def test_logout_clears_the_cookie_and_the_old_value_stops_working(dash: Dash) -> None:
    async with dash.logged_in("198.51.100.14") as client:
        old = client.cookies[COOKIE]
        response = await client.post("/admin/logout", headers=SAME_ORIGIN)
        assert response.status_code == 303 and response.headers["location"] == "./"
        cleared = response.headers["set-cookie"].lower()
        assert cleared.startswith(f"{COOKIE}=") and "max-age=0" in cleared and "path=/admin/" in cleared
        assert COOKIE not in client.cookies
    async with dash.client("198.51.100.15") as replay:  # someone who copied the cookie before the logout
        response = await replay.get(f"{MOUNT}/config", headers={"Cookie": f"{COOKIE}={old}"})
    assert response.status_code == 401


# ------------------------------------------------------------------------------------------------ the gate


def forged_cookies(token: str) -> dict[str, str]:
    return {
        "the token itself": token,
        "garbage": "not-a-cookie",
        "expired": LoginCookies(token, clock=lambda: time.time() - LIFETIME_S - 60).issue(),
        "signed with another token": LoginCookies("another-token-" + "x" * 30).issue(),
        "a far expiry with a made-up mac": "9" * 12 + ".nonce.mac",
    }


async def test_every_dashboard_route_refuses_a_client_without_the_cookie(dash: Dash) -> None:
    routes = dashboard_routes(dash.asgi)
    assert ("POST", f"{MOUNT}/gradio_api/queue/join") in routes and ("POST", f"{MOUNT}/gradio_api/cancel") in routes
    assert ("GET", f"{MOUNT}/gradio_api/file=etc/passwd") in routes and len(routes) > 50
    cookies = {"no cookie": None, **forged_cookies(dash.token)}
    async with dash.client("198.51.100.20") as stranger:
        for method, path in routes:
            for name, value in cookies.items():
                headers = {"Cookie": f"{COOKIE}={value}"} if value else {}
                response = await stranger.request(method, path, headers=headers, json={})
                page = method in ("GET", "HEAD") and path == f"{MOUNT}/"
                expected = (303,) if page else (401,)
                assert response.status_code in expected, (method, path, name, response.status_code)
                assert response.content in (b"", b'{"detail": "log in at /admin/ first"}'), (method, path)


async def test_a_raw_queue_join_of_any_event_and_the_event_stream_are_refused_without_the_cookie(dash: Dash) -> None:
    async with dash.client("198.51.100.21") as stranger:
        for fn_index in (0, 1, 2, 3, 99):
            joined = await stranger.post(f"{MOUNT}/gradio_api/queue/join", json={
                "data": ["chat", "all"], "fn_index": fn_index, "session_hash": "stranger", "event_data": None,
                "trigger_id": None})
            assert joined.status_code == 401
        stream = await stranger.get(f"{MOUNT}/gradio_api/queue/data", params={"session_hash": "stranger"})
        cancel = await stranger.post(f"{MOUNT}/gradio_api/cancel",
                                     json={"session_hash": "stranger", "fn_index": 0, "event_id": "x"})
        upload = await stranger.post(f"{MOUNT}/gradio_api/upload", files={"files": ("a.txt", b"x")})
        heartbeat = await stranger.get(f"{MOUNT}/gradio_api/heartbeat/stranger")
    assert {r.status_code for r in (stream, cancel, upload, heartbeat)} == {401}
    assert "data:" not in stream.text


async def test_the_apps_own_ui_and_api_are_unaffected(dash: Dash) -> None:
    async with dash.client("198.51.100.22") as client:
        page, config = await client.get("/"), await client.get("/config")
        live = await client.get("/admin/api/live")
        api = await client.get("/admin/api/queue", headers={"Authorization": f"Bearer {dash.token}"})
        no_bearer = await client.get("/admin/api/queue", headers={"Cookie": f"{COOKIE}=anything"})
    assert page.status_code == 200 and config.status_code == 200 and live.text == "ok"
    assert api.status_code == 200 and no_bearer.status_code == 401  # the admin API takes its Bearer token only
    assert "dashboard_refresh" not in config.text


async def test_the_peer_routes_need_the_admin_token(dash: Dash) -> None:
    async with dash.logged_in("198.51.100.23") as logged_in, dash.client("198.51.100.24") as stranger:
        for client, headers, status in ((stranger, {}, 401), (stranger, {"Authorization": "Bearer nope"}, 403),
                                        (logged_in, {}, 401)):  # the cookie is for the dashboard only
            samples = await client.get("/admin/api/dashboard/samples", headers=headers)
            revoke = await client.post("/admin/api/dashboard/revoke", json={"cookie": "x"}, headers=headers)
            assert (samples.status_code, revoke.status_code) == (status, status)
        granted = await stranger.get("/admin/api/dashboard/samples", params={"since": 0},
                                     headers={"Authorization": f"Bearer {dash.token}"})
    assert granted.status_code == 200 and granted.json() and {"t", "events", "completed"} <= granted.json()[0].keys()


# ------------------------------------------------------------------------------------------------ with the cookie


async def test_a_write_from_another_site_is_refused_even_with_the_cookie(dash: Dash) -> None:
    async with dash.logged_in("198.51.100.30") as client:
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Sec-Fetch-Site": "same-site", "Origin": "https://sub.cmw.test"}, {"Origin": "null"}):
            joined = await client.post(f"{MOUNT}/gradio_api/queue/join", headers=headers, json={
                "data": ["x"], "fn_index": 2, "session_hash": "cross", "event_data": None, "trigger_id": None})
            assert joined.status_code == 403, headers


async def test_kill_ends_a_session_from_the_dashboards_own_page_only(dash: Dash) -> None:
    victim = conversation(dash, "kill-victim")
    api = {"Authorization": f"Bearer {dash.token}"}
    async with dash.logged_in("198.51.100.31") as client:
        # A client that says nothing of where it comes from (not a browser on this page) cannot kill.
        silent = await dashboard_event(client, "kill", [victim], "kill-1", headers={})
        assert silent["output"]["data"] == ["Refused: a kill must come from this dashboard's own page."]
        assert (await client.get(f"/admin/api/sessions/{victim}", headers=api)).status_code == 200
        # Origin alone, matching the host (a browser without Sec-Fetch-Site), and then the page itself.
        done = await dashboard_event(client, "kill", [victim], "kill-2", headers={"Origin": BASE})
        assert done["output"]["data"] == [f"Session {victim} ended."]
        assert (await client.get(f"/admin/api/sessions/{victim}", headers=api)).status_code == 404
        again = await dashboard_event(client, "kill", [victim], "kill-3")
        assert again["output"]["data"] == [f"No such session: {victim}."]


async def test_selecting_a_row_picks_its_session_id(dash: Dash) -> None:
    async with dash.logged_in("198.51.100.32") as client:
        config = (await client.get(f"{MOUNT}/config")).json()
        fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "pick")
        joined = await client.post(f"{MOUNT}/gradio_api/queue/join", headers=SAME_ORIGIN, json={
            "data": [None], "fn_index": fn_index, "session_hash": "pick-1", "trigger_id": None,
            "event_data": {"index": [0, 0], "value": "abc123", "row_value": ["abc123", "idle"], "selected": True}})
        assert joined.status_code == 200
        stream = await client.get(f"{MOUNT}/gradio_api/queue/data", params={"session_hash": "pick-1"})
    assert '"data":["abc123"]' in stream.text.replace(" ", "")


async def test_the_refresh_plots_the_ring_and_lists_the_sessions(dash: Dash) -> None:
    """Two minutes of figures put into the ring as the sampler would have taken them, then one refresh."""
    listed = conversation(dash, "listed")
    ring = dash.asgi.state.dashboard_feed.sampler.ring
    now = time.time()
    for i in range(11, 121):  # newest first: appendleft keeps the ring in time order
        t = now - i
        ring.appendleft(Sample(t, {"chat": (2, 1, 3), "stats_refresh": (0, 0, 5)}, completed=1000 - i,
                               failed={"timeout": (120 - i) // 20}, sessions=4, busy=2, ttft=[0.1, 0.3],
                               e2e=[1.0, 2.0]))
    async with dash.logged_in("198.51.100.33") as client:
        headers = {**SAME_ORIGIN, "Accept-Language": "ru"}
        message = await dashboard_event(client, "refresh", ["chat", "all", None], "refresh-1", headers=headers)
        again = await dashboard_event(client, "refresh", ["chat", "all", None], "refresh-1", headers=headers)
    status, queue, replies, latency, errors, sessions_plot, workers, sessions, _shown = message["output"]["data"]
    # The same page asking again within the same 5-second step gets its plots skipped (it has them).
    seconds = [sum(int(x) * f for x, f in zip(re.search(r"(\d\d):(\d\d):(\d\d)", m["output"]["data"][0]).groups(),
                                                  (3600, 60, 1), strict=True)) for m in (message, again)]
    if seconds[0] // 5 == seconds[1] // 5:
        assert again["output"]["data"][1:6] == [{"__type__": "update"}] * 5
    assert "Обновлено" in status
    series = {row[2] for row in queue["data"]}
    assert series == {"выполняются", "ждут", "лимит"} and queue["datatypes"]["time"] == "temporal"
    assert {row[1] for row in queue["data"] if row[2] == "лимит" and row[1] is not None} == {3.0}
    rates = [row[1] for row in replies["data"] if row[1] is not None]
    assert rates and all(abs(rate - 1.0) < 1e-6 for rate in rates)
    assert {row[2] for row in latency["data"] if row[1] is not None} == {"TTFT p50", "TTFT p95", "полная p50",
                                                                         "полная p95"}
    # Every series is named in the first rows (Gradio's plot keeps the colours of its first value); the error
    # classes also in the caption, so that a new class redraws the plot.
    first = queue["data"][:3]
    assert [row[2] for row in first] == ["выполняются", "ждут", "лимит"] and {row[1] for row in first} == {None}
    assert errors["__type__"] == "update" and errors["caption"] == "timeout"
    assert {row[2] for row in errors["value"]["data"]} == {"все классы", "timeout"} and sessions_plot["data"]
    assert workers["headers"][0] == "процесс" and workers["data"][0][0] == "#0"
    assert listed in [row[0] for row in sessions["data"]]


async def test_the_dashboards_queue_is_its_own_and_polls_gently(dash: Dash) -> None:
    """Canary for agent/app/gradio_compat.py slow_idle_polling: the attributes it sets are Gradio's own."""
    mount = next(r for r in dash.asgi.routes if isinstance(r, Mount) and r.path == MOUNT)
    dashboard = mount.app.get_blocks()
    queue = dashboard._queue
    assert queue.sleep_when_free == IDLE_POLL_S and queue.progress_update_sleep_when_free == IDLE_POLL_S
    assert dashboard is not dash.ctx.monitor.demo and queue is not dash.ctx.monitor.demo._queue
    limits = {fn.concurrency_id: fn.concurrency_limit for fn in dashboard.fns.values() if fn.fn is not None}
    assert limits == {"dashboard_refresh": 4, "dashboard_kill": 2}

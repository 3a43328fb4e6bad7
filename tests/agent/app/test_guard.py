"""The HTTP edge of a real `cmw serve`: body caps (413), rate limits (429), who the client is, no tracebacks.

One server with small limits and ``rate_limits.exempt_loopback=false``. Each test speaks for its own client
address through ``X-Forwarded-For`` (the test connects from 127.0.0.1, a trusted proxy by default), so the
tests' buckets never meet.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent.app.admin import token_path
from agent.app.guard import RateLimiter, RequestGuard, SeenSessions, client_key
from agent.settings import load_settings
from tests.servers import RunningServer, cmw_server

NEW_SESSIONS, MESSAGES, SESSION_MESSAGES = 3, 4, 2
FAST = ("sim.ttft_ms=5", "sim.tokens_per_second=2000", "sim.reply_tokens=5", "sim.jitter=0")
LIMITS = (f"rate_limits.new_sessions_per_minute={NEW_SESSIONS}", f"rate_limits.messages_per_minute={MESSAGES}",
          f"rate_limits.session_messages_per_minute={SESSION_MESSAGES}", "rate_limits.exempt_loopback=false")
THIRTY_MB = 30_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with cmw_server(tmp_path_factory.mktemp("guard"), *FAST, *LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def admin(server: RunningServer) -> Iterator[httpx.Client]:
    token = token_path(server.state_dir).read_text().strip()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def chat_fn(server: RunningServer) -> int:
    config = httpx.get(f"{server.url}/config", timeout=10).json()
    return next(dep["id"] for dep in config["dependencies"] if dep.get("api_name") == "chat")


def client_address() -> str:
    """A fresh client address for one test (198.18.0.0/15: for benchmarks, never routed)."""
    return f"198.18.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"


def join(server: RunningServer, fn: int, session_hash: str, message: str = "hello", *, address: str,
         **client: Any) -> httpx.Response:
    body = {"data": [message], "fn_index": fn, "session_hash": session_hash, "event_data": None, "trigger_id": None}
    with httpx.Client(timeout=30, **client) as http:
        return http.post(f"{server.url}/gradio_api/queue/join", json=body, headers={"X-Forwarded-For": address})


def queue_figures(admin: httpx.Client) -> dict[str, Any]:
    figures = admin.get("/admin/api/queue").json()
    return {key: figures[key] for key in ("events", "waiting_total", "in_flight")}


def session_ids(admin: httpx.Client) -> set[str]:
    return {s["id"] for s in admin.get("/admin/api/sessions").json()}


# --------------------------------------------------------------------------- body caps


@pytest.mark.server
def test_a_30_mb_join_is_413_before_anything_is_queued(server: RunningServer, admin: httpx.Client,
                                                        chat_fn: int) -> None:
    before, sessions_before = queue_figures(admin), session_ids(admin)
    victim = f"huge-{secrets.token_hex(6)}"
    response = join(server, chat_fn, victim, "x" * THIRTY_MB, address=client_address())
    assert response.status_code == 413
    assert "over the 262,144-byte limit (server.max_request_bytes)" in response.json()["detail"]
    assert queue_figures(admin) == before
    assert victim not in session_ids(admin) and session_ids(admin) == sessions_before
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'cmw_requests_refused_total{reason="body_too_large"}' in metrics


@pytest.mark.server
def test_a_chunked_30_mb_join_without_content_length_is_413_too(server: RunningServer, admin: httpx.Client,
                                                                 chat_fn: int) -> None:
    before = queue_figures(admin)
    head = f'{{"fn_index": {chat_fn}, "session_hash": "chunked", "event_data": null, "data": ["'.encode()

    def body() -> Iterator[bytes]:  # a generator: httpx sends it chunked, with no Content-Length
        yield head
        for _ in range(THIRTY_MB // 1_000_000):
            yield b"x" * 1_000_000
        yield b'"]}'

    response = httpx.post(f"{server.url}/gradio_api/queue/join", content=body(), timeout=60,
                          headers={"content-type": "application/json", "X-Forwarded-For": client_address()})
    assert response.status_code == 413
    assert queue_figures(admin) == before


@pytest.mark.server
def test_a_30_mb_call_is_413_too(server: RunningServer) -> None:
    response = httpx.post(f"{server.url}/gradio_api/call/chat", json={"data": ["x" * THIRTY_MB]}, timeout=60,
                          headers={"X-Forwarded-For": client_address()})
    assert response.status_code == 413


@pytest.mark.server
def test_the_longest_message_a_user_may_type_fits_under_the_cap(server: RunningServer, chat_fn: int) -> None:
    longest = "\u00e9" * 20_000  # the chat's 20,000-character limit, each escaped to 6 bytes of JSON
    assert join(server, chat_fn, f"long-{secrets.token_hex(6)}", longest, address=client_address()).status_code == 200


# --------------------------------------------------------------------------- rate limits


@pytest.mark.server
def test_new_sessions_per_address_are_limited_with_retry_after(server: RunningServer, chat_fn: int) -> None:
    address, other = client_address(), client_address()
    for n in range(NEW_SESSIONS):
        assert join(server, chat_fn, f"new-{n}-{secrets.token_hex(6)}", address=address).status_code == 200
    refused = join(server, chat_fn, f"new-x-{secrets.token_hex(6)}", address=address)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["detail"].startswith(f"Too many new sessions from your address (limit {NEW_SESSIONS} a min")
    assert join(server, chat_fn, f"other-{secrets.token_hex(6)}", address=other).status_code == 200


@pytest.mark.server
def test_messages_per_session_are_limited_and_other_sessions_go_on(server: RunningServer, chat_fn: int) -> None:
    address = client_address()
    chatty, quiet = f"chatty-{secrets.token_hex(6)}", f"quiet-{secrets.token_hex(6)}"
    for _ in range(SESSION_MESSAGES):
        assert join(server, chat_fn, chatty, address=address).status_code == 200
    refused = join(server, chat_fn, chatty, address=address)
    assert refused.status_code == 429 and "sending messages too fast" in refused.json()["detail"]
    assert join(server, chat_fn, quiet, address=address).status_code == 200


@pytest.mark.server
def test_messages_per_address_are_limited_across_its_sessions(server: RunningServer, chat_fn: int) -> None:
    address = client_address()
    sessions = [f"spread-{n}-{secrets.token_hex(6)}" for n in range(3)]
    statuses = [join(server, chat_fn, sessions[n // 2], address=address).status_code for n in range(MESSAGES)]
    assert statuses == [200] * MESSAGES
    refused = join(server, chat_fn, sessions[2], address=address)
    assert refused.status_code == 429 and "Too many messages from your address" in refused.json()["detail"]


def settled_turns(admin: httpx.Client, at_least: int = 0) -> int:
    """Turns started once at least ``at_least`` have and every accepted join has run to its end (polled,
    bounded). An accepted join starts asynchronously: between leaving Gradio's queue and the handler counting
    its turn, nothing shows it, so a caller that knows a turn is coming says so."""
    deadline = time.monotonic() + 30
    while True:
        turns = admin.get("/admin/api/health").json()["turns"]
        queue = queue_figures(admin)
        if turns["started"] >= at_least and turns["started"] == turns["completed"] + turns["failed"] \
                and not queue["waiting_total"] and not queue["in_flight"]:
            return int(turns["started"])
        assert time.monotonic() < deadline, (turns, queue)
        time.sleep(0.05)


@pytest.mark.server
def test_a_refused_message_is_not_queued(server: RunningServer, admin: httpx.Client, chat_fn: int) -> None:
    address, session_hash = client_address(), f"refused-{secrets.token_hex(6)}"
    before = settled_turns(admin)
    for _ in range(SESSION_MESSAGES):
        assert join(server, chat_fn, session_hash, address=address).status_code == 200
    started = settled_turns(admin, at_least=before + SESSION_MESSAGES)
    assert join(server, chat_fn, session_hash, address=address).status_code == 429
    # A join that is let through afterwards settles too: only it has started since (a queued refused one
    # would have started before it, so it would show once the control turn has).
    assert join(server, chat_fn, f"control-{secrets.token_hex(6)}", address=client_address()).status_code == 200
    assert settled_turns(admin, at_least=started + 1) == started + 1


@pytest.mark.server
def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(server: RunningServer, chat_fn: int) -> None:
    """127.0.0.2 is not a trusted proxy: the addresses it claims give it no fresh buckets."""
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    statuses = [join(server, chat_fn, f"spoof-{n}-{secrets.token_hex(6)}", address=client_address(),
                     transport=transport).status_code for n in range(NEW_SESSIONS + 1)]
    assert statuses == [200] * NEW_SESSIONS + [429]


# --------------------------------------------------------------------------- clients' mistakes


@pytest.mark.server
def test_an_unknown_event_is_a_4xx_and_one_log_line(server: RunningServer) -> None:
    for fn_index in (9999, -1):
        response = join(server, fn_index, "x", address=client_address())
        assert response.status_code == 422
        assert response.json() == {"detail": f"fn_index {fn_index} is not an event of this app."}
    missing = httpx.post(f"{server.url}/gradio_api/call/no_such_api", json={"data": ["hi"]}, timeout=10,
                         headers={"X-Forwarded-For": client_address()})
    assert missing.status_code == 404
    assert "Traceback" not in server.log()
    assert "fn_index 9999 is not an event of this app." in server.log()


# --------------------------------------------------------------------------- the parts, in-process


def test_a_bucket_holds_a_minutes_worth_and_refills_at_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    for _ in range(60):
        assert limiter.wait_s("a") == 0
        limiter.take("a")
    assert limiter.wait_s("a") == pytest.approx(1.0)
    now[0] += 1.0
    assert limiter.wait_s("a") == 0
    assert RateLimiter(0).wait_s("a") == 0  # 0 = no limit


def test_tracked_keys_and_sessions_stay_bounded() -> None:
    limiter, seen = RateLimiter(5, max_keys=100), SeenSessions(max_keys=100)
    for n in range(10_000):
        limiter.take(f"k{n}")
        seen.add(f"s{n}")
    assert len(limiter._buckets) == 100 and len(seen) == 100
    assert "s9999" in seen and "s0" not in seen


@pytest.mark.parametrize(("host", "key", "loopback"), [
    ("127.0.0.1", "127.0.0.1", True),
    ("::1", "::1", True),
    ("::ffff:127.0.0.1", "127.0.0.1", True),
    ("203.0.113.5", "203.0.113.5", False),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64", False),
    ("not-an-ip", "not-an-ip", False),
])
def test_client_keys_group_ipv6_by_64_and_know_loopback(host: str, key: str, loopback: bool) -> None:
    assert client_key(host) == (key, loopback)


def test_loopback_clients_are_exempt_by_default_so_load_tests_never_trip() -> None:
    settings = load_settings(None, ["rate_limits.new_sessions_per_minute=1"], environ={}, env_file=None).settings

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    class Fn:
        api_name, inputs = "chat", [object()]

    guard = RequestGuard(app, settings=settings, fns={0: Fn()})

    async def joins(client: tuple[str, int]) -> list[int]:
        transport = httpx.ASGITransport(app=guard, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://cmw") as http:
            return [(await http.post("/gradio_api/queue/join", json={"data": ["hi"], "fn_index": 0,
                                                                     "session_hash": f"s{n}-{client[0]}"})).status_code
                    for n in range(5)]

    assert asyncio.run(joins(("127.0.0.1", 5000))) == [200] * 5
    assert asyncio.run(joins(("192.0.2.7", 5000))) == [200, 429, 429, 429, 429]

"""Hostile HTTP: the admin API fuzzed from its own OpenAPI document, and malformed queue requests.

Schemathesis generates requests for every ``/admin/api`` operation of ``/admin/openapi.json`` (valid and
invalid path parameters, odd strings, generated auth headers). With the token nothing answers 5xx and every
answer fits the documented schema; without a valid token every answer is 401/403 with nothing but an error
``detail`` — and changes nothing (a bystander session survives the fuzzed DELETEs).

Raw HTTP then throws malformed queue requests at the Gradio routes (bad JSON, wrong fn_index, huge bodies,
unknown session hashes, broken HTTP framing) while a normal user chats: the user's turns all complete with
replies that carry exactly its own messages' fingerprints, and no malformed request gets a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from agent.app.admin import token_path
from agent.fingerprints import fingerprint, parse_reply_header
from agent.loadtest.connection import Connection, Origin
from agent.loadtest.protocol import Endpoint, discover, reply_of, run_turn, user_texts
from tests.servers import RunningServer, cmw_server

pytestmark = [pytest.mark.server, pytest.mark.timeout(120)]

# A load-test canary: a message carrying one gets the simulator's fingerprints header, which proves the
# turns the "LLM" saw; without one a person gets a readable reply.
TAG = "cw0-0000"
EXAMPLES = 150  # per test, over the five operations
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    fast = ("sim.ttft_ms=5", "sim.tokens_per_second=1000", "sim.reply_tokens=6", "sim.jitter=0")
    with cmw_server(tmp, *fast) as running:
        yield running
        assert running.proc.poll() is None


@pytest.fixture(scope="module")
def token(server: RunningServer) -> str:
    return token_path(server.state_dir).read_text().strip()


@pytest.fixture(scope="module")
def admin_schema(server: RunningServer) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/admin/openapi.json").include(path_regex="^/admin/api/")


@pytest.fixture(scope="module")
def guarded_schema(admin_schema: Any) -> Any:
    """Every admin operation but the liveness probe, which is public by design (it says "ok" and nothing else)."""
    return admin_schema.exclude(path="/admin/api/live")


@pytest.fixture(scope="module")
def endpoint(server: RunningServer) -> Endpoint:
    async def find() -> Endpoint:
        async with httpx.AsyncClient() as client:
            return await discover(client, server.url)

    return asyncio.run(find())


async def chat_turns(url: str, endpoint: Endpoint, session_hash: str, messages: list[str]) -> list[dict[str, Any]]:
    """Send messages in a row on one session; assert each reply saw exactly this session's messages.

    Each message is signed with :data:`TAG`, so the simulator's reply carries its fingerprints header.
    """
    messages = [f"{TAG} {m}" for m in messages]
    conn = Connection(Origin.parse(url))
    history: list[dict[str, Any]] = []
    try:
        for n, message in enumerate(messages, 1):
            result = await run_turn(conn, endpoint, session_hash, message, timeout=60)
            assert result.ok, f"{result.error}: {result.detail}"
            assert result.history is not None
            history = result.history
            assert user_texts(history) == messages[:n]
            header = parse_reply_header(reply_of(history))
            assert header == (n, [fingerprint(m) for m in messages[:n]]), reply_of(history)
    finally:
        await conn.close()
    return history


@pytest.fixture(scope="module")
def bystander(server: RunningServer, endpoint: Endpoint) -> str:
    """A session with one completed turn that no fuzzed request may end or alter."""
    session_hash = f"bystander-{secrets.token_hex(8)}"
    asyncio.run(chat_turns(server.url, endpoint, session_hash, ["I was here first"]))
    return session_hash


def assert_bystander_intact(server: RunningServer, token: str, session_hash: str) -> None:
    detail = httpx.get(f"{server.url}/admin/api/sessions/{session_hash}",
                       headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert detail.status_code == 200
    assert [m["content"] for m in detail.json()["history"] if m["role"] == "user"] == [f"{TAG} I was here first"]


def cases(admin_schema: Any) -> st.SearchStrategy[Any]:
    """Requests for every admin operation: valid ones and ones that break the schema (wrong types, odd ids)."""
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    return st.one_of(*(admin_schema.as_strategy(mode) for mode in modes))


def without_auth(headers: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}


def test_admin_api_with_the_token_never_answers_5xx_and_fits_its_schema(
    admin_schema: Any, server: RunningServer, token: str, bystander: str
) -> None:
    @given(case=cases(admin_schema))
    @FUZZ
    def check(case: Any) -> None:
        # Generated (negative) cases may carry their own Authorization header: this test holds the real token.
        case.headers = {**without_auth(case.headers), "Authorization": f"Bearer {token}"}
        response = case.call(base_url=server.url, timeout=10)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        assert response.status_code not in (401, 403), response.text

    check()
    assert_bystander_intact(server, token, bystander)  # random ids never matched it


# Every way of not holding the token: none, empty, wrong, other schemes, the token with a twist.
NOT_THE_TOKEN = (None, "Bearer ", "Bearer wrong-token", "Basic {token}", "Bearer {token}x", "bearer{token}",
                 "Token {token}", "Bearer {token} {token}")


def test_admin_api_without_a_valid_token_gives_no_data_and_changes_nothing(
    guarded_schema: Any, server: RunningServer, token: str, bystander: str
) -> None:
    @given(case=cases(guarded_schema), auth=st.sampled_from(NOT_THE_TOKEN), aim=st.booleans())
    @FUZZ
    def check(case: Any, auth: str | None, aim: bool) -> None:
        if aim and case.method == "DELETE":
            case.path_parameters = {**(case.path_parameters or {}), "session_id": bystander}
        headers = without_auth(case.headers)
        if auth is not None:
            headers["Authorization"] = auth.format(token=token)
        case.headers = headers
        response = case.call(base_url=server.url, timeout=10)
        assert response.status_code in (401, 403), (auth, response.text)
        body = response.json()
        assert set(body) == {"detail"} and body["detail"] in ("missing admin token", "invalid admin token")
        assert bystander not in response.text and token not in response.text

    check()
    assert_bystander_intact(server, token, bystander)


# --------------------------------------------------------------------------- malformed queue requests


def join_body(endpoint: Endpoint, **changes: Any) -> bytes:
    body = endpoint.payload("hostile", f"hostile-{secrets.token_hex(4)}", None)
    body.update(changes)
    return json.dumps(body).encode()


Hostile = tuple[str, str, str, bytes | None, dict[str, str]]  # label, method, path, body, headers


def hostile_requests(endpoint: Endpoint) -> list[Hostile]:
    """(label, method, path, body, headers) of requests no client should send."""
    prefix = endpoint.api_prefix
    join, data = f"{prefix}/queue/join", f"{prefix}/queue/data"
    as_json = {"content-type": "application/json"}

    def bad_join(label: str, body: bytes, headers: dict[str, str] = as_json) -> Hostile:
        return f"POST {join} {label}", "POST", join, body, headers

    return [
        bad_join("bad json", b"{not json"),
        bad_join("empty body", b""),
        bad_join("json array", b"[1, 2, 3]"),
        bad_join("json null", b"null"),
        bad_join("100k-deep json", b"[" * 100_000 + b"]" * 100_000),
        bad_join("fn_index=9999", join_body(endpoint, fn_index=9999)),
        bad_join("fn_index=-1", join_body(endpoint, fn_index=-1)),
        bad_join("fn_index=chat", join_body(endpoint, fn_index="chat")),
        bad_join("data not a list", join_body(endpoint, data="not a list")),
        bad_join("data empty", join_body(endpoint, data=[])),
        bad_join("data too long", join_body(endpoint, data=[{"nested": ["odd"]}, 1, 2, 3])),
        bad_join("no session_hash", join_body(endpoint, session_hash=None)),
        bad_join("100k session_hash", join_body(endpoint, session_hash="s" * 100_000)),
        bad_join("junk trigger", join_body(endpoint, trigger_id="x", event_data={"junk": True})),
        bad_join("8 MB message", join_body(endpoint, data=["x" * 8_000_000])),
        bad_join("not utf-8", b"\xff\xfe" * 1000),
        bad_join("text/plain", join_body(endpoint), {"content-type": "text/plain"}),
        (f"GET {join}", "GET", join, None, {}),
        ("data of an unknown session", "GET", f"{data}?session_hash=never-joined-{secrets.token_hex(4)}", None, {}),
        ("data without session", "GET", data, None, {}),
        ("data of a 50k session hash", "GET", f"{data}?session_hash={'h' * 50_000}", None, {}),
        (f"POST {data}", "POST", data, b"{}", as_json),
        ("cancel unknown", "POST", f"{prefix}/cancel", b'{"session_hash": "x", "fn_index": 0, "event_id": "x"}',
         as_json),
        ("cancel bad json", "POST", f"{prefix}/cancel", b"][", as_json),
        ("upload not multipart", "POST", f"{prefix}/upload", b"junk", {"content-type": "multipart/form-data"}),
        ("file traversal", "GET", f"{prefix}/file=../../../../etc/passwd", None, {}),
        ("file absolute", "GET", f"{prefix}/file=/etc/passwd", None, {}),
    ]


async def send_hostile(url: str, endpoint: Endpoint) -> list[tuple[str, int]]:
    """Every hostile request once: (label, status); streams are left as soon as their status is known."""
    statuses: list[tuple[str, int]] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for label, method, path, body, headers in hostile_requests(endpoint):
            async with client.stream(method, path, content=body, headers=headers) as response:
                statuses.append((label, response.status_code))
    return statuses


async def broken_http(url: str) -> None:
    """Requests that break HTTP itself: truncated bodies, garbage lines, connections dropped mid-request."""
    origin = Origin.parse(url)
    raw = [
        b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n{\"data\": [",
        b"GARBAGE\r\n\r\n",
        b"GET /gradio_api/queue/data?session_hash=half HTTP/1.1\r\nHost: x\r\n",
        b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + secrets.token_bytes(64),  # a TLS hello on plain HTTP
    ]
    for payload in raw:
        reader, writer = await asyncio.open_connection(origin.host, origin.port)
        writer.write(payload)
        await writer.drain()
        writer.transport.abort() if payload.endswith(b"[") else writer.close()  # abort = vanish mid-body
        if not payload.endswith(b"["):
            await asyncio.wait_for(reader.read(), 10)  # the server answers (or closes) rather than hangs


def test_malformed_queue_requests_never_disturb_a_concurrent_chat(server: RunningServer, endpoint: Endpoint) -> None:
    messages = [f"steady turn {n} {secrets.token_hex(3)}" for n in range(8)]

    async def scenario() -> list[tuple[str, int]]:
        steady = asyncio.create_task(chat_turns(server.url, endpoint, f"steady-{secrets.token_hex(6)}", messages))
        statuses = await send_hostile(server.url, endpoint)
        await broken_http(server.url)
        await steady  # raises if a turn failed or saw a foreign message
        return statuses

    statuses = asyncio.run(scenario())

    server_errors = [what for what, status in statuses if status >= 500]
    assert not server_errors, statuses
    # A client's mistake is one line in the log (agent/app/guard.py), never a traceback.
    assert "Traceback" not in server.log()
    assert dict(statuses)["POST /gradio_api/queue/join 8 MB message"] == 413
    assert all(status != 200 for what, status in statuses if what.startswith("file "))
    # And a newcomer after the storm is served normally.
    asyncio.run(chat_turns(server.url, endpoint, f"after-{secrets.token_hex(6)}", ["hello after the storm"]))


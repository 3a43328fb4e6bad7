"""No session takeover, no erased conversation: a real server attacked over raw HTTP.

A browser comes back to its conversation only with the token the server issued it (page-load restore);
a victim's session hash, conversation id, an altered or revoked token presented by another client gets
exactly what an unknown one gets. Memory is capped at 8 sessions: users beyond it free memory, never a
stored conversation, and a session that returns finds its history.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent.app.admin import token_path
from agent.fingerprints import fingerprint, parse_reply_header
from tests.raw import Event, call, event
from tests.servers import RunningServer, cmw_server

pytestmark = pytest.mark.server

FAST = ("sim.ttft_ms=5", "sim.tokens_per_second=2000", "sim.reply_tokens=5", "sim.jitter=0")
# A load-test canary: a message carrying one gets the simulator's fingerprints header, which proves the
# turns the "LLM" saw; without one a person gets a readable reply.
TAG = "cw0-0000"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with cmw_server(tmp_path_factory.mktemp("takeover"), *FAST, "sessions.max_sessions=8") as running:
        yield running


@pytest.fixture(scope="module")
def admin(server: RunningServer) -> Iterator[httpx.Client]:
    token = token_path(server.state_dir).read_text().strip()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def restore(server: RunningServer) -> Event:
    return event(server.url, trigger="load")


@pytest.fixture(scope="module")
def chat_event(server: RunningServer) -> Event:
    return event(server.url, api_name="chat")


def new_hash(label: str) -> str:
    return f"{label}-{secrets.token_hex(8)}"


def come_back(server: RunningServer, restore: Event, session_hash: str, token: Any) -> list[Any]:
    """The page-load event: [history, provider, model, token, files] for this tab."""
    outcome = call(server.url, restore.fn_index, [token], session_hash)
    assert outcome.ok, outcome.error
    return outcome.outputs


def chat(server: RunningServer, chat_event: Event, session_hash: str, text: str) -> list[dict[str, Any]]:
    outcome = call(server.url, chat_event.fn_index, [text], session_hash)
    assert outcome.ok, outcome.error
    return outcome.outputs[0]


def texts(history: list[dict[str, Any]], role: str) -> list[str]:
    out = []
    for message in history:
        if message["role"] == role:
            content = message["content"]
            out.append(content if isinstance(content, str) else "".join(p.get("text", "") for p in content))
    return out


def seen_by_reply(history: list[dict[str, Any]]) -> tuple[int, list[str]] | None:
    return parse_reply_header(texts(history, "assistant")[-1])


def unknown_answer(answer: list[Any]) -> list[Any]:
    """What a tab with no conversation gets, minus its own fresh token."""
    history, provider, model, token, files = answer
    return [history, provider, model, isinstance(token, str) and token.count(".") == 2, files]


@pytest.fixture(scope="module")
def victim(server: RunningServer, restore: Event, chat_event: Event, admin: httpx.Client) -> dict[str, Any]:
    session_hash = new_hash("victim")
    come_back(server, restore, session_hash, None)
    chat(server, chat_event, session_hash, "my secret plan")
    token = come_back(server, restore, session_hash, None)[3]  # what its BrowserState now holds
    listed = admin.get("/admin/api/sessions").json()
    conversation = next(s["id"] for s in listed if s.get("turns") == 1 and admin.get(
        f"/admin/api/sessions/{s['id']}").json()["history"][0]["content"] == "my secret plan")
    return {"hash": session_hash, "token": token, "id": conversation}


def test_a_victims_hash_id_or_altered_token_presented_on_page_load_opens_nothing(
    server: RunningServer, restore: Event, chat_event: Event, victim: dict[str, Any]
) -> None:
    baseline = unknown_answer(come_back(server, restore, new_hash("nobody"), None))
    assert baseline[0] == []
    cid, nonce, mac = victim["token"].split(".")
    presented = [
        victim["hash"], victim["id"], f"{victim['id']}.{nonce}.{'0' * len(mac)}", f"{victim['id']}.{'1' * 32}.{mac}",
        f"{victim['hash']}.{nonce}.{mac}", victim["token"] + "x", "", "a.b.c", ["not", "a", "string"], 12345,
    ]
    for claim in presented:
        attacker = new_hash("attacker")
        answer = come_back(server, restore, attacker, claim)
        assert unknown_answer(answer) == baseline, claim
        assert "secret plan" not in str(answer)
        # Every other event this tab can trigger sees only its own (new, empty) conversation.
        history = chat(server, chat_event, attacker, f"{TAG} what do you know?")
        assert texts(history, "user") == [f"{TAG} what do you know?"]
        assert seen_by_reply(history) == (1, [fingerprint(f"{TAG} what do you know?")])


def test_the_victims_hash_as_the_attackers_own_id_is_not_its_conversation_id(
    server: RunningServer, chat_event: Event, victim: dict[str, Any]
) -> None:
    """Ids that the admin API shows are not session hashes: sending one as a hash starts a new conversation."""
    history = chat(server, chat_event, victim["id"], "hello?")
    assert texts(history, "user") == ["hello?"]


def test_the_issued_token_brings_the_browser_back_after_a_reload(
    server: RunningServer, restore: Event, chat_event: Event
) -> None:
    first = new_hash("reload")
    come_back(server, restore, first, None)
    chat(server, chat_event, first, "remember me")
    token = come_back(server, restore, first, None)[3]
    reloaded = new_hash("reloaded")  # a reload is a new Gradio session
    answer = come_back(server, restore, reloaded, token)
    assert texts(answer[0], "user") == ["remember me"]
    history = chat(server, chat_event, reloaded, f"{TAG} and now?")
    assert seen_by_reply(history) == (2, [fingerprint("remember me"), fingerprint(f"{TAG} and now?")])


def test_clear_and_kill_revoke_the_token(
    server: RunningServer, restore: Event, chat_event: Event, admin: httpx.Client
) -> None:
    clear = event(server.url, api_name="clear")
    tab = new_hash("clearing")
    come_back(server, restore, tab, None)
    chat(server, chat_event, tab, "forget this")
    old_token = come_back(server, restore, tab, None)[3]
    cleared = call(server.url, clear.fn_index, [], tab)
    assert cleared.ok and cleared.outputs[0] == [] and cleared.outputs[2] != old_token
    assert come_back(server, restore, new_hash("old-copy"), old_token)[0] == []
    new_token = cleared.outputs[2]
    chat(server, chat_event, tab, "after clear")
    assert texts(come_back(server, restore, new_hash("new-copy"), new_token)[0], "user") == ["after clear"]

    assert admin.delete(f"/admin/api/sessions/{tab}").status_code == 200  # the admin may name it by hash
    assert come_back(server, restore, new_hash("after-kill"), new_token)[0] == []


def test_a_flood_of_new_hashes_with_forged_tokens_adds_no_alias(
    server: RunningServer, restore: Event, admin: httpx.Client, victim: dict[str, Any]
) -> None:
    before = admin.get("/admin/api/health").json()["sessions"]["aliases"]
    for n in range(60):
        come_back(server, restore, new_hash(f"flood{n}"), f"{victim['id']}.{secrets.token_hex(16)}.{'f' * 64}")
    assert admin.get("/admin/api/health").json()["sessions"]["aliases"] == before


def test_aliases_of_a_killed_conversation_are_swept(
    server: RunningServer, restore: Event, chat_event: Event, admin: httpx.Client
) -> None:
    tab = new_hash("aliased")
    come_back(server, restore, tab, None)
    chat(server, chat_event, tab, "alias me")
    token = come_back(server, restore, tab, None)[3]
    before = admin.get("/admin/api/health").json()["sessions"]["aliases"]
    for n in range(5):
        assert texts(come_back(server, restore, new_hash(f"tab{n}"), token)[0], "user") == ["alias me"]
    assert admin.get("/admin/api/health").json()["sessions"]["aliases"] == before + 5
    assert admin.delete(f"/admin/api/sessions/{tab}").status_code == 200  # the admin may name it by hash
    assert admin.get("/admin/api/health").json()["sessions"]["aliases"] == before


def test_with_8_sessions_in_memory_a_user_who_chatted_keeps_every_turn_after_24_others(
    server: RunningServer, chat_event: Event, admin: httpx.Client
) -> None:
    first = new_hash("first")
    mine = ["turn one", "turn two"]
    for text in mine:
        chat(server, chat_event, first, text)
    for n in range(24):
        chat(server, chat_event, new_hash(f"other{n}"), f"I am user {n}")
    health = admin.get("/admin/api/health").json()["sessions"]
    assert health["active"] <= 8 and health["evicted_total"] >= 17
    stored = {s["id"]: s for s in admin.get("/admin/api/sessions", params={"limit": 10_000}).json()}
    detail = admin.get(f"/admin/api/sessions/{first}").json()
    assert stored[detail["id"]]["state"] == "stored"  # freed from memory, kept in the store
    history = chat(server, chat_event, first, f"{TAG} turn three")
    assert texts(history, "user") == [*mine, f"{TAG} turn three"]
    assert seen_by_reply(history) == (3, [fingerprint(t) for t in [*mine, f"{TAG} turn three"]])


def test_sessions_list_pages_through_the_store(server: RunningServer, chat_event: Event, admin: httpx.Client) -> None:
    for n in range(12):
        chat(server, chat_event, new_hash(f"pager{n}"), f"page me {n}")
    everything = admin.get("/admin/api/sessions", params={"limit": 10_000}).json()
    assert len(everything) > 8  # more than memory holds
    pages = [admin.get("/admin/api/sessions", params={"offset": o, "limit": 5}).json()
             for o in range(0, len(everything), 5)]
    assert [s["id"] for page in pages for s in page] == [s["id"] for s in everything]
    assert len({s["id"] for s in everything}) == len(everything)

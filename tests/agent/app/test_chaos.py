"""LLM chaos: every simulator fault kind at 20% while several users chat at once.

The server talks to the test's own simulator (provider ``custom``), so the test reads the simulator's
counters — every request it answered and every fault it injected — and compares them with what the
users saw, what ``/metrics`` counts and what the admin API reports. Each user speaks Gradio's queue
protocol over its own keep-alive connection (agent.loadtest's client), as a browser tab would.

Expected: a fault fails exactly the turn it hit (errors are retried first, ``llm.max_retries`` times),
the failed turn keeps the user's message and ends in a clear ``⚠️`` message naming its class, every
other reply carries the fingerprints of exactly its own session's messages, and the server carries on.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.app.admin import token_path
from agent.fingerprints import fingerprint, parse_reply_header
from agent.loadtest.connection import Connection, Origin
from agent.loadtest.protocol import Endpoint, TurnResult, discover, reply_of, run_turn, user_texts
from agent.settings import SimSettings
from agent.simulator import Simulator, running_simulator
from tests.servers import RunningServer, cmw_server

pytestmark = [pytest.mark.server, pytest.mark.timeout(180)]

USERS = 6
TURNS = 6
MAX_RETRIES = 1
TIMEOUT_S = 1.0  # llm.timeout_s: a stalled stream fails the turn after this
STALL_S = 4.0  # longer than the timeout, so a stall is seen as a timeout (not as the later cut)
SEED = 38  # chosen so the 36 draws hold about 20% faults, and every kind in the mixed phase
# Short replies, so a phase of USERS x TURNS turns takes a few seconds.
QUIET = SimSettings(ttft_ms=10, tokens_per_second=400, reply_tokens=8, jitter=0, stall_s=STALL_S, seed=SEED)
# The class each fault kind must be reported as (llm.LLMError kinds).
CLASS_OF = {"error": "http_error", "disconnect": "disconnect", "stall": "timeout", "malformed": "malformed"}
# Words of each class's chat message (agent/app/llm.py): a failed turn must say what went wrong.
MESSAGE_OF = {
    "http_error": "answered HTTP",
    "timeout": "did not answer within",
    "disconnect": "Connection to",
    "malformed": "malformed reply chunk",
}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with running_simulator(QUIET, host="127.0.0.1", port=0) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sim: Simulator) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("chaos")
    with cmw_server(
        tmp,
        "llm.provider=custom", 'llm.providers=["custom"]', f'llm.base_url="{sim.base_url}"',
        f"llm.timeout_s={TIMEOUT_S}", f"llm.max_retries={MAX_RETRIES}",
    ) as running:
        yield running
        # No crash: the server outlived every phase and still answers.
        assert running.proc.poll() is None
        assert "Traceback" not in running.log()


@pytest.fixture(scope="module")
def admin(server: RunningServer) -> Iterator[httpx.Client]:
    token = token_path(server.state_dir).read_text().strip()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        yield client


@dataclass
class Turn:
    sent: list[str]  # every message this user has sent so far, this turn's last
    result: TurnResult


def failed_class(reply: str) -> str | None:
    """The error class a reply's ⚠️ message names; None for a reply that did not fail."""
    if "⚠️" not in reply:
        return None
    notice = reply[reply.index("⚠️"):]
    return next((kind for kind, words in MESSAGE_OF.items() if words in notice), "unclear")


async def user(url: str, endpoint: Endpoint, name: str, turns: int) -> list[Turn]:
    """One session: `turns` messages in a row, each waiting for its reply."""
    conn = Connection(Origin.parse(url))
    session_hash = f"chaos-{name}-{secrets.token_hex(6)}"
    sent: list[str] = []
    out: list[Turn] = []
    try:
        for n in range(turns):
            # the canary asks the simulator for its fingerprints header, as the load tester's messages do
            sent.append(f"cw0-0000 {name} says {n} ({secrets.token_hex(4)})")
            out.append(Turn(list(sent), await run_turn(conn, endpoint, session_hash, sent[-1], timeout=60)))
    finally:
        await conn.close()
    return out


async def crowd(url: str, users: int, turns: int) -> list[Turn]:
    async with httpx.AsyncClient() as client:
        endpoint = await discover(client, url)
    runs = await asyncio.gather(*(user(url, endpoint, f"u{i}", turns) for i in range(users)))
    return [turn for run in runs for turn in run]


def check_turns(turns: list[Turn]) -> Counter[str]:
    """Assert what every user saw; the failed turns by class."""
    failed: Counter[str] = Counter()
    for turn in turns:
        result = turn.result
        assert result.history is not None, f"the queue event itself failed: {result.error}: {result.detail}"
        # The user's message stays, failed turn or not, and the history holds only this session's messages.
        assert user_texts(result.history) == turn.sent
        reply = reply_of(result.history)
        kind = failed_class(reply)
        # The load tester counts a turn the chat shows as failed as an app error, and nothing else.
        assert result.error == (None if kind is None else "app_error"), (result.error, result.detail)
        header = parse_reply_header(reply)
        if kind is None:
            assert header == (len(turn.sent), [fingerprint(m) for m in turn.sent]), reply
        else:
            failed[kind] += 1
            if header is not None:  # a reply cut mid-way shows its start: it too saw only this session
                assert header == (len(turn.sent), [fingerprint(m) for m in turn.sent]), reply
    assert "unclear" not in failed, "a failed turn's message does not say what went wrong"
    return failed


def failed_metrics(server: RunningServer) -> Counter[str]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    out: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "cmw_turns_failed":
            for sample in family.samples:
                if sample.name == "cmw_turns_failed_total":
                    out[sample.labels["error"]] += int(sample.value)
    return out


def admin_failed(admin: httpx.Client) -> Counter[str]:
    return Counter(admin.get("/admin/api/health").json()["turns"]["failed_by_class"])


def run_phase(server: RunningServer, sim: Simulator, admin: httpx.Client, rates: dict[str, float]) -> Counter[str]:
    """Run USERS x TURNS turns with these fault rates, check everything; the faults injected by kind."""
    # Fresh dice seeded with SEED: the same draws each run, so the phase's fault counts do not depend on luck.
    sim.configure(QUIET.model_copy(update={f"{kind}_rate": rate for kind, rate in rates.items()}))
    faults_before, completions_before = Counter(sim.counters.faults), sim.counters.completions
    metrics_before, admin_before = failed_metrics(server), admin_failed(admin)
    try:
        turns = asyncio.run(crowd(server.url, USERS, TURNS))
    finally:
        sim.configure(QUIET)
    faults = Counter(sim.counters.faults)
    faults.subtract(faults_before)
    attempts = sim.counters.completions - completions_before

    failed = check_turns(turns)
    # A fault in the stream is not retried: it fails exactly the turn it hit, under its own class.
    for kind in ("disconnect", "stall", "malformed"):
        assert failed[CLASS_OF[kind]] == faults[kind], (kind, failed, faults)
    # An HTTP error is retried max_retries times; only when every attempt fails does the turn fail. So every
    # injected error caused one more request, except the last attempt of each turn that failed with http_error.
    assert attempts == len(turns) + faults["error"] - failed["http_error"], (attempts, faults, failed)
    assert failed["http_error"] * (1 + MAX_RETRIES) <= faults["error"]
    # /metrics and the admin API count the same failures, by class.
    metrics_now, admin_now = failed_metrics(server), admin_failed(admin)
    metrics_now.subtract(metrics_before)
    admin_now.subtract(admin_before)
    assert +metrics_now == failed
    assert +admin_now == failed
    return faults


@pytest.mark.parametrize("kind", ["error", "disconnect", "stall", "malformed"])
def test_one_fault_kind_at_20_percent_under_multi_user_load(
    server: RunningServer, sim: Simulator, admin: httpx.Client, kind: str
) -> None:
    faults = run_phase(server, sim, admin, {kind: 0.2})
    assert faults[kind] > 0, "the seeded draws injected no fault: pick another SEED"


def test_every_fault_kind_at_once_20_percent_in_all_under_multi_user_load(
    server: RunningServer, sim: Simulator, admin: httpx.Client
) -> None:
    faults = run_phase(server, sim, admin, dict.fromkeys(CLASS_OF, 0.05))
    assert all(faults[kind] > 0 for kind in CLASS_OF), faults


def test_an_http_error_is_tried_exactly_one_plus_max_retries_times(
    server: RunningServer, sim: Simulator, admin: httpx.Client
) -> None:
    async def forced_error_turn() -> TurnResult:
        async with httpx.AsyncClient() as client:
            chat, set_model = await discover(client, server.url), await discover(client, server.url, "set_model")
        conn = Connection(Origin.parse(server.url))
        session_hash = f"chaos-forced-{secrets.token_hex(6)}"
        try:
            # The model name forces the simulator's fault on every request of this session.
            assert (await run_turn(conn, set_model, session_hash, "cmw-sim@error:503")).ok
            return await run_turn(conn, chat, session_hash, "always refused", timeout=60)
        finally:
            await conn.close()

    before, metrics_before = sim.counters.completions, failed_metrics(server)
    result = asyncio.run(forced_error_turn())

    assert sim.counters.completions - before == 1 + MAX_RETRIES
    assert result.history is not None and user_texts(result.history) == ["always refused"]
    assert failed_class(reply_of(result.history)) == "http_error"
    assert "HTTP 503" in reply_of(result.history)
    assert failed_metrics(server)["http_error"] == metrics_before["http_error"] + 1


def test_server_stays_healthy_after_the_chaos(server: RunningServer, admin: httpx.Client) -> None:
    health = admin.get("/admin/api/health").json()
    assert health["status"] == "ok"
    assert health["turns"]["started"] == health["turns"]["completed"] + health["turns"]["failed"]
    assert sum(health["turns"]["failed_by_class"].values()) == health["turns"]["failed"]

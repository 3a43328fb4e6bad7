"""Overload: with queue.max_size = N, a burst of 3×N users is partly refused, never hangs, and leaves a healthy server.

The server runs a slow embedded simulator (~1.5 s a reply) so the burst really piles up: ``chat`` runs 3 at once
(balanced) and at most N more wait; Gradio answers every further join with HTTP 503 "Queue is full", which the
browser shows as "This application is currently busy. Please try again." and ``cmw loadtest`` counts as
``queue_full``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from gradio_client import Client

from agent.fingerprints import fingerprint, parse_reply_header
from agent.loadtest.connection import Connection, Origin
from agent.loadtest.protocol import QUEUE_FULL, TurnResult, discover, run_turn
from tests.servers import RunningServer, cmw_server

MAX_SIZE = 4
USERS = 3 * MAX_SIZE
CHAT_LIMIT = 3  # balanced
# A load-test canary: a message carrying one gets the simulator's fingerprints header, which proves the
# turns the "LLM" saw; without one a person gets a readable reply.
TAG = "cw0-0000"
TURN_BOUND_S = 30  # no accepted turn may take longer: the burst is ~3 rounds of 1.5 s replies
pytestmark = [pytest.mark.server, pytest.mark.timeout(150)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with cmw_server(
        tmp_path_factory.mktemp("overload"),
        f"queue.max_size={MAX_SIZE}",
        "sim.ttft_ms=300", "sim.tokens_per_second=20", "sim.reply_tokens=24", "sim.jitter=0",
    ) as running:
        yield running


def rss_mb(server: RunningServer) -> float:
    return psutil.Process(server.proc.pid).memory_info().rss / 1e6


async def burst(url: str, users: int) -> list[TurnResult]:
    """``users`` raw-protocol turns joined at once, each on its own connection and session."""
    async with httpx.AsyncClient(timeout=15) as client:
        endpoint = await discover(client, url)
    conns = [Connection(Origin.parse(url)) for _ in range(users)]
    try:
        return await asyncio.gather(*(
            run_turn(conn, endpoint, f"overload-{i:04d}", f"{TAG} burst user {i}", timeout=TURN_BOUND_S)
            for i, conn in enumerate(conns)
        ))
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))


def text_of(message: dict) -> str:
    content = message["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def test_a_burst_of_three_times_max_size_is_partly_refused_never_hangs_and_leaves_a_healthy_server(
    server: RunningServer,
) -> None:
    before = rss_mb(server)
    results = asyncio.run(burst(server.url, USERS))
    after = rss_mb(server)
    print(f"\nserver RSS before the burst {before:.1f} MB, after {after:.1f} MB ({after - before:+.1f} MB)")

    errors = [r.error for r in results]
    served = [r for r in results if r.ok]
    refused = [r for r in results if r.error == QUEUE_FULL]
    assert len(served) + len(refused) == USERS, errors  # no timeout, no disconnect: each one finished or was refused
    assert len(refused) >= USERS - (CHAT_LIMIT + MAX_SIZE)
    assert len(served) >= MAX_SIZE
    assert all("queue is full" in (r.detail or "").lower() for r in refused)
    for index, result in enumerate(results):
        if result.ok:  # each served user got its own reply to its own message
            assert result.history is not None
            assert parse_reply_header(text_of(result.history[-1])) == (1, [fingerprint(f"{TAG} burst user {index}")])
    assert after - before < 200, "the burst should not leave the server much bigger"

    history, _ = Client(server.url, verbose=False).predict(f"{TAG} after the storm", api_name="/chat")
    assert parse_reply_header(text_of(history[-1])) == (1, [fingerprint(f"{TAG} after the storm")])


def test_cmw_loadtest_counts_the_refused_as_queue_full(server: RunningServer, tmp_path: Path) -> None:
    report = tmp_path / "burst.json"
    run = subprocess.run(
        [sys.executable, "-m", "cmw_cli.main", "loadtest", "--url", server.url, "--users", str(USERS), "--turns", "1",
         "--prime", "0", "--timeout", str(TURN_BOUND_S), "--duration", "60", "--quiet", "--out", str(report)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(report.read_text())["summary"]
    errors = summary["errors"]
    assert errors["queue_full"] >= USERS - (CHAT_LIMIT + MAX_SIZE)
    assert errors["timeout"] == errors["disconnect"] == errors["app_error"] == 0
    assert summary["turns_completed"] + errors["queue_full"] == USERS
    assert summary["isolation_violations"] == 0

"""``sim.capacity``: a backend that saturates, measured from the client side of real streams.

Up to ``capacity`` streams each decode at ``tokens_per_second``; beyond it they share capacity × tokens/s,
and the share follows streams as they start and end. The bands are generous: these are rates measured on
a shared machine, and each scenario's alternatives (unlimited, or a share never recomputed) lie outside them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from agent.settings import SimSettings
from agent.simulator import Simulator, running_simulator
from agent.simulator.batch import SharedRate

TPS, TOKENS = 50.0, 50
BASE = SimSettings(ttft_ms=50, tokens_per_second=TPS, reply_tokens=TOKENS, jitter=0, seed=1)
DECODE_S = (TOKENS - 1) / TPS  # one reply's decoding (first token to last) at full speed: 0.98 s


def simulator(capacity: int) -> Iterator[Simulator]:
    with running_simulator(BASE.model_copy(update={"capacity": capacity}), host="127.0.0.1", port=0) as sim:
        yield sim


@pytest.fixture
def capped() -> Iterator[Simulator]:
    yield from simulator(8)


@pytest.fixture
def unlimited() -> Iterator[Simulator]:
    yield from simulator(0)


@pytest.fixture
def single() -> Iterator[Simulator]:
    yield from simulator(1)


@dataclass
class Stream:
    """When each content token of one streamed reply reached the client (monotonic seconds)."""

    times: list[float] = field(default_factory=list)

    @property
    def decode_s(self) -> float:
        return self.times[-1] - self.times[0]


def body(max_tokens: int | None = None, stream: bool = True) -> dict[str, object]:
    data: dict[str, object] = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        data["max_tokens"] = max_tokens
    return data


async def stream(client: httpx.AsyncClient, sim: Simulator, max_tokens: int | None = None,
                 on_token: Callable[[int], None] | None = None) -> Stream:
    """Stream one reply, stamping each content token as its SSE event is read."""
    out = Stream()
    async with client.stream("POST", f"{sim.base_url}/chat/completions", json=body(max_tokens)) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:])["choices"]
            if choices and choices[0]["delta"].get("content"):
                out.times.append(time.monotonic())
                if on_token is not None:
                    on_token(len(out.times))
    return out


def total_rate(streams: list[Stream]) -> float:
    """Tokens per second all streams together received while decoding (each one's first token excluded)."""
    start = min(s.times[0] for s in streams)
    end = max(s.times[-1] for s in streams)
    return sum(len(s.times) - 1 for s in streams) / (end - start)


async def concurrent(sim: Simulator, n: int) -> list[Stream]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=n)) as client:
        streams = await asyncio.gather(*(stream(client, sim) for _ in range(n)))
    assert all(len(s.times) == TOKENS for s in streams)
    return streams


async def test_sixteen_streams_on_capacity_8_share_8_streams_worth_of_tokens(capped: Simulator) -> None:
    streams = await concurrent(capped, 16)
    assert 0.75 * 8 * TPS < total_rate(streams) < 1.25 * 8 * TPS
    # each at half speed, so about twice as long as alone
    assert all(0.75 * 2 * DECODE_S < s.decode_s < 1.25 * 2 * DECODE_S for s in streams)


async def test_without_capacity_sixteen_streams_each_run_at_full_speed(unlimited: Simulator) -> None:
    streams = await concurrent(unlimited, 16)
    assert 0.75 * 16 * TPS < total_rate(streams) < 1.25 * 16 * TPS


async def test_below_capacity_a_stream_is_not_slowed(capped: Simulator) -> None:
    streams = await concurrent(capped, 4)
    assert all(0.8 * DECODE_S < s.decode_s < 1.2 * DECODE_S for s in streams)
    assert 0.75 * 4 * TPS < total_rate(streams) < 1.25 * 4 * TPS


async def test_the_share_follows_streams_as_they_start_and_end(single: Simulator) -> None:
    """Capacity 1: a long stream runs alone, halves its speed while a short one (20 gaps) runs, then speeds up.

    Long: 29 gaps at 50/s + 20 at 25/s = 1.38 s (0.98 s if never slowed, 1.96 s if never sped up again);
    short: 20 gaps at 25/s = 0.8 s (0.4 s alone).
    """
    ten_in = asyncio.Event()

    def on_long_token(count: int) -> None:
        if count == 10:
            ten_in.set()

    async with httpx.AsyncClient(timeout=30) as client:
        long = asyncio.create_task(stream(client, single, on_token=on_long_token))
        await ten_in.wait()
        short = await stream(client, single, max_tokens=21)
        long_stream = await long
    assert 0.85 * 0.8 < short.decode_s < 1.2 * 0.8
    assert 0.85 * 1.38 < long_stream.decode_s < 1.15 * 1.38


async def test_non_streaming_replies_take_their_tokens_time_at_the_shared_rate(single: Simulator) -> None:
    """Two whole replies on capacity 1: 49 gaps each at 25 tokens/s, about 2 s, not the 1 s each takes alone."""

    async def whole(client: httpx.AsyncClient) -> float:
        started = time.monotonic()
        response = await client.post(f"{single.base_url}/chat/completions", json=body(stream=False))
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == TOKENS
        return time.monotonic() - started

    async with httpx.AsyncClient(timeout=30) as client:
        alone = await whole(client)
        both = await asyncio.gather(whole(client), whole(client))
    assert 0.8 * (0.05 + DECODE_S) < alone < 1.2 * (0.05 + DECODE_S)
    assert all(0.85 * (0.05 + 2 * DECODE_S) < t < 1.2 * (0.05 + 2 * DECODE_S) for t in both)


# --------------------------------------------------------------------------- the virtual clock, by hand


class Clock:
    def __init__(self) -> None:
        self.t = 100.0
        self.soon: list[Callable[[], None]] = []

    def __call__(self) -> float:
        return self.t

    def run_soon(self) -> None:
        soon = self.soon[:]
        self.soon.clear()
        for callback in soon:
            callback()


class Member:
    def __init__(self) -> None:
        self.retimed = 0

    def retime(self) -> None:
        self.retimed += 1


def test_virtual_time_runs_at_the_share_and_maps_deadlines_back_to_loop_time() -> None:
    clock = Clock()
    rate = SharedRate(2, clock, clock.soon.append)
    members = [Member() for _ in range(4)]
    for m in members[:2]:
        rate.join(m)
    clock.t += 1.0
    assert rate.now() == pytest.approx(1.0) and rate.speed == 1.0  # at capacity: full speed
    rate.join(members[2])
    rate.join(members[3])
    assert rate.speed == 0.5
    clock.t += 1.0
    assert rate.now() == pytest.approx(1.5)
    assert rate.real_time(2.0) == pytest.approx(clock.t + 1.0)  # half a second of work takes a second
    rate.leave(members[3])
    rate.leave(members[3])  # idempotent
    assert rate.speed == pytest.approx(2 / 3)


def test_timers_are_rearmed_once_per_loop_turn_and_only_when_the_speed_moved_enough() -> None:
    clock = Clock()
    rate = SharedRate(8, clock, clock.soon.append)
    members = [Member() for _ in range(64)]
    for m in members:
        rate.join(m)
    assert len(clock.soon) == 1  # a burst of joins: one re-arm pass
    clock.run_soon()
    assert {m.retimed for m in members} == {1}
    rate.leave(members[0])  # 8/63 vs 8/64: under DRIFT, the timers stay as armed
    assert clock.soon == []
    whole = Member()
    rate.join(whole, exact=True)  # a non-streaming reply is re-armed on every change
    rate.leave(members[1])
    clock.run_soon()
    assert whole.retimed == 1 and members[2].retimed == 1
    for m in members[2:10]:  # 8/63 -> 8/55: more than DRIFT since the last full pass
        rate.leave(m)
    clock.run_soon()
    assert members[10].retimed == 2


def test_due_tolerates_a_timer_armed_within_drift_but_not_one_armed_at_the_old_speed() -> None:
    clock = Clock()
    rate = SharedRate(1, clock, clock.soon.append)
    a, b = Member(), Member()
    start = rate.join(a)
    deadline = start + 0.02  # one gap at 50 tokens/s
    armed_at = rate.real_time(deadline)
    rate.join(b)  # the speed halves before a's timer fires
    clock.t = armed_at
    assert not rate.due(deadline, 0.02)
    clock.t = rate.real_time(deadline) - 0.0005
    assert rate.due(deadline, 0.02)

"""The simulator's Python API and runners: in the caller's loop, a thread, the foreground, a child process."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import openai
import pytest

from agent.settings import SimSettings
from agent.simulator import Simulator, reply_text, running_simulator, simulator_process

FAST = SimSettings(ttft_ms=0, tokens_per_second=5000, reply_tokens=12, jitter=0.2, seed=1, stall_s=0.05)
MESSAGES = [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "second question"}]
USER_TEXTS = ["first question", "second question"]


def client(sim: Simulator) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="sim", max_retries=0, timeout=10)



async def test_simulator_runs_inside_the_callers_event_loop() -> None:
    sim = Simulator(FAST, host="127.0.0.1", port=0)
    await sim.start()
    try:
        assert sim.port != 0 and sim.base_url == f"http://127.0.0.1:{sim.port}/v1"
        reply = await client(sim).chat.completions.create(model="m", messages=MESSAGES)
        assert reply.choices[0].message.content == reply_text(USER_TEXTS, FAST.reply_tokens)
    finally:
        await sim.stop()
    with pytest.raises(openai.APIConnectionError):
        await client(sim).chat.completions.create(model="m", messages=MESSAGES)


async def test_counters_track_requests_and_active_streams() -> None:
    slow = FAST.model_copy(update={"tokens_per_second": 20, "jitter": 0})
    async with Simulator(slow, host="127.0.0.1", port=0) as sim:
        stream = await client(sim).chat.completions.create(model="m", messages=MESSAGES, stream=True)
        await stream.__anext__()
        assert (sim.counters.requests, sim.counters.active_streams, sim.counters.active_requests) == (1, 1, 1)
        await stream.close()
        while sim.counters.active_streams:  # the server learns of the close on its next loop turn
            await asyncio.sleep(0)
        assert sim.counters.client_disconnects == 1 and sim.counters.completed == 0
        assert sim.counters.peak_active_requests == 1


async def test_stop_cuts_streams_in_flight() -> None:
    slow = FAST.model_copy(update={"tokens_per_second": 20, "jitter": 0})
    sim = Simulator(slow, host="127.0.0.1", port=0)
    await sim.start()
    stream = await client(sim).chat.completions.create(model="m", messages=MESSAGES, stream=True)
    await stream.__anext__()
    await sim.stop()
    with pytest.raises(openai.APIConnectionError):
        async for _ in stream:
            pass
    assert sim.counters.active_streams == 0


def test_running_simulator_raises_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError), running_simulator(FAST, port=taken.getsockname()[1]):
            pass


def test_running_simulator_stops_listening_when_the_block_ends() -> None:
    with running_simulator(FAST, host="127.0.0.1", port=0) as sim:
        assert httpx.get(f"{sim.base_url}/models", timeout=5).status_code == 200
        assert any(t.name == "cmw-sim" for t in threading.enumerate())
    assert not any(t.name == "cmw-sim" for t in threading.enumerate())
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{sim.base_url}/models", timeout=5)


def test_simulator_process_serves_from_a_child_that_ends_with_the_block() -> None:
    import multiprocessing

    with simulator_process(FAST.model_copy(update={"host": "127.0.0.1", "port": 0})) as child:
        reply = httpx.post(f"{child.base_url}/chat/completions", json={"model": "m", "messages": MESSAGES}, timeout=5)
        assert reply.json()["choices"][0]["message"]["content"] == reply_text(USER_TEXTS, FAST.reply_tokens)
        assert [p.name for p in multiprocessing.active_children()] == ["cmw-sim"]
    assert multiprocessing.active_children() == []


def test_simulator_process_names_a_bind_failure() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="could not start.*in use"), \
                simulator_process(FAST.model_copy(update={"host": "127.0.0.1", "port": port})):
            pass

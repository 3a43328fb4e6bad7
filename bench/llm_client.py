"""Client CPU per streamed token: langchain-openai vs the openai client it holds vs raw SSE on httpx, and cmw's own.

Usage:  .venv/bin/python bench/llm_client.py [--streams 32] [--tokens 200] [--tps 2000] [--rounds 3]
                                            [--paths langchain,openai,httpx,httpx2,cmw] [--loop uvloop|asyncio]

``cmw`` is the app's path: agent.app.llm.Providers.stream (agent/app/sse.py's decoder with its bounds) on the
httpx2 client ChatOpenAI holds; ``httpx2`` is the bare line loop on the same HTTP library.

The simulator (`cmw sim`) runs in a child process so only the client's CPU is counted
(time.process_time of this process); the simulator's own CPU is read from the child with psutil
and shown too. Each path runs --streams concurrent streams of --tokens tokens, --rounds times after
one warm-up round (imports, connection pool); the table shows the median round. At a high --tps
several tokens reach the client per read, which is the cheapest case for the client; at a low one
(e.g. --tps 50 --streams 128) every token is its own write and read, as in a real deployment.
Figures are per content chunk but include each path's per-request cost spread over --tokens
(httpx 0.28's connection pool scans every connection for every request: quadratic in --streams).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil

MESSAGES = [{"role": "user", "content": "benchmark the client"}]
MODEL = "cmw-sim"
ROUND_TIMEOUT_S = 120.0


def start_simulator(tokens: int, tps: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmw_cli.main", "sim", "--port", "0", "--ttft-ms", "0", "--tps", str(tps),
         "--reply-tokens", str(tokens), "--set", "sim.jitter=0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"http://\S+/v1", line)
    if not match:
        proc.kill()
        sys.exit(f"the simulator did not start: {line}{proc.stdout.read()}")
    return proc, match.group(0)


def make_paths(base_url: str) -> dict[str, Callable[[], Awaitable[int]]]:
    """Each path streams one reply and returns the number of content chunks it saw."""
    import httpx
    import httpx2
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=base_url, api_key="sim", model=MODEL, max_retries=0, timeout=60)
    # ChatOpenAI builds its clients lazily; async_client is root_async_client.chat.completions.
    completions = llm.async_client
    # Keep every connection alive between rounds (httpx keeps 20 by default). httpx2 is the fork the
    # openai client is built on; the same SSE loop on both shows what the HTTP layer costs.
    http = httpx.AsyncClient(base_url=base_url, timeout=60,
                             limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000))
    http2 = httpx2.AsyncClient(base_url=base_url, timeout=60,
                               limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=1000))

    async def langchain() -> int:
        return sum([1 async for chunk in llm.astream(MESSAGES) if chunk.content])

    async def openai_client() -> int:
        stream = await completions.create(model=MODEL, messages=MESSAGES, stream=True)
        return sum([1 async for chunk in stream if chunk.choices and chunk.choices[0].delta.content])

    def raw_sse(client: Any) -> Callable[[], Awaitable[int]]:
        async def stream() -> int:
            n = 0
            body = {"model": MODEL, "messages": MESSAGES, "stream": True}
            async with client.stream("POST", "/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choices = json.loads(line[6:])["choices"]
                    if choices and choices[0]["delta"].get("content"):
                        n += 1
            return n

        return stream

    from agent.app.llm import Providers
    from agent.settings import Settings

    providers = Providers(Settings(llm={"provider": "custom", "base_url": base_url, "max_retries": 0,
                                        "timeout_s": 60}))
    app_messages = [{"role": "system", "content": "You are a benchmark."}, *MESSAGES]

    async def cmw() -> int:
        return sum([1 async for delta in providers.stream("custom", MODEL, app_messages) if delta.text])

    return {"langchain": langchain, "openai": openai_client, "httpx": raw_sse(http), "httpx2": raw_sse(http2),
            "cmw": cmw}


async def one_round(fn: Callable[[], Awaitable[int]], streams: int, server: psutil.Process) -> dict[str, float]:
    server_before = sum(server.cpu_times()[:2])
    cpu, wall = time.process_time(), time.perf_counter()
    counts = await asyncio.wait_for(asyncio.gather(*(fn() for _ in range(streams))), ROUND_TIMEOUT_S)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    server_cpu = sum(server.cpu_times()[:2]) - server_before
    chunks = sum(counts)
    return {"client_ms": 1000 * cpu / chunks, "server_ms": 1000 * server_cpu / chunks, "wall_s": wall, "chunks": chunks}


async def run(args: argparse.Namespace, base_url: str, server: psutil.Process) -> list[tuple[str, dict[str, float]]]:
    paths = make_paths(base_url)
    rows = []
    for name in args.paths.split(","):
        fn = paths[name]
        await one_round(fn, args.streams, server)  # warm-up: imports, connection pool, first-call caches
        rounds = [await one_round(fn, args.streams, server) for _ in range(args.rounds)]
        median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        expected = args.streams * args.tokens
        if median["chunks"] != expected:
            print(f"warning: {name} saw {median['chunks']:.0f} content chunks, expected {expected}", file=sys.stderr)
        rows.append((name, median))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--tps", type=float, default=2000.0, help="simulator tokens/s per stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paths", default="langchain,openai,httpx,httpx2,cmw")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="client event loop (uvicorn runs the app on uvloop)")
    args = parser.parse_args()

    proc, base_url = start_simulator(args.tokens, args.tps)
    try:
        factory: Any = asyncio.new_event_loop
        if args.loop == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            rows = runner.run(run(args, base_url, psutil.Process(proc.pid)))
    finally:
        proc.terminate()
        proc.wait(10)

    print(f"{args.streams} streams x {args.tokens} tokens at {args.tps:g} tokens/s, ttft 0, {args.loop} client loop; "
          f"median of {args.rounds} rounds; a round takes {(args.tokens - 1) / args.tps:.2f} s if CPU never lags")
    print(f"{'path':<10} {'client ms/chunk':>16} {'sim ms/chunk':>13} {'round wall s':>13}")
    for name, m in rows:
        print(f"{name:<10} {m['client_ms']:>16.4f} {m['server_ms']:>13.4f} {m['wall_s']:>13.2f}")


if __name__ == "__main__":
    main()

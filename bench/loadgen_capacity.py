"""How many concurrent users one load-generator process drives, and at what CPU.

Starts a trivial server that speaks Gradio's queue protocol (sse_v3: join, then an event stream with
``process_starts``, streamed ``process_generating`` diffs and ``process_completed``) in a subprocess, so the
generator, not Gradio, is what is measured; then runs the real engine (agent.loadtest.engine) at rising user
counts and prints, per level: turns/s, the generator's CPU share and CPU per turn, event-loop lag, the turn
latency against the nominal reply time, and the server process's CPU share.

    .venv/bin/python bench/loadgen_capacity.py                      # 64,128,256,512 users
    .venv/bin/python bench/loadgen_capacity.py --users 512 --turns 5 --think-time 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from agent.loadtest.engine import run_async, run_workload
from agent.loadtest.metrics import describe
from agent.loadtest.results import LatencyStats, TurnRecord
from agent.loadtest.spawn import HOST, free_port, run_server
from agent.loadtest.workload import Workload

# --------------------------------------------------------------------------- the trivial server


def build_server(tokens: int, interval: float) -> Any:
    """A Starlette app with Gradio's /config, /gradio_api/queue/join and /gradio_api/queue/data."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    config = {
        "version": "6.31.0-bench", "protocol": "sse_v3", "api_prefix": "/gradio_api",
        "components": [{"id": 1, "type": "textbox", "props": {}}, {"id": 2, "type": "chatbot", "props": {"value": []}}],
        "dependencies": [{"id": 0, "api_name": "chat", "inputs": [1], "outputs": [2], "targets": [[1, "submit"]]}],
    }
    sessions: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
    histories: dict[str, list[dict[str, Any]]] = {}

    async def produce(session: str, event_id: str, message: str) -> None:
        out = sessions[session]
        history = histories.setdefault(session, [])
        history.append({"role": "user", "content": message})
        await out.put({"msg": "estimation", "event_id": event_id, "rank": 0, "queue_size": 1})
        await out.put({"msg": "process_starts", "event_id": event_id})
        reply = {"role": "assistant", "content": ""}
        history.append(reply)
        for i in range(tokens):
            await asyncio.sleep(interval)
            word = f" w{i}"
            reply["content"] += word
            data = [history] if i == 0 else [[["append", [len(history) - 1, "content"], word]]]
            await out.put({"msg": "process_generating", "event_id": event_id, "success": True,
                           "output": {"data": data}})
        await out.put({"msg": "process_completed", "event_id": event_id, "success": True,
                       "output": {"data": [history]}})
        await out.put(None)

    async def join(request: Request) -> JSONResponse:
        body = await request.json()
        session, event_id = body["session_hash"], uuid.uuid4().hex
        sessions[session] = asyncio.Queue()
        asyncio.get_running_loop().create_task(produce(session, event_id, body["data"][0]))
        return JSONResponse({"event_id": event_id})

    async def data(request: Request) -> StreamingResponse:
        queue = sessions[request.query_params["session_hash"]]

        async def stream() -> AsyncIterator[bytes]:
            while (message := await queue.get()) is not None:
                yield f"data: {json.dumps(message)}\n\n".encode()
            yield b'data: {"msg": "close_stream", "event_id": null}\n\n'

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def cfg(request: Request) -> JSONResponse:
        return JSONResponse(config)

    async def root(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[
        Route("/", root), Route("/config", cfg), Route("/gradio_api/queue/join", join, methods=["POST"]),
        Route("/gradio_api/queue/data", data),
    ])


def serve(port: int, tokens: int, interval: float) -> None:
    import uvicorn

    uvicorn.run(build_server(tokens, interval), host=HOST, port=port, log_level="warning", loop="uvloop",
                http="httptools", backlog=4096)


# --------------------------------------------------------------------------- the measurement


def measure(url: str, users: int, args: argparse.Namespace, server: psutil.Process) -> dict[str, Any]:
    workload = Workload(users=users, turns=args.turns, think_time=args.think_time, ramp_up=args.ramp_up,
                        duration=600, timeout=120, max_requests=users * args.turns, prime=1)
    server.cpu_percent(None)
    wall = time.perf_counter()
    run = run_async(run_workload(url, workload))
    wall = time.perf_counter() - wall
    server_cpu = server.cpu_percent(None) / 100
    done = [t for t in run.turns if t.error is None]
    gen = run.generator
    cpu_s = gen.cpu_share * run.duration_s
    service = args.tokens * args.interval
    return {
        "users": users,
        "turns": len(done),
        "errors": len(run.turns) - len(done),
        "turns_per_s": len(done) / run.duration_s,
        "gen_cpu": gen.cpu_share,
        "cpu_ms_per_turn": 1000 * cpu_s / max(len(done), 1),
        "lag_p99_ms": gen.loop_lag_ms["p99"],
        "lag_max_ms": gen.loop_lag_ms["max"],
        "e2e_p50": _e2e(done).p50,
        "e2e_p99": _e2e(done).p99,
        "nominal": service,
        "server_cpu": server_cpu,
        "inconclusive": gen.inconclusive,
        "wall_s": wall,
    }


def _e2e(turns: list[TurnRecord]) -> LatencyStats:
    return describe(t.e2e for t in turns if t.e2e is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="64,128,256,512", help="comma-separated user counts")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--think-time", type=float, default=0.0)
    parser.add_argument("--ramp-up", type=float, default=1.0)
    parser.add_argument("--tokens", type=int, default=20, help="streamed updates per reply")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between updates (cmw coalesces 100 ms)")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.tokens, args.interval)
        return
    port = free_port()
    command = [sys.executable, __file__, "--serve", str(port), "--tokens", str(args.tokens),
               "--interval", str(args.interval)]
    console = Console(width=180)
    rows = []
    with run_server(command, f"http://{HOST}:{port}", name="bench server") as server:
        proc = psutil.Process(server.process.pid)
        for users in (int(u) for u in args.users.split(",")):
            rows.append(measure(server.url, users, args, proc))
            console.print(f"{users} users done", style="dim")
    table = Table(title=f"one generator process · {args.tokens} updates × {args.interval:g}s per reply · "
                        f"{args.turns} turns · think {args.think_time:g}s · {psutil.cpu_count()} CPUs")
    for name in ("users", "turns ok/err", "turns/s", "gen CPU", "CPU ms/turn", "lag p99", "lag max",
                 "e2e p50 / p99 (nominal)", "server CPU", "verdict"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(
            str(r["users"]), f"{r['turns']}/{r['errors']}", f"{r['turns_per_s']:.1f}", f"{r['gen_cpu']:.0%}",
            f"{r['cpu_ms_per_turn']:.2f}", f"{r['lag_p99_ms']:.1f} ms", f"{r['lag_max_ms']:.1f} ms",
            f"{r['e2e_p50']:.2f} / {r['e2e_p99']:.2f} ({r['nominal']:.2f}) s", f"{r['server_cpu']:.0%}",
            "inconclusive" if r["inconclusive"] else "ok",
        )
    console.print(table)


if __name__ == "__main__":
    main()

"""Your own app, two ways: the same streaming ChatInterface (examples/chat_app.py) run as `python app.py` and as
`cmw serve app.py`, with the same concurrency limit C and C closed-loop users (U = C).

One standalone simulator (50 tokens at 50 tokens/s, no time to first token: a nominal 1.0 s reply) serves both.
`python app.py` is launched with ``max_threads`` above the limit, so Gradio's default of 40 does not cap it;
`cmw serve app.py` gets the same limit as ``queue.default_concurrency_limit``. The load test finds the
ChatInterface's endpoint itself (no --api-name).

    .venv/bin/python bench/serve_app.py --limits 16,64 --runs 3
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from concurrency import NOMINAL_S, Point, run_point, simulator  # noqa: E402

from agent.loadtest.spawn import free_port  # noqa: E402

APP = HERE.parent / "examples" / "chat_app.py"


def plain_command(port: int, limit: int) -> tuple[list[str], dict[str, str]]:
    env = {"CHAT_APP_PORT": str(port), "CHAT_APP_LIMIT": str(limit), "CHAT_APP_THREADS": str(max(100, 2 * limit))}
    return [sys.executable, str(APP)], env


def cmw_command(port: int, limit: int) -> tuple[list[str], dict[str, str]]:
    sets = {"queue.default_concurrency_limit": limit, "queue.max_size": max(100, 2 * limit),
            "server.max_threads": max(100, 2 * limit)}
    cmd = [sys.executable, "-m", "cmw_cli.main", "serve", str(APP), "--host", "127.0.0.1", "--port", str(port)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", default="16,64")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    limits = [int(x) for x in args.limits.split(",")]
    points: list[tuple[int, Point]] = []
    with simulator() as (sim_url, sim_proc):
        os.environ["CHAT_APP_LLM_URL"] = sim_url  # both apps read it (run_point passes the environment on)
        for run in range(1, args.runs + 1):
            for limit in limits:
                for name, make in (("python app.py", plain_command), ("cmw serve app.py", cmw_command)):
                    port = free_port()
                    command, env = make(port, limit)
                    os.environ.update(env)
                    point = run_point(name, command, port, limit, args.turns, sim_proc, NOMINAL_S)
                    points.append((run, point))
                    print(f"  run {run} {name:17} C={limit:<3} {point.rps:6.2f} turns/s  errors {point.errors} "
                          f"violations {point.violations}", file=sys.stderr)
    print("| run | app | C | turns/s | efficiency | TTFT p50 ms | TTFT p95 ms | server CPU | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run, p in points:
        p50 = "-" if p.ttft_p50 is None else f"{p.ttft_p50 * 1000:.0f}"
        p95 = "-" if p.ttft_p95 is None else f"{p.ttft_p95 * 1000:.0f}"
        print(f"| {run} | {p.app} | {p.limit} | {p.rps:.2f} | {p.efficiency:.2f} | {p50} | {p95} | "
              f"{p.server_cpu:.2f} | {p.errors + p.violations} |")
    for limit in limits:
        ratios = []
        for run in range(1, args.runs + 1):
            by = {p.app: p for r, p in points if r == run and p.limit == limit}
            ratios.append(by["cmw serve app.py"].rps / max(by["python app.py"].rps, 1e-9))
        print(f"C={limit}: cmw serve ÷ python app.py = " + ", ".join(f"{r:.2f}×" for r in ratios))


if __name__ == "__main__":
    main()

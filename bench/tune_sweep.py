"""`cmw tune` against a brute-force sweep of every chat limit from 1 to 32, on the same saturating backend.

The embedded simulator with ``sim.capacity=8`` (20 tokens at 40 tokens/s: 0.5 s a reply, slower past 8 streams)
stands in for a batching inference server. The sweep measures every limit exactly as tune measures a candidate
(one user per slot, closed loop), judges each by the same default SLOs (from one user's figures), and takes the
best throughput that meets them. Then `cmw tune --spawn` runs on its own server. Printed: both picks, tune's
throughput as a share of the sweep's best, and the time each took.

    .venv/bin/python bench/tune_sweep.py [--max-limit 32] [--turns 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.loadtest.spawn import spawn_server  # noqa: E402
from agent.tune.runner import LiveServer, TuneRequest, measure_limit, measure_one_user  # noqa: E402

BACKEND = ["sim.capacity=8", "sim.tokens_per_second=40", "sim.reply_tokens=20", "sim.ttft_ms=50", "sim.jitter=0"]


def sweep(max_limit: int, turns: int) -> tuple[list[dict[str, object]], float, list[str]]:
    request = TuneRequest(spawn=True, turns=turns, max_limit=max_limit)
    started = time.monotonic()
    rows: list[dict[str, object]] = []
    with spawn_server("balanced", [*BACKEND, f"server.max_threads={max(64, max_limit)}",
                                   f"queue.max_size={max(100, 2 * max_limit)}"]) as spawned:
        server = LiveServer(spawned.url, spawned.admin_token)
        deadline = time.monotonic() + 3600
        baseline, _, _ = measure_one_user(server, request, deadline)
        slos = baseline.default_slos()
        for limit in range(1, max_limit + 1):
            m = measure_limit(server, "chat", limit, 1, request, slos, deadline)
            rows.append(m.to_dict())
            print(f"  sweep limit {limit:>2}: {m.throughput_rps:6.2f} turns/s  e2e p95 {m.e2e_p95}  "
                  f"{'hold' if m.slo_passed else 'breached'}", file=sys.stderr)
        server.close()
    return rows, time.monotonic() - started, slos


def tuned(max_limit: int, turns: int) -> tuple[dict[str, object], float]:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        cmd = [sys.executable, "-m", "cmw_cli.main", "tune", "--spawn", "-p", "balanced", "--max-limit",
               str(max_limit), "--turns", str(turns), "--budget", "3600", "--out", f"{tmp}/tuned.toml", "--json"]
        for pair in BACKEND:
            cmd += ["--set", pair]
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"cmw tune failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-limit", type=int, default=32)
    parser.add_argument("--turns", type=int, default=2)
    args = parser.parse_args()
    rows, sweep_s, slos = sweep(args.max_limit, args.turns)
    passing = [r for r in rows if r["slo_passed"]]
    best = max(passing, key=lambda r: float(r["throughput_rps"]))  # type: ignore[arg-type]
    doc, tune_s = tuned(args.max_limit, args.turns)
    chosen = doc["chosen"]["limit"]  # type: ignore[index]
    at_chosen = next(r for r in rows if r["limit"] == chosen)
    share = float(at_chosen["throughput_rps"]) / float(best["throughput_rps"])  # type: ignore[arg-type]
    measured = sorted({m["limit"] for s in doc["searches"] for m in s["measurements"]})  # type: ignore[index]
    print(f"SLOs (from one user, sweep): {', '.join(slos)}")
    print(f"sweep 1..{args.max_limit}: best SLO-meeting limit {best['limit']} at {best['throughput_rps']:.2f} "
          f"turns/s; {sweep_s:.0f} s")
    print(f"cmw tune: limit {chosen} (measured {measured}); the sweep measured {at_chosen['throughput_rps']:.2f} "
          f"turns/s there = {share:.0%} of the best; {tune_s:.0f} s = {tune_s / sweep_s:.0%} of the sweep's time")


if __name__ == "__main__":
    main()

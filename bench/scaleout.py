"""Scale-out: the same closed-loop load against `cmw serve --workers 1` and `--workers 2`, in one run.

One standalone simulator (`cmw sim`, 50 tokens at 50 tokens/s) serves every worker through `--llm`, one
redis-server holds the sessions, and `cmw loadtest` drives C closed-loop users (no think time). Chat
limits are raised to C per worker so the queue limits never cap throughput: what is measured is what
the processes can serve. Prints per run: turns/s, tokens/s, e2e p50/p95, errors, isolation violations
and the CPU seconds taken by the load generator, the simulator, the app processes and HAProxy; then the
ratio of the two throughputs (target on a 2-core machine: >= 1.4x).

    .venv/bin/python bench/scaleout.py                    # C=64, 4 turns each, workers 1,2,2,1
    .venv/bin/python bench/scaleout.py --users 64 --turns 6 --workers 1,2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from agent.loadtest.spawn import sigterm_as_interrupt

CMW = [sys.executable, "-m", "cmw_cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=3).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not answer {url} within {timeout:g} s")


@contextlib.contextmanager
def process(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` for the block; SIGTERM to the bench stops it as Ctrl-C does (no orphans)."""
    with sigterm_as_interrupt():
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(40)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user+system) of a process and its live children, split into app and haproxy."""
    out = {"app": 0.0, "haproxy": 0.0}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            out["haproxy" if "haproxy" in proc.name() else "app"] += times.user + times.system
    return out


def busy_cpu() -> float:
    """CPU seconds the whole machine spent busy (every process, ours and others')."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + getattr(times, "steal", 0.0)


def cpu_of(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def run_level(workers: int, args: argparse.Namespace, sim_url: str, sim_pid: int, redis_url: str,
              tmp: Path) -> dict[str, Any]:
    port = free_port()
    state = tmp / f"state-{workers}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMW_", "GRADIO_"))}
    env.update({"CMW_SERVER__STATE_DIR": str(state), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    cmd = [*CMW, "serve", "-p", "high-performance", "--host", "127.0.0.1", "--port", str(port), "--llm", sim_url,
           "--workers", str(workers), "--set", f"sessions.store={redis_url}",
           "--set", f"events.chat_concurrency_limit={args.users}", "--set", f"queue.max_size={args.users * 4}",
           "--set", f"server.max_threads={max(200, args.users * 2)}"]
    url = f"http://127.0.0.1:{port}"
    with process(cmd, tmp / f"serve-{workers}.log", env) as serve:
        wait_for(f"{url}/config", serve, f"cmw serve --workers {workers}")
        token = (state / "admin.token").read_text().strip()
        out = tmp / f"loadtest-{workers}.json"
        load = [*CMW, "loadtest", "--url", url, "--users", str(args.users), "--turns", str(args.turns),
                "--warmup-turns", "1", "--duration", str(args.duration), "--timeout", "60", "--token", token,
                "--out", str(out)]
        app_before, sim_before = tree_cpu(serve.pid), cpu_of(sim_pid)
        gen_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy_before = busy_cpu()
        started = time.monotonic()
        subprocess.run(load, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
        wall = time.monotonic() - started
        gen_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        app_after, sim_after = tree_cpu(serve.pid), cpu_of(sim_pid)
        busy = busy_cpu() - busy_before
        with contextlib.suppress(httpx.HTTPError):
            queue = httpx.get(f"{url}/admin/api/queue", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            per_worker = [w.get("samples", 0) for w in queue.json().get("workers", [])]
    report = json.loads(out.read_text())
    summary = report["summary"]
    return {
        "workers": workers,
        "throughput_rps": summary["throughput_rps"],
        "tokens_per_s": summary["tokens_per_s"],
        "e2e_p50": (summary.get("e2e") or {}).get("p50"),
        "e2e_p95": (summary.get("e2e") or {}).get("p95"),
        "turns": summary["turns_completed"],
        "errors": summary["errors"],
        "isolation_violations": summary["isolation_violations"],
        "wall_s": wall,
        "cpu_generator_s": (gen_after.ru_utime + gen_after.ru_stime) - (gen_before.ru_utime + gen_before.ru_stime),
        "cpu_simulator_s": sim_after - sim_before,
        "cpu_app_s": app_after["app"] - app_before["app"],
        "cpu_haproxy_s": app_after["haproxy"] - app_before["haproxy"],
        "turns_per_worker": per_worker if workers > 1 else [],
        "cpu_busy_s": busy,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts, e.g. 1,2")
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--tps", type=float, default=50)
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs per worker count, interleaved 1,2,2,1,... (the median is compared)")
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    levels = [int(x) for x in re.split(r"[ ,]+", args.workers.strip()) if x]
    with tempfile.TemporaryDirectory(prefix="cmw-scaleout-") as name:
        tmp = Path(name)
        redis_port, sim_port = free_port(), free_port()
        redis_cmd = [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir", name]
        sim_cmd = [*CMW, "sim", "--port", str(sim_port), "--tps", str(args.tps), "--reply-tokens", str(args.tokens)]
        with process(redis_cmd, tmp / "redis.log") as _redis, process(sim_cmd, tmp / "sim.log") as sim:
            wait_for(f"http://127.0.0.1:{sim_port}/v1/models", sim, "cmw sim")
            results = []
            order = [lv for i in range(args.repeat) for lv in (levels if i % 2 == 0 else levels[::-1])]
            for workers in order:
                print(f"workers={workers}: {args.users} users x {args.turns} turns ...", file=sys.stderr, flush=True)
                results.append(run_level(workers, args, f"http://127.0.0.1:{sim_port}/v1", sim.pid,
                                         f"redis://127.0.0.1:{redis_port}/0", tmp))
    print_table(results, args)
    return 0


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"C={args.users} closed-loop users, {args.turns} turns each (first left out), simulator "
          f"{args.tokens} tokens at {args.tps:g} tokens/s; {psutil.cpu_count()} cores")
    head = (f"{'workers':>7} {'turns/s':>8} {'tok/s':>7} {'e2e p50':>8} {'e2e p95':>8} {'turns':>6} {'errors':>6} "
            f"{'isol.':>5} {'wall s':>6} {'cpu gen':>7} {'cpu sim':>7} {'cpu app':>7} {'cpu hap':>7}  per worker")
    print(head)
    for r in results:
        errors = sum(r["errors"].values()) if isinstance(r["errors"], dict) else r["errors"]
        print(f"{r['workers']:>7} {r['throughput_rps']:>8.2f} {r['tokens_per_s']:>7.0f} {fmt(r['e2e_p50']):>8} "
              f"{fmt(r['e2e_p95']):>8} {r['turns']:>6} {errors:>6} {r['isolation_violations']:>5} "
              f"{r['wall_s']:>6.1f} {r['cpu_generator_s']:>7.1f} {r['cpu_simulator_s']:>7.1f} {r['cpu_app_s']:>7.1f} "
              f"{r['cpu_haproxy_s']:>7.1f}  {r['turns_per_worker']}")
    medians = {w: statistics.median(r["throughput_rps"] for r in results if r["workers"] == w)
               for w in sorted({r["workers"] for r in results})}
    print("median turns/s: " + ", ".join(f"workers={w}: {v:.2f}" for w, v in medians.items()))
    if medians.get(1) and 2 in medians:
        ratio = medians[2] / medians[1]
        verdict = "meets" if ratio >= 1.4 else "below"
        print(f"throughput ratio workers=2 / workers=1 (medians): {ratio:.2f}x ({verdict} the 1.4x target)")
    others = [r["cpu_busy_s"] - r["cpu_generator_s"] - r["cpu_simulator_s"] - r["cpu_app_s"] - r["cpu_haproxy_s"]
              for r in results]
    print("CPU seconds other processes on the machine took during each run (noise): "
          + ", ".join(f"{max(0.0, o):.1f}" for o in others))


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


if __name__ == "__main__":
    sys.exit(main())

"""What the operator dashboard costs the chat: server CPU per turn of a C=64 load with and without a viewer.

One standalone simulator (`cmw sim`: 50 tokens at 50 tokens/s, TTFT 0, no jitter) serves every run. Each run
starts `cmw serve` with chat limit 64 and runs `cmw loadtest --users 64 --turns 3` against it (the way
bench/concurrency.py does), reading the server's CPU (psutil, the process and its children) over the load.
In a "viewer" run a headless client polls the dashboard as its page does while the load runs: it logs in with
the admin token, keeps Gradio's heartbeat stream open, and every 2 s (the page's gr.Timer) runs the refresh
event over Gradio's queue protocol with the cookie (join, then the event's SSE stream to its end). The two
kinds of run alternate, three of each. Before each load the server idles for ``--idle`` seconds (the viewer
polling in viewer runs), which gives the CPU of one refresh on its own.

    .venv/bin/python bench/dashboard_cost.py                 # 3 + 3 runs, ~2 minutes
    .venv/bin/python bench/dashboard_cost.py --runs 5 --turns 6

Printed: per run the turns, server CPU seconds, CPU ms per turn and refreshes done; then the mean CPU per turn
of each kind and their ratio (the target is at most 1.05), and the server CPU per refresh at idle.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from concurrency import _cpu, cmw_command, simulator  # bench/concurrency.py: the same simulator and server

from agent.loadtest.spawn import free_port, run_server

USERS = 64
REFRESH_S = 2.0  # agent/app/dashboard.py REFRESH_S: the page's timer
MOUNT = "/admin/dashboard"


@dataclass
class Run:
    viewer: bool
    turns: int
    cpu_s: float
    wall_s: float
    refreshes: int
    idle_cpu_s: float
    idle_refreshes: int
    errors: int

    @property
    def ms_per_turn(self) -> float:
        return self.cpu_s / self.turns * 1000 if self.turns else float("nan")


class Viewer:
    """A headless dashboard page: logged in, heartbeat open, the refresh event every REFRESH_S seconds."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=30, headers={"Origin": url})
        response = self.client.post("/admin/login", data={"token": token})
        if response.status_code != 303:
            raise SystemExit(f"dashboard login failed: HTTP {response.status_code}")
        config = self.client.get(f"{MOUNT}/config").json()
        self.fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "refresh")
        self.session_hash = secrets.token_hex(6)
        self.refreshes = 0
        self.failures = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, daemon=True),
                         threading.Thread(target=self._heartbeat, daemon=True)]

    def __enter__(self) -> Viewer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._threads[0].join(30)
        self.client.close()  # ends the heartbeat stream

    def _heartbeat(self) -> None:
        try:
            with self.client.stream("GET", f"{MOUNT}/gradio_api/heartbeat/{self.session_hash}") as stream:
                for _ in stream.iter_lines():
                    if self._stop.is_set():
                        return
        except (httpx.HTTPError, RuntimeError):
            return  # the client closed under it

    def _poll(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self._refresh()
                self.refreshes += 1
            except (httpx.HTTPError, AssertionError):
                self.failures += 1
            next_at += REFRESH_S
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _refresh(self) -> None:
        joined = self.client.post(f"{MOUNT}/gradio_api/queue/join", json={
            "data": ["chat", "all", None], "fn_index": self.fn_index, "session_hash": self.session_hash,
            "event_data": None, "trigger_id": None})
        assert joined.status_code == 200, joined.text
        with self.client.stream("GET", f"{MOUNT}/gradio_api/queue/data",
                                params={"session_hash": self.session_hash}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and '"process_completed"' in line:
                    assert json.loads(line[5:])["success"]
                    return
        raise AssertionError("the refresh ended without a result")


def one_run(sim_url: str, viewer: bool, turns: int, idle_s: float) -> Run:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = secrets.token_urlsafe(32)
    report = Path("/tmp") / f"cmw-dashboard-cost-{port}.json"
    env = {"CMW_SERVER__STATE_DIR": str(Path("/tmp") / f"cmw-dashboard-cost-{port}"), "CMW_SESSIONS__STORE": "memory",
           "CMW_ADMIN__TOKEN": token}
    load = [sys.executable, "-m", "cmw_cli.main", "loadtest", "--url", url, "--users", str(USERS), "--turns",
            str(turns), "--chat-limit", str(USERS), "--service-time", "1.0", "--out", str(report), "-q",
            "--timeout", "60", "--duration", "300"]
    with run_server(cmw_command(port, sim_url, USERS), url, env=env, name="cmw serve") as server:
        proc = psutil.Process(server.process.pid)
        poller = Viewer(url, token) if viewer else None
        with poller if poller is not None else contextlib.nullcontext():
            while poller is not None and poller.refreshes + poller.failures < 2:  # its first look: imports, config
                time.sleep(0.1)

            def seen() -> int:
                return poller.refreshes if poller is not None else 0

            idle0, r0 = _cpu(proc), seen()
            time.sleep(idle_s)  # the idle figure is the CPU over a fixed span
            idle_cpu, idle_refreshes = _cpu(proc) - idle0, seen() - r0
            cpu0, r0, t0 = _cpu(proc), seen(), time.perf_counter()
            done = subprocess.run(load, capture_output=True, text=True, env={**os.environ, "CMW_ADMIN_TOKEN": ""})
            wall = time.perf_counter() - t0
            cpu, refreshes = _cpu(proc) - cpu0, seen() - r0
            failures = poller.failures if poller is not None else 0
    try:
        summary = json.loads(report.read_text())["summary"]
    except (OSError, json.JSONDecodeError):
        raise SystemExit(f"loadtest failed ({done.returncode}): {done.stderr[-2000:]}") from None
    finally:
        report.unlink(missing_ok=True)
        shutil.rmtree(env["CMW_SERVER__STATE_DIR"], ignore_errors=True)
    return Run(viewer, int(summary["turns_completed"]), cpu, wall, refreshes, idle_cpu, idle_refreshes,
               sum(summary["errors"].values()) + failures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind (alternating)")
    parser.add_argument("--turns", type=int, default=3, help="turns per user")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle before each load")
    args = parser.parse_args()
    runs: list[Run] = []
    with simulator() as (sim_url, _sim):
        for i in range(args.runs):
            for viewer in (False, True):
                run = one_run(sim_url, viewer, args.turns, args.idle)
                runs.append(run)
                print(f"  run {i + 1} {'viewer' if viewer else 'no viewer':9} {run.turns} turns, "
                      f"{run.ms_per_turn:.2f} ms CPU/turn, {run.refreshes} refreshes", file=sys.stderr)
    print(f"\nC={USERS}, --turns {args.turns}: server CPU per turn without and with a dashboard viewer polling every "
          f"{REFRESH_S:g} s")
    print("| run | viewer | turns | wall s | server CPU s | CPU ms/turn | refreshes | idle CPU s | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, run in enumerate(runs):
        print(f"| {n // 2 + 1} | {'yes' if run.viewer else 'no'} | {run.turns} | {run.wall_s:.1f} | {run.cpu_s:.2f} | "
              f"{run.ms_per_turn:.2f} | {run.refreshes} | {run.idle_cpu_s:.3f} | {run.errors} |")
    without = [r.ms_per_turn for r in runs if not r.viewer]
    with_viewer = [r.ms_per_turn for r in runs if r.viewer]
    ratio = statistics.mean(with_viewer) / statistics.mean(without)
    print(f"\nCPU per turn: {statistics.mean(without):.2f} ms without a viewer (sd {statistics.pstdev(without):.2f}), "
          f"{statistics.mean(with_viewer):.2f} ms with one (sd {statistics.pstdev(with_viewer):.2f}): "
          f"ratio {ratio:.3f} ({(ratio - 1) * 100:+.1f} %; target ≤ +5 %)")
    idle_without = statistics.mean(r.idle_cpu_s for r in runs if not r.viewer)
    viewers = [r for r in runs if r.viewer and r.idle_refreshes]
    if viewers:
        per_refresh = statistics.mean((r.idle_cpu_s - idle_without) / r.idle_refreshes for r in viewers)
        print(f"At idle ({args.idle:g} s): {idle_without:.3f} s server CPU without a viewer; one refresh costs "
              f"{per_refresh * 1000:.1f} ms of server CPU ({per_refresh / REFRESH_S * 100:.2f} % of a core at the "
              f"page's rate)")


if __name__ == "__main__":
    main()

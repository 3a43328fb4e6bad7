"""Memory under session churn: 10,000 sessions through the real queue protocol, then let them expire.

Starts ``cmw serve`` (short ``sessions.idle_ttl_s``, a cap above the session count, a one-token simulator
reply), warms it up with a few hundred sessions and waits until they expired, then creates ``--sessions``
sessions — one chat turn each, over Gradio's queue protocol with bounded concurrency (agent.loadtest's
client, as ``cmw loadtest`` speaks it) — and waits until the sweeper has ended them all. It prints the
server's RSS before, at the peak (every session alive and idle) and after, and the bytes each idle session
costs: (RSS at peak - RSS before) / sessions alive at the peak.

Targets: RSS after within 10% of RSS before; at most 20 KB per idle session.

Measured 2026-11-27 17:22 (2 shared cores, high-performance, memory store, --ttl 420, 10,000 sessions,
91 turns/s): before 295.5 MB, peak 318.1 MB with 10,000 alive, after 318.7 MB (+7.9%), 2,367 B/session.
Earlier the same day: +19.6% after and 7.2 KB/session. What closed the gap: Gradio's per-session queue
entries (a set of event ids per hash ever seen, a ~3 KB message queue in an LRU of 2,000) are dropped
once cmw ends the session (agent/app/queue.py forget_ended_sessions); Gradio's per-session copy of every
block's config is built lazily (agent/app/gradio_compat.py); the per-session stats and log are bounded lists,
not deques (760 B each, empty). Freed pages mostly stay with the process (CPython arenas, glibc heap),
so what matters is how much a session allocates in the first place.

    .venv/bin/python bench/session_churn.py                      # 10,000 sessions, memory store
    .venv/bin/python bench/session_churn.py --store sqlite --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from agent.loadtest.connection import Connection, Origin  # noqa: E402
from agent.loadtest.protocol import Endpoint, discover, run_turn  # noqa: E402
from agent.loadtest.spawn import SpawnedServer, spawn_server  # noqa: E402

TARGET_RETURN = 0.10  # RSS after may exceed RSS before by at most this share
TARGET_BYTES_PER_SESSION = 20 * 1024
# Gradio keeps bounded per-session caches (an LRU of 2,000 message queues, SessionStates up to
# server.max_threads): a warm-up beyond that fills them, so "before" is the server's steady state.
WARMUP_SESSIONS = 2500


def rss(process: psutil.Process) -> int:
    """Resident memory of the server and anything it started."""
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total


class PeakSampler:
    """Samples RSS in a thread while sessions are being created; the highest figure seen."""

    def __init__(self, process: psutil.Process, interval_s: float = 0.25):
        self.process = process
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss(self.process))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss(self.process))


@dataclass
class Created:
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


async def create_sessions(url: str, count: int, concurrency: int, tag: str) -> Created:
    """`count` new sessions, one short chat turn each, `concurrency` at a time."""
    async with httpx.AsyncClient() as client:
        endpoint: Endpoint = await discover(client, url)
    created = Created()
    next_index = iter(range(count))
    started = time.perf_counter()

    async def worker() -> None:
        conn = Connection(Origin.parse(url))
        try:
            for i in next_index:
                session_hash = f"churn-{tag}-{i:05d}-{secrets.token_hex(4)}"
                result = await run_turn(conn, endpoint, session_hash, f"hello {i}", timeout=60)
                if result.ok:
                    created.ok += 1
                else:
                    created.failed += 1
                    created.errors[str(result.error)] = created.errors.get(str(result.error), 0) + 1
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    created.seconds = time.perf_counter() - started
    return created


def health(server: SpawnedServer) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/admin/api/health", headers={"Authorization": f"Bearer {server.admin_token}"},
                         timeout=30)
    response.raise_for_status()
    return response.json()


def end_all_sessions(server: SpawnedServer) -> None:
    """End every session through the admin API (the warm-up's: they need not wait for their TTL)."""
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=f"{server.url}/admin/api", headers=headers, timeout=30) as client:
        for session in client.get("/sessions").json():
            client.delete(f"/sessions/{session['id']}")


def wait_for_no_sessions(server: SpawnedServer, timeout_s: float) -> float:
    """Poll the admin API until the sweeper has ended every session; the seconds it took."""
    started = time.monotonic()
    while health(server)["sessions"]["active"] > 0:
        if time.monotonic() - started > timeout_s:
            raise SystemExit(f"sessions still alive after {timeout_s:g} s: {health(server)['sessions']}")
        time.sleep(1.0)  # the sweeper runs on its own interval; nothing to wait on but time
    return time.monotonic() - started


def run(sessions: int, concurrency: int, ttl_s: float, store: str, profile: str, settle_s: float,
        warmup: int = WARMUP_SESSIONS) -> dict[str, Any]:
    overrides = [
        f"sessions.idle_ttl_s={ttl_s}",
        f"sessions.max_sessions={max(sessions * 2, 1000)}",  # no LRU eviction: every session lives its TTL
        f"sessions.store={store}",
        "sim.ttft_ms=0", "sim.reply_tokens=1", "sim.jitter=0",
        f"queue.max_size={max(concurrency * 4, 100)}",
    ]
    with spawn_server(profile, overrides) as server:
        process = psutil.Process(server.process.pid)
        asyncio.run(create_sessions(server.url, warmup, concurrency, "warmup"))
        end_all_sessions(server)
        time.sleep(settle_s)
        rss_before = rss(process)

        with PeakSampler(process) as sampler:
            created = asyncio.run(create_sessions(server.url, sessions, concurrency, "run"))
        at_peak = health(server)
        rss_peak = rss(process)
        alive = at_peak["sessions"]["active"]

        expiry_s = wait_for_no_sessions(server, ttl_s * 3 + 120)
        time.sleep(settle_s)
        rss_after = rss(process)
        after = health(server)

    per_session = (rss_peak - rss_before) / alive if alive else None
    returned = (rss_after - rss_before) / rss_before
    return {
        "meta": {"sessions": sessions, "concurrency": concurrency, "idle_ttl_s": ttl_s, "store": store,
                 "profile": profile, "settle_s": settle_s, "warmup_sessions": warmup},
        "created": {"ok": created.ok, "failed": created.failed, "errors": created.errors,
                    "seconds": round(created.seconds, 1),
                    "turns_per_s": round(created.ok / created.seconds, 1) if created.seconds else None},
        "rss_before": rss_before,
        "rss_peak": rss_peak,
        "rss_peak_sampled": sampler.peak,
        "rss_after": rss_after,
        "sessions_alive_at_peak": alive,
        "bytes_per_idle_session": round(per_session) if per_session is not None else None,
        "rss_after_vs_before": round(returned, 4),
        "expiry_wait_s": round(expiry_s, 1),
        "sessions_after": after["sessions"],
        "targets": {
            "rss_returns_within_10pct": returned <= TARGET_RETURN,
            "bytes_per_idle_session_le_20kb": per_session is not None and per_session <= TARGET_BYTES_PER_SESSION,
        },
    }


def _mb(value: int) -> str:
    return f"{value / 2**20:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32, help="sessions being created at once")
    parser.add_argument("--ttl", type=float, default=240.0,
                        help="sessions.idle_ttl_s; longer than creating them all, so every one is alive at the peak")
    parser.add_argument("--store", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("-p", "--profile", default="high-performance")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait before reading a steady RSS")
    parser.add_argument("--warmup", type=int, default=WARMUP_SESSIONS,
                        help="sessions served (then ended) before RSS 'before' is read")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    result = run(args.sessions, args.concurrency, args.ttl, args.store, args.profile, args.settle, args.warmup)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        created = result["created"]
        print(f"sessions created   {created['ok']:,} ok, {created['failed']:,} failed {created['errors'] or ''}"
              f" in {created['seconds']} s ({created['turns_per_s']} turns/s)")
        print(f"RSS before         {_mb(result['rss_before'])}")
        print(f"RSS at peak        {_mb(result['rss_peak'])} with {result['sessions_alive_at_peak']:,} sessions alive"
              f" (highest sampled {_mb(result['rss_peak_sampled'])})")
        print(f"RSS after          {_mb(result['rss_after'])} ({result['rss_after_vs_before']:+.1%} vs before;"
              f" all expired {result['expiry_wait_s']} s after the last turn)")
        print(f"per idle session   {result['bytes_per_idle_session']:,} bytes")
        for name, passed in result["targets"].items():
            print(f"target {name}: {'PASS' if passed else 'MISS'}")
    return 0 if all(result["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The load generator: virtual users on one event loop, each with its own keep-alive connection.

Closed loop: ``users`` users each send ``turns`` messages, thinking ``think_time`` between them, started evenly
over ``ramp_up``. Open loop: messages arrive at ``rate`` per second (Poisson), each taken by an idle user that has
turns left or by a new user. Both stop at ``duration`` or after ``max_requests``. The generator watches itself
(CPU and event-loop lag) so a run where it, not the server, was the bottleneck is flagged inconclusive.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import random
import secrets
import signal
import ssl
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from agent.loadtest.connection import Connection, Origin
from agent.loadtest.isolation import check_turn, make_canary
from agent.loadtest.metrics import TurnRecord, describe, percentile
from agent.loadtest.protocol import Endpoint, TurnResult, discover, run_turn

T = TypeVar("T")

CPU_LIMIT = 0.8  # share of one core above which the generator may have slowed the figures down
LAG_LIMIT_S = 0.05  # event-loop lag p99 above which timestamps are late by more than we can ignore
TICK_S = 0.01


class WorkloadError(ValueError):
    """A workload that cannot run as given; one line per problem."""


@dataclass(frozen=True)
class Workload:
    """What to send and for how long; every run is bounded by ``duration`` and ``max_requests``."""

    users: int = 10
    turns: int = 3
    think_time: float = 0.0
    ramp_up: float = 0.0
    rate: float | None = None
    duration: float = 300.0
    max_requests: int = 10_000
    warmup_s: float = 0.0
    warmup_turns: int = 0
    timeout: float = 120.0
    seed: int | None = None
    prime: int = 1  # uncounted turns before the run, from a session of their own

    @property
    def mode(self) -> str:
        return "open" if self.rate is not None else "closed"

    @property
    def planned(self) -> int:
        """Requests the run will send unless it is cut short."""
        if self.rate is None:
            return min(self.users * self.turns, self.max_requests)
        expected = math.ceil(self.rate * self.duration)
        if self.users:
            expected = min(expected, self.users * self.turns)
        return min(expected, self.max_requests)

    def validate(self) -> list[str]:
        """Problems, phrased for the command line."""
        problems = []
        if self.users < 0 or (self.rate is None and self.users < 1):
            problems.append(f"--users {self.users}: need at least 1")
        if self.turns < 1:
            problems.append(f"--turns {self.turns}: need at least 1")
        if self.rate is not None and not self.rate > 0:
            problems.append(f"--rate {self.rate}: need a positive number of requests per second")
        for name, value in (("--think-time", self.think_time), ("--ramp-up", self.ramp_up),
                            ("--warmup", self.warmup_s)):
            if value < 0:
                problems.append(f"{name} {value}: cannot be negative")
        if not self.duration > 0:
            problems.append(f"--duration {self.duration}: need a positive number of seconds")
        if not self.timeout > 0:
            problems.append(f"--timeout {self.timeout}: need a positive number of seconds")
        if self.max_requests < 1:
            problems.append(f"--max-requests {self.max_requests}: need at least 1")
        if self.prime < 0:
            problems.append(f"--prime {self.prime}: cannot be negative")
        if self.warmup_turns < 0:
            problems.append(f"--warmup-turns {self.warmup_turns}: cannot be negative")
        return problems

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "users": self.users,
            "turns": self.turns,
            "think_time_s": self.think_time,
            "ramp_up_s": self.ramp_up,
            "rate_rps": self.rate,
            "duration_s": self.duration,
            "max_requests": self.max_requests,
            "warmup_s": self.warmup_s,
            "warmup_turns": self.warmup_turns,
            "timeout_s": self.timeout,
            "seed": self.seed,
            "prime": self.prime,
        }


@dataclass
class Progress:
    """Counters the live display reads while the run goes on."""

    planned: int
    sent: int = 0
    done: int = 0
    failed: int = 0
    violations: int = 0
    in_flight: int = 0
    last_ttft: float | None = None


@dataclass
class RunData:
    """Everything a run observed; :mod:`agent.loadtest.report` turns it into figures."""

    endpoint: Endpoint
    workload: Workload
    turns: list[TurnRecord]
    started_at: float  # epoch seconds
    duration_s: float
    offered_end: float  # seconds from start when the offered load began to fall (see Engine.offered_end)
    generator: dict[str, Any]
    admin: dict[str, Any]
    unfinished: int
    skipped_arrivals: int
    users_started: int
    prime: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False


# --------------------------------------------------------------------------- self-monitoring


class Monitor:
    """The generator's own CPU share and event-loop lag: if either is high, the figures measure us."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK_S)
            self.lags.append(max(0.0, time.perf_counter() - before - TICK_S))

    def start(self) -> None:
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        self._task = asyncio.create_task(self._tick())

    async def stop(self) -> dict[str, Any]:
        await _cancel(self._task)
        wall = max(time.perf_counter() - self._wall0, 1e-9)
        cpu = (time.process_time() - self._cpu0) / wall
        ordered = sorted(self.lags)
        lag_p99 = percentile(ordered, 99) if ordered else 0.0
        reasons = []
        if cpu > CPU_LIMIT:
            reasons.append(f"generator used {cpu:.0%} of a core (> {CPU_LIMIT:.0%})")
        if lag_p99 > LAG_LIMIT_S:
            reasons.append(f"event-loop lag p99 {lag_p99 * 1000:.0f} ms (> {LAG_LIMIT_S * 1000:.0f} ms)")
        return {
            "cpu_share": round(cpu, 4),
            "loop_lag_ms": {k: None if v is None else round(v * 1000, 3) for k, v in describe(ordered).items()}
            | {"max": round(ordered[-1] * 1000, 3) if ordered else None},
            "inconclusive": bool(reasons),
            "reasons": reasons,
        }


class AdminWatch:
    """Polls ``/admin/api/queue`` (cmw servers) for running/waiting/limit per event; quiet when absent."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, token: str | None, interval: float = 0.25):
        self.client, self.url, self.token, self.interval = client, f"{base_url}/admin/api/queue", token, interval
        self.peak: dict[str, dict[str, Any]] = {}
        self.worker_peaks: dict[str, dict[str, dict[str, Any]]] = {}  # `cmw serve --workers N`: per worker
        self.samples = 0
        self.status = "no token given" if token is None else "not polled"
        self._task: asyncio.Task[None] | None = None

    async def poll_once(self) -> bool:
        """One sample; False (with ``status`` saying why) when the API is not there or refuses us."""
        try:
            response = await self.client.get(self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=5.0)
        except httpx.HTTPError as exc:
            self.status = f"unreachable ({type(exc).__name__})"
            return False
        if response.status_code in (401, 403):
            self.status = f"refused (HTTP {response.status_code}): wrong or missing --token"
            return False
        if response.status_code != 200:
            self.status = f"not available (HTTP {response.status_code})"
            return False
        try:
            body = response.json()
            events = _queue_events(body)
        except ValueError:
            self.status = "not available (not JSON)"
            return False
        self.samples += 1
        self.status = "ok"
        _record_peaks(self.peak, events)
        workers = body.get("workers") if isinstance(body, dict) else None
        for worker in workers if isinstance(workers, list) else []:
            if isinstance(worker, dict) and "error" not in worker:
                with contextlib.suppress(ValueError):
                    label = str(worker.get("worker", len(self.worker_peaks)))
                    _record_peaks(self.worker_peaks.setdefault(label, {}), _queue_events(worker))
        return True

    async def _loop(self) -> None:
        while await self.poll_once():
            await asyncio.sleep(self.interval)

    async def start(self) -> None:
        if self.token is not None and await self.poll_once():
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> dict[str, Any]:
        await _cancel(self._task)
        report: dict[str, Any] = {"status": self.status, "samples": self.samples, "peak": self.peak}
        if self.worker_peaks:
            report["workers"] = self.worker_peaks
        return report

    def chat_limit(self) -> int | None:
        for name, figures in self.peak.items():
            if "chat" in name and isinstance(figures.get("limit"), int):
                return figures["limit"]
        return None


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Stop a background ticker or poller and wait until it has."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _record_peaks(peaks: dict[str, dict[str, Any]], events: dict[str, dict[str, Any]]) -> None:
    for name, figures in events.items():
        peak = peaks.setdefault(name, {"running": 0, "waiting": 0, "limit": None})
        for key in ("running", "waiting"):
            if isinstance(figures.get(key), int | float):
                peak[key] = max(peak[key], figures[key])
        if figures.get("limit") is not None:
            peak["limit"] = figures["limit"]


def _queue_events(body: Any) -> dict[str, dict[str, Any]]:
    """Per-event figures from the admin queue document, whichever of the natural shapes it takes."""
    if isinstance(body, dict) and isinstance(body.get("events"), dict | list):
        body = body["events"]
    if isinstance(body, list):
        return {str(e.get("event") or e.get("name") or e.get("api_name") or i): e
                for i, e in enumerate(body) if isinstance(e, dict)}
    if isinstance(body, dict):
        return {str(k): v for k, v in body.items() if isinstance(v, dict) and ("running" in v or "waiting" in v)}
    raise ValueError("unexpected admin queue document")


# --------------------------------------------------------------------------- virtual users


@dataclass
class VirtualUser:
    """One browser session: its own session hash, canary and memory of what it sent."""

    index: int
    session: str = field(default_factory=lambda: secrets.token_hex(6))
    canary: str = ""
    sent: list[str] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] | None = None
    conn: Connection | None = None  # its own keep-alive connection, as a browser tab has

    def __post_init__(self) -> None:
        self.canary = self.canary or make_canary(self.index)

    @property
    def turns_done(self) -> int:
        return len(self.sent)

    def next_message(self) -> str:
        return f"{self.canary} turn {self.turns_done + 1}: tell me about load testing"


class Engine:
    """Runs one workload against one endpoint and records every turn."""

    def __init__(self, endpoint: Endpoint, workload: Workload, progress: Progress):
        self.endpoint, self.workload, self.progress = endpoint, workload, progress
        self.origin = Origin.parse(endpoint.base_url)
        self.tls = ssl.create_default_context() if self.origin.scheme == "https" else None
        self.records: list[TurnRecord] = []
        self.users: list[VirtualUser] = []
        self.budget = workload.max_requests
        self.skipped_arrivals = 0
        self.finished: list[float] = []  # closed loop: when each user ran out of turns
        self.last_arrival: float | None = None
        self.t0 = time.perf_counter()
        self.rng = random.Random(workload.seed)

    async def close(self) -> None:
        for user in self.users:
            if user.conn is not None:
                await user.conn.close()

    def offered_end(self, run_end: float) -> float:
        """When the offered load began to fall: the first user out of turns (closed), the last arrival (open).

        Past that point fewer users than before ask for service, so a server with spare slots looks slower than
        it is; throughput is measured up to here.
        """
        if self.workload.rate is not None:
            return self.last_arrival if self.last_arrival is not None else run_end
        return min(self.finished, default=run_end)

    def _new_user(self) -> VirtualUser:
        user = VirtualUser(len(self.users))
        self.users.append(user)
        return user

    async def turn(self, user: VirtualUser) -> None:
        """Send the user's next message, check isolation, record the turn."""
        message = user.next_message()
        user.sent.append(message)
        number = user.turns_done
        self.progress.sent += 1
        self.progress.in_flight += 1
        try:
            if user.conn is None:
                user.conn = Connection(self.origin, self.tls)
            result = await run_turn(user.conn, self.endpoint, user.session, message, history=user.history,
                                    timeout=self.workload.timeout)
        finally:
            self.progress.in_flight -= 1
        self._record(user, number, message, result)

    def _record(self, user: VirtualUser, number: int, message: str, result: TurnResult) -> None:
        t_join = result.t_join - self.t0
        record = TurnRecord(
            user=user.index, session=user.session, turn=number, t_join=t_join,
            warmup=number <= self.workload.warmup_turns or t_join < self.workload.warmup_s,
            error=result.error, detail=result.detail, tokens=result.tokens,
            t_end=None if result.t_end is None else result.t_end - self.t0,
            t_start=None if result.t_start is None else result.t_start - self.t0,
        )
        if result.ok:
            record.queue_wait = None if result.t_start is None else result.t_start - result.t_join
            record.ttft = None if result.t_first is None else result.t_first - result.t_join
            record.e2e = None if result.t_end is None else result.t_end - result.t_join
            record.gaps = result.gaps()
            record.violation = check_turn(canary=user.canary, sent=user.sent, confirmed=user.confirmed,
                                          reply=result.reply, history=result.history)
            user.confirmed.append(message)
            if result.history is not None:
                user.history = result.history
            self.progress.done += 1
            self.progress.last_ttft = record.ttft
        else:
            self.progress.failed += 1
        if record.violation:
            self.progress.violations += 1
        self.records.append(record)

    def _take_budget(self) -> bool:
        if self.budget <= 0:
            return False
        self.budget -= 1
        return True

    async def closed_loop(self) -> None:
        w = self.workload
        users = [self._new_user() for _ in range(w.users)]

        async def drive(user: VirtualUser) -> None:
            if w.ramp_up and w.users > 1:
                await asyncio.sleep(w.ramp_up * user.index / w.users)
            for number in range(w.turns):
                if not self._take_budget():
                    break
                await self.turn(user)
                if w.think_time and number + 1 < w.turns:
                    await asyncio.sleep(w.think_time)
            self.finished.append(time.perf_counter() - self.t0)

        await asyncio.gather(*(drive(u) for u in users))

    async def open_loop(self) -> None:
        w = self.workload
        assert w.rate is not None  # noqa: S101 - open_loop is only chosen with a rate
        idle: collections.deque[VirtualUser] = collections.deque()
        tasks: set[asyncio.Task[None]] = set()

        async def serve(user: VirtualUser) -> None:
            await self.turn(user)
            if user.turns_done < w.turns:
                idle.append(user)

        try:
            while self._take_budget():
                await asyncio.sleep(self.rng.expovariate(w.rate))
                if idle:
                    user = idle.popleft()
                elif w.users and len(self.users) >= w.users:
                    self.skipped_arrivals += 1
                    continue
                else:
                    user = self._new_user()
                self.last_arrival = time.perf_counter() - self.t0
                task = asyncio.create_task(serve(user))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            # Cut off by --duration: in-flight turns end with the run, not after it.
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def run_workload(
    url: str,
    workload: Workload,
    *,
    api_name: str = "chat",
    admin_token: str | None = None,
    progress: Progress | None = None,
) -> RunData:
    """Discover the endpoint, drive the workload, and return what was seen (raises ``TargetError``).

    ``workload.prime`` turns go first, one after another from a session of their own, and are not counted: a server's
    first request pays for lazy imports and connections, which is start-up cost, not a concurrency property.
    """
    progress = progress or Progress(workload.planned)
    _raise_fd_limit(workload.users or workload.planned)
    async with httpx.AsyncClient(timeout=httpx.Timeout(15.0), headers={"User-Agent": "cmw-loadtest"}) as client:
        endpoint = await discover(client, url, api_name)
        engine = Engine(endpoint, workload, progress)
        priming = await _prime(engine, workload.prime)
        admin = AdminWatch(client, endpoint.base_url, admin_token)
        await admin.start()
        monitor = Monitor()
        started_at = time.time()
        monitor.start()
        engine.t0 = time.perf_counter()
        runner = asyncio.create_task(engine.open_loop() if workload.rate is not None else engine.closed_loop())
        interrupt = asyncio.Event()
        with _on_sigint(interrupt.set):
            waiter = asyncio.create_task(interrupt.wait())
            await asyncio.wait({runner, waiter}, timeout=workload.duration, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        unfinished = 0
        if not runner.done():
            # Cut off by --duration or Ctrl-C: turns in flight then are neither completed nor failed.
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            unfinished = progress.sent - progress.done - progress.failed
        else:
            runner.result()
        duration = time.perf_counter() - engine.t0
        generator = await monitor.stop()
        admin_figures = await admin.stop()
        admin_figures["chat_limit"] = admin.chat_limit()
        await engine.close()
    return RunData(
        endpoint=endpoint, workload=workload, turns=sorted(engine.records, key=lambda r: (r.t_join, r.user)),
        started_at=started_at, duration_s=duration, offered_end=engine.offered_end(duration), generator=generator,
        admin=admin_figures,
        unfinished=unfinished, skipped_arrivals=engine.skipped_arrivals, users_started=len(engine.users),
        prime=priming, interrupted=interrupt.is_set(),
    )


def _raise_fd_limit(connections: int) -> None:
    """Each user holds a socket: lift the soft open-files limit (often 1024) towards the hard one when needed."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@contextlib.contextmanager
def _on_sigint(callback: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C ends the run early but still reports it; outside the main thread there is nothing to install."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, callback)
    except (NotImplementedError, RuntimeError, ValueError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _prime(engine: Engine, turns: int) -> dict[str, Any]:
    user = VirtualUser(index=-1, canary="prime", conn=Connection(engine.origin, engine.tls))
    results = []
    for _ in range(turns):
        message = user.next_message()
        user.sent.append(message)
        results.append(await run_turn(user.conn, engine.endpoint, user.session, message, history=user.history,
                                      timeout=engine.workload.timeout))
        user.history = results[-1].history
    await user.conn.close()
    return {
        "turns": turns,
        "e2e_s": [None if r.t_end is None else round(r.t_end - r.t_join, 6) for r in results],
        "errors": [r.error for r in results if r.error],
    }


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed: it halves the generator's own CPU per message."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)

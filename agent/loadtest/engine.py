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
from agent.loadtest.isolation import check_turn, make_canary, reflects_session
from agent.loadtest.protocol import Endpoint, TurnResult, discover, run_turn, steps_of
from agent.loadtest.results import AdminFigures, GeneratorReport, PrimeReport, TurnRecord
from agent.loadtest.watch import AdminWatch, Monitor
from agent.loadtest.workload import Workload

T = TypeVar("T")


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


@dataclass(frozen=True)
class RunData:
    """Everything a run observed; :mod:`agent.loadtest.runner` turns it into figures."""

    endpoint: Endpoint
    workload: Workload
    turns: tuple[TurnRecord, ...]  # by submit time
    started_at: float  # epoch seconds
    duration_s: float
    offered_end: float  # seconds from start when the offered load began to fall (see Engine.offered_end)
    generator: GeneratorReport
    admin: AdminFigures
    unfinished: int
    skipped_arrivals: int
    users_started: int
    prime: PrimeReport = PrimeReport()
    interrupted: bool = False


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
        ok: dict[str, Any] = {}
        if result.ok:
            ok = {
                "queue_wait": None if result.t_start is None else result.t_start - result.t_join,
                "ttft": None if result.t_first is None else result.t_first - result.t_join,
                "e2e": None if result.t_end is None else result.t_end - result.t_join,
                "gaps": tuple(result.gaps()),
                **_agent_figures(result.history),
                "violation": tuple(check_turn(canary=user.canary, sent=user.sent, confirmed=user.confirmed,
                                              reply=result.reply, history=result.history)),
                "isolation_checked": reflects_session(canary=user.canary, sent=user.sent, reply=result.reply,
                                                      history=result.history),
            }
            user.confirmed.append(message)
            if result.history is not None:
                user.history = result.history
        record = TurnRecord(
            user=user.index, session=user.session, turn=number, t_join=t_join,
            warmup=number <= self.workload.warmup_turns or t_join < self.workload.warmup_s,
            error=result.error, detail=result.detail, tokens=result.tokens,
            t_end=None if result.t_end is None else result.t_end - self.t0,
            t_start=None if result.t_start is None else result.t_start - self.t0,
            **ok,
        )
        if result.ok:
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
    api_name: str | None = None,
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
        await engine.close()
    return RunData(
        endpoint=endpoint, workload=workload, turns=tuple(sorted(engine.records, key=lambda r: (r.t_join, r.user))),
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


async def _prime(engine: Engine, turns: int) -> PrimeReport:
    user = VirtualUser(index=-1, canary="prime", conn=Connection(engine.origin, engine.tls))
    results = []
    for _ in range(turns):
        message = user.next_message()
        user.sent.append(message)
        results.append(await run_turn(user.conn, engine.endpoint, user.session, message, history=user.history,
                                      timeout=engine.workload.timeout))
        user.history = results[-1].history
    await user.conn.close()
    return PrimeReport(
        turns=turns,
        e2e_s=tuple(None if r.t_end is None else round(r.t_end - r.t_join, 6) for r in results),
        errors=tuple(r.error for r in results if r.error),
    )


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed: it halves the generator's own CPU per message."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _agent_figures(history: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Tool steps of a turn and the seconds they took (from the steps' durations, as the chat shows them)."""
    steps = steps_of(history)
    return {"tool_steps": len(steps),
            "tool_s": sum(float(s.get("duration") or 0.0) for s in steps)}

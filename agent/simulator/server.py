"""The simulator server and the one way it runs.

:class:`Simulator` binds and stops inside a running event loop. :func:`run` is the runner: a fresh
event loop (uvloop where installed) in the calling thread, serving until told to stop. Every other
entry point is that runner placed somewhere: :func:`serve` in the foreground (``cmw sim``),
:func:`running_simulator` in a background thread, :func:`simulator_process` in a child process
(``cmw serve`` with the ``sim`` provider).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from agent.settings import Settings, SimSettings
from agent.simulator.plan import Dice
from agent.simulator.protocol import Connection, SimState


class Simulator:
    """The simulator server; start it inside a running event loop, or run it with one of the runners below."""

    def __init__(self, settings: SimSettings | Settings | None = None, *, host: str | None = None,
                 port: int | None = None):
        sim = settings.sim if isinstance(settings, Settings) else settings or SimSettings()
        self.settings = sim
        self.host = host if host is not None else sim.host
        self.port = port if port is not None else sim.port
        self._state = SimState(sim)
        self.counters = self._state.counters
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients are given, ending in ``/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def configure(self, settings: SimSettings) -> None:
        """Behave by ``settings`` from the next request on, with fresh dice seeded from ``settings.seed``.

        So one running simulator can serve phases of different fault rates, each as repeatable as a new one.
        """
        self.settings = settings
        self._state.settings = settings
        self._state.dice = Dice(settings)

    async def start(self) -> None:
        """Bind and start serving; with port 0 the chosen port is in ``.port`` afterwards."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self._state, loop), self.host, self.port,
                                                backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection (streams in flight are cut)."""
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._state.connections):
            conn.abort()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(sim: Simulator, *, on_ready: Callable[[Callable[[], None]], None] | None = None,
        stop_signals: tuple[signal.Signals, ...] = ()) -> None:
    """Serve ``sim`` on a new event loop in this thread until stopped; raises what binding raises.

    Once the socket listens, ``on_ready`` is called on the loop with ``stop``, which any thread may
    call. ``stop_signals`` stop it too (main thread only).
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        for sig in stop_signals:
            loop.add_signal_handler(sig, stopped.set)
        await sim.start()
        try:
            if on_ready is not None:
                on_ready(lambda: loop.call_soon_threadsafe(stopped.set))
            await stopped.wait()
        finally:
            await sim.stop()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())


def serve(settings: SimSettings | Settings | None = None, *, host: str | None = None, port: int | None = None,
          on_ready: Callable[[Simulator], None] | None = None) -> None:
    """Run a simulator in the foreground until SIGINT or SIGTERM (what ``cmw sim`` does)."""
    sim = Simulator(settings, host=host, port=port)

    def ready(stop: Callable[[], None]) -> None:
        if on_ready is not None:
            on_ready(sim)

    run(sim, on_ready=ready, stop_signals=(signal.SIGINT, signal.SIGTERM))


@contextlib.contextmanager
def running_simulator(settings: SimSettings | Settings | None = None, *, host: str | None = None,
                      port: int | None = None) -> Iterator[Simulator]:
    """Run a simulator in a background thread for the duration of the block; raises what binding raises.

    Its own event loop, so the caller's loop never spends time on the simulator's timers.
    """
    sim = Simulator(settings, host=host, port=port)
    ready = threading.Event()
    stops: list[Callable[[], None]] = []
    failure: list[BaseException] = []

    def on_ready(stop: Callable[[], None]) -> None:
        stops.append(stop)
        ready.set()

    def target() -> None:
        try:
            run(sim, on_ready=on_ready)
        except BaseException as exc:
            if ready.is_set():
                raise
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=target, name="cmw-sim", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        thread.join()
        raise failure[0]
    try:
        yield sim
    finally:
        stops[0]()
        thread.join()


@dataclass
class SimulatorProcess:
    """A simulator running in a child process, as ``cmw serve`` needs it: its URL."""

    base_url: str


def _child_main(sim_settings: dict[str, Any], conn: Any) -> None:
    """Child process: serve until the parent says stop or goes away (its end of the pipe closes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the parent's to handle
    sim = Simulator(SimSettings(**sim_settings))

    def ready(stop: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()

        def parent_spoke() -> None:  # readable = a message or EOF: either way, stop
            loop.remove_reader(conn.fileno())
            stop()

        conn.send(("ready", sim.base_url))
        loop.add_reader(conn.fileno(), parent_spoke)

    try:
        run(sim, on_ready=ready, stop_signals=(signal.SIGTERM,))
    except OSError as exc:
        conn.send(("error", str(exc)))


@contextlib.contextmanager
def simulator_process(settings: SimSettings, start_timeout: float = 30.0) -> Iterator[SimulatorProcess]:
    """Run the simulator in its own process for the duration of the block.

    ``cmw serve`` uses this rather than a thread: the simulator's timers and writes then never take
    the GIL from the app's event loop. The child exits on its own if this process dies (kill -9).
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    proc = ctx.Process(target=_child_main, args=(settings.model_dump(), child_end), name="cmw-sim", daemon=True)
    proc.start()
    child_end.close()
    try:
        if not parent_end.poll(start_timeout):
            raise OSError(f"the simulator did not start within {start_timeout:g} s")
        kind, value = parent_end.recv()
        if kind != "ready":
            raise OSError(f"the simulator could not start: {value}")
        yield SimulatorProcess(value)
    finally:
        parent_end.close()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)

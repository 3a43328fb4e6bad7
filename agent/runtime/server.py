"""One process serving the app under uvicorn: its socket, the embedded simulator, a server that drains.

The one place that binds sockets, starts the simulator, builds the uvicorn configuration and prints the
banner, for ``cmw serve`` / ``python -m agent`` (:func:`serve`) and for each worker of
``--workers N`` (:mod:`agent.runtime.worker`). On SIGINT/SIGTERM it stops taking new work, lets
in-flight replies finish for ``server.shutdown_grace_s`` and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import signal
import socket
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn

from agent.settings import LoadedSettings


class StartupError(Exception):
    """The server could not start (port busy, simulator failed ...): exit code 4."""


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
        raise StartupError(f"{host}:{port} {reason}; choose another with --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def embedded_simulator(loaded: LoadedSettings) -> Iterator[str | None]:
    """The embedded simulator's base URL while an offered provider is served by it, else None."""
    from agent.settings.providers import PROVIDERS

    settings = loaded.settings
    offered = {settings.llm.provider, *settings.llm.providers}
    if settings.server.app or not any(PROVIDERS[name].embedded for name in offered):  # an operator's app: no LLM
        yield None
        return
    from agent.simulator import simulator_process

    with simulator_process(settings.sim) as sim:
        yield sim.base_url


def serve(loaded: LoadedSettings, *, console: Any = None) -> int:
    """Serve in this process until SIGINT/SIGTERM; the process exit code."""
    from rich.console import Console

    console = console or Console(stderr=True)
    settings = loaded.settings
    try:
        sock = bind_socket(settings.server.host, settings.server.port)
    except (StartupError, OSError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 4
    return serve_on(loaded, sock, console)


def serve_on(
    loaded: LoadedSettings,
    sock: socket.socket,
    console: Any,
    *,
    wrap: Callable[[Any, Any], Any] | None = None,
    trusted: list[str] | None = None,
    worker: str | None = None,
    processes: int = 1,
) -> int:
    """Serve the app on a bound socket until a signal; the exit code (2 settings, 4 cannot start).

    A worker passes ``wrap`` (its admin fan-out around the app), the proxy it trusts, and its name
    (printed instead of the banner, which the supervisor prints once).
    """
    from agent.app.asgi import create_app
    from agent.runtime.banner import display_host, print_banner
    from agent.sessions.store import StoreError, state_dir
    from agent.settings import ConfigError

    settings = loaded.settings
    try:
        with embedded_simulator(loaded) as sim_url:
            app, ctx = create_app(loaded, sim_base_url=sim_url, state_dir=state_dir(settings), processes=processes)
            # The start-up heap (Gradio, LangChain, pydantic: millions of objects) never becomes garbage:
            # frozen, the collector's full passes while serving walk only what requests allocate.
            gc.collect()
            gc.freeze()
            host, port = sock.getsockname()[:2]
            if worker is None:
                print_banner(console, loaded, ctx, f"http://{display_host(host)}:{port}{settings.server.root_path}",
                             sim_url)
            else:
                console.print(f"{worker} ready (port {port})", highlight=False)
            config = uvicorn.Config(
                wrap(app, ctx) if wrap is not None else app,
                loop="uvloop",
                http="httptools",
                ws="none",
                log_level="warning",
                timeout_graceful_shutdown=2,
                lifespan="on",
                # whose X-Forwarded-For names the client
                forwarded_allow_ips=trusted if trusted is not None else settings.server.trusted_proxies,
            )
            DrainingServer(config, ctx, settings.server.shutdown_grace_s, console).run(sockets=[sock])
    except ConfigError as exc:
        if getattr(exc, "app_traceback", ""):  # the served app's own code failed: its traceback, not cmw's
            console.print(exc.app_traceback.rstrip(), highlight=False, markup=False)  # type: ignore[attr-defined]
        for line in str(exc).splitlines():
            console.print(f"[bold red]error:[/] {line}", highlight=False)
        return 2
    except (StartupError, StoreError, OSError) as exc:
        console.print(f"[bold red]error:[/] {worker + ': ' if worker else ''}cannot start: {exc}", highlight=False)
        return 4
    finally:
        sock.close()
    if worker is None:
        console.print("[green]cmw stopped[/]")
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first signal drains: refuse joins, wait for running chats, then stop."""

    def __init__(self, config: uvicorn.Config, ctx: Any, grace_s: float, console: Any):
        super().__init__(config)
        self.ctx = ctx
        self.grace_s = grace_s
        self.console = console
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Deliberately not recorded in _captured_signals: uvicorn would re-raise it and exit non-zero.
        if self.ctx.draining or self.loop is None or self.grace_s <= 0:
            self.force_exit = self.ctx.draining
            self.should_exit = True
            return
        self.ctx.draining = True
        name = signal.Signals(sig).name
        self.console.print(f"[yellow]{name}: draining in-flight replies (up to {self.grace_s:g} s); again to force[/]")
        self.loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        assert self.loop is not None
        self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and _running(self.ctx) > 0:
            await asyncio.sleep(0.05)
        self.should_exit = True


def _running(ctx: Any) -> int:
    monitor = ctx.monitor
    return sum(f.running for f in monitor.figures()) if monitor else ctx.in_flight

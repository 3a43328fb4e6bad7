"""Run the app: FastAPI with the Gradio UI at / (and the admin API beside it) under uvicorn.

``serve(loaded)`` is the public entry point ``cmw serve`` and ``python -m agent`` call. It starts the
embedded simulator when the app offers it, binds the socket itself (so port 0 works and a busy port
is a clear error), and on SIGINT/SIGTERM stops taking new work, lets in-flight replies finish for
``server.shutdown_grace_s`` and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from agent.settings import LoadedSettings, mask_url_passwords

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger("cmw.server")


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


def browser_secret(state_dir: Path) -> str:
    """A per-installation secret for the browser's stored session id, kept across restarts."""
    path = state_dir / "browser.secret"
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret


class DrainMiddleware:
    """While draining, refuse new work (503) so in-flight replies can finish.

    New work is a queue join or a ``/gradio_api/call/*`` POST (which joins the queue itself); reading the
    result of a call already made (its GET) goes on.
    """

    def __init__(self, app: Any, ctx: Any):
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.ctx.draining and scope["type"] == "http" and _new_work(scope):
            body = b'{"detail": "The server is shutting down; try again shortly."}'
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"5")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def _new_work(scope: dict[str, Any]) -> bool:
    path = scope["path"].rstrip("/")
    return path.endswith("/queue/join") or (scope.get("method") == "POST" and "/gradio_api/call/" in path)


@contextlib.contextmanager
def _simulator(loaded: LoadedSettings) -> Iterator[str | None]:
    settings = loaded.settings
    wanted = settings.llm.provider == "sim" or "sim" in settings.llm.providers
    if not wanted:
        yield None
        return
    from agent.simulator import simulator_process

    with simulator_process(settings.sim) as sim:
        yield sim.base_url


def create_app(loaded: LoadedSettings, *, sim_base_url: str | None, state_dir: Path) -> tuple[Any, Any]:
    """The ASGI app (FastAPI + mounted Gradio) and its :class:`~agent.app.AppContext`."""
    import gradio as gr
    from fastapi import FastAPI, HTTPException

    from agent.app import AppContext, build_app
    from agent.gradio_state import use_lean_session_state
    from agent.llm import LLMError, Providers
    from agent.sessions import SessionManager

    settings = loaded.settings
    providers = Providers(settings, sim_base_url)
    sessions = SessionManager.from_settings(settings, state_dir)
    sessions.default_model = providers.default_model(settings.llm.provider)
    with contextlib.suppress(LLMError):
        providers.chat_model(settings.llm.provider)  # import langchain/openai now, not in the first chat
    ctx = AppContext(loaded=loaded, sessions=sessions, providers=providers, browser_secret=browser_secret(state_dir))
    demo = build_app(ctx)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any):  # type: ignore[no-untyped-def]
        interval_s = min(60.0, settings.sessions.idle_ttl_s / 4)
        sweepers = [
            asyncio.create_task(sessions.run_sweeper(interval_s)),
            asyncio.create_task(_forget_ended_gradio_sessions(demo, ctx, interval_s)),
        ]
        try:
            yield
        finally:
            for sweeper in sweepers:
                sweeper.cancel()
            sessions.close()

    api = FastAPI(title="cmw", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/admin/openapi.json")
    from agent.admin import admin_router, admin_token, docs_router, token_dependency
    from agent.metrics import metrics_router

    require_token = token_dependency(admin_token(settings, state_dir))
    api.include_router(admin_router(ctx, require_token))
    api.include_router(docs_router("cmw"))
    api.include_router(metrics_router(ctx, require_token if settings.admin.metrics_require_token else None))

    @api.get("/gradio_api/deep_link", include_in_schema=False)
    def no_deep_links() -> None:
        # Gradio would write any session's component values (its chat) to a file for whoever names the
        # session hash, and fills disk on repeat. cmw has no deep-link button, and its session states
        # hold only the blocks each session touched (agent/gradio_state.py).
        raise HTTPException(404, "deep links are off in cmw")

    ttl = settings.server.upload_cache_ttl_s
    demo.delete_cache = (max(1, min(ttl, 3600) // 4), ttl)  # Gradio's cleanup of its upload cache (and on exit)
    app = gr.mount_gradio_app(
        api,
        demo,
        path="/",
        root_path=settings.server.root_path or None,
        max_file_size=settings.sessions.max_upload_bytes,
        ssr_mode=False,
        footer_links=["api", "settings"],
        run_history=False,
        # Gradio's traffic dashboard: off. cmw's admin API and /metrics report the same figures behind
        # the admin token; Gradio's /monitoring/summary would answer anyone.
        enable_monitoring=False,
    )
    # launch() sets this; mounted apps never do, and without it Gradio skips its check that a file
    # reference names a file a user uploaded — any server path could be copied into the cache.
    demo.has_launched = True
    use_lean_session_state(demo)
    _skip_login_check_thread_hop(app)
    from agent.guard import RequestGuard

    app.add_middleware(RequestGuard, settings=settings, fns=demo.fns, on_refused=ctx.metrics.request_refused)
    app.add_middleware(DrainMiddleware, ctx=ctx)
    ctx.startup_log.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} cmw {_version()} started")
    ctx.startup_log.append(f"profile {loaded.profile_name}; provider {settings.llm.provider}")
    ctx.startup_log.append("limits " + ", ".join(f"{k}={v['limit']}" for k, v in ctx.monitor.as_dict().items()))
    for warning in loaded.warnings:
        ctx.startup_log.append(f"warning: {warning}")
    return app, ctx


async def _forget_ended_gradio_sessions(demo: Any, ctx: Any, interval_s: float) -> None:
    """Sweep Gradio's per-session queue entries on the event loop, where Gradio mutates them."""
    from agent.queue import forget_ended_sessions

    def is_live(session_hash: str) -> bool:
        return ctx.sessions.is_live(ctx.sessions.conversation_id(session_hash))

    while True:
        await asyncio.sleep(interval_s)
        try:
            forget_ended_sessions(demo._queue, is_live)
        except Exception:  # the sweep must outlive any one failure
            log.exception("sweep of Gradio's session entries failed")


def _skip_login_check_thread_hop(app: Any) -> None:
    """Answer Gradio's login check on the event loop when the app has no Gradio login.

    Every queue join and event stream depends on Gradio's ``login_check``, a plain function, so
    FastAPI runs it in a worker thread: two thread hops per request for a check that always passes
    here (cmw uses no Gradio auth). With a login configured, Gradio's own check stays.
    """
    from fastapi.routing import APIRoute
    from gradio.routes import App as GradioApp

    for mount in app.routes:
        gradio_app = getattr(mount, "app", None)
        if not isinstance(gradio_app, GradioApp) or gradio_app.auth or gradio_app.auth_dependency:
            continue
        routes = list(gradio_app.router.routes)
        while routes:
            route = routes.pop()
            nested = getattr(route, "original_router", None)  # FastAPI keeps included routers whole
            if nested is not None:
                routes.extend(nested.routes)
            elif isinstance(route, APIRoute) and route.path.endswith("/queue/join"):
                for depends in route.dependencies:
                    gradio_app.dependency_overrides[depends.dependency] = _no_login_needed


async def _no_login_needed() -> None:
    return None


def _version() -> str:
    from agent import __version__

    return __version__


def serve(loaded: LoadedSettings, *, console: Any = None) -> int:
    """Serve until SIGINT/SIGTERM; return the process exit code."""
    from rich.console import Console

    from agent.settings import ConfigError
    from agent.store import StoreError
    from agent.store import state_dir as resolve_state_dir

    console = console or Console(stderr=True)
    settings = loaded.settings
    if settings.server.workers > 1:  # N processes behind HAProxy (agent/workers.py); 1 stays this process
        from agent.workers import supervise

        return supervise(loaded, console=console)
    try:
        state_dir = resolve_state_dir(settings)
        sock = bind_socket(settings.server.host, settings.server.port)
    except (StartupError, StoreError, OSError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 4
    try:
        with _simulator(loaded) as sim_url:
            app, ctx = create_app(loaded, sim_base_url=sim_url, state_dir=state_dir)
            host, port = sock.getsockname()[:2]
            _banner(console, loaded, ctx, f"http://{_display_host(host)}:{port}{settings.server.root_path}", sim_url)
            config = uvicorn.Config(
                app,
                loop="uvloop",
                http="httptools",
                ws="none",
                log_level="warning",
                timeout_graceful_shutdown=2,
                lifespan="on",
                forwarded_allow_ips=settings.server.trusted_proxies,  # whose X-Forwarded-For names the client
            )
            server = DrainingServer(config, ctx, settings.server.shutdown_grace_s, console)
            server.run(sockets=[sock])
    except ConfigError as exc:
        for line in str(exc).splitlines():
            console.print(f"[bold red]error:[/] {line}", highlight=False)
        return 2
    except (StartupError, StoreError, OSError) as exc:
        console.print(f"[bold red]error:[/] cannot start: {exc}", highlight=False)
        return 4
    finally:
        sock.close()
    console.print("[green]cmw stopped[/]")
    return 0


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)


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


def provider_text(settings: Any, sim_url: str | None) -> str:
    """The default provider and where it is, for banners (a password in llm.base_url masked)."""
    llm = settings.llm
    if llm.provider == "sim" and sim_url:
        return f"sim (simulator at {sim_url})"
    if llm.provider == "custom" or (llm.provider == "openai" and llm.base_url):
        return f"{llm.provider} at {mask_url_passwords(llm.base_url)}"
    return llm.provider


def _banner(console: Any, loaded: LoadedSettings, ctx: Any, url: str, sim_url: str | None) -> None:
    from rich.panel import Panel
    from rich.table import Table

    settings = loaded.settings
    table = Table.grid(padding=(0, 2))
    table.add_row("URL", f"[bold]{url}[/]")
    table.add_row("profile", f"{loaded.profile_name} ({loaded.profile_path})")
    mode = "concurrent" if settings.enable_concurrent_processing else "sequential (master switch off)"
    table.add_row("processing", mode)
    limits = ctx.monitor.as_dict()
    table.add_row("limits", "  ".join(f"{event}={fig['limit']}" for event, fig in limits.items()))
    table.add_row("queue", f"max_size={settings.queue.max_size}  status_update_rate={settings.queue.status_update_rate}"
                  f"  max_threads={settings.server.max_threads}")
    table.add_row("store", mask_url_passwords(settings.sessions.store))
    table.add_row("provider", provider_text(settings, sim_url))
    table.add_row("admin", f"{url.rstrip('/')}/admin/api/health  metrics: /metrics")
    console.print(Panel(table, title=f"cmw {_version()}", expand=False))
    for warning in loaded.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)

"""The ASGI app one process serves: FastAPI with the Gradio UI at ``/`` and the admin API beside it.

A request meets, outermost first: :class:`DrainMiddleware` (new work refused while the process drains),
:class:`~agent.app.guard.RequestGuard` (body and upload caps, rate limits), then the routes: ``/admin/api``
(:mod:`agent.app.admin`), ``/metrics`` (:mod:`agent.app.metrics`), ``/admin/docs``, and the mounted Gradio
app (:mod:`agent.app.ui`), whose queue runs the chat handlers over the sessions (:mod:`agent.sessions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from agent.settings import LoadedSettings

log = logging.getLogger("cmw.server")


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




def create_app(
    loaded: LoadedSettings, *, sim_base_url: str | None, state_dir: Path, processes: int = 1
) -> tuple[Any, Any]:
    """The ASGI app (FastAPI + mounted Gradio) and its :class:`~agent.app.context.AppContext`; ``processes`` is
    how many serve it (the workers behind the supervisor's proxy)."""
    from agent.app import gradio_compat  # noqa: F401, I001 - sets Gradio's environment before Gradio is imported
    import gradio as gr
    from fastapi import FastAPI, HTTPException

    from agent.app.context import AppContext
    from agent.app.gradio_compat import mark_launched, skip_login_check_thread_hop, use_lean_session_state
    from agent.app.llm import LLMError, Providers
    from agent.app.ui import build_app
    from agent.sessions.manager import SessionManager

    settings = loaded.settings
    providers = Providers(settings, sim_base_url)
    sessions = SessionManager.from_settings(settings, state_dir)
    sessions.default_model = providers.default_model(settings.llm.provider)
    with contextlib.suppress(LLMError):
        providers.chat_model(settings.llm.provider)  # import langchain/openai now, not in the first chat
    ctx = AppContext(loaded=loaded, sessions=sessions, providers=providers, browser_secret=browser_secret(state_dir))
    launch_kwargs: dict[str, Any] = {}
    if settings.server.app:  # an operator's own Gradio app, with the profile applied to it
        demo, launch_kwargs = _operator_app(ctx, processes)
    else:
        if settings.agent.factory:
            from agent.agents.custom import load

            ctx.custom_agent = load(settings.agent.factory)  # a bad spec: ConfigError, exit 2 before serving
        demo = build_app(ctx)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any):  # type: ignore[no-untyped-def]
        interval_s = min(60.0, settings.sessions.idle_ttl_s / 4)
        sweepers = [asyncio.create_task(sessions.run_sweeper(interval_s)),
                    asyncio.create_task(_forget_ended_gradio_sessions(demo, ctx, interval_s))]
        try:
            yield
        finally:
            for sweeper in sweepers:
                sweeper.cancel()
            sessions.close()

    api = FastAPI(title="cmw", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/admin/openapi.json")
    from agent.app.admin import admin_router, admin_token, docs_router, token_dependency
    from agent.app.metrics import metrics_router

    token = admin_token(settings, state_dir)
    require_token = token_dependency(token)
    api.include_router(admin_router(ctx, require_token))
    api.include_router(docs_router("cmw"))
    api.include_router(metrics_router(ctx, require_token if settings.admin.metrics_require_token else None))
    from agent.app.dashboard import MOUNT as DASHBOARD
    from agent.app.dashboard import mount_dashboard

    mount_dashboard(api, ctx, token=token, processes=processes)  # before the UI at "/", which would answer for it

    @api.get("/gradio_api/deep_link", include_in_schema=False)
    def no_deep_links() -> None:
        # Gradio would write any session's component values (its chat) to a file for whoever names the
        # session hash, and fills disk on repeat. cmw has no deep-link button, and its session states
        # hold only the blocks each session touched (agent/app/gradio_compat.py).
        raise HTTPException(404, "deep links are off in cmw")

    ttl = settings.server.upload_cache_ttl_s
    demo.delete_cache = (max(1, min(ttl, 3600) // 4), ttl)  # Gradio's cleanup of its upload cache (and on exit)
    mount: dict[str, Any] = {"footer_links": ["api", "settings"], **launch_kwargs}
    if not settings.server.app:  # cmw's own UI speaks English and Russian (agent/app/i18n.py)
        from agent.app.i18n import gradio_i18n

        mount["i18n"] = gradio_i18n(settings.ui.language)
    app = gr.mount_gradio_app(
        api,
        demo,
        path="/",
        root_path=settings.server.root_path or None,
        max_file_size=settings.sessions.max_upload_bytes,
        ssr_mode=False,
        run_history=False,
        # Gradio's traffic dashboard: off. cmw's admin API and /metrics report the same figures behind
        # the admin token; Gradio's /monitoring/summary would answer anyone.
        enable_monitoring=False,
        **mount,
    )
    mark_launched(demo)
    use_lean_session_state(demo)
    skip_login_check_thread_hop(app)
    from agent.app.guard import RequestGuard

    app.add_middleware(RequestGuard, settings=settings, fns=demo.fns, on_refused=ctx.metrics.request_refused,
                       skip_prefix=f"{DASHBOARD}/")  # the dashboard's events are not the app's; its gate guards them
    app.add_middleware(DrainMiddleware, ctx=ctx)
    if not settings.server.app:  # the page speaks the language the server chose: Gradio's own strings too
        from agent.app.gradio_compat import PageLocale
        from agent.app.i18n import choose

        app.add_middleware(PageLocale, language_of=lambda accept: choose(settings.ui.language, accept))
    ctx.startup_log.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} cmw {_version()} started")
    ctx.startup_log.append(f"profile {loaded.profile_name}; provider {settings.llm.provider}")
    ctx.startup_log.append("limits " + ", ".join(f"{k}={v['limit']}" for k, v in ctx.monitor.as_dict().items()))
    for warning in loaded.warnings:
        ctx.startup_log.append(f"warning: {warning}")
    return app, ctx


def _operator_app(ctx: Any, processes: int) -> tuple[Any, dict[str, Any]]:
    """The app ``server.app`` names, loaded, with the profile's queue and per-event limits applied; and what
    its ``launch()`` carried that cmw passes on (auth, theme, css, …)."""
    from agent.app.gradio_compat import cap_session_states, pace_streaming_events
    from agent.app.queue import QueueMonitor, apply_queue
    from agent.app.streaming import paced
    from agent.apps.limits import apply_event_limits
    from agent.apps.loading import load_app
    from agent.apps.sessions import AppSessions

    settings = ctx.settings
    served = load_app(settings.server.app)
    if processes > 1 and served.launch_kwargs.get("auth"):
        from agent.settings import ConfigError, Problem

        raise ConfigError([Problem(
            f"{served.spec}: launch(auth=...) with server.workers = {processes}: Gradio keeps logins "
            "in each process, so a login would be known to one worker only; serve it with one worker, or "
            "authenticate in the reverse proxy in front"
        )])
    demo = served.blocks
    limits = apply_event_limits(demo, settings)
    cap_session_states(demo, max(100, settings.server.max_threads))
    apply_queue(demo, settings)
    streams = pace_streaming_events(demo, lambda fn: paced(fn, ctx.pacer))
    named = {item.api_name or f"fn_{item.fn_index}": {"id": item.fn_index, "source": item.source} for item in limits}
    ctx.monitor = QueueMonitor(demo, named)
    ctx.app_sessions = AppSessions(demo, {dep["id"]: name for name, dep in named.items()},
                                   capacity=settings.sessions.max_sessions, idle_ttl_s=settings.sessions.idle_ttl_s)
    ctx.app_sessions.attach()
    for warning in served.overridden:
        log.warning("%s", warning)
        ctx.loaded.warnings.append(warning)
    ctx.startup_log.append(f"app {served.spec} ({served.name}): {len(limits)} events, {streams} streaming")
    return demo, dict(served.launch_kwargs)


async def _forget_ended_gradio_sessions(demo: Any, ctx: Any, interval_s: float) -> None:
    """Sweep Gradio's per-session queue entries on the event loop, where Gradio mutates them: those of
    sessions cmw has freed (an operator's app: those idle past the TTL)."""
    from agent.app.gradio_compat import forget_ended_sessions

    def is_live(session_hash: str) -> bool:
        return ctx.sessions.is_live(ctx.sessions.conversation_id(session_hash))

    while True:
        await asyncio.sleep(interval_s)
        try:
            if ctx.app_sessions is not None:
                ctx.app_sessions.sweep()
            forget_ended_sessions(demo, ctx.app_sessions.is_live if ctx.app_sessions is not None else is_live)
        except Exception:  # the sweep must outlive any one failure
            log.exception("sweep of Gradio's session entries failed")


def _version() -> str:
    from agent import __version__

    return __version__

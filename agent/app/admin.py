"""The admin API beside the app: health, sessions, queue figures and effective config under /admin/api.

Every route needs ``Authorization: Bearer <token>``: missing → 401 (with ``WWW-Authenticate: Bearer``),
wrong → 403, and neither carries any data. The one exception is the liveness probe ``GET /admin/api/live``,
which answers ``ok`` and nothing else. The token is ``admin.token`` when set; otherwise one is
generated and written 0600 to ``<state_dir>/admin.token``, where local ``cmw status`` / ``cmw sessions``
find it without flags. A generated token is kept across restarts (so scripts and a running ``cmw sessions
watch`` survive a restart) unless its file is readable by others, in which case it is replaced.

Routes are ``async``: they run on the event loop beside the chat handlers, so they see sessions between
two handler steps, never halfway through one. The token itself is never logged or returned.

No ``from __future__ import annotations`` here: FastAPI resolves the route annotations at runtime.
Importing this module is cheap (FastAPI loads inside :func:`admin_router`), so the CLI can use
:func:`token_path` without paying for the web stack.
"""

import asyncio
import contextlib
import os
import secrets
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.app.context import AppContext
    from agent.settings import Settings

TOKEN_FILE = "admin.token"
PREFIX = "/admin/api"


def token_path(state_dir: Path) -> Path:
    """Where a generated admin token lives."""
    return Path(state_dir) / TOKEN_FILE


def admin_token(settings: "Settings", state_dir: Path) -> str:
    """The token the admin API accepts: ``admin.token``, else the one in the state dir (created if needed)."""
    path = token_path(state_dir)
    configured = settings.admin.token.get_secret_value() if settings.admin.token is not None else ""
    if configured:
        # A file left by an earlier start would now be refused: remove it so `cmw` does not offer it.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return configured
    existing = _read_private(path)
    if existing:
        return existing
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a process of this pid that died: O_EXCL below refuses anything already there
    # O_EXCL: a file (or symlink) planted under this name is never written through; O_NOFOLLOW says so twice.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.replace(tmp, path)  # a reader sees the old file or the whole new one, never half of it
    return token


def _read_private(path: Path) -> str | None:
    """The token in ``path`` if the file is ours and private (0600 or tighter) and not a symlink, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as handle:
        try:
            info = os.fstat(handle.fileno())
            if info.st_uid != os.getuid() or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                return None
            return handle.read().strip() or None
        except (OSError, UnicodeDecodeError):
            return None


def token_refusal(authorization: str | None, expected: str) -> tuple[int, str] | None:
    """(status, detail) when an ``Authorization`` header does not carry the admin token, else None."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        return 401, "missing admin token"
    if not secrets.compare_digest(credentials.encode("utf-8"), expected.encode("utf-8")):
        return 403, "invalid admin token"
    return None


def token_dependency(expected: str) -> Any:
    """A FastAPI dependency that lets only requests with the admin token through (Bearer, in the OpenAPI doc)."""
    from fastapi import HTTPException, Security
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    bearer = HTTPBearer(auto_error=False, description="The admin token (admin.token or <state dir>/admin.token).")

    def require_token(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:  # noqa: B008
        header = f"{credentials.scheme} {credentials.credentials}" if credentials is not None else None
        refusal = token_refusal(header, expected)
        if refusal is not None:
            status, detail = refusal
            raise HTTPException(status, detail, headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)

    return require_token


def admin_router(ctx: "AppContext", require_token: Any) -> Any:
    """The ``/admin/api`` routes of one app (a FastAPI ``APIRouter``), all behind the admin token but ``live``."""
    from fastapi import APIRouter, Depends, HTTPException, Query, Request
    from fastapi import Path as PathParam
    from fastapi.responses import PlainTextResponse

    from agent import __version__
    from agent.app import admin_models as models
    from agent.app.queue import LimitRefused, LiveLimits
    from agent.stats import percentiles

    router = APIRouter(prefix=PREFIX, tags=["admin"], dependencies=[Depends(require_token)])

    @router.get("/health", response_model=models.Health)
    async def health() -> dict[str, Any]:
        """Whether the server takes work, what it runs, and its turns (failures by error class)."""
        settings = ctx.settings
        return {
            "status": "draining" if ctx.draining else "ok",
            "version": __version__,
            "profile": ctx.loaded.profile_name,
            "app": settings.server.app or None,
            "uptime_s": round(time.time() - ctx.started, 1),
            "provider": settings.llm.provider,
            "model": ctx.sessions.default_model,
            "sessions": {**ctx.app_sessions.counts(), "stored": None} if ctx.app_sessions is not None
            else {**ctx.sessions.counts(), "stored": await asyncio.to_thread(ctx.sessions.stored_count)},
            "turns": ctx.metrics.turn_figures(),
        }

    app_sessions = ctx.app_sessions  # an operator's app: its Gradio sessions; else cmw's conversations

    @router.get("/sessions", response_model=list[models.SessionSummary | models.AppSessionSummary])
    async def sessions(
        offset: int = Query(0, ge=0, le=10_000_000), limit: int = Query(1000, ge=1, le=10_000)
    ) -> list[dict[str, Any]]:
        """A page of conversations: those in memory first (running/idle), then the stored ones (``stored``).
        Serving an operator's app: its Gradio sessions, running first, then waiting, then idle."""
        if app_sessions is not None:
            return app_sessions.summaries(offset, limit)
        return await asyncio.to_thread(ctx.sessions.summaries, offset, limit)

    @router.get("/sessions/{session_id}", response_model=models.SessionDetail | models.AppSessionDetail)
    async def session(session_id: str) -> dict[str, Any]:
        """One conversation, by its id or a Gradio session hash of it, with its history and files (an
        operator's app: one Gradio session, with its events by api name and what runs or waits now)."""
        if app_sessions is not None:
            found = app_sessions.detail(session_id)
        else:
            found = await asyncio.to_thread(_peek, session_id)
        if found is None:
            raise HTTPException(404, "no such session")
        return found

    @router.delete("/sessions/{session_id}", response_model=models.Ended, response_model_exclude_none=True)
    async def end_session(session_id: str) -> dict[str, Any]:
        """End a conversation for good: memory, stored history and files; its restore token stops working.
        An operator's app: cancel the session's running and waiting events (its client sees an error)."""
        if app_sessions is not None:
            cancelled = await app_sessions.kill(session_id)
            if cancelled is None:
                raise HTTPException(404, "no such session")
            return {"id": session_id, "ended": "killed", "cancelled": cancelled}
        ended = await asyncio.to_thread(_end, session_id)
        if ended is None:
            raise HTTPException(404, "no such session")
        return {"id": ended, "ended": "killed"}

    def _peek(session_id: str) -> dict[str, Any] | None:
        found = ctx.sessions.peek(session_id)
        return found if found is not None else ctx.sessions.peek(ctx.sessions.conversation_id(session_id))

    def _end(session_id: str) -> str | None:
        for candidate in (session_id, ctx.sessions.conversation_id(session_id)):
            if ctx.sessions.end(candidate, "killed"):
                return candidate
        return None

    @router.get("/queue", response_model=models.Queue)
    async def queue() -> dict[str, Any]:
        """Live waiting/running/limit per event and recent reply latency percentiles (seconds)."""
        monitor = ctx.monitor
        return {
            "events": monitor.as_dict() if monitor is not None else {},
            "waiting_total": monitor.total_waiting if monitor is not None else 0,
            "in_flight": ctx.in_flight,
            "e2e_s": _rounded(percentiles(ctx.latencies)),
            "ttft_s": _rounded(percentiles(ctx.ttfts)),
            "samples": len(ctx.latencies),
        }

    @router.get("/config", response_model=dict[str, models.SettingEntry])
    async def config() -> dict[str, dict[str, Any]]:
        """Effective settings with their sources (``live`` for a limit changed on the running server); secrets
        masked."""
        return ctx.live_limits.describe() if ctx.live_limits is not None else ctx.loaded.describe()

    if ctx.monitor is not None:
        ctx.live_limits = LiveLimits(ctx.monitor, ctx.loaded, app=bool(ctx.settings.server.app),
                                     log_lines=ctx.startup_log)
    refusals: dict[int | str, dict[str, Any]] = {
        status: {"model": models.Problem, "description": why} for status, why in (
            (404, "No such event."), (409, "enable_concurrent_processing is false: every limit is 1 by design."),
            (422, "A limit outside 1..server.max_threads, or a malformed body."),
        )
    }

    @router.get("/limits", response_model=models.Limits, response_model_exclude_unset=True)
    async def limits() -> dict[str, Any]:
        """Every event's concurrency limit now, where it came from, and its last live change."""
        if ctx.live_limits is None:
            return {"events": {}, "max_threads": ctx.settings.server.max_threads}
        return ctx.live_limits.view()

    # The body is read in the handler, after the token dependency: a body parameter would be parsed first, so a
    # stranger's malformed JSON would get a 422 describing it instead of the 401 every admin route gives.
    @router.put("/limits/{event}", response_model=models.LimitChanged, response_model_exclude_unset=True,
                responses=refusals, openapi_extra={"requestBody": {"required": True, "content": {
                    "application/json": {"schema": models.LimitChange.model_json_schema()}}}})
    async def change_limit(request: Request, event: str = PathParam(max_length=200)) -> dict[str, Any]:
        """Change an event's limit on the running server, at once: a raised limit starts waiting jobs, a lowered
        one lets running jobs finish and starts none until fewer run. Events sharing its pool change with it.
        Lasts until the process stops; logged with the old and new value and the client's address."""
        from fastapi.exceptions import RequestValidationError
        from pydantic import ValidationError

        try:
            change = models.LimitChange.model_validate_json(await request.body())
        except ValidationError as invalid:
            raise RequestValidationError(invalid.errors(include_url=False)) from None
        if ctx.live_limits is None:
            raise HTTPException(404, f"no event {event!r} on this server")
        try:
            return ctx.live_limits.change(event, change.limit, request.client.host if request.client else "unknown")
        except LimitRefused as refused:
            raise HTTPException(refused.status, refused.detail) from None

    outer = APIRouter()

    @outer.get(f"{PREFIX}/live", tags=["admin"], response_class=PlainTextResponse)
    async def live() -> str:
        """Liveness: ``ok`` while the process answers HTTP. No token, and it says nothing else."""
        return "ok"

    outer.include_router(router)
    return outer


DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}
# The page runs one inline script (Swagger UI's set-up); everything else must come from this server.
DOCS_POLICY = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def docs_router(title: str) -> Any:
    """``/admin/docs``: Swagger UI from the assets the ``fastapi-offline`` package ships, never from a CDN.

    The admin token is typed into this page, so no third-party script may run on it; the Content-Security-Policy
    makes the browser refuse one even if something tried. Links are relative, so the page works under a sub-path.
    """
    from importlib.resources import files

    from fastapi import APIRouter, HTTPException
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse, Response

    static = files("fastapi_offline") / "static"
    router = APIRouter(include_in_schema=False)

    @router.get("/admin/docs")
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="openapi.json", title=f"{title} admin API", swagger_js_url="docs/swagger-ui-bundle.js",
            swagger_css_url="docs/swagger-ui.css", swagger_favicon_url="docs/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = DOCS_POLICY
        return page

    @router.get("/admin/docs/{asset}")
    async def asset(asset: str) -> Response:
        if asset not in DOCS_ASSETS:
            raise HTTPException(404)
        return Response((static / asset).read_bytes(), media_type=DOCS_ASSETS[asset],
                        headers={"Cache-Control": "public, max-age=86400"})

    return router


def _rounded(figures: dict[str, float | None]) -> dict[str, float | None]:
    return {name: None if value is None else round(value, 4) for name, value in figures.items()}

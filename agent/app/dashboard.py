"""The operator dashboard at ``/admin/``: live plots per event and worker, and a sessions table with kill.

A second Gradio Blocks, mounted at ``/admin/dashboard/`` beside the app (:func:`mount_dashboard`), behind the
login of :mod:`agent.app.dashboard_auth`. It has its own queue, and its events their own pools
(:data:`REFRESH_LIMIT`, :data:`KILL_LIMIT`), so a viewer never takes a chat slot; its queue looks for work
every 50 ms instead of every millisecond. A ``gr.Timer`` refreshes every :data:`REFRESH_S` seconds from the
ring buffer of :mod:`agent.app.dashboard_feed`. Renderings are shared by every viewer and handed over as made
(``postprocess=False``): the plots (pandas frames through the components' own postprocessing) once per 5-second
step, event, worker and language, the tables once per second; a page that already shows a step's plots gets
them skipped. The sessions table and Kill go through the admin API's own routes (in process;
with ``--workers N`` through this worker's fan-out over loopback), so Kill does what ``DELETE
/admin/api/sessions/{id}`` does, and only for a request from the dashboard's own page.

No ``from __future__ import annotations``: FastAPI resolves the peer routes' annotations at runtime.
"""

import asyncio
import contextlib
import math
import time
import warnings
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, Field

from agent.app.dashboard_auth import CookieGate, LoginCookies, login_router, same_origin
from agent.app.dashboard_feed import (
    BUCKET_S,
    REVOKE_PATH,
    SAMPLES_PATH,
    WINDOW_S,
    Feed,
    Sampler,
    buckets,
    total,
    trailing_percentiles,
    worker_now,
)
from agent.app.dashboard_text import say
from agent.app.i18n import gradio_i18n, request_language

MOUNT = "/admin/dashboard"
REFRESH_S = 2.0
REFRESH_LIMIT = 4  # viewers' refreshes at once (each is a few milliseconds of the event loop)
KILL_LIMIT = 2
IDLE_POLL_S = 0.05
SESSIONS_SHOWN = 100
LOGOUT_JS = """() => { fetch(new URL('../logout', window.location.href), {method: 'POST', credentials: 'same-origin'})
  .finally(() => { window.location.href = new URL('../', window.location.href).href; }); }"""


class _Revoke(BaseModel):
    cookie: str = Field(max_length=200)


class AdminCalls:
    """The admin API's sessions routes, called as a client would: in process over ASGI, or with ``--workers N``
    through this worker's port (its fan-out asks every worker)."""

    def __init__(self, app: Any, feed: Feed):
        self.app = app
        self.feed = feed
        self._local: Any = None
        self._sessions: list[dict[str, Any]] = []
        self._sessions_at = -math.inf
        self._lock = asyncio.Lock()

    def _target(self) -> tuple[Any, str]:
        import httpx

        if self.feed.processes > 1 and self.feed.local_port is not None:
            return self.feed.client(), f"http://127.0.0.1:{self.feed.local_port}"
        if self._local is None:
            self._local = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), timeout=10,
                                            headers={"Authorization": f"Bearer {self.feed.token}"})
        return self._local, "http://cmw.internal"

    async def sessions(self) -> list[dict[str, Any]]:
        """Live sessions first, then stored ones (``GET /admin/api/sessions``), read at most once a second."""
        import httpx

        async with self._lock:
            if time.monotonic() - self._sessions_at >= 1.0:
                client, base = self._target()
                try:
                    answer = await client.get(f"{base}/admin/api/sessions", params={"limit": SESSIONS_SHOWN})
                    self._sessions = answer.json() if answer.status_code == 200 else []
                except (httpx.HTTPError, ValueError):
                    self._sessions = []
                self._sessions_at = time.monotonic()
        return self._sessions

    async def end(self, session_id: str) -> int:
        """``DELETE /admin/api/sessions/{id}``: its HTTP status (0 when no worker answered)."""
        import httpx

        client, base = self._target()
        try:
            answer = await client.delete(f"{base}/admin/api/sessions/{quote(session_id, safe='')}")
        except httpx.HTTPError:
            return 0
        finally:
            self._sessions_at = -math.inf  # the next refresh reads the table without it
        return answer.status_code

    async def close(self) -> None:
        if self._local is not None:
            await self._local.aclose()


def _ago(seconds: float, language: str) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return say("dashboard.ago.s", language, n=seconds)
    if seconds < 7200:
        return say("dashboard.ago.min", language, n=seconds // 60)
    return say("dashboard.ago.h", language, n=seconds // 3600)


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


class Views:
    """The refresh's outputs, shared by every viewer: the plots rendered once per 5-second step (their data changes
    no more often), per event, worker and language; the status line and the tables once per second and language."""

    def __init__(self, feed: Feed, calls: AdminCalls, components: dict[str, Any]):
        self.feed = feed
        self.calls = calls
        self.components = components
        self._plots: dict[str, list[Any]] = {}
        self._tables: dict[tuple[int, str], list[Any]] = {}
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Read the sessions afresh on the next refresh (one was just killed)."""
        self._tables.clear()

    async def render(self, event: str, worker: str, language: str) -> tuple[str, list[Any], list[Any]]:
        """(the plots' key, the five plots, [status, workers table, sessions table])."""
        async with self._lock:  # one rendering at a time: a second viewer waits for it, then reuses it
            now = time.time()
            workers = await self.feed.workers()
            step = math.floor(now / BUCKET_S)
            key = f"{step}|{event}|{worker}|{language}"
            plots = self._plots.get(key)
            if plots is None:
                self._plots = {k: v for k, v in self._plots.items() if k.startswith(f"{step}|")}
                plots = self._plots[key] = self._render_plots(workers, event, worker, language, now)
            tables = self._tables.get((int(now), language))
            if tables is None:
                self._tables = {k: v for k, v in self._tables.items() if k[0] == int(now)}
                sessions = await self.calls.sessions()
                tables = self._tables[(int(now), language)] = [
                    self._status(language, now), self._workers_table(workers, now, language),
                    self._sessions_table(sessions, now, language)]
            return key, plots, tables

    def _render_plots(self, workers: dict[int, Any], event: str, worker: str, language: str, now: float) -> list[Any]:
        import pandas as pd

        per_worker = {index: buckets(samples, event, now) for index, samples in workers.items()}
        if worker == "all" or not worker.isdigit() or int(worker) not in per_worker:
            points = total(list(per_worker.values())) if len(per_worker) > 1 else next(iter(per_worker.values()))
        else:
            points = per_worker[int(worker)]
        ordered = [points[step] for step in sorted(points)]
        classes = sorted({c for p in ordered for c in p.errors_per_min})

        def name(key: str) -> str:
            return say(f"dashboard.series.{key}", language)

        # plot -> series -> its (time, value) points, in the order the legend lists them
        plots: dict[str, dict[str, list[tuple[float, float]]]] = {
            "queue": {name("running"): [], name("waiting"): [], name("limit"): []},
            "replies": {name("replies"): []},
            "latency": {name(f"{s}_{q}"): [] for s in ("ttft", "e2e") for q in ("p50", "p95")},
            "errors": {name("all_errors"): [], **{c: [] for c in classes}},
            "sessions_plot": {name("active"): [], name("busy"): []},
        }
        for p in ordered:
            plots["queue"][name("running")].append((p.t, p.running))
            plots["queue"][name("waiting")].append((p.t, p.waiting))
            if p.limit is not None:
                plots["queue"][name("limit")].append((p.t, p.limit))
            if p.rps is not None:
                plots["replies"][name("replies")].append((p.t, p.rps))
                plots["errors"][name("all_errors")].append((p.t, sum(p.errors_per_min.values())))
                for c in classes:
                    plots["errors"][c].append((p.t, p.errors_per_min.get(c, 0.0)))
            plots["sessions_plot"][name("active")].append((p.t, p.sessions))
            plots["sessions_plot"][name("busy")].append((p.t, p.busy))
        for which in ("ttft", "e2e"):
            for t, p50, p95 in trailing_percentiles(points, which):
                for q, value in (("p50", p50), ("p95", p95)):
                    if value is not None:
                        plots["latency"][name(f"{which}_{q}")].append((t, value))
        # Gradio's plot fixes its colours (and legend) to the series of the first value it draws and only swaps the
        # data after: every series is named from the start, by a point without a value where the time axis starts
        # (the window's start, or the first sample of a server younger than the window). Error classes come and go:
        # the errors plot's caption names them, and a new caption makes the plot draw itself anew with them.
        first = min((samples[0].t for samples in workers.values() if samples), default=now)
        start = max(math.floor(now / BUCKET_S) * BUCKET_S - WINDOW_S, math.floor(first / BUCKET_S) * BUCKET_S) \
            + BUCKET_S  # the end of the first step: where its point is drawn
        out = []
        with warnings.catch_warnings():  # pandas 3 on how Gradio's plot serialises dates: not ours to change
            warnings.filterwarnings("ignore", module=r"gradio\.components\.native_plot")
            for key, series in plots.items():
                rows = [(start, math.nan, label) for label in series]
                rows += [(t, v, label) for label, line in series.items() for t, v in _flat_runs_thinned(line)]
                frame = pd.DataFrame({
                    "time": pd.to_datetime(pd.Series([r[0] for r in rows], dtype="float64"), unit="s"),
                    "value": pd.Series([r[1] for r in rows], dtype="float64"),
                    "series": pd.Series([r[2] for r in rows], dtype="object"),
                })
                out.append(self.components[key].postprocess(frame).model_dump())
        out[3] = {"__type__": "update", "value": out[3], "caption": " · ".join(classes)}
        return out

    def _status(self, language: str, now: float) -> str:
        line = say("dashboard.updated", language, time=time.strftime("%H:%M:%S UTC", time.gmtime(now)),
                   workers=max(1, len(self.feed.ports or [0])), bucket=BUCKET_S)
        missing = {i: why for i, why in self.feed.missing.items()}
        if missing:
            which = ", ".join(f"#{i}" if i >= 0 else "?" for i in sorted(missing))
            line += "  \n" + say("dashboard.unavailable", language, workers=which,
                                 reason=", ".join(sorted(set(missing.values()))))
        return line

    def _workers_table(self, workers: dict[int, Any], now: float, language: str) -> dict[str, Any]:
        import pandas as pd

        rows = [worker_now(index, samples, now) for index, samples in sorted(workers.items())]
        columns = ["worker", "running", "waiting", "sessions", "rps", "ttft_p95", "e2e_p95", "errors", "status"]
        data = [[f"#{r.worker}", r.running, r.waiting, r.sessions, _num(r.rps), _num(r.ttft_p95), _num(r.e2e_p95),
                 r.failed, say("dashboard.status.ok" if r.fresh else "dashboard.status.unreachable", language)]
                for r in rows]
        if len(rows) > 1:
            rps = [r.rps for r in rows if r.rps is not None]
            data.append(["Σ", sum(r.running for r in rows), sum(r.waiting for r in rows),
                         sum(r.sessions for r in rows), _num(sum(rps) if rps else None),
                         _num(max((r.ttft_p95 for r in rows if r.ttft_p95 is not None), default=None)),
                         _num(max((r.e2e_p95 for r in rows if r.e2e_p95 is not None), default=None)),
                         sum(r.failed for r in rows), ""])
        frame = pd.DataFrame([[str(v) for v in row] for row in data],
                             columns=[say(f"dashboard.col.{c}", language) for c in columns])
        return self.components["workers"].postprocess(frame).model_dump()

    def _sessions_table(self, sessions: list[dict[str, Any]], now: float, language: str) -> dict[str, Any]:
        import pandas as pd

        columns = ["id", "state", "turns", "tokens", "model", "last_active"]
        data = []
        for s in sessions:
            state = str(s.get("state"))
            model = f"{s['provider']} / {s['model']}" if s.get("provider") else "–"
            data.append([str(s.get("id", "")),
                         say(f"dashboard.state.{state}", language) if state in ("running", "idle", "stored") else state,
                         str(s.get("turns", "")), str(s["tokens"]) if "tokens" in s else "–", model,
                         _ago(now - float(s.get("last_active") or now), language)])
        frame = pd.DataFrame(data, columns=[say(f"dashboard.col.{c}", language) for c in columns])
        return self.components["sessions"].postprocess(frame).model_dump()


def _flat_runs_thinned(line: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points of a line but the inner ones of each flat run: the line drawn through them is the same, and an
    idle server's 15 minutes are a few points instead of 180."""
    return [point for i, point in enumerate(line)
            if i in (0, len(line) - 1) or not line[i - 1][1] == point[1] == line[i + 1][1]]


def build_dashboard(ctx: Any, views_for: Any, calls: AdminCalls, processes: int) -> Any:
    """The dashboard's Blocks; ``views_for(components)`` makes the :class:`Views` that feeds them."""
    import gradio as gr

    forced = ctx.settings.ui.language
    tr = gradio_i18n(forced)
    events = list(ctx.monitor.as_dict()) if ctx.monitor is not None else []
    title_language = forced if forced in ("en", "ru") else "en"

    def plot(key: str) -> Any:
        # Axis titles are blank (a static config cannot follow the viewer's language); the label says what it is.
        return gr.LinePlot(x="time", y="value", color="series", x_title=" ", y_title=" ", color_title=" ",
                           label=tr(f"dashboard.plot.{key}"), show_label=True, y_lim=[0, None], y_axis_format="~g",
                           elem_id=f"dashboard-{key}")

    with gr.Blocks(title=say("dashboard.title", title_language), analytics_enabled=False, fill_width=True) as demo:
        timer = gr.Timer(REFRESH_S)
        with gr.Row(equal_height=True):
            with gr.Column(scale=3):
                gr.Markdown("## " + tr("dashboard.title"))
                status = gr.Markdown()
            event = gr.Dropdown(events, value=events[0] if events else None, label=tr("dashboard.event"), scale=1,
                                min_width=160)
            worker = gr.Dropdown([(tr("dashboard.all_workers"), "all"), *((f"#{i}", str(i)) for i in range(processes))],
                                 value="all", label=tr("dashboard.worker"), visible=processes > 1, scale=1,
                                 min_width=160)
            logout = gr.Button(tr("dashboard.logout"), variant="secondary", size="sm", scale=0, min_width=100)
        with gr.Row():
            queue_plot, replies_plot, latency_plot = plot("queue"), plot("replies"), plot("latency")
        with gr.Row():
            errors_plot, sessions_plot = plot("errors"), plot("sessions")
        workers_table = gr.Dataframe(label=tr("dashboard.workers"), interactive=False, max_height=300,
                                     elem_id="dashboard-workers")
        sessions_table = gr.Dataframe(label=tr("dashboard.sessions"), interactive=False, max_height=360,
                                      elem_id="dashboard-session-table")
        with gr.Row(equal_height=True):
            session_id = gr.Textbox(label=tr("dashboard.session_id"), max_lines=1, max_length=200,
                                    placeholder=tr("dashboard.session_id.placeholder"))
            kill_button = gr.Button(tr("dashboard.kill"), variant="stop", scale=0, min_width=160)
            notice = gr.Textbox(show_label=False, interactive=False, container=False)

        views = views_for({"queue": queue_plot, "replies": replies_plot, "latency": latency_plot,
                           "errors": errors_plot, "sessions_plot": sessions_plot, "workers": workers_table,
                           "sessions": sessions_table})

        async def refresh(event_name: str | None, worker_choice: str | None, shown_key: str | None,
                          request: gr.Request) -> list[Any]:
            """The status, plots and tables; plots this page already shows are skipped (they change every 5 s and
            it asks every 2 s), which spares sending, and Gradio walking, a few thousand values."""
            language = request_language(forced, request)
            key, plots, (status_line, workers_now, sessions_now) = await views.render(
                event_name or "", worker_choice or "all", language)
            if key == shown_key:
                plots = [gr.skip()] * len(plots)
            return [status_line, *plots, workers_now, sessions_now, key]

        async def pick(selected: gr.SelectData) -> str:
            row = selected.row_value
            return str(row[0]) if row else ""

        async def kill(session: str, request: gr.Request) -> str:
            language = request_language(forced, request)
            if same_origin(request.headers) is not True:  # only this page's own requests: never another site's
                return say("dashboard.kill_refused", language)
            session = (session or "").strip()
            if not session:
                return say("dashboard.no_id", language)
            status = await calls.end(session)
            views.invalidate()
            if status == 200:
                return say("dashboard.killed", language, id=session)
            if status == 404:
                return say("dashboard.not_found", language, id=session)
            return say("dashboard.kill_failed", language, reason=f"HTTP {status}" if status else "no answer")

        own = {"api_visibility": "private", "show_progress": "hidden"}
        shown = gr.State("")  # the key of the plots this page shows
        gr.on([timer.tick, demo.load, event.change, worker.change], refresh, inputs=[event, worker, shown],
              outputs=[status, queue_plot, replies_plot, latency_plot, errors_plot, sessions_plot, workers_table,
                       sessions_table, shown], postprocess=False, concurrency_limit=REFRESH_LIMIT,
              concurrency_id="dashboard_refresh", **own)
        sessions_table.select(pick, outputs=session_id, concurrency_limit=REFRESH_LIMIT,
                              concurrency_id="dashboard_refresh", **own)
        kill_button.click(kill, inputs=session_id, outputs=notice, concurrency_limit=KILL_LIMIT,
                          concurrency_id="dashboard_kill", **own)
        logout.click(None, js=LOGOUT_JS)
    return demo


def mount_dashboard(api: Any, ctx: Any, *, token: str, processes: int = 1) -> Feed:
    """Add the login routes, the peer routes and the dashboard (mounted before the app's own UI at ``/``, which
    would otherwise answer for ``/admin/dashboard``); its sampler runs in ``api``'s lifespan. The feed."""
    import gradio as gr
    from fastapi import APIRouter, Depends, Query
    from starlette.routing import Mount

    from agent.app.admin import token_dependency
    from agent.app.gradio_compat import mark_launched, slow_idle_polling, use_lean_session_state

    settings = ctx.settings
    sampler = Sampler(ctx)
    feed = Feed(sampler, token, processes)
    cookies = LoginCookies(token)
    calls = AdminCalls(api, feed)
    api.include_router(login_router(cookies, token, forced_language=settings.ui.language,
                                    root_path=settings.server.root_path, on_logout=feed.broadcast_revoke))

    peers = APIRouter(include_in_schema=False, dependencies=[Depends(token_dependency(token))])

    @peers.get(SAMPLES_PATH)
    async def samples(since: float = Query(0.0)) -> list[dict[str, Any]]:
        """This process's samples newer than ``since`` (unix time), for the worker a viewer reached."""
        return [sample.as_json() for sample in sampler.since(since)]

    @peers.post(REVOKE_PATH)
    async def revoke(body: _Revoke) -> dict[str, bool]:
        """A cookie logged out on another worker."""
        return {"revoked": cookies.revoke(body.cookie)}

    api.include_router(peers)
    demo = build_dashboard(ctx, lambda components: Views(feed, calls, components), calls, processes)
    demo.queue(default_concurrency_limit=REFRESH_LIMIT, max_size=64, api_open=False)
    gr.mount_gradio_app(api, demo, path=MOUNT, root_path=settings.server.root_path or None, footer_links=[],
                        ssr_mode=False, run_history=False, enable_monitoring=False, max_file_size=1024,
                        i18n=gradio_i18n(settings.ui.language))
    mounted = next(r for r in api.routes if isinstance(r, Mount) and r.path == MOUNT)
    mounted.app.add_middleware(CookieGate, cookies=cookies, on_request=feed.saw)
    mark_launched(demo)
    use_lean_session_state(demo)
    slow_idle_polling(demo, IDLE_POLL_S)

    inner = api.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):  # type: ignore[no-untyped-def]
        async with inner(app) as state:
            task = asyncio.create_task(sampler.run())
            try:
                yield state
            finally:
                task.cancel()
                await calls.close()
                await feed.close()

    api.router.lifespan_context = lifespan
    api.state.dashboard_feed = feed  # Starlette's place for what an app keeps: tests and benches read the ring
    return feed

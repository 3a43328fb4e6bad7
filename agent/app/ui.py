"""The Gradio agent app: Chat, Stats and Logs tabs over per-session agents.

Every handler that waits on the LLM is async, so a waiting chat holds no thread. Each browser
session (or gradio_client ``Client``) gets its own :class:`~agent.sessions.session.Session`; the chat event
is public as ``api_name="chat"``: input the message text, output the conversation.

The UI speaks English and Russian (:mod:`agent.app.i18n`): static strings through Gradio's ``gr.I18n``, strings
made at run time (chat notices, Stats cards, upload messages) in the request's language. The Stats and Logs tabs
refresh themselves on a timer that runs only while their tab is selected; ``/stats`` stays the data for API clients.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from pathlib import Path
from typing import Any

import gradio as gr

from agent import __version__
from agent.agents.steps import shown as shown_step
from agent.agents.steps import to_langchain
from agent.app import i18n
from agent.app.context import AppContext
from agent.app.gradio_compat import cap_session_states
from agent.app.llm import LLMError
from agent.app.queue import EVENTS, QueueMonitor, apply_queue, event_options
from agent.app.streaming import ReplyStream
from agent.app.uploads import attach_upload
from agent.sessions.session import Session
from agent.stats import percentiles

log = logging.getLogger("cmw.app")

MAX_MESSAGE_CHARS = 20_000
SYSTEM_PROMPT = "You are a helpful assistant. Answer the user's latest message."
FILE_TOOLS_NOTE = "Use the file tools (list_files, search_files, read_file) to read them."
REFRESH_EVERY_S = 2.0  # the Stats and Logs tabs, while selected
STATS_POOL = "stats_refresh"  # the Stats tab's event and the /stats API share one pool of slots

# Which refresh timer runs: set in the browser when a tab is selected (no server round trip), so a closed tab
# costs nothing. Outputs: [stats timer, logs timer].
_TIMERS = "() => [{{__type__: 'update', active: {}}}, {{__type__: 'update', active: {}}}]"
TIMERS_OFF, STATS_TIMER_ON, LOGS_TIMER_ON = (
    _TIMERS.format("false", "false"), _TIMERS.format("true", "false"), _TIMERS.format("false", "true"),
)

CARDS_CSS = """
h3 { margin: 4px 0 8px; font-size: var(--text-lg); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: 10px; margin-bottom: 12px; }
.card { border: 1px solid var(--border-color-primary); border-radius: var(--radius-lg); padding: 10px 12px;
        background: var(--block-background-fill); }
.label { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
.value { font-size: 1.3em; font-weight: 600; margin-top: 2px; overflow-wrap: anywhere; }
.note { color: var(--body-text-color-subdued); font-size: var(--text-sm); margin: 0 0 12px; }
"""


def _llm_messages(session: Session, file_tools: bool) -> list[Any]:
    """The conversation as LangChain messages; attached files are named (read through the file tools) or,
    without those tools, sent whole in the system message."""
    system = SYSTEM_PROMPT
    if session.files and file_tools:
        system += f"\n\nFiles the user attached: {', '.join(session.files)}. {FILE_TOOLS_NOTE}"
    elif session.files:
        attached = "\n\n".join(f"--- {name} ---\n{text}" for name, text in session.files.items())
        system += f"\n\nFiles the user attached:\n{attached}"
    return to_langchain(session.history, system)


def build_app(ctx: AppContext) -> gr.Blocks:
    """Build the Blocks with every limit applied from settings."""
    settings = ctx.settings

    def language(request: gr.Request) -> str:
        """The request's language: ``ui.language`` when it forces one, else the browser's Accept-Language."""
        return i18n.request_language(settings.ui.language, request)

    async def chat(message: str, request: gr.Request):  # type: ignore[no-untyped-def]
        session = await ctx.session_async(request)
        lang = language(request)
        text = (message or "").strip()
        if not text:
            yield shown(session.history), ""
            return
        if len(text) > MAX_MESSAGE_CHARS:  # the Textbox limit is the browser's; API clients are held to it here
            raise gr.Error(  # a client's mistake: the user sees why; no traceback in the server's log
                i18n.text("chat.too_long", lang, chars=i18n.number(len(text), lang),
                          limit=i18n.number(MAX_MESSAGE_CHARS, lang)),
                print_exception=False,
            )
        async with session.lock:
            _use_offered_model(ctx, session)
            ctx.sessions.start_turn(session, text)
            ctx.metrics.turn_started(session.provider)
            messages = _llm_messages(session, "files" in ctx.settings.agent.tools)
            session.log.append((time.time(), f"chat: turn {session.turns + 1} started ({session.provider})"))
            llm = ctx.settings.llm
            agent = ctx.agent_for(session)
            stream = ReplyStream(
                agent.run(session.provider, session.model, messages), ctx.pacer,
                max_chars=llm.max_reply_chars, deadline_s=llm.reply_deadline_s,
            )
            stream.start()  # the LLM request goes out while the UI shows the user's message
            error = None
            ctx.in_flight += 1
            try:
                yield shown(session.history), ""
                async for reply in stream.updates():
                    yield shown([*session.history, *_steps(stream), {"role": "assistant", "content": reply}]), ""
                reply = stream.text
            except LLMError as exc:
                error = exc.kind
                reply = (stream.text + "\n\n" if stream.text else "") + f"⚠️ {llm_notice(exc, session.provider, lang)}"
            except (asyncio.CancelledError, GeneratorExit):  # Stop pressed, or the client went away
                stopped = i18n.text("chat.stopped", lang)
                _finish(ctx, session, stream.text + (" " if stream.text else "") + stopped, stream, "stopped", lang)
                raise
            except Exception:  # the server and other sessions carry on; the user sees a clear notice
                log.exception("chat failed in session %s", session.id[:8])
                error = "app_error"
                reply = (stream.text + "\n\n" if stream.text else "") + f"⚠️ {i18n.text('errors.internal', lang)}"
            finally:
                ctx.in_flight -= 1
                stream.cancel()  # a no-op once the reply is complete
            _finish(ctx, session, reply, stream, error, lang)
            yield shown(session.history), ""

    def shown(messages: list[dict[str, Any]]) -> Any:
        """The Chatbot's wire format, made here on the event loop.

        The chat event runs with ``postprocess=False``: Gradio would otherwise hand every streamed
        update's postprocessing to a worker thread and back (two thread hops per update, GIL
        ping-pong under load) for the same result.
        """
        return chatbot.postprocess([shown_step(m) for m in messages]).model_dump()

    def attach(files: list[str] | None, request: gr.Request) -> str:
        session = ctx.session(request)
        lang = language(request)
        notes = []
        limits = ctx.settings.sessions
        for name in files or []:
            result = attach_upload(ctx.sessions, session, Path(name), max_bytes=limits.max_upload_bytes,
                                   max_files=limits.max_files, language=lang)
            notes.append(result.message)
        return _files_markdown(session, notes, lang)

    def set_provider(provider: str, request: gr.Request) -> str:
        session = ctx.session(request)
        if provider not in ctx.providers.offered:
            return session.model
        ctx.sessions.set_model(session, provider, ctx.providers.default_model(provider))
        session.log.append((time.time(), f"provider set to {provider} / {session.model}"))
        return session.model

    def set_model(model: str, request: gr.Request) -> str:
        """Any client may send any name: only a model ``llm.models`` allows is taken; the box shows what is used."""
        session = ctx.session(request)
        model = (model or "").strip()[:200]
        if model != session.model and ctx.providers.allows(session.provider, model):
            ctx.sessions.set_model(session, session.provider, model)
            session.log.append((time.time(), f"model set to {session.model}"))
        return session.model

    def clear(request: gr.Request) -> tuple[list[dict[str, Any]], str, str]:
        """Forget the conversation; the token this tab holds is replaced (old copies elsewhere stop working)."""
        session = ctx.session(request)
        ctx.sessions.clear_history(session, request.session_hash)
        session.log.append((time.time(), "history cleared"))
        return [], "", ctx.sessions.token(session)

    def stats(request: gr.Request) -> dict[str, Any]:
        """This session's and the server's figures as data, for API clients (the Stats tab shows them as cards)."""
        return stats_snapshot(ctx, ctx.sessions.live(ctx.session_id(request)))

    async def stats_view(request: gr.Request) -> tuple[str, Any]:
        """The Stats tab: cards and a plot of this session's recent turns, in the request's language. On the
        event loop: everything it reads is in memory."""
        lang = language(request)
        session = ctx.sessions.live(ctx.session_id(request))
        return stats_cards(stats_snapshot(ctx, session), lang), turns_plot(session, lang)

    async def logs(request: gr.Request) -> str:
        """The start-up log and this session's own events (never another session's). The lines are records,
        kept as the server logs them (English); the headings follow the request's language."""
        lang = language(request)
        session = ctx.sessions.live(ctx.session_id(request))
        entries = session.log if session else []
        own = [f"{time.strftime('%H:%M:%S', time.localtime(ts))} {line}" for ts, line in entries]
        return "\n".join([i18n.text("logs.startup", lang), *ctx.startup_log, "", i18n.text("logs.session", lang),
                          *(own or [i18n.text("logs.empty", lang)])])

    def restore(token: str | None, request: gr.Request) -> tuple[Any, ...]:
        """On page load: back to the conversation whose token this browser kept (a reload keeps it).

        A token the server did not issue, or one revoked by Clear or a kill, is answered exactly as no
        token: a new conversation, and a token for it.
        """
        ctx.sessions.come_back(request.session_hash or "", token)
        session = ctx.session(request)
        _use_offered_model(ctx, session)
        return ([shown_step(m) for m in session.history], session.provider, session.model, ctx.sessions.token(session),
                _files_markdown(session, [], language(request)))

    def unload(request: gr.Request) -> None:
        ctx.sessions.release(request.session_hash or "")

    static = i18n.static
    with gr.Blocks(title="cmw agent") as demo:
        browser_id = gr.BrowserState(None, storage_key="cmw-session", secret=ctx.browser_secret)
        with gr.Tab(static("chat.tab")) as chat_tab:
            chatbot = gr.Chatbot(label=static("chat.conversation"), height=480)
            with gr.Row():
                msg = gr.Textbox(
                    label=static("chat.message"), placeholder=static("chat.placeholder"), show_label=False, scale=6,
                    max_length=MAX_MESSAGE_CHARS,
                )
                send = gr.Button(static("chat.send"), variant="primary", scale=1)
                stop = gr.Button(static("chat.stop"), scale=1)
                clear_btn = gr.Button(static("chat.clear"), scale=1)
            with gr.Row():
                provider = gr.Dropdown(
                    ctx.providers.offered, value=settings.llm.provider, label=static("chat.provider")
                )
                model = gr.Textbox(value=ctx.providers.default_model(settings.llm.provider), label=static("chat.model"))
            files = gr.File(label=static("chat.attach"), file_count="multiple", type="filepath")
            files_info = gr.Markdown()
        with gr.Tab(static("stats.tab")) as stats_tab:
            with gr.Row(equal_height=True):
                gr.Markdown(static("stats.auto"))
                stats_btn = gr.Button(static("stats.refresh"), scale=0, min_width=120)
            stats_html = gr.HTML(css_template=CARDS_CSS, js_on_load=None)
            # Points, not lines: a conversation's first turn is one point, which a line would not draw. Its heading
            # ends the cards above: Gradio 6.31 cuts off the legend of a plot that shows its label at a fixed height.
            stats_plot = gr.ScatterPlot(x="turn", y="seconds", color="series", label=static("stats.plot"),
                                        show_label=False, height=240)
        with gr.Tab(static("logs.tab")) as logs_tab:
            with gr.Row(equal_height=True):
                gr.Markdown(static("logs.auto"))
                logs_btn = gr.Button(static("logs.refresh"), scale=0, min_width=120)
            logs_view = gr.Textbox(label=static("logs.label"), lines=20, max_lines=40, autoscroll=True)
        stats_timer = gr.Timer(REFRESH_EVERY_S, active=False)
        logs_timer = gr.Timer(REFRESH_EVERY_S, active=False)

        chat_event = gr.on(
            [send.click, msg.submit], chat, [msg], [chatbot, msg], api_name="chat", postprocess=False,
            **event_options(settings, "chat"),
        )
        stop.click(None, None, None, cancels=[chat_event])
        clear_btn.click(
            clear, None, [chatbot, msg, browser_id], api_visibility="undocumented", **event_options(settings, "chat")
        )
        upload = files.upload(
            attach, [files], [files_info], api_visibility="undocumented", **event_options(settings, "file_upload")
        )
        provider.change(set_provider, [provider], [model], api_visibility="undocumented")
        model.blur(set_model, [model], [model], api_visibility="undocumented")
        # Refreshes: on selecting the tab, on Refresh, and on the tab's timer; "once" drops a tick while one runs.
        refresh = {"show_progress": "hidden", "trigger_mode": "once"}
        stats_event = gr.on(
            [stats_tab.select, stats_btn.click, stats_timer.tick], stats_view, None, [stats_html, stats_plot],
            api_visibility="private", concurrency_id=STATS_POOL, **refresh, **event_options(settings, "stats_refresh"),
        )
        gr.api(stats, api_name="stats", api_visibility="undocumented", concurrency_id=STATS_POOL,
               **event_options(settings, "stats_refresh"))
        logs_event = gr.on(
            [logs_tab.select, logs_btn.click, logs_timer.tick], logs, None, [logs_view], api_visibility="undocumented",
            **refresh, **event_options(settings, "logs_refresh"),
        )
        chat_tab.select(None, None, [stats_timer, logs_timer], js=TIMERS_OFF)
        stats_tab.select(None, None, [stats_timer, logs_timer], js=STATS_TIMER_ON)
        logs_tab.select(None, None, [stats_timer, logs_timer], js=LOGS_TIMER_ON)
        demo.load(restore, [browser_id], [chatbot, provider, model, browser_id, files_info], api_visibility="private")
        demo.unload(unload)

    # This app keeps no gr.State and returns one component update (the Stats plot's axis titles, resent with every
    # refresh): only sessions with an event running need a session state.
    cap_session_states(demo, max(100, settings.server.max_threads))
    apply_queue(demo, settings)
    ctx.monitor = QueueMonitor(
        demo, dict(zip(EVENTS, (chat_event, upload, stats_event, logs_event), strict=True))
    )
    return demo


def _use_offered_model(ctx: AppContext, session: Session) -> None:
    """Hold the session to a provider and model this configuration offers (a restored one may predate it)."""
    provider, model = ctx.providers.choice(session.provider, session.model)
    if (provider, model) != (session.provider, session.model):
        session.log.append((time.time(), f"{session.provider} / {session.model} is not offered: using {provider} / "
                                         f"{model}"))
        ctx.sessions.set_model(session, provider, model)


def _steps(stream: ReplyStream) -> list[dict[str, Any]]:
    return [step.message() for step in stream.steps.values()]


def llm_notice(exc: LLMError, provider: str, language: str) -> str:
    """What the chat says of a failed turn. In English, the provider error's own message with its specifics (HTTP
    status, seconds, sizes); in another language, its class, translated (those messages are made in English)."""
    if language == i18n.DEFAULT:
        return exc.message
    key = f"errors.{exc.kind}" if i18n.known(f"errors.{exc.kind}") else "errors.internal"
    return i18n.text(key, language, provider=provider)  # str.format ignores a value its string does not name


def _finish(
    ctx: AppContext, session: Session, reply: str, stream: ReplyStream, error: str | None, language: str
) -> None:
    latency, ttft, tokens = time.monotonic() - stream.started, stream.ttft, stream.tokens
    for step in stream.steps.values():
        if not step.final:  # the turn ended under it (Stop, a deadline): the history says so
            step.end("error", i18n.text("chat.step_stopped", language))
        ctx.metrics.tool_call(step.name if step.name in ctx.agent_for(session).tools else "unknown", step.status)
        session.log.append((time.time(), f"step: {step.name[:40]} {step.status} in {step.duration_s or 0:.2f} s"))
    ctx.sessions.finish_turn(session, reply, tokens=tokens, latency=latency, ttft=ttft, error=error,
                             steps=_steps(stream))
    ctx.metrics.turn_finished(session.provider, latency, ttft, error)
    if error is None:
        ctx.latencies.append(latency)
        if ttft is not None:
            ctx.ttfts.append(ttft)
    outcome = f"failed ({error})" if error else f"done in {latency:.2f} s, {tokens} tokens"
    session.log.append((time.time(), f"chat: turn {session.turns} {outcome}"))


def _files_markdown(session: Session, notes: list[str], language: str) -> str:
    names = ", ".join(session.files) or i18n.text("files.none", language)
    return "\n\n".join([*notes, i18n.text("files.list", language, names=names)])


def stats_snapshot(ctx: AppContext, session: Session | None) -> dict[str, Any]:
    """Figures for the Stats tab: this session and the whole server."""
    mine: dict[str, Any] = {}
    if session is not None:
        mine = {
            "turns": session.turns,
            "tokens": session.tokens,
            "provider": session.provider,
            "model": session.model,
            "last_latencies_s": [round(x, 3) for x in list(session.latencies)[-5:]],
            "last_ttft_s": [round(x, 3) for x in list(session.ttfts)[-5:]],
        }
    queue = ctx.monitor.as_dict() if ctx.monitor else {}
    return {
        "this_session": mine,
        "server": {
            "version": __version__,
            "profile": ctx.loaded.profile_name,
            "uptime_s": round(time.time() - ctx.started, 1),
            "sessions": ctx.sessions.counts(),
            "events": queue,
            "latency_s": {k: _round(v) for k, v in percentiles(ctx.latencies).items()},
            "ttft_s": {k: _round(v) for k, v in percentiles(ctx.ttfts).items()},
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def stats_cards(snapshot: dict[str, Any], language: str) -> str:
    """The Stats tab's cards (HTML) from :func:`stats_snapshot`: this conversation, then how busy the server is."""
    def say(key: str, **values: Any) -> str:
        return i18n.text(key, language, **values)

    def cards(items: list[tuple[str, str, str]]) -> str:
        return '<div class="cards">' + "".join(
            f'<div class="card" data-figure="{name}"><div class="label">{html.escape(label)}</div>'
            f'<div class="value">{html.escape(value)}</div></div>' for name, label, value in items
        ) + "</div>"

    def last(values: list[float]) -> str:
        return i18n.seconds(values[-1] if values else None, language)

    def pair(figures: dict[str, float | None]) -> str:
        return f"{i18n.seconds(figures.get('p50'), language)} / {i18n.seconds(figures.get('p95'), language)}"

    mine, server = snapshot["this_session"], snapshot["server"]
    parts = [f"<h3>{html.escape(say('stats.session'))}</h3>"]
    if mine.get("turns"):
        parts.append(cards([
            ("turns", say("stats.turns"), i18n.number(mine["turns"], language)),
            ("tokens", say("stats.tokens"), i18n.number(mine["tokens"], language)),
            ("last_ttft", say("stats.last_ttft"), last(mine["last_ttft_s"])),
            ("last_reply", say("stats.last_reply"), last(mine["last_latencies_s"])),
            ("model", say("stats.model"), f"{mine['provider']} / {mine['model']}"),
        ]))
    else:
        parts.append(f'<p class="note" data-figure="no_turns">{html.escape(say("stats.no_turns"))}</p>')
    chat = server["events"].get("chat", {"running": 0, "waiting": 0, "limit": None})
    running = i18n.number(chat["running"], language)
    if chat["limit"] is None:
        busy = say("stats.no_limit", running=running)
    else:
        busy = say("stats.of_limit", running=running, limit=i18n.number(chat["limit"], language))
    minutes = int(server["uptime_s"] // 60)
    parts.append(f"<h3>{html.escape(say('stats.server'))}</h3>")
    parts.append(cards([
        ("chats_running", say("stats.chats_running"), busy),
        ("chats_waiting", say("stats.chats_waiting"), i18n.number(chat["waiting"], language)),
        ("sessions", say("stats.sessions"), i18n.number(server["sessions"].get("active", 0), language)),
        ("reply_p", say("stats.reply_p"), pair(server["latency_s"])),
        ("ttft_p", say("stats.ttft_p"), pair(server["ttft_s"])),
    ]))
    footer = say("stats.footer", profile=server["profile"], version=server["version"], hours=minutes // 60,
                 minutes=minutes % 60)
    parts.append(f'<p class="note">{html.escape(footer)}</p>')
    parts.append(f"<h3>{html.escape(say('stats.plot'))}</h3>")  # the plot's, which comes next
    return "".join(parts)


def turns_plot(session: Session | None, language: str) -> Any:
    """The plot of this session's recent turns: time to first token and reply time, in seconds, by turn number.

    Both series are numbered back from the session's last turn (a failed turn may have no first token, so its
    TTFT point is missing and the earlier ones shift by one). Turns are categories, in order, so the axis shows
    each turn once. An update: the axis titles follow the language.
    """
    import pandas as pd

    rows: list[tuple[str, float, str]] = []
    turns: list[int] = []
    if session is not None:
        for key, values in (("stats.series_ttft", list(session.ttfts)), ("stats.series_reply",
                                                                          list(session.latencies))):
            series = i18n.text(key, language)
            first = session.turns - len(values) + 1
            rows += [(str(first + i), round(value, 3), series) for i, value in enumerate(values)]
            turns += range(first, first + len(values))
    return gr.ScatterPlot(
        value=pd.DataFrame(rows, columns=["turn", "seconds", "series"]),
        x_title=i18n.text("stats.plot_turn", language), y_title=i18n.text("stats.plot_seconds", language),
        color_title=i18n.text("stats.plot_measure", language), sort=[str(turn) for turn in sorted(set(turns))],
    )

"""The Gradio agent app: Chat, Stats and Logs tabs over per-session agents.

Every handler that waits on the LLM is async, so a waiting chat holds no thread. Each browser
session (or gradio_client ``Client``) gets its own :class:`~agent.sessions.session.Session`; the chat event
is public as ``api_name="chat"``: input the message text, output the conversation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import gradio as gr

from agent import __version__
from agent.agents.steps import shown as shown_step
from agent.agents.steps import to_langchain
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

    async def chat(message: str, request: gr.Request):  # type: ignore[no-untyped-def]
        session = await ctx.session_async(request)
        text = (message or "").strip()
        if not text:
            yield shown(session.history), ""
            return
        if len(text) > MAX_MESSAGE_CHARS:  # the Textbox limit is the browser's; API clients are held to it here
            raise gr.Error(  # a client's mistake: the user sees why; no traceback in the server's log
                f"Your message has {len(text):,} characters; the limit is {MAX_MESSAGE_CHARS:,}.", print_exception=False
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
                reply = (stream.text + "\n\n" if stream.text else "") + f"⚠️ {exc.message}"
            except (asyncio.CancelledError, GeneratorExit):  # Stop pressed, or the client went away
                _finish(ctx, session, stream.text + (" " if stream.text else "") + "[stopped]", stream, "stopped")
                raise
            except Exception:  # the server and other sessions carry on; the user sees a clear notice
                log.exception("chat failed in session %s", session.id[:8])
                error = "app_error"
                reply = (stream.text + "\n\n" if stream.text else "") + "⚠️ Internal error while generating the reply."
            finally:
                ctx.in_flight -= 1
                stream.cancel()  # a no-op once the reply is complete
            _finish(ctx, session, reply, stream, error)
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
        notes = []
        limits = ctx.settings.sessions
        for name in files or []:
            result = attach_upload(ctx.sessions, session, Path(name), max_bytes=limits.max_upload_bytes,
                                   max_files=limits.max_files)
            notes.append(result.message)
        return _files_markdown(session, notes)

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
        return stats_snapshot(ctx, ctx.sessions.live(ctx.session_id(request)))

    def logs(request: gr.Request) -> str:
        session = ctx.sessions.live(ctx.session_id(request))
        entries = session.log if session else []
        own = [f"{time.strftime('%H:%M:%S', time.localtime(ts))} {line}" for ts, line in entries]
        return "\n".join(["# start-up", *ctx.startup_log, "", "# this session", *(own or ["(no events yet)"])])

    def restore(token: str | None, request: gr.Request) -> tuple[Any, ...]:
        """On page load: back to the conversation whose token this browser kept (a reload keeps it).

        A token the server did not issue, or one revoked by Clear or a kill, is answered exactly as no
        token: a new conversation, and a token for it.
        """
        ctx.sessions.come_back(request.session_hash or "", token)
        session = ctx.session(request)
        _use_offered_model(ctx, session)
        return ([shown_step(m) for m in session.history], session.provider, session.model, ctx.sessions.token(session),
                _files_markdown(session, []))

    def unload(request: gr.Request) -> None:
        ctx.sessions.release(request.session_hash or "")

    with gr.Blocks(title="cmw agent") as demo:
        browser_id = gr.BrowserState(None, storage_key="cmw-session", secret=ctx.browser_secret)
        with gr.Tab("Chat"):
            chatbot = gr.Chatbot(label="Conversation", height=480)
            with gr.Row():
                msg = gr.Textbox(
                    placeholder="Message the agent…", show_label=False, scale=6, max_length=MAX_MESSAGE_CHARS
                )
                send = gr.Button("Send", variant="primary", scale=1)
                stop = gr.Button("Stop", scale=1)
                clear_btn = gr.Button("Clear", scale=1)
            with gr.Row():
                provider = gr.Dropdown(ctx.providers.offered, value=settings.llm.provider, label="Provider")
                model = gr.Textbox(value=ctx.providers.default_model(settings.llm.provider), label="Model")
            files = gr.File(label="Attach text files", file_count="multiple", type="filepath")
            files_info = gr.Markdown()
        with gr.Tab("Stats"):
            stats_btn = gr.Button("Refresh")
            stats_view = gr.JSON(label="Stats")
        with gr.Tab("Logs"):
            logs_btn = gr.Button("Refresh")
            logs_view = gr.Textbox(label="Logs", lines=20, max_lines=40, autoscroll=True)

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
        stats_event = stats_btn.click(
            stats, None, [stats_view], api_visibility="undocumented", **event_options(settings, "stats_refresh")
        )
        logs_event = logs_btn.click(
            logs, None, [logs_view], api_visibility="undocumented", **event_options(settings, "logs_refresh")
        )
        demo.load(restore, [browser_id], [chatbot, provider, model, browser_id, files_info], api_visibility="private")
        demo.unload(unload)

    # This app keeps no gr.State and returns no component updates: only sessions with an event running need one.
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


def _finish(ctx: AppContext, session: Session, reply: str, stream: ReplyStream, error: str | None) -> None:
    latency, ttft, tokens = time.monotonic() - stream.started, stream.ttft, stream.tokens
    for step in stream.steps.values():
        if not step.final:  # the turn ended under it (Stop, a deadline): the history says so
            step.end("error", "Error: stopped before it finished.")
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


def _files_markdown(session: Session, notes: list[str]) -> str:
    names = ", ".join(session.files) or "none"
    return "\n\n".join([*notes, f"Files in this conversation: {names}"])


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

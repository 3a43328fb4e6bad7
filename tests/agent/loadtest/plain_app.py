"""A plain Gradio chat app (no cmw code) for testing the load tester against "any Gradio chat app".

Every variant is mounted on one server so a test module starts one process (gradio takes seconds to import):

- ``/chat``   well-behaved: history per session in ``gr.State``, the reply streams word by word and opens
  with the conversation fingerprints header (as the cmw simulator's replies do);
- ``/plain``  the same without the header (only canaries and history can prove isolation);
- ``/shared`` broken on purpose: every session appends to ONE global history;
- ``/slow``   waits ``--slow-ttft`` seconds before the first word (a known TTFT);
- ``/tiny``   one reply at a time and a queue of ``--tiny-max-size`` events (provokes queue_full);
- ``/iface``  a stock ``gr.ChatInterface`` (its ``chat`` API returns the reply only);
- ``/fail``   raises in the handler (app_error).

Run: ``python tests/agent/loadtest/plain_app.py --port 7861``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr
import uvicorn
from fastapi import FastAPI

from agent.fingerprints import reply_header

Message = dict[str, Any]


def _user_texts(history: list[Message]) -> list[str]:
    return [m["content"] for m in history if m["role"] == "user" and isinstance(m["content"], str)]


def _chat_app(
    *, words: int, gap_s: float, ttft_s: float = 0.0, header: bool = True, shared: bool = False,
    limit: int | None = 64, max_size: int | None = None,
) -> gr.Blocks:
    """A Blocks chat: textbox + session history (or, when ``shared``, one history for everybody)."""
    everyone: list[Message] = []

    async def respond(message: str, history: list[Message] | None) -> AsyncIterator[tuple[list[Message], Any]]:
        convo = everyone if shared else list(history or [])
        convo.append({"role": "user", "content": message})
        if ttft_s:
            await asyncio.sleep(ttft_s)
        head = reply_header(_user_texts(convo)) + " " if header else ""
        reply = {"role": "assistant", "content": ""}
        convo.append(reply)
        for i in range(words):
            reply["content"] = f"{head}you said {message}:" + "".join(f" w{j}" for j in range(i + 1))
            yield [dict(m) for m in convo], gr.skip()
            if gap_s:
                await asyncio.sleep(gap_s)
        yield [dict(m) for m in convo], convo

    with gr.Blocks() as demo:
        history = gr.State([])
        chatbot = gr.Chatbot()
        text = gr.Textbox()
        text.submit(respond, [text, history], [chatbot, history], api_name="chat", concurrency_limit=limit)
    demo.queue(max_size=max_size, default_concurrency_limit=limit)
    return demo


def _chat_interface(words: int, gap_s: float) -> gr.Blocks:
    async def reply(message: str, history: list[Message]) -> AsyncIterator[str]:
        text = reply_header([*_user_texts(history), message])
        for i in range(words):
            text += f" w{i}"
            yield text
            await asyncio.sleep(gap_s)

    demo = gr.ChatInterface(reply, api_name="chat", concurrency_limit=64)
    demo.queue(default_concurrency_limit=64)
    return demo


def _failing_app() -> gr.Blocks:
    async def respond(message: str) -> list[Message]:
        raise gr.Error(f"refusing {message}")

    with gr.Blocks() as demo:
        chatbot = gr.Chatbot()
        text = gr.Textbox()
        text.submit(respond, [text], [chatbot], api_name="chat")
    return demo


def build(args: argparse.Namespace) -> FastAPI:
    """One FastAPI app with every variant mounted under its own path."""
    app = FastAPI()
    variants = {
        "/chat": _chat_app(words=args.words, gap_s=args.gap),
        "/plain": _chat_app(words=args.words, gap_s=args.gap, header=False),
        "/shared": _chat_app(words=args.words, gap_s=args.gap, shared=True),
        "/slow": _chat_app(words=args.words, gap_s=args.gap, ttft_s=args.slow_ttft),
        "/tiny": _chat_app(words=args.words, gap_s=args.tiny_gap, limit=1, max_size=args.tiny_max_size),
        "/iface": _chat_interface(args.words, args.gap),
        "/fail": _failing_app(),
    }
    for path, blocks in variants.items():
        app = gr.mount_gradio_app(app, blocks, path=path, ssr_mode=False)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--words", type=int, default=5, help="words per reply")
    parser.add_argument("--gap", type=float, default=0.01, help="seconds between words")
    parser.add_argument("--slow-ttft", type=float, default=0.3, help="seconds /slow waits before its first word")
    parser.add_argument("--tiny-max-size", type=int, default=1)
    parser.add_argument("--tiny-gap", type=float, default=0.1, help="seconds between words on /tiny")
    args = parser.parse_args()
    uvicorn.run(build(args), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

"""An app whose `hold` events run until the test lets each one go: the queue's running and waiting jobs stay
put while a test changes limits under them (served as ``tests.agent.app.gated_app:make``, a fresh app per call).

`hold` and `also` share one pool when a profile groups them; `ping` is unlimited and instant, a probe that the
queue's loop has run since something happened.
"""

from __future__ import annotations

import asyncio

import gradio as gr


class Gate:
    """The holds that have started, each kept running until released by its text."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._go: dict[str, asyncio.Event] = {}

    def _event(self, tag: str) -> asyncio.Event:
        return self._go.setdefault(tag, asyncio.Event())

    async def hold(self, tag: str) -> str:
        self.started.append(tag)
        await self._event(tag).wait()
        return f"released {tag}"

    def release(self, *tags: str) -> None:
        for tag in tags:
            self._event(tag).set()


async def ping() -> str:
    return "pong"


def make() -> gr.Blocks:
    gate = Gate()
    with gr.Blocks() as demo:
        box = gr.Textbox()
        out = gr.Textbox()
        gr.Button("Hold").click(gate.hold, box, out, api_name="hold")
        gr.Button("Also").click(gate.hold, box, out, api_name="also")
        gr.Button("Ping").click(ping, None, out, api_name="ping", concurrency_limit=None)
    demo.gate = gate  # type: ignore[attr-defined]  # how a test reaches the gate of the app it serves
    return demo

"""A Blocks app with several events, to serve with per-event limits from a profile:

    cmw serve examples/blocks_app.py --set events.limits.generate=4 --set 'events.limits.tool_*=2'

`generate` streams text; `tool_upper` and `tool_count` are quick tools sharing a glob; `slow_report` sets its
own limit in code (concurrency_limit=1), which wins unless events.override_app_limits is true.
"""

import asyncio

import gradio as gr


async def generate(prompt: str):
    text = ""
    for word in (prompt or "nothing to say").split() * 3:
        await asyncio.sleep(0.05)
        text += word + " "
        yield text.strip()


async def upper(text: str) -> str:
    await asyncio.sleep(0.2)
    return (text or "").upper()


async def count(text: str) -> str:
    await asyncio.sleep(0.2)
    return f"{len((text or '').split())} words"


async def report(text: str) -> str:
    await asyncio.sleep(0.5)
    return f"report on {len(text or '')} characters"


with gr.Blocks(title="Several events") as demo:
    box = gr.Textbox(label="Text")
    out = gr.Textbox(label="Output")
    gr.Button("Generate").click(generate, box, out, api_name="generate")
    gr.Button("Upper").click(upper, box, out, api_name="tool_upper")
    gr.Button("Count").click(count, box, out, api_name="tool_count")
    gr.Button("Report").click(report, box, out, api_name="slow_report", concurrency_limit=1)

if __name__ == "__main__":
    demo.launch()

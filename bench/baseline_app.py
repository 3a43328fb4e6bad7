"""The baseline of bench/concurrency.py: a plain Gradio chat as people write it today.

An async generator streams ``ChatOpenAI.astream`` and yields the conversation on every chunk.
It runs in a venv holding only gradio and langchain-openai, so it imports nothing from cmw.
History lives on the server per Gradio session, like cmw's, so the same load test drives both.
"""

import argparse

import gradio as gr
from langchain_openai import ChatOpenAI

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--base-url", required=True)
parser.add_argument("--limit", type=int, required=True)
args = parser.parse_args()

llm = ChatOpenAI(base_url=args.base_url, api_key="sim", model="cmw-sim")
histories: dict[str, list[dict]] = {}


async def chat(message: str, request: gr.Request):
    history = histories.setdefault(request.session_hash, [])
    history.append({"role": "user", "content": message})
    reply = ""
    async for chunk in llm.astream(history):
        reply += chunk.content
        yield [*history, {"role": "assistant", "content": reply}], ""
    history.append({"role": "assistant", "content": reply})
    yield history, ""


with gr.Blocks() as demo:
    chatbot = gr.Chatbot()
    box = gr.Textbox()
    box.submit(chat, [box], [chatbot, box], api_name="chat", concurrency_limit=args.limit)

demo.queue(max_size=max(100, 2 * args.limit)).launch(
    server_name="127.0.0.1", server_port=args.port, max_threads=max(40, 2 * args.limit)
)

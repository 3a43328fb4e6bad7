"""A plain streaming ChatInterface, as people write it: `python examples/chat_app.py`, or with a profile's
limits, admin API and metrics: `cmw serve examples/chat_app.py -p balanced`.

It answers from the simulator (or any OpenAI-compatible server) at $CHAT_APP_LLM_URL through langchain-openai.
"""

import os

import gradio as gr
from langchain_openai import ChatOpenAI

llm = ChatOpenAI(base_url=os.environ.get("CHAT_APP_LLM_URL", "http://127.0.0.1:8000/v1"), api_key="sim",
                 model="cmw-sim")


async def respond(message: str, history: list[dict]):
    reply = ""
    async for chunk in llm.astream([*history, {"role": "user", "content": message}]):
        reply += chunk.content
        yield reply


demo = gr.ChatInterface(respond, title="Chat")

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=int(os.environ.get("CHAT_APP_LIMIT", "16")))
    demo.launch(server_name=os.environ.get("CHAT_APP_HOST", "127.0.0.1"),
                server_port=int(os.environ.get("CHAT_APP_PORT", "7860")),
                max_threads=int(os.environ.get("CHAT_APP_THREADS", "200")))

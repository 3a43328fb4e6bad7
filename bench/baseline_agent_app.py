"""The agent baseline of bench/concurrency.py --agent: a plain Gradio chat running a LangChain tool loop.

``ChatOpenAI.bind_tools([...]).astream`` in a loop — model call, run the tool calls, send their results,
model call again — yielding the conversation on every chunk, as people write it with LangChain today. It
runs in a venv holding only gradio and langchain-openai, so it imports nothing from cmw.
"""

import argparse
import ast
import operator

import gradio as gr
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--base-url", required=True)
parser.add_argument("--limit", type=int, required=True)
args = parser.parse_args()

OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression."""
    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError("not arithmetic")
    try:
        return str(value(ast.parse(expression, mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        return f"Error: {exc}"


llm = ChatOpenAI(base_url=args.base_url, api_key="sim", model="cmw-sim").bind_tools([calculator])
histories: dict[str, list] = {}  # LangChain messages per Gradio session
shown: dict[str, list[dict]] = {}  # what the Chatbot shows per session


async def chat(message: str, request: gr.Request):
    messages = histories.setdefault(request.session_hash, [])
    display = shown.setdefault(request.session_hash, [])
    messages.append(HumanMessage(message))
    display.append({"role": "user", "content": message})
    for _ in range(8):
        joined = AIMessageChunk(content="")
        reply = ""
        async for chunk in llm.astream(messages):
            joined = joined + chunk
            reply += chunk.content
            yield [*display, {"role": "assistant", "content": reply}], ""
        messages.append(joined)
        if not joined.tool_calls:
            display.append({"role": "assistant", "content": reply})
            break
        for call in joined.tool_calls:
            result = await calculator.ainvoke(call["args"])
            messages.append(ToolMessage(result, tool_call_id=call["id"]))
            display.append({"role": "assistant", "content": result, "metadata": {"title": f"🛠️ {call['name']}"}})
    yield display, ""


with gr.Blocks() as demo:
    chatbot = gr.Chatbot()
    box = gr.Textbox()
    box.submit(chat, [box], [chatbot, box], api_name="chat", concurrency_limit=args.limit)

demo.queue(max_size=max(100, 2 * args.limit)).launch(
    server_name="127.0.0.1", server_port=args.port, max_threads=max(40, 2 * args.limit)
)

"""The app `cmw serve` runs, in this process over ASGI: Gradio's queue protocol without a socket or a second process.

httpx's ``ASGITransport`` reads a response whole, and Gradio's data stream ends once the session has nothing
pending (``close_stream``), so one GET returns an event's complete outcome.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agent.settings import LoadedSettings


@dataclass
class InProcess:
    http: httpx.AsyncClient
    ctx: Any  # the app's AppContext
    fn_index: dict[str, int]  # api name → event id, from /config
    state_dir: Path

    async def outcome(self, api_name: str, data: list[Any], session_hash: str) -> dict[str, Any]:
        """Join the queue as ``session_hash``; the event's ``process_completed`` message."""
        body = {"data": data, "fn_index": self.fn_index[api_name], "session_hash": session_hash,
                "event_data": None, "trigger_id": None}
        joined = await self.http.post("/gradio_api/queue/join", json=body)
        assert joined.status_code == 200, joined.text
        stream = await self.http.get("/gradio_api/queue/data", params={"session_hash": session_hash})
        for line in stream.text.splitlines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
        raise AssertionError(f"no result in {stream.text[-500:]}")

    async def call(self, api_name: str, data: list[Any], session_hash: str) -> list[Any]:
        """The event's final outputs (it must succeed)."""
        message = await self.outcome(api_name, data, session_hash)
        assert message["success"], message
        return message["output"]["data"]


@contextlib.asynccontextmanager
async def in_process(loaded: LoadedSettings, state_dir: Path, sim_base_url: str | None) -> AsyncIterator[InProcess]:
    """The app of ``loaded`` with its lifespan running, and a client for it."""
    from agent.app.asgi import create_app

    state_dir.chmod(0o700)
    asgi, ctx = create_app(loaded, sim_base_url=sim_base_url, state_dir=state_dir)
    async with (
        asgi.router.lifespan_context(asgi),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://cmw.test", timeout=30) as http,
    ):
        config = (await http.get("/config")).json()
        names = {dep["api_name"]: dep["id"] for dep in config["dependencies"] if dep.get("api_name")}
        yield InProcess(http, ctx, names, state_dir)

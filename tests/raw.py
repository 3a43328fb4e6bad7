"""A raw Gradio queue-protocol client for adversarial tests: any event, any session hash, any inputs.

What a browser sends is what a stranger with an HTTP client can send: ``POST /gradio_api/queue/join`` with
a ``fn_index``, a ``session_hash`` and ``data``, then the event's result from the SSE stream
``/gradio_api/queue/data``. Streaming outputs arrive as diffs and are applied as the browser does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from agent.loadtest.protocol import apply_diff


@dataclass
class Event:
    """One event of the app as /config describes it."""

    fn_index: int
    api_name: str | None
    inputs: list[int]
    outputs: list[int]


@dataclass
class Outcome:
    """What one event answered: its final outputs, every intermediate update, or the error."""

    ok: bool
    outputs: list[Any]
    updates: list[list[Any]]
    error: str | None = None


def events(url: str) -> list[Event]:
    config = httpx.get(f"{url}/config", timeout=10).json()
    return [Event(dep["id"], dep.get("api_name"), list(dep.get("inputs", [])), list(dep.get("outputs", [])))
            for dep in config["dependencies"]]


def event(url: str, *, api_name: str | None = None, trigger: str | None = None) -> Event:
    """The event with this api name, or (for unnamed ones such as the page-load restore) this trigger."""
    config = httpx.get(f"{url}/config", timeout=10).json()
    for dep in config["dependencies"]:
        if api_name is not None and dep.get("api_name") == api_name:
            return Event(dep["id"], dep.get("api_name"), list(dep["inputs"]), list(dep["outputs"]))
        if trigger is not None and any(t[1] == trigger for t in dep.get("targets", [])):
            return Event(dep["id"], dep.get("api_name"), list(dep["inputs"]), list(dep["outputs"]))
    raise LookupError(f"no event api_name={api_name} trigger={trigger}")


def call(url: str, fn_index: int, data: list[Any], session_hash: str, *, timeout: float = 60,
         on_update: Callable[[list[Any]], None] | None = None) -> Outcome:
    """Join the queue as ``session_hash`` and follow the event to its end (a lost server is an Outcome too)."""
    try:
        return _call(url, fn_index, data, session_hash, timeout, on_update)
    except httpx.HTTPError as exc:
        return Outcome(False, [], [], f"{type(exc).__name__}: {exc}"[:300])


def _call(url: str, fn_index: int, data: list[Any], session_hash: str, timeout: float,
          on_update: Callable[[list[Any]], None] | None) -> Outcome:
    body = {"data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": None,
            "trigger_id": None}
    with httpx.Client(base_url=url, timeout=timeout) as http:
        joined = http.post("/gradio_api/queue/join", json=body)
        if joined.status_code != 200:
            return Outcome(False, [], [], f"HTTP {joined.status_code}: {joined.text[:300]}")
        event_id = joined.json()["event_id"]
        outputs: list[Any] | None = None
        updates: list[list[Any]] = []
        with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") not in (None, event_id):
                    continue
                kind = msg.get("msg")
                output = msg.get("output") or {}
                if kind == "process_generating":
                    data_out = output.get("data") or []
                    if outputs is None:
                        outputs = list(data_out)
                    else:
                        outputs = [apply_diff(outputs[i], edits) for i, edits in enumerate(data_out)]
                    updates.append(list(outputs))
                    if on_update is not None:
                        on_update(outputs)
                elif kind == "process_completed":
                    if not msg.get("success", False):
                        return Outcome(False, outputs or [], updates, str(output.get("error") or output)[:300])
                    final = output.get("data")
                    return Outcome(True, list(final) if final is not None else outputs or [], updates)
                elif kind in ("unexpected_error", "close_stream", "queue_full"):
                    return Outcome(False, outputs or [], updates, str(msg.get("message", kind))[:300])
    return Outcome(False, outputs or [], updates, "stream ended before the event completed")

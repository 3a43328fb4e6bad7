"""`cmw status`: health and live queue figures of a running server, from its admin API."""

from __future__ import annotations

import json
from typing import Any

from cmw_cli.client import TokenOption, UrlOption, connect
from cmw_cli.common import JsonOption, console


def status(url: UrlOption = None, token: TokenOption = None, json_: JsonOption = False) -> None:
    """Health, sessions and waiting/running/limit per event of a running server.

    \b
    Example usage:
        cmw status                                   # the local server of your settings
        cmw status --url http://10.0.0.5:7860 --token "$TOKEN" --json
    """
    client = connect(url, token)
    health = client.get("health")
    queue = client.get("queue")
    if json_:
        print(json.dumps({"url": client.url, "health": health, "queue": queue}, indent=2))
        return
    console.print(render(client.url, health, queue))


def render(url: str, health: dict[str, Any], queue: dict[str, Any]) -> Any:
    """A rich renderable of one status snapshot."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    sessions = health.get("sessions", {})
    state = health.get("status", "?")
    serving = f"app {health['app']}" if health.get("app") else \
        f"provider {health.get('provider')} ({health.get('model')})"
    head = Text.assemble(
        (f"cmw {health.get('version', '?')} ", "bold"), f"at {url}: ",
        (state, "bold green" if state == "ok" else "bold yellow"),
        f" · profile {health.get('profile')} · {serving} · up {duration(health.get('uptime_s', 0))}",
    )
    counts = Text(
        f"sessions: {sessions.get('active', 0)} active, {sessions.get('running', 0)} running · "
        f"{sessions.get('created_total', 0)} created, {sessions.get('restored_total', 0)} restored, "
        f"{sessions.get('evicted_total', 0)} evicted, {sessions.get('expired_total', 0)} expired"
        + (f" · {sessions['stored']} stored" if sessions.get("stored") is not None else "")
    )
    table = Table(title=None, show_edge=False)
    table.add_column("event")
    for name in ("waiting", "running", "limit"):
        table.add_column(name, justify="right")
    for event, figures in queue.get("events", {}).items():
        limit = figures.get("limit")
        table.add_row(event, str(figures.get("waiting", 0)), str(figures.get("running", 0)),
                      "none" if limit is None else str(limit))
    e2e, ttft = queue.get("e2e_s", {}), queue.get("ttft_s", {})
    latency = Text(
        f"recent replies ({queue.get('samples', 0)}): "
        f"latency p50 {seconds(e2e.get('p50'))} p95 {seconds(e2e.get('p95'))}"
        f" · ttft p50 {seconds(ttft.get('p50'))} p95 {seconds(ttft.get('p95'))}"
    )
    return Group(head, counts, table, latency)


def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g} s"


def duration(total: float) -> str:
    """``3d04h``, ``2h05m``, ``4m07s`` or ``12s``: uptime at a glance."""
    total = int(total)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"

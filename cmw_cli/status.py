"""`cmw status [--watch]`: health, live queue figures and limits (with their sources) of a running server."""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Annotated, Any

import typer

from cmw_cli.client import AdminClient, TokenOption, UrlOption, connect
from cmw_cli.common import Exit, JsonOption, console, refreshes

SAMPLES = 60  # refreshes a sparkline covers
BLOCKS = "▁▂▃▄▅▆▇█"


def status(
    url: UrlOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh a live view until Ctrl-C, with sparklines of "
                                                        "running/waiting per event and replies per second.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes (--watch).", min=0.1, max=3600)] = 2.0,
    count: Annotated[int | None, typer.Option(help="With --watch: stop after this many refreshes "
                                                   "[default: until Ctrl-C].", min=1)] = None,
) -> None:
    """Health, sessions, and waiting/running/limit (and where the limit came from) per event of a running server.

    With --watch the view refreshes every --interval seconds; --json then prints one JSON object per refresh
    and line: {"time", "health", "queue", "limits"}.

    \b
    Example usage:
        cmw status                                   # the local server of your settings
        cmw status --url http://10.0.0.5:7860 --token "$TOKEN" --json
        cmw status --watch --interval 1
    """
    client = connect(url, token)
    if watch:
        _watch(client, interval, count, json_)
        return
    health, queue, limits = _snapshot(client)
    if json_:
        print(json.dumps({"url": client.url, "health": health, "queue": queue, "limits": limits}, indent=2))
        return
    console.print(render(client.url, health, queue, limits))


def _snapshot(client: AdminClient) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """health, queue and limits (None from a server that predates live limits)."""
    return client.get("health"), client.get("queue"), client.get("limits", missing_ok=True)


def _watch(client: AdminClient, interval: float, count: int | None, json_: bool) -> None:
    """Refresh until ``count`` views or Ctrl-C (exit 130), as `cmw sessions watch` does."""
    history = History()
    try:
        if json_:
            for _ in refreshes(interval, count):
                health, queue, limits = _snapshot(client)
                print(json.dumps({"time": time.time(), "health": health, "queue": queue, "limits": limits}),
                      flush=True)
            return
        from rich.live import Live

        with Live(console=console, auto_refresh=False, transient=False) as live:
            for _ in refreshes(interval, count):
                health, queue, limits = _snapshot(client)
                history.add(health, queue, time.monotonic())
                live.update(render(client.url, health, queue, limits, history), refresh=True)
        if not console.is_terminal:
            console.line()  # Live printed its last view without ending the line
    except KeyboardInterrupt:
        raise typer.Exit(int(Exit.INTERRUPTED)) from None


class History:
    """The last :data:`SAMPLES` refreshes: running and waiting per event, and replies per second between them."""

    def __init__(self, size: int = SAMPLES) -> None:
        self.size = size
        self.running: dict[str, deque[int]] = {}
        self.waiting: dict[str, deque[int]] = {}
        self.rates: deque[float] = deque(maxlen=size)
        self._last: tuple[float, int] | None = None  # (monotonic time, turns completed) of the previous refresh

    def add(self, health: dict[str, Any], queue: dict[str, Any], now: float) -> None:
        for event, figures in queue.get("events", {}).items():
            self.running.setdefault(event, deque(maxlen=self.size)).append(int(figures.get("running") or 0))
            self.waiting.setdefault(event, deque(maxlen=self.size)).append(int(figures.get("waiting") or 0))
        completed = (health.get("turns") or {}).get("completed")
        if not isinstance(completed, int):
            return
        last, self._last = self._last, (now, completed)
        # A restart (or, with several workers, another worker answering) sets the count back: no figure then.
        if last is not None and now > last[0] and completed >= last[1]:
            self.rates.append((completed - last[1]) / (now - last[0]))

    @property
    def replies_per_s(self) -> float | None:
        return self.rates[-1] if self.rates else None


def sparkline(values: Any, top: float | None = None) -> str:
    """One block character per value, scaled to ``top`` (or the largest value): ▁ is zero, █ the top."""
    values = list(values)
    if not values:
        return ""
    peak = max([top or 0, *values])
    if peak <= 0:
        return BLOCKS[0] * len(values)
    return "".join(BLOCKS[0] if v <= 0 else BLOCKS[min(7, max(1, 1 + round(v / peak * 6)))] for v in values)


def render(url: str, health: dict[str, Any], queue: dict[str, Any], limits: dict[str, Any] | None = None,
           history: History | None = None) -> Any:
    """A rich renderable of one status snapshot (with sparklines when ``history`` holds the earlier ones)."""
    from rich.console import Group
    from rich.markup import escape
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
    if history is not None:
        head.append(f" · {time.strftime('%H:%M:%S')}")
    counts = Text(
        f"sessions: {sessions.get('active', 0)} active, {sessions.get('running', 0)} running · "
        f"{sessions.get('created_total', 0)} created, {sessions.get('restored_total', 0)} restored, "
        f"{sessions.get('evicted_total', 0)} evicted, {sessions.get('expired_total', 0)} expired"
        + (f" · {sessions['stored']} stored" if sessions.get("stored") is not None else "")
    )
    sources = {name: entry.get("source") for name, entry in (limits or {}).get("events", {}).items()}
    width = _spark_width()
    table = Table(title=None, show_edge=False)
    table.add_column("event")
    for name in ("waiting", "running", "limit"):
        table.add_column(name, justify="right")
    if limits is not None:
        table.add_column("source")
    if history is not None:
        table.add_column(f"running (last {width})", no_wrap=True)
        table.add_column(f"waiting (last {width})", no_wrap=True)
    for event, figures in queue.get("events", {}).items():
        limit = figures.get("limit")
        row = [escape(event), str(figures.get("waiting", 0)), str(figures.get("running", 0)),
               "none" if limit is None else str(limit)]
        if limits is not None:
            row.append(escape(_short_source(sources.get(event) or "?")))
        if history is not None:
            row.append(sparkline(list(history.running.get(event, ()))[-width:], limit))
            row.append(sparkline(list(history.waiting.get(event, ()))[-width:]))
        table.add_row(*row)
    e2e, ttft = queue.get("e2e_s", {}), queue.get("ttft_s", {})
    latency = Text(
        f"recent replies ({queue.get('samples', 0)}): "
        f"latency p50 {seconds(e2e.get('p50'))} p95 {seconds(e2e.get('p95'))}"
        f" · ttft p50 {seconds(ttft.get('p50'))} p95 {seconds(ttft.get('p95'))}"
    )
    parts: list[Any] = [head, counts, table, latency]
    if history is not None:
        rate = history.replies_per_s
        parts.append(Text(f"replies/s {'–' if rate is None else f'{rate:.2f}'}  "
                          f"{sparkline(list(history.rates)[-width:])}"))
    return Group(*parts)


def _spark_width() -> int:
    """Samples per sparkline that fit the terminal beside the figures (two per event row)."""
    return max(8, min(SAMPLES, (console.width - 60) // 2))


def _short_source(source: str) -> str:
    """``profile:<name>`` rather than the profile's full path, as `cmw config show` prints it."""
    kind, sep, rest = source.partition(":")
    return f"profile:{rest.rsplit('/', 1)[-1].removesuffix('.toml')}" if kind == "profile" and sep else source


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

"""`cmw sessions list | show ID | kill ID | watch`: the sessions of a running server, from its admin API."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from cmw_cli.client import TokenOption, UrlOption, connect
from cmw_cli.common import Exit, JsonOption, console, fail, refreshes

app = typer.Typer(help="Inspect and manage the sessions of a running server.", no_args_is_help=True)

SessionId = Annotated[str, typer.Argument(help="Session id, as `cmw sessions list` shows it, or a session hash.")]


@app.command("list")
def list_(
    url: UrlOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Conversations per page.")] = 100,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many (the next page: --offset 100).")] = 0,
) -> None:
    """Conversations: those in memory first (running, idle), then the stored ones, most recent first.

    \b
    Example usage:
        cmw sessions list
        cmw sessions list --offset 100 --limit 100
        cmw sessions list --json | jq '.[] | select(.state == "running") | .id'
    """
    sessions = connect(url, token).get(f"sessions?offset={offset}&limit={limit}")
    if json_:
        print(json.dumps(sessions, indent=2))
        return
    console.print(sessions_table(sessions, now=time.time()))


@app.command("show")
def show(session_id: SessionId, url: UrlOption = None, token: TokenOption = None, json_: JsonOption = False) -> None:
    """One session: its figures, conversation and attached files.

    \b
    Example usage:
        cmw sessions show 3f2a9c1e7b
    """
    detail = connect(url, token).get(f"sessions/{_checked(session_id)}")
    if json_:
        print(json.dumps(detail, indent=2))
        return
    from rich.markup import escape

    if "by_event" in detail:  # a Gradio session of an operator's app
        _show_app_session(detail)
        return
    console.print(f"[bold]session {escape(detail['id'])}[/] · {detail['state']} · {detail['turns']} turns "
                  f"({detail.get('errors', 0)} failed) · {detail['tokens']} tokens · "
                  f"{escape(detail['provider'])} / {escape(str(detail['model']))}", highlight=False)
    console.print(f"created {clock(detail['created'])} · last active {clock(detail['last_active'])}", highlight=False)
    files = detail.get("files") or {}
    if files:
        console.print("files: " + ", ".join(f"{escape(name)} ({len(text):,} chars)" for name, text in files.items()),
                      highlight=False)
    for message in detail.get("history", []):
        role = message.get("role", "?")
        tool = message.get("tool")
        if isinstance(tool, dict):  # a tool step: name, arguments, outcome and its (bounded) result
            took = (message.get("metadata") or {}).get("duration")
            header = f"{tool.get('name')}({json.dumps(tool.get('args'), ensure_ascii=False)}) {tool.get('status')}"
            header += f" in {took:.2f} s" if isinstance(took, int | float) else ""
            console.print(f"[bold yellow]step:[/] {escape(header)}: {escape(_text(message.get('content')))}",
                          highlight=False)
            continue
        style = "cyan" if role == "user" else "green"
        console.print(f"[bold {style}]{role}:[/] {escape(_text(message.get('content')))}", highlight=False)
    if not detail.get("history"):
        console.print("(no messages)")


def _show_app_session(detail: dict[str, Any]) -> None:
    from rich.markup import escape

    console.print(f"[bold]session {escape(detail['id'])}[/] · {detail['state']} · {detail['events']} events · "
                  f"first seen {clock(detail['first_seen'])} · last seen {clock(detail['last_seen'])}",
                  highlight=False)
    for name, count in sorted(detail["by_event"].items(), key=lambda item: -item[1]):
        console.print(f"  {escape(name)}: {count}", highlight=False)
    for what in ("running", "waiting"):
        if detail[f"{what}_events"]:
            console.print(f"{what} now: " + ", ".join(escape(n) for n in detail[f"{what}_events"]), highlight=False)


@app.command("kill")
def kill(session_id: SessionId, url: UrlOption = None, token: TokenOption = None, json_: JsonOption = False) -> None:
    """End a session as eviction would: its history, files and stored record are freed.

    Serving an operator's app (`cmw serve APP`), the session's running and waiting events are cancelled.

    \b
    Example usage:
        cmw sessions kill 3f2a9c1e7b
    """
    result = connect(url, token).delete(f"sessions/{_checked(session_id)}")
    if json_:
        print(json.dumps(result))
        return
    cancelled = result.get("cancelled")
    said = "" if cancelled is None else f" ({cancelled} event{'s' if cancelled != 1 else ''} cancelled)"
    console.print(f"session {session_id} ended{said}", highlight=False, markup=False)


@app.command("watch")
def watch(
    url: UrlOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.1, max=3600)] = 2.0,
    count: Annotated[int | None, typer.Option(help="Stop after this many refreshes [default: until Ctrl-C].",
                                              min=1)] = None,
) -> None:
    """A live table of sessions and queue figures; Ctrl-C stops it.

    With --json, one JSON object per refresh and line: {"time", "sessions", "queue"}.

    \b
    Example usage:
        cmw sessions watch --interval 1
        cmw sessions watch --json --count 10 > sessions.jsonl
    """
    client = connect(url, token)
    try:
        if json_:
            for _ in refreshes(interval, count):
                snapshot = {"time": time.time(), "sessions": client.get("sessions"), "queue": client.get("queue")}
                print(json.dumps(snapshot), flush=True)
            return
        from rich.live import Live

        with Live(console=console, auto_refresh=False, transient=False) as live:
            for _ in refreshes(interval, count):
                live.update(_watch_view(client.url, client.get("sessions"), client.get("queue")), refresh=True)
    except KeyboardInterrupt:
        raise typer.Exit(int(Exit.INTERRUPTED)) from None


def _watch_view(url: str, sessions: list[dict[str, Any]], queue: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.text import Text

    events = queue.get("events", {})
    figures = "  ".join(
        f"{event} {fig.get('running', 0)}/{fig.get('limit') or '∞'} running, {fig.get('waiting', 0)} waiting"
        for event, fig in events.items() if event == "chat" or "chat" not in events  # an app's: every event
    )
    head = Text(f"{url} · {time.strftime('%H:%M:%S')} · {len(sessions)} sessions · {figures}")
    return Group(head, sessions_table(sessions, now=time.time()))


def sessions_table(sessions: list[dict[str, Any]], *, now: float) -> Any:
    """The table `list` and `watch` print."""
    from rich.markup import escape
    from rich.table import Table

    if sessions and "first_seen" in sessions[0]:
        return _app_sessions_table(sessions, now=now)
    table = Table(show_edge=False)
    # Ids are long (uuids from gradio_client): fold them rather than hide the figures beside them.
    table.add_column("id", overflow="fold", min_width=12)
    table.add_column("state", no_wrap=True)
    table.add_column("turns", justify="right", no_wrap=True)
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("provider / model", overflow="fold")
    table.add_column("created", no_wrap=True)
    table.add_column("active", justify="right", no_wrap=True)
    for item in sessions:
        state = item.get("state", "?")
        table.add_row(
            escape(item["id"]),
            f"[bold green]{state}[/]" if state == "running" else state,
            str(item.get("turns", 0)),
            str(item.get("tokens", 0)),
            escape(f"{item.get('provider')} / {item.get('model')}"),
            clock(item.get("created")),
            ago(now - float(item.get("last_active") or now)),
        )
    if not sessions:
        table.caption = "no sessions"
    return table


def _app_sessions_table(sessions: list[dict[str, Any]], *, now: float) -> Any:
    """The Gradio sessions of an operator's app: events run, what runs and waits now."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_edge=False)
    table.add_column("session", overflow="fold", min_width=12)
    for name in ("state", "events", "running", "waiting", "first seen", "last seen"):
        table.add_column(name, justify="left" if name in ("state", "first seen") else "right", no_wrap=True)
    for item in sessions:
        state = item["state"]
        table.add_row(escape(item["id"]), f"[bold green]{state}[/]" if state == "running" else state,
                      str(item["events"]), str(item["running"]), str(item["waiting"]), clock(item["first_seen"]),
                      ago(now - float(item["last_seen"])))
    return table


def clock(timestamp: float | None) -> str:
    """Local time; the date too when it is not today."""
    if timestamp is None:
        return "–"
    today = time.strftime("%Y-%m-%d")
    day = time.strftime("%Y-%m-%d", time.localtime(timestamp))
    return time.strftime("%H:%M:%S" if day == today else "%Y-%m-%d %H:%M", time.localtime(timestamp))


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m ago"
    return f"{seconds // 3600:.0f}h ago"


def _text(content: Any) -> str:
    """Message content as text (Gradio may give a list of parts)."""
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def _checked(session_id: str) -> str:
    """A session id safe to put in the URL path."""
    from urllib.parse import quote

    if not session_id or len(session_id) > 256:
        fail("a session id is 1–256 characters; `cmw sessions list` shows them")
    return quote(session_id, safe="")

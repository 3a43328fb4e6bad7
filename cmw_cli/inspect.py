"""`cmw inspect APP`: every event of a Gradio app with the limit a profile gives it, without serving it."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cmw_cli.common import JsonOption, ProfileOption, SetOption, console, fail, load_or_exit


def inspect(
    app: Annotated[str, typer.Argument(help="path/to/app.py[:attr] or module:attr.", show_default=False)],
    profile: ProfileOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Each event of APP: api name, triggers, the concurrency limit in effect and where it came from.

    The same answer `cmw serve APP` applies (events.limits by api name or glob, events.groups, the app's own
    limits, the master switch).

    \b
    Example usage:
        cmw inspect examples/blocks_app.py -p balanced
        cmw inspect app.py:demo --set 'events.limits.tool_*=2' --json
    """
    loaded = load_or_exit(profile, set_, {"server.app": (app, "APP")}, show_warnings=False)
    from agent.apps.limits import event_limits
    from agent.apps.loading import load_app
    from agent.settings import ConfigError

    try:
        served = load_app(app)
    except ConfigError as exc:
        if getattr(exc, "app_traceback", ""):
            typer.echo(exc.app_traceback.rstrip(), err=True)  # type: ignore[attr-defined]
        fail(str(exc))
    limits = event_limits(served.blocks, loaded.settings)
    if json_:
        print(json.dumps({"app": app, "profile": loaded.profile_name, "events": [e.to_dict() for e in limits]},
                         indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{app} · profile {loaded.profile_name}", title_justify="left")
    for column in ("api name", "triggers", "limit", "from"):
        table.add_column(column, overflow="fold")
    for event in limits:
        table.add_row(escape(event.api_name or "(unnamed)"), escape(", ".join(event.triggers) or "-"),
                      "∞" if event.limit is None else str(event.limit), escape(event.source))
    console.print(table)
    for warning in served.overridden:
        console.print(f"note: {warning}", highlight=False, markup=False)

"""Entry point of `cmw`. Command groups live one per module; none imports gradio at start-up."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from agent import __version__
from cmw_cli import config, loadtest, serve, sessions, sim, status

app = typer.Typer(
    name="cmw",
    help="Launch, measure and administer a Gradio LLM agent app with validated concurrency profiles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: typer's rich help imports rich.markdown, markdown-it and pygments, which
    # alone cost more than the whole 0.25 s budget of `cmw --help` (bench/cli_startup.py).
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cmw {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """cmw: concurrency profiles, admin and load testing for a Gradio LLM agent app."""


app.command("serve")(serve.serve)
app.add_typer(config.app, name="config")
app.command("status")(status.status)
app.add_typer(sessions.app, name="sessions")
app.command("loadtest")(loadtest.loadtest)
app.command("smoke")(loadtest.smoke)
app.command("sim")(sim.sim)


def main() -> None:
    # `cmw config ...` runs the config group directly: the same commands and help, without
    # typer building every other command first (start-up time; bench/cli_startup.py).
    if sys.argv[1:2] == ["config"]:
        config.app(args=sys.argv[2:], prog_name="cmw config")
    app()


if __name__ == "__main__":
    main()

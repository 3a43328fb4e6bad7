"""Entry point of `cmw`. Command groups live one per module; none imports gradio at start-up."""

from __future__ import annotations

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
    rich_markup_mode="rich",
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
    app()


if __name__ == "__main__":
    main()

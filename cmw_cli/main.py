"""Entry point of `cmw`. Command groups live one per module; none imports gradio at start-up."""

from __future__ import annotations

import gc
import os
import sys
from typing import Annotated

# Pydantic looks for plugins in every installed distribution's entry points on first use: ~0.1 s of
# `cmw config show` (bench/cli_startup.py). cmw uses none; an explicit setting still wins.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import typer  # noqa: E402

from agent import __version__  # noqa: E402
from cmw_cli import config, inspect, loadtest, proxy, serve, sessions, sim, status, tune

app = typer.Typer(
    name="cmw",
    help="Launch, measure and administer a Gradio LLM agent app with validated concurrency profiles.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion
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
app.command("inspect")(inspect.inspect)
app.add_typer(config.app, name="config")
app.command("status")(status.status)
app.add_typer(sessions.app, name="sessions")
app.command("loadtest")(loadtest.loadtest)
app.command("smoke")(loadtest.smoke)
app.command("tune")(tune.tune)
app.command("sim")(sim.sim)
app.command("proxy-config")(proxy.proxy_config)


def main() -> None:
    args = sys.argv[1:]
    # Read-only runs that end by printing: at exit the interpreter's final garbage collections walk
    # every pydantic and typer object (~0.15 s); frozen, they are skipped. Nothing is left open to
    # finalise. (Start-up time of the whole process; bench/cli_startup.py.)
    quick = not args or args[0] == "config" or bool({"--help", "--version"} & set(args))
    if not quick:
        gc.enable()  # paused by cmw_cli.__main__ for start-up; servers and load tests need it
    try:
        # `cmw config ...` runs the config group directly: the same commands and help, without
        # typer building every other command first.
        if args[:1] == ["config"]:
            config.app(args=args[1:], prog_name="cmw config")
        app()
    finally:
        if quick:
            gc.freeze()


if __name__ == "__main__":
    main()

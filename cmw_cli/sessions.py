"""`cmw sessions ...` (being built)."""

import typer

app = typer.Typer(help="Inspect and manage the sessions of a running server.", no_args_is_help=True)

"""`cmw config ...` (being built)."""

import typer

app = typer.Typer(help="Show, compare, validate and create settings profiles.", no_args_is_help=True)

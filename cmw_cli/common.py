"""What every command shares: exit codes, consoles, and settings loading that never tracebacks."""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from agent.settings import ConfigError, LoadedSettings, load_settings


class Exit(IntEnum):
    """The exit codes of DESIGN.md; scripts and CI depend on them."""

    OK = 0
    CHECK_FAILED = 1
    BAD_INPUT = 2
    ISOLATION = 3
    UNREACHABLE = 4


console = Console()
err_console = Console(stderr=True)

ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile", "-p", help="Profile name or path to a .toml file [default: $CMW_PROFILE or balanced]."
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one key, e.g. --set events.chat_concurrency_limit=4 (repeatable)."),
]


def fail(message: str, code: Exit = Exit.BAD_INPUT) -> NoReturn:
    """Print a one-line error (or several) to stderr and exit with ``code``."""
    for line in str(message).splitlines():
        err_console.print(f"[bold red]error:[/] {line}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(int(code))


def load_or_exit(
    profile: str | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    *,
    show_warnings: bool = True,
) -> LoadedSettings:
    """Load settings; bad configuration becomes exit 2 with one line per problem."""
    merged: list[str] | dict[str, Any]
    try:
        if flags:
            # Dedicated flags (--port, --llm ...) outrank --set; both outrank the environment.
            from agent.settings import parse_assignments

            assigned = {k: (raw.value, "--set") for k, raw in parse_assignments(overrides or []).items()}
            merged = {**assigned, **flags}
        else:
            merged = overrides or []
        loaded = load_settings(profile, merged)
    except ConfigError as exc:
        fail(str(exc))
    if show_warnings:
        for warning in loaded.warnings:
            err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    return loaded

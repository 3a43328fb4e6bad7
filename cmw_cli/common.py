"""What every command shares: exit codes, consoles, and settings loading that never tracebacks.

Importing this module must stay cheap (`cmw --help` imports every command module): pydantic and
the settings model load only when a command actually reads settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import IntEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from agent.settings import LoadedSettings


class Exit(IntEnum):
    """The exit codes of DESIGN.md; scripts and CI depend on them."""

    OK = 0
    CHECK_FAILED = 1
    BAD_INPUT = 2
    ISOLATION = 3
    UNREACHABLE = 4
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT (128 + 2)


class _LazyConsole:
    """A rich Console made on first use: `cmw --help` never prints through rich, and importing it costs time."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def _real(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
            # Console() freezes $COLUMNS/$LINES when it is made; made lazily, that would be whenever the
            # first command printed. Unfrozen, the size is read on each use, as for a console made at start.
            self._console._width = self._options.get("width")
            self._console._height = self._options.get("height")
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    def __enter__(self) -> Console:  # rich.live.Live buffers output with `with console:`
        return self._real().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._real().__exit__(*exc)


# emoji=False: names and paths users type are printed as they are (":bell:" stays text), and rich
# skips loading its emoji table.
console = cast("Console", _LazyConsole(emoji=False))
err_console = cast("Console", _LazyConsole(stderr=True, emoji=False))

ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        "-p",
        metavar="NAME|PATH",
        help="Profile name or path to a .toml file [default: $CMW_PROFILE or balanced].",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", metavar="KEY=VALUE", help="Override one key, e.g. --set events.chat_concurrency_limit=4 (repeatable)."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


def fail(message: str, code: Exit = Exit.BAD_INPUT) -> NoReturn:
    """Print a one-line error (or several) to stderr and exit with ``code``."""
    from rich.markup import escape

    for line in str(message).splitlines():
        # Messages quote TOML tables and values ("[events]", "[1, 2]"): never read them as markup.
        err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(int(code))


def warn(message: str) -> None:
    """One warning line on stderr, so stdout stays clean for --json."""
    from rich.markup import escape

    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def load_or_exit(
    profile: str | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    *,
    show_warnings: bool = True,
) -> LoadedSettings:
    """Load settings; bad configuration becomes exit 2 with one line per problem.

    ``flags`` maps dotted keys to ``(value, "--port")`` for dedicated flags; a ``None`` value means
    the flag was not given. Flags outrank ``--set``; both outrank the environment.
    """
    from agent.settings import ConfigError, load_settings

    try:
        loaded = load_settings(profile, overrides or [], flags=flags)
    except ConfigError as exc:
        fail(str(exc))
    if show_warnings:
        for warning in loaded.warnings:
            warn(warning)
    return loaded


def refreshes(interval: float, count: int | None) -> Iterator[int]:
    """The refreshes of a `watch` view: 0, 1, … with ``interval`` seconds between them, ``count`` of them (None:
    until Ctrl-C)."""
    import time

    shown = 0
    while count is None or shown < count:
        if shown:
            time.sleep(interval)
        yield shown
        shown += 1

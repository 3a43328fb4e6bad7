"""`cmw config ...`: show, compare, validate and create settings profiles.

Thin commands over agent.settings. Only typer loads at import time (`cmw --help` imports this
module): the settings model (pydantic) and rich load inside the commands.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cmw_cli.client import TokenOption, UrlOption
from cmw_cli.common import Exit, JsonOption, ProfileOption, SetOption, console, fail, load_or_exit, warn

if TYPE_CHECKING:
    from rich.table import Table

    from agent.settings import LoadedSettings

app = typer.Typer(
    help="Show, compare, validate and create settings profiles.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

# The concurrency figures of DESIGN's profile table: what tells one profile from another.
KEY_FIGURES = (
    "enable_concurrent_processing",
    "queue.enabled",
    "queue.default_concurrency_limit",
    "queue.status_update_rate",
    "queue.max_size",
    "server.max_threads",
    "events.chat_concurrency_limit",
    "events.file_upload_concurrency_limit",
    "events.file_processing_queue_id",
    "events.stats_refresh_concurrency_limit",
    "events.logs_refresh_concurrency_limit",
)
PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def escape(text: str) -> str:
    """rich.markup.escape, imported when a command prints (`cmw --help` never does)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _say(markup: str) -> None:
    """One line for people; long paths stay on the line instead of breaking it."""
    console.print(markup, highlight=False, soft_wrap=True)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _text(value: Any) -> str:
    """A value as a person reads it in a table (TOML spelling; empty for None)."""
    if value is None:
        return "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_text(item) for item in value)
    return str(value)


def _pretty_path(path: str | Path) -> str:
    """Shorter spelling of a path for tables: relative to the working directory, or with ~."""
    path = Path(path)
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        try:
            return prefix + str(path.relative_to(base))
        except ValueError:
            continue
    return str(path)


def _pretty_source(source: str) -> str:
    """`profile:<name>` in tables; the title names the file (JSON keeps the full path)."""
    kind, sep, rest = source.partition(":")
    return f"profile:{Path(rest).stem}" if kind == "profile" and sep else source


def _table(title: str | None = None) -> Table:
    from rich.table import Table

    return Table(title=title, title_justify="left", header_style="bold", show_lines=False)


def _load_profile(name: str) -> LoadedSettings:
    from agent.settings import ConfigError, load_profile

    try:
        return load_profile(name)
    except ConfigError as exc:
        fail(str(exc))


@app.command()
def show(
    profile: ProfileOption = None,
    set_: SetOption = None,
    as_json: JsonOption = False,
    url: Annotated[str | None, typer.Option(
        "--url", help="Show a running server's effective settings instead (sources include `live`).",
    )] = None,
    token: TokenOption = None,
) -> None:
    """Effective settings: every key's value, where it came from, what it allows and what it does.

    Precedence, highest first: --set > environment > .env > profile > defaults. Secrets are masked.
    Warnings about settings that cannot take effect go to stderr. With --url (or --token), the settings a
    running server runs with, from its admin API: a limit changed there shows as source `live`.

    \b
    Example usage:
        cmw config show -p high-performance
        CHAT_CONCURRENCY_LIMIT=7 cmw config show --json
        cmw config show --url http://127.0.0.1:7860
    """
    if url is not None or token is not None:
        if profile is not None or set_:
            fail("-p/--set shape the local settings; --url shows what the running server runs with: give one or "
                 "the other")
        from cmw_cli.client import connect

        client = connect(url, token)
        described = client.get("config")
        if as_json:
            _print_json(described)
            return
        profile_name = (client.get("health") or {}).get("profile")
        _print_settings(described, f"server {client.url}: profile {profile_name}")
        return
    loaded = load_or_exit(profile, set_)
    described = loaded.describe()
    if as_json:
        _print_json(described)
        return
    _print_settings(described, f"profile {loaded.profile_name}: {_pretty_path(loaded.profile_path or '-')}")


def _print_settings(described: dict[str, dict[str, Any]], title: str) -> None:
    """The table of `config show`: local or a server's, the same columns."""
    from rich.text import Text

    table = _table(title)
    # A wide terminal gets a column per field; a narrow one stacks description under key, allowed under value.
    # Cells are Text, not markup: parsing markup for ~250 cells is a visible share of start-up time.
    wide = console.width >= 150
    # Narrow: every column gets a fixed width (key whole; source and value as wide as their longest
    # line, value taking what is left), so rich wraps cells without first measuring ~200 of them (a
    # third of the render time). A fixed width also makes rich crop rather than wrap a table that does
    # not fit a very narrow terminal.
    key_width = value_width = source_width = None
    if not wide:
        key_width = min(max(map(len, described)), console.width // 2)
        rest = max(console.width - key_width - 10, 2)  # 4 borders, 1 space of padding each side of 3 columns
        source_width = min(max(len(_pretty_source(row["source"])) for row in described.values()), rest // 2)
        longest = max(max(len(_text(row["value"])), len(row["allowed"])) for row in described.values())
        value_width = min(longest, rest - source_width)
    table.add_column("key" if wide else "key / description", width=key_width, overflow="fold")
    table.add_column("value" if wide else "value / allowed", width=value_width, overflow="fold")
    table.add_column("source", width=source_width, overflow="fold")
    if wide:
        table.add_column("allowed")
        table.add_column("description")
    keys = list(described)
    for index, key in enumerate(keys):
        row = described[key]
        next_group = keys[index + 1].partition(".")[0] if index + 1 < len(keys) else None
        value, source = _text(row["value"]), _pretty_source(row["source"])
        if wide:
            cells = [Text(key, "cyan"), Text(value, "bold"), Text(source)]
            cells += [Text(row["allowed"], "dim"), Text(row["description"])]
        else:
            cells = [
                Text.assemble((key, "cyan"), "\n", (row["description"], "dim")),
                Text.assemble((value, "bold"), "\n", (row["allowed"], "dim")),
                Text(source),
            ]
        table.add_row(*cells, end_section=next_group != key.partition(".")[0])
    console.print(table)


@app.command()
def profiles(as_json: JsonOption = False) -> None:
    """Every available profile side by side, with its key concurrency figures.

    User profiles ($CMW_PROFILES_DIR, else ~/.config/cmw/profiles) shadow shipped ones of the same name.
    Values are each profile's own: the environment and .env are not applied.

    \b
    Example usage:
        cmw config profiles
        cmw config profiles --json
    """
    from agent.settings import (
        ConfigError,
        available_profiles,
        display_value,
        load_profile,
        profile_description,
        profile_environ,
    )

    report: dict[str, dict[str, Any]] = {}
    for name, path in available_profiles(profile_environ()).items():
        entry: dict[str, Any] = {"path": str(path), "description": profile_description(path)}
        try:
            loaded = load_profile(path)
        except ConfigError as exc:
            entry.update(ok=False, problems=[str(p) for p in exc.problems], warnings=[], values={})
        else:
            values = {key: display_value(loaded.settings.get(key), spec) for key, spec in _registry().items()}
            entry.update(ok=True, problems=[], warnings=loaded.warnings, values=values)
        report[name] = entry
    if as_json:
        _print_json(report)
        return
    if not report:
        fail("no profiles found; `cmw config path` shows where cmw looks")
    table = _table("profiles")
    # Keys stay whole (people copy them into --set); in a narrow terminal the values fold instead.
    key_width = max(map(len, KEY_FIGURES))
    narrow = console.width < key_width + 4 + 19 * len(report)
    table.add_column("key", style="cyan", width=min(key_width, console.width // 2) if narrow else None)
    for name in report:
        table.add_column(escape(name), justify="right", overflow="fold", ratio=1 if narrow else None)
    for key in KEY_FIGURES:
        cells = [escape(_text(e["values"][key])) if e["ok"] else "[red]invalid[/]" for e in report.values()]
        table.add_row(key, *cells)
    table.add_row("warnings", *(str(len(e["warnings"])) for e in report.values()), end_section=True)
    console.print(table)
    for name, entry in report.items():
        line = f"[bold]{escape(name)}[/]: {escape(entry['description'] or '(no description)')}"
        _say(f"{line} [dim]({escape(_pretty_path(entry['path']))})[/]")
        for problem in entry["problems"]:
            _say(f"  [red]error:[/] {escape(problem)}")


def _registry() -> dict[str, Any]:
    from agent.settings import REGISTRY

    return REGISTRY


@app.command()
def validate(
    targets: Annotated[
        list[str] | None,
        typer.Argument(help="Profile names or .toml paths [default: every available profile].", show_default=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check profiles: ok, or every problem (exit 2); plus warnings for settings that cannot take effect.

    Each profile is judged on its own (defaults + the file), not with this shell's environment.

    \b
    Example usage:
        cmw config validate ./mine.toml high-performance
    """
    from agent.settings import ConfigError, available_profiles, load_profile, profile_environ

    names = targets or list(available_profiles(profile_environ()))
    results: list[dict[str, Any]] = []
    for name in names:
        result: dict[str, Any] = {"target": name, "path": None, "ok": False, "problems": [], "warnings": []}
        try:
            loaded = load_profile(name)
        except ConfigError as exc:
            result["problems"] = [str(p) for p in exc.problems]
        else:
            result.update(path=str(loaded.profile_path), ok=True, warnings=loaded.warnings)
        results.append(result)
    bad = [r for r in results if not r["ok"]]
    if as_json:
        _print_json(results)
    else:
        for result in results:
            where = f" [dim]({escape(_pretty_path(result['path']))})[/]" if result["path"] else ""
            if result["ok"]:
                _say(f"[green]ok[/]       {escape(result['target'])}{where}")
            else:
                count = len(result["problems"])
                label = f"{count} problem{'s' if count != 1 else ''}"
                _say(f"[red]invalid[/]  {escape(result['target'])}: {label}{where}")
            for problem in result["problems"]:
                _say(f"  [red]error:[/] {escape(problem)}")
            for warning in result["warnings"]:
                _say(f"  [yellow]warning:[/] {escape(warning)}")
    if bad:
        raise typer.Exit(int(Exit.BAD_INPUT))


@app.command()
def diff(
    a: Annotated[str, typer.Argument(help="First profile (name or path).", show_default=False)],
    b: Annotated[str, typer.Argument(help="Second profile (name or path).", show_default=False)],
    as_json: JsonOption = False,
) -> None:
    """Keys whose values differ between two profiles (each on its own, without the environment).

    \b
    Example usage:
        cmw config diff balanced high-performance
    """
    from agent.settings import display_value

    first, second = _load_profile(a), _load_profile(b)
    differences: dict[str, dict[str, Any]] = {}
    for key, spec in _registry().items():
        va, vb = display_value(first.settings.get(key), spec), display_value(second.settings.get(key), spec)
        if spec.secret:  # say whether each is set (and whether they differ), never what they are
            sa, sb = first.settings.get(key), second.settings.get(key)
            if sa != sb:
                differences[key] = {"a": "set" if sa else None, "b": "set" if sb else None}
                if sa and sb:
                    differences[key]["b"] = "set, different"
        elif va != vb:
            differences[key] = {"a": va, "b": vb}
    if as_json:
        _print_json(
            {
                "a": {"profile": a, "path": str(first.profile_path)},
                "b": {"profile": b, "path": str(second.profile_path)},
                "differences": differences,
            }
        )
        return
    if not differences:
        _say(f"{escape(a)} and {escape(b)} hold the same settings.")
        return
    table = _table(f"{len(differences)} key{'s' if len(differences) != 1 else ''} differ")
    table.add_column("key", style="cyan")
    table.add_column(escape(a), justify="right")
    table.add_column(escape(b), justify="right")
    for key, pair in differences.items():
        table.add_row(escape(key), escape(_text(pair["a"])), escape(_text(pair["b"])))
    console.print(table)


@app.command()
def init(
    name: Annotated[
        str,
        typer.Argument(help="Profile name, or a path ending in .toml to write there.", show_default=False),
    ],
    from_: Annotated[
        str | None, typer.Option(
            "--from", metavar="NAME|PATH", help="Start from this profile's values [default: built-in defaults]."
        )
    ] = None,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", metavar="DIR",
            help="Write NAME.toml here [default: $CMW_PROFILES_DIR, else $XDG_CONFIG_HOME/cmw/profiles or "
            "~/.config/cmw/profiles].",
        ),
    ] = None,
    description: Annotated[
        str | None, typer.Option(metavar="TEXT", help="One line saying what the profile is for.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a new profile: every key with its description as a comment, ready to edit.

    Secrets are never written; keep them in the environment or .env.

    \b
    Example usage:
        cmw config init mine --from high-performance
        cmw config init ./staging.toml
    """
    from agent.settings import ConfigError, looks_like_path, profile_environ, user_profiles_dir

    if looks_like_path(name):
        path = Path(name).expanduser()
        if path.suffix != ".toml":
            fail(f"{name}: a profile file name ends in .toml")
        label = path.stem
    else:
        if not PROFILE_NAME.match(name):
            fail(f"profile name {name!r}: use letters, digits, '.', '_' and '-', or give a path ending in .toml")
        path = (directory.expanduser() if directory else user_profiles_dir(profile_environ())) / f"{name}.toml"
        label = name
    if path.is_dir():
        fail(f"{path} is a directory")
    if path.exists() and not force:
        fail(f"{path} already exists; pass --force to overwrite it")
    base = _load_profile(from_) if from_ else _defaults()
    text = _render(base, label, from_, description)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"{path}: cannot write profile: {exc.strerror or exc}")
    try:
        written = _load_profile_path(path)
    except ConfigError as exc:  # a bug in the writer, not the user's input: still say it plainly
        fail(f"{path} was written but does not validate:\n{exc}")
    for warning in written.warnings:
        warn(warning)
    skipped = [k for k, s in _registry().items() if s.secret and base.settings.get(k) is not None]
    for key in skipped:
        warn(f"{key} not copied: secrets stay in the environment or .env")
    use = str(path) if looks_like_path(name) or directory else label
    _say(f"wrote {escape(str(path))}; use it with: cmw config show -p {escape(use)}")


def _defaults() -> LoadedSettings:
    from agent.settings import load_settings

    return load_settings(environ={}, env_file=None, use_profile=False)


def _load_profile_path(path: Path) -> LoadedSettings:
    from agent.settings import load_profile

    return load_profile(path.resolve())


def _render(base: LoadedSettings, label: str, origin: str | None, description: str | None) -> str:
    from agent.settings import profile_toml

    start = f"the values of profile {origin} ({base.profile_path})" if origin else "the built-in defaults"
    return profile_toml(
        base.settings,
        title=f"cmw profile '{label}', written by `cmw config init` from {start}.",
        description=description or (f"Based on {origin}." if origin else "Built-in defaults."),
    )


@app.command()
def path(as_json: JsonOption = False) -> None:
    """Where cmw looks: profile directories, the .env file, the selected profile, the state directory.

    \b
    Example usage:
        cmw config path
        cmw config path --json
    """
    from agent.settings import (
        ConfigError,
        Settings,
        load_settings,
        profile_environ,
        resolve_profile,
        shipped_profiles_dir,
        state_dir_path,
        user_profiles_dir,
    )

    env_file = Path(os.environ.get("CMW_ENV_FILE") or ".env").expanduser().absolute()
    try:
        selected: str = str(resolve_profile(None))
    except ConfigError as exc:
        selected = f"(none: {exc})"
    try:
        settings = load_settings().settings
    except ConfigError:
        settings = Settings()  # the settings are broken; `cmw config show` says how
    places = {
        "profiles_dir": str(user_profiles_dir(profile_environ())),
        "shipped_profiles_dir": str(shipped_profiles_dir()),
        "env_file": str(env_file),
        "profile": selected,
        "state_dir": str(state_dir_path(settings)),
    }
    if as_json:
        _print_json(places)
        return
    notes = {
        "profiles_dir": "user profiles ($CMW_PROFILES_DIR)",
        "shipped_profiles_dir": "profiles shipped with cmw",
        "env_file": ".env read for settings ($CMW_ENV_FILE)",
        "profile": "profile used when -p is not given ($CMW_PROFILE)",
        "state_dir": "sessions database and admin token (server.state_dir)",
    }
    table = _table()
    for column in ("what", "path", "exists"):
        table.add_column(column, overflow="fold")
    for key, where in places.items():
        exists = "yes" if Path(where).exists() else "no"
        table.add_row(notes[key], escape(where), exists)
    console.print(table)


LIVE_KEYS_HELP = ("events.<event>_concurrency_limit (events: {events}) or events.limits.<api name> (an app's "
                  "event)")


@app.command("set")
def set_live(
    assignment: Annotated[str, typer.Argument(metavar="KEY=VALUE", help="A concurrency limit and its new value.",
                                              show_default=False)],
    live: Annotated[bool, typer.Option("--live", help="Change it on the running server, now (required).")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change an event's concurrency limit on a running server, at once, without a restart.

    A raised limit starts waiting jobs; a lowered one lets running jobs finish and starts none until fewer run.
    Events sharing a pool (cmw's file events; an app's events.groups) change together. The change lasts until
    the server stops, is logged with the client's address, and shows as source `live` in `cmw config show --url`
    and `cmw status`. With --workers N every worker takes it (the limit is per worker). Keys:
    events.chat_concurrency_limit, events.file_upload_concurrency_limit, events.stats_refresh_concurrency_limit,
    events.logs_refresh_concurrency_limit, or events.limits.<api name> for an app served by `cmw serve APP`.

    \b
    Example usage:
        cmw config set events.chat_concurrency_limit=8 --live
        cmw config set events.limits.generate=4 --live --url http://10.0.0.5:7860 --token "$TOKEN"
    """
    from agent.app.queue import EVENTS

    key, sep, raw = assignment.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        fail(f"{assignment!r}: expected KEY=VALUE, e.g. events.chat_concurrency_limit=8")
    if not live:
        fail("only live changes are supported by `cmw config set`: add --live to change a running server "
             "(profiles are files: `cmw config init NAME`, then edit it)")
    event = live_event(key, EVENTS)
    if event is None:
        fail(f"{key} cannot change live; only concurrency limits can: "
             + LIVE_KEYS_HELP.format(events=", ".join(EVENTS)))
    if not re.fullmatch(r"[0-9]+", raw) or int(raw) < 1:
        fail(f"{key}={raw}: a limit is a whole number, at least 1")
    from urllib.parse import quote

    from cmw_cli.client import connect

    client = connect(url, token)
    answer = client.put(f"limits/{quote(event, safe='')}", {"limit": int(raw)})
    if as_json:
        _print_json(answer)
    else:
        _say(escape(_change_line(answer)))
    failed = [w for w in answer.get("workers") or [] if "error" in w]
    for worker in failed:
        warn(f"worker {worker['worker']} did not take the change: {worker['error']}")
    if failed:
        raise typer.Exit(int(Exit.UNREACHABLE))


def live_event(key: str, events: tuple[str, ...]) -> str | None:
    """The event a live-changeable key names (``events.chat_concurrency_limit`` → chat, ``events.limits.NAME`` →
    NAME), else None."""
    if key.startswith("events.limits."):
        name = key.removeprefix("events.limits.")
        return name if name and "/" not in name else None
    found = re.fullmatch(r"events\.(\w+)_concurrency_limit", key)
    return found.group(1) if found and found.group(1) in events else None


def _change_line(answer: dict[str, Any]) -> str:
    """``chat: 3 → 8 (live)``, naming the events of a shared pool and each worker's outcome."""

    def shown(limit: Any) -> str:
        return "none" if limit is None else str(limit)

    event = answer.get("event")
    line = f"{event}: {shown(answer.get('previous'))} → {shown(answer.get('limit'))} (live)"
    others = [name for name in answer.get("pool") or [] if name != event]
    if others:
        line += f"; its pool changed with it: {', '.join(others)}"
    workers = answer.get("workers")
    if workers:
        took = [w for w in workers if "error" not in w]
        line += f"; {len(took)} of {len(workers)} workers (the limit is per worker)"
    return line

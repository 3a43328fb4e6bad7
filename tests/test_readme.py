"""The README's command summary must match the CLI: every command listed, every flag real."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from typer.testing import CliRunner

from cmw_cli.main import app

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()


def summary() -> dict[str, set[str]]:
    """Flags per command in the README's "## Commands" block (continuation lines count too)."""
    text = README.read_text(encoding="utf-8")
    block = text.split("## Commands", 1)[1].split("```", 2)[1]
    flags: dict[str, set[str]] = {}
    command = ""
    for line in block.splitlines():
        line = line.split("#", 1)[0]  # trailing comments describe, they are not syntax
        if line.startswith("cmw "):
            command = line.split()[1]
            flags.setdefault(command, set())
        if command:
            flags[command] |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line))
    return flags


def help_texts(name: str) -> str:
    """`cmw NAME --help`, plus every subcommand's help for a group."""
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    texts = [runner.invoke(app, [name, "--help"]).output]
    for sub in getattr(command, "commands", {}):  # a command group
        texts.append(runner.invoke(app, [name, sub, "--help"]).output)
    return "\n".join(texts)


def test_every_command_is_in_the_readme_summary() -> None:
    listed = set(summary()) - {"--version"}
    assert listed == set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_every_flag_in_the_readme_summary_exists() -> None:
    missing = {
        name: sorted(flag for flag in flags if not re.search(rf"(?<![\w-]){flag}(?![\w-])", help_texts(name)))
        for name, flags in summary().items()
        if name != "--version"
    }
    assert {name: flags for name, flags in missing.items() if flags} == {}

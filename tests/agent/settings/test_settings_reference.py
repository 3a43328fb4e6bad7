"""The README documents every settings key and no key that does not exist (as datasette checks its settings docs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.settings import ENV_TO_KEY, GROUPS, LOADER_ENV, REGISTRY
from agent.settings.reference import BEGIN, END, main, markdown, update

README = Path(__file__).resolve().parents[3] / "README.md"


def section() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)]


def test_the_readme_settings_reference_is_up_to_date() -> None:
    assert section().strip() == markdown().strip(), "run: python -m agent.settings.reference"
    assert main(["--check", str(README)]) == 0


def test_every_key_is_documented_and_every_documented_key_exists() -> None:
    documented = re.findall(r"^\| `([a-z_.]+)` \|", section(), flags=re.MULTILINE)
    assert len(documented) == len(set(documented))
    assert set(documented) == set(REGISTRY)


def test_keys_and_env_names_the_readme_text_mentions_exist() -> None:
    """Keys written as `group.key` (or `group.key=value`) and CMW_ names anywhere in the README are real."""
    text = README.read_text(encoding="utf-8")
    keys = {
        match[0]
        for match in re.findall(r"`(([a-z_]+)\.[a-z_]+)(?:=[^`]*)?`", text)
        if match[0].partition(".")[0] in GROUPS
    }
    assert keys - set(REGISTRY) == set()
    names = set(re.findall(r"\bCMW_[A-Z_]*[A-Z]\b", text)) - {"CMW_GROUP__KEY"}
    assert names - set(ENV_TO_KEY) - set(LOADER_ENV) == set()


def test_check_fails_on_a_stale_readme_and_a_rewrite_fixes_it(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(f"# x\n\nintro\n\n{BEGIN}\n| `gone.key` | … |\n{END}\n\n## after\n", encoding="utf-8")
    assert main(["--check", str(stale)]) == 1
    assert main([str(stale)]) == 0
    text = stale.read_text(encoding="utf-8")
    assert text.startswith("# x\n\nintro\n\n") and text.endswith("\n\n## after\n")
    assert "gone.key" not in text and main(["--check", str(stale)]) == 0
    with pytest.raises(ValueError, match="no settings section"):
        update("# no markers\n")

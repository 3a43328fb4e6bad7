"""The package itself: every old name still importable, cheap to import, one concern per module, no import cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import agent.settings

PACKAGE = Path(agent.settings.__file__).parent
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
# Every name callers imported from the single-module agent.settings before it became a package.
FORMER_NAMES = (
    "ENV_TO_KEY", "MASK", "REGISTRY", "ConfigError", "KeySpec", "LoadedSettings", "Problem", "Settings",
    "SimSettings", "available_profiles", "check_effect", "default_state_dir", "display_value", "load_profile",
    "load_settings", "looks_like_path", "mask_url_passwords", "parse_assignments", "profile_description",
    "profile_toml", "read_profile", "resolve_profile", "shipped_profiles_dir", "user_profiles_dir",
)


@pytest.mark.parametrize("name", sorted({*FORMER_NAMES, *agent.settings.__all__}))
def test_every_name_is_importable_from_the_package(name: str) -> None:
    module = __import__("agent.settings", fromlist=[name])
    assert getattr(module, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Setings'"):
        agent.settings.Setings  # noqa: B018


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return {name.partition(".")[0] for name in json.loads(out.stdout)}


def test_the_settings_never_import_the_web_or_llm_stack() -> None:
    """`cmw --help` and `cmw config show` stay fast: gradio alone takes seconds to import."""
    statement = "; ".join(f"import agent.settings.{name}" for name in MODULES) + "; agent.settings.load_settings"
    heavy = {"gradio", "langchain", "langchain_core", "langchain_openai", "fastapi", "httpx", "starlette", "openai"}
    assert _loaded_after(statement) & heavy == set()


def test_the_provider_registry_imports_no_pydantic() -> None:
    """cmw_cli.serve reads it at import time, which `cmw --help` pays for."""
    assert "pydantic" not in _loaded_after("import agent.settings.providers")


def test_no_module_is_over_350_lines() -> None:
    sizes = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in PACKAGE.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 350} == {}


def test_no_import_cycle_between_the_modules() -> None:
    """Imports inside functions and under TYPE_CHECKING count: a cycle there is still a tangle."""
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
        targets = {
            node.module.removeprefix("agent.settings.")
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agent.settings.")
        }
        graph[name] = targets & set(MODULES)
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join((*path, node))}"
        if node not in done:
            for target in graph[node]:
                visit(target, (*path, node))
            done.add(node)

    for name in MODULES:
        visit(name, ())
    assert "agent.settings" not in {  # submodules import each other directly, never through the package
        node.module
        for name in MODULES
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
    }

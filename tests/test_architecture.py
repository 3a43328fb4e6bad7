"""The tree keeps its shape: no import cycles, modules of one concern, Gradio internals in one place.

Imports are read from the source (``ast``), so an import inside a function or under ``TYPE_CHECKING``
counts as much as one at the top: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "cmw_cli")
MAX_LINES = 600
# What counts as touching Gradio's internals (the same pattern the project's review hook uses).
GRADIO_INTERNALS = re.compile(
    r"from gradio\.[a-z_.]+ import|import gradio\.[a-z_]|\._queue\b|dependency_overrides|has_launched|SessionState"
    # Writes to Gradio's objects: an event's limit and pool, and launch() while an operator's app is imported.
    r"|\b(fn|blocks_cls)\.(concurrency_limit|concurrency_id|launch|block_thread)\b\s*[,=](?!=)"
)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports anywhere in its source (``from pkg import mod`` names ``pkg.mod``)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_project_modules() -> None:
    assert find_cycle(graph()) is None, " → ".join(find_cycle(graph()) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_inside_functions_and_type_checking_blocks_count(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent.app import ui\n"
                      "def f():\n    import agent.runtime.server\n")
    known = {"agent.app.ui": source, "agent.runtime.server": source, "agent.app": source}
    assert imports_of("x", source, known) == {"agent.app.ui", "agent.runtime.server", "agent.app"}


def test_no_module_holds_more_than_one_concern_by_size() -> None:
    big = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_gradio_internals_are_touched_from_one_module() -> None:
    touching = sorted(name for name, path in modules().items() if GRADIO_INTERNALS.search(path.read_text()))
    assert touching == ["agent.app.gradio_compat"], touching


def test_the_agent_package_never_imports_the_cli() -> None:
    offenders = {name: sorted(i for i in targets if i.startswith("cmw_cli"))
                 for name, targets in graph().items() if name.startswith("agent")}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_layout_has_one_subpackage_per_subsystem() -> None:
    for package in ("app", "runtime", "sessions", "settings", "simulator", "loadtest"):
        assert (ROOT / "agent" / package / "__init__.py").is_file(), package

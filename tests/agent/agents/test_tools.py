"""Built-in agent tools: calculator arithmetic and refusals, the clock, per-session file tools, selection, schemas."""

from __future__ import annotations

import contextlib
import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from agent.agents.tools import (
    MAX_DIGITS,
    MAX_EXPRESSION_CHARS,
    MAX_MATCHES,
    MAX_READ_LINES,
    ToolError,
    bounded,
    build_tools,
    calculate,
    current_time,
    list_files,
    read_file,
    search_files,
)
from agent.sessions.session import Session
from agent.settings.model import AgentSettings


def by_name(tools: list[BaseTool]) -> dict[str, BaseTool]:
    return {tool.name: tool for tool in tools}


def session(files: dict[str, str]) -> Session:
    return Session(id="s", created=0.0, last_active=0.0, provider="p", model="m", files=files)


# --- calculator -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "value"), [
    ("1 + 2 * 3", "7"),
    ("(1 + 2) * 3", "9"),
    ("2 ** 3 ** 2", "512"),  # ** is right-associative
    ("-2 ** 2", "-4"),  # ** binds tighter than unary minus
    ("(-2) ** 2", "4"),
    ("7 / 2", "3.5"),
    ("7 // 2", "3"),
    ("-7 % 3", "2"),
    ("2 ** -2", "0.25"),
    ("+5 - -5", "10"),
    ("0.1 + 0.2", "0.30000000000000004"),
    ("sqrt(16)", "4.0"),
    ("abs(-3) + max(1, 5, 2) - min(4, 2)", "6"),
    ("round(pi, 3)", "3.142"),
    ("round(2.5)", "2"),
    ("round(e, 2)", "2.72"),
    ("10 ** 999", "1" + "0" * 999),
    ("  2*\n3 ", "6"),
])
def test_calculator_computes_arithmetic_with_python_precedence(expression: str, value: str) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize(("expression", "says"), [
    ("__import__('os').system('true')", "not allowed"),
    ("__import__", "unknown name"),
    ("(1).real", "attribute"),
    ("(1).__class__.__bases__", "attribute"),
    ("print(1)", "not allowed"),
    ("sqrt.__call__(4)", "not allowed"),
    ("x + 1", "unknown name"),
    ("'a' * 3", "only numbers"),
    ("1j * 1j", "only numbers"),
    ("True + 1", "only numbers"),
    ("[1, 2]", "not allowed"),
    ("lambda: 1", "not allowed"),
    ("1 if 1 else 2", "not allowed"),
    ("1 < 2", "not allowed"),
    ("1 << 10000", "not allowed"),
    ("9**9**9", f"more than {MAX_DIGITS} digits"),
    ("10**100000", f"more than {MAX_DIGITS} digits"),
    ("(-10)**100000", f"more than {MAX_DIGITS} digits"),
    ("10**999 * 10**999", f"more than {MAX_DIGITS} digits"),
    ("2**(10**999)", f"more than {MAX_DIGITS} digits"),
    ("2.0 ** 10000", "too large"),
    ("1e308 * 10", "too large"),
    ("1e999", "too large"),
    ("1.5 ** (10**999)", "too large"),
    ("1 / 0", "division by zero"),
    ("1 // 0", "division by zero"),
    ("5 % 0.0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("sqrt(-1)", "math error"),
    ("(-8) ** (1/3)", "not a real number"),
    ("round(5, -10**9)", "round's second argument"),
    ("round(1, 2, 3)", "1 to 2 argument"),
    ("min()", "1 or more"),
    ("max(*[1])", "positional"),
    ("round(1.5, ndigits=1)", "positional"),
    ("1 +", "not a valid expression"),
    ("1\x00", "not a valid expression"),
    ("", "empty"),
    ("   ", "empty"),
    ("1+" * 100 + "1", f"limit is {MAX_EXPRESSION_CHARS}"),
])
def test_calculator_refuses_quickly_with_a_clear_tool_error(expression: str, says: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ToolError) as caught:
        calculate(expression)
    assert time.perf_counter() - started < 0.5
    assert says in str(caught.value)


def test_deep_nesting_within_the_length_limit_is_fine() -> None:
    assert calculate("-" * 150 + "1") == "1"
    assert calculate("(" * 90 + "2" + ")" * 90) == "2"


ATOMS = st.sampled_from(["0", "1", "2", "7", "9", "10", "0.5", "1e308", "pi", "e", "x", "'s'", "True", "1j"])
OPERATORS = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "<<", "&", "<", " if 1 else "])


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.integers(0, 4 if depth < 4 else 0))
    if kind == 0:
        return draw(ATOMS)
    if kind == 1:
        return f"{draw(st.sampled_from(['-', '+', '']))}({draw(expressions(depth + 1))})"
    if kind == 2:
        name = draw(st.sampled_from(["sqrt", "abs", "round", "min", "max", "pow", "open"]))
        args = draw(st.lists(expressions(depth + 1), max_size=3))
        return f"{name}({', '.join(args)})"
    return f"{draw(expressions(depth + 1))} {draw(OPERATORS)} {draw(expressions(depth + 1))}"


def is_number(text: str) -> bool:
    return re.fullmatch(r"-?\d+(\.\d+)?(e[+-]\d+)?", text) is not None


@settings(max_examples=400, deadline=500)
@given(expressions())
def test_calculator_returns_a_number_or_raises_tool_error_on_random_expressions(expression: str) -> None:
    try:
        result = calculate(expression)
    except ToolError:
        return
    assert is_number(result), result


@settings(max_examples=300, deadline=500)
@given(st.text(alphabet="0123456789.+-*/%()ejpiqrtsabmnx, _'\"[]", max_size=60))
def test_calculator_never_raises_anything_but_tool_error_on_random_text(text: str) -> None:
    with contextlib.suppress(ToolError):
        assert is_number(calculate(text))


# --- current time -----------------------------------------------------------------------------------------------


def test_current_time_converts_one_instant_into_the_asked_zone() -> None:
    instant = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
    assert current_time("UTC", now=instant) == "2024-01-15T12:00:00+00:00 (Monday, UTC)"
    assert current_time("Europe/Moscow", now=instant) == "2024-01-15T15:00:00+03:00 (Monday, Europe/Moscow)"
    late = datetime(2024, 1, 15, 22, 30, tzinfo=UTC)
    assert current_time("Europe/Moscow", now=late).startswith("2024-01-16T01:30:00+03:00 (Tuesday")


def test_current_time_tool_reads_the_clock_with_the_zone_offset() -> None:
    tool = by_name(build_tools(AgentSettings(tools=["current_time"]), dict))["current_time"]
    moscow = datetime.fromisoformat(tool.invoke({"timezone": "Europe/Moscow"}).split(" ")[0])
    utc = datetime.fromisoformat(tool.invoke({}).split(" ")[0])
    assert moscow.utcoffset() == timedelta(hours=3)
    assert utc.utcoffset() == timedelta(0)
    assert abs(moscow - utc) < timedelta(seconds=5)
    assert abs(utc - datetime.now(UTC)) < timedelta(seconds=5)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "Europe", "../../etc/passwd", "/etc/localtime", "x" * 100])
def test_an_unknown_time_zone_is_refused_with_an_example(zone: str) -> None:
    with pytest.raises(ToolError) as caught:
        current_time(zone)
    assert "/" in str(caught.value).split("—")[-1] or "characters" in str(caught.value)


def test_a_misspelt_time_zone_gets_a_suggestion_and_case_is_forgiven() -> None:
    with pytest.raises(ToolError, match="Europe/Moscow"):
        current_time("Europe/Moskow")
    assert "+03:00" in current_time("europe/moscow")


# --- session files ----------------------------------------------------------------------------------------------

NOTES = "Alpha line\nsecond Line with ALPHA\nthird\n"
PLAN = "\n".join(f"step {n}" for n in range(1, 501))


def test_file_tools_of_two_sessions_see_only_their_own_files() -> None:
    first, second = session({"notes.txt": NOTES}), session({"plan.md": PLAN, "secret.txt": "alpha of two"})
    one = by_name(build_tools(AgentSettings(tools=["files"]), lambda: first.files))
    two = by_name(build_tools(AgentSettings(tools=["files"]), lambda: second.files))

    assert "notes.txt" in one["list_files"].invoke({}) and "plan.md" not in one["list_files"].invoke({})
    assert "plan.md" in two["list_files"].invoke({}) and "notes.txt" not in two["list_files"].invoke({})

    found = one["search_files"].invoke({"query": "alpha"})
    assert "notes.txt:1: Alpha line" in found and "notes.txt:2: second Line with ALPHA" in found
    assert "secret" not in found
    assert "secret.txt:1: alpha of two" in two["search_files"].invoke({"query": "ALPHA"})

    with pytest.raises(ToolError, match="'notes.txt'"):
        one["read_file"].invoke({"name": "secret.txt"})
    assert "alpha of two" in two["read_file"].invoke({"name": "secret.txt"})


async def test_file_tools_see_files_attached_after_they_were_built() -> None:
    owner = session({})
    tools = by_name(build_tools(AgentSettings(tools=["files"]), lambda: owner.files))
    assert await tools["list_files"].ainvoke({}) == "No files are attached to this session."
    owner.files["late.txt"] = "hello"
    assert "late.txt (1 lines, 5 characters)" in await tools["list_files"].ainvoke({})
    assert "1: hello" in await tools["read_file"].ainvoke({"name": "late.txt"})


def test_list_files_gives_names_and_sizes() -> None:
    listing = list_files({"notes.txt": NOTES, "empty.txt": ""})
    assert "notes.txt (3 lines, 40 characters)" in listing and "empty.txt (0 lines, 0 characters)" in listing


def test_search_is_bounded_and_says_how_many_matched() -> None:
    found = search_files({"plan.md": PLAN}, "STEP")
    assert found.startswith(f"500 matching line(s) (showing the first {MAX_MATCHES}")
    assert len(found.splitlines()) == MAX_MATCHES + 1
    assert "plan.md:50: step 50" in found and "plan.md:51:" not in found
    assert "No line" in search_files({"plan.md": PLAN}, "nowhere")


def test_search_shows_a_window_of_a_huge_line() -> None:
    found = search_files({"big.txt": "x" * 100_000 + "needle" + "y" * 100_000}, "needle")
    assert "needle" in found and len(found) < 400


@pytest.mark.parametrize("query", ["", "  ", "q" * 201])
def test_search_refuses_an_empty_or_long_query(query: str) -> None:
    with pytest.raises(ToolError):
        search_files({"a": "b"}, query)


def test_read_file_reads_a_numbered_range_and_points_at_the_rest() -> None:
    files = {"plan.md": PLAN}
    part = read_file(files, "plan.md", start_line=10, line_count=3)
    assert part.splitlines() == ["plan.md, lines 10–12 of 500; call again with start_line=13 for more:",
                                 "10: step 10", "11: step 11", "12: step 12"]
    assert read_file(files, "plan.md", 499, 10).splitlines()[1:] == ["499: step 499", "500: step 500"]
    capped = read_file(files, "plan.md", 1, 10_000)
    assert len(capped.splitlines()) == MAX_READ_LINES + 1 and f"start_line={MAX_READ_LINES + 1}" in capped
    assert read_file({"empty.txt": ""}, "empty.txt") == "empty.txt is empty."
    assert read_file({"Notes.TXT": NOTES}, "notes.txt").startswith("Notes.TXT, lines 1–3 of 3:")


@pytest.mark.parametrize(("start", "count", "says"), [
    (0, 10, "counts from 1"), (-5, 10, "counts from 1"), (1, 0, "at least 1"), (501, 1, r"has 500 line\(s\)"),
])
def test_read_file_refuses_a_range_outside_the_file(start: int, count: int, says: str) -> None:
    with pytest.raises(ToolError, match=says):
        read_file({"plan.md": PLAN}, "plan.md", start, count)


def test_read_file_of_an_unknown_name_lists_the_files() -> None:
    with pytest.raises(ToolError, match="the attached files are 'a.txt', 'b.txt'"):
        read_file({"a.txt": "1", "b.txt": "2"}, "c.txt")
    with pytest.raises(ToolError, match="no files are attached"):
        read_file({}, "c.txt")
    with pytest.raises(ToolError, match="and 5 more"):
        read_file({f"{n}.txt": "" for n in range(25)}, "c.txt")


# --- selection, bounds and schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize(("selected", "names"), [
    (["calculator", "current_time", "files"],
     ["calculator", "current_time", "list_files", "search_files", "read_file"]),
    (["files", "calculator"], ["calculator", "list_files", "search_files", "read_file"]),
    (["current_time"], ["current_time"]),
    ([], []),
])
def test_build_tools_follows_the_settings_in_a_stable_order(selected: list[str], names: list[str]) -> None:
    assert [tool.name for tool in build_tools(AgentSettings(tools=selected), dict)] == names


def test_build_tools_refuses_an_unknown_tool_name() -> None:
    class Loose:
        tools = ["calculator", "shell"]

    with pytest.raises(ValueError, match="shell"):
        build_tools(Loose(), dict)


def test_results_are_cut_to_the_configured_size() -> None:
    tools = by_name(build_tools(AgentSettings(max_tool_result_chars=100), lambda: {"plan.md": PLAN}))
    text = tools["read_file"].invoke({"name": "plan.md"})
    assert len(text) <= 100 and "more characters]" in text


def test_bounded_marks_the_cut_and_is_idempotent() -> None:
    assert bounded("short", 100) == "short"
    cut = bounded("x" * 1000, 100)
    assert len(cut) <= 100 and cut.endswith(f"[cut: {1000 - cut.index(chr(10))} more characters]")
    assert bounded(cut, 100) == cut
    assert bounded("x" * 50, 10) == "x" * 10


EXPECTED = {
    "calculator": ({"expression"}, ["expression"]),
    "current_time": ({"timezone"}, []),
    "list_files": (set(), []),
    "search_files": ({"query"}, ["query"]),
    "read_file": ({"name", "start_line", "line_count"}, ["name"]),
}


def test_each_tool_has_an_openai_schema_with_the_right_required_parameters() -> None:
    for tool in build_tools(AgentSettings(), dict):
        function = convert_to_openai_tool(tool)["function"]
        properties, required = EXPECTED[tool.name]
        assert function["name"] == tool.name and function["description"]
        assert set(function["parameters"]["properties"]) == properties
        assert function["parameters"].get("required", []) == required
        assert all(spec.get("description") for spec in function["parameters"]["properties"].values())
        assert set(tool.args_schema.model_json_schema().get("properties", {})) == properties


async def test_tools_work_async_and_raise_tool_error_through_langchain() -> None:
    calculator = by_name(build_tools(AgentSettings(tools=["calculator"]), dict))["calculator"]
    assert await calculator.ainvoke({"expression": "6 * 7"}) == "42"
    with pytest.raises(ToolError, match="division by zero"):
        await calculator.ainvoke({"expression": "1/0"})
    message = await calculator.ainvoke({"type": "tool_call", "id": "c1", "name": "calculator",
                                        "args": {"expression": "2 ** 10"}})
    assert message.content == "1024" and message.tool_call_id == "c1"

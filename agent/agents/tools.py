"""The built-in tools of cmw's tool-calling agent, each bounded in time, memory and output, and none with side effects.

- ``calculator`` evaluates arithmetic by walking a parsed ``ast`` — never ``eval``/``exec``. Only numbers,
  ``+ - * / // % **``, unary signs, parentheses, ``sqrt abs round min max`` and ``pi e`` are allowed; names,
  attributes, other calls, strings and anything else are refused. The input is at most
  :data:`MAX_EXPRESSION_CHARS` long and every integer at most about :data:`MAX_DIGITS` digits: a power's size is
  estimated with logarithms *before* it is computed, so ``9**9**9`` is refused at once instead of eating the CPU.
- ``current_time`` reads the clock in an IANA time zone; it only looks zone names up in the tz database.
- ``list_files``, ``search_files`` and ``read_file`` see only the text files attached to *one* session: they are
  built per session over a callable that returns that session's ``files`` mapping (name → text). They never touch
  the filesystem, and their answers are bounded (:data:`MAX_MATCHES` matches, :data:`MAX_READ_LINES` lines).

Bad input raises :class:`ToolError` with a message the model can act on; :func:`build_tools` also cuts every
result to ``agent.max_tool_result_chars`` with :func:`bounded`.
"""

from __future__ import annotations

import ast
import difflib
import functools
import math
import operator
import warnings
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any, Protocol

from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, Field

MAX_EXPRESSION_CHARS = 200
MAX_DIGITS = 1000
MAX_ZONE_CHARS = 64
MAX_QUERY_CHARS = 200
MAX_MATCHES = 50
MAX_READ_LINES = 200
MATCH_CONTEXT_CHARS = 100
FILE_TOOLS = ("list_files", "search_files", "read_file")
# Setting value (``agent.tools``) → the tools it enables, in the order the model is offered them.
TOOL_GROUPS: dict[str, tuple[str, ...]] = {"calculator": ("calculator",), "current_time": ("current_time",),
                                           "files": FILE_TOOLS}


class ToolError(ToolException):
    """A refusal the model should read and act on (bad input, a bound reached) — never a crash of the turn."""


class ToolSettings(Protocol):
    """What :func:`build_tools` reads: ``AgentSettings`` or anything shaped like it."""

    @property
    def tools(self) -> Sequence[str]: ...


def bounded(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was cut so the model knows it saw a part.

    The marker counts against the limit, so cutting an already cut text again changes nothing.
    """
    if len(text) <= limit:
        return text
    marker = f"\n… [cut: {len(text)} more characters]"  # the longest it can be
    if len(marker) >= limit:
        return text[:limit]
    keep = limit - len(marker)
    return text[:keep] + f"\n… [cut: {len(text) - keep} more characters]"


# --- calculator -------------------------------------------------------------------------------------------------

_MAX_BITS = math.ceil(MAX_DIGITS * math.log2(10))
_HELP = "use numbers, + - * / // % ** and parentheses, the functions sqrt abs round min max and the constants pi e"
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
Number = int | float


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > MAX_DIGITS:
        raise ToolError(f"round's second argument must be a whole number between -{MAX_DIGITS} and {MAX_DIGITS}")
    return round(x, ndigits)


# name → (fewest arguments, most arguments or None for any, function)
_FUNCTIONS: dict[str, tuple[int, int | None, Callable[..., Number]]] = {
    "sqrt": (1, 1, math.sqrt), "abs": (1, 1, abs), "round": (1, 2, _round), "min": (1, None, min),
    "max": (1, None, max),
}


def _checked(value: Any) -> Number:
    """Every intermediate result passes here, so nothing too big or not a real number travels further."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError(f"the result is not a real number ({type(value).__name__}); {_HELP}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is too large for a floating-point number")
    if isinstance(value, int) and value.bit_length() > _MAX_BITS:
        raise ToolError(f"the result would have more than {MAX_DIGITS} digits")
    return value


def _power(base: Number, exponent: Number) -> Number:
    """``base ** exponent``, refused before computing when the integer result would be too long."""
    # log2(|base|) >= 1 here, so a huge exponent is refused before the float product could overflow
    if (isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1
            and (exponent > _MAX_BITS or exponent * math.log2(abs(base)) > _MAX_BITS)):
        raise ToolError(f"the result would have more than {MAX_DIGITS} digits")
    return base**exponent


def _evaluate(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"only numbers are allowed, not {node.value!r}; {_HELP}")
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        value = _evaluate(node.operand)
        return _checked(-value if isinstance(node.op, ast.USub) else +value)
    if isinstance(node, ast.BinOp) and (isinstance(node.op, ast.Pow) or type(node.op) in _BINARY):
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(left, right))
        if (isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int)
                and left.bit_length() + right.bit_length() > _MAX_BITS + 1):
            raise ToolError(f"the result would have more than {MAX_DIGITS} digits")
        return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r}; {_HELP}")
    if isinstance(node, ast.Call):
        return _call(node)
    if isinstance(node, ast.Attribute):
        raise ToolError(f"attribute access is not allowed; {_HELP}")
    raise ToolError(f"{type(node).__name__} is not allowed in an expression; {_HELP}")


def _call(node: ast.Call) -> Number:
    name = node.func.id if isinstance(node.func, ast.Name) else None
    if name not in _FUNCTIONS:
        shown = f"function {name!r}" if name else "this call"
        raise ToolError(f"{shown} is not allowed; {_HELP}")
    if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
        raise ToolError(f"{name}() takes plain positional arguments only")
    fewest, most, function = _FUNCTIONS[name]
    if len(node.args) < fewest or (most is not None and len(node.args) > most):
        wanted = f"{fewest}" if fewest == most else f"{fewest} or more" if most is None else f"{fewest} to {most}"
        raise ToolError(f"{name}() takes {wanted} argument(s), got {len(node.args)}")
    return _checked(function(*(_evaluate(arg) for arg in node.args)))


def calculate(expression: str) -> str:
    """The value of an arithmetic expression as text; anything but plain arithmetic raises :class:`ToolError`."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is {len(expression)} characters long; the limit is {MAX_EXPRESSION_CHARS}")
    if not expression.strip():
        raise ToolError(f"the expression is empty; {_HELP}")
    try:
        with warnings.catch_warnings():  # "invalid decimal literal" and the like would only be noise on stderr
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(" ".join(expression.split()), mode="eval")  # newlines are spaces in arithmetic
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise ToolError(f"not a valid expression ({getattr(error, 'msg', None) or error}); {_HELP}") from None
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("the result is too large for a floating-point number") from None
    except ValueError as error:  # math domain errors: sqrt(-1)
        raise ToolError(f"math error: {error}") from None
    except (TypeError, RecursionError) as error:
        raise ToolError(f"cannot evaluate this expression ({error}); {_HELP}") from None
    return str(value) if isinstance(value, int) else repr(value)


# --- current time -----------------------------------------------------------------------------------------------


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _zone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        pass
    by_folded = {known.casefold(): known for known in _zone_names()}
    if name.casefold() in by_folded:
        return zoneinfo.ZoneInfo(by_folded[name.casefold()])
    by_city = {known.rpartition("/")[2].casefold(): known for known in sorted(_zone_names())}
    close = [by_city[city] for city in difflib.get_close_matches(name.rpartition("/")[2].casefold(), by_city, n=3)]
    close = close or difflib.get_close_matches(name, sorted(_zone_names()), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "for example Europe/Moscow, America/New_York or UTC"
    raise ToolError(f"unknown time zone {name!r}: give an IANA time zone name — {hint}")


def current_time(timezone: str = "UTC", now: datetime | None = None) -> str:
    """ISO 8601 date and time with weekday in ``timezone``; ``now`` (aware) is for tests."""
    name = timezone.strip() or "UTC"
    if len(name) > MAX_ZONE_CHARS:
        raise ToolError(f"a time zone name is at most {MAX_ZONE_CHARS} characters")
    zone = _zone(name)
    local = (now or datetime.now(UTC)).astimezone(zone)
    label = "UTC" if zone is UTC else str(zone)
    return f"{local.isoformat(timespec='seconds')} ({local:%A}, {label})"


# --- session files ----------------------------------------------------------------------------------------------


def list_files(files: Mapping[str, str]) -> str:
    """The attached files with their sizes, so the model knows what it may search and read."""
    if not files:
        return "No files are attached to this session."
    rows = [f"{name} ({len(text.splitlines())} lines, {len(text)} characters)" for name, text in files.items()]
    return f"{len(rows)} file(s) attached:\n" + "\n".join(rows)


def _snippet(line: str, at: int, width: int) -> str:
    """The part of a long line around a match, so one huge line cannot fill the whole answer."""
    if len(line) <= width + 2 * MATCH_CONTEXT_CHARS:
        return line
    start, end = max(0, at - MATCH_CONTEXT_CHARS), min(len(line), at + width + MATCH_CONTEXT_CHARS)
    return ("…" if start else "") + line[start:end] + ("…" if end < len(line) else "")


def search_files(files: Mapping[str, str], query: str) -> str:
    """Lines containing ``query`` (ignoring case) as ``name:line: text``, the first :data:`MAX_MATCHES` of them."""
    if not query.strip():
        raise ToolError("the query is empty; give a word or phrase to look for")
    if len(query) > MAX_QUERY_CHARS:
        raise ToolError(f"the query is {len(query)} characters long; the limit is {MAX_QUERY_CHARS}")
    if not files:
        return "No files are attached to this session."
    needle = query.casefold()
    shown: list[str] = []
    total = 0
    for name, text in files.items():
        for number, line in enumerate(text.splitlines(), start=1):
            at = line.casefold().find(needle)
            if at < 0:
                continue
            total += 1
            if len(shown) < MAX_MATCHES:
                shown.append(f"{name}:{number}: {_snippet(line, at, len(query))}")
    if not total:
        return f"No line of the {len(files)} attached file(s) contains {query!r}."
    more = f" (showing the first {MAX_MATCHES}; narrow the query to see the rest)" if total > MAX_MATCHES else ""
    return f"{total} matching line(s){more}:\n" + "\n".join(shown)


def _find(files: Mapping[str, str], name: str) -> str:
    if name in files:
        return name
    folded = [known for known in files if known.casefold() == name.strip().casefold()]
    if len(folded) == 1:
        return folded[0]
    if not files:
        raise ToolError(f"no file named {name!r}: no files are attached to this session")
    names = list(files)
    listed = ", ".join(repr(n) for n in names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    raise ToolError(f"no file named {name!r}; the attached files are {listed}")


def read_file(files: Mapping[str, str], name: str, start_line: int = 1, line_count: int = 100) -> str:
    """Up to :data:`MAX_READ_LINES` numbered lines of one attached file, with where they sit in it."""
    name = _find(files, name)
    if start_line < 1:
        raise ToolError("start_line counts from 1")
    if line_count < 1:
        raise ToolError("line_count must be at least 1")
    lines = files[name].splitlines()
    if not lines:
        return f"{name} is empty."
    if start_line > len(lines):
        raise ToolError(f"{name} has {len(lines)} line(s); start_line {start_line} is past its end")
    end = min(len(lines), start_line + min(line_count, MAX_READ_LINES) - 1)
    body = "\n".join(f"{number}: {lines[number - 1]}" for number in range(start_line, end + 1))
    rest = f"; call again with start_line={end + 1} for more" if end < len(lines) else ""
    return f"{name}, lines {start_line}–{end} of {len(lines)}{rest}:\n{body}"


# --- the LangChain tools ----------------------------------------------------------------------------------------


class CalculatorArgs(BaseModel):
    expression: str = Field(description=f"Arithmetic expression, at most {MAX_EXPRESSION_CHARS} characters, "
                                        "e.g. (2 + 3) * 4 ** 2 / 7 or sqrt(2) * pi.")


class CurrentTimeArgs(BaseModel):
    timezone: str = Field("UTC", description="IANA time zone name, e.g. Europe/Moscow, America/New_York or UTC.")


class ListFilesArgs(BaseModel):
    pass


class SearchFilesArgs(BaseModel):
    query: str = Field(description="Text to look for in every line of the attached files, ignoring case.")


class ReadFileArgs(BaseModel):
    name: str = Field(description="File name exactly as list_files shows it.")
    start_line: int = Field(1, description="First line to read, counting from 1.")
    line_count: int = Field(100, description=f"How many lines to read, at most {MAX_READ_LINES}.")


def _tool(name: str, description: str, schema: type[BaseModel], run: Callable[..., str], limit: int | None) -> BaseTool:
    """A tool usable both ways: the coroutine runs the cheap body inline instead of on a thread."""

    def func(**kwargs: Any) -> str:
        result = run(**kwargs)
        return result if limit is None else bounded(result, limit)

    async def coroutine(**kwargs: Any) -> str:
        return func(**kwargs)

    return StructuredTool.from_function(func=func, coroutine=coroutine, name=name, description=description,
                                        args_schema=schema, infer_schema=False)


def calculator_tool(limit: int | None = None) -> BaseTool:
    return _tool("calculator", "Evaluate an arithmetic expression exactly; use it instead of computing in your head. "
                 f"Supports + - * / // % ** and parentheses, sqrt abs round min max, pi e; integers up to "
                 f"{MAX_DIGITS} digits.", CalculatorArgs, calculate, limit)


def current_time_tool(limit: int | None = None) -> BaseTool:
    return _tool("current_time", "The current date, time and weekday in a time zone (ISO 8601).",
                 CurrentTimeArgs, lambda timezone="UTC": current_time(timezone), limit)


def file_tools(files: Callable[[], Mapping[str, str]], limit: int | None = None) -> list[BaseTool]:
    """The three file tools of one session; ``files`` is read on every call, so newly attached files show up."""

    def snapshot() -> dict[str, str]:
        return dict(files())  # a copy, so a file attached mid-call cannot change the dict being iterated

    def listing() -> str:
        return list_files(snapshot())

    def search(query: str) -> str:
        return search_files(snapshot(), query)

    def read(name: str, start_line: int = 1, line_count: int = 100) -> str:
        return read_file(snapshot(), name, start_line, line_count)

    return [
        _tool("list_files", "List the text files the user attached to this conversation, with their sizes.",
              ListFilesArgs, listing, limit),
        _tool("search_files", "Find lines containing a text in the attached files (ignoring case); returns "
              f"file:line: text for up to {MAX_MATCHES} matches.", SearchFilesArgs, search, limit),
        _tool("read_file", f"Read numbered lines of one attached file, at most {MAX_READ_LINES} at a time.",
              ReadFileArgs, read, limit),
    ]


def build_tools(settings: ToolSettings, files: Callable[[], Mapping[str, str]]) -> list[BaseTool]:
    """The tools ``settings.tools`` enables for one session, always in the order of :data:`TOOL_GROUPS`.

    Results are cut to ``settings.max_tool_result_chars`` when the settings have it (``AgentSettings`` does).
    """
    unknown = sorted(set(settings.tools) - set(TOOL_GROUPS))
    if unknown:
        raise ValueError(f"unknown tool(s) {unknown}; known: {', '.join(TOOL_GROUPS)}")
    limit: int | None = getattr(settings, "max_tool_result_chars", None)
    made: list[BaseTool] = []
    for group in TOOL_GROUPS:
        if group not in settings.tools:
            continue
        if group == "calculator":
            made.append(calculator_tool(limit))
        elif group == "current_time":
            made.append(current_time_tool(limit))
        else:
            made.extend(file_tools(files, limit))
    return made

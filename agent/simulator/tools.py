"""Tool calls the simulator makes and tool results it answers: pure functions, no sockets, no clock.

A request that offers OpenAI function tools and ends with a user turn may be answered with one tool
call (:class:`ToolCall`): a tool drawn from those offered, with arguments made up from its
``parameters`` JSON schema (:func:`sample_arguments`) — valid against it, and with strings taken from
the user's last message so a test can recognise them. The arguments string is streamed in pieces of
a few characters (:func:`split_arguments`), one piece a token, as OpenAI streams them.

A request that ends with a tool result is answered with text that names the result it saw
(:func:`tool_result_header`), so a client can prove the "LLM" was given that tool's output.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.fingerprints import fingerprint

# OpenAI's rule for function names; a name outside it is a 400 there, so it is one here.
TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ARGUMENT_PIECE_CHARS = 4  # about one token of JSON
HINT_WORDS, HINT_CHARS = 3, 40
MAX_DEPTH = 6
# Strings some common formats accept, since a validator may check ``format``.
FORMAT_EXAMPLES = {
    "date-time": "2024-01-01T00:00:00Z", "date": "2024-01-01", "time": "00:00:00Z", "email": "sim@example.com",
    "uri": "https://example.com/", "url": "https://example.com/", "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1", "ipv6": "::1", "hostname": "example.com",
}


@dataclass(frozen=True)
class ToolSpec:
    """One offered function tool: its name and its ``parameters`` schema (None when absent)."""

    name: str
    parameters: dict[str, Any] | None = None


@dataclass(frozen=True)
class ToolCall:
    """The one tool call a reply makes; streamed as a header event, then one event per arguments piece."""

    id: str
    name: str
    arguments: str
    pieces: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pieces", split_arguments(self.arguments))

    @property
    def events(self) -> int:
        """Stream events (tokens) the call takes: the one naming it, then the argument pieces."""
        return 1 + len(self.pieces)

    def openai(self) -> dict[str, Any]:
        """The call as an OpenAI message's ``tool_calls`` entry."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def draw_tool_call(tools: Sequence[ToolSpec], rng: random.Random, hint: str, *, bad: bool = False) -> ToolCall:
    """A call to one of ``tools``, drawn; ``bad`` breaks its arguments (the ``bad_arguments`` fault)."""
    spec = rng.choice(tools)
    arguments = json.dumps(sample_arguments(spec.parameters, rng, hint), ensure_ascii=False)
    if bad:
        arguments = bad_arguments(arguments)
    return ToolCall(f"call_{rng.getrandbits(96):024x}", spec.name, arguments)


def tool_result_header(name: str | None, content: str) -> str:
    """What a reply to a tool result starts with, after the reply header: ``[tool name=N result_fp=F]``.

    ``N`` is the tool's name, resolved from the assistant ``tool_calls`` entry whose id the tool message
    answers (``?`` when none does); ``F`` is :func:`agent.fingerprints.fingerprint` of the tool message's
    content (text parts joined with newlines). Tests recompute it from what their tool returned.
    """
    return f"[tool name={name or '?'} result_fp={fingerprint(content)}]"


def split_arguments(arguments: str) -> tuple[str, ...]:
    """The arguments string in stream pieces: a few characters each, and at least two when it has two."""
    if not arguments:
        return ("",)
    size = max(1, min(ARGUMENT_PIECE_CHARS, math.ceil(len(arguments) / 2)))
    return tuple(arguments[i:i + size] for i in range(0, len(arguments), size))


def bad_arguments(arguments: str) -> str:
    """Arguments that are not JSON: the valid ones and a stray ``}``, a slip models make.

    Not a cut-off object: streaming clients (langchain's partial-JSON parser) close those and accept them.
    """
    return arguments + "}"


def hint_of(text: str) -> str:
    """The string arguments are made of: the first words of the user's message, bounded."""
    return " ".join(text.split()[:HINT_WORDS])[:HINT_CHARS] or "sim"


def sample_arguments(schema: Any, rng: random.Random, hint: str) -> dict[str, Any]:
    """A JSON object valid against a ``parameters`` schema: its required properties, made up by type.

    Optional properties are left out; an absent or unusable schema gives ``{}``. Draws from ``rng``,
    so seeded runs repeat.
    """
    if not isinstance(schema, dict):
        return {}
    value = _Sampler(schema, rng, hint).value(schema, 0)
    return value if isinstance(value, dict) else {}


class _Sampler:
    """Walks one schema; ``root`` resolves local ``$ref``s (``#/$defs/...``, as pydantic writes them)."""

    def __init__(self, root: dict[str, Any], rng: random.Random, hint: str):
        self.root = root
        self.rng = rng
        self.hint = hint

    def value(self, schema: Any, depth: int) -> Any:
        schema = self._resolve(schema, depth)
        if not isinstance(schema, dict):
            return self.hint
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf", "allOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                usable = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
                return self.value(usable[0] if usable else branches[0], depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind in ("integer", "number"):
            return self._number(schema, kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def _resolve(self, schema: Any, depth: int) -> Any:
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and depth <= MAX_DEPTH:
            target: Any = self.root
            ref = schema["$ref"]
            if not ref.startswith("#"):
                return {}
            for part in [p for p in ref[1:].split("/") if p]:
                target = target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
            schema = target
            depth += 1
        return schema

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        if depth >= MAX_DEPTH:
            return {}
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
        return {name: self.value(properties.get(name, {}), depth + 1) for name in names}

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        low = schema.get("minItems") if isinstance(schema.get("minItems"), int) else 0
        high = schema.get("maxItems") if isinstance(schema.get("maxItems"), int) else max(low, 1)
        count = min(max(low, 1), high)
        if depth >= MAX_DEPTH or count <= 0:
            return []
        return [self.value(schema.get("items", {}), depth + 1) for _ in range(count)]

    def _number(self, schema: dict[str, Any], integer: bool) -> int | float:
        """A small number in range; an integer whenever one fits, since JSON's integers are numbers too."""
        low, high = _limits(schema)
        first = max((math.floor(v) + 1 if excl else math.ceil(v) for v, excl in low), default=None)
        last = min((math.ceil(v) - 1 if excl else math.floor(v) for v, excl in high), default=None)
        if first is None:
            first = 0 if last is None else min(0, last)
        last = first + 9 if last is None else min(last, first + 9)
        if last >= first:
            return self.rng.randint(first, last)
        if integer or not low or not high:
            return first  # nothing fits: an impossible schema, answered with something
        return (max(v for v, _ in low) + min(v for v, _ in high)) / 2

    def _string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        text = FORMAT_EXAMPLES.get(fmt, self.hint) if isinstance(fmt, str) else self.hint
        low = schema.get("minLength") if isinstance(schema.get("minLength"), int) else 0
        high = schema.get("maxLength") if isinstance(schema.get("maxLength"), int) else None
        if high is not None:
            text = text[:high]
        return text + "x" * max(0, low - len(text))


def _limits(schema: dict[str, Any]) -> tuple[list[tuple[float, bool]], list[tuple[float, bool]]]:
    """A number's lower and upper limits as (value, exclusive), in draft 4 (boolean) and 6+ (numeric) style."""
    out: tuple[list[tuple[float, bool]], list[tuple[float, bool]]] = ([], [])
    for side, inclusive, exclusive in ((0, "minimum", "exclusiveMinimum"), (1, "maximum", "exclusiveMaximum")):
        limit, flag = schema.get(inclusive), schema.get(exclusive)
        if _is_number(limit):
            out[side].append((limit, flag is True))
        if _is_number(flag):
            out[side].append((flag, True))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

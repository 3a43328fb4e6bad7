"""What a chat completion will do, decided when its request arrives: no sockets, no clock.

A request is validated the way OpenAI validates it and becomes a :class:`Plan` (model, reply length,
finish reason, streaming, the tools it offers, faults the client forced). The reply text is derived
from the conversation (:func:`reply_head`): a person reads the start of their latest message, how many
they sent and what the simulator is, then plain filler up to the reply length; a reply to a tool
result quotes that result too. When the latest user message carries a load-test canary the reply opens
with the fingerprints header (:func:`agent.fingerprints.reply_header`), so the load tester can prove which
history the "LLM" saw, without a person ever seeing debug output. The simulator's
randomness — which fault strikes, whether and which tool is called, how late each token is — comes
from :class:`Dice`, one seeded generator drawn in arrival order, so a seeded run repeats.

``tool_choice`` is read as OpenAI reads it: ``none`` never calls a tool, ``required`` always does on
a user turn, ``{"type": "function", "function": {"name": N}}`` always calls N; ``auto`` (the default)
leaves it to ``sim.tool_call_rate``.

Forced faults (the ``x-sim-fault`` header, or a model suffix such as ``cmw-sim@tool_call,disconnect``)
are comma-separated: at most one of ``none``, ``error``, ``error:<status>``, ``disconnect``, ``stall``,
``malformed`` (which replaces the rates), and at most one tool fault:

- ``tool_call`` — answer with a tool call whenever one is possible (tools offered, user turn last),
  whatever ``sim.tool_call_rate`` says;
- ``bad_arguments`` — the same, with an arguments string that is not JSON (a stray ``}`` after it).

A connection fault strikes half-way through the reply's events, so with a tool call it lands inside
the tool call's argument chunks: ``tool_call,disconnect`` cuts a stream mid-call, ``tool_call,malformed``
garbles one of its chunks. Without a way to call a tool, a tool fault changes nothing.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from typing import Any

from agent.fingerprints import has_canary, reply_header
from agent.settings import SimSettings
from agent.settings.providers import SIM_MODEL
from agent.simulator.tools import TOOL_NAME_RE, ToolCall, ToolSpec, draw_tool_call, hint_of, tool_result_header

DEFAULT_MODEL = SIM_MODEL
FAULT_HEADER = "x-sim-fault"
# A model name may carry a forced fault too, e.g. "cmw-sim@disconnect" or "cmw-sim@error:429",
# so a client that cannot set headers (a chat UI's model box) can still pick one.
MODEL_FAULT_SEP = "@"
FAULT_KINDS = ("error", "disconnect", "stall", "malformed")
TOOL_FAULTS = ("tool_call", "bad_arguments")

INTRO = "I'm cmw's built-in simulator, not a real model."
# What fills a reply up to ``sim.reply_tokens`` words after the part that answers the conversation: plain
# sentences a person can read, cycled as long as needed.
FILLER_TEXT = (
    "I reply to every message like this, word by word, at the pace the sim settings set, so you can try the "
    "app, its queue and its concurrency limits without an API key. To talk to a real model, choose another "
    "provider."
)
FILLER = tuple(FILLER_TEXT.split())
QUOTE_WORDS, QUOTE_CHARS = 12, 80


def nominal_reply_s(sim: SimSettings) -> float:
    """Seconds a reply takes without jitter: the simulator's single-user service time."""
    return sim.ttft_ms / 1000 + (sim.reply_tokens - 1) / sim.tokens_per_second


def quote(text: str) -> str:
    """The start of a message on one line, in quotes: enough for its sender to recognise it."""
    words: list[str] = []
    for word in text.split():
        if len(words) == QUOTE_WORDS or sum(map(len, words)) + len(words) + len(word) > QUOTE_CHARS:
            return "\u201c" + " ".join(words or [word[:QUOTE_CHARS]]) + "\u2026\u201d"
        words.append(word)
    return "\u201c" + " ".join(words) + "\u201d"


def _ordinal(n: int) -> str:
    if n == 1:
        return "first"
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def reply_opening(user_texts: list[str], tool_result: tuple[str | None, str] | None = None) -> str:
    """A text reply's first token.

    For the load tester (its latest user message carries a canary, :func:`agent.fingerprints.has_canary`) it
    is the fingerprints header, then for a tool result (name, content) that result's header, e.g.
    ``[turns=1 fp=0a1b2c3d] [tool name=calculator result_fp=4e5f6a7b]``
    (see :func:`~agent.simulator.tools.tool_result_header`), so the isolation checks read every reply alike.
    For anyone else it is the first word of the readable reply: a person never sees debug output.
    """
    return reply_head(user_texts, tool_result)[0]


def reply_head(user_texts: list[str], tool_result: tuple[str | None, str] | None = None) -> list[str]:
    """The tokens of a reply before its filler: what the simulator was told, and what it is.

    A readable sentence quoting the start of the latest user message (after a tool result's content) and
    counting the user's messages, then what the simulator is, one word a token; for the load tester the
    fingerprints header comes first, as one token. Derived from the conversation alone, so a client can
    recompute it.
    """
    n = len(user_texts)
    if n == 0:
        said = "I have no message from you in this conversation."
    else:
        last = user_texts[-1]
        said = (f"You said {quote(last)}," if last.strip() else "You sent a message with no text,") \
            + f" your {_ordinal(n)} message in this conversation."
    if tool_result is not None:
        name, content = tool_result
        tool = f"The {name} tool" if name else "The tool"
        said = f"{tool} returned {quote(content) if content.strip() else 'nothing'}. {said}"
    words = f"{said} {INTRO}".split(" ")  # their own words first: a short reply still shows them
    if not (n and has_canary(user_texts[-1])):
        return [words[0], *(" " + word for word in words[1:])]
    header = reply_header(user_texts)
    if tool_result is not None:
        header = f"{header} {tool_result_header(*tool_result)}"
    return [header, *(" " + word for word in words)]


def reply_text(user_texts: list[str], tokens: int, tool_result: tuple[str | None, str] | None = None) -> str:
    """The full text reply to a conversation with these user turns, as streamed token by token."""
    head = reply_head(user_texts, tool_result)
    return "".join(head[:tokens]) + "".join(" " + FILLER[i % len(FILLER)] for i in range(tokens - len(head)))


@dataclass(frozen=True)
class Fault:
    """One injected fault: its kind, and for ``error`` the HTTP status (None = pick from settings)."""

    kind: str
    status: int | None = None

    @classmethod
    def parse(cls, spec: str) -> Fault | None:
        """``error``, ``error:503``, ``disconnect``, ``stall``, ``malformed`` or ``none``; ValueError otherwise."""
        kind, _, arg = spec.strip().lower().partition(":")
        if kind == "none" and not arg:
            return None
        if kind not in FAULT_KINDS or (arg and kind != "error"):
            raise ValueError(f"unknown fault {spec!r}; allowed: none, {', '.join(FAULT_KINDS)}, error:<status>, "
                             f"and with one of them {' or '.join(TOOL_FAULTS)}, comma-separated")
        if not arg:
            return cls(kind)
        if not arg.isdigit() or not 400 <= int(arg) < 600:
            raise ValueError(f"fault {spec!r}: the status must be 400-599")
        return cls(kind, int(arg))


# Sentinel: no fault was forced, so the settings' rates decide.
NOT_FORCED = Fault("unforced")


def parse_faults(spec: str) -> tuple[Fault | None, str | None]:
    """A forced-fault spec: (the fault, or :data:`NOT_FORCED`; the tool fault or None). ValueError if bad.

    Comma-separated, e.g. ``tool_call,disconnect``: at most one fault and one tool fault.
    """
    fault: Fault | None = NOT_FORCED
    tool: str | None = None
    for part in spec.split(","):
        name = part.strip().lower()
        if name in TOOL_FAULTS:
            if tool is not None:
                raise ValueError(f"fault {spec!r} names more than one of {', '.join(TOOL_FAULTS)}")
            tool = name
        elif fault is not NOT_FORCED:
            raise ValueError(f"fault {spec!r} names more than one of none, {', '.join(FAULT_KINDS)}")
        else:
            fault = Fault.parse(part)
    return fault, tool


def fault_token(tokens: int) -> int:
    """Index of the token a fault replaces: half-way, and never the first, so TTFT is always seen."""
    return max(1, tokens // 2)


class RequestError(Exception):
    """A request the simulator refuses with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass(frozen=True)
class Plan:
    """Everything a completion needs from its request; ``fault`` is :data:`NOT_FORCED` unless the client chose.

    ``tools`` are those the reply may call (none under ``tool_choice: "none"``); ``user_turn`` says the
    last message is the user's, the only turn a tool call answers; ``tool_result`` is (tool name or
    None, content) when the last message is a tool result. ``tool_call`` is set by the reply once the
    dice have decided (:meth:`with_tool_call`).
    """

    model: str
    user_texts: list[str]
    prompt_tokens: int
    tokens: int
    finish_reason: str
    stream: bool
    include_usage: bool
    fault: Fault | None
    tools: tuple[ToolSpec, ...] = ()
    tool_required: bool = False
    tool_fault: str | None = None
    user_turn: bool = True
    tool_result: tuple[str | None, str] | None = None
    tool_call: ToolCall | None = None

    def usage(self) -> dict[str, int]:
        """The OpenAI ``usage`` object of this reply."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.tokens,
                "total_tokens": self.prompt_tokens + self.tokens}

    def with_tool_call(self, call: ToolCall | None) -> Plan:
        """This plan answering with ``call`` instead of text: one token per stream event, ``tool_calls`` finish.

        A token cap does not cut a call short: a truncated call is what ``bad_arguments`` is for.
        """
        if call is None:
            return self
        return replace(self, tool_call=call, tokens=call.events, finish_reason="tool_calls")


def parse_completion_request(body: bytes, headers: dict[str, str], reply_tokens: int) -> Plan:
    """Validate a chat completion request the way OpenAI does; RequestError names what is wrong."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' is required and must be a non-empty array.", "messages")
    user_texts, words, last_role, tool_result = _read_messages(messages)
    model = data.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or not model:
        raise RequestError(400, "'model' must be a non-empty string.", "model")
    stream = data.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise RequestError(400, "'stream' must be a boolean.", "stream")
    options = data.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, "'stream_options' must be an object.", "stream_options")
    tokens, finish = reply_tokens, "stop"
    for name in ("max_completion_tokens", "max_tokens"):
        cap = data.get(name)
        if cap is None:
            continue
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise RequestError(400, f"'{name}' must be a positive integer.", name)
        if cap < tokens:
            tokens, finish = cap, "length"
    tools, required = _read_tools(data.get("tools"), data.get("tool_choice"))
    fault_spec = headers.get(FAULT_HEADER)
    if fault_spec is None and MODEL_FAULT_SEP in model:
        fault_spec = model.rpartition(MODEL_FAULT_SEP)[2]
    try:
        fault, tool_fault = parse_faults(fault_spec) if fault_spec is not None else (NOT_FORCED, None)
    except ValueError as exc:
        raise RequestError(400, str(exc), FAULT_HEADER) from None
    return Plan(
        model=model,
        user_texts=user_texts,
        prompt_tokens=words,
        tokens=tokens,
        finish_reason=finish,
        stream=bool(stream),
        include_usage=bool(options.get("include_usage")),
        fault=fault,
        tools=tools,
        tool_required=required,
        tool_fault=tool_fault,
        user_turn=last_role == "user",
        tool_result=tool_result,
    )


def _read_messages(messages: list[Any]) -> tuple[list[str], int, str, tuple[str | None, str] | None]:
    """(user texts, prompt words, last role, the tool result the conversation ends with) of valid messages.

    A tool result's name comes from the assistant ``tool_calls`` entry with its ``tool_call_id``.
    """
    user_texts: list[str] = []
    names: dict[str, str] = {}
    words = 0
    text = ""
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(400, f"messages[{n}] must be an object with a string 'role'.", f"messages[{n}]")
        role = message["role"]
        text = _content_text(message.get("content"), n)
        words += len(text.split()) + 4  # a few tokens of per-message framing, as real tokenizers add
        if role == "user":
            user_texts.append(text)
        elif role == "assistant" and message.get("tool_calls") is not None:
            for call_id, name, arguments in _tool_calls(message["tool_calls"], n):
                names[call_id] = name
                words += len(arguments.split()) + 4
        elif role == "tool":
            if not isinstance(message.get("tool_call_id"), str) or not message["tool_call_id"]:
                raise RequestError(400, f"messages[{n}].tool_call_id is required for a tool message.",
                                   f"messages[{n}].tool_call_id")
            if message.get("content") is None:
                raise RequestError(400, f"messages[{n}].content is required for a tool message.",
                                   f"messages[{n}].content")
    last = messages[-1]
    tool_result = (names.get(last["tool_call_id"]), text) if last["role"] == "tool" else None
    return user_texts, words, last["role"], tool_result


def _tool_calls(calls: Any, n: int) -> list[tuple[str, str, str]]:
    """(id, name, arguments) of an assistant message's ``tool_calls``; RequestError if they are not OpenAI's."""
    param = f"messages[{n}].tool_calls"
    if not isinstance(calls, list):
        raise RequestError(400, f"{param} must be an array.", param)
    out = []
    for k, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(call, dict) or not isinstance(call.get("id"), str)
                or call.get("type", "function") != "function" or not isinstance(function, dict)
                or not isinstance(function.get("name"), str) or not isinstance(function.get("arguments"), str)):
            raise RequestError(400, f"{param}[{k}] must be a function call with a string id, function.name and "
                               "function.arguments.", f"{param}[{k}]")
        out.append((call["id"], function["name"], function["arguments"]))
    return out


def _read_tools(tools: Any, choice: Any) -> tuple[tuple[ToolSpec, ...], bool]:
    """(the tools a reply may call, whether it must call one) from ``tools`` and ``tool_choice``."""
    if tools is not None and not isinstance(tools, list):
        raise RequestError(400, "'tools' must be an array of function tools.", "tools")
    specs = []
    for i, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise RequestError(400, f"tools[{i}] must be a function tool: "
                               '{"type": "function", "function": {"name": ...}}.', f"tools[{i}]")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME_RE.match(name):
            raise RequestError(400, f"tools[{i}].function.name must be 1-64 letters, digits, '_' or '-'.",
                               f"tools[{i}].function.name")
        for key, kind, what in (("description", str, "a string"), ("parameters", dict, "a JSON schema object")):
            if function.get(key) is not None and not isinstance(function[key], kind):
                raise RequestError(400, f"tools[{i}].function.{key} must be {what}.", f"tools[{i}].function.{key}")
        specs.append(ToolSpec(name, function.get("parameters")))
    if choice is None or choice == "auto":
        return tuple(specs), False
    if choice == "none":
        return (), False
    if choice == "required" and specs:
        return tuple(specs), True
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    named = [s for s in specs if isinstance(function, dict) and s.name == function.get("name")]
    if not named:
        raise RequestError(400, "'tool_choice' must be none, auto, required (with tools) or "
                           '{"type": "function", "function": {"name": <one of tools>}}.', "tool_choice")
    return (named[0],), True


def _content_text(content: Any, n: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    raise RequestError(400, f"messages[{n}].content must be a string or an array of parts.", f"messages[{n}].content")


class Dice:
    """The simulator's randomness: one seeded generator, drawn as requests arrive and tokens fall due.

    Per request: the fault, then the tool call (when one is possible), then the time to first token;
    then one gap per token. Draws happen in that order and nowhere else, so a run with ``sim.seed``
    set repeats exactly.
    """

    def __init__(self, settings: SimSettings):
        self.settings = settings
        self._rng = random.Random(settings.seed)
        self._interval = 1.0 / settings.tokens_per_second

    def fault(self, forced: Fault | None) -> Fault | None:
        """The fault this request gets: the forced one, else one drawn from the settings' rates."""
        if forced is not NOT_FORCED:
            fault = forced
        else:
            s = self.settings
            # One draw split into consecutive bands, so each rate is exactly that share of requests.
            u = self._rng.random()
            fault = None
            for kind, rate in (("error", s.error_rate), ("disconnect", s.disconnect_rate),
                               ("stall", s.stall_rate), ("malformed", s.malformed_rate)):
                if u < rate:
                    fault = Fault(kind)
                    break
                u -= rate
        if fault is not None and fault.kind == "error" and fault.status is None:
            fault = Fault("error", self._rng.choice(self.settings.error_statuses))
        return fault

    def tool_call(self, plan: Plan) -> ToolCall | None:
        """The tool call this reply makes, or None: forced, required, or drawn at ``sim.tool_call_rate``.

        Only a request that offers tools and ends with a user turn can get one. It draws once for the
        rate (unless forced), then the tool and its arguments.
        """
        if not plan.tools or not plan.user_turn:
            return None
        forced = plan.tool_fault is not None or plan.tool_required
        if not forced and self._rng.random() >= self.settings.tool_call_rate:
            return None
        hint = hint_of(plan.user_texts[-1] if plan.user_texts else "")
        return draw_tool_call(plan.tools, self._rng, hint, bad=plan.tool_fault == "bad_arguments")

    def ttft_s(self) -> float:
        """Seconds from the request to the first token, jittered."""
        return self.settings.ttft_ms / 1000 * self._factor()

    def gap_s(self) -> float:
        """Seconds from one token to the next, jittered."""
        return self._interval * self._factor()

    def _factor(self) -> float:
        jitter = self.settings.jitter
        return 1.0 + jitter * (2.0 * self._rng.random() - 1.0) if jitter else 1.0

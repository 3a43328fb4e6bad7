"""What a chat completion will do, decided when its request arrives: no sockets, no clock.

A request is validated the way OpenAI validates it and becomes a :class:`Plan` (model, reply length,
finish reason, streaming, a fault the client forced). The reply text is derived from the user turns
(:func:`agent.fingerprints.reply_header`), so a client can prove which history the "LLM" saw. The
simulator's randomness — which fault strikes, how late each token is — comes from :class:`Dice`,
one seeded generator drawn in arrival order, so a seeded run repeats.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from agent.fingerprints import reply_header
from agent.settings import SimSettings
from agent.settings.providers import SIM_MODEL

DEFAULT_MODEL = SIM_MODEL
FAULT_HEADER = "x-sim-fault"
# A model name may carry a forced fault too, e.g. "cmw-sim@disconnect" or "cmw-sim@error:429",
# so a client that cannot set headers (a chat UI's model box) can still pick one.
MODEL_FAULT_SEP = "@"
FAULT_KINDS = ("error", "disconnect", "stall", "malformed")

FILLER = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do", "eiusmod", "tempor",
    "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "ut", "enim", "ad", "minim", "veniam", "quis",
    "nostrud", "exercitation", "ullamco", "laboris", "nisi", "ut", "aliquip", "ex", "ea", "commodo",
)


def nominal_reply_s(sim: SimSettings) -> float:
    """Seconds a reply takes without jitter: the simulator's single-user service time."""
    return sim.ttft_ms / 1000 + (sim.reply_tokens - 1) / sim.tokens_per_second


def reply_text(user_texts: list[str], tokens: int) -> str:
    """The full reply to a conversation with these user turns, as streamed token by token."""
    return reply_header(user_texts) + "".join(" " + FILLER[i % len(FILLER)] for i in range(tokens - 1))


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
            raise ValueError(f"unknown fault {spec!r}; allowed: none, {', '.join(FAULT_KINDS)}, error:<status>")
        if not arg:
            return cls(kind)
        if not arg.isdigit() or not 400 <= int(arg) < 600:
            raise ValueError(f"fault {spec!r}: the status must be 400-599")
        return cls(kind, int(arg))


# Sentinel: no fault was forced, so the settings' rates decide.
NOT_FORCED = Fault("unforced")


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
    """Everything a completion needs from its request; ``fault`` is :data:`NOT_FORCED` unless the client chose."""

    model: str
    user_texts: list[str]
    prompt_tokens: int
    tokens: int
    finish_reason: str
    stream: bool
    include_usage: bool
    fault: Fault | None

    def usage(self) -> dict[str, int]:
        """The OpenAI ``usage`` object of this reply."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.tokens,
                "total_tokens": self.prompt_tokens + self.tokens}


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
    user_texts: list[str] = []
    words = 0
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(400, f"messages[{n}] must be an object with a string 'role'.", f"messages[{n}]")
        text = _content_text(message.get("content"), n)
        words += len(text.split()) + 4  # a few tokens of per-message framing, as real tokenizers add
        if message["role"] == "user":
            user_texts.append(text)
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
    fault_spec = headers.get(FAULT_HEADER)
    if fault_spec is None and MODEL_FAULT_SEP in model:
        fault_spec = model.rpartition(MODEL_FAULT_SEP)[2]
    try:
        fault = Fault.parse(fault_spec) if fault_spec is not None else NOT_FORCED
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
    )


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

    Draws happen in that order and nowhere else, so a run with ``sim.seed`` set repeats exactly.
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

    def ttft_s(self) -> float:
        """Seconds from the request to the first token, jittered."""
        return self.settings.ttft_ms / 1000 * self._factor()

    def gap_s(self) -> float:
        """Seconds from one token to the next, jittered."""
        return self._interval * self._factor()

    def _factor(self) -> float:
        jitter = self.settings.jitter
        return 1.0 + jitter * (2.0 * self._rng.random() - 1.0) if jitter else 1.0
